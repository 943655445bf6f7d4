"""Checks of lambda_kernels.keras on ONE Keras backend, run as a script by tests/test_keras.py
(Keras fixes its backend per process through KERAS_BACKEND, so each backend is one subprocess).

    KERAS_BACKEND=jax python tests/keras_checks.py RESULTS.json SHARED_DIR

Runs every check, writes {check name: None (passed) or the failure's traceback} to RESULTS.json.
SHARED_DIR carries weights across backends: the torch run writes a model, its weights and its
outputs there; the other backends load them and must give the same outputs.
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # tests/ (harness)

# torch (lambda_kernels) before keras: importing torch after tensorflow crashes the process.
import numpy as np  # noqa: E402
import torch  # noqa: E402

import lambda_kernels  # noqa: E402
from harness import assert_close_rule  # noqa: E402

import keras  # noqa: E402
from keras import ops  # noqa: E402
from lambda_kernels.keras import LambdaLayer, load_torch_state_dict, torch_state_dict  # noqa: E402

BACKEND = keras.backend.backend()
# The lambda implementations to test on this backend: the fused op only exists on torch.
PATHS = ("auto", "keras") if BACKEND == "torch" else ("auto",)
# Layer arguments covering local and global context, rectangular maps, u > 1, stride.
CONFIGS = [
    dict(dim=6, dim_k=4, r=3, heads=2, dim_out=6),
    dict(dim=5, dim_k=3, n=7, heads=2, dim_out=4, dim_u=2),
    dict(dim=4, dim_k=4, r=5, heads=4, dim_out=8, dim_u=2, stride=2),
]
X_SHAPE = (2, 6, 5)  # B, H, W (H != W)


def torch_layer(cfg, seed=0, dtype=torch.float32):
    """The torch LambdaLayer on the reference back end, random weights and running stats."""
    cfg = dict(cfg)
    dim = cfg.pop("dim")
    torch.manual_seed(seed)
    layer = lambda_kernels.LambdaLayer(dim, backend="reference", **cfg)
    with torch.no_grad():
        for p in layer.parameters():
            p.copy_(torch.randn_like(p) * 0.5)
        for norm in (layer.norm_q, layer.norm_v):
            norm.running_mean.normal_()
            norm.running_var.uniform_(0.5, 2.0)
    return layer.to(dtype)


def keras_layer(cfg, backend="auto", **kwargs):
    cfg = {k: v for k, v in cfg.items() if k != "dim"}
    return LambdaLayer(backend=backend, **cfg, **kwargs)


def random_x(cfg, seed=1, shape=X_SHAPE):
    b, hh, ww = shape
    return np.random.default_rng(seed).standard_normal((b, hh, ww, cfg["dim"])).astype(np.float32)


def to_numpy(t):
    return np.asarray(ops.convert_to_numpy(t))


def torch_nhwc(layer, x_nhwc, dtype, training, w=None):
    """Output (and, with output weights w, gradients of sum(y·w)) of the torch layer."""
    layer = layer.to(dtype).train(training)
    x = torch.from_numpy(x_nhwc).to(dtype).permute(0, 3, 1, 2).requires_grad_()
    y = layer(x).permute(0, 2, 3, 1)
    if w is None:
        return y.detach()
    layer.zero_grad()
    (y * torch.from_numpy(w).to(dtype)).sum().backward()
    grads = {name: p.grad.detach().clone() for name, p in layer.named_parameters()}
    grads["x"] = x.grad.permute(0, 2, 3, 1)
    return y.detach(), grads


def apply(layer, x, training=False):
    """layer(x); on jax through one jitted stateless call (eager jax compiles every op for
    every new shape, much slower here). Moving statistics are not updated."""
    if BACKEND != "jax":
        return layer(x, training=training)
    import jax

    if not layer.built:
        layer.build(x.shape)
    trainable = [v.value for v in layer.trainable_variables]
    frozen = [v.value for v in layer.non_trainable_variables]
    run = jax.jit(lambda t, f, x: layer.stateless_call(t, f, x, training=training)[0])
    return run(trainable, frozen, x)


def keras_gradients(layer, x, w):
    """(y, gradients of sum(y·w) for layer.trainable_variables, gradient for x), training mode."""
    if BACKEND == "torch":
        xt = ops.convert_to_tensor(x).requires_grad_()
        for v in layer.trainable_variables:
            v.value.grad = None
        y = layer(xt, training=True)
        (y * ops.convert_to_tensor(w)).sum().backward()
        return y, [v.value.grad for v in layer.trainable_variables], xt.grad
    if BACKEND == "jax":
        import jax

        trainable = [v.value for v in layer.trainable_variables]
        frozen = [v.value for v in layer.non_trainable_variables]

        def loss(trainable, x):
            y, _ = layer.stateless_call(trainable, frozen, x, training=True)
            return (y * w).sum(), y

        value_and_grad = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))
        (_, y), (grads, dx) = value_and_grad(trainable, x)
        return y, grads, dx
    import tensorflow as tf

    xt = tf.convert_to_tensor(x)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        y = layer(xt, training=True)
        loss = tf.reduce_sum(y * w)
    grads = tape.gradient(loss, layer.trainable_variables + [xt])
    return y, grads[:-1], grads[-1]


def grads_as_torch(layer, cfg, grads):
    """Keras gradients in the torch layer's names and layouts (through the weight converter)."""
    holder = keras_layer(cfg)
    holder.build((None, None, None, cfg["dim"]))
    assert len(grads) == len(holder.trainable_variables), (len(grads), holder.trainable_variables)
    for variable, grad in zip(holder.trainable_variables, grads):
        variable.assign(to_numpy(grad))
    return torch_state_dict(holder)


# ----------------------------------------------------------------------------------- checks
def check_reference_inference():
    """Inference outputs equal the reference (torch layer, reference back end, float64) on the
    same weights, for every lambda implementation of this backend."""
    for cfg in CONFIGS:
        tl = torch_layer(cfg)
        x = random_x(cfg)
        ref64 = torch_nhwc(tl, x, torch.float64, training=False)
        ref32 = torch_nhwc(tl, x, torch.float32, training=False)
        for path in PATHS:
            kl = keras_layer(cfg, path)
            load_torch_state_dict(kl, tl)
            y = apply(kl, x)
            assert_close_rule(f"{cfg} {path} y", torch.from_numpy(to_numpy(y)), ref64, ref32,
                              torch.float32)
            if BACKEND == "torch" and path == "auto":
                assert kl.last_backend == "cpu", f"fused path ran {kl.last_backend!r}, not cpu"


def check_reference_training_gradients():
    """Training mode (batch statistics): output, every weight gradient and the input gradient
    equal the float64 reference's."""
    for cfg in CONFIGS:
        tl = torch_layer(cfg)
        x = random_x(cfg)
        ref32 = torch_nhwc(tl, x, torch.float32, training=True)
        w = np.random.default_rng(2).standard_normal(ref32.shape).astype(np.float32)
        ref64, g64 = torch_nhwc(torch_layer(cfg), x, torch.float64, True, w)
        _, g32 = torch_nhwc(torch_layer(cfg), x, torch.float32, True, w)
        for path in PATHS:
            kl = keras_layer(cfg, path)
            load_torch_state_dict(kl, tl)
            y, grads, dx = keras_gradients(kl, x, w)
            assert_close_rule(f"{cfg} {path} y", torch.from_numpy(to_numpy(y)), ref64, ref32,
                              torch.float32)
            got = grads_as_torch(kl, cfg, grads)
            got["x"] = torch.from_numpy(to_numpy(dx))
            for name in g64:
                assert_close_rule(f"{cfg} {path} d{name}", got[name], g64[name], g32[name],
                                  torch.float32)


def check_batch_norm_statistics():
    """Training updates the moving statistics like torch (momentum 0.1): the mean exactly,
    the variance with the biased batch variance (Keras' convention); inference uses them."""
    cfg = CONFIGS[0]
    tl = torch_layer(cfg)
    x = random_x(cfg)
    kl = keras_layer(cfg)
    load_torch_state_dict(kl, tl)
    before = {k: v.clone() for k, v in tl.state_dict().items()}
    torch_nhwc(tl, x, torch.float32, training=True)
    if BACKEND == "jax":  # stateless: apply the returned statistics
        trainable = [v.value for v in kl.trainable_variables]
        frozen = [v.value for v in kl.non_trainable_variables]
        _, frozen = kl.stateless_call(trainable, frozen, x, training=True)
        for variable, value in zip(kl.non_trainable_variables, frozen):
            variable.assign(value)
    else:
        kl(x, training=True)
    after = torch_state_dict(kl)
    n = x.shape[0] * x.shape[1] * x.shape[2]
    for norm in ("norm_q", "norm_v"):
        mean = tl.state_dict()[f"{norm}.running_mean"]
        np.testing.assert_allclose(after[f"{norm}.running_mean"], mean, rtol=1e-5, atol=1e-5)
        var0 = before[f"{norm}.running_var"]
        unbiased = (tl.state_dict()[f"{norm}.running_var"] - 0.9 * var0) / 0.1
        expected = 0.9 * var0 + 0.1 * unbiased * (n - 1) / n
        np.testing.assert_allclose(after[f"{norm}.running_var"], expected, rtol=1e-4, atol=1e-5)
    # inference now uses the updated statistics: compare with the torch layer holding them
    tl.load_state_dict(after)
    ref = torch_nhwc(tl, x, torch.float32, training=False)
    np.testing.assert_allclose(to_numpy(apply(kl, x)), ref.numpy(), rtol=1e-4,
                               atol=1e-4 * float(ref.abs().max()))


def check_weight_conversion_round_trip():
    """torch state_dict -> Keras -> torch state_dict is the identity (every entry)."""
    for cfg in CONFIGS:
        tl = torch_layer(cfg)
        kl = keras_layer(cfg)
        load_torch_state_dict(kl, tl.state_dict())
        back = torch_state_dict(kl)
        assert set(back) == set(tl.state_dict()), sorted(set(back) ^ set(tl.state_dict()))
        for name, value in tl.state_dict().items():
            if name.endswith("num_batches_tracked"):
                continue
            assert torch.equal(back[name], value), name
        tl2 = lambda_kernels.LambdaLayer(cfg["dim"], **{k: v for k, v in cfg.items()
                                                        if k != "dim"})
        tl2.load_state_dict(back)  # strict: names and shapes of the torch layer


def check_mixed_bfloat16():
    """mixed_bfloat16: float32 variables, bfloat16 output, within the bfloat16 tolerance of
    the float64 reference (bound: twice a bfloat16 torch layer's error plus the floor)."""
    cfg = CONFIGS[0]
    tl = torch_layer(cfg)
    x = random_x(cfg)
    ref64 = torch_nhwc(tl, x, torch.float64, training=False)
    ref16 = torch_nhwc(tl, x, torch.bfloat16, training=False)
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        for path in PATHS:
            kl = keras_layer(cfg, path)
            load_torch_state_dict(kl, tl)
            y = apply(kl, x)
            assert str(kl.compute_dtype) == "bfloat16", kl.compute_dtype
            assert all(str(v.dtype) == "float32" for v in kl.weights), [v.dtype for v in kl.weights]
            assert "bfloat16" in str(y.dtype), f"output dtype {y.dtype}"
            got = torch.from_numpy(to_numpy(ops.cast(y, "float32")))
            assert_close_rule(f"{path} y", got, ref64, ref16, torch.bfloat16)
            if BACKEND == "torch" and path == "auto":
                assert kl.last_backend == "cpu", kl.last_backend
    finally:
        keras.config.set_dtype_policy("float32")


def check_dynamic_shapes():
    """Input((None, None, C)): any H, W <= n through one model, outputs equal to the layer's
    reference on each shape; compute_output_shape with unknown sizes and stride."""
    cfg = dict(dim=4, dim_k=4, n=8, heads=2, dim_out=6, stride=2)
    tl = torch_layer(cfg)
    inputs = keras.Input((None, None, 4))
    layer = keras_layer(cfg)
    model = keras.Model(inputs, layer(inputs))
    load_torch_state_dict(layer, tl)
    assert tuple(model.output.shape) == (None, None, None, 6), model.output.shape
    assert layer.compute_output_shape((None, 7, None, 4)) == (None, 3, None, 6)
    for shape in ((2, 5, 7), (1, 8, 6), (3, 2, 3)):
        x = random_x(cfg, shape=shape)
        y = model.predict(x, verbose=0)
        assert y.shape == (shape[0], shape[1] // 2, shape[2] // 2, 6), y.shape
        ref = torch_nhwc(tl, x, torch.float32, training=False)
        np.testing.assert_allclose(y, ref.numpy(), rtol=1e-4, atol=1e-4 * float(ref.abs().max()))


def check_config_round_trip():
    """get_config/from_config and keras serialize/deserialize give the same layer."""
    layer = LambdaLayer(dim_k=4, n=5, heads=2, dim_u=2, stride=2, name="lam")
    config = layer.get_config()
    assert config["dim_out"] is None and config["n"] == 5 and config["stride"] == 2, config
    clone = LambdaLayer.from_config(config)
    assert clone.get_config() == config, (clone.get_config(), config)
    restored = keras.layers.deserialize(keras.layers.serialize(layer))
    assert type(restored) is LambdaLayer and restored.get_config() == config
    x = random_x(dict(dim=6), shape=(1, 4, 4))
    layer(x)
    clone(x)
    clone.set_weights(layer.get_weights())
    np.testing.assert_array_equal(to_numpy(clone(x)), to_numpy(layer(x)))
    assert layer.dim_out is None and layer.dim_v == 3  # dim_out defaults to the channels


def check_channels_first_global_format():
    """The layer is channels-last whatever keras.config.image_data_format() says: built and
    called under "channels_first", or built under "channels_last" and called after the switch,
    it gives the channels-last outputs (local, global and strided configurations)."""
    for cfg in CONFIGS:
        tl = torch_layer(cfg)
        x = random_x(cfg)
        for path in PATHS:
            built_last = keras_layer(cfg, path)
            load_torch_state_dict(built_last, tl)
            expected = to_numpy(apply(built_last, x))
            keras.config.set_image_data_format("channels_first")
            try:
                built_first = keras_layer(cfg, path)
                load_torch_state_dict(built_first, tl)
                outputs = {"built channels_first": to_numpy(apply(built_first, x)),
                           "called after the switch": to_numpy(apply(built_last, x))}
            finally:
                keras.config.set_image_data_format("channels_last")
            for how, y in outputs.items():
                assert y.shape == expected.shape, f"{cfg} {path} {how}: {y.shape}"
                np.testing.assert_allclose(y, expected, rtol=1e-6, atol=1e-6,
                                           err_msg=f"{cfg} {path} {how}")


def digits_model():
    inputs = keras.Input((8, 8, 1))
    h = keras.layers.Conv2D(16, 3, padding="same", activation="relu")(inputs)
    lam = LambdaLayer(dim_k=8, r=3, heads=4, name="lam")
    h = keras.layers.ReLU()(lam(h))
    h = keras.layers.GlobalAveragePooling2D()(h)
    return keras.Model(inputs, keras.layers.Dense(10, activation="softmax")(h)), lam


def check_fit_digits():
    """A tiny model learns scikit-learn's digits through model.fit (fused kernels on torch)."""
    from sklearn.datasets import load_digits

    keras.utils.set_random_seed(0)
    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[..., None]
    y = digits.target.astype(np.int32)
    order = np.random.default_rng(0).permutation(len(x))
    x, y = x[order], y[order]
    model, lam = digits_model()
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    model.fit(x[:1500], y[:1500], batch_size=64, epochs=3, verbose=0)
    if BACKEND == "torch":
        assert lam.last_backend == "cpu", f"training ran {lam.last_backend!r}, not the fused cpu"
    _, accuracy = model.evaluate(x[1500:], y[1500:], verbose=0)
    assert accuracy > 0.5, f"held-out accuracy {accuracy:.3f} (chance 0.1)"


def cross_backend_model():
    inputs = keras.Input((None, None, 4))
    h = LambdaLayer(dim_k=4, r=3, heads=2, dim_u=2, name="local")(inputs)
    out = LambdaLayer(dim_k=4, n=6, heads=2, dim_out=8, stride=2, name="global")(h)
    return keras.Model(inputs, out)


def check_save_load(shared: str):
    """model.save(.keras) + load_model and save_weights/load_weights reproduce the outputs
    here; the torch run leaves its files in `shared`, the other backends load them."""
    keras.utils.set_random_seed(3)
    x = np.random.default_rng(4).standard_normal((2, 6, 5, 4)).astype(np.float32)
    model = cross_backend_model()
    for layer in model.layers[1:]:  # non-trivial moving statistics
        for norm in (layer.norm_q, layer.norm_v):
            norm.moving_mean.assign(np.random.default_rng(5).normal(size=norm.moving_mean.shape))
            norm.moving_variance.assign(np.full(norm.moving_variance.shape, 1.7))
    expected = model.predict(x, verbose=0)
    with tempfile.TemporaryDirectory() as tmp:
        model.save(os.path.join(tmp, "m.keras"))
        loaded = keras.models.load_model(os.path.join(tmp, "m.keras"))
        assert isinstance(loaded.get_layer("global"), LambdaLayer)
        np.testing.assert_array_equal(loaded.predict(x, verbose=0), expected)
        model.save_weights(os.path.join(tmp, "m.weights.h5"))
        fresh = cross_backend_model()
        fresh.load_weights(os.path.join(tmp, "m.weights.h5"))
        np.testing.assert_array_equal(fresh.predict(x, verbose=0), expected)
    if BACKEND == "torch":
        model.save(os.path.join(shared, "torch.keras"))
        model.save_weights(os.path.join(shared, "torch.weights.h5"))
        np.savez(os.path.join(shared, "torch_outputs.npz"), x=x, y=expected)
        return
    saved = np.load(os.path.join(shared, "torch_outputs.npz"))
    scale = float(np.abs(saved["y"]).max())
    fresh = cross_backend_model()
    fresh.load_weights(os.path.join(shared, "torch.weights.h5"))
    np.testing.assert_allclose(fresh.predict(saved["x"], verbose=0), saved["y"], rtol=1e-4,
                               atol=1e-4 * scale)
    loaded = keras.models.load_model(os.path.join(shared, "torch.keras"))
    np.testing.assert_allclose(loaded.predict(saved["x"], verbose=0), saved["y"], rtol=1e-4,
                               atol=1e-4 * scale)


def check_bad_input():
    """Bad arguments and inputs raise errors naming the argument and the expected shape."""
    def raises(fn, error, *needles):
        try:
            fn()
        except error as caught:
            message = str(caught)
            assert all(n in message for n in needles), f"{message!r} lacks {needles}"
            return
        raise AssertionError(f"no {error.__name__} raised (expected one naming {needles})")

    raises(lambda: LambdaLayer(dim_k=0, r=3), ValueError, "dim_k", "positive")
    raises(lambda: LambdaLayer(dim_k=4, r=4), ValueError, "r must be a positive odd")
    raises(lambda: LambdaLayer(dim_k=4), ValueError, "exactly one of n", "r")
    raises(lambda: LambdaLayer(dim_k=4, r=3, n=5), ValueError, "exactly one of n")
    raises(lambda: LambdaLayer(dim_k=4, r=3, heads=4, dim_out=6), ValueError, "dim_out (6)",
           "heads (4)")
    raises(lambda: LambdaLayer(dim_k=4, r=3, stride=0), ValueError, "stride")
    raises(lambda: LambdaLayer(dim_k=4, r=3, backend=3), TypeError, "backend")
    if BACKEND != "torch":
        raises(lambda: LambdaLayer(dim_k=4, r=3, backend="cpu"), ValueError, "backend='cpu'",
               "torch")
    else:
        layer = LambdaLayer(dim_k=4, r=3, backend="nonexistent")
        raises(lambda: layer(np.zeros((1, 3, 3, 4), np.float32)), Exception, "nonexistent")
    raises(lambda: LambdaLayer(dim_k=4, r=3, heads=4)(np.zeros((1, 3, 3, 6), np.float32)),
           ValueError, "dim_out (6", "heads (4)")
    layer = LambdaLayer(dim_k=4, r=3, heads=2)
    layer(np.zeros((1, 3, 3, 4), np.float32))
    raises(lambda: layer(np.zeros((1, 3, 3, 5), np.float32)), ValueError, "x must have shape",
           "C = 4")
    raises(lambda: layer(np.zeros((3, 3, 4), np.float32)), ValueError, "x must have shape",
           "(B, H, W, C)")
    glob = LambdaLayer(dim_k=4, n=4, heads=2)
    raises(lambda: glob(np.zeros((1, 3, 5, 4), np.float32)), ValueError, "n=4", "W=5")
    raises(lambda: LambdaLayer(dim_k=4, n=4, heads=2)(keras.Input((5, None, 4))), ValueError,
           "n=4", "H=5")
    raises(lambda: layer(keras.Input((None, None, 3))), ValueError, "C = 4")
    pooled = LambdaLayer(dim_k=4, r=3, heads=2, stride=2)
    raises(lambda: pooled(np.zeros((1, 1, 4, 4), np.float32)), ValueError, "stride (2)", "H=1")
    raises(lambda: load_torch_state_dict(LambdaLayer(dim_k=4, n=4, heads=2),
                                         torch_layer(CONFIGS[0])), ValueError, "rel_pos_emb")


CHECKS = {
    "reference_inference": check_reference_inference,
    "reference_training_gradients": check_reference_training_gradients,
    "batch_norm_statistics": check_batch_norm_statistics,
    "weight_conversion_round_trip": check_weight_conversion_round_trip,
    "mixed_bfloat16": check_mixed_bfloat16,
    "dynamic_shapes": check_dynamic_shapes,
    "channels_first_global_format": check_channels_first_global_format,
    "config_round_trip": check_config_round_trip,
    "fit_digits": check_fit_digits,
    "save_load": check_save_load,
    "bad_input": check_bad_input,
}


def main(results_path: str, shared: str) -> None:
    torch.manual_seed(0)
    results = {}
    for name, check in CHECKS.items():
        keras.utils.set_random_seed(0)
        try:
            check(shared) if name == "save_load" else check()
            results[name] = None
        except Exception:  # report every check, the test side asserts each one
            results[name] = traceback.format_exc()
    with open(results_path, "w") as f:
        json.dump({"backend": BACKEND, "keras": keras.__version__, "results": results}, f)


if __name__ == "__main__":
    main(*sys.argv[1:3])
