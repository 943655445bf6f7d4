"""Pure-PyTorch reference of the lambda op: the ground truth every back end is tested against.

Shapes (B batch, h heads, u intra-depth, k key depth, v value depth, H×W image):

    q          (B, h, k, H, W)
    keys       (B, u, k, H, W)
    values     (B, u, v, H, W)
    pos_table  (Rh, Rw, k, u)   Rh, Rw odd; entry (a, c) is the offset (a - Rh//2, c - Rw//2)
    bias       (k,) or None

    σ          = softmax of keys over the H·W positions
    λc[b,k,v]   = Σ_{u,m} σ[b,u,k,m] · values[b,u,v,m]
    λp[b,k,v,p] = bias[k] + Σ_{u,o} pos_table[o,k,u] · values[b,u,v,p+o]   (zero outside the image)
    y[b,h,v,p]  = Σ_k q[b,h,k,p] · (λc[b,k,v] + λp[b,k,v,p])

It materialises σ and λp on purpose: it is slow and memory-hungry, and obviously right.
λp is the Conv3d of lambda-networks (a cross-correlation over (1, Rh, Rw) with zero padding
(0, Rh//2, Rw//2)), so local context, global context (a (2n-1)² table) and windows larger than
the image are one expression.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def content_lambda(keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """λc (B, k, v): softmax(keys) over positions contracted with values over (u, positions)."""
    sigma = keys.flatten(3).softmax(dim=-1)
    return torch.einsum("bukm,buvm->bkv", sigma, values.flatten(3))


def positional_lambda(values: torch.Tensor, pos_table: torch.Tensor,
                      bias: torch.Tensor | None = None) -> torch.Tensor:
    """λp (B, k, v, H, W): the window of values around each position weighted by pos_table."""
    rh, rw = pos_table.shape[0], pos_table.shape[1]
    weight = pos_table.permute(2, 3, 0, 1).unsqueeze(2)  # (k, u, 1, Rh, Rw), as Conv3d weights
    return F.conv3d(values, weight, bias, padding=(0, rh // 2, rw // 2))


def lambda_reference(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
                     pos_table: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """y (B, h, v, H, W) of the lambda op; differentiable through plain autograd."""
    lam_c = content_lambda(keys, values)
    lam_p = positional_lambda(values, pos_table, bias)
    y_content = torch.einsum("bhkyx,bkv->bhvyx", q, lam_c)
    y_position = torch.einsum("bhkyx,bkvyx->bhvyx", q, lam_p)
    return y_content + y_position


# ------------------------------------------------------------------------- 3-D (video, volumes)
# The same op over a T×H×W volume: q (B, h, k, T, H, W), keys (B, u, k, T, H, W), values
# (B, u, v, T, H, W), pos_table (Rt, Rh, Rw, k, u) with odd Rt, Rh, Rw, entry (a, b, c) the
# offset (a - Rt//2, b - Rh//2, c - Rw//2); softmax over all T·H·W positions; λp is a Conv3d
# with a (Rt, Rh, Rw) kernel over the values of each value channel (zero outside the volume).


def positional_lambda3d(values: torch.Tensor, pos_table: torch.Tensor,
                        bias: torch.Tensor | None = None) -> torch.Tensor:
    """λp (B, k, v, T, H, W): the (Rt, Rh, Rw) window of values around each position weighted
    by pos_table, one Conv3d over (T, H, W) for every value channel (v folded into the batch)."""
    rt, rh, rw = pos_table.shape[:3]
    batch, dim_u, dim_v = values.shape[:3]
    weight = pos_table.permute(3, 4, 0, 1, 2)  # (k, u, Rt, Rh, Rw), as Conv3d weights
    per_channel = values.transpose(1, 2).reshape(batch * dim_v, dim_u, *values.shape[3:])
    lam_p = F.conv3d(per_channel, weight, bias, padding=(rt // 2, rh // 2, rw // 2))
    return lam_p.reshape(batch, dim_v, *lam_p.shape[1:]).transpose(1, 2)


def lambda_reference3d(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
                       pos_table: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """y (B, h, v, T, H, W) of the 3-D lambda op; differentiable through plain autograd."""
    lam_c = content_lambda(keys, values)  # softmax over the flattened T·H·W positions
    lam_p = positional_lambda3d(values, pos_table, bias)
    y_content = torch.einsum("bhktyx,bkv->bhvtyx", q, lam_c)
    y_position = torch.einsum("bhktyx,bkvtyx->bhvtyx", q, lam_p)
    return y_content + y_position
