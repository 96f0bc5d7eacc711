"""Verilator: the generated Verilog, simulated cycle by cycle (free-running harness and cocotb), against the
golden model; whole networks and single layers."""

import json
import shutil

import numpy as np
import pytest

from boards import load_board
from hwq import golden
from hwq.errors import UserError
from rtl_gen.emit import generate_rtl, verilog_sources
from sim.harness import build_harness
from sim.runner import compare, load_rtl, simulate

from .conftest import random_inputs, random_ir


@pytest.fixture(scope="module")
def small_design(tmp_path_factory):
    """A small three-layer network with mixed bits (binary weights in the middle), and its Verilog."""
    rng = np.random.default_rng(11)
    ir = random_ir(rng, [20, 12, 8, 5], [3, 1, 2], [4, 2, 3])
    rtl = tmp_path_factory.mktemp("rtl")
    generate_rtl(ir, load_board("ice40-up5k"), rtl, folding=[5, 4, 4, 3])
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
    generate_rtl(bad, load_board("ice40-up5k"), tmp_path / "rtl", folding=[5, 4, 4, 3])
    res = simulate(bad, tmp_path / "rtl", inputs=x, golden_ir=ir)
    assert not res["bit_exact"]
    assert res["mismatched_samples"] > 0
    first = res["first_mismatch"]
    assert first["layer"] == "l2" and first["index"] == 0 and first["position"] == [0]
    assert first["expected"] != first["got"]
    assert first["expected"] == golden.run(ir, x)[first["sample"], 0]
    assert first["sample"] == int(np.argmax((golden.run(ir, x) != golden.run(bad, x)).any(1)))


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
                           *map(str, verilog_sources(rtl))], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "%Error" not in proc.stderr


@pytest.mark.synth
def test_yosys_synthesizes_the_verilog(small_design, tmp_path):
    import shutil
    import subprocess

    from boards.synth import stage_sources

    if shutil.which("yosys") is None:
        pytest.skip("yosys is not installed (make installs it as root; else: sudo apt-get install -y yosys)")
    _, rtl, _ = small_design
    stat = tmp_path / "stat.txt"
    script = f"{stage_sources(verilog_sources(rtl), tmp_path)}; synth_ice40 -top hwq_top; tee -q -o stat.txt stat"
    proc = subprocess.run(["yosys", "-q", "-p", script], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "SB_LUT4" in stat.read_text()


@pytest.mark.parametrize("testbench, p_stall, seed", [("harness", 0.5, 1), ("harness", 0.9, 2), ("cocotb", 0.5, 3)])
def test_random_backpressure_keeps_outputs_exact_and_in_order(small_design, testbench, p_stall, seed):
    ir, rtl, x = small_design
    res = simulate(ir, rtl, inputs=x[:15], backpressure=p_stall, seed=seed, testbench=testbench)
    assert res["bit_exact"], res["first_mismatch"]
    assert res["backpressure"] == p_stall and res["testbench"] == testbench
    for layer in res["layers"]:  # stalls at the output do not change the engines' own timing
        assert layer["cycles"] == layer["estimate_cycles"] and layer["cycles_constant"]
    free = simulate(ir, rtl, inputs=x[:15], testbench=testbench)
    assert res["simulated_cycles"] > free["simulated_cycles"]  # the stalls did happen


def test_cocotb_testbench_sees_what_the_harness_sees(small_design):
    """Two independent testbenches (Verilog harness, Python cocotb) measure the same outputs and cycles."""
    ir, rtl, x = small_design
    fast, slow = simulate(ir, rtl, inputs=x), simulate(ir, rtl, inputs=x, testbench="cocotb")
    assert fast["bit_exact"] and slow["bit_exact"]
    for key in ("layers", "latency_cycles", "latency_cycles_max", "initiation_interval_cycles"):
        assert fast[key] == slow[key], key


def _needs_icarus():
    if shutil.which("iverilog") is None:
        pytest.skip("Icarus Verilog is not installed (make installs it as root; else: sudo apt-get install -y iverilog)")


@pytest.mark.parametrize("testbench, simulator", [("harness", "verilator"), ("cocotb", "verilator"),
                                                  ("harness", "icarus-2012")])
def test_waveforms_are_written(small_design, tmp_path, testbench, simulator):
    if simulator != "verilator":
        _needs_icarus()
    ir, rtl, x = small_design
    res = simulate(ir, rtl, inputs=x[:3], waves=tmp_path / "run.vcd", testbench=testbench, simulator=simulator)
    assert res["bit_exact"]
    text = (tmp_path / "run.vcd").read_text()
    assert "$enddefinitions" in text and "o__valid" in text


# ---- portability: the same harness in Icarus Verilog under Verilog-2005 and SystemVerilog-2012 rules --------

@pytest.mark.parametrize("standard", ["2005", "2012"])
def test_demo_network_is_bit_exact_in_icarus(trained_ir, tmp_path, standard):
    """The demo network (the default MLP, folded for the default board) on 20 digits test samples in Icarus
    Verilog: bit-exact against the golden model, with the cycles Verilator measures."""
    _needs_icarus()
    ir = trained_ir[1]
    generate_rtl(ir, load_board("ice40-up5k"), tmp_path / "rtl")
    res = simulate(ir, tmp_path / "rtl", samples=20, simulator=f"icarus-{standard}")
    assert res["simulator"] == f"icarus-{standard}" and res["samples"] == 20
    assert res["bit_exact"] and res["mismatched_samples"] == 0, res["first_mismatch"]
    ref = simulate(ir, tmp_path / "rtl", samples=20)
    for key in ("layers", "latency_cycles", "initiation_interval_cycles", "simulated_cycles", "accuracy"):
        assert res[key] == ref[key], key


@pytest.mark.parametrize("seed", [0, 5])  # a resnet (conv, add, pool) on the UP5K; a CNN on the Artix-7
def test_random_networks_are_bit_exact_under_systemverilog_rules(seed, tmp_path):
    """Line buffers, skip rings, pools, DSP products and block RAM (random foldings) in Icarus -g2012."""
    from boards.calibrate import random_network

    _needs_icarus()
    rng = np.random.default_rng(seed)
    board = load_board(["ice40-up5k", "ecp5-25f", "xc7a35t"][seed % 3])
    ir, folding = random_network(rng, board)
    assert {"conv2d", "maxpool"} <= {la.op for la in ir.layers}
    generate_rtl(ir, board, tmp_path / "rtl", folding=folding)
    res = simulate(ir, tmp_path / "rtl", inputs=random_inputs(rng, ir, 3), simulator="icarus-2012")
    assert res["bit_exact"], res["first_mismatch"]
    assert all(la["cycles"] == la["estimate_cycles"] for la in res["layers"])


def test_yosys_time0_trick_hangs_under_systemverilog_rules(small_design, tmp_path, monkeypatch):
    """Why the emitter rewrites yosys' time-0 register: with it left in, the design never produces an
    output under SystemVerilog-2012 rules (its combinational blocks never run), so the test above can fail."""
    import rtl_gen.emit

    _needs_icarus()
    ir, rtl, x = small_design
    assert not any("dump_module" in p.read_text() for p in verilog_sources(rtl))
    monkeypatch.setattr(rtl_gen.emit, "_portable", lambda text: text)
    generate_rtl(ir, load_board("ice40-up5k"), tmp_path / "rtl", folding=[5, 4, 4, 3])
    assert any("dump_module" in p.read_text() for p in verilog_sources(tmp_path / "rtl"))
    with pytest.raises(RuntimeError, match="stopped making progress"):
        simulate(ir, tmp_path / "rtl", inputs=x[:2], simulator="icarus-2012")
    assert simulate(ir, tmp_path / "rtl", inputs=x[:2], simulator="icarus-2005")["bit_exact"]


def test_icarus_runs_the_harness_only(small_design):
    ir, rtl, x = small_design
    with pytest.raises(UserError, match="cocotb testbench runs in Verilator"):
        simulate(ir, rtl, inputs=x[:2], testbench="cocotb", simulator="icarus-2012")
    with pytest.raises(UserError, match="--simulator must be one of"):
        simulate(ir, rtl, inputs=x[:2], simulator="iverilog")


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
                           *map(str, verilog_sources(tmp_path / "rtl"))], capture_output=True, text=True)
    assert proc.returncode == 0 and "%Error" not in proc.stderr, proc.stderr
    x = rng.integers(0, 2**ir.input_bits, size=(20, ir.in_features))
    res = simulate(ir, tmp_path / "rtl", inputs=x)
    assert res["bit_exact"], res["first_mismatch"]
    assert all(la["cycles"] == la["estimate_cycles"] for la in res["layers"])
    assert res["latency_cycles"] == info["latency_cycles"]


def test_a_second_run_reuses_the_build(small_design):
    ir, rtl, x = small_design
    simulate(ir, rtl, inputs=x[:2])
    res = simulate(ir, rtl, inputs=x[:2])
    assert res["timings_s"]["build_cached"]


def test_a_design_that_verilator_splits_into_several_files_builds_and_is_exact(small_design, tmp_path, monkeypatch):
    """A design large enough that Verilator splits its C++ (VM_PARALLEL_BUILDS = 1; here forced with
    --output-split) uses Verilator's own precompiled header, not hwq's (GCC takes only one per file): the
    bench's CNN layers once failed to build after hwq's was added."""
    from sim import harness

    ir, rtl, x = small_design
    monkeypatch.setenv("HWQ_CACHE", str(tmp_path / "cache"))
    simulate(ir, rtl, inputs=x[:2])  # an unsplit build first: hwq's header is kept in the cache
    monkeypatch.setattr(harness, "WARNING_FLAGS", [*harness.WARNING_FLAGS, "--output-split", "5000"])
    exe, cached = build_harness(rtl, json.loads((rtl / "rtl.json").read_text()), cycles=1000)  # -O0, as above
    assert not cached and "VM_PARALLEL_BUILDS = 1" in (exe.parent / "Vhwq_tb_classes.mk").read_text()
    res = simulate(ir, rtl, inputs=x)
    assert res["bit_exact"] and res["timings_s"]["build_cached"]


def test_a_new_design_reuses_verilators_compiled_runtime(small_design, tmp_path, monkeypatch):
    """Verilator's runtime is compiled once per installation and options; another design's build compiles
    only the design (its build log names no runtime source), and the simulator it makes is bit-exact."""
    ir, rtl, x = small_design
    monkeypatch.setenv("HWQ_CACHE", str(tmp_path / "cache"))
    logs = []
    for cycles in (None, 10**9):  # two builds of one design (-O0, -Os): two build folders, one runtime
        exe, cached = build_harness(rtl, json.loads((rtl / "rtl.json").read_text()), cycles=cycles or 1)
        assert not cached
        logs.append((exe.parent.parent / "build.log").read_text())
    assert "verilated.cpp" in logs[0] and "verilated.cpp" not in logs[1]
    assert len(list((tmp_path / "cache" / "verilator").glob("runtime-*/verilated.o"))) == 1
    assert simulate(ir, rtl, inputs=x[:2])["bit_exact"]


# ---- one layer on its own (hwq sim --layer) ------------------------------------------------------------

LAYER_CASES = {  # cnn_ir arguments: conv1 (kernel, padding), maxpool, conv2, maxpool, flatten, linear
    "multibit": dict(c0=2, side=6, channels=(4, 4), bits=(4, 3, 2, 5, 3, 4), kernel=3, padding=1),
    "binary": dict(c0=1, side=6, channels=(4, 4), bits=(3, 2, 1, 1, 1, 1), binary=True),
    "k2-extreme": dict(c0=2, side=5, channels=(2, 4), bits=(8, 8, 4, 8, 2, 8), kernel=2, padding=0, extreme=True),
}


@pytest.fixture(scope="module")
def layer_designs(tmp_path_factory):
    """The networks of LAYER_CASES with their Verilog (default folding for the board) and inputs."""
    from boards.calibrate import cnn_ir

    out = {}
    for k, (name, args) in enumerate(LAYER_CASES.items()):
        rng = np.random.default_rng(40 + k)
        ir = cnn_ir(rng, n_out=5, **args)
        rtl = tmp_path_factory.mktemp(f"rtl-{name}")
        generate_rtl(ir, load_board("xc7a35t"), rtl)
        out[name] = ir, rtl, rng.integers(0, 2**ir.input_bits, size=(12, ir.in_features))
    return out


@pytest.mark.parametrize("case, layer", [
    *(("multibit", la) for la in ("conv1", "pool1", "conv2", "pool2", "fc")),
    *(("binary", la) for la in ("conv2", "pool2", "fc")),  # XNOR engines on bipolar inputs, pool on bipolar
    *(pytest.param("k2-extreme", la, marks=pytest.mark.slow) for la in ("conv1", "conv2", "fc")),
])
def test_one_layer_alone_is_bit_exact_with_its_estimated_cycles(layer_designs, case, layer):
    ir, rtl, x = layer_designs[case]
    res = simulate(ir, rtl, inputs=x, layer=layer)
    assert res["layer"] == layer and res["bit_exact"], res["first_mismatch"]
    (entry,) = res["layers"]
    assert entry["name"] == layer and entry["cycles"] == entry["estimate_cycles"]
    net = next(la for la in load_rtl(rtl)["layers"] if la["name"] == layer)
    assert entry["cycles"] == net["latency_cycles"]  # same folding, same timing as inside the network
    assert res["latency_cycles"] == res["latency_cycles_estimate"]


def test_a_corrupted_layer_is_caught_at_its_position(layer_designs):
    """conv2's golden model with one weight changed: the mismatch names the layer, the sample, the output
    (channel, y, x) and both values, and they are the first differing output of the two golden models."""
    import copy

    ir, rtl, x = layer_designs["multibit"]
    bad = copy.deepcopy(ir)
    conv2 = next(la for la in bad.layers if la.name == "conv2")
    bad.tensors[conv2.weights][1] = -bad.tensors[conv2.weights][1]  # output channel 1 changes
    res = simulate(ir, rtl, inputs=x, layer="conv2", golden_ir=bad)
    assert not res["bit_exact"]
    first = res["first_mismatch"]
    want = golden.run_layers(bad, x)[2].transpose(0, 2, 3, 1).reshape(len(x), -1)
    have = golden.run_layers(ir, x)[2].transpose(0, 2, 3, 1).reshape(len(x), -1)
    s, j = first["sample"], first["index"]
    assert first["layer"] == "conv2" and (want[:s] == have[:s]).all() and (want[s, :j] == have[s, :j]).all()
    assert (first["expected"], first["got"]) == (want[s, j], have[s, j])
    c, y, xx = first["position"]
    assert golden.run_layers(bad, x)[2][s, c, y, xx] == first["expected"] and c == 1


def test_inputs_from_the_dataset_splits():
    from types import SimpleNamespace

    from hwq.errors import UserError
    from sim.runner import select_inputs

    ir = SimpleNamespace(dataset="digits", input_bits=4)
    x_all, _ = select_inputs(ir, 1000, "all")
    x_test, _ = select_inputs(ir, 360, "test")
    assert len(x_all) == 1000 and (x_all[:360] == x_test).all()
    with pytest.raises(UserError, match="--data all has 1797"):
        select_inputs(ir, 1000, "test")


def test_inputs_out_of_range_are_a_clear_error(small_design):
    from hwq.errors import UserError

    ir, rtl, x = small_design
    bad = x[:2].copy()
    bad[1, 3] = 2**ir.input_bits
    with pytest.raises(UserError, match=f"input sample 1, feature 3: {2**ir.input_bits} is not a 4-bit unsigned code"):
        simulate(ir, rtl, inputs=bad)


def test_signed_network_inputs_are_bit_exact_in_verilator(tmp_path):
    """Signed 8-bit inputs (MNIST-1D's codes) go in as level indices and come out bit-exact, extremes included."""
    from dataclasses import replace

    from boards.calibrate import network_ir, random_layer

    rng = np.random.default_rng(5)
    l0, t0 = random_layer(rng, "l0", 16, 8, 4, 8, 3, in_signed=True)
    l1, t1 = random_layer(rng, "l1", 8, 4, 3, 3, None)
    ir = replace(network_ir([l0, l1], {**t0, **t1}, input_bits=8), input_signed=True)
    generate_rtl(ir, load_board("ice40-up5k"), tmp_path / "rtl", folding=[4, 2, 1])
    x = rng.integers(-128, 128, size=(20, 16))
    x[0], x[1] = -128, 127
    res = simulate(ir, tmp_path / "rtl", inputs=x)
    assert res["bit_exact"] and res["samples"] == 20, res["first_mismatch"]


@pytest.mark.parametrize("board", ["xc7z020", "ice40-up5k"])
def test_wide_activations_are_bit_exact_in_verilator(board, tmp_path):
    """16-bit signed inputs, 12- and 16-bit codes between layers (multiply-shift requantizations, 12-bit weights),
    with the folding the search chooses (DSP products where the board has them): bit-exact at the extremes, every
    stage's cycles equal to the estimate."""
    from dataclasses import replace

    from boards.calibrate import network_ir, random_layer

    rng = np.random.default_rng(7)
    l0, t0 = random_layer(rng, "l0", 12, 8, 6, 16, 12, in_signed=True, out_signed=True)
    l1, t1 = random_layer(rng, "l1", 8, 6, 12, 12, 16, in_signed=True)
    l2, t2 = random_layer(rng, "l2", 6, 4, 4, 16, None)
    ir = replace(network_ir([l0, l1, l2], {**t0, **t1, **t2}, input_bits=16), input_signed=True)
    info = generate_rtl(ir, load_board(board), tmp_path / "rtl")
    x = rng.integers(-(1 << 15), 1 << 15, size=(12, 12))
    x[0], x[1] = -(1 << 15), (1 << 15) - 1
    res = simulate(ir, tmp_path / "rtl", inputs=x)
    assert res["bit_exact"] and res["samples"] == 12, res["first_mismatch"]
    assert res["latency_cycles"] == res["latency_cycles_estimate"] == info["latency_cycles"]


def test_1d_cnn_is_bit_exact_and_cycles_match(tmp_path):
    """MNIST-1D's CNN (strided 1 x k convolutions over (C, 1, L), signed 8-bit inputs), briefly trained: the
    network and one layer alone, bit-exact with every stage's cycles equal to the estimate."""
    from hwq.data import load_dataset
    from hwq.export import export_model
    from hwq.train import TrainConfig, load_run, train

    data = load_dataset("mnist1d")
    train(TrainConfig(model="cnn1d", dataset="mnist1d", w_bits=2, a_bits=2, epochs_float=1, epochs_qat=1),
          tmp_path / "run", show_progress=False, data=data)
    ir = export_model(load_run(tmp_path / "run")[0], dataset="mnist1d")
    info = generate_rtl(ir, load_board("ice40-up5k"), tmp_path / "rtl")
    res = simulate(ir, tmp_path / "rtl", samples=100)
    assert res["bit_exact"] and res["samples"] == 100, res["first_mismatch"]
    assert all(la["cycles"] == la["estimate_cycles"] for la in res["layers"])
    assert res["latency_cycles"] == info["latency_cycles"]
    alone = simulate(ir, tmp_path / "rtl", samples=30, layer="conv2")
    assert alone["bit_exact"], alone["first_mismatch"]
