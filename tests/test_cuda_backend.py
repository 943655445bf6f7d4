"""The fused CUDA back end (csrc/cuda): what tests/test_backends.py does not cover for it.

tests/test_backends.py runs the `cuda` target of tests/harness.py like every back end: outputs
and all gradients against the float64 reference over harness.SHAPES in every dtype, bit-identical
repeated backward, float64 gradcheck and opcheck of its four ops. This file keeps what is
specific to CUDA:

- test_cuda_kernels_registered runs without a GPU: a CUDA build of torch plus an extension
  built with CUDA must have a CUDA kernel for every op (skipped only when torch has no CUDA or
  the build was explicitly without CUDA, LAMBDA_KERNELS_WITH_CUDA=0).
- test_cuda_kernels_emulated_on_cpu runs without a GPU too: it compiles the CUDA kernel headers
  (csrc/cuda/*_kernels.cuh, device code only) as plain C++ (tests/cuda_emulation.cpp) with one
  std::thread per CUDA thread, blocks run one after the other, __shared__ arrays as statics of
  the running block and __syncthreads as a barrier that fails on a deadlock, and checks every
  kernel against the reference. It exercises the real index math, tiling, shared-memory use and
  barrier placement.
- Everything else needs a GPU and is skipped with the cuda target's reason otherwise: agreement
  with the Triton back end, the content-lambda op and its log-sum-exp, peak memory, empty batch.
"""
from __future__ import annotations

import os

import pytest
import torch

import harness
from lambda_kernels import _ext
from lambda_kernels.reference import content_lambda as reference_content_lambda
from lambda_kernels.reference import lambda_reference

from lambda_kernels._op_registrations import OP_NAMES as OPS

GPU_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
CUDA = next(t for t in harness.TARGETS if t.backend == "cuda")


def _cuda_build_disabled() -> bool:
    return os.environ.get("LAMBDA_KERNELS_WITH_CUDA", "auto").lower() in ("0", "no", "false", "off")


def test_cuda_kernels_registered():
    if torch.version.cuda is None:
        pytest.skip("installed torch has no CUDA")
    if _cuda_build_disabled():
        pytest.skip("extension built without CUDA (LAMBDA_KERNELS_WITH_CUDA=0)")
    reason = _ext.load()
    assert reason is None, reason
    missing = [op for op in OPS if not _ext.has_kernel(op, "CUDA")]
    assert not missing, (f"torch {torch.__version__} has CUDA {torch.version.cuda} but the "
                         f"extension has no CUDA kernel for {missing}: rebuild with "
                         "LAMBDA_KERNELS_WITH_CUDA=1")


@pytest.fixture(scope="module")
def cuda_backend():
    reason = CUDA.skip_reason()
    if reason is not None:
        pytest.skip(f"{CUDA.id}: {reason}")
    return CUDA


def _triton_on_gpu():
    """The harness's Triton target on CUDA tensors, or why there is none."""
    for target in harness.TARGETS:
        if target.backend == "triton" and target.device == "cuda":
            return target, target.skip_reason()
    return None, "harness has no Triton target on CUDA tensors (no GPU, or interpreter on)"


@pytest.mark.parametrize("dtype", GPU_DTYPES, ids=str)
@pytest.mark.parametrize("shape", harness.SHAPES, ids=lambda s: s.id)
def test_matches_triton(cuda_backend, shape, dtype):
    """Both back ends are held to the harness's rule against float64, so they agree within
    twice its bound: max|cuda − triton| ≤ 2 · (2 · max|ref_dtype − ref64| + FLOOR · scale)."""
    triton, reason = _triton_on_gpu()
    if reason is not None:
        pytest.skip(f"triton back end unavailable: {reason}")
    inputs = shape.inputs(dtype, "cuda", seed=3)
    dy = torch.randn(shape.output_shape(), generator=torch.Generator().manual_seed(4),
                     dtype=torch.float64).to("cuda")
    got = harness.outputs_and_grads(cuda_backend.run, inputs, dy.to(dtype))
    tri = harness.outputs_and_grads(triton.run, inputs, dy.to(dtype))
    ref64 = harness.outputs_and_grads(lambda_reference, [None if t is None else t.double()
                                                         for t in inputs], dy)
    ref_dtype = harness.outputs_and_grads(lambda_reference, inputs, dy.to(dtype))
    for name, c, t, r64, rd in zip(harness.GRAD_NAMES, got, tri, ref64, ref_dtype):
        assert c.shape == t.shape, f"{name}: shape {tuple(c.shape)} != {tuple(t.shape)}"
        if not c.numel():
            continue
        bound = harness.rule_bound(r64, rd, dtype)
        diff = (c.double() - t.double()).abs().max().item()
        assert diff <= 2 * bound, (f"{name} ({dtype}): cuda and triton differ by {diff:.3e} > "
                                   f"twice the rule's bound {bound:.3e}")


@pytest.mark.parametrize("dtype", GPU_DTYPES + (torch.float64,), ids=str)
def test_content_lambda_op(cuda_backend, dtype):
    keys = torch.randn(2, 3, 5, 7, 9, device="cuda", dtype=dtype) * 3
    values = torch.randn(2, 3, 6, 7, 9, device="cuda", dtype=dtype)
    lam_c, lse = torch.ops.lambda_kernels.content_lambda(keys, values)
    assert lam_c.dtype == dtype and lam_c.shape == (2, 5, 6)
    assert lse.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    want_lse = torch.logsumexp(keys.double().flatten(3), dim=-1)
    assert ((lse.double() - want_lse).abs().max().item()
            < 1e-4 * max(1.0, want_lse.abs().max().item()))
    ref64 = reference_content_lambda(keys.double(), values.double())
    ref_dtype = reference_content_lambda(keys, values)
    harness.assert_close_rule("lam_c", lam_c, ref64, ref_dtype, dtype)


def test_peak_memory_has_no_big_intermediates(cuda_backend):
    # λp would be B·N·k·v = 1·4096·16·64 floats = 16 MiB; logits B·h·N·r² = 4·4096·81 floats.
    leaves = harness.make_inputs(batch=1, heads=4, dim_k=16, dim_u=1, dim_v=64, height=64,
                                 width=64, rh=9, rw=9, bias=True, dtype=torch.float32,
                                 device="cuda", requires_grad=True, seed=0)
    dy = torch.randn(1, 4, 64, 64, 64, device="cuda")
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    y = cuda_backend.run(*leaves)
    torch.autograd.grad(y, leaves, dy)
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - base
    lam_p_bytes = 1 * 4096 * 16 * 64 * 4
    # outputs + gradients (y, dq, dkeys, 2x dvalues, ...) are ~5 MiB; λp alone would be 16 MiB
    assert extra < lam_p_bytes, f"peak extra memory {extra / 2**20:.1f} MiB"


def test_empty_batch_and_direct_op_checks(cuda_backend):
    ops = torch.ops.lambda_kernels
    keys = torch.randn(0, 2, 3, 4, 5, device="cuda")
    values = torch.randn(0, 2, 6, 4, 5, device="cuda")
    lam_c, lse = ops.content_lambda(keys, values)
    assert lam_c.shape == (0, 3, 6) and lse.shape == (0, 2, 3)
    q = torch.randn(0, 2, 3, 4, 5, device="cuda")
    pos = torch.randn(3, 3, 3, 2, device="cuda")
    dq, dv, d_pos_table, dlam = ops.lambda_output_backward(
        torch.randn(0, 2, 6, 4, 5, device="cuda"), q, values, pos, lam_c)
    assert torch.equal(d_pos_table, torch.zeros_like(d_pos_table))
    with pytest.raises(RuntimeError, match="odd"):
        ops.lambda_output(q, values, torch.randn(2, 3, 3, 2, device="cuda"), lam_c)


# ------------------------------------------------------------------ CPU emulation of the kernels
EMULATION_SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cuda_emulation.cpp")

_EMULATED = ("emu_content_lambda", "emu_content_lambda_backward", "emu_lambda_output",
             "emu_lambda_output_backward")


@pytest.fixture(scope="module")
def emulated_kernels(tmp_path_factory):
    return harness.compile_emulation("lambda_kernels_cuda_emulation", EMULATION_SOURCE, _EMULATED,
                                     str(tmp_path_factory.mktemp("cuda_emulation")))


# (B, heads, k, u, v, H, W, Rh, Rw, dtype)
EMULATION_CASES = [
    (1, 2, 3, 2, 3, 5, 7, 5, 3, torch.float64),     # odd sizes, u = 2
    (1, 1, 17, 1, 33, 2, 3, 3, 3, torch.float64),   # k > 16, v > 32: several channel tiles
    (1, 1, 2, 2, 2, 3, 3, 9, 11, torch.float64),    # window far larger than the image
    (1, 1, 2, 1, 2, 9, 5, 5, 7, torch.float64),     # 45 positions: tiles spanning rows
    (2, 1, 2, 1, 2, 40, 1, 3, 1, torch.float64),    # W = 1, several tiles, batch 2
    (1, 2, 3, 1, 2, 1, 5, 3, 3, torch.float32),
    (1, 2, 3, 1, 2, 1, 5, 3, 3, torch.float16),
    (1, 2, 3, 1, 2, 1, 5, 3, 3, torch.bfloat16),
]
_EMULATION_TOL = {torch.float64: 1e-10, torch.float32: 1e-4, torch.float16: 3e-2,
                  torch.bfloat16: 1.5e-1}


@pytest.mark.slow
@pytest.mark.parametrize("case", EMULATION_CASES, ids=str)
def test_cuda_kernels_emulated_on_cpu(emulated_kernels, case):
    from lambda_kernels.reference import positional_lambda

    b, h, k, u, v, hh, ww, rh, rw, dtype = case
    g = torch.Generator().manual_seed(0)

    def rand(*shape, scale=1.0):
        return torch.randn(*shape, generator=g, dtype=torch.float64) * scale

    q, keys, values = rand(b, h, k, hh, ww), rand(b, u, k, hh, ww, scale=2.0), rand(b, u, v, hh, ww)
    pos, lam = rand(rh, rw, k, u, scale=0.5), rand(b, k, v)
    dy, d_lam = rand(b, h, v, hh, ww), rand(b, k, v)
    for t in (q, keys, values, pos, lam):
        t.requires_grad_(True)
    y = (torch.einsum("bhkyx,bkv->bhvyx", q, lam)
         + torch.einsum("bhkyx,bkvyx->bhvyx", q, positional_lambda(values, pos)))
    g_q, g_values, g_pos_table, g_lam = torch.autograd.grad(y, [q, values, pos, lam], dy)
    lam_c = reference_content_lambda(keys, values)
    g_keys, g_values_c = torch.autograd.grad(lam_c, [keys, values], d_lam)
    lse = torch.logsumexp(keys.detach().flatten(3), dim=-1)

    def c(t):
        return t.detach().to(dtype)

    emu = emulated_kernels
    e_y = emu.emu_lambda_output(c(q), c(values), c(pos), c(lam))
    e_dq, e_dv, e_d_pos_table, e_dlam = emu.emu_lambda_output_backward(c(dy), c(q), c(values),
                                                                       c(pos), c(lam))
    e_lam_c, e_lse = emu.emu_content_lambda(c(keys), c(values))
    e_dk, e_dv_c = emu.emu_content_lambda_backward(c(d_lam), c(keys), c(values), e_lse)
    pairs = {"y": (e_y, y), "d_q": (e_dq, g_q), "d_values": (e_dv, g_values),
             "d_pos_table": (e_d_pos_table, g_pos_table), "d_lam": (e_dlam, g_lam),
             "lam_c": (e_lam_c, lam_c), "lse": (e_lse, lse), "d_keys": (e_dk, g_keys),
             "d_values_content": (e_dv_c, g_values_c)}
    for name, (got, want) in pairs.items():
        want = want.detach()
        assert got.shape == want.shape, name
        assert torch.isfinite(got).all(), f"{name}: unwritten (NaN-filled) or non-finite outputs"
        err = (got.double() - want).abs().max().item()
        bound = _EMULATION_TOL[dtype] * max(1.0, want.abs().max().item())
        assert err <= bound, f"{name}: max error {err:.3e} > {bound:.3e}"
