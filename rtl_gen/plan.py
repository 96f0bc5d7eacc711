"""Plans: what the hardware of a network will be (stages, buffers, skip rings, timing, cost), built from
the IR and a folding without building any hardware.

How an IR becomes hardware (:func:`network_plan`): every conv2d/linear layer gets a layer engine
(systolic for multi-bit layers, XNOR-popcount for binary ones), every maxpool a max-pool engine, every
residual add an add engine; flatten is free (the next layer's weights are permuted to the buffer's
order). Between two stages sits a buffer of words of ``g`` codes (g channels of one pixel), with two
banks: the producer fills one while the consumer reads the other, so all stages work at once on
successive samples. An add's second input (its skip) comes from a ring of banks that the skip's
producer fills besides its own output buffer (:class:`SkipPlan`).

The word width ``g`` of a buffer is the ``rows`` (output channels per cycle) of the engine before it
and the ``cols`` (input channels per cycle) of the engine after it (``rtl_gen.folding`` chooses them).
"""

import math
from dataclasses import dataclass, field

import numpy as np

from hwq.errors import UserError
from hwq.intrange import signed_width
from hwq.ir import WEIGHT_OPS, input_codes, requant_thresholds

from .add import AddPlan, add_thresholds
from .engine import EnginePlan, clog2, param_bits, ram_style
from .pool import PoolPlan

__all__ = ["COUNTER_BITS", "BufferPlan", "NetworkPlan", "SkipPlan", "Stage", "TopPlan", "buffer_channels",
           "layer_ir", "network_plan", "width_ties"]

COUNTER_BITS = 32


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
