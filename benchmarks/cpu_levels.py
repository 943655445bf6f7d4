"""Run the CPU benchmarks once per instruction-set level this machine can run, and write
benchmarks/results/cpu-<level>-{targets,resnet,train}-<date>.{md,json}.

    python benchmarks/cpu_levels.py                       # every runnable level, full counts
    python benchmarks/cpu_levels.py --levels avx512_bf16 --only targets,train
    python benchmarks/cpu_levels.py --repeats 2 --warmup 1 --label trial   # a quick check
    python benchmarks/cpu_levels.py --dry-run             # print the commands only

Per level (LAMBDA_KERNELS_CPU_ISA forced through `lambda-bench --cpu-isa`, one process per run):
    targets  lambda-bench --preset targets (seed cases and stage shapes, fp32 and bf16 rows,
             the positional kernel alone vs torch.mm, pass/fail targets)
    resnet   lambda-bench --preset resnet --providers lambda-cpu,lambda-reference,
             lambda-networks,conv3x3
    train    lambda-bench train, once in float32 and once with --dtype bfloat16 (autocast):
             both in one file, the float32 tables first (--train-dtypes to choose)
Each .md starts with the run's conditions: machine, CPU model and vector flags, torch / triton /
lambda_kernels versions, date, threads, the load average before and after every command (this
is a shared-machine benchmark: a load above the core count means noisy absolute times; the
interleaved ratios hold better). The .json is lambda-bench's own document with those
conditions under meta["levels_run"] (train: {"float32": doc, "bfloat16": doc}).

The timm models of `train` do not run our kernels, so their times do not depend on the level;
they are timed again per level because the ratios are per-pair (runner.measure_rows).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

BENCHES = ("targets", "resnet", "train")
RESNET_PROVIDERS = "lambda-cpu,lambda-reference,lambda-networks,conv3x3"
TRAIN_MODELS = ("timm-resnet26t,timm-lambda_resnet26t,from_timm-lambda_resnet26t,"
                "timm-lambda_resnet26rpt_256,from_timm-lambda_resnet26rpt_256,"
                "lambda_kernels-lambda_resnet26")
VECTOR_FLAGS = ("sse2", "ssse3", "sse4_1", "sse4_2", "avx", "avx2", "fma", "f16c", "bmi2",
                "avx512", "amx", "avx_vnni", "avx_ne_convert", "asimd", "sve", "bf16", "i8mm")


def cpu_description() -> dict:
    """CPU model, all flags, and the vector ones (x86 'flags' / Arm 'Features' lines)."""
    model, flags = platform.processor() or platform.machine(), []
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and model in ("", platform.machine(), "x86_64"):
                    model = value.strip()
                elif key in ("flags", "Features") and not flags:
                    flags = value.split()
    except OSError:
        pass
    vector = [f for f in flags if any(f.startswith(v) for v in VECTOR_FLAGS)]
    return {"cpu_model": model, "cpu_flags": flags, "vector_flags": vector,
            "cores": os.cpu_count()}


def versions() -> dict:
    import torch
    out = {"python": platform.python_version(), "torch": torch.__version__}
    from importlib import metadata
    for name, dist in (("triton", "triton"), ("timm", "timm"),
                       ("lambda_networks", "lambda-networks")):
        try:
            out[name] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[name] = None
    import lambda_kernels
    out["lambda_kernels"] = getattr(lambda_kernels, "__version__", None)
    try:
        out["lambda_kernels_commit"] = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
            check=True).stdout.strip()
    except Exception:
        out["lambda_kernels_commit"] = None
    return out


def load() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else []


def runnable_levels() -> dict:
    import lambda_kernels
    return lambda_kernels.cpu_isa_levels()


def commands(bench: str, level: str, args, stem: str) -> list[tuple[str, list[str]]]:
    """(label, lambda-bench argv) of one bench at one level; train has two (fp32, bf16)."""
    common = ["--cpu-isa", level, "--threads", str(args.threads), "--device", "cpu",
              "--no-progress"]
    for flag in ("repeats", "warmup", "max_time"):
        value = getattr(args, flag)
        if value is not None:
            common += [f"--{flag.replace('_', '-')}", str(value)]
    if bench == "targets":
        return [("targets", ["--preset", "targets", *common])]
    if bench == "resnet":
        return [("resnet", ["--preset", "resnet", "--providers", RESNET_PROVIDERS, *common])]
    train = ["train", "--batch", str(args.batch), "--image-size", str(args.image_size),
             "--providers", args.train_models, *common]
    return [(dtype, [*train, "--dtype", dtype]) for dtype in args.train_dtypes.split(",")]


def header(level: str, bench: str, conditions: dict, runs: list[dict], label: str) -> str:
    c = conditions
    v = c["versions"]
    lines = [f"# CPU level {level}: {bench}" + (f" ({label})" if label else ""), "",
             f"- date: {c['date']} (UTC); machine: {c['machine']}",
             f"- CPU: {c['cpu']['cpu_model']}, {c['cpu']['cores']} logical cores; vector flags: "
             f"{' '.join(c['cpu']['vector_flags'])}",
             f"- level: LAMBDA_KERNELS_CPU_ISA={level} (levels this CPU runs: "
             f"{', '.join(c['levels'])}); threads {c['threads']}",
             f"- software: Python {v['python']}, torch {v['torch']}, triton {v['triton']}, "
             f"timm {v['timm']}, lambda-networks {v['lambda_networks']}, lambda_kernels "
             f"{v['lambda_kernels']} (commit {v['lambda_kernels_commit']})"]
    for run in runs:
        lines.append(f"- `{run['command']}`: {run['seconds']:.0f} s, load average (1, 5, 15 min) "
                     f"{run['load_before']} before, {run['load_after']} after, exit "
                     f"{run['returncode']}")
    lines.append("")
    return "\n".join(lines)


def run_bench(bench: str, level: str, args, conditions: dict) -> bool:
    stem = os.path.join(args.out_dir, f"cpu-{level}-{bench}-{args.date}")
    docs, mds, runs = {}, [], []
    for label, argv in commands(bench, level, args, stem):
        tmp = f"{stem}.{label}.tmp"
        shown = "lambda-bench " + " ".join(argv)
        argv = [*argv, "--json", tmp + ".json", "--markdown", tmp + ".md"]
        if args.dry_run:
            print(shown)
            continue
        print(f"[{time.strftime('%H:%M:%S')}] {shown}", flush=True)
        before, t0 = load(), time.perf_counter()
        env = dict(os.environ, COLUMNS="260")
        proc = subprocess.run([sys.executable, "-m", "lambda_kernels.bench", *argv], cwd=ROOT,
                              env=env, stdout=None if args.verbose else subprocess.DEVNULL)
        runs.append({"command": shown, "seconds": time.perf_counter() - t0,
                     "load_before": before, "load_after": load(),
                     "returncode": proc.returncode})
        if proc.returncode != 0 or not os.path.exists(tmp + ".json"):
            print(f"  failed (exit {proc.returncode})", flush=True)
            continue
        with open(tmp + ".json") as f:
            docs[label] = json.load(f)
        with open(tmp + ".md") as f:
            mds.append(f.read().replace("# lambda-bench results", "## lambda-bench results", 1)
                       .replace("\n## ", "\n### "))
        for ext in (".json", ".md"):
            os.remove(tmp + ext)
    if args.dry_run or not docs:
        return bool(args.dry_run)
    meta = {**conditions, "level": level, "bench": bench, "label": args.label, "runs": runs}
    if bench == "train":
        doc = {"meta": {"levels_run": meta}, **{k: v for k, v in docs.items()}}
    else:
        doc = docs[bench]
        doc["meta"]["levels_run"] = meta
    with open(stem + ".json", "w") as f:
        json.dump(doc, f, indent=1)
    with open(stem + ".md", "w") as f:
        f.write(header(level, bench, conditions, runs, args.label) + "\n" + "\n".join(mds))
    print(f"  wrote {stem}.md and .json", flush=True)
    return len(docs) == len(commands(bench, level, args, stem))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    p.add_argument("--levels", help="comma list (default: every level this CPU runs)")
    p.add_argument("--only", default=",".join(BENCHES),
                   help=f"comma list of {', '.join(BENCHES)} (default: all)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, help="lambda-bench --repeats (default: the preset's)")
    p.add_argument("--warmup", type=int, help="lambda-bench --warmup")
    p.add_argument("--max-time", type=float, help="lambda-bench --max-time")
    p.add_argument("--batch", type=int, default=8, help="train: images per step (default 8)")
    p.add_argument("--image-size", type=int, default=256, help="train: image size (default 256)")
    p.add_argument("--train-models", default=TRAIN_MODELS, help="train: --providers")
    p.add_argument("--train-dtypes", default="float32,bfloat16",
                   help="train: --dtype of each run (default float32,bfloat16; on a CPU whose "
                        "torch has no native bf16 GEMM, e.g. AVX2, its bf16 convolutions run "
                        "a fallback 30-100x slower than fp32: float32 alone)")
    p.add_argument("--out-dir", default=os.path.join(ROOT, "benchmarks", "results"))
    p.add_argument("--date", default=datetime.datetime.now(datetime.timezone.utc)
                   .strftime("%Y-%m-%d"), help="date in the file names (default: today, UTC)")
    p.add_argument("--label", default="",
                   help="said in every file's title, e.g. 'trial, 2 repeats, loaded machine'")
    p.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    p.add_argument("-v", "--verbose", action="store_true", help="show lambda-bench's tables")
    args = p.parse_args(argv)
    benches = [b.strip() for b in args.only.split(",") if b.strip()]
    unknown = set(benches) - set(BENCHES)
    if unknown:
        p.error(f"--only: unknown {', '.join(sorted(unknown))} (choose from {BENCHES})")
    levels = runnable_levels()
    can = [lv for lv, why in levels.items() if why is None]
    chosen = [lv.strip() for lv in args.levels.split(",")] if args.levels else can
    for level in chosen:
        if level not in levels:
            p.error(f"--levels: {level!r} is not compiled in (have {', '.join(levels)})")
        if levels[level] is not None:
            p.error(f"--levels: this CPU cannot run {level!r}: {levels[level]}")
    os.makedirs(args.out_dir, exist_ok=True)
    conditions = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(
                      timespec="seconds"),
                  "machine": f"{platform.node()} {platform.machine()} {platform.system()} "
                             f"{platform.release()}",
                  "cpu": cpu_description(), "versions": versions(), "threads": args.threads,
                  "levels": can, "levels_refused": {lv: why for lv, why in levels.items()
                                                    if why is not None}}
    print(f"levels: {', '.join(chosen)}; benches: {', '.join(benches)}; load {load()}",
          flush=True)
    ok = True
    for level in chosen:
        for bench in benches:
            ok = run_bench(bench, level, args, conditions) and ok
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
