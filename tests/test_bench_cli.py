"""lambda-bench end to end on the tiny preset (fast: no peak/memory except where tested)."""
import csv
import json
import math
import os
import subprocess
import sys

import pytest
import torch

from lambda_kernels.bench import cli, providers as P
from lambda_kernels.bench.measure import cpu_memory_subprocess, summarize
from lambda_kernels.bench.presets import PRESETS, Case, apply_overrides, parse_size, sweep_cases

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TINY = PRESETS["tiny"].cases[0]
FAST = ["--preset", "tiny", "--device", "cpu", "--no-memory", "--no-peak", "--threads", "1",
        "--repeats", "2", "--warmup", "0", "--no-progress"]


def test_cli_subprocess_end_to_end(tmp_path):
    out = {ext: str(tmp_path / f"r.{ext}") for ext in ("json", "csv", "png")}
    cmd = [sys.executable, "-m", "lambda_kernels.bench", *FAST,
           "--providers", "lambda-cpu,lambda-triton,lambda-reference,lambda-networks,timm,mhsa,"
                          "conv3x3,conv-r,natten,debug-fail",
           "--json", out["json"], "--csv", out["csv"], "--plot", out["png"]]
    env = dict(os.environ, COLUMNS="250")
    env.pop("TRITON_INTERPRET", None)
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = proc.stdout
    for name in ("lambda-reference", "lambda-networks", "mhsa", "conv3x3", "debug-fail"):
        assert name in text
    assert "deliberate failure" in text            # the failing provider is a row
    assert "TRITON_INTERPRET" in text              # triton on CPU: a reason row
    assert "\x1b[" not in text                     # no ANSI codes / progress bar off a TTY

    def no_nan(const):
        raise AssertionError(f"non-standard JSON constant {const}")

    doc = json.loads(open(out["json"]).read(), parse_constant=no_nan)
    rows = {r["provider"]: r for r in doc["results"]}
    assert doc["meta"]["torch"] == torch.__version__
    assert rows["debug-fail"]["status"] == "error"
    assert "deliberate failure" in rows["debug-fail"]["reason"]
    assert rows["lambda-triton"]["status"] == "skipped"
    expected = [TINY.batch, TINY.dim_out, TINY.height, TINY.width]
    for name in ("lambda-reference", "lambda-networks", "mhsa", "conv3x3", "conv-r"):
        r = rows[name]
        assert r["status"] == "ok", r
        assert r["out_shape"] == expected
        assert r["fwd"]["median"] > 0 and r["fwdbwd"]["median"] > 0
        assert r["flops_fwd"] > 0
    assert rows["lambda-networks"]["speedup_fwd"] == pytest.approx(1.0)
    # upstream with identical weights computes the same function
    assert rows["lambda-networks"]["max_abs_err"] < 1e-4

    with open(out["csv"]) as f:
        recs = list(csv.DictReader(f))
    assert len(recs) == 2 * len(rows)              # fwd and fwdbwd rows
    assert {"machine", "device_name", "torch", "triton", "date"} <= set(recs[0])
    assert open(out["png"], "rb").read(8) == PNG_MAGIC


class _Boom(P.Provider):
    name = "test-boom"
    description = "raises while building"

    def build(self, case, device):
        raise MemoryError("injected failure while building")


def test_main_in_process_injected_failure_and_shapes(tmp_path, capsys):
    P.register(_Boom())
    try:
        res = cli.run_cli([*FAST, "--providers", "test-boom,lambda-reference,mhsa,no-such-thing",
                           "--baseline", "mhsa", "--csv", str(tmp_path / "a.csv")])
        cli.main([*FAST, "--providers", "conv3x3", "--csv", str(tmp_path / "a.csv")])
    finally:
        P.REGISTRY.pop("test-boom")
    rows = {r["provider"]: r for r in res["results"]}
    assert rows["test-boom"]["status"] == "error"
    assert "injected failure" in rows["test-boom"]["reason"]
    assert rows["no-such-thing"]["status"] == "error"
    assert rows["mhsa"]["speedup_fwd"] == pytest.approx(1.0)
    assert rows["lambda-reference"]["out_shape"] == [1, 8, 8, 8]
    assert "injected failure" in capsys.readouterr().out
    lines = open(tmp_path / "a.csv").read().splitlines()
    assert lines[0].startswith("date,") and sum(l.startswith("date,") for l in lines) == 1
    assert len(lines) == 1 + 2 * 4 + 2           # appended, one header


@pytest.mark.parametrize("name", [n for n in P.REGISTRY if n != "debug-fail"])
def test_each_provider_output_shape(name):
    prov = P.get(name)
    dev = torch.device("cpu")
    for case in (TINY, apply_overrides(TINY, dim_out=12, heads=2, dim_u=2),
                 apply_overrides(TINY, n=8)):
        reason = prov.unavailable(case, dev)
        if reason is not None:
            assert isinstance(reason, str) and reason
            continue
        module, note = prov.build(case, dev)
        x = P.make_input(case, dev)
        y = module.eval()(x)
        assert y.shape == (case.batch, case.dim_out, case.height, case.width)
        if name != "conv-r" or case.r is not None:
            assert prov.flops(case) > 0


def test_sweep_plot(tmp_path):
    png = tmp_path / "s.png"
    res = cli.run_cli([*FAST, "--sweep", "r", "--sweep-values", "1,3,5",
                       "--providers", "lambda-reference,conv-r", "--plot", str(png)])
    assert [c["r"] for c in res["cases"]] == [1, 3, 5]
    assert png.read_bytes()[:8] == PNG_MAGIC


def test_cpu_memory_subprocess():
    res = cpu_memory_subprocess("conv3x3", apply_overrides(TINY, size=(32, 32)).to_dict(), 1)
    assert "error" not in res, res
    assert res["mem_fwd"] >= 0 and res["mem_fwdbwd"] >= 0
    assert "VmHWM" in res["method"] or "ru_maxrss" in res["method"]


def test_flop_formulas_and_helpers():
    # global context window covers the image: P = N^2; r = 1: P = N
    assert P.window_pairs(5, 7, 9, 13) == 35 * 35
    assert P.window_pairs(5, 7, 1, 1) == 35
    assert P.window_pairs(3, 3, 3, 3) == 7 * 7
    c = Case(batch=2, dim=8, height=4, width=4, dim_k=4, heads=2, dim_u=1, r=3)
    n, h, k, u, v = 16, 2, 4, 1, 4
    pos = 2 * 2 * P.window_pairs(4, 4, 3, 3) * h * u * (k + v)
    proj = 2 * 2 * n * 8 * (h * k + u * k + u * v)
    content = 2 * 2 * n * u * k * v + 2 * 2 * n * h * k * v
    assert P.flops_lambda(c) == proj + content + pos
    assert P.flops_conv(c, 3) == 2 * 2 * 8 * 8 * P.window_pairs(4, 4, 3, 3)
    assert P.flops_conv(c, 1) == 2 * 2 * n * 8 * 8
    assert parse_size("32x48") == (32, 48) and parse_size("7") == (7, 7)
    assert [x.height for x in sweep_cases(c, "size", [4, 6])] == [4, 6]
    s = summarize([1.0, 2.0, 3.0, 4.0, 5.0])
    assert s["median"] == 3.0 and s["min"] == 1.0 and s["max"] == 5.0 and s["q25"] <= s["q75"]
    for preset in PRESETS.values():
        for case in preset.cases:
            case.check()
            assert math.isfinite(P.flops_lambda(case))


def test_shape_flags_override_every_case():
    args = cli.build_parser().parse_args(
        ["--preset", "seed", "--batch", "3", "--size", "16x12", "--dim", "24", "--dim-k", "8",
         "--heads", "2", "--dim-u", "2", "--dtype", "bf16"])
    _, cases = cli.make_cases(args, torch.device("cpu"))
    assert len(cases) == 2
    for c in cases:
        assert (c.batch, c.height, c.width, c.dim, c.dim_out, c.dim_k, c.heads, c.dim_u,
                c.dtype) == (3, 16, 12, 24, 24, 8, 2, 2, "bfloat16")
    assert cases[0].r == 23 and cases[1].n == 16     # global context follows the image
    args = cli.build_parser().parse_args(["--preset", "tiny", "--n", "9", "--dim-out", "6"])
    (c,) = cli.make_cases(args, torch.device("cpu"))[1]
    assert c.r is None and c.n == 9 and c.dim_out == 6 and c.dim == 8
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["--r", "3", "--n", "8"])


def test_list_runs():
    assert cli.run_cli(["--list"])["results"] == []


def test_triton_interpreter_row(tmp_path):
    """With TRITON_INTERPRET=1 the triton provider runs on CPU (or reports why not)."""
    pytest.importorskip("triton")
    out = tmp_path / "t.json"
    env = dict(os.environ, TRITON_INTERPRET="1")
    proc = subprocess.run([sys.executable, "-m", "lambda_kernels.bench", *FAST, "--providers",
                           "lambda-triton", "--repeats", "1", "--json", str(out)],
                          capture_output=True, text=True, cwd=ROOT, env=env, timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (row,) = json.load(open(out))["results"]
    assert row["status"] in ("ok", "error", "skipped")
    if row["status"] == "ok":
        assert row["backend"] == "triton"
        assert row["out_shape"] == [TINY.batch, TINY.dim_out, TINY.height, TINY.width]
        assert row["max_abs_err"] is None or row["max_abs_err"] < 1e-3
    else:
        assert row["reason"]
