"""Run every provider on every case: timing in this process (same input for all providers of
a case), peak memory in-process on CUDA or in fresh subprocesses on CPU. A provider that is
unavailable or raises becomes a row with status "skipped"/"error" and the reason.

`measure_rows` is the one row runner of both benchmarks: it times the providers of one case
together, interleaved repeat by repeat, so each speed-up is the median of per-pair ratios
(`paired_speedup`). The layer rows here (`layer_entry`) and the model rows of `lambda-bench
train` (models.model_entry) differ only in what they build and check."""
from __future__ import annotations

import gc
import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

from . import providers as P
from .measure import (cpu_memory_subprocess, cuda_extra_peak, make_steps, pair_ratios,
                      positional_kernel_rate, summarize, time_interleaved)
from .presets import Case


@dataclass
class Options:
    device: torch.device
    repeats: int = 10
    warmup: int = 2
    max_time: float = 3.0
    memory: bool = True
    mem_jobs: int = 1
    peak_flops: float = float("nan")
    check_errors: bool = True
    kernel_rate: bool = False      # time the positional kernel alone (fused back ends)
    mm_size: Optional[int] = None  # the torch.mm the kernel rate compares with (None: default)
    threads: int = field(default_factory=torch.get_num_threads)


def short_error(exc: BaseException) -> str:
    """The first line of an exception, with its type, for a row's reason or note."""
    text = f"{type(exc).__name__}: {exc}".strip().split("\n")[0]
    return text[:240]


def failure_text(exc: BaseException) -> str:
    """short_error, marked when it is an out-of-memory error."""
    return ("out of memory: " if is_oom(exc) else "") + short_error(exc)


def is_oom(exc: BaseException) -> bool:
    return isinstance(exc, getattr(torch, "OutOfMemoryError", ())) or \
        "out of memory" in str(exc).lower()


def add_note(row: dict, text: str) -> None:
    """Append `text` to the row's note ("; "-separated)."""
    row["note"] = (row["note"] + "; " if row["note"] else "") + text


def unavailable_reason(provider, case, device) -> Optional[str]:
    """Why `provider` (a layer or model provider) cannot run `case` on `device`, or None; a
    failing check is itself the reason."""
    try:
        return provider.unavailable(case, device)
    except Exception as exc:
        return f"availability check failed: {short_error(exc)}"


def free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def base_row(name: str, case_label: str, case_index: int, shape: dict, **extra) -> dict:
    """The fields every result row has (layer and model benchmarks), then `extra`."""
    return {"provider": name, "display": name, "case": case_label, "case_index": case_index,
            "shape": shape, "status": "ok", "reason": "", "note": "", "backend": None,
            "variant": None, "fwd": {}, "fwdbwd": {}, **extra, "max_abs_err": None,
            "err_vs": None}


def new_row(name: str, case: Case, case_index: int) -> dict:
    return base_row(name, case.label or case.describe(), case_index, case.to_dict(),
                    out_shape=None, mem_fwd=None, mem_fwdbwd=None, mem_method=None,
                    flops_fwd=None, flops_fwdbwd=None)


@dataclass
class Steps:
    """What a provider built for one case: the module, its inference call (eval mode, no
    grad), its training call (forward and backward), and what clears the gradients."""
    module: torch.nn.Module
    infer: Callable[[], torch.Tensor]
    train: Callable[[], object]
    clear: Callable[[], None] = lambda: None
    note: str = ""


@dataclass
class Entry:
    """One row of a measurement: its provider, what builds its Steps, what checks its first
    output, and whether a failing training call only adds a note (else the row is an error)."""
    row: dict
    provider: object
    build: Callable[[], Steps]
    check: Optional[Callable[[dict, torch.Tensor], None]] = None
    train_optional: bool = False
    steps: Optional[Steps] = None


def timing(samples: list[float]) -> dict:
    """A row's "fwd" / "fwdbwd" entry: summarize() and the seconds of every timed call, in
    order (sample i of one row ran in round i, next to sample i of the others)."""
    return {**summarize(samples), "samples": list(samples)}


def _start(entry: Entry, case, opts: Options, outputs: dict) -> bool:
    """Availability, build and one inference call (the back end that ran, the check, the output
    kept in outputs[row["provider"]] for the error columns). True if the entry can be timed."""
    row = entry.row
    if row["status"] != "ok":        # already an error (e.g. an unknown provider)
        return False
    reason = unavailable_reason(entry.provider, case, opts.device)
    if reason:
        row.update(status="skipped", reason=reason)
        return False
    try:
        entry.steps = entry.build()
        row["note"] = entry.steps.note
        y = entry.steps.infer()
        row["backend"], row["variant"] = entry.provider.ran(entry.steps.module, opts.device)
        if entry.check is not None:
            entry.check(row, y)
        outputs[row["provider"]] = y.detach().float().cpu()
        del y
    except Exception as exc:
        row.update(status="error", reason=failure_text(exc))
    if row["status"] == "error":  # outside the except block: the traceback is gone
        entry.steps = None
        free_memory(opts.device)
        return False
    return True


def measure_rows(entries: list[Entry], case, opts: Options, outputs: dict) -> None:
    """The one row runner of the layer and model benchmarks, for the rows of one case: every
    entry is built and run once (_start), then the entries that ran are timed together,
    interleaved repeat by repeat (measure.time_interleaved): inference, then training (with
    CUDA peak memory per entry when opts.memory). A failure makes its row an error, except a
    failing training call of an entry with `train_optional` (a note then); the other rows go
    on."""
    live = [e for e in entries if _start(e, case, opts, outputs)]
    cuda_memory = opts.memory and opts.device.type == "cuda"
    schedule = dict(warmup=opts.warmup, repeats=opts.repeats, max_time=opts.max_time)

    def record(mode: str, results: list, failed: Callable[[Entry, BaseException], None]):
        still = []
        for entry, samples in zip(list(live), results):
            if isinstance(samples, BaseException):
                failed(entry, samples)
            else:
                entry.row[mode] = timing(samples)
                still.append(entry)
        return still

    def infer_failed(entry: Entry, exc: BaseException) -> None:
        entry.row.update(status="error", reason=failure_text(exc))
        entry.steps = None

    def train_failed(entry: Entry, exc: BaseException) -> None:
        if entry.train_optional:
            add_note(entry.row, f"fwd+bwd failed: {failure_text(exc)}")
        else:
            entry.row.update(status="error", reason=failure_text(exc))
        entry.steps = None

    def cuda_peak(entry: Entry, key: str, fn: Callable[[], object]) -> None:
        try:
            entry.row[key] = cuda_extra_peak(fn, opts.device)
            entry.row["mem_method"] = "cuda max_memory_allocated delta"
        except Exception as exc:
            add_note(entry.row, f"{key} failed: {failure_text(exc)}")

    results = time_interleaved([e.steps.infer for e in live], opts.device, **schedule)
    live = record("fwd", results, infer_failed)
    free_memory(opts.device)
    if cuda_memory:
        for entry in live:
            cuda_peak(entry, "mem_fwd", entry.steps.infer)
    results = time_interleaved([e.steps.train for e in live], opts.device, **schedule)
    live = record("fwdbwd", results, train_failed)
    for entry in live:
        entry.steps.clear()
        if cuda_memory:
            cuda_peak(entry, "mem_fwdbwd", entry.steps.train)
            entry.steps.clear()
    for entry in entries:
        entry.steps = None
    free_memory(opts.device)


def layer_entry(name: str, case: Case, case_index: int, x: torch.Tensor, dy: torch.Tensor,
                opts: Options) -> Entry:
    """One layer provider on one case, for measure_rows (an unknown name: an error row)."""
    row = new_row(name, case, case_index)
    try:
        prov = P.get(name)
    except KeyError as exc:
        row.update(status="error", reason=str(exc.args[0]))
        return Entry(row, None, lambda: None)
    row["display"] = prov.display_name(case)
    row["family"] = prov.family

    def build() -> Steps:
        flops = prov.flops(case)
        if flops == flops:  # not NaN
            row["flops_fwd"], row["flops_fwdbwd"] = flops, 3 * flops
        module, note = prov.build(case, opts.device)
        fwd, fwd_bwd, clear = make_steps(module, x, dy, case.autocast_dtype)
        return Steps(module, fwd, fwd_bwd, clear, note)

    def check(row: dict, y: torch.Tensor) -> None:
        row["out_shape"] = list(y.shape)
        expected = [case.batch, case.dim_out, *case.spatial]
        if list(y.shape) != expected:
            raise RuntimeError(f"wrong output shape {tuple(y.shape)}, expected {tuple(expected)}")
        if not torch.isfinite(y).all():
            add_note(row, "non-finite output")

    return Entry(row, prov, build, check=check, train_optional=True)


def add_kernel_rate(entry: Entry, case: Case, opts: Options) -> None:
    """The positional kernel alone (opts.kernel_rate, fused back ends, rows that ran)."""
    row, prov = entry.row, entry.provider
    # under autocast the kernel's dtype is the layer's choice: the bf16 rows time the kernel
    kernel = prov.kernel_backend() if row["status"] == "ok" and row["fwd"] and \
        not case.autocast else None
    if kernel is None:
        return
    try:
        row["kernel"] = positional_kernel_rate(kernel, case, opts.device, warmup=opts.warmup,
                                               repeats=opts.repeats, max_time=opts.max_time,
                                               peak_flops=opts.peak_flops,
                                               mm_size=opts.mm_size)
    except Exception as exc:
        add_note(row, f"kernel timing failed: {short_error(exc)}")
    free_memory(opts.device)


def add_errors(rows: list[dict], outputs: dict) -> None:
    """max |y - y_ref| (eval mode) for providers of one family sharing weights (a row whose
    note says its weights are random is not compared)."""
    by_name = {row["provider"]: row for row in rows if row["provider"] in outputs}
    fam_ref: dict[str, str] = {}
    for name, row in by_name.items():
        fam = row.get("family")
        if fam and fam not in fam_ref:
            fam_ref[fam] = name
    if "lambda-reference" in by_name:
        fam_ref["lambda"] = "lambda-reference"
    for name, row in by_name.items():
        fam = row.get("family")
        ref = fam_ref.get(fam)
        if not fam or ref is None or ref == name or row["note"].startswith("random"):
            continue
        y, y_ref = outputs[name], outputs[ref]
        if y.shape == y_ref.shape:
            row["max_abs_err"] = float((y - y_ref).abs().max())
            row["err_vs"] = ref


def derive(rows: list[dict], peak_flops: float) -> None:
    """Throughput and achieved FLOP/s from the medians."""
    for row in rows:
        b = row["shape"]["batch"]
        for mode in ("fwd", "fwdbwd"):
            med = row[mode].get("median") if row[mode] else None
            row[f"img_s_{mode}"] = b / med if med else None
            fl = row.get(f"flops_{mode}")
            rate = fl / med if (fl and med) else None
            row[f"flop_s_{mode}"] = rate
            row[f"frac_peak_{mode}"] = (rate / peak_flops
                                        if rate and peak_flops and not math.isnan(peak_flops)
                                        else None)


def paired_speedup(base: Optional[dict], row: Optional[dict], mode: str) -> dict:
    """t(base) / t(row) in `mode`, repeat pair by repeat pair (both rows timed together by
    measure_rows): measure.pair_ratios of their samples, {} when either did not run."""
    if not base or not row or base.get("status") != "ok" or row.get("status") != "ok":
        return {}
    a, b = (r.get(mode) or {} for r in (base, row))
    return pair_ratios(a.get("samples") or [], b.get("samples") or [])


def set_ratio(row: dict, key: str, pairs: dict) -> None:
    """row[key] = the median per-pair ratio (None without pairs); row[key + "_pairs"] = the
    ratios' median, q25, q75, min, max and count n."""
    row[key] = pairs.get("median")
    row[key + "_pairs"] = pairs or None


def add_ratios(rows: list[dict], baseline: Optional[str]) -> None:
    """speedup_<mode> = median over repeat pairs of t(baseline) / t, within each case (its
    spread in speedup_<mode>_pairs); mem_ratio_<mode> = extra peak memory / the baseline's."""
    by_case: dict[int, dict[str, dict]] = {}
    for row in rows:
        by_case.setdefault(row["case_index"], {})[row["provider"]] = row
    for rows_of_case in by_case.values():
        base = rows_of_case.get(baseline) if baseline else None
        for row in rows_of_case.values():
            row["baseline"] = baseline
            for mode in ("fwd", "fwdbwd"):
                set_ratio(row, f"speedup_{mode}", paired_speedup(base, row, mode))
                if base is not None:
                    bm, rm = base.get(f"mem_{mode}"), row.get(f"mem_{mode}")
                    row[f"mem_ratio_{mode}"] = rm / bm if (bm and rm is not None) else None


def run_all(cases: list[Case], names: list[str], opts: Options,
            progress: Optional[Callable[[str], None]] = None) -> list[dict]:
    """All rows, case-major. `progress(desc)` is called once per finished step."""
    rows: list[dict] = []
    for ci, case in enumerate(cases):
        x = P.make_input(case, opts.device)
        dy = P.make_grad(case, opts.device)
        outputs: dict = {}
        entries = [layer_entry(name, case, ci, x, dy, opts) for name in names]
        measure_rows(entries, case, opts, outputs)
        if opts.kernel_rate:
            for entry in entries:
                add_kernel_rate(entry, case, opts)
        case_rows = [entry.row for entry in entries]
        if progress:
            for name in names:
                progress(f"{case.label or ci}: {name}")
        if opts.check_errors:
            add_errors(case_rows, outputs)
        rows += case_rows
        del x, dy, outputs
        free_memory(opts.device)
    if opts.memory and opts.device.type == "cpu":
        todo = [r for r in rows if r["status"] == "ok"]

        def job(row):
            res = cpu_memory_subprocess(row["provider"], row["shape"], opts.threads)
            return row, res

        with ThreadPoolExecutor(max_workers=max(1, opts.mem_jobs)) as pool:
            for row, res in pool.map(job, todo):
                if "error" in res:
                    add_note(row, res["error"])
                else:
                    row["mem_fwd"] = res.get("mem_fwd")
                    row["mem_fwdbwd"] = res.get("mem_fwdbwd")
                    row["mem_method"] = "subprocess " + res.get("method", "")
                    row["mem_cpu_isa"] = res.get("cpu_isa")
                    if res.get("variant") != row["variant"]:
                        add_note(row, f"memory subprocess ran variant {res.get('variant')}")
                if progress:
                    progress(f"memory {row['case']}: {row['provider']}")
    derive(rows, opts.peak_flops)
    return rows
