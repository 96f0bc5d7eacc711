"""The command line: bad input gets one line and exit status 2, never a traceback."""

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest

from hwq.cli import main


@pytest.mark.parametrize("argv, message", [
    (["rtl", "ir", "--board", "nope", "--out", "x"], "unknown board 'nope'; known boards: ecp5-25f, ecp5-85f, ice40-hx8k, ice40-up5k, xc7a100t, xc7a35t, xc7z020"),
    (["estimate", "ir", "--board", "nope"], "known boards: ecp5-25f, ecp5-85f"),
    (["export", "does-not-exist", "--out", "x"], "does-not-exist: run directory not found"),
    (["train", "--dataset", "mnist1d", "--model", "cnn", "--out", "x"], "mnist1d samples are 1x40 (use --model mlp, or cnn1d for 1-D signals)"),
])
def test_user_errors_are_one_line(tmp_path, monkeypatch, capsys, argv, message):
    monkeypatch.chdir(tmp_path)
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err


@pytest.mark.parametrize("content, message", [
    (None, "bits.yaml: bits file not found"),
    ("format: hwq-bits/9\n", "bits.yaml: field 'format': expected 'hwq-bits/1', found 'hwq-bits/9'"),
    ("format: hwq-bits/1\nlayers:\n  fc9: {w_bits: 2, a_bits: 2}\n",
     "bits.yaml: layers: unknown layer 'fc9'; this model has fc1, fc2, fc3"),
    ("format: hwq-bits/1\nlayers:\n  fc2: {w_bits: 12, a_bits: 2}\n",
     "bits.yaml: layers.fc2.w_bits: expected an integer in 1..8, found 12"),
    ("format: hwq-bits/1\nlayers:\n  fc1: {w_bits: 2, a_bits: 2}\n",
     "bits.yaml: layers.fc1.a_bits: the first layer reads the dataset's 4-bit codes, found 2"),
])
def test_bad_bits_file(tmp_path, monkeypatch, capsys, content, message):
    monkeypatch.chdir(tmp_path)
    if content is not None:
        (tmp_path / "bits.yaml").write_text(content)
    assert main(["train", "--bits-file", "bits.yaml", "--epochs-float", "0", "--epochs-qat", "0", "--out", "r"]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "r").exists()


def test_missing_local_dataset_says_where_to_put_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HWQ_DATA", str(tmp_path / "data"))
    for name, file in (("mnist", "train-images-idx3-ubyte"), ("cifar10", "data_batch_1.bin")):
        assert main(["train", "--dataset", name, "--out", str(tmp_path / "r")]) == 2
        err = capsys.readouterr().err.strip()
        assert file in err and str(tmp_path / "data" / name) in err and "downloads nothing" in err


def test_local_mnist_files_are_read(tmp_path, monkeypatch):
    import gzip

    import numpy as np

    from hwq.data import load_dataset

    root = tmp_path / "mnist"
    root.mkdir()
    rng = np.random.default_rng(0)

    def idx(name, arr):
        header = bytes([0, 0, 8, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
        with gzip.open(root / f"{name}.gz", "wb") as fh:
            fh.write(header + arr.astype(np.uint8).tobytes())

    idx("train-images-idx3-ubyte", rng.integers(0, 256, (20, 28, 28)))
    idx("train-labels-idx1-ubyte", rng.integers(0, 10, 20))
    idx("t10k-images-idx3-ubyte", rng.integers(0, 256, (5, 28, 28)))
    idx("t10k-labels-idx1-ubyte", rng.integers(0, 10, 5))
    monkeypatch.setenv("HWQ_DATA", str(tmp_path))
    d = load_dataset("mnist")
    assert d.x_train.shape == (20, 784) and d.image_shape == (1, 28, 28) and d.input_bits == 8


def test_mnist1d_is_generated_offline_with_the_published_sizes(tmp_path, monkeypatch):
    """MNIST-1D from the mnist1d package's templates and default arguments (no download), cached after the
    first generation: 4,000 / 1,000 sequences of 40 samples as signed 8-bit codes, ten balanced-ish classes.
    A short training exports with signed inputs, and the golden model equals the integer path and the QONNX
    file run by qonnx's executor."""
    import numpy as np

    from hwq import golden
    from hwq.data import load_dataset
    from hwq.export import export_model
    from hwq.flow import check_model_integer
    from hwq.qonnx_export import run_qonnx, write_qonnx
    from hwq.train import TrainConfig, load_run, train

    monkeypatch.setenv("HWQ_DATA", str(tmp_path))
    d = load_dataset("mnist1d")
    assert (d.x_train.shape, d.x_test.shape, d.input_bits, d.image_shape) == ((4000, 40), (1000, 40), 8, (1, 1, 40))
    assert d.input_signed and d.x_train.min() == -128 and d.x_train.max() == 127 and np.unique(d.x_train).size > 200
    assert sorted(np.unique(d.y_train)) == list(range(10)) and np.bincount(d.y_train).min() > 300
    assert (tmp_path / "mnist1d" / "mnist1d-default.npz").is_file()
    again = load_dataset("mnist1d")
    assert np.array_equal(again.x_test, d.x_test) and np.array_equal(again.y_train, d.y_train)

    cfg = TrainConfig(dataset="mnist1d", w_bits=4, a_bits=4, epochs_float=3, epochs_qat=1)
    metrics = train(cfg, tmp_path / "run", show_progress=False, data=d)
    assert metrics["accuracy"]["fake_quant"] > 0.2  # chance is 0.1
    net, _ = load_run(tmp_path / "run")
    ir = export_model(net, dataset="mnist1d")
    assert ir.input_signed and ir.layers[0].a_signed
    check = check_model_integer(net, ir, d.x_test)
    assert check["equal"] and check["unexplained"] == 0, check
    write_qonnx(ir, tmp_path / "model.onnx")
    assert np.array_equal(run_qonnx(tmp_path / "model.onnx", d.x_test, ir.input_shape), golden.run(ir, d.x_test))


def test_resnet_runs_through_rtl_and_sim_and_its_add_is_not_a_layer_alone(tmp_path, capsys):
    """The resnet model (a residual add) through export, rtl and Verilator, bit-exact; `--layer add1` is a
    one-line error (the add has two inputs)."""
    assert main(["train", "--model", "resnet", "--epochs-float", "1", "--epochs-qat", "1", "--out", str(tmp_path / "r")]) == 0
    assert main(["export", str(tmp_path / "r"), "--out", str(tmp_path / "ir")]) == 0
    assert main(["rtl", str(tmp_path / "ir"), "--board", "xc7a35t", "--out", str(tmp_path / "rtl")]) == 0
    info = json.loads((tmp_path / "rtl" / "rtl.json").read_text())
    assert [s["from"] + ">" + s["to"] for s in info["skips"]] == ["conv1>add1"]
    capsys.readouterr()
    assert main(["sim", str(tmp_path / "ir"), str(tmp_path / "rtl"), "--samples", "30"]) == 0
    res = json.loads((tmp_path / "rtl" / "sim.json").read_text())
    assert res["bit_exact"] and res["samples"] == 30
    assert res["latency_cycles"] == res["latency_cycles_estimate"]
    assert main(["sim", str(tmp_path / "ir"), str(tmp_path / "rtl"), "--layer", "add1"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--layer add1: a residual add reads two layers' outputs" in err and len(err.splitlines()) == 1


def test_corrupt_run_directory(tmp_path, capsys):
    (tmp_path / "run").mkdir()
    assert main(["export", str(tmp_path / "run"), "--out", str(tmp_path / "ir")]) == 2
    assert "checkpoint missing" in capsys.readouterr().err
    (tmp_path / "run" / "checkpoint.pt").write_bytes(b"not a checkpoint")
    assert main(["export", str(tmp_path / "run"), "--out", str(tmp_path / "ir")]) == 2
    err = capsys.readouterr().err.strip()
    assert "checkpoint.pt: not a readable hwq checkpoint" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "ir").exists()


@pytest.mark.parametrize("bits, message", [
    ("9/2", "weight bits must be in 1..8, not 9"),
    ("2/0", "activation bits must be in 1..8, not 0"),
    ("two", "expected W/A with integers in 1..8"),
])
def test_bits_outside_range(capsys, bits, message):
    with pytest.raises(SystemExit) as exc:
        main(["train", "--bits", bits, "--out", "x"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_no_traceback_from_the_installed_command(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "hwq.cli", "rtl", str(tmp_path), "--board", "zz", "--out", "o"],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.startswith("hwq: error: unknown board 'zz'") and "Traceback" not in proc.stderr


def test_boards_lists_the_default(capsys):
    assert main(["boards"]) == 0
    assert "ice40-up5k" in capsys.readouterr().out


def test_help_for_every_command(capsys):
    from hwq.cli import COMMAND_HELP, build_parser

    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices
    for cmd in commands:
        with pytest.raises(SystemExit) as exc:
            main([cmd, "--help"])
        assert exc.value.code == 0
        out = capsys.readouterr().out
        if cmd in COMMAND_HELP:  # a description of what it reads and writes, and examples
            assert "examples:" in out and f"hwq {cmd}" in out, cmd
    assert {"board", "run", "flow", "sim"} <= set(commands) and {"board", "run"} <= set(COMMAND_HELP)


def test_estimate_names_the_overrun_and_the_largest_layer(tmp_path, capsys):
    import numpy as np

    from hwq.ir import save_ir

    from .conftest import random_ir

    ir = random_ir(np.random.default_rng(1), [48, 24, 24], [8, 8], [8, 4], input_bits=8)
    save_ir(ir, tmp_path / "ir")
    assert main(["estimate", str(tmp_path / "ir"), "--board", "ice40-up5k", "--fold", "l0=12x16", "--fold", "l1=16x12"]) == 0
    out = capsys.readouterr().out
    assert "does NOT fit (over by" in out and "LUT" in out and "largest layer l0" in out


def test_export_qonnx_and_golden_commands(trained_run, tmp_path, capsys):
    import numpy as np

    from hwq import golden
    from hwq.data import load_dataset
    from hwq.ir import load_ir
    from hwq.qonnx_export import run_qonnx

    ir_dir = tmp_path / "ir"
    assert main(["export", str(trained_run[0]), "--out", str(ir_dir), "--qonnx", "--requant", "multiply-shift"]) == 0
    out = capsys.readouterr().out
    assert "model.onnx (QONNX)" in out and "multiply-shift >>" in out
    ir = load_ir(ir_dir)
    x = load_dataset().x_test[:50]
    np.save(tmp_path / "x.npy", x)
    assert np.array_equal(run_qonnx(ir_dir / "model.onnx", x, ir.input_shape), golden.run(ir, x))
    assert main(["golden", str(ir_dir), "--inputs", str(tmp_path / "x.npy"), "--out", str(tmp_path / "y.npy")]) == 0
    assert np.array_equal(np.load(tmp_path / "y.npy"), golden.run(ir, x))
    assert main(["golden", str(ir_dir), "--inputs", str(tmp_path / "x.npy"), "--out", str(tmp_path / "h.npy"),
                 "--layer", "fc1"]) == 0
    assert np.array_equal(np.load(tmp_path / "h.npy"), golden.run_layers(ir, x)[0])


@pytest.mark.parametrize("inputs, message", [
    (None, "x.npy: file not found"),
    (lambda np: np.zeros((3, 63), dtype=np.int64), "x.npy: expected an array of shape [N, 64] (input codes), found [3, 63]"),
    (lambda np: np.full((2, 64), 16), "x.npy: value 16 at [0, 0] is outside the input codes 0..15 (4-bit unsigned"),
    (lambda np: np.full((2, 64), 0.5), "x.npy: expected integer codes, found dtype float64 with non-integer values"),
    (lambda np: np.full((2, 64), np.nan), "x.npy: expected integer codes, found NaN or infinity"),
])
def test_golden_rejects_bad_inputs(trained_ir, tmp_path, monkeypatch, capsys, inputs, message):
    import numpy as np

    monkeypatch.chdir(tmp_path)
    if inputs is not None:
        np.save("x.npy", inputs(np))
    assert main(["golden", str(trained_ir[0]), "--inputs", "x.npy", "--out", "y.npy"]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "y.npy").exists()


def test_sim_one_layer_and_the_whole_network_from_the_command_line(trained_ir, tmp_path, capsys):
    """`hwq sim --layer` writes RTL/sim-LAYER.json; too many test samples is a one-line error naming --data."""
    import json

    ir_dir, _ = trained_ir
    assert main(["rtl", str(ir_dir), "--out", str(tmp_path / "rtl")]) == 0
    assert main(["sim", str(ir_dir), str(tmp_path / "rtl"), "--layer", "fc2", "--samples", "20"]) == 0
    res = json.loads((tmp_path / "rtl" / "sim-fc2.json").read_text())
    assert res["layer"] == "fc2" and res["bit_exact"] and res["samples"] == 20 and res["data"] == "test"
    assert res["layers"][0]["cycles"] == res["layers"][0]["estimate_cycles"]
    assert "bit-exact (20 of 20 samples)" in capsys.readouterr().out
    assert main(["sim", str(ir_dir), str(tmp_path / "rtl"), "--samples", "400"]) == 2
    assert "the digits test split has 360 samples; --data all has 1797" in capsys.readouterr().err


def test_every_subcommand_says_what_it_reads_and_writes_with_an_example(capsys):
    from hwq.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    for name, parser in sub.choices.items():
        text = parser.format_help()
        assert parser.description and len(parser.description) > 60, name
        assert "example" in text and f"hwq {name}" in text.split("example")[-1], name


def test_training_prints_a_line_per_epoch_when_not_on_a_terminal(tmp_path):
    """In a pipe, a CI log or a notebook (`!hwq flow`), nothing was printed until training ended."""
    import re

    proc = subprocess.run([sys.executable, "-m", "hwq", "train", "--epochs-float", "2", "--epochs-qat", "3", "--out",
                           str(tmp_path / "r")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if "epoch:" in ln]
    assert [int(re.search(r"epoch: (\d+)/5", ln).group(1)) for ln in lines] == [1, 2, 3, 4, 5]
    assert all(re.search(r"loss \d+\.\d{4}  acc \d\.\d{4}", ln) for ln in lines), lines


def test_a_network_that_cannot_fit_is_refused_before_training(tmp_path, capsys):
    """A network too large for the board once failed only after training had finished."""
    code = main(["flow", "--bits", "6/6", "--lut-budget", "150", "--out", str(tmp_path / "f")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert "checked before training: no folding of this network fits ice40-up5k within 150 LUTs" in err[0]
    assert "raise --lut-budget" in err[0] and "it fits ice40-hx8k" in err[0]
    assert not (tmp_path / "f" / "run").exists()  # nothing was trained


@pytest.mark.parametrize("content, message", [
    ("modle: cnn\n", "flow.yaml: unknown option 'modle'; flow options: "),
    ("synth: yes please\n", "flow.yaml: option 'synth': expected true or false, found 'yes please'"),
    ("- model\n", "flow.yaml: expected a mapping of flow options"),
    ("bits: 9/2\n", "argument --bits"),
    ("model: [\n", "flow.yaml: not valid YAML"),
])
def test_bad_flow_config_is_one_line(tmp_path, capsys, content, message):
    (tmp_path / "flow.yaml").write_text(content)
    try:
        code = main(["flow", "--config", str(tmp_path / "flow.yaml"), "--out", str(tmp_path / "o")])
    except SystemExit as exc:  # argparse's own check of a value, as on the command line
        code = exc.code
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and len(err.splitlines()) == 1, err


EXAMPLES = sorted((Path(__file__).parent.parent / "examples").glob("*.yaml"))


@pytest.mark.parametrize("example", [pytest.param(e, marks=pytest.mark.slow) if "allocated" in e.name or "ecp5" in e.name
                                     else e for e in EXAMPLES], ids=[e.stem for e in EXAMPLES])
def test_each_example_config_runs(tmp_path, example, capsys):
    """examples/*.yaml through `hwq flow --config` with few epochs (the command line overrides the file)."""
    code = main(["flow", "--config", str(example), "--epochs-float", "1", "--epochs-qat", "1", "--samples", "40",
                 "--out", str(tmp_path / "o")])
    assert code == 0, capsys.readouterr().err
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    assert report["bit_exact"]["rtl_vs_golden"]
    import yaml

    cfg = yaml.safe_load(example.read_text())
    assert report["board"] == cfg["board"] and report["model"] == cfg["model"]
