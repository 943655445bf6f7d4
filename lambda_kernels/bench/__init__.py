"""lambda-bench: benchmark CLI of lambda_kernels (`lambda-bench` / `python -m lambda_kernels.bench`).

Modules: presets (layer cases: the one registry of benchmark shapes, which the developer tools
in lambda_kernels.tools also read), providers (what is measured), measure (timing, memory,
matmul rate, the positional kernel alone), runner (layer rows), models (`lambda-bench train`:
whole-model throughput), targets (pass/fail checks of a run), report (tables, JSON, CSV,
markdown, plots), cli (argument parsing).

Importing this package imports none of them: `from lambda_kernels.bench.presets import PRESETS`
loads the case registry alone; the names below load their module on first use.
"""
import importlib

_EXPORTS = {"main": "cli", "run_cli": "cli", "PRESETS": "presets", "Case": "presets",
            "REGISTRY": "providers", "Provider": "providers", "register": "providers"}

__all__ = list(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
