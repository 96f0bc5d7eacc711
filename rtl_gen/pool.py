"""Max-pooling engine: reads a feature-map buffer window by window and writes the per-channel maxima."""

from dataclasses import dataclass

from amaranth import Module, Mux, Signal, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from hwq.ir import conv_out_side

from ._check import check_int
from .engine import clog2
from .loops import LoopNest

__all__ = ["MaxPoolEngine", "PoolPlan"]


@dataclass(frozen=True)
class PoolPlan:
    """Geometry, timing and cost of a :class:`MaxPoolEngine` (no padding, like the IR's maxpool)."""

    channels: int
    in_h: int
    in_w: int
    kernel: int
    stride: int
    bits: int
    lanes: int  # channels per buffer word (the producer's rows)

    @property
    def out_h(self):
        return conv_out_side(self.in_h, self.kernel, self.stride, 0)

    @property
    def out_w(self):
        return conv_out_side(self.in_w, self.kernel, self.stride, 0)

    @property
    def groups(self):
        return self.channels // self.lanes

    @property
    def in_words(self):
        return self.in_h * self.in_w * self.groups

    @property
    def out_words(self):
        return self.out_h * self.out_w * self.groups

    @property
    def n_reads(self):
        return self.out_words * self.kernel * self.kernel

    @property
    def latency(self):
        """Cycles from ``start`` to ``done``: reads in cycles 1..n_reads, compare and write (1), done (1)."""
        return self.n_reads + 2

    @property
    def cost_features(self):
        """Named for the pool alone (its own coefficients): comparators, tracked addresses, control."""
        loops = sum(c > 1 for c in (self.kernel, self.kernel, self.groups, self.out_w, self.out_h))
        return {"pool_const": 1, "pool_cmp": self.lanes * self.bits,
                "pool_addr": (clog2(self.in_words) + clog2(self.out_words)) * loops,
                "pool_ctrl": 2 * (3 + clog2(self.out_words))}

    @property
    def register_bits(self):
        return {"pool_const": 1, "ff_pool": self.lanes * self.bits,
                "ff_pool_ctrl": 2 * (3 + clog2(self.out_words)) + 5 * clog2(max(self.in_words, 2))}

    def resources(self, family):
        from boards.model import plan_resources

        return plan_resources(family, self)


class MaxPoolEngine(wiring.Component):
    """``y[c, oy, ox] = max over the kernel window of x[c, oy*stride + ky, ox*stride + kx]``.

    Buffers hold level indices, which increase with the code (for unsigned, signed and bipolar codes
    alike), so the maximum of the indices is the index of the maximum. A word holds ``lanes``
    channels; ``lanes`` comparators work in parallel. Loops, innermost first: kx, ky (one read per
    cycle), channel group, ox, oy; the maximum of a window is written as one word.

    Timing: ``start`` is sampled in cycle 0; reads in cycles 1..n_reads; ``done`` at ``n_reads + 2``.
    """

    def __init__(self, plan):
        self.plan = p = plan
        for name in ("channels", "in_h", "in_w", "kernel", "stride", "lanes"):
            check_int(name, getattr(p, name), 1)
        check_int("bits", p.bits, 1, 8)
        if p.channels % p.lanes:
            raise ValueError(f"lanes ({p.lanes}) must divide channels ({p.channels})")
        word = data.ArrayLayout(unsigned(p.bits), p.lanes)
        super().__init__({
            "start": In(1), "done": Out(1), "busy": Out(1),
            "rd_addr": Out(range(max(p.in_words, 2))), "rd_data": In(word),
            "wr_en": Out(1), "wr_addr": Out(range(max(p.out_words, 2))), "wr_data": Out(word),
        })

    @property
    def latency(self):
        return self.plan.latency

    def elaborate(self, platform):
        m = Module()
        p = self.plan
        k = p.kernel
        running = Signal()
        # loops, innermost first: kx, ky (one read per cycle), channel group, ox, oy; every loop wraps to 0 with
        # its last value, so all are at 0 between runs and ``start`` only sets ``running``
        with m.If(self.start):
            m.d.sync += [running.eq(1), self.busy.eq(1)]
        loops = LoopNest.build(m, (k, k, p.groups, p.out_w, p.out_h), running, ("kx", "ky", "g", "ox", "oy"))
        with m.If(running & loops.done):
            m.d.sync += running.eq(0)
        G, W, s_ = p.groups, p.in_w, p.stride
        addr = loops.track(m, (G, W * G, 1, s_ * G, s_ * W * G), 0, unsigned(len(self.rd_addr)), "in_addr")
        out_addr = loops.track(m, (0, 0, 1, G, p.out_w * G), 0, range(max(p.out_words, 2)), "out_addr")
        last_win = loops.all_at((0, 1))
        m.d.comb += self.rd_addr.eq(addr)

        # One cycle later the word arrives: running maximum per lane, written at the window's end.
        valid, first, last = Signal(), Signal(), Signal()
        waddr = Signal.like(out_addr)
        m.d.sync += [valid.eq(running), first.eq(loops.first((0, 1))), last.eq(last_win), waddr.eq(out_addr)]
        best = Signal(data.ArrayLayout(unsigned(p.bits), p.lanes))
        new = Signal.like(best)
        for lane in range(p.lanes):
            x = self.rd_data[lane]
            m.d.comb += new[lane].eq(Mux(first | (x > best[lane]), x, best[lane]))
        with m.If(valid):
            m.d.sync += best.eq(new)
        m.d.comb += [self.wr_en.eq(valid & last), self.wr_addr.eq(waddr), self.wr_data.eq(new)]
        m.d.sync += self.done.eq(valid & last & (waddr == p.out_words - 1))
        with m.If(self.done):
            m.d.sync += self.busy.eq(0)
        return m
