"""LambdaLayer: the lambda layer of LambdaNetworks (Bello, ICLR 2021) with the constructor and
state_dict of lambda-networks 0.4.0, running on the fused kernels of this package.

    LambdaLayer    x (B, dim, H, W) -> y (B, dim_out, H / stride, W / stride)
    LambdaLayer1d  x (B, dim, L)    -> y (B, dim_out, L / stride)       (sequences)

Projections are the 1×1 convolutions and batch norms of upstream; the lambda itself runs
through `lambda_op` (functional.py), which picks a back end. Beyond upstream: global context
takes any H×W with H, W <= n (rectangular too), channels_last input keeps its memory format,
mixed precision runs the kernels in the activations' dtype with float32 accumulation,
`stride` downsamples the output by average pooling (as the paper and timm do), `backend=` pins
a back end, and the layer compiles with torch.compile(fullgraph=True).

A sequence is an image of height 1: LambdaLayer1d runs the same op and kernels on (B, ·, 1, L).
"""
from __future__ import annotations

import contextlib
import numbers
import operator
from typing import Optional

import torch
from torch import nn

from ._cpu_gemm import product_dtype
from .functional import (lambda_op, lambda_op3d, run_backend, run_backend3d, select,
                         validate_inputs, validate_inputs3d)


class _LambdaBase(nn.Module):
    """What the 1-D, 2-D and 3-D layers share: arguments, the lambda and its bookkeeping.
    Subclasses build the projections for their rank and give the position table for a map
    size."""

    spatial_rank: int  # 1 for sequences, 2 for images, 3 for volumes and video

    def __init__(self, dim: int, *, dim_k: int, n: Optional[int], r: Optional[int], heads: int,
                 dim_out: Optional[int], dim_u: int, stride: int, backend: str):
        super().__init__()
        dim_out = dim if dim_out is None else dim_out
        dim, dim_k, heads, dim_out, dim_u, stride = (
            _positive_int(name, value) for name, value in (
                ("dim", dim), ("dim_k", dim_k), ("heads", heads), ("dim_out", dim_out),
                ("dim_u", dim_u), ("stride", stride)))
        if dim_out % heads != 0:
            raise ValueError(f"dim_out ({dim_out}) must be divisible by heads ({heads})")
        if (n is None) == (r is None):
            raise ValueError("give exactly one of n (global context) and r (local context), got "
                             f"n={n!r}, r={r!r}")
        n, r = self._context(n, r)
        if not isinstance(backend, str):
            raise TypeError(f"backend must be a string, got {type(backend).__name__}")

        self.u = dim_u
        self.heads = heads
        self.dim = dim
        self.dim_k = dim_k
        self.dim_v = dim_out // heads
        self.dim_out = dim_out
        self.n = n
        self.r = r
        self.stride = stride
        self.backend = backend
        self.local_contexts = r is not None
        # What the last forward ran: the back end and its variant (the CPU instruction set).
        self.last_backend: Optional[str] = None
        self.last_backend_variant: Optional[str] = None

    @staticmethod
    def _context(n, r):
        """(n, r) as ints (None for the one not given); ValueError unless valid."""
        return (None if n is None else _positive_int("n", n),
                None if r is None else _positive_int("r", r, odd=True))

    def _add_projections(self, conv: type, norm: type) -> None:
        """The 1×1 query/key/value projections and the query/value batch norms (lambda-networks'
        names and shapes), with the Conv/BatchNorm classes of the layer's spatial rank."""
        self.to_q = conv(self.dim, self.dim_k * self.heads, 1, bias=False)
        self.to_k = conv(self.dim, self.dim_k * self.u, 1, bias=False)
        self.to_v = conv(self.dim, self.dim_v * self.u, 1, bias=False)
        self.norm_q = norm(self.dim_k * self.heads)
        self.norm_v = norm(self.dim_v * self.u)

    def projections(self, x: torch.Tensor):
        """norm_q(to_q(x)), to_k(x), norm_v(to_v(x)) as (B, channels, *map), computed as one
        matrix product with the three 1×1 weights concatenated (one GEMM reads x once), split
        afterwards. A batch norm that uses its running statistics (eval) is folded into its
        rows of that weight and a bias, recomputed from the parameters on every call (so
        in-place updates, load_state_dict, .to() and functional_call all see current values).
        A batch norm that normalises by batch statistics runs as its module on its slice, so
        training and the running-statistic updates are those of lambda-networks. Projections
        replaced by other modules, or with hooks, run one by one as upstream does."""
        convs = (self.to_q, self.to_k, self.to_v)
        if not self._fusable(convs):
            return self.norm_q(self.to_q(x)), self.to_k(x), self.norm_v(self.to_v(x))
        weight = torch.cat([conv.weight for conv in convs]).flatten(1)  # (O, C)
        sizes = [conv.out_channels for conv in convs]
        if _is_fx_proxy(x):
            # FX symbolic tracing: the batch norms stay leaf modules, so the traced graph
            # follows train()/eval() when it runs, as it did with the separate projections.
            folds = [None, None, None]
        else:
            folds = [_eval_batch_norm_affine(self.norm_q), None,
                     _eval_batch_norm_affine(self.norm_v)]
        bias = None
        if folds[0] is not None or folds[2] is not None:
            scales, shifts = [], []
            for size, fold in zip(sizes, folds):
                scale, shift = fold if fold is not None else (weight.new_ones(size),
                                                              weight.new_zeros(size))
                scales.append(scale)
                shifts.append(shift)
            weight = weight * torch.cat(scales).unsqueeze(1)
            bias = torch.cat(shifts)
        # (O, C) @ (B, C, N) as a batched GEMM over the expanded weight: 2-4x faster than the
        # same 1×1 convolution through oneDNN on the CPUs measured, and its training step
        # 1.2-1.6x faster than torch.matmul's (as fast at 14²/512 bf16), which folds the batch
        # into one GEMM on copies of x and of the gradient transposed to (B·N, ·)
        # (benchmarks/projection_gemm.py)
        traced = _is_fx_proxy(x)  # FX proxies have no device or dtype to decide on
        autocast = not traced and torch.is_autocast_enabled(x.device.type)
        cast_weight = autocast and weight.dtype == torch.float32
        out_dtype = torch.get_autocast_dtype(x.device.type) if cast_weight else weight.dtype
        if not traced and product_dtype(x.device, out_dtype) != out_dtype:
            # No bf16/fp16 GEMM in this CPU's oneDNN (AVX2 CPUs for bf16; every CPU without
            # AVX512-FP16 or AMX-FP16 for fp16): ATen's fallback runs 30-100x slower than its
            # fp32 GEMM (14²/512 B=2: the layer's bf16 step 7x our fp32 one on AVX2). The
            # product runs in fp32 on the exact fp32 values of the operands, rounded once.
            with torch.autocast(x.device.type, enabled=False) if autocast else \
                    contextlib.nullcontext():
                out = torch.bmm(weight.float().expand(x.shape[0], -1, -1), x.flatten(2).float())
                if bias is not None:
                    out = out.add_(bias.float().unsqueeze(1))
            out = out.to(out_dtype)
        else:
            if cast_weight:
                # autocast casts bmm's operands: the weight before its expansion (one copy),
                # not its B expanded copies (8×8/512, B=8: the product 0.47 → 0.33 ms)
                weight = weight.to(out_dtype)
            out = torch.bmm(weight.expand(x.shape[0], -1, -1), x.flatten(2))
            if bias is not None:
                out = out.add_(bias.to(out.dtype).unsqueeze(1))
        q, keys, values = out.unflatten(2, x.shape[2:]).split(sizes, dim=1)
        # A slice of the product is strided over the batch; CPU batch norms in training mode
        # take a slow strided path on it (bf16 3-6x, fp32 1.3x slower than on a contiguous
        # copy, benchmarks/projection_gemm.py), so they get the copy.
        if folds[0] is None:
            q = self.norm_q(q.contiguous())
        if folds[2] is None:
            values = self.norm_v(values.contiguous())
        return q, keys, values

    def _fusable(self, convs) -> bool:
        """Whether the three projections are this layer's plain bias-free 1×1 convolutions with
        no hooks (which a fused call would skip)."""
        conv_type = (nn.Conv1d, nn.Conv2d, nn.Conv3d)[self.spatial_rank - 1]
        ones = (1,) * self.spatial_rank
        if _global_hooks():
            return False
        for conv in convs:
            if (type(conv) is not conv_type or conv.bias is not None or conv.groups != 1
                    or conv.kernel_size != ones or conv.stride != ones or conv.dilation != ones
                    or conv.padding not in ((0,) * self.spatial_rank, "valid")
                    or conv._forward_hooks or conv._forward_pre_hooks):
                return False
        return True

    def extra_repr(self) -> str:
        context = f"r={self.r}" if self.local_contexts else f"n={self.n}"
        stride = f", stride={self.stride}" if self.stride != 1 else ""
        return (f"{self.dim}, dim_k={self.dim_k}, {context}, heads={self.heads}, "
                f"dim_out={self.dim_out}, dim_u={self.u}{stride}, backend={self.backend!r}")

    def project(self, x: torch.Tensor):
        """q (B,h,k,H,W), keys (B,u,k,H,W), values (B,u,v,H,W), pos_table, bias, all one dtype
        (a sequence is a map of height 1). Written without reading x's sizes, so that FX
        symbolic tracing and dynamic shapes see no Python integers of H or W."""
        q, keys, values = self.projections(x)
        q = q.unflatten(1, (self.heads, self.dim_k))
        keys = keys.unflatten(1, (self.u, self.dim_k))
        values = values.unflatten(1, (self.u, self.dim_v))
        if self.spatial_rank == 1:
            q, keys, values = q.unsqueeze(3), keys.unsqueeze(3), values.unsqueeze(3)
        pos_table, bias = self.position_table(q.shape[3], q.shape[4])
        dtype = values.dtype  # under autocast: the activations' reduced precision
        q, keys, pos_table = q.to(dtype), keys.to(dtype), pos_table.to(dtype)
        bias = None if bias is None else bias.to(dtype)
        return q, keys, values, pos_table, bias

    def _check_input(self, x) -> None:
        layout = "(B, dim, H, W)" if self.spatial_rank == 2 else "(B, dim, L)"
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() != self.spatial_rank + 2 or x.shape[1] != self.dim:
            raise ValueError(f"x must have shape {layout} with dim = {self.dim}, got "
                             f"({', '.join(map(str, x.shape))})")
        if not x.is_floating_point():
            raise TypeError(f"x must be a floating-point tensor, got dtype {x.dtype}")
        self._check_dtype(x)
        names = ("H", "W") if self.spatial_rank == 2 else ("L",)
        self._check_map_size(x, names)
        if not self.local_contexts and max(x.shape[2:]) > self.n:
            sizes = ", ".join(f"{name}={size}" for name, size in zip(names, x.shape[2:]))
            raise ValueError(f"global context with n={self.n} takes {', '.join(names)} <= "
                             f"{self.n}; x has {sizes} (build the layer with "
                             f"n >= {max(x.shape[2:])})")

    def _check_map_size(self, x, names) -> None:
        """Every map size at least 1, and at least the stride (the pooling's window), said
        before the lambda runs."""
        if any(size < max(1, self.stride) for size in x.shape[2:]):
            # formatted only here: formatting a symbolic size (torch.compile, export) would
            # specialise the graph to that size
            sizes = ", ".join(f"{name}={size}" for name, size in zip(names, x.shape[2:]))
            need = "at least 1" if self.stride == 1 else f"at least stride = {self.stride}"
            raise ValueError(f"x must have {', '.join(names)} {need}, got {sizes}")

    def _check_dtype(self, x) -> None:
        """Outside autocast the projections need x in their weight's dtype (as a Conv2d does):
        say so, rather than the GEMM's bare mismatch error."""
        weight = getattr(self.to_q, "weight", None)
        if isinstance(weight, torch.Tensor) and x.dtype != weight.dtype and \
                not torch.is_autocast_enabled(x.device.type):
            raise TypeError(f"x has dtype {x.dtype}; the layer's parameters are {weight.dtype} "
                            f"(convert x, or the layer with .to({x.dtype}), or run under "
                            "torch.autocast)")

    def _lambda(self, x: torch.Tensor) -> torch.Tensor:
        """The lambda of x, shape (B, dim_out, *x.shape[2:]), before any pooling."""
        q, keys, values, pos_table, bias = self.project(x)
        volume = self.spatial_rank == 3
        if _is_fx_proxy(q):
            # FX symbolic tracing (torch.fx.symbolic_trace, torchvision's feature extraction):
            # the op is one leaf node of the graph; it validates and chooses when the graph runs.
            # (Looked up here, in this module's globals, where torch.fx.wrap patches them.)
            op = lambda_op3d if volume else lambda_op
            y = op(q, keys, values, pos_table, bias, backend=self.backend)
        else:
            (validate_inputs3d if volume else validate_inputs)(q, keys, values, pos_table, bias)
            chosen = select(q, self.backend)
            self.last_backend, self.last_backend_variant = chosen.backend, chosen.variant
            y = (run_backend3d if volume else run_backend)(chosen.backend, q, keys, values,
                                                           pos_table, bias)
        y = y.flatten(1, 2)  # (B, h·v, *map), head-major like upstream
        return y.squeeze(2) if self.spatial_rank == 1 else y

    def _checked(self, x) -> bool:
        """Check x (raises on bad input); False for an FX proxy, which is checked when the
        traced graph runs."""
        if _is_fx_proxy(x):
            return False
        self._check_input(x)
        return True


def _is_integer(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _positive_int(name: str, value, *, odd: bool = False) -> int:
    """value as a Python int: any integer type (NumPy's too, which lambda-networks' constructor
    takes), not a bool; ValueError naming the argument unless positive (and odd)."""
    if _is_integer(value):
        value = operator.index(value)
        if value >= 1 and (not odd or value % 2 == 1):
            return value
    kind = "positive odd integer" if odd else "positive integer"
    raise ValueError(f"{name} must be a {kind}, got {value!r}")


def _eval_batch_norm_affine(norm: nn.Module):
    """(scale, shift) with norm(y) == y * scale + shift per channel, for a batch norm that
    normalises by its running statistics (eval mode); None for anything else (training-mode
    batch norms, other modules, modules with hooks), which then runs as a module."""
    if (not isinstance(norm, nn.modules.batchnorm._BatchNorm) or norm.training
            or norm.running_mean is None or norm.running_var is None
            or norm._forward_hooks or norm._forward_pre_hooks):
        return None
    scale = torch.rsqrt(norm.running_var + norm.eps)
    if norm.weight is not None:
        scale = norm.weight * scale
    shift = -norm.running_mean * scale
    if norm.bias is not None:
        shift = shift + norm.bias
    return scale, shift


def _global_hooks() -> bool:
    """Whether forward hooks registered for all modules exist (a fused projection would skip
    them for to_q / to_k / to_v)."""
    from torch.nn.modules import module
    return bool(module._global_forward_hooks or module._global_forward_pre_hooks)


def _is_fx_proxy(t) -> bool:
    return isinstance(t, torch.fx.Proxy)


def _keeps_channels_last(x: torch.Tensor, memory_format=torch.channels_last) -> bool:
    """Whether x is channels_last (and not also contiguous): the output keeps that format.
    Tensors inside torch.func transforms (vmap) cannot be asked their memory format: False."""
    if not torch.compiler.is_compiling() and \
            torch._C._functorch.is_functorch_wrapped_tensor(x):
        return False
    return x.is_contiguous(memory_format=memory_format) and not x.is_contiguous()


def _context_centre(table: torch.Tensor, context: tuple, sizes: tuple) -> torch.Tensor:
    """The centre of a global-context table, 2n − 1 entries per axis: the 2s − 1 offsets that
    reach inside an input of size s <= n along each axis. Raises on s > n: the layers check
    their input first, but an FX-traced layer checks nothing before its graph runs, and a slice
    past the table's ends would be silently short (an n+1 map got a one-entry table)."""
    if any(s > n for s, n in zip(sizes, context)):
        raise ValueError(f"global context with n={tuple(context)} takes an input no larger "
                         f"along each axis; it has {tuple(sizes)} (build the layer with a "
                         "larger n)")
    # Gathered, not sliced: a slice is contiguous exactly when s == n, and torch's symbolic
    # shapes (torch.compile(dynamic=True), torch.export with dynamic sizes) guard on that, so a
    # graph traced at s < n refused s == n. The centre is small (at most the table).
    for axis, (n, s) in enumerate(zip(context, sizes)):
        table = table.index_select(axis, torch.arange(n - s, n + s - 1, device=table.device))
    return table


# FX symbolic tracing records calls of these from this module as leaf nodes (the op validates
# and chooses its back end, the table centre checks its sizes, when the traced graph runs).
torch.fx.wrap("lambda_op")
torch.fx.wrap("lambda_op3d")
torch.fx.wrap("_context_centre")


class LambdaLayer(_LambdaBase):
    """Lambda layer over images, x (B, dim, H, W) -> (B, dim_out, H // stride, W // stride).

    Exactly one of `n` (global context: any H, W <= n) and `r` (local context, odd window).
    stride > 1 average-pools the output (kernel = stride = stride, as timm's LambdaLayer)."""

    spatial_rank = 2

    def __init__(self, dim: int, *, dim_k: int, n: Optional[int] = None, r: Optional[int] = None,
                 heads: int = 4, dim_out: Optional[int] = None, dim_u: int = 1, stride: int = 1,
                 backend: str = "auto"):
        super().__init__(dim, dim_k=dim_k, n=n, r=r, heads=heads, dim_out=dim_out, dim_u=dim_u,
                         stride=stride, backend=backend)
        self._add_projections(nn.Conv2d, nn.BatchNorm2d)
        r, n = self.r, self.n
        if self.local_contexts:
            self.pos_conv = nn.Conv3d(self.u, self.dim_k, (1, r, r), padding=(0, r // 2, r // 2))
        else:
            self.rel_pos_emb = nn.Parameter(torch.randn(2 * n - 1, 2 * n - 1, self.dim_k, self.u))
        # No index tensors: the kernels address the table by offset, so upstream's (n², n², 2)
        # rel_pos gather index is never built (it alone is 268 MB at n = 64).
        self.pool = nn.AvgPool2d(self.stride, self.stride) if self.stride > 1 else nn.Identity()

    def position_table(self, height: int, width: int) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """(pos_table (Rh, Rw, k, u), bias) for an H×W input, as views of the parameters."""
        if self.local_contexts:
            return self.pos_conv.weight[:, :, 0].permute(2, 3, 0, 1), self.pos_conv.bias
        n = self.n
        # Offsets beyond ±(H-1), ±(W-1) never reach inside the image: hand the kernels only
        # the (2H-1, 2W-1) centre of the (2n-1, 2n-1) table.
        return _context_centre(self.rel_pos_emb, (n, n), (height, width)), None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        channels_last = self._checked(x) and _keeps_channels_last(x)
        y = self.pool(self._lambda(x))
        if channels_last:
            y = y.contiguous(memory_format=torch.channels_last)
        return y


class LambdaLayer1d(_LambdaBase):
    """Lambda layer over sequences, x (B, dim, L) -> (B, dim_out, L // stride).

    Exactly one of `n` (global context: any L <= n; table `rel_pos_emb` (2n-1, dim_k, dim_u))
    and `r` (local context, odd window; `pos_conv` = Conv2d(dim_u, dim_k, (1, r)) over the
    values viewed as (B, u, v, L), the 1-D twin of lambda-networks' Conv3d). Projections are
    Conv1d / BatchNorm1d. stride > 1 average-pools the output."""

    spatial_rank = 1

    def __init__(self, dim: int, *, dim_k: int, n: Optional[int] = None, r: Optional[int] = None,
                 heads: int = 4, dim_out: Optional[int] = None, dim_u: int = 1, stride: int = 1,
                 backend: str = "auto"):
        super().__init__(dim, dim_k=dim_k, n=n, r=r, heads=heads, dim_out=dim_out, dim_u=dim_u,
                         stride=stride, backend=backend)
        self._add_projections(nn.Conv1d, nn.BatchNorm1d)
        r, n = self.r, self.n
        if self.local_contexts:
            self.pos_conv = nn.Conv2d(self.u, self.dim_k, (1, r), padding=(0, r // 2))
        else:
            self.rel_pos_emb = nn.Parameter(torch.randn(2 * n - 1, self.dim_k, self.u))
        self.pool = nn.AvgPool1d(self.stride, self.stride) if self.stride > 1 else nn.Identity()

    def position_table(self, height: int, width: int) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """(pos_table (1, Rw, k, u), bias) for a sequence of length `width` (height is 1)."""
        if self.local_contexts:
            return self.pos_conv.weight.permute(2, 3, 0, 1), self.pos_conv.bias
        n = self.n
        return _context_centre(self.rel_pos_emb, (n,), (width,)).unsqueeze(0), None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._checked(x)
        return self.pool(self._lambda(x))


def _triple(value) -> tuple[int, int, int]:
    """(t, h, w) of a checked context: an int (the same for all three) or a 3-tuple."""
    return (value,) * 3 if isinstance(value, int) else value


def _context3d(name: str, value, *, odd: bool):
    """value as an int or a tuple of 3 ints (as given); ValueError naming the argument unless
    positive (and odd)."""
    if _is_integer(value):
        return _positive_int(name, value, odd=odd)
    kind = "odd integer" if odd else "integer"
    if isinstance(value, (tuple, list)) and len(value) == 3 and all(map(_is_integer, value)):
        try:
            return tuple(_positive_int(name, item, odd=odd) for item in value)
        except ValueError:
            pass
    raise ValueError(f"{name} must be a positive {kind} or a (t, h, w) tuple of positive "
                     f"{kind}s, got {value!r}")


class LambdaLayer3d(_LambdaBase):
    """Lambda layer over video or volumes, x (B, dim, T, H, W) -> (B, dim_out, T, H, W)
    (each of T, H, W divided by `stride`).

    Exactly one of `n` (global context: an int or (nt, nh, nw); any T <= nt, H <= nh, W <= nw;
    table `rel_pos_emb` (2nt-1, 2nh-1, 2nw-1, dim_k, dim_u)) and `r` (local context: an odd
    int or an (rt, rh, rw) tuple of odd ints; table `pos_conv` = Conv3d(dim_u, dim_k,
    (rt, rh, rw), padding=(rt//2, rh//2, rw//2)) over the values of each value channel, the
    3-D twin of the 2-D layer's Conv3d). Projections are Conv3d 1×1×1 / BatchNorm3d with the
    2-D layer's names. stride > 1 average-pools T, H and W (AvgPool3d(stride, stride));
    channels_last_3d input gives channels_last_3d output. Runs lambda_op3d: the fused back
    ends' 2-D kernels summed over the temporal taps (see functional.py)."""

    spatial_rank = 3

    def __init__(self, dim: int, *, dim_k: int, n=None, r=None, heads: int = 4,
                 dim_out: Optional[int] = None, dim_u: int = 1, stride: int = 1,
                 backend: str = "auto"):
        super().__init__(dim, dim_k=dim_k, n=n, r=r, heads=heads, dim_out=dim_out, dim_u=dim_u,
                         stride=stride, backend=backend)
        self._add_projections(nn.Conv3d, nn.BatchNorm3d)
        if self.local_contexts:
            self.window = _triple(self.r)
            rt, rh, rw = self.window
            self.pos_conv = nn.Conv3d(self.u, self.dim_k, self.window,
                                      padding=(rt // 2, rh // 2, rw // 2))
        else:
            self.context_size = _triple(self.n)
            nt, nh, nw = self.context_size
            self.rel_pos_emb = nn.Parameter(
                torch.randn(2 * nt - 1, 2 * nh - 1, 2 * nw - 1, self.dim_k, self.u))
        self.pool = nn.AvgPool3d(self.stride, self.stride) if self.stride > 1 else nn.Identity()

    @staticmethod
    def _context(n, r):
        return (None if n is None else _context3d("n", n, odd=False),
                None if r is None else _context3d("r", r, odd=True))

    def position_table(self, frames: int, height: int, width: int
                       ) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """(pos_table (Rt, Rh, Rw, k, u), bias) for a T×H×W input, as views of the parameters."""
        if self.local_contexts:
            return self.pos_conv.weight.permute(2, 3, 4, 0, 1), self.pos_conv.bias
        nt, nh, nw = self.context_size
        # only the offsets that reach inside the volume: the (2T-1, 2H-1, 2W-1) centre
        return _context_centre(self.rel_pos_emb, (nt, nh, nw), (frames, height, width)), None

    def project(self, x: torch.Tensor):
        """q (B,h,k,T,H,W), keys (B,u,k,T,H,W), values (B,u,v,T,H,W), pos_table, bias, all one
        dtype."""
        q, keys, values = self.projections(x)
        q = q.unflatten(1, (self.heads, self.dim_k))
        keys = keys.unflatten(1, (self.u, self.dim_k))
        values = values.unflatten(1, (self.u, self.dim_v))
        # sizes read from q, not x: FX proxies and symbolic sizes (as the 2-D layer)
        pos_table, bias = self.position_table(q.shape[3], q.shape[4], q.shape[5])
        dtype = values.dtype  # under autocast: the activations' reduced precision
        q, keys, pos_table = q.to(dtype), keys.to(dtype), pos_table.to(dtype)
        bias = None if bias is None else bias.to(dtype)
        return q, keys, values, pos_table, bias

    def _check_input(self, x) -> None:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() != 5 or x.shape[1] != self.dim:
            raise ValueError(f"x must have shape (B, dim, T, H, W) with dim = {self.dim}, got "
                             f"({', '.join(map(str, x.shape))})")
        if not x.is_floating_point():
            raise TypeError(f"x must be a floating-point tensor, got dtype {x.dtype}")
        self._check_dtype(x)
        self._check_map_size(x, ("T", "H", "W"))
        if not self.local_contexts and any(s > c for s, c in zip(x.shape[2:], self.context_size)):
            nt, nh, nw = self.context_size
            raise ValueError(f"global context with n=({nt}, {nh}, {nw}) takes T <= {nt}, "
                             f"H <= {nh}, W <= {nw}; x has T={x.shape[2]}, H={x.shape[3]}, "
                             f"W={x.shape[4]} (build the layer with a larger n)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        channels_last = self._checked(x) and _keeps_channels_last(x, torch.channels_last_3d)
        y = self.pool(self._lambda(x))
        if channels_last:
            y = y.contiguous(memory_format=torch.channels_last_3d)
        return y


λLayer = LambdaLayer

__all__ = ["LambdaLayer", "LambdaLayer1d", "LambdaLayer3d", "λLayer"]
