"""Developer tools on top of the library: they import lambda_kernels (and the benchmark
registry, lambda_kernels.bench.presets); nothing in the library imports them.

    python -m lambda_kernels.tools.compile_check     # Triton kernels compiled to cubin, no GPU
    python -m lambda_kernels.tools.autotune_report   # the Triton autotuner's choices on a GPU

Both read the benchmark cases (the one registry of shapes, lambda_kernels/bench/presets.py) as
op shapes through lambda_kernels/bench/op_shapes.py, and share launches.py: `op_launches`, the
Triton kernel launches of the four ops for a shape.
"""
