"""The Keras 3 LambdaLayer (lambda_kernels.keras) on each Keras backend.

Keras fixes its backend per process (KERAS_BACKEND), so every backend runs the checks of
tests/keras_checks.py once in its own subprocess; each check is one test here. torch and jax
run in CI; tensorflow runs when installed. The torch run leaves a saved model and weights that
the other backends load (same outputs from the same weights).
"""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "tests", "keras_checks.py")
CHECKS = ["reference_inference", "reference_training_gradients", "batch_norm_statistics",
          "weight_conversion_round_trip", "mixed_bfloat16", "dynamic_shapes",
          "channels_first_global_format", "config_round_trip", "fit_digits", "save_load",
          "bad_input"]
BACKENDS = {"torch": "torch", "jax": "jax", "tensorflow": "tensorflow"}


def _missing(backend: str):
    for module in ("keras", BACKENDS[backend]):
        if importlib.util.find_spec(module) is None:
            return f"{module} is not installed (pip install 'lambda-kernels[test]')"
    return None


@pytest.fixture(scope="module")
def shared_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("keras_shared")


_RESULTS: dict = {}


def _run(backend: str, shared_dir) -> dict:
    if backend in _RESULTS:
        return _RESULTS[backend]
    if backend != "torch":  # the torch run writes the files the others load
        _run("torch", shared_dir)
    results_path = shared_dir / f"{backend}.json"
    # One OpenMP thread: the shapes are tiny, and on a busy 2-core machine torch's threads
    # spin-wait (20× slower model.fit). XLA at -O0: jax compiles many small programs here.
    env = dict(os.environ, KERAS_BACKEND=backend, JAX_PLATFORMS="cpu", OMP_NUM_THREADS="1",
               XLA_FLAGS="--xla_backend_optimization_level=0 "
                         "--xla_llvm_disable_expensive_passes=true",
               TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="",  # CPU checks
               PYTHONPATH=os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p))
    proc = subprocess.run([sys.executable, SCRIPT, str(results_path), str(shared_dir)], env=env,
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0 or not results_path.exists():
        raise RuntimeError(f"keras_checks.py on {backend} exited {proc.returncode}:\n"
                           f"{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    with open(results_path) as f:
        _RESULTS[backend] = json.load(f)
    return _RESULTS[backend]


@pytest.mark.parametrize("backend", list(BACKENDS))
@pytest.mark.parametrize("check", CHECKS)
def test_keras_backend(backend, check, shared_dir):
    reason = _missing(backend) or (_missing("torch") if backend != "torch" else None)
    if reason:
        pytest.skip(reason)
    report = _run(backend, shared_dir)
    assert report["backend"] == backend
    assert set(report["results"]) == set(CHECKS), "keras_checks.py and CHECKS disagree"
    failure = report["results"][check]
    assert failure is None, f"{check} on Keras' {backend} backend failed:\n{failure}"
