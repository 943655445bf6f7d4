"""lambda-train: a real training run on scikit-learn's digits, resuming, the speed options, the
CIFAR-10 reader and the command-line entry points."""
import io
import json
import os
import pickle
import subprocess
import sys
import tomllib
import warnings

import pytest
import torch

from lambda_kernels import train

pytest.importorskip("sklearn")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_MODEL = ["--model", "lambda_resnet26t", "--model-arg", "depths=1,1,1,1",
              "--model-arg", "channels=32,64,128,256", "--model-arg", "stem_channels=16",
              "--model-arg", "r=5", "--image-size", "32", "--no-progress", "--threads", "1"]


@pytest.fixture(autouse=True)
def _restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _run(argv):
    return train.run(train.build_parser().parse_args(argv))


def test_digits_reaches_90_percent_validation_accuracy(tmp_path, capsys):
    log = tmp_path / "log.jsonl"
    history = _run([*TINY_MODEL, "--epochs", "5", "--batch-size", "32", "--lr", "3e-3",
                    "--log-json", str(log)])
    out = capsys.readouterr().out
    assert len(history) == 5
    assert history[-1]["val_acc"] >= 0.90, history[-1]
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert all(r["images_per_s"] > 0 for r in history)
    assert "359 val" in out and "img/s" in out and "epoch 5/5" in out
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2, 3, 4, 5]


def test_resumed_run_continues_the_same_loss_curve(tmp_path):
    common = [*TINY_MODEL, "--epochs", "3", "--batch-size", "32", "--val-fraction", "0.8"]
    straight = _run([*common, "--checkpoint", str(tmp_path / "straight.pt")])
    first = _run([*common, "--checkpoint", str(tmp_path / "split.pt"), "--epochs-per-run", "1"])
    assert len(first) == 1
    resumed = _run([*common, "--checkpoint", str(tmp_path / "split.pt"),
                    "--resume", str(tmp_path / "split.pt")])
    assert [r["epoch"] for r in resumed] == [1, 2, 3]
    for a, b in zip(straight, resumed):
        assert a["step_losses"] == pytest.approx(b["step_losses"], rel=1e-6, abs=1e-7)
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-6)
        assert a["lr"] == pytest.approx(b["lr"])
    model_a = torch.load(tmp_path / "straight.pt", weights_only=False)["model"]
    model_b = torch.load(tmp_path / "split.pt", weights_only=False)["model"]
    for name, tensor in model_a.items():
        torch.testing.assert_close(model_b[name], tensor, rtol=1e-5, atol=1e-6, msg=name)
    with pytest.raises(ValueError, match="trained with model_arg=.*this run has model_arg="):
        _run([*common, "--model-arg", "dim_k=8", "--resume", str(tmp_path / "split.pt")])


def test_amp_channels_last_compile_and_backend(capsys):
    """--amp on a CPU whose torch lacks native bf16 GEMMs (AVX2) warns that fp32 is faster."""
    from lambda_kernels._cpu_gemm import cpu_gemm_is_native

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        history = _run([*TINY_MODEL, "--epochs", "1", "--batch-size", "32", "--val-fraction",
                        "0.9", "--amp", "--channels-last", "--compile", "--compile-backend",
                        "eager", "--backend", "cpu"])
    slow = [w for w in caught if "no native bfloat16 GEMM" in str(w.message)]
    assert len(slow) == (0 if cpu_gemm_is_native(torch.bfloat16) else 1)
    out = capsys.readouterr().out
    assert "amp bfloat16" in out and "channels_last True" in out and "compile True" in out
    assert history[0]["train_loss"] == history[0]["train_loss"]  # finite, not NaN
    assert 0.0 <= history[0]["val_acc"] <= 1.0


def _write_fake_cifar(folder, per_batch=16):
    os.makedirs(folder)
    gen = torch.Generator().manual_seed(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = torch.randint(0, 256, (per_batch, 3 * 32 * 32), generator=gen, dtype=torch.uint8)
        labels = torch.randint(0, 10, (per_batch,), generator=gen).tolist()
        with open(os.path.join(folder, name), "wb") as f:
            pickle.dump({b"data": data.numpy(), b"labels": labels}, f)


def test_cifar10_reader_and_augmentation(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    _write_fake_cifar(str(folder))
    data = train.load_cifar10(str(tmp_path), 32)  # the parent folder works too
    assert data.train_images.shape == (80, 3, 32, 32) and data.val_images.shape == (16, 3, 32, 32)
    assert data.augment and data.in_chans == 3
    images = data.train_images[:4]
    augmented = train.augment(images, torch.Generator().manual_seed(0))
    assert augmented.shape == images.shape and not torch.equal(augmented, images)
    history = _run([*TINY_MODEL, "--dataset", "cifar10", "--data", str(folder), "--epochs", "1",
                    "--batch-size", "16"])
    assert len(history) == 1 and history[0]["val_loss"] > 0


def _cli_error(argv, capsys) -> str:
    """main(argv) ends as an argparse error (exit status 2, no traceback); its stderr."""
    with pytest.raises(SystemExit) as exit_info:
        train.main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    assert "usage: lambda-train" in err and "lambda-train: error: " in err, err
    assert "Traceback" not in err
    return err


def test_bad_arguments_name_the_argument(tmp_path, capsys):
    assert "--dataset cifar10 needs --data" in _cli_error(["--dataset", "cifar10",
                                                           "--no-progress"], capsys)
    assert "no CIFAR-10 python batches" in _cli_error(["--data", str(tmp_path), "--dataset",
                                                       "cifar10"], capsys)
    with pytest.raises(ValueError, match="--model-arg must look like KEY=VALUE"):
        train.parse_model_args(["depths"])
    with pytest.raises(ValueError, match="--model-arg: unknown LambdaResNet argument.*'widht'"):
        _run([*TINY_MODEL, "--model-arg", "widht=2", "--epochs", "1"])
    assert "--epochs must be >= 1" in _cli_error(["--epochs", "0"], capsys)
    assert "no such checkpoint" in _cli_error(["--resume", str(tmp_path / "missing.pt")], capsys)
    assert train.parse_model_args(["depths=1,2,3,1", "act=silu", "r=None"]) == \
        {"depths": (1, 2, 3, 1), "act": "silu", "r": None}


@pytest.mark.parametrize("flags, message", [
    (["--model-arg", "foo=1"], "--model-arg: unknown LambdaResNet argument(s) 'foo'; known: "),
    (["--model-arg", "r=4"], "--model-arg: r must be a positive odd integer"),
    (["--model-arg", "num_classes=3"],
     "--model-arg num_classes=3: --dataset digits sets num_classes=10; leave num_classes out"),
    (["--model-arg", "in_chans=3"],
     "--model-arg in_chans=3: --dataset digits sets in_chans=1; leave in_chans out"),
    (["--model-arg", "backend=cuda"],
     "--model-arg backend='cuda': --backend sets backend='reference'; leave backend out"),
    (["--label-smoothing", "2"], "--label-smoothing must be in [0, 1), got 2.0"),
    (["--label-smoothing", "1"], "--label-smoothing must be in [0, 1), got 1.0"),
    (["--label-smoothing", "-0.1"], "--label-smoothing must be in [0, 1), got -0.1"),
    (["--threads", "-1"], "--threads must be >= 1, got -1"),
    (["--threads", "0"], "--threads must be >= 1, got 0"),
    (["--warmup-epochs", "-1"], "--warmup-epochs must be >= 0, got -1.0"),
    (["--device", "cpu", "--backend", "cuda"],
     "--backend cuda: backend 'cuda' cannot run these inputs: runs on cuda tensors, got cpu"),
    (["--device", "cpu", "--backend", "nope"],
     "--backend nope: backend must be 'auto' or one of ["),
    (["--device", "nope"], "--device 'nope': "),
])
def test_bad_flags_are_argparse_errors(flags, message, capsys):
    """Each bad flag is refused before training (exit status 2, the flag named), not a
    traceback at the first step or a silently different run."""
    # The last of a repeated flag counts: `flags` replace TINY_MODEL's --threads 1.
    err = _cli_error([*TINY_MODEL, "--backend", "reference", "--epochs", "1", *flags], capsys)
    assert message in err, err
    assert "epoch 1/1" not in capsys.readouterr().out


def test_model_args_repeating_the_dataset_are_accepted(capsys):
    """--model-arg num_classes / in_chans / backend equal to what lambda-train sets change
    nothing: the same losses as without them."""
    base = [*TINY_MODEL, "--epochs", "1", "--batch-size", "32", "--val-fraction", "0.9",
            "--backend", "cpu"]
    plain = _run(base)
    same = _run([*base, "--model-arg", "num_classes=10", "--model-arg", "in_chans=1",
                 "--model-arg", "backend='cpu'"])
    assert same[0]["step_losses"] == plain[0]["step_losses"]
    assert same[0]["val_loss"] == plain[0]["val_loss"]


def test_progress_bar_and_batches():
    stream = io.StringIO()
    bar = train.ProgressBar(3, "epoch 1/1", enabled=True, stream=stream, min_interval=0.0)
    for i in range(3):
        bar.update(f"loss {i}")
    bar.close()
    text = stream.getvalue()
    assert text.count("\r") == 3 and "3/3 loss 2" in text and text.endswith("\n")
    silent = io.StringIO()
    train.ProgressBar(2, "x", enabled=False, stream=silent).update()
    assert silent.getvalue() == ""
    # two processes see disjoint, equally long shares of one seeded permutation
    shares = [train.epoch_batches(103, 10, seed=1, epoch=2, rank=r, world_size=2) for r in (0, 1)]
    flat = [torch.cat(s) for s in shares]
    assert len(shares[0]) == len(shares[1]) == 5
    assert not set(flat[0].tolist()) & set(flat[1].tolist())
    assert torch.equal(torch.cat(train.epoch_batches(103, 10, seed=1, epoch=2)),
                       torch.cat(train.epoch_batches(103, 10, seed=1, epoch=2)))


def test_entry_points():
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        scripts = tomllib.load(f)["project"]["scripts"]
    assert scripts["lambda-train"] == "lambda_kernels.train:main"
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "examples", "train.py"), "--help"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "usage: lambda-train" in proc.stdout and "--resume" in proc.stdout
