"""A Keras 3 LambdaLayer: the lambda layer of LambdaNetworks for Keras models, channels-last
(whatever keras.config.image_data_format() says).

    LambdaLayer(dim_k=16, r=15, heads=4)   x (B, H, W, C) -> y (B, H / stride, W / stride, dim_out)

The constructor is that of lambda-networks' Keras port (lambda_networks/tfkeras.py) plus
`stride` and `backend`; the math is that of the torch LambdaLayer (layer.py, docs in
reference.py): q = BN(1×1 conv), keys = 1×1 conv, values = BN(1×1 conv), the positional table
is a Conv3D (1, r, r) (local context, `pos_conv`, with bias) or `rel_pos_emb` (2n-1, 2n-1,
dim_k, dim_u) of which the (2H-1, 2W-1) centre is used (global context, any H, W <= n).

Where the lambda runs:
- Keras' torch backend: this package's fused op `lambda_op`, so `model.fit` trains through the
  fused kernels (the back end is chosen as for the torch layer; `backend=` pins one).
- jax / tensorflow (or `backend="keras"` on torch): a keras.ops implementation of the same
  math. Its positional lambda is a 2-D convolution of the values (the Conv3D of upstream), so
  it holds a (B, H, W, dim_k, dim_v) intermediate, linear in the image size.

Every backend builds the same variables (names, shapes, order), so `save_weights` on one backend
loads on another. `torch_state_dict` / `load_torch_state_dict` convert to and from the
state_dict of the torch LambdaLayer (the same numbers on the same weights).

With tensorflow, torch must be imported first (importing this module does so: it imports
lambda_kernels, hence torch, before keras); torch imported after tensorflow crashes.

Batch norms follow the torch layer: momentum 0.1 in torch's convention (Keras momentum 0.9),
epsilon 1e-5; batch statistics in training, moving statistics in inference. (Keras updates
the moving variance with the biased batch variance, torch with the unbiased one.)
"""
from __future__ import annotations

from typing import Optional

import keras
import numpy as np
from keras import ops

_KERAS_OPS = "keras"  # backend= value that picks the keras.ops implementation on any backend
# Passed to every data-format-dependent layer and op (their default is the global
# keras.config.image_data_format(), which may be "channels_first").
_DATA_FORMAT = "channels_last"


def _positive_int(name: str, value) -> None:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


@keras.saving.register_keras_serializable(package="lambda_kernels")
class LambdaLayer(keras.layers.Layer):
    """Lambda layer over channels-last images, x (B, H, W, C) -> (B, H//stride, W//stride, dim_out).

    Exactly one of `n` (global context: any H, W <= n) and `r` (local context, odd window).
    `dim_out` defaults to C. stride > 1 average-pools the output (kernel = stride = stride).
    `backend`: "auto" (the fused op on Keras' torch backend, keras.ops elsewhere), "keras"
    (keras.ops everywhere), or a back end of lambda_op ("cpu", "cuda", "triton", "reference";
    torch backend only). Other keyword arguments go to keras.layers.Layer (name, dtype, ...)."""

    def __init__(self, *, dim_k: int, n: Optional[int] = None, r: Optional[int] = None,
                 heads: int = 4, dim_out: Optional[int] = None, dim_u: int = 1, stride: int = 1,
                 backend: str = "auto", **kwargs):
        super().__init__(**kwargs)
        for name, value in (("dim_k", dim_k), ("heads", heads), ("dim_u", dim_u),
                            ("stride", stride)):
            _positive_int(name, value)
        if dim_out is not None:
            _positive_int("dim_out", dim_out)
            if dim_out % heads != 0:
                raise ValueError(f"dim_out ({dim_out}) must be divisible by heads ({heads})")
        if (n is None) == (r is None):
            raise ValueError("give exactly one of n (global context) and r (local context), got "
                             f"n={n!r}, r={r!r}")
        if r is not None and (not isinstance(r, (int, np.integer)) or isinstance(r, bool)
                              or r < 1 or r % 2 == 0):
            raise ValueError(f"r must be a positive odd integer, got {r!r}")
        if n is not None:
            _positive_int("n", n)
        if not isinstance(backend, str):
            raise TypeError(f"backend must be a string, got {type(backend).__name__}")
        if backend not in ("auto", _KERAS_OPS) and keras.backend.backend() != "torch":
            raise ValueError(f"backend={backend!r} runs only on Keras' torch backend (this is "
                             f"{keras.backend.backend()!r}); use 'auto' or 'keras'")
        self.dim_k, self.n, self.r, self.heads = int(dim_k), n, r, int(heads)
        self.dim_out, self.dim_u, self.stride = dim_out, int(dim_u), int(stride)
        self.backend = backend
        self.local_contexts = r is not None
        self.dim = None  # input channels, known at build
        self.dim_v = None
        # The lambda_op back end the last fused forward ran (torch backend), else None.
        self.last_backend: Optional[str] = None

    # ----------------------------------------------------------------------------- building
    def build(self, input_shape):
        input_shape = tuple(input_shape)
        if len(input_shape) != 4 or input_shape[-1] is None:
            raise ValueError("x must have shape (B, H, W, C) with C known, got shape "
                             f"{input_shape}")
        dim = int(input_shape[-1])
        dim_out = dim if self.dim_out is None else self.dim_out
        if dim_out % self.heads != 0:
            raise ValueError(f"dim_out ({dim_out}, the input channels when not given) must be "
                             f"divisible by heads ({self.heads})")
        self.dim, self.dim_v = dim, dim_out // self.heads
        k, u, v, h = self.dim_k, self.dim_u, self.dim_v, self.heads
        policy = self.dtype_policy
        fmt = _DATA_FORMAT  # not the global image_data_format(): the layer is channels-last
        # Sub-layers and weights are created in one order on every backend: weight files match.
        self.to_q = keras.layers.Conv2D(k * h, 1, use_bias=False, data_format=fmt, name="to_q",
                                        dtype=policy)
        self.to_k = keras.layers.Conv2D(k * u, 1, use_bias=False, data_format=fmt, name="to_k",
                                        dtype=policy)
        self.to_v = keras.layers.Conv2D(v * u, 1, use_bias=False, data_format=fmt, name="to_v",
                                        dtype=policy)
        # torch BatchNorm2d: running = 0.9 running + 0.1 batch, eps 1e-5.
        self.norm_q = keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5,
                                                      name="norm_q", dtype=policy)
        self.norm_v = keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5,
                                                      name="norm_v", dtype=policy)
        xshape = (None, None, None, dim)
        self.to_q.build(xshape)
        self.to_k.build(xshape)
        self.to_v.build(xshape)
        self.norm_q.build((None, None, None, k * h))
        self.norm_v.build((None, None, None, v * u))
        if self.local_contexts:
            # Upstream's Conv3D(dim_k, (1, r, r)) over values laid out (B, v, H, W, u).
            self.pos_conv = keras.layers.Conv3D(k, (1, self.r, self.r), padding="same",
                                                data_format=fmt, name="pos_conv", dtype=policy)
            self.pos_conv.build((None, None, None, None, u))
        else:
            self.rel_pos_emb = self.add_weight(
                name="rel_pos_emb", shape=(2 * self.n - 1, 2 * self.n - 1, k, u),
                initializer=keras.initializers.RandomNormal(stddev=1.0), trainable=True)
        super().build(input_shape)

    def compute_output_shape(self, input_shape):
        if len(tuple(input_shape)) != 4:
            raise ValueError(f"x must have shape (B, H, W, C), got shape {tuple(input_shape)}")
        self._check_shape(tuple(input_shape))
        b, hh, ww, c = tuple(input_shape)
        dim_out = c if self.dim_out is None else self.dim_out
        s = self.stride
        return (b, None if hh is None else hh // s, None if ww is None else ww // s, dim_out)

    def get_config(self):
        config = super().get_config()
        config.update(dim_k=self.dim_k, n=self.n, r=self.r, heads=self.heads,
                      dim_out=self.dim_out, dim_u=self.dim_u, stride=self.stride,
                      backend=self.backend)
        return config

    # ------------------------------------------------------------------------------ running
    def _uses_fused_op(self) -> bool:
        return keras.backend.backend() == "torch" and self.backend != _KERAS_OPS

    def _check_input(self, x) -> None:
        self._check_shape(tuple(x.shape))

    def _check_shape(self, shape) -> None:
        """x's shape (sizes may be None): rank 4, the built channels, H, W <= n, >= stride."""
        if len(shape) != 4 or (self.dim is not None and shape[-1] is not None
                               and shape[-1] != self.dim):
            channels = "" if self.dim is None else f" with C = {self.dim}"
            raise ValueError(f"x must have shape (B, H, W, C){channels}, got shape {shape}")
        for name, size in (("H", shape[1]), ("W", shape[2])):
            if self.stride > 1 and isinstance(size, (int, np.integer)) and size < self.stride:
                raise ValueError(f"x must have H, W >= stride ({self.stride}) to pool; x has "
                                 f"{name}={size}")
        if not self.local_contexts:
            for name, size in (("H", shape[1]), ("W", shape[2])):
                # Static sizes are checked here; a size unknown while tracing (tensorflow graphs)
                # is only known when the op runs.
                if isinstance(size, (int, np.integer)) and size > self.n:
                    raise ValueError(f"global context with n={self.n} takes H, W <= {self.n}; x "
                                     f"has {name}={size} (build the layer with n >= {size})")

    def position_table(self, height, width):
        """(kernel (Rh, Rw, u, k) as Keras conv weights, bias (k,) or None) for an H×W input."""
        if self.local_contexts:
            return (ops.convert_to_tensor(self.pos_conv.kernel)[0],
                    ops.convert_to_tensor(self.pos_conv.bias))
        n, k, u = self.n, self.dim_k, self.dim_u
        table = ops.convert_to_tensor(self.rel_pos_emb)
        # Offsets beyond ±(H-1), ±(W-1) never reach inside the image: the centre suffices.
        if isinstance(height, (int, np.integer)) and isinstance(width, (int, np.integer)):
            table = table[n - height:n + height - 1, n - width:n + width - 1]
        else:  # sizes that are tensors while tracing (tensorflow graphs)
            table = ops.slice(table, [n - height, n - width, 0, 0],
                              [2 * height - 1, 2 * width - 1, k, u])
        return ops.transpose(table, (0, 1, 3, 2)), None

    def call(self, x, training=None):
        self._check_input(x)
        q = self.norm_q(self.to_q(x), training=training)
        keys = self.to_k(x)
        values = self.norm_v(self.to_v(x), training=training)
        shape = ops.shape(x)
        hh, ww = shape[1], shape[2]
        kernel, bias = self.position_table(hh, ww)
        if self._uses_fused_op():
            y = self._fused_lambda(q, keys, values, kernel, bias)
        else:
            y = self._ops_lambda(q, keys, values, kernel, bias, hh, ww)
        if self.stride > 1:
            y = ops.average_pool(y, self.stride, self.stride, padding="valid",
                                 data_format=_DATA_FORMAT)
        return y

    def _fused_lambda(self, q, keys, values, kernel, bias):
        """Keras' torch backend: the tensors are torch tensors; run lambda_op on them."""
        from lambda_kernels import lambda_op, select_backend

        b, hh, ww, _ = q.shape
        h, k, u, v = self.heads, self.dim_k, self.dim_u, self.dim_v
        dtype = values.dtype  # under mixed precision: the compute dtype
        q5 = q.reshape(b, hh, ww, h, k).permute(0, 3, 4, 1, 2).to(dtype)
        keys5 = keys.reshape(b, hh, ww, u, k).permute(0, 3, 4, 1, 2).to(dtype)
        values5 = values.reshape(b, hh, ww, u, v).permute(0, 3, 4, 1, 2)
        pos_table = kernel.permute(0, 1, 3, 2).to(dtype)  # (Rh, Rw, k, u)
        bias = None if bias is None else bias.to(dtype)
        # Resolve "auto" once, so last_backend names what ran.
        self.last_backend = select_backend(q5, keys5, values5, pos_table, bias,
                                           backend=self.backend)
        y = lambda_op(q5, keys5, values5, pos_table, bias, backend=self.last_backend)
        return y.permute(0, 3, 4, 1, 2).reshape(b, hh, ww, h * v)

    def _ops_lambda(self, q, keys, values, kernel, bias, hh, ww):
        """keras.ops on any backend, in float32 (reduced-precision inputs are upcast, the output
        cast back): λc by einsum, λp as a 2-D convolution of the values, y = q·(λc + λp)."""
        out_dtype = values.dtype
        h, k, u, v = self.heads, self.dim_k, self.dim_u, self.dim_v
        f32 = "float32"
        q = ops.reshape(ops.cast(q, f32), (-1, hh * ww, h, k))
        keys = ops.reshape(ops.cast(keys, f32), (-1, hh * ww, u, k))
        values = ops.cast(values, f32)
        sigma = ops.softmax(keys, axis=1)
        lam_c = ops.einsum("bnuk,bnuv->bkv", sigma, ops.reshape(values, (-1, hh * ww, u, v)))
        # λp[b, v, y, x, k] = Σ_{a,c,u} values[b, y+a, x+c, u, v] · kernel[a, c, u, k] (+ bias):
        # a convolution with the value channels folded into the batch.
        folded = ops.reshape(ops.transpose(ops.reshape(values, (-1, hh, ww, u, v)),
                                           (0, 4, 1, 2, 3)), (-1, hh, ww, u))
        lam_p = ops.conv(folded, ops.cast(kernel, f32), strides=1, padding="same",
                         data_format=_DATA_FORMAT)
        if bias is not None:
            lam_p = lam_p + ops.cast(bias, f32)
        lam_p = ops.reshape(lam_p, (-1, v, hh * ww, k))
        y = (ops.einsum("bnhk,bkv->bnhv", q, lam_c)
             + ops.einsum("bnhk,bvnk->bnhv", q, lam_p))
        return ops.cast(ops.reshape(y, (-1, hh, ww, h * v)), out_dtype)


λLayer = LambdaLayer


# --------------------------------------------------------------------- torch weight conversion
def _numpy(tensor) -> np.ndarray:
    if hasattr(tensor, "detach"):  # a torch tensor
        return tensor.detach().float().cpu().numpy() if tensor.is_floating_point() \
            else tensor.detach().cpu().numpy()
    return np.asarray(tensor)


def _ensure_built(layer: LambdaLayer, dim: int) -> None:
    if not layer.built:
        layer.build((None, None, None, dim))
    elif layer.dim != dim:
        raise ValueError(f"the Keras layer was built for {layer.dim} input channels, the torch "
                         f"weights have {dim}")


def load_torch_state_dict(layer: LambdaLayer, state_dict) -> None:
    """Set the Keras layer's weights from the state_dict (or module) of lambda_kernels'
    torch LambdaLayer (equivalently lambda_networks.LambdaLayer) of the same arguments. Builds
    the layer if needed; any Keras backend."""
    if not isinstance(layer, LambdaLayer):
        raise TypeError(f"layer must be a lambda_kernels.keras.LambdaLayer, got "
                        f"{type(layer).__name__}")
    if hasattr(state_dict, "state_dict"):
        state_dict = state_dict.state_dict()
    sd = {name: _numpy(value) for name, value in state_dict.items()}
    expected = {"to_q.weight", "to_k.weight", "to_v.weight"}
    for norm in ("norm_q", "norm_v"):
        expected |= {f"{norm}.{p}" for p in ("weight", "bias", "running_mean", "running_var")}
    expected |= {"pos_conv.weight", "pos_conv.bias"} if layer.local_contexts else {"rel_pos_emb"}
    missing = sorted(expected - set(sd))
    if missing:
        raise ValueError(f"state_dict lacks {missing} (context: "
                         f"{'local r' if layer.local_contexts else 'global n'} must match)")
    _ensure_built(layer, sd["to_q.weight"].shape[1])

    def assign(variable, value, name):
        if tuple(variable.shape) != value.shape:
            raise ValueError(f"state_dict[{name!r}] has shape {value.shape}, the Keras layer "
                             f"expects {tuple(variable.shape)} after conversion")
        variable.assign(value.astype(np.float32))

    for proj in ("to_q", "to_k", "to_v"):  # (out, in, 1, 1) -> (1, 1, in, out)
        assign(getattr(layer, proj).kernel, sd[f"{proj}.weight"].transpose(2, 3, 1, 0),
               f"{proj}.weight")
    for norm in ("norm_q", "norm_v"):
        bn = getattr(layer, norm)
        assign(bn.gamma, sd[f"{norm}.weight"], f"{norm}.weight")
        assign(bn.beta, sd[f"{norm}.bias"], f"{norm}.bias")
        assign(bn.moving_mean, sd[f"{norm}.running_mean"], f"{norm}.running_mean")
        assign(bn.moving_variance, sd[f"{norm}.running_var"], f"{norm}.running_var")
    if layer.local_contexts:  # (k, u, 1, r, r) -> (1, r, r, u, k)
        assign(layer.pos_conv.kernel, sd["pos_conv.weight"].transpose(2, 3, 4, 1, 0),
               "pos_conv.weight")
        assign(layer.pos_conv.bias, sd["pos_conv.bias"], "pos_conv.bias")
    else:  # same layout (2n-1, 2n-1, k, u)
        assign(layer.rel_pos_emb, sd["rel_pos_emb"], "rel_pos_emb")


def torch_state_dict(layer: LambdaLayer) -> dict:
    """The state_dict (torch tensors) of a torch LambdaLayer(C, same arguments) holding this
    built Keras layer's weights: `torch_layer.load_state_dict(torch_state_dict(layer))`."""
    import torch

    if not isinstance(layer, LambdaLayer):
        raise TypeError(f"layer must be a lambda_kernels.keras.LambdaLayer, got "
                        f"{type(layer).__name__}")
    if not layer.built:
        raise ValueError("layer is not built: call it on an input (or build it) first")

    def tensor(variable, *perm):
        value = np.asarray(keras.ops.convert_to_numpy(variable.value), dtype=np.float32)
        return torch.from_numpy(np.ascontiguousarray(value.transpose(*perm) if perm else value))

    sd = {}
    for proj in ("to_q", "to_k", "to_v"):
        sd[f"{proj}.weight"] = tensor(getattr(layer, proj).kernel, 3, 2, 0, 1)
    for norm in ("norm_q", "norm_v"):
        bn = getattr(layer, norm)
        sd[f"{norm}.weight"] = tensor(bn.gamma)
        sd[f"{norm}.bias"] = tensor(bn.beta)
        sd[f"{norm}.running_mean"] = tensor(bn.moving_mean)
        sd[f"{norm}.running_var"] = tensor(bn.moving_variance)
        sd[f"{norm}.num_batches_tracked"] = torch.tensor(0)
    if layer.local_contexts:
        sd["pos_conv.weight"] = tensor(layer.pos_conv.kernel, 4, 3, 0, 1, 2)
        sd["pos_conv.bias"] = tensor(layer.pos_conv.bias)
    else:
        sd["rel_pos_emb"] = tensor(layer.rel_pos_emb)
    return sd


__all__ = ["LambdaLayer", "λLayer", "load_torch_state_dict", "torch_state_dict"]
