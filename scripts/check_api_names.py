"""Every torch and triton name lambda_kernels and its tools use, looked up in this environment
(scripts/check_torch_pairing.sh runs it with the GPU host's pairing). Exits 1 naming what is
missing."""
import importlib
import sys

NAMES = [
    "torch.library.triton_op", "torch.library.wrap_triton", "torch.library.custom_op",
    "torch.library.register_fake", "torch.library.register_autograd", "torch.library.opcheck",
    "torch.library.register_vmap", "torch.library.Library", "torch.autograd.forward_ad.unpack_dual",
    "torch._C._is_fwd_grad_enabled", "torch._C._any_requires_grad",
    "torch._C._AutoDispatchBelowAutograd", "torch._C._after_autograd_keyset",
    "torch._C._functorch.is_functorch_wrapped_tensor", "torch._C._get_tracing_state",
    "torch._C._set_tracing_state", "torch.utils._python_dispatch._disable_current_modes",
    "torch.compiler.is_exporting", "torch.onnx.is_in_onnx_export", "torch.fx.wrap",
    "torch.func.jvp", "torch.func.vmap",
    "torch._dynamo.assume_constant_result", "torch.compiler.is_compiling",
    "torch._guards.detect_fake_mode", "torch.export.export", "torch.utils.cpp_extension.load",
    "torch.utils.cpp_extension.CUDAExtension", "torch.utils.cpp_extension.BuildExtension",
    "torch.nn.functional.scaled_dot_product_attention",
    "triton.jit", "triton.cdiv", "triton.autotune", "triton.heuristics", "triton.Config",
    "triton.next_power_of_2", "triton.compile", "triton.testing.do_bench",
    "triton.knobs.runtime", "triton.knobs.nvidia",
    "triton.runtime.autotuner.Autotuner", "triton.runtime.autotuner.Heuristics",
    "triton.runtime.errors.PTXASError", "triton.runtime._async_compile.AsyncCompileMode",
    "triton.compiler.ASTSource", "triton.compiler.make_backend",
    "triton.backends.compiler.BaseBackend", "triton.backends.compiler.GPUTarget",
    "triton.backends.nvidia.compiler.get_ptxas",
    "triton.backends.nvidia.compiler.sm_arch_from_capability",
    "triton._C.libtriton.native_specialize_impl",
] + [f"triton.language.{n}" for n in (
    "constexpr program_id dot int64 float32 zeros store load where maximum cdiv minimum exp "
    "trans arange sum gather num_programs max log full").split()]


def lookup(dotted):
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attr in parts[cut:]:
            obj = getattr(obj, attr)
        return obj
    raise ImportError(dotted)


missing = []
for name in NAMES:
    try:
        lookup(name)
    except Exception as exc:
        missing.append(f"{name} ({type(exc).__name__})")
import torch, triton
print(f"torch {torch.__version__}, triton {triton.__version__}: {len(NAMES) - len(missing)} of "
      f"{len(NAMES)} names found" + (f"; missing: {', '.join(missing)}" if missing else ""))
sys.exit(1 if missing else 0)
