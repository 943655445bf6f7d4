"""Run every provider on every case: timing in this process (same input for all providers of
a case), peak memory in-process on CUDA or in fresh subprocesses on CPU. A provider that is
unavailable or raises becomes a row with status "skipped"/"error" and the reason.

`measure_row` is the one row runner of both benchmarks: the layer rows here (`run_one`) and
the model rows of `lambda-bench train` (models.run_model) differ only in what they build and
check."""
from __future__ import annotations

import gc
import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

from . import providers as P
from .measure import (cpu_memory_subprocess, cuda_extra_peak, make_steps,
                      positional_kernel_rate, summarize, time_calls)
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


def measure_row(row: dict, provider, case, opts: Options, build: Callable[[], Steps],
                outputs: dict, *, check: Optional[Callable[[dict, torch.Tensor], None]] = None,
                train_optional: bool = False) -> bool:
    """The one row runner of the layer and model benchmarks: availability, build, one
    inference call (the back end that ran, `check(row, output)`, the output kept in
    outputs[row["provider"]] for the error columns), then timing of inference and training
    (with CUDA peak memory when opts.memory). A failure makes the row an error, except a
    failing training call when `train_optional` (a note then). True if inference ran."""
    reason = unavailable_reason(provider, case, opts.device)
    if reason:
        row.update(status="skipped", reason=reason)
        return False
    cuda_memory = opts.memory and opts.device.type == "cuda"
    timing = dict(warmup=opts.warmup, repeats=opts.repeats, max_time=opts.max_time)
    steps = None
    try:
        steps = build()
        row["note"] = steps.note
        y = steps.infer()
        row["backend"], row["variant"] = provider.ran(steps.module, opts.device)
        if check is not None:
            check(row, y)
        outputs[row["provider"]] = y.detach().float().cpu()
        del y
        row["fwd"] = summarize(time_calls(steps.infer, opts.device, **timing))
        if cuda_memory:
            row["mem_fwd"] = cuda_extra_peak(steps.infer, opts.device)
            row["mem_method"] = "cuda max_memory_allocated delta"
    except Exception as exc:
        row.update(status="error", reason=failure_text(exc))
    if row["status"] == "error":  # outside the except block: the traceback is gone
        del steps
        free_memory(opts.device)
        return False
    try:
        row["fwdbwd"] = summarize(time_calls(steps.train, opts.device, **timing))
        steps.clear()
        if cuda_memory:
            row["mem_fwdbwd"] = cuda_extra_peak(steps.train, opts.device)
            steps.clear()
    except Exception as exc:
        if not train_optional:
            row.update(status="error", reason=failure_text(exc))
        else:
            add_note(row, f"fwd+bwd failed: {failure_text(exc)}")
    del steps
    free_memory(opts.device)
    return row["status"] == "ok"


def run_one(name: str, case: Case, case_index: int, x: torch.Tensor, dy: torch.Tensor,
            opts: Options, outputs: dict) -> dict:
    """Time one layer provider on one case; its eval-mode output goes to outputs[name]."""
    row = new_row(name, case, case_index)
    try:
        prov = P.get(name)
    except KeyError as exc:
        row.update(status="error", reason=str(exc.args[0]))
        return row
    row["display"] = prov.display_name(case)
    row["family"] = prov.family

    def build() -> Steps:
        flops = prov.flops(case)
        if flops == flops:  # not NaN
            row["flops_fwd"], row["flops_fwdbwd"] = flops, 3 * flops
        module, note = prov.build(case, opts.device)
        fwd, fwd_bwd, clear = make_steps(module, x, dy)
        return Steps(module, fwd, fwd_bwd, clear, note)

    def check(row: dict, y: torch.Tensor) -> None:
        row["out_shape"] = list(y.shape)
        expected = [case.batch, case.dim_out, *case.spatial]
        if list(y.shape) != expected:
            raise RuntimeError(f"wrong output shape {tuple(y.shape)}, expected {tuple(expected)}")
        if not torch.isfinite(y).all():
            add_note(row, "non-finite output")

    ran = measure_row(row, prov, case, opts, build, outputs, check=check, train_optional=True)
    kernel = prov.kernel_backend() if ran and opts.kernel_rate else None
    if kernel is not None:
        try:
            row["kernel"] = positional_kernel_rate(kernel, case, opts.device, warmup=opts.warmup,
                                                   repeats=opts.repeats, max_time=opts.max_time,
                                                   peak_flops=opts.peak_flops)
        except Exception as exc:
            add_note(row, f"kernel timing failed: {short_error(exc)}")
        free_memory(opts.device)
    return row


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


def add_ratios(rows: list[dict], baseline: Optional[str]) -> None:
    """speedup_<mode> = baseline median / provider median, within each case."""
    by_case: dict[int, dict[str, dict]] = {}
    for row in rows:
        by_case.setdefault(row["case_index"], {})[row["provider"]] = row
    for rows_of_case in by_case.values():
        base = rows_of_case.get(baseline) if baseline else None
        for row in rows_of_case.values():
            row["baseline"] = baseline
            for mode in ("fwd", "fwdbwd"):
                b = base[mode].get("median") if base and base[mode] else None
                m = row[mode].get("median") if row[mode] else None
                row[f"speedup_{mode}"] = b / m if (b and m) else None
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
        case_rows = []
        for name in names:
            row = run_one(name, case, ci, x, dy, opts, outputs)
            case_rows.append(row)
            if progress:
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
