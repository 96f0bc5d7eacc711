"""Threshold requantizer: an accumulator becomes a low-bit code by counting thresholds reached."""

from amaranth import Module, signed, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from ._check import check_int

__all__ = ["ThresholdRequantizer"]


class ThresholdRequantizer(wiring.Component):
    """``q = #{k : acc >= thresholds[k]}`` (combinational), the golden model's requantization.

    Members
    -------
    acc : In(signed(acc_bits))
    thresholds : In(ArrayLayout(signed(thr_bits), 2**out_bits - 1))
    q : Out(unsigned(out_bits))
    """

    def __init__(self, *, acc_bits, thr_bits, out_bits):
        self.acc_bits = check_int("acc_bits", acc_bits, 2, 64)
        self.thr_bits = check_int("thr_bits", thr_bits, 2, 65)
        self.out_bits = check_int("out_bits", out_bits, 1, 8)
        self.n_levels = (1 << self.out_bits) - 1
        super().__init__({
            "acc": In(signed(self.acc_bits)),
            "thresholds": In(data.ArrayLayout(signed(self.thr_bits), self.n_levels)),
            "q": Out(unsigned(self.out_bits)),
        })

    def elaborate(self, platform):
        m = Module()
        reached = [self.acc >= self.thresholds[k] for k in range(self.n_levels)]
        m.d.comb += self.q.eq(sum(reached))
        return m
