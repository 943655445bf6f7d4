"""The einsum reference against a naive loop implementation, and its float64 gradcheck."""
import itertools
import math

import pytest
import torch

from harness import make_inputs
from lambda_kernels import reference

SHAPES = [
    # batch, heads, dim_k, dim_u, dim_v, H, W, Rh, Rw
    (1, 1, 2, 1, 2, 3, 4, 3, 3),
    (2, 2, 3, 2, 2, 4, 3, 5, 3),   # rectangular table
    (1, 2, 2, 3, 3, 1, 5, 3, 5),   # H = 1
    (2, 1, 2, 2, 2, 5, 1, 7, 1),   # W = 1, Rw = 1
    (1, 3, 2, 1, 2, 2, 3, 9, 11),  # window far larger than the image
    (1, 2, 2, 2, 3, 3, 4, 5, 7),   # global-style (2H-1, 2W-1) table
]


def naive_lambda(q, keys, values, pos_table, bias):
    """Loops over every index, straight from the paper's definitions."""
    batch, heads, dim_k, hh, ww = q.shape
    dim_u, dim_v = keys.shape[1], values.shape[2]
    rh, rw = pos_table.shape[:2]
    positions = list(itertools.product(range(hh), range(ww)))
    y = torch.zeros(batch, heads, dim_v, hh, ww, dtype=q.dtype)
    for b in range(batch):
        sigma = {}
        for u, k in itertools.product(range(dim_u), range(dim_k)):
            total = sum(math.exp(keys[b, u, k, i, j]) for i, j in positions)
            for i, j in positions:
                sigma[u, k, i, j] = math.exp(keys[b, u, k, i, j]) / total
        lam_c = torch.zeros(dim_k, dim_v, dtype=q.dtype)
        for k, v in itertools.product(range(dim_k), range(dim_v)):
            lam_c[k, v] = sum(sigma[u, k, i, j] * values[b, u, v, i, j]
                              for u in range(dim_u) for i, j in positions)
        for i, j in positions:
            lam_p = torch.zeros(dim_k, dim_v, dtype=q.dtype)
            for k, v in itertools.product(range(dim_k), range(dim_v)):
                acc = 0.0 if bias is None else float(bias[k])
                for a, c, u in itertools.product(range(rh), range(rw), range(dim_u)):
                    ci, cj = i + a - rh // 2, j + c - rw // 2
                    if 0 <= ci < hh and 0 <= cj < ww:
                        acc += float(pos_table[a, c, k, u]) * float(values[b, u, v, ci, cj])
                lam_p[k, v] = acc
            for h, v in itertools.product(range(heads), range(dim_v)):
                y[b, h, v, i, j] = sum(q[b, h, k, i, j] * (lam_c[k, v] + lam_p[k, v])
                                       for k in range(dim_k))
    return y


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("bias", [True, False])
def test_reference_matches_naive_loops(shape, bias):
    batch, heads, dim_k, dim_u, dim_v, hh, ww, rh, rw = shape
    inputs = make_inputs(batch, heads, dim_k, dim_u, dim_v, hh, ww, rh, rw, bias=bias)
    expected = naive_lambda(*inputs)
    torch.testing.assert_close(reference.lambda_reference(*inputs), expected, rtol=1e-12,
                               atol=1e-12)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("bias", [True, False])
def test_reference_gradcheck(shape, bias):
    batch, heads, dim_k, dim_u, dim_v, hh, ww, rh, rw = shape
    inputs = make_inputs(batch, heads, dim_k, dim_u, dim_v, hh, ww, rh, rw, bias=bias,
                         requires_grad=True)
    assert torch.autograd.gradcheck(reference.lambda_reference, inputs)


def test_content_lambda_is_softmax_weighted_sum():
    _, keys, values, _, _ = make_inputs()
    lam = reference.content_lambda(keys, values)
    sigma = keys.flatten(3).softmax(-1)
    torch.testing.assert_close(lam[0, 1, 2], (sigma[0, :, 1] * values[0, :, 2].flatten(1)).sum())
