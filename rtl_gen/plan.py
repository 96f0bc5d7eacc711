"""Plans: what the hardware of a network will be (stages, buffers, skip rings, timing, cost), built from
the IR and a folding without building any hardware.

How an IR becomes hardware (:func:`network_plan`): every conv2d/linear layer gets a layer engine
(systolic for multi-bit layers, XNOR-popcount for binary ones), every maxpool a max-pool engine, every
avgpool an average-pool engine, every residual add an add engine; flatten is free (the next layer's weights are permuted to the buffer's
order). Between two stages sits a buffer of words of ``g`` codes (g channels of one pixel), with two
banks: the producer fills one while the consumer reads the other, so all stages work at once on
successive samples. An add's second input (its skip) comes from a ring of banks that the skip's
producer fills besides its own output buffer (:class:`SkipPlan`). A residual add with a shortcut layer
(ResNet's 1x1 projection, a conv2d/linear layer that reads the block's input, placed right before its
add) is one stage (:class:`~rtl_gen.shortcut.ShortcutPlan`): the shortcut's engine reads the block's input
from the ring, and the add reads the branch from the stage's input buffer.

The word width ``g`` of a buffer is the ``rows`` (output channels per cycle) of the engine before it
and the ``cols`` (input channels per cycle) of the engine after it (``rtl_gen.folding`` chooses them).
"""

import functools
import math
from dataclasses import dataclass, field

import numpy as np

from hwq.errors import UserError
from hwq.intrange import is_bipolar, signed_width
from hwq.ir import WEIGHT_OPS, input_codes, requant_thresholds

from .add import AddPlan, add_thresholds
from .engine import MEMORY_STYLES, EnginePlan, clog2, param_bits
from .pool import AvgPoolPlan, PoolPlan, avgpool_thresholds
from .shortcut import ShortcutPlan

__all__ = ["BufferPlan", "Folding", "NetworkPlan", "SkipPlan", "Stage", "StageSpec", "TopPlan", "as_folding",
           "buffer_channels", "input_word_indices", "layer_ir", "live_weight_bits", "network_plan", "stage_specs",
           "stored_weights", "width_ties"]


@dataclass(frozen=True)
class Folding:
    """How a network is laid out on the chip (what :func:`network_plan` needs besides the IR).

    ``widths``: the buffers' word widths, the input buffer's and then each conv2d/linear layer's rows (see
    :func:`buffer_channels` for what they must divide and :func:`width_ties` for which must be equal).
    ``dsp``: what multiplies on DSP blocks: ``<layer>`` names a weight layer's array, ``<layer>.requant`` a
    multiply-shift layer's requantizers (one DSP per row). ``block``: names of the memories
    in block RAM (:attr:`NetworkPlan.memory_names`: ``buffer<k>``, ``skip<j>``, ``<layer>.wrom``,
    ``<layer>.prom``); every other memory is logic.
    """

    widths: tuple
    dsp: frozenset = frozenset()
    block: frozenset = frozenset()

    def __post_init__(self):
        object.__setattr__(self, "widths", tuple(int(w) for w in self.widths))
        object.__setattr__(self, "dsp", frozenset(self.dsp))
        object.__setattr__(self, "block", frozenset(self.block))

    def to_json(self):
        return {"widths": list(self.widths), "dsp": sorted(self.dsp), "block": sorted(self.block)}


def as_folding(value):
    """A :class:`Folding` from a Folding, a list of widths (no DSPs, every memory in logic), or rtl.json's
    ``folding`` dict."""
    if isinstance(value, Folding):
        return value
    if isinstance(value, dict):
        return Folding(value["widths"], value.get("dsp", ()), value.get("block", ()))
    return Folding(tuple(value))


@dataclass(frozen=True)
class BufferPlan:
    """A feature map between two stages: ``banks`` banks of ``words`` words of ``lanes`` codes. Two
    banks (double buffering) between neighbours; a skip ring (:class:`SkipPlan`) has more."""

    words: int
    lanes: int
    bits: int
    banks: int = 2
    style: str = "logic"  # "logic" (flip-flops and multiplexers) or "block" (block RAM)

    def __post_init__(self):
        if self.style not in MEMORY_STYLES:
            raise ValueError(f"memory style must be one of {MEMORY_STYLES}, not {self.style!r}")

    @property
    def width(self):
        return self.lanes * self.bits

    @property
    def addr_bits(self):
        """Bits of a word address within a bank."""
        return max(1, clog2(self.words))

    @property
    def bank_words(self):
        """Words a bank occupies in the memory: the next power of two in block RAM (the bank number is then
        the address's top bits, see ``rtl_gen.top.bank_address``), exactly ``words`` in logic."""
        return 1 << self.addr_bits if self.style == "block" else self.words

    @property
    def depth(self):
        return self.banks * self.bank_words

    @property
    def total_bits(self):
        return self.depth * self.width

    def bram_blocks(self, family):
        from boards.model import bram_blocks

        return bram_blocks(family, self.depth, self.width) if self.style == "block" else 0

    @property
    def cost_features(self):
        logic = self.style == "logic"
        # a block RAM needs no logic (its banks are address bits; no read-during-write bypass)
        return {"buf_logic_bits": self.total_bits if logic else 0, "buf_width": self.width if logic else 0,
                "buf_addr": clog2(self.depth) if logic else 0, "buf_words": self.depth if logic else 0,
                "buf_mux": self.total_bits * clog2(self.depth) if logic else 0}  # the read multiplexer's levels

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
    counter_bits: int

    @property
    def cost_features(self):
        return {"top_const": 1, "top_counters": self.counter_bits * self.n_stages, "top_loader": clog2(self.in_words)}

    @property
    def register_bits(self):
        return {"top_const": 1, "top_counters": 2 * self.counter_bits * self.n_stages,
                "top_ctrl": clog2(self.in_words)}

    def resources(self, family):
        from boards.model import plan_resources

        return plan_resources(family, self)


@dataclass
class Stage:
    """One hardware stage: the IR layer it computes, its plan and the tensors it is built from (a shortcut
    stage's layer is its add and ``shortcut`` the shortcut layer; ``weights``, ``table`` and ``signs`` are the
    shortcut layer's, ``add_tables`` the add's thresholds and signs)."""

    layer: object
    plan: object
    weights: np.ndarray | None = None
    table: np.ndarray | None = None
    signs: np.ndarray | None = None
    add_tables: tuple | None = None
    shortcut: object = None

    @property
    def kind(self):
        if isinstance(self.plan, AddPlan):
            return "add"
        if isinstance(self.plan, ShortcutPlan):
            return "shortcut"
        if isinstance(self.plan, AvgPoolPlan):
            return "avgpool"
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
    folding: Folding | None = None             # what the plan was made from

    @property
    def built_into(self):
        """{shortcut layer name: the add whose stage computes it}: the IR layers with hardware in another's
        stage."""
        return {s.shortcut.name: s.layer.name for s in self.stages if s.shortcut is not None}

    @property
    def memories(self):
        """(name, BufferPlan) of every feature-map memory in the top: the buffers, then the skip rings."""
        return [(f"buffer{k}", b) for k, b in enumerate(self.buffers)] + \
            [(f"skip{j}", s.buffer) for j, s in enumerate(self.skips)]

    @property
    def memory_names(self):
        """Names of every memory that may live in block RAM or logic (a :class:`Folding`'s ``block`` names
        some of them): the feature-map buffers and skip rings, then each stage's ROMs."""
        names = [name for name, _ in self.memories]
        for s in self.stages:
            names += [f"{s.layer.name}.{mem[0]}" for mem in getattr(s.plan, "memories", [])]
        return names

    @property
    def counter_bits(self):
        """Width of the per-stage cycle counters: enough for the slowest stage's run."""
        return max(1, max(s.plan.latency for s in self.stages).bit_length())

    @property
    def top(self):
        b = self.buffers[0]
        return TopPlan(n_stages=len(self.stages), in_words=b.words, in_width=b.width, counter_bits=self.counter_bits)

    @property
    def load_cycles(self):
        """The input arrives one buffer word per handshake (word-serial); the input is accepted with the last."""
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

    @property
    def dsp_blocks(self):
        return sum(getattr(s.plan, "dsp_blocks", 0) for s in self.stages)

    def resources(self, family):
        total = dict.fromkeys(("lut", "ff", "bram", "dsp"), 0)
        for _, plan in self.components():
            res = plan.resources(family)
            for key in total:
                total[key] += res[key]
        return total


# ---- from the IR to a plan ----------------------------------------------------------------------------

def _check_layer(layer, names, prev, ops, after=None):
    """The hardware is a chain: each layer reads the one before it; a residual add also reads an
    earlier layer's output (its skip) from a ring, and a shortcut layer (a conv2d/linear layer right before
    its add) reads the block's input from one. ``ops``: {layer name: op} of the layers so far; ``after``: the
    next layer (and the names it reads). Returns whether ``layer`` is a shortcut."""
    where = f"layer '{layer.name}'"
    if layer.op in WEIGHT_OPS and is_bipolar(layer.a_bits, layer.a_signed) and not layer.binary:
        raise UserError(f"{where}: bipolar (-1/+1) input codes with {layer.w_bits}-bit weights have no RTL engine yet "
                        f"(the XNOR core takes 1-bit weights; the systolic array multiplies two's complement codes)")
    if prev not in names:
        nxt, nxt_names = after or (None, [])
        shortcut = layer.op in WEIGHT_OPS and nxt is not None and nxt.op == "add" and \
            sorted(nxt_names) == sorted([layer.name, prev])
        if not shortcut:
            raise UserError(f"{where} reads {names}, not the layer before it ('{prev}'): the RTL is a chain of layers "
                            f"where only a residual add also reads an earlier layer, or a shortcut layer placed "
                            f"right before the add of its output and the layer before it")
        if ops.get(names[0]) not in ("conv2d", "maxpool", "add", "avgpool"):
            raise UserError(f"{where}: a shortcut layer reads a conv2d, maxpool, avgpool or add layer's output, not "
                            f"{'the network input' if names[0] == 'input' else repr(names[0])}")
        return True
    if layer.op != "add":
        return False
    skip = _skip_name(names, prev)
    if skip == "input":
        raise UserError(f"{where}: a residual add of the network input has no RTL engine yet (the skip must come "
                        f"from a conv2d, maxpool or add layer)")
    if ops.get(skip) not in ("conv2d", "maxpool", "add", "avgpool"):
        raise UserError(f"{where}: its skip input '{skip}' is a {ops.get(skip)} layer; the RTL takes skips from "
                        f"conv2d, maxpool, avgpool and add layers")
    return False


def _skip_name(names, prev):
    """The input of an add that is not the previous layer (the previous layer when both are)."""
    return names[1] if names[0] == prev else names[0]


def _layout_steps(ir):
    """Walk the IR: [(layer, the names it reads, input (C, H, W) in buffer order, flattened?)] for
    every layer (a shortcut layer's input is the block's input it reads)."""
    shape = tuple(ir.input_shape) if len(ir.input_shape) == 3 else (ir.input_shape[0], 1, 1)
    wired = list(ir.wired())
    steps, flat_from, prev, ops, shapes = [], None, "input", {}, {"input": (shape, None)}
    for i, (layer, names) in enumerate(wired):
        if _check_layer(layer, names, prev, ops, wired[i + 1] if i + 1 < len(wired) else None):
            shape, flat_from = shapes[names[0]]
        steps.append((layer, names, shape, flat_from))
        prev, ops[layer.name] = layer.name, layer.op
        if layer.op == "flatten":
            flat_from = shape
        elif layer.op in ("conv2d", "maxpool", "avgpool"):
            shape, flat_from = tuple(layer.out_shape), None
        elif layer.op == "linear":
            shape, flat_from = (layer.out_shape[0], 1, 1), None
        shapes[layer.name] = (shape, flat_from)
    return steps


def stored_weights(weights, w_bits):
    """``weights`` as a weight ROM stores them: ``w_bits`` two's complement, as unsigned integers."""
    return (np.asarray(weights) & ((1 << w_bits) - 1)).astype(np.uint32)


def live_weight_bits(stored, rows, cols, *, w_bits):
    """Bits (lane, bit) of a ``rows`` x ``cols`` engine's weight ROM that are 1 in at least one word, for the
    ``stored`` weights (:func:`stored_weights`; out, inputs in buffer order): word (ot, it) holds
    ``W[ot*rows + r, it*cols + c]`` in lane (r, c), rows past the last channel hold 0. A bit that is 0 in every
    word is a constant zero in hardware, and synthesis removes its partial product."""
    out, n_in = stored.shape
    if n_in % cols:
        return rows * cols * w_bits
    bits = stored
    if out % rows:
        bits = np.concatenate([bits, np.zeros((rows - out % rows, n_in), np.uint32)])
    tiles = bits.reshape(-1, rows, n_in // cols, cols)
    return int(np.bitwise_count(np.bitwise_or.reduce(np.bitwise_or.reduce(tiles, axis=2), axis=0)).sum())


def _weights_in_buffer_order(ir, layer, shape, flat_from):
    """(out, kh*kw*C) weights with columns in buffer order: (ky, kx, c), or for a linear layer after a
    flatten of (C, H, W), (y, x, c) instead of PyTorch's (c, y, x)."""
    w = ir.tensors[layer.weights].astype(np.int64)
    if layer.op == "linear":
        if flat_from is None:
            return w
        w = w.reshape(len(w), *flat_from)
    return w.transpose(0, 2, 3, 1).reshape(len(w), -1)  # (out, c, y, x) -> (out, y, x, c)


def _stage_tables(ir, layer):
    """(kind, table, signs): a weight layer's bias, its multiply-shift (table: per channel [mult, offset]) or
    its thresholds; an add's thresholds (of the code sum; an add's multiply-shift in its comparator form)."""
    if layer.requant_kind == "bias":
        return "bias", ir.tensors[layer.bias].astype(np.int64), None
    if layer.requant_kind == "multiply_shift" and layer.op in WEIGHT_OPS:
        table = np.stack([ir.tensors[layer.mult].astype(np.int64), ir.tensors[layer.offset].astype(np.int64)], axis=1)
        return "multiply_shift", table, None
    thresholds, signs = requant_thresholds(ir, layer)
    return "thresholds", thresholds, signs


def _prepare(ir):
    """The IR walk and every weight layer's tensors in buffer order (shared by all foldings)."""
    steps = _layout_steps(ir)
    tensors = {la.name: (_weights_in_buffer_order(ir, la, shape, flat), *_stage_tables(ir, la))
               for la, _, shape, flat in steps if la.op in WEIGHT_OPS}
    tensors.update({la.name: (None, *_stage_tables(ir, la)) for la, *_ in steps if la.op in ("add", "avgpool")})
    return steps, tensors


@dataclass(frozen=True)
class StageSpec:
    """What a stage will be, before the folding is chosen: its layer, the word widths it reads and writes
    (indices into :attr:`Folding.widths`), and how to make its plan for given widths and choices.

    ``make(g_in, g_out, dsp=False, rom_style="logic", prom_style="logic")`` returns the stage's plan (a
    shortcut's also takes ``aprom_style``, its add's threshold ROM's place). ``out_bits``: bits of the codes
    it writes. ``skip``: for a residual add, (producer stage index, the skip's code bits, its width index); the
    ring has ``2 * (index - producer)`` banks of the add's words (a shortcut stage: of the block input's words,
    which its shortcut layer reads; ``k_in`` is then that input's width index, ``k_out`` the shortcut's rows).
    """

    index: int
    layer: object
    kind: str            # "engine", "maxpool", "avgpool", "add" or "shortcut" (a shortcut layer and its add)
    k_in: int
    k_out: int
    out_bits: int
    make: object
    tensors: tuple = (None, None, None)   # (weights, table, signs)
    skip: tuple | None = None
    add_tables: tuple | None = None       # a shortcut's add: (thresholds, signs)
    shortcut: object = None               # a shortcut's layer

    def out_words(self, plan):
        if isinstance(plan, EnginePlan):
            return plan.positions * plan.n_out_tiles
        return plan.out_words if isinstance(plan, (PoolPlan, AvgPoolPlan)) else plan.words  # (add, shortcut: words)


def stage_specs(ir, prepared=None):
    """(the input's (C, H, W), [StageSpec]) of the IR's hardware chain."""
    steps, tensors = prepared or _prepare(ir)
    specs, produced, prev, wi, bits = [], {}, "input", 0, ir.input_bits
    shortcut = None  # a shortcut layer waiting for its add
    for layer, names, shape, flat_from in steps:
        c, h, w = shape
        if layer.op == "flatten":
            prev = layer.name
            continue
        index = len(specs)
        if layer.op == "maxpool":
            def make(g_in, g_out=None, c=c, h=h, w=w, layer=layer, bits=bits, **_):
                return PoolPlan(channels=c, in_h=h, in_w=w, kernel=layer.kernel, stride=layer.stride, bits=bits,
                                lanes=g_in)
            specs.append(StageSpec(index, layer, "maxpool", wi, wi, bits, make))
        elif layer.op == "avgpool":
            _, _, table, signs = tensors[layer.name]
            signs = np.ones(len(table), np.int64) if signs is None else signs
            (a_bits, a_signed), = input_codes(ir, layer)
            pool_param_bits = param_bits(None, avgpool_thresholds(table, signs, layer.kernel ** 2, a_bits, a_signed),
                                         "thresholds", signs)

            def make(g_in, g_out=None, prom_style="logic", c=c, h=h, w=w, layer=layer, a=(a_bits, a_signed),
                     pb=pool_param_bits, **_):
                return AvgPoolPlan(channels=c, in_h=h, in_w=w, kernel=layer.kernel, stride=layer.stride, bits=a[0],
                                   is_signed=a[1], out_bits=layer.out_bits, lanes=g_in, param_bits=pb,
                                   prom_style=prom_style)
            specs.append(StageSpec(index, layer, "avgpool", wi, wi, layer.out_bits, make, (None, table, signs)))
            bits = layer.out_bits
        elif layer.op == "add":
            skip = _skip_name(names, prev)
            codes = dict(zip(names, input_codes(ir, layer), strict=True))
            _, _, table, signs = tensors[layer.name]
            signs = np.ones(len(table), np.int64) if signs is None else signs
            # the branch (the add's "a", its input buffer) and the skip ("b"); with a shortcut layer, the branch is
            # the layer before the shortcut and "b" the shortcut's output
            branch, other = (skip, prev) if shortcut else (prev, skip)
            (a_bits, a_signed), (b_bits, b_signed) = codes[branch], codes[other]
            add_param_bits = param_bits(None, add_thresholds(table, signs, codes[prev], codes[skip]), "thresholds",
                                        signs)

            def make(g_in, g_out=None, prom_style="logic", c=c, h=h, w=w, a=(a_bits, a_signed), b=(b_bits, b_signed),
                     layer=layer, pb=add_param_bits, **_):
                return AddPlan(channels=c, in_h=h, in_w=w, lanes=g_in, a_bits=a[0], a_signed=a[1], b_bits=b[0],
                               b_signed=b[1], out_bits=layer.out_bits, param_bits=pb, prom_style=prom_style)
            if shortcut:
                sc_layer, sc_make, sc_tensors, (producer, x_k), rows_k = shortcut

                def fused(g_in, g_out, dsp=False, rom_style="logic", prom_style="logic", requant_dsp=False,
                          aprom_style="logic", sc_make=sc_make, add_make=make, **_):
                    return ShortcutPlan(sc_make(g_in, g_out, dsp=dsp, rom_style=rom_style, prom_style=prom_style,
                                                requant_dsp=requant_dsp), add_make(g_out, prom_style=aprom_style))
                specs.append(StageSpec(index, layer, "shortcut", x_k, rows_k, layer.out_bits, fused, sc_tensors,
                                       skip=(producer, sc_layer.a_bits, x_k), add_tables=(table, signs),
                                       shortcut=sc_layer))
                shortcut = None
            else:
                producer, skip_k = produced[skip]
                specs.append(StageSpec(index, layer, "add", wi, wi, layer.out_bits, make, (None, table, signs),
                                       skip=(producer, b_bits, skip_k)))
            bits = layer.out_bits
        else:
            weights, kind, table, signs = tensors[layer.name]
            conv = layer.op == "conv2d"
            if flat_from is not None:
                c, h, w = c * h * w, 1, 1
            if kind == "multiply_shift":
                mult_bits = max(2, signed_width(table[:, 0].min(), table[:, 0].max()))
                ones = int(np.bitwise_count(table[:, 0] & ((1 << mult_bits) - 1)).sum())
                requant = dict(param_bits=0, mult_bits=mult_bits, mult_ones=ones,
                               offset_bits=signed_width(table[:, 1].min(), table[:, 1].max()), shift=layer.shift)
            else:
                requant = dict(param_bits=param_bits(layer.acc_bits, table, kind, signs))
            common = dict(
                engine="xnor" if layer.binary else "systolic", in_channels=c, in_h=h, in_w=w,
                out_channels=layer.out_shape[0], kernel=layer.kernel_hw[1] if conv else 1,
                kernel_h=layer.kernel_hw[0] if conv else 1, stride=layer.stride if conv else 1,
                padding=layer.padding_hw[1] if conv else 0, padding_h=layer.padding_hw[0] if conv else 0,
                w_bits=layer.w_storage_bits,
                a_bits=layer.a_bits, a_signed=layer.a_signed, acc_bits=layer.acc_bits, out_bits=layer.out_bits,
                kind=kind, **requant)

            live = None if layer.binary else functools.lru_cache(maxsize=None)(functools.partial(
                live_weight_bits, stored_weights(weights, layer.w_storage_bits), w_bits=layer.w_storage_bits))

            def make(g_in, g_out, dsp=False, rom_style="logic", prom_style="logic", requant_dsp=False, common=common,
                     live=live, **_):
                return EnginePlan(**common, rows=g_out, cols=g_in, dsp=dsp, rom_style=rom_style, prom_style=prom_style,
                                  requant_dsp=requant_dsp, w_live_bits=None if live is None else live(g_out, g_in))
            if names[0] != prev:  # a shortcut layer: one stage with its add, the next layer
                shortcut = (layer, make, (weights, table, signs), produced[names[0]], wi + 1)
                wi += 1
                prev = layer.name
                continue
            specs.append(StageSpec(index, layer, "engine", wi, wi + 1, layer.out_bits, make, (weights, table, signs)))
            wi += 1
            bits = layer.out_bits
        produced[layer.name] = (index, specs[-1].k_out)
        prev = layer.name
    return steps[0][2], specs


def network_plan(ir, folding, prepared=None):
    """The :class:`NetworkPlan` of ``folding`` (a :class:`Folding`, or just the word widths: no DSPs, every
    memory in logic). ``prepared``: :func:`_prepare`'s result, to reuse across calls."""
    folding = as_folding(folding)
    widths, block = folding.widths, folding.block

    def style(name):
        return "block" if name in block else "logic"

    first_shape, specs = stage_specs(ir, prepared)
    stages, buffers, skips = [], [], []
    buffers.append(BufferPlan(words=math.prod(first_shape) // widths[0], lanes=widths[0], bits=ir.input_bits,
                              style=style("buffer0")))
    for spec in specs:
        name = spec.layer.name
        k_branch = spec.k_out - 1 if spec.kind == "shortcut" else spec.skip[2] if spec.skip is not None else None
        k_other = spec.k_out if spec.kind == "shortcut" else spec.k_in
        if k_branch is not None and widths[k_branch] != widths[k_other]:
            raise UserError(f"layer '{name}': its two inputs must be folded to the same rows (channels per word), "
                            f"not {widths[k_other]} and {widths[k_branch]}")
        plan = spec.make(widths[spec.k_in], widths[spec.k_out], dsp=name in folding.dsp,
                         rom_style=style(f"{name}.wrom"), prom_style=style(f"{name}.prom"),
                         requant_dsp=f"{name}.requant" in folding.dsp, aprom_style=style(f"{name}.aprom"))
        weights, table, signs = spec.tensors
        stages.append(Stage(spec.layer, plan, weights, table, signs, spec.add_tables, spec.shortcut))
        if spec.skip is not None:
            producer, b_bits, _ = spec.skip
            skips.append(SkipPlan(producer=producer, consumer=spec.index, buffer=BufferPlan(
                words=plan.ring_words if isinstance(plan, ShortcutPlan) else plan.words, lanes=widths[spec.k_in],
                bits=b_bits, banks=2 * (spec.index - producer), style=style(f"skip{len(skips)}"))))
        if spec.layer is not ir.layers[-1]:
            buffers.append(BufferPlan(words=spec.out_words(plan), lanes=widths[spec.k_out], bits=spec.out_bits,
                                      style=style(f"buffer{len(buffers)}")))
    last = stages[-1]
    if len(stages) == 1:  # one layer on its own (`hwq sim --layer`): its whole output feature map
        p = last.plan
        out_features, out_bits = (p.positions * p.out_channels, p.out_bits) if isinstance(p, EnginePlan) else \
            (p.out_words * p.lanes, p.out_bits if isinstance(p, AvgPoolPlan) else p.bits)
        return NetworkPlan(stages=stages, buffers=buffers, input_bits=ir.input_bits, input_shape=first_shape,
                           out_features=out_features, out_bits=out_bits, folding=folding)
    if not isinstance(last.plan, EnginePlan) or last.plan.kind != "bias" or last.plan.positions != 1:
        raise UserError(f"layer '{last.layer.name}': the network must end with a linear logits layer")
    return NetworkPlan(stages=stages, buffers=buffers, input_bits=ir.input_bits, input_shape=first_shape,
                       out_features=last.plan.out_channels, out_bits=last.plan.out_bits, skips=skips, folding=folding)


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
    if layer.op not in (*WEIGHT_OPS, "maxpool", "avgpool"):
        raise UserError(f"--layer {name}: a {layer.op} layer has no hardware of its own")
    keys = (layer.weights, layer.thresholds, layer.signs, layer.mult, layer.offset, layer.bias)
    return replace(ir, input_shape=list(layer.in_shape), input_bits=layer.a_bits, input_signed=layer.a_signed,
                   layers=[replace(layer, inputs=None)], tensors={k: ir.tensors[k] for k in keys if k is not None})


def input_word_indices(shape, lanes):
    """For each word of a sample on the top's word-serial input (buffer order), the indices of its
    ``lanes`` codes in the channels-first input vector of ``shape`` (C, H, W) or (features,)."""
    c, h, w = (*shape, 1, 1) if len(shape) == 1 else shape
    return [[(grp * lanes + j) * h * w + y * w + x for j in range(lanes)]
            for y in range(h) for x in range(w) for grp in range(c // lanes)]


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
