"""Verilator + cocotb: the generated Verilog, simulated cycle by cycle, against the golden model."""

import numpy as np
import pytest

from boards import load_board
from hwq import golden
from rtl_gen.emit import generate_rtl
from sim.runner import compare, load_rtl, simulate

from .conftest import random_inputs, random_ir


@pytest.fixture(scope="module")
def small_design(tmp_path_factory):
    """A small three-layer network with mixed bits (binary weights in the middle), and its Verilog."""
    rng = np.random.default_rng(11)
    ir = random_ir(rng, [20, 12, 8, 5], [3, 1, 2], [4, 2, 3])
    rtl = tmp_path_factory.mktemp("rtl")
    generate_rtl(ir, load_board("ice40-up5k"), rtl, widths=[5, 4, 4, 3])
    return ir, rtl, random_inputs(rng, ir, 40)


def test_rtl_is_bit_exact_and_cycles_match(small_design):
    ir, rtl, x = small_design
    res = simulate(ir, rtl, inputs=x)
    assert res["bit_exact"], res["first_mismatch"]
    assert res["samples"] == 40 and res["mismatched_samples"] == 0
    for layer in res["layers"]:
        assert layer["cycles"] == layer["estimate_cycles"] and layer["cycles_constant"]
    # the testbench's own timestamps agree with the hardware's counters and the analytic latency
    assert res["latency_cycles"] == 1 + sum(la["cycles"] + 1 for la in res["layers"])
    info = load_rtl(rtl)
    assert res["latency_cycles"] == info["latency_cycles"]
    assert res["initiation_interval_cycles"] == info["initiation_interval_cycles"] < res["latency_cycles"]


def test_corrupted_weight_is_caught(small_design, tmp_path):
    """Generate RTL from a copy of the IR with one weight changed; checking it against the original fails."""
    ir, _, x = small_design
    bad = random_ir(np.random.default_rng(11), [20, 12, 8, 5], [3, 1, 2], [4, 2, 3])
    w = bad.tensors["l2.weight"]
    j = int(np.argmax((golden.run_layers(ir, x)[1] > 0).sum(0)))  # an input of l2 that is often non-zero
    w[0, j] = 1 if w[0, j] != 1 else -1
    generate_rtl(bad, load_board("ice40-up5k"), tmp_path / "rtl", widths=[5, 4, 4, 3])
    res = simulate(bad, tmp_path / "rtl", inputs=x, golden_ir=ir)
    assert not res["bit_exact"]
    assert res["mismatched_samples"] > 0
    first = res["first_mismatch"]
    assert first["index"] == 0 and first["expected"] != first["got"]


def test_compare_reports_first_mismatch():
    equal, first = compare([[1, 2], [3, 4]], [[1, 2], [3, 5]])
    assert equal.tolist() == [True, False]
    assert first == {"sample": 1, "index": 1, "expected": 4, "got": 5}


def test_verilator_lint_has_no_errors(small_design):
    import subprocess

    from sim.verilator import WARNING_FLAGS, setup_verilator

    _, rtl, _ = small_design
    setup_verilator()
    proc = subprocess.run(["verilator", "--lint-only", *WARNING_FLAGS, "--top-module", "hwq_top",
                           str(rtl / "top.v")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "%Error" not in proc.stderr


@pytest.mark.synth
def test_yosys_synthesizes_the_verilog(small_design, tmp_path):
    import shutil
    import subprocess

    if shutil.which("yosys") is None:
        pytest.skip("yosys is not installed (make installs it as root; else: sudo apt-get install -y yosys)")
    _, rtl, _ = small_design
    stat = tmp_path / "stat.txt"
    script = f"read_verilog {rtl / 'top.v'}; synth_ice40 -top hwq_top; tee -q -o {stat} stat"
    proc = subprocess.run(["yosys", "-q", "-p", script], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "SB_LUT4" in stat.read_text()


@pytest.mark.parametrize("p_stall, seed", [(0.5, 1), (0.9, 2)])
def test_random_backpressure_keeps_outputs_exact_and_in_order(small_design, p_stall, seed):
    ir, rtl, x = small_design
    res = simulate(ir, rtl, inputs=x[:15], backpressure=p_stall, seed=seed)
    assert res["bit_exact"], res["first_mismatch"]
    assert res["backpressure"] == p_stall
    for layer in res["layers"]:  # stalls at the output do not change the engines' own timing
        assert layer["cycles"] == layer["estimate_cycles"] and layer["cycles_constant"]
    free = simulate(ir, rtl, inputs=x[:15])
    assert res["simulated_cycles"] > free["simulated_cycles"]  # the stalls did happen


def test_waveforms_are_written(small_design, tmp_path):
    ir, rtl, x = small_design
    res = simulate(ir, rtl, inputs=x[:3], waves=tmp_path / "run.vcd")
    assert res["bit_exact"]
    text = (tmp_path / "run.vcd").read_text()
    assert "$enddefinitions" in text and "o__valid" in text


@pytest.mark.parametrize("binary", [False, True])
def test_cnn_verilog_lints_and_is_bit_exact_in_verilator(binary, tmp_path):
    """A small CNN (conv, maxpool, conv, maxpool, flatten, linear; binary: XNOR engines) through the
    whole path: folding chosen for the board, Verilator lint clean, simulation bit-exact and every
    stage's measured cycles equal to its estimate."""
    import subprocess

    from boards.calibrate import random_cnn
    from sim.verilator import WARNING_FLAGS, setup_verilator

    rng = np.random.default_rng(21 + binary)
    ir = random_cnn(rng, binary)
    info = generate_rtl(ir, load_board("xc7a35t"), tmp_path / "rtl")
    assert {la["engine"] for la in info["layers"]} >= ({"xnor", "maxpool"} if binary else {"systolic", "maxpool"})
    setup_verilator()
    proc = subprocess.run(["verilator", "--lint-only", *WARNING_FLAGS, "--top-module", "hwq_top",
                           str(tmp_path / "rtl" / "top.v")], capture_output=True, text=True)
    assert proc.returncode == 0 and "%Error" not in proc.stderr, proc.stderr
    x = rng.integers(0, 2**ir.input_bits, size=(20, ir.in_features))
    res = simulate(ir, tmp_path / "rtl", inputs=x)
    assert res["bit_exact"], res["first_mismatch"]
    assert all(la["cycles"] == la["estimate_cycles"] for la in res["layers"])
    assert res["latency_cycles"] == info["latency_cycles"]
