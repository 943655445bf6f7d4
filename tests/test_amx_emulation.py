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

Needs a CPU with AVX-512 + AVX512_BF16 (the rest of the level is the real avx512_bf16 code);
on a CPU with AMX, the real level is also run by tests/test_backends.py (target cpu-amx).
"""
from __future__ import annotations

import os

import pytest
import torch

import harness
import lambda_kernels
from lambda_kernels.reference import content_lambda as reference_content_lambda
from lambda_kernels.reference import positional_lambda

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EMULATION_SOURCE = os.path.join(ROOT, "tests", "amx_emulation.cpp")
_EMULATED = ("emu_content_lambda", "emu_content_lambda_backward", "emu_lambda_output",
             "emu_lambda_output_backward", "emu_amx_counters")


def _avx512_bf16_reason():
    try:
        levels = lambda_kernels.cpu_isa_levels()
    except RuntimeError as error:  # extension not built
        return str(error)
    if "avx512_bf16" not in levels:
        return "not an x86-64 build"
    return levels["avx512_bf16"]


@pytest.fixture(scope="module")
def emulated(tmp_path_factory):
    reason = _avx512_bf16_reason()
    if reason is not None:
        pytest.skip(f"the emulated amx level runs the avx512_bf16 code: {reason}")
    return harness.compile_emulation(
        "lambda_kernels_amx_emulation", EMULATION_SOURCE, _EMULATED,
        str(tmp_path_factory.mktemp("amx_emulation")),
        extra_cflags=("-O1", "-fopenmp", "-ffp-contract=fast", "-w"))


# (B, heads, k, u, v, H, W, Rh, Rw): forward / backward association in the note
CASES = [
    (1, 2, 3, 2, 5, 5, 7, 5, 3),      # odd k, tiny: λp form / λp form
    (2, 4, 17, 1, 33, 6, 19, 3, 5),   # k > 16, v > 32, W = 19 (two vectors): logits / logits
    (1, 1, 35, 2, 18, 4, 5, 9, 11),   # k = 35 (two K blocks), window > image: logits / logits
    (1, 6, 2, 1, 3, 5, 6, 3, 3),      # many heads, few channels: λp form / λp form
    (1, 2, 9, 3, 7, 3, 17, 7, 23),    # wide window (38 columns > 16 rows of W): logits / λp
]


def _references(case):
    b, h, k, u, v, hh, ww, rh, rw = case
    g = torch.Generator().manual_seed(sum(case))

    def rand(*shape, scale=1.0):
        return torch.randn(*shape, generator=g, dtype=torch.float64) * scale

    inputs = dict(q=rand(b, h, k, hh, ww), keys=rand(b, u, k, hh, ww, scale=2.0),
                  values=rand(b, u, v, hh, ww), pos=rand(rh, rw, k, u, scale=0.5),
                  lam=rand(b, k, v))
    dy, d_lam = rand(b, h, v, hh, ww), rand(b, k, v)

    def run(dtype):
        t = {name: x.to(dtype).requires_grad_() for name, x in inputs.items()}
        y = (torch.einsum("bhkyx,bkv->bhvyx", t["q"], t["lam"])
             + torch.einsum("bhkyx,bkvyx->bhvyx", t["q"], positional_lambda(t["values"], t["pos"])))
        d_q, d_v, d_pos, d_l = torch.autograd.grad(y, [t["q"], t["values"], t["pos"], t["lam"]],
                                                   dy.to(dtype))
        lam_c = reference_content_lambda(t["keys"], t["values"])
        d_keys, d_v_c = torch.autograd.grad(lam_c, [t["keys"], t["values"]], d_lam.to(dtype))
        lse = torch.logsumexp(t["keys"].detach().float().flatten(3), dim=-1)
        return {"y": y, "d_q": d_q, "d_values": d_v, "d_pos_table": d_pos, "d_lam": d_l,
                "lam_c": lam_c, "stats": lse, "d_keys": d_keys, "d_values_content": d_v_c}

    return inputs, dy, d_lam, run(torch.float64), run(torch.bfloat16)


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES, ids=lambda c: "b{}h{}k{}u{}v{}_{}x{}_r{}x{}".format(*c))
def test_amx_level_emulated(emulated, case):
    inputs, dy, d_lam, ref64, ref16 = _references(case)
    c = {name: x.to(torch.bfloat16) for name, x in inputs.items()}
    emulated.emu_amx_counters()  # reset
    y = emulated.emu_lambda_output(c["q"], c["values"], c["pos"], c["lam"])
    d_q, d_v, d_pos, d_l = emulated.emu_lambda_output_backward(
        dy.to(torch.bfloat16), c["q"], c["values"], c["pos"], c["lam"])
    lam_c, stats = emulated.emu_content_lambda(c["keys"], c["values"])
    d_keys, d_v_c = emulated.emu_content_lambda_backward(d_lam.to(torch.bfloat16), c["keys"],
                                                         c["values"], stats)
    configs, releases, dots = emulated.emu_amx_counters()
    got = {"y": y, "d_q": d_q, "d_values": d_v, "d_pos_table": d_pos, "d_lam": d_l,
           "lam_c": lam_c, "stats": stats, "d_keys": d_keys, "d_values_content": d_v_c}
    for name, value in got.items():
        dtype = torch.float32 if name == "stats" else torch.bfloat16
        assert value.dtype == dtype, f"{name}: {value.dtype}"
        harness.assert_close_rule(name, value, ref64[name].detach(), ref16[name].detach(),
                                  torch.bfloat16)
    assert dots > 0, "no TDPBF16PS ran: the AMX micro-kernel was not used"
    assert configs == releases > 0, f"{configs} tile configurations, {releases} releases"


@pytest.mark.slow
def test_amx_level_emulated_on_worker_threads(emulated):
    """Tile state is per thread: with 2 ATen threads the workers must load their own
    configuration (the model faults otherwise), and the results repeat bit for bit whatever the
    thread count."""
    inputs, dy, _, _, _ = _references(CASES[1])
    c = {name: x.to(torch.bfloat16) for name, x in inputs.items()}
    results = []
    previous = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            emulated.emu_amx_counters()
            results.append([emulated.emu_lambda_output(c["q"], c["values"], c["pos"], c["lam"])]
                           + list(emulated.emu_lambda_output_backward(
                               dy.to(torch.bfloat16), c["q"], c["values"], c["pos"], c["lam"])))
            configs, releases, dots = emulated.emu_amx_counters()
            assert configs == releases > 0 and dots > 0
    finally:
        torch.set_num_threads(previous)
    for one, two in zip(*results):
        assert torch.equal(one, two)
