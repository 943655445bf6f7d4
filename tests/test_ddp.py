"""DistributedDataParallel on CPU (gloo, 2 processes): a few SGD steps of a small LambdaResNet
give the parameters one process computes on the combined batch; SyncBatchNorm conversion; the
lambda-train DDP path under torchrun."""
import os
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from lambda_kernels import LambdaLayer
from lambda_kernels.models import create_model
from lambda_kernels.training import train_step

WORLD = 2
GLOBAL_BATCH = 8
STEPS = 3
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Batch-norm modes: "train" normalises each process's half with its own statistics, which one
# process reproduces by running the two halves separately (ghost batches) and averaging their
# losses; "frozen" (eval-mode batch norms) makes the combined batch itself the reference.
SCENARIOS = ("train", "frozen")

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="torch.distributed with gloo is not available")


def _model():
    torch.manual_seed(0)
    model = create_model("lambda_resnet26t", num_classes=5, depths=(1, 1, 1, 1),
                         channels=(32, 64, 128, 256), stem_channels=16, dim_k=4, r=3,
                         zero_init_last=False).double()
    with torch.no_grad():  # running statistics that matter in the frozen scenario
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return model


def _batch(step):
    gen = torch.Generator().manual_seed(100 + step)
    x = torch.randn(GLOBAL_BATCH, 3, 32, 32, generator=gen, dtype=torch.float64)
    return x, torch.randint(0, 5, (GLOBAL_BATCH,), generator=gen)


def _set_mode(model, scenario):
    model.train(scenario == "train")


def _ddp_worker(rank, init_file, out_dir):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=WORLD)
    try:
        device = torch.device("cpu")
        results = {}
        for scenario in SCENARIOS:
            model = _model()
            ddp = nn.parallel.DistributedDataParallel(model)
            optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
            _set_mode(ddp, scenario)
            share = slice(rank * GLOBAL_BATCH // WORLD, (rank + 1) * GLOBAL_BATCH // WORLD)
            for step in range(STEPS):
                x, y = _batch(step)
                train_step(ddp, optimizer, x[share], y[share], device=device)
            results[scenario] = {k: v.detach().clone() for k, v in model.named_parameters()}
        # SyncBatchNorm inside the process group: converted layers run in eval mode and compute
        # what plain ones do (torch synchronises training statistics, and lets DDP wrap
        # SyncBatchNorm, on CUDA only)
        model = _model().eval()
        synced = nn.SyncBatchNorm.convert_sync_batchnorm(_model()).eval()
        x, _ = _batch(0)
        with torch.no_grad():
            results["sync_bn_max_diff"] = float((synced(x) - model(x)).abs().max())
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _reference(scenario):
    """One process, the combined batch (ghost batches in the train scenario)."""
    model = _model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    _set_mode(model, scenario)
    for step in range(STEPS):
        x, y = _batch(step)
        optimizer.zero_grad(set_to_none=True)
        if scenario == "train":
            halves = zip(x.chunk(WORLD), y.chunk(WORLD))
            loss = sum(F.cross_entropy(model(xh), yh) for xh, yh in halves) / WORLD
        else:
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
    return dict(model.named_parameters())


def test_ddp_matches_one_process_on_the_combined_batch(tmp_path):
    mp.spawn(_ddp_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    torch.set_num_threads(torch.get_num_threads())
    for scenario in SCENARIOS:
        reference = _reference(scenario)
        initial = dict(_model().named_parameters())
        for name, param in reference.items():
            for rank in ranks:
                torch.testing.assert_close(rank[scenario][name], param.detach(), rtol=1e-9,
                                           atol=1e-10, msg=f"{scenario}: {name}")
        moved = [name for name in reference
                 if not torch.equal(reference[name].detach(), initial[name].detach())]
        assert len(moved) == len(reference)  # every parameter, lambda tables included, trained
    for rank in ranks:
        assert rank["sync_bn_max_diff"] < 1e-12


def test_convert_sync_batchnorm_on_our_models():
    model = _model()
    plain_norms = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    synced = nn.SyncBatchNorm.convert_sync_batchnorm(_model())
    assert sum(isinstance(m, nn.SyncBatchNorm) for m in synced.modules()) == plain_norms
    assert not any(type(m) is nn.BatchNorm2d for m in synced.modules())
    layers = [m for m in synced.modules() if isinstance(m, LambdaLayer)]
    assert layers and all(isinstance(layer.norm_q, nn.SyncBatchNorm)
                          and isinstance(layer.norm_v, nn.SyncBatchNorm) for layer in layers)
    assert synced.state_dict().keys() == model.state_dict().keys()
    x = torch.randn(4, 3, 32, 32, dtype=torch.float64)
    for mode in (True, False):  # without a process group SyncBatchNorm is a batch norm
        torch.testing.assert_close(synced.train(mode)(x), model.train(mode)(x), rtol=1e-10,
                                   atol=1e-10)


def test_lambda_train_under_torchrun(tmp_path):
    pytest.importorskip("sklearn")
    log = tmp_path / "log.jsonl"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(WORLD),
           "--standalone", "-m", "lambda_kernels.train", "--threads", "1", "--epochs", "1",
           "--batch-size", "16", "--val-fraction", "0.8", "--no-progress", "--model-arg",
           "depths=1,1,1,1", "--model-arg", "channels=32,64,128,256", "--model-arg",
           "stem_channels=16", "--log-json", str(log), "--checkpoint", str(tmp_path / "c.pt")]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, cwd=ROOT, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 process(es)" in proc.stdout and proc.stdout.count("epoch 1/1") == 1
    (record,) = [line for line in log.read_text().splitlines()]
    assert '"epoch": 1' in record
    assert torch.load(tmp_path / "c.pt", weights_only=False)["epoch"] == 1
