"""Registry of back ends for the lambda op.

A back end is either *fused* (four torch.library ops with the schemas of csrc/ops.cpp:
content_lambda, content_lambda_backward, lambda_output, lambda_output_backward; functional.py
calls the two forward ops, and _op_registrations.register_autograd, run once for the ops'
namespace, gives all four their derivatives, written with the backward ops) or
*differentiable* (one `forward` that autograd differentiates, like the einsum reference). How to
add one: docs/design.md, "How to add a back end". Each has a
`can_run(device_type, dtype)` that returns None when it can run inputs of that device type and
dtype, or the reason it cannot ("not compiled", "no GPU", "dtype unsupported", "triton
missing", ...; a `BadSetting` when the reason is a bad knob, which `auto` reports), and a
`variant()` naming what would run (e.g. the CPU instruction set), or None.

Back-end modules register themselves on import (see _BUILTIN below). `auto` tries, in priority
order, the back ends whose `auto_devices` include the input's device type.
"""
from __future__ import annotations

import contextlib
import importlib
from dataclasses import dataclass, field
from typing import Any, Callable, NamedTuple, Optional

import torch

Reason = Optional[str]


class BadSetting(str):
    """A reason that is the user's own setting (an environment variable naming an unknown or
    unsupported value): `auto` raises it rather than fall back to a slower back end, since the
    knob documents an error for it."""


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


# ------------------------------------------------------------------ first-use probe on a device
# A back end whose kernels are compiled for the device at run time (Triton), or shipped as
# machine code for some architectures only (the CUDA extension), can pass can_run's static checks
# and still fail on a device: a compile error on an untested architecture or Triton version, or
# no kernel image for the GPU. probe_reason runs the four ops once on a tiny input per (back end,
# device, dtype); a failure becomes that back end's can_run reason, so `auto` moves on to the next
# back end, with one warning naming the error.
_PROBES: dict[tuple, Reason] = {}
PROBE_FAILURE = "kernels failed on "  # how a probe's reason starts


def _probe_inputs(device, dtype):
    # (B, h, k, H, W) = (1, 1, 2, 3, 3), u = 1, v = 2, a 3x3 table: every kernel runs, masks on.
    gen = torch.Generator().manual_seed(0)

    def rand(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float32).to(device, dtype)

    return rand(1, 1, 2, 3, 3), rand(1, 1, 2, 3, 3), rand(1, 1, 2, 3, 3), rand(3, 3, 2, 1)


def _run_probe(ops: FusedOps, device, dtype) -> None:
    q, keys, values, table = _probe_inputs(device, dtype)
    with torch.no_grad():
        lam, lse = ops.content_lambda(keys, values)
        ops.content_lambda_backward(lam, keys, values, lse)
        y = ops.lambda_output(q, values, table, lam)
        ops.lambda_output_backward(y, q, values, table, lam)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _tracing() -> bool:
    """Inside torch.compile/export tracing (or under fake tensors) nothing real can run: the
    probe waits for an eager call."""
    compiler = getattr(torch, "compiler", None)
    if compiler is not None and getattr(compiler, "is_compiling", lambda: False)():
        return True
    detect = getattr(getattr(torch, "_guards", None), "detect_fake_mode", None)
    return detect is not None and detect() is not None


def describe_failure(exc: BaseException) -> str:
    """`Type: first line of the message` (compile errors carry pages of IR after it)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"[:300]


def probe_reason(backend: Backend, device_type: str, dtype: torch.dtype,
                 explain: Callable[[BaseException], str] = describe_failure,
                 setting: Callable[[], Any] = contextlib.nullcontext) -> Reason:
    """None if `backend`'s ops ran on the current `device_type` device in `dtype` (tried once per
    process, inside the context `setting()`), else why not, with a one-line warning the first
    time."""
    if device_type == "cuda":
        device = torch.device("cuda", torch.cuda.current_device())
    else:
        device = torch.device(device_type)
    key = (backend.name, str(device), dtype)
    if key in _PROBES:
        return _PROBES[key]
    if _tracing():
        return None
    try:
        with setting():
            _run_probe(backend.ops(), device, dtype)
        reason = None
    except Exception as exc:  # any failure means these kernels do not run on this device
        where = device if device.type != "cuda" else (
            f"{device} ({torch.cuda.get_device_name(device)}, "
            f"sm_{''.join(map(str, torch.cuda.get_device_capability(device)))})")
        reason = f"{PROBE_FAILURE}{where} in {dtype}: {explain(exc)}"
        import warnings
        warnings.warn(f"lambda_kernels: the {backend.name!r} back end's {reason}; 'auto' uses "
                      "the next back end", RuntimeWarning, stacklevel=3)
    _PROBES[key] = reason
    return reason
