"""Output: rich tables, JSON, appended CSV rows and a matplotlib plot."""
from __future__ import annotations

import csv
import datetime
import getpass
import json
import os
import platform
from typing import Optional

import torch


def _fmt_ms(seconds: float) -> str:
    v = seconds * 1e3
    if v >= 100:
        return f"{v:.0f}"
    if v >= 10:
        return f"{v:.1f}"
    return f"{v:.3g}"


def _ms(stats: dict) -> str:
    if not stats:
        return "-"
    return _fmt_ms(stats["median"])


def _spread(stats: dict) -> str:
    if not stats:
        return ""
    return f"[{_fmt_ms(stats['q25'])}-{_fmt_ms(stats['q75'])}]"


def _mb(v: Optional[float]) -> str:
    return "-" if v is None else f"{v / 2 ** 20:.3g}"


def _x(v: Optional[float]) -> str:
    return "-" if v is None else f"{v:.2f}x"


def _pct(v: Optional[float]) -> str:
    return "-" if v is None else f"{100 * v:.3g}%"


def _num(v: Optional[float], scale: float = 1.0, fmt: str = "{:.3g}") -> str:
    return "-" if v is None else fmt.format(v / scale)


def _rate(flop_s: Optional[float]) -> str:
    if flop_s is None or flop_s != flop_s:
        return "(not measured)"
    return f"{flop_s / 1e9:.1f} GFLOP/s"


def environment(device: torch.device, device_name: str, peak: dict) -> dict:
    try:
        import triton
        triton_version = triton.__version__
    except Exception:
        triton_version = None
    try:
        from .. import __version__ as lk_version
    except Exception:
        lk_version = None
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.node()} {platform.machine()} {platform.system()}",
        "device": str(device), "device_name": device_name,
        "torch": torch.__version__, "triton": triton_version, "cuda": torch.version.cuda,
        "lambda_kernels": lk_version, "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "matmul_flop_s": peak.get("flops_per_s"), "matmul": peak,
    }


def render_tables(console, rows: list[dict], cases, meta: dict, baseline: Optional[str]) -> None:
    from rich.table import Table
    from rich import box

    peak = meta.get("matmul_flop_s")
    for ci, case in enumerate(cases):
        case_rows = [r for r in rows if r["case_index"] == ci]
        title = case.describe()
        table = Table(title=title, box=box.SIMPLE_HEAD, title_justify="left",
                      caption=(f"time: median [IQR] ms; speedup = t({baseline}) / t; "
                               f"mem: extra peak MiB; GFLOP per forward; %peak of "
                               f"{_rate(peak)} torch.mm "
                               f"({meta.get('matmul', {}).get('dtype', '?')})"),
                      caption_justify="left")
        for col, just in (("provider", "left"), ("ran", "left"), ("fwd ms", "right"),
                          ("fwd+bwd ms", "right"), ("speedup fwd", "right"),
                          ("speedup f+b", "right"), ("mem fwd", "right"),
                          ("mem f+b", "right"), ("img/s fwd", "right"), ("GFLOP", "right"),
                          ("%peak fwd", "right"), ("%peak f+b", "right"),
                          ("max|err|", "right"), ("note", "left")):
            table.add_column(col, justify=just, overflow="fold")
        for r in case_rows:
            name = r["display"] + (" *" if r["provider"] == baseline else "")
            if r["status"] != "ok":
                style = "yellow" if r["status"] == "skipped" else "red"
                table.add_row(name, f"[{style}]{r['status']}[/]", *["-"] * 11,
                              f"[{style}]{r['reason']}[/]")
                continue
            table.add_row(
                name, r.get("backend") or "ok",
                f"{_ms(r['fwd'])} {_spread(r['fwd'])}", f"{_ms(r['fwdbwd'])} {_spread(r['fwdbwd'])}",
                _x(r.get("speedup_fwd")), _x(r.get("speedup_fwdbwd")),
                _mb(r.get("mem_fwd")), _mb(r.get("mem_fwdbwd")),
                _num(r.get("img_s_fwd"), fmt="{:.4g}"), _num(r.get("flops_fwd"), 1e9),
                _pct(r.get("frac_peak_fwd")), _pct(r.get("frac_peak_fwdbwd")),
                "-" if r.get("max_abs_err") is None else f"{r['max_abs_err']:.1e}",
                r.get("note") or "")
        console.print(table)


def _finite(obj):
    """NaN/inf -> None so the file is strict JSON."""
    if isinstance(obj, float):
        return obj if obj == obj and obj not in (float("inf"), float("-inf")) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def write_json(path: str, rows: list[dict], meta: dict, cases) -> None:
    doc = {"meta": meta, "cases": [c.to_dict() for c in cases], "results": rows}
    with open(path, "w") as f:
        json.dump(_finite(doc), f, indent=1, default=str, allow_nan=False)


CSV_FIELDS = [
    "date", "machine", "device", "device_name", "torch", "triton", "lambda_kernels",
    "matmul_flop_s", "case", "batch", "dim", "dim_out", "height", "width", "dim_k", "heads",
    "dim_u", "r", "n", "dtype", "provider", "display", "status", "reason", "backend", "note",
    "mode", "median_s", "q25_s", "q75_s", "min_s", "max_s", "repeats", "peak_mem_bytes",
    "mem_method", "img_per_s", "flops", "flop_per_s", "frac_of_matmul_peak", "speedup",
    "baseline", "max_abs_err",
]


def csv_rows(rows: list[dict], meta: dict) -> list[dict]:
    """One CSV row per provider, case and mode (fwd / fwdbwd) (Liger-style long format)."""
    out = []
    for r in rows:
        for mode in ("fwd", "fwdbwd"):
            st = r.get(mode) or {}
            d = {k: meta.get(k) for k in ("date", "machine", "device", "device_name", "torch",
                                          "triton", "lambda_kernels", "matmul_flop_s")}
            d.update({k: r["shape"].get(k) for k in ("batch", "dim", "dim_out", "height",
                                                     "width", "dim_k", "heads", "dim_u", "r",
                                                     "n", "dtype")})
            d.update(case=r["case"], provider=r["provider"], display=r["display"],
                     status=r["status"], reason=r["reason"], backend=r.get("backend"),
                     note=r.get("note"), mode=mode, median_s=st.get("median"),
                     q25_s=st.get("q25"), q75_s=st.get("q75"), min_s=st.get("min"),
                     max_s=st.get("max"), repeats=st.get("n"),
                     peak_mem_bytes=r.get(f"mem_{mode}"), mem_method=r.get("mem_method"),
                     img_per_s=r.get(f"img_s_{mode}"), flops=r.get(f"flops_{mode}"),
                     flop_per_s=r.get(f"flop_s_{mode}"),
                     frac_of_matmul_peak=r.get(f"frac_peak_{mode}"),
                     speedup=r.get(f"speedup_{mode}"), baseline=r.get("baseline"),
                     max_abs_err=r.get("max_abs_err"))
            out.append(d)
    return out


def append_csv(path: str, rows: list[dict], meta: dict) -> None:
    new = not os.path.exists(path) or os.path.getsize(path) == 0
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
        if new:
            w.writeheader()
        w.writerows(csv_rows(rows, meta))


def plot(path: str, rows: list[dict], cases, sweep: Optional[str], meta: dict) -> None:
    """Time (fwd, fwd+bwd) and peak memory vs the swept quantity, one line per provider."""
    import matplotlib
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    if sweep == "size":
        xs = [c.height * c.width for c in cases]
        xlabel, ticks = "image size (H×W)", [f"{c.height}×{c.width}" for c in cases]
    elif sweep == "r":
        xs = [c.r if c.r is not None else 0 for c in cases]
        xlabel, ticks = "local context r", [str(x) for x in xs]
    else:
        xs = list(range(len(cases)))
        xlabel, ticks = "case", [c.label or str(i) for i, c in enumerate(cases)]
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
    panels = (("fwd", "forward time (ms)"), ("fwdbwd", "forward+backward time (ms)"),
              ("mem", "extra peak memory, fwd+bwd (MiB)"))
    names = list(dict.fromkeys(r["provider"] for r in rows))
    for ax, (key, ylabel) in zip(axes, panels):
        any_line = False
        for name in names:
            pts = []
            for ci, x in enumerate(xs):
                r = next((r for r in rows if r["provider"] == name and r["case_index"] == ci),
                         None)
                if r is None or r["status"] != "ok":
                    continue
                if key == "mem":
                    v = r.get("mem_fwdbwd")
                    v = None if v is None else v / 2 ** 20
                else:
                    v = r[key].get("median") * 1e3 if r[key] else None
                if v is not None and v > 0:
                    pts.append((x, v))
            if pts:
                any_line = True
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=name)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        if any_line:
            ax.set_yscale("log")
        ax.set_xticks(xs)
        ax.set_xticklabels(ticks, rotation=30 if len(xs) > 4 else 0)
        ax.grid(True, which="both", alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    if not handles:
        handles, labels = axes[2].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="center right", fontsize="small")
    c0 = cases[0]
    fig.suptitle(f"lambda-bench on {meta.get('device_name')}: B={c0.batch} "
                 f"{c0.dim}->{c0.dim_out} k={c0.dim_k} h={c0.heads} u={c0.dim_u} {c0.dtype}"
                 + (f", sweep {sweep}" if sweep else ""), fontsize="medium")
    fig.tight_layout(rect=(0, 0, 0.86, 0.95))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_markdown(path: str, rows: list[dict], cases, meta: dict,
                   baseline: Optional[str]) -> None:
    """GitHub-flavoured markdown: an environment line and one table per case."""
    peak = meta.get("matmul_flop_s")
    lines = [f"# lambda-bench results ({meta.get('preset')}"
             + (f", sweep {meta['sweep']}" if meta.get("sweep") else "") + ")", "",
             f"- date: {meta.get('date')}; machine: {meta.get('machine')}",
             f"- device: {meta.get('device')} — {meta.get('device_name')}",
             f"- torch {meta.get('torch')}, triton {meta.get('triton')}, "
             f"lambda_kernels {meta.get('lambda_kernels')}, threads {meta.get('threads')}",
             f"- torch.mm rate: {_rate(peak)} "
             f"({meta.get('matmul', {}).get('dtype')}); repeats {meta.get('repeats')}, "
             f"warm-up {meta.get('warmup')}",
             f"- time: median [IQR] ms; speedup = t({baseline}) / t; mem: extra peak MiB "
             "(CPU: fresh subprocess, VmHWM - VmRSS after setup; CUDA: max_memory_allocated "
             "delta); GFLOP: analytic, per forward; %peak: achieved FLOP/s / torch.mm rate", ""]
    head = ["provider", "ran", "fwd ms", "fwd+bwd ms", "speedup fwd", "speedup f+b",
            "mem fwd", "mem f+b", "img/s fwd", "GFLOP", "%peak fwd", "%peak f+b",
            "max abs err", "note"]
    for ci, case in enumerate(cases):
        lines += [f"## {case.describe()}", "", "| " + " | ".join(head) + " |",
                  "|" + "|".join("---" for _ in head) + "|"]
        for r in (r for r in rows if r["case_index"] == ci):
            name = r["display"] + (" (baseline)" if r["provider"] == baseline else "")
            if r["status"] != "ok":
                cells = [name, r["status"]] + ["-"] * 11 + [r["reason"]]
            else:
                cells = [name, r.get("backend") or "ok",
                         f"{_ms(r['fwd'])} {_spread(r['fwd'])}",
                         f"{_ms(r['fwdbwd'])} {_spread(r['fwdbwd'])}",
                         _x(r.get("speedup_fwd")), _x(r.get("speedup_fwdbwd")),
                         _mb(r.get("mem_fwd")), _mb(r.get("mem_fwdbwd")),
                         _num(r.get("img_s_fwd"), fmt="{:.4g}"), _num(r.get("flops_fwd"), 1e9),
                         _pct(r.get("frac_peak_fwd")), _pct(r.get("frac_peak_fwdbwd")),
                         "-" if r.get("max_abs_err") is None else f"{r['max_abs_err']:.1e}",
                         r.get("note") or ""]
            lines.append("| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |")
        lines.append("")
    with open(path, "w") as f:
        f.write("\n".join(lines))
