"""The CPU kernels' instruction-set dispatch: levels compiled in and detected, forcing a level by
LAMBDA_KERNELS_CPU_ISA (read on first use: checked in fresh processes) or use_cpu_isa, clear
errors for unknown or unsupported levels, the level reported by the layer, and the static checks
of the compiled kernels (register tiles without spills, wide registers only in their level).
Values on every level: tests/test_backends.py (one target per level)."""
from __future__ import annotations

import glob
import os
import platform
import shutil
import subprocess
import sys

import pytest
import torch

import lambda_kernels
from lambda_kernels import LambdaLayer
from lambda_kernels._cpu_isa import set_cpu_isa

_REASON = lambda_kernels.available_backends("cpu").get("cpu")
pytestmark = pytest.mark.skipif(_REASON is not None, reason=f"cpu back end unavailable: {_REASON}")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
X86 = platform.machine().lower() in ("x86_64", "amd64")


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def test_levels_for_this_architecture_lowest_first():
    levels = lambda_kernels.cpu_isa_levels()
    if X86:
        assert list(levels) == ["baseline", "avx2", "avx512", "avx512_bf16", "amx"]
        assert levels["baseline"] is None  # every x86-64 CPU has SSE2
    else:
        assert list(levels) == ["neon"] and levels["neon"] is None


@pytest.mark.skipif(not X86 or not os.path.exists("/proc/cpuinfo"), reason="reads x86 cpu flags")
def test_detected_support_agrees_with_the_kernel_cpu_flags():
    flags = _cpu_flags()
    levels = lambda_kernels.cpu_isa_levels()
    has_avx2 = {"avx2", "fma"} <= flags
    has_avx512 = {"avx512f", "avx512bw", "avx512vl", "avx512dq", "fma"} <= flags
    has_avx512_bf16 = has_avx512 and "avx512_bf16" in flags
    has_amx = has_avx512_bf16 and {"amx_tile", "amx_bf16"} <= flags
    assert (levels["avx2"] is None) == has_avx2
    assert (levels["avx512"] is None) == has_avx512
    assert (levels["avx512_bf16"] is None) == has_avx512_bf16
    if not has_avx512:
        assert "avx512f" in levels["avx512"] or "avx512" in levels["avx512"]
    if not has_avx512_bf16:  # the refusal names what is missing
        assert "avx512_bf16" in levels["avx512_bf16"] or "avx512f" in levels["avx512_bf16"]
    if has_amx:  # runs, unless the OS refused the tile data state (then it says so)
        assert levels["amx"] is None or "OS refused" in levels["amx"]
    else:
        assert levels["amx"] is not None and "amx_tile" in levels["amx"]
    best = ("amx" if levels["amx"] is None else "avx512_bf16" if has_avx512_bf16 else
            "avx512" if has_avx512 else "avx2" if has_avx2 else "baseline")
    if os.environ.get("LAMBDA_KERNELS_CPU_ISA") is None:
        assert lambda_kernels.cpu_isa() == best


def test_use_cpu_isa_switches_and_restores():
    before = lambda_kernels.cpu_isa()
    runnable = [lv for lv, why in lambda_kernels.cpu_isa_levels().items() if why is None]
    for level in runnable:
        with lambda_kernels.use_cpu_isa(level):
            assert lambda_kernels.cpu_isa() == level
            layer = LambdaLayer(8, dim_k=4, heads=2, dim_out=8, r=3, backend="cpu")
            layer(torch.randn(1, 8, 5, 5))
            assert layer.last_backend == "cpu" and layer.last_backend_variant == level
        assert lambda_kernels.cpu_isa() == before


def test_unknown_and_unsupported_levels_are_refused():
    before = lambda_kernels.cpu_isa()
    with pytest.raises(ValueError, match=r"level must be one of .*'sse9'"):
        set_cpu_isa("sse9")
    for level, why in lambda_kernels.cpu_isa_levels().items():
        if why is not None:
            with pytest.raises(ValueError, match=f"cannot use the '{level}' CPU kernels"):
                with lambda_kernels.use_cpu_isa(level):
                    pass
    assert lambda_kernels.cpu_isa() == before


@pytest.mark.skipif(not X86, reason="amx is an x86-64 level")
def test_amx_refusal_names_what_is_missing():
    """Where the CPU lacks AMX (or the OS refuses its tile state) forcing amx fails with the
    reason, in-process and by the environment variable."""
    why = lambda_kernels.cpu_isa_levels()["amx"]
    if why is None:
        pytest.skip("this CPU runs amx (run as a level by the other tests here and the harness)")
    flags = _cpu_flags()
    if flags and not {"amx_tile", "amx_bf16"} <= flags:
        missing = [f for f in ("amx_tile", "amx_bf16") if f not in flags]
        assert all(f in why for f in missing), why
    with pytest.raises(ValueError, match=r"cannot use the 'amx' CPU kernels: .*(amx_|OS refused)"):
        with lambda_kernels.use_cpu_isa("amx"):
            pass
    proc = _fresh_process("amx")
    assert proc.returncode != 0 and "amx" in proc.stderr, proc.stderr[-2000:]
    assert "amx_tile" in proc.stderr or "OS refused" in proc.stderr, proc.stderr[-2000:]


def _fresh_process(env_level: str) -> subprocess.CompletedProcess:
    code = ("import torch, lambda_kernels as lk\n"
            "print(lk.cpu_isa())\n"
            "q = torch.randn(1, 2, 3, 4, 5); k = torch.randn(1, 1, 3, 4, 5)\n"
            "v = torch.randn(1, 1, 4, 4, 5); e = torch.randn(3, 3, 3, 1)\n"
            "lk.lambda_op(q, k, v, e, backend='cpu')\n")
    env = dict(os.environ, LAMBDA_KERNELS_CPU_ISA=env_level)
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=300)


def test_environment_variable_forces_a_level_in_a_fresh_process():
    runnable = [lv for lv, why in lambda_kernels.cpu_isa_levels().items() if why is None]
    lowest = runnable[0]
    proc = _fresh_process(lowest)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == lowest


def test_environment_variable_with_a_bad_level_fails_clearly():
    proc = _fresh_process("avx1024")
    assert proc.returncode != 0
    assert "LAMBDA_KERNELS_CPU_ISA" in proc.stderr and "avx1024" in proc.stderr
    reason = subprocess.run(
        [sys.executable, "-c", "import lambda_kernels as lk; "
         "print(lk.available_backends('cpu')['cpu'])"],
        env=dict(os.environ, LAMBDA_KERNELS_CPU_ISA="avx1024"), capture_output=True, text=True,
        timeout=300)
    # the back end reports the bad knob as its reason instead of being chosen
    assert reason.returncode == 0 and "LAMBDA_KERNELS_CPU_ISA" in reason.stdout, reason.stderr
    # ... and `auto` (the layer's default) raises it rather than run the slow reference
    auto = subprocess.run(
        [sys.executable, "-c", "import torch, lambda_kernels as lk\n"
         "layer = lk.LambdaLayer(4, dim_k=2, r=3)\n"
         "try:\n    layer(torch.randn(1, 4, 5, 5))\n"
         "except lk.BackendUnavailableError as error:\n    print('refused:', error)\n"
         "print('ran:', layer.last_backend)\n"],
        env=dict(os.environ, LAMBDA_KERNELS_CPU_ISA="avx1024"), capture_output=True, text=True,
        timeout=300)
    assert auto.returncode == 0, auto.stderr[-2000:]
    assert "refused:" in auto.stdout and "avx1024" in auto.stdout, auto.stdout
    assert "ran: None" in auto.stdout, auto.stdout


@pytest.mark.skipif(shutil.which("objdump") is None, reason="objdump (binutils) not installed")
def test_compiled_kernels_pass_the_disassembly_checks():
    """scripts/check_cpu_disassembly.py on the built extension: every register tile of every
    level keeps its accumulators in registers (no stack access in the multiply-add loop), and
    zmm/ymm registers appear only in the avx512/avx2 kernels."""
    from lambda_kernels import _ext
    libraries = glob.glob(os.path.join(os.path.dirname(_ext.__file__), "_C*.so"))
    assert libraries, "built extension not found next to lambda_kernels/_ext.py"
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "scripts",
                                                        "check_cpu_disassembly.py"), *libraries],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "OK" in proc.stdout


@pytest.mark.parametrize("bf16_level", ["avx512_bf16", "amx"])
def test_bf16_level_runs_other_dtypes_on_the_avx512_code(bf16_level):
    """avx512_bf16 and amx change only bf16 inputs: fp32 outputs and gradients are
    bit-identical to the avx512 level's (same tile, same order); bf16 ones go through the pair
    kernel or the AMX tiles (values: tests/test_backends.py, targets cpu-avx512_bf16, cpu-amx;
    amx without AMX: tests/test_amx_emulation.py)."""
    why = lambda_kernels.cpu_isa_levels().get(bf16_level, f"{bf16_level} not compiled in")
    if why is not None:
        pytest.skip(f"this CPU or build lacks the {bf16_level} level: {why}")
    g = torch.Generator().manual_seed(3)
    shapes = [(2, 3, 5, 6, 7), (2, 2, 5, 6, 7), (2, 2, 4, 6, 7), (5, 5, 5, 2)]
    q, keys, values, table = (torch.randn(*s, generator=g) for s in shapes)
    results = []
    for level in ("avx512", bf16_level):
        leaves = [t.clone().requires_grad_() for t in (q, keys, values, table)]
        with lambda_kernels.use_cpu_isa(level):
            y = lambda_kernels.lambda_op(*leaves, backend="cpu")
            y.backward(torch.ones_like(y))
        results.append([y.detach()] + [t.grad for t in leaves])
    for a, b in zip(*results):
        assert torch.equal(a, b)
