"""Your own network from hwq's layers (`hwq train --model FILE.py:FUNC`): recorded as data, trained with any
method, exported, simulated bit-exact; mistakes in the builder are one-line errors."""

import json

import pytest

from hwq.cli import main
from hwq.custom import Builder, record
from hwq.errors import UserError
from hwq.train import load_run

NETS = '''
def cnn(net):
    net.conv2d(8, kernel=3)
    net.maxpool(2)
    net.conv2d(16, kernel=3, stride=2, padding=0)
    net.flatten()
    net.linear(10)


def mlp(net):
    net.linear(24)
    net.linear(10)


def signal(net):
    net.conv1d(8, kernel=5, stride=2, padding=1)
    net.conv1d(16, kernel=3, stride=2)
    net.flatten()
    net.linear(10)
'''


@pytest.fixture
def nets(tmp_path):
    (tmp_path / "nets.py").write_text(NETS)
    return tmp_path / "nets.py"


@pytest.mark.parametrize("func, dataset, method", [("cnn", "digits", "uniq"), ("mlp", "digits", "lsq"),
                                                   ("signal", "mnist1d", "lsq")])
def test_own_network_goes_through_the_flow(nets, tmp_path, func, dataset, method):
    out = tmp_path / "out"
    assert main(["flow", "--model", f"{nets}:{func}", "--dataset", dataset, "--method", method, "--bits", "3/3",
                 "--epochs-float", "2", "--epochs-qat", "1", "--samples", "60", "--out", str(out)]) == 0
    r = json.loads((out / "report.json").read_text())
    assert r["bit_exact"]["rtl_vs_golden"] and r["bit_exact"]["golden_vs_torch_integer"]
    assert all(la["estimate"]["cycles"] == la["sim"]["cycles"] for la in r["layers"])
    _, ckpt = load_run(out / "run")  # rebuilt from the recorded layers: the file is not run again
    assert ckpt["config"]["model"] == "custom" and ckpt["config"]["spec"][0]["name"] in ("conv1", "fc1")
    if func == "signal":
        assert [la["kernel"] for la in ckpt["config"]["spec"] if la["op"] == "conv2d"] == [[1, 5], [1, 3]]


def test_a_changed_builder_file_is_retrained(nets, tmp_path):
    args = ["flow", "--model", f"{nets}:mlp", "--epochs-float", "1", "--epochs-qat", "1", "--samples", "5",
            "--out", str(tmp_path / "out")]
    assert main(args) == 0
    key = (tmp_path / "out" / "run" / "train-key.txt").read_text()
    nets.write_text(NETS.replace("net.linear(24)", "net.linear(20)"))
    assert main(args) == 0
    assert (tmp_path / "out" / "run" / "train-key.txt").read_text() != key
    assert load_run(tmp_path / "out" / "run")[1]["config"]["spec"][0]["out"] == 20


@pytest.mark.parametrize("body, message", [
    ("net.conv2d(8)\n    net.linear(10)", "layer 2 (linear): takes a vector; flatten the (8, 8, 8) feature map first"),
    ("net.linear(24)\n    net.linear(7)", "the last layer must be linear(10)"),
    ("net.conv1d(4)", "layer 1 (conv1d): takes a signal of shape (C, 1, L), not (1, 8, 8)"),
    ("net.maxpool(16)", "layer 1 (maxpool): needs a feature map of at least 16 x 16"),
    ("net.conv2d(0)", "conv2d: channels must be an integer >= 1, not 0"),
    ("net.dense(10)", "the builder failed: AttributeError"),
])
def test_builder_mistakes_are_one_line_errors(tmp_path, capsys, body, message):
    (tmp_path / "bad.py").write_text(f"def build(net):\n    {body}\n")
    assert main(["train", "--model", f"{tmp_path / 'bad.py'}:build", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "run").exists()


def test_missing_file_or_function(tmp_path, capsys):
    (tmp_path / "m.py").write_text("x = 1\n")
    assert main(["train", "--model", f"{tmp_path / 'm.py'}:build", "--out", str(tmp_path / "run")]) == 2
    assert "defines no function 'build'" in capsys.readouterr().err
    assert main(["train", "--model", f"{tmp_path / 'nope.py'}:build", "--out", str(tmp_path / "run")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_record_follows_shapes():
    b = Builder([1, 8, 8])
    b.conv2d(4, kernel=3, stride=2, padding=1)
    assert b.shape == [4, 4, 4]
    with pytest.raises(UserError, match="the last layer must be linear"):
        record(lambda net: net.conv2d(4), [1, 8, 8], 10)
