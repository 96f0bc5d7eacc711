"""The XNOR-popcount engine core for binary layers: no multipliers, one adder tree per lane."""

from amaranth import Module, Signal, signed, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from ._check import check_int

__all__ = ["XnorPopcount"]


def _popcount(bits):
    """Sum of the bits of a signal as a balanced adder tree (combinational); returns the sum value."""
    terms = [bits[i] for i in range(len(bits))]
    while len(terms) > 1:
        nxt = [terms[i] + terms[i + 1] for i in range(0, len(terms) - 1, 2)]
        if len(terms) % 2:
            nxt.append(terms[-1])
        terms = nxt
    return terms[0]


class XnorPopcount(wiring.Component):
    """``lanes`` binary dot products of ``simd`` terms per cycle, registered (latency 1).

    Codes are bits: 1 stands for +1 and 0 for -1 (the IR's ``xnor`` encoding). Lane ``l`` computes,
    over the terms whose ``mask`` bit is 1 (0 marks a tap on zero padding, or an unused term):
    ``acc[l] = 2 * popcount(~(x ^ w[l]) & mask) - popcount(mask)``, the ±1 dot product. No
    multiplier: one XNOR per term and a popcount adder tree per lane.

    Members
    -------
    x : In(simd)                       input bits
    w : In(ArrayLayout(simd, lanes))   weight bits per lane
    mask : In(simd)                    1 = the term counts
    acc : Out(ArrayLayout(signed(acc_bits), lanes)), registered
    """

    latency = 1

    def __init__(self, *, lanes, simd):
        self.lanes = check_int("lanes", lanes, 1, 1024)
        self.simd = check_int("simd", simd, 1, 4096)
        self.acc_bits = self.simd.bit_length() + 1  # -simd .. +simd
        super().__init__({
            "x": In(self.simd),
            "w": In(data.ArrayLayout(unsigned(self.simd), self.lanes)),
            "mask": In(self.simd),
            "acc": Out(data.ArrayLayout(signed(self.acc_bits), self.lanes)),
        })

    def elaborate(self, platform):
        m = Module()
        n_valid = Signal(range(self.simd + 1))
        m.d.comb += n_valid.eq(_popcount(self.mask))
        for lane in range(self.lanes):
            agree = Signal(self.simd, name=f"agree{lane}")
            count = Signal(range(self.simd + 1), name=f"count{lane}")
            m.d.comb += [agree.eq(~(self.x ^ self.w[lane]) & self.mask), count.eq(_popcount(agree))]
            m.d.sync += self.acc[lane].eq(2 * count - n_valid)
        return m
