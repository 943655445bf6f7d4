"""The einsum/Conv3d reference as a back end: always available, differentiable by autograd,
materialises softmax(keys) and the positional lambda (see reference.py)."""
from __future__ import annotations

from .. import reference
from . import Backend, register


def _can_run(device_type, dtype):
    return None


register(Backend(
    name="reference",
    description="pure PyTorch einsum/Conv3d ground truth (materialises λp; slow, any device)",
    priority=100,
    auto_devices=("cpu", "cuda", "mps", "xpu", "meta"),
    can_run=_can_run,
    forward=reference.lambda_reference,
))
