"""Compile every Triton kernel of this package ahead of time for a GPU architecture, without a
GPU (Triton ships ptxas): catches type errors, tl.dot shape constraints and register spills
before a GPU run. Must run without TRITON_INTERPRET.

    python -m lambda_kernels.triton.compile_check [--arch 90] [--dtypes fp32 fp16 bf16]
"""
from __future__ import annotations

import argparse
import os
import sys

# Kernels' float32-only buffers (statistics, row dots, partial sums).
_FLOAT32_BUFFERS = {"stats_ptr", "rowdot_ptr", "partial_ptr"}


def _kernels():
    from . import content_lambda, lambda_output
    return [
        content_lambda.content_lambda_fwd_kernel,
        content_lambda.content_lambda_bwd_rowdot_kernel,
        content_lambda.content_lambda_bwd_kernel,
        lambda_output.lambda_output_fwd_kernel,
        lambda_output.lambda_output_bwd_dq_kernel,
        lambda_output.lambda_output_bwd_dvalues_kernel,
        lambda_output.lambda_output_bwd_dlam_partial_kernel,
        lambda_output.lambda_output_bwd_dtable_partial_kernel,
    ]


def compile_all(arch: int = 90, dtypes=("fp32", "fp16", "bf16"), block_k=16, block_v=64,
                block_n=64, num_warps=4, verbose=True):
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from triton.runtime.autotuner import Autotuner

    target = GPUTarget("cuda", arch, 32)
    results = []
    for dtype in dtypes:
        constants = dict(BLOCK_K=block_k, BLOCK_V=block_v, BLOCK_N=block_n, USE_DOT=True,
                         PRECISION="ieee" if dtype == "fp32" else "tf32")
        for kernel in _kernels():
            fn = kernel.fn if isinstance(kernel, Autotuner) else kernel
            signature, constexprs = {}, {}
            for param in fn.params:
                name = param.name
                if param.is_constexpr:
                    signature[name] = "constexpr"
                    constexprs[name] = constants[name]
                elif name.endswith("_ptr"):
                    signature[name] = "*fp32" if name in _FLOAT32_BUFFERS else f"*{dtype}"
                else:
                    signature[name] = "i32"
            compiled = triton.compile(ASTSource(fn=fn, signature=signature, constexprs=constexprs),
                                      target=target, options={"num_warps": num_warps})
            meta = compiled.metadata
            row = (fn.__name__, dtype, getattr(meta, "shared", None))
            results.append(row)
            if verbose:
                print(f"ok  sm_{arch} {dtype:4s} {fn.__name__:42s} shared={row[2]}")
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--arch", type=int, default=90)
    parser.add_argument("--dtypes", nargs="+", default=["fp32", "fp16", "bf16"])
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        print("unset TRITON_INTERPRET: the interpreter does not compile", file=sys.stderr)
        return 2
    compile_all(args.arch, args.dtypes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
