"""Two choices in LambdaLayer.projections(), timed A/B interleaved (A B A B ...) per repeat, at
the LambdaResNet stage shapes and seed-local, in fp32 and bf16, training step (forward and
backward):

  gemm   torch.matmul(W (O, C), x (B, C, N))  vs  torch.bmm(W.expand(B, O, C), x).
         matmul folds the batch into one GEMM on x transposed to (B·N, C): its backward copies
         x and the gradient into that layout; bmm reads both as they are (transposed operands).
  norm   a training-mode batch norm on a channel slice of the (B, O, N) product (strided over
         the batch)  vs  on a contiguous copy of the slice.

Reports the median ms of each and the median [min-max] of the per-pair ratios A / B (> 1: B,
the layer's choice, is faster); timed by lambda_kernels.bench.measure (the runner of lambda-bench).

    python benchmarks/projection_gemm.py --threads 2 --repeats 21
"""
import argparse
import os
import statistics

import torch

from lambda_kernels.bench.measure import pair_ratios, time_interleaved

# (label, B, C, H·W, O = q + k + v channels of LambdaLayer(C, dim_k=16, heads=4, dim_u), slice)
SHAPES = (
    ("seed-local 64x64/32 u=4", 1, 32, 64 * 64, 64 + 64 + 32, 64),
    ("56x56/128", 2, 128, 56 * 56, 64 + 16 + 32, 64),
    ("28x28/256", 2, 256, 28 * 28, 64 + 16 + 64, 64),
    ("14x14/512", 2, 512, 14 * 14, 64 + 16 + 128, 128),
)


def _pairs(a, b, repeats):
    """Median ms of a and of b, timed in turn (A B A B ...), and the per-pair ratios a / b."""
    ta, tb = time_interleaved([a, b], torch.device("cpu"), warmup=3, repeats=repeats)
    return statistics.median(ta) * 1e3, statistics.median(tb) * 1e3, pair_ratios(ta, tb)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=21)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {args.threads} threads, load average {os.getloadavg()}")
    print("| shape | dtype | what | A ms | B ms | A / B median [min-max] |")
    print("|---|---|---|---|---|---|")
    for label, B, C, N, O, sl in SHAPES:
        for dtype in (torch.float32, torch.bfloat16):
            w = torch.randn(O, C, dtype=dtype, requires_grad=True)
            x = torch.randn(B, C, N, dtype=dtype, requires_grad=True)
            g = torch.randn(B, O, N, dtype=dtype)

            def gemm(fn):
                def run():
                    fn().backward(g)
                    w.grad = x.grad = None
                return run
            rows = [("gemm: matmul / bmm",
                     *_pairs(gemm(lambda: torch.matmul(w, x)),
                             gemm(lambda: torch.bmm(w.expand(B, -1, -1), x)), args.repeats))]
            norm = torch.nn.BatchNorm1d(sl).to(dtype)
            product = torch.randn(B, O, N, dtype=dtype)
            gs = torch.randn(B, sl, N, dtype=dtype)

            def normed(contiguous):
                def run():
                    s = product.detach().requires_grad_()
                    part = s[:, :sl]
                    norm(part.contiguous() if contiguous else part).backward(gs)
                return run
            rows.append(("norm: strided / contiguous",
                         *_pairs(normed(False), normed(True), args.repeats)))
            for what, ta, tb, ratios in rows:
                print(f"| {label} | {str(dtype).split('.')[-1]} | {what} | {ta:.3f} | {tb:.3f} | "
                      f"{ratios['median']:.2f} [{ratios['min']:.2f}-{ratios['max']:.2f}] |")
    print(f"load average at the end {os.getloadavg()}")


if __name__ == "__main__":
    main()
