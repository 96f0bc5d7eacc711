"""Integer requantization in two forms, thresholds and multiply-shift, and the proof that they agree.

Every requantization in the IR maps an integer accumulator ``acc`` of output channel ``o`` to a
level index ``idx`` in ``0 .. n-1`` (the code is then ``lo + step * idx``, see
:func:`hwq.intrange.act_levels`):

- thresholds: ``idx = #{k : sign[o] * acc >= T[o, k]}``, ``n - 1`` thresholds per channel;
- multiply-shift: ``idx = clamp(floor((acc * M[o] + B[o]) / 2**S), 0, n - 1)``, one multiplier,
  one offset per channel and one shift per layer (``M < 0`` is a decreasing channel).

Export derives the thresholds from the trained model (:mod:`hwq.export`); they are the reference.
:func:`fit_multiply_shift` searches the smallest shift ``S`` for which integers ``M, B`` reproduce
those thresholds exactly over the proven accumulator range. The thresholds of a float32
requantization are not always those of a straight line, though: float rounding moves a threshold by
one where the exact crossing falls within an ulp or so of a rounding boundary. Then the fit keeps
every threshold within one of the reference and counts the accumulator values where the two differ
(``requant.deviations`` in the IR). The PyTorch integer path applies the same multiply-shift, so the
golden model still equals it; fake-quant predictions can differ only through these rounding-boundary
values (:func:`hwq.flow.check_model_integer` counts and explains them).

How the fit works, for one channel with ``t = sign * acc`` and ``M > 0``: level ``k`` is first
reached at ``T_k`` exactly when ``M*T_k + B >= k*2**S > M*(T_k - 1) + B``. Thresholds clipped to
the range (``T_k = t_lo``: reached everywhere; ``T_k = t_hi + 1``: never) keep only the inequality
that still applies. Eliminating ``B`` pairwise leaves an interval of feasible ``M``; if it holds an
integer, ``B`` follows. Feasibility is monotone in ``S`` (``2M, 2B, S+1`` is the same function) as
long as ``M`` fits :data:`MAX_MULT_BITS`, so the smallest ``S`` is found by bisection below the
largest feasible one.
"""

import numpy as np

__all__ = ["MAX_MULT_BITS", "MAX_SHIFT", "MULTIPLY_SHIFT_MIN_BITS", "REQUANT_POLICIES", "deviations",
           "fit_multiply_shift", "implied_thresholds", "multiply_shift_apply", "signed_range", "thresholds_of"]

MAX_SHIFT = 32
MAX_MULT_BITS = 32  # signed multiplier width, sign included
MULTIPLY_SHIFT_MIN_BITS = 5  # policy "auto": thresholds up to 4-bit outputs (15 comparators), then multiply-shift
REQUANT_POLICIES = ("auto", "thresholds", "multiply-shift")
PRODUCT_LIMIT = 2**62
PAIRWISE_LEVELS = 255  # thresholds per channel up to which the multiplier's range is solved pairwise
APPROX_EXTRA_SHIFT = 8  # precision bits added to an inexact fit's smallest shift  # |acc * M + B| must stay below this (int64 arithmetic in the golden model)


def multiply_shift_apply(acc, mult, offset, shift, n_levels, levels=(0, 1)):
    """Codes ``lo + step * clamp(floor((acc * M + B) / 2**S), 0, n-1)``; channels on the last axis."""
    idx = (acc * mult + offset) >> shift  # arithmetic shift = floor division by 2**S
    lo, step = levels
    return lo + step * np.clip(idx, 0, n_levels - 1)


def implied_thresholds(mult, offset, shift, n_levels, t_lo, t_hi):
    """The thresholds (over ``t = sign(M) * acc``, clipped to ``[t_lo, t_hi + 1]``) of a multiply-shift.

    Level k is first reached at ``ceil((k * 2**S - B) / |M|)``.
    """
    mult, offset = np.asarray(mult, dtype=np.int64), np.asarray(offset, dtype=np.int64)
    k = np.arange(1, n_levels, dtype=np.int64)
    num = (k[None, :] << shift) - offset[:, None]
    t = -((-num) // np.abs(mult)[:, None])
    return np.clip(t, np.asarray(t_lo)[:, None], np.asarray(t_hi)[:, None] + 1)


def _mult_range_pairwise(a, b, t_lo, t_hi, shift, k=None):
    """Integers M > 0 for which some B puts every level k's first reach inside ``[a_k, b_k]``.

    Level k reached by ``b_k`` (if ``b_k <= t_hi``): ``M*b_k + B >= k*2**S``; not before ``a_k`` (if
    ``a_k > t_lo``): ``M*(a_k - 1) + B < k*2**S``. Eliminating B from each pair leaves
    ``M * (a_j - b_i - 1) <= (j - i) * 2**S - 1``. Returns (m_lo, m_hi) or None. O(levels^2): for up to
    :data:`PAIRWISE_LEVELS` levels (8-bit codes), where one array operation beats the search; ``k``: the
    levels ``a`` and ``b`` are of (default 1, 2, ...).
    """
    k = np.arange(1, len(a) + 1, dtype=np.int64) if k is None else k
    low, up = b <= t_hi, a > t_lo
    d = a[up][None, :] - b[low][:, None] - 1
    n = ((k[up][None, :] - k[low][:, None]) << shift) - 1
    if (n[d == 0] < 0).any():
        return None
    pos, neg = d > 0, d < 0
    m_max = 2 ** (MAX_MULT_BITS - 1) - 1
    m_hi = min(m_max, int((n[pos] // d[pos]).min())) if pos.any() else m_max
    m_lo = max(1, int((-(n[neg] // -d[neg])).max())) if neg.any() else 1
    return (m_lo, m_hi) if m_lo <= m_hi else None


def _offset_bounds(m, a, b, t_lo, t_hi, shift):
    """For multiplier ``m`` (int64 array), the least and the greatest offset B that put every level k's first
    reach inside ``[a_k, b_k]``: level k reached by ``b_k`` (if ``b_k <= t_hi``) needs ``M*b_k + B >= k*2**S``;
    not before ``a_k`` (if ``a_k > t_lo``) needs ``M*(a_k - 1) + B < k*2**S``. (lowest, highest) arrays."""
    k = np.arange(1, len(a) + 1, dtype=np.int64)
    low, up = b <= t_hi, a > t_lo
    m = np.asarray(m, dtype=np.int64)[:, None]
    big = np.iinfo(np.int64).max
    lowest = ((k[low] << shift)[None, :] - m * b[low][None, :]).max(axis=1) if low.any() else np.full(len(m), -big)
    highest = (((k[up] << shift) - 1)[None, :] - m * (a[up] - 1)[None, :]).min(axis=1) if up.any() \
        else np.full(len(m), big)
    return lowest, highest


def _mult_range(a, b, t_lo, t_hi, shift):
    """Integers M > 0 for which some B puts every level k's first reach inside ``[a_k, b_k]``.

    The greatest lower bound on B is a maximum of lines in M (convex), the least upper bound a minimum of
    lines (concave), so their gap is concave in M and the feasible M (gap >= 0) form one interval: found by a
    search for the gap's maximum, then bisection for each end, each step O(levels) (the same interval as
    :func:`_mult_range_pairwise`, which it leaves the narrow codes to). Returns (m_lo, m_hi) or None."""
    if len(a) <= PAIRWISE_LEVELS:
        return _mult_range_pairwise(a, b, t_lo, t_hi, shift)
    m_max = 2 ** (MAX_MULT_BITS - 1) - 1
    if not ((b <= t_hi).any() and (a > t_lo).any()):  # B bounded on one side at most: any M
        return 1, m_max
    # first the levels of an even sample, pairwise: fewer constraints, so an interval that holds the answer
    sample = np.unique(np.linspace(0, len(a) - 1, PAIRWISE_LEVELS).round().astype(np.int64))
    coarse = _mult_range_pairwise(a[sample], b[sample], t_lo, t_hi, shift, k=sample + 1)
    if coarse is None:
        return None

    def gap(m):
        lowest, highest = _offset_bounds(np.atleast_1d(m), a, b, t_lo, t_hi, shift)
        return highest - lowest

    lo, hi = coarse  # the gap's maximum (a plateau only at the top: concave)
    while hi - lo > 2:
        m1, m2 = lo + (hi - lo) // 3, hi - (hi - lo) // 3
        g1, g2 = gap(np.array([m1, m2]))
        if g1 < g2:
            lo = m1 + 1
        elif g1 > g2:
            hi = m2 - 1
        else:
            lo, hi = m1, m2
    cand = np.arange(lo, hi + 1)
    g = gap(cand)
    if g.max() < 0:
        return None
    top = int(cand[int(g.argmax())])

    def edge(inside, outside):  # bisect between a feasible and an infeasible (or out of range) M
        while abs(outside - inside) > 1:
            mid = (inside + outside) // 2
            inside, outside = (mid, outside) if gap(mid)[0] >= 0 else (inside, mid)
        return inside

    return edge(top, coarse[0] - 1), edge(top, coarse[1] + 1)


def _offset_intervals(m, t, t_lo, t_hi, shift):
    """Per level, the offsets B that make its first reach exactly ``t_k`` (inclusive; None = unbounded)."""
    k = np.arange(1, len(t) + 1, dtype=np.int64)
    lo = np.where(t <= t_hi, (k << shift) - m * t, np.iinfo(np.int64).min)
    hi = np.where(t > t_lo, (k << shift) - m * (t - 1) - 1, np.iinfo(np.int64).max)
    return lo, hi


def _best_offset(m, t, t_lo, t_hi, shift):
    """The offset that makes the most thresholds exact (all of them, when ``m`` came from an exact fit): the
    point covered by the most intervals of :func:`_offset_intervals`, one of their ends (sorted counts)."""
    lo, hi = _offset_intervals(m, t, t_lo, t_hi, shift)
    cands = np.concatenate([lo[t <= t_hi], hi[t > t_lo]])
    held = lo <= hi  # an empty interval holds no offset; for the others, lo <= c <= hi is lo <= c and not hi < c
    hits = (np.searchsorted(np.sort(lo[held]), cands, side="right")
            - np.searchsorted(np.sort(hi[held]), cands, side="left"))
    return int(cands[int(hits.argmax())])


def _fit(t, t_lo, t_hi, shift, slack, offsets=True):
    """Per channel (M, B) at this shift with every threshold within ``slack`` of ``t``, or None (``offsets``
    False: B is None, for a feasibility test)."""
    fits = []
    for o in range(len(t)):
        r = _mult_range(t[o] - slack, t[o] + slack, int(t_lo[o]), int(t_hi[o]), shift)
        if r is None:
            return None
        m = (r[0] + r[1]) // 2 if slack else r[0]
        fits.append((m, _best_offset(m, t[o], int(t_lo[o]), int(t_hi[o]), shift) if offsets else None))
    return fits


def _smallest_shift(t, t_lo, t_hi, slack):
    """Feasibility is monotone in the shift (``2M, 2B, S+1`` is the same function) until ``M`` outgrows
    :data:`MAX_MULT_BITS`: find a feasible shift from the top, then bisect below it."""
    def feasible(s):
        return _fit(t, t_lo, t_hi, s, slack, offsets=False) is not None

    top = next((s for s in range(MAX_SHIFT, -1, -1) if feasible(s)), None)
    if top is None:
        return None
    lo, hi = -1, top
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if feasible(mid) else (mid, hi)
    return hi


def deviations(t_ref, t_got):
    """Accumulator values (summed over channels) at which two threshold tables give different codes."""
    total = 0
    for a_row, b_row in zip(t_ref, t_got, strict=True):
        a_row, b_row = np.asarray(a_row), np.asarray(b_row)
        differ = np.flatnonzero(a_row != b_row)
        spans = sorted(zip(np.minimum(a_row, b_row)[differ].tolist(), np.maximum(a_row, b_row)[differ].tolist(),
                           strict=True))
        end = None
        for lo, hi in spans:  # union of the half-open intervals [lo, hi)
            lo = lo if end is None else max(lo, end)
            total += max(0, hi - lo)
            end = hi if end is None else max(end, hi)
    return total


def fit_multiply_shift(thresholds, signs, t_lo, t_hi):
    """(mult, offset, shift, deviations) for per-channel thresholds over ``t = sign * acc`` in
    [t_lo, t_hi], or None when the accumulators are too wide for 64-bit products.

    The exact fit (0 deviations) is taken when some shift up to :data:`MAX_SHIFT` has one. Otherwise
    (the thresholds of a float32 requantization are not always a straight line's: float rounding
    moves a threshold by one where the exact value falls within an ulp of a rounding boundary)
    every threshold is kept within one of the reference, with extra shift bits for precision and the
    offset that keeps the most thresholds exact; ``deviations`` counts the accumulator values where
    the result differs from the reference. ``mult`` carries the channel's sign.
    """
    t = np.asarray(thresholds, dtype=np.int64)
    t_lo, t_hi = np.asarray(t_lo, dtype=np.int64), np.asarray(t_hi, dtype=np.int64)
    if max(int(np.abs(t_lo).max()), int(np.abs(t_hi).max())) >= 2**30:
        return None
    slack, shift = 0, _smallest_shift(t, t_lo, t_hi, 0)
    if shift is None:
        slack, shift = 1, _smallest_shift(t, t_lo, t_hi, 1)
        if shift is None:
            return None
        for extra in range(APPROX_EXTRA_SHIFT, -1, -1):  # extra precision while M still fits
            if _fit(t, t_lo, t_hi, min(MAX_SHIFT, shift + extra), slack, offsets=False) is not None:
                shift = min(MAX_SHIFT, shift + extra)
                break
    fits = _fit(t, t_lo, t_hi, shift, slack)
    mult = np.array([m for m, _ in fits], dtype=np.int64)
    offset = np.array([b for _, b in fits], dtype=np.int64)
    got = implied_thresholds(mult, offset, shift, t.shape[1] + 1, t_lo, t_hi)
    dev = deviations(t, got)
    if slack == 0 and dev:
        raise AssertionError("exact multiply-shift fit does not reproduce its thresholds")  # pragma: no cover
    bound = np.maximum(np.abs(t_lo), np.abs(t_hi)) * mult + np.abs(offset)
    if int(bound.max()) >= PRODUCT_LIMIT:
        return None
    return mult * np.asarray(signs, dtype=np.int64), offset, shift, dev


def signed_range(signs, lo, hi):
    """Per channel, the range of ``t = sign * acc`` for ``acc`` in [lo, hi]: (t_lo, t_hi)."""
    up = np.asarray(signs) > 0
    lo, hi = np.asarray(lo), np.asarray(hi)
    return np.where(up, lo, -hi), np.where(up, hi, -lo)


def thresholds_of(kind, tensors, n_levels, acc_lo, acc_hi, *, thresholds=None, signs=None, mult=None,
                  offset=None, shift=None):
    """(thresholds, signs) of a requantization given in either form, clipped to the accumulator range
    ``[acc_lo, acc_hi]`` (per channel). Engines that compare use this; the function is unchanged."""
    if kind == "thresholds":
        t = tensors[thresholds].astype(np.int64)
        s = tensors[signs].astype(np.int64) if signs else np.ones(len(t), dtype=np.int64)
        t_lo, t_hi = signed_range(s, acc_lo, acc_hi)
        return np.clip(t, t_lo[:, None], t_hi[:, None] + 1), s
    m, b = tensors[mult].astype(np.int64), tensors[offset].astype(np.int64)
    s = np.where(m > 0, 1, -1)
    return implied_thresholds(m, b, shift, n_levels, *signed_range(s, acc_lo, acc_hi)), s
