"""lambda-bench: benchmark CLI of lambda_kernels (`lambda-bench` / `python -m lambda_kernels.bench`).

Modules: presets (cases), providers (what is measured, FLOP formulas), measure (timing,
memory, matmul rate), runner (rows), report (table, JSON, CSV, plot), cli (argument parsing).
"""
from .cli import main, run_cli
from .presets import PRESETS, Case
from .providers import REGISTRY, Provider, register

__all__ = ["main", "run_cli", "PRESETS", "Case", "REGISTRY", "Provider", "register"]
