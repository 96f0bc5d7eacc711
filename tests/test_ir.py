import numpy as np
import pytest

from hwq.errors import UserError
from hwq.ir import load_ir, save_ir

from .conftest import edit_manifest, random_ir


def _edit_tensors(ir_dir, edit):
    path = ir_dir / "tensors.npz"
    with np.load(path) as npz:
        t = {k: npz[k] for k in npz.files}
    edit(t)
    np.savez(path, **t)


def test_roundtrip(ir_dir):
    ir = load_ir(ir_dir)
    assert [la.name for la in ir.layers] == ["l0", "l1"]


@pytest.mark.parametrize("edit, message", [
    (lambda m: m.update(format="hwq-ir/99"), r"top level: field 'format': expected 'hwq-ir/2', found 'hwq-ir/99'"),
    (lambda m: m["layers"][0].update(w_bits=17), r"layer 'l0': field 'w_bits': expected an integer in 1..16, found 17"),
    (lambda m: m["layers"][1].update(a_bits=0), r"layer 'l1': field 'a_bits': expected an integer in 1..16, found 0"),
    (lambda m: m["layers"][0].update(out_bits=9), (r"layer 'l0': field 'out_bits': expected an integer in 1..8 "
                                                  r"\(2\^bits - 1 thresholds or comparators per channel; above 8 bits "
                                                  r"only a weight layer's multiply_shift\), found 9")),
    (lambda m: m["layers"][0].update(op="conv3d"), r"layer 'l0': field 'op': expected one of linear, conv2d, maxpool, avgpool, flatten, add, found 'conv3d'"),
    (lambda m: m["layers"][0].pop("acc_bits"), r"layer 'l0': field 'acc_bits' is missing"),
    (lambda m: m["layers"][0].update(acc_bits=3), r"layer 'l0': field 'acc_bits': 3 can overflow; these inputs need"),
    (lambda m: m["layers"][1].update(in_shape=[7]), r"layer 'l1': field 'in_shape': expected \[6\]"),
    (lambda m: m["layers"][0].update(weights="nope"), r"layer 'l0': tensor 'nope' is missing from tensors.npz"),
])
def test_bad_manifest_is_one_line(ir_dir, edit, message):
    edit_manifest(ir_dir, edit)
    _assert_rejected(ir_dir, message)


def _assert_rejected(ir_dir, message):
    """Loading fails with one line naming the manifest and matching ``message``."""
    with pytest.raises(UserError, match=message) as exc:
        load_ir(ir_dir)
    assert str(ir_dir / "manifest.yaml") in str(exc.value) and "\n" not in str(exc.value)


@pytest.mark.parametrize("edit, message", [
    (lambda t: t.update({"l0.weight": t["l0.weight"][:, :5]}), r"tensor 'l0.weight': expected shape \[6, 12\]"),
    (lambda t: t.update({"l0.weight": t["l0.weight"].astype(float)}), r"expected integers, found dtype float64"),
    (lambda t: t["l0.weight"].__setitem__((0, 0), 5), r"'l0.weight'\[0, 0\] = 5 is not a 2-bit int-grid weight"),
    (lambda t: t["l0.thresholds"].__setitem__((0, 0), 10**6), r"'l0.thresholds' row 0 is not non-decreasing"),
])
def test_bad_tensors_are_rejected(ir_dir, edit, message):
    _edit_tensors(ir_dir, edit)
    with pytest.raises(UserError, match=message):
        load_ir(ir_dir)


def test_missing_and_corrupt_files(tmp_path, ir_dir):
    with pytest.raises(UserError, match="IR directory not found"):
        load_ir(tmp_path / "nothing")
    (ir_dir / "manifest.yaml").write_text("layers: [unclosed")
    with pytest.raises(UserError, match="not valid YAML at line"):
        load_ir(ir_dir)


def test_save_is_atomic_on_failure(tmp_path):
    ir = random_ir(np.random.default_rng(0), [12, 6, 4], [2, 2], [4, 2])
    ir.tensors["l0.weight"][0, 0] = 7  # invalid: save validates first and writes nothing
    with pytest.raises(UserError):
        save_ir(ir, tmp_path / "ir")
    assert not (tmp_path / "ir").exists()
    assert not list(tmp_path.iterdir())


@pytest.fixture(scope="module")
def binary_ms_ir(tmp_path_factory):
    """An untrained, calibrated MLP whose fc2 is binary (XNOR-popcount) and whose fc2 output (6 bits)
    gets a multiply-shift requantization."""
    import torch

    from hwq.data import load_dataset
    from hwq.export import export_model
    from hwq.models import NetConfig, QuantNet

    torch.manual_seed(0)
    net = QuantNet(NetConfig(model="mlp", w_bits=[2, 1, 2], a_bits=[4, 1, 6], wq=["lsq", "xnor", "lsq"],
                             aq=["lsq", "sign", "lsq"], per_channel=[False, True, False]))
    net.calibrate(torch.from_numpy(load_dataset().x_train[:256]))
    net.quantized = True
    ir = export_model(net)
    kinds = [(la.xnor, la.requant_kind) for la in ir.layers]
    assert kinds == [(False, "thresholds"), (True, "multiply_shift"), (False, "bias")], kinds
    out = tmp_path_factory.mktemp("bin") / "ir"
    save_ir(ir, out)
    return out


@pytest.fixture
def bin_dir(binary_ms_ir, tmp_path):
    import shutil

    shutil.copytree(binary_ms_ir, tmp_path / "ir")
    return tmp_path / "ir"


@pytest.mark.parametrize("edit, message", [
    (lambda m: m["layers"][1]["requant"].update(out_scale=float("nan")),
     r"layer 'fc2': requant: field 'out_scale': expected a finite number, found nan"),
    (lambda m: m["layers"][0].update(w_scale=float("inf")),
     r"layer 'fc1': field 'w_scale': expected a finite number or a list of finite numbers, found inf"),
    (lambda m: m["input"].update(scale=float("nan")), r"input: field 'scale': expected a positive number, found nan"),
    (lambda m: m["layers"][1]["requant"].update(shift=40),
     r"layer 'fc2': requant: field 'shift': expected an integer in 0..32, found 40"),
    (lambda m: m["layers"][1]["requant"].update(kind="lookup"),
     r"layer 'fc2': requant: field 'kind': expected one of thresholds, multiply_shift, bias, found 'lookup'"),
    (lambda m: m["layers"][1]["requant"].pop("mult"), r"layer 'fc2': requant: field 'mult' is missing"),
    (lambda m: m["layers"][1].update(out_bits=17), r"layer 'fc2': field 'out_bits': expected an integer in 1..16, found 17"),
    (lambda m: m["layers"][1]["xnor"].update(n=7), r"layer 'fc2': xnor: field 'n': expected 32 \(the layer's fan-in\), found 7"),
    (lambda m: m["layers"][1]["xnor"].update(bit_0=0), r"layer 'fc2': xnor: field 'bit_0': expected -1, found 0"),
    (lambda m: m["layers"][1].pop("xnor"), r"layer 'fc2': field 'xnor' is missing \(a layer with 1-bit weights and bipolar"),
    (lambda m: m["layers"][0].update(xnor={"n": 64}), r"layer 'fc1': field 'xnor': expected no xnor field"),
    (lambda m: m["layers"][2].update(out_shape=[10, 1, 1]), r"layer 'fc3': field 'out_shape': expected \[10\]"),
])
def test_bad_fields_of_binary_and_multiply_shift_layers(bin_dir, edit, message):
    edit_manifest(bin_dir, edit)
    _assert_rejected(bin_dir, message)


@pytest.mark.parametrize("edit, message", [
    (lambda t: t["fc2.mult"].__setitem__(0, 0), r"tensor 'fc2.mult'\[0\] = 0: expected a non-zero multiplier"),
    (lambda t: t["fc2.mult"].__setitem__(0, 2**58), r"tensor 'fc2.mult': acc \* mult \+ offset can reach"),
    (lambda t: t.update({"fc2.offset": t["fc2.offset"][:3]}), r"tensor 'fc2.offset': expected shape \[16\], found \[3\]"),
    (lambda t: t.update({"fc2.weight": np.where(t["fc2.weight"] > 0, 1.0, np.nan)}),
     r"tensor 'fc2.weight': expected integers, found dtype float64"),
    (lambda t: t["fc2.weight"].__setitem__((0, 0), 0), r"'fc2.weight'\[0, 0\] = 0 is not a 1-bit int-grid weight \(expected -1 or \+1\)"),
    (lambda t: t.pop("fc3.bias"), r"tensor 'fc3.bias' is missing from tensors.npz"),
])
def test_bad_tensors_of_binary_and_multiply_shift_layers(bin_dir, edit, message):
    _edit_tensors(bin_dir, edit)
    _assert_rejected(bin_dir, message)


def test_cli_reports_a_bad_ir_in_one_line_with_nonzero_exit(bin_dir, tmp_path):
    import subprocess
    import sys

    edit_manifest(bin_dir, lambda m: m["layers"][1]["requant"].update(shift=-1))
    np.save(tmp_path / "x.npy", np.zeros((2, 64), dtype=np.int64))
    r = subprocess.run([sys.executable, "-m", "hwq", "golden", str(bin_dir), "--inputs", str(tmp_path / "x.npy"),
                        "--out", str(tmp_path / "y.npy")], capture_output=True, text=True)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert r.stderr.strip().count("\n") == 0 and "field 'shift': expected an integer in 0..32, found -1" in r.stderr
    assert not (tmp_path / "y.npy").exists()


def test_a_network_built_in_python_meets_the_same_bit_limits():
    """validate (what an IR built in Python goes through) refuses a 9-bit thresholds requantization with the
    same words as load_ir, and takes a 16-bit multiply-shift."""
    from dataclasses import replace

    from boards.calibrate import network_ir, random_layer
    from hwq.ir import validate

    rng = np.random.default_rng(3)
    l0, t0 = random_layer(rng, "l0", 6, 4, 3, 8, 16)
    l1, t1 = random_layer(rng, "l1", 4, 2, 3, 16, None)
    assert l0.requant_kind == "multiply_shift"
    validate(network_ir([l0, l1], {**t0, **t1}, input_bits=8), "python")
    k0, s0 = random_layer(rng, "l0", 6, 4, 3, 8, 4)
    k1, s1 = random_layer(rng, "l1", 4, 2, 3, 9, None)
    with pytest.raises(UserError, match=r"python: layer 'l0': field 'out_bits': expected an integer in 1..8 \(2\^bits"):
        validate(network_ir([replace(k0, out_bits=9), k1], {**s0, **s1}, input_bits=8), "python")
