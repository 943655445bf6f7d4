"""The CPU kernels' spectral method (csrc/cpu/spectral_kernels.inc): its cost estimate against
the Python mirror (lambda_kernels.cost), the automatic choice as the kernels make it, shapes
larger than the harness's (seed-like windows, global context) against the reference, the
memory rule, and the knob. Values, gradients of every order, determinism across threads,
gradcheck and opcheck of the method on every CPU level run in the one harness
(tests/test_backends.py: the `cpu-<level>-spectral` targets)."""
from __future__ import annotations

import itertools
import os
import subprocess
import sys

import pytest
import torch

import lambda_kernels
from lambda_kernels import cost
from lambda_kernels.reference import lambda_reference

from harness import assert_close_rule, make_inputs, outputs_and_grads, peak_memory_increase

_REASON = lambda_kernels.available_backends("cpu").get("cpu")
pytestmark = pytest.mark.skipif(_REASON is not None, reason=f"cpu back end unavailable: {_REASON}")

# (B, h, k, u, v, H, W, Rh, Rw)
SEED_LOCAL = (1, 4, 16, 4, 8, 64, 64, 23, 23)
STAGE_28 = (2, 4, 16, 1, 64, 28, 28, 9, 9)


def _ops():
    return torch.ops.lambda_kernels


@pytest.mark.parametrize("sizes", [
    SEED_LOCAL, STAGE_28, (1, 4, 16, 1, 8, 64, 64, 127, 127), (2, 2, 3, 2, 5, 5, 7, 3, 5),
    (1, 1, 2, 1, 3, 1, 1, 1, 1), (3, 8, 4, 2, 6, 17, 9, 41, 5), (2, 4, 16, 1, 128, 14, 14, 9, 9)])
@pytest.mark.parametrize("backward", [False, True])
def test_cost_estimates_match_the_python_mirror(sizes, backward):
    direct, spectral = _ops().cpu_positional_costs(list(sizes), backward)
    assert direct == pytest.approx(cost.direct_cost(*sizes, backward=backward), rel=1e-12)
    assert spectral == pytest.approx(cost.spectral_cost(*sizes, backward=backward), rel=1e-12)


def test_fft_lengths_are_smooth_and_leave_no_wrap():
    for n in range(1, 300):
        m = cost.fft_length(n)
        assert m >= n and m % 2 == 0 and all(cost.fft_length(j) == m for j in range(n, m + 1))
        x = m
        for p in (2, 3, 5):
            while x % p == 0:
                x //= p
        assert x == 1
    # the circular array holds the image and the farthest in-image offset on both sides
    for extent, table in itertools.product((1, 2, 7, 14, 64), (1, 3, 23, 127)):
        reach = min(table // 2, extent - 1)
        assert cost.spectral_length(extent, table) >= extent + reach


def test_the_estimate_picks_the_spectral_method_for_large_windows_only():
    assert cost.cpu_positional_method(*SEED_LOCAL) == cost.SPECTRAL
    assert cost.cpu_positional_method(*SEED_LOCAL, backward=True) == cost.SPECTRAL
    assert cost.cpu_positional_method(1, 4, 16, 1, 8, 64, 64, 127, 127) == cost.SPECTRAL
    for s, c in ((28, 256), (14, 512)):
        for r in (9, 23):
            sizes = (2, 4, 16, 1, c // 4, s, s, r, r)
            assert cost.cpu_positional_method(*sizes) == cost.DIRECT
            assert cost.cpu_positional_method(*sizes, backward=True) == cost.DIRECT


def _op_inputs(sizes, dtype, seed=0):
    b, h, k, u, v, hh, ww, rh, rw = sizes
    g = torch.Generator().manual_seed(seed)
    rand = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64).to(dtype)  # noqa: E731
    return (rand(b, h, k, hh, ww), rand(b, u, v, hh, ww), rand(rh, rw, k, u) * 0.2,
            rand(b, k, v), rand(b, h, v, hh, ww))


def _run(method, inputs):
    q, values, table, lam, dy = inputs
    with lambda_kernels.use_cpu_positional_method(method):
        return (_ops().lambda_output(q, values, table, lam),
                *_ops().lambda_output_backward(dy, q, values, table, lam))


# Spectral for fp32 (estimate 1.76× below direct, above the 1.5 margin) but direct for bf16 on
# the levels whose bf16 micro-kernel counts 1.4× (backward); and two clear cases.
NEAR_MARGIN = (1, 4, 16, 4, 8, 24, 24, 31, 31)


@pytest.mark.parametrize("level", [lv for lv, why in lambda_kernels.cpu_isa_levels().items()
                                   if why is None] if _REASON is None else [])
def test_auto_runs_the_method_the_estimate_picks(level):
    # The two methods round differently, so bit-identity tells which one ran.
    cases = [(SEED_LOCAL, torch.float32), ((1, 2, 4, 1, 4, 10, 9, 3, 3), torch.float32),
             (NEAR_MARGIN, torch.float32), (NEAR_MARGIN, torch.bfloat16)]
    chosen_methods = set()
    with lambda_kernels.use_cpu_isa(level):
        for sizes, dtype in cases:
            inputs = _op_inputs(sizes, dtype)
            auto, direct, spectral = (_run(m, inputs) for m in ("auto", "direct", "spectral"))
            speed = cost.direct_speed(str(dtype).split(".")[1], level)
            for backward, outputs in ((False, slice(0, 1)), (True, slice(1, 5))):
                want = cost.cpu_positional_method(*sizes, backward=backward, direct_speed=speed)
                chosen_methods.add((sizes, dtype, backward, want))
                chosen = spectral if want == cost.SPECTRAL else direct
                other = direct if want == cost.SPECTRAL else spectral
                assert all(torch.equal(a, c) for a, c in zip(auto[outputs], chosen[outputs]))
                assert not all(torch.equal(a, o) for a, o in zip(auto[outputs], other[outputs]))
    # the near-margin backward flips with the bf16 micro-kernel's speed
    bf16_levels = level in cost.BF16_MICROKERNEL_LEVELS
    assert (NEAR_MARGIN, torch.float32, True, cost.SPECTRAL) in chosen_methods
    assert (NEAR_MARGIN, torch.bfloat16, True,
            cost.DIRECT if bf16_levels else cost.SPECTRAL) in chosen_methods


@pytest.mark.parametrize("sizes", [
    (1, 4, 16, 4, 8, 24, 20, 23, 23),     # seed-local window on a small map, u = 4
    (2, 4, 8, 1, 12, 16, 16, 31, 31),     # global context (2n-1)² table
    (1, 3, 5, 2, 7, 9, 33, 5, 65),        # wide table, rectangular map, odd sizes
])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_larger_shapes_match_the_reference(sizes, dtype):
    b, h, k, u, v, hh, ww, rh, rw = sizes
    inputs = make_inputs(batch=b, heads=h, dim_k=k, dim_u=u, dim_v=v, height=hh, width=ww,
                         rh=rh, rw=rw, bias=True, dtype=dtype, requires_grad=True, seed=3)
    inputs64 = tuple(t.detach().double().requires_grad_() if t is not None else None
                     for t in inputs)
    inputs_ref = tuple(t.detach().clone().requires_grad_() if t is not None else None
                       for t in inputs)
    dy = torch.randn(b, h, v, hh, ww, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    with lambda_kernels.use_cpu_positional_method("spectral"):
        got = outputs_and_grads(lambda *a: lambda_kernels.lambda_op(*a, backend="cpu"), inputs,
                                dy.to(dtype))
    ref64 = outputs_and_grads(lambda_reference, inputs64, dy)
    ref_dtype = outputs_and_grads(lambda_reference, inputs_ref, dy.to(dtype))
    for name, g, r64, rd in zip(("y", "d_q", "d_keys", "d_values", "d_pos_table", "d_bias"),
                                got, ref64, ref_dtype):
        assert_close_rule(name, g, r64, rd, dtype)


@pytest.mark.parametrize("level", [lv for lv, why in lambda_kernels.cpu_isa_levels().items()
                                   if why is None] if _REASON is None else [])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_same_bits_at_every_thread_count(level, dtype):
    """MKL's batched FFTs change their arithmetic with their thread count (ATen's irfft2 of a
    few planes differs in the last bits between 1 and 2 threads); the spectral method's
    transforms run in fixed groups of planes, one thread each, so its results do not."""
    cases = [(1, 1, 1, 1, 7, 4, 8, 3, 3), (2, 2, 5, 2, 7, 9, 13, 5, 5),  # differed before
             (1, 2, 8, 2, 12, 16, 16, 31, 31),                           # global context
             (1, 4, 16, 4, 8, 40, 36, 23, 23)]                           # several v chunks
    threads = torch.get_num_threads()
    try:
        with lambda_kernels.use_cpu_isa(level):
            for sizes in cases:
                inputs = _op_inputs(sizes, dtype, seed=1)
                runs = []
                for n in sorted({1, 2, 3, threads}):
                    torch.set_num_threads(n)
                    runs.append((n, _run("spectral", inputs)))
                for n, outputs in runs[1:]:
                    for name, a, b in zip(("y", "d_q", "d_values", "d_pos_table", "d_lam"),
                                          runs[0][1], outputs):
                        assert torch.equal(a, b), f"{sizes} {name}: 1 vs {n} threads differ"
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_reused_buffers_leave_no_trace_and_stay_bounded(dtype):
    """The spectral buffers come from a cache of freed blocks (csrc/cpu/buffer_cache.h): a
    call's results do not depend on what earlier calls left in the blocks it reuses (the same
    inputs after different calls give the same bits, and the reference's values), and the idle
    blocks kept between calls stay within the cache's 32 MiB."""
    sizes = (1, 4, 16, 4, 8, 40, 36, 23, 23)
    first, second = _op_inputs(sizes, dtype, seed=1), _op_inputs(sizes, dtype, seed=2)
    other = _op_inputs((1, 2, 8, 2, 12, 16, 16, 31, 31), dtype, seed=3)
    _run("spectral", first)
    after_first = _run("spectral", second)
    assert _ops().cpu_buffer_cache_bytes() > 0  # the call's blocks went back to the cache
    _run("spectral", other)
    after_other = _run("spectral", second)
    for name, a, b in zip(("y", "d_q", "d_values", "d_pos_table", "d_lam"), after_first,
                          after_other):
        assert torch.equal(a, b), name
    for name, a, b in zip(("y", "d_q", "d_values", "d_pos_table", "d_lam"), after_first,
                          _run("direct", second)):
        scale = b.double().abs().max().item()
        bound = (1e-4 if dtype == torch.float32 else 2e-2) * scale
        assert (a.double() - b.double()).abs().max().item() <= bound, name
    assert 0 < _ops().cpu_buffer_cache_bytes() <= 32 << 20


def test_peak_memory_spectral_never_builds_positional_lambda():
    # λp (B, N, k, v) = 268 MB in float32; the spectral method holds one chunk of it (≤ 4 MiB)
    # and its spectra at a time, next to the call's table spectra (two operand forms, 11 MB
    # here), dq and the inputs' copies: ~30 MB live at the backward's peak. Measured as resident
    # memory, the first call's increase includes one-time costs (34-41 MB here); a repeat's
    # depends on what the allocator kept from the first (0-29 MB for the same call), so both
    # get the one bound.
    b, h, k, u, v, hh, ww, r = 1, 1, 128, 1, 128, 64, 64, 7
    lam_p_bytes = 4 * b * hh * ww * k * v
    first, steady = peak_memory_increase(
        "lambda_op", (b, h, k, hh, ww), (b, u, k, hh, ww), (b, u, v, hh, ww), (r, r, k, u),
        (b, h, v, hh, ww), env={"LAMBDA_KERNELS_CPU_POSITIONAL": "spectral"})
    assert first < lam_p_bytes / 5, (first, lam_p_bytes)
    assert steady < lam_p_bytes / 5, (steady, lam_p_bytes)


def test_method_knob():
    before = lambda_kernels.cpu_positional_method()
    with lambda_kernels.use_cpu_positional_method("spectral"):
        assert lambda_kernels.cpu_positional_method() == "spectral"
        with lambda_kernels.use_cpu_positional_method("direct"):
            assert lambda_kernels.cpu_positional_method() == "direct"
        assert lambda_kernels.cpu_positional_method() == "spectral"
    assert lambda_kernels.cpu_positional_method() == before
    with pytest.raises(ValueError, match="method must be one of"):
        lambda_kernels.use_cpu_positional_method("fft").__enter__()
    with pytest.raises(RuntimeError, match="unknown positional method 'fft'"):
        _ops().set_cpu_positional_method("fft")


def test_method_from_the_environment():
    script = ("import lambda_kernels, torch\n"
              "print(lambda_kernels.cpu_positional_method())\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         env={**os.environ, "LAMBDA_KERNELS_CPU_POSITIONAL": "spectral"})
    assert out.returncode == 0 and out.stdout.strip() == "spectral", out.stderr
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         env={**os.environ, "LAMBDA_KERNELS_CPU_POSITIONAL": "fft"})
    assert out.returncode != 0
    assert "LAMBDA_KERNELS_CPU_POSITIONAL: unknown positional method 'fft'" in out.stderr
