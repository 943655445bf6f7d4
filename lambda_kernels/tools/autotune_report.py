"""Run the Triton autotuner on a GPU over benchmark shapes and report what it chose: for every
kernel of the lambda op, the configurations it timed, the winner, the winner's time and, for
the positional kernels, their useful TFLOP/s next to SDPA global attention over the same tokens
and heads in the same run (the GPU target: the positional forward at >= 45% of SDPA's
TFLOP/s).

    python -m lambda_kernels.tools.autotune_report [--preset gpu-headline resnet]
        [--dtype bfloat16] [--markdown FILE] [--json FILE]

Every configuration that survives pruning is compiled in parallel first (Triton's async compile
mode, when this Triton has it), then timed by the autotuner. With TRITON_CACHE_AUTOTUNING=1 the
choices are stored on disk, so later processes (lambda-bench) reuse them without re-tuning.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from concurrent.futures import ThreadPoolExecutor

import torch

from ..bench.op_shapes import case_shape
from ..bench.presets import DTYPES, PRESETS
from ..triton._tiles import unwrap_kernel
from ..cost import positional_flops
from .launches import op_launches

# The positional kernels: the forward, and the three of the backward (whose summed time the
# backward's useful FLOP is measured against). Useful FLOP: lambda_kernels.cost (the cheaper
# association over the in-image taps; the GPU kernels use the logits, the cheaper one on the
# benchmark shapes).
POSITIONAL_FORWARD = "lambda_output_fwd_kernel"
POSITIONAL_BACKWARD = ("lambda_output_bwd_dq_kernel", "lambda_output_bwd_dvalues_kernel",
                       "lambda_output_bwd_d_pos_table_partial_kernel")


def _precompile(items) -> None:
    """Compile every configuration the autotuner will time, on all cores at once."""
    try:
        from triton.runtime._async_compile import AsyncCompileMode
    except ImportError:  # a Triton without async compilation: the autotuner compiles serially
        return
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 4) as pool, AsyncCompileMode(pool):
        for item in items:
            item.kernel.warmup(*item.args, grid=item.grid, **item.kwargs)


def _config_text(config) -> str:
    if config is None:
        return "fixed"
    parts = [f"{k}={v}" for k, v in config.kwargs.items()]
    return " ".join(parts + [f"w={config.num_warps}", f"s={config.num_stages}"])


def sdpa_tflops(shape, dtype) -> tuple[float, float]:
    """(ms, TFLOP/s) of SDPA global attention forward over the same B, heads, H·W tokens and
    head width v."""
    import triton.testing
    b, heads, _, _, v, hh, ww = shape[:7]
    q, k, val = (torch.randn(b, heads, hh * ww, v, device="cuda", dtype=dtype) for _ in range(3))
    ms = triton.testing.do_bench(
        lambda: torch.nn.functional.scaled_dot_product_attention(q, k, val))
    return ms, 4 * b * heads * (hh * ww) ** 2 * v / ms / 1e9


def tune_case(label, shape, dtype) -> dict:
    import triton.testing
    from triton.runtime.autotuner import Autotuner
    items = op_launches(shape, dtype, "cuda")
    _precompile(items)
    useful = positional_flops(*shape)
    useful_backward = positional_flops(*shape, backward=True)
    rows = []
    for item in items:
        kernel = item.kernel
        if isinstance(kernel, Autotuner):
            kernel.configs_timings = None  # set again only if this shape gets timed
        kernel[item.grid](*item.args, **item.kwargs)  # tunes (or reuses a stored choice)
        timed = {}
        best = None
        if isinstance(kernel, Autotuner):
            best = kernel.best_config
            timed = {_config_text(c): t[0] if isinstance(t, list) else t
                     for c, t in (getattr(kernel, "configs_timings", None) or {}).items()}
        ms = triton.testing.do_bench(lambda: kernel[item.grid](*item.args, **item.kwargs))
        name = unwrap_kernel(kernel)[2].__name__
        row = dict(kernel=name, best=_config_text(best), ms=ms, timed=timed)
        if name == POSITIONAL_FORWARD:
            row["useful_tflops"] = useful / ms / 1e9
        rows.append(row)
    backward_ms = sum(r["ms"] for r in rows if r["kernel"] in POSITIONAL_BACKWARD)
    torch.cuda.synchronize()
    sdpa_ms, sdpa_rate = sdpa_tflops(shape, dtype)
    return dict(label=label, shape=shape, dtype=str(dtype), kernels=rows, sdpa_ms=sdpa_ms,
                sdpa_tflops=sdpa_rate, useful_gflop=useful / 1e9,
                useful_gflop_backward=useful_backward / 1e9, backward_ms=backward_ms,
                backward_useful_tflops=useful_backward / backward_ms / 1e9 if backward_ms
                else None)


def markdown(results) -> str:
    import triton
    lines = ["# Triton autotuning on the benchmark shapes", "",
             f"`python -m lambda_kernels.tools.autotune_report` on "
             f"{torch.cuda.get_device_name()} (torch {torch.__version__}, triton "
             f"{triton.__version__}). Useful FLOP of the positional part (lambda_kernels.cost): "
             "2·B·u per in-image (query, offset) pair times min(h·(k+v), k·v) forward, "
             "min(3·h·k + 2·h·v, 3·k·v) backward (the cheaper association); the backward rate "
             "is over the summed time of its three positional kernels. SDPA: global attention "
             "forward over the same tokens and heads, head width v.", ""]
    for result in results:
        fwd = next((r for r in result["kernels"] if r["kernel"] == "lambda_output_fwd_kernel"),
                   None)
        lines += [f"## {result['label']}: (B, h, k, u, v, H, W, Rh, Rw) = {result['shape']}, "
                  f"{result['dtype']}", "",
                  f"SDPA forward {result['sdpa_ms']:.3f} ms, {result['sdpa_tflops']:.0f} TFLOP/s; "
                  f"positional useful work {result['useful_gflop']:.1f} GFLOP forward, "
                  f"{result['useful_gflop_backward']:.1f} GFLOP backward"
                  + (f"; positional forward at {fwd['useful_tflops']:.0f} TFLOP/s = "
                     f"{100 * fwd['useful_tflops'] / result['sdpa_tflops']:.0f}% of SDPA's "
                     "(target >= 45%)" if fwd else "")
                  + (f"; positional backward at {result['backward_useful_tflops']:.0f} TFLOP/s"
                     if result["backward_useful_tflops"] else ""), "",
                  "| kernel | chosen config | ms | useful TFLOP/s | configurations timed (ms) |",
                  "|---|---|---|---|---|"]
        for r in result["kernels"]:
            timed = "; ".join(f"{c}: {t:.3f}" for c, t in r["timed"].items()) or "-"
            rate = f"{r['useful_tflops']:.0f}" if "useful_tflops" in r else "-"
            lines.append(f"| {r['kernel']} | {r['best']} | {r['ms']:.3f} | {rate} | {timed} |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", nargs="+", default=["gpu-headline", "resnet"],
                        choices=sorted(PRESETS))
    parser.add_argument("--dtype", default="bfloat16", choices=sorted(DTYPES))
    parser.add_argument("--markdown", metavar="FILE")
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("autotuning needs a CUDA device", file=sys.stderr)
        return 2
    results = []
    for preset in args.preset:
        for case in PRESETS[preset].cases:
            label = f"{preset} {case.label}".strip()
            results.append(tune_case(label, case_shape(case), DTYPES[args.dtype]))
            best = {r["kernel"]: (r["best"], round(r["ms"], 4)) for r in results[-1]["kernels"]}
            print(label, json.dumps(best), flush=True)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(markdown(results))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
