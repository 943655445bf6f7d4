"""The lambda op: input validation, back-end choice, and how a back end's ops are composed.

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

The choice depends only on (requested name, environment, device type, dtype), so under
torch.compile it is made once while tracing and folded into the graph as a constant: loading
the extension and probing back ends never run inside a compiled region, and a layer compiles
with `fullgraph=True`. (Changing LAMBDA_KERNELS_BACKEND afterwards does not recompile.)

Autograd: a fused back end runs its forward ops y = lambda_output(q, values, E,
content_lambda(keys, values) + bias); the derivatives are the autograd formulas registered on
those ops (_op_registrations.register_autograd), the one place where the backward ops are glued
in, for the layer and for direct calls of torch.ops.* alike. Every gradient leaving the op is
dense and contiguous, whatever the back end (see _DenseGradient).
"""
from __future__ import annotations

import os
import sys
from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F

from . import _op_registrations, backends

ENV_BACKEND = "LAMBDA_KERNELS_BACKEND"


class BackendUnavailableError(RuntimeError):
    """An explicitly requested back end cannot run the given inputs, or a back end's own knob
    (LAMBDA_KERNELS_CPU_ISA) names a setting this machine cannot run (the message says why)."""


def _shape(t: torch.Tensor) -> str:
    return "(" + ", ".join(str(s) for s in t.shape) + ")"


def _check_tensors(named, expected_ndim) -> None:
    """Every (name, tensor) of `named` (None entries skipped) is a floating tensor with the
    number of dimensions expected_ndim[name] = (ndim, layout), of the first one's dtype and
    device."""
    named = [(name, t) for name, t in named if t is not None]
    for name, t in named:
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if not t.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got dtype {t.dtype}")
    for name, t in named:
        ndim, layout = expected_ndim[name]
        if t.dim() != ndim:
            raise ValueError(f"{name} must have {ndim} dimensions {layout}, got shape {_shape(t)}")
    first_name, first = named[0]
    for name, t in named[1:]:
        if t.dtype != first.dtype:
            raise TypeError(f"{name} has dtype {t.dtype} but {first_name} has {first.dtype}: all "
                            "inputs must share one floating dtype")
        if t.device != first.device:
            raise ValueError(f"{name} is on {t.device} but {first_name} is on {first.device}: "
                             "all inputs must be on one device")


def validate_inputs(q, keys, values, pos_table, bias=None) -> None:
    """Raise TypeError/ValueError naming the argument and the expected shape."""
    _check_tensors([("q", q), ("keys", keys), ("values", values), ("pos_table", pos_table),
                    ("bias", bias)],
                   {"q": (5, "(B, h, k, H, W)"), "keys": (5, "(B, u, k, H, W)"),
                    "values": (5, "(B, u, v, H, W)"), "pos_table": (4, "(Rh, Rw, k, u)"),
                    "bias": (1, "(k,)")})
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


class Selection(NamedTuple):
    """The back end chosen for some inputs, and the variant of it that runs (e.g. the CPU
    instruction set of the `cpu` back end), or None when it has no variants."""

    backend: str
    variant: Optional[str]


def _constant_while_tracing(fn):
    """torch.compile evaluates `fn` once while tracing and uses its result as a constant (its
    arguments must be Python constants): it loads the extension and takes locks, which
    Dynamo cannot trace."""
    try:
        return torch._dynamo.assume_constant_result(fn)
    except AttributeError:  # a torch without Dynamo's decorator: plain function
        return fn


@_constant_while_tracing
def _select(requested: str, device_type: str, dtype: torch.dtype) -> Selection:
    # Probing back ends calls ops that return strings (the CPU level): made outside any
    # torch.jit.trace (which cannot record them) and any torch.export / make_fx tracing mode
    # (which would put them in the graph).
    from torch.utils._python_dispatch import _disable_current_modes

    tracing_state = torch._C._get_tracing_state()
    torch._C._set_tracing_state(None)
    try:
        with _disable_current_modes():
            return _select_untraced(requested, device_type, dtype)
    finally:
        torch._C._set_tracing_state(tracing_state)


def _select_untraced(requested: str, device_type: str, dtype: torch.dtype) -> Selection:
    name = requested
    if name == "auto":
        name = os.environ.get(ENV_BACKEND, "auto") or "auto"
    if name != "auto":
        chosen = backends.get(name)
        reason = chosen.can_run(device_type, dtype)
        if reason is not None:
            raise BackendUnavailableError(f"backend {name!r} cannot run these inputs: {reason}")
        return Selection(name, chosen.variant())
    reasons = []
    for candidate in backends.auto_candidates(device_type):
        reason = candidate.can_run(device_type, dtype)
        if reason is None:
            return Selection(candidate.name, candidate.variant())
        if isinstance(reason, backends.BadSetting):
            raise BackendUnavailableError(f"back end {candidate.name!r}: {reason}")
        reasons.append(f"{candidate.name}: {reason}")
    raise BackendUnavailableError(f"no back end can run on {device_type}: " + "; ".join(reasons))


def select(q: torch.Tensor, backend: str = "auto") -> Selection:
    """The back end (and its variant) that lambda_op runs for inputs like q."""
    if not isinstance(backend, str):
        raise TypeError(f"backend must be a string, got {type(backend).__name__}")
    return _select(backend, q.device.type, q.dtype)


def select_backend(q, keys, values, pos_table, bias=None, backend: str = "auto") -> str:
    """Name of the back end that lambda_op would run for these inputs (raises like lambda_op)."""
    return select(q, backend).backend


def available_backends(device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                       *, details: bool = False) -> dict:
    """For every registered back end: None if it runs on `device`/`dtype`, else why not.

    With details=True: {name: {"runs": bool, "reason": str | None, "variant": str | None}},
    where variant names what would run (the CPU instruction set of the `cpu` back end)."""
    device_type = torch.device(device).type
    status = {}
    for name in backends.names():
        backend = backends.get(name)
        reason = backend.can_run(device_type, dtype)
        if details:
            status[name] = {"runs": reason is None, "reason": reason,
                            "variant": backend.variant() if reason is None else None}
        else:
            status[name] = reason
    return status


class _DenseGradient(torch.autograd.Function):
    """Identity whose backward makes the gradient dense and contiguous.

    Autograd of einsum/conv (the reference back end) can hand back gradients with odd strides,
    e.g. (1, C, H, W) with strides (1, 1, W·C, C) at batch 1, and torch 2.14's CPU BatchNorm
    backward computes a wrong result for that layout. The fused back ends return contiguous
    gradients by construction."""

    @staticmethod
    def forward(x):
        return x.view_as(x)

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def backward(ctx, grad):
        return grad.contiguous()


class _DenseGradientEager(_DenseGradient):
    """The same in eager mode, with the jvp and vmap rule torch.func needs (torch.compile
    traces the plain one: Dynamo does not trace autograd.Functions that define jvp)."""

    generate_vmap_rule = True

    @staticmethod
    def jvp(ctx, tangent):
        return tangent


def _dense_gradients(*tensors):
    dense = _DenseGradient if torch.compiler.is_compiling() else _DenseGradientEager
    return [t if t is None or not t.requires_grad else dense.apply(t) for t in tensors]


def portable_graph_wanted() -> bool:
    """Whether a graph of standard operators is being recorded for another runtime (ONNX
    export, torch.jit.trace): our ops have no ONNX or TorchScript kernels, so lambda_op then
    records the reference formulas instead (docs/design.md, "Export")."""
    if torch.compiler.is_compiling() and not torch.compiler.is_exporting():
        return False  # torch.compile: our ops are recorded as they are
    if torch.jit.is_tracing():
        return True
    onnx = sys.modules.get("torch.onnx")  # not imported: not exporting (importing it is slow)
    return onnx is not None and onnx.is_in_onnx_export()


def _graph_is_traced() -> bool:
    """torch.compile / torch.export tracing: the ops are recorded as they are (their fake
    implementations and dispatcher Autograd kernels serve the tracer)."""
    return torch.compiler.is_compiling()


def run_backend(name: str, q, keys, values, pos_table, bias=None) -> torch.Tensor:
    """Run an already selected back end on validated inputs."""
    chosen = backends.get(name)
    if portable_graph_wanted():
        # Standard operators only (and no autograd.Function, which jit.trace cannot check).
        return backends.get("reference").forward(q, keys, values, pos_table, bias)
    if chosen.ops is None or q.shape[0] == 0:
        # A differentiable back end, or an empty batch (which the kernels need not handle):
        # plain autograd through the reference formulas.
        forward = chosen.forward if chosen.ops is None else backends.get("reference").forward
        return forward(*_dense_gradients(q, keys, values, pos_table, bias))
    ops = _fused_ops(chosen)
    return ops.lambda_output(q, values, pos_table, _lambda_with_bias(ops, keys, values, bias))


def _fused_ops(chosen: backends.Backend):
    """A fused back end's ops as lambda_op calls them. Eager: the ops' autograd.Functions,
    which torch.func transforms (jvp, grad, vmap, hessian) need at Python level; their
    derivatives are differentiable to any order. Traced (torch.compile/export): the ops."""
    ops = chosen.ops()
    return ops if _graph_is_traced() else _op_registrations.differentiable_ops(ops.namespace)


def _lambda_with_bias(ops, keys, values, bias):
    """Λ = λc + bias (B, k, v): the content lambda and the position table's bias."""
    lam_c, _ = ops.content_lambda(keys, values)
    return lam_c if bias is None else lam_c + bias.view(1, -1, 1)


def lambda_op(q, keys, values, pos_table, bias=None, *, backend: str = "auto") -> torch.Tensor:
    """The lambda op y (B, h, v, H, W); see the module docstring for shapes and back ends."""
    validate_inputs(q, keys, values, pos_table, bias)
    return run_backend(select(q, backend).backend, q, keys, values, pos_table, bias)


# ------------------------------------------------------------------------- 3-D (video, volumes)
#   y = lambda_op3d(q, keys, values, pos_table, bias=None, backend="auto")
#
#   q          (B, h, k, T, H, W)   keys (B, u, k, T, H, W), values (B, u, v, T, H, W)
#   pos_table  (Rt, Rh, Rw, k, u)   odd sizes; entry (a, b, c) weights the value at offset
#                                   (a - Rt//2, b - Rh//2, c - Rw//2); zero outside the volume
#   bias       (k,) or None
#   y          (B, h, v, T, H, W)   softmax over all T·H·W positions
#
# The fused back ends run it on their 2-D ops, so the 3-D op has their autograd (and whatever
# else is registered on those ops) and their memory rule:
# - content lambda: the 2-D content op on keys and values viewed as a (T·H, W) map (the
#   softmax and the contraction run over all positions either way);
# - positional lambda: for every temporal offset d of the table, the 2-D lambda_output over
#   frames t whose frame t + d exists, with the table's slice pos_table[d + Rt//2], summed over
#   d. Frames go time-major, (T, B, ...) folded to (T·B, ...), so the frames a tap reads are one
#   contiguous slice of q and of the values: no per-tap copies, no λp, no logits. The lambda
#   Λ = λc + bias enters through the centre tap (d = 0, every frame) only.


def validate_inputs3d(q, keys, values, pos_table, bias=None) -> None:
    """Raise TypeError/ValueError naming the argument and the expected shape (3-D op)."""
    _check_tensors([("q", q), ("keys", keys), ("values", values), ("pos_table", pos_table),
                    ("bias", bias)],
                   {"q": (6, "(B, h, k, T, H, W)"), "keys": (6, "(B, u, k, T, H, W)"),
                    "values": (6, "(B, u, v, T, H, W)"), "pos_table": (5, "(Rt, Rh, Rw, k, u)"),
                    "bias": (1, "(k,)")})
    b, h, k, tt, hh, ww = q.shape
    u = keys.shape[1]
    if tt < 1 or hh < 1 or ww < 1:
        raise ValueError(f"q must have positive T, H and W, got shape {_shape(q)}")
    if h < 1 or k < 1:
        raise ValueError(f"q must have at least one head and key channel, got shape {_shape(q)}")
    if u < 1:
        raise ValueError(f"keys must have u >= 1, got shape {_shape(keys)}")
    if tuple(keys.shape) != (b, u, k, tt, hh, ww):
        raise ValueError(f"keys must have shape (B, u, k, T, H, W) = ({b}, u, {k}, {tt}, {hh}, "
                         f"{ww}) to match q {_shape(q)}, got {_shape(keys)}")
    v = values.shape[2]
    if tuple(values.shape) != (b, u, v, tt, hh, ww) or v < 1:
        raise ValueError(f"values must have shape (B, u, v, T, H, W) = ({b}, {u}, v, {tt}, {hh}, "
                         f"{ww}) with v >= 1 to match q and keys, got {_shape(values)}")
    window = pos_table.shape[:3]
    if min(window) < 1 or any(r % 2 == 0 for r in window) or \
            tuple(pos_table.shape[3:]) != (k, u):
        raise ValueError(f"pos_table must have shape (Rt, Rh, Rw, k, u) = (odd, odd, odd, {k}, "
                         f"{u}), got {_shape(pos_table)}")
    if bias is not None and tuple(bias.shape) != (k,):
        raise ValueError(f"bias must have shape (k,) = ({k},), got {_shape(bias)}")


def temporal_taps(frames: int, rt: int) -> list[tuple[int, int, int, int]]:
    """(table index a, offset d, first frame, end frame) of every temporal offset that reaches
    inside the volume: frames t in [first, end) read frame t + d, in [0, frames)."""
    half = rt // 2
    return [(a, a - half, max(0, half - a), frames - max(0, a - half))
            for a in range(rt) if abs(a - half) < frames]


def run_backend3d(name: str, q, keys, values, pos_table, bias=None) -> torch.Tensor:
    """Run an already selected back end on validated 3-D inputs."""
    from .reference import lambda_reference3d
    chosen = backends.get(name)
    if portable_graph_wanted():  # ONNX export, jit.trace: standard operators only
        return lambda_reference3d(q, keys, values, pos_table, bias)
    if chosen.ops is None or q.shape[0] == 0:
        # A differentiable back end has a 2-D forward only; the 3-D reference is its ground
        # truth (and an empty batch needs no kernel).
        return lambda_reference3d(*_dense_gradients(q, keys, values, pos_table, bias))
    q, keys, values, pos_table, bias = _dense_gradients(q, keys, values, pos_table, bias)
    ops = _fused_ops(chosen)
    b, h, k, frames, hh, ww = q.shape
    u, v = keys.shape[1], values.shape[2]
    lam = _lambda_with_bias(ops, keys.reshape(b, u, k, frames * hh, ww),
                            values.reshape(b, u, v, frames * hh, ww), bias)
    q_tm = q.permute(3, 0, 1, 2, 4, 5).contiguous()  # (T, B, h, k, H, W)
    values_tm = values.permute(3, 0, 1, 2, 4, 5).contiguous()  # (T, B, u, v, H, W)
    y_tm = None
    for a, d, first, end in temporal_taps(frames, pos_table.shape[0]):
        n = end - first
        # Λ once per frame, in the centre tap (which covers every frame); zero in the others.
        lam_tap = lam.repeat(n, 1, 1) if d == 0 else lam.new_zeros(n * b, k, v)
        y_tap = ops.lambda_output(q_tm[first:end].flatten(0, 1),
                                  values_tm[first + d:end + d].flatten(0, 1), pos_table[a],
                                  lam_tap).view(n, b, h, v, hh, ww)
        if n != frames:  # frames the tap does not reach get zeros (padding along T)
            y_tap = F.pad(y_tap, (0, 0) * 5 + (first, frames - end))
        y_tm = y_tap if y_tm is None else y_tm + y_tap
    return y_tm.permute(1, 2, 3, 0, 4, 5).contiguous()


def lambda_op3d(q, keys, values, pos_table, bias=None, *, backend: str = "auto") -> torch.Tensor:
    """The 3-D lambda op y (B, h, v, T, H, W) over video or volumes; see the comment above for
    shapes. Back-end choice as lambda_op (same `backend` names, environment variable, order)."""
    validate_inputs3d(q, keys, values, pos_table, bias)
    return run_backend3d(select(q, backend).backend, q, keys, values, pos_table, bias)
