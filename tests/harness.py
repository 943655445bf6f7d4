"""One tester for every back end: the back ends under test, one table of shapes, one tolerance
rule, and the opcheck samples, shared by tests/test_backends.py, the property tests and the
back-end-specific test files.

Back ends under test (`TARGETS`): the reference, the fused `cpu` back end at every CPU
instruction-set level compiled into the extension (a level this CPU lacks is skipped with the
missing features named), `triton` (CUDA tensors on a GPU; CPU tensors under the Triton
interpreter, fp32/fp16) and `cuda` (GPU). Adding a back end means adding one Target below.

Tolerance rule (flash-attention's): the back end's largest error against the float64 reference
is at most twice the error of the reference itself computed in the test dtype, plus a small
floor relative to the output's scale:
    max|got − ref64| ≤ 2 · max|ref_dtype − ref64| + FLOOR[dtype] · max(1, max|ref64|)
"""
from __future__ import annotations

import contextlib
import functools
import json
import os
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from typing import Callable, Optional

import torch

import lambda_kernels
from lambda_kernels import backends, cost
from lambda_kernels.reference import lambda_reference, lambda_reference3d

FLOOR = {torch.float64: 1e-10, torch.float32: 2e-5, torch.float16: 2e-3, torch.bfloat16: 1.5e-2}
ALL_DTYPES = (torch.float64, torch.float32, torch.bfloat16, torch.float16)


@dataclass(frozen=True)
class Shape:
    """One input shape of the op; `note` says which border it covers."""
    batch: int
    heads: int
    dim_k: int
    dim_u: int
    dim_v: int
    height: int
    width: int
    rh: int
    rw: int
    bias: bool
    note: str

    @property
    def id(self) -> str:
        return (f"b{self.batch}h{self.heads}k{self.dim_k}u{self.dim_u}v{self.dim_v}_"
                f"{self.height}x{self.width}_r{self.rh}x{self.rw}" + ("_bias" if self.bias else ""))

    def inputs(self, dtype, device="cpu", requires_grad=False, seed=0):
        return make_inputs(batch=self.batch, heads=self.heads, dim_k=self.dim_k,
                           dim_u=self.dim_u, dim_v=self.dim_v, height=self.height,
                           width=self.width, rh=self.rh, rw=self.rw, bias=self.bias, dtype=dtype,
                           device=device, requires_grad=requires_grad, seed=seed)

    def output_shape(self):
        return (self.batch, self.heads, self.dim_v, self.height, self.width)

    @property
    def logit_association(self) -> bool:
        """Whether the CPU kernels form logits (not λp) in the forward for this shape."""
        return cost.cheaper_association(self.heads, self.dim_k, self.dim_v) == cost.LOGITS


# Small enough for the Triton interpreter; k and v avoid multiples of any vector width; both
# associations of the CPU kernels (logits, λp) occur.
SHAPES = [
    Shape(2, 2, 3, 2, 5, 5, 7, 3, 5, True, "rectangular map and table"),
    Shape(2, 3, 5, 3, 3, 1, 9, 3, 7, False, "H = 1"),
    Shape(1, 2, 4, 1, 2, 7, 1, 5, 3, True, "W = 1"),
    Shape(1, 1, 2, 1, 3, 1, 1, 1, 1, True, "1x1 image, 1x1 table, one head"),
    Shape(1, 4, 16, 4, 8, 6, 7, 23, 23, True, "table larger than the image, u = 4 (logits)"),
    Shape(1, 2, 5, 1, 17, 6, 5, 11, 9, False, "v = 17 (logits)"),
    Shape(2, 4, 8, 1, 8, 6, 6, 11, 11, False, "global context (2n-1)² table"),
    Shape(1, 3, 6, 2, 4, 5, 9, 9, 17, False, "global context, rectangular"),
    Shape(1, 1, 9, 3, 33, 3, 13, 1, 1, True, "1x1 table, k and v above a register tile"),
    Shape(2, 2, 2, 4, 6, 6, 6, 13, 3, True, "u = 4, tall table"),
    Shape(1, 4, 3, 2, 1, 3, 19, 7, 41, False, "v = 1, table wider than the image"),
    Shape(1, 8, 4, 2, 6, 4, 6, 5, 5, True, "8 heads (λp association)"),
    Shape(1, 4, 16, 1, 20, 5, 17, 7, 9, True, "row longer than two vectors (logits)"),
    Shape(1, 1, 3, 1, 3, 2, 37, 3, 11, True, "row of 37: several GPU position tiles, partial last"),
    Shape(1, 17, 2, 1, 2, 2, 3, 3, 3, False, "17 heads: more than one GPU head tile"),
    Shape(1, 2, 20, 1, 6, 4, 9, 1, 5, True, "k = 20 (several GPU k tiles), one-row table"),
]
assert any(s.logit_association for s in SHAPES) and not all(s.logit_association for s in SHAPES)
# For slow targets (the Triton interpreter) dtypes after the first run on these cheap shapes only.
QUICK_SHAPES = [s for s in SHAPES if s.batch * s.height * s.width * s.rh * s.rw <= 800]


@dataclass(frozen=True)
class Target:
    """A back end under test: where it runs, in which dtypes, at which CPU level."""
    id: str
    backend: str
    device: str
    dtypes: tuple
    cpu_isa: Optional[str] = None
    # the CPU kernels' positional method (lambda_kernels.use_cpu_positional_method), or None
    cpu_positional: Optional[str] = None
    # an interpreter: second dtypes on QUICK_SHAPES only, one opcheck sample
    slow: bool = False
    # why it cannot run here, or None
    unavailable: Callable[[], Optional[str]] = lambda: None

    def __repr__(self) -> str:  # short, for pytest and hypothesis reports
        return f"Target({self.id})"

    def skip_reason(self) -> Optional[str]:
        reason = self.unavailable()
        # Kernels that fail on this machine (backends.probe_reason) are a failure to report,
        # not a skip: the test runs the back end and fails with the error.
        if reason is not None and reason.startswith(backends.PROBE_FAILURE):
            return None
        return reason

    def activate(self):
        """Context in which the back end runs as this target (its CPU level)."""
        stack = contextlib.ExitStack()
        if self.cpu_isa:
            stack.enter_context(lambda_kernels.use_cpu_isa(self.cpu_isa))
        if self.cpu_positional:
            stack.enter_context(lambda_kernels.use_cpu_positional_method(self.cpu_positional))
        return stack

    def run(self, q, keys, values, pos_table, bias=None):
        with self.activate():
            return lambda_kernels.lambda_op(q, keys, values, pos_table, bias,
                                            backend=self.backend)

    def run3d(self, q, keys, values, pos_table, bias=None):
        with self.activate():
            return lambda_kernels.lambda_op3d(q, keys, values, pos_table, bias,
                                              backend=self.backend)

    @property
    def fused(self) -> bool:
        return backends.get(self.backend).ops is not None

    def ops(self):
        return backends.get(self.backend).ops()


def _backend_reason(name: str, device: str, dtype=torch.float32) -> Optional[str]:
    return lambda_kernels.available_backends(device, dtype)[name]


def _cpu_level_reason(level: str) -> Optional[str]:
    reason = _backend_reason("cpu", "cpu")
    if reason is not None:
        return reason
    return lambda_kernels.cpu_isa_levels().get(level, f"{level} not compiled in")


def _compiled_cpu_levels() -> list[str]:
    if _backend_reason("cpu", "cpu") is not None:
        return ["(none)"]
    return list(lambda_kernels.cpu_isa_levels())


def _triton_target() -> Target:
    from lambda_kernels.backends.triton import interpreter_active
    if torch.cuda.is_available() and not interpreter_active():
        return Target("triton", "triton", "cuda", (torch.float32, torch.float16, torch.bfloat16),
                      unavailable=lambda: _backend_reason("triton", "cuda"))
    # The interpreter cannot do bf16 arithmetic.
    return Target("triton-interpreter", "triton", "cpu", (torch.float32, torch.float16),
                  slow=True, unavailable=lambda: _backend_reason("triton", "cpu"))


def _targets() -> list[Target]:
    targets = [Target("reference", "reference", "cpu", (torch.float64, torch.float32))]
    # Each CPU level twice: its own choice of method (on these small shapes: direct) and the
    # spectral method forced (csrc/cpu/spectral_kernels.inc; the same tile kernels of the level).
    for level in _compiled_cpu_levels():
        for method, suffix in ((None, ""), ("spectral", "-spectral")):
            targets.append(Target(f"cpu-{level}{suffix}", "cpu", "cpu", ALL_DTYPES, cpu_isa=level,
                                  cpu_positional=method,
                                  unavailable=functools.partial(_cpu_level_reason, level)))
    targets.append(_triton_target())
    targets.append(Target("cuda", "cuda", "cuda", ALL_DTYPES,
                          unavailable=lambda: _backend_reason("cuda", "cuda")))
    return targets


TARGETS = _targets()


def target(target_id: str) -> Target:
    """The target called `target_id` (e.g. "triton", "triton-interpreter", "cpu-avx2")."""
    for t in TARGETS:
        if t.id == target_id:
            return t
    # A target of another machine (e.g. "triton" without a GPU): it reports why it cannot run.
    return Target(target_id, target_id.split("-")[0], "cuda", (), unavailable=lambda: (
        f"{target_id} is not a back end under test on this machine"))


def target_dtype_shape_params(shapes=None, quick_shapes=None, slow_shapes=None):
    """(target, dtype, shape) triples for pytest.mark.parametrize, with readable ids: every
    shape in every dtype of every target; a slow target's first dtype on `slow_shapes` (default:
    every shape), its later dtypes on `quick_shapes`. Default: SHAPES and QUICK_SHAPES."""
    import pytest
    shapes = SHAPES if shapes is None else shapes
    quick_shapes = QUICK_SHAPES if quick_shapes is None else quick_shapes
    slow_shapes = shapes if slow_shapes is None else slow_shapes
    return [pytest.param(t, d, s, id=f"{t.id}-{str(d).replace('torch.', '')}-{s.id}")
            for t in TARGETS for i, d in enumerate(t.dtypes)
            for s in ((quick_shapes if i else slow_shapes) if t.slow else shapes)]


# ------------------------------------------------------------------------------ inputs
def make_inputs(batch=2, heads=2, dim_k=3, dim_u=2, dim_v=4, height=5, width=4, rh=3, rw=3,
                bias=True, dtype=torch.float64, device="cpu", requires_grad=False, seed=None,
                frames=None, rt=None):
    """(q, keys, values, pos_table, bias) with the layouts of lambda_op, or of lambda_op3d
    when `frames` and `rt` are given (a T×H×W volume and an (Rt, Rh, Rw) table)."""
    gen = torch.Generator().manual_seed(seed) if seed is not None else None

    def rand(*shape, scale=1.0):
        t = torch.randn(*shape, generator=gen, dtype=torch.float64) * scale
        return t.to(device=device, dtype=dtype).requires_grad_(requires_grad)

    volume = (height, width) if frames is None else (frames, height, width)
    window = (rh, rw) if rt is None else (rt, rh, rw)
    q = rand(batch, heads, dim_k, *volume)
    keys = rand(batch, dim_u, dim_k, *volume)
    values = rand(batch, dim_u, dim_v, *volume)
    pos_table = rand(*window, dim_k, dim_u, scale=0.5)
    b = rand(dim_k) if bias else None
    return q, keys, values, pos_table, b


def perturb_batch_norms(layer):
    """Non-trivial batch-norm statistics and affine parameters of a lambda layer's norm_q and
    norm_v, so eval mode is exercised; returns the layer."""
    with torch.no_grad():
        for bn in (layer.norm_q, layer.norm_v):
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.5, 0.5)
            bn.running_mean.uniform_(-0.2, 0.2)
            bn.running_var.uniform_(0.5, 1.5)
    return layer


# ------------------------------------------------------------------------------ comparison
def outputs_and_grads(fn, inputs, dy):
    """[y, then the gradient of every non-None input] of y = fn(*inputs) for output grad dy."""
    leaves = [None if t is None else t.detach().clone().requires_grad_() for t in inputs]
    y = fn(*leaves)
    grads = torch.autograd.grad(y, [t for t in leaves if t is not None], dy)
    return [y.detach()] + list(grads)


GRAD_NAMES = ["y", "d_q", "d_keys", "d_values", "d_pos_table", "d_bias"]


def rule_bound(ref64, ref_dtype, dtype) -> float:
    """The tolerance rule's bound for one tensor: 2·max|ref_dtype − ref64| + FLOOR·scale."""
    ref64, ref_dtype = ref64.double(), ref_dtype.double()
    scale = max(1.0, ref64.abs().max().item()) if ref64.numel() else 1.0
    ref_err = (ref_dtype - ref64).abs().max().item() if ref64.numel() else 0.0
    return 2 * ref_err + FLOOR[dtype] * scale


def assert_close_rule(name, got, ref64, ref_dtype, dtype):
    got, ref64 = got.double(), ref64.double()
    assert got.shape == ref64.shape, f"{name}: shape {tuple(got.shape)} != {tuple(ref64.shape)}"
    assert torch.isfinite(got).all(), f"{name}: non-finite values"
    err = (got - ref64).abs().max().item() if got.numel() else 0.0
    bound = rule_bound(ref64, ref_dtype, dtype)
    assert err <= bound, (f"{name} ({dtype}): max error {err:.3e} > bound {bound:.3e} "
                          f"(FLOOR {FLOOR[dtype]:.0e} of the scale plus twice the reference's "
                          "own error in this dtype)")


def _output_grad(shape_of_y, device, seed=1):
    return torch.randn(shape_of_y, generator=torch.Generator().manual_seed(seed),
                       dtype=torch.float64).to(device)


def check_against_reference(target: Target, inputs, dtype, seed=1, *, run=None,
                            reference=lambda_reference):
    """Output and every gradient of `target` on `inputs` (already in dtype, on its device)
    against the float64 reference, by the tolerance rule. `run` (default target.run) and
    `reference` give the op under test and its ground truth (the 3-D op: check3d_...)."""
    q, values = inputs[0], inputs[2]
    y_shape = (q.shape[0], q.shape[1], values.shape[2], *q.shape[3:])
    dy = _output_grad(y_shape, q.device, seed)
    got = outputs_and_grads(run or target.run, inputs, dy.to(dtype))
    ref64 = outputs_and_grads(reference, [None if t is None else t.double() for t in inputs],
                              dy)
    ref_dtype = outputs_and_grads(reference, inputs, dy.to(dtype))
    for name, g, r64, rd in zip(GRAD_NAMES, got, ref64, ref_dtype):
        assert g.dtype == dtype, f"{name}: dtype {g.dtype}, expected {dtype}"
        if name != "y":  # gradients leave the op dense (docs/design.md, PyTorch pitfalls)
            assert g.is_contiguous(), f"{name}: not contiguous (strides {g.stride()})"
        assert_close_rule(name, g, r64, rd, dtype)


# ------------------------------------------------------------------------------ higher order
def _leaves(inputs):
    return [None if t is None else t.detach().clone().requires_grad_() for t in inputs]


def second_order_grads(fn, inputs, dy, weights):
    """Second-order gradients of y = fn(*inputs): g = ∂⟨y, dy⟩/∂inputs built with
    create_graph=True, then ∂⟨g, weights⟩/∂(inputs, dy) — what a gradient penalty or a
    Hessian-vector product differentiates. Every input and dy receive one (zeros if unused)."""
    leaves = _leaves(inputs)
    present = [t for t in leaves if t is not None]
    dy = dy.detach().clone().requires_grad_()
    y = fn(*leaves)
    grads = torch.autograd.grad(y, present, dy, create_graph=True)
    penalty = sum((g * w).sum() for g, w in zip(grads, weights))
    second = torch.autograd.grad(penalty, present + [dy], allow_unused=True)
    return [torch.zeros_like(t) if g is None else g for g, t in zip(second, present + [dy])]


def jvp_output(fn, inputs, tangents):
    """The forward-mode derivative of fn at inputs along tangents (torch.func.jvp)."""
    present = [t for t in inputs if t is not None]

    def call(*args):
        it = iter(args)
        return fn(*[None if t is None else next(it) for t in inputs])

    return torch.func.jvp(call, tuple(present), tuple(tangents))[1]


SECOND_ORDER_NAMES = ["dd_q", "dd_keys", "dd_values", "dd_pos_table", "dd_bias", "dd_dy"]


def _random_like(tensors, seed, dtype):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(t.shape, generator=gen, dtype=torch.float64).to(device=t.device,
                                                                         dtype=dtype)
            for t in tensors]


def check_second_order_against_reference(target: Target, inputs, dtype, seed=11, *, op=None,
                                         reference=lambda_reference):
    """Double backward (every input and dy) and the jvp of `target` against the float64
    reference, by the tolerance rule: a derivative the op lost (a silent zero) fails. `op`
    (default target.run) and `reference` give the op under test and its ground truth."""
    q, values = inputs[0], inputs[2]
    y_shape = (q.shape[0], q.shape[1], values.shape[2], *q.shape[3:])
    present = [t for t in inputs if t is not None]
    dy = _output_grad(y_shape, q.device, seed)
    weights = _random_like(present, seed + 1, torch.float64)
    tangents = _random_like(present, seed + 2, torch.float64)
    as64 = [None if t is None else t.double() for t in inputs]
    cast = lambda ts: [t.to(dtype) for t in ts]  # noqa: E731

    def run(fn, args, dt, weights, tangents, dy):
        with target.activate():
            return (second_order_grads(fn, args, dy.to(dt), weights)
                    + [jvp_output(fn, args, tangents)])

    got = run(op or target.run, inputs, dtype, cast(weights), cast(tangents), dy)
    ref64 = run(reference, as64, torch.float64, weights, tangents, dy)
    ref_dtype = run(reference, inputs, dtype, cast(weights), cast(tangents), dy)
    names = [n for n, t in zip(SECOND_ORDER_NAMES[:5], inputs) if t is not None] + \
        ["dd_dy", "jvp_y"]
    for name, g, r64, rd in zip(names, got, ref64, ref_dtype):
        # the reference's own second derivatives are never all zero on these shapes
        assert r64.abs().max() > 0, f"{name}: reference is zero; the check would be vacuous"
        assert_close_rule(name, g, r64, rd, dtype)


# ------------------------------------------------------------------------------ opcheck
@functools.lru_cache(maxsize=None)
def opcheck_samples(device: str, dtype: torch.dtype, few: bool = False):
    """{op name: [args, ...]}: inputs of the four ops over a few border shapes (one if `few`),
    built once."""
    samples = {"content_lambda": [], "content_lambda_backward": [], "lambda_output": [],
               "lambda_output_backward": []}
    for shape in (SHAPES[0],) if few else (SHAPES[0], SHAPES[1], SHAPES[4], SHAPES[11]):
        q, keys, values, pos_table, _ = shape.inputs(dtype, device, seed=3)
        lam = torch.randn(shape.batch, shape.dim_k, shape.dim_v, dtype=torch.float64).to(
            device=device, dtype=dtype)
        lse = keys.flatten(3).double().logsumexp(-1).to(
            torch.float64 if dtype == torch.float64 else torch.float32)
        dy = _output_grad(shape.output_shape(), device).to(dtype)
        samples["content_lambda"].append((keys, values))
        samples["content_lambda_backward"].append((torch.randn_like(lam), keys, values, lse))
        samples["lambda_output"].append((q, values, pos_table, lam))
        samples["lambda_output_backward"].append((dy, q, values, pos_table, lam))
    return samples


# ------------------------------------------------------------------------------ 3-D op
@dataclass(frozen=True)
class Shape3d:
    """One input shape of the 3-D op (lambda_op3d): a T×H×W volume, an (Rt, Rh, Rw) table."""
    batch: int
    heads: int
    dim_k: int
    dim_u: int
    dim_v: int
    frames: int
    height: int
    width: int
    rt: int
    rh: int
    rw: int
    bias: bool
    note: str

    @property
    def id(self) -> str:
        return (f"b{self.batch}h{self.heads}k{self.dim_k}u{self.dim_u}v{self.dim_v}_"
                f"{self.frames}x{self.height}x{self.width}_r{self.rt}x{self.rh}x{self.rw}"
                + ("_bias" if self.bias else ""))

    def inputs(self, dtype, device="cpu", requires_grad=False, seed=0):
        return make_inputs(batch=self.batch, heads=self.heads, dim_k=self.dim_k,
                           dim_u=self.dim_u, dim_v=self.dim_v, height=self.height,
                           width=self.width, rh=self.rh, rw=self.rw, bias=self.bias, dtype=dtype,
                           device=device, requires_grad=requires_grad, seed=seed,
                           frames=self.frames, rt=self.rt)

    def output_shape(self):
        return (self.batch, self.heads, self.dim_v, self.frames, self.height, self.width)


# Tiny (the Triton interpreter runs one 2-D launch per temporal tap); both associations of the
# CPU kernels occur (logits when h·(k+v) <= k·v).
SHAPES3D = [
    Shape3d(2, 2, 3, 2, 5, 1, 5, 7, 1, 3, 5, True, "T = 1, rt = 1: the 2-D op"),
    Shape3d(1, 2, 3, 1, 4, 1, 4, 5, 3, 3, 3, False, "T = 1, rt = 3: the centre tap only"),
    Shape3d(1, 2, 4, 1, 3, 2, 4, 5, 5, 3, 3, True, "rt > T: taps beyond the volume skipped"),
    Shape3d(1, 3, 5, 2, 4, 4, 3, 6, 3, 5, 3, True, "rectangular map and window, u = 2"),
    Shape3d(2, 2, 3, 3, 2, 2, 3, 3, 3, 3, 3, False, "u = 3, batch 2 (time-major fold)"),
    Shape3d(1, 2, 4, 1, 3, 3, 4, 5, 5, 7, 9, False, "global context (2T-1, 2H-1, 2W-1) table"),
    Shape3d(1, 1, 8, 1, 8, 3, 4, 4, 3, 3, 3, True, "one head, k = v = 8 (logits)"),
]
# The Triton interpreter (seconds per shape) runs these, in float32 only.
QUICK_SHAPES3D = [SHAPES3D[1], SHAPES3D[2], SHAPES3D[4]]


def check3d_against_reference(target: Target, inputs, dtype, seed=1):
    """check_against_reference for the 3-D op: lambda_op3d on `target` against the 3-D
    reference (einsum + Conv3d), output and every gradient."""
    check_against_reference(target, inputs, dtype, seed, run=target.run3d,
                            reference=lambda_reference3d)


def check3d_second_order_against_reference(target: Target, inputs, dtype, seed=11):
    """check_second_order_against_reference for the 3-D op (lambda_op3d on `target` against
    the 3-D reference)."""
    check_second_order_against_reference(target, inputs, dtype, seed, op=target.run3d,
                                         reference=lambda_reference3d)


# ------------------------------------------------------------------------------ memory rule
_MEMORY_PROBE = textwrap.dedent("""
    import json, sys, torch, lambda_kernels
    op = getattr(lambda_kernels, sys.argv[1])
    q_shape, keys_shape, values_shape, table_shape, dy_shape = json.loads(sys.argv[2])
    torch.manual_seed(0)
    q, keys, values, pos = (torch.randn(*s, requires_grad=True)
                            for s in (q_shape, keys_shape, values_shape, table_shape))
    dy = torch.randn(*dy_shape)
    # one small step first: thread pools and allocator arenas exist before the measurement
    small = [t[..., :2, :2].detach().clone().requires_grad_() for t in (q, keys, values)]
    small_table = pos[tuple(slice(0, 3) for _ in range(pos.dim() - 2))].detach()
    op(*small, small_table, backend="cpu").sum().backward()

    def status_bytes(key):
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1]) * 1024

    increases = []
    for _ in range(2):
        q.grad = keys.grad = values.grad = pos.grad = None
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the peak resident set size (VmHWM) to the current one
        before = status_bytes("VmRSS:")
        y = op(q, keys, values, pos, backend="cpu")
        y.backward(dy)
        del y
        increases.append(status_bytes("VmHWM:") - before)
    # first: includes one-time costs (allocator arenas of the worker threads); steady: a repeat.
    print(json.dumps({"first": increases[0], "steady": increases[-1]}))
""")


def peak_memory_increase(op_name: str, q_shape, keys_shape, values_shape, table_shape,
                         dy_shape, env: Optional[dict] = None) -> tuple[int, int]:
    """(first, repeat): the peak resident memory a forward+backward of lambda_kernels.<op_name>
    on the cpu back end adds, in a fresh process (with `env` added to its environment), for
    inputs of these shapes (float32)."""
    shapes = json.dumps([list(s) for s in (q_shape, keys_shape, values_shape, table_shape,
                                           dy_shape)])
    out = subprocess.run([sys.executable, "-c", _MEMORY_PROBE, op_name, shapes],
                         capture_output=True, text=True, check=True, timeout=300,
                         env={**os.environ, **(env or {})})
    result = json.loads(out.stdout.strip().splitlines()[-1])
    return result["first"], result["steady"]


def compile_emulation(name: str, source_path: str, functions, build_directory: str,
                      extra_cflags=("-O1", "-w")):
    """Compile a C++ emulation of kernels that need hardware this machine may lack (a GPU, AMX
    tiles) with torch.utils.cpp_extension.load_inline, csrc/ on the include path; skips the
    calling test where no C++ compiler or ninja exists."""
    import os
    import shutil

    import pytest
    from torch.utils import cpp_extension

    if shutil.which(os.environ.get("CXX", "c++")) is None:
        pytest.skip("no C++ compiler")
    try:
        cpp_extension.verify_ninja_availability()
    except RuntimeError:
        pytest.skip("ninja is not installed (needed to compile the emulation)")
    csrc = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "csrc")
    if not os.path.isdir(csrc):
        pytest.skip("csrc/ not available (tests run outside a source checkout)")
    with open(source_path) as f:
        source = f.read()
    tests = os.path.dirname(os.path.abspath(__file__))  # the emulations' shared headers
    return cpp_extension.load_inline(
        name, cpp_sources=[source], functions=list(functions), extra_include_paths=[csrc, tests],
        extra_cflags=list(extra_cflags), build_directory=build_directory, verbose=False)


# ---------------------------------------------------------------- emulated CPU levels
# Shapes at the CPU kernels' tile borders, for the emulations of levels this CPU may lack
# (tests/test_amx_emulation.py, tests/test_avx512_emulation.py): (B, heads, k, u, v, H, W, Rh,
# Rw), with the positional sums' association forward / backward.
EMULATION_CASES = [
    (1, 2, 3, 2, 5, 5, 7, 5, 3),      # odd k, tiny: λp form / λp form
    (2, 4, 17, 1, 33, 6, 19, 3, 5),   # k > 16, v > 32, W = 19 (two vectors): logits / logits
    (1, 1, 35, 2, 18, 4, 5, 9, 11),   # k = 35 (two K blocks), window > image: logits / logits
    (1, 6, 2, 1, 3, 5, 6, 3, 3),      # many heads, few channels: λp form / λp form
    (1, 2, 9, 3, 7, 3, 17, 7, 23),    # wide window (38 columns > 16 rows of W): logits / λp
]


def emulation_case_id(case) -> str:
    return "b{}h{}k{}u{}v{}_{}x{}_r{}x{}".format(*case)


def emulation_references(case, dtype):
    """Inputs (float64), the output gradients dy and d_lam, and every op output and gradient of
    the reference in float64 and in `dtype` (the tolerance rule's two references), by name."""
    from lambda_kernels.reference import content_lambda, positional_lambda
    b, h, k, u, v, hh, ww, rh, rw = case
    g = torch.Generator().manual_seed(sum(case))

    def rand(*shape, scale=1.0):
        return torch.randn(*shape, generator=g, dtype=torch.float64) * scale

    inputs = dict(q=rand(b, h, k, hh, ww), keys=rand(b, u, k, hh, ww, scale=2.0),
                  values=rand(b, u, v, hh, ww), pos=rand(rh, rw, k, u, scale=0.5),
                  lam=rand(b, k, v))
    dy, d_lam = rand(b, h, v, hh, ww), rand(b, k, v)

    def run(dt):
        t = {name: x.to(dt).requires_grad_() for name, x in inputs.items()}
        y = (torch.einsum("bhkyx,bkv->bhvyx", t["q"], t["lam"])
             + torch.einsum("bhkyx,bkvyx->bhvyx", t["q"], positional_lambda(t["values"], t["pos"])))
        d_q, d_v, d_pos, d_l = torch.autograd.grad(y, [t["q"], t["values"], t["pos"], t["lam"]],
                                                   dy.to(dt))
        lam_c = content_lambda(t["keys"], t["values"])
        d_keys, d_v_c = torch.autograd.grad(lam_c, [t["keys"], t["values"]], d_lam.to(dt))
        lse = torch.logsumexp(t["keys"].detach().to(torch.promote_types(dt, torch.float32))
                              .flatten(3), dim=-1)
        return {"y": y, "d_q": d_q, "d_values": d_v, "d_pos_table": d_pos, "d_lam": d_l,
                "lam_c": lam_c, "stats": lse, "d_keys": d_keys, "d_values_content": d_v_c}

    return inputs, dy, d_lam, run(torch.float64), run(dtype)


def check_emulated_ops(lambda_output, lambda_output_backward, content_lambda,
                       content_lambda_backward, case, dtype):
    """The four CPU kernel entry points of an emulated level (callables taking the op inputs,
    as tests/emulated_kernel_calls.h does) on `case` in `dtype`: every output and gradient
    against the float64 reference by the tolerance rule of `dtype` (stats, the log-sum-exp, is
    returned in the accumulation dtype)."""
    inputs, dy, d_lam, ref64, ref_dt = emulation_references(case, dtype)
    c = {name: x.to(dtype) for name, x in inputs.items()}
    y = lambda_output(c["q"], c["values"], c["pos"], c["lam"])
    d_q, d_v, d_pos, d_l = lambda_output_backward(dy.to(dtype), c["q"], c["values"], c["pos"],
                                                  c["lam"])
    lam_c, stats = content_lambda(c["keys"], c["values"])
    d_keys, d_v_c = content_lambda_backward(d_lam.to(dtype), c["keys"], c["values"], stats)
    got = {"y": y, "d_q": d_q, "d_values": d_v, "d_pos_table": d_pos, "d_lam": d_l,
           "lam_c": lam_c, "stats": stats, "d_keys": d_keys, "d_values_content": d_v_c}
    for name, value in got.items():
        expected = torch.promote_types(dtype, torch.float32) if name == "stats" else dtype
        assert value.dtype == expected, f"{name}: {value.dtype}"
        assert_close_rule(name, value, ref64[name].detach(), ref_dt[name].detach(), dtype)


def check_emulated_same_bits_across_threads(lambda_output, lambda_output_backward, dtype,
                                            around_each_run=contextlib.nullcontext):
    """The positional forward and backward of an emulated level (callables as for
    check_emulated_ops) give the same bits at 1 and 2 ATen threads, as every level must.
    `around_each_run()` is entered around each run (the AMX test checks its tile counters)."""
    inputs, dy, _, _, _ = emulation_references(EMULATION_CASES[1], dtype)
    c = {name: x.to(dtype) for name, x in inputs.items()}
    results = []
    previous = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            with around_each_run():
                results.append([lambda_output(c["q"], c["values"], c["pos"], c["lam"])]
                               + list(lambda_output_backward(dy.to(dtype), c["q"], c["values"],
                                                             c["pos"], c["lam"])))
    finally:
        torch.set_num_threads(previous)
    for one, two in zip(*results):
        assert torch.equal(one, two)

def assert_compiled_matches_eager(layer, compiled, x, backend):
    """A compiled twin of `layer` ran the same back end and gives the eager output and input
    gradient (of sum(y²)) up to the compilers' reassociation."""
    y_eager = layer(x)
    y_compiled = compiled(x)
    assert compiled.last_backend == backend == layer.last_backend
    torch.testing.assert_close(y_compiled, y_eager, rtol=1e-5, atol=1e-5)
    (g_eager,) = torch.autograd.grad(y_eager.square().sum(), x)
    (g_compiled,) = torch.autograd.grad(y_compiled.square().sum(), x)
    torch.testing.assert_close(g_compiled, g_eager, rtol=1e-4, atol=1e-4)
