"""Integer ranges of quantized values: the one place training, export, golden model and RTL take them.

Weights are signed two's complement for 2..16 bits (training makes up to 8; the IR and the hardware take
16, e.g. the 12-bit weights of hls4ml's models); a 1-bit weight is binary, {-1, +1}.
Activations are unsigned codes 0..2^b-1 (after ReLU) or signed two's complement, of 1..8 bits from training
and up to 16 in the IR and the hardware where a weight layer's multiply-shift makes them.

>>> min_int(4, signed=False), max_int(4, signed=False)
(0, 15)
>>> min_int(2, signed=True), max_int(2, signed=True)
(-2, 1)
>>> weight_range(1), weight_range(3)
((-1, 1), (-4, 3))
>>> signed_width(-4, 3), signed_width(0, 4), signed_width(-1920, 1920)
(3, 4, 12)
>>> weight_codes(2, "odd"), weight_codes(2, "int", symmetric=True), weight_storage_bits(3, "odd")
((-3, 3), (-1, 1), 4)
>>> act_levels(2, False), act_levels(1, True), act_levels(3, True)
((0, 1, 4), (-1, 2, 2), (-4, 1, 8))
>>> code_range(1, True), code_range(3, False), range_bits(3, 12)
((-1, 1), (0, 7), 5)
"""

import operator

__all__ = ["MAX_A_BITS", "MAX_BITS", "MAX_W_BITS", "MAX_W_STORAGE_BITS", "W_GRIDS", "act_levels", "check_bits", "code_range", "is_bipolar", "max_int", "min_int", "range_bits",
           "signed_width", "weight_codes", "weight_dtype", "weight_range", "weight_storage_bits"]

MIN_BITS = 1
MAX_BITS = 8  # the bits training chooses; thresholds requantizations (2^bits - 1 thresholds per channel)
MAX_A_BITS = 16  # activation codes in the IR and the hardware (above MAX_BITS: multiply-shift requantization)
MAX_W_BITS = 16  # weights in the IR and the hardware
W_GRIDS = ("int", "odd")
MAX_W_STORAGE_BITS = 17  # weight_storage_bits(16, "odd"): 16-bit odd-grid codes reach +-65535; engines take up to this


def check_bits(bits, *, name="bits", top=MAX_BITS):
    """Return ``bits`` as an int, or raise if it is not an integer in 1..``top`` (8 unless told)."""
    try:
        value = operator.index(bits)
    except TypeError:
        raise TypeError(f"{name} must be an integer in {MIN_BITS}..{top}, not {bits!r}") from None
    if isinstance(bits, bool) or not MIN_BITS <= value <= top:
        raise ValueError(f"{name} must be an integer in {MIN_BITS}..{top}, not {bits!r}")
    return value


def min_int(bits, signed):
    """Smallest integer of a ``bits``-wide code."""
    return -(1 << (bits - 1)) if signed else 0


def max_int(bits, signed):
    """Largest integer of a ``bits``-wide code."""
    return (1 << (bits - 1)) - 1 if signed else (1 << bits) - 1


def weight_range(w_bits):
    """(lowest, highest) integer weight held in ``w_bits`` storage bits (up to :data:`MAX_W_STORAGE_BITS`);
    1 bit is binary {-1, +1} (0 is not a level)."""
    w_bits = check_bits(w_bits, name="w_bits", top=MAX_W_STORAGE_BITS)
    if w_bits == 1:
        return -1, 1
    return min_int(w_bits, True), max_int(w_bits, True)


def signed_width(lo, hi):
    """Fewest two's complement bits that hold every integer in [lo, hi]."""
    lo, hi = int(lo), int(hi)
    if lo > hi:
        raise ValueError(f"empty range [{lo}, {hi}]")
    bits = 1
    while not (min_int(bits, True) <= lo and hi <= max_int(bits, True)):
        bits += 1
    return bits


def weight_codes(w_bits, grid="int", *, symmetric=False):
    """(lowest, highest) weight code of a grid (see :mod:`hwq.quant`).

    ``int``: two's complement (``symmetric`` drops the most negative code); ``odd``: the odd integers
    in ``[-(2^b-1), 2^b-1]`` (mid-rise levels). One bit is {-1, +1} on both grids.
    """
    w_bits = check_bits(w_bits, name="w_bits", top=MAX_W_BITS)
    if grid not in W_GRIDS:
        raise ValueError(f"weight grid must be one of {W_GRIDS}, not {grid!r}")
    if w_bits == 1:
        return -1, 1
    if grid == "odd":
        return -((1 << w_bits) - 1), (1 << w_bits) - 1
    return (-max_int(w_bits, True) if symmetric else min_int(w_bits, True)), max_int(w_bits, True)


def weight_storage_bits(w_bits, grid="int"):
    """Two's complement bits that hold every code of the grid (1 for binary weights)."""
    if check_bits(w_bits, name="w_bits", top=MAX_W_BITS) == 1:
        return 1
    return signed_width(*weight_codes(w_bits, grid))


def weight_dtype(w_bits, grid="int"):
    """The narrowest numpy integer type that holds a grid's weight codes (a tensor's dtype in the IR)."""
    bits = weight_storage_bits(w_bits, grid)
    return "int8" if bits <= 8 else "int16" if bits <= 16 else "int32"


def is_bipolar(bits, signed):
    """Signed 1-bit codes are bipolar {-1, +1} (XNOR/BNN activations), not two's complement."""
    return bool(signed) and bits == 1


def act_levels(bits, signed):
    """(lowest code, distance between codes, number of codes) of an activation.

    Unsigned: 0..2^b-1. Signed: two's complement, except 1 bit, which is bipolar {-1, +1}.
    """
    bits = check_bits(bits, top=MAX_A_BITS)
    if is_bipolar(bits, signed):
        return -1, 2, 2
    return min_int(bits, signed), 1, 1 << bits


def code_range(bits, signed):
    """(lowest, highest) code of an activation (see :func:`act_levels`)."""
    lo, step, n = act_levels(bits, signed)
    return lo, lo + step * (n - 1)


def range_bits(lo, hi):
    """Two's complement bits of an accumulator whose values (and 0, its reset value) span [lo, hi]."""
    return signed_width(min(int(lo), 0), max(int(hi), 0))
