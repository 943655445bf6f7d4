"""The first-use probe of back ends whose kernels can fail on a device (backends.probe_reason):
when the Triton kernels fail to compile (an untested GPU architecture or Triton version), `auto`
falls back to the next back end with one warning naming the error, and an explicit request
raises with that error as the reason.

The failure is forced in the real launch path of the Triton ops under the Triton interpreter
(CPU): one kernel is replaced by one that raises Triton's ptxas error when launched. `auto` on
CPU normally never tries Triton, so the test registers the Triton back end as the first CPU
candidate, as it is on CUDA.
"""
from __future__ import annotations

import dataclasses

import pytest
import torch

from harness import make_inputs

from lambda_kernels import BackendUnavailableError, backends, lambda_op, reference, select_backend

try:
    import lambda_kernels.triton as lk_triton
except Exception:  # triton missing or broken
    lk_triton = None

INTERPRETED = (lk_triton is not None and lk_triton.INTERPRETED
               and lk_triton.INTERPRETER_BROKEN is None)
needs_interpreter = pytest.mark.skipif(
    not INTERPRETED, reason="needs the Triton kernels loaded under TRITON_INTERPRET=1 "
                            "(tests/conftest.py sets it when no CUDA device exists)")

PTXAS_MESSAGE = "ptxas fatal   : Value 'sm_121a' is not defined for option 'gpu-name'"


class _KernelThatFailsToCompile:
    """Stands in for a @triton.jit kernel: `kernel[grid](*args)` raises what Triton raises when
    ptxas rejects the target."""

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            from triton.runtime.errors import PTXASError
            raise PTXASError(PTXAS_MESSAGE)
        return launch


@pytest.fixture
def triton_first_on_cpu(monkeypatch):
    """The Triton back end as the first `auto` candidate on CPU, with no probe results yet."""
    from lambda_kernels.backends import triton as triton_backend
    backends.names()  # registry loaded before it is patched
    monkeypatch.setitem(backends._REGISTRY, "triton", dataclasses.replace(
        triton_backend.BACKEND, priority=-1, auto_devices=("cpu",)))
    monkeypatch.setattr(backends, "_PROBES", {})


@needs_interpreter
def test_auto_runs_triton_when_its_kernels_work(triton_first_on_cpu):
    inputs = make_inputs(dtype=torch.float32, seed=4)
    assert select_backend(*inputs) == "triton"
    torch.testing.assert_close(lambda_op(*inputs), reference.lambda_reference(*inputs),
                               rtol=1e-4, atol=1e-5)


@needs_interpreter
def test_auto_falls_back_when_triton_fails_to_compile(triton_first_on_cpu, monkeypatch):
    from lambda_kernels.triton import content_lambda
    monkeypatch.setattr(content_lambda, "content_lambda_fwd_kernel", _KernelThatFailsToCompile())
    inputs = make_inputs(dtype=torch.float32, seed=5)
    # Without the probe this is what `auto` would hit: the op itself fails.
    from triton.runtime.errors import PTXASError
    with pytest.raises(PTXASError):
        lk_triton.ops.content_lambda(inputs[1], inputs[2])

    with pytest.warns(RuntimeWarning, match=r"'triton' back end.*PTXASError.*sm_121a") as seen:
        chosen = select_backend(*inputs)
        lambda_op(*inputs)  # the probe's answer is kept: no second warning
    assert len([w for w in seen if "lambda_kernels" in str(w.message)]) == 1
    assert chosen != "triton"
    torch.testing.assert_close(lambda_op(*inputs), reference.lambda_reference(*inputs),
                               rtol=1e-4, atol=1e-5)
    with pytest.raises(BackendUnavailableError, match="PTXASError"):
        lambda_op(*inputs, backend="triton")


def test_probe_failure_is_described_in_one_line():
    exc = RuntimeError("PassManager::run failed\n" + "ir line\n" * 50)
    assert backends.describe_failure(exc) == "RuntimeError: PassManager::run failed"


def test_cuda_without_a_kernel_image_says_which_arch_to_build(monkeypatch):
    from lambda_kernels.backends import cuda as cuda_backend
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (12, 0))
    why = cuda_backend._explain(RuntimeError(
        "CUDA error: no kernel image is available for execution on the device"))
    assert "sm_120" in why and 'LAMBDA_KERNELS_CUDA_ARCHS="12.0"' in why and "+PTX" in why
    assert cuda_backend._explain(ValueError("other")) == "ValueError: other"
