"""The fused CPU back end (csrc/cpu) against the einsum reference: values, gradients, dtypes,
layouts, determinism, opcheck, the memory rule, and the layer against lambda-networks 0.4.0."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import lambda_kernels
from lambda_kernels import _ext
from lambda_kernels.reference import lambda_reference

from helpers import make_inputs

_REASON = lambda_kernels.available_backends("cpu").get("cpu")
pytestmark = pytest.mark.skipif(_REASON is not None, reason=f"cpu back end unavailable: {_REASON}")

OPS = torch.ops.lambda_kernels

# (batch, heads, k, u, v, H, W, Rh, Rw, bias)
SWEEP = [
    (1, 1, 1, 1, 1, 1, 1, 1, 1, True),
    (2, 2, 3, 2, 5, 5, 7, 3, 5, True),      # rectangular map and table
    (1, 4, 16, 4, 8, 9, 11, 23, 23, True),   # r >= 2·max(H, W)
    (2, 3, 5, 3, 3, 1, 9, 3, 7, False),      # H = 1
    (1, 2, 4, 1, 2, 7, 1, 5, 3, True),       # W = 1
    (1, 2, 4, 1, 17, 6, 5, 11, 9, False),    # v not a multiple of the vector width
    (2, 4, 8, 1, 8, 8, 8, 15, 15, False),    # global style (2H-1, 2W-1)
    (1, 3, 6, 2, 4, 5, 9, 9, 17, False),     # global style, rectangular
    (1, 1, 9, 3, 33, 4, 13, 1, 1, True),     # 1x1 table, k above a register block
    (3, 2, 2, 4, 6, 6, 6, 13, 3, True),      # u = 4, tall table
    (1, 4, 3, 2, 1, 3, 40, 7, 81, False),    # v = 1, wide row, table wider than image
]


def _ids(case):
    return "b{}h{}k{}u{}v{}_{}x{}_r{}x{}{}".format(*case[:9], "_bias" if case[9] else "")


def _inputs(case, dtype, requires_grad=True, seed=0):
    b, h, k, u, v, hh, ww, rh, rw, bias = case
    return make_inputs(batch=b, heads=h, dim_k=k, dim_u=u, dim_v=v, height=hh, width=ww, rh=rh,
                       rw=rw, bias=bias, dtype=dtype, requires_grad=requires_grad, seed=seed)


def _outputs_and_grads(fn, inputs, dy):
    y = fn(*inputs)
    leaves = [t for t in inputs if t is not None]
    grads = torch.autograd.grad(y, leaves, dy)
    return [y.detach()] + list(grads)


def _compare(case, dtype, rtol):
    inputs = _inputs(case, dtype)
    ref_inputs = [None if t is None else t.detach().double().requires_grad_() for t in inputs]
    torch.manual_seed(1)
    dy = torch.randn(case[0], case[1], case[4], case[5], case[6], dtype=torch.float64)
    got = _outputs_and_grads(lambda *a: lambda_kernels.lambda_op(*a, backend="cpu"), inputs,
                             dy.to(dtype))
    want = _outputs_and_grads(lambda_reference, ref_inputs, dy)
    names = ["y", "dq", "dkeys", "dvalues", "dpos_table", "dbias"]
    for name, g, w in zip(names, got, want):
        assert g.dtype == dtype, name
        scale = w.abs().max().item() + 1e-30
        err = (g.double() - w).abs().max().item()
        assert err <= rtol * scale, f"{name}: max err {err:.3g} vs scale {scale:.3g}"


@pytest.mark.parametrize("case", SWEEP, ids=_ids)
def test_float64_matches_reference(case):
    _compare(case, torch.float64, 1e-10)


@pytest.mark.parametrize("case", SWEEP, ids=_ids)
def test_float32_matches_reference(case):
    _compare(case, torch.float32, 1e-4)


@pytest.mark.parametrize("case", SWEEP[:8], ids=_ids)
def test_bfloat16_matches_float64_reference(case):
    _compare(case, torch.bfloat16, 3e-2)


@pytest.mark.parametrize("case", SWEEP[:4], ids=_ids)
def test_float16_matches_float64_reference(case):
    _compare(case, torch.float16, 1e-2)


def test_half_runs_through_the_ops():
    case = SWEEP[1]
    q, keys, values, pos_table, _ = _inputs(case, torch.float16, requires_grad=False)
    lam = torch.randn(case[0], case[2], case[4], dtype=torch.float16)
    y = OPS.lambda_output(q, values, pos_table, lam)
    want = OPS.lambda_output(q.double(), values.double(), pos_table.double(), lam.double())
    assert y.dtype == torch.float16
    torch.testing.assert_close(y.double(), want, rtol=2e-2, atol=2e-2 * want.abs().max().item())


@pytest.mark.parametrize("case", [(1, 2, 2, 2, 3, 3, 4, 3, 5, True),
                                  (2, 1, 3, 1, 2, 2, 3, 5, 7, False)], ids=_ids)
def test_gradcheck_float64(case):
    inputs = [t for t in _inputs(case, torch.float64) if t is not None]

    def fn(*args):
        return lambda_kernels.lambda_op(*args, backend="cpu")

    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-8, rtol=1e-6)


def test_opcheck_all_four_ops():
    assert _ext.load() is None
    case = (2, 2, 3, 2, 5, 4, 5, 3, 5, True)
    q, keys, values, pos_table, _ = _inputs(case, torch.float32, requires_grad=False)
    lam_c, stats = OPS.content_lambda(keys, values)
    lam = lam_c + 0.1
    dy = torch.randn(2, 2, 5, 4, 5)
    samples = {
        OPS.content_lambda: (keys, values),
        OPS.content_lambda_backward: (torch.randn_like(lam_c), keys, values, stats),
        OPS.lambda_output: (q, values, pos_table, lam),
        OPS.lambda_output_backward: (dy, q, values, pos_table, lam),
    }
    for op, args in samples.items():
        torch.library.opcheck(op, args)


def test_backward_is_deterministic():
    case = (3, 4, 8, 2, 8, 12, 10, 9, 7, True)
    q, keys, values, pos_table, _ = _inputs(case, torch.float32, requires_grad=False)
    lam = torch.randn(3, 8, 8)
    dy = torch.randn(3, 4, 8, 12, 10)
    first = OPS.lambda_output_backward(dy, q, values, pos_table, lam)
    old_threads = torch.get_num_threads()
    try:
        for threads in (1, old_threads):
            torch.set_num_threads(threads)
            again = OPS.lambda_output_backward(dy, q, values, pos_table, lam)
            for a, b in zip(first, again):
                assert torch.equal(a, b)
    finally:
        torch.set_num_threads(old_threads)


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
    got = _outputs_and_grads(lambda *a: lambda_kernels.lambda_op(*a, backend="cpu"), leaves_nc,
                             dy.transpose(3, 4).contiguous().transpose(3, 4))
    want = _outputs_and_grads(lambda_reference, leaves, dy)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-10)


_MEMORY_PROBE = textwrap.dedent("""
    import json, sys, torch, lambda_kernels
    b, h, k, u, v, hh, ww, rh, rw = map(int, sys.argv[1:10])
    torch.manual_seed(0)
    q = torch.randn(b, h, k, hh, ww, requires_grad=True)
    keys = torch.randn(b, u, k, hh, ww, requires_grad=True)
    values = torch.randn(b, u, v, hh, ww, requires_grad=True)
    pos = torch.randn(rh, rw, k, u, requires_grad=True)
    dy = torch.randn(b, h, v, hh, ww)
    small = [t[:, :, :, :2, :2].detach().clone().requires_grad_() for t in (q, keys, values)]
    lambda_kernels.lambda_op(*small, pos[:3, :3].detach(), backend="cpu").sum().backward()

    def status_bytes(key):
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1]) * 1024

    increases = []
    for _ in range(2):
        q.grad = keys.grad = values.grad = pos.grad = None
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the peak resident set size (VmHWM) to the current one
        before = status_bytes("VmRSS:")
        y = lambda_kernels.lambda_op(q, keys, values, pos, backend="cpu")
        y.backward(dy)
        del y
        increases.append(status_bytes("VmHWM:") - before)
    # first: includes one-time costs (allocator arenas of the worker threads); steady: a repeat.
    print(json.dumps({"first": increases[0], "steady": increases[-1]}))
""")


def _peak_increase(b, h, k, u, v, hh, ww, rh, rw):
    out = subprocess.run([sys.executable, "-c", _MEMORY_PROBE,
                          *map(str, (b, h, k, u, v, hh, ww, rh, rw))],
                         capture_output=True, text=True, check=True, timeout=300)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    return result["first"], result["steady"]


def test_peak_memory_global_context_never_builds_logits():
    # seed-global shape: all logits B·h·N·N = 268 MB in float32 (upstream also gathers an
    # N·N·k·u table: 1 GB); inputs are ~1 MB. Measured on the development machine: ~60 MB for
    # the first step (worker-thread allocator arenas, per-chunk dE partials, gradients), ~20 MB
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
