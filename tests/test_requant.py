"""Multiply-shift requantization: fitted to thresholds exactly when a line exists, within one otherwise,
with the deviations counted exactly (checked against every accumulator value)."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from hwq.golden import thresholds_apply
from hwq.requant import deviations, fit_multiply_shift, implied_thresholds, multiply_shift_apply


@settings(max_examples=150, deadline=None)
@given(bits=st.integers(1, 8), mult=st.integers(1, 2**20), shift=st.integers(0, 24), middle=st.integers(-5000, 8000),
       frac=st.integers(0, 2**24), lo=st.integers(-5000, 0), span=st.integers(0, 8000), negative=st.booleans(),
       perturb=st.integers(0, 3), seed=st.integers(0, 1000))
def test_fit_reproduces_or_counts_its_deviations(bits, mult, shift, middle, frac, lo, span, negative, perturb, seed):
    """Thresholds of an integer line (a multiply-shift's, computed exactly), optionally with a few moved
    by one (as float rounding does): the fit's codes equal the thresholds' on every accumulator value
    when the line is intact, and differ on exactly ``deviations`` values otherwise."""
    n = 1 << bits
    hi = lo + span
    offset = ((n // 2) << shift) - mult * middle + frac % (1 << shift)  # the middle level is reached near `middle`
    t = implied_thresholds([mult], [offset], shift, n, np.array([lo]), np.array([hi]))[0]
    rng = np.random.default_rng(seed)
    for _ in range(perturb):  # move a threshold by one, keeping the row non-decreasing
        i = int(rng.integers(0, n - 1))
        t[i] = np.clip(t[i] + rng.choice([-1, 1]), t[i - 1] if i else lo, t[i + 1] if i + 1 < n - 1 else hi + 1)
    t = t[None, :]
    signs = np.array([-1 if negative else 1])
    t_lo, t_hi = np.array([lo]), np.array([hi])
    fit = fit_multiply_shift(t, signs, t_lo, t_hi)
    assert fit is not None
    mult, offset, shift, dev = fit
    assert 0 <= shift <= 32 and np.sign(mult[0]) == signs[0]
    if perturb == 0:
        assert dev == 0
    # exhaustive over t = sign * acc in [lo, hi]
    acc = np.arange(lo, hi + 1) * signs[0]
    ref = thresholds_apply(acc[:, None], t, signs)
    got = multiply_shift_apply(acc[:, None], mult, offset, shift, n)
    assert int((ref != got).sum()) == dev
    assert dev <= perturb * max(1, span)


def test_implied_thresholds_and_deviations():
    t = implied_thresholds([3], [-1], 2, 4, np.array([-10]), np.array([10]))  # floor((3t - 1) / 4)
    acc = np.arange(-10, 11)
    assert np.array_equal(thresholds_apply(acc[:, None], t), np.clip((3 * acc - 1) >> 2, 0, 3)[:, None])
    assert deviations(np.array([[1, 5, 9]]), np.array([[1, 6, 9]])) == 1
    assert deviations(np.array([[1, 5, 9]]), np.array([[2, 7, 9]])) == 3
    assert deviations(np.array([[3, 3]]), np.array([[1, 5]])) == 4  # overlapping spans counted once


@settings(max_examples=300, deadline=None)
@given(n=st.integers(1, 40), t_lo=st.integers(-500, 0), t_hi=st.integers(1, 500), line=st.booleans(),
       mult=st.integers(1, 200), offset=st.integers(-5000, 5000), shift=st.sampled_from([0, 3, 8]),
       slack=st.integers(0, 1), seed=st.integers(0, 1000))
def test_wide_code_search_equals_the_pairwise_solution(n, t_lo, t_hi, line, mult, offset, shift, slack, seed):
    """Above 255 thresholds per channel the multiplier's range comes from a search of a concave gap, first
    narrowed by an even sample of levels: on small rows, with the sample forced small, it is the pairwise
    range exactly (also when empty), and the best offset covers as many thresholds as a count of every one."""
    import hwq.requant as rq

    rng = np.random.default_rng(seed)
    if line:  # a multiply-shift's thresholds, one maybe moved by one
        t = implied_thresholds([mult], [offset], shift, n + 1, [t_lo], [t_hi])[0].copy()
        t[rng.integers(0, n)] += rng.integers(-1, 2)
        t = np.sort(np.clip(t, t_lo, t_hi + 1))
    else:
        t = np.sort(rng.integers(t_lo, t_hi + 2, size=n))
    a, b = t - slack, t + slack
    want = rq._mult_range_pairwise(a, b, t_lo, t_hi, shift)
    saved = rq.PAIRWISE_LEVELS
    try:
        for levels in (0, 2, 5):
            rq.PAIRWISE_LEVELS = levels
            assert rq._mult_range(a, b, t_lo, t_hi, shift) == want, levels
    finally:
        rq.PAIRWISE_LEVELS = saved
    if want is not None:
        m = (want[0] + want[1]) // 2
        lo, hi = rq._offset_intervals(m, t, t_lo, t_hi, shift)
        covered = [int(((lo <= c) & (c <= hi)).sum()) for c in np.concatenate([lo[t <= t_hi], hi[t > t_lo]])]
        best = rq._best_offset(m, t, t_lo, t_hi, shift)
        assert int(((lo <= best) & (best <= hi)).sum()) == max(covered)


def test_sixteen_bit_thresholds_fit_exactly():
    """65,535 thresholds per channel (a 16-bit code) of a multiply-shift over a 25-bit accumulator: the fit
    finds a multiply-shift with every threshold equal."""
    t_lo, t_hi = np.array([-(2**24)] * 3), np.array([2**24] * 3)
    mult, offset = np.array([12345, 7, 99991]), np.array([777, -3, 123456])
    t = implied_thresholds(mult, offset, 20, 1 << 16, t_lo, t_hi)
    m, b, s, dev = fit_multiply_shift(t, np.ones(3), t_lo, t_hi)
    assert dev == 0 and s <= 20
    assert np.array_equal(implied_thresholds(m, b, s, 1 << 16, t_lo, t_hi), t)
