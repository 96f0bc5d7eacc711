"""Arithmetic that leaves the choice of hard multipliers to us, not to synthesis.

yosys maps every ``$mul`` cell whose operands are wide enough to a DSP block once DSPs are enabled (on
ECP5 any product of two 2-bit operands). So that the DSP count is exactly the multipliers we put on DSPs,
the rest of the hardware has no ``*``: products in logic are a balanced adder tree of shifted partial
products (:func:`lut_mul`), and multiplications by constants (addresses) sums of shifts
(:func:`const_mul`).
"""

import math

from amaranth import Mux, Signal

__all__ = ["adder_tree", "const_mul", "lut_mul", "multiplier_key", "partial_products", "tree_levels"]


def partial_products(a, b):
    """``a * b`` as shifted terms ``(value, negative)``, one per bit of the narrower operand (its top bit
    weighs ``-2**(n-1)`` when it is signed, so that term is subtracted): the sum of ``+value`` or ``-value``
    over the terms is ``a * b``."""
    if len(b) < len(a):
        a, b = b, a
    terms = [(Mux(a[i], b, 0) << i, False) for i in range(len(a))]
    if a.shape().signed:
        terms[-1] = (terms[-1][0], True)
    return terms


def tree_levels(n_terms):
    """Adder levels of a balanced tree over ``n_terms`` terms."""
    return math.ceil(math.log2(n_terms)) if n_terms > 1 else 0


def _combine(x, y):
    (a, neg_a), (b, neg_b) = x, y
    if neg_a == neg_b:
        return a + b, neg_a
    return (b - a, False) if neg_a else (a - b, False)  # a subtractor, not a negation and an adder


def adder_tree(terms, m=None, register_at=(), name="tree"):
    """The sum of ``terms`` (values, or ``(value, negative)`` pairs: a negative term is subtracted) as a
    balanced tree of adders and subtractors. With a module ``m``, the partial sums after each level in
    ``register_at`` (0: the terms themselves) are registered in ``m``'s sync domain, so the sum arrives that
    many cycles later (pipeline registers in a deep tree)."""
    terms = [t if isinstance(t, tuple) else (t, False) for t in terms]
    level = 0
    while True:
        if m is not None and level in register_at:
            regs = [(Signal(v.shape(), name=f"{name}_l{level}_{i}"), neg) for i, (v, neg) in enumerate(terms)]
            m.d.sync += [r.eq(v) for (r, _), (v, _) in zip(regs, terms, strict=True)]
            terms = regs
        if len(terms) == 1:
            value, negative = terms[0]
            return -value if negative else value
        terms = [_combine(terms[i], terms[i + 1]) if i + 1 < len(terms) else terms[i] for i in range(0, len(terms), 2)]
        level += 1


def lut_mul(a, b):
    """``a * b`` (signed or unsigned operands) in logic, never a DSP block: the partial products of the
    narrower operand summed by a balanced adder tree (about as many LUTs as yosys' own soft multiplier,
    measured on iCE40, ECP5 and 7-series, 2..8 bits)."""
    return adder_tree(partial_products(a, b))


def multiplier_key(w_bits, a_bits, a_signed):
    """The name of a processing element's :func:`lut_mul` of a signed ``w_bits`` weight by an ``a_bits``
    activation in the measured multiplier table (``boards/calibration/multipliers.json``), e.g. ``"4x8u"``."""
    return f"{w_bits}x{a_bits}{'s' if a_signed else 'u'}"


def const_mul(value, k):
    """``value * k`` for a non-negative integer constant ``k``, as a sum of shifts (no ``$mul``)."""
    k = int(k)
    if k < 0:
        raise ValueError(f"const_mul takes a non-negative constant, not {k}")
    terms = [value << i for i in range(k.bit_length()) if k >> i & 1]
    if not terms:
        return 0
    total = terms[0]
    for t in terms[1:]:
        total = total + t
    return total
