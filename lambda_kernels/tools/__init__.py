"""Developer tools on top of the library: they import lambda_kernels (and the benchmark
registry, lambda_kernels.bench.presets); nothing in the library imports them.

    python -m lambda_kernels.tools.compile_check     # Triton kernels compiled to cubin, no GPU
    python -m lambda_kernels.tools.autotune_report   # the Triton autotuner's choices on a GPU

cases.py holds what both share: the op shapes of the benchmark cases (one registry,
lambda_kernels/bench/presets.py), seeded or meta inputs of the lambda op, and `op_launches`,
the Triton kernel launches of the four ops for a shape.
"""
