"""lambda-bench: benchmark the lambda layer's back ends against upstream and baselines.

    lambda-bench                                  # quick preset on CUDA if present, else CPU
    lambda-bench --preset seed --json out.json --csv results.csv
    lambda-bench --preset resnet --providers lambda-cpu,lambda-networks,conv3x3
    lambda-bench --sweep size --plot size.png     # time and memory vs image size
    lambda-bench --sweep r --sweep-values 3,7,15,23 --plot r.png
    lambda-bench --list                           # presets and providers
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Optional

import torch

from . import presets as S
from . import providers as P
from .measure import device_name, matmul_rate
from .report import (_rate, append_csv, environment, plot, render_tables, write_json,
                     write_markdown)
from .runner import Options, add_ratios, run_all


def _int_list(text: str) -> list[int]:
    try:
        return [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a comma list of integers, got {text!r}")


def _size(text: str):
    try:
        return S.parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lambda-bench", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(__doc__.split("\n\n")[1:]))
    g = p.add_argument_group("what to run")
    g.add_argument("--preset", choices=sorted(S.PRESETS),
                   help="named case list (default: quick on CPU, gpu-headline on CUDA)")
    g.add_argument("--sweep", choices=["size", "r"],
                   help="expand the preset's first case over image sizes or r")
    g.add_argument("--sweep-values", type=_int_list, metavar="V1,V2,..",
                   help="values for --sweep (sizes are square)")
    g.add_argument("--providers", metavar="A,B,..",
                   help="comma list (default: all non-debug providers; 'lambda' = every "
                        f"lambda-<backend>); known: {', '.join(P.REGISTRY)}")
    g.add_argument("--baseline", metavar="NAME",
                   help="provider for the speedup columns (default: lambda-networks)")
    g.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:1")
    g.add_argument("--dtype", choices=sorted(S.DTYPES), help="override the preset's dtype")
    g.add_argument("--list", action="store_true", help="list presets and providers and exit")
    s = p.add_argument_group("shape (overrides every case of the preset)")
    s.add_argument("--batch", type=int)
    s.add_argument("--dim", type=int, help="input channels")
    s.add_argument("--dim-out", type=int, help="output channels (default: dim)")
    s.add_argument("--size", type=_size, metavar="HxW", help="image size, e.g. 56 or 32x48")
    s.add_argument("--dim-k", type=int)
    s.add_argument("--heads", type=int)
    s.add_argument("--dim-u", type=int)
    ctx = s.add_mutually_exclusive_group()
    ctx.add_argument("--r", type=int, help="local context size (odd)")
    ctx.add_argument("--n", type=int, help="global context (H, W <= n)")
    m = p.add_argument_group("measurement")
    m.add_argument("--repeats", type=int, help="timed calls per measurement")
    m.add_argument("--warmup", type=int, help="untimed calls before timing")
    m.add_argument("--max-time", type=float,
                   help="stop repeating once a measurement took this many seconds (>= 3 calls)")
    m.add_argument("--no-memory", action="store_true", help="skip peak-memory measurement")
    m.add_argument("--mem-jobs", type=int, default=1,
                   help="CPU: memory subprocesses run at once (default 1)")
    m.add_argument("--threads", type=int, help="torch.set_num_threads for CPU runs")
    m.add_argument("--no-peak", action="store_true",
                   help="skip the torch.mm rate measurement (no %%peak columns)")
    m.add_argument("--no-check", action="store_true",
                   help="skip the max|err| column (outputs vs lambda-reference)")
    o = p.add_argument_group("output")
    o.add_argument("--json", metavar="FILE", help="write all results and metadata as JSON")
    o.add_argument("--csv", metavar="FILE", help="append one row per provider/case/mode")
    o.add_argument("--markdown", "--md", metavar="FILE.md", help="write the tables as markdown")
    o.add_argument("--plot", metavar="FILE.png", help="time and memory vs size / r / case")
    o.add_argument("--no-progress", action="store_true", help="no progress bar")
    o.add_argument("-v", "--verbose", action="store_true",
                   help="print one line per finished step to stderr (useful off a TTY)")
    return p


def resolve_device(text: str) -> torch.device:
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(text)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("lambda-bench: --device cuda but torch.cuda.is_available() is False")
    return dev


def make_cases(args, device: torch.device) -> tuple[S.Preset, list[S.Case]]:
    name = args.preset or ("gpu-headline" if device.type == "cuda" else "quick")
    preset = S.PRESETS[name]
    over = dict(batch=args.batch, dim=args.dim, dim_out=args.dim_out, size=args.size,
                dim_k=args.dim_k, heads=args.heads, dim_u=args.dim_u, r=args.r, n=args.n,
                dtype=args.dtype)
    cases = [S.apply_overrides(c, **over) for c in preset.cases]
    if args.sweep:
        values = (args.sweep_values or preset.sweep_values.get(args.sweep)
                  or S.DEFAULT_SWEEPS[args.sweep])
        cases = S.sweep_cases(cases[0], args.sweep, values)
    for c in cases:
        c.check()
    return preset, cases


def _console():
    from rich.console import Console
    probe = Console()
    if probe.is_terminal:
        return probe
    return Console(width=int(os.environ.get("COLUMNS", "220")), highlight=False)


def run_cli(argv: Optional[list[str]] = None) -> dict:
    """Parse, run, print, write files; returns {'meta', 'cases', 'results'}."""
    args = build_parser().parse_args(argv)
    console = _console()
    if args.list:
        for name, pr in S.PRESETS.items():
            console.print(f"[bold]{name}[/]: {pr.description}")
            for c in pr.cases:
                console.print(f"    {c.describe()}")
        console.print()
        for name, prov in P.REGISTRY.items():
            console.print(f"[bold]{name}[/]{' (hidden)' if prov.hidden else ''}: "
                          f"{prov.description}")
        return {"meta": {}, "cases": [], "results": []}
    import warnings
    warnings.filterwarnings("ignore", message=r"torch\.meshgrid", category=UserWarning)
    device = resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        preset, cases = make_cases(args, device)
    except ValueError as exc:
        raise SystemExit(f"lambda-bench: {exc}")
    names = P.resolve(args.providers.split(",") if args.providers else None)
    baseline = args.baseline or ("lambda-networks" if "lambda-networks" in names else names[0])
    if baseline not in names:
        names.append(baseline)

    if device.type == "cpu" and hasattr(os, "getloadavg"):
        load, cores = os.getloadavg()[0], os.cpu_count() or 1
        if load > cores:
            console.print(f"[yellow]warning: load average {load:.1f} on {cores} cores; CPU "
                          f"timings will be noisy (multi-threaded ops suffer most: try "
                          f"--threads 1)[/]")
    peak_dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    t_start = time.perf_counter()
    if args.no_peak:
        peak = {"flops_per_s": None, "dtype": str(peak_dtype).replace("torch.", ""),
                "skipped": True}
    else:
        console.print(f"[dim]lambda-bench: measuring torch.mm rate on {device} ...[/]")
        peak = matmul_rate(device, peak_dtype, repeats=5)
    meta = environment(device, device_name(device), peak)
    meta.update(preset=preset.name, sweep=args.sweep, baseline=baseline, providers=names)
    opts = Options(device=device,
                   repeats=args.repeats if args.repeats is not None else preset.repeats,
                   warmup=args.warmup if args.warmup is not None else preset.warmup,
                   max_time=args.max_time if args.max_time is not None else preset.max_time,
                   memory=not args.no_memory, mem_jobs=args.mem_jobs,
                   peak_flops=peak["flops_per_s"], check_errors=not args.no_check)
    meta.update(repeats=opts.repeats, warmup=opts.warmup, max_time=opts.max_time)
    console.print(f"[dim]{meta['device_name']}, torch {meta['torch']}, triton "
                  f"{meta['triton']}: torch.mm {peak['dtype']} "
                  f"{_rate(peak['flops_per_s'])}; preset {preset.name}, "
                  f"{len(cases)} case(s) x {len(names)} provider(s)[/]")

    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                               TimeElapsedColumn)
    steps = len(cases) * len(names)
    if opts.memory and device.type == "cpu":
        steps *= 2  # upper bound; memory only for rows that ran
    show = console.is_terminal and not args.no_progress
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=console, transient=True,
                  disable=not show) as bar:
        task = bar.add_task("benchmarking", total=steps)

        def advance(desc: str) -> None:
            bar.update(task, advance=1, description=desc)
            if args.verbose:
                print(f"[{time.perf_counter() - t_start:7.1f} s] {desc}", file=sys.stderr,
                      flush=True)

        rows = run_all(cases, names, opts, progress=advance)
    add_ratios(rows, baseline)
    meta["wall_s"] = time.perf_counter() - t_start

    render_tables(console, rows, cases, meta, baseline)
    console.print(f"[dim]done in {meta['wall_s']:.1f} s[/]")
    if args.json:
        write_json(args.json, rows, meta, cases)
    if args.csv:
        append_csv(args.csv, rows, meta)
    if args.markdown:
        write_markdown(args.markdown, rows, cases, meta, baseline)
    if args.plot:
        plot(args.plot, rows, cases, args.sweep, meta)
    for path in (args.json, args.csv, args.markdown, args.plot):
        if path:
            console.print(f"[dim]wrote {path}[/]")
    return {"meta": meta, "cases": [c.to_dict() for c in cases], "results": rows}


def main(argv: Optional[list[str]] = None) -> int:
    run_cli(argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
