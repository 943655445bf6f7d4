"""Output: tables (rich when installed, plain text otherwise), JSON, appended CSV rows,
markdown and matplotlib plots, for layer rows (lambda-bench) and model rows (lambda-bench
train), and the table of targets.

rich and matplotlib come with the `bench` extra (pip install "lambda-kernels[bench]"); without
rich the tables print as plain text, without matplotlib --plot stops with what to install.
"""
from __future__ import annotations

import csv
import datetime
import json
import os
import platform
import re
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from .._cpu_isa import ENV_CPU_ISA

INSTALL_BENCH = 'pip install "lambda-kernels[bench]"'


def missing_optional(module: str) -> Optional[str]:
    """None when `module` imports, else a message saying what to install."""
    try:
        __import__(module)
    except ImportError:
        return f"{module} is not installed; {INSTALL_BENCH} adds it"
    return None


# ---------------------------------------------------------------------------------------------
# console


class PlainConsole:
    """The part of rich.console.Console that lambda-bench uses, printing plain text."""

    _MARKUP = re.compile(r"\[/?(?:dim|bold|yellow|red|green)?\]")
    is_terminal = False

    def print(self, text: str = "") -> None:
        print(self._MARKUP.sub("", str(text)), flush=True)


def literal(console, text: str) -> str:
    """`text` as printed verbatim by `console` (rich reads "[bench]" as markup)."""
    if isinstance(console, PlainConsole):
        return text
    from rich.markup import escape
    return escape(text)


def make_console():
    """A rich Console (fixed width off a terminal, so tables do not wrap), or PlainConsole."""
    if missing_optional("rich"):
        return PlainConsole()
    from rich.console import Console
    probe = Console()
    if probe.is_terminal:
        return probe
    return Console(width=int(os.environ.get("COLUMNS", "260")), highlight=False)


# ---------------------------------------------------------------------------------------------
# cell formatting


def _fmt_ms(seconds: float) -> str:
    v = seconds * 1e3
    if v >= 100:
        return f"{v:.0f}"
    if v >= 10:
        return f"{v:.1f}"
    return f"{v:.3g}"


def _ms(stats: dict) -> str:
    return _fmt_ms(stats["median"]) if stats else "-"


def _spread(stats: dict) -> str:
    return f"[{_fmt_ms(stats['q25'])}-{_fmt_ms(stats['q75'])}]" if stats else ""


def _time(stats: dict) -> str:
    return f"{_ms(stats)} {_spread(stats)}".strip()


def _mb(v: Optional[float]) -> str:
    return "-" if v is None else f"{v / 2 ** 20:.3g}"


def _ratio(row: dict, key: str) -> str:
    """The median per-pair ratio row[key] and, in brackets, the IQR of the per-pair ratios
    (row[key + "_pairs"]; their min and max are in the JSON and CSV), e.g. '2.31x [2.05-2.62]'."""
    value, pairs = row.get(key), row.get(key + "_pairs") or {}
    if value is None:
        return "-"
    if pairs.get("n", 0) < 2:
        return f"{value:.2f}x"
    return f"{value:.2f}x [{pairs['q25']:.2f}-{pairs['q75']:.2f}]"


def _pct(v: Optional[float]) -> str:
    return "-" if v is None else f"{100 * v:.3g}%"


def _num(v: Optional[float], scale: float = 1.0, fmt: str = "{:.3g}") -> str:
    return "-" if v is None else fmt.format(v / scale)


def _err(v: Optional[float]) -> str:
    return "-" if v is None else f"{v:.1e}"


def rate_text(flop_s: Optional[float]) -> str:
    if flop_s is None or flop_s != flop_s:
        return "(not measured)"
    return f"{flop_s / 1e9:.1f} GFLOP/s"


def ran(row: dict) -> str:
    """Which back end ran, and its variant (e.g. 'cpu (avx2)')."""
    backend, variant = row.get("backend"), row.get("variant")
    if not backend:
        return "ok"
    return f"{backend} ({variant})" if variant else backend


@dataclass(frozen=True)
class Column:
    header: str
    cell: Callable[[dict], str]
    right: bool = True


LAYER_COLUMNS = [
    Column("ran", ran, right=False),
    Column("fwd ms", lambda r: _time(r["fwd"])),
    Column("fwd+bwd ms", lambda r: _time(r["fwdbwd"])),
    Column("speedup fwd", lambda r: _ratio(r, "speedup_fwd")),
    Column("speedup f+b", lambda r: _ratio(r, "speedup_fwdbwd")),
    Column("mem fwd", lambda r: _mb(r.get("mem_fwd"))),
    Column("mem f+b", lambda r: _mb(r.get("mem_fwdbwd"))),
    Column("img/s fwd", lambda r: _num(r.get("img_s_fwd"), fmt="{:.4g}")),
    Column("GFLOP", lambda r: _num(r.get("flops_fwd"), 1e9)),
    Column("%peak fwd", lambda r: _pct(r.get("frac_peak_fwd"))),
    Column("%peak f+b", lambda r: _pct(r.get("frac_peak_fwdbwd"))),
    Column("max|err|", lambda r: _err(r.get("max_abs_err"))),
    Column("note", lambda r: r.get("note") or "", right=False),
]

MODEL_COLUMNS = [
    Column("ran", ran, right=False),
    Column("inference ms", lambda r: _time(r["fwd"])),
    Column("inference img/s", lambda r: _num(r.get("img_s_fwd"), fmt="{:.4g}")),
    Column("train step ms", lambda r: _time(r["fwdbwd"])),
    Column("train img/s", lambda r: _num(r.get("img_s_fwdbwd"), fmt="{:.4g}")),
    Column("vs stock inf", lambda r: _ratio(r, "vs_stock_fwd")),
    Column("vs stock train", lambda r: _ratio(r, "vs_stock_fwdbwd")),
    Column("speedup inf", lambda r: _ratio(r, "speedup_fwd")),
    Column("speedup train", lambda r: _ratio(r, "speedup_fwdbwd")),
    Column("params M", lambda r: _num(r.get("params"), 1e6)),
    Column("rel err", lambda r: _err(r.get("max_rel_err"))),
    Column("note", lambda r: r.get("note") or "", right=False),
]


def table_cells(row: dict, columns: list[Column], baseline: Optional[str],
                baseline_mark: str = " *") -> list[str]:
    """The cells of one row: provider name first; a skipped/failed row says why."""
    name = row["display"] + (baseline_mark if row["provider"] == baseline else "")
    if row["status"] != "ok":
        return [name, row["status"]] + ["-"] * (len(columns) - 2) + [row["reason"]]
    return [name] + [column.cell(row) for column in columns]


def _plain_table(title: str, head: list[str], body: list[list[str]], caption: str) -> str:
    widths = [max(len(h), *(len(r[i]) for r in body)) if body else len(h)
              for i, h in enumerate(head)]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()
    out = [title, line(head), line(["-" * w for w in widths])]
    out += [line(r) for r in body]
    return "\n".join(out + [caption, ""])


def print_table(console, title: str, columns: list[Column], rows: list[dict],
                baseline: Optional[str], caption: str) -> None:
    head = ["provider"] + [c.header for c in columns]
    body = [table_cells(r, columns, baseline) for r in rows]
    if isinstance(console, PlainConsole):
        console.print(_plain_table(title, head, body, caption))
        return
    from rich import box
    from rich.table import Table
    table = Table(title=title, box=box.SIMPLE_HEAD, title_justify="left",
                  caption=literal(console, caption), caption_justify="left")
    table.add_column("provider", overflow="fold")
    for column in columns:
        table.add_column(column.header, justify="right" if column.right else "left",
                         overflow="fold")
    for row, cells in zip(rows, body):
        if row["status"] != "ok":
            style = "yellow" if row["status"] == "skipped" else "red"
            cells = cells[:1] + [f"[{style}]{c}[/]" if c != "-" else c for c in cells[1:]]
        table.add_row(*cells)
    console.print(table)


PAIRS = ("the median of the per-pair ratios (providers timed in turn, A B A B ..., pair i = "
         "their i-th calls) [IQR of those ratios]")


def layer_caption(meta: dict, baseline: Optional[str]) -> str:
    note = f" ({meta['baseline_note']})" if meta.get("baseline_note") else ""
    return (f"time: median [IQR] ms; speedup = t({baseline}) / t{note}, {PAIRS}; "
            f"mem: extra peak MiB; "
            f"GFLOP per forward; %peak of {rate_text(meta.get('matmul_flop_s'))} torch.mm "
            f"({meta.get('matmul', {}).get('dtype', '?')}); ran: back end (variant)")


def model_caption(meta: dict, baseline: Optional[str]) -> str:
    return (f"time: median [IQR] ms; inference = eval forward, no_grad; train step = forward, "
            f"backward, SGD step; vs stock = t(stock timm model) / t; speedup = t({baseline}) "
            f"/ t; both {PAIRS}; rel err = max |logits - stock logits| / max |stock logits| "
            f"(eval, same weights); ran: back end (variant)")


def render_tables(console, rows: list[dict], cases, meta: dict, baseline: Optional[str],
                  columns: Optional[list[Column]] = None, caption: Optional[str] = None) -> None:
    columns = columns or LAYER_COLUMNS
    caption = caption or layer_caption(meta, baseline)
    for ci, case in enumerate(cases):
        print_table(console, case.describe(), columns,
                    [r for r in rows if r["case_index"] == ci], baseline, caption)


TARGETS_CAPTION = ("measured: rows of one case timed in turn give the median of the per-pair "
                   "ratios [their IQR]; rows of two cases, the ratio of their medians")


def render_targets(console, targets: list[dict]) -> None:
    if not targets:
        return
    head = ["target", "measured", "required", "status"]
    body = [[t["name"], t["measured_text"], t["required_text"], t["status"]] for t in targets]
    if isinstance(console, PlainConsole):
        console.print(_plain_table("targets", head, body, TARGETS_CAPTION))
        return
    from rich import box
    from rich.table import Table
    table = Table(title="targets", box=box.SIMPLE_HEAD, title_justify="left",
                  caption=literal(console, TARGETS_CAPTION), caption_justify="left")
    for h in head:
        table.add_column(h, justify="left" if h == "target" else "right")
    colour = {"pass": "green", "fail": "red"}
    for cells, t in zip(body, targets):
        style = colour.get(t["status"], "yellow")
        table.add_row(*cells[:3], f"[{style}]{cells[3]}[/]")
    console.print(table)


# ---------------------------------------------------------------------------------------------
# files


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
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_isa": os.environ.get(ENV_CPU_ISA) or None,
        "matmul_flop_s": peak.get("flops_per_s"), "matmul": peak,
    }


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


SHAPE_FIELDS = ["batch", "dim", "dim_out", "height", "width", "dim_k", "heads", "dim_u", "r",
                "n", "dtype", "model", "image_size", "channels_last"]
CSV_FIELDS = [
    "date", "machine", "device", "device_name", "torch", "triton", "lambda_kernels",
    "torch_cpu_capability", "cpu_isa", "matmul_flop_s", "bench", "case", *SHAPE_FIELDS,
    "provider", "display", "status", "reason", "backend", "variant", "note", "mode", "median_s",
    "q25_s", "q75_s", "min_s", "max_s", "repeats", "peak_mem_bytes", "mem_method", "img_per_s",
    "flops", "flop_per_s", "frac_of_matmul_peak", "kernel_flop_per_s", "kernel_frac_of_matmul_peak",
    "speedup", "speedup_min", "speedup_q25", "speedup_q75", "speedup_max", "speedup_pairs",
    "baseline", "vs_stock", "vs_stock_min", "vs_stock_max", "stock", "max_abs_err",
    "max_rel_err",
]


def _pair_fields(row: dict, key: str, prefix: str, stats: tuple) -> dict:
    pairs = row.get(key + "_pairs") or {}
    return {f"{prefix}_{stat}": pairs.get(stat) for stat in stats}


def csv_rows(rows: list[dict], meta: dict) -> list[dict]:
    """One CSV row per provider, case and mode (fwd / fwdbwd) (Liger-style long format)."""
    out = []
    for r in rows:
        for mode in ("fwd", "fwdbwd"):
            st = r.get(mode) or {}
            d = {k: meta.get(k) for k in ("date", "machine", "device", "device_name", "torch",
                                          "triton", "lambda_kernels", "torch_cpu_capability",
                                          "cpu_isa", "matmul_flop_s")}
            d.update({k: r["shape"].get(k) for k in SHAPE_FIELDS})
            d.update(bench=meta.get("bench", "layer"), case=r["case"], provider=r["provider"],
                     display=r["display"], status=r["status"], reason=r["reason"],
                     backend=r.get("backend"), variant=r.get("variant"), note=r.get("note"),
                     mode=mode, median_s=st.get("median"), q25_s=st.get("q25"),
                     q75_s=st.get("q75"), min_s=st.get("min"), max_s=st.get("max"),
                     repeats=st.get("n"), peak_mem_bytes=r.get(f"mem_{mode}"),
                     mem_method=r.get("mem_method"), img_per_s=r.get(f"img_s_{mode}"),
                     flops=r.get(f"flops_{mode}"), flop_per_s=r.get(f"flop_s_{mode}"),
                     frac_of_matmul_peak=r.get(f"frac_peak_{mode}"),
                     speedup=r.get(f"speedup_{mode}"), baseline=r.get("baseline"),
                     kernel_flop_per_s=(r.get("kernel") or {}).get(f"flop_s_{mode}"),
                     kernel_frac_of_matmul_peak=(r.get("kernel") or {}).get(f"frac_peak_{mode}"),
                     vs_stock=r.get(f"vs_stock_{mode}"), stock=r.get("stock"),
                     **_pair_fields(r, f"speedup_{mode}", "speedup", ("min", "q25", "q75",
                                                                       "max")),
                     speedup_pairs=(r.get(f"speedup_{mode}_pairs") or {}).get("n"),
                     **_pair_fields(r, f"vs_stock_{mode}", "vs_stock", ("min", "max")),
                     max_abs_err=r.get("max_abs_err"), max_rel_err=r.get("max_rel_err"))
            out.append(d)
    return out


def append_csv(path: str, rows: list[dict], meta: dict) -> None:
    new = not os.path.exists(path) or os.path.getsize(path) == 0
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
        if new:
            w.writeheader()
        w.writerows(csv_rows(rows, meta))


def _pyplot():
    import matplotlib
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    return plt


def plot(path: str, rows: list[dict], cases, sweep: Optional[str], meta: dict) -> None:
    """Time (fwd, fwd+bwd) and peak memory vs the swept quantity, one line per provider."""
    plt = _pyplot()
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


def plot_models(path: str, rows: list[dict], meta: dict) -> None:
    """Images per second, inference and training step, one pair of bars per model."""
    plt = _pyplot()
    ok = [r for r in rows if r["status"] == "ok"]
    fig, axes = plt.subplots(1, 2, figsize=(13, 0.45 * max(4, len(ok)) + 1.5))
    for ax, (mode, label) in zip(axes, (("fwd", "inference images/s"),
                                        ("fwdbwd", "training-step images/s"))):
        names = [r["display"] for r in ok]
        values = [r.get(f"img_s_{mode}") or 0.0 for r in ok]
        bars = ax.barh(range(len(ok)), values, color=["tab:green" if r.get("stock") else
                                                      "tab:blue" for r in ok])
        ax.set_yticks(range(len(ok)))
        ax.set_yticklabels(names, fontsize="small")
        ax.invert_yaxis()
        ax.set_xlabel(label)
        ax.grid(True, axis="x", alpha=0.3)
        for bar, value in zip(bars, values):
            ax.text(bar.get_width(), bar.get_y() + bar.get_height() / 2, f" {value:.3g}",
                    va="center", fontsize="small")
    shape = ok[0]["shape"] if ok else rows[0]["shape"]
    fig.suptitle(f"lambda-bench train on {meta.get('device_name')}: batch {shape.get('batch')}, "
                 f"{shape.get('image_size')} px, {shape.get('dtype')} (converted models in "
                 "green)", fontsize="medium")
    fig.tight_layout(rect=(0, 0, 1, 0.94))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _markdown_table(head: list[str], body: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"
              for cells in body]
    return lines


def write_markdown(path: str, rows: list[dict], cases, meta: dict, baseline: Optional[str],
                   columns: Optional[list[Column]] = None, caption: Optional[str] = None,
                   targets: Optional[list[dict]] = None) -> None:
    """GitHub-flavoured markdown: the environment, one table per case, the targets."""
    columns = columns or LAYER_COLUMNS
    caption = caption or layer_caption(meta, baseline)
    title = meta.get("preset") or meta.get("bench")
    lines = [f"# lambda-bench results ({title}"
             + (f", sweep {meta['sweep']}" if meta.get("sweep") else "") + ")", "",
             f"- date: {meta.get('date')}; machine: {meta.get('machine')}",
             f"- device: {meta.get('device')} — {meta.get('device_name')}",
             f"- torch {meta.get('torch')} (CPU capability {meta.get('torch_cpu_capability')}), "
             f"triton {meta.get('triton')}, lambda_kernels {meta.get('lambda_kernels')}, "
             f"threads {meta.get('threads')}, LAMBDA_KERNELS_CPU_ISA {meta.get('cpu_isa')}",
             f"- torch.mm rate: {rate_text(meta.get('matmul_flop_s'))} "
             f"({meta.get('matmul', {}).get('dtype')}); repeats {meta.get('repeats')}, "
             f"warm-up {meta.get('warmup')}",
             f"- {caption}", ""]
    head = ["provider"] + [c.header for c in columns]
    for ci, case in enumerate(cases):
        body = [table_cells(r, columns, baseline, " (baseline)")
                for r in rows if r["case_index"] == ci]
        lines += [f"## {case.describe()}", "", *_markdown_table(head, body), ""]
    if targets:
        body = [[t["name"], t["measured_text"], t["required_text"], t["status"]]
                for t in targets]
        lines += ["## targets", "", TARGETS_CAPTION, "",
                  *_markdown_table(["target", "measured", "required", "status"], body), ""]
    with open(path, "w") as f:
        f.write("\n".join(lines))
