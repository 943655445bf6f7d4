"""The package's layers point down only: the library (module, functional op, back ends,
kernels) never loads the tools on top of it (lambda-bench, the training program, the Triton
compile check and autotune report), the benchmark package loads its CLI only on demand and no
developer tool, and pybind11 is needed to build, not to run."""
import json
import os
import re
import subprocess
import sys
import tomllib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _loaded_after(statement: str) -> set:
    code = (f"import sys, json\n{statement}\n"
            "print(json.dumps(sorted(m for m in sys.modules if m.startswith('lambda_kernels'))))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return set(json.loads(proc.stdout.strip().splitlines()[-1]))


def test_library_and_kernels_load_no_tools():
    loaded = _loaded_after("import lambda_kernels, lambda_kernels.backends, lambda_kernels.cost\n"
                           "import lambda_kernels.training\n"
                           "try:\n    import lambda_kernels.triton\nexcept Exception:\n    pass")
    tools = {m for m in loaded if m.split(".")[1:2] in (["bench"], ["tools"], ["train"])}
    assert not tools, tools
    assert "lambda_kernels.reference" in loaded


def test_case_registry_loads_without_the_cli_and_bench_loads_no_tools():
    loaded = _loaded_after("from lambda_kernels.bench.presets import PRESETS\n"
                           "import lambda_kernels.bench.op_shapes")
    assert "lambda_kernels.bench.cli" not in loaded and "lambda_kernels.bench.runner" not in loaded
    loaded = _loaded_after("import lambda_kernels.bench.cli, lambda_kernels.bench.measure")
    assert not {m for m in loaded if m.startswith("lambda_kernels.tools")}


def test_pybind11_is_a_build_requirement_only():
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        project = tomllib.load(f)
    runtime = {re.split(r"[ ;<>=!\[]", d)[0] for d in project["project"]["dependencies"]}
    assert "pybind11" not in runtime and "torch" in runtime
    assert "pybind11" in project["build-system"]["requires"]
