"""The avx512 and avx512_bf16 CPU levels' kernels on a CPU without AVX-512.

tests/avx512_emulation.cpp compiles both levels as csrc/cpu/isa_avx512.cpp and
isa_avx512_bf16.cpp build them (kernels.inc with their tiles, the bf16 pair micro-kernel of
tile_bf16.h on avx512_bf16), fp32 and bf16, for a target without AVX-512: the compiler lowers the
64-byte vector code to this CPU's registers and the AVX-512 intrinsics the kernels call run
their models (tests/avx512_emulation.h: masked loads and stores, word shuffles, VDPBF16PS with
its rounding and denormal rules, VCVTNEPS2BF16). Every op's outputs and gradients, by both
positional methods, against the float64 reference by the tolerance rule of tests/harness.py,
on shapes at the tile borders.

Runs only where this CPU cannot run the level itself: there tests/test_backends.py runs the
real level (targets cpu-avx512, cpu-avx512_bf16) on every shape, dtype and autograd path.
The model is no speed measurement and no proof of the hardware's bits; it catches what a change
to the shared kernel code breaks on levels the machine at hand lacks.
"""
from __future__ import annotations

import os
import platform

import pytest
import torch

import harness
import lambda_kernels

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EMULATION_SOURCE = os.path.join(ROOT, "tests", "avx512_emulation.cpp")
_EMULATED = ("emu_content_lambda", "emu_content_lambda_backward", "emu_lambda_output",
             "emu_lambda_output_backward", "emu_dpbf16_ps", "emu_cvtneps_pbh",
             "emu_permutex2var_epi16", "emu_unpacklo_epi16", "emu_masked_copy_epi16")
LEVELS = ("avx512", "avx512_bf16")
pytestmark = pytest.mark.slow  # the emulation's compile, ~1 min, dominates


def _level_reason(level):
    """None when this CPU runs `level` itself (the real level is tested instead)."""
    try:
        return lambda_kernels.cpu_isa_levels()[level]
    except RuntimeError as error:  # extension not built: the model still runs
        return str(error)


@pytest.fixture(scope="module")
def emulated(tmp_path_factory):
    if platform.machine().lower() not in ("x86_64", "amd64"):
        pytest.skip("the avx512 levels are x86-64 levels (their code uses x86 intrinsics)")
    if all(_level_reason(level) is None for level in LEVELS):
        pytest.skip("this CPU runs the avx512 and avx512_bf16 levels: tests/test_backends.py "
                    "tests them on the hardware")
    return harness.compile_emulation(
        "lambda_kernels_avx512_emulation", EMULATION_SOURCE, _EMULATED,
        str(tmp_path_factory.mktemp("avx512_emulation")),
        # -O0: half the compile time of -O1 (60 against 125 s here); the shapes are tiny
        extra_cflags=("-O0", "-fopenmp", "-ffp-contract=fast", "-w"))


def _ops(module, level, spectral):
    return (lambda *a: module.emu_lambda_output(level, spectral, *a),
            lambda *a: module.emu_lambda_output_backward(level, spectral, *a),
            lambda *a: module.emu_content_lambda(level, *a),
            lambda *a: module.emu_content_lambda_backward(level, *a))


# fp32 runs the same code on both levels: once, on avx512. bf16 differs: avx512 converts to
# fp32 tiles, avx512_bf16 runs the pair micro-kernel.
LEVEL_DTYPES = [("avx512", torch.float32), ("avx512", torch.bfloat16),
                ("avx512_bf16", torch.bfloat16)]


@pytest.mark.parametrize("method", ["direct", "spectral"])
@pytest.mark.parametrize("level, dtype", LEVEL_DTYPES,
                         ids=[f"{lv}-{str(dt).split('.')[-1]}" for lv, dt in LEVEL_DTYPES])
@pytest.mark.parametrize("case", harness.EMULATION_CASES, ids=harness.emulation_case_id)
def test_avx512_level_emulated(emulated, level, dtype, method, case):
    if _level_reason(level) is None:
        pytest.skip(f"this CPU runs {level}: tests/test_backends.py tests it on the hardware")
    harness.check_emulated_ops(*_ops(emulated, level, method == "spectral"), case, dtype)


def test_avx512_emulated_levels_repeat_bit_for_bit_across_threads(emulated):
    """The kernels' partition over ATen threads does not change the bits (as on every level)."""
    level = "avx512_bf16" if _level_reason("avx512_bf16") is not None else "avx512"
    harness.check_emulated_same_bits_across_threads(
        lambda *a: emulated.emu_lambda_output(level, False, *a),
        lambda *a: emulated.emu_lambda_output_backward(level, False, *a), torch.bfloat16)


# ---------------------------------------------------------------- the models themselves


def test_dpbf16_model_is_two_rounded_fp32_adds_of_exact_products(emulated):
    g = torch.Generator().manual_seed(5)
    for scale in (1.0, 1e-3, 1e3):
        acc = torch.randn(16, generator=g) * scale
        a = (torch.randn(32, generator=g) * scale).bfloat16()
        b = torch.randn(32, generator=g).bfloat16()
        got = emulated.emu_dpbf16_ps(acc, a, b)
        # VDPBF16PS: acc += a[2j+1]·b[2j+1], then += a[2j]·b[2j]; bf16 products are exact in fp32
        fa, fb = a.float().view(16, 2), b.float().view(16, 2)
        expected = (acc + fa[:, 1] * fb[:, 1]) + fa[:, 0] * fb[:, 0]
        assert torch.equal(got, expected), (got - expected).abs().max()
    # bf16 denormal inputs count as zero; a denormal result is flushed to zero
    tiny = torch.tensor([1e-39] * 32, dtype=torch.float32).bfloat16()  # bf16 denormals
    assert tiny.float().abs().min() > 0
    ones = torch.ones(32, dtype=torch.bfloat16)
    assert torch.equal(emulated.emu_dpbf16_ps(torch.zeros(16), tiny, ones), torch.zeros(16))
    # odd pair 2^-126 · 0.5 = 2^-127, an fp32 denormal: flushed (unflushed it would stay)
    a = torch.tensor([0.0, 2.0 ** -126] * 16).bfloat16()
    half = torch.full((32,), 0.5).bfloat16()
    assert torch.equal(emulated.emu_dpbf16_ps(torch.zeros(16), a, half), torch.zeros(16))


def test_cvtneps_model_rounds_to_nearest_even_like_torch(emulated):
    g = torch.Generator().manual_seed(6)
    x = torch.randn(16, generator=g) * torch.logspace(-20, 20, 16)
    x[3] = 1.0 + 2.0 ** -8           # a tie: rounds to the even 1.0
    x[4] = 1.0 + 3 * 2.0 ** -8       # a tie: rounds up to the even 1 + 2^-6
    x[5] = float("inf")
    x[6] = -0.0
    got = emulated.emu_cvtneps_pbh(x)
    assert torch.equal(got.view(torch.int16), x.bfloat16().view(torch.int16))
    special = torch.tensor([float("nan"), 1e-40, -1e-40] + [1.0] * 13)
    got = emulated.emu_cvtneps_pbh(special).float()
    assert torch.isnan(got[0]) and got[1] == 0 and got[2] == 0 and torch.signbit(got[2])


def test_word_shuffle_models_follow_the_documented_indices(emulated):
    a = torch.arange(32, dtype=torch.int16)
    b = torch.arange(100, 132, dtype=torch.int16)
    index = torch.randperm(64, generator=torch.Generator().manual_seed(7))[:32].to(torch.int16)
    got = emulated.emu_permutex2var_epi16(a, index, b)
    assert torch.equal(got, torch.cat([a, b])[index.long()])
    got = emulated.emu_unpacklo_epi16(a, b)
    lanes = [torch.stack([a[8 * l:8 * l + 4], b[8 * l:8 * l + 4]], 1).flatten() for l in range(4)]
    assert torch.equal(got, torch.cat(lanes))


def test_masked_model_reads_and_writes_only_the_masked_lanes(emulated):
    src = torch.arange(1, 33, dtype=torch.int16)
    dst = torch.full((32,), -1, dtype=torch.int16)
    mask = (1 << 5) - 1 | (1 << 31)
    loaded, stored = emulated.emu_masked_copy_epi16(src, dst, mask)
    on = torch.tensor([(mask >> i) & 1 == 1 for i in range(32)])
    assert torch.equal(loaded, torch.where(on, src, torch.zeros_like(src)))
    assert torch.equal(stored, torch.where(on, src, dst))
