"""Requantizers: an accumulator becomes a low-bit code by counting thresholds reached, or by an integer
multiply, add and arithmetic shift (the two forms of the IR's requantization, see hwq/requant.py)."""

from amaranth import Module, Signal, signed, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from hwq.intrange import MAX_A_BITS

from ._check import check_int
from .arith import adder_tree, partial_products, tree_levels

__all__ = ["MultiplyShiftRequantizer", "ThresholdRequantizer"]


class ThresholdRequantizer(wiring.Component):
    """``q = #{k : (acc >= thresholds[k]) XOR neg}``, the golden model's requantization in comparator form.

    A channel whose code increases with the accumulator (``neg`` = 0) counts the thresholds reached; a
    decreasing one (``sign * acc >= T`` with sign -1, i.e. ``acc <= -T``) counts ``NOT (acc >= 1 - T)``,
    so its thresholds are stored as ``1 - T`` (:func:`rtl_gen.engine.compare_thresholds`) and no negation
    of the accumulator is needed. ``registered``: the comparisons are registered and counted in the next
    cycle (latency 1, the engines' choice: it splits the comparator carry chains from the count and the
    buffer write); otherwise combinational.

    Members
    -------
    acc : In(signed(acc_bits))
    thresholds : In(ArrayLayout(signed(thr_bits), 2**out_bits - 1))
    neg : In(1)
    q : Out(unsigned(out_bits))
    """

    def __init__(self, *, acc_bits, thr_bits, out_bits, registered=False):
        self.acc_bits = check_int("acc_bits", acc_bits, 2, 64)
        self.thr_bits = check_int("thr_bits", thr_bits, 2, 65)
        self.out_bits = check_int("out_bits", out_bits, 1, 8)
        self.n_levels = (1 << self.out_bits) - 1
        self.registered = bool(registered)
        super().__init__({
            "acc": In(signed(self.acc_bits)),
            "thresholds": In(data.ArrayLayout(signed(self.thr_bits), self.n_levels)),
            "neg": In(1),
            "q": Out(unsigned(self.out_bits)),
        })

    @property
    def latency(self):
        return int(self.registered)

    def elaborate(self, platform):
        m = Module()
        reached = Signal(self.n_levels)
        compare = [reached[k].eq((self.acc >= self.thresholds[k]) ^ self.neg) for k in range(self.n_levels)]
        if self.registered:
            m.d.sync += compare
        else:
            m.d.comb += compare
        bits = [reached[k] for k in range(self.n_levels)]
        m.d.comb += self.q.eq(sum(bits) if self.n_levels <= 15 else _tree_sum(bits))
        return m


def _tree_sum(terms):
    """A balanced adder tree: a chain of 255 adds (8-bit outputs) nests too deep for Amaranth's simulator.
    (Up to 4-bit outputs keep the chain, whose Verilog the resource model was calibrated on.)"""
    while len(terms) > 1:
        terms = [terms[i] + terms[i + 1] if i + 1 < len(terms) else terms[i] for i in range(0, len(terms), 2)]
    return terms[0]


class MultiplyShiftRequantizer(wiring.Component):
    """``q = clamp((acc * mult + offset) >> shift, 0, 2**out_bits - 1)``: the golden model's multiply-shift
    requantization (``>>`` is arithmetic: floor division by ``2**shift``). Combinational, or with
    ``registered`` pipelined (the engines' choice: ``acc * mult + offset`` as one adder tree of the partial
    products and the offset, registered after every level, :attr:`latency` cycles; the shift and clamp
    follow). ``dsp``: ``acc * mult + offset`` with ``*`` (a DSP block where the family's mapping takes it,
    see ``boards.model.dsp_eligible``), then as many registers; otherwise shift-and-add logic.

    ``mult`` and ``offset`` are inputs (per-channel values come from a small ROM in an engine); a
    negative ``mult`` is a decreasing channel. The output is the level index; the code is
    ``lo + index`` (unsigned: ``lo = 0``; signed: ``-2**(out_bits-1)``). Bipolar outputs always use
    thresholds, so the index range is always ``0 .. 2**out_bits - 1``.

    Members
    -------
    acc : In(signed(acc_bits))
    mult : In(signed(mult_bits))
    offset : In(signed(offset_bits))
    q : Out(unsigned(out_bits))
    """

    def __init__(self, *, acc_bits, mult_bits, offset_bits, shift, out_bits, registered=False, dsp=False):
        self.registered, self.dsp = bool(registered), bool(dsp)
        self.acc_bits = check_int("acc_bits", acc_bits, 2, 64)
        self.mult_bits = check_int("mult_bits", mult_bits, 2, 33)
        self.offset_bits = check_int("offset_bits", offset_bits, 1, 64)
        self.shift = check_int("shift", shift, 0, 32)
        self.out_bits = check_int("out_bits", out_bits, 1, MAX_A_BITS)
        super().__init__({
            "acc": In(signed(self.acc_bits)),
            "mult": In(signed(self.mult_bits)),
            "offset": In(signed(self.offset_bits)),
            "q": Out(unsigned(self.out_bits)),
        })

    @property
    def sum_bits(self):
        """Width of ``acc * mult + offset`` (never overflows: one bit above the wider term)."""
        return max(self.acc_bits + self.mult_bits, self.offset_bits) + 1

    @property
    def levels(self):
        """Adder levels of ``acc * mult + offset`` in logic: the narrower operand's partial products and the
        offset."""
        return tree_levels(min(self.acc_bits, self.mult_bits) + 1)

    @property
    def latency(self):
        """0 when combinational; pipelined, one cycle per adder level (the same with a DSP block)."""
        return max(1, self.levels) if self.registered else 0

    def elaborate(self, platform):
        m = Module()
        total = Signal(signed(self.sum_bits))
        idx = Signal(signed(self.sum_bits))
        top = (1 << self.out_bits) - 1
        if self.dsp:
            value = self.acc * self.mult + self.offset
            for i in range(self.latency - 1):  # as many cycles as the logic version takes
                stage = Signal(signed(self.sum_bits), name=f"total{i}")
                m.d.sync += stage.eq(value)
                value = stage
        else:  # the offset is one more term of the partial products' adder tree, registered after each level
            terms = [*partial_products(self.acc, self.mult), (self.offset, False)]
            value = adder_tree(terms, m if self.registered else None, range(1, self.levels), name="pp")
        if self.registered:
            m.d.sync += total.eq(value)
        else:
            m.d.comb += total.eq(value)
        m.d.comb += idx.eq(total >> self.shift)  # arithmetic shift of a signed value
        # clamp by bits, not comparators: negative is the sign bit, too large any bit above out_bits
        negative = idx[-1]
        too_large = ~negative & idx[self.out_bits:-1].any() if len(idx) > self.out_bits + 1 else 0
        with m.If(negative):
            m.d.comb += self.q.eq(0)
        with m.Elif(too_large):
            m.d.comb += self.q.eq(top)
        with m.Else():
            m.d.comb += self.q.eq(idx[:self.out_bits])
        return m
