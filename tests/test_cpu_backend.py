"""What is particular to the fused CPU back end (csrc/cpu): half-precision ops called directly,
strided and channels_last inputs, and the memory rule (peak memory never holds the logits or λp).
Values, gradients, determinism, gradcheck and opcheck on every CPU ISA level are in
tests/test_backends.py (the one harness for all back ends)."""
from __future__ import annotations


import pytest
import torch

import lambda_kernels
from lambda_kernels.reference import lambda_reference

from harness import make_inputs, outputs_and_grads, peak_memory_increase

_REASON = lambda_kernels.available_backends("cpu").get("cpu")
pytestmark = pytest.mark.skipif(_REASON is not None, reason=f"cpu back end unavailable: {_REASON}")

OPS = torch.ops.lambda_kernels



def _inputs(case, dtype, requires_grad=True, seed=0):
    b, h, k, u, v, hh, ww, rh, rw, bias = case
    return make_inputs(batch=b, heads=h, dim_k=k, dim_u=u, dim_v=v, height=hh, width=ww, rh=rh,
                       rw=rw, bias=bias, dtype=dtype, requires_grad=requires_grad, seed=seed)


def test_half_runs_through_the_ops():
    case = (2, 2, 3, 2, 5, 5, 7, 3, 5, True)
    q, keys, values, pos_table, _ = _inputs(case, torch.float16, requires_grad=False)
    lam = torch.randn(case[0], case[2], case[4], dtype=torch.float16)
    y = OPS.lambda_output(q, values, pos_table, lam)
    want = OPS.lambda_output(q.double(), values.double(), pos_table.double(), lam.double())
    assert y.dtype == torch.float16
    torch.testing.assert_close(y.double(), want, rtol=2e-2, atol=2e-2 * want.abs().max().item())


def test_noncontiguous_and_channels_last_inputs():
    case = (2, 2, 4, 2, 6, 5, 7, 5, 3, True)
    q, keys, values, pos_table, bias = _inputs(case, torch.float64, requires_grad=False)
    # channels_last-like 5-D layouts (strided) and a permuted-then-viewed pos_table
    q_nc = q.permute(0, 3, 4, 1, 2).contiguous().permute(0, 3, 4, 1, 2)
    keys_nc = keys.permute(0, 1, 3, 4, 2).contiguous().permute(0, 1, 4, 2, 3)
    values_nc = values.transpose(3, 4).contiguous().transpose(3, 4)
    pos_nc = pos_table.permute(2, 3, 0, 1).contiguous().permute(2, 3, 0, 1)
    assert not any(t.is_contiguous() for t in (q_nc, keys_nc, values_nc, pos_nc))
    leaves_nc = [t.requires_grad_() for t in (q_nc, keys_nc, values_nc, pos_nc, bias)]
    leaves = [t.detach().clone().requires_grad_() for t in (q, keys, values, pos_table, bias)]
    dy = torch.randn(2, 2, 6, 5, 7, dtype=torch.float64)
    got = outputs_and_grads(lambda *a: lambda_kernels.lambda_op(*a, backend="cpu"), leaves_nc,
                            dy.transpose(3, 4).contiguous().transpose(3, 4))
    want = outputs_and_grads(lambda_reference, leaves, dy)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-10)


def _peak_increase(b, h, k, u, v, hh, ww, rh, rw):
    return peak_memory_increase("lambda_op", (b, h, k, hh, ww), (b, u, k, hh, ww),
                                (b, u, v, hh, ww), (rh, rw, k, u), (b, h, v, hh, ww))


def test_peak_memory_global_context_never_builds_logits():
    # seed-global shape: all logits B·h·N·N = 268 MB in float32 (upstream also gathers an
    # N·N·k·u table: 1 GB); inputs are ~1 MB. Measured on the development machine: ~60 MB for
    # the first step (worker-thread allocator arenas, per-chunk d_pos_table partials, gradients), ~20 MB
    # for a repeat.
    b, h, k, u, v, hh, ww = 1, 4, 16, 1, 8, 64, 64
    n = hh * ww
    logits_bytes = 4 * b * h * n * n
    first, steady = _peak_increase(b, h, k, u, v, hh, ww, 2 * hh - 1, 2 * ww - 1)
    assert first < logits_bytes / 2, (first, logits_bytes)
    assert steady < logits_bytes / 10, (steady, logits_bytes)


def test_peak_memory_never_builds_positional_lambda():
    # λp (B, N, k, v) = 268 MB in float32; each input is 2 MB.
    b, h, k, u, v, hh, ww, r = 1, 1, 128, 1, 128, 64, 64, 7
    lam_p_bytes = 4 * b * hh * ww * k * v
    first, steady = _peak_increase(b, h, k, u, v, hh, ww, r, r)
    assert first < lam_p_bytes / 2, (first, lam_p_bytes)
    assert steady < lam_p_bytes / 10, (steady, lam_p_bytes)

# The layer against lambda-networks 0.4.0 runs for every CPU back end, this one included, in
# tests/test_layer.py (float32 and float64).
