import numpy as np
import pytest
import yaml

from hwq.errors import UserError
from hwq.ir import load_ir, save_ir

from .conftest import random_ir


@pytest.fixture
def ir_dir(tmp_path):
    ir = random_ir(np.random.default_rng(0), [12, 6, 4], [2, 2], [4, 2])
    save_ir(ir, tmp_path / "ir")
    return tmp_path / "ir"


def _edit_manifest(ir_dir, edit):
    path = ir_dir / "manifest.yaml"
    m = yaml.safe_load(path.read_text())
    edit(m)
    path.write_text(yaml.safe_dump(m, sort_keys=False))


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
    (lambda m: m["layers"][0].update(w_bits=9), r"layer 'l0': field 'w_bits': expected an integer in 1..8, found 9"),
    (lambda m: m["layers"][1].update(a_bits=0), r"layer 'l1': field 'a_bits': expected an integer in 1..8, found 0"),
    (lambda m: m["layers"][0].update(op="conv3d"), r"layer 'l0': field 'op': expected one of linear, conv2d, maxpool, flatten, add, found 'conv3d'"),
    (lambda m: m["layers"][0].pop("acc_bits"), r"layer 'l0': field 'acc_bits' is missing"),
    (lambda m: m["layers"][0].update(acc_bits=3), r"layer 'l0': field 'acc_bits': 3 can overflow; these inputs need"),
    (lambda m: m["layers"][1].update(in_shape=[7]), r"layer 'l1': field 'in_shape': expected \[6\]"),
    (lambda m: m["layers"][0].update(weights="nope"), r"layer 'l0': tensor 'nope' is missing from tensors.npz"),
])
def test_bad_manifest_is_one_line(ir_dir, edit, message):
    _edit_manifest(ir_dir, edit)
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
