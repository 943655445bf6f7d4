"""The developer tools' shared pieces: the benchmark cases as op shapes (the compile check's
named shapes are the bench presets' cases) and the op inputs; the autotune report refuses to
run without a GPU. The compile check itself runs in tests/test_triton_backend.py."""
import os
import subprocess
import sys

import pytest
import torch

from lambda_kernels.bench.op_shapes import case_shape, named_shapes, op_inputs
from lambda_kernels.bench.presets import Case

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_named_shapes_are_the_benchmark_cases():
    shapes = named_shapes()
    # (B, h, k, u, v, H, W, Rh, Rw): the GPU headline, LambdaResNet stages, global n = 64
    assert shapes["headline"] == (32, 4, 16, 1, 64, 56, 56, 23, 23)
    assert shapes["resnet-56-r23"] == (2, 4, 16, 1, 32, 56, 56, 23, 23)
    assert shapes["resnet-28-r9"] == (2, 4, 16, 1, 64, 28, 28, 9, 9)
    assert shapes["resnet-14-r23"] == (2, 4, 16, 1, 128, 14, 14, 23, 23)
    assert shapes["global-64"] == (1, 4, 16, 1, 8, 64, 64, 127, 127)


def test_case_shape_sizes_global_tables_from_the_image():
    case = Case(batch=2, dim=12, height=5, width=7, dim_k=4, heads=3, dim_u=2, r=None, n=9)
    assert case_shape(case) == (2, 3, 4, 2, 4, 5, 7, 9, 13)
    assert case_shape(Case(height=6, width=6, r=3))[-2:] == (3, 3)


@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_op_inputs(device):
    shape = (2, 3, 4, 2, 5, 6, 7, 3, 5)
    q, keys, values, table, lam = op_inputs(shape, "bf16", device, seed=1)
    assert [tuple(t.shape) for t in (q, keys, values, table, lam)] == \
        [(2, 3, 4, 6, 7), (2, 2, 4, 6, 7), (2, 2, 5, 6, 7), (3, 5, 4, 2), (2, 4, 5)]
    assert all(t.dtype == torch.bfloat16 and t.device.type == device
               for t in (q, keys, values, table, lam))
    if device == "cpu":  # seeded: the same values again, others for another seed
        assert torch.equal(q, op_inputs(shape, torch.bfloat16, device, seed=1)[0])
        assert not torch.equal(q, op_inputs(shape, torch.bfloat16, device, seed=2)[0])


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal without a GPU")
def test_autotune_report_needs_a_gpu():
    proc = subprocess.run([sys.executable, "-m", "lambda_kernels.tools.autotune_report"],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 2 and "needs a CUDA device" in proc.stderr
