"""A small forward + backward of the lambda op on CUDA through one back end, for
`compute-sanitizer --tool memcheck` (see scripts/gpu_check.sh). Odd sizes, a window larger than
the image, u > 1 and a bias, rows wider than one position tile with a partial last tile, and v
wider than one values tile, so every masked tile edge is exercised.

    python scripts/sanitizer_case.py --backend triton|cuda [--dtype float32|float16|bfloat16]
"""
from __future__ import annotations

import argparse
import os
import sys

# Kernels run at their default tile configurations: autotuning would time every configuration
# under the sanitizer, which is slow and measures nothing.
os.environ.setdefault("LAMBDA_KERNELS_TRITON_AUTOTUNE", "0")

import torch  # noqa: E402

from lambda_kernels import lambda_op, reference  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backend", required=True)
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype)
    gen = torch.Generator().manual_seed(0)

    def rand(*shape, scale=1.0):
        t = torch.randn(*shape, generator=gen) * scale
        return t.to(device="cuda", dtype=dtype).requires_grad_(True)

    b, h, k, u, v, hh, ww, rh, rw = 2, 3, 5, 2, 70, 5, 37, 11, 5
    q, keys, values = rand(b, h, k, hh, ww), rand(b, u, k, hh, ww), rand(b, u, v, hh, ww)
    table, bias = rand(rh, rw, k, u, scale=0.5), rand(k)
    inputs = (q, keys, values, table, bias)
    y = lambda_op(*inputs, backend=args.backend)
    dy = torch.randn(y.shape, generator=gen).to(y)
    grads = torch.autograd.grad(y, inputs, dy)
    torch.cuda.synchronize()

    ref_inputs = [t.detach().double().requires_grad_(True) for t in inputs]
    y_ref = reference.lambda_reference(*ref_inputs)
    grads_ref = torch.autograd.grad(y_ref, ref_inputs, dy.double())
    worst = max((a.double() - e).abs().max().item() / max(1.0, e.abs().max().item())
                for a, e in zip((y, *grads), (y_ref, *grads_ref)))
    print(f"backend={args.backend} dtype={args.dtype} worst scaled error {worst:.2e}")
    return 0 if worst < (1e-4 if dtype == torch.float32 else 5e-2) else 1


if __name__ == "__main__":
    sys.exit(main())
