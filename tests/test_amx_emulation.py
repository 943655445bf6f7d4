"""The amx CPU level's kernels on CPUs without AMX, through a scalar model of the tile unit.

tests/amx_emulation.cpp compiles the level as csrc/cpu/isa_amx.cpp builds it (kernels.inc with
the micro-kernel of csrc/cpu/tile_amx.h), bf16 only, with the AMX instructions replaced by a
per-thread model of the 8 tile registers: the palette-1 configuration (rows, bytes per row),
loads and stores honouring it, faults for a tile used unconfigured or with mismatched shapes,
and TDPBF16PS's arithmetic (fp32 sums of exact bf16 products, in order, RNE, denormals as zero).
Every op's outputs and gradients are checked against the float64 reference by the tolerance
rule of tests/harness.py for bf16, on shapes at the tile borders (odd and > 32 reductions, sizes
not multiples of 16, both associations of the positional sums). The counters check that the
tiles did the work and that every configuration was released.

The rest of the level is the real avx512_bf16 code: compiled for AVX-512 + AVX512_BF16 where
this CPU has them, else through the AVX-512 model of tests/avx512_emulation.h (the test then
checks both models together). On a CPU with AMX, the real level is also run by
tests/test_backends.py (target cpu-amx).
"""
from __future__ import annotations

import contextlib
import os
import platform

import pytest
import torch

import harness
import lambda_kernels

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EMULATION_SOURCE = os.path.join(ROOT, "tests", "amx_emulation.cpp")
_EMULATED = ("emu_content_lambda", "emu_content_lambda_backward", "emu_lambda_output",
             "emu_lambda_output_backward", "emu_amx_counters")


def _avx512_bf16_reason():
    try:
        return lambda_kernels.cpu_isa_levels()["avx512_bf16"]
    except RuntimeError as error:  # extension not built
        return str(error)


@pytest.fixture(scope="module")
def emulated(tmp_path_factory):
    if platform.machine().lower() not in ("x86_64", "amd64"):
        pytest.skip("amx is an x86-64 level (its bf16 code uses x86 intrinsics)")
    # Where this CPU cannot run the avx512_bf16 code, it runs through the AVX-512 model too.
    model_avx512 = _avx512_bf16_reason() is not None
    return harness.compile_emulation(
        "lambda_kernels_amx_emulation" + ("_on_avx512_model" if model_avx512 else ""),
        EMULATION_SOURCE, _EMULATED, str(tmp_path_factory.mktemp("amx_emulation")),
        # -O0: the compile dominates (the shapes are tiny)
        extra_cflags=("-O0", "-fopenmp", "-ffp-contract=fast", "-w")
        + (("-DLK_EMULATE_AVX512",) if model_avx512 else ()))


@pytest.mark.slow
@pytest.mark.parametrize("case", harness.EMULATION_CASES, ids=harness.emulation_case_id)
def test_amx_level_emulated(emulated, case):
    emulated.emu_amx_counters()  # reset
    harness.check_emulated_ops(emulated.emu_lambda_output, emulated.emu_lambda_output_backward,
                               emulated.emu_content_lambda, emulated.emu_content_lambda_backward,
                               case, torch.bfloat16)
    configs, releases, dots = emulated.emu_amx_counters()
    assert dots > 0, "no TDPBF16PS ran: the AMX micro-kernel was not used"
    assert configs == releases > 0, f"{configs} tile configurations, {releases} releases"


@pytest.mark.slow
def test_amx_level_emulated_on_worker_threads(emulated):
    """Tile state is per thread: with 2 ATen threads the workers must load their own
    configuration (the model faults otherwise), and the results repeat bit for bit whatever the
    thread count."""
    @contextlib.contextmanager
    def tiles_configured_and_released():
        emulated.emu_amx_counters()  # reset
        yield
        configs, releases, dots = emulated.emu_amx_counters()
        assert configs == releases > 0 and dots > 0

    harness.check_emulated_same_bits_across_threads(
        emulated.emu_lambda_output, emulated.emu_lambda_output_backward, torch.bfloat16,
        tiles_configured_and_released)
