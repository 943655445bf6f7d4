"""Run every provider on every case: timing in this process (same input for all providers of
a case), peak memory in-process on CUDA or in fresh subprocesses on CPU. A provider that is
unavailable or raises becomes a row with status "skipped"/"error" and the reason."""
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


def _short(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".strip().split("\n")[0]
    return text[:240]


def unavailable_reason(provider, case, device) -> Optional[str]:
    """Why `provider` (a layer or model provider) cannot run `case` on `device`, or None; a
    failing check is itself the reason."""
    try:
        return provider.unavailable(case, device)
    except Exception as exc:
        return f"availability check failed: {_short(exc)}"


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def new_row(name: str, case: Case, case_index: int) -> dict:
    return {"provider": name, "display": name, "case": case.label or case.describe(),
            "case_index": case_index, "shape": case.to_dict(), "status": "ok", "reason": "",
            "note": "", "backend": None, "variant": None, "out_shape": None, "fwd": {}, "fwdbwd": {},
            "mem_fwd": None, "mem_fwdbwd": None, "mem_method": None, "flops_fwd": None,
            "flops_fwdbwd": None, "max_abs_err": None, "err_vs": None}


def _is_oom(exc: BaseException) -> bool:
    return isinstance(exc, getattr(torch, "OutOfMemoryError", ())) or \
        "out of memory" in str(exc).lower()


def run_one(name: str, case: Case, case_index: int, x: torch.Tensor, dy: torch.Tensor,
            opts: Options, outputs: dict) -> dict:
    """Time one provider on one case; store its eval-mode output in outputs[name]."""
    row = new_row(name, case, case_index)
    try:
        prov = P.get(name)
    except KeyError as exc:
        row.update(status="error", reason=str(exc.args[0]))
        return row
    row["display"] = prov.display_name(case)
    row["family"] = prov.family
    reason = unavailable_reason(prov, case, opts.device)
    if reason:
        row.update(status="skipped", reason=reason)
        return row
    flops = prov.flops(case)
    if flops == flops:  # not NaN
        row["flops_fwd"], row["flops_fwdbwd"] = flops, 3 * flops
    module = None
    try:
        module, note = prov.build(case, opts.device)
        row["note"] = note
        fwd, fwd_bwd, clear = make_steps(module, x, dy)
        y = fwd()
        row["backend"], row["variant"] = prov.ran(module, opts.device)
        row["out_shape"] = list(y.shape)
        expected = [case.batch, case.dim_out, *case.spatial]
        if list(y.shape) != expected:
            raise RuntimeError(f"wrong output shape {tuple(y.shape)}, expected {tuple(expected)}")
        if not torch.isfinite(y).all():
            row["note"] = (row["note"] + "; " if row["note"] else "") + "non-finite output"
        outputs[name] = (y.detach().float().cpu(), prov.family, note)
        del y
        row["fwd"] = summarize(time_calls(fwd, opts.device, warmup=opts.warmup,
                                          repeats=opts.repeats, max_time=opts.max_time))
        if opts.memory and opts.device.type == "cuda":
            row["mem_fwd"] = cuda_extra_peak(fwd, opts.device)
            row["mem_method"] = "cuda max_memory_allocated delta"
    except Exception as exc:
        row.update(status="error", reason=("out of memory: " if _is_oom(exc) else "")
                   + _short(exc))
    if row["status"] == "error":  # outside the except block: the traceback is gone
        del module
        _free(opts.device)
        return row
    try:
        row["fwdbwd"] = summarize(time_calls(fwd_bwd, opts.device, warmup=opts.warmup,
                                             repeats=opts.repeats, max_time=opts.max_time))
        clear()
        if opts.memory and opts.device.type == "cuda":
            row["mem_fwdbwd"] = cuda_extra_peak(fwd_bwd, opts.device)
            clear()
    except Exception as exc:
        msg = ("out of memory: " if _is_oom(exc) else "") + _short(exc)
        row["note"] = (row["note"] + "; " if row["note"] else "") + f"fwd+bwd failed: {msg}"
    del module, fwd, fwd_bwd, clear
    kernel = prov.kernel_backend() if opts.kernel_rate else None
    if kernel is not None:
        try:
            row["kernel"] = positional_kernel_rate(kernel, case, opts.device, warmup=opts.warmup,
                                                   repeats=opts.repeats, max_time=opts.max_time,
                                                   peak_flops=opts.peak_flops)
        except Exception as exc:
            row["note"] = (row["note"] + "; " if row["note"] else "") + \
                f"kernel timing failed: {_short(exc)}"
    _free(opts.device)
    return row


def add_errors(rows: list[dict], outputs: dict) -> None:
    """max |y - y_ref| (eval mode) for providers of one family sharing weights."""
    fam_ref: dict[str, str] = {}
    for name, (_, fam, note) in outputs.items():
        if fam and fam not in fam_ref:
            fam_ref[fam] = name
    if "lambda-reference" in outputs:
        fam_ref["lambda"] = "lambda-reference"
    for row in rows:
        if row["provider"] not in outputs:
            continue
        y, fam, note = outputs[row["provider"]]
        ref = fam_ref.get(fam)
        if not fam or ref is None or ref == row["provider"] or note.startswith("random"):
            continue
        y_ref = outputs[ref][0]
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
        _free(opts.device)
    if opts.memory and opts.device.type == "cpu":
        todo = [r for r in rows if r["status"] == "ok"]

        def job(row):
            res = cpu_memory_subprocess(row["provider"], row["shape"], opts.threads)
            return row, res

        with ThreadPoolExecutor(max_workers=max(1, opts.mem_jobs)) as pool:
            for row, res in pool.map(job, todo):
                if "error" in res:
                    row["note"] = (row["note"] + "; " if row["note"] else "") + res["error"]
                else:
                    row["mem_fwd"] = res.get("mem_fwd")
                    row["mem_fwdbwd"] = res.get("mem_fwdbwd")
                    row["mem_method"] = "subprocess " + res.get("method", "")
                    row["mem_cpu_isa"] = res.get("cpu_isa")
                    if res.get("variant") != row["variant"]:
                        row["note"] = (row["note"] + "; " if row["note"] else "") + \
                            f"memory subprocess ran variant {res.get('variant')}"
                if progress:
                    progress(f"memory {row['case']}: {row['provider']}")
    derive(rows, opts.peak_flops)
    return rows
