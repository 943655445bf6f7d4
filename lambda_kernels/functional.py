"""The lambda op: input validation, back-end choice, and the autograd.Function that glues the
four fused ops of a back end (see backends/__init__.py).

    y = lambda_op(q, keys, values, pos_table, bias=None, backend="auto")

    q          (B, h, k, H, W)      queries, head-major
    keys       (B, u, k, H, W)      softmax is taken over the H·W positions inside the op
    values     (B, u, v, H, W)
    pos_table  (Rh, Rw, k, u)       odd Rh, Rw; entry (a, c) weights the value at offset
                                    (a - Rh//2, c - Rw//2) from the query
    bias       (k,) or None         added to the lambda (Conv3d bias of lambda-networks)
    y          (B, h, v, H, W)

Back-end choice: the `backend` argument ("auto", "cpu", "cuda", "triton", "reference"), else
the LAMBDA_KERNELS_BACKEND environment variable, else "auto": the first back end, in priority
order for the input's device, whose can_run() accepts the inputs. An explicit back end that
cannot run raises BackendUnavailableError with its reason.
"""
from __future__ import annotations

import os
from typing import Optional

import torch

from . import backends

ENV_BACKEND = "LAMBDA_KERNELS_BACKEND"


class BackendUnavailableError(RuntimeError):
    """An explicitly requested back end cannot run the given inputs (the message says why)."""


def _shape(t: torch.Tensor) -> str:
    return "(" + ", ".join(str(s) for s in t.shape) + ")"


def validate_inputs(q, keys, values, pos_table, bias=None) -> None:
    """Raise TypeError/ValueError naming the argument and the expected shape."""
    named = [("q", q), ("keys", keys), ("values", values), ("pos_table", pos_table)]
    if bias is not None:
        named.append(("bias", bias))
    for name, t in named:
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if not t.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got dtype {t.dtype}")
    expected_ndim = {"q": (5, "(B, h, k, H, W)"), "keys": (5, "(B, u, k, H, W)"),
                     "values": (5, "(B, u, v, H, W)"), "pos_table": (4, "(Rh, Rw, k, u)"),
                     "bias": (1, "(k,)")}
    for name, t in named:
        ndim, layout = expected_ndim[name]
        if t.dim() != ndim:
            raise ValueError(f"{name} must have {ndim} dimensions {layout}, got shape {_shape(t)}")
    for name, t in named[1:]:
        if t.dtype != q.dtype:
            raise TypeError(f"{name} has dtype {t.dtype} but q has {q.dtype}: all inputs must "
                            "share one floating dtype")
        if t.device != q.device:
            raise ValueError(f"{name} is on {t.device} but q is on {q.device}: all inputs must "
                             "be on one device")
    b, h, k, hh, ww = q.shape
    _, u, _, _, _ = keys.shape
    if hh < 1 or ww < 1:
        raise ValueError(f"q must have positive H and W, got shape {_shape(q)}")
    if h < 1 or k < 1:
        raise ValueError(f"q must have at least one head and key channel, got shape {_shape(q)}")
    if u < 1:
        raise ValueError(f"keys must have u >= 1, got shape {_shape(keys)}")
    if tuple(keys.shape) != (b, u, k, hh, ww):
        raise ValueError(f"keys must have shape (B, u, k, H, W) = ({b}, u, {k}, {hh}, {ww}) to "
                         f"match q {_shape(q)}, got {_shape(keys)}")
    v = values.shape[2]
    if tuple(values.shape) != (b, u, v, hh, ww) or v < 1:
        raise ValueError(f"values must have shape (B, u, v, H, W) = ({b}, {u}, v, {hh}, {ww}) "
                         f"with v >= 1 to match q and keys, got {_shape(values)}")
    rh, rw = pos_table.shape[:2]
    if rh < 1 or rw < 1 or rh % 2 == 0 or rw % 2 == 0 or tuple(pos_table.shape[2:]) != (k, u):
        raise ValueError(f"pos_table must have shape (Rh, Rw, k, u) = (odd, odd, {k}, {u}), "
                         f"got {_shape(pos_table)}")
    if bias is not None and tuple(bias.shape) != (k,):
        raise ValueError(f"bias must have shape (k,) = ({k},), got {_shape(bias)}")


def _requested_backend(backend: str) -> str:
    if not isinstance(backend, str):
        raise TypeError(f"backend must be a string, got {type(backend).__name__}")
    if backend == "auto":
        backend = os.environ.get(ENV_BACKEND, "auto") or "auto"
    return backend


def select_backend(q, keys, values, pos_table, bias=None, backend: str = "auto") -> str:
    """Name of the back end that lambda_op would run for these inputs (raises like lambda_op)."""
    name = _requested_backend(backend)
    if name != "auto":
        chosen = backends.get(name)
        reason = chosen.can_run(q, keys, values, pos_table, bias)
        if reason is not None:
            raise BackendUnavailableError(f"backend {name!r} cannot run these inputs: {reason}")
        return name
    reasons = []
    for candidate in backends.auto_candidates(q.device.type):
        reason = candidate.can_run(q, keys, values, pos_table, bias)
        if reason is None:
            return candidate.name
        reasons.append(f"{candidate.name}: {reason}")
    raise BackendUnavailableError(f"no back end can run on {q.device}: " + "; ".join(reasons))


def available_backends(device: str | torch.device = "cpu",
                       dtype: torch.dtype = torch.float32) -> dict[str, Optional[str]]:
    """For every registered back end: None if it runs on `device`/`dtype`, else why not."""
    shapes = dict(q=(1, 1, 1, 1, 1), keys=(1, 1, 1, 1, 1), values=(1, 1, 1, 1, 1),
                  pos_table=(1, 1, 1, 1))
    probe = {name: torch.zeros(shape, device=device, dtype=dtype) for name, shape in shapes.items()}
    return {name: backends.get(name).can_run(**probe, bias=None) for name in backends.names()}


class LambdaFunction(torch.autograd.Function):
    """y = lambda_output(q, values, pos_table, content_lambda(keys, values) + bias) through one
    fused back end; backward runs its two backward ops and sums the two value gradients."""

    @staticmethod
    def forward(ctx, q, keys, values, pos_table, bias, backend_name: str):
        ops = backends.get(backend_name).ops()
        lam_c, stats = ops.content_lambda(keys, values)
        lam = lam_c if bias is None else lam_c + bias.view(1, -1, 1)
        y = ops.lambda_output(q, values, pos_table, lam)
        ctx.save_for_backward(q, keys, values, pos_table, lam, stats)
        ctx.backend_name = backend_name
        ctx.has_bias = bias is not None
        return y

    @staticmethod
    def backward(ctx, dy):
        q, keys, values, pos_table, lam, stats = ctx.saved_tensors
        ops = backends.get(ctx.backend_name).ops()
        d_q, d_values_pos, d_pos_table, d_lam = ops.lambda_output_backward(
            dy.contiguous(), q, values, pos_table, lam)
        d_keys, d_values_content = ops.content_lambda_backward(d_lam, keys, values, stats)
        d_bias = d_lam.sum(dim=(0, 2)) if ctx.has_bias else None
        return d_q, d_keys, d_values_pos + d_values_content, d_pos_table, d_bias, None


def lambda_op(q, keys, values, pos_table, bias=None, *, backend: str = "auto") -> torch.Tensor:
    """The lambda op y (B, h, v, H, W); see the module docstring for shapes and back ends."""
    validate_inputs(q, keys, values, pos_table, bias)
    name = select_backend(q, keys, values, pos_table, bias, backend)
    return run_backend(name, q, keys, values, pos_table, bias)


def run_backend(name: str, q, keys, values, pos_table, bias=None) -> torch.Tensor:
    """Run an already selected back end on validated inputs."""
    chosen = backends.get(name)
    if q.shape[0] == 0 or chosen.ops is None:
        forward = chosen.forward if chosen.ops is None else backends.get("reference").forward
        return forward(q, keys, values, pos_table, bias)
    return LambdaFunction.apply(q, keys, values, pos_table, bias, name)
