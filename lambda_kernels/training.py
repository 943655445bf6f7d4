"""One training step of a classifier, the piece of training the library offers: the step
lambda-train runs on every batch (lambda_kernels/train.py, the program on top of this) and
lambda-bench times (`lambda-bench train`), and the autocast policy both use.

Mixed precision: `dtype` None runs in the model's own dtype; bfloat16 / float16 run the forward
under torch.autocast, and the loss is taken on float32 logits (float64 models stay float64).
"""
from __future__ import annotations

import contextlib
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn


def autocast(device: torch.device, dtype: Optional[torch.dtype]):
    """torch.autocast on the device in `dtype`, or nothing for None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def at_least_float32(logits: torch.Tensor) -> torch.Tensor:
    """The loss of autocast (bf16/fp16) logits in float32; float64 models stay float64."""
    return logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, images: torch.Tensor,
               labels: torch.Tensor, *, device: torch.device, dtype: Optional[torch.dtype] = None,
               scaler: Optional[torch.amp.GradScaler] = None,
               label_smoothing: float = 0.0) -> tuple[float, int]:
    """Forward, backward and optimizer step on one batch, in the model's current mode;
    (mean loss, correct predictions)."""
    optimizer.zero_grad(set_to_none=True)
    with autocast(device, dtype):
        logits = at_least_float32(model(images))
        loss = F.cross_entropy(logits, labels, label_smoothing=label_smoothing)
    if scaler is not None and scaler.is_enabled():
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        optimizer.step()
    return loss.item(), int((logits.argmax(1) == labels).sum())
