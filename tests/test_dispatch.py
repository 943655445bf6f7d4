"""Back-end registry, selection, overrides and fallback."""
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import lambda_kernels
from harness import make_inputs
from lambda_kernels import BackendUnavailableError, backends, lambda_op, select_backend
from lambda_kernels.functional import ENV_BACKEND

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_available_backends_lists_every_registered_back_end_with_reasons():
    status = lambda_kernels.available_backends("cpu")
    assert set(status) == set(backends.names())
    assert status["reference"] is None
    assert "cuda" in status["cuda"] or "CUDA" in status["cuda"]
    for name, reason in status.items():
        assert reason is None or isinstance(reason, str) and reason


def test_auto_on_cpu_picks_the_first_runnable_cpu_back_end():
    inputs = make_inputs(dtype=torch.float32)
    expected = next(b.name for b in backends.auto_candidates("cpu")
                    if b.can_run("cpu", torch.float32) is None)
    assert select_backend(*inputs) == expected
    if lambda_kernels.available_backends("cpu")["cpu"] is None:
        assert expected == "cpu"


def test_explicit_backend_that_cannot_run_raises_with_reason():
    with pytest.raises(BackendUnavailableError, match=r"backend 'cuda' cannot run.*cuda"):
        lambda_op(*make_inputs(dtype=torch.float32), backend="cuda")


def test_environment_variable_overrides_auto(monkeypatch):
    monkeypatch.setenv(ENV_BACKEND, "reference")
    assert select_backend(*make_inputs(dtype=torch.float32)) == "reference"
    monkeypatch.setenv(ENV_BACKEND, "cuda")
    with pytest.raises(BackendUnavailableError):
        lambda_op(*make_inputs(dtype=torch.float32))
    # An explicit argument wins over the variable.
    assert select_backend(*make_inputs(dtype=torch.float32), backend="reference") == "reference"


def test_auto_falls_back_when_a_back_end_refuses(monkeypatch):
    refusing = backends.Backend(
        name="always-refuses", description="test", priority=-1, auto_devices=("cpu",),
        can_run=lambda *a: "refuses on purpose", forward=lambda *a: 1 / 0)
    monkeypatch.setitem(backends._REGISTRY, refusing.name, refusing)
    inputs = make_inputs(dtype=torch.float32)
    assert select_backend(*inputs) != "always-refuses"
    with pytest.raises(BackendUnavailableError, match="refuses on purpose"):
        select_backend(*inputs, backend="always-refuses")


def test_every_back_end_that_runs_here_matches_reference():
    inputs = make_inputs(dtype=torch.float64, seed=3)
    expected = lambda_kernels.reference.lambda_reference(*inputs)
    for name, reason in lambda_kernels.available_backends("cpu", torch.float64).items():
        if reason is None:
            torch.testing.assert_close(lambda_op(*inputs, backend=name), expected)


def test_registry_rejects_backend_without_implementation():
    with pytest.raises(ValueError, match="needs ops or forward"):
        backends.register(backends.Backend(name="x", description="", priority=0,
                                           auto_devices=(), can_run=lambda *a: None))


def _run_python(code, **env):
    """Run `code` in a fresh interpreter with os.environ updated by `env` (None: unset)."""
    full_env = {k: v for k, v in {**os.environ, **env}.items() if v is not None}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=REPO, env=full_env,
                          capture_output=True, text=True, timeout=900)


def test_missing_extension_without_jit_falls_back_to_reference():
    result = _run_python("""
        import sys
        sys.modules["lambda_kernels._C"] = None  # as if the compiled extension were absent
        import torch, lambda_kernels
        status = lambda_kernels.available_backends("cpu")
        print("REASON", status["cpu"])
        layer = lambda_kernels.LambdaLayer(4, dim_k=2, r=3, heads=2)
        layer(torch.randn(1, 4, 5, 5))
        print("USED", layer.last_backend)
        try:
            lambda_kernels.LambdaLayer(4, dim_k=2, r=3, heads=2, backend="cpu")(torch.randn(1, 4, 5, 5))
        except lambda_kernels.BackendUnavailableError as error:
            print("RAISED", error)
    """, LAMBDA_KERNELS_JIT="0")
    assert result.returncode == 0, result.stderr
    assert "REASON compiled extension not installed" in result.stdout
    assert "JIT disabled" in result.stdout
    assert "USED reference" in result.stdout
    assert "RAISED backend 'cpu' cannot run" in result.stdout


def test_missing_extension_is_jit_built_on_first_use(tmp_path):
    """The JIT build compiles the CPU levels this CPU runs (and baseline, avx2), runs the best
    of them, and names the rest as not compiled."""
    result = _run_python("""
        import sys
        sys.modules["lambda_kernels._C"] = None
        import torch, lambda_kernels, lambda_kernels._ext
        from harness import make_inputs
        from lambda_kernels import _build_config
        print("REASON", lambda_kernels._ext.load())
        print("LEVELS", ",".join(lambda_kernels.cpu_isa_levels()))
        print("OMITTED", ",".join(_build_config.omitted_levels_for_this_cpu()))
        print("ACTIVE", lambda_kernels.cpu_isa())
        for level in _build_config.omitted_levels_for_this_cpu():
            print("REFUSED", torch.ops.lambda_kernels.cpu_isa_unsupported(level))
        inputs = make_inputs(dtype=torch.float64)
        keys, values = inputs[1], inputs[2]
        lam, lse = torch.ops.lambda_kernels.content_lambda(keys, values)
        ref = lambda_kernels.reference.content_lambda(keys, values)
        print("MAXERR", float((lam - ref).abs().max()))
        out = lambda_kernels.lambda_op(*inputs, backend="cpu")
        print("OPERR", float((out - lambda_kernels.reference.lambda_reference(*inputs)).abs().max()))
        import test_cpu_isa  # the level tests any build must pass, on this JIT build
        test_cpu_isa.test_levels_for_this_architecture_lowest_first()
        test_cpu_isa.test_detected_support_agrees_with_the_kernel_cpu_flags()
        test_cpu_isa.test_use_cpu_isa_switches_and_restores()
        test_cpu_isa.test_unknown_and_unsupported_levels_are_refused()
        print("LEVEL_TESTS passed")
    """, LAMBDA_KERNELS_BUILD_DIR=str(tmp_path), PYTHONPATH=os.path.join(REPO, "tests"),
        LAMBDA_KERNELS_WITH_CUDA="0", LAMBDA_KERNELS_CPU_ISA=None)
    assert result.returncode == 0, result.stderr
    assert "JIT-building" in result.stderr
    assert "REASON None" in result.stdout
    lines = dict(line.split(" ", 1) for line in result.stdout.splitlines() if " " in line)
    levels = lines["LEVELS"].split(",")
    omitted = [level for level in lines.get("OMITTED", "").split(",") if level]
    x86 = ["baseline", "avx2", "avx512", "avx512_bf16", "amx"]
    if levels[0] == "baseline":
        # Every level is listed, the omitted ones refused (what tests/test_cpu_isa.py expects
        # of any build); the best compiled one is active (amx: the OS may refuse its tiles).
        assert levels == x86
        compiled = [level for level in x86 if level not in omitted]
        assert lines["ACTIVE"] == compiled[-1] or compiled[-1] == "amx"
    if omitted:
        assert "leaving out the CPU levels this CPU lacks" in result.stderr
        assert "REFUSED this CPU lacks" in result.stdout
    assert float(lines["MAXERR"]) < 1e-12 and float(lines["OPERR"]) < 1e-10
    assert lines["LEVEL_TESTS"] == "passed"


@pytest.mark.parametrize("flags, omitted", [
    ({"sse2", "avx", "avx2", "fma"}, ["avx512", "avx512_bf16", "amx"]),
    ({"avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512dq"}, ["avx512_bf16", "amx"]),
    ({"avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_bf16"}, ["amx"]),
    ({"avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_bf16", "amx_tile",
      "amx_bf16"}, []),
    ({"avx2", "fma", "avx512f", "avx512bw", "avx512vl"}, ["avx512", "avx512_bf16", "amx"]),
])
def test_jit_build_leaves_out_the_levels_a_cpu_lacks(flags, omitted, monkeypatch):
    from lambda_kernels import _build_config
    assert _build_config.levels_lacking(flags) == omitted
    sources = _build_config.sources(REPO, False, omitted)
    names = {os.path.basename(f) for f in sources}
    assert {"isa_baseline.cpp", "isa_avx2.cpp", "isa_dispatch.cpp", "ops.cpp"} <= names
    assert all((f"isa_{level}.cpp" in names) == (level not in omitted)
               for level in _build_config.OPTIONAL_X86_LEVELS)
    assert _build_config.level_macros(omitted) == [f"-DLK_WITHOUT_{lv.upper()}" for lv in omitted]
    monkeypatch.setenv("LAMBDA_KERNELS_JIT_LEVELS", "all")
    assert _build_config.omitted_levels_for_this_cpu() == []
    monkeypatch.setenv("LAMBDA_KERNELS_JIT_LEVELS", "avx2")
    with pytest.raises(ValueError, match="LAMBDA_KERNELS_JIT_LEVELS must be 'cpu'.*got 'avx2'"):
        _build_config.omitted_levels_for_this_cpu()
