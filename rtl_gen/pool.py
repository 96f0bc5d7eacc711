"""Pooling engines: read a feature-map buffer window by window and write the per-channel maxima
(:class:`MaxPoolEngine`) or the requantized sums (:class:`AvgPoolEngine`, average and global average
pooling)."""

from dataclasses import dataclass

import numpy as np
from amaranth import Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from hwq.intrange import MAX_A_BITS, act_levels, signed_width
from hwq.ir import conv_out_side

from ._check import check_int
from .add import ThresholdROM, ThresholdStage
from .arith import const_mul
from .engine import clog2, finish_writes, folded_thresholds, param_memory, requantize
from .loops import LoopNest

__all__ = ["AvgPoolEngine", "AvgPoolPlan", "MaxPoolEngine", "PoolPlan", "avgpool_thresholds"]


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


def _window_loops(m, engine, p):
    """A pooling engine's loops, innermost first: kx, ky (one read per cycle), channel group, ox, oy, started
    by ``engine.start`` (every loop wraps to 0 with its last value, so all are at 0 between runs and ``start``
    only sets ``running``), reading at ``engine.rd_addr``; returns (the loops, ``running``, the output word's
    address)."""
    k, running = p.kernel, Signal(name="running")
    with m.If(engine.start):
        m.d.sync += [running.eq(1), engine.busy.eq(1)]
    loops = LoopNest.build(m, (k, k, p.groups, p.out_w, p.out_h), running, ("kx", "ky", "g", "ox", "oy"))
    with m.If(running & loops.done):
        m.d.sync += running.eq(0)
    G, W, s_ = p.groups, p.in_w, p.stride
    addr = loops.track(m, (G, W * G, 1, s_ * G, s_ * W * G), 0, unsigned(len(engine.rd_addr)), "in_addr")
    out_addr = loops.track(m, (0, 0, 1, G, p.out_w * G), 0, range(max(p.out_words, 2)), "out_addr")
    m.d.comb += engine.rd_addr.eq(addr)
    return loops, running, out_addr


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
        check_int("bits", p.bits, 1, MAX_A_BITS)
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
        loops, running, out_addr = _window_loops(m, self, p)
        last_win = loops.all_at((0, 1))

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
        m.d.comb += self.wr_data.eq(new)
        finish_writes(m, self, valid & last, waddr, p.out_words)
        return m


def avgpool_thresholds(thresholds, signs, window, bits, is_signed):
    """The thresholds of ``sign * (sum of a window's codes) >= T`` rewritten for the sum of level steps
    ``s = sum - window * lo`` (codes are ``lo + step * index``): ``sign * s >= T - sign * window * lo``."""
    lo, _, _ = act_levels(bits, is_signed)
    return np.asarray(thresholds, np.int64) - np.asarray(signs, np.int64)[:, None] * window * lo


@dataclass(frozen=True)
class AvgPoolPlan(ThresholdROM):
    """Geometry, timing and cost of an :class:`AvgPoolEngine` (no padding; global average pooling is the
    kernel of the whole map)."""

    channels: int
    in_h: int
    in_w: int
    kernel: int
    stride: int
    bits: int        # input codes
    is_signed: bool
    out_bits: int
    lanes: int       # channels per buffer word (the producer's rows)
    param_bits: int  # width of one threshold
    prom_style: str = "logic"  # where the threshold ROM lives (one word per channel group)

    out_h = PoolPlan.out_h
    out_w = PoolPlan.out_w
    groups = PoolPlan.groups
    in_words = PoolPlan.in_words
    out_words = PoolPlan.out_words
    n_reads = PoolPlan.n_reads

    @property
    def n_levels(self):
        return (1 << self.out_bits) - 1

    @property
    def sum_bits(self):
        """Signed width of a window's sum of level steps and of its negation."""
        _, step, n = act_levels(self.bits, self.is_signed)
        top = self.kernel * self.kernel * step * (n - 1)
        return signed_width(-top, top)

    @property
    def latency(self):
        """Cycles from ``start`` to ``done``: reads in cycles 1..n_reads, sum and compare (1), count and write
        (1), done (1)."""
        return self.n_reads + 3


    @property
    def _loops(self):
        """The max-pool with these loops (its loop, address and control features are this engine's too)."""
        return PoolPlan(self.channels, self.in_h, self.in_w, self.kernel, self.stride, self.bits, self.lanes)

    @property
    def cost_features(self):
        """The max-pool's loops and addresses with the add engine's accumulating adders, comparators and
        threshold ROM (the same hardware; the calibration sweeps have no average pool of their own)."""
        table = self.lanes * self.n_levels * self.param_bits
        prom_logic = self.groups > 1 and self.prom_style == "logic"
        return {**{k: v for k, v in self._loops.cost_features.items() if k != "pool_cmp"},
                "bias_add": self.lanes * self.sum_bits, "cmp": table, "param_rom": table * prom_logic}

    @property
    def register_bits(self):
        return {**{k: v for k, v in self._loops.register_bits.items() if k != "ff_pool"},
                "ff_acc": self.lanes * self.sum_bits, "ff_cmp": self.lanes * self.n_levels,
                "ff_prom": self.prom_width * (self.groups > 1 and self.prom_style == "logic")}

    def resources(self, family):
        from boards.model import plan_resources

        return {**plan_resources(family, self), "bram": self.bram_blocks(family)}


class AvgPoolEngine(ThresholdStage, wiring.Component):
    """``y[c, oy, ox] = requant_c(sum over the kernel window of x[c, oy*stride + ky, ox*stride + kx])``.

    Loops as :class:`MaxPoolEngine` (kx, ky innermost, one read per cycle, then channel group, ox, oy);
    each of the ``lanes`` accumulators adds the level steps ``step * index`` of its channel over the window;
    the constant ``window * lo`` is folded into the thresholds (:func:`avgpool_thresholds`), which come per
    channel group from a small ROM with the sign of decreasing channels. A window's ``lanes`` output level
    indices are written as one word.

    Timing: ``start`` is sampled in cycle 0; reads in cycles 1..n_reads; ``done`` at ``n_reads + 3``.

    Parameters
    ----------
    plan : AvgPoolPlan
    thresholds : array (channels, 2**out_bits - 1), on the sum of the window's codes (in the sign domain)
    signs : array (channels,) of +1/-1, or None (all +1)
    """

    def __init__(self, plan, *, thresholds, signs=None):
        self.plan = p = plan
        for name in ("channels", "in_h", "in_w", "kernel", "stride", "lanes"):
            check_int(name, getattr(p, name), 1)
        for name in ("bits", "out_bits"):
            check_int(name, getattr(p, name), 1, 8)
        if p.channels % p.lanes:
            raise ValueError(f"lanes ({p.lanes}) must divide channels ({p.channels})")
        self.table, self.signs = folded_thresholds(
            thresholds, signs, p.channels, p.n_levels, p.param_bits,
            lambda t, s: avgpool_thresholds(t, s, p.kernel * p.kernel, p.bits, p.is_signed))
        super().__init__({
            "start": In(1), "done": Out(1), "busy": Out(1),
            "rd_addr": Out(range(max(p.in_words, 2))),
            "rd_data": In(data.ArrayLayout(unsigned(p.bits), p.lanes)),
            "wr_en": Out(1), "wr_addr": Out(range(max(p.out_words, 2))),
            "wr_data": Out(data.ArrayLayout(unsigned(p.out_bits), p.lanes)),
        })

    def elaborate(self, platform):
        m = Module()
        p = self.plan
        _, step, _ = act_levels(p.bits, p.is_signed)
        loops, running, out_addr = _window_loops(m, self, p)
        group = loops.track(m, (0, 0, 1, 0, 0), 0, range(max(p.groups, 2)), "group")
        pport, params = param_memory(m, self.param_rom(), p.lanes, p.n_levels, p.param_bits, p.prom_style)
        m.d.comb += pport.addr.eq(group)

        # One cycle later the word and the group's thresholds arrive: add to each lane's sum; at the window's last
        # read compare the sum (registered), one more cycle: count the thresholds reached and write.
        valid, first, last = Signal(), Signal(), Signal()
        waddr = Signal.like(out_addr)
        m.d.sync += [valid.eq(running), first.eq(loops.first((0, 1))), last.eq(loops.all_at((0, 1))),
                     waddr.eq(out_addr)]
        out_valid, out_addr_q = Signal(), Signal.like(out_addr)
        m.d.sync += [out_valid.eq(valid & last), out_addr_q.eq(waddr)]  # (the requantizers' registered results)
        for lane in range(p.lanes):
            acc = Signal(signed(p.sum_bits), name=f"sum{lane}")
            total = Signal(signed(p.sum_bits), name=f"total{lane}")
            m.d.comb += total.eq(Mux(first, 0, acc) + const_mul(self.rd_data[lane], step))
            with m.If(valid):
                m.d.sync += acc.eq(total)
            q = requantize(m, f"requant{lane}", total, p.sum_bits, params[lane], p.param_bits, p.out_bits)
            m.d.comb += self.wr_data[lane].eq(q)
        finish_writes(m, self, out_valid, out_addr_q, p.out_words)
        return m
