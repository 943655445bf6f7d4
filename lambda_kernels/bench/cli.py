"""lambda-bench: benchmark the lambda layer's back ends against upstream and baselines, and
whole LambdaResNets (`lambda-bench train`).

    lambda-bench                                  # quick preset on CUDA if present, else CPU
    lambda-bench --preset seed --json out.json --csv results.csv
    lambda-bench --preset targets                 # the CPU targets, pass/fail table
    lambda-bench --preset resnet --providers lambda-cpu,lambda-networks,conv3x3
    lambda-bench --sweep size --plot size.png     # time and memory vs image size
    lambda-bench --sweep r --sweep-values 3,7,15,23 --plot r.png
    lambda-bench --cpu-isa avx2 --preset targets  # force the CPU kernels' instruction set
    lambda-bench train                            # timm vs converted vs our LambdaResNets, 256 px
    lambda-bench train --batch 8 --image-size 256 --threads 2 --plot models.png
    lambda-bench --list                           # presets and providers

Every result row says which back end ran and its variant (the CPU instruction set of the
`cpu` back end; for plain PyTorch ops, ATen's CPU capability or the CUDA compute capability).
Tables need rich and --plot matplotlib: pip install "lambda-kernels[bench]".
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

from .._cpu_isa import ENV_CPU_ISA
from . import models as M
from . import presets as S
from . import providers as P
from . import targets as T
from .measure import device_name, matmul_rate
from .report import (INSTALL_BENCH, MODEL_COLUMNS, PlainConsole, append_csv, environment,
                     layer_caption, literal, make_console, missing_optional, model_caption, plot,
                     plot_models, rate_text, render_tables, render_targets, write_json,
                     write_markdown)
from .runner import Options, add_ratios, run_all


def _int_list(text: str) -> list[int]:
    try:
        return [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a comma list of integers, got {text!r}")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _nonnegative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a non-negative integer, got {text}")
    return value


def _nonnegative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be a non-negative number, got {text}")
    return value


def _size(text: str):
    try:
        return S.parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc))


def _add_run_options(p: argparse.ArgumentParser) -> None:
    """Device, measurement and output options shared by the layer and model benchmarks."""
    g = p.add_argument_group("device")
    g.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:1")
    g.add_argument("--threads", type=_positive_int, help="torch.set_num_threads for CPU runs")
    g.add_argument("--cpu-isa", metavar="NAME",
                   help=f"force the instruction set of the cpu back end (sets {ENV_CPU_ISA} "
                        "before the kernels load; memory subprocesses inherit it), e.g. avx512, "
                        "avx2, baseline, neon")
    m = p.add_argument_group("measurement")
    m.add_argument("--repeats", type=_positive_int, help="timed calls per measurement")
    m.add_argument("--warmup", type=_nonnegative_int, help="untimed calls before timing")
    m.add_argument("--max-time", type=_nonnegative_float,
                   help="stop repeating once a measurement took this many seconds (>= 3 calls)")
    o = p.add_argument_group("output")
    o.add_argument("--json", metavar="FILE", help="write all results and metadata as JSON")
    o.add_argument("--csv", metavar="FILE", help="append one row per provider/case/mode")
    o.add_argument("--markdown", "--md", metavar="FILE.md", help="write the tables as markdown")
    o.add_argument("--plot", metavar="FILE.png", help="plot the results (needs matplotlib)")
    o.add_argument("--no-progress", action="store_true", help="no progress bar")
    o.add_argument("-v", "--verbose", action="store_true",
                   help="print one line per finished step to stderr (useful off a TTY)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lambda-bench", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    g = p.add_argument_group("what to run")
    g.add_argument("--preset", choices=sorted(S.PRESETS),
                   help="named case list (default: quick on CPU, gpu-headline on CUDA)")
    g.add_argument("--sweep", choices=["size", "r"],
                   help="expand the preset's first case over image sizes or r")
    g.add_argument("--sweep-values", type=_int_list, metavar="V1,V2,..",
                   help="values for --sweep (sizes are square)")
    g.add_argument("--providers", metavar="A,B,..",
                   help="comma list (default: the preset's, else all non-debug providers; "
                        f"'lambda' = every lambda-<backend>); known: {', '.join(P.REGISTRY)}")
    g.add_argument("--baseline", metavar="NAME",
                   help="provider for the speedup columns (default: lambda-networks)")
    g.add_argument("--dtype", choices=sorted(S.DTYPES), help="override the preset's dtype")
    g.add_argument("--list", action="store_true", help="list presets and providers and exit")
    s = p.add_argument_group("shape (overrides every case of the preset)")
    s.add_argument("--batch", type=_positive_int)
    s.add_argument("--dim", type=_positive_int, help="input channels")
    s.add_argument("--dim-out", type=_positive_int, help="output channels (default: dim)")
    s.add_argument("--size", type=_size, metavar="HxW", help="image size, e.g. 56 or 32x48")
    s.add_argument("--dim-k", type=_positive_int)
    s.add_argument("--heads", type=_positive_int)
    s.add_argument("--dim-u", type=_positive_int)
    ctx = s.add_mutually_exclusive_group()
    ctx.add_argument("--r", type=_positive_int, help="local context size (odd)")
    ctx.add_argument("--n", type=_positive_int,
                     help="global context (H, W <= n; kept by --sweep size)")
    _add_run_options(p)
    m = p.add_argument_group("layer measurement")
    m.add_argument("--no-memory", action="store_true", help="skip peak-memory measurement")
    m.add_argument("--mem-jobs", type=_positive_int, default=1,
                   help="CPU: memory subprocesses run at once (default 1)")
    m.add_argument("--no-peak", action="store_true",
                   help="skip the torch.mm rate measurement (no %%peak columns)")
    m.add_argument("--no-check", action="store_true",
                   help="skip the max|err| column (outputs vs lambda-reference)")
    m.add_argument("--kernel-rate", action="store_true",
                   help="also time the positional kernel alone (on by default in --preset "
                        "targets): useful FLOP/s vs torch.mm")
    m.add_argument("--mm-size", type=_positive_int, metavar="N",
                   help="side of the square torch.mm the kernel rate is compared with "
                        "(default 1024 on CPU, 4096 on CUDA; smaller for a quick look: a CPU "
                        "without a native bf16 GEMM takes seconds per 1024^3 bf16 mm)")
    return p


def build_train_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lambda-bench train", description=M.__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n\n".join(M.__doc__.split("\n\n")[1:]))
    g = p.add_argument_group("what to run")
    g.add_argument("--providers", metavar="A,B,..",
                   help=f"comma list of models (default: all): {', '.join(M.MODEL_REGISTRY)}")
    g.add_argument("--baseline", metavar="NAME",
                   help="model for the speedup columns (default: timm-resnet26t)")
    g.add_argument("--batch", type=_positive_int, default=8, help="images per step (default 8)")
    g.add_argument("--image-size", type=_positive_int, default=256,
                   help="square input size (default 256)")
    g.add_argument("--dtype", choices=sorted(S.DTYPES),
                   help="float32 (default on CPU), or bfloat16 / float16 under autocast "
                        "(bfloat16 is the default on CUDA)")
    g.add_argument("--channels-last", action="store_true", help="channels_last models and input")
    g.add_argument("--num-classes", type=_positive_int, default=1000)
    g.add_argument("--list", action="store_true", help="list the models and exit")
    _add_run_options(p)
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
        cases = S.sweep_cases(cases[0], args.sweep, values, n=args.n)
    for c in cases:
        c.check()
    return preset, cases


def apply_cpu_isa(name: Optional[str]) -> None:
    """Run the cpu back end at instruction-set level `name` in this process, and set
    LAMBDA_KERNELS_CPU_ISA for the memory subprocesses; a level this CPU lacks stops the run
    with the reason."""
    if not name:
        return
    from .._cpu_isa import set_cpu_isa
    try:
        set_cpu_isa(name)
    except (ValueError, RuntimeError) as error:
        raise SystemExit(f"lambda-bench: --cpu-isa {name}: {error}") from None
    os.environ[ENV_CPU_ISA] = name


def _prepare(args, console) -> torch.device:
    """Checks and settings common to both benchmarks, before anything is measured."""
    if args.plot:
        missing = missing_optional("matplotlib")
        if missing:
            raise SystemExit(f"lambda-bench: --plot needs matplotlib: {missing}")
    if isinstance(console, PlainConsole):
        console.print(f"lambda-bench: rich is not installed, so tables are plain text and there "
                      f"is no progress bar ({INSTALL_BENCH} adds rich and matplotlib)")
    apply_cpu_isa(args.cpu_isa)
    import warnings
    warnings.filterwarnings("ignore", message=r"torch\.meshgrid", category=UserWarning)
    device = resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if device.type == "cpu" and hasattr(os, "getloadavg"):
        load, cores = os.getloadavg()[0], os.cpu_count() or 1
        if load > cores:
            console.print(f"[yellow]warning: load average {load:.1f} on {cores} cores; CPU "
                          f"timings will be noisy (multi-threaded ops suffer most: try "
                          f"--threads 1)[/]")
    return device


@contextlib.contextmanager
def _progress(console, total: int, args, t_start: float):
    """Yields advance(description): a rich progress bar on a terminal, -v lines on stderr."""
    show = console.is_terminal and not args.no_progress and not isinstance(console, PlainConsole)
    bar = task = None
    if show:
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                   TimeElapsedColumn)
        bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                       TimeElapsedColumn(), console=console, transient=True)
        task = bar.add_task("benchmarking", total=total)
        bar.start()

    def advance(desc: str) -> None:
        if bar is not None:
            bar.update(task, advance=1, description=desc)
        if args.verbose:
            print(f"[{time.perf_counter() - t_start:7.1f} s] {desc}", file=sys.stderr, flush=True)

    try:
        yield advance
    finally:
        if bar is not None:
            bar.stop()


def _backend_status(device: torch.device, dtype: torch.dtype) -> dict:
    from ..functional import available_backends
    try:
        return available_backends(device, dtype, details=True)
    except Exception as exc:  # recorded, not fatal: rows say what ran
        return {"error": f"{type(exc).__name__}: {exc}"}


@dataclass
class Run:
    """One benchmark run once its arguments are parsed: what the layer benchmark and the model
    benchmark (`lambda-bench train`) differ in; `execute` does the rest for both."""
    bench: str                                  # "layer" or "train" (meta["bench"])
    cases: list
    names: list[str]
    baseline: str
    opts: Options
    steps: int                                  # progress-bar length
    measure: Callable[[Callable[[str], None]], list[dict]]   # progress -> rows with ratios
    targets: list
    banner: Callable[[dict], str]               # meta -> the line printed before measuring
    caption: Callable[[dict, str], str]         # (meta, baseline) -> the tables' caption
    plot: Callable[[str, list[dict], dict], None]            # (path, rows, meta)
    columns: Optional[list] = None              # table columns (None: the layer columns)
    meta: dict = field(default_factory=dict)    # extra metadata


def check_names(parser: argparse.ArgumentParser, flag: str, names: list[str], known,
                aliases: str = "") -> None:
    """Report through `parser` (exit status 2) names given to `flag` (--providers, --baseline)
    that are not in `known`, or none at all: typos would otherwise only be error rows."""
    listing = ", ".join(known) + aliases
    unknown = [name for name in names if name not in known]
    if unknown or not names:
        what = f"unknown {', '.join(map(repr, unknown))}" if unknown else "no name given"
        parser.error(f"{flag}: {what}; known: {listing}")


def choose_baseline(requested: Optional[str], names: list[str]) -> tuple[str, Optional[str]]:
    """(baseline of the speed-up columns, a note when it is not the one asked for): the
    requested provider, else lambda-networks, else the first provider. Without lambda-networks
    installed, the reference back end (lambda-reference) stands in, and the note says so."""
    if requested:
        return requested, None
    if "lambda-networks" in names:
        missing = missing_optional("lambda_networks")
        if missing is None:
            return "lambda-networks", None
        return "lambda-reference", (f"speedup vs lambda-reference (the reference back end): "
                                    f"{missing}")
    return names[0], None


def execute(console, args, device: torch.device, run: Run, peak: dict, t_start: float) -> dict:
    """Measure, add targets, print the tables and write the files of one run; returns
    {'meta', 'cases', 'results', 'targets'}."""
    meta = environment(device, device_name(device), peak)
    meta.update(bench=run.bench, baseline=run.baseline, providers=run.names,
                repeats=run.opts.repeats, warmup=run.opts.warmup, max_time=run.opts.max_time,
                **run.meta)
    console.print(f"[dim]{run.banner(meta)}[/]")
    if meta.get("baseline_note"):
        console.print(f"[yellow]{literal(console, meta['baseline_note'])}[/]")
    with _progress(console, run.steps, args, t_start) as advance:
        rows = run.measure(advance)
    targets = T.evaluate(run.targets, rows, run.cases, device.type, torch.get_num_threads())
    meta["wall_s"] = time.perf_counter() - t_start
    meta["targets"] = targets
    caption = run.caption(meta, run.baseline)
    render_tables(console, rows, run.cases, meta, run.baseline, run.columns, caption)
    render_targets(console, targets)
    console.print(f"[dim]done in {meta['wall_s']:.1f} s[/]")
    if args.json:
        write_json(args.json, rows, meta, run.cases)
    if args.csv:
        append_csv(args.csv, rows, meta)
    if args.markdown:
        write_markdown(args.markdown, rows, run.cases, meta, run.baseline, run.columns, caption,
                       targets)
    if args.plot:
        run.plot(args.plot, rows, meta)
    for path in (args.json, args.csv, args.markdown, args.plot):
        if path:
            console.print(f"[dim]wrote {path}[/]")
    return {"meta": meta, "cases": [c.to_dict() for c in run.cases], "results": rows,
            "targets": targets}


def _listed(console, lines) -> dict:
    for line in lines:
        console.print(line)
    return {"meta": {}, "cases": [], "results": [], "targets": []}


def run_cli(argv: Optional[list[str]] = None) -> dict:
    """Parse, run, print, write files; returns {'meta', 'cases', 'results', 'targets'}."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["train"]:
        return run_train_cli(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    console = make_console()
    if args.list:
        lines = []
        for name, pr in S.PRESETS.items():
            lines += [f"[bold]{name}[/]: {pr.description}"]
            lines += [f"    {c.describe()}" for c in pr.cases]
        lines.append("")
        for name, prov in P.REGISTRY.items():
            lines.append(f"[bold]{name}[/]{' (hidden)' if prov.hidden else ''}: "
                         f"{prov.description}")
        return _listed(console, lines + ["\nlambda-bench train --list: the model benchmark"])
    device = _prepare(args, console)
    try:
        preset, cases = make_cases(args, device)
    except ValueError as exc:
        parser.error(str(exc))
    if args.providers:
        names = P.resolve(args.providers.split(","))
        check_names(parser, "--providers", names, P.REGISTRY, aliases=", or lambda, all")
    else:
        names = P.resolve(list(preset.providers) if preset.providers else None)
    if args.baseline is not None:
        check_names(parser, "--baseline", [args.baseline], P.REGISTRY)
    baseline, baseline_note = choose_baseline(args.baseline, names)
    if baseline not in names:
        names.append(baseline)

    peak_dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    t_start = time.perf_counter()
    if args.no_peak:
        peak = {"flops_per_s": None, "dtype": str(peak_dtype).replace("torch.", ""),
                "skipped": True}
    else:
        console.print(f"[dim]lambda-bench: measuring torch.mm rate on {device} ...[/]")
        peak = matmul_rate(device, peak_dtype, repeats=5)
    opts = Options(device=device,
                   repeats=args.repeats if args.repeats is not None else preset.repeats,
                   warmup=args.warmup if args.warmup is not None else preset.warmup,
                   max_time=args.max_time if args.max_time is not None else preset.max_time,
                   memory=not args.no_memory, mem_jobs=args.mem_jobs,
                   peak_flops=peak["flops_per_s"], check_errors=not args.no_check,
                   kernel_rate=args.kernel_rate or preset.kernel_rate, mm_size=args.mm_size)
    steps = len(cases) * len(names)
    if opts.memory and device.type == "cpu":
        steps *= 2  # upper bound; memory only for rows that ran

    def measure(progress):
        rows = run_all(cases, names, opts, progress=progress)
        add_ratios(rows, baseline)
        return rows

    run = Run(bench="layer", cases=cases, names=names, baseline=baseline, opts=opts, steps=steps,
              measure=measure, targets=T.LAYER_TARGETS,
              banner=lambda meta: (f"{meta['device_name']}, torch {meta['torch']}, triton "
                                   f"{meta['triton']}, {ENV_CPU_ISA}={meta['cpu_isa']}: torch.mm "
                                   f"{peak['dtype']} {rate_text(peak['flops_per_s'])}; preset "
                                   f"{preset.name}, {len(cases)} case(s) x {len(names)} "
                                   f"provider(s)"),
              caption=layer_caption,
              plot=lambda path, rows, meta: plot(path, rows, cases, args.sweep, meta),
              meta=dict(preset=preset.name, sweep=args.sweep, baseline_note=baseline_note,
                        backends=_backend_status(device, cases[0].torch_dtype)))
    return execute(console, args, device, run, peak, t_start)


def run_train_cli(argv: list[str]) -> dict:
    """lambda-bench train: model throughput (see lambda_kernels/bench/models.py)."""
    parser = build_train_parser()
    args = parser.parse_args(argv)
    console = make_console()
    if args.list:
        return _listed(console, [f"[bold]{name}[/]: {provider.description}"
                                 for name, provider in M.MODEL_REGISTRY.items()])
    device = _prepare(args, console)
    dtype = args.dtype or ("bfloat16" if device.type == "cuda" else "float32")
    case = M.ModelCase(batch=args.batch, image_size=args.image_size, dtype=dtype,
                       channels_last=args.channels_last, num_classes=args.num_classes)
    try:
        case.check()
    except ValueError as exc:
        parser.error(str(exc))
    names = M.resolve(args.providers.split(",") if args.providers else None)
    if args.providers:
        check_names(parser, "--providers", names, M.MODEL_REGISTRY)
    if args.baseline is not None:
        check_names(parser, "--baseline", [args.baseline], M.MODEL_REGISTRY)
    baseline = args.baseline or ("timm-resnet26t" if "timm-resnet26t" in names else names[0])
    if baseline not in names:
        names.insert(0, baseline)
    opts = Options(device=device,
                   repeats=args.repeats if args.repeats is not None else 5,
                   warmup=args.warmup if args.warmup is not None else 1,
                   max_time=args.max_time if args.max_time is not None else 10.0,
                   memory=False)
    t_start = time.perf_counter()
    run = Run(bench="train", cases=[case], names=names, baseline=baseline, opts=opts,
              steps=len(names),
              measure=lambda progress: M.run_models(case, names, opts, baseline,
                                                    progress=progress),
              targets=T.MODEL_TARGETS,
              banner=lambda meta: (f"lambda-bench train: {meta['device_name']}, torch "
                                   f"{meta['torch']}, {ENV_CPU_ISA}={meta['cpu_isa']}; "
                                   f"{case.describe()}; {len(names)} model(s)"),
              caption=model_caption, plot=plot_models, columns=MODEL_COLUMNS,
              meta=dict(preset="train", backends=_backend_status(device, torch.float32)))
    return execute(console, args, device, run, {"flops_per_s": None, "skipped": True}, t_start)


def main(argv: Optional[list[str]] = None) -> int:
    run_cli(argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
