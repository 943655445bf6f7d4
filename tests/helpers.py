"""Shared test helpers: random inputs of the lambda op and tolerances per dtype."""
from __future__ import annotations

import torch

# (rtol, atol) for comparing a back end in this dtype with the float64 reference, relative to
# outputs of unit scale.
TOLERANCES = {
    torch.float64: (1e-10, 1e-10),
    torch.float32: (2e-4, 2e-4),
    torch.float16: (2e-2, 2e-2),
    torch.bfloat16: (4e-2, 4e-2),
}


def make_inputs(batch=2, heads=2, dim_k=3, dim_u=2, dim_v=4, height=5, width=4, rh=3, rw=3,
                bias=True, dtype=torch.float64, device="cpu", requires_grad=False, seed=None):
    """(q, keys, values, pos_table, bias) with the layouts of lambda_op."""
    gen = torch.Generator().manual_seed(seed) if seed is not None else None

    def rand(*shape, scale=1.0):
        t = torch.randn(*shape, generator=gen, dtype=torch.float64) * scale
        return t.to(device=device, dtype=dtype).requires_grad_(requires_grad)

    q = rand(batch, heads, dim_k, height, width)
    keys = rand(batch, dim_u, dim_k, height, width)
    values = rand(batch, dim_u, dim_v, height, width)
    pos_table = rand(rh, rw, dim_k, dim_u, scale=0.5)
    b = rand(dim_k) if bias else None
    return q, keys, values, pos_table, b


def as_float64(tensors):
    return [None if t is None else t.detach().double().requires_grad_(t.requires_grad)
            for t in tensors]
