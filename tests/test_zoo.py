"""The whole model zoo, every method: trains briefly, exports (IR and QONNX), and the golden model equals
the PyTorch integer path and the QONNX file run by the qonnx package's executor, exactly, on the digits
test set. Fake-quant disagreements are counted and must be explained (logit ties, multiply-shift rounding)."""

import numpy as np
import pytest
import torch

from hwq import golden
from hwq.data import load_dataset
from hwq.export import export_model
from hwq.flow import check_model_integer
from hwq.ir import load_ir, save_ir
from hwq.qonnx_export import run_qonnx, write_qonnx
from hwq.train import TrainConfig, load_run, pretrain, train

# (model, method, W/A bits, first/last policy, requantization policy). Policy "8" puts the last layer's
# input at 8 bits, so "auto" gives that layer's producer a multiply-shift.
CASES = [
    *[("cnn", m, "2/2", "same", "auto") for m in ("lsq", "uniq", "dorefa", "pact", "sinareq", "tsq", "nbn")],
    ("cnn", "xnor", "1/1", "same", "auto"),
    ("cnn", "uniq", "1/1", "same", "auto"),
    ("cnn", "lsq", "2/2", "8", "auto"),
    ("cnn", "pact", "3/3", "same", "multiply-shift"),
    ("resnet", "lsq", "3/3", "same", "auto"),
    ("resnet", "lsq", "4/4", "8", "multiply-shift"),
    ("resnet", "xnor", "1/1", "same", "auto"),
    ("resnet", "nbn", "2/2", "same", "auto"),
    ("resnet", "tsq", "2/2", "same", "auto"),
    ("mlp", "dorefa", "3/3", "8", "auto"),
    ("mlp", "xnor", "1/1", "same", "auto"),
]


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


@pytest.fixture(scope="module")
def float_states(digits):
    cache = {}

    def get(model):
        if model not in cache:
            cache[model] = pretrain(TrainConfig(model=model, epochs_float=3, seed=0), digits)
        return cache[model]
    return get


@pytest.mark.parametrize(("model", "method", "bits", "first_last", "requant"), CASES,
                         ids=[f"{m}-{q}-W{b[0]}A{b[2]}-{f}-{r}" for m, q, b, f, r in CASES])
def test_zoo_exports_bit_exact(tmp_path, digits, float_states, model, method, bits, first_last, requant):
    w, a = (int(v) for v in bits.split("/"))
    cfg = TrainConfig(model=model, method=method, w_bits=w, a_bits=a, first_last=first_last, epochs_float=3,
                      epochs_qat=2, seed=0)
    metrics = train(cfg, tmp_path / "run", show_progress=False, float_state=float_states(model), data=digits)
    net, _ = load_run(tmp_path / "run")
    ir = export_model(net, method=method, requant=requant)
    if requant != "thresholds" and (first_last == "8" or requant == "multiply-shift"):
        assert any(la.requant_kind == "multiply_shift" for la in ir.layers)
    save_ir(ir, tmp_path / "ir", extra=lambda d: write_qonnx(ir, d / "model.onnx"))
    ir = load_ir(tmp_path / "ir")
    check = check_model_integer(net, ir, digits.x_test)
    assert check["equal"]  # bit-exact, every logit of every sample
    gold = golden.run(ir, digits.x_test)
    assert np.array_equal(run_qonnx(tmp_path / "ir" / "model.onnx", digits.x_test, ir.input_shape), gold)
    assert check["unexplained"] == 0, check
    if not any(la.deviations for la in ir.layers):  # thresholds and exact multiply-shifts: the same float32 ops
        assert check["fake_quant_mismatches"] == 0, check
    assert metrics["accuracy"]["fake_quant"] > 0.3  # two epochs of QAT learn something
    weight_layers = [la for la in ir.layers if la.op in ("linear", "conv2d")]
    assert [la.w_bits for la in weight_layers] == metrics["w_bits"]


def test_first_last_policy_and_bits_file(tmp_path, digits, float_states):
    bits = tmp_path / "bits.yaml"
    bits.write_text("format: hwq-bits/1\nlayers:\n  conv2: {w_bits: 3, a_bits: 5}\n")
    cfg = TrainConfig(model="cnn", method="lsq", w_bits=2, a_bits=2, first_last="8", bits_file=str(bits),
                      epochs_float=3, epochs_qat=1)
    m = train(cfg, tmp_path / "run", show_progress=False, float_state=float_states("cnn"), data=digits)
    assert m["w_bits"] == [8, 3, 8] and m["a_bits"] == [4, 5, 8]
    assert (tmp_path / "run" / "bits.yaml").read_text().count("w_bits") == 3


def test_sinareq_learns_bits_and_writes_them(tmp_path, digits, float_states):
    cfg = TrainConfig(model="cnn", method="sinareq", w_bits=4, a_bits=4, epochs_float=3, epochs_qat=4,
                      sinareq_learn_bits=True)
    m = train(cfg, tmp_path / "run", show_progress=False, float_state=float_states("cnn"), data=digits)
    learned = m["sinareq"]["learned_bits_float"]
    assert all(b < 8.0 for b in learned)  # the bit penalty moved every layer's bitwidth down from 8
    assert m["w_bits"] == m["sinareq"]["w_bits"]
    assert "w_bits" in (tmp_path / "run" / "bits.yaml").read_text()


def test_nbn_variants_quantize_every_neuron(tmp_path, digits, float_states):
    for variant in ("nbn", "layer", "direct"):
        cfg = TrainConfig(model="cnn", method="nbn", w_bits=3, a_bits=3, epochs_float=3, epochs_qat=2,
                          nbn_variant=variant)
        m = train(cfg, tmp_path / variant, show_progress=False, float_state=float_states("cnn"), data=digits)
        net, _ = load_run(tmp_path / variant)
        for layer in net.qlayers:  # every weight is on its grid after the last stage
            codes, _ = layer.wq.quantize(layer.weight)
            assert torch.allclose(layer.wq(layer.weight), layer.quant_weight())
            assert not layer.partial and codes.abs().max() <= 3
        assert m["nbn"]["variant"] == variant


def test_synthetic_dataset_trains_and_exports(tmp_path):
    data = load_dataset("synthetic")
    assert data.x_train.shape[1] == 64 and data.x_train.max() <= 15 and len(data.x_test) == 140
    cfg = TrainConfig(model="mlp", dataset="synthetic", method="uniq", w_bits=3, a_bits=3, epochs_float=5,
                      epochs_qat=3)
    m = train(cfg, tmp_path / "run", show_progress=False, data=data)
    assert m["accuracy"]["fake_quant"] > 0.5  # ten well separated prototypes
    net, _ = load_run(tmp_path / "run")
    ir = export_model(net, dataset="synthetic")
    assert np.array_equal(net.integer_forward(torch.from_numpy(data.x_test)).numpy(), golden.run(ir, data.x_test))


@pytest.mark.parametrize("method", ["lsq", "pact"])
def test_a_learned_step_below_zero_exports_bit_exact(tmp_path, digits, float_states, method):
    """Adam can push a small LSQ step (or PACT clip) below zero; the quantizers use its magnitude, so the
    model, its thresholds and the golden model still agree (a negative step once flipped the next
    layer's monotonicity and the golden model fell to chance while the check called it rounding)."""
    cfg = TrainConfig(model="mlp", method=method, w_bits=3, a_bits=3, epochs_float=3, epochs_qat=1, seed=0)
    train(cfg, tmp_path / "run", show_progress=False, float_state=float_states("mlp"), data=digits)
    net, _ = load_run(tmp_path / "run")
    x = torch.from_numpy(digits.x_test.astype(np.int64))
    with torch.no_grad():
        before = net(x)
        for q in (m.out_q for m in net.modules() if getattr(m, "out_q", None) is not None):
            p = q.step if method == "lsq" else q.alpha
            p.neg_()
        assert torch.equal(net(x), before)
    ir = export_model(net, method=method)
    check = check_model_integer(net, ir, digits.x_test)
    assert check["equal"] and check["fake_quant_mismatches"] == 0, check


@pytest.mark.parametrize(("method", "bits"), [("lsq", "4/4"), ("uniq", "2/2"), ("tsq", "2/2")])
def test_1d_cnn_on_mnist1d_exports_bit_exact(tmp_path, method, bits):
    """The 1-D CNN (1 x k kernels over (C, 1, L)) on MNIST-1D's signed 8-bit inputs: golden == PyTorch integer
    path == qonnx's executor on all 1,000 test sequences."""
    data = load_dataset("mnist1d")
    w, a = (int(v) for v in bits.split("/"))
    cfg = TrainConfig(model="cnn1d", dataset="mnist1d", method=method, w_bits=w, a_bits=a, epochs_float=2,
                      epochs_qat=1, seed=0)
    train(cfg, tmp_path / "run", show_progress=False, data=data)
    net, _ = load_run(tmp_path / "run")
    ir = export_model(net, dataset="mnist1d", method=method)
    assert [la.kernel_hw for la in ir.layers if la.op == "conv2d"] == [(1, 5), (1, 3), (1, 3)]
    assert ir.input_shape == [1, 1, 40] and ir.input_signed
    check = check_model_integer(net, ir, data.x_test)
    assert check["equal"] and check["unexplained"] == 0, check
    save_ir(ir, tmp_path / "ir", extra=lambda d: write_qonnx(ir, d / "model.onnx"))
    back = load_ir(tmp_path / "ir")
    assert np.array_equal(run_qonnx(tmp_path / "ir" / "model.onnx", data.x_test, ir.input_shape),
                          golden.run(back, data.x_test))
