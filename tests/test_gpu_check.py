"""scripts/gpu_check.sh cannot break on the GPU host: its dry run (FORCE=1, no GPU visible)
writes the same files a GPU run writes, at most 8 and no folders, runs the steps in the
documented order, and fills results.json to its schema (scripts/gpu_check_report.py); the
figure parsers read pytest's JUnit XML and compute-sanitizer's summary."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "scripts", "gpu_check.sh")
sys.path.insert(0, os.path.join(ROOT, "scripts"))
import gpu_check_report as report  # noqa: E402

# The steps by value, as docs/gpu.md lists them (name prefixes).
ORDER = ["wheels", "CUDA build", "back ends", "correctness", "headline benchmark",
         "positional kernel", "autotune", "memcheck triton", "memcheck cuda"]
GPU_STEPS = ORDER[1:]


def _run(tmp_path, **env):
    full_env = dict(os.environ, PYTHON=sys.executable, CUDA_VISIBLE_DEVICES="",
                    OUT=str(tmp_path / "out"), TMPDIR=str(tmp_path), **env)
    full_env.pop("TRITON_INTERPRET", None)
    return subprocess.run(["bash", SCRIPT], env=full_env, capture_output=True, text=True,
                          timeout=300)


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("gpu_check")
    # A wheelhouse whose one wheel is for a module that is installed: the step runs (through
    # the same timeout and exported-function path as every GPU step) and installs nothing.
    wheelhouse = tmp_path / "wheelhouse"
    wheelhouse.mkdir()
    (wheelhouse / "pytest-0.0-py3-none-any.whl").write_bytes(b"")
    proc = _run(tmp_path, FORCE="1", WHEELHOUSE=str(wheelhouse))
    return proc, tmp_path / "out", tmp_path


def test_dry_run_writes_the_three_files_and_nothing_else(dry_run):
    proc, out, tmp_path = dry_run
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert sorted(os.listdir(out)) == ["logs.tar.gz", "results.json", "summary.md"]
    assert all(os.path.isfile(out / name) for name in os.listdir(out))
    # Its scratch folder is gone.
    assert not [p for p in os.listdir(tmp_path) if p.startswith("lambda-gpu-check.")]


def test_dry_run_results_follow_the_schema_and_the_order(dry_run):
    proc, out, _ = dry_run
    record = json.loads((out / "results.json").read_text())
    assert record["schema"] == report.SCHEMA
    assert record["dry_run"] is True and record["overall"] == "pass"
    assert isinstance(record["seconds"], float) and record["finished"]
    assert {"python", "torch", "triton", "git", "nproc"} <= set(record["env"])
    names = [step["name"] for step in record["steps"]]
    assert len(names) == len(ORDER)
    for name, prefix in zip(names, ORDER):
        assert name.startswith(prefix), names
    with tarfile.open(out / "logs.tar.gz") as tar:
        logs = set(tar.getnames())
    for step in record["steps"]:
        assert set(step) == {"name", "status", "reason", "seconds", "limit_s", "kind", "log",
                             "figures"}
        assert step["status"] in report.STATUSES
        assert step["log"] in logs
    wheels, gpu_steps = record["steps"][0], record["steps"][1:]
    assert wheels["status"] == "pass", wheels
    assert all(s["status"] == "skipped" and s["reason"] == "no GPU" and s["figures"] == {}
               for s in gpu_steps)
    summary = (out / "summary.md").read_text()
    assert "dry run" in summary
    positions = [summary.index(f"| {name} |") for name in names]
    assert positions == sorted(positions)


def test_without_gpu_or_force_it_refuses(tmp_path):
    proc = _run(tmp_path)
    assert proc.returncode == 1
    assert "no CUDA device" in proc.stderr


def test_pytest_figures_from_junit_xml(tmp_path):
    xml = tmp_path / "junit.xml"
    xml.write_text(
        '<testsuites><testsuite name="pytest">'
        '<testcase classname="tests.test_a" name="ok"/>'
        '<testcase classname="tests.test_a" name="bad"><failure message="x"/></testcase>'
        '<testcase classname="tests.test_a" name="broken"><error message="y"/></testcase>'
        '<testcase classname="tests.test_b" name="later"><skipped message="z"/></testcase>'
        '</testsuite></testsuites>')
    assert report.pytest_figures(str(xml)) == dict(
        passed=1, failed=1, errors=1, skipped=1,
        failures=["tests.test_a::bad", "tests.test_a::broken"])
    # cut off mid-write by a time limit: counts nothing rather than failing the record
    xml.write_text('<testsuites><testsuite name="pytest"><testcase classn')
    assert report.pytest_figures(str(xml))["passed"] == 0


def test_memcheck_figures(tmp_path):
    log = tmp_path / "memcheck.log"
    log.write_text("========= COMPUTE-SANITIZER\n========= ERROR SUMMARY: 3 errors\n")
    assert report.memcheck_figures(str(log)) == {"errors": 3}
    log.write_text("killed before the summary\n")
    assert report.memcheck_figures(str(log)) == {"errors": None}


def test_pytest_figures_of_a_run_cut_off_come_from_the_verbose_log(tmp_path):
    log = tmp_path / "pytest.log"
    log.write_text(
        "tests/test_a.py::test_one[x] PASSED                                   [  1%]\n"
        "[gw1] [  2%] FAILED tests/test_a.py::test_two[y-bfloat16] \n"
        "[gw0] [  3%] SKIPPED tests/test_b.py::test_three \n"
        "tests/test_b.py::test_four ERROR\n")
    assert report.pytest_figures(str(tmp_path / "missing.xml"), str(log)) == dict(
        passed=1, failed=1, errors=1, skipped=1, partial=True,
        failures=["tests/test_a.py::test_two[y-bfloat16]", "tests/test_b.py::test_four"])
