"""Residual add engine: reads the branch's feature map and the skip's, word by word, adds the codes lane by
lane and requantizes each channel with its thresholds."""

from dataclasses import dataclass

import numpy as np
from amaranth import Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from hwq.intrange import act_levels, signed_width

from ._check import check_int
from .arith import const_mul
from .engine import clog2, finish_writes, folded_thresholds, param_memory, param_rom_words, requantize

__all__ = ["AddEngine", "AddPlan", "ThresholdROM", "ThresholdStage", "add_lanes", "add_thresholds"]


def _level_sum_range(a, b):
    """(lowest code sum, highest sum of level steps): codes are ``lo + step * index``, so
    ``code_a + code_b = lo_a + lo_b + step_a * index_a + step_b * index_b``."""
    (lo_a, step_a, n_a), (lo_b, step_b, n_b) = act_levels(*a), act_levels(*b)
    return lo_a + lo_b, step_a * (n_a - 1) + step_b * (n_b - 1)


def add_thresholds(thresholds, signs, a, b):
    """The thresholds of ``sign * (code_a + code_b) >= T`` rewritten for the sum of level steps
    ``s = code_a + code_b - (lo_a + lo_b)``: ``sign * s >= T - sign * (lo_a + lo_b)``. ``a``, ``b``:
    (bits, signed) of the two inputs' codes."""
    low, _ = _level_sum_range(a, b)
    return np.asarray(thresholds, np.int64) - np.asarray(signs, np.int64)[:, None] * low


class ThresholdROM:
    """A plan whose per-channel thresholds come from a ROM of one word per channel group (``lanes`` channels
    of ``param_bits`` each, with their signs): the add's and the average pool's."""

    @property
    def prom_width(self):
        return self.lanes * (1 + self.n_levels * self.param_bits)

    @property
    def memories(self):
        """(name, depth, width, style) of the memories that may go to block RAM: the threshold ROM, when it
        has more than one word."""
        return [("prom", self.groups, self.prom_width, self.prom_style)] if self.groups > 1 else []

    def bram_blocks(self, family):
        from boards.model import bram_blocks

        return sum(bram_blocks(family, depth, width) for _, depth, width, style in self.memories if style == "block")


@dataclass(frozen=True)
class AddPlan(ThresholdROM):
    """Geometry, timing and cost of an :class:`AddEngine`."""

    channels: int
    in_h: int
    in_w: int
    lanes: int       # channels per buffer word (both inputs' producers have this many rows)
    a_bits: int      # branch (the input buffer) codes
    a_signed: bool
    b_bits: int      # skip (the skip ring) codes
    b_signed: bool
    out_bits: int
    param_bits: int  # width of one threshold
    prom_style: str = "logic"  # where the threshold ROM lives (one word per channel group)

    @property
    def groups(self):
        return self.channels // self.lanes

    @property
    def words(self):
        return self.in_h * self.in_w * self.groups

    @property
    def n_levels(self):
        return (1 << self.out_bits) - 1

    @property
    def sum_bits(self):
        """Signed width of the sum of level steps and of its negation."""
        _, top = _level_sum_range((self.a_bits, self.a_signed), (self.b_bits, self.b_signed))
        return signed_width(-top, top)

    @property
    def latency(self):
        """Cycles from ``start`` to ``done``: reads in cycles 1..words, add and compare (1), count and write (1),
        done (1)."""
        return self.words + 3


    @property
    def cost_features(self):
        """Named like the layer engine's features (the same hardware: adders, comparators, parameter ROM)."""
        table = self.lanes * self.n_levels * self.param_bits
        prom_logic = self.groups > 1 and self.prom_style == "logic"
        return {"const": 1, "bias_add": self.lanes * self.sum_bits, "cmp": table, "param_rom": table * prom_logic,
                "addr": clog2(self.words), "ctrl": 2 + clog2(self.words)}

    @property
    def register_bits(self):
        return {"const": 1, "ff_prom": self.prom_width * (self.groups > 1 and self.prom_style == "logic"),
                "ff_cmp": self.lanes * self.n_levels,  # the registered comparisons
                "ff_ctrl": 5 + 3 * clog2(max(self.words, 2)) + clog2(self.groups)}

    def resources(self, family):
        from boards.model import plan_resources

        return {**plan_resources(family, self), "bram": self.bram_blocks(family)}


class ThresholdStage:
    """What the add and average-pool engines share: ``latency`` from the plan, and ``param_rom()``, one word of
    ``lanes`` channels' thresholds (``self.table``, ``self.signs``) per channel group."""

    @property
    def latency(self):
        return self.plan.latency

    def param_rom(self):
        return param_rom_words(self.table, self.signs, self.plan.lanes, self.plan.groups, self.plan.param_bits)


class AddEngine(ThresholdStage, wiring.Component):
    """``y[c] = requant_c(code_a[c] + code_b[c])`` for every pixel and channel of two feature maps.

    Both inputs are buffers of words of ``lanes`` level indices in the same order (pixel-major, channel
    group innermost); the top reads word ``rd_addr`` of the branch buffer onto ``rd_data`` and the same
    word of the skip ring onto ``skip_data`` (synchronous: one cycle later). Each lane adds the level
    steps ``step_a * index_a + step_b * index_b``; the constant ``lo_a + lo_b`` is folded into the
    thresholds (:func:`add_thresholds`), which come per channel group from a small ROM, with the sign
    of decreasing channels. The ``lanes`` output level indices are written as one word at the same
    address.

    Timing: ``start`` is sampled in cycle 0; reads in cycles 1..words; ``done`` at ``words + 3``.

    Parameters
    ----------
    plan : AddPlan
    thresholds : array (channels, 2**out_bits - 1), in the sign domain of the code sum
        (``y = #{k : sign * (code_a + code_b) >= thresholds[c, k]}``, see ``hwq.ir.requant_thresholds``)
    signs : array (channels,) of +1/-1, or None (all +1)
    """

    def __init__(self, plan, *, thresholds, signs=None):
        self.plan = p = plan
        for name in ("channels", "in_h", "in_w", "lanes"):
            check_int(name, getattr(p, name), 1)
        for name in ("a_bits", "b_bits", "out_bits"):
            check_int(name, getattr(p, name), 1, 8)
        if p.channels % p.lanes:
            raise ValueError(f"lanes ({p.lanes}) must divide channels ({p.channels})")
        self.table, self.signs = folded_thresholds(
            thresholds, signs, p.channels, p.n_levels, p.param_bits,
            lambda t, s: add_thresholds(t, s, (p.a_bits, p.a_signed), (p.b_bits, p.b_signed)))
        super().__init__({
            "start": In(1), "done": Out(1), "busy": Out(1),
            "rd_addr": Out(range(max(p.words, 2))),
            "rd_data": In(data.ArrayLayout(unsigned(p.a_bits), p.lanes)),
            "skip_data": In(data.ArrayLayout(unsigned(p.b_bits), p.lanes)),
            "wr_en": Out(1), "wr_addr": Out(range(max(p.words, 2))),
            "wr_data": Out(data.ArrayLayout(unsigned(p.out_bits), p.lanes)),
        })

    def elaborate(self, platform):
        m = Module()
        p = self.plan
        running = Signal()
        addr, group = Signal(range(max(p.words, 2))), Signal(range(p.groups))
        with m.If(self.start):  # addr and group wrap to 0 with the last word: they are 0 between runs
            m.d.sync += [running.eq(1), self.busy.eq(1)]
        with m.If(running):  # (never together with start)
            m.d.sync += [addr.eq(Mux(addr == p.words - 1, 0, addr + 1)), group.eq(Mux(group == p.groups - 1, 0, group + 1))]
            with m.If(addr == p.words - 1):
                m.d.sync += running.eq(0)
        pport, params = param_memory(m, self.param_rom(), p.lanes, p.n_levels, p.param_bits, p.prom_style)
        m.d.comb += [self.rd_addr.eq(addr), pport.addr.eq(group)]

        # One cycle later both words and the group's thresholds arrive: add and compare (registered); one more
        # cycle: count the thresholds reached and write.
        valid, waddr = Signal(), Signal.like(addr)
        out_valid, out_addr = Signal(), Signal.like(addr)
        m.d.sync += [valid.eq(running), waddr.eq(addr), out_valid.eq(valid), out_addr.eq(waddr)]
        add_lanes(m, self, p, self.rd_data, self.skip_data, params)
        finish_writes(m, self, out_valid, out_addr, p.words)
        return m


def add_lanes(m, engine, plan, a_words, b_words, params):
    """Per lane: the level steps of ``a_words[lane]`` and ``b_words[lane]`` added and compared with the lane's
    ``params`` (registered), onto ``engine.wr_data`` one cycle later (an :class:`AddPlan`'s datapath)."""
    p = plan
    (_, step_a, _), (_, step_b, _) = act_levels(p.a_bits, p.a_signed), act_levels(p.b_bits, p.b_signed)
    for lane in range(p.lanes):
        total = Signal(signed(p.sum_bits), name=f"sum{lane}")
        m.d.comb += total.eq(const_mul(a_words[lane], step_a) + const_mul(b_words[lane], step_b))
        q = requantize(m, f"requant{lane}", total, p.sum_bits, params[lane], p.param_bits, p.out_bits)
        m.d.comb += engine.wr_data[lane].eq(q)
