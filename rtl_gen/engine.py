"""A layer engine: weight ROMs, a systolic array, accumulators and requantization for one linear layer."""

import math
from dataclasses import dataclass

import numpy as np
from amaranth import Array, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, memory, wiring
from amaranth.lib.wiring import In, Out

from hwq.intrange import range_bits, signed_width, weight_range

from ._check import check_int
from .requant import ThresholdRequantizer
from .systolic import SystolicArray

__all__ = ["EnginePlan", "LinearEngine", "param_bits"]


def _pack(values, bits):
    """Pack integers (two's complement, ``bits`` each, element 0 in the low bits) into one int."""
    word, mask = 0, (1 << bits) - 1
    for i, v in enumerate(values):
        word |= (int(v) & mask) << (i * bits)
    return word


def param_bits(acc_bits, table, kind):
    """Width of one threshold (compared with the accumulator) or one bias word."""
    table = np.asarray(table, dtype=np.int64)
    if kind == "thresholds":
        return max(acc_bits, signed_width(table.min(), table.max()))
    return range_bits(table.min(), table.max())


@dataclass(frozen=True)
class EnginePlan:
    """Geometry, timing and cost of a :class:`LinearEngine`, without building hardware.

    The estimator and the tests read these; the engine itself uses the same object, so the cycle
    formula lives only here. Cost: :attr:`cost_features` and :attr:`register_bits` name what the
    engine's LUTs and flip-flops scale with; :meth:`resources` applies the coefficients fitted to
    yosys for an FPGA family (boards/model.py, docs/results/estimator.md).
    """

    in_features: int
    out_features: int
    w_bits: int
    a_bits: int
    acc_bits: int
    out_bits: int
    kind: str  # "thresholds" or "bias"
    rows: int
    cols: int
    param_bits: int  # width of one threshold / bias word

    @property
    def n_in_tiles(self):
        return math.ceil(self.in_features / self.cols)

    @property
    def n_out_tiles(self):
        return math.ceil(self.out_features / self.rows)

    @property
    def n_tiles(self):
        return self.n_in_tiles * self.n_out_tiles

    @property
    def latency(self):
        """Cycles from ``start`` to ``done``: issue every tile, then ROM (1) + array (cols) + acc (1) + write (1)."""
        return self.n_tiles + self.cols + 3

    @property
    def macs(self):
        return self.in_features * self.out_features

    @property
    def n_levels(self):
        return (1 << self.out_bits) - 1 if self.kind == "thresholds" else 1

    @property
    def tag_bits(self):
        clog2 = lambda n: (n - 1).bit_length()  # noqa: E731
        return 3 + clog2(self.n_tiles) + clog2(self.n_in_tiles) + clog2(self.n_out_tiles)

    @property
    def psum_bits(self):
        """Bits of the partial-sum registers that can differ: column c holds a sum of c+1 products, so
        its upper bits copy the sign (synthesis merges such copies). Summed over the array."""
        prod = self.a_bits + 1 if self.w_bits == 1 else self.w_bits + self.a_bits
        return self.rows * sum(min(self.acc_bits, prod + c.bit_length()) for c in range(self.cols))

    @property
    def cost_features(self):
        """Quantities the resource model is linear in, named; coefficients are fitted per FPGA family
        from yosys runs (boards/calibrate.py). Each counts bits of one kind of hardware in this engine."""
        rows, cols = self.rows, self.cols
        mult = self.a_bits if self.w_bits == 1 else self.w_bits * self.a_bits
        rom_out = cols * rows * self.w_bits
        thresholds = self.kind == "thresholds"
        few = self.n_tiles <= 2  # weights from a 1-2 word ROM: multiplier folds into constant logic
        return {
            "const": 1,
            "pe_mult": 0 if few else rows * cols * mult,          # partial-product bits of the multipliers
            "pe_mult_few": rows * cols * mult if few else 0,
            "pe_mult_sq": 0 if few else rows * cols * mult * mult / 16,   # adder depth grows with both widths
            "pe_add": self.psum_bits,                             # adder bits along the rows
            "rom_out": rom_out if self.n_tiles > 1 else 0,        # weight ROM output bits (constant if 1 tile)
            "rom_bits": rom_out * self.n_tiles,                   # weight ROM contents
            "xmux": cols * self.a_bits * (self.n_in_tiles - 1),   # input select muxes
            "acc": rows * self.acc_bits,                          # tile accumulators
            "cmp": rows * self.n_levels * self.param_bits if thresholds else 0,   # threshold comparators
            "bias_add": 0 if thresholds else rows * self.acc_bits,
            "param_rom": rows * self.n_levels * self.param_bits * (self.n_out_tiles > 1),
            "out_write": self.out_features * self.out_bits * (self.n_out_tiles > 1),
            "ctrl": (cols + 2) * self.tag_bits,
        }

    @property
    def register_bits(self):
        """Flip-flops by purpose, counted from the structure (the FF model is fitted on these)."""
        rows, cols = self.rows, self.cols
        return {
            "const": 1,
            "ff_pe": self.psum_bits,
            # ROM read registers; a one-word ROM is a constant and its register disappears
            "ff_wrom": cols * rows * self.w_bits * (self.n_tiles > 1),
            "ff_prom": rows * self.n_levels * self.param_bits * (self.n_out_tiles > 1),
            "ff_x": cols * self.a_bits,
            "ff_acc": rows * self.acc_bits,
            "ff_out": self.out_features * self.out_bits,
            "ff_ctrl": (cols + 2) * self.tag_bits,
        }

    def resources(self, family):
        """Estimated {"lut", "ff", "bram", "dsp"} on an FPGA family, from the calibrated model."""
        from boards.model import plan_resources

        return plan_resources(family, self)


class LinearEngine(wiring.Component):
    """Computes one linear layer ``y = requant(W @ x)`` on a rows x cols systolic array.

    The weight matrix (out_features x in_features) is cut into tiles of ``rows`` outputs by ``cols``
    inputs; tile (ot, it) is one word per array column in that column's ROM, so one tile enters the
    array per cycle. Output tile ``ot`` accumulates its ``n_in_tiles`` partial sums, then is requantized
    (thresholds) or biased (logits) and written to the output register ``y``.

    Timing: ``start`` is sampled in cycle 0; tiles are issued in cycles 1..n_tiles; ``done`` is high
    for one cycle, ``latency = n_tiles + cols + 3`` cycles after ``start``, when ``y`` is complete.
    ``x`` must stay stable from ``start`` to ``done``. Stages after issue: column ROM read and input
    select (1, plus the column's skew), the array (``cols``), accumulate (1), requantize and write (1).

    Parameters
    ----------
    weights : array (out_features, in_features) of integers in the ``w_bits`` range
    w_bits, a_bits, acc_bits : int
    rows, cols : int
        Array size; clipped to out_features and in_features.
    thresholds : array (out_features, 2**out_bits - 1), or None
        Integer thresholds (hidden layers): ``y[o] = #{k : acc[o] >= thresholds[o, k]}``.
    bias : array (out_features,), or None
        Integer bias (the logits layer): ``y[o] = acc[o] + bias[o]``.
    out_bits : int
        Output width (unsigned codes with thresholds, signed logits with bias).

    Members
    -------
    start : In(1)
    done : Out(1)
    busy : Out(1), from the cycle after ``start`` through the cycle of ``done``
    x : In(ArrayLayout(unsigned(a_bits), in_features))
    y : Out(ArrayLayout(unsigned(out_bits) or signed(out_bits), out_features)), registered
    """

    def __init__(self, *, weights, w_bits, a_bits, acc_bits, rows, cols, out_bits,
                 thresholds=None, bias=None, a_signed=False):
        weights = np.asarray(weights)
        if weights.ndim != 2 or weights.dtype.kind not in "iu":
            raise TypeError(f"weights must be a 2-D integer array, not {weights.dtype} with shape {weights.shape}")
        if (thresholds is None) == (bias is None):
            raise ValueError("give exactly one of thresholds (hidden layer) or bias (logits layer)")
        self.out_features, self.in_features = weights.shape
        self.w_bits = check_int("w_bits", w_bits, 1, 8)
        lo, hi = weight_range(self.w_bits)
        if weights.min() < lo or weights.max() > hi or (self.w_bits == 1 and (weights == 0).any()):
            raise ValueError(f"weights must be {self.w_bits}-bit weights in {lo}..{hi}")
        self.a_bits = check_int("a_bits", a_bits, 1, 8)
        self.a_signed = bool(a_signed)
        self.acc_bits = check_int("acc_bits", acc_bits, 2, 64)
        self.rows = min(check_int("rows", rows, 1, 256), self.out_features)
        self.cols = min(check_int("cols", cols, 1, 256), self.in_features)
        self.weights = weights.astype(np.int64)
        if thresholds is not None:
            self.kind = "thresholds"
            self.out_bits = check_int("out_bits", out_bits, 1, 8)
            self.thresholds = np.asarray(thresholds, dtype=np.int64)
            if self.thresholds.shape != (self.out_features, (1 << self.out_bits) - 1):
                raise ValueError(f"thresholds must have shape ({self.out_features}, {(1 << self.out_bits) - 1}), "
                                 f"not {self.thresholds.shape}")
            out_shape = unsigned(self.out_bits)
        else:
            self.kind = "bias"
            self.out_bits = check_int("out_bits", out_bits, 2, 64)
            self.bias = np.asarray(bias, dtype=np.int64)
            if self.bias.shape != (self.out_features,):
                raise ValueError(f"bias must have shape ({self.out_features},), not {self.bias.shape}")
            out_shape = signed(self.out_bits)
        self.param_bits = param_bits(self.acc_bits, self.thresholds if self.kind == "thresholds" else self.bias,
                                     self.kind)
        self.plan = EnginePlan(
            in_features=self.in_features, out_features=self.out_features, w_bits=self.w_bits,
            a_bits=self.a_bits, acc_bits=self.acc_bits, out_bits=self.out_bits, kind=self.kind,
            rows=self.rows, cols=self.cols, param_bits=self.param_bits)
        a_shape = signed(self.a_bits) if self.a_signed else unsigned(self.a_bits)
        super().__init__({
            "start": In(1),
            "done": Out(1),
            "busy": Out(1),
            "x": In(data.ArrayLayout(a_shape, self.in_features)),
            "y": Out(data.ArrayLayout(out_shape, self.out_features)),
        })

    # -- derived once (in the plan), read by the estimator and the tests ----------------------------
    @property
    def n_in_tiles(self):
        return self.plan.n_in_tiles

    @property
    def n_out_tiles(self):
        return self.plan.n_out_tiles

    @property
    def n_tiles(self):
        return self.plan.n_tiles

    @property
    def latency(self):
        """Cycles from ``start`` to ``done`` (see :attr:`EnginePlan.latency`)."""
        return self.plan.latency

    def _weight(self, o, i):
        if o < self.out_features and i < self.in_features:
            return int(self.weights[o, i])
        return 1 if self.w_bits == 1 else 0  # padding: multiplied by an input of 0 or never written

    def column_rom(self, c):
        """ROM words of array column c: address ot * n_in_tiles + it holds W[ot*rows + r, it*cols + c]."""
        code = (lambda w: 1 if w > 0 else 0) if self.w_bits == 1 else (lambda w: w)
        return [
            _pack([code(self._weight(ot * self.rows + r, it * self.cols + c)) for r in range(self.rows)], self.w_bits)
            for ot in range(self.n_out_tiles) for it in range(self.n_in_tiles)
        ]

    def _row_rom(self, table, width, pad):
        """One word per output tile, holding ``table`` rows ot*rows .. ot*rows+rows-1 (flattened)."""
        words = []
        for ot in range(self.n_out_tiles):
            vals = []
            for r in range(self.rows):
                o = ot * self.rows + r
                row = table[o] if o < self.out_features else np.full_like(table[0], pad)
                vals.extend(np.atleast_1d(row).tolist())
            words.append(_pack(vals, width))
        return words

    def elaborate(self, platform):
        m = Module()
        rows, cols, n_it, n_ot = self.rows, self.cols, self.n_in_tiles, self.n_out_tiles

        # Issue counter: one tile per cycle while running.
        running = Signal()
        ot = Signal(range(n_ot))
        it = Signal(range(n_it))
        tag_layout = data.StructLayout({
            "valid": 1, "first": 1, "last": 1,
            "addr": range(self.n_tiles), "it": range(n_it), "ot": range(n_ot),
        })
        tags = [Signal(tag_layout, name=f"tag{k}") for k in range(cols + 3)]
        m.d.comb += [
            tags[0].valid.eq(running), tags[0].first.eq(it == 0), tags[0].last.eq(it == n_it - 1),
            tags[0].addr.eq(ot * n_it + it), tags[0].it.eq(it), tags[0].ot.eq(ot),
        ]
        m.d.sync += [tags[k].eq(tags[k - 1]) for k in range(1, len(tags))]
        with m.If(self.start):
            m.d.sync += [running.eq(1), ot.eq(0), it.eq(0), self.busy.eq(1)]
        with m.Elif(running):
            with m.If(it == n_it - 1):
                m.d.sync += it.eq(0)
                with m.If(ot == n_ot - 1):
                    m.d.sync += running.eq(0)
                with m.Else():
                    m.d.sync += ot.eq(ot + 1)
            with m.Else():
                m.d.sync += it.eq(it + 1)

        # Array fed by per-column ROMs, each read ``c`` cycles later than column 0 (the skew).
        m.submodules.array = array = SystolicArray(
            rows=rows, cols=cols, w_bits=self.w_bits, a_bits=self.a_bits, acc_bits=self.acc_bits,
            a_signed=self.a_signed)
        for c in range(cols):
            rom = memory.Memory(shape=unsigned(rows * self.w_bits), depth=self.n_tiles, init=self.column_rom(c))
            m.submodules[f"wrom{c}"] = rom
            port = rom.read_port()
            m.d.comb += [port.addr.eq(tags[c].addr), array.w[c].eq(port.data)]
            choices = Array(self.x[i * cols + c] if i * cols + c < self.in_features else 0 for i in range(n_it))
            x_reg = Signal.like(array.x[c], name=f"x_col{c}")
            m.d.sync += x_reg.eq(choices[tags[c].it])
            m.d.comb += array.x[c].eq(x_reg)

        # Accumulate the partial sums of an output tile (the array's sums align with tags[cols + 1]).
        acc_tag, out_tag = tags[cols + 1], tags[cols + 2]
        acc = [Signal(signed(self.acc_bits), name=f"acc{r}") for r in range(rows)]
        with m.If(acc_tag.valid):
            m.d.sync += [acc[r].eq(Mux(acc_tag.first, 0, acc[r]) + array.sums[r]) for r in range(rows)]

        # Requantize (or add the bias) and write the finished tile into y.
        results = []
        if self.kind == "thresholds":
            width, n_levels = self.param_bits, (1 << self.out_bits) - 1
            table, pad = self.thresholds, int(self.thresholds.max())
        else:
            width, n_levels = self.param_bits, 1
            table, pad = self.bias, 0
        rom = memory.Memory(shape=unsigned(rows * n_levels * width), depth=n_ot,
                            init=self._row_rom(table, width, pad))
        m.submodules.rrom = rom
        port = rom.read_port()
        m.d.comb += port.addr.eq(acc_tag.ot)
        row_params = data.View(data.ArrayLayout(data.ArrayLayout(signed(width), n_levels), rows), port.data)
        for r in range(rows):
            if self.kind == "thresholds":
                rq = ThresholdRequantizer(acc_bits=self.acc_bits, thr_bits=width, out_bits=self.out_bits)
                m.submodules[f"requant{r}"] = rq
                m.d.comb += [rq.acc.eq(acc[r]), rq.thresholds.eq(row_params[r])]
                results.append(rq.q)
            else:
                results.append(acc[r] + row_params[r][0])
        write = out_tag.valid & out_tag.last
        for o in range(self.out_features):
            with m.If(write & (out_tag.ot == o // rows)):
                m.d.sync += self.y[o].eq(results[o % rows])
        m.d.sync += self.done.eq(write & (out_tag.ot == n_ot - 1))
        with m.If(self.done):
            m.d.sync += self.busy.eq(0)
        return m
