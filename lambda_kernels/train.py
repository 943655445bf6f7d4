"""lambda-train: train a LambdaResNet on a real image dataset, on one process or under DDP.

    lambda-train                                             # digits (bundled with scikit-learn), CPU or GPU
    lambda-train --model lambda_resnet26t --epochs 10 --amp --channels-last
    lambda-train --dataset cifar10 --data ~/data/cifar-10-batches-py --epochs 30 --compile
    lambda-train --checkpoint run.pt --epochs 20               # saves after every epoch
    lambda-train --checkpoint run.pt --epochs 20 --resume run.pt   # continues the same run
    torchrun --nproc_per_node 2 -m lambda_kernels.train --sync-bn  # DDP (gloo on CPU, nccl on CUDA)

Datasets, both offline: `digits` = scikit-learn's 1,797 8×8 handwritten digits, upsampled to
--image-size, 20% held out for validation (a fixed, seeded split); `cifar10` = the python
pickles of CIFAR-10 (data_batch_1..5, test_batch) in the folder given by --data, with random
crops and flips for training.

Everything that draws random numbers is seeded from --seed (the data order and augmentation
of epoch e from (seed, e)), and a checkpoint holds the model, optimizer, schedule, gradient
scaler, RNG state and history, so an interrupted run resumed with --resume continues the loss
curve it would have followed. --batch-size is per process.
"""
from __future__ import annotations

import argparse
import ast
import json
import math
import os
import pickle
import sys
import time
import warnings
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ._cpu_gemm import cpu_gemm_is_native
from .functional import BackendUnavailableError, select_backend
from .models import create_model, get_config, list_models
from .training import at_least_float32, autocast, train_step

CHECKPOINT_FORMAT = 1
# Arguments a resumed run must share with the checkpoint: they define the model and the data.
RESUME_MUST_MATCH = ("model", "model_arg", "dataset", "image_size", "val_fraction", "seed")


# ---------------------------------------------------------------------------------------------
# data


@dataclass
class ImageData:
    """Whole dataset in memory: images (N, C, H, W) float32, normalised; labels (N,) int64."""
    name: str
    train_images: torch.Tensor
    train_labels: torch.Tensor
    val_images: torch.Tensor
    val_labels: torch.Tensor
    num_classes: int
    augment: bool  # random crop (padding 4) + horizontal flip while training

    @property
    def in_chans(self) -> int:
        return self.train_images.shape[1]


def _normalise(train: torch.Tensor, val: torch.Tensor):
    mean = train.mean(dim=(0, 2, 3), keepdim=True)
    std = train.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)
    return (train - mean) / std, (val - mean) / std


def load_digits(image_size: int, val_fraction: float, seed: int) -> ImageData:
    """scikit-learn's digits, bilinearly upsampled from 8×8, split with a seeded permutation."""
    try:
        from sklearn.datasets import load_digits as sklearn_digits
    except ImportError as exc:
        raise ImportError("the digits dataset needs scikit-learn: pip install scikit-learn") from exc
    bunch = sklearn_digits()
    images = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0
    images = F.interpolate(images, size=(image_size, image_size), mode="bilinear",
                           align_corners=False)
    labels = torch.tensor(bunch.target, dtype=torch.int64)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    n_val = max(1, int(round(val_fraction * len(labels))))
    val, train = order[:n_val], order[n_val:]
    train_x, val_x = _normalise(images[train], images[val])
    return ImageData("digits", train_x, labels[train], val_x, labels[val], 10, augment=False)


def load_cifar10(path: str, image_size: int) -> ImageData:
    """CIFAR-10 from its python pickles (the folder cifar-10-batches-py, or its parent)."""
    folder = path
    if not os.path.exists(os.path.join(folder, "data_batch_1")):
        folder = os.path.join(path, "cifar-10-batches-py")
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    missing = [n for n in names if not os.path.exists(os.path.join(folder, n))]
    if missing:
        raise FileNotFoundError(f"--data {path!r}: no CIFAR-10 python batches there (missing "
                                f"{', '.join(missing)}); download cifar-10-python.tar.gz and "
                                "extract it")

    def read(name):
        with open(os.path.join(folder, name), "rb") as f:
            batch = pickle.load(f, encoding="bytes")
        x = torch.tensor(batch[b"data"], dtype=torch.uint8).reshape(-1, 3, 32, 32)
        return x.float() / 255.0, torch.tensor(batch[b"labels"], dtype=torch.int64)

    parts = [read(n) for n in names[:5]]
    train_x, train_y = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
    val_x, val_y = read("test_batch")
    if image_size != 32:
        train_x = F.interpolate(train_x, size=(image_size, image_size), mode="bilinear",
                                align_corners=False)
        val_x = F.interpolate(val_x, size=(image_size, image_size), mode="bilinear",
                              align_corners=False)
    train_x, val_x = _normalise(train_x, val_x)
    return ImageData("cifar10", train_x, train_y, val_x, val_y, 10, augment=True)


def load_dataset(args) -> ImageData:
    if args.dataset == "digits":
        return load_digits(args.image_size, args.val_fraction, args.seed)
    if args.data is None:
        raise ValueError("--dataset cifar10 needs --data DIR (the extracted cifar-10-batches-py)")
    return load_cifar10(args.data, args.image_size)


def epoch_batches(num_samples: int, batch_size: int, *, seed: int, epoch: int, rank: int = 0,
                  world_size: int = 1, shuffle: bool = True) -> list[torch.Tensor]:
    """Index batches of this process for one epoch: a permutation seeded by (seed, epoch),
    dealt round-robin to the processes (each gets the same number of full batches; the
    remainder is dropped when training, kept in the last short batch otherwise)."""
    if shuffle:
        order = torch.randperm(num_samples,
                               generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
        per_rank = num_samples // world_size // batch_size * batch_size
        mine = order[rank::world_size][:per_rank]
    else:
        mine = torch.arange(num_samples)[rank::world_size]
    return list(mine.split(batch_size)) if len(mine) else []


def augment(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random crop with zero padding 4 and random horizontal flip, per image."""
    b, _, h, w = images.shape
    padded = F.pad(images, (4, 4, 4, 4))
    dy = torch.randint(0, 9, (b,), generator=generator).tolist()
    dx = torch.randint(0, 9, (b,), generator=generator).tolist()
    out = torch.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(b)])
    flip = torch.rand(b, generator=generator) < 0.5
    out[flip] = out[flip].flip(-1)
    return out


# ---------------------------------------------------------------------------------------------
# progress and logging


class ProgressBar:
    """One self-rewriting status line on a terminal (`\\r`), silent elsewhere."""

    def __init__(self, total: int, description: str, *, enabled: bool, stream=None,
                 width: int = 24, min_interval: float = 0.1):
        self.total, self.description, self.enabled = total, description, enabled
        self.stream = stream or sys.stderr
        self.width, self.min_interval = width, min_interval
        self.done, self.last_draw = 0, 0.0

    def update(self, status: str = "") -> None:
        self.done += 1
        now = time.perf_counter()
        if self.enabled and (now - self.last_draw >= self.min_interval or self.done == self.total):
            filled = self.width * self.done // max(1, self.total)
            bar = "#" * filled + "." * (self.width - filled)
            self.stream.write(f"\r{self.description} [{bar}] {self.done}/{self.total} {status}\x1b[K")
            self.stream.flush()
            self.last_draw = now

    def close(self) -> None:
        if self.enabled and self.done:
            self.stream.write("\n")
            self.stream.flush()


# ---------------------------------------------------------------------------------------------
# processes and devices


@dataclass
class Distributed:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_distributed(device_arg: str) -> tuple[Distributed, torch.device]:
    """Join the process group torchrun describes (WORLD_SIZE > 1): nccl on CUDA, gloo on CPU;
    otherwise one process. Returns the process's place and its device."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    dist = Distributed(int(os.environ.get("RANK", "0")), world_size,
                       int(os.environ.get("LOCAL_RANK", "0")))
    if device_arg == "auto":
        device_arg = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(device_arg)
    except RuntimeError as exc:  # a malformed device string
        raise ValueError(f"--device {device_arg!r}: {exc}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("--device cuda but torch.cuda.is_available() is False")
        if dist.enabled and device.index is None:
            device = torch.device("cuda", dist.local_rank)
        torch.cuda.set_device(device)
    if dist.enabled and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return dist, device


def _sum_across_processes(values: list[float], dist: Distributed, device) -> list[float]:
    if not dist.enabled:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    torch.distributed.all_reduce(t)
    return t.tolist()


def unwrap(model: nn.Module) -> nn.Module:
    """The LambdaResNet inside torch.compile and DistributedDataParallel wrappers."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        else:
            return model


def amp_dtype(args, device: torch.device) -> Optional[torch.dtype]:
    """None without --amp; bfloat16 on CPU; --amp-dtype (bf16 default, or fp16) on CUDA."""
    if not args.amp:
        return None
    if device.type == "cpu":
        if args.amp_dtype == "fp16":
            raise ValueError("--amp-dtype fp16 needs a CUDA device (CPU autocast runs bf16)")
        return torch.bfloat16
    return torch.float16 if args.amp_dtype == "fp16" else torch.bfloat16


# ---------------------------------------------------------------------------------------------
# evaluation (the training step is lambda_kernels.training.train_step)


@torch.no_grad()
def evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *, batch_size: int,
             device: torch.device, dtype: Optional[torch.dtype], channels_last: bool,
             dist: Distributed) -> tuple[float, float]:
    """(mean loss, accuracy) over all of images/labels, shared out between processes."""
    model.eval()
    loss_sum, correct, count = 0.0, 0, 0
    for index in epoch_batches(len(labels), batch_size, seed=0, epoch=0, rank=dist.rank,
                               world_size=dist.world_size, shuffle=False):
        x, y = _to_device(images[index], labels[index], device, channels_last)
        with autocast(device, dtype):
            logits = at_least_float32(model(x))
        loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
        correct += int((logits.argmax(1) == y).sum())
        count += len(y)
    loss_sum, correct, count = _sum_across_processes([loss_sum, correct, count], dist, device)
    return loss_sum / max(count, 1), correct / max(count, 1)


def _to_device(x, y, device, channels_last):
    x = x.to(device, non_blocking=True)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, y.to(device, non_blocking=True)


# ---------------------------------------------------------------------------------------------
# model, optimizer, schedule, checkpoints


def parse_model_args(items: list[str]) -> dict:
    """["depths=1,1,1,1", "r=5", "act=silu"] -> {"depths": (1, 1, 1, 1), "r": 5, "act": "silu"}."""
    out = {}
    for item in items or []:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--model-arg must look like KEY=VALUE, got {item!r}")
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            value = text  # a bare word, e.g. act=silu
        out[key.strip()] = value
    return out


def build_model(args, data: ImageData) -> nn.Module:
    kwargs = dict(num_classes=data.num_classes, in_chans=data.in_chans,
                  img_size=args.image_size, backend=args.backend)
    overrides = parse_model_args(args.model_arg)
    # The model must fit the data (a different num_classes fails in the loss, in_chans in the
    # stem) and run the back end that was checked: these come from the flags, not --model-arg.
    for key, source in (("num_classes", f"--dataset {data.name}"),
                        ("in_chans", f"--dataset {data.name}"), ("backend", "--backend")):
        if key in overrides and overrides[key] != kwargs[key]:
            raise ValueError(f"--model-arg {key}={overrides[key]!r}: {source} sets "
                             f"{key}={kwargs[key]!r}; leave {key} out of --model-arg")
    kwargs.update(overrides)
    try:
        get_config(args.model, **kwargs)
    except (TypeError, ValueError) as exc:  # unknown names, bad values: a bad --model-arg
        raise ValueError(f"--model-arg: {exc}") from None
    return create_model(args.model, **kwargs)


def check_backend(name: str, device: torch.device, dtype: Optional[torch.dtype]) -> None:
    """Raise ValueError naming --backend if `name` cannot run the model's lambda layers on
    `device` in `dtype` (None: float32): caught here, not at the first forward."""
    # The choice depends only on (name, device type, dtype): an empty tensor stands for q.
    probe = torch.empty(0, dtype=dtype or torch.float32, device=device)
    try:
        select_backend(probe, probe, probe, probe, backend=name)
    except (ValueError, BackendUnavailableError) as exc:
        raise ValueError(f"--backend {name}: {exc} (device {device})") from None


def build_optimizer(args, model: nn.Module) -> torch.optim.Optimizer:
    # no weight decay on biases and batch-norm parameters
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": args.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    if args.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=args.lr, momentum=args.momentum, nesterov=True)
    return torch.optim.AdamW(groups, lr=args.lr)


def build_schedule(args, optimizer, steps_per_epoch: int):
    """Per step: linear warm-up over --warmup-epochs, then cosine decay to zero."""
    total = max(1, args.epochs * steps_per_epoch)
    warmup = min(total - 1, int(args.warmup_epochs * steps_per_epoch))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: str, *, model, optimizer, schedule, scaler, epoch: int, args,
                    history: list) -> None:
    """Written to a temporary file, then renamed: an interrupted save leaves the old one."""
    state = {"format": CHECKPOINT_FORMAT, "epoch": epoch, "args": vars(args),
             "model": unwrap(model).state_dict(), "optimizer": optimizer.state_dict(),
             "schedule": schedule.state_dict(),
             "scaler": scaler.state_dict() if scaler is not None else None,
             "rng": _rng_state(), "history": history}
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str, args) -> dict:
    if not os.path.exists(path):
        raise FileNotFoundError(f"--resume {path!r}: no such checkpoint")
    state = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"--resume {path!r} is not a lambda-train checkpoint")
    for name in RESUME_MUST_MATCH:
        saved, now = state["args"].get(name), getattr(args, name)
        if saved != now:
            raise ValueError(f"--resume {path!r}: the checkpoint was trained with "
                             f"{name}={saved!r}, this run has {name}={now!r}")
    return state


# ---------------------------------------------------------------------------------------------
# the run


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lambda-train", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    d = p.add_argument_group("data")
    d.add_argument("--dataset", choices=["digits", "cifar10"], default="digits")
    d.add_argument("--data", metavar="DIR", help="CIFAR-10 python batches (cifar-10-batches-py)")
    d.add_argument("--image-size", type=int, default=32, help="square input size (default 32)")
    d.add_argument("--val-fraction", type=float, default=0.2,
                   help="digits: share held out for validation (default 0.2)")
    m = p.add_argument_group("model")
    m.add_argument("--model", default="lambda_resnet26t", choices=list_models())
    m.add_argument("--model-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="create_model keyword, repeatable: depths=1,1,1,1 channels=32,64,128,256 "
                        "stem_channels=16 r=5 ...")
    m.add_argument("--backend", default="auto",
                   help="lambda back end of every layer: auto, cpu, cuda, triton, reference")
    m.add_argument("--sync-bn", action="store_true",
                   help="DDP on CUDA: batch-norm statistics over all processes (SyncBatchNorm)")
    o = p.add_argument_group("optimisation")
    o.add_argument("--epochs", type=int, default=10)
    o.add_argument("--batch-size", type=int, default=64, help="per process (default 64)")
    o.add_argument("--optimizer", choices=["adamw", "sgd"], default="adamw")
    o.add_argument("--lr", type=float, default=2e-3)
    o.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    o.add_argument("--weight-decay", type=float, default=0.05)
    o.add_argument("--warmup-epochs", type=float, default=1.0)
    o.add_argument("--label-smoothing", type=float, default=0.0)
    o.add_argument("--seed", type=int, default=0)
    r = p.add_argument_group("speed")
    r.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:1")
    r.add_argument("--amp", action="store_true",
                   help="mixed precision: bf16 on CPU; --amp-dtype on CUDA")
    r.add_argument("--amp-dtype", choices=["bf16", "fp16"], default="bf16",
                   help="CUDA autocast dtype (fp16 uses a gradient scaler)")
    r.add_argument("--channels-last", action="store_true", help="channels_last memory format")
    r.add_argument("--compile", action="store_true",
                   help="torch.compile the model (fullgraph on one process)")
    r.add_argument("--compile-backend", default="inductor", help="torch.compile backend")
    r.add_argument("--threads", type=int, help="torch.set_num_threads")
    c = p.add_argument_group("checkpoints and output")
    c.add_argument("--checkpoint", metavar="FILE", help="save here after every epoch")
    c.add_argument("--resume", metavar="FILE", help="continue the run saved in FILE")
    c.add_argument("--epochs-per-run", type=int, metavar="N",
                   help="stop after N epochs of this invocation (resume later with --resume)")
    c.add_argument("--log-json", metavar="FILE", help="append one JSON line per epoch")
    c.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def _check_args(args) -> None:
    for name in ("epochs", "batch_size", "image_size"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    # torch takes [0, 1]; 1 makes every target uniform, so nothing could be learned.
    if not 0.0 <= args.label_smoothing < 1.0:
        raise ValueError(f"--label-smoothing must be in [0, 1), got {args.label_smoothing}")
    if args.warmup_epochs < 0:
        raise ValueError(f"--warmup-epochs must be >= 0, got {args.warmup_epochs}")
    if not 0.0 < args.val_fraction < 1.0:
        raise ValueError(f"--val-fraction must be in (0, 1), got {args.val_fraction}")
    if args.lr <= 0:
        raise ValueError(f"--lr must be positive, got {args.lr}")
    if args.epochs_per_run is not None and args.epochs_per_run < 1:
        raise ValueError(f"--epochs-per-run must be >= 1, got {args.epochs_per_run}")


def run(args) -> list[dict]:
    """Train as `args` says; returns the history (one record per finished epoch)."""
    _check_args(args)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    dist, device = setup_distributed(args.device)
    log = print if dist.is_main else (lambda *a, **k: None)
    dtype = amp_dtype(args, device)
    check_backend(args.backend, device, dtype)
    if dtype is not None and device.type == "cpu" and not cpu_gemm_is_native(dtype):
        warnings.warn(f"--amp: torch has no native {str(dtype).replace('torch.', '')} GEMM or "
                      "convolution on this CPU (oneDNN runs bf16 on AVX-512 and Arm BF16 "
                      "CPUs): the model's convolutions run a fallback 30-100x slower than in "
                      "float32; train without --amp here", RuntimeWarning, stacklevel=2)
    if args.sync_bn and dist.enabled and device.type != "cuda":
        raise ValueError("--sync-bn needs CUDA devices: torch synchronises batch norms (and lets "
                         "DDP wrap SyncBatchNorm) on GPUs only")
    data = load_dataset(args)

    torch.manual_seed(args.seed)
    model = build_model(args, data).to(device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if args.sync_bn and dist.enabled:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    optimizer = build_optimizer(args, model)
    steps_per_epoch = len(epoch_batches(len(data.train_labels), args.batch_size, seed=args.seed,
                                        epoch=0, rank=dist.rank, world_size=dist.world_size))
    if steps_per_epoch == 0:
        raise ValueError(f"--batch-size {args.batch_size} x {dist.world_size} process(es) is "
                         f"larger than the {len(data.train_labels)} training images")
    schedule = build_schedule(args, optimizer, steps_per_epoch)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)

    start_epoch, history = 0, []
    if args.resume:
        state = load_checkpoint(args.resume, args)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        if state["scaler"] is not None:
            scaler.load_state_dict(state["scaler"])
        _set_rng_state(state["rng"])
        start_epoch, history = state["epoch"], state["history"]
        log(f"resumed {args.resume} after epoch {start_epoch}")

    net = model
    if dist.enabled:
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    if args.compile:
        net = torch.compile(net, fullgraph=not dist.enabled, backend=args.compile_backend)

    n_params = sum(p.numel() for p in model.parameters())
    log(f"lambda-train: {args.model} ({n_params / 1e6:.2f} M parameters) on {data.name} "
        f"{args.image_size}x{args.image_size} ({len(data.train_labels)} train / "
        f"{len(data.val_labels)} val), {device}, {dist.world_size} process(es), "
        f"amp {dtype and str(dtype).replace('torch.', '')}, channels_last {args.channels_last}, "
        f"compile {args.compile}, lambda back end {args.backend}")

    end_epoch = args.epochs
    if args.epochs_per_run is not None:
        end_epoch = min(end_epoch, start_epoch + args.epochs_per_run)
    show_bar = dist.is_main and not args.no_progress and sys.stderr.isatty()
    for epoch in range(start_epoch, end_epoch):
        batches = epoch_batches(len(data.train_labels), args.batch_size, seed=args.seed,
                                epoch=epoch, rank=dist.rank, world_size=dist.world_size)
        generator = torch.Generator().manual_seed(args.seed * 100_003 + epoch + 1)
        bar = ProgressBar(len(batches), f"epoch {epoch + 1}/{args.epochs}", enabled=show_bar)
        step_losses, loss_sum, correct, seen = [], 0.0, 0, 0
        net.train()
        start = time.perf_counter()
        for index in batches:
            images = data.train_images[index]
            if data.augment:
                images = augment(images, generator)
            x, y = _to_device(images, data.train_labels[index], device, args.channels_last)
            loss, hits = train_step(net, optimizer, x, y, device=device, dtype=dtype,
                                    scaler=scaler, label_smoothing=args.label_smoothing)
            schedule.step()
            step_losses.append(loss)
            loss_sum += loss * len(y)
            correct += hits
            seen += len(y)
            elapsed = time.perf_counter() - start
            bar.update(f"loss {loss:.3f} acc {100 * correct / seen:.1f}% "
                       f"{seen * dist.world_size / elapsed:.0f} img/s")
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        train_time = time.perf_counter() - start
        bar.close()
        loss_sum, correct, seen = _sum_across_processes([loss_sum, correct, seen], dist, device)
        val_loss, val_acc = evaluate(net, data.val_images, data.val_labels,
                                     batch_size=args.batch_size, device=device, dtype=dtype,
                                     channels_last=args.channels_last, dist=dist)
        record = {"epoch": epoch + 1, "train_loss": loss_sum / seen, "train_acc": correct / seen,
                  "val_loss": val_loss, "val_acc": val_acc, "images_per_s": seen / train_time,
                  "lr": optimizer.param_groups[0]["lr"], "epoch_s": time.perf_counter() - start,
                  "step_losses": step_losses}
        history.append(record)
        log(f"epoch {epoch + 1}/{args.epochs}  train loss {record['train_loss']:.4f} "
            f"acc {100 * record['train_acc']:.2f}%  val loss {val_loss:.4f} "
            f"acc {100 * val_acc:.2f}%  {record['images_per_s']:.0f} img/s  "
            f"lr {record['lr']:.3g}  {record['epoch_s']:.1f} s")
        if dist.is_main and args.log_json:
            with open(args.log_json, "a") as f:
                f.write(json.dumps(record) + "\n")
        if dist.is_main and args.checkpoint:
            save_checkpoint(args.checkpoint, model=model, optimizer=optimizer, schedule=schedule,
                            scaler=scaler, epoch=epoch + 1, args=args, history=history)
    if dist.enabled:
        torch.distributed.barrier()
    return history


def main(argv: Optional[list[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        run(args)
    except (ValueError, FileNotFoundError, ImportError) as exc:
        parser.error(str(exc))  # "lambda-train: error: ...", exit status 2
    finally:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
