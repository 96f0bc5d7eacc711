"""Residual add with a shortcut layer (a projection): ``y = requant(branch + shortcut(x))``, where the
shortcut is a conv2d or linear layer (ResNet's 1x1 convolution with stride 2) that reads the block's input
``x``, not the layer before it.

In the chain of stages (see :mod:`rtl_gen.plan`) the shortcut layer and its add are one stage: a
:class:`~rtl_gen.engine.LayerEngine` of the shortcut reads ``x`` from a ring (the ring a residual add's
skip travels in, filled by ``x``'s producer), and each output word it finishes is added to the branch's
word at the same address (the branch is the layer before the shortcut, whose buffer is the stage's input)
and requantized with the add's thresholds.
"""

from dataclasses import dataclass

from amaranth import Module, Mux, Signal, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from .add import AddPlan, add_lanes, add_thresholds
from .engine import EnginePlan, LayerEngine, finish_writes, folded_thresholds, param_memory, param_rom_words

__all__ = ["ShortcutAddEngine", "ShortcutPlan"]


@dataclass(frozen=True)
class ShortcutPlan:
    """A shortcut layer's engine and its add: geometry, timing and cost. ``engine.rows`` is the add's lanes
    (the branch's producer has as many rows); ``engine.cols`` the width of the ring's words."""

    engine: EnginePlan
    add: AddPlan

    @property
    def lanes(self):
        return self.engine.lanes

    @property
    def ring_words(self):
        """Words of one sample of ``x`` in the ring (the shortcut engine's input)."""
        return self.engine.in_words

    @property
    def words(self):
        """Output words (and branch words): one per pixel and channel group."""
        return self.add.words

    @property
    def latency(self):
        """Cycles from ``start`` to ``done``: the engine's last word is written at ``engine.latency - 1``; one
        cycle to read the branch's word, one to add and compare, then count and write, ``done`` the next."""
        return self.engine.latency + 2

    @property
    def memories(self):
        """The engine's ROMs (``wrom``, ``prom``) and the add's threshold ROM (``aprom``)."""
        return [*self.engine.memories, *(("aprom", *m[1:]) for m in self.add.memories)]

    @property
    def dsp(self):
        return self.engine.dsp

    @property
    def requant_dsp(self):
        return self.engine.requant_dsp

    @property
    def dsp_blocks(self):
        return self.engine.dsp_blocks

    def bram_blocks(self, family):
        return self.engine.bram_blocks(family) + self.add.bram_blocks(family)

    def resources(self, family):
        a, b = self.engine.resources(family), self.add.resources(family)
        return {k: a[k] + b[k] for k in a}


class ShortcutAddEngine(wiring.Component):
    """``y[c] = requant_c(branch[c] + shortcut(x)[c])`` for every pixel and channel.

    The shortcut's :class:`LayerEngine` reads ``x`` at ``skip_addr`` (``skip_data`` one cycle later) and writes
    its output words in address order (pixel-major, channel group innermost, each once). When it writes word
    ``a``, the branch's word ``a`` is read (``rd_addr``, ``rd_data`` one cycle later); then each lane adds the
    level steps of both codes (as :class:`~rtl_gen.add.AddEngine`), compares with its channel group's
    thresholds (registered) and the word is written one cycle after.

    Timing: ``start`` is sampled in cycle 0; ``done`` at ``plan.latency``.

    Parameters
    ----------
    plan : ShortcutPlan
    weights, thresholds / multiply_shift, signs : the shortcut layer's (see :class:`LayerEngine`)
    add_table, add_signs : the add's thresholds on the code sum (in the sign domain) and its signs (+1/-1, or
        None: all +1)
    """

    def __init__(self, plan, *, weights, add_table, add_signs=None, **shortcut_tables):
        self.plan = p = plan
        self.shortcut = LayerEngine(p.engine, weights=weights, **shortcut_tables)
        a = p.add
        if (a.lanes, a.channels) != (p.engine.rows, p.engine.out_channels) or a.words != \
                p.engine.positions * p.engine.n_out_tiles:
            raise ValueError("the add's lanes, channels and words must be the shortcut engine's rows, outputs and "
                             "output words")
        self.add_table, self.add_signs = folded_thresholds(
            add_table, add_signs, a.channels, a.n_levels, a.param_bits,
            lambda t, s: add_thresholds(t, s, (a.a_bits, a.a_signed), (a.b_bits, a.b_signed)))
        super().__init__({
            "start": In(1), "done": Out(1), "busy": Out(1),
            "rd_addr": Out(range(max(a.words, 2))),
            "rd_data": In(data.ArrayLayout(unsigned(a.a_bits), a.lanes)),
            "skip_addr": Out(range(max(p.engine.in_words, 2))),
            "skip_data": In(data.ArrayLayout(unsigned(p.engine.a_bits), p.engine.cols)),
            "wr_en": Out(1), "wr_addr": Out(range(max(a.words, 2))),
            "wr_data": Out(data.ArrayLayout(unsigned(a.out_bits), a.lanes)),
        })

    @property
    def latency(self):
        return self.plan.latency

    def weight_rom(self):
        return self.shortcut.weight_rom()

    def param_rom(self):
        return self.shortcut.param_rom()

    def add_param_rom(self):
        a = self.plan.add
        return param_rom_words(self.add_table, self.add_signs, a.lanes, a.groups, a.param_bits)

    def elaborate(self, platform):
        m = Module()
        a = self.plan.add
        m.submodules.shortcut = sc = self.shortcut
        m.d.comb += [sc.start.eq(self.start), self.skip_addr.eq(sc.rd_addr), sc.rd_data.eq(self.skip_data),
                     self.rd_addr.eq(sc.wr_addr)]
        with m.If(self.start):
            m.d.sync += self.busy.eq(1)
        # the engine writes its words in address order: their channel group counts along
        group = Signal(range(max(a.groups, 2)))
        with m.If(sc.wr_en):
            m.d.sync += group.eq(Mux(group == a.groups - 1, 0, group + 1))
        pport, params = param_memory(m, self.add_param_rom(), a.lanes, a.n_levels, a.param_bits, a.prom_style)
        m.d.comb += pport.addr.eq(group)

        # One cycle later: the shortcut's word (registered), the branch's word and the group's thresholds; add and
        # compare (registered); one more cycle: count the thresholds reached and write.
        valid, addr = Signal(), Signal.like(sc.wr_addr)
        word = Signal.like(sc.wr_data)
        m.d.sync += [valid.eq(sc.wr_en), addr.eq(sc.wr_addr), word.eq(sc.wr_data)]
        out_valid, out_addr = Signal(), Signal.like(addr)
        m.d.sync += [out_valid.eq(valid), out_addr.eq(addr)]
        add_lanes(m, self, a, self.rd_data, word, params)
        finish_writes(m, self, out_valid, out_addr, a.words)
        return m
