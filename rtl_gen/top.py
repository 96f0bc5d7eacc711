"""The network top: one engine per layer, run in sequence on one sample at a time."""

from dataclasses import dataclass
from itertools import pairwise

from amaranth import Module, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from hwq.errors import UserError
from hwq.ir import requant_thresholds

from ._check import check_int
from .engine import EnginePlan, LinearEngine, param_bits

__all__ = ["COUNTER_BITS", "DEFAULT_COLS", "DEFAULT_ROWS", "NetworkTop", "TopPlan", "engine_for_layer",
           "engines_from_ir", "plans_from_ir", "top_latency"]

COUNTER_BITS = 32
# Array size per layer (rows x cols, clipped to the layer) unless the user says otherwise. 4x8 keeps
# the demo network inside an iCE40 UP5K after packing (8x8 needs 5,321 of its 5,280 logic cells).
DEFAULT_ROWS, DEFAULT_COLS = 4, 8


def _check_ops(ir):
    for layer in ir.layers:
        if layer.op != "linear":
            raise UserError(f"layer '{layer.name}': op {layer.op!r} has no RTL engine yet (only linear)")
        if layer.a_signed:
            raise UserError(f"layer '{layer.name}': signed or bipolar input codes have no RTL engine yet")
        if layer.requant_kind != "bias" and (requant_thresholds(ir, layer)[1] < 0).any():
            raise UserError(f"layer '{layer.name}': decreasing requantization (a channel whose batch-norm "
                            "multiplier is negative) has no RTL engine yet")


def _kind(layer):
    """The engine's requantization: multiply-shift layers are built with their (identical) thresholds."""
    return "bias" if layer.requant_kind == "bias" else "thresholds"


def _table(ir, layer):
    return ir.tensors[layer.bias] if layer.requant_kind == "bias" else requant_thresholds(ir, layer)[0]


def plans_from_ir(ir, *, rows=DEFAULT_ROWS, cols=DEFAULT_COLS):
    """The :class:`EnginePlan` of every layer: geometry, latency and cost, without building hardware."""
    _check_ops(ir)
    return [
        EnginePlan(in_features=layer.in_features, out_features=layer.out_features, w_bits=layer.w_storage_bits,
                   a_bits=layer.a_bits, acc_bits=layer.acc_bits, out_bits=layer.out_bits,
                   kind=_kind(layer), rows=min(rows, layer.out_features), cols=min(cols, layer.in_features),
                   param_bits=param_bits(layer.acc_bits, _table(ir, layer), _kind(layer)))
        for layer in ir.layers
    ]


def engine_for_layer(ir, layer, *, rows=DEFAULT_ROWS, cols=DEFAULT_COLS):
    """The :class:`LinearEngine` of one IR layer."""
    _check_ops(ir)
    return LinearEngine(
        weights=ir.tensors[layer.weights], w_bits=layer.w_storage_bits, a_bits=layer.a_bits, a_signed=layer.a_signed,
        acc_bits=layer.acc_bits, rows=rows, cols=cols, out_bits=layer.out_bits,
        thresholds=_table(ir, layer) if _kind(layer) == "thresholds" else None,
        bias=_table(ir, layer) if _kind(layer) == "bias" else None,
    )


def engines_from_ir(ir, *, rows=DEFAULT_ROWS, cols=DEFAULT_COLS):
    """One :class:`LinearEngine` per IR layer."""
    return [engine_for_layer(ir, layer, rows=rows, cols=cols) for layer in ir.layers]


def top_latency(plans):
    """The network top's latency for these engine plans (see :class:`NetworkTop`)."""
    return 2 + sum(p.latency for p in plans)


@dataclass(frozen=True)
class TopPlan:
    """Cost of the network top's own logic (input register, handshakes, cycle counters)."""

    n_layers: int
    in_features: int
    input_bits: int

    @property
    def cost_features(self):
        return {"top_const": 1, "top_counters": COUNTER_BITS * (self.n_layers + 1)}

    @property
    def register_bits(self):
        return {"top_const": 1, "top_in": self.in_features * self.input_bits,
                "top_counters": COUNTER_BITS * (self.n_layers + 1)}

    def resources(self, family):
        from boards.model import plan_resources

        return plan_resources(family, self)


class NetworkTop(wiring.Component):
    """Accepts one input vector, runs the layer engines one after another, presents the logits.

    Timing: the input is accepted in cycle 0 (``i.valid & i.ready``); engine 0 starts in cycle 1;
    engine k+1 starts in the cycle engine k is done; ``o.valid`` rises ``latency = 2 + sum(engine
    latencies)`` cycles after the accept cycle and stays high until ``o.ready``. ``i.ready`` is high
    only when idle (nothing in flight, no output waiting).

    The top also measures itself: ``cycles[k]`` is the number of cycles engine k was occupied
    (start to done) for the last sample, and ``cycles_total`` the cycles from the accept cycle to the
    cycle before ``o.valid``. The testbench reads them to check the analytic latencies.

    Members
    -------
    i : In(stream.Signature(ArrayLayout(unsigned(input_bits), in_features)))
    o : Out(stream.Signature(ArrayLayout(signed(logit_bits), n_outputs)))
    cycles : Out(ArrayLayout(unsigned(32), n_layers))
    cycles_total : Out(unsigned(32))
    """

    def __init__(self, engines, *, input_bits, names=None):
        if not engines:
            raise ValueError("a network needs at least one engine")
        self.engines = list(engines)
        self.names = list(names) if names is not None else [f"layer{k}" for k in range(len(engines))]
        self.input_bits = check_int("input_bits", input_bits, 1, 8)
        for a, b in pairwise(self.engines):
            if (a.out_features, a.out_bits) != (b.in_features, b.a_bits):
                raise ValueError(f"engine outputs {a.out_features} x {a.out_bits} bits do not match the next "
                                 f"engine's inputs {b.in_features} x {b.a_bits} bits")
        first, last = self.engines[0], self.engines[-1]
        super().__init__({
            "i": In(stream.Signature(data.ArrayLayout(unsigned(self.input_bits), first.in_features))),
            "o": Out(stream.Signature(data.ArrayLayout(signed(last.out_bits), last.out_features))),
            "cycles": Out(data.ArrayLayout(unsigned(COUNTER_BITS), len(self.engines))),
            "cycles_total": Out(unsigned(COUNTER_BITS)),
        })

    @property
    def latency(self):
        """Cycles from the input's accept cycle to the first cycle of ``o.valid``."""
        return top_latency(e.plan for e in self.engines)

    @property
    def initiation_interval(self):
        """Cycles between accepted inputs when inputs are always offered and outputs always taken."""
        return self.latency + 1

    def elaborate(self, platform):
        m = Module()
        for name, engine in zip(self.names, self.engines, strict=True):
            m.submodules[name] = engine

        in_flight = Signal()
        x_in = Signal.like(self.i.payload, name="x_in")
        start0 = Signal()
        accept = self.i.valid & self.i.ready
        m.d.comb += self.i.ready.eq(~in_flight & ~self.o.valid)
        m.d.sync += start0.eq(accept)
        with m.If(accept):
            m.d.sync += [x_in.eq(self.i.payload), in_flight.eq(1)]

        starts = [start0] + [e.done for e in self.engines[:-1]]
        source = x_in
        for engine, start in zip(self.engines, starts, strict=True):
            m.d.comb += [engine.x.eq(source), engine.start.eq(start)]
            source = engine.y
        last = self.engines[-1]
        m.d.comb += self.o.payload.eq(last.y)
        with m.If(last.done):
            m.d.sync += [self.o.valid.eq(1), in_flight.eq(0)]
        with m.If(self.o.valid & self.o.ready):
            m.d.sync += self.o.valid.eq(0)

        # Self-measurement: occupancy of each engine and the whole latency, in cycles.
        for k, (engine, start) in enumerate(zip(self.engines, starts, strict=True)):
            with m.If(start):
                m.d.sync += self.cycles[k].eq(1)
            with m.Elif(engine.busy & ~engine.done):
                m.d.sync += self.cycles[k].eq(self.cycles[k] + 1)
        with m.If(accept):
            m.d.sync += self.cycles_total.eq(1)
        with m.Elif(in_flight):
            m.d.sync += self.cycles_total.eq(self.cycles_total + 1)
        return m
