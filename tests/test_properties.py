"""Property-based tests: random shapes, dtypes and back ends against the float64 reference.

Hypothesis draws a back end that runs in this process (tests/harness.py: TARGETS), a dtype it
supports, a shape and a seed, and checks the output and every gradient by the harness's one
tolerance rule. Shapes cover batch 1..3, heads 1..8, k 1..20, u 1..4, v 1..24, images 1..12
on each side, odd tables from 1x1 up to two rows/columns beyond the (2n-1)² global-context
table (so tables larger than the image occur), and with or without the bias. The Triton
interpreter (only when active in this process, TRITON_INTERPRET=1) gets tiny shapes (batch 1,
H·W <= 12, k and v <= 4) in about one example in five: it runs kernels in Python.

Profiles, chosen by the environment variable LAMBDA_KERNELS_HYPOTHESIS_PROFILE:
    ci        (default) 100 examples, derandomized: every CI run checks the same examples
    extended  500 random examples; last recorded in benchmarks/results/hypothesis-extended.md
    LAMBDA_KERNELS_HYPOTHESIS_PROFILE=extended python -m pytest tests/test_properties.py \
        --hypothesis-show-statistics
No example database is kept (replays come from derandomize or the blob): a failure prints the
falsifying example and a @reproduce_failure blob to replay it.
"""
from __future__ import annotations

import functools
import os

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from harness import TARGETS, Shape, check_against_reference

PROFILE_ENV = "LAMBDA_KERNELS_HYPOTHESIS_PROFILE"

settings.register_profile("ci", max_examples=100, deadline=None, derandomize=True,
                          database=None, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("extended", max_examples=500, deadline=None, database=None,
                          print_blob=True, suppress_health_check=[HealthCheck.too_slow])
PROFILE = settings.get_profile(os.environ.get(PROFILE_ENV, "ci"))


@functools.lru_cache(maxsize=None)
def runnable_pairs() -> tuple[tuple, tuple]:
    """(fast, slow): the (target, dtype) pairs that run in this process, decided when the
    first example is drawn rather than at import."""
    pairs = [(t, d) for t in TARGETS if t.skip_reason() is None for d in t.dtypes]
    assert pairs, "no back end runs here (not even the reference)"
    return tuple(p for p in pairs if not p[0].slow), tuple(p for p in pairs if p[0].slow)


def _dtype_name(dtype) -> str:
    return str(dtype).replace("torch.", "")


@st.composite
def cases(draw):
    """(target, dtype, shape, seed)."""
    fast, slow = runnable_pairs()
    # A slow target (the Triton interpreter: about half a second per example at any size)
    # gets about one example in five, so that the CI profile stays within a minute on 2 cores.
    if slow and (not fast or draw(st.integers(0, 4)) == 4):
        pairs = slow
    else:
        pairs = fast
    # dtype first, then a target that has it: each dtype about equally likely
    dtype = draw(st.sampled_from(sorted({d for _, d in pairs}, key=str)))
    target = draw(st.sampled_from([t for t, d in pairs if d == dtype]))
    if target.slow:  # the Triton interpreter runs kernels in Python: tiny shapes only
        batch, heads = 1, draw(st.integers(1, 2))
        dim_k, dim_u, dim_v = draw(st.integers(1, 4)), draw(st.integers(1, 2)), \
            draw(st.integers(1, 4))
        height = draw(st.integers(1, 3))
        width = draw(st.integers(1, 12 // height))
    else:
        batch, heads = draw(st.integers(1, 3)), draw(st.integers(1, 8))
        dim_k, dim_u, dim_v = draw(st.integers(1, 20)), draw(st.integers(1, 4)), \
            draw(st.integers(1, 24))
        height, width = draw(st.integers(1, 12)), draw(st.integers(1, 12))
    n = max(height, width)
    if draw(st.integers(0, 3)) == 0:
        # one in four: global context, the (2n-1)² table of a layer for any H, W <= n
        rh = rw = 2 * n - 1
    else:  # any odd table up to two rows/columns beyond the global-context one
        rh, rw = (2 * draw(st.integers(0, n + 1)) + 1 for _ in range(2))
    bias = draw(st.booleans())
    shape = Shape(batch, heads, dim_k, dim_u, dim_v, height, width, rh, rw, bias, "drawn")
    seed = draw(st.integers(0, 2**31 - 1))

    event(f"target {target.id}")
    event(f"dtype {_dtype_name(dtype)}")
    event(f"target/dtype {target.id}/{_dtype_name(dtype)}")
    event("table " + ("global context (2n-1)²" if rh == rw == 2 * n - 1 else
                      "beyond the image" if rh > 2 * height - 1 or rw > 2 * width - 1 else
                      "within the image"))
    event("association " + ("logits" if shape.logit_association else "λp"))
    event("image side n = max(H, W) " + ("1-3" if n <= 3 else "4-8" if n <= 8 else "9-12"))
    event("bias" if bias else "no bias")
    return target, dtype, shape, seed


@settings(PROFILE)
@given(cases())
def test_random_cases_match_the_reference(case):
    target, dtype, shape, seed = case
    check_against_reference(target, shape.inputs(dtype, target.device, seed=seed), dtype,
                            seed=seed + 1)
