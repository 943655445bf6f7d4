"""lambda-bench: benchmark CLI of lambda_kernels (`lambda-bench` / `python -m lambda_kernels.bench`).

Modules: presets (layer cases), providers (what is measured, FLOP formulas), measure (timing,
memory, matmul rate, the positional kernel alone), runner (layer rows), models (`lambda-bench
train`: whole-model throughput), targets (pass/fail checks of a run), report (tables, JSON,
CSV, markdown, plots), cli (argument parsing).
"""
from .cli import main, run_cli
from .presets import PRESETS, Case
from .providers import REGISTRY, Provider, register

__all__ = ["main", "run_cli", "PRESETS", "Case", "REGISTRY", "Provider", "register"]
