"""The network top: one engine per layer, chained through double-buffered feature maps (layer-pipelined).

What it is made of comes from a :class:`rtl_gen.plan.NetworkPlan` (see there); this module builds the
hardware: the input loader, the engines, the buffers and skip rings, the handshakes and the cycle
counters.
"""

import gc
import warnings

from amaranth import Cat, Module, Mux, Signal, signed, unsigned
from amaranth.hdl import UnusedElaboratable
from amaranth.lib import data, memory, stream, wiring
from amaranth.lib.wiring import In, Out

from .add import AddEngine, AddPlan
from .arith import const_mul
from .engine import LayerEngine, memory_attrs
from .pool import AvgPoolEngine, AvgPoolPlan, MaxPoolEngine, PoolPlan
from .shortcut import ShortcutAddEngine, ShortcutPlan

__all__ = ["NetworkTop", "bank_address", "build_stage", "stage_bram_blocks", "varying_bits"]


def bank_address(buffer, bank, addr):
    """The memory address of word ``addr`` of bank ``bank``: banks of ``buffer.bank_words`` words, which for a
    block RAM is a power of two, so the bank number is just the address's top bits (no adder in front of the
    block RAM); a buffer in logic packs its banks tightly (``bank * words + addr``)."""
    if buffer.style == "block":
        return Cat(addr[:buffer.addr_bits], bank)
    return const_mul(bank, buffer.words) + addr


def build_stage(stage, *, to_register=False):
    if isinstance(stage.plan, PoolPlan):
        return MaxPoolEngine(stage.plan)
    if isinstance(stage.plan, AddPlan):
        return AddEngine(stage.plan, thresholds=stage.table, signs=stage.signs)
    if isinstance(stage.plan, AvgPoolPlan):
        return AvgPoolEngine(stage.plan, thresholds=stage.table, signs=stage.signs)
    if isinstance(stage.plan, ShortcutPlan):
        add_table, add_signs = stage.add_tables
        return ShortcutAddEngine(stage.plan, weights=stage.weights, add_table=add_table, add_signs=add_signs,
                                 **_engine_tables(stage.plan.engine.kind, stage))
    return LayerEngine(stage.plan, weights=stage.weights, **_engine_tables(stage.plan.kind, stage),
                       to_register=to_register)


def _engine_tables(kind, stage):
    """A layer engine's table arguments from a stage's (see :class:`LayerEngine`)."""
    return {"signs": stage.signs, "thresholds": stage.table if kind == "thresholds" else None,
            "bias": stage.table if kind == "bias" else None,
            "multiply_shift": (stage.table[:, 0], stage.table[:, 1]) if kind == "multiply_shift" else None}


def varying_bits(words):
    """Bits that differ between some two of ``words`` (integers): the columns of a ROM that synthesis keeps
    (yosys's memory optimisation turns a column with one value in every word into a constant)."""
    diff = 0
    for w in words:
        diff |= w ^ words[0]
    return diff.bit_count()


def stage_bram_blocks(stage, family, *, last=False):
    """Block RAMs of a stage's ROMs that live in block RAM, from their contents: each ROM's depth x its
    varying columns (:func:`varying_bits`), tiled like any memory (``boards.model.bram_blocks``). ``last``:
    the network's last stage (it writes the output register)."""
    from boards.model import bram_blocks

    memories = [m for m in getattr(stage.plan, "memories", []) if m[3] == "block"]
    if not memories:
        return 0
    with warnings.catch_warnings():  # built for its ROMs' contents only, never elaborated: no "unused" warning
        warnings.simplefilter("ignore", UnusedElaboratable)
        try:
            engine = build_stage(stage, to_register=last)
        except ValueError:  # a layer the engines cannot build (e.g. 9-bit stored weights)
            engine = None
        if engine is None:
            gc.collect()  # the half-built engine sits in reference cycles: free it inside the filter
    if engine is None:
        return stage.plan.bram_blocks(family)  # the plan's full widths
    engine._MustUse__silence = True
    total = 0
    for name, depth, _, _ in memories:
        words = getattr(engine, {"wrom": "weight_rom", "prom": "param_rom", "aprom": "add_param_rom"}[name])()
        width = varying_bits(words)
        total += bram_blocks(family, depth, width) if width else 0
    return total


class NetworkTop(wiring.Component):
    """Accepts input vectors word by word, runs them through the stages (all at once, on successive
    samples), presents the logits.

    Input (word-serial): a sample arrives as the input buffer's words in buffer order, one per handshake on
    ``i``: word ``(y * W + x) * C/g + group`` holds channels ``group * g .. group * g + g - 1`` of pixel
    (y, x) as level indices (the codes themselves when unsigned, 0/1 for bipolar -1/+1), ``g`` =
    ``plan.buffers[0].lanes`` (see :func:`rtl_gen.plan.input_word_indices`). ``i.ready`` is high while the
    input buffer's next bank is free; the handshake of a sample's last word is its accept cycle. Stage k
    starts when bank ``b`` of its input buffer is full and bank ``b`` of its output buffer is free, where
    ``b`` alternates per sample; when it is done it frees the input bank and fills the output bank. The
    last stage writes the logits register; ``o.valid`` rises the cycle after it is done and stays high
    until ``o.ready``. Timing: :attr:`NetworkPlan.latency` and :attr:`NetworkPlan.initiation_interval`.

    Skip rings (residual adds): the skip's producer also writes its output words into ring bank
    ``wslot`` and starts only when that bank is free; the add starts only when bank ``rslot`` is full
    and reads it with the same word address as its input buffer (a shortcut stage: at its shortcut layer's
    input address, ``skip_addr``). Each frees or fills its bank when done
    and moves to the next. With :class:`SkipPlan`'s bank count neither ever waits for the ring.

    A top of a single stage (one layer on its own, see :func:`layer_ir`) presents the stage's whole
    output map on ``o`` in pixel order (y, x, channel): level indices, or raw sums for a bias layer.

    ``cycles[k]``: the cycles from start to done of stage k's last completed run, measured in
    hardware; the testbench reads them to check the analytic latencies.

    Members
    -------
    i : In(stream.Signature(ArrayLayout(unsigned(input_bits), word_lanes)))
    o : Out(stream.Signature(ArrayLayout(signed(logit_bits), n_outputs)))
    cycles : Out(ArrayLayout(unsigned(counter_bits), n_stages))
    """

    def __init__(self, plan):
        self.plan = plan
        self.stages = [build_stage(s, to_register=k == len(plan.stages) - 1) for k, s in enumerate(plan.stages)]
        self.names = [s.layer.name for s in plan.stages]
        super().__init__({
            "i": In(stream.Signature(data.ArrayLayout(unsigned(plan.input_bits), plan.buffers[0].lanes))),
            "o": Out(stream.Signature(data.ArrayLayout(signed(plan.out_bits), plan.out_features))),
            "cycles": Out(data.ArrayLayout(unsigned(plan.counter_bits), len(self.stages))),
        })

    @property
    def latency(self):
        return self.plan.latency

    @property
    def initiation_interval(self):
        return self.plan.initiation_interval

    def elaborate(self, platform):
        m = Module()
        plan = self.plan
        n = len(self.stages)
        for name, engine in zip(self.names, self.stages, strict=True):
            m.submodules[name] = engine

        # Buffers: bank b of buffer k holds words b * words .. b * words + words - 1.
        full = [Signal(2, name=f"full{k}") for k in range(n)]
        full_next = [Signal(2, name=f"full_next{k}") for k in range(n)]
        sets = [Signal(2, name=f"set{k}") for k in range(n)]
        clears = [Signal(2, name=f"clear{k}") for k in range(n)]
        for k in range(n):
            m.d.comb += full_next[k].eq((full[k] | sets[k]) & ~clears[k])
            m.d.sync += full[k].eq(full_next[k])
        rd_ports, wr_ports = [], []
        for k, b in enumerate(plan.buffers):
            mem = memory.Memory(shape=unsigned(b.width), depth=b.depth, init=[], attrs=memory_attrs(b.style))
            m.submodules[f"buffer{k}"] = mem
            rd_ports.append(mem.read_port())
            wr_ports.append(mem.write_port())

        # Input loader: each word that arrives goes into bank `lbank` of buffer 0.
        n_words = plan.buffers[0].words
        lword = Signal(range(max(n_words, 2)))
        lbank = Signal()
        free = ~full[0].bit_select(lbank, 1)
        loading = self.i.valid & free
        last_word = lword == n_words - 1
        wp0 = wr_ports[0]
        m.d.comb += [wp0.en.eq(loading), wp0.addr.eq(bank_address(plan.buffers[0], lbank, lword)),
                     wp0.data.eq(self.i.payload.as_value()), self.i.ready.eq(free)]
        with m.If(loading):
            m.d.sync += lword.eq(Mux(last_word, 0, lword + 1))
            with m.If(last_word):
                m.d.sync += lbank.eq(~lbank)
        m.d.comb += sets[0].eq((loading & last_word) << lbank)

        # Skip rings: the producer writes slot `wslot` (when it is free), the add reads slot `rslot` (when full).
        rings = []
        for j, skip in enumerate(plan.skips):
            b = skip.buffer
            mem = memory.Memory(shape=unsigned(b.width), depth=b.depth, init=[], attrs=memory_attrs(b.style))
            m.submodules[f"skip{j}"] = mem
            held = Signal(b.banks, name=f"skip{j}_full")
            wslot, rslot = Signal(range(b.banks), name=f"skip{j}_wslot"), Signal(range(b.banks), name=f"skip{j}_rslot")
            producer, consumer = self.stages[skip.producer], self.stages[skip.consumer]
            wp, rp = mem.write_port(), mem.read_port()
            m.d.comb += [wp.en.eq(producer.wr_en), wp.addr.eq(bank_address(b, wslot, producer.wr_addr)),
                         wp.data.eq(producer.wr_data.as_value()),
                         rp.addr.eq(bank_address(b, rslot, getattr(consumer, "skip_addr", consumer.rd_addr))),
                         consumer.skip_data.eq(rp.data)]
            m.d.sync += held.eq((held | (producer.done << wslot)) & ~(consumer.done << rslot))
            with m.If(producer.done):
                m.d.sync += wslot.eq(Mux(wslot == b.banks - 1, 0, wslot + 1))
            with m.If(consumer.done):
                m.d.sync += rslot.eq(Mux(rslot == b.banks - 1, 0, rslot + 1))
            rings.append((skip, ~held.bit_select(wslot, 1), held.bit_select(rslot, 1)))

        # Stages.
        for k, engine in enumerate(self.stages):
            bank, busy = Signal(name=f"bank{k}"), Signal(name=f"busy{k}")
            last = k == n - 1
            # Whether this stage's input bank is full and its output bank free, kept in registers computed from
            # the next state of the flags and of the bank (the same values a cycle earlier than reading
            # ``full[k][bank]``): ``go`` is then one gate, and ``start`` fans out to the engine without the
            # flags' multiplexers in front (the top's critical path on iCE40 otherwise).
            bank_next = Mux(engine.done, ~bank, bank)
            in_ready = Signal(name=f"in_ready{k}")
            m.d.sync += in_ready.eq(full_next[k].bit_select(bank_next, 1))
            if last:
                out_free = ~self.o.valid | self.o.ready
            else:
                out_free = Signal(name=f"out_free{k}", init=1)
                m.d.sync += out_free.eq(~full_next[k + 1].bit_select(bank_next, 1))
            go = ~busy & in_ready & out_free
            for skip, slot_free, slot_full in rings:
                if skip.producer == k:
                    go = go & slot_free
                if skip.consumer == k:
                    go = go & slot_full
            m.d.comb += engine.start.eq(go)
            with m.If(go):
                m.d.sync += busy.eq(1)
            with m.If(engine.done):
                m.d.sync += [busy.eq(0), bank.eq(~bank)]
            m.d.comb += clears[k].eq(engine.done << bank)
            b_in = plan.buffers[k]
            rp = rd_ports[k]
            m.d.comb += [rp.addr.eq(bank_address(b_in, bank, engine.rd_addr)), engine.rd_data.eq(rp.data)]
            if last and isinstance(engine, (MaxPoolEngine, AvgPoolEngine)):  # a pool on its own: its output words
                lanes = engine.plan.lanes
                for a in range(engine.plan.out_words):
                    with m.If(engine.wr_en & (engine.wr_addr == a)):
                        m.d.sync += [self.o.payload[a * lanes + j].eq(engine.wr_data[j]) for j in range(lanes)]
            elif last:
                m.d.comb += self.o.payload.eq(engine.y)
            if last:
                with m.If(engine.done):
                    m.d.sync += self.o.valid.eq(1)
                with m.Elif(self.o.valid & self.o.ready):
                    m.d.sync += self.o.valid.eq(0)
            else:
                b_out, wp = plan.buffers[k + 1], wr_ports[k + 1]
                m.d.comb += [wp.en.eq(engine.wr_en), wp.addr.eq(bank_address(b_out, bank, engine.wr_addr)),
                             wp.data.eq(engine.wr_data.as_value()), sets[k + 1].eq(engine.done << bank)]
            # Self-measurement: cycles from start to done, latched when the run is done. The count runs while the
            # stage is busy (cycles start+1 .. done-1) and is 0 between runs, so ``go`` does not drive it.
            running = Signal(plan.counter_bits, name=f"run_cycles{k}")
            with m.If(engine.done):
                m.d.sync += [self.cycles[k].eq(running + 1), running.eq(0)]
            with m.Elif(busy):
                m.d.sync += running.eq(running + 1)
        return m
