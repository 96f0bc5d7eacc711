"""Arithmetic that leaves the choice of hard multipliers to us, not to synthesis.

yosys maps every ``$mul`` cell whose operands are wide enough to a DSP block once DSPs are enabled (on
ECP5 any product of two 2-bit operands). So that the DSP count is exactly the lanes we put on DSPs, the
rest of the hardware has no ``*``: products in logic are written as shifts and adds (:func:`lut_mul`),
and multiplications by constants (addresses) as sums of shifts (:func:`const_mul`).
"""

from amaranth import Mux

__all__ = ["const_mul", "lut_mul"]


def lut_mul(w, x):
    """``w * x`` for a signed ``w`` (and any ``x``), as shift-and-add over ``w``'s bits (the top bit
    weighs ``-2**(n-1)``): an adder tree in logic that synthesis does not turn into a DSP block. As cheap in
    LUTs as yosys' own soft multiplier (measured on iCE40, ECP5 and 7-series, 2..8 bits)."""
    n = len(w)
    if n == 1:  # a 1-bit two's complement value is 0 or -1
        return -Mux(w[0], x, 0)
    total = Mux(w[0], x, 0)
    for i in range(1, n - 1):
        total = total + (Mux(w[i], x, 0) << i)
    return total - (Mux(w[n - 1], x, 0) << (n - 1))


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
