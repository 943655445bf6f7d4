"""A/B timing of the CPU positional kernel (ops lambda_output and lambda_output_backward) of two
builds, interleaved round by round, with the torch.mm rate measured beside each run.

Each tree is a directory holding a `lambda_kernels` package with its compiled `_C` (e.g. the
worktree, and a copy of the package with the build before a change). Every round runs one
child process per tree, in alternating order (A B, B A, ...); a child times each (level, case,
direction) a few times and reports the fastest call, plus a short fp32 torch.mm. The report gives, per
row, the median over rounds of each tree's time, its useful FLOP/s as a fraction of the
same child's torch.mm rate, and the median and spread of the per-round ratios B / A — a ratio
holds when the shared machine's speed drifts between rounds.

    python benchmarks/positional_kernel_ab.py --tree /tmp/before --tree . --rounds 5
    python benchmarks/positional_kernel_ab.py --tree .            # one build: times and %mm
    python benchmarks/positional_kernel_ab.py --tree /tmp/before --tree . --bits

--bits compares the two builds' outputs instead, bit for bit: the content and positional ops,
forward and backward, at every level this CPU runs, in fp32, bf16, fp16 and fp64, on border and
odd shapes of both positional methods, one input holding a NaN — the check that a change meant
to keep every result (a faster store, a new layout) does; the exit status is 1 when any differs.

Useful FLOP: lambda_kernels.bench.providers.flops_positional (the one definition).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

CASES = {
    # label: (Case keyword arguments)
    "seed-local": dict(batch=1, dim=32, height=64, width=64, dim_k=16, heads=4, dim_u=4, r=23),
    "56x56/128 r=23": dict(batch=2, dim=128, height=56, width=56, dim_k=16, heads=4, dim_u=1,
                           r=23),
    "28x28/256 r=9": dict(batch=2, dim=256, height=28, width=28, dim_k=16, heads=4, dim_u=1,
                          r=9),
    "14x14/512 r=9": dict(batch=2, dim=512, height=14, width=14, dim_k=16, heads=4, dim_u=1,
                          r=9),
}
DEFAULT_ROWS = ("avx512_bf16:bfloat16", "avx512:float32", "avx2:float32")


def child(args) -> None:
    import torch

    from lambda_kernels import use_cpu_isa
    from lambda_kernels.bench.op_shapes import case_shape, op_inputs
    from lambda_kernels.bench.presets import Case
    from lambda_kernels.bench.providers import flops_positional

    torch.set_num_threads(args.threads)
    ops = torch.ops.lambda_kernels

    def best_time(fn, repeats):
        # the fastest of a few calls: on a shared machine the slower ones measure the neighbours
        fn()
        samples = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            samples.append(time.perf_counter() - t0)
        return min(samples)

    g = torch.Generator().manual_seed(0)
    a = torch.randn(1024, 1024, generator=g)
    b = torch.randn(1024, 1024, generator=g)
    mm = 2.0 * 1024 ** 3 / best_time(lambda: torch.mm(a, b), 5)
    out = {"mm_flops": mm, "rows": {}}
    for row in args.rows:
        level, dtype_name = row.split(":")
        dtype = getattr(torch, dtype_name)
        for label in args.cases:
            case = Case(**CASES[label], dtype=dtype_name, label=label)
            q, _, values, table, lam = op_inputs(case_shape(case), dtype, "cpu", seed=2)
            bsz, h, _, _, v, hh, ww = case_shape(case)[:7]
            dy = torch.randn(bsz, h, v, hh, ww, generator=torch.Generator().manual_seed(3)).to(
                dtype)
            with use_cpu_isa(level):
                for direction in args.directions:
                    if direction == "fwd":
                        fn = lambda: ops.lambda_output(q, values, table, lam)  # noqa: E731
                        flop = flops_positional(case)
                    else:
                        fn = lambda: ops.lambda_output_backward(  # noqa: E731
                            dy, q, values, table, lam)
                        flop = flops_positional(case, backward=True)
                    t = best_time(fn, args.repeats)
                    out["rows"][f"{row} | {label} | {direction}"] = {"s": t, "flop": flop}
    print(json.dumps(out))


# Op shapes (B, h, k, u, v, H, W, Rh, Rw) of --bits: one vector or less per row, partial
# vectors, r = 1, the spectral seed shape and a smaller one; case 4 gets a NaN in q
BIT_CASES = [(2, 4, 16, 1, 32, 14, 14, 9, 9), (1, 4, 16, 4, 8, 64, 64, 23, 23),
             (1, 2, 8, 1, 16, 5, 37, 7, 7), (2, 4, 16, 1, 32, 20, 20, 1, 1),
             (1, 4, 16, 1, 128, 9, 33, 5, 5), (1, 4, 16, 4, 8, 40, 40, 23, 23)]


def child_outputs(path: str) -> None:
    """Every op's outputs on BIT_CASES at every level this CPU runs, saved to `path`."""
    import torch

    from lambda_kernels import cpu_isa_levels, use_cpu_isa
    from lambda_kernels.bench.op_shapes import op_inputs
    ops = torch.ops.lambda_kernels
    results = {}
    for level in [name for name, why_not in cpu_isa_levels().items() if why_not is None]:
        for dtype in (torch.float32, torch.bfloat16, torch.float16, torch.float64):
            for i, shape in enumerate(BIT_CASES):
                q, keys, values, table, lam = op_inputs(shape, dtype, "cpu", seed=i)
                g = torch.Generator().manual_seed(100 + i)
                if i == 4:
                    q[0, 0, 0, 0, 0] = float("nan")
                with use_cpu_isa(level):
                    y = ops.lambda_output(q, values, table, lam)
                    dy = torch.randn(y.shape, generator=g).to(dtype)
                    lam_c, lse = ops.content_lambda(keys, values)
                    d_lam = torch.randn(lam_c.shape, generator=g).to(lam_c.dtype)
                    results[f"{level} {dtype} case {i}"] = [
                        y, *ops.lambda_output_backward(dy, q, values, table, lam), lam_c, lse,
                        *ops.content_lambda_backward(d_lam, keys, values, lse)]
    torch.save(results, path)


def compare_bits(trees: list[str]) -> None:
    import tempfile

    import torch
    with tempfile.TemporaryDirectory() as folder:
        saved = []
        for i, tree in enumerate(trees):
            path = os.path.join(folder, f"{i}.pt")
            env = dict(os.environ, PYTHONPATH=os.path.abspath(tree))
            subprocess.run([sys.executable, os.path.abspath(__file__), "--child-outputs", path],
                           env=env, cwd="/", check=True)
            saved.append(torch.load(path))
    a, b = saved
    if a.keys() != b.keys():
        raise SystemExit(f"the builds ran different levels: {sorted(a)} vs {sorted(b)}")
    differ = []
    for key in a:
        for j, (x, y) in enumerate(zip(a[key], b[key])):
            ints = {2: torch.int16, 4: torch.int32, 8: torch.int64}[x.element_size()]
            if x.shape != y.shape or x.dtype != y.dtype or not torch.equal(x.view(ints),
                                                                            y.view(ints)):
                differ.append(f"{key} output {j}")
    total = sum(len(outputs) for outputs in a.values())
    levels = sorted({key.split()[0] for key in a})
    print(f"levels {', '.join(levels)}: {total - len(differ)} of {total} outputs bit-identical")
    for line in differ:
        print("differs:", line)
    if differ:
        raise SystemExit(1)


def run_child(tree: str, argv: list[str]) -> dict:
    env = dict(os.environ, PYTHONPATH=os.path.abspath(tree))
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", *argv],
                          env=env, cwd="/", capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tree", action="append", help="directory holding lambda_kernels (1 or 2)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--repeats", type=int, default=5, help="calls per child and row (fastest)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rows", nargs="+", default=list(DEFAULT_ROWS), help="level:dtype")
    p.add_argument("--cases", nargs="+", default=["seed-local"], choices=list(CASES))
    p.add_argument("--directions", nargs="+", default=["fwd", "bwd"], choices=["fwd", "bwd"])
    p.add_argument("--bits", action="store_true",
                   help="compare the two trees' outputs bit for bit instead of timing them")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--child-outputs", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args)
        return
    if args.child_outputs:
        child_outputs(args.child_outputs)
        return
    trees = args.tree or ["."]
    if args.bits:
        if len(trees) != 2:
            p.error("--bits compares two trees")
        compare_bits(trees)
        return
    argv = ["--repeats", str(args.repeats), "--threads", str(args.threads), "--rows", *args.rows,
            "--cases", *args.cases, "--directions", *args.directions]
    results: list[list[dict]] = [[] for _ in trees]
    for r in range(args.rounds):
        order = list(range(len(trees)))
        if r % 2:
            order.reverse()
        for i in order:
            results[i].append(run_child(trees[i], argv))
        print(f"round {r + 1}/{args.rounds} done (load average {os.getloadavg()[0]:.2f})",
              file=sys.stderr)
    names = "ABCDEFGH"
    print(f"load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    for i, tree in enumerate(trees):
        mm = statistics.median(res["mm_flops"] for res in results[i])
        print(f"{names[i]} = {tree}: torch.mm fp32 1024² median {mm / 1e9:.1f} GFLOP/s")
    header = "| level:dtype | case | dir | " + " | ".join(
        f"{names[i]} ms | {names[i]} %mm" for i in range(len(trees)))
    if len(trees) == 2:
        header += " | B/A time, median [min-max] |"
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for key in results[0][0]["rows"]:
        cells = key.split(" | ")
        for i in range(len(trees)):
            t = statistics.median(res["rows"][key]["s"] for res in results[i])
            frac = statistics.median(res["rows"][key]["flop"] / res["rows"][key]["s"]
                                     / res["mm_flops"] for res in results[i])
            cells += [f"{t * 1e3:.1f}", f"{100 * frac:.0f}%"]
        if len(trees) == 2:
            ratios = sorted(b["rows"][key]["s"] / a["rows"][key]["s"]
                            for a, b in zip(results[0], results[1]))
            cells.append(f"{statistics.median(ratios):.2f} [{ratios[0]:.2f}-{ratios[-1]:.2f}]")
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
