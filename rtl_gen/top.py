"""The network top: one engine per layer, chained through double-buffered feature maps (layer-pipelined).

How an IR becomes hardware (:func:`network_plan`): every conv2d/linear layer gets a :class:`LayerEngine`
(systolic for multi-bit layers, XNOR-popcount for binary ones), every maxpool a :class:`MaxPoolEngine`,
every residual add an :class:`AddEngine`; flatten is free (the next layer's weights are permuted to the
buffer's order). Between two stages sits a buffer of words of ``g`` codes (g channels of one pixel),
with two banks: the producer fills one while the consumer reads the other, so all stages work at once
on successive samples. An add's second input (its skip) comes from a ring of banks that the skip's
producer fills besides its own output buffer (:class:`SkipPlan`).

Folding: the word width ``g`` of a buffer is the ``rows`` (output channels per cycle) of the engine
before it and the ``cols`` (input channels per cycle) of the engine after it. :func:`choose_folding`
searches the divisors of each buffer's channel count for the fastest pipeline (smallest initiation
interval, then fewest estimated LUTs) that fits a LUT budget; ``fold={layer: (rows, cols)}``
overrides it layer by layer.
"""

import itertools
import math
from dataclasses import dataclass, field

import numpy as np
from amaranth import Array, Cat, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, memory, stream, wiring
from amaranth.lib.wiring import In, Out

from hwq.errors import UserError
from hwq.intrange import signed_width
from hwq.ir import WEIGHT_OPS, input_codes, requant_thresholds

from .add import AddEngine, AddPlan, add_thresholds
from .engine import EnginePlan, LayerEngine, clog2, param_bits, ram_style
from .pool import MaxPoolEngine, PoolPlan

__all__ = ["COUNTER_BITS", "DEFAULT_LUT_FRACTION", "MAX_LANES", "BufferPlan", "NetworkPlan",
           "NetworkTop", "SkipPlan", "TopPlan", "choose_folding", "network_plan"]

COUNTER_BITS = 32
# The automatic folding keeps the estimated LUTs of the design within this fraction of the board's.
# Not more: on iCE40 a logic cell holds one LUT4 and one flip-flop, and packing needed 1.4-1.6x as many
# cells as LUT4s; the demo MLP folded at 80% (4,199 LUTs estimated) needed 5,613 of 5,280 cells.
DEFAULT_LUT_FRACTION = 0.6
MAX_LANES = 64  # largest rows x cols array the folding search considers for one layer


@dataclass(frozen=True)
class BufferPlan:
    """A feature map between two stages: ``banks`` banks of ``words`` words of ``lanes`` codes. Two
    banks (double buffering) between neighbours; a skip ring (:class:`SkipPlan`) has more."""

    words: int
    lanes: int
    bits: int
    banks: int = 2

    @property
    def width(self):
        return self.lanes * self.bits

    @property
    def depth(self):
        return self.banks * self.words

    @property
    def total_bits(self):
        return self.depth * self.width

    @property
    def style(self):
        return ram_style(self.total_bits)

    def bram_blocks(self, family):
        from boards.model import bram_blocks

        return bram_blocks(family, self.depth, self.width) if self.style == "block" else 0

    @property
    def cost_features(self):
        logic = self.style == "logic"
        return {"buf_logic_bits": self.total_bits if logic else 0, "buf_width": self.width,
                "buf_addr": clog2(self.depth), "buf_words": self.depth if logic else 0}

    @property
    def register_bits(self):
        # a double buffer's two full flags and its reader's bank bit; a ring's full flags and two slot counters
        ctl = 3 if self.banks == 2 else self.banks + 2 * clog2(self.banks)
        return {"ff_buf": self.total_bits if self.style == "logic" else 0, "ff_bufctl": ctl}

    def resources(self, family):
        from boards.model import plan_resources

        return {**plan_resources(family, self), "bram": self.bram_blocks(family)}


@dataclass(frozen=True)
class SkipPlan:
    """The second input of a residual add: stage ``producer`` writes its output words into a ring of
    ``buffer.banks`` banks as well as into its own output buffer, and the add (stage ``consumer``) reads
    them from there. ``banks = 2 * (consumer - producer)``: the most samples that can be between the two
    (each double buffer between them holds two), so the producer never waits for the ring."""

    producer: int
    consumer: int
    buffer: BufferPlan


@dataclass(frozen=True)
class TopPlan:
    """Cost of the network top's own logic (input loader, handshakes, cycle counters)."""

    n_stages: int
    in_words: int
    in_width: int

    @property
    def cost_features(self):
        return {"top_const": 1, "top_counters": COUNTER_BITS * self.n_stages,
                "top_loader": self.in_words * self.in_width}

    @property
    def register_bits(self):
        return {"top_const": 1, "top_counters": COUNTER_BITS * self.n_stages, "top_ctrl": 2 * clog2(self.in_words)}

    def resources(self, family):
        from boards.model import plan_resources

        return plan_resources(family, self)


@dataclass
class Stage:
    """One hardware stage: the IR layer it computes, its plan and the tensors it is built from."""

    layer: object
    plan: object
    weights: np.ndarray | None = None
    table: np.ndarray | None = None
    signs: np.ndarray | None = None

    @property
    def kind(self):
        if isinstance(self.plan, AddPlan):
            return "add"
        return "maxpool" if isinstance(self.plan, PoolPlan) else self.plan.engine

    @property
    def period(self):
        """Cycles between two samples' starts when the stage never waits: run, then one cycle to hand over."""
        return self.plan.latency + 1


@dataclass
class NetworkPlan:
    """Every stage and buffer of a network, the input loader, timing and cost; no hardware built."""

    stages: list
    buffers: list  # buffers[k] is read by stages[k]; buffers[0] is the input buffer
    input_bits: int
    input_shape: tuple
    out_features: int
    out_bits: int
    skips: list = field(default_factory=list)  # SkipPlan of every residual add

    @property
    def memories(self):
        """(name, BufferPlan) of every feature-map memory in the top: the buffers, then the skip rings."""
        return [(f"buffer{k}", b) for k, b in enumerate(self.buffers)] + \
            [(f"skip{j}", s.buffer) for j, s in enumerate(self.skips)]

    @property
    def top(self):
        b = self.buffers[0]
        return TopPlan(n_stages=len(self.stages), in_words=b.words, in_width=b.width)

    @property
    def load_cycles(self):
        """The loader writes one input word per cycle; the input is accepted with the last one."""
        return self.buffers[0].words

    @property
    def latency(self):
        """Cycles from the input's accept cycle to the first cycle of ``o.valid`` (nothing else in flight)."""
        return 1 + sum(s.plan.latency + 1 for s in self.stages)

    @property
    def initiation_interval(self):
        """Cycles between accepted inputs in steady state (inputs always offered, outputs always taken)."""
        return max(self.load_cycles, *(s.period for s in self.stages))

    def components(self):
        """(name, plan) of everything that costs logic: stages, buffers, the top."""
        out = [(s.layer.name, s.plan) for s in self.stages]
        return [*out, *self.memories, ("top", self.top)]

    def resources(self, family):
        total = dict.fromkeys(("lut", "ff", "bram", "dsp"), 0)
        for _, plan in self.components():
            res = plan.resources(family)
            for key in total:
                total[key] += res[key]
        return total


# ---- from the IR to a plan ----------------------------------------------------------------------------

def _check_layer(layer, names, prev, ops):
    """The hardware is a chain: each layer reads the one before it; a residual add also reads an
    earlier layer's output (its skip) from a ring. ``ops``: {layer name: op} of the layers so far."""
    where = f"layer '{layer.name}'"
    if layer.op in WEIGHT_OPS and layer.a_signed and not layer.binary:
        raise UserError(f"{where}: signed multi-bit input codes have no RTL engine yet")
    if prev not in names:
        raise UserError(f"{where} reads {names}, not the layer before it ('{prev}'): the RTL is a chain of layers "
                        f"where only a residual add also reads an earlier layer")
    if layer.op != "add":
        return
    skip = _skip_name(names, prev)
    if skip == "input":
        raise UserError(f"{where}: a residual add of the network input has no RTL engine yet (the skip must come "
                        f"from a conv2d, maxpool or add layer)")
    if ops.get(skip) not in ("conv2d", "maxpool", "add"):
        raise UserError(f"{where}: its skip input '{skip}' is a {ops.get(skip)} layer; the RTL takes skips from "
                        f"conv2d, maxpool and add layers")


def _skip_name(names, prev):
    """The input of an add that is not the previous layer (the previous layer when both are)."""
    return names[1] if names[0] == prev else names[0]


def _divisors(n, limit=MAX_LANES):
    return [d for d in range(1, min(n, limit) + 1) if n % d == 0]


def _layout_steps(ir):
    """Walk the IR: [(layer, the names it reads, input (C, H, W) in buffer order, flattened?)] for
    every layer."""
    if ir.input_signed and ir.input_bits > 1:
        raise UserError("signed multi-bit network inputs have no RTL engine yet")
    shape = tuple(ir.input_shape) if len(ir.input_shape) == 3 else (ir.input_shape[0], 1, 1)
    steps, flat_from, prev, ops = [], None, "input", {}
    for layer, names in ir.wired():
        _check_layer(layer, names, prev, ops)
        steps.append((layer, names, shape, flat_from))
        prev, ops[layer.name] = layer.name, layer.op
        if layer.op == "flatten":
            flat_from = shape
        elif layer.op in ("conv2d", "maxpool"):
            shape, flat_from = tuple(layer.out_shape), None
        elif layer.op == "linear":
            shape, flat_from = (layer.out_shape[0], 1, 1), None
    return steps


def _weights_in_buffer_order(ir, layer, shape, flat_from):
    """(out, k*k*C) weights with columns in buffer order: (ky, kx, c), or for a linear layer after a
    flatten of (C, H, W), (y, x, c) instead of PyTorch's (c, y, x)."""
    w = ir.tensors[layer.weights].astype(np.int64)
    if layer.op == "linear":
        if flat_from is None:
            return w
        w = w.reshape(len(w), *flat_from)
    return w.transpose(0, 2, 3, 1).reshape(len(w), -1)  # (out, c, y, x) -> (out, y, x, c)


def _stage_tables(ir, layer):
    """(kind, table, signs): a weight layer's bias or thresholds, an add's thresholds (of the code sum)."""
    if layer.requant_kind == "bias":
        return "bias", ir.tensors[layer.bias].astype(np.int64), None
    thresholds, signs = requant_thresholds(ir, layer)
    return "thresholds", thresholds, signs


def _prepare(ir):
    """The IR walk and every weight layer's tensors in buffer order (shared by all foldings)."""
    steps = _layout_steps(ir)
    tensors = {la.name: (_weights_in_buffer_order(ir, la, shape, flat), *_stage_tables(ir, la))
               for la, _, shape, flat in steps if la.op in WEIGHT_OPS}
    tensors.update({la.name: (None, *_stage_tables(ir, la)) for la, *_ in steps if la.op == "add"})
    return steps, tensors


def network_plan(ir, widths, prepared=None):
    """The :class:`NetworkPlan` for buffer word widths ``widths`` (the input buffer's, then each
    conv2d/linear layer's rows), see :func:`buffer_channels` for what they must divide and
    :func:`width_ties` for which must be equal. ``prepared``: :func:`_prepare`'s result, to reuse
    across calls."""
    steps, tensors = prepared or _prepare(ir)
    stages, buffers, skips = [], [], []
    wi = 0
    bits = ir.input_bits
    first_shape = steps[0][2]
    buffers.append(BufferPlan(words=math.prod(first_shape[1:]) * first_shape[0] // widths[0], lanes=widths[0],
                              bits=bits))
    produced = {}  # layer name -> (stage index, lanes of its output words)
    prev = "input"
    for layer, names, shape, flat_from in steps:
        c, h, w = shape
        if layer.op == "flatten":
            prev = layer.name
            continue
        g_in = widths[wi]
        if layer.op == "maxpool":
            plan = PoolPlan(channels=c, in_h=h, in_w=w, kernel=layer.kernel, stride=layer.stride, bits=bits, lanes=g_in)
            stages.append(Stage(layer, plan))
            buffers.append(BufferPlan(words=plan.out_words, lanes=g_in, bits=bits))
        elif layer.op == "add":
            stages.append(_add_stage(ir, layer, names, prev, tensors[layer.name], shape, g_in, produced, skips,
                                     len(stages)))
            buffers.append(BufferPlan(words=stages[-1].plan.words, lanes=g_in, bits=layer.out_bits))
            bits = layer.out_bits
        else:
            wi += 1
            g_out = widths[wi]
            weights, kind, table, signs = tensors[layer.name]
            conv = layer.op == "conv2d"
            if flat_from is not None:
                c, h, w = c * h * w, 1, 1
            plan = EnginePlan(
                engine="xnor" if layer.binary else "systolic", in_channels=c, in_h=h, in_w=w,
                out_channels=layer.out_shape[0], kernel=layer.kernel if conv else 1,
                stride=layer.stride if conv else 1, padding=layer.padding if conv else 0, w_bits=layer.w_storage_bits,
                a_bits=layer.a_bits, acc_bits=layer.acc_bits, out_bits=layer.out_bits, kind=kind, rows=g_out,
                cols=g_in, param_bits=param_bits(layer.acc_bits, table, kind))
            stages.append(Stage(layer, plan, weights, table, signs))
            if layer is not ir.layers[-1]:
                buffers.append(BufferPlan(words=plan.positions * plan.n_out_tiles, lanes=g_out, bits=layer.out_bits))
            bits = layer.out_bits
        produced[layer.name] = (len(stages) - 1, widths[wi])
        prev = layer.name
    last = stages[-1]
    if len(stages) == 1:  # one layer on its own (`hwq sim --layer`): its whole output feature map
        p = last.plan
        out_features, out_bits = (p.positions * p.out_channels, p.out_bits) if isinstance(p, EnginePlan) else \
            (p.out_words * p.lanes, p.bits)
        return NetworkPlan(stages=stages, buffers=buffers, input_bits=ir.input_bits, input_shape=first_shape,
                           out_features=out_features, out_bits=out_bits)
    if not isinstance(last.plan, EnginePlan) or last.plan.kind != "bias" or last.plan.positions != 1:
        raise UserError(f"layer '{last.layer.name}': the network must end with a linear logits layer")
    return NetworkPlan(stages=stages, buffers=buffers, input_bits=ir.input_bits, input_shape=first_shape,
                       out_features=last.plan.out_channels, out_bits=last.plan.out_bits, skips=skips)


def _add_stage(ir, layer, names, prev, tables, shape, lanes, produced, skips, index):
    """The stage of residual add ``layer`` (stage ``index``), reading ``prev``'s words from its input buffer
    and its skip's from a new ring appended to ``skips``."""
    skip = _skip_name(names, prev)
    producer, skip_lanes = produced[skip]
    if skip_lanes != lanes:
        raise UserError(f"layer '{layer.name}': its inputs '{prev}' and '{skip}' must be folded to the same rows "
                        f"(channels per word), not {lanes} and {skip_lanes}")
    codes = dict(zip(names, input_codes(ir, layer), strict=True))
    _, _, table, signs = tables
    signs = np.ones(len(table), np.int64) if signs is None else signs
    (a_bits, a_signed), (b_bits, b_signed) = codes[prev], codes[skip]
    folded = add_thresholds(table, signs, codes[prev], codes[skip])
    c, h, w = shape
    plan = AddPlan(channels=c, in_h=h, in_w=w, lanes=lanes, a_bits=a_bits, a_signed=a_signed, b_bits=b_bits,
                   b_signed=b_signed, out_bits=layer.out_bits,
                   param_bits=max(2, signed_width(folded.min(), folded.max())))
    skips.append(SkipPlan(producer=producer, consumer=index,
                          buffer=BufferPlan(words=plan.words, lanes=lanes, bits=b_bits, banks=2 * (index - producer))))
    return Stage(layer, plan, table=table, signs=signs)


def layer_ir(ir, name):
    """The IR of layer ``name`` alone: its input is the network's activation before it (level indices on
    the wire, see :class:`NetworkTop`), its output the layer's whole feature map."""
    from dataclasses import replace

    layer = next((la for la in ir.layers if la.name == name), None)
    if layer is None:
        raise UserError(f"--layer {name}: no such layer; the layers are {', '.join(la.name for la in ir.layers)}")
    if layer.op == "add":
        raise UserError(f"--layer {name}: a residual add reads two layers' outputs, so it is checked only within "
                        f"the network (leave out --layer)")
    if layer.op not in (*WEIGHT_OPS, "maxpool"):
        raise UserError(f"--layer {name}: a {layer.op} layer has no hardware of its own")
    keys = (layer.weights, layer.thresholds, layer.signs, layer.mult, layer.offset, layer.bias)
    return replace(ir, input_shape=list(layer.in_shape), input_bits=layer.a_bits, input_signed=layer.a_signed,
                   layers=[replace(layer, inputs=None)], tensors={k: ir.tensors[k] for k in keys if k is not None})


def buffer_channels(ir):
    """What each word width must divide: the input's channels, then every conv2d/linear layer's output
    channels (the last layer's rows need not divide its outputs; they must not exceed them)."""
    steps = _layout_steps(ir)
    return [steps[0][2][0], *(la.out_shape[0] for la, *_ in steps if la.op in WEIGHT_OPS)]


def width_ties(ir):
    """(i, j, add layer name): pairs of word-width indices (see :func:`network_plan`) that must be equal: a residual add
    reads its two inputs word by word, so both producers have the same rows."""
    index, ties, prev = {"input": 0}, [], "input"
    for layer, names, *_ in _layout_steps(ir):
        index[layer.name] = index[prev] + (layer.op in WEIGHT_OPS)
        if layer.op == "add":
            ties.append((index[_skip_name(names, prev)], index[prev], layer.name))
        prev = layer.name
    return ties


def choose_folding(ir, board, *, lut_budget=None, fold=None):
    """Word widths for :func:`network_plan`: the smallest initiation interval whose estimated LUTs fit
    ``lut_budget`` (default: ``DEFAULT_LUT_FRACTION`` of the board's), fewest LUTs among equals.

    ``fold``: {layer name: (rows, cols)} fixes those layers (checked against the chain: a layer's
    cols is the previous engine's rows). Raises UserError when an override is invalid or nothing fits
    (unless the user fixed every layer: then their folding is returned, and the estimate says it does
    not fit).
    """
    counts = buffer_channels(ir)
    names = [la.name for la in ir.layers if la.op in WEIGHT_OPS]
    fold = dict(fold or {})
    unknown = set(fold) - set(names)
    if unknown:
        raise UserError(f"--fold: no conv2d/linear layer named {sorted(unknown)[0]!r} (layers: {', '.join(names)})")
    options = []
    for k, n in enumerate(counts):
        opts = _divisors(n) if k < len(counts) - 1 else list(range(1, min(n, MAX_LANES) + 1))
        for name, (rows, cols) in fold.items():
            i = names.index(name)
            if k == i + 1:
                opts = [g for g in opts if g == rows]
                if not opts:
                    raise UserError(f"--fold {name}={rows}x{cols}: rows must divide the layer's {n} outputs"
                                    if k < len(counts) - 1 else f"--fold {name}: rows must be 1..{n}")
            if k == i:
                opts = [g for g in opts if g == cols]
                if not opts:
                    raise UserError(f"--fold {name}={rows}x{cols}: cols must divide the layer's {n} input channels")
        options.append(opts)
    ties = width_ties(ir)
    for i, j, add in ties:
        common = sorted(set(options[i]) & set(options[j]))
        if not common:
            raise UserError(f"--fold: the residual add '{add}' reads its two inputs word by word, so their "
                            f"producers need equal rows; the choices left are {options[i]} and {options[j]}")
        options[i] = options[j] = common
    budget = lut_budget if lut_budget is not None else DEFAULT_LUT_FRACTION * board.lut
    best, smallest, prepared = None, None, _prepare(ir)
    for widths in itertools.product(*options):
        if any(widths[i] != widths[j] for i, j, _ in ties):
            continue
        plan = network_plan(ir, widths, prepared)
        if any(s.plan.lanes > MAX_LANES for s in plan.stages if isinstance(s.plan, EnginePlan)) and not fold:
            continue
        res = plan.resources(board.family)
        if smallest is None or res["lut"] < smallest[0]:
            smallest = (res["lut"], widths)
        if res["lut"] > budget or res["bram"] > board.bram:
            continue
        key = (plan.initiation_interval, res["lut"])
        if best is None or key < best[0]:
            best = (key, widths)
    if best is None and fold and all(name in fold for name in names):
        return smallest[1]  # every layer fixed by the user: theirs, even over budget (estimate says so)
    if best is None:
        raise UserError(f"no folding of this network fits {board.name} within {budget:.0f} LUTs and "
                        f"{board.bram} block RAMs; raise --lut-budget or choose a larger board")
    return best[1]


# ---- hardware ----------------------------------------------------------------------------------------

def build_stage(stage, *, to_register=False):
    if isinstance(stage.plan, PoolPlan):
        return MaxPoolEngine(stage.plan)
    if isinstance(stage.plan, AddPlan):
        return AddEngine(stage.plan, thresholds=stage.table, signs=stage.signs)
    thresholds = stage.table if stage.plan.kind == "thresholds" else None
    bias = stage.table if stage.plan.kind == "bias" else None
    return LayerEngine(stage.plan, weights=stage.weights, thresholds=thresholds, signs=stage.signs, bias=bias,
                       to_register=to_register)


class NetworkTop(wiring.Component):
    """Accepts input vectors, runs them through the stages (all at once, on successive samples),
    presents the logits.

    Input loader: while ``i.valid`` and the input buffer's next bank is free, one word per cycle is
    copied from ``i.payload`` (channels-first level indices of the IR's input codes: the codes themselves
    when unsigned, 0/1 for bipolar -1/+1) into the buffer in pixel
    order; ``i.ready`` is high in the cycle of the last word (the accept cycle). Stage k starts when
    bank ``b`` of its input buffer is full and bank ``b`` of its output buffer is free, where ``b``
    alternates per sample; when it is done it frees the input bank and fills the output bank. The last
    stage writes the logits register; ``o.valid`` rises the cycle after it is done and stays high
    until ``o.ready``. Timing: :attr:`NetworkPlan.latency` and :attr:`NetworkPlan.initiation_interval`.

    Skip rings (residual adds): the skip's producer also writes its output words into ring bank
    ``wslot`` and starts only when that bank is free; the add starts only when bank ``rslot`` is full
    and reads it with the same word address as its input buffer. Each frees or fills its bank when done
    and moves to the next. With :class:`SkipPlan`'s bank count neither ever waits for the ring.

    A top of a single stage (one layer on its own, see :func:`layer_ir`) presents the stage's whole
    output map on ``o`` in pixel order (y, x, channel): level indices, or raw sums for a bias layer.

    ``cycles[k]``: the cycles from start to done of stage k's last completed run, measured in
    hardware; the testbench reads them to check the analytic latencies.

    Members
    -------
    i : In(stream.Signature(ArrayLayout(unsigned(input_bits), in_features)))
    o : Out(stream.Signature(ArrayLayout(signed(logit_bits), n_outputs)))
    cycles : Out(ArrayLayout(unsigned(32), n_stages))
    """

    def __init__(self, plan):
        self.plan = plan
        self.stages = [build_stage(s, to_register=k == len(plan.stages) - 1) for k, s in enumerate(plan.stages)]
        self.names = [s.layer.name for s in plan.stages]
        in_features = math.prod(plan.input_shape)
        super().__init__({
            "i": In(stream.Signature(data.ArrayLayout(unsigned(plan.input_bits), in_features))),
            "o": Out(stream.Signature(data.ArrayLayout(signed(plan.out_bits), plan.out_features))),
            "cycles": Out(data.ArrayLayout(unsigned(COUNTER_BITS), len(self.stages))),
        })

    @property
    def latency(self):
        return self.plan.latency

    @property
    def initiation_interval(self):
        return self.plan.initiation_interval

    def _input_words(self):
        """For each input-buffer word, the payload indices of its lanes (channels-first -> pixel order)."""
        c, h, w = self.plan.input_shape
        g = self.plan.buffers[0].lanes
        words = []
        for y in range(h):
            for x in range(w):
                for grp in range(c // g):
                    words.append([(grp * g + j) * h * w + y * w + x for j in range(g)])
        return words

    def elaborate(self, platform):
        m = Module()
        plan = self.plan
        n = len(self.stages)
        for name, engine in zip(self.names, self.stages, strict=True):
            m.submodules[name] = engine

        # Buffers: bank b of buffer k holds words b * words .. b * words + words - 1.
        full = [Signal(2, name=f"full{k}") for k in range(n)]
        sets = [Signal(2, name=f"set{k}") for k in range(n)]
        clears = [Signal(2, name=f"clear{k}") for k in range(n)]
        for k in range(n):
            m.d.sync += full[k].eq((full[k] | sets[k]) & ~clears[k])
        rd_ports, wr_ports = [], []
        for k, b in enumerate(plan.buffers):
            mem = memory.Memory(shape=unsigned(b.width), depth=2 * b.words, init=[], attrs={"ram_style": b.style})
            m.submodules[f"buffer{k}"] = mem
            rd_ports.append(mem.read_port())
            wr_ports.append(mem.write_port())

        # Input loader: one word per cycle into bank `lbank` of buffer 0.
        words = self._input_words()
        lword = Signal(range(max(len(words), 2)))
        lbank = Signal()
        loading = self.i.valid & ~full[0].bit_select(lbank, 1)
        last_word = lword == len(words) - 1
        word_mux = Array(Cat(*(self.i.payload[i] for i in word)) for word in words)
        wp0 = wr_ports[0]
        m.d.comb += [wp0.en.eq(loading), wp0.addr.eq(lbank * plan.buffers[0].words + lword),
                     wp0.data.eq(word_mux[lword]), self.i.ready.eq(loading & last_word)]
        with m.If(loading):
            m.d.sync += lword.eq(Mux(last_word, 0, lword + 1))
            with m.If(last_word):
                m.d.sync += lbank.eq(~lbank)
        m.d.comb += sets[0].eq((loading & last_word) << lbank)

        # Skip rings: the producer writes slot `wslot` (when it is free), the add reads slot `rslot` (when full).
        rings = []
        for j, skip in enumerate(plan.skips):
            b = skip.buffer
            mem = memory.Memory(shape=unsigned(b.width), depth=b.depth, init=[], attrs={"ram_style": b.style})
            m.submodules[f"skip{j}"] = mem
            held = Signal(b.banks, name=f"skip{j}_full")
            wslot, rslot = Signal(range(b.banks), name=f"skip{j}_wslot"), Signal(range(b.banks), name=f"skip{j}_rslot")
            producer, consumer = self.stages[skip.producer], self.stages[skip.consumer]
            wp, rp = mem.write_port(), mem.read_port()
            m.d.comb += [wp.en.eq(producer.wr_en), wp.addr.eq(wslot * b.words + producer.wr_addr),
                         wp.data.eq(producer.wr_data.as_value()),
                         rp.addr.eq(rslot * b.words + consumer.rd_addr), consumer.skip_data.eq(rp.data)]
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
            in_ready = full[k].bit_select(bank, 1)
            out_free = (~self.o.valid | self.o.ready) if last else ~full[k + 1].bit_select(bank, 1)
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
            m.d.comb += [rp.addr.eq(bank * b_in.words + engine.rd_addr), engine.rd_data.eq(rp.data)]
            if last and isinstance(engine, MaxPoolEngine):  # a pool on its own: collect its output words
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
                m.d.comb += [wp.en.eq(engine.wr_en), wp.addr.eq(bank * b_out.words + engine.wr_addr),
                             wp.data.eq(engine.wr_data.as_value()), sets[k + 1].eq(engine.done << bank)]
            # Self-measurement: cycles from start to done, latched when the run is done.
            running = Signal(COUNTER_BITS, name=f"run_cycles{k}")
            with m.If(go):
                m.d.sync += running.eq(1)
            with m.Elif(engine.busy & ~engine.done):
                m.d.sync += running.eq(running + 1)
            with m.If(engine.done):
                m.d.sync += self.cycles[k].eq(running)
        return m
