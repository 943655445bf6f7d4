"""What the compiled back ends (`cpu`, `cuda`) share: the ops of the extension
(torch.ops.lambda_kernels.*, whose dispatcher picks the CPU or CUDA kernel by device) and the
check that the extension is there with kernels for a dispatch key."""
from __future__ import annotations

from typing import Optional

import torch

from .. import _ext
from .._op_registrations import OP_NAMES
from . import FusedOps


def extension_ops() -> FusedOps:
    ns = torch.ops.lambda_kernels
    return FusedOps(ns.content_lambda, ns.content_lambda_backward, ns.lambda_output,
                    ns.lambda_output_backward)


def extension_reason(dispatch_key: str, rebuild_hint: str = "") -> Optional[str]:
    """None if every lambda op has a kernel for `dispatch_key`, else why not."""
    reason = _ext.load()
    if reason is not None:
        return reason
    missing = [op for op in OP_NAMES if not _ext.has_kernel(op, dispatch_key)]
    if missing:
        return f"extension built without {dispatch_key} kernels for {', '.join(missing)}{rebuild_hint}"
    return None
