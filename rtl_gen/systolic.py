"""A rows x cols systolic array of processing elements (partial sums flow along the rows)."""

from amaranth import Module, signed, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from hwq.intrange import MAX_A_BITS, MAX_W_STORAGE_BITS

from ._check import check_int
from .pe import ProcessingElement

__all__ = ["SystolicArray"]


class SystolicArray(wiring.Component):
    """Computes ``sums[r] = sum_c w[c][r] * x[c]`` with a systolic chain of PEs in each row.

    Dataflow: PE (r, c) adds ``w[c][r] * x[c]`` to the partial sum it receives from PE (r, c-1) and
    registers it for PE (r, c+1). Input ``x[c]`` is broadcast to every row of column c. Because the
    partial sum reaches column c after c cycles, the caller must present column c's weights and input
    **c cycles after column 0's** (skewed). ``sums`` then holds the result ``latency == cols`` cycles
    after column 0's inputs. A new set of inputs may enter every cycle (fully pipelined). ``dsp``: every PE
    multiplies on a DSP block (see :class:`ProcessingElement`).

    Members
    -------
    w : In(ArrayLayout(ArrayLayout(unsigned(w_bits), rows), cols))
    x : In(ArrayLayout(a_shape, cols))
    sums : Out(ArrayLayout(signed(acc_bits), rows))
    """

    def __init__(self, *, rows, cols, w_bits, a_bits, acc_bits, a_signed=False, dsp=False):
        self.rows = check_int("rows", rows, 1, 256)
        self.cols = check_int("cols", cols, 1, 256)
        self.w_bits = check_int("w_bits", w_bits, 1, MAX_W_STORAGE_BITS)
        self.a_bits = check_int("a_bits", a_bits, 1, MAX_A_BITS)
        self.acc_bits = check_int("acc_bits", acc_bits, 2, 64)
        self.a_signed = bool(a_signed)
        self.dsp = bool(dsp)
        self._pe_args = dict(w_bits=self.w_bits, a_bits=self.a_bits, acc_bits=self.acc_bits, a_signed=self.a_signed,
                             dsp=self.dsp)
        a_shape = signed(self.a_bits) if self.a_signed else unsigned(self.a_bits)
        super().__init__({
            "w": In(data.ArrayLayout(data.ArrayLayout(unsigned(self.w_bits), self.rows), self.cols)),
            "x": In(data.ArrayLayout(a_shape, self.cols)),
            "sums": Out(data.ArrayLayout(signed(self.acc_bits), self.rows)),
        })

    @property
    def latency(self):
        """Cycles from column 0's inputs to ``sums``."""
        return self.cols * ProcessingElement.latency

    def elaborate(self, platform):
        m = Module()
        for r in range(self.rows):
            psum = 0
            for c in range(self.cols):
                pe = ProcessingElement(**self._pe_args)
                m.submodules[f"pe_{r}_{c}"] = pe
                m.d.comb += [pe.w.eq(self.w[c][r]), pe.x.eq(self.x[c]), pe.psum_i.eq(psum)]
                psum = pe.psum_o
            m.d.comb += self.sums[r].eq(psum)
        return m
