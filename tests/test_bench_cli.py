"""lambda-bench end to end on the tiny preset (fast: no peak/memory except where tested)."""
import csv
import itertools
import json
import math
import os
import re
import subprocess
import sys
import tomllib

import pytest
import torch

import lambda_kernels
from lambda_kernels.bench import cli, providers as P
from lambda_kernels.bench import targets as T
from lambda_kernels.bench import models as M
from lambda_kernels.cost import in_image_taps, in_volume_taps
from lambda_kernels.bench.measure import cpu_memory_subprocess, summarize
from lambda_kernels.bench.measure import make_steps as measure_steps
from lambda_kernels.bench.presets import PRESETS, Case, apply_overrides, parse_size, sweep_cases

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TINY = PRESETS["tiny"].cases[0]
FAST = ["--preset", "tiny", "--device", "cpu", "--no-memory", "--no-peak", "--threads", "1",
        "--repeats", "2", "--warmup", "0", "--no-progress"]


def _cpu_variant():
    """The instruction set the cpu back end reports here (None until it has variants)."""
    return lambda_kernels.available_backends("cpu", details=True)["cpu"]["variant"]


def test_cli_subprocess_end_to_end(tmp_path):
    out = {ext: str(tmp_path / f"r.{ext}") for ext in ("json", "csv", "png")}
    isa = _cpu_variant() or "baseline"   # the default path: a valid name on this CPU
    cmd = [sys.executable, "-m", "lambda_kernels.bench", *FAST, "--cpu-isa", isa,
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
    # every row that ran says which back end and variant: ours the CPU instruction set,
    # plain PyTorch ops ATen's CPU capability; the forced ISA is recorded
    assert doc["meta"]["cpu_isa"] == isa
    assert doc["meta"]["backends"]["cpu"]["runs"] is (rows["lambda-cpu"]["status"] == "ok")
    if rows["lambda-cpu"]["status"] == "ok":
        assert rows["lambda-cpu"]["backend"] == "cpu"
        assert rows["lambda-cpu"]["variant"] == _cpu_variant()
    assert rows["lambda-reference"]["backend"] == "reference"
    capability = torch.backends.cpu.get_cpu_capability().lower()
    for name in ("lambda-networks", "mhsa", "conv3x3", "conv-r"):
        assert (rows[name]["backend"], rows[name]["variant"]) == ("torch", capability)

    with open(out["csv"]) as f:
        recs = list(csv.DictReader(f))
    assert len(recs) == 2 * len(rows)              # fwd and fwdbwd rows
    assert {"machine", "device_name", "torch", "triton", "date", "backend", "variant",
            "cpu_isa"} <= set(recs[0])
    assert {r["cpu_isa"] for r in recs} == {isa}
    assert open(out["png"], "rb").read(8) == PNG_MAGIC


class _Boom(P.Provider):
    name = "test-boom"
    description = "raises while building"

    def build(self, case, device):
        raise MemoryError("injected failure while building")


def test_main_in_process_injected_failure_and_shapes(tmp_path, capsys):
    P.register(_Boom())
    try:
        res = cli.run_cli([*FAST, "--providers", "test-boom,lambda-reference,mhsa",
                           "--baseline", "mhsa", "--csv", str(tmp_path / "a.csv")])
        cli.main([*FAST, "--providers", "conv3x3", "--csv", str(tmp_path / "a.csv")])
    finally:
        P.REGISTRY.pop("test-boom")
    rows = {r["provider"]: r for r in res["results"]}
    assert rows["test-boom"]["status"] == "error"
    assert "injected failure" in rows["test-boom"]["reason"]
    assert rows["mhsa"]["speedup_fwd"] == pytest.approx(1.0)
    assert rows["lambda-reference"]["out_shape"] == [1, 8, 8, 8]
    assert "injected failure" in capsys.readouterr().out
    lines = open(tmp_path / "a.csv").read().splitlines()
    assert lines[0].startswith("date,") and sum(l.startswith("date,") for l in lines) == 1
    assert len(lines) == 1 + 2 * 3 + 2           # appended, one header


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


def test_cpu_memory_subprocess(monkeypatch):
    # the memory subprocess sees the forced instruction set (conv3x3 does not load our kernels)
    monkeypatch.setenv(cli.ENV_CPU_ISA, "an-isa-name")
    res = cpu_memory_subprocess("conv3x3", apply_overrides(TINY, size=(32, 32)).to_dict(), 1)
    assert "error" not in res, res
    assert res["mem_fwd"] >= 0 and res["mem_fwdbwd"] >= 0
    assert "VmHWM" in res["method"] or "ru_maxrss" in res["method"]
    assert res["cpu_isa"] == "an-isa-name"
    assert res["variant"] == torch.backends.cpu.get_cpu_capability().lower()


def test_cpu_isa_switches_the_running_level_and_refuses_one_this_cpu_lacks(monkeypatch):
    from lambda_kernels._cpu_isa import set_cpu_isa

    if lambda_kernels.available_backends("cpu")["cpu"] is not None:
        pytest.skip("cpu back end unavailable")
    # set, then removed: monkeypatch restores the variable's absence, which apply_cpu_isa changes
    monkeypatch.setenv(cli.ENV_CPU_ISA, "")
    monkeypatch.delenv(cli.ENV_CPU_ISA)
    levels = lambda_kernels.cpu_isa_levels()
    before = lambda_kernels.cpu_isa()
    try:
        cli.apply_cpu_isa("baseline" if "baseline" in levels else "neon")
        assert lambda_kernels.cpu_isa() == os.environ[cli.ENV_CPU_ISA]
        unsupported = [level for level, reason in levels.items() if reason is not None]
        for level in unsupported + ["no-such-level"]:
            with pytest.raises(SystemExit, match=f"--cpu-isa {level}: "):
                cli.apply_cpu_isa(level)
    finally:
        set_cpu_isa(before)  # restore the level of this process


def test_flop_formulas_and_helpers():
    # global context window covers the image: P = N^2; r = 1: P = N
    assert in_image_taps(5, 7, 9, 13) == 35 * 35
    assert in_image_taps(5, 7, 1, 1) == 35
    assert in_image_taps(3, 3, 3, 3) == 7 * 7
    c = Case(batch=2, dim=8, height=4, width=4, dim_k=4, heads=2, dim_u=1, r=3)
    n, h, k, u, v = 16, 2, 4, 1, 4
    pos = 2 * 2 * in_image_taps(4, 4, 3, 3) * h * u * (k + v)
    proj = 2 * 2 * n * 8 * (h * k + u * k + u * v)
    content = 2 * 2 * n * u * k * v + 2 * 2 * n * h * k * v
    assert P.flops_lambda(c) == proj + content + pos
    assert P.flops_conv(c, 3) == 2 * 2 * 8 * 8 * in_image_taps(4, 4, 3, 3)
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
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["--mm-size", "0"])


def _cli_error(argv, capsys) -> str:
    """run_cli(argv) ends as an argparse error (exit status 2, no traceback); its stderr."""
    with pytest.raises(SystemExit) as exit_info:
        cli.run_cli(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    prog = "lambda-bench train" if argv[:1] == ["train"] else "lambda-bench"
    assert f"usage: {prog}" in err and f"{prog}: error: " in err, err
    return err


_POSITIVE = "must be a positive integer, got"


@pytest.mark.parametrize("flags, message", [
    (["--heads", "0"], f"argument --heads: {_POSITIVE} 0"),
    (["--repeats", "0"], f"argument --repeats: {_POSITIVE} 0"),
    (["--batch", "0"], f"argument --batch: {_POSITIVE} 0"),
    (["--dim", "0"], f"argument --dim: {_POSITIVE} 0"),
    (["--dim-out", "0"], f"argument --dim-out: {_POSITIVE} 0"),
    (["--dim-k", "-2"], f"argument --dim-k: {_POSITIVE} -2"),
    (["--dim-u", "0"], f"argument --dim-u: {_POSITIVE} 0"),
    (["--r", "0"], f"argument --r: {_POSITIVE} 0"),
    (["--n", "0"], f"argument --n: {_POSITIVE} 0"),
    (["--threads", "0"], f"argument --threads: {_POSITIVE} 0"),
    (["--threads", "-1"], f"argument --threads: {_POSITIVE} -1"),
    (["--mem-jobs", "0"], f"argument --mem-jobs: {_POSITIVE} 0"),
    (["--warmup", "-1"], "argument --warmup: must be a non-negative integer, got -1"),
    (["--max-time", "-1"], "argument --max-time: must be a non-negative number, got -1"),
    (["--max-time", "nan"], "argument --max-time: must be a non-negative number, got nan"),
    (["--sweep", "size", "--sweep-values", "0,4"], "height must be >= 1, got 0"),
    (["--n", "5", "--sweep", "size", "--sweep-values", "4,6"],
     "global context n=5 needs H, W <= n, got 6x6"),
    (["--providers", "lambda-cpu,lambda-nope"],
     "--providers: unknown 'lambda-nope'; known: lambda-cpu, lambda-cuda,"),
    (["--providers", ","], "--providers: no name given; known: lambda-cpu,"),
    (["--baseline", "nope"], "--baseline: unknown 'nope'; known: lambda-cpu,"),
])
def test_bad_layer_flags_are_argparse_errors(flags, message, capsys):
    """Each bad flag of lambda-bench is refused before measuring (exit status 2, the flag
    named), not a ZeroDivisionError / KeyError or an error row with exit status 0."""
    err = _cli_error([*FAST, "--providers", "lambda-reference", *flags], capsys)
    assert message in err, err
    if "--providers" in flags or "--baseline" in flags:
        assert all(name in err for name in P.REGISTRY)   # the valid names are listed


@pytest.mark.parametrize("flags, message", [
    (["--repeats", "0"], f"argument --repeats: {_POSITIVE} 0"),
    (["--batch", "0"], f"argument --batch: {_POSITIVE} 0"),
    (["--image-size", "0"], f"argument --image-size: {_POSITIVE} 0"),
    (["--num-classes", "0"], f"argument --num-classes: {_POSITIVE} 0"),
    (["--warmup", "-1"], "argument --warmup: must be a non-negative integer, got -1"),
    (["--threads", "0"], f"argument --threads: {_POSITIVE} 0"),
    (["--providers", "timm-resnet26t,nope"], "--providers: unknown 'nope'; known: timm-resnet26t,"),
    (["--baseline", "nope"], "--baseline: unknown 'nope'; known: timm-resnet26t,"),
])
def test_bad_train_flags_are_argparse_errors(flags, message, capsys):
    err = _cli_error([*TRAIN_FAST, "--image-size", "32", "--providers",
                      "lambda_kernels-lambda_resnet26", *flags], capsys)
    assert message in err, err
    if "--providers" in flags or "--baseline" in flags:
        assert all(name in err for name in M.MODEL_REGISTRY)


def test_explicit_n_survives_a_size_sweep():
    """--n with --sweep size keeps n at every size; without --n, n follows the image."""
    args = cli.build_parser().parse_args(["--preset", "tiny", "--n", "12", "--sweep", "size",
                                          "--sweep-values", "4,6"])
    _, cases = cli.make_cases(args, torch.device("cpu"))
    assert [(c.height, c.width, c.n, c.r) for c in cases] == [(4, 4, 12, None), (6, 6, 12, None)]
    args = cli.build_parser().parse_args(["--preset", "seed", "--sweep", "size",
                                          "--sweep-values", "8,16"])
    _, cases = cli.make_cases(args, torch.device("cpu"))   # seed's first case is local
    assert [(c.height, c.n, c.r) for c in cases] == [(8, None, 23), (16, None, 23)]
    base = apply_overrides(TINY, n=20)
    assert [c.n for c in sweep_cases(base, "size", [4, 6])] == [4, 6]
    assert [c.n for c in sweep_cases(base, "size", [4, 6], n=20)] == [20, 20]
    with pytest.raises(ValueError, match="heads must be >= 1, got 0"):
        apply_overrides(TINY, heads=0).check()


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


def test_targets_preset_on_tiny_shapes(capsys):
    """--preset targets: the positional kernel timed alone, a targets table; on shapes other
    than the targets' own, every target says it is not comparable."""
    res = cli.run_cli(["--preset", "targets", "--size", "8", "--dim", "8", "--dim-k", "4",
                       "--device", "cpu", "--no-memory", "--threads", "1", "--repeats", "2",
                       "--warmup", "0", "--no-progress", "--mm-size", "96"])
    rows = {(r["case"], r["provider"]): r for r in res["results"]}
    assert {p for _, p in rows} == {"lambda-cpu", "lambda-networks"}
    if rows[("seed-local", "lambda-cpu")]["status"] == "ok":
        kernel = rows[("seed-local", "lambda-cpu")]["kernel"]
        assert kernel["backend"] == "cpu" and kernel["useful_flop"] > 0 and kernel["mm_size"] == 96
        assert 0 < kernel["frac_peak_fwd"] and 0 < kernel["frac_peak_fwdbwd"]
        bf16 = rows[("seed-local bf16", "lambda-cpu")]["kernel"]
        assert bf16["mm_dtypes"] == ["float32", "bfloat16"] and bf16["frac_mm_bfloat16_fwd"] > 0
    assert "kernel" not in rows[("seed-local", "lambda-networks")]
    names = [t["name"] for t in res["targets"]]
    # seed cases 9, seed-local bf16 3, three stage shapes: fp32 2 and bf16 2 each; under
    # autocast: seed-local and the stage shapes 1 each
    assert len(names) == 28 and any("positional kernel backward" in n for n in names)
    autocast = rows[("seed-local autocast bf16", "lambda-cpu")]
    if autocast["status"] == "ok":
        assert "kernel" not in autocast and autocast["fwdbwd"]["median"] > 0
        assert rows[("seed-local autocast bf16", "lambda-networks")]["err_vs"] == "lambda-cpu"
    assert any("vs our fp32 layer" in n for n in names)
    assert all(t["status"].startswith("not comparable: dim=8 (target at ")
               for t in res["targets"])
    assert "median of the per-pair ratios [their IQR]" in capsys.readouterr().out


def _row(case, provider, fwd=None, fwdbwd=None, **extra):
    stats = lambda t: {"median": t} if t else {}
    return {"case": case, "provider": provider, "status": "ok", "fwd": stats(fwd),
            "fwdbwd": stats(fwdbwd), **extra}


def test_target_evaluation():
    cases = [c for c in PRESETS["resnet"].cases if c.label in ("28x28/256 r=23", "14x14/512 r=9")]
    rows = [_row("28x28/256 r=23", "lambda-cpu", fwdbwd=1.0),
            _row("28x28/256 r=23", "lambda-networks", fwdbwd=4.0),
            _row("28x28/256 r=23", "conv3x3", fwdbwd=0.5),
            _row("14x14/512 r=9", "lambda-cpu", fwdbwd=1.0),
            _row("14x14/512 r=9", "conv3x3", fwdbwd=1.2)]
    got = {t["name"]: t for t in T.evaluate(T.LAYER_TARGETS, rows, cases, "cpu", 2)}
    assert got["28x28/256 r=23 fwd+bwd speed-up vs lambda-networks"]["status"] == "pass"
    assert got["28x28/256 r=23 fwd+bwd time / Conv2d 3x3"]["status"] == "fail"   # 2x > 1.5x
    assert got["28x28/256 r=23 fwd+bwd time / Conv2d 3x3"]["measured"] == pytest.approx(2.0)
    assert got["14x14/512 r=9 fwd+bwd speed-up vs Conv2d 3x3"]["status"] == "pass"
    assert got["14x14/512 r=9 fwd+bwd speed-up vs lambda-networks"]["status"] == "not measured"
    assert len(got) == 4 and all(t["threads"] == 2 for t in got.values())
    assert T.evaluate(T.LAYER_TARGETS, rows, cases, "cuda", 2) == []


def test_target_against_another_case():
    """bf16 vs our fp32 layer: a target that reads the rows of a second case."""
    cases = [c for c in PRESETS["targets"].cases if c.label.startswith("14x14/512 r=9")]
    rows = [_row("14x14/512 r=9", "lambda-cpu", fwdbwd=2.0),
            _row("14x14/512 r=9 bf16", "lambda-cpu", fwdbwd=1.0),
            _row("14x14/512 r=9 bf16", "lambda-networks", fwdbwd=2.5)]
    name = "14x14/512 r=9 bf16 fwd+bwd speed-up vs our fp32 layer"
    for flags, threshold in (({"avx2", "avx512f", "avx512_bf16"}, 1.8), ({"avx2"}, 0.8)):
        got = {t["name"]: t for t in T.evaluate(T.LAYER_TARGETS, rows, cases, "cpu", 2, flags)}
        fp32 = got[name]
        assert fp32["measured"] == pytest.approx(2.0) and fp32["status"] == "pass"
        assert fp32["threshold"] == threshold
        upstream = got["14x14/512 r=9 bf16 fwd+bwd speed-up vs lambda-networks"]
        assert upstream["measured"] == pytest.approx(2.5) and upstream["status"] == "fail"
    # 1.5x faster in bf16 passes without bf16 arithmetic and fails with it; 0.7x fails both
    for fp32_time, statuses in ((1.5, ("fail", "pass")), (0.7, ("fail", "fail"))):
        rows[0] = _row("14x14/512 r=9", "lambda-cpu", fwdbwd=fp32_time)
        for flags, status in zip(({"avx512_bf16"}, set()), statuses):
            got = {t["name"]: t for t in T.evaluate(T.LAYER_TARGETS, rows, cases, "cpu", 2,
                                                    flags)}
            assert got[name]["status"] == status, (fp32_time, flags)


TRAIN_FAST = ["train", "--image-size", "64", "--batch", "2", "--repeats", "1", "--warmup", "0",
              "--threads", "1", "--no-progress", "--device", "cpu"]


def test_train_benchmark_on_tiny_shapes(tmp_path):
    pytest.importorskip("timm")
    out = {ext: str(tmp_path / f"m.{ext}") for ext in ("json", "csv", "md", "png")}
    res = cli.run_cli([*TRAIN_FAST, "--json", out["json"], "--csv", out["csv"],
                       "--markdown", out["md"], "--plot", out["png"]])
    rows = {r["provider"]: r for r in res["results"]}
    assert list(rows) == list(M.MODEL_REGISTRY)
    assert rows["timm-halonet26t"]["status"] == "skipped"
    assert "divisible by 256" in rows["timm-halonet26t"]["reason"]
    for name, row in rows.items():
        if name == "timm-halonet26t":
            continue
        assert row["status"] == "ok", row
        assert row["img_s_fwd"] > 0 and row["img_s_fwdbwd"] > 0 and row["params"] > 1e6
        assert row["backend"] == ("torch" if name.startswith("timm-") else "cpu")
    for model in ("lambda_resnet26t", "lambda_resnet26rpt_256"):
        converted = rows[f"from_timm-{model}"]
        assert converted["stock"] == f"timm-{model}"
        assert converted["vs_stock_fwdbwd"] > 0
        assert converted["max_rel_err"] < 1e-4           # same weights, same logits
    assert rows["timm-botnet26t_256"]["speedup_fwd"] > 0   # vs the timm-resnet26t baseline
    statuses = {t["name"]: t["status"] for t in res["targets"]}
    assert len(statuses) == 2 and all(s.startswith("not comparable: image_size=64")
                                      for s in statuses.values())
    doc = json.loads(open(out["json"]).read())
    assert doc["meta"]["bench"] == "train" and len(doc["results"]) == len(rows)
    with open(out["csv"]) as f:
        recs = list(csv.DictReader(f))
    assert len(recs) == 2 * len(rows) and recs[0]["bench"] == "train"
    assert "## targets" in open(out["md"]).read()
    assert open(out["png"], "rb").read(8) == PNG_MAGIC


def test_train_benchmark_without_timm(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)   # import timm fails as if not installed
    res = cli.run_cli([*TRAIN_FAST, "--image-size", "32", "--providers",
                       "timm-resnet26t,from_timm-lambda_resnet26t,lambda_kernels-lambda_resnet26"])
    rows = {r["provider"]: r for r in res["results"]}
    for name in ("timm-resnet26t", "from_timm-lambda_resnet26t"):
        assert rows[name]["status"] == "skipped"
        assert 'pip install "lambda-kernels[timm]"' in rows[name]["reason"]
    assert rows["lambda_kernels-lambda_resnet26"]["status"] == "ok"


def test_without_rich_and_matplotlib(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "rich", None)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    cli.run_cli([*FAST, "--providers", "conv3x3,debug-fail"])
    text = capsys.readouterr().out
    assert 'rich is not installed' in text and 'pip install "lambda-kernels[bench]"' in text
    assert "provider" in text and "conv3x3" in text and "torch (" in text
    assert "deliberate failure" in text
    with pytest.raises(SystemExit, match=r'--plot needs matplotlib.*lambda-kernels\[bench\]'):
        cli.run_cli([*FAST, "--providers", "conv3x3", "--plot", "x.png"])


def test_plotting_libraries_are_an_extra():
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        project = tomllib.load(f)["project"]
    names = {re.split(r"[ ;<>=!\[]", d)[0] for d in project["dependencies"]}
    assert not names & {"rich", "matplotlib"}
    assert {"rich", "matplotlib", "lambda-networks==0.4.0", "einops"} <= \
        set(project["optional-dependencies"]["bench"])
    assert project["scripts"]["lambda-bench"] == "lambda_kernels.bench.cli:main"


def test_reference_back_end_stands_in_for_missing_lambda_networks(monkeypatch, tmp_path):
    """Without lambda-networks the speed-up columns compare with lambda-reference, and the
    table says so."""
    monkeypatch.setitem(sys.modules, "lambda_networks", None)  # import fails as if missing
    md = tmp_path / "r.md"
    res = cli.run_cli([*FAST, "--providers", "lambda-networks,conv3x3", "--markdown", str(md)])
    rows = {r["provider"]: r for r in res["results"]}
    assert res["meta"]["baseline"] == "lambda-reference"
    assert rows["lambda-networks"]["status"] == "skipped"
    assert rows["lambda-reference"]["speedup_fwd"] == pytest.approx(1.0)
    assert rows["conv3x3"]["speedup_fwd"] > 0 and rows["conv3x3"]["speedup_fwdbwd"] > 0
    note = res["meta"]["baseline_note"]
    assert "lambda-reference" in note and 'pip install "lambda-kernels[bench]"' in note
    assert "speedup vs lambda-reference" in md.read_text()
    monkeypatch.delitem(sys.modules, "lambda_networks")
    assert cli.choose_baseline(None, ["lambda-networks", "mhsa"]) == ("lambda-networks", None)
    assert cli.choose_baseline("mhsa", ["lambda-networks", "mhsa"]) == ("mhsa", None)


def test_video_preset_on_tiny_shapes():
    """The 3-D rows: LambdaLayer3d (fused and reference, same weights), Conv3d 3x3x3 and SDPA
    over T·H·W on one video case; the video providers refuse image cases."""
    res = cli.run_cli(["--preset", "video", "--device", "cpu", "--no-memory", "--no-peak",
                       "--threads", "1", "--repeats", "2", "--warmup", "0", "--no-progress",
                       "--dim", "8", "--size", "5x6", "--heads", "2", "--r", "3",
                       # not the Triton interpreter (slow; its rows: test_triton_interpreter_row)
                       "--providers", "lambda3d-reference,lambda3d-cpu,conv3d-3x3x3,mhsa3d"])
    rows = {r["provider"]: r for r in res["results"]}
    case = res["results"][0]["shape"]
    assert case["frames"] == 8 and case["rt"] == 3
    for name in ("lambda3d-reference", "conv3d-3x3x3", "mhsa3d") + (
            ("lambda3d-cpu",) if _cpu_variant() is not None else ()):
        assert rows[name]["status"] == "ok", rows[name]
        assert rows[name]["out_shape"] == [1, 8, 8, 5, 6]
        assert rows[name]["flops_fwd"] > 0
    if _cpu_variant() is not None:
        assert rows["lambda3d-cpu"]["err_vs"] == "lambda3d-reference"
        assert rows["lambda3d-cpu"]["max_abs_err"] < 1e-4
    assert "needs a video case" in P.get("conv3d-3x3x3").unavailable(TINY, torch.device("cpu"))
    assert "lambda3d-cpu" not in P.default_names()
    # in-volume window pairs against a brute-force count
    brute = sum(1 for t, i, j, a, b, c in itertools.product(
        range(2), range(3), range(4), range(-1, 2), range(-2, 3), range(-1, 2))
        if 0 <= t + a < 2 and 0 <= i + b < 3 and 0 <= j + c < 4)
    assert in_volume_taps(2, 3, 4, 3, 5, 3) == brute


# --------------------------------------------------------------------------------------------
# interleaved timing: providers take turns repeat by repeat; speed-ups are per-pair ratios


class _FakeClock:
    """measure.now for tests: time moves only when a fake provider's call says so."""

    def __init__(self):
        self.t = 0.0
        self.calls: list[tuple[str, str]] = []      # (provider, "eval" / "train"), in order

    def __call__(self) -> float:
        return self.t


class _TimedModule(torch.nn.Module):
    """Each call logs (name, mode) and takes seconds[mode][k] on the fake clock, k = the
    module's k-th call in that mode (untimed first call and warm-up calls included)."""

    def __init__(self, name, clock, seconds, logits=None):
        super().__init__()
        self.name, self.clock, self.seconds, self.logits = name, clock, seconds, logits
        self.count = {"eval": 0, "train": 0}
        self.w = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x):
        mode = "train" if self.training else "eval"
        table = self.seconds[mode]
        self.clock.t += table[min(self.count[mode], len(table) - 1)]
        self.count[mode] += 1
        self.clock.calls.append((self.name, mode))
        if self.logits:                                  # a classifier (model rows)
            return x.mean((2, 3))[:, :1].expand(-1, self.logits) * 0 + self.w
        return x * 0 + self.w


class _TimedProvider(P.Provider):
    def __init__(self, name, clock, seconds):
        self.name, self.clock, self.seconds = name, clock, seconds
        self.description = "fake times (tests)"

    def build(self, case, device):
        return _TimedModule(self.name, self.clock, self.seconds), ""


class _TimedModel(M.ModelProvider):
    def __init__(self, name, clock, seconds, stock=None):
        self.name, self.clock, self.seconds, self.stock = name, clock, seconds, stock

    def build(self, case):
        return _TimedModule(self.name, self.clock, self.seconds, case.num_classes), ""


@pytest.fixture
def fake_clock(monkeypatch):
    from lambda_kernels.bench import measure
    clock = _FakeClock()
    monkeypatch.setattr(measure, "now", clock)
    return clock


# base and mine: seconds of the timed calls; the per-pair ratios base/mine are [1, 5, 0.5]
# (median 1, IQR [0.75, 3], min 0.5, max 5), while the ratio of the medians is 3/2
BASE, MINE = [1.0, 10.0, 3.0], [1.0, 2.0, 6.0]


def test_time_interleaved_takes_turns_and_stops_together(fake_clock):
    from lambda_kernels.bench.measure import time_interleaved

    def fn(name, seconds, fail_at=None):
        count = itertools.count()

        def call():
            k = next(count)
            fake_clock.calls.append(name)
            if k == fail_at:
                raise RuntimeError(f"{name} failed")
            fake_clock.t += seconds
        return call

    cpu = torch.device("cpu")
    got = time_interleaved([fn("A", 2.0), fn("B", 1.0), fn("C", 0.5)], cpu, warmup=2, repeats=3)
    assert fake_clock.calls == ["A", "A", "B", "B", "C", "C"] + ["A", "B", "C"] * 3
    assert got == [[2.0] * 3, [1.0] * 3, [0.5] * 3]
    # max_time: every fn stops after the same round, once the one that spent most spent
    # max_time and at least 3 rounds ran; a fn that raises leaves the rotation
    fake_clock.calls.clear()
    got = time_interleaved([fn("A", 2.0), fn("B", 1.0, fail_at=2)], cpu, warmup=1,
                           repeats=10, max_time=3.0)
    assert fake_clock.calls == ["A", "B"] + ["A", "B"] + ["A", "B"] + ["A"]
    assert got[0] == [2.0] * 3
    assert isinstance(got[1], RuntimeError) and "B failed" in str(got[1])
    # a warm-up call longer than max_time: one round is enough
    fake_clock.calls.clear()
    got = time_interleaved([fn("A", 5.0), fn("B", 1.0)], cpu, warmup=1, repeats=10, max_time=3)
    assert fake_clock.calls == ["A", "B", "A", "B"] and got == [[5.0], [1.0]]


def test_layer_rows_interleave_and_report_per_pair_ratios(fake_clock, tmp_path, capsys):
    """Two fake providers through the whole lambda-bench pipeline: the call order is A B A B
    (after the untimed first calls and the warm-ups of each), the speed-up is the median of the
    per-pair ratios, and its spread reaches the table, the JSON and the CSV."""
    # eval calls: untimed first call, 1 warm-up, then the timed calls; train: warm-up, timed
    base = {"eval": [0.5, 0.5, *BASE], "train": [0.5, *[4 * t for t in BASE]]}
    mine = {"eval": [0.5, 0.5, *MINE], "train": [0.5, *MINE]}
    for provider in (_TimedProvider("test-base", fake_clock, base),
                     _TimedProvider("test-mine", fake_clock, mine)):
        P.register(provider)
    out = {ext: str(tmp_path / f"r.{ext}") for ext in ("json", "csv", "md")}
    try:
        res = cli.run_cli([*FAST, "--providers", "test-base,test-mine", "--baseline", "test-base",
                           "--repeats", "3", "--warmup", "1", "--json", out["json"],
                           "--csv", out["csv"], "--markdown", out["md"]])
    finally:
        P.REGISTRY.pop("test-base")
        P.REGISTRY.pop("test-mine")
    a, b = ("test-base", "eval"), ("test-mine", "eval")
    ta, tb = ("test-base", "train"), ("test-mine", "train")
    assert fake_clock.calls == [a, b, a, b, a, b, a, b, a, b, ta, tb, ta, tb, ta, tb, ta, tb]
    rows = {r["provider"]: r for r in res["results"]}
    mine_row = rows["test-mine"]
    assert mine_row["fwd"]["samples"] == MINE and rows["test-base"]["fwd"]["samples"] == BASE
    assert mine_row["speedup_fwd"] == pytest.approx(1.0)            # not 3/2, the medians' ratio
    pairs = mine_row["speedup_fwd_pairs"]
    assert (pairs["n"], pairs["min"], pairs["max"]) == (3, 0.5, 5.0)
    assert (pairs["q25"], pairs["q75"]) == (pytest.approx(0.75), pytest.approx(3.0))
    assert mine_row["speedup_fwdbwd"] == pytest.approx(4.0)         # ratios 4, 20, 2
    assert rows["test-base"]["speedup_fwd"] == 1.0
    text = capsys.readouterr().out
    assert "1.00x [0.75-3.00]" in text and "4.00x [3.00-12.00]" in text
    assert "median of the per-pair ratios" in text and "IQR of those ratios" in text
    doc = json.load(open(out["json"]))
    saved = {r["provider"]: r for r in doc["results"]}["test-mine"]
    assert saved["speedup_fwd_pairs"]["max"] == 5.0
    with open(out["csv"]) as f:
        recs = {(r["provider"], r["mode"]): r for r in csv.DictReader(f)}
    rec = recs[("test-mine", "fwd")]
    assert {"speedup_min", "speedup_q25", "speedup_q75", "speedup_max", "speedup_pairs",
            "vs_stock_min", "vs_stock_max"} <= set(rec)
    assert (float(rec["speedup"]), float(rec["speedup_min"]), float(rec["speedup_max"]),
            int(rec["speedup_pairs"])) == (1.0, 0.5, 5.0, 3)
    assert "1.00x [0.75-3.00]" in open(out["md"]).read()


def test_model_rows_interleave_and_report_per_pair_ratios(fake_clock, monkeypatch, capsys):
    """lambda-bench train runs the same pipeline: every model built, then timed in turn."""
    base = {"eval": [0.5, 0.5, *BASE], "train": [0.5, *BASE]}
    mine = {"eval": [0.5, 0.5, *MINE], "train": [0.5, *MINE]}
    monkeypatch.setitem(M.MODEL_REGISTRY, "test-stock", _TimedModel("test-stock", fake_clock,
                                                                     base))
    monkeypatch.setitem(M.MODEL_REGISTRY, "test-converted",
                        _TimedModel("test-converted", fake_clock, mine, stock="test-stock"))
    res = cli.run_cli([*TRAIN_FAST, "--image-size", "32", "--num-classes", "4", "--providers",
                       "test-stock,test-converted", "--repeats", "3", "--warmup", "1"])
    a, b = ("test-stock", "eval"), ("test-converted", "eval")
    ta, tb = ("test-stock", "train"), ("test-converted", "train")
    assert fake_clock.calls == [a, b, a, b, a, b, a, b, a, b, ta, tb, ta, tb, ta, tb, ta, tb]
    row = {r["provider"]: r for r in res["results"]}["test-converted"]
    for key in ("vs_stock_fwd", "vs_stock_fwdbwd", "speedup_fwd", "speedup_fwdbwd"):
        assert row[key] == pytest.approx(1.0), key
        assert (row[key + "_pairs"]["min"], row[key + "_pairs"]["max"]) == (0.5, 5.0)
    assert "1.00x [0.75-3.00]" in capsys.readouterr().out


def test_pair_ratios_and_targets_read_pairs():
    from lambda_kernels.bench.measure import pair_ratios
    from lambda_kernels.bench.runner import add_ratios

    pairs = pair_ratios(BASE, MINE)
    assert pairs["median"] == 1.0 and (pairs["min"], pairs["max"], pairs["n"]) == (0.5, 5.0, 3)
    assert pair_ratios([], MINE) == {}
    rows = [_row("seed-local", "lambda-networks", fwd=3.0, case_index=0),
            _row("seed-local", "lambda-cpu", fwd=2.0, case_index=0)]
    rows[0]["fwd"]["samples"], rows[1]["fwd"]["samples"] = BASE, MINE
    add_ratios(rows, "lambda-networks")
    assert rows[1]["speedup_fwd"] == 1.0 and rows[1]["speedup_fwdbwd"] is None
    # a target on rows of one case uses the same per-pair median, not the medians' ratio
    measure = T.ratio("lambda-networks", "lambda-cpu", "fwd")
    value, pairs = measure({r["provider"]: r for r in rows})
    assert value == 1.0 and (pairs["q25"], pairs["q75"]) == (0.75, 3.0)
    assert T._text(value, "x", pairs) == "1.00x [0.75-3.00]"
    del rows[0]["fwd"]["samples"]
    assert measure({r["provider"]: r for r in rows}) == pytest.approx(1.5)


def test_cpu_levels_script_writes_one_labelled_file_per_level_and_bench(tmp_path, monkeypatch):
    """benchmarks/cpu_levels.py: the lambda-bench commands of each level (lambda-bench itself
    replaced by a stub that writes its --json and --markdown), merged into
    cpu-<level>-<bench>-<date>.{md,json} with the run's conditions."""
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    try:
        import cpu_levels
    finally:
        sys.path.pop(0)
    ran = []

    def fake_run(cmd, **kwargs):
        if cmd[1:3] != ["-m", "lambda_kernels.bench"]:          # git rev-parse
            return subprocess.CompletedProcess(cmd, 0, stdout="abc123\n")
        argv = cmd[3:]
        ran.append(argv)
        path = lambda flag: argv[argv.index(flag) + 1]
        with open(path("--json"), "w") as f:
            json.dump({"meta": {"argv": argv}, "results": []}, f)
        with open(path("--markdown"), "w") as f:
            f.write("# lambda-bench results (x)\n\n## a case\n")
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setattr(cpu_levels.subprocess, "run", fake_run)
    level = next(lv for lv, why in lambda_kernels.cpu_isa_levels().items() if why is None)
    assert cpu_levels.main(["--levels", level, "--repeats", "2", "--out-dir", str(tmp_path),
                            "--date", "D", "--label", "trial"]) == 0
    assert [a[:2] for a in ran] == [["--preset", "targets"], ["--preset", "resnet"],
                                    ["train", "--batch"], ["train", "--batch"]]
    assert all(["--cpu-isa", level] == a[a.index("--cpu-isa"):a.index("--cpu-isa") + 2] and
               "--repeats" in a for a in ran)
    assert [a[a.index("--dtype") + 1] for a in ran[2:]] == ["float32", "bfloat16"]
    assert sorted(os.listdir(tmp_path)) == sorted(f"cpu-{level}-{b}-D.{e}" for b in
                                                  ("targets", "resnet", "train")
                                                  for e in ("md", "json"))
    train = json.load(open(tmp_path / f"cpu-{level}-train-D.json"))
    assert set(train) == {"meta", "float32", "bfloat16"}
    conditions = train["meta"]["levels_run"]
    assert conditions["versions"]["torch"] == torch.__version__ and conditions["cpu"]["cores"]
    assert conditions["versions"]["lambda_kernels_commit"] == "abc123"
    assert len(conditions["runs"]) == 2 and len(conditions["runs"][0]["load_before"]) == 3
    md = open(tmp_path / f"cpu-{level}-targets-D.md").read()
    assert md.startswith(f"# CPU level {level}: targets (trial)")
    assert "load average" in md and "vector flags" in md and "### a case" in md
    ran.clear()  # --train-dtypes: the train runs of those dtypes only
    assert cpu_levels.main(["--levels", level, "--only", "train", "--train-dtypes", "float32",
                            "--out-dir", str(tmp_path), "--date", "E"]) == 0
    assert [a[a.index("--dtype") + 1] for a in ran] == ["float32"]
    assert set(json.load(open(tmp_path / f"cpu-{level}-train-E.json"))) == {"meta", "float32"}


def test_positional_kernel_fraction_is_per_pair_against_mm_timed_in_turn(fake_clock,
                                                                         monkeypatch):
    """The kernel alone, timed in turn with torch.mm in fp32 and (bf16 case) bf16: its
    fraction of each mm rate is the median over pairs of (flop / t_kernel) / (mm_flop / t_mm)."""
    import types
    from lambda_kernels import backends
    from lambda_kernels.bench import measure

    def ticking(name, seconds):
        count = itertools.count()

        def call(*args):
            fake_clock.calls.append(name)
            fake_clock.t += seconds[next(count)]
        return call

    kernel = {"fwd": [2.0, 4.0, 1.0], "bwd": [3.0, 3.0, 3.0]}
    ops = types.SimpleNamespace(lambda_output=ticking("kernel", kernel["fwd"]),
                                lambda_output_backward=ticking("kernel-bwd", kernel["bwd"]))
    monkeypatch.setattr(backends, "get", lambda name: types.SimpleNamespace(ops=lambda: ops))
    mm_seconds = {torch.float32: [1.0] * 6, torch.bfloat16: [0.5] * 6}
    monkeypatch.setattr(measure, "_mm_call", lambda device, dtype, size: (
        ticking(str(dtype), mm_seconds[dtype]), 100.0))
    case = apply_overrides(TINY, dtype="bfloat16")
    out = measure.positional_kernel_rate("cpu", case, torch.device("cpu"), warmup=0, repeats=3,
                                         max_time=float("inf"), peak_flops=50.0)
    assert fake_clock.calls[:6] == ["kernel", "torch.float32", "torch.bfloat16"] * 2
    flop = P.flops_positional(case)
    # fwd pairs: t_mm / t_kernel = 1/2, 1/4, 1 (fp32) and half that (bf16)
    assert out["frac_mm_float32_fwd"] == pytest.approx(flop / 100 * 0.5)
    assert out["frac_peak_fwd"] == out["frac_mm_float32_fwd"]
    assert out["frac_peak_fwd_pairs"] == out["frac_mm_float32_fwd_pairs"]
    assert out["frac_mm_bfloat16_fwd"] == pytest.approx(flop / 100 * 0.25)
    pairs = out["frac_mm_float32_fwd_pairs"]
    assert (pairs["min"], pairs["max"], pairs["n"]) == (pytest.approx(flop / 400),
                                                      pytest.approx(flop / 100), 3)
    assert out["mm_flop_s"]["bfloat16"]["fwd"] == pytest.approx(200.0)
    assert out["start_of_run_frac_fwd"] == pytest.approx(flop / 2.0 / 50.0)
    # targets: on a CPU with AMX-BF16 the bf16 kernel is held to the bf16 mm rate instead
    names = lambda flags: {t.name for t in T.LAYER_TARGETS if t.case == "seed-local bf16"
                           and (not t.cpu_flag or t.cpu_flag in flags)
                           and not (t.without_cpu_flag and t.without_cpu_flag in flags)}
    assert any("/ bf16 torch.mm" in n for n in names({"amx_bf16"}))
    assert not any("/ fp32 torch.mm" in n for n in names({"amx_bf16"}))
    assert any("/ fp32 torch.mm" in n for n in names({"avx512_bf16"}))
    cases = [c for c in PRESETS["targets"].cases if c.label == "seed-local bf16"]
    rows = [_row("seed-local bf16", "lambda-cpu", fwd=1.0,
                 kernel={"frac_mm_bfloat16_fwd": 0.6, "frac_peak_fwd": 0.9})]
    got = {t["name"]: t for t in T.evaluate(T.LAYER_TARGETS, rows, cases, "cpu", 2,
                                            flags={"amx_bf16"})}
    assert got["seed-local bf16 positional kernel forward, useful FLOP/s / bf16 torch.mm"][
        "status"] == "pass"
    rows[0]["kernel"]["frac_mm_bfloat16_fwd_pairs"] = {"n": 3, "q25": 0.5, "q75": 0.7}
    got = {t["name"]: t for t in T.evaluate(T.LAYER_TARGETS, rows, cases, "cpu", 2,
                                            flags={"amx_bf16"})}
    assert got["seed-local bf16 positional kernel forward, useful FLOP/s / bf16 torch.mm"][
        "measured_text"] == "60% [50-70%]"
    got = T.evaluate(T.LAYER_TARGETS, rows, cases, "cpu", 2, flags=set())
    assert [t["status"] for t in got if "fp32 torch.mm" in t["name"] and "forward" in
            t["name"]] == ["fail"]


def test_autocast_cases_run_the_steps_under_autocast():
    seen = []

    class Probe(torch.nn.Module):
        def forward(self, x):
            seen.append((self.training, torch.is_autocast_enabled("cpu"),
                         torch.get_autocast_dtype("cpu")))
            return torch.nn.functional.linear(x, torch.ones(4, 4))   # bf16 under autocast

    x, dy = torch.randn(2, 4), torch.randn(2, 4)
    fwd, fwd_bwd, _ = measure_steps(Probe(), x, dy, torch.bfloat16)
    assert fwd().dtype == torch.bfloat16 and fwd_bwd().dtype == torch.bfloat16
    assert seen == [(False, True, torch.bfloat16), (True, True, torch.bfloat16)]
    seen.clear()
    fwd, _, _ = measure_steps(Probe(), x, dy)
    assert fwd().dtype == torch.float32 and seen[0][1] is False
    case = PRESETS["targets"].cases[3]
    assert case.autocast == "bfloat16" and "under autocast bfloat16" in case.describe()
    assert apply_overrides(case, dtype="bf16").autocast is None      # runs in bf16 itself
    with pytest.raises(ValueError, match="autocast needs a float32 case"):
        Case(dtype="bfloat16", autocast="bfloat16").check()
