"""Amaranth-simulator tests of each component against a deliberately naive numpy model."""

import gc

import numpy as np
import pytest
from amaranth.sim import Simulator

from hwq import golden
from hwq.intrange import max_int, min_int, weight_range
from rtl_gen.engine import LinearEngine
from rtl_gen.pe import ProcessingElement
from rtl_gen.requant import ThresholdRequantizer
from rtl_gen.systolic import SystolicArray
from rtl_gen.top import NetworkTop, engine_for_layer, engines_from_ir

from .conftest import random_inputs, random_ir


def _run(dut, testbench):
    sim = Simulator(dut)
    sim.add_clock(1e-8, if_exists=True)
    sim.add_testbench(testbench)
    sim.run()


def _pe_weight_bits(w, w_bits):
    return (1 if w > 0 else 0) if w_bits == 1 else w & ((1 << w_bits) - 1)


@pytest.mark.parametrize("w_bits,a_bits", [(1, 1), (1, 4), (2, 2), (2, 4), (4, 4), (8, 8), (3, 7)])
def test_pe_multiply_accumulate(w_bits, a_bits):
    rng = np.random.default_rng(w_bits * 10 + a_bits)
    acc_bits = w_bits + a_bits + 4
    dut = ProcessingElement(w_bits=w_bits, a_bits=a_bits, acc_bits=acc_bits)
    lo, hi = weight_range(w_bits)
    ws = [lo, hi, *rng.integers(lo, hi + 1, 30)]
    if w_bits == 1:
        ws = [w if w != 0 else 1 for w in ws]
    cases = [(w, x, p) for w, x, p in zip(ws, [max_int(a_bits, False), 0, *rng.integers(0, 2**a_bits, 30)],
                                          rng.integers(-(2 ** (acc_bits - 2)), 2 ** (acc_bits - 2), 32), strict=True)]

    async def tb(ctx):
        for w, x, p in cases:
            ctx.set(dut.w, _pe_weight_bits(int(w), w_bits))
            ctx.set(dut.x, int(x))
            ctx.set(dut.psum_i, int(p))
            await ctx.tick()
            assert ctx.get(dut.psum_o) == p + w * x, (w, x, p)

    _run(dut, tb)


@pytest.mark.parametrize("rows,cols,w_bits,a_bits", [(1, 1, 2, 2), (3, 5, 4, 3), (4, 4, 1, 2), (2, 3, 8, 8)])
def test_systolic_array_with_skewed_inputs(rows, cols, w_bits, a_bits):
    rng = np.random.default_rng(rows * cols)
    acc_bits = w_bits + a_bits + 4
    dut = SystolicArray(rows=rows, cols=cols, w_bits=w_bits, a_bits=a_bits, acc_bits=acc_bits)
    lo, hi = weight_range(w_bits)
    n = 12
    W = rng.integers(lo, hi + 1, size=(n, cols, rows))
    if w_bits == 1:
        W[W == 0] = 1
    X = rng.integers(0, 2**a_bits, size=(n, cols))
    expected = np.einsum("ncr,nc->nr", W, X)

    async def tb(ctx):
        got = {}
        for t in range(n + cols + 1):
            for c in range(cols):
                k = t - c  # column c sees set k, c cycles late
                if 0 <= k < n:
                    for r in range(rows):
                        ctx.set(dut.w[c][r], _pe_weight_bits(int(W[k, c, r]), w_bits))
                    ctx.set(dut.x[c], int(X[k, c]))
            await ctx.tick()
            k = t + 1 - dut.latency
            if 0 <= k < n:
                got[k] = [ctx.get(dut.sums[r]) for r in range(rows)]
        for k in range(n):
            assert got[k] == expected[k].tolist(), k

    _run(dut, tb)


def test_threshold_requantizer_counts_reached_thresholds():
    dut = ThresholdRequantizer(acc_bits=8, thr_bits=9, out_bits=2)
    thr = [-5, 0, 0]

    async def tb(ctx):
        ctx.set(dut.thresholds, thr)
        for acc in range(-128, 128):
            ctx.set(dut.acc, acc)
            assert ctx.get(dut.q) == sum(acc >= t for t in thr)

    _run(dut, tb)


def _engine_case(rng, in_f, out_f, w_bits, a_bits, out_bits, rows, cols, kind, extreme=False):
    ir = random_ir(rng, [in_f, out_f, 3] if kind == "thresholds" else [in_f, out_f],
                   [w_bits, 2] if kind == "thresholds" else [w_bits], [a_bits, out_bits],
                   input_bits=a_bits, extreme=extreme)
    layer = ir.layers[0]
    return ir, layer, engine_for_layer(ir, layer, rows=rows, cols=cols)


@pytest.mark.parametrize("in_f,out_f,w_bits,a_bits,out_bits,rows,cols,kind", [
    (10, 7, 2, 4, 2, 3, 4, "thresholds"),    # ragged tiles both ways
    (16, 8, 1, 1, 1, 4, 8, "thresholds"),    # binary weights, 1-bit activations
    (9, 5, 8, 8, 3, 2, 3, "thresholds"),     # widest widths
    (12, 10, 3, 2, 0, 8, 8, "bias"),         # logits layer
    (5, 3, 4, 4, 0, 1, 1, "bias"),           # 1x1 array
])
def test_engine_matches_golden_and_its_latency(in_f, out_f, w_bits, a_bits, out_bits, rows, cols, kind):
    rng = np.random.default_rng(in_f * out_f + w_bits)
    ir, _, dut = _engine_case(rng, in_f, out_f, w_bits, a_bits, out_bits, rows, cols, kind)
    X = random_inputs(rng, ir, 6)
    X[0] = max_int(a_bits, False)  # all-max input
    expected = golden.run_layers(ir, X)[0]

    async def tb(ctx):
        for x, y in zip(X, expected, strict=True):
            ctx.set(dut.x, x.tolist())
            ctx.set(dut.start, 1)
            await ctx.tick()  # the start cycle ends
            ctx.set(dut.start, 0)
            cycles = 1
            while not ctx.get(dut.done):
                await ctx.tick()
                cycles += 1
            assert cycles == dut.latency
            assert [ctx.get(dut.y[o]) for o in range(out_f)] == y.tolist()

    _run(dut, tb)


@pytest.mark.parametrize("w_bits,a_bits", [(8, 8), (2, 4), (1, 1)])
def test_engine_worst_case_accumulation(w_bits, a_bits):
    """Most negative weights times all-max inputs: the accumulator's proven width must hold it."""
    rng = np.random.default_rng(7)
    ir, _, dut = _engine_case(rng, 24, 4, w_bits, a_bits, 0, 2, 5, "bias", extreme=True)
    x = np.full(24, max_int(a_bits, False))
    expected = golden.run_layers(ir, x[None])[0][0]
    assert expected.min() == min_int(w_bits, True) * 24 * max_int(a_bits, False) + ir.tensors["l0.bias"].min() \
        or w_bits == 1

    async def tb(ctx):
        ctx.set(dut.x, x.tolist())
        ctx.set(dut.start, 1)
        await ctx.tick()
        ctx.set(dut.start, 0)
        while not ctx.get(dut.done):
            await ctx.tick()
        assert [ctx.get(dut.y[o]) for o in range(4)] == expected.tolist()

    _run(dut, tb)


def test_network_top_matches_golden_and_counts_its_cycles():
    rng = np.random.default_rng(3)
    ir = random_ir(rng, [11, 7, 6, 4], [2, 3, 1], [4, 2, 3])
    engines = engines_from_ir(ir, rows=3, cols=4)
    dut = NetworkTop(engines, input_bits=4, names=[la.name for la in ir.layers])
    X = random_inputs(rng, ir, 4)
    expected = golden.run(ir, X)

    async def tb(ctx):
        ctx.set(dut.o.ready, 1)
        for x, y in zip(X, expected, strict=True):
            assert ctx.get(dut.i.ready)
            ctx.set(dut.i.payload, x.tolist())
            ctx.set(dut.i.valid, 1)
            await ctx.tick()  # accept cycle ends
            ctx.set(dut.i.valid, 0)
            cycles = 1
            while not ctx.get(dut.o.valid):
                await ctx.tick()
                cycles += 1
            assert cycles == dut.latency
            assert list(ctx.get(dut.o.payload)) == y.tolist()
            assert list(ctx.get(dut.cycles)) == [e.latency for e in engines]
            assert ctx.get(dut.cycles_total) == dut.latency
            await ctx.tick()

    _run(dut, tb)


# An object whose constructor raised is never elaborated; Amaranth warns when it is collected, so the
# tests below collect it themselves, inside the filter.
_unused = pytest.mark.filterwarnings("ignore:.*created but never used")


@_unused
@pytest.mark.parametrize("kwargs, error, message", [
    (dict(w_bits=0, a_bits=2, acc_bits=8), ValueError, r"w_bits must be an integer 1..8, not 0"),
    (dict(w_bits=2, a_bits=9, acc_bits=8), ValueError, r"a_bits must be an integer 1..8, not 9"),
    (dict(w_bits=2, a_bits=2, acc_bits=1), ValueError, r"acc_bits must be an integer 2..64, not 1"),
    (dict(w_bits=2.0, a_bits=2, acc_bits=8), TypeError, r"w_bits must be an integer 1..8, not 2.0"),
])
def test_pe_constructor_errors(kwargs, error, message):
    with pytest.raises(error, match=message):
        ProcessingElement(**kwargs)
    gc.collect()


@_unused
def test_engine_constructor_errors():
    w = np.zeros((2, 3), dtype=np.int64)
    with pytest.raises(ValueError, match="give exactly one of thresholds"):
        LinearEngine(weights=w, w_bits=2, a_bits=2, acc_bits=8, rows=1, cols=1, out_bits=2)
    with pytest.raises(ValueError, match=r"weights must be 2-bit weights in -2..1"):
        LinearEngine(weights=w + 3, w_bits=2, a_bits=2, acc_bits=8, rows=1, cols=1, out_bits=8, bias=[0, 0])
    with pytest.raises(ValueError, match=r"thresholds must have shape \(2, 3\)"):
        LinearEngine(weights=w, w_bits=2, a_bits=2, acc_bits=8, rows=1, cols=1, out_bits=2,
                     thresholds=np.zeros((2, 2), dtype=np.int64))
    gc.collect()


@pytest.mark.parametrize("acc_bits,out_bits,shift", [(6, 5, 0), (12, 8, 7), (20, 6, 19), (9, 5, 3)])
def test_multiply_shift_requantizer_against_golden(acc_bits, out_bits, shift):
    from hwq.requant import multiply_shift_apply
    from rtl_gen.requant import MultiplyShiftRequantizer

    rng = np.random.default_rng(acc_bits * 100 + shift)
    mult_bits, offset_bits = 16, acc_bits + 16
    dut = MultiplyShiftRequantizer(acc_bits=acc_bits, mult_bits=mult_bits, offset_bits=offset_bits, shift=shift,
                                   out_bits=out_bits)
    lo, hi = -(2 ** (acc_bits - 1)), 2 ** (acc_bits - 1) - 1
    m_lo, m_hi = -(2 ** (mult_bits - 1)), 2 ** (mult_bits - 1) - 1
    b_lim = 2 ** (offset_bits - 1)
    cases = [(lo, m_lo, -b_lim), (lo, m_lo, b_lim - 1), (hi, m_hi, b_lim - 1), (hi, m_lo, -b_lim), (0, 1, 0),
             *zip(rng.integers(lo, hi + 1, 60), rng.integers(m_lo, m_hi + 1, 60), rng.integers(-b_lim, b_lim, 60),
                  strict=True)]
    n = 1 << out_bits

    async def tb(ctx):
        for acc, mult, off in cases:
            ctx.set(dut.acc, int(acc))
            ctx.set(dut.mult, int(mult))
            ctx.set(dut.offset, int(off))
            await ctx.delay(1e-9)
            want = multiply_shift_apply(np.int64(acc), np.int64(mult), np.int64(off), shift, n)
            assert ctx.get(dut.q) == int(want), (acc, mult, off)

    sim = Simulator(dut)
    sim.add_testbench(tb)
    sim.run()


@pytest.mark.parametrize("lanes,simd", [(1, 1), (3, 8), (4, 27), (2, 64)])
def test_xnor_popcount_against_golden(lanes, simd):
    from rtl_gen.xnor import XnorPopcount

    rng = np.random.default_rng(lanes * 1000 + simd)
    dut = XnorPopcount(lanes=lanes, simd=simd)
    cases = [(np.ones(simd, int), np.ones((lanes, simd), int), np.ones(simd, int)),   # all agree: +simd
             (np.ones(simd, int), -np.ones((lanes, simd), int), np.ones(simd, int)),  # all disagree: -simd
             (np.ones(simd, int), np.ones((lanes, simd), int), np.zeros(simd, int))]  # all masked: 0
    for _ in range(40):
        cases.append((rng.choice([-1, 1], simd), rng.choice([-1, 1], (lanes, simd)), rng.integers(0, 2, simd)))

    def bits(v):
        return sum(1 << i for i, b in enumerate(v) if b > 0)

    async def tb(ctx):
        for x, w, mask in cases:
            ctx.set(dut.x, bits(x))
            ctx.set(dut.w, [bits(row) for row in w])
            ctx.set(dut.mask, bits(mask))
            await ctx.tick()
            want = (w * (x * mask)).sum(axis=1)  # the ±1 dot product over the unmasked terms
            assert [ctx.get(dut.acc[lane]) for lane in range(lanes)] == want.tolist()
            if mask.all():  # and the golden model's popcount form of the same product
                assert np.array_equal(golden.xnor_popcount(x[None, :], w)[0], want)

    _run(dut, tb)


def test_network_top_builds_multiply_shift_layers_from_their_thresholds(trained_run):
    """A trained MLP exported with every hidden layer as a multiply-shift: the engines compare against
    the equivalent thresholds, and the network equals the golden model (which shifts)."""
    from hwq.data import load_dataset
    from hwq.export import export_model
    from hwq.train import load_run

    net, _ = load_run(trained_run[0])
    ir = export_model(net, requant="multiply-shift")
    assert [la.requant_kind for la in ir.layers] == ["multiply_shift", "multiply_shift", "bias"]
    engines = engines_from_ir(ir, rows=4, cols=8)
    dut = NetworkTop(engines, input_bits=4, names=[la.name for la in ir.layers])
    X = load_dataset().x_test[:3]
    expected = golden.run(ir, X)

    async def tb(ctx):
        ctx.set(dut.o.ready, 1)
        for x, y in zip(X, expected, strict=True):
            ctx.set(dut.i.payload, x.tolist())
            ctx.set(dut.i.valid, 1)
            await ctx.tick()
            ctx.set(dut.i.valid, 0)
            while not ctx.get(dut.o.valid):
                await ctx.tick()
            assert list(ctx.get(dut.o.payload)) == y.tolist()
            await ctx.tick()

    _run(dut, tb)
