"""`hwq import`: QONNX models (Brevitas' export_qonnx, hwq's own export) into the integer IR, checked against
qonnx's executor, then simulated; unsupported graphs are one-line errors that write nothing."""

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from boards import load_board
from hwq import golden
from hwq.cli import main
from hwq.ir import load_ir
from hwq.qonnx_export import QONNX_DOMAIN, write_qonnx
from rtl_gen.emit import generate_rtl
from sim.runner import simulate

from .conftest import random_ir


def _brevitas_model(kind, w_bits, a_bits):
    """A small Brevitas MLP (64-32-16-10, batch-norm after fc1) or CNN (conv-bn-relu-pool x2, linear) on
    4-bit unsigned inputs; the last layer's bias is quantized at the accumulator scale (Int32Bias)."""
    import brevitas.nn as qnn
    import torch.nn as nn
    from brevitas.quant import Int32Bias, Uint8ActPerTensorFloat

    inp = qnn.QuantIdentity(act_quant=Uint8ActPerTensorFloat, bit_width=4, return_quant_tensor=True)

    def relu():
        return qnn.QuantReLU(bit_width=a_bits, return_quant_tensor=True)

    if kind == "cnn1d":  # MNIST-1D: signed 8-bit inputs (N, 1, 40), strided 1-D convolutions
        sig = qnn.QuantIdentity(bit_width=8, return_quant_tensor=True)
        return nn.Sequential(sig, qnn.QuantConv1d(1, 8, 5, stride=2, padding=1, bias=False, weight_bit_width=w_bits),
                             nn.BatchNorm1d(8), relu(),
                             qnn.QuantConv1d(8, 8, 3, stride=2, padding=1, bias=True, weight_bit_width=w_bits),
                             relu(), nn.Flatten(),
                             qnn.QuantLinear(80, 10, bias=True, weight_bit_width=w_bits, bias_quant=Int32Bias))
    if kind == "gap":  # average pools: AvgPool2d (AveragePool) and AdaptiveAvgPool2d(1) (ReduceMean), requantized
        return nn.Sequential(inp, qnn.QuantConv2d(1, 8, 3, padding=1, bias=False, weight_bit_width=w_bits),
                             nn.BatchNorm2d(8), relu(), nn.AvgPool2d(2), relu(),
                             qnn.QuantConv2d(8, 16, 3, padding=1, bias=True, weight_bit_width=w_bits), relu(),
                             nn.AdaptiveAvgPool2d(1), relu(), nn.Flatten(),
                             qnn.QuantLinear(16, 10, bias=True, weight_bit_width=w_bits, bias_quant=Int32Bias))
    if kind == "mlp":
        return nn.Sequential(inp, qnn.QuantLinear(64, 32, bias=True, weight_bit_width=w_bits), nn.BatchNorm1d(32),
                             relu(), qnn.QuantLinear(32, 16, bias=True, weight_bit_width=w_bits), relu(),
                             qnn.QuantLinear(16, 10, bias=True, weight_bit_width=w_bits, bias_quant=Int32Bias))
    return nn.Sequential(inp, qnn.QuantConv2d(1, 8, 3, padding=1, bias=False, weight_bit_width=w_bits),
                         nn.BatchNorm2d(8), relu(), nn.MaxPool2d(2),
                         qnn.QuantConv2d(8, 8, 3, padding=1, bias=True, weight_bit_width=w_bits), nn.BatchNorm2d(8),
                         relu(), nn.MaxPool2d(2), nn.Flatten(),
                         qnn.QuantLinear(32, 10, bias=True, weight_bit_width=w_bits, bias_quant=Int32Bias))


def _train_and_export(kind, w_bits, a_bits, path, epochs=3):
    """Train on the digits training split (pixel codes / 15 in [0, 1]; MNIST-1D for ``cnn1d``) and write
    QONNX with export_qonnx;
    return the Brevitas model's test accuracy."""
    pytest.importorskip("brevitas", reason="Brevitas is a test extra: pip install -e '.[brevitas]' (make test does)")
    import torch
    from brevitas.export import export_qonnx

    from hwq.data import load_dataset

    torch.manual_seed(0)
    ds = load_dataset("mnist1d" if kind == "cnn1d" else "digits")
    shape = {"mlp": (-1, 64), "cnn": (-1, 1, 8, 8), "gap": (-1, 1, 8, 8), "cnn1d": (-1, 1, 40)}[kind]
    x, y = torch.tensor(ds.x_train * ds.input_scale, dtype=torch.float32).reshape(shape), torch.tensor(ds.y_train)
    model = _brevitas_model(kind, w_bits, a_bits)
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    for _ in range(epochs):
        for i in range(0, len(x), 64):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x[i:i + 64]), y[i:i + 64]).backward()
            opt.step()
    model.eval()
    x_test = torch.tensor(ds.x_test * ds.input_scale, dtype=torch.float32).reshape(shape)
    with torch.no_grad():
        accuracy = float((model(x_test).argmax(1).numpy() == ds.y_test).mean())
    export_qonnx(model, x_test[:1], str(path))
    return accuracy


@pytest.mark.parametrize("kind, bits", [("mlp", 2), ("mlp", 4), ("cnn", 2), ("cnn", 4), ("gap", 3)])
def test_brevitas_model_imports_exactly_and_simulates_bit_exact(kind, bits, tmp_path):
    onnx_path = tmp_path / f"{kind}.onnx"
    accuracy = _train_and_export(kind, bits, bits, onnx_path)
    assert accuracy > 0.3  # it learned something (the checks below do not depend on accuracy)
    assert main(["import", str(onnx_path), "--dataset", "digits", "--samples", "360", "--out",
                 str(tmp_path / "ir")]) == 0
    check = json.loads((tmp_path / "ir" / "import.json").read_text())
    assert check["equal"] and check["samples"] == 360 and check["max_error_steps"] < 0.25
    ir = load_ir(tmp_path / "ir")
    weight_layers = [la for la in ir.layers if la.weights]
    assert [la.w_bits for la in weight_layers] == [bits] * len(weight_layers)
    assert [la.a_bits for la in weight_layers][1:] == [bits] * (len(weight_layers) - 1)
    assert {la.op for la in ir.layers} >= {"mlp": {"linear"}, "cnn": {"conv2d", "maxpool", "flatten", "linear"},
                                           "gap": {"conv2d", "avgpool", "flatten", "linear"}}[kind]
    # hwq's golden model on the digits codes gives the Brevitas model's predictions (same arithmetic)
    from hwq.data import load_dataset

    ds = load_dataset("digits")
    gold = (golden.run(ir, ds.x_test).argmax(1) == ds.y_test).mean()
    assert abs(gold - accuracy) <= 0.02, (gold, accuracy)  # float inputs vs 4-bit codes of the same pixels
    generate_rtl(ir, load_board("ice40-up5k"), tmp_path / "rtl")
    res = simulate(ir, tmp_path / "rtl", samples=40)
    assert res["bit_exact"] and res["samples"] == 40, res["first_mismatch"]
    assert all(la["cycles"] == la["estimate_cycles"] for la in res["layers"])


def test_hwq_qonnx_round_trips(trained_ir, tmp_path):
    """hwq's own QONNX (MultiThreshold, odd-grid or int weights, Add of the bias) imports to the same integer
    function, also a random IR with 8-bit outputs (255 thresholds per channel), one with 12- and 16-bit
    weights (hls4ml's widths) and one with 16-bit activations (65,535 thresholds per channel in QONNX, a
    multiply-shift again in the IR)."""
    rng = np.random.default_rng(3)
    act16 = random_ir(rng, [12, 10, 6], [4, 2], [4, 16])
    assert act16.layers[0].out_bits == 16 and act16.layers[0].requant_kind == "multiply_shift"
    wide = random_ir(rng, [12, 10, 6], [3, 4], [4, 8])
    weights16 = random_ir(rng, [12, 10, 6], [12, 16], [4, 6])
    for k, ir in enumerate([trained_ir[1], weights16, act16, wide]):
        write_qonnx(ir, tmp_path / f"m{k}.onnx")
        assert main(["import", str(tmp_path / f"m{k}.onnx"), "--out", str(tmp_path / f"ir{k}")]) == 0
        back = load_ir(tmp_path / f"ir{k}")
        lo, hi = (0, 2**ir.input_bits - 1)
        x = rng.integers(lo, hi + 1, size=(300, ir.layers[0].in_features))
        assert (golden.run(back, x) == golden.run(ir, x)).all()
        assert [la.w_bits for la in back.layers if la.w_bits] == [la.w_bits for la in ir.layers if la.w_bits]
        if ir is act16:
            assert (back.layers[0].out_bits, back.layers[0].requant_kind) == (16, "multiply_shift")
    assert back.layers[0].out_bits == 8 and back.layers[0].requant_kind == "thresholds"


# ---- what cannot be imported: one line each, nothing written --------------------------------------------

def _graph(nodes, inits, in_shape=(1, 4), out_shape=(1, 3), name="g"):
    g = helper.make_graph(nodes, name, [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(in_shape))],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(out_shape))],
                          [numpy_helper.from_array(np.asarray(v, dtype=np.float32), k) for k, v in inits.items()])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])


def _quant(x, out, bits, signed=0, narrow=0, scale="s1"):
    return helper.make_node("Quant", [x, scale, "z0", f"b{bits}"], [out], domain=QONNX_DOMAIN, name=f"q_{out}",
                            signed=signed, narrow=narrow, rounding_mode="ROUND")


COMMON = {"s1": 1.0, "z0": 0.0, "b2": 2.0, "b4": 4.0, "w": np.ones((3, 4)), "bias": np.zeros(3)}
QIN = _quant("x", "xq", 4)
QW = _quant("w", "wq", 2, signed=1, narrow=1)
GEMM = helper.make_node("Gemm", ["xq", "wq", "bias"], ["y"], transB=1, name="fc")


def _bad_models():
    gemm_h = helper.make_node("Gemm", ["xq", "wq", "bias"], ["h"], transB=1, name="fc")
    return {
        "unsupported op": (_graph([QIN, QW, gemm_h, helper.make_node("Sigmoid", ["h"], ["y"], name="act")], COMMON),
                           "node 'act' (Sigmoid): unsupported op; hwq imports Quant, "),
        "float weights": (_graph([QIN, helper.make_node("Gemm", ["xq", "w", "bias"], ["y"], transB=1, name="fc")],
                                 COMMON), "node 'fc' (Gemm): the weights 'w' must be quantized"),
        "input not quantized": (_graph([QW, helper.make_node("Gemm", ["x", "wq", "bias"], ["y"], transB=1, name="fc")],
                                       COMMON), "node 'fc' (Gemm): input 'x' must be quantized activations"),
        "float bias at the output": (_graph([QIN, QW, GEMM], {**COMMON, "bias": [0.5, 0.0, 0.25]}),
                                     "bias is not a whole multiple of its accumulator scale"),
        "padded average pool": (_graph([QIN, helper.make_node("AveragePool", ["xq"], ["y"], kernel_shape=[2, 2],
                                                              pads=[1, 1, 1, 1], name="ap")],
                                       COMMON, in_shape=(1, 1, 4, 4), out_shape=(1, 1, 3, 3)),
                                "node 'ap' (AveragePool): square windows, equal strides and no padding are supported"),
        "ends in an average pool": (_graph([QIN, helper.make_node("GlobalAveragePool", ["xq"], ["y"], name="gap")],
                                           COMMON, in_shape=(1, 1, 4, 4), out_shape=(1, 1, 1, 1)),
                                    "the graph ends with an average pool"),
        "1-D max-pool": (_graph([QIN, helper.make_node("MaxPool", ["xq"], ["y"], kernel_shape=[2], strides=[2],
                                                       name="mp")], COMMON, in_shape=(1, 1, 8), out_shape=(1, 1, 4)),
                         "node 'mp' (MaxPool): square 2-D windows with stride = kernel and no padding are supported"),
        "20-bit weights": (_graph([QIN, _quant("w", "wq", 20, signed=1), GEMM], {**COMMON, "b20": 20.0}),
                           "weights of 1 to 16 bits are supported (hwq's range), not 20"),
        "20-bit activations": (_graph([_quant("x", "xq", 20), QW, GEMM], {**COMMON, "b20": 20.0}),
                               "activations of 1 to 16 bits are imported, not 20"),
        "1-bit signed Quant": (_graph([QIN, _quant("w", "wq", 1, signed=1), GEMM], {**COMMON, "b1": 1.0}),
                               "a 1-bit signed Quant gives the codes -1 and 0"),
        "ends in activations": (_graph([QIN, QW, gemm_h, helper.make_node("Relu", ["h"], ["r"], name="relu"),
                                        _quant("r", "y", 2)], COMMON),
                                "the graph's output must be the logits of a last Gemm, MatMul or Conv layer"),
    }


@pytest.mark.parametrize("case", list(_bad_models()))
def test_unsupported_graph_is_a_one_line_error_and_writes_nothing(case, tmp_path, capsys):
    model, message = _bad_models()[case]
    onnx.save(model, str(tmp_path / "m.onnx"))
    assert main(["import", str(tmp_path / "m.onnx"), "--out", str(tmp_path / "ir")]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "ir").exists()


def test_not_an_onnx_file_is_a_one_line_error(tmp_path, capsys):
    (tmp_path / "m.onnx").write_text("not a model")
    assert main(["import", str(tmp_path / "m.onnx"), "--out", str(tmp_path / "ir")]) == 2
    err = capsys.readouterr().err.strip()
    assert "not an ONNX model" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "ir").exists()


def test_import_check_catches_a_wrong_lowering(tmp_path, monkeypatch):
    """The executor comparison is not a formality: a lowering with one threshold moved fails it."""
    import hwq.qonnx_import as qi
    from hwq.errors import UserError

    model = _graph([QIN, QW, helper.make_node("Gemm", ["xq", "wq", "bias"], ["h"], transB=1, name="fc"),
                    helper.make_node("Relu", ["h"], ["r"], name="relu"), _quant("r", "rq", 2),
                    _quant("w2", "w2q", 2, signed=1, narrow=1),
                    helper.make_node("Gemm", ["rq", "w2q", "bias"], ["y"], transB=1, name="fc2")],
                   {**COMMON, "w": np.eye(3, 4), "w2": np.eye(3)})
    onnx.save(model, str(tmp_path / "m.onnx"))
    ir, loaded = qi.lower_qonnx(tmp_path / "m.onnx")
    ir.tensors[ir.layers[0].thresholds][0, 0] += 1  # level 1 of channel 0 now needs one more
    with pytest.raises(UserError, match="not reproduced in integers"):
        qi.check_import(loaded, ir, np.arange(16).repeat(4).reshape(16, 4), tmp_path / "m.onnx")


def test_external_data_outside_the_model_folder_is_refused(tmp_path, capsys):
    """An ONNX file whose weights point at a file outside its folder is not read (onnx checks the path)."""
    t = numpy_helper.from_array(np.zeros(4, np.float32), "w")
    t.data_location = TensorProto.EXTERNAL
    t.ClearField("raw_data")
    entry = t.external_data.add()
    entry.key, entry.value = "location", "../secret.bin"
    (tmp_path / "secret.bin").write_bytes(b"\0" * 16)
    (tmp_path / "m").mkdir()
    g = helper.make_graph([], "g", [], [helper.make_tensor_value_info("w", TensorProto.FLOAT, [4])], [t])
    (tmp_path / "m" / "m.onnx").write_bytes(helper.make_model(g).SerializeToString())
    assert main(["import", str(tmp_path / "m" / "m.onnx"), "--out", str(tmp_path / "ir")]) == 2
    err = capsys.readouterr().err
    assert "points outside the directory" in err and not (tmp_path / "ir").exists()


def test_flow_takes_an_onnx_model(trained_ir, tmp_path):
    """`hwq flow --onnx`: import (checked on the whole test split) instead of training, then the same stages."""
    write_qonnx(trained_ir[1], tmp_path / "m.onnx")
    assert main(["flow", "--onnx", str(tmp_path / "m.onnx"), "--samples", "50", "--out", str(tmp_path / "out")]) == 0
    r = json.loads((tmp_path / "out" / "report.json").read_text())
    assert r["source"]["kind"] == "qonnx" and r["source"]["samples"] == 360 and r["bit_exact"]["golden_vs_qonnx"]
    assert r["bit_exact"]["rtl_vs_golden"] and r["accuracy"]["float"] is None
    assert not (tmp_path / "out" / "run").exists()
    assert "executor vs golden on 360 samples (digits test split): <b>equal" in (tmp_path / "out" / "report.html").read_text()


def test_brevitas_1d_cnn_imports_and_simulates_bit_exact(tmp_path):
    """Brevitas QuantConv1d layers (ONNX 1-D Conv on (N, C, L)) become 1 x k convolutions over (C, 1, L)."""
    onnx_path = tmp_path / "cnn1d.onnx"
    accuracy = _train_and_export("cnn1d", 4, 4, onnx_path, epochs=2)
    assert accuracy > 0.2
    assert main(["import", str(onnx_path), "--dataset", "mnist1d", "--samples", "1000", "--out",
                 str(tmp_path / "ir")]) == 0
    ir = load_ir(tmp_path / "ir")
    convs = [la for la in ir.layers if la.op == "conv2d"]
    assert [la.kernel_hw for la in convs] == [(1, 5), (1, 3)] and ir.input_shape == [1, 1, 40]
    assert json.loads((tmp_path / "ir" / "import.json").read_text())["samples"] == 1000
    generate_rtl(ir, load_board("ice40-up5k"), tmp_path / "rtl")
    res = simulate(ir, tmp_path / "rtl", samples=100)
    assert res["bit_exact"], res["first_mismatch"]
    assert all(la["cycles"] == la["estimate_cycles"] for la in res["layers"])
