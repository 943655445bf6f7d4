"""What gets benchmarked: every provider builds an nn.Module mapping x (B, dim, H, W) to
(B, dim_out, H, W) for a Case, says why it cannot run (None = it can), and counts its FLOPs.

FLOP counts are analytic, forward only, multiply-add = 2 FLOP, ignoring normalisation,
softmax and other elementwise work; fwd+bwd is counted as 3x forward (backward ~ 2x forward).
Notation: B batch, C = dim, C' = dim_out, N = H*W, h heads, k = dim_k, u = dim_u,
v = dim_out / h, P = number of (query, offset) pairs whose offset lands inside the image
(P = N*r_eff^2; local r: sum over rows/cols of the in-image window extent; global: N^2).

  lambda (this package, every back end)
      proj 2BNC(hk + uk + uv) + content 2BNukv + 2BNhkv + positional 2BPu min(h(k+v), kv)
      (the useful FLOP of lambda_kernels.cost: the cheaper association)
  lambda-networks (materialises lambda_p)
      local:  proj + content + 2BPkvu (Conv3d over in-image window positions) + 2BNhkv
      global: proj + content + 2BN^2kuv + 2BNhkv
  timm LambdaLayer (u = 1, lambda_p materialised like upstream)
      proj 2BNC(hk + k + v) + content + 2BPkv (local) or 2BN^2kv (global) + 2BNhkv
  mhsa    2BN*C*3C' + 2BN*C'^2 + 4BN^2C'          (q/k/v/out 1x1 projections + QK^T and AV)
  conv    2B*C*C'*P_s for an s x s kernel, P_s = in-image (query, tap) pairs ("same"
          padding; taps on the zero padding are not counted, as for the lambda layer)
  natten  2BN*C*3C' + 2BN*C'^2 + 4BN*K^2*C'         (K = min(r, H, W) window, always full)

These are direct-algorithm counts: a library may do less arithmetic (Winograd 3x3
convolutions, skipped padding), so "% of the matmul rate" can exceed 100% for conv3x3.
"""
from __future__ import annotations

import dataclasses
import importlib
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from .. import cost
from ..cost import LAMBDA_P, in_image_taps, positional_flops, table_size
from .presets import Case


def module_missing(name: str) -> Optional[str]:
    try:
        importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name == name:
            return f"{name} not installed (optional)"
        return f"{name} import failed: {exc}"[:160]
    except Exception as exc:  # a broken install
        return f"{name} not installed ({type(exc).__name__}: {exc})".split("\n")[0][:160]
    return None


def _proj(case: Case, out_channels: int) -> int:
    return 2 * case.batch * case.tokens * case.dim * out_channels


def flops_positional(case: Case, backward: bool = False, association=None) -> float:
    """Useful FLOP of the positional kernel (op lambda_output, or lambda_output_backward with
    `backward`) over the in-image pairs P, in the cheaper association: lambda_kernels.cost, the
    one definition; 2·B·P·u·min(h·(k+v), k·v) forward, 2·B·P·u·min(3·h·k + 2·h·v, 3·k·v)
    backward, which keeps neither logits nor λp (the memory rule) and so recomputes one. With
    `association` (cost.LOGITS, cost.LAMBDA_P): the FLOP of that association instead."""
    return float(positional_flops(case.batch, case.heads, case.dim_k, case.dim_u, case.dim_v,
                                  case.height, case.width,
                                  *table_size(case.height, case.width, case.r), backward,
                                  association))


def _positional_method_note(backend: str, case: Case) -> str:
    """Which positional method the CPU kernels take for this case (forward / backward), when
    it is not the direct one everywhere: the spectral method's speed comes from doing fewer
    operations, which the useful-FLOP rates do not show."""
    if backend != "cpu" or getattr(case, "frames", None):
        return ""
    from .._cpu_isa import cpu_isa, cpu_positional_method
    try:
        forced, level = cpu_positional_method(), cpu_isa()
    except RuntimeError:
        return ""
    speed = cost.direct_speed(case.autocast or case.dtype, level)
    sizes = (case.batch, case.heads, case.dim_k, case.dim_u, case.dim_v, case.height,
             case.width, *table_size(case.height, case.width, case.r))
    methods = [forced if forced != "auto" else
               cost.cpu_positional_method(*sizes, backward=backward, direct_speed=speed)
               for backward in (False, True)]
    if methods == [cost.DIRECT, cost.DIRECT]:
        return ""
    return f"positional: {methods[0]} fwd, {methods[1]} bwd"


def flops_lambda(case: Case) -> float:
    b, n, h, k, u, v = case.batch, case.tokens, case.heads, case.dim_k, case.dim_u, case.dim_v
    proj = _proj(case, h * k + u * k + u * v)
    content = 2 * b * n * u * k * v + 2 * b * n * h * k * v
    return float(proj + content) + flops_positional(case)


def flops_lambda_networks(case: Case) -> float:
    b, n, h, k, u, v = case.batch, case.tokens, case.heads, case.dim_k, case.dim_u, case.dim_v
    proj = _proj(case, h * k + u * k + u * v)
    content = 2 * b * n * u * k * v + 2 * b * n * h * k * v
    lam_p = flops_positional(case, association=LAMBDA_P)  # upstream forms λp (global: N² pairs)
    return float(proj + content + lam_p + 2 * b * n * h * k * v)


def flops_timm(case: Case) -> float:
    b, n, h, k, v = case.batch, case.tokens, case.heads, case.dim_k, case.dim_v
    proj = _proj(case, h * k + k + v)
    content = 2 * b * n * k * v + 2 * b * n * h * k * v
    lam_p = flops_positional(dataclasses.replace(case, dim_u=1), association=LAMBDA_P)
    return float(proj + content + lam_p + 2 * b * n * h * k * v)


def flops_mhsa(case: Case) -> float:
    b, n, c = case.batch, case.tokens, case.dim_out
    return float(_proj(case, 3 * c) + 2 * b * n * c * c + 4 * b * n * n * c)


def flops_conv(case: Case, size: int) -> float:
    pairs = in_image_taps(case.height, case.width, size, size)
    return float(2 * case.batch * case.dim * case.dim_out * pairs)


def natten_kernel(case: Case) -> int:
    r = case.r if case.r is not None else 2 * max(case.height, case.width) - 1
    kk = min(r, case.height, case.width)
    return kk if kk % 2 else kk - 1


def flops_natten(case: Case) -> float:
    b, n, c = case.batch, case.tokens, case.dim_out
    kk = natten_kernel(case)
    return float(_proj(case, 3 * c) + 2 * b * n * c * c + 4 * b * n * kk * kk * c)


# --------------------------------------------------------------------------------------------
# modules


class SelfAttention2d(nn.Module):
    """Multi-head self-attention over all H*W tokens: 1x1 q/k/v/out projections + SDPA."""

    def __init__(self, dim: int, dim_out: int, heads: int):
        super().__init__()
        self.heads = heads
        self.to_q = nn.Conv2d(dim, dim_out, 1, bias=False)
        self.to_k = nn.Conv2d(dim, dim_out, 1, bias=False)
        self.to_v = nn.Conv2d(dim, dim_out, 1, bias=False)
        self.to_out = nn.Conv2d(dim_out, dim_out, 1)

    def forward(self, x):
        b, _, hh, ww = x.shape

        def split(t):  # (B, C', H, W) -> (B, h, N, C'/h)
            return t.reshape(b, self.heads, -1, hh * ww).transpose(-1, -2)

        y = F.scaled_dot_product_attention(split(self.to_q(x)), split(self.to_k(x)),
                                           split(self.to_v(x)))
        return self.to_out(y.transpose(-1, -2).reshape(b, -1, hh, ww))


class NattenWrapper(nn.Module):
    """NATTEN NeighborhoodAttention2D on channels-last tokens (+ a 1x1 conv if C' != C)."""

    def __init__(self, dim: int, dim_out: int, heads: int, kernel: int):
        super().__init__()
        from natten import NeighborhoodAttention2D
        self.attn = NeighborhoodAttention2D(dim, heads, kernel_size=kernel)
        self.proj = nn.Identity() if dim == dim_out else nn.Conv2d(dim, dim_out, 1)

    def forward(self, x):
        return self.proj(self.attn(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2))


# --------------------------------------------------------------------------------------------
# providers


class Provider:
    """Base class. `family` groups providers computing the same function (same weights)."""
    name = "?"
    description = ""
    family: Optional[str] = None
    hidden = False                 # not in the default list (debug and video providers)
    optional = False               # needs a package that may be missing

    def unavailable(self, case: Case, device: torch.device) -> Optional[str]:
        return None

    def build(self, case: Case, device: torch.device) -> tuple[nn.Module, str]:
        raise NotImplementedError

    def flops(self, case: Case) -> float:
        return float("nan")

    def ran(self, module: nn.Module, device: torch.device) -> tuple[str, Optional[str]]:
        """(back end, variant) that ran the last call: plain PyTorch ops report torch and the
        instruction set of ATen's CPU kernels (or the CUDA compute capability)."""
        return "torch", torch_variant(device)

    def kernel_backend(self) -> Optional[str]:
        """The fused back end whose positional kernel this provider runs, if any."""
        return None

    def display_name(self, case: Case) -> str:
        return self.name


def torch_variant(device: torch.device) -> Optional[str]:
    """What PyTorch's own kernels run on: ATen's CPU capability (e.g. 'avx2'), or 'sm_90'."""
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        return f"sm_{major}{minor}"
    if device.type == "cpu":
        return torch.backends.cpu.get_cpu_capability().lower()
    return None


def _seeded_lambda(case: Case, backend: str = "auto"):
    from ..layer import LambdaLayer
    torch.manual_seed(0)
    layer = LambdaLayer(case.dim, dim_k=case.dim_k, n=case.n, r=case.r, heads=case.heads,
                        dim_out=case.dim_out, dim_u=case.dim_u, backend=backend)
    # non-trivial batch-norm state so eval-mode outputs exercise it
    with torch.no_grad():
        for bn in (layer.norm_q, layer.norm_v):
            bn.running_mean.uniform_(-0.1, 0.1)
            bn.running_var.uniform_(0.5, 1.5)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.1, 0.1)
        if case.r is None:
            layer.rel_pos_emb.mul_(0.1)
    return layer


class LambdaKernels(Provider):
    family = "lambda"

    def __init__(self, backend: str):
        self.backend = backend
        self.name = f"lambda-{backend}"
        self.description = f"lambda_kernels.LambdaLayer(backend={backend!r})"

    def unavailable(self, case, device):
        from ..functional import available_backends
        try:
            reasons = available_backends(device, case.torch_dtype)
        except Exception as exc:
            return f"available_backends failed: {type(exc).__name__}: {exc}"
        if self.backend not in reasons:
            return f"back end {self.backend!r} not registered (have: {', '.join(reasons)})"
        return reasons[self.backend]

    def build(self, case, device):
        layer = _seeded_lambda(case, self.backend).to(device=device, dtype=case.torch_dtype)
        return layer, _positional_method_note(self.backend, case)

    def flops(self, case):
        return flops_lambda(case)

    def ran(self, module, device):
        return module.last_backend, module.last_backend_variant

    def kernel_backend(self):
        from .. import backends
        return self.backend if backends.get(self.backend).ops is not None else None


class LambdaNetworks(Provider):
    name = "lambda-networks"
    description = "lambda_networks.LambdaLayer 0.4.0 (upstream), same weights"
    family = "lambda"
    optional = True

    def unavailable(self, case, device):
        missing = module_missing("lambda_networks")
        if missing:
            return missing
        if case.n is not None and (case.height != case.n or case.width != case.n):
            return (f"upstream global context needs H = W = n = {case.n} (lambda-networks "
                    "issue #30 on GitHub)")
        return None

    def build(self, case, device):
        from lambda_networks import LambdaLayer as Upstream
        ours = _seeded_lambda(case)
        up = Upstream(case.dim, dim_k=case.dim_k, n=case.n, r=case.r, heads=case.heads,
                      dim_out=case.dim_out, dim_u=case.dim_u)
        up.load_state_dict(ours.state_dict(), strict=True)
        return up.to(device=device, dtype=case.torch_dtype), "same weights"

    def flops(self, case):
        return flops_lambda_networks(case)


class TimmLambda(Provider):
    name = "timm"
    description = "timm.layers.LambdaLayer (u=1); weights mapped from ours where shapes allow"
    family = "lambda"
    optional = True

    def unavailable(self, case, device):
        missing = module_missing("timm")
        if missing:
            return missing
        if case.dim != case.dim_out:
            return (f"timm reshapes its output to the input channels: needs dim == dim_out "
                    f"(got {case.dim} -> {case.dim_out})")
        return None

    def build(self, case, device):
        try:
            from timm.layers.lambda_layer import LambdaLayer as TimmLayer
        except ImportError:
            from timm.models.layers.lambda_layer import LambdaLayer as TimmLayer
        kwargs = dict(dim_out=case.dim_out, num_heads=case.heads, dim_head=case.dim_k)
        if case.r is not None:
            layer = TimmLayer(case.dim, r=case.r, **kwargs)
        else:
            layer = TimmLayer(case.dim, r=None, feat_size=(case.height, case.width), **kwargs)
        note = self._map_weights(layer, case)
        return layer.to(device=device, dtype=case.torch_dtype), note

    @staticmethod
    def _map_weights(layer: nn.Module, case: Case) -> str:
        if case.dim_u != 1:
            return f"random weights (timm has u=1, case has dim_u={case.dim_u})"
        ours = _seeded_lambda(case).state_dict()
        mapped = {
            "qkv.weight": torch.cat([ours["to_q.weight"], ours["to_k.weight"],
                                     ours["to_v.weight"]], 0),
        }
        for bn in ("norm_q", "norm_v"):
            for key in ("weight", "bias", "running_mean", "running_var"):
                mapped[f"{bn}.{key}"] = ours[f"{bn}.{key}"]
        if case.r is not None:
            # ours: (k, u=1, 1, r, r) over (H, W); timm: Conv3d(1, k, (r, r, 1)) over (H, W, V)
            mapped["conv_lambda.weight"] = ours["pos_conv.weight"].permute(0, 1, 3, 4, 2)
            mapped["conv_lambda.bias"] = ours["pos_conv.bias"]
        else:
            n = case.n
            mapped["pos_emb"] = ours["rel_pos_emb"][n - case.height:n + case.height - 1,
                                                    n - case.width:n + case.width - 1, :, 0]
        target = layer.state_dict()
        bad = [k for k, t in mapped.items() if k not in target or target[k].shape != t.shape]
        if bad:
            return f"random weights (no shape-compatible mapping for {', '.join(bad)})"
        layer.load_state_dict(mapped, strict=False)
        return "weights mapped from ours"

    def flops(self, case):
        return flops_timm(case)


class MHSA(Provider):
    name = "mhsa"
    description = "multi-head self-attention over all H*W tokens (1x1 projections + SDPA)"

    def build(self, case, device):
        torch.manual_seed(0)
        return SelfAttention2d(case.dim, case.dim_out, case.heads).to(device, case.torch_dtype), ""

    def flops(self, case):
        return flops_mhsa(case)


class Conv(Provider):
    def __init__(self, size: Optional[int]):
        self.size = size  # None: the case's r
        self.name = "conv3x3" if size == 3 else "conv-r"
        self.description = ("nn.Conv2d 3x3, dim -> dim_out" if size == 3 else
                            "nn.Conv2d r x r (the lambda layer's receptive field), dim -> dim_out")

    def _k(self, case):
        if self.size is not None:
            return self.size
        return case.r if case.r is not None else None

    def display_name(self, case):
        k = self._k(case)
        return self.name if k is None or self.size == 3 else f"conv-r ({k}x{k})"

    def unavailable(self, case, device):
        if self._k(case) is None:
            return "global context has no r (use conv3x3)"
        return None

    def build(self, case, device):
        torch.manual_seed(0)
        k = self._k(case)
        return nn.Conv2d(case.dim, case.dim_out, k, padding=k // 2).to(device, case.torch_dtype), ""

    def flops(self, case):
        k = self._k(case)
        return flops_conv(case, k) if k else float("nan")


class Natten(Provider):
    name = "natten"
    description = "NATTEN NeighborhoodAttention2D, kernel = min(r, H, W)"
    optional = True

    def unavailable(self, case, device):
        missing = module_missing("natten")
        if missing:
            return missing
        if case.dim % case.heads:
            return f"dim ({case.dim}) must be divisible by heads ({case.heads})"
        return None

    def build(self, case, device):
        torch.manual_seed(0)
        kk = natten_kernel(case)
        mod = NattenWrapper(case.dim, case.dim_out, case.heads, kk)
        return mod.to(device, case.torch_dtype), f"kernel {kk}x{kk}"

    def flops(self, case):
        return flops_natten(case)


class _FailingModule(nn.Module):
    def forward(self, x):
        raise RuntimeError("deliberate failure (debug-fail provider)")


class DebugFail(Provider):
    """Raises in forward: proves that a failing provider becomes a row, not a crash."""
    name = "debug-fail"
    description = "always raises (for tests)"
    hidden = True

    def build(self, case, device):
        return _FailingModule(), ""


# --------------------------------------------------------------------------------------------
# video / volumes (cases with frames): x (B, dim, T, H, W)
#
#   lambda3d   proj + content (as the 2-D lambda, N = T*H*W)
#              + positional 2BPu*min(h(k+v), kv), P = in-volume pairs of the (rt, r, r) window
#   conv3d     2B*C*C'*P_3 (in-volume pairs of the 3x3x3 window)
#   mhsa3d     the mhsa formula over N = T*H*W tokens


def flops_lambda3d(case: Case) -> float:
    b, n, h, k, u, v = case.batch, case.tokens, case.heads, case.dim_k, case.dim_u, case.dim_v
    proj = _proj(case, h * k + u * k + u * v)
    content = 2 * b * n * u * k * v + 2 * b * n * h * k * v
    pairs = cost.in_volume_taps(case.frames, case.height, case.width, case.rt, case.r, case.r)
    per_tap = cost.multiply_adds_per_tap(h, k, v, cost.cheaper_association(h, k, v))
    return float(proj + content + 2 * b * pairs * u * per_tap)


def _needs_video(case: Case) -> Optional[str]:
    return None if case.frames is not None else "needs a video case (--preset video)"


class LambdaKernels3d(Provider):
    family = "lambda3d"

    def __init__(self, backend: str):
        self.backend = backend
        self.name = f"lambda3d-{backend}"
        self.description = f"lambda_kernels.LambdaLayer3d(backend={backend!r}), r=(rt, r, r)"

    def unavailable(self, case, device):
        return _needs_video(case) or LambdaKernels(self.backend).unavailable(case, device)

    def build(self, case, device):
        from ..layer import LambdaLayer3d
        torch.manual_seed(0)
        layer = LambdaLayer3d(case.dim, dim_k=case.dim_k, r=(case.rt, case.r, case.r),
                              heads=case.heads, dim_out=case.dim_out, dim_u=case.dim_u,
                              backend=self.backend)
        with torch.no_grad():  # non-trivial batch-norm state, as the 2-D providers
            for bn in (layer.norm_q, layer.norm_v):
                bn.running_mean.uniform_(-0.1, 0.1)
                bn.running_var.uniform_(0.5, 1.5)
                bn.weight.uniform_(0.5, 1.5)
                bn.bias.uniform_(-0.1, 0.1)
        return layer.to(device=device, dtype=case.torch_dtype), ""

    def flops(self, case):
        return flops_lambda3d(case)

    def ran(self, module, device):
        return module.last_backend, module.last_backend_variant


class Conv3d(Provider):
    name = "conv3d-3x3x3"
    description = "nn.Conv3d 3x3x3, dim -> dim_out"

    def unavailable(self, case, device):
        return _needs_video(case)

    def build(self, case, device):
        torch.manual_seed(0)
        return nn.Conv3d(case.dim, case.dim_out, 3, padding=1).to(device, case.torch_dtype), ""

    def flops(self, case):
        pairs = cost.in_volume_taps(case.frames, case.height, case.width, 3, 3, 3)
        return float(2 * case.batch * case.dim * case.dim_out * pairs)


class _Flatten3d(nn.Module):
    """A 2-D module on (B, C, T*H, W): for attention over all tokens, the same function."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        b, c, tt, hh, ww = x.shape
        y = self.inner(x.reshape(b, c, tt * hh, ww))
        return y.reshape(b, y.shape[1], tt, hh, ww)


class MHSA3d(Provider):
    name = "mhsa3d"
    description = "multi-head self-attention over all T*H*W tokens (1x1 projections + SDPA)"

    def unavailable(self, case, device):
        return _needs_video(case)

    def build(self, case, device):
        torch.manual_seed(0)
        module = _Flatten3d(SelfAttention2d(case.dim, case.dim_out, case.heads))
        return module.to(device, case.torch_dtype), ""

    def flops(self, case):
        return flops_mhsa(case)


REGISTRY: dict[str, Provider] = {}


def register(provider: Provider) -> Provider:
    REGISTRY[provider.name] = provider
    return provider


for _p in (LambdaKernels("cpu"), LambdaKernels("cuda"), LambdaKernels("triton"),
           LambdaKernels("reference"), LambdaNetworks(), TimmLambda(), MHSA(), Conv(3),
           Conv(None), Natten(), DebugFail()):
    register(_p)
# Video providers: run by `--preset video` (its provider list), not by the image presets.
for _p in (LambdaKernels3d("reference"), LambdaKernels3d("cpu"), LambdaKernels3d("triton"),
           LambdaKernels3d("cuda"), Conv3d(), MHSA3d()):
    _p.hidden = True
    register(_p)


def default_names() -> list[str]:
    return [name for name, p in REGISTRY.items() if not p.hidden]


def resolve(names: Optional[list[str]]) -> list[str]:
    """Provider names in order; unknown names stay (error rows; lambda-bench refuses them)."""
    if not names:
        return default_names()
    out = []
    for name in names:
        name = name.strip()
        if not name:
            continue
        if name in ("lambda", "lambda-*"):
            out += [n for n in REGISTRY if n.startswith("lambda-") and n != "lambda-networks"]
        elif name == "all":
            out += default_names()
        else:
            out.append(name)
    return list(dict.fromkeys(out))


def get(name: str) -> Provider:
    if name not in REGISTRY:
        raise KeyError(f"unknown provider {name!r}; known: {', '.join(REGISTRY)}")
    return REGISTRY[name]


def make_input(case: Case, device: torch.device) -> torch.Tensor:
    """The one input every provider of a case sees (seeded, so subprocesses rebuild it)."""
    g = torch.Generator().manual_seed(1234)
    x = torch.randn(case.batch, case.dim, *case.spatial, generator=g)
    return x.to(device=device, dtype=case.torch_dtype)


def make_grad(case: Case, device: torch.device) -> torch.Tensor:
    g = torch.Generator().manual_seed(4321)
    dy = torch.randn(case.batch, case.dim_out, *case.spatial, generator=g)
    return dy.to(device=device, dtype=case.torch_dtype)


Builder = Callable[[Case, torch.device], tuple[nn.Module, str]]
__all__ = ["Provider", "REGISTRY", "register", "get", "resolve", "default_names", "make_input",
           "make_grad", "flops_lambda", "flops_positional", "torch_variant",
           "SelfAttention2d"]
