"""pytest-benchmark suite over the lambda-bench cases and providers.

    pytest benchmarks/ --benchmark-only                       # tiny preset (seconds)
    LAMBDA_BENCH_PRESET=quick LAMBDA_BENCH_THREADS=1 pytest benchmarks/ --benchmark-only
    LAMBDA_BENCH_PRESET=seed LAMBDA_BENCH_DEVICE=cuda pytest benchmarks/ --benchmark-only \
        --benchmark-json out.json

Same providers, inputs and steps as the CLI (lambda_kernels.bench): "fwd" is eval mode under
no_grad, "fwdbwd" a train-mode forward + backward of a fixed dy. Unavailable providers skip
with their reason; FLOPs per call go to extra_info.
"""
import os

import pytest
import torch

from lambda_kernels.bench import providers as P
from lambda_kernels.bench.measure import make_steps
from lambda_kernels.bench.presets import PRESETS

PRESET = PRESETS[os.environ.get("LAMBDA_BENCH_PRESET", "tiny")]
DEVICE = torch.device(os.environ.get("LAMBDA_BENCH_DEVICE")
                      or ("cuda" if torch.cuda.is_available() else "cpu"))
if os.environ.get("LAMBDA_BENCH_THREADS"):
    torch.set_num_threads(int(os.environ["LAMBDA_BENCH_THREADS"]))
NAMES = P.resolve(os.environ["LAMBDA_BENCH_PROVIDERS"].split(",")
                  if os.environ.get("LAMBDA_BENCH_PROVIDERS") else None)


def _sync():
    if DEVICE.type == "cuda":
        torch.cuda.synchronize(DEVICE)


@pytest.mark.parametrize("mode", ["fwd", "fwdbwd"])
@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("case", PRESET.cases, ids=[c.label or str(i)
                                                     for i, c in enumerate(PRESET.cases)])
def test_bench(benchmark, case, name, mode):
    prov = P.get(name)
    reason = prov.unavailable(case, DEVICE)
    if reason:
        pytest.skip(reason)
    module, note = prov.build(case, DEVICE)
    x, dy = P.make_input(case, DEVICE), P.make_grad(case, DEVICE)
    fwd, fwd_bwd, _ = make_steps(module, x, dy, case.autocast_dtype)
    step = fwd if mode == "fwd" else fwd_bwd
    y = step()
    assert y.shape == (case.batch, case.dim_out, *case.spatial)

    def call():
        step()
        _sync()

    flops = prov.flops(case) * (1 if mode == "fwd" else 3)
    benchmark.group = f"{case.label}-{mode}"
    benchmark.extra_info.update(case=case.describe(), provider=name, mode=mode, flops=flops,
                                backend=prov.ran(module, DEVICE), note=note)
    benchmark.pedantic(call, rounds=PRESET.repeats, warmup_rounds=PRESET.warmup, iterations=1)
