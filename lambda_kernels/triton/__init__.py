"""Triton kernels of the lambda op, one file per op family (content_lambda.py, lambda_output.py,
each opening with the math it computes), registered as torch.library ops in the
`lambda_kernels_triton` namespace by ops.py (torch.ops.lambda_kernels_triton.* or
lambda_kernels.triton.ops.*).

Importing this package imports triton. Whether the kernels run under the Triton CPU interpreter
is decided when they are decorated, i.e. by TRITON_INTERPRET at the time of this import:
`INTERPRETED` records it, `INTERPRETER_BROKEN` says why the interpreter cannot work (triton
imported before TRITON_INTERPRET=1 was set) or is None.
"""
from __future__ import annotations

from . import ops
from ._tiles import INTERPRETED, INTERPRETER_BROKEN
from .ops import NAMESPACE

__all__ = ["INTERPRETED", "INTERPRETER_BROKEN", "NAMESPACE", "ops"]
