"""What is particular to the Triton back end: the layer on it, its ops as library ops under
torch.compile, the interpreter's dtype limits, selection reasons, kernels compiled for sm_80/sm_90
without a GPU (static targets), the autotuner's pruned tiles, the memory rule on launch records;
on a GPU larger and autotuned shapes, inductor, and peak memory.

Values, every gradient, repeatability and opcheck against the reference over the shared shape
table are in tests/test_backends.py (tests/harness.py), on CUDA tensors with a GPU and through the
Triton interpreter without one: tests/conftest.py sets TRITON_INTERPRET=1 before anything imports
triton when no CUDA device exists.
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from harness import check_against_reference, make_inputs, target

from lambda_kernels import BackendUnavailableError, LambdaLayer, lambda_op, reference
from lambda_kernels.backends import triton as triton_backend

try:
    import lambda_kernels.triton as lk_triton
    _IMPORT_ERROR = None
except Exception as exc:  # triton missing or broken
    lk_triton = None
    _IMPORT_ERROR = f"{type(exc).__name__}: {exc}"

_HAS_CUDA = torch.cuda.is_available()
INTERPRETED = (lk_triton is not None and lk_triton.INTERPRETED
               and lk_triton.INTERPRETER_BROKEN is None)
needs_interpreter = pytest.mark.skipif(
    not INTERPRETED, reason=(_IMPORT_ERROR or "Triton kernels not loaded under TRITON_INTERPRET=1 "
                             "(tests/conftest.py sets it when no CUDA device exists)"))
needs_cuda = pytest.mark.skipif(not _HAS_CUDA or INTERPRETED or lk_triton is None,
                                reason="needs a CUDA device and compiled Triton kernels")
TRITON = target("triton") if _HAS_CUDA and not INTERPRETED else target("triton-interpreter")


def _base_inputs(device):
    return make_inputs(batch=2, heads=2, dim_k=4, dim_u=1, dim_v=4, height=7, width=5, rh=3,
                       rw=3, dtype=torch.float32, device=device, requires_grad=True)


# ------------------------------------------------------------------ CPU interpreter
@needs_interpreter
def test_interpreter_layer_local_and_global():
    for kwargs in (dict(r=3, dim_u=2), dict(n=7)):
        torch.manual_seed(0)
        layer = LambdaLayer(8, dim_k=4, heads=2, dim_out=8, backend="triton", **kwargs)
        ref_layer = LambdaLayer(8, dim_k=4, heads=2, dim_out=8, backend="reference", **kwargs)
        ref_layer.load_state_dict(layer.state_dict())
        x = torch.randn(2, 8, 7, 5)
        y = layer(x)
        assert layer.last_backend == "triton"
        y_ref = ref_layer(x)
        torch.testing.assert_close(y, y_ref, rtol=1e-4, atol=1e-4)
        y.square().sum().backward()
        y_ref.square().sum().backward()
        for (name, p), p_ref in zip(layer.named_parameters(), ref_layer.parameters()):
            torch.testing.assert_close(p.grad, p_ref.grad, rtol=1e-3, atol=1e-3, msg=name)


@needs_interpreter
def test_interpreter_ops_are_library_ops():
    ns = getattr(torch.ops, lk_triton.NAMESPACE)
    keys = torch.randn(2, 2, 3, 4, 5)
    values = torch.randn(2, 2, 4, 4, 5)
    lam_c, lse = ns.content_lambda(keys, values)
    assert lse.dtype == torch.float32 and lse.shape == (2, 2, 3)
    torch.testing.assert_close(lam_c, reference.content_lambda(keys, values))
    torch.testing.assert_close(lse, keys.flatten(3).logsumexp(-1))


@needs_interpreter
def test_interpreter_torch_compile_aot_eager():
    inputs = _base_inputs("cpu")

    def fn(*args):
        return lambda_op(*args, backend="triton")

    lambda_op(*inputs, backend="triton")  # loads the registry outside the compiled region
    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    y = compiled(*inputs)
    y_eager = fn(*inputs)
    torch.testing.assert_close(y, y_eager)
    for g, g_eager in zip(torch.autograd.grad(y.square().sum(), inputs),
                          torch.autograd.grad(y_eager.square().sum(), inputs)):
        torch.testing.assert_close(g, g_eager)


@needs_interpreter
def test_interpreter_refuses_bfloat16():
    inputs = make_inputs(dtype=torch.bfloat16)
    reason = triton_backend.BACKEND.can_run("cpu", inputs[0].dtype)
    assert reason is not None and "bfloat16" in reason
    with pytest.raises(BackendUnavailableError, match="interpreter"):
        lambda_op(*inputs, backend="triton")


def test_kernels_compile_for_gpu_without_gpu():
    """Every kernel compiles to a cubin for sm_80 and sm_90 in bf16 and fp32 as a launch on the
    GPU headline shape compiles it (no GPU needed: Triton ships ptxas), and meets the static
    targets: MMA instructions in the window loop of every positional kernel (16-bit inputs), no
    register spills at the default configurations. Runs in a subprocess without the
    interpreter."""
    if lk_triton is None:
        pytest.skip(_IMPORT_ERROR)
    env = {k: val for k, val in os.environ.items() if k != "TRITON_INTERPRET"}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run([sys.executable, "-m", "lambda_kernels.tools.compile_check", "--check",
                           "--arch", "80", "90", "--dtypes", "bf16", "fp32"], cwd=root, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-3000:]
    assert "32 kernels compiled, 0 miss a target" in proc.stdout, proc.stdout[-4000:]


_BLACKWELL_COMPILE = """
import sys
from lambda_kernels.tools import compile_check as cc
arch = int(sys.argv[1])
launch = next(l for l in cc.launches_for(cc.SHAPES["headline"], "bf16")
              if cc.unwrap_kernel(l.kernel)[2].__name__ == "lambda_output_fwd_kernel")
jit_fn, named, constexprs, options = cc.resolve(launch)[0]
report = cc.analyse(cc.compile_one(jit_fn, named, constexprs, options, arch), jit_fn.__name__,
                    arch, "bf16", "")
print(f"regs={report.registers} loop_mma={report.loop_mix['MMA']} kernel_mma={report.kernel_mma}")
"""


@pytest.mark.parametrize("arch", [100, 120])
def test_positional_kernel_compiles_for_blackwell_without_gpu(arch):
    """The positional forward kernel (bf16, headline shape) compiles for sm_100 and sm_120 with
    the ptxas Triton uses for them, and its window loop holds MMA instructions (tcgen05 on
    sm_100, mma.sync on sm_120), as the compile check reports them."""
    if lk_triton is None:
        pytest.skip(_IMPORT_ERROR)
    env = {k: val for k, val in os.environ.items() if k != "TRITON_INTERPRET"}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run([sys.executable, "-c", _BLACKWELL_COMPILE, str(arch)], cwd=root,
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    figures = dict(item.split("=") for item in proc.stdout.split())
    assert int(figures["regs"]) > 0 and int(figures["loop_mma"]) > 0, proc.stdout


@pytest.mark.parametrize("shape", ["headline", "resnet-14-r23", "global-64", "tiny-h1"])
@pytest.mark.parametrize("dtype", ["bf16", "fp32"])
def test_pruned_configurations_are_valid_tiles(shape, dtype, monkeypatch):
    """Every configuration the autotuner may time (the prune run as on a GPU) has tl.dot operands
    of at least 16 rows/targets, is no wider than the image row unless nothing narrower is valid,
    and fits the register and shared-memory budgets unless it is the only fallback."""
    if lk_triton is None:
        pytest.skip(_IMPORT_ERROR)
    from lambda_kernels.tools import compile_check
    from lambda_kernels.triton import _tiles
    from lambda_kernels.triton import lambda_output as output
    monkeypatch.setattr(_tiles, "INTERPRETED", False)  # the GPU's choice: every fitting config
    monkeypatch.setenv(_tiles.AUTOTUNE_ENV, "1")
    monkeypatch.setitem(compile_check.SHAPES, "tiny-h1", (1, 1, 3, 2, 5, 2, 5, 3, 7))
    kinds = {kernel: kind for kind, (kernel, _) in output._KERNELS.items()}
    width = compile_check.SHAPES[shape][6]
    checked = 0
    for launch in compile_check.launches_for(compile_check.SHAPES[shape], dtype):
        _, _, jit_fn = _tiles.unwrap_kernel(launch.kernel)
        if jit_fn not in kinds:
            continue
        kind = kinds[jit_fn]
        args = {**dict(zip(jit_fn.arg_names, launch.args)), **launch.kwargs}
        chosen = launch.kernel.early_config_prune(launch.kernel.configs, args)
        assert chosen, kind
        narrowest = min(c.kwargs["BLOCK_T"] for c in chosen)
        for config in chosen:
            block_t = config.kwargs["BLOCK_T"]
            rows = block_t if kind == "dvalues" else args["BLOCK_H"] * block_t
            assert rows >= 16 and (kind != "dvalues" or block_t >= 16), (kind, config)
            assert block_t <= max(output.pow2(width), narrowest), (kind, config)
            if len(chosen) > 1:
                assert _tiles.fits_budgets(*output.footprint(kind, args, config)), (kind, config)
        checked += 1
    assert checked == 4


def _scratch_bytes(shape) -> int:
    """Bytes the launch records of forward and backward allocate besides the inputs, y and the
    input-sized gradients (meta tensors: no kernel runs)."""
    from lambda_kernels.tools.launches import op_launches
    b, heads, k, u, v, hh, ww, rh, rw = shape
    n = hh * ww
    input_sized = {b * heads * k * n, b * u * k * n, b * u * v * n, rh * rw * k * u, b * k * v,
                   b * heads * v * n}
    return sum(arg.numel() * arg.element_size()
               for launch in op_launches(shape, torch.bfloat16) for arg in launch.args
               if isinstance(arg, torch.Tensor) and arg.numel() not in input_sized)


@pytest.mark.parametrize("shape", [(2, 2, 16, 1, 128, 48, 48, 41, 41),  # the CUDA memory test's
                                   (32, 4, 16, 1, 64, 56, 56, 23, 23),  # GPU headline
                                   (1, 4, 16, 1, 8, 64, 64, 127, 127)],  # global context
                         ids=["memory-test", "headline", "global-64"])
def test_launches_allocate_no_big_intermediates(shape):
    """The memory rule on the launch records: besides outputs and input-sized gradients, forward
    and backward allocate only partial sums (dΛ per batch element, d_pos_table per split of a
    table-sized sum), which stay below a quarter of one λp (B·N·k·v) or all-logits (B·h·N·r²)
    tensor at the CUDA memory test's shape and do not grow with the image: doubling B, H and W
    multiplies λp and the logits by 8, the scratch by at most 2 (the dΛ partials follow B)."""
    if lk_triton is None:
        pytest.skip(_IMPORT_ERROR)
    b, heads, k, u, v, hh, ww, rh, rw = shape
    scratch = _scratch_bytes(shape)
    assert scratch > 0
    if shape[0] == 2:
        big = min(b * hh * ww * k * v, b * heads * hh * ww * rh * rw) * 2
        assert scratch < big / 4, (scratch, big)
    larger = (2 * b, heads, k, u, v, 2 * hh, 2 * ww, rh, rw)
    assert _scratch_bytes(larger) <= 2 * scratch, (_scratch_bytes(larger), scratch)


# ------------------------------------------------------------------ selection reasons
def test_reason_without_interpreter(monkeypatch):
    if lk_triton is None:
        pytest.skip(_IMPORT_ERROR)
    monkeypatch.setattr(triton_backend, "interpreter_active", lambda: False)
    reason = triton_backend.BACKEND.can_run("cpu", torch.float32)
    assert reason == "set TRITON_INTERPRET=1 to run Triton on CPU tensors"


def test_reason_triton_missing(monkeypatch):
    # Asked with the interpreter on, so the import is what fails (CI runs without TRITON_INTERPRET).
    monkeypatch.setattr(triton_backend, "interpreter_active", lambda: True)
    monkeypatch.setitem(sys.modules, "triton", None)  # makes `import triton` raise ImportError
    reason = triton_backend.BACKEND.can_run("cpu", torch.float32)
    assert reason is not None and "triton is not importable" in reason


def test_reason_other_device():
    reason = triton_backend.BACKEND.can_run("meta", torch.float32)
    if lk_triton is not None:
        assert reason is not None and "meta" in reason


def test_registered_with_priority_5():
    from lambda_kernels import backends
    backend = backends.get("triton")
    assert backend.priority == 5 and backend.auto_devices == ("cuda",)
    assert "triton" in backends.names()


# ------------------------------------------------------------------ CUDA
CUDA_DTYPES = [torch.float32, torch.float16, torch.bfloat16]


@needs_cuda
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", CUDA_DTYPES, ids=str)
def test_cuda_larger_shape(dtype):
    inputs = make_inputs(batch=2, heads=4, dim_k=16, dim_u=2, dim_v=40, height=19, width=23,
                         rh=7, rw=7, dtype=dtype, device="cuda", seed=3)
    check_against_reference(TRITON, inputs, dtype)


@needs_cuda
@pytest.mark.gpu
def test_cuda_autotuned_matches_reference(monkeypatch):
    """With autotuning on, every configuration surviving the prune is compiled and timed; the
    chosen ones give the reference's values and gradients (bf16, rows of several tiles)."""
    from lambda_kernels.triton import _tiles
    monkeypatch.setenv(_tiles.AUTOTUNE_ENV, "1")
    inputs = make_inputs(batch=2, heads=4, dim_k=16, dim_u=1, dim_v=64, height=9, width=45,
                         rh=11, rw=13, dtype=torch.bfloat16, device="cuda", seed=4)
    check_against_reference(TRITON, inputs, torch.bfloat16)


@needs_cuda
@pytest.mark.gpu
def test_cuda_backward_deterministic_under_deterministic_algorithms():
    """A larger image than the shared shapes (several d_pos_table splits): backward
    bit-identical, the second call under torch.use_deterministic_algorithms."""
    inputs = make_inputs(batch=3, heads=2, dim_k=16, dim_u=2, dim_v=24, height=31, width=29,
                         rh=15, rw=15, dtype=torch.float32, device="cuda", requires_grad=True)
    y = lambda_op(*inputs, backend="triton")
    dy = torch.randn_like(y)
    first = torch.autograd.grad(y, inputs, dy)
    torch.use_deterministic_algorithms(True)
    try:
        y = lambda_op(*inputs, backend="triton")
        second = torch.autograd.grad(y, inputs, dy)
    finally:
        torch.use_deterministic_algorithms(False)
    for g1, g2 in zip(first, second):
        assert torch.equal(g1, g2)


@needs_cuda
@pytest.mark.gpu
def test_cuda_torch_compile():
    """The ops are triton_ops: inductor traces into them (fullgraph, forward and backward)."""
    inputs = _base_inputs("cuda")

    def fn(*args):
        return lambda_op(*args, backend="triton")

    y_eager = lambda_op(*inputs, backend="triton")  # loads the registry outside the graph
    compiled = torch.compile(fn, fullgraph=True)
    y = compiled(*inputs)
    torch.testing.assert_close(y, y_eager, rtol=1e-5, atol=1e-5)
    for g, g_eager in zip(torch.autograd.grad(y.square().sum(), inputs),
                          torch.autograd.grad(y_eager.square().sum(), inputs)):
        torch.testing.assert_close(g, g_eager, rtol=1e-4, atol=1e-4)


@needs_cuda
@pytest.mark.gpu
def test_cuda_never_allocates_positional_lambda():
    """Peak memory of forward + backward beyond inputs, outputs and gradients stays far below one
    λp (B·N·k·v) or all-logits (B·h·N·r²) tensor."""
    b, h, k, u, v, hh, ww, r = 2, 2, 16, 1, 128, 48, 48, 41
    inputs = make_inputs(batch=b, heads=h, dim_k=k, dim_u=u, dim_v=v, height=hh, width=ww, rh=r,
                         rw=r, dtype=torch.float32, device="cuda", requires_grad=True)
    n = hh * ww
    big = min(b * n * k * v, b * h * n * r * r) * 4
    # y, dy, dq, dkeys, dvalues (two parts and their sum), d_pos_table, dbias, λ and lse.
    io = (2 * b * h * v * n + b * h * k * n + b * u * k * n + 3 * b * u * v * n
          + r * r * k * u + k + 2 * b * k * v + b * u * k) * 4
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    torch.autograd.grad(lambda_op(*inputs, backend="triton"), inputs,
                        torch.ones(b, h, v, hh, ww, device="cuda"))
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - base - io
    assert extra < big / 4, (f"peak scratch memory {extra / 2**20:.1f} MiB vs one λp / logits "
                             f"tensor {big / 2**20:.1f} MiB")
