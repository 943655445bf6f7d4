"""Times plain first-order training of one lambda layer (forward + backward), the path whose
speed the autograd registrations must not change: seed-local shape (B=1, 32→32, 64×64, k=16,
h=4, u=4, r=23), float32, `--threads` threads, median of `--repeats` steps after 3 warm-up
steps. Compare two checkouts by running it alternately under each (PYTHONPATH=<checkout>)."""
import argparse
import statistics
import time

import torch

import lambda_kernels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    layer = lambda_kernels.LambdaLayer(32, dim_k=16, r=23, heads=4, dim_u=4)
    x = torch.randn(1, 32, 64, 64, requires_grad=True)

    def step():
        layer(x).sum().backward()

    for _ in range(3):
        step()
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    print(f"{lambda_kernels.__file__}: fwd+bwd median {statistics.median(times) * 1e3:.2f} ms "
          f"({layer.last_backend} {layer.last_backend_variant}, {args.threads} threads)")


if __name__ == "__main__":
    main()
