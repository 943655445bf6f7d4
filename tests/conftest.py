import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))

# Without a CUDA device the Triton back end runs on CPU tensors through Triton's interpreter,
# which must be switched on before anything imports triton (triton.language's helpers and our
# kernels are decorated at import). Conftest loads before every test module; an explicit
# TRITON_INTERPRET in the environment wins.
if not torch.cuda.is_available() and "triton" not in sys.modules:
    os.environ.setdefault("TRITON_INTERPRET", "1")
# Tests check values, not speed: Triton kernels run at their default tiles (one GPU test tunes).
os.environ.setdefault("LAMBDA_KERNELS_TRITON_AUTOTUNE", "0")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
