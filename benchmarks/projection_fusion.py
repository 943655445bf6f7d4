"""Times LambdaLayer with its three 1×1 projections fused into one convolution (the default;
eval mode also folds the batch norms into it) against the same layer running them one by one
(forced here by a no-op forward hook on to_q, which the layer honours by not fusing), at the
LambdaResNet stage shapes (B=8 by default, dim_k=16, heads=4, u=1). The two run interleaved,
repeat by repeat (A B A B ...), so a ratio holds when the shared machine's speed drifts;
reports median times and the median and spread of the per-pair ratios separate ÷ fused.

    python benchmarks/projection_fusion.py --threads 2 --batch 8 --repeats 11
"""
import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's package
import lambda_kernels  # noqa: E402

SHAPES = ((56, 128, 23), (28, 256, 9), (14, 512, 9))


def _layer(dim, r, fused):
    torch.manual_seed(0)
    layer = lambda_kernels.LambdaLayer(dim, dim_k=16, r=r, heads=4, dim_u=1)
    with torch.no_grad():
        for bn in (layer.norm_q, layer.norm_v):
            bn.running_mean.uniform_(-0.2, 0.2)
            bn.running_var.uniform_(0.5, 1.5)
    if not fused:
        layer.to_q.register_forward_hook(lambda module, args, output: None)
    return layer


def _step(layer, x, mode, autocast):
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        if mode == "eval fwd":
            with torch.no_grad():
                layer(x)
        elif mode == "train fwd":
            with torch.no_grad():
                layer(x)
        else:  # train fwd+bwd
            layer(x).float().sum().backward()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=11)
    parser.add_argument("--bf16", action="store_true", help="under torch.autocast('cpu', bf16)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"{lambda_kernels.__file__}")
    print(f"torch {torch.__version__}, {args.threads} threads, B={args.batch}, "
          f"{'bf16 autocast' if args.bf16 else 'fp32'}, load average {os.getloadavg()}")
    print("| shape | mode | separate ms | fused ms | ratio (median) | ratio min–max |")
    print("|---|---|---|---|---|---|")
    for size, dim, r in SHAPES:
        x = torch.randn(args.batch, dim, size, size)
        for mode in ("eval fwd", "train fwd", "train fwd+bwd"):
            layers = {fused: _layer(dim, r, fused).train(mode != "eval fwd")
                      for fused in (False, True)}
            inp = x.clone().requires_grad_(mode == "train fwd+bwd")
            for layer in layers.values():
                _step(layer, inp, mode, args.bf16)  # warm-up
            times = {False: [], True: []}
            for _ in range(args.repeats):
                for fused, layer in layers.items():
                    start = time.perf_counter()
                    _step(layer, inp, mode, args.bf16)
                    times[fused].append(time.perf_counter() - start)
            ratios = [a / b for a, b in zip(times[False], times[True])]
            print(f"| {size}²/{dim} r={r} | {mode} | {statistics.median(times[False]) * 1e3:.1f} "
                  f"| {statistics.median(times[True]) * 1e3:.1f} | {statistics.median(ratios):.3f} "
                  f"| {min(ratios):.2f}–{max(ratios):.2f} |", flush=True)


if __name__ == "__main__":
    main()
