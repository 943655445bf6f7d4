"""Registrations of the lambda ops made from Python, for the C++ ops (namespace `lambda_kernels`)
and the Triton ops (`lambda_kernels_triton`) alike:

- fake (meta) implementations, so torch.compile, torch.export and opcheck trace the ops without
  running a kernel;
- derivatives of every op, the backward ops included, in both modes (register_autograd): an
  Autograd kernel per op whose backward (reverse mode) and jvp (forward mode) are written with
  the ops themselves, so gradients of any order (create_graph=True: gradient penalties,
  Hessian-vector products, MAML) and forward-over-reverse run on the fused kernels;
- vmap rules (register_vmap) that fold the mapped dimension into the batch.

Why the derivatives can be written with the ops (docs/design.md, "Derivatives of every order"):
the positional ops are multilinear. y = lambda_output(q, values, E, Λ) is linear in q, in
values and in (E, Λ) separately, and each output of lambda_output_backward(dy, q, values, E, Λ)
= (dq, dvalues, d_pos_table, dΛ) is a sum of products with one factor from each of a few
arguments:

    dq          = dy·Λᵀ + Σ E·g(dy, values)       dvalues = Σ s(q, E)·dy
    d_pos_table = Σ q·g(dy, values)                dΛ      = Σ q·dy

So a tangent is the op evaluated with one argument replaced by its tangent (and the arguments a
term does not contain set to zero), and a vector-Jacobian product of the backward op is the
forward or backward op evaluated with a gradient in one slot (e.g. ⟨gdq, dq(dy)⟩ =
⟨dy, y(gdq, values, E, Λ)⟩). The content ops (softmax over positions) are cheap: their
derivatives are input-sized torch expressions (σ, dσ: (B, u, k, N), the size of keys). Nothing
here allocates λp or all logits (the memory rule holds for every order).
"""
from __future__ import annotations

import inspect

import torch
from torch.autograd import forward_ad

from . import _cpu_gemm

OP_NAMES = ("content_lambda", "content_lambda_backward", "lambda_output", "lambda_output_backward")


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the kernels accumulate in (and return lse in): float64 for float64 inputs."""
    return torch.float64 if dtype == torch.float64 else torch.float32


# ------------------------------------------------------------------------------ fake impls
def content_lambda(keys, values):
    b, u, k = keys.shape[:3]
    lam_c = keys.new_empty((b, k, values.shape[2]))
    lse = keys.new_empty((b, u, k), dtype=accumulation_dtype(keys.dtype))
    return lam_c, lse


def content_lambda_backward(d_lam_c, keys, values, lse):
    return torch.empty_like(keys, memory_format=torch.contiguous_format), torch.empty_like(
        values, memory_format=torch.contiguous_format)


def lambda_output(q, values, pos_table, lam):
    b, h, _, hh, ww = q.shape
    return q.new_empty((b, h, values.shape[2], hh, ww))


def lambda_output_backward(dy, q, values, pos_table, lam):
    return (
        torch.empty_like(q, memory_format=torch.contiguous_format),
        torch.empty_like(values, memory_format=torch.contiguous_format),
        torch.empty_like(pos_table, memory_format=torch.contiguous_format),
        torch.empty_like(lam, memory_format=torch.contiguous_format),
    )


# ------------------------------------------------------------------------------ helpers
def _c(t):
    return None if t is None else t.contiguous()


def _add(*terms):
    """Sum of the terms that are not None (None if all are)."""
    total = None
    for t in terms:
        if t is not None:
            total = t if total is None else total + t
    return total


def _sigma(keys, lse):
    """softmax(keys) over positions, (B, u, k, H, W) in lse's dtype (float32 or float64)."""
    return torch.exp(keys.to(lse.dtype) - lse[..., None, None])


def _product(equation, a, b):
    """einsum(equation, a, b) for the content terms: in float32 where this CPU has no GEMM of
    the operands' dtype (bf16 on AVX2: ATen's fallback is 3-9x slower than fp32 here, see
    _cpu_gemm.py), rounded once to that dtype; in the operands' dtype everywhere else."""
    dtype = _cpu_gemm.product_dtype(a.device, a.dtype)
    if dtype == a.dtype:
        return torch.einsum(equation, a, b)
    return torch.einsum(equation, a.to(dtype), b.to(dtype)).to(a.dtype)


def _content_term(q, lam):
    """y's content part Σ_k q·Λ, (B, h, v, H, W)."""
    return _product("bhkyx,bkv->bhvyx", q, lam)


def _dq_content(dy, lam):
    """dq's content part dy·Λᵀ, (B, h, k, H, W)."""
    return _product("bhvyx,bkv->bhkyx", dy, lam)


# ------------------------------------------------------------------------------ formulas
class _Formulas:
    """The derivatives of one namespace's four ops, written with that namespace's ops."""

    def __init__(self, namespace: str):
        self._namespace = namespace

    @property
    def ops(self) -> "DifferentiableOps":
        # The namespace's ops as its Functions (made by register_autograd), so that every
        # derivative is itself differentiable (any order, under torch.autograd and torch.func).
        return differentiable_ops(self._namespace)

    # ---- content_lambda(keys, values) -> (lam_c, lse)
    def content_lambda_vjp(self, saved, d_lam_c, d_lse):
        keys, values, lse = saved
        d_keys = d_values = None
        if d_lam_c is not None:
            d_keys, d_values = self.ops.content_lambda_backward(d_lam_c.contiguous(), keys,
                                                                 values, lse)
        if d_lse is not None:  # d lse / d keys = σ
            term = (_sigma(keys, lse) * d_lse[..., None, None]).to(keys.dtype)
            d_keys = _add(d_keys, term)
        return d_keys, d_values

    def content_lambda_jvp(self, saved, t_keys, t_values):
        keys, values, lse = saved
        sigma = _sigma(keys, lse)
        acc = lse.dtype
        t_lse = t_lam = None
        if t_keys is not None:
            t_lse = (sigma * t_keys.to(acc)).sum(dim=(-2, -1))
            weight = sigma * (t_keys.to(acc) - t_lse[..., None, None])
            t_lam = torch.einsum("bukyx,buvyx->bkv", weight, values.to(acc))
        if t_values is not None:
            t_lam = _add(t_lam, torch.einsum("bukyx,buvyx->bkv", sigma, t_values.to(acc)))
        lam_dtype = keys.dtype
        t_lam = torch.zeros(keys.shape[0], keys.shape[2], values.shape[2], dtype=lam_dtype,
                            device=keys.device) if t_lam is None else t_lam.to(lam_dtype)
        t_lse = torch.zeros_like(lse) if t_lse is None else t_lse
        return t_lam, t_lse

    # ---- content_lambda_backward(d_lam_c, keys, values, lse) -> (d_keys, d_values)
    #   σ = exp(keys − lse), dσ = Σ_v D·values, c = Σ_m σ·dσ
    #   d_keys = σ·(dσ − c),  d_values = Σ_k σ·D          (D = d_lam_c)
    @staticmethod
    def _content_backward_parts(d_lam, keys, values, lse):
        acc = lse.dtype
        sigma = _sigma(keys, lse)
        d_sigma = torch.einsum("bkv,buvyx->bukyx", d_lam.to(acc), values.to(acc))
        c = (sigma * d_sigma).sum(dim=(-2, -1), keepdim=True)
        return sigma, d_sigma, c

    def content_lambda_backward_vjp(self, saved, g_keys, g_values):
        d_lam, keys, values, lse = saved
        acc = lse.dtype
        sigma, d_sigma, c = self._content_backward_parts(d_lam, keys, values, lse)
        d_lam_acc, values_acc = d_lam.to(acc), values.to(acc)
        g_sigma = torch.zeros_like(sigma)
        g_d_lam = None
        g_vals = None
        if g_values is not None:  # ⟨g_values, Σ_k σ·D⟩
            g_values = g_values.to(acc)
            g_sigma = g_sigma + torch.einsum("bkv,buvyx->bukyx", d_lam_acc, g_values)
            g_d_lam = torch.einsum("bukyx,buvyx->bkv", sigma, g_values)
        if g_keys is not None:  # ⟨A, σ·(dσ − c)⟩ with A = g_keys
            a = g_keys.to(acc)
            w = a * sigma
            cw = w.sum(dim=(-2, -1), keepdim=True)
            g_sigma = g_sigma + a * (d_sigma - c) - cw * d_sigma
            h = w - cw * sigma  # gradient reaching dσ
            g_d_lam = _add(g_d_lam, torch.einsum("bukyx,buvyx->bkv", h, values_acc))
            g_vals = torch.einsum("bukyx,bkv->buvyx", h, d_lam_acc)
        through_sigma = sigma * g_sigma  # chain through σ = exp(keys − lse)
        g_k = through_sigma.to(keys.dtype)
        g_lse = -through_sigma.sum(dim=(-2, -1))
        return (None if g_d_lam is None else g_d_lam.to(d_lam.dtype), g_k,
                None if g_vals is None else g_vals.to(values.dtype), g_lse.to(lse.dtype))

    def content_lambda_backward_jvp(self, saved, t_d_lam, t_keys, t_values, t_lse):
        d_lam, keys, values, lse = saved
        acc = lse.dtype
        sigma, d_sigma, c = self._content_backward_parts(d_lam, keys, values, lse)
        d_lam_acc = d_lam.to(acc)
        zero_keys = torch.zeros_like(sigma)
        t_log = zero_keys  # tangent of (keys − lse)
        if t_keys is not None:
            t_log = t_log + t_keys.to(acc)
        if t_lse is not None:
            t_log = t_log - t_lse.to(acc)[..., None, None]
        t_sigma = sigma * t_log
        t_d_sigma = zero_keys
        if t_d_lam is not None:
            t_d_sigma = t_d_sigma + torch.einsum("bkv,buvyx->bukyx", t_d_lam.to(acc),
                                                 values.to(acc))
        if t_values is not None:
            t_d_sigma = t_d_sigma + torch.einsum("bkv,buvyx->bukyx", d_lam_acc, t_values.to(acc))
        t_c = (t_sigma * d_sigma + sigma * t_d_sigma).sum(dim=(-2, -1), keepdim=True)
        t_d_keys = t_sigma * (d_sigma - c) + sigma * (t_d_sigma - t_c)
        t_d_values = torch.einsum("bukyx,bkv->buvyx", t_sigma, d_lam_acc)
        if t_d_lam is not None:
            t_d_values = t_d_values + torch.einsum("bukyx,bkv->buvyx", sigma, t_d_lam.to(acc))
        return t_d_keys.to(keys.dtype), t_d_values.to(values.dtype)

    # ---- lambda_output(q, values, E, Λ) -> y
    def lambda_output_vjp(self, saved, dy):
        return self.ops.lambda_output_backward(dy.contiguous(), *saved)

    def lambda_output_jvp(self, saved, t_q, t_values, t_table, t_lam):
        q, values, table, lam = saved
        out = self.ops.lambda_output
        terms = []
        if t_q is not None:
            terms.append(out(t_q.contiguous(), values, table, lam))
        if t_values is not None:
            terms.append(out(q, t_values.contiguous(), table, torch.zeros_like(lam)))
        if t_table is not None:
            t_lam_or_zero = torch.zeros_like(lam) if t_lam is None else t_lam.contiguous()
            terms.append(out(q, values, t_table.contiguous(), t_lam_or_zero))
        elif t_lam is not None:
            terms.append(_content_term(q, t_lam))
        total = _add(*terms)
        if total is None:  # no tangent at all
            b, h, _, hh, ww = q.shape
            total = q.new_zeros((b, h, values.shape[2], hh, ww))
        return total

    # ---- lambda_output_backward(dy, q, values, E, Λ) -> (dq, dvalues, d_pos_table, dΛ)
    def lambda_output_backward_vjp(self, saved, g_q, g_values, g_table, g_lam):
        dy, q, values, table, lam = saved
        out, back = self.ops.lambda_output, self.ops.lambda_output_backward
        g_q, g_values, g_table, g_lam = _c(g_q), _c(g_values), _c(g_table), _c(g_lam)
        d_dy, d_q, d_values, d_pos_table, d_lam = [], [], [], [], []
        if g_q is not None:  # ⟨g_q, dq⟩ = ⟨dy, y(g_q, values, E, Λ)⟩
            d_dy.append(out(g_q, values, table, lam))
            _, dv, d_pos_table_term, dl = back(dy, g_q, values, table, lam)
            d_values.append(dv), d_pos_table.append(d_pos_table_term), d_lam.append(dl)
        if g_values is not None:  # ⟨g_values, dvalues⟩ = ⟨dy, y_positional(q, g_values, E)⟩
            zero_lam = torch.zeros_like(lam)
            d_dy.append(out(q, g_values, table, zero_lam))
            dq, _, d_pos_table_term, _ = back(dy, q, g_values, table, zero_lam)
            d_q.append(dq), d_pos_table.append(d_pos_table_term)
        if g_table is not None:  # ⟨g_E, d_pos_table⟩ + ⟨g_Λ, dΛ⟩ = ⟨dy, y(q, values, g_E, g_Λ)⟩
            g_lam_or_zero = torch.zeros_like(lam) if g_lam is None else g_lam
            d_dy.append(out(q, values, g_table, g_lam_or_zero))
            dq, dv, _, _ = back(dy, q, values, g_table, g_lam_or_zero)
            d_q.append(dq), d_values.append(dv)
        elif g_lam is not None:
            d_dy.append(_content_term(q, g_lam))
            d_q.append(_dq_content(dy, g_lam))
        return _add(*d_dy), _add(*d_q), _add(*d_values), _add(*d_pos_table), _add(*d_lam)

    def lambda_output_backward_jvp(self, saved, t_dy, t_q, t_values, t_table, t_lam):
        dy, q, values, table, lam = saved
        back = self.ops.lambda_output_backward
        t_dy, t_q, t_values, t_table, t_lam = _c(t_dy), _c(t_q), _c(t_values), _c(t_table), \
            _c(t_lam)
        dq, dv, d_pos_table, dl = [], [], [], []
        if t_dy is not None:  # every output is linear in dy
            a, b, c, d = back(t_dy, q, values, table, lam)
            dq.append(a), dv.append(b), d_pos_table.append(c), dl.append(d)
        if t_q is not None:  # dvalues, d_pos_table, dΛ contain q; dq does not
            _, b, c, d = back(dy, t_q, values, table, lam)
            dv.append(b), d_pos_table.append(c), dl.append(d)
        if t_values is not None:  # dq's positional term and d_pos_table contain values
            a, _, c, _ = back(dy, q, t_values, table, torch.zeros_like(lam))
            dq.append(a), d_pos_table.append(c)
        if t_table is not None:  # dq's positional term and dvalues contain E
            a, b, _, _ = back(dy, q, values, t_table, torch.zeros_like(lam))
            dq.append(a), dv.append(b)
        if t_lam is not None:  # dq's content term
            dq.append(_dq_content(dy, t_lam))
        zeros = (torch.zeros_like(q), torch.zeros_like(values), torch.zeros_like(table),
                 torch.zeros_like(lam))
        return tuple(z if not terms else _add(*terms)
                     for z, terms in zip(zeros, (dq, dv, d_pos_table, dl)))


# ------------------------------------------------------------------------------ autograd
# For each op: which tensors the derivatives need (indices into inputs + outputs).
_SAVED = {
    "content_lambda": (0, 1, 3),  # keys, values, lse (output 1)
    "content_lambda_backward": (0, 1, 2, 3),
    "lambda_output": (0, 1, 2, 3),
    "lambda_output_backward": (0, 1, 2, 3, 4),
}


def _has_tangent(t) -> bool:
    return isinstance(t, torch.Tensor) and forward_ad.unpack_dual(t).tangent is not None


def _needs_derivatives(args) -> bool:
    """Whether a call must go through the op's autograd.Function: some input requires grad
    (reverse mode) or carries a tangent (forward mode; Function.forward runs with both off)."""
    if torch.is_grad_enabled() and torch._C._any_requires_grad(*args):
        return True
    return (forward_ad._current_level >= 0 and torch._C._is_fwd_grad_enabled()
            and any(_has_tangent(t) for t in args))


def _make_function(op, vjp, jvp, saved_indices) -> type:
    """The autograd.Function of one op: forward = the op's kernels, backward = vjp, jvp = jvp.
    setup_context style, so torch.func transforms (grad, jvp, vmap, hessian) run it too."""

    def forward(*args):
        # Grad and forward grad are off inside Function.forward: the op goes to its kernels.
        return op(*args)

    # Function.apply binds the arguments to forward's signature on every call; computed once
    # here, inspect.signature returns it without parsing the function again.
    forward.__signature__ = inspect.signature(forward)

    def setup_context(ctx, inputs, output):
        outputs = output if isinstance(output, tuple) else (output,)
        saved = [(tuple(inputs) + outputs)[i] for i in saved_indices]
        ctx.save_for_backward(*saved)
        ctx.save_for_forward(*saved)
        ctx.set_materialize_grads(False)

    def backward(ctx, *grads):
        if all(g is None for g in grads):
            return (None,) * len(ctx.needs_input_grad)
        return vjp(ctx.saved_tensors, *grads)

    def jvp_method(ctx, *tangents):
        return jvp(ctx.saved_tensors, *tangents)

    return type(f"{op._qualified_op_name.replace('::', '_')}_Function",
                (torch.autograd.Function,), {
                    "forward": staticmethod(forward),
                    "setup_context": staticmethod(setup_context),
                    "backward": staticmethod(backward),
                    "jvp": staticmethod(jvp_method),
                    # under torch.func.vmap: forward, backward and jvp through the ops' own
                    # vmap rules below
                    "generate_vmap_rule": True,
                })


def _make_autograd_kernel(op: torch._ops.OpOverload, function: type):
    """The dispatcher's Autograd kernel of `op` (direct calls of torch.ops.<ns>.<op>): the op's
    Function when derivatives are needed, otherwise straight to the kernels."""

    def autograd_kernel(keyset, *args):
        if _needs_derivatives(args):
            return function.apply(*args)
        with torch._C._AutoDispatchBelowAutograd():
            return op.redispatch(keyset & torch._C._after_autograd_keyset, *args)

    return autograd_kernel


# ------------------------------------------------------------------------------ vmap rules
def _move_to_front(t, dim, size):
    """t with its mapped dim first (expanded to `size` when it has none)."""
    if dim is None:
        return t.unsqueeze(0).expand(size, *t.shape)
    return t.movedim(dim, 0)


def _fold_rule(op, shared=()):
    """vmap rule folding the mapped dimension into the batch (dim 0 of every batch-major
    argument, and of every output). Arguments at `shared` positions (the position table) have
    no batch dim: when one of them is mapped too, the rule loops over the mapped dim."""

    def rule(info, in_dims, *args):
        size = info.batch_size
        if any(in_dims[i] is not None for i in shared):
            return _loop_rule(op)(info, in_dims, *args)
        folded, batch = [], None
        for i, (t, dim) in enumerate(zip(args, in_dims)):
            if i in shared:
                folded.append(t)
            else:
                t = _move_to_front(t, dim, size)
                batch = t.shape[1]  # the op's own batch (every batch-major argument has it)
                folded.append(t.reshape(size * t.shape[1], *t.shape[2:]))
        result = op(*folded)
        outputs = result if isinstance(result, tuple) else (result,)
        unfolded = tuple(o.reshape(size, batch, *o.shape[1:]) for o in outputs)
        if isinstance(result, tuple):
            return unfolded, (0,) * len(unfolded)
        return unfolded[0], 0

    return rule


def _loop_rule(op):
    """vmap rule calling the op once per mapped index (used where folding would mix the mapped
    samples: the table gradient is a sum over the batch)."""

    def rule(info, in_dims, *args):
        if info.batch_size == 0:
            # no index to call the op on: one call's output shapes from its fake impl
            sample = op(*[t if t is None else
                          torch.empty(t.shape if d is None else t.shape[:d] + t.shape[d + 1:],
                                      dtype=t.dtype, device="meta")
                          for t, d in zip(args, in_dims)])
            device = next(t.device for t, d in zip(args, in_dims) if d is not None)
            empty = tuple(torch.empty((0, *o.shape), dtype=o.dtype, device=device)
                          for o in (sample if isinstance(sample, tuple) else (sample,)))
            return (empty, (0,) * len(empty)) if isinstance(sample, tuple) else (empty[0], 0)
        per_index = []
        for index in range(info.batch_size):
            per_index.append(op(*[t if d is None else t.select(d, index)
                                  for t, d in zip(args, in_dims)]))
        if isinstance(per_index[0], tuple):
            stacked = tuple(torch.stack(parts) for parts in zip(*per_index))
            return stacked, (0,) * len(stacked)
        return torch.stack(per_index), 0

    return rule


# ------------------------------------------------------------------------------ registration
_libraries: dict[str, torch.library.Library] = {}
_ALLOW_OVERRIDE = ({"allow_override": True} if "allow_override" in
                   inspect.signature(torch.library.Library.impl).parameters else {})
_differentiable: dict[str, "DifferentiableOps"] = {}


class DifferentiableOps:
    """The four ops of a namespace as autograd.Function applications (what lambda_op calls
    outside torch.compile: torch.func transforms need the Function at Python level; the
    dispatcher's Autograd kernels serve direct op calls and compiled graphs). A call that needs
    no derivatives — no input requires grad or carries a forward-mode tangent, and no torch.func
    transform is active — goes straight to the kernels: Function.apply costs ~50-100 µs of
    Python per call (argument binding, context), as much as the kernels of a small map."""

    def __init__(self, functions: dict[str, type], namespace: str):
        ops = getattr(torch.ops, namespace)
        for name, function in functions.items():
            setattr(self, name, _direct_when_underived(function.apply, getattr(ops, name)))


def _direct_when_underived(apply, op):
    def call(*args):
        if torch._C._functorch.peek_interpreter_stack() is None and not _needs_derivatives(args):
            with torch._C._AutoDispatchBelowAutograd():
                return op(*args)
        return apply(*args)
    return call


def differentiable_ops(namespace: str) -> DifferentiableOps:
    return _differentiable[namespace]


def register_autograd(namespace: str) -> None:
    """Derivatives (reverse and forward mode, every order) and vmap rules of the four ops of
    `namespace` (the C++ ops in `lambda_kernels`, the Triton ops in `lambda_kernels_triton`):
    the one place where a fused back end's backward is glued in, for lambda_op and direct calls
    of torch.ops.<namespace>.* alike."""
    if namespace in _libraries:
        return
    ops = getattr(torch.ops, namespace)
    functions: dict[str, type] = {}
    formulas = _Formulas(namespace)
    library = torch.library.Library(namespace, "IMPL")
    _libraries[namespace] = library
    for name in OP_NAMES:
        op = getattr(ops, name)
        functions[name] = _make_function(op, getattr(formulas, f"{name}_vjp"),
                                         getattr(formulas, f"{name}_jvp"), _SAVED[name])
        # Replaces the kernel torch.library.custom_op/triton_op put there (it has no jvp);
        # torch 2.11 refuses an override unless asked (allow_override defaults to False there).
        with _quiet_override():
            library.impl(name, _make_autograd_kernel(op.default, functions[name]), "Autograd",
                         with_keyset=True, **_ALLOW_OVERRIDE)
    _differentiable[namespace] = DifferentiableOps(functions, namespace)
    torch.library.register_vmap(f"{namespace}::content_lambda", _fold_rule(ops.content_lambda),
                                lib=library)
    torch.library.register_vmap(f"{namespace}::content_lambda_backward",
                                _fold_rule(ops.content_lambda_backward), lib=library)
    torch.library.register_vmap(f"{namespace}::lambda_output",
                                _fold_rule(ops.lambda_output, shared=(2,)), lib=library)
    # d_pos_table sums over the batch: folding would sum over the mapped samples too.
    torch.library.register_vmap(f"{namespace}::lambda_output_backward",
                                _loop_rule(ops.lambda_output_backward), lib=library)


class _quiet_override:
    """Silences the dispatcher's 'overriding a previously registered kernel' warning for the
    one override we mean (custom ops come with an Autograd kernel of their own)."""

    def __enter__(self):
        import warnings
        self._catch = warnings.catch_warnings()
        self._catch.__enter__()
        warnings.filterwarnings("ignore", message=".*[Oo]verrid.*")

    def __exit__(self, *exc):
        return self._catch.__exit__(*exc)


_registered = False


def register_fake_impls() -> None:
    global _registered
    if _registered:
        return
    for name in OP_NAMES:
        torch.library.register_fake(f"lambda_kernels::{name}")(globals()[name])
    register_autograd("lambda_kernels")
    _registered = True
