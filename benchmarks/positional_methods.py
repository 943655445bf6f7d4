"""The CPU kernels' two positional methods, direct and spectral (docs/design.md, "The spectral
method"), timed against each other on the ops alone (lambda_output and its backward), A/B
interleaved per repeat, with the cost estimate that chooses between them
(lambda_kernels.cost.cpu_positional_method) beside each measured ratio.

Reports per case, dtype and direction the median ms of each method, the median [min-max] of the
per-pair ratios direct / spectral (> 1: spectral faster), the estimated ratio, and which method
the kernels choose on their own. Timed by lambda_kernels.bench.measure (lambda-bench's runner).

    python benchmarks/positional_methods.py --threads 2 --repeats 9 [--cpu-isa avx512]
"""
import argparse
import datetime
import os
import platform
import statistics
import subprocess

import torch

import lambda_kernels
from lambda_kernels import cost
from lambda_kernels.bench.measure import pair_ratios, time_interleaved

# (label, B, h, k, u, v, H, W, Rh, Rw): the seed shapes, the LambdaResNet stage shapes at r = 23
# and r = 9, and two mid-size cases near the break-even.
CASES = (
    ("seed-local 64x64 r=23 u=4", 1, 4, 16, 4, 8, 64, 64, 23, 23),
    ("seed-global 64x64 n=64", 1, 4, 16, 1, 8, 64, 64, 127, 127),
    ("56x56/128 r=23", 2, 4, 16, 1, 32, 56, 56, 23, 23),
    ("28x28/256 r=23", 2, 4, 16, 1, 64, 28, 28, 23, 23),
    ("28x28/256 r=9", 2, 4, 16, 1, 64, 28, 28, 9, 9),
    ("14x14/512 r=9", 2, 4, 16, 1, 128, 14, 14, 9, 9),
    ("32x32/64 r=15", 2, 4, 16, 1, 16, 32, 32, 15, 15),
    ("16x16/64 n=16", 2, 4, 16, 1, 16, 16, 16, 31, 31),
)


def _machine() -> str:
    flags, model = "", platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and not model:
                    model = line.split(":", 1)[1].strip()
                if line.startswith("flags"):
                    flags = " ".join(sorted(w for w in line.split(":", 1)[1].split()
                                            if w.startswith(("avx512", "amx", "avx2", "fma"))))
                    break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} logical cores; flags: {flags}"


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, cwd=os.path.dirname(os.path.abspath(__file__))
                              ).stdout.strip() or "?"
    except OSError:
        return "?"


def _with_method(method, fn):
    def run():
        with lambda_kernels.use_cpu_positional_method(method):
            fn()
    return run


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=9)
    p.add_argument("--cpu-isa", default=None, help="force a CPU level (default: the best)")
    p.add_argument("--dtypes", default="float32,bfloat16")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.cpu_isa:
        lambda_kernels._cpu_isa.set_cpu_isa(args.cpu_isa)
    ops = torch.ops.lambda_kernels
    level = lambda_kernels.cpu_isa()
    print(f"# CPU positional methods: direct vs spectral ({level})\n")
    print(f"- date: {datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')}"
          f"; commit {_commit()}")
    print(f"- machine: {_machine()}")
    print(f"- torch {torch.__version__}, MKL {torch.backends.mkl.is_available()}, "
          f"{args.threads} threads, level {level}, {args.repeats} interleaved repeats; load "
          f"average {os.getloadavg()}")
    print("- ratio: direct / spectral, median [min-max] of per-pair ratios (> 1: spectral "
          "faster); estimate: the same ratio from lambda_kernels.cost (the bf16 micro-kernel "
          "counted at 1.4x); auto: what the kernels choose (spectral when the estimate is above "
          f"{cost.SPECTRAL_MARGIN})\n")
    print("| case | dtype | op | direct ms | spectral ms | ratio | estimate | auto |")
    print("|---|---|---|---|---|---|---|---|")
    for label, *sizes in CASES:
        b, h, k, u, v, hh, ww, rh, rw = sizes
        for name in args.dtypes.split(","):
            dtype = getattr(torch, name)
            g = torch.Generator().manual_seed(0)
            q, values, dy = (torch.randn(*s, generator=g).to(dtype) for s in
                             ((b, h, k, hh, ww), (b, u, v, hh, ww), (b, h, v, hh, ww)))
            table = (torch.randn(rh, rw, k, u, generator=g) * 0.1).to(dtype)
            lam = torch.randn(b, k, v, generator=g).to(dtype)
            speed = cost.direct_speed(name, level)
            for backward in (False, True):
                if backward:
                    def call():
                        ops.lambda_output_backward(dy, q, values, table, lam)
                else:
                    def call():
                        ops.lambda_output(q, values, table, lam)
                t_direct, t_spectral = time_interleaved(
                    [_with_method("direct", call), _with_method("spectral", call)],
                    torch.device("cpu"), warmup=2, repeats=args.repeats)
                r = pair_ratios(t_direct, t_spectral)
                est = (cost.direct_cost(*sizes, backward=backward) / speed
                       / cost.spectral_cost(*sizes, backward=backward))
                auto = cost.cpu_positional_method(*sizes, backward=backward, direct_speed=speed)
                print(f"| {label} | {name} | {'bwd' if backward else 'fwd'} | "
                      f"{statistics.median(t_direct) * 1e3:.2f} | "
                      f"{statistics.median(t_spectral) * 1e3:.2f} | {r['median']:.2f} "
                      f"[{r['min']:.2f}-{r['max']:.2f}] | {est:.2f} | {auto} |", flush=True)


if __name__ == "__main__":
    main()
