"""Registry of back ends for the lambda op.

A back end is either *fused* (four ops: content_lambda, content_lambda_backward, lambda_output,
lambda_output_backward, glued by one autograd.Function in functional.py) or *differentiable*
(one `forward` that autograd differentiates, like the einsum reference). Each has a
`can_run(device_type, dtype)` that returns None when it can run inputs of that device type and
dtype, or the reason it cannot ("not compiled", "no GPU", "dtype unsupported", "triton
missing", ...), and a `variant()` naming what would run (e.g. the CPU instruction set), or None.

Back-end modules register themselves on import (see _BUILTIN below). `auto` tries, in priority
order, the back ends whose `auto_devices` include the input's device type.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Callable, NamedTuple, Optional

import torch

Reason = Optional[str]


class FusedOps(NamedTuple):
    """The four ops of a fused back end, with the schemas of csrc/ops.cpp."""

    content_lambda: Callable
    content_lambda_backward: Callable
    lambda_output: Callable
    lambda_output_backward: Callable
    # torch.ops namespace of the four ops (their derivatives: _op_registrations)
    namespace: str = "lambda_kernels"


@dataclass(frozen=True)
class Backend:
    name: str
    description: str
    priority: int  # lower runs first under `auto`
    auto_devices: tuple[str, ...]  # device types where `auto` may choose it
    can_run: Callable[[str, torch.dtype], Reason]
    ops: Optional[Callable[[], FusedOps]] = None  # fused: returns the ops (loaded lazily)
    forward: Optional[Callable[..., torch.Tensor]] = None  # differentiable back ends
    dtypes: tuple[torch.dtype, ...] = field(
        default=(torch.float16, torch.bfloat16, torch.float32, torch.float64))
    variant: Callable[[], Optional[str]] = lambda: None


_REGISTRY: dict[str, Backend] = {}
# Modules that register the built-in back ends, imported lazily on first registry access.
_BUILTIN = ("reference", "cpu", "cuda", "triton")
_loaded = False


def register(backend: Backend) -> None:
    if backend.ops is None and backend.forward is None:
        raise ValueError(f"back end {backend.name!r} needs ops or forward")
    _REGISTRY[backend.name] = backend


def _ensure_loaded() -> None:
    global _loaded
    if not _loaded:
        _loaded = True
        for module in _BUILTIN:
            importlib.import_module(f"{__name__}.{module}")


def names() -> list[str]:
    _ensure_loaded()
    return [b.name for b in sorted(_REGISTRY.values(), key=lambda b: b.priority)]


def get(name: str) -> Backend:
    _ensure_loaded()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"backend must be 'auto' or one of {names()}, got {name!r}") from None


def auto_candidates(device_type: str) -> list[Backend]:
    _ensure_loaded()
    return [b for b in sorted(_REGISTRY.values(), key=lambda b: b.priority)
            if device_type in b.auto_devices]


def dtype_reason(backend: Backend, dtype: torch.dtype) -> Reason:
    if dtype not in backend.dtypes:
        return f"dtype {dtype} unsupported (supports {', '.join(str(d) for d in backend.dtypes)})"
    return None
