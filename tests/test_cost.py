"""lambda_kernels.cost against brute force: taps counted by walking every (query, offset) pair,
multiply-adds counted by walking the loops of each association, and the association choice
against the CPU kernels' rule as the harness (tests/harness.py) uses it."""
import itertools

import pytest

from lambda_kernels import cost


def brute_taps(height, width, rh, rw):
    return sum(1 for y, x, a, b in itertools.product(range(height), range(width), range(rh),
                                                     range(rw))
               if 0 <= y + a - rh // 2 < height and 0 <= x + b - rw // 2 < width)


@pytest.mark.parametrize("height,width,rh,rw", [(1, 1, 1, 1), (5, 7, 3, 5), (6, 6, 11, 11),
                                                (3, 19, 7, 41), (4, 9, 1, 5), (2, 3, 4, 2),
                                                (8, 8, 15, 15)])
def test_in_image_taps_by_brute_force(height, width, rh, rw):
    assert cost.in_image_taps(height, width, rh, rw) == brute_taps(height, width, rh, rw)


def test_global_table_covers_every_pair():
    """A (2H-1)×(2W-1) table reaches every context position from every query: N² taps."""
    for height, width in ((1, 1), (3, 5), (6, 4)):
        rh, rw = cost.table_size(height, width)
        assert (rh, rw) == (2 * height - 1, 2 * width - 1)
        assert cost.in_image_taps(height, width, rh, rw) == (height * width) ** 2
    assert cost.table_size(9, 4, r=5) == (5, 5)


def brute_multiply_adds(heads, k, v, association, backward):
    """Count the multiply-adds of one (tap, u) by walking each product's loops."""
    count = 0
    if association == cost.LOGITS:
        products = [(heads, k), (heads, v)]                # logits = E·q; y += logits·values
        if backward:  # logits again, d logits = dy·values, dq, d_pos_table, d values
            products = [(heads, k), (heads, v), (heads, k), (heads, k), (heads, v)]
    else:  # λp = E⊗values; backward: λp again, d_pos_table and d values from dλp
        products = [(k, v)] * (3 if backward else 1)
    for outer, inner in products:
        for _ in range(outer):
            for _ in range(inner):
                count += 1
    return count


@pytest.mark.parametrize("heads,k,v", [(4, 16, 64), (8, 4, 6), (1, 2, 3), (17, 2, 2), (2, 5, 17)])
@pytest.mark.parametrize("backward", [False, True])
def test_multiply_adds_and_cheaper_association(heads, k, v, backward):
    counts = {a: cost.multiply_adds_per_tap(heads, k, v, a, backward) for a in cost.ASSOCIATIONS}
    for association, count in counts.items():
        assert count == brute_multiply_adds(heads, k, v, association, backward)
    chosen = cost.cheaper_association(heads, k, v, backward)
    assert counts[chosen] == min(counts.values())
    if counts[cost.LOGITS] == counts[cost.LAMBDA_P]:
        assert chosen == cost.LOGITS  # the CPU kernels' tie rule (<=)


def test_positional_flops_is_twice_the_cheaper_multiply_adds_over_taps():
    b, heads, k, u, v, hh, ww, rh, rw = 2, 8, 4, 3, 6, 5, 7, 5, 3
    taps = brute_taps(hh, ww, rh, rw)
    for backward in (False, True):
        cheaper = min(brute_multiply_adds(heads, k, v, a, backward) for a in cost.ASSOCIATIONS)
        assert cost.positional_flops(b, heads, k, u, v, hh, ww, rh, rw, backward) == \
            2 * b * taps * u * cheaper
        logits = brute_multiply_adds(heads, k, v, cost.LOGITS, backward)
        assert cost.positional_flops(b, heads, k, u, v, hh, ww, rh, rw, backward,
                                     association=cost.LOGITS) == 2 * b * taps * u * logits
    with pytest.raises(ValueError, match="association"):
        cost.multiply_adds_per_tap(1, 1, 1, "neither")
