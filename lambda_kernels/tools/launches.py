"""The Triton kernel launches of the lambda op's four ops for one op shape, on meta tensors (the
compile check and the memory-rule tests read the records; nothing runs) or on a GPU (the
autotune report runs and times them)."""
from __future__ import annotations

import torch

from ..bench.op_shapes import OpShape, op_inputs


def op_launches(shape: OpShape, dtype, device="meta") -> list:
    """Every Triton kernel launch (lambda_kernels.triton._tiles.Launch) of the four ops,
    forward and backward, for one shape: on meta tensors nothing runs (the compile check
    and the memory-rule tests read the records), on a GPU the launches can be run and timed."""
    from ..triton import content_lambda as content
    from ..triton import lambda_output as output
    q, keys, values, table, lam = op_inputs(shape, dtype, device)
    b, heads, _, _, v, hh, ww = shape[:7]
    lam_c = torch.empty_like(lam)
    lse = torch.empty(keys.shape[:3], device=device, dtype=torch.float32)
    y = torch.empty(b, heads, v, hh, ww, device=device, dtype=q.dtype)
    dy = y if y.device.type == "meta" else torch.randn_like(y)
    launches = content.content_launches(keys, values, lam_c, lse)
    launches += content.content_backward_launches(lam, keys, values, lse, torch.empty_like(keys),
                                                  torch.empty_like(values))
    launches += output.forward_launches(q, values, table, lam, y)
    launches += output.backward_launches(dy, q, values, table, lam)[0]
    return launches
