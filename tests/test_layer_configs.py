"""Property test over random single layers: the PyTorch integer path equals the golden model on every
output integer, and no accumulator leaves the exported ``acc_bits``.

Each example draws an op (linear, conv2d, residual add, max-pool), its shapes (stride, padding), weight,
input and output bits 1..8, input signedness (unsigned, signed, bipolar), the weight grid and quantizer,
batch-norm with negative multipliers, the requantization policy, and extreme weights and inputs (all at
the maximum or minimum code, or the sign pattern that reaches the accumulator bound). The layer is
exported with :mod:`hwq.export`, validated like a loaded IR, and run by :mod:`hwq.golden`.
"""

from pathlib import Path

import numpy as np
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from hwq import golden
from hwq.export import export_add, export_qlayer
from hwq.intrange import code_range, is_bipolar
from hwq.ir import IR, validate
from hwq.models import Add, QLayer, _multiply_shift
from hwq.quant import AlignedQuant, LSQAct, LSQWeight, SignAct, UniQWeight, XNORWeight

N_SAMPLES = 6
CHECKED = {"examples": 0, "multiply_shift": 0, "thresholds": 0, "bias": 0, "xnor": 0, "at_bound": 0}


@st.composite
def layer_config(draw):
    op = draw(st.sampled_from(["linear", "conv2d", "conv2d", "add", "maxpool"]))
    binary = draw(st.integers(0, 3)) == 0  # XNOR-popcount layers: 1-bit weights, bipolar inputs
    a_bits = 1 if binary else draw(st.integers(1, 8))
    signedness = draw(st.sampled_from(["unsigned", "signed"])) if a_bits > 1 else "bipolar" if binary else draw(
        st.sampled_from(["unsigned", "bipolar"]))
    cfg = {
        "op": op, "a_bits": a_bits, "a_signed": signedness != "unsigned",
        "w_bits": 1 if binary else draw(st.integers(1, 8)),
        "w_quant": draw(st.sampled_from(["lsq", "uniq", "xnor"])),
        "out": draw(st.sampled_from(["unsigned", "unsigned", "bipolar", "signed", "logits"])),
        "out_bits": draw(st.integers(1, 8)),
        "policy": draw(st.sampled_from(["auto", "thresholds", "multiply-shift"])),
        "bn": draw(st.booleans()),
        "weights": draw(st.sampled_from(["random", "random", "max", "min", "alternating"])),
        "inputs": draw(st.sampled_from(["random", "random", "max", "min", "bound"])),
        "in_scale": draw(st.floats(1e-3, 2.0)),
        "out_step": draw(st.floats(1e-3, 4.0)),
        "seed": draw(st.integers(0, 2**31 - 1)),
    }
    if op == "linear":
        cfg["shape"] = [draw(st.integers(1, 40))]
        cfg["n_out"] = draw(st.integers(1, 10))
    else:
        side = draw(st.integers(1, 9))
        cfg["shape"] = [draw(st.integers(1, 4)), side, side]
        cfg["n_out"] = draw(st.integers(1, 6))
        cfg["padding"] = draw(st.integers(0, 2))
        cfg["kernel"] = draw(st.integers(1, min(4, side + 2 * cfg["padding"])))
        cfg["stride"] = draw(st.integers(1, 3))
        if op == "maxpool":
            cfg["kernel"] = draw(st.integers(1, side))
            cfg["stride"] = cfg["kernel"]
    if op == "add":
        cfg["b_bits"] = draw(st.integers(2, 8))
    return cfg


def _out_quant(cfg):
    """The output quantizer the config names; signed outputs are aligned to an input at ``in_scale``."""
    if cfg["out"] == "logits":
        return None
    if cfg["out"] == "bipolar":
        return SignAct()
    if cfg["out"] == "signed":
        source = LSQAct(4)
        with torch.no_grad():
            source.step.fill_(cfg["in_scale"])
        return AlignedQuant(max(cfg["out_bits"], 2), source)
    q = LSQAct(cfg["out_bits"])
    with torch.no_grad():
        q.step.fill_(cfg["out_step"])
    return q


def _inputs(cfg, rng, shape, bits, signed, w=None):
    lo, hi = code_range(bits, signed)
    if is_bipolar(bits, signed):
        x = rng.choice([-1, 1], size=(N_SAMPLES, *shape))
    else:
        x = rng.integers(lo, hi + 1, size=(N_SAMPLES, *shape))
    kind = cfg["inputs"]
    if kind == "max":
        x[:] = hi
    elif kind == "min":
        x[:] = lo
    elif kind == "bound" and w is not None and cfg["op"] == "linear":
        # sample 0 reaches output 0's upper bound, sample 1 its lower bound
        x[0] = np.where(w[0] > 0, hi, lo)
        x[1] = np.where(w[0] > 0, lo, hi)
    return x


def _weight_layer(cfg, rng):
    w_bits = 1 if cfg["w_quant"] == "xnor" else cfg["w_bits"]
    wq = {"lsq": LSQWeight, "uniq": UniQWeight}.get(cfg["w_quant"], lambda b: XNORWeight(b))(w_bits)
    out_q = _out_quant(cfg)
    n_in = cfg["shape"][0]  # features (linear) or input channels (conv2d)
    kw = {k: cfg[k] for k in ("kernel", "stride", "padding")} if cfg["op"] == "conv2d" else {}
    layer = QLayer("l", cfg["op"], n_in, cfg["n_out"], wq, out_q, bn=cfg["bn"] and out_q is not None, **kw)
    with torch.no_grad():
        w = torch.from_numpy(rng.normal(size=tuple(layer.weight.shape))).float()
        if cfg["weights"] == "max":
            w = w.abs() + 1.0
        elif cfg["weights"] == "min":
            w = -w.abs() - 1.0
        elif cfg["weights"] == "alternating":
            w = torch.where(torch.arange(w.numel()).reshape(w.shape) % 2 == 0, 1.0, -1.0) * (w.abs() + 1.0)
        layer.weight.copy_(w)
        layer.bias.copy_(torch.from_numpy(rng.normal(size=cfg["n_out"]) * 3))
        if hasattr(wq, "init"):
            wq.init(layer.weight)
        if cfg["weights"] in ("max", "min", "alternating") and hasattr(wq, "step"):
            wq.step.fill_(1e-3)  # every weight far beyond the grid: all codes at the extremes
        if layer.bn is not None:
            c = cfg["n_out"]
            layer.bn.weight.copy_(torch.from_numpy(rng.normal(size=c)))  # some negative: decreasing channels
            layer.bn.bias.copy_(torch.from_numpy(rng.normal(size=c)))
            layer.bn.running_mean.copy_(torch.from_numpy(rng.normal(size=c)))
            layer.bn.running_var.copy_(torch.from_numpy(rng.uniform(0.1, 3.0, size=c)))
    layer.eval()
    return layer


def _check_acc_bits(acc, acc_bits):
    lim = 2 ** (acc_bits - 1)
    assert acc.min() >= -lim and acc.max() <= lim - 1, (acc.min(), acc.max(), acc_bits)


_BASE = {"w_quant": "lsq", "bn": True, "weights": "random", "inputs": "random", "in_scale": 0.1, "out_step": 0.5,
         "seed": 1, "policy": "auto"}
# Every kind the coverage test below asks for, always run (random draws reach them only usually).
ALWAYS = [
    {**_BASE, "op": "linear", "a_bits": 4, "a_signed": False, "w_bits": 4, "out": "logits", "out_bits": 8,
     "inputs": "bound", "shape": [20], "n_out": 5},                                             # bias, bound
    {**_BASE, "op": "conv2d", "a_bits": 1, "a_signed": True, "w_bits": 1, "w_quant": "xnor", "out": "bipolar",
     "out_bits": 1, "shape": [3, 5, 5], "n_out": 4, "padding": 1, "kernel": 3, "stride": 1},    # xnor, thresholds
    {**_BASE, "op": "conv2d", "a_bits": 3, "a_signed": False, "w_bits": 3, "out": "unsigned", "out_bits": 8,
     "shape": [2, 6, 6], "n_out": 3, "padding": 2, "kernel": 4, "stride": 2},                   # multiply-shift
]


@settings(max_examples=240, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cfg=layer_config())
@example(cfg=ALWAYS[0])
@example(cfg=ALWAYS[1])
@example(cfg=ALWAYS[2])
def test_torch_integer_path_equals_golden_on_random_layers(cfg):
    rng = np.random.default_rng(cfg["seed"])
    a_bits, a_signed, shape = cfg["a_bits"], cfg["a_signed"], cfg["shape"]
    CHECKED["examples"] += 1
    if cfg["op"] == "maxpool":
        from hwq.ir import Layer

        x = _inputs(cfg, rng, shape, a_bits, a_signed)
        k = cfg["kernel"]
        side = (shape[1] - k) // k + 1
        layer = Layer(name="p", op="maxpool", in_shape=shape, out_shape=[shape[0], side, side], a_bits=a_bits,
                      a_signed=a_signed, out_bits=a_bits, out_signed=a_signed, kernel=k, stride=k)
        want = torch.nn.functional.max_pool2d(torch.from_numpy(x).double(), k).long().numpy()
        assert np.array_equal(golden.run_layer(layer, {}, x), want)
        return
    if cfg["op"] == "add":
        b_bits = cfg["b_bits"]
        cfg = {**cfg, "out": "unsigned" if cfg["out"] == "logits" else cfg["out"]}
        node = Add("a", skip=0, out_q=_out_quant(cfg))
        x0 = _inputs(cfg, rng, shape, a_bits, a_signed)
        x1 = _inputs(cfg, rng, shape, b_bits, True)
        layer, tensors, _ = export_add(node, shape, [("x0", a_bits, a_signed), ("x1", b_bits, True)],
                                       torch.tensor(cfg["in_scale"]), requant=cfg["policy"])
        total = torch.from_numpy(x0 + x1)
        ms = {"a": (tensors[layer.mult], tensors[layer.offset], layer.shift)} if layer.mult else {}
        want = (_multiply_shift(total, node.out_q, *ms["a"]) if ms else node.requant(total, cfg["in_scale"])).numpy()
        _check_acc_bits(x0 + x1, layer.acc_bits)
        got = golden.run_layer(layer, tensors, x0, [x1])
        assert np.array_equal(got, want)
        CHECKED[layer.requant_kind] += 1
        return

    layer = _weight_layer(cfg, rng)
    scale = torch.tensor(cfg["in_scale"])
    w_codes = layer.integer_weight().numpy().astype(np.int64)
    x = _inputs(cfg, rng, shape, a_bits, a_signed, w_codes.reshape(len(w_codes), -1))
    ir_layer, tensors, _ = export_qlayer(layer, shape, a_bits, a_signed, scale, requant=cfg["policy"])
    ir = IR(model="test", dataset="none", method="none", input_shape=shape, input_bits=a_bits,
            input_signed=a_signed, input_scale=cfg["in_scale"], layers=[ir_layer], tensors=tensors)
    validate(ir, Path("<exported>"), logits=False)  # proven acc_bits, weight grid, tensor shapes

    xt = torch.from_numpy(x)
    acc = layer.accumulate(xt)
    _check_acc_bits(acc.numpy(), ir_layer.acc_bits)
    if ir_layer.requant_kind == "multiply_shift":
        want = _multiply_shift(acc, layer.out_q, tensors[ir_layer.mult], tensors[ir_layer.offset], ir_layer.shift)
    else:
        want = layer.requant(acc, scale)
    got = golden.run_layer(ir_layer, tensors, x)
    assert got.shape == tuple(want.shape)
    assert np.array_equal(got, want.numpy()), cfg
    CHECKED[ir_layer.requant_kind] += 1
    CHECKED["xnor"] += ir_layer.xnor
    if cfg["inputs"] == "bound" and cfg["op"] == "linear":
        lo, hi = golden.accumulator_range(w_codes, *code_range(a_bits, a_signed))
        CHECKED["at_bound"] += int(acc[0, 0]) == hi[0] and int(acc[1, 0]) == lo[0]


def test_property_test_covered_every_kind():
    """Runs after the property test (file order): the draws reached every requantization kind, binary
    layers and the accumulator bound, and at least 200 configurations."""
    if CHECKED["examples"] == 0:
        import pytest

        pytest.skip("the property test did not run in this session (selected alone)")
    assert CHECKED["examples"] >= 200
    for kind in ("multiply_shift", "thresholds", "bias", "xnor", "at_bound"):
        assert CHECKED[kind] > 0, CHECKED
