"""A layer engine: a conv2d or linear layer on a systolic array (multi-bit) or an XNOR-popcount core
(binary), reading its input feature map from a buffer and writing its output codes to the next one."""

import math
from dataclasses import dataclass
from functools import cached_property

import numpy as np
from amaranth import Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, memory, wiring
from amaranth.lib.wiring import In, Out

from hwq.intrange import MAX_A_BITS, MAX_W_STORAGE_BITS, range_bits, signed_width, weight_range
from hwq.ir import conv_out_side

from ._check import check_int
from .arith import multiplier_key, tree_levels
from .loops import LoopNest
from .requant import MultiplyShiftRequantizer, ThresholdRequantizer
from .systolic import SystolicArray
from .xnor import XnorPopcount

# the most channels an engine takes (cols) or gives (rows) per cycle: its buffers' words hold at most this many codes
MAX_WORD = 256

__all__ = ["ENGINES", "MAX_WORD", "MEMORY_STYLES", "ArrayPlan", "EnginePlan", "LayerEngine", "MultiplyShiftPlan", "compare_thresholds",
           "finish_writes", "folded_thresholds", "memory_attrs", "multiply_shift_rom_words", "pack", "param_bits",
           "param_memory", "param_rom_words", "requantize"]

ENGINES = ("systolic", "xnor")
# Where a memory lives: "logic" (LUTs, and flip-flops for a RAM) or "block" (block RAM). The folding search
# chooses (rtl_gen.folding); the Verilog carries the choice as a ``ram_style`` attribute, which yosys follows.
MEMORY_STYLES = ("logic", "block")


def memory_attrs(style):
    """Verilog attributes of a memory: its style, and ``no_rw_check``: the hardware never reads a word in the
    cycle it is written (a stage reads one bank while its producer writes another; an idle reader's data is
    never used), so synthesis need not add bypass logic for that case (on iCE40 and ECP5 it otherwise adds
    flip-flops for every data bit)."""
    if style not in MEMORY_STYLES:
        raise ValueError(f"memory style must be one of {MEMORY_STYLES}, not {style!r}")
    return {"ram_style": style, "no_rw_check": 1}


def pack(values, bits):
    """Pack integers (two's complement, ``bits`` each, element 0 in the low bits) into one int."""
    word, mask = 0, (1 << bits) - 1
    for i, v in enumerate(values):
        word |= (int(v) & mask) << (i * bits)
    return word


def clog2(n):
    return max(0, (int(n) - 1).bit_length())


def compare_thresholds(table, signs):
    """Thresholds in the comparators' form: ``sign * acc >= T`` is ``acc >= T`` for an increasing channel
    and ``NOT (acc >= 1 - T)`` for a decreasing one (sign -1), so those rows become ``1 - T`` (see
    :class:`ThresholdRequantizer`). Rows with sign +1 (and bias tables) are unchanged."""
    table = np.asarray(table, dtype=np.int64)
    if signs is None:
        return table
    return np.where(np.asarray(signs, dtype=np.int64)[:, None] < 0, 1 - table, table)


def param_bits(acc_bits, table, kind, signs=None):
    """Width of one stored threshold (in comparator form) or one bias word."""
    table = compare_thresholds(table, signs if kind == "thresholds" else None)
    if kind == "thresholds":
        return max(2, signed_width(table.min(), table.max()))
    return range_bits(table.min(), table.max())


def param_rom_words(table, signs, rows, n_tiles, param_bits):
    """Words of a per-channel parameter ROM, one per tile of ``rows`` channels: per row, the sign bit
    (1 = decreasing channel) then its thresholds in comparator form (:func:`compare_thresholds`) or its
    bias (``table[channel]``). Rows past the last channel repeat channel 0's table (never written)."""
    table = compare_thresholds(table, signs)
    words = []
    for t in range(n_tiles):
        vals = []
        for r in range(rows):
            o = t * rows + r
            row = table[o] if o < len(table) else table[0]
            neg = int(signs[o] < 0) if o < len(table) else 0
            vals.append(neg | (pack(row, param_bits) << 1))
        words.append(pack(vals, 1 + table.shape[1] * param_bits))
    return words


def param_memory(m, words, rows, n_levels, param_bits, style="logic", row=None):
    """Add :func:`param_rom_words` as a ROM (``prom``, in ``style``) to module ``m``; return its read port
    (synchronous: set ``addr`` one cycle ahead) and a view of its data as ``rows`` x {neg, table} (or x
    ``row``, another layout of a row)."""
    row = row or data.StructLayout({"neg": 1, "table": data.ArrayLayout(signed(param_bits), n_levels)})
    prom = memory.Memory(shape=unsigned(rows * row.size), depth=len(words), init=words, attrs=memory_attrs(style))
    m.submodules.prom = prom
    pport = prom.read_port()  # (the name Verilog signals are given)
    return pport, data.View(data.ArrayLayout(row, rows), pport.data)


def multiply_shift_rom_words(mult, offset, rows, n_tiles, mult_bits, offset_bits):
    """Words of a multiply-shift parameter ROM, one per tile of ``rows`` channels: per row, the channel's
    multiplier then its offset (rows past the last channel repeat channel 0's, never written)."""
    words = []
    for t in range(n_tiles):
        vals = []
        for r in range(rows):
            o = t * rows + r if t * rows + r < len(mult) else 0
            vals.append(pack([mult[o]], mult_bits) | (pack([offset[o]], offset_bits) << mult_bits))
        words.append(pack(vals, mult_bits + offset_bits))
    return words


def folded_thresholds(thresholds, signs, channels, n_levels, param_bits, fold):
    """A threshold table checked for shape and width: ``fold(thresholds, signs)`` (the engine's constant taken
    out, e.g. :func:`rtl_gen.add.add_thresholds`) must fit ``param_bits`` in comparator form. Returns (table,
    signs), signs all +1 when None."""
    thresholds = np.asarray(thresholds, dtype=np.int64)
    if thresholds.shape != (channels, n_levels):
        raise ValueError(f"thresholds must have shape ({channels}, {n_levels}), not {thresholds.shape}")
    signs = np.ones(channels, np.int64) if signs is None else np.asarray(signs, dtype=np.int64)
    table = fold(thresholds, signs)
    stored = compare_thresholds(table, signs)
    need = signed_width(stored.min(), stored.max())
    if param_bits < need:
        raise ValueError(f"param_bits {param_bits} cannot hold these thresholds ({need} bits)")
    return table, signs


def finish_writes(m, engine, valid, addr, words):
    """An engine's last steps: write when ``valid`` at ``addr``; ``done`` the cycle after word ``words - 1``."""
    m.d.comb += [engine.wr_en.eq(valid), engine.wr_addr.eq(addr)]
    m.d.sync += engine.done.eq(valid & (addr == words - 1))
    with m.If(engine.done):
        m.d.sync += engine.busy.eq(0)


def requantize(m, name, acc, acc_bits, params, param_bits, out_bits):
    """The level index of ``acc`` (``acc_bits`` wide) one cycle later: a registered
    :class:`ThresholdRequantizer` comparing ``acc`` with a row ``params`` of :func:`param_memory`."""
    rq = ThresholdRequantizer(acc_bits=acc_bits, thr_bits=param_bits, out_bits=out_bits, registered=True)
    m.submodules[name] = rq
    m.d.comb += [rq.acc.eq(acc), rq.thresholds.eq(params.table), rq.neg.eq(params.neg)]
    return rq.q


@dataclass(frozen=True)
class ArrayPlan:
    """Cost of an engine's datapath core: a rows x cols :class:`SystolicArray` (multipliers in logic, or on DSP
    blocks with ``dsp``) or an :class:`XnorPopcount` core (``engine="xnor"``). ``live_bits``: the weight bits
    (lane, bit) that are 1 in some word of the weight ROM; the others are constant zeros, which synthesis removes
    with their partial products (a one-word ROM's weights are constants: only their set bits are left); None:
    every bit."""

    engine: str
    rows: int
    cols: int
    w_bits: int
    a_bits: int
    acc_bits: int
    dsp: bool = False
    a_signed: bool = False
    live_bits: int | None = None

    @property
    def psum_bits(self):
        """Bits of the partial-sum registers that can differ: column c holds a sum of c+1 products, so
        its upper bits copy the sign (synthesis merges such copies). Summed over the array."""
        if self.engine == "xnor":
            return self.rows * (self.cols.bit_length() + 1)
        prod = self.a_bits + 1 if self.w_bits == 1 else self.w_bits + self.a_bits
        total, k = min(self.acc_bits, prod), 1  # column 0; then the columns c of bit_length(c) = k, together
        while 1 << (k - 1) < self.cols:
            total += (min(self.cols - 1, (1 << k) - 1) - (1 << (k - 1)) + 1) * min(self.acc_bits, prod + k)
            k += 1
        return self.rows * total

    @property
    def cost_features(self):
        lanes = self.rows * self.cols
        if self.engine == "xnor":
            return {"xnor": lanes, "xnor_sum": self.psum_bits}
        # a product in logic (rtl_gen.arith.lut_mul) costs what yosys made of that multiplier alone, measured per
        # family and operand widths (boards/calibration/multipliers.json; boards.model.resolve turns the lane
        # count into LUTs), in proportion to its live weight bits (a weight bit that is 0 in every ROM word
        # removes its partial product); a 1-bit weight negates the input instead
        logic, binary = not self.dsp, self.w_bits == 1
        key = multiplier_key(self.w_bits, self.a_bits, self.a_signed)
        mults = lanes if self.live_bits is None else self.live_bits / self.w_bits
        return {
            f"pe_mul@{key}": mults if logic and not binary else 0,      # multipliers in logic
            "pe_neg": lanes * self.a_bits if binary and logic else 0,   # 1-bit weights: x or -x
            "pe_add": 0 if self.dsp else self.psum_bits,        # adder bits along the rows
            "dsp_add": self.psum_bits if self.dsp else 0,       # the same next to DSP multipliers (absorbed on 7-series)
        }

    @property
    def register_bits(self):
        if self.engine == "xnor":
            return {"ff_pe": self.psum_bits}
        return {"ff_pe": 0 if self.dsp else self.psum_bits, "ff_pe_dsp": self.psum_bits if self.dsp else 0}

    @property
    def dsp_blocks(self):
        return self.rows * self.cols if self.dsp else 0


@dataclass(frozen=True)
class MultiplyShiftPlan:
    """Cost of ``rows`` pipelined :class:`MultiplyShiftRequantizer` s (``registered``), in logic or on DSPs."""

    rows: int
    acc_bits: int
    mult_bits: int
    offset_bits: int
    dsp: bool = False
    const: bool = False  # the multipliers and offsets are constants (one output tile: a one-word ROM)
    const_ones: int = 0  # their set bits, summed over the channels (what constant multipliers cost)

    @property
    def sum_bits(self):
        return max(self.acc_bits + self.mult_bits, self.offset_bits) + 1

    @property
    def latency(self):
        return max(1, tree_levels(min(self.acc_bits, self.mult_bits) + 1))

    @property
    def cost_features(self):
        n, m = min(self.acc_bits, self.mult_bits), max(self.acc_bits, self.mult_bits)
        logic, const = not self.dsp, self.const
        # by constant multipliers, only their set bits' partial products are left: the fraction of bits set
        rows = self.const_ones / self.mult_bits if const else self.rows
        return {"ms_mult": rows * n * m if logic else 0,     # partial products of acc * mult
                "ms_tree": rows * n * self.sum_bits if logic else 0,  # their tree with the offset
                "ms_add": self.rows * self.sum_bits}                 # the shift and clamp (and the DSP's adder)

    @property
    def register_bits(self):
        regs = self.rows * self.latency * self.sum_bits  # the pipeline registers
        return {"ff_ms": 0 if self.dsp else regs, "ff_ms_dsp": regs if self.dsp else 0}

    @property
    def dsp_blocks(self):
        return self.rows if self.dsp else 0


@dataclass(frozen=True)
class EnginePlan:
    """Geometry, timing and cost of a :class:`LayerEngine`, without building hardware.

    A linear layer is a 1x1 convolution of a 1x1 image with ``in_channels = in_features``. The
    estimator, the folding search and the tests read these; the engine uses the same object, so the
    cycle formula lives only here. ``rows`` output channels and ``cols`` input channels are processed
    per cycle (the folding); ``cols`` is the word width of the input buffer and ``rows`` that of the
    output buffer, so ``cols`` divides ``in_channels`` and, for a hidden layer, ``rows`` divides
    ``out_channels``. ``dsp``: the systolic array's multipliers are DSP blocks (one per lane).
    ``rom_style`` / ``prom_style``: where the weight ROM and the parameter (threshold, multiply-shift or
    bias) ROM live. ``kind``: the requantization, ``thresholds`` (comparators), ``multiply_shift`` (one
    multiplier per row, on a DSP with ``requant_dsp``) or ``bias`` (the logits layer).
    """

    engine: str          # "systolic" or "xnor"
    in_channels: int
    in_h: int
    in_w: int
    out_channels: int
    kernel: int          # the kernel's width (and height, unless kernel_h says otherwise)
    stride: int
    padding: int         # zero columns left and right (and rows above and below, unless padding_h)
    w_bits: int
    a_bits: int
    acc_bits: int
    out_bits: int
    kind: str            # "thresholds", "multiply_shift" or "bias"
    rows: int
    cols: int
    param_bits: int      # width of one threshold / bias word (0 for multiply-shift)
    dsp: bool = False
    rom_style: str = "logic"
    prom_style: str = "logic"
    mult_bits: int = 0   # multiply-shift: multiplier and offset widths, the shift
    offset_bits: int = 0
    shift: int = 0
    requant_dsp: bool = False  # multiply-shift: the requantizers' multipliers are DSP blocks (one per row)
    mult_ones: int = 0   # multiply-shift: the multipliers' set bits (mult_bits two's complement), summed over channels
    w_live_bits: int | None = None  # the weight ROM's bits (lane, bit) that are 1 in some word (None: all)
    a_signed: bool = False  # two's complement input codes (a signed network input, e.g. MNIST-1D's samples)
    kernel_h: int | None = None  # a rectangular kernel's height (1 for a 1-D convolution); None: = kernel
    padding_h: int | None = None  # zero rows above and below; None: = padding

    @property
    def kh(self):
        return self.kernel if self.kernel_h is None else self.kernel_h

    @property
    def ph(self):
        return self.padding if self.padding_h is None else self.padding_h

    @property
    def out_h(self):
        return conv_out_side(self.in_h, self.kh, self.stride, self.ph)

    @property
    def out_w(self):
        return conv_out_side(self.in_w, self.kernel, self.stride, self.padding)

    @property
    def positions(self):
        return self.out_h * self.out_w

    @property
    def in_groups(self):
        """Words per input pixel (``in_channels / cols``)."""
        return self.in_channels // self.cols

    @property
    def n_in_tiles(self):
        return self.kh * self.kernel * self.in_groups

    @property
    def n_out_tiles(self):
        return math.ceil(self.out_channels / self.rows)

    @property
    def n_tiles(self):
        return self.positions * self.n_out_tiles * self.n_in_tiles

    @property
    def datapath_latency(self):
        """Cycles from a tile's operands to its partial sums: the array's row chain, or one register."""
        return self.cols if self.engine == "systolic" else XnorPopcount.latency

    @property
    def requant_latency(self):
        """Cycles from the accumulator to the output code: compare (or add the bias) 1; multiply-shift one per
        level of its adder tree (``MultiplyShiftRequantizer.latency``)."""
        return self.multiply_shift.latency if self.kind == "multiply_shift" else 1

    @property
    def latency(self):
        """Cycles from ``start`` to ``done``: issue every tile (cycles 1..n_tiles), then buffer read (1) +
        datapath + accumulate (1) + requantize (:attr:`requant_latency`) + count or clamp, and write (1)."""
        return self.n_tiles + self.datapath_latency + 3 + self.requant_latency

    @property
    def macs(self):
        return self.positions * self.out_channels * self.kh * self.kernel * self.in_channels

    @property
    def lanes(self):
        return self.rows * self.cols

    @property
    def in_words(self):
        return self.in_h * self.in_w * self.in_groups

    @property
    def rom_words(self):
        """Words of the weight ROM: one per (output tile, input tile)."""
        return self.n_out_tiles * self.n_in_tiles

    @property
    def rom_width(self):
        """Bits of a weight ROM word: every column's ``rows`` weights."""
        return self.cols * self.rows * self.w_bits

    @property
    def n_levels(self):
        return (1 << self.out_bits) - 1 if self.kind == "thresholds" else 1

    @property
    def prom_width(self):
        """Bits of a parameter ROM word: per row, a sign bit and the thresholds (or the bias), or the
        multiplier and the offset."""
        if self.kind == "multiply_shift":
            return self.rows * (self.mult_bits + self.offset_bits)
        return self.rows * (1 + self.n_levels * self.param_bits)



    @property
    def memories(self):
        """(name, depth, width, style) of the engine's memories that may go to block RAM. A one-word ROM is a
        constant (no memory), so it is not listed."""
        out = []
        if self.rom_words > 1:
            out.append(("wrom", self.rom_words, self.rom_width, self.rom_style))
        if self.n_out_tiles > 1:
            out.append(("prom", self.n_out_tiles, self.prom_width, self.prom_style))
        return out

    def bram_blocks(self, family):
        """Block RAMs of the ROMs in block RAM (each tiled over the family's block shapes)."""
        from boards.model import bram_blocks

        return sum(bram_blocks(family, depth, width) for _, depth, width, style in self.memories if style == "block")

    @property
    def dsp_blocks(self):
        return self.array.dsp_blocks + (self.multiply_shift.dsp_blocks if self.multiply_shift else 0)

    @cached_property
    def tag_bits(self):
        """Bits of a tile's tag that travel down the pipeline (valid, first, last, output tile, position,
        output address); the weight ROM address and the padding flag are used at the start only."""
        return 3 + clog2(self.n_out_tiles) + clog2(self.positions) + clog2(self.positions * self.n_out_tiles)

    @property
    def loop_counts(self):
        """Iterations of the issue loops, innermost first: input group, kx, ky, output tile, ox, oy."""
        return (self.in_groups, self.kernel, self.kh, self.n_out_tiles, self.out_w, self.out_h)

    @property
    def window_bits(self):
        """Bits of the tracked input pixel (iy, ix), which only a padded convolution needs (its border)."""
        if self.padding == 0 and self.ph == 0:
            return 0
        return clog2(self.in_h + self.ph + 1) + clog2(self.in_w + self.padding + 1) + 2

    @cached_property
    def array(self):
        """The datapath core's :class:`ArrayPlan`."""
        return ArrayPlan(engine=self.engine, rows=self.rows, cols=self.cols, w_bits=self.w_bits, a_bits=self.a_bits,
                         acc_bits=self.acc_bits, dsp=self.dsp, a_signed=self.a_signed, live_bits=self.w_live_bits)

    @cached_property
    def multiply_shift(self):
        """The requantizers' :class:`MultiplyShiftPlan` (multiply-shift layers), else None."""
        if self.kind != "multiply_shift":
            return None
        return MultiplyShiftPlan(rows=self.rows, acc_bits=self.acc_bits, mult_bits=self.mult_bits,
                                 offset_bits=self.offset_bits, dsp=self.requant_dsp, const=self.n_out_tiles == 1,
                                 const_ones=self.mult_ones)

    @property
    def psum_bits(self):
        return self.array.psum_bits

    def _parts(self, kind):
        out = dict(getattr(self.array, kind))
        if self.multiply_shift is not None:
            out.update(getattr(self.multiply_shift, kind))
        return out

    @cached_property  # (the folding search prices thousands of plans)
    def cost_features(self):
        """Quantities the resource model is linear in, named; coefficients are fitted per FPGA family
        from yosys runs (boards/calibrate.py). Each counts bits of one kind of hardware in this engine;
        the array's and the multiply-shift requantizers' come from :class:`ArrayPlan` and
        :class:`MultiplyShiftPlan`, which the calibration also measures on their own."""
        rows, cols = self.rows, self.cols
        xnor = self.engine == "xnor"
        w_tiles = self.rom_words
        rom_logic = w_tiles > 1 and self.rom_style == "logic"
        thresholds = self.kind == "thresholds"
        prom_logic = self.n_out_tiles > 1 and self.prom_style == "logic"
        return {
            "const": 1,
            **self._parts("cost_features"),
            "rom_out": self.rom_width if rom_logic else 0,        # weight ROM output bits
            "rom_bits": self.rom_width * w_tiles if rom_logic else 0,      # weight ROM contents in LUTs
            "shift": (0 if xnor else self.a_bits * max(cols - 2, 0)) + self.tag_bits,   # delay lines (SRLs on Xilinx)
            # tracked addresses (input word, and iy/ix with padding): one adder and a multiplexer of constants
            "addr": (clog2(self.in_words) + self.window_bits) * sum(c > 1 for c in self.loop_counts),
            "acc": rows * self.acc_bits,                          # tile accumulators
            # threshold comparators: against ROM words, or against constants when there is one output tile
            "cmp": rows * self.n_levels * self.param_bits if thresholds and self.n_out_tiles > 1 else 0,
            "cmp_const": rows * self.n_levels * self.param_bits if thresholds and self.n_out_tiles == 1 else 0,
            "bias_add": rows * self.acc_bits if self.kind == "bias" else 0,
            "out_reg": self.positions * self.out_channels * self.out_bits if self.kind == "bias" else 0,  # logits
            # the parameter ROM in logic: its contents and its output bits, as for the weight ROM
            "param_rom": self.prom_width * self.n_out_tiles * prom_logic,
            "param_out": self.prom_width * prom_logic,
            "rom_block_out": self.rom_width if self.rom_words > 1 and self.rom_style == "block" else 0,
            "ctrl": self.tag_bits,
        }

    @cached_property
    def correction_inputs(self):
        """What the family's correction trees of the LUT model read (``boards.model.correction_log_ratio``): the
        cost features and the engine's shape, bits and memory places."""
        return {**self.cost_features, "rows": self.rows, "cols": self.cols, "w_bits": self.w_bits,
                "a_bits": self.a_bits, "acc_bits": self.acc_bits, "out_bits": self.out_bits, "rom_words": self.rom_words,
                "n_out_tiles": self.n_out_tiles, "rom_block": self.rom_style == "block",
                "prom_block": self.prom_style == "block", "dsp": self.dsp, "requant_dsp": self.requant_dsp,
                "xnor": self.engine == "xnor"}

    @cached_property
    def register_bits(self):
        """Flip-flops by purpose, counted from the structure (the FF model is fitted on these)."""
        rows, cols = self.rows, self.cols
        w_tiles = self.rom_words
        return {
            "const": 1,
            **self._parts("register_bits"),
            # ROM read registers (inside the block RAM when there); a one-word ROM is a constant and its register disappears
            "ff_wrom": self.rom_width * (w_tiles > 1 and self.rom_style == "logic"),
            "ff_prom": self.prom_width * (self.n_out_tiles > 1 and self.prom_style == "logic"),
            "ff_x": cols * self.a_bits * (1 + (0 if self.engine == "xnor" else (cols - 1) / 2)),
            "ff_acc": rows * self.acc_bits,
            "ff_cmp": rows * self.n_levels if self.kind == "thresholds" else 0,  # the registered comparisons
            # the logits layer keeps every output in a register (the top's output); others pass a word on
            "ff_out": self.positions * self.out_channels * self.out_bits if self.kind == "bias" else rows * self.out_bits,
            # the tag pipeline, the loop counters and the tracked addresses
            "ff_ctrl": (self.datapath_latency + 2 + self.requant_latency) * self.tag_bits
            + sum(clog2(c) for c in self.loop_counts) + clog2(max(self.in_words, 2)) + self.window_bits
            + clog2(max(self.rom_words, 2)),
        }

    def resources(self, family):
        """Estimated {"lut", "ff", "bram", "dsp"} on an FPGA family, from the calibrated model."""
        from boards.model import plan_resources

        return {**plan_resources(family, self), "bram": self.bram_blocks(family), "dsp": self.dsp_blocks}


class LayerEngine(wiring.Component):
    """Computes one conv2d or linear layer, ``y = requant(W * x)``, tile by tile.

    Input feature map: a buffer of words of ``cols`` codes, pixel-major (word ``(iy * W + ix) *
    in_groups + g`` holds channels ``g * cols .. g * cols + cols - 1`` of pixel (iy, ix)). The engine
    reads it through ``rd_addr`` / ``rd_data`` (synchronous: data one cycle after the address).

    Loops, innermost first: input group, kernel column, kernel row (the input tile ``it``), output
    tile ``ot`` (``rows`` channels), output column, output row. Each cycle one tile enters the
    datapath: the window address generator computes the input pixel ``(oy*stride + ky - padding,
    ox*stride + kx - padding)``; outside the image the word is zero padding (masked on the XNOR path).
    Weights: one ROM, one word per (ot, it) tile holding every column's ``rows`` weights. The tiles are
    issued back to back in a fixed order, so the ROM address ``ot * n_in_tiles + it`` counts up modulo the
    ROM's depth; column c needs the weights of the tile issued ``skew = c`` cycles earlier (the systolic
    skew; 0 on the XNOR path), so its part of word ``a`` holds the weights of tile ``(a - skew) mod depth``
    and every column reads the same address (one memory, however many columns; no delay lines).

    Datapath: ``systolic``, a rows x cols :class:`SystolicArray` (column c's operands are delayed c
    cycles: the skew), or ``xnor``, an :class:`XnorPopcount` with ``lanes = rows`` and ``simd = cols``.
    A per-row accumulator adds the ``n_in_tiles`` partial sums of an output tile; the row's
    thresholds (or bias) from a small ROM turn the sum into the output code, and the ``rows`` codes
    are written as one word to the output buffer at ``pos * n_out_tiles + ot`` (``wr_*``), or, for
    the logits layer (``to_register``), into the register ``y``.

    Timing: ``start`` is sampled in cycle 0; tiles are issued in cycles 1..n_tiles; ``done`` is high
    for one cycle at ``latency = n_tiles + datapath_latency + 3 + requant_latency``, after the last write
    has landed (:attr:`EnginePlan.latency`).
    ``busy`` is high from the cycle after ``start`` through the cycle of ``done``.

    Parameters
    ----------
    plan : EnginePlan
    weights : array (out_channels, kh * kernel * in_channels), columns in buffer order
        ``(ky * kernel + kx) * in_channels + c`` (``kh``: the kernel's height); integers in the ``w_bits`` range (1 bit: -1/+1).
    thresholds : array (out_channels, 2**out_bits - 1) in the sign domain, with ``signs`` (+1/-1 per
        channel): ``y[o] = #{k : signs[o] * acc[o] >= thresholds[o, k]}``; or None
    bias : array (out_channels,): ``y[o] = acc[o] + bias[o]`` (the logits layer); or None
    multiply_shift : (mult, offset), arrays (out_channels,): ``y[o] = clamp((acc[o] * mult[o] + offset[o]) >>
        plan.shift, 0, 2**out_bits - 1)``; or None
    to_register : bool
        Write the results into ``y`` (the network's output) instead of the output buffer.
    """

    def __init__(self, plan, *, weights, thresholds=None, signs=None, bias=None, multiply_shift=None,
                 to_register=False):
        self.plan = p = plan
        if p.engine not in ENGINES:
            raise ValueError(f"engine must be one of {ENGINES}, not {p.engine!r}")
        for name, lo, hi in (("rows", 1, MAX_WORD), ("cols", 1, MAX_WORD), ("kernel", 1, 64), ("kh", 1, 64), ("stride", 1, 64),
                             ("in_channels", 1, 1 << 16), ("out_channels", 1, 1 << 16)):
            check_int(name, getattr(p, name), lo, hi)
        check_int("w_bits", p.w_bits, 1, MAX_W_STORAGE_BITS)
        check_int("a_bits", p.a_bits, 1, MAX_A_BITS)
        check_int("acc_bits", p.acc_bits, 2, 64)
        if p.in_channels % p.cols:
            raise ValueError(f"cols ({p.cols}) must divide in_channels ({p.in_channels})")
        if not to_register and p.out_channels % p.rows:
            raise ValueError(f"rows ({p.rows}) must divide out_channels ({p.out_channels}) of a hidden layer")
        if p.engine == "xnor" and (p.w_bits != 1 or p.a_bits != 1):
            raise ValueError("the XNOR engine needs 1-bit weights and 1-bit (bipolar) inputs")
        weights = np.asarray(weights)
        k_total = p.kh * p.kernel * p.in_channels
        if weights.shape != (p.out_channels, k_total) or weights.dtype.kind not in "iu":
            raise ValueError(f"weights must be integers of shape ({p.out_channels}, {k_total}), "
                             f"not {weights.dtype} {weights.shape}")
        lo, hi = weight_range(p.w_bits)
        if weights.min() < lo or weights.max() > hi or (p.w_bits == 1 and (weights == 0).any()):
            raise ValueError(f"weights must be {p.w_bits}-bit weights in {lo}..{hi}")
        given = [name for name, v in (("thresholds", thresholds), ("bias", bias), ("multiply_shift", multiply_shift))
                 if v is not None]
        if given != [p.kind if p.kind in ("thresholds", "bias", "multiply_shift") else "?"]:
            raise ValueError(f"a {p.kind!r} engine takes exactly its own table (thresholds for a hidden layer, "
                             f"multiply_shift=(mult, offset) for a multiply-shift layer, bias for the logits), "
                             f"not {given}")
        self.weights = weights.astype(np.int64)
        self.to_register = bool(to_register)
        self.signs = np.ones(p.out_channels, np.int64)
        if thresholds is not None:
            self.table = np.asarray(thresholds, dtype=np.int64)
            if self.table.shape != (p.out_channels, p.n_levels):
                raise ValueError(f"thresholds must have shape ({p.out_channels}, {p.n_levels}), not {self.table.shape}")
            if signs is not None:
                self.signs = np.asarray(signs, dtype=np.int64)
            out_shape = unsigned(p.out_bits)
        elif multiply_shift is not None:
            mult, offset = (np.asarray(v, dtype=np.int64).reshape(-1) for v in multiply_shift)
            if mult.shape != (p.out_channels,) or offset.shape != (p.out_channels,):
                raise ValueError(f"multiply_shift must be two arrays of shape ({p.out_channels},)")
            if signed_width(mult.min(), mult.max()) > p.mult_bits or \
                    signed_width(offset.min(), offset.max()) > p.offset_bits:
                raise ValueError(f"mult_bits {p.mult_bits} / offset_bits {p.offset_bits} cannot hold these values")
            self.table = np.stack([mult, offset], axis=1)
            out_shape = unsigned(p.out_bits)
        else:
            self.table = np.asarray(bias, dtype=np.int64).reshape(-1, 1)
            if self.table.shape != (p.out_channels, 1):
                raise ValueError(f"bias must have shape ({p.out_channels},), not {np.shape(bias)}")
            out_shape = signed(p.out_bits)
        if p.kind != "multiply_shift" and p.param_bits < param_bits(p.acc_bits, self.table, p.kind, self.signs):
            raise ValueError(f"param_bits {p.param_bits} cannot hold this table")
        a_shape = unsigned(p.a_bits)
        ports = {
            "start": In(1), "done": Out(1), "busy": Out(1),
            "rd_addr": Out(range(max(p.in_words, 2))),
            "rd_data": In(data.ArrayLayout(a_shape, p.cols)),
        }
        if self.to_register:
            ports["y"] = Out(data.ArrayLayout(out_shape, p.positions * p.out_channels))
        else:
            ports.update({
                "wr_en": Out(1),
                "wr_addr": Out(range(max(p.positions * p.n_out_tiles, 2))),
                "wr_data": Out(data.ArrayLayout(out_shape, p.rows)),
            })
        super().__init__(ports)
        # high in the cycles a tile enters the datapath (not a port; benchmarks and tests probe it)
        self.issue = Signal(name="issue")

    @property
    def latency(self):
        return self.plan.latency

    def _weight(self, o, j):
        p = self.plan
        if o < p.out_channels:
            return int(self.weights[o, j])
        return 1 if p.w_bits == 1 else 0  # padding rows: never written

    def weight_rom(self):
        """The weight ROM's words: word ``a``, bits ``(c * rows + r) * w_bits`` up, holds
        ``W[ot*rows + r, it*cols + c]`` of tile ``(ot, it) = divmod((a - skew_c) mod depth, n_in_tiles)``,
        with ``skew_c = c`` on the systolic array (column c works c cycles behind column 0) and 0 on the
        XNOR core."""
        p = self.plan
        code = (lambda w: 1 if w > 0 else 0) if p.w_bits == 1 else (lambda w: w)
        depth = p.rom_words
        words = []
        for a in range(depth):
            column_words = []
            for c in range(p.cols):
                skew = c if p.engine == "systolic" else 0
                ot, it = divmod((a - skew) % depth, p.n_in_tiles)
                column_words.append(pack([code(self._weight(ot * p.rows + r, it * p.cols + c))
                                          for r in range(p.rows)], p.w_bits))
            words.append(pack(column_words, p.rows * p.w_bits))
        return words

    def param_rom(self):
        p = self.plan
        if p.kind == "multiply_shift":
            return multiply_shift_rom_words(self.table[:, 0], self.table[:, 1], p.rows, p.n_out_tiles, p.mult_bits,
                                            p.offset_bits)
        return param_rom_words(self.table, self.signs, p.rows, p.n_out_tiles, p.param_bits)

    def elaborate(self, platform):
        m = Module()
        p = self.plan
        rows, cols, n_it, n_ot, k = p.rows, p.cols, p.n_in_tiles, p.n_out_tiles, p.kernel
        d = p.datapath_latency

        # ---- issue loops (innermost first: g, kx, ky | ot | ox, oy) --------------------------------
        # Every loop wraps to 0 with its last value, so all are at 0 between runs and ``start`` only sets
        # ``running`` (a small fanout: ``start`` comes from the top's handshake logic). ``running`` is 0
        # whenever ``start`` is high.
        running = Signal()
        with m.If(self.start):
            m.d.sync += [running.eq(1), self.busy.eq(1)]
        loops = LoopNest.build(m, (p.in_groups, k, p.kh, n_ot, p.out_w, p.out_h), running,
                               ("g", "kx", "ky", "ot", "ox", "oy"))
        with m.If(running & loops.done):
            m.d.sync += running.eq(0)
        ot = loops.index[3]
        first_it, last_it = loops.first((0, 1, 2)), loops.all_at((0, 1, 2))
        pos = loops.track(m, (0, 0, 0, 0, 1, p.out_w), 0, range(max(p.positions, 2)), "pos")
        out_addr = loops.track(m, (0, 0, 0, 1, n_ot, p.out_w * n_ot), 0, range(max(p.positions * n_ot, 2)), "out_addr")
        # the weight ROM's address, ot * n_it + it while issuing; it keeps counting (modulo the ROM's depth)
        # after the last tile, so that the columns still behind (the skew) read their tiles' weights
        waddr = Signal(range(max(p.rom_words, 2)))
        m.d.sync += waddr.eq(Mux(self.start | (waddr == p.rom_words - 1), 0, waddr + 1))

        # ---- sliding window: the input word's address (and, with padding, the pixel, to find the border)
        s_, G, W = p.stride, p.in_groups, p.in_w
        addr_bits = len(self.rd_addr)
        base = ((-p.ph * W - p.padding) * G) % (1 << addr_bits)
        addr = loops.track(m, (1, G, W * G, 0, s_ * G, s_ * W * G), base, unsigned(addr_bits), "in_addr")
        if p.window_bits:
            iy = loops.track(m, (0, 0, 1, 0, 0, s_), -p.ph, signed(clog2(p.in_h + p.ph + 1) + 1), "iy")
            ix = loops.track(m, (0, 1, 0, 0, s_, 0), -p.padding, signed(clog2(p.in_w + p.padding + 1) + 1), "ix")
            inside = (iy >= 0) & (iy < p.in_h) & (ix >= 0) & (ix < p.in_w)
        else:  # every window lies inside the image
            inside = Const(1, 1)
        # outside the image the word read is replaced by zero padding, so the address need not be valid there
        m.d.comb += self.rd_addr.eq(addr)

        tag_layout = data.StructLayout({
            "valid": 1, "pad": 1, "first": 1, "last": 1,
            "waddr": range(max(n_ot * n_it, 2)), "ot": range(n_ot), "pos": range(p.positions),
            "oaddr": range(max(p.positions * n_ot, 2)),
        })
        tags = [Signal(tag_layout, name=f"tag{i}") for i in range(d + 3 + p.requant_latency)]
        m.d.comb += [
            tags[0].valid.eq(running), tags[0].pad.eq(~inside), tags[0].first.eq(first_it), tags[0].last.eq(last_it),
            tags[0].waddr.eq(waddr), tags[0].ot.eq(ot), tags[0].pos.eq(pos), tags[0].oaddr.eq(out_addr),
        ]
        m.d.sync += [tags[i].eq(tags[i - 1]) for i in range(1, len(tags))]
        m.d.comb += self.issue.eq(running)

        # Input word (arrives with tags[1]); zero padding outside the image.
        word = Signal.like(self.rd_data, name="x_word")
        signed_x = p.a_signed and p.a_bits > 1  # bipolar 1-bit inputs reach only the XNOR core (plan._check_layer)
        if signed_x:
            # buffers hold level indices (code - lo: offset binary); flipping the top bit gives the two's
            # complement code the array multiplies, and padding is code 0
            top = 1 << (p.a_bits - 1)
            m.d.comb += [word[c].eq(Mux(tags[1].pad, 0, self.rd_data[c] ^ top)) for c in range(p.cols)]
        else:
            m.d.comb += word.eq(Mux(tags[1].pad, 0, self.rd_data))

        # ---- datapath ----------------------------------------------------------------------------
        # One weight ROM read with the issue tag's address; its data arrives with the input word (tags[1]).
        wrom = memory.Memory(shape=unsigned(p.rom_width), depth=p.rom_words, init=self.weight_rom(),
                             attrs=memory_attrs(p.rom_style))
        m.submodules.wrom = wrom
        wport = wrom.read_port()
        m.d.comb += wport.addr.eq(tags[0].waddr)
        col_bits = rows * p.w_bits
        col_w = [wport.data[c * col_bits:(c + 1) * col_bits] for c in range(cols)]
        if p.engine == "systolic":
            m.submodules.array = core = SystolicArray(rows=rows, cols=cols, w_bits=p.w_bits, a_bits=p.a_bits,
                                                      acc_bits=p.acc_bits, dsp=p.dsp,
                                                      a_signed=signed_x)
            for c in range(cols):
                # column c works c cycles behind column 0: its weights come skewed in the ROM, its input
                # word is delayed c cycles here
                x = word[c]
                for i in range(c):
                    reg = Signal.like(word[c], name=f"skew{c}_{i}")
                    m.d.sync += reg.eq(x)
                    x = reg
                m.d.comb += [core.x[c].eq(x), core.w[c].eq(col_w[c])]
            sums = [core.sums[r] for r in range(rows)]
        else:
            m.submodules.xnor = core = XnorPopcount(lanes=rows, simd=cols)
            for c in range(cols):
                m.d.comb += [core.x[c].eq(word[c]), core.mask[c].eq(~tags[1].pad)]
                for r in range(rows):
                    m.d.comb += core.w[r][c].eq(col_w[c][r])
            sums = [core.acc[r] for r in range(rows)]

        # ---- accumulate the partial sums of an output tile ---------------------------------------
        acc_tag, out_tag = tags[d + 1], tags[-1]  # (in between: compare, add the bias, or multiply)
        acc = [Signal(signed(p.acc_bits), name=f"acc{r}") for r in range(rows)]
        with m.If(acc_tag.valid):
            m.d.sync += [acc[r].eq(Mux(acc_tag.first, 0, acc[r]) + sums[r]) for r in range(rows)]

        # ---- requantize (or add the bias) and write the finished tile ------------------------------
        ms_row = data.StructLayout({"mult": signed(max(p.mult_bits, 2)), "offset": signed(max(p.offset_bits, 1))})
        pport, params = param_memory(m, self.param_rom(), rows, p.n_levels, p.param_bits, p.prom_style,
                                     row=ms_row if p.kind == "multiply_shift" else None)
        m.d.comb += pport.addr.eq(acc_tag.ot)
        if p.kind == "thresholds":
            results = [requantize(m, f"requant{r}", acc[r], p.acc_bits, params[r], p.param_bits, p.out_bits)
                       for r in range(rows)]
        elif p.kind == "multiply_shift":
            results = []
            for r in range(rows):
                rq = MultiplyShiftRequantizer(acc_bits=p.acc_bits, mult_bits=p.mult_bits, offset_bits=p.offset_bits,
                                              shift=p.shift, out_bits=p.out_bits, registered=True, dsp=p.requant_dsp)
                m.submodules[f"requant{r}"] = rq
                m.d.comb += [rq.acc.eq(acc[r]), rq.mult.eq(params[r].mult), rq.offset.eq(params[r].offset)]
                results.append(rq.q)
        else:
            results = [Signal(signed(p.out_bits), name=f"logit{r}") for r in range(rows)]
            m.d.sync += [results[r].eq(acc[r] + params[r].table[0]) for r in range(rows)]
        write = out_tag.valid & out_tag.last
        if self.to_register:
            for o in range(p.positions * p.out_channels):
                q, ch = divmod(o, p.out_channels)
                with m.If(write & (out_tag.pos == q) & (out_tag.ot == ch // rows)):
                    m.d.sync += self.y[o].eq(results[ch % rows])
        else:
            m.d.comb += [self.wr_en.eq(write), self.wr_addr.eq(out_tag.oaddr)]
            m.d.comb += [self.wr_data[r].eq(results[r]) for r in range(rows)]
        m.d.sync += self.done.eq(write & (out_tag.ot == n_ot - 1) & (out_tag.pos == p.positions - 1))
        with m.If(self.done):
            m.d.sync += self.busy.eq(0)
        return m
