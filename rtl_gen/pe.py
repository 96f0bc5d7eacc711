"""The processing element: one registered multiply-accumulate cell of the systolic array."""

from amaranth import Module, Mux, signed, unsigned
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from hwq.intrange import MAX_A_BITS, MAX_W_STORAGE_BITS

from ._check import check_int
from .arith import lut_mul

__all__ = ["ProcessingElement"]


class ProcessingElement(wiring.Component):
    """``psum_o <= psum_i + w * x`` with one register (latency 1).

    Parameters
    ----------
    w_bits : int
        Weight width, 1..8. Multi-bit weights are two's complement; a 1-bit weight is binary: bit 1
        means +1 and bit 0 means -1, and the product is ``x`` or ``-x`` (no multiplier).
    a_bits : int
        Activation width, 1..8.
    a_signed : bool
        Whether activations are two's complement (else unsigned codes).
    acc_bits : int
        Partial-sum width; the caller proves the sum never leaves this range.
    dsp : bool
        Multiply with ``*``, which synthesis maps to a DSP block (when both operands have at least 2 bits
        and the product is as wide as the family's DSP mapping asks, see ``boards.model.dsp_eligible``);
        otherwise the product is shift-and-add logic (:func:`rtl_gen.arith.lut_mul`), never a DSP.

    Members
    -------
    w : In(w_bits)
    x : In(a_bits), signed if ``a_signed``
    psum_i : In(signed(acc_bits))
    psum_o : Out(signed(acc_bits)), registered
    """

    latency = 1

    def __init__(self, *, w_bits, a_bits, acc_bits, a_signed=False, dsp=False):
        self.w_bits = check_int("w_bits", w_bits, 1, MAX_W_STORAGE_BITS)
        self.a_bits = check_int("a_bits", a_bits, 1, MAX_A_BITS)
        self.acc_bits = check_int("acc_bits", acc_bits, 2, 64)
        self.a_signed = bool(a_signed)
        self.dsp = bool(dsp)
        a_shape = signed(self.a_bits) if self.a_signed else unsigned(self.a_bits)
        super().__init__({
            "w": In(self.w_bits),
            "x": In(a_shape),
            "psum_i": In(signed(self.acc_bits)),
            "psum_o": Out(signed(self.acc_bits)),
        })

    def elaborate(self, platform):
        m = Module()
        if self.w_bits == 1:
            product = Mux(self.w, self.x, -self.x)
        elif self.dsp:
            product = self.w.as_signed() * self.x
        else:
            product = lut_mul(self.w.as_signed(), self.x)
        m.d.sync += self.psum_o.eq(self.psum_i + product)
        return m
