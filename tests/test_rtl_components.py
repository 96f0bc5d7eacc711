"""Amaranth-simulator tests of each component against a deliberately naive numpy model."""

import gc
from dataclasses import replace

import numpy as np
import pytest
from amaranth.sim import Simulator

from boards.calibrate import cnn_ir, network_ir, random_layer
from hwq import golden
from hwq.errors import UserError
from hwq.intrange import act_levels, max_int, min_int, range_bits, weight_range
from hwq.ir import Layer, accumulator_bounds, validate
from rtl_gen.engine import EnginePlan, LayerEngine
from rtl_gen.folding import DEFAULT_LUT_FRACTION, choose_folding
from rtl_gen.pe import ProcessingElement
from rtl_gen.plan import Folding, input_word_indices, network_plan
from rtl_gen.requant import ThresholdRequantizer
from rtl_gen.systolic import SystolicArray
from rtl_gen.top import NetworkTop

from .conftest import random_ir


def _run(dut, testbench):
    sim = Simulator(dut)
    sim.add_clock(1e-8, if_exists=True)
    sim.add_testbench(testbench)
    sim.run()


def _pe_weight_bits(w, w_bits):
    return (1 if w > 0 else 0) if w_bits == 1 else w & ((1 << w_bits) - 1)


@pytest.mark.parametrize("w_bits,a_bits", [(1, 1), (1, 4), (2, 2), (2, 4), (4, 4), (8, 8), (3, 7), (9, 8), (12, 6),
                                           (17, 8)])
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


@pytest.mark.parametrize("rows,cols,w_bits,a_bits", [(1, 1, 2, 2), (3, 5, 4, 3), (4, 4, 1, 2), (2, 3, 8, 8), (2, 2, 9, 3),
                                                     (2, 3, 12, 6)])
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


@pytest.mark.parametrize("registered", [False, True])
def test_threshold_requantizer_counts_reached_thresholds(registered):
    """Increasing channels count ``acc >= T``; decreasing ones (sign -1) count ``-acc >= T`` from thresholds
    stored as 1 - T (no negation in hardware); registered: the same one cycle later."""
    from rtl_gen.engine import compare_thresholds

    dut = ThresholdRequantizer(acc_bits=8, thr_bits=9, out_bits=2, registered=registered)
    thr = np.array([[-5, 0, 0]])

    async def tb(ctx):
        for sign in (1, -1):
            ctx.set(dut.thresholds, compare_thresholds(thr, [sign])[0].tolist())
            ctx.set(dut.neg, int(sign < 0))
            for acc in range(-128, 128):
                ctx.set(dut.acc, acc)
                if registered:
                    await ctx.tick()
                assert ctx.get(dut.q) == sum(sign * acc >= t for t in thr[0]), (sign, acc)

    _run(dut, tb)


def run_top(ir, widths, X, *, stall=None):
    """Run input vectors through the network top in Amaranth's simulator, their words offered back to back
    (so stages overlap); return (outputs, accept cycles, output cycles, hardware stage counters)."""
    plan = network_plan(ir, widths)
    dut = NetworkTop(plan)
    outs, accepts, valids, counters = [], [], [], []
    clock = [0]
    order = input_word_indices(plan.input_shape, plan.buffers[0].lanes)
    lo, step, _ = act_levels(ir.input_bits, ir.input_signed)
    X = (np.asarray(X, dtype=np.int64) - lo) // step  # the top takes level indices

    async def drive(ctx):  # counts its own cycles, like the monitor: both start at cycle 0
        cycle = 0
        for x in X:
            for word in order:
                ctx.set(dut.i.payload, [int(x[j]) for j in word])
                ctx.set(dut.i.valid, 1)
                while True:
                    ready = ctx.get(dut.i.ready)
                    await ctx.tick()
                    cycle += 1
                    if ready:
                        break
            accepts.append(cycle - 1)  # a sample is accepted with its last word
        ctx.set(dut.i.valid, 0)

    async def monitor(ctx):
        rng = np.random.default_rng(0)
        while len(outs) < len(X):
            ready = int(stall is None or rng.random() >= stall)
            ctx.set(dut.o.ready, ready)
            if ctx.get(dut.o.valid):
                if not valids or valids[-1][0] != len(outs):
                    valids.append((len(outs), clock[0]))
                if ready:
                    outs.append([int(v) for v in ctx.get(dut.o.payload)])
                    counters.append(list(ctx.get(dut.cycles)))
            await ctx.tick()
            clock[0] += 1

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(drive)
    sim.add_testbench(monitor)
    sim.run()
    return plan, np.array(outs), accepts, [c for _, c in valids], counters


def _check_network(ir, widths, X):
    plan, got, accepts, valids, counters = run_top(ir, widths, X)
    np.testing.assert_array_equal(got, golden.run(ir, X))
    # the first sample meets an empty pipeline: its latency is the analytic one
    assert valids[0] - accepts[0] == plan.latency
    assert counters[-1] == [s.plan.latency for s in plan.stages]
    return plan, valids


def _cnn_ir(rng, *, c0=1, side=6, c=(4, 4), bits=(3, 4, 2, 2, 5), binary=False, padding=1, kernel=3, extreme=False):
    """conv, maxpool, conv, maxpool, flatten, linear (multi-bit or binary) with random integers;
    ``bits`` = (input, conv1 weights, conv1 outputs, conv2 weights, conv2 outputs), fc weights 4 bits."""
    return cnn_ir(rng, c0=c0, side=side, channels=c, bits=(*bits, 4), n_out=5, binary=binary, kernel=kernel,
                  padding=padding, extreme=extreme)


def _inputs(rng, ir, n):
    x = rng.integers(0, max_int(ir.input_bits, False) + 1, size=(n, ir.in_features))
    x[0] = max_int(ir.input_bits, False)  # all-max input
    x[1] = 0
    return x


@pytest.mark.parametrize("widths, bits", [([1, 1, 1, 1], (12, 6, 16, 12, 12, 4)), ([1, 2, 4, 3], (12, 4, 14, 3, 10, 3))])
def test_wide_activations_match_golden(widths, bits, tmp_path):
    """Activations above 8 bits (12-bit inputs, codes of up to 16 bits after multiply-shift requantizations, a
    maxpool of wide codes, 12-bit weights): equal integers and analytic cycles in Amaranth. The QONNX export,
    run by qonnx's executor, gives the same integers, and imports back to the same integer function; where an accumulator outgrows float32's exact integers
    (32 bits here) it is refused, naming the layer."""
    from hwq.qonnx_export import run_qonnx, write_qonnx
    from hwq.qonnx_import import import_qonnx

    rng = np.random.default_rng(sum(widths))
    ir = cnn_ir(rng, c0=1, side=6, channels=(4, 4), bits=bits, n_out=3)
    assert [la.out_bits for la in ir.layers[:4]] == [bits[2], bits[2], bits[4], bits[4]]
    assert [la.requant_kind for la in ir.layers if la.op == "conv2d"] == ["multiply_shift"] * 2
    validate(ir, "test")
    x = rng.integers(0, 1 << 12, size=(4, ir.in_features))
    x[0], x[1] = (1 << 12) - 1, 0
    _check_network(ir, widths, x)
    if max(la.acc_bits for la in ir.layers if la.acc_bits) > 25:
        with pytest.raises(UserError, match=r"layer 'conv2': acc_bits 32 > 25: its accumulators are not exact"):
            write_qonnx(ir, tmp_path / "m.onnx")
        return
    write_qonnx(ir, tmp_path / "m.onnx")
    np.testing.assert_array_equal(run_qonnx(tmp_path / "m.onnx", x, ir.input_shape), golden.run(ir, x))
    # and imported back: the 2^bits - 1 thresholds per channel become a multiply-shift again
    more = np.concatenate([x, rng.integers(0, 1 << 12, size=(60, ir.in_features))])
    back, check = import_qonnx(tmp_path / "m.onnx", tmp_path / "back", inputs=more)
    assert check["equal"] and check["samples"] == len(more)
    assert [(la.op, la.out_bits, la.requant_kind) for la in back.layers] == \
        [(la.op, la.out_bits, la.requant_kind) for la in ir.layers]
    np.testing.assert_array_equal(golden.run(back, more), golden.run(ir, more))


@pytest.mark.parametrize("widths", [[1, 1, 1, 1], [1, 4, 2, 5], [1, 2, 4, 3]])
@pytest.mark.parametrize("binary", [False, True])
def test_cnn_top_matches_golden_with_any_folding(widths, binary):
    """Line-buffer-free sliding window with zero padding, maxpool, flatten (weights permuted to the
    buffer order), the systolic and XNOR engines, layer-pipelined: equal integers and analytic cycles."""
    rng = np.random.default_rng(sum(widths) + binary)
    ir = _cnn_ir(rng, binary=binary)
    _check_network(ir, widths, _inputs(rng, ir, 4))


@pytest.mark.parametrize("pool, binary, signs, widths", [
    ((None, 1), False, False, [1, 4, 3]),   # global average pooling (the kernel of the whole map)
    ((None, 1), True, True, [2, 2, 1]),     # of bipolar codes, some channels decreasing
    ((2, 2), False, True, [1, 2, 5]),       # 2 x 2 windows, stride 2
    ((3, 1), False, False, [2, 1, 2]),      # overlapping 3 x 3 windows
])
def test_average_pool_matches_golden(pool, binary, signs, widths, tmp_path):
    """conv -> avgpool (window sums requantized by per-channel thresholds) -> flatten -> linear: equal integers
    and analytic cycles, with the sums' level steps and the thresholds' folded constant on every kind of code;
    the QONNX export (a depthwise Conv of ones, then MultiThreshold) run by qonnx's executor and imported back:
    the same integers."""
    from boards.calibrate import _flatten, avgpool_layer, network_ir, random_layer
    from hwq.qonnx_export import run_qonnx, write_qonnx
    from hwq.qonnx_import import import_qonnx

    rng = np.random.default_rng(sum(widths) + binary)
    kernel, stride = pool
    conv, t1 = random_layer(rng, "conv", 2, 4, 3, 4, 1 if binary else 3, op="conv2d", in_shape=[2, 5, 5],
                            out_signed=binary)
    bits, signed = conv.out_bits, conv.out_signed
    avg, t2 = avgpool_layer(rng, "avg", 4, 5, bits, signed, 2, kernel=kernel, stride=stride, signs=signs)
    side = avg.out_shape[1]
    fc, t3 = random_layer(rng, "fc", 4 * side * side, 3, 3, 2, None)
    ir = network_ir([conv, avg, _flatten(4, side, 2, False), fc], {**t1, **t2, **t3}, input_bits=4,
                    input_shape=[2, 5, 5])
    validate(ir, "test")
    x = _inputs(rng, ir, 4)
    plan, _ = _check_network(ir, widths, x)
    write_qonnx(ir, tmp_path / "m.onnx")
    np.testing.assert_array_equal(run_qonnx(tmp_path / "m.onnx", x, ir.input_shape), golden.run(ir, x))
    back, _ = import_qonnx(tmp_path / "m.onnx", tmp_path / "back", inputs=x)  # and back: the same integer function
    assert [la.op for la in back.layers] == [la.op for la in ir.layers]
    np.testing.assert_array_equal(golden.run(back, x), golden.run(ir, x))
    assert plan.stages[1].kind == "avgpool" and plan.stages[1].plan.n_reads == 4 // widths[1] * side * side * (
        kernel or 5) ** 2


@pytest.mark.parametrize("widths", [[1, 2, 2, 2, 4, 4, 4, 2, 4, 4, 3], [1, 2, 1, 2, 2, 1, 1, 4, 2, 2, 5]])
def test_resnet8_shortcut_convolutions_match_golden(widths):
    """The MLPerf Tiny ResNet-8's shape, small: an identity residual stack, then two stacks whose adds take a
    1x1 stride-2 shortcut convolution of the stack's input (one stage each: the shortcut's engine reads the
    input from the ring, the add reads the branch), a signed branch, decreasing add channels, global average
    pooling: equal integers, analytic cycles, and the interval of the slowest stage."""
    from boards.calibrate import resnet8_ir

    rng = np.random.default_rng(sum(widths))
    ir = resnet8_ir(rng, c0=1, side=8, channels=(2, 4, 4), w_bits=3, a_bits=2, input_bits=3)
    validate(ir, "test")
    plan, valids = _check_network(ir, widths, _inputs(rng, ir, 3))
    assert [s.kind for s in plan.stages].count("shortcut") == 2 and "s2short" not in [s.layer.name for s in plan.stages]
    assert [(s.producer, s.consumer) for s in plan.skips] == [(0, 3), (3, 6), (6, 9)]
    assert np.diff(valids).max() == plan.initiation_interval == max(s.period for s in plan.stages)


def test_a_layer_reading_an_earlier_layer_must_be_a_shortcut_before_its_add():
    from boards.calibrate import resnet8_ir

    ir = resnet8_ir(np.random.default_rng(0), c0=1, side=8, channels=(2, 4, 4), w_bits=3, a_bits=2, input_bits=3)
    i = next(k for k, la in enumerate(ir.layers) if la.name == "s2short")
    ir.layers[i - 1], ir.layers[i] = ir.layers[i], ir.layers[i - 1]  # the shortcut before the branch's last layer
    ir.layers[i].inputs, ir.layers[i - 1].inputs = ["s2a"], ["add1"]
    with pytest.raises(UserError, match=r"layer 's2short' reads \['add1'\], not the layer before it \('s2a'\).*a shortcut "
                                        r"layer placed right before the add"):
        network_plan(ir, [1] * 11)


@pytest.mark.parametrize("stride,padding,kernel", [(2, 1, 3), (1, 0, 2), (2, 2, 3)])
def test_conv_window_stride_and_padding(stride, padding, kernel):
    from boards.calibrate import network_ir, random_layer
    from hwq.ir import Layer

    rng = np.random.default_rng(stride * 10 + padding)
    conv, t1 = random_layer(rng, "conv", 2, 4, 3, 4, 2, op="conv2d", in_shape=[2, 7, 7], kernel=kernel, padding=padding,
                            stride=stride)
    side = conv.out_shape[1]
    flat = Layer(name="flatten", op="flatten", in_shape=conv.out_shape, out_shape=[4 * side * side], a_bits=2,
                 a_signed=False, out_bits=2, out_signed=False)
    fc, t2 = random_layer(rng, "fc", 4 * side * side, 3, 2, 2, None)
    ir = network_ir([conv, flat, fc], {**t1, **t2}, input_bits=4, input_shape=[2, 7, 7])
    validate(ir, "test")
    _check_network(ir, [2, 4, 3], _inputs(rng, ir, 3))


@pytest.mark.parametrize("w_bits,a_bits", [(8, 8), (2, 4), (1, 1), (1, 5), (5, 3), (12, 6), (16, 8)])
def test_worst_case_accumulation_and_signed_minimum(w_bits, a_bits):
    """Most negative weights (the signed minimum) times all-max inputs in every layer: the accumulators'
    proven widths must hold the sums; weight bits 1..16 and input bits 1..8 across the cases."""
    rng = np.random.default_rng(w_bits * 8 + a_bits)
    ir = random_ir(rng, [24, 6, 4], [w_bits, w_bits], [a_bits, min(a_bits, 4)], input_bits=a_bits, extreme=True)
    x = np.full((2, 24), max_int(a_bits, False))
    acc = (ir.tensors["l0.weight"].astype(np.int64) @ x[0])
    assert acc.min() == min_int(w_bits, True) * 24 * max_int(a_bits, False) or w_bits == 1
    _check_network(ir, [4, 3, 2], x)
    ir = _cnn_ir(rng, bits=(a_bits, w_bits, 2, w_bits, 3), extreme=True)
    _check_network(ir, [1, 2, 2, 5], _inputs(rng, ir, 2))


def test_eight_bit_odd_grid_weights_take_nine_storage_bits():
    """UniQ/SINAREQ's 8-bit mid-rise codes are the odd integers in -255..255: 9 bits in the engines."""
    rng = np.random.default_rng(9)
    ir = random_ir(rng, [10, 6, 3], [8, 8], [4, 3], extreme=True)
    for layer in ir.layers:
        w = ir.tensors[layer.weights].astype(np.int16)
        ir.tensors[layer.weights] = np.where(rng.random(w.shape) < 0.5, -255, 2 * w + 1).astype(np.int16)
        layer.w_grid = "odd"
        lo, hi = accumulator_bounds(ir, layer)
        layer.acc_bits = range_bits(int(lo.min()), int(hi.max()))
        if layer.requant_kind == "bias":  # the logits layer: its output is the accumulator plus the bias
            b = ir.tensors[layer.bias]
            layer.out_bits = range_bits(int((lo + b).min()), int((hi + b).max()))
    validate(ir, "test")
    plan, _ = _check_network(ir, [2, 3, 1], _inputs(rng, ir, 3))
    assert [s.plan.w_bits for s in plan.stages] == [9, 9]


@pytest.mark.parametrize("conv", [False, True])
def test_signed_multi_bit_inputs(conv):
    """Signed 8-bit network inputs (MNIST-1D's samples) and a signed 3-bit hidden code: buffers hold level
    indices, the engine multiplies two's complement codes; extreme inputs (-128 and 127 everywhere), and
    zero padding is code 0."""
    rng = np.random.default_rng(11)
    if conv:
        l0, t0 = random_layer(rng, "c0", 2, 4, 4, 8, 3, op="conv2d", in_shape=[2, 5, 5], in_signed=True,
                              out_signed=True)
        fl = Layer(name="flat", op="flatten", in_shape=[4, 5, 5], out_shape=[100], a_bits=3, a_signed=True,
                   out_bits=3, out_signed=True)
        l1, t1 = random_layer(rng, "l1", 100, 5, 3, 3, None, in_signed=True)
        ir = network_ir([l0, fl, l1], {**t0, **t1}, input_bits=8, input_shape=[2, 5, 5])
        widths = [2, 4, 5, 1]
    else:
        l0, t0 = random_layer(rng, "l0", 12, 6, 4, 8, 3, in_signed=True, out_signed=True)
        l1, t1 = random_layer(rng, "l1", 6, 4, 3, 3, None, in_signed=True)
        ir = network_ir([l0, l1], {**t0, **t1}, input_bits=8)
        widths = [3, 2, 1]
    ir = replace(ir, input_signed=True)
    validate(ir, "test")
    x = rng.integers(-128, 128, size=(4, ir.in_features))
    x[0], x[1] = -128, 127
    _check_network(ir, widths, x)


def test_bipolar_inputs_to_multi_bit_weights_are_refused():
    """Signed multi-bit inputs have an engine; bipolar (-1/+1) inputs only with 1-bit weights (the XNOR core).
    Once the signed-input work lifted the old refusal, such a layer simulated wrong by one; it is refused."""
    rng = np.random.default_rng(1)
    l0, t0 = random_layer(rng, "l0", 8, 4, 3, 1, 2, in_signed=True)
    l1, t1 = random_layer(rng, "l1", 4, 3, 2, 2, None)
    ir = replace(network_ir([l0, l1], {**t0, **t1}, input_bits=1), input_signed=True)
    validate(ir, "test")
    with pytest.raises(UserError, match=r"layer 'l0': bipolar \(-1/\+1\) input codes with 3-bit weights"):
        network_plan(ir, [2, 2, 1])


def test_decreasing_channels_are_compared_negated():
    """A channel with a negative batch-norm multiplier (sign -1): q = #{k : -acc >= T[k]}."""
    rng = np.random.default_rng(4)
    ir = random_ir(rng, [12, 6, 3], [3, 2], [4, 2])
    layer = ir.layers[0]
    signs = np.array([1, -1, 1, -1, -1, 1])
    lo, hi = accumulator_bounds(ir, layer)
    t = ir.tensors[layer.thresholds]
    flipped = np.sort(rng.integers(-hi.max(), -lo.min() + 2, size=t.shape), axis=1)
    ir.tensors[layer.thresholds] = np.where(signs[:, None] < 0, flipped, t)
    ir.tensors["l0.signs"] = signs
    layer.signs = "l0.signs"
    validate(ir, "test")
    _check_network(ir, [4, 3, 3], _inputs(rng, ir, 6))


@pytest.mark.parametrize("seed", range(6))
def test_random_networks_match_golden(seed):
    """Random MLPs and CNNs, multi-bit and binary, with random valid foldings (the calibration's generator)."""
    from boards import load_board
    from boards.calibrate import random_network

    rng = np.random.default_rng(100 + seed)
    ir, folding = random_network(rng, load_board(["ice40-up5k", "ecp5-25f", "xc7a35t"][seed % 3]))
    _check_network(ir, folding, _inputs(rng, ir, 3))


def test_dsp_multipliers_and_block_memories_compute_the_same():
    """Every memory marked for block RAM (buffers, skip ring, weight and threshold ROMs) and the systolic
    layers' multipliers on DSPs: the same integers and cycles (only the synthesis mapping differs)."""
    rng, ir = _resnet(3)
    plan = network_plan(ir, [1, 2, 2, 2, 3])
    dsp = {s.layer.name for s in plan.stages if getattr(s.plan, "engine", None) == "systolic"}
    folding = Folding([1, 2, 2, 2, 3], dsp, plan.memory_names)
    plan, _ = _check_network(ir, folding, _inputs(rng, ir, 3))
    assert all(b.style == "block" for _, b in plan.memories) and dsp
    assert all(s.plan.dsp for s in plan.stages if s.layer.name in dsp)


def test_stages_overlap_and_the_initiation_interval_is_the_slowest_stage():
    rng = np.random.default_rng(9)
    ir = _cnn_ir(rng)
    plan, valids = _check_network(ir, [1, 4, 4, 5], _inputs(rng, ir, 5))
    assert plan.initiation_interval < plan.latency  # the stages overlap
    assert np.diff(valids).max() == plan.initiation_interval == max(s.period for s in plan.stages)


def test_output_backpressure_keeps_outputs_exact_and_in_order():
    rng = np.random.default_rng(2)
    ir = _cnn_ir(rng, binary=True)
    X = _inputs(rng, ir, 5)
    _, got, *_ = run_top(ir, [1, 2, 2, 5], X, stall=0.7)
    np.testing.assert_array_equal(got, golden.run(ir, X))


def test_folding_fits_the_budget_and_honours_overrides():
    from boards import load_board

    rng = np.random.default_rng(1)
    ir = _cnn_ir(rng, c=(4, 8))
    board = load_board("ice40-up5k")
    widths = choose_folding(ir, board)
    plan = network_plan(ir, widths)
    assert plan.resources(board.family)["lut"] <= DEFAULT_LUT_FRACTION * board.lut
    big = network_plan(ir, choose_folding(ir, board, lut_budget=board.lut))  # more budget: not slower
    assert plan.resources(board.family)["lut"] <= big.resources(board.family)["lut"] <= board.lut
    assert big.initiation_interval <= plan.initiation_interval
    assert choose_folding(ir, board, fold={"conv2": (2, 4)}, lut_budget=board.lut).widths[1:3] == (4, 2)
    with pytest.raises(UserError, match="rows must divide the layer's 8 outputs"):
        choose_folding(ir, board, fold={"conv2": (3, 4)})
    with pytest.raises(UserError, match="no conv2d/linear layer named 'nope'"):
        choose_folding(ir, board, fold={"nope": (1, 1)})
    with pytest.raises(UserError, match="no folding of this network fits"):
        choose_folding(ir, board, lut_budget=10)


# An object whose constructor raised is never elaborated; Amaranth warns when it is collected, so the
# tests below collect it themselves, inside the filter.
_unused = pytest.mark.filterwarnings("ignore:.*created but never used")


@_unused
@pytest.mark.parametrize("kwargs, error, message", [
    (dict(w_bits=0, a_bits=2, acc_bits=8), ValueError, r"w_bits must be an integer 1..17, not 0"),
    (dict(w_bits=2, a_bits=17, acc_bits=8), ValueError, r"a_bits must be an integer 1..16, not 17"),
    (dict(w_bits=18, a_bits=2, acc_bits=8), ValueError, r"w_bits must be an integer 1..17, not 18"),
    (dict(w_bits=2, a_bits=2, acc_bits=1), ValueError, r"acc_bits must be an integer 2..64, not 1"),
    (dict(w_bits=2.0, a_bits=2, acc_bits=8), TypeError, r"w_bits must be an integer 1..17, not 2.0"),
])
def test_pe_constructor_errors(kwargs, error, message):
    with pytest.raises(error, match=message):
        ProcessingElement(**kwargs)
    gc.collect()


@_unused
def test_engine_constructor_errors():
    w = np.zeros((2, 3), dtype=np.int64)
    plan = EnginePlan(engine="systolic", in_channels=3, in_h=1, in_w=1, out_channels=2, kernel=1, stride=1, padding=0,
                      w_bits=2, a_bits=2, acc_bits=8, out_bits=2, kind="thresholds", rows=1, cols=1, param_bits=9)
    with pytest.raises(ValueError, match="engine takes exactly its own table"):
        LayerEngine(plan, weights=w)
    with pytest.raises(ValueError, match=r"weights must be 2-bit weights in -2..1"):
        LayerEngine(plan, weights=w + 3, thresholds=np.zeros((2, 3), dtype=np.int64))
    with pytest.raises(ValueError, match=r"thresholds must have shape \(2, 3\)"):
        LayerEngine(plan, weights=w, thresholds=np.zeros((2, 2), dtype=np.int64))
    with pytest.raises(ValueError, match=r"cols \(2\) must divide in_channels \(3\)"):
        LayerEngine(replace(plan, cols=2), weights=w, thresholds=np.zeros((2, 3), dtype=np.int64))
    with pytest.raises(ValueError, match="the XNOR engine needs 1-bit weights"):
        LayerEngine(replace(plan, engine="xnor"), weights=w, thresholds=np.zeros((2, 3), dtype=np.int64))
    gc.collect()


@pytest.mark.parametrize("acc_bits,out_bits,shift,registered,dsp", [
    (6, 5, 0, False, False), (12, 8, 7, True, False), (20, 6, 19, False, True), (9, 5, 3, True, True)])
def test_multiply_shift_requantizer_against_golden(acc_bits, out_bits, shift, registered, dsp):
    """The shift-and-add product (``dsp`` False) and ``*`` (a DSP block in synthesis), combinational or with
    the product registered: the golden model's clamp(floor((acc * M + B) / 2**S)), extremes included."""
    from hwq.requant import multiply_shift_apply
    from rtl_gen.requant import MultiplyShiftRequantizer

    rng = np.random.default_rng(acc_bits * 100 + shift)
    mult_bits, offset_bits = 16, acc_bits + 16
    dut = MultiplyShiftRequantizer(acc_bits=acc_bits, mult_bits=mult_bits, offset_bits=offset_bits, shift=shift,
                                   out_bits=out_bits, registered=registered, dsp=dsp)
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
            if registered:  # pipelined: the result comes `latency` cycles later
                await ctx.tick().repeat(dut.latency)
            await ctx.delay(1e-9)
            want = multiply_shift_apply(np.int64(acc), np.int64(mult), np.int64(off), shift, n)
            assert ctx.get(dut.q) == int(want), (acc, mult, off)

    sim = Simulator(dut)
    if registered:
        sim.add_clock(1e-8)
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


@pytest.mark.parametrize("on_dsp", [False, True])
def test_network_top_multiplies_and_shifts(trained_run, on_dsp):
    """A trained MLP exported with every hidden layer as a multiply-shift: the engines multiply, add and shift
    (in logic, or with the multipliers marked for DSPs and the parameter ROMs in block RAM), and the network
    equals the golden model."""
    from hwq.data import load_dataset
    from hwq.export import export_model
    from hwq.train import load_run

    net, _ = load_run(trained_run[0])
    ir = export_model(net, requant="multiply-shift")
    assert [la.requant_kind for la in ir.layers] == ["multiply_shift", "multiply_shift", "bias"]
    X = load_dataset().x_test[:3]
    names = [la.name for la in ir.layers]
    folding = Folding([8, 4, 4, 5], {f"{n}.requant" for n in names[:2]} if on_dsp else (),
                      {f"{n}.prom" for n in names} if on_dsp else ())
    plan, _ = _check_network(ir, folding, X)
    assert [s.plan.kind for s in plan.stages] == ["multiply_shift", "multiply_shift", "bias"]
    assert plan.dsp_blocks == (8 if on_dsp else 0)  # one per row: 4 + 4


def test_verilog_is_split_per_layer_with_memory_files(tmp_path):
    """`hwq rtl`'s files hold exactly Amaranth's modules: top.v the top, LAYER.v each layer's modules, and
    the memory files the words the inline initialisation had (put back, every module text is the same, but
    for the portability rewrite: combinational blocks read clk, memories count their addresses up)."""
    import json
    import re

    from amaranth.back import verilog

    from boards import load_board
    from rtl_gen.emit import _portable, generate_rtl, verilog_sources

    rng = np.random.default_rng(3)
    ir = _cnn_ir(rng, c=(4, 8))
    info = generate_rtl(ir, load_board("xc7a35t"), tmp_path / "rtl", folding=[1, 4, 4, 2])
    assert info["files"] == ["top.v", "conv1.v", "pool1.v", "conv2.v", "pool2.v", "fc.v"]
    assert verilog_sources(tmp_path / "rtl") == [tmp_path / "rtl" / f for f in info["files"]]
    assert "mem/conv2.wrom.hex" in info["memory_files"] and "mem/fc.prom.hex" in info["memory_files"]
    original = verilog.convert(NetworkTop(network_plan(ir, [1, 4, 4, 2])), name="hwq_top", emit_src=False)
    module = re.compile(r"((?:\(\*[^\n]*\*\)\n)*)module ([^\s(]+) ?\(.*?^endmodule\n", re.S | re.M)
    want = {m.group(2): _portable(m.group(0)) for m in module.finditer(original)}
    got = {}
    for name in info["files"]:
        text = (tmp_path / "rtl" / name).read_text()
        for m in module.finditer(text):
            mod = m.group(2).lstrip("\\")
            assert name == "top.v" if mod == "hwq_top" else name == f"{mod.split('.')[1]}.v"
            body = m.group(0)
            for reg, msb, mem, depth, path in re.findall(r"(  reg \[(\d+):0\] (\S+) \[0:(\d+)\];\n)  initial \$readmemh\(\"([^\"]+)\", \S+\);\n", body):
                words = (tmp_path / "rtl" / path).read_text().split()
                inline = "".join(f"    {mem}[{k}] = {int(msb) + 1}'h{w.lstrip('0') or '0'};\n" for k, w in enumerate(words))
                body = body.replace(f"{reg}  initial $readmemh(\"{path}\", {mem});\n",
                                    f"  reg [{msb}:0] {mem} [{depth}:0];\n  initial begin\n{inline}  end\n")
            got[m.group(2)] = body
    assert json.loads((tmp_path / "rtl" / "rtl.json").read_text())["memory_files"] == info["memory_files"]
    assert got.keys() == want.keys()
    def canonical(text):  # constants by value: Amaranth writes words in decimal or zero-padded hex
        return re.sub(r"(\d+)'([dh])([0-9a-fA-F]+)",
                      lambda m: f"{m.group(1)}'h{int(m.group(3), 16 if m.group(2) == 'h' else 10):x}", text)

    for name in want:
        assert canonical(got[name]) == canonical(want[name]), name


# ---- residual add ------------------------------------------------------------------------------------

def _add_case(rng, a, b, out_bits, channels, lanes, side=3, signs=True):
    """An AddPlan, thresholds in the sign domain of the code sum (random, plus both ends of the sum's range),
    signs, and two maps of level indices (words, lanes) whose first word is all minimum and second all
    maximum codes."""
    from hwq.intrange import act_levels, code_range, signed_width
    from rtl_gen.add import AddPlan, add_thresholds
    from rtl_gen.engine import compare_thresholds

    (lo_a, hi_a), (lo_b, hi_b) = code_range(*a), code_range(*b)
    lo, hi = lo_a + lo_b, hi_a + hi_b
    n_levels = 2**out_bits - 1
    sign = np.where(rng.random(channels) < 0.5, -1, 1) if signs else np.ones(channels, np.int64)
    t = np.sort(rng.integers(lo, hi + 2, size=(channels, n_levels)), axis=1)
    t[:, 0], t[:, -1] = lo, hi + 1  # one threshold every sum reaches, one no sum reaches
    t = np.where(sign[:, None] < 0, -t[:, ::-1], t)
    folded = compare_thresholds(add_thresholds(t, sign, a, b), sign)  # as stored in the ROM
    plan = AddPlan(channels=channels, in_h=side, in_w=side, lanes=lanes, a_bits=a[0], a_signed=a[1], b_bits=b[0],
                   b_signed=b[1], out_bits=out_bits, param_bits=max(2, signed_width(folded.min(), folded.max())))
    n_a, n_b = act_levels(*a)[2], act_levels(*b)[2]
    xa = rng.integers(0, n_a, size=(plan.words, lanes))
    xb = rng.integers(0, n_b, size=(plan.words, lanes))
    xa[0], xb[0], xa[1], xb[1] = 0, 0, n_a - 1, n_b - 1
    return plan, t, sign, xa, xb


@pytest.mark.parametrize("a, b, out_bits, lanes", [
    ((8, True), (8, False), 3, 2),    # the signed minimum -128 plus 0; 127 + 255
    ((8, True), (8, True), 4, 4),     # both signed: -256 .. 254
    ((1, True), (1, True), 1, 2),     # bipolar + bipolar: -2, 0, 2 (level steps of 2)
    ((4, True), (2, False), 2, 8),    # the trained resnet's add
    ((1, False), (5, True), 8, 1),    # 255 thresholds
])
def test_add_engine_against_numpy(a, b, out_bits, lanes):
    from hwq.intrange import act_levels
    from rtl_gen.add import AddEngine

    rng = np.random.default_rng(a[0] * 10 + b[0] + out_bits)
    channels = 2 * lanes
    plan, t, sign, xa, xb = _add_case(rng, a, b, out_bits, channels, lanes)
    dut = AddEngine(plan, thresholds=t, signs=sign)
    (lo_a, step_a, _), (lo_b, step_b, _) = act_levels(*a), act_levels(*b)
    total = (lo_a + step_a * xa) + (lo_b + step_b * xb)            # (words, lanes) code sums
    ch = (np.arange(plan.words) % plan.groups)[:, None] * lanes + np.arange(lanes)  # channel of each lane
    want = ((sign[ch] * total)[..., None] >= t[ch]).sum(axis=-1)  # naive: count the thresholds reached
    got, done = {}, []

    async def tb(ctx):
        ctx.set(dut.start, 1)
        await ctx.tick()
        ctx.set(dut.start, 0)
        addr = None
        for cycle in range(1, plan.latency + 3):
            if addr is not None:  # the buffers' synchronous read: last cycle's address
                ctx.set(dut.rd_data, [int(v) for v in xa[addr]])
                ctx.set(dut.skip_data, [int(v) for v in xb[addr]])
            if ctx.get(dut.wr_en):
                got[ctx.get(dut.wr_addr)] = [int(v) for v in ctx.get(dut.wr_data)]
            if ctx.get(dut.done):
                done.append(cycle)
            addr = ctx.get(dut.rd_addr) if ctx.get(dut.busy) else None
            await ctx.tick()

    _run(dut, tb)
    assert done == [plan.latency]
    np.testing.assert_array_equal(np.array([got[k] for k in range(plan.words)]), want)
    assert sorted(got) == list(range(plan.words))


def _resnet(seed, **kw):
    from boards.calibrate import resnet_ir

    rng = np.random.default_rng(seed)
    ir = resnet_ir(rng, **{"c0": 1, "side": 4, "c1": 4, "bits": (3, 3, 2, 2, 3), "n_out": 3, **kw})
    validate(ir, "test")
    return rng, ir


@pytest.mark.parametrize("kw, widths", [
    ({}, [1, 2, 2, 2, 3]),
    ({"signs": True, "skip_from": "res1a"}, [1, 4, 4, 4, 1]),    # skip from the layer before the branch's last
    ({"binary": True, "signs": True}, [1, 1, 2, 1, 3]),           # XNOR branch, bipolar add
    ({"bits": (8, 2, 8, 3, 8), "side": 2, "c1": 2}, [1, 2, 1, 2, 2]),  # 8-bit skip + 8-bit signed branch
])
def test_resnet_top_matches_golden(kw, widths):
    """conv1 -> res1a -> res1b -> add1(res1b, skip) -> pool -> fc: the skip's words travel in a ring, the
    add stage reads both inputs word by word; equal integers, analytic latency, and the initiation interval
    of the slowest stage (the ring never makes the producer wait)."""
    rng, ir = _resnet(sum(widths), **kw)
    plan, valids = _check_network(ir, widths, _inputs(rng, ir, 6))
    (skip,) = plan.skips
    assert skip.buffer.banks == 2 * (skip.consumer - skip.producer)
    assert np.diff(valids).max() == plan.initiation_interval == max(s.period for s in plan.stages)


def test_resnet_output_backpressure():
    rng, ir = _resnet(3, signs=True)
    X = _inputs(rng, ir, 6)
    _, got, *_ = run_top(ir, [1, 2, 1, 2, 3], X, stall=0.8)
    np.testing.assert_array_equal(got, golden.run(ir, X))


def test_resnet_folding_ties_the_add_inputs():
    from boards import load_board
    from rtl_gen.plan import width_ties

    _, ir = _resnet(4, c1=8)
    assert width_ties(ir) == [(1, 3, "add1")]  # conv1's rows = res1b's rows
    widths = choose_folding(ir, load_board("xc7a35t")).widths
    assert widths[1] == widths[3]
    assert choose_folding(ir, load_board("xc7a35t"), fold={"conv1": (4, 1)}).widths[3] == 4
    with pytest.raises(UserError, match="the residual add 'add1' reads its two inputs word by word"):
        choose_folding(ir, load_board("xc7a35t"), fold={"conv1": (4, 1), "res1b": (2, 2)})
    with pytest.raises(UserError, match="layer 'add1': its two inputs must be folded to the same rows"):
        network_plan(ir, [1, 4, 2, 2, 3])


def test_rtl_rejects_what_the_chain_cannot_build():
    from rtl_gen.plan import layer_ir

    _, ir = _resnet(5)
    with pytest.raises(UserError, match="a residual add reads two layers' outputs"):
        layer_ir(ir, "add1")
    add = next(la for la in ir.layers if la.op == "add")
    with pytest.raises(UserError, match="a residual add of the network input has no RTL engine yet"):
        network_plan(replace(ir, layers=[replace(la, inputs=["res1b", "input"]) if la is add else la
                                         for la in ir.layers]), [1, 2, 2, 2, 3])
    with pytest.raises(UserError, match=r"layer 'res1b' reads \['conv1'\], not the layer before it"):
        network_plan(replace(ir, layers=[replace(la, inputs=["conv1"]) if la.name == "res1b" else la
                                         for la in ir.layers]), [1, 2, 2, 2, 3])


def test_a_shortcut_stage_takes_its_layers_dsps_and_rom_places(tmp_path):
    """The folding names a shortcut stage by its add (``add2`` for the DSP multipliers of s2short's engine,
    ``add2.wrom``/``add2.aprom`` for its ROMs); the Verilog is generated with them, and rtl.json tells the
    shortcut layer is inside add2's stage."""
    import json

    from boards import load_board
    from boards.calibrate import resnet8_ir
    from rtl_gen.emit import generate_rtl

    ir = resnet8_ir(np.random.default_rng(1), c0=1, side=8, channels=(2, 4, 4), w_bits=8, a_bits=2, input_bits=3)
    widths = [1, 1, 2, 1, 4, 2, 2, 2, 4, 4, 3]  # s2short: 2 input and 2 output tiles, so ROMs of 2 words
    folding = Folding(widths, {"add2", "s2b"}, {"add2.wrom", "add2.prom", "add2.aprom"})
    plan = network_plan(ir, folding)
    shortcut = next(s.plan for s in plan.stages if s.layer.name == "add2")
    assert shortcut.engine.dsp and shortcut.engine.rom_style == "block" and shortcut.add.prom_style == "block"
    generate_rtl(ir, load_board("xc7a35t"), tmp_path / "rtl", folding=folding)
    layers = {la["name"]: la for la in json.loads((tmp_path / "rtl" / "rtl.json").read_text())["layers"]}
    assert layers["add2"]["engine"] == "shortcut" and layers["add2"]["shortcut"] == "s2short" and layers["add2"]["dsp"]
    assert layers["s2short"]["stage"] is None and layers["s2short"]["in_stage"] == "add2"
