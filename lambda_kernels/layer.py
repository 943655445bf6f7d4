"""LambdaLayer: the lambda layer of LambdaNetworks (Bello, ICLR 2021) with the constructor and
state_dict of lambda-networks 0.4.0, running on the fused kernels of this package.

    x (B, dim, H, W) -> y (B, dim_out, H, W)

Projections are the 1×1 convolutions and batch norms of upstream; the lambda itself runs
through `lambda_op` (functional.py), which picks a back end. Beyond upstream: global context
takes any H×W with H, W <= n (rectangular too), channels_last input keeps its memory format,
mixed precision runs the kernels in the activations' dtype with float32 accumulation, and
`backend=` pins a back end.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .functional import run_backend, select_backend, validate_inputs


class LambdaLayer(nn.Module):
    def __init__(self, dim: int, *, dim_k: int, n: Optional[int] = None, r: Optional[int] = None,
                 heads: int = 4, dim_out: Optional[int] = None, dim_u: int = 1,
                 backend: str = "auto"):
        super().__init__()
        dim_out = dim if dim_out is None else dim_out
        for name, value in (("dim", dim), ("dim_k", dim_k), ("heads", heads), ("dim_out", dim_out),
                            ("dim_u", dim_u)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if dim_out % heads != 0:
            raise ValueError(f"dim_out ({dim_out}) must be divisible by heads ({heads})")
        if (n is None) == (r is None):
            raise ValueError("give exactly one of n (global context) and r (local context), got "
                             f"n={n!r}, r={r!r}")
        if r is not None and (not isinstance(r, int) or r < 1 or r % 2 == 0):
            raise ValueError(f"r must be a positive odd integer, got {r!r}")
        if n is not None and (not isinstance(n, int) or n < 1):
            raise ValueError(f"n must be a positive integer, got {n!r}")

        dim_v = dim_out // heads
        self.u = dim_u
        self.heads = heads
        self.dim = dim
        self.dim_k = dim_k
        self.dim_v = dim_v
        self.dim_out = dim_out
        self.n = n
        self.r = r
        self.backend = backend
        self.last_backend: Optional[str] = None

        self.to_q = nn.Conv2d(dim, dim_k * heads, 1, bias=False)
        self.to_k = nn.Conv2d(dim, dim_k * dim_u, 1, bias=False)
        self.to_v = nn.Conv2d(dim, dim_v * dim_u, 1, bias=False)
        self.norm_q = nn.BatchNorm2d(dim_k * heads)
        self.norm_v = nn.BatchNorm2d(dim_v * dim_u)

        self.local_contexts = r is not None
        if self.local_contexts:
            self.pos_conv = nn.Conv3d(dim_u, dim_k, (1, r, r), padding=(0, r // 2, r // 2))
        else:
            self.rel_pos_emb = nn.Parameter(torch.randn(2 * n - 1, 2 * n - 1, dim_k, dim_u))
        # No index tensors: the kernels address the table by offset, so upstream's (n², n², 2)
        # rel_pos gather index is never built (it alone is 268 MB at n = 64).

    def extra_repr(self) -> str:
        context = f"r={self.r}" if self.local_contexts else f"n={self.n}"
        return (f"{self.dim}, dim_k={self.dim_k}, {context}, heads={self.heads}, "
                f"dim_out={self.dim_out}, dim_u={self.u}, backend={self.backend!r}")

    def position_table(self, height: int, width: int) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """(pos_table (Rh, Rw, k, u), bias) for an H×W input, as views of the parameters."""
        if self.local_contexts:
            return self.pos_conv.weight[:, :, 0].permute(2, 3, 0, 1), self.pos_conv.bias
        n = self.n
        # Offsets beyond ±(H-1), ±(W-1) never reach inside the image: hand the kernels only
        # the (2H-1, 2W-1) centre of the (2n-1, 2n-1) table.
        return self.rel_pos_emb[n - height:n + height - 1, n - width:n + width - 1], None

    def project(self, x: torch.Tensor):
        """q (B,h,k,H,W), keys (B,u,k,H,W), values (B,u,v,H,W), pos_table, bias, all one dtype."""
        b, _, hh, ww = x.shape
        q = self.norm_q(self.to_q(x)).reshape(b, self.heads, self.dim_k, hh, ww)
        keys = self.to_k(x).reshape(b, self.u, self.dim_k, hh, ww)
        values = self.norm_v(self.to_v(x)).reshape(b, self.u, self.dim_v, hh, ww)
        pos_table, bias = self.position_table(hh, ww)
        dtype = values.dtype  # under autocast: the activations' reduced precision
        q, keys, pos_table = q.to(dtype), keys.to(dtype), pos_table.to(dtype)
        bias = None if bias is None else bias.to(dtype)
        return q, keys, values, pos_table, bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() != 4 or x.shape[1] != self.dim:
            raise ValueError(f"x must have shape (B, dim, H, W) with dim = {self.dim}, got "
                             f"({', '.join(map(str, x.shape))})")
        if not x.is_floating_point():
            raise TypeError(f"x must be a floating-point tensor, got dtype {x.dtype}")
        b, _, hh, ww = x.shape
        if not self.local_contexts and (hh > self.n or ww > self.n):
            raise ValueError(f"global context with n={self.n} takes H, W <= {self.n}; x has "
                             f"H={hh}, W={ww} (build the layer with n >= {max(hh, ww)})")
        channels_last = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
        q, keys, values, pos_table, bias = self.project(x)
        validate_inputs(q, keys, values, pos_table, bias)
        name = select_backend(q, keys, values, pos_table, bias, self.backend)
        self.last_backend = name
        y = run_backend(name, q, keys, values, pos_table, bias)
        y = y.reshape(b, self.heads * self.dim_v, hh, ww)
        if channels_last:
            y = y.contiguous(memory_format=torch.channels_last)
        return y


λLayer = LambdaLayer

__all__ = ["LambdaLayer", "λLayer"]
