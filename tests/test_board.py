"""From Verilog to a board: the UART board top, its simulation through hwq.driver, and bitstreams."""

import json
import shutil
import subprocess

import numpy as np
import pytest

from boards import load_board
from hwq import golden
from hwq.cli import main
from hwq.data import load_dataset
from hwq.driver import Device
from hwq.errors import UserError
from sim.board_sim import simulated_board


@pytest.fixture(scope="module")
def demo_rtl(trained_ir, tmp_path_factory):
    """The demo network (the default MLP, shortly trained) generated for the iCEBreaker's UP5K."""
    ir_dir, ir = trained_ir
    rtl = tmp_path_factory.mktemp("demo") / "rtl"
    assert main(["rtl", str(ir_dir), "--board", "ice40-up5k", "--out", str(rtl)]) == 0
    return ir_dir, ir, rtl


@pytest.fixture(scope="module")
def board_dir(demo_rtl, tmp_path_factory):
    ir_dir, _, rtl = demo_rtl
    out = tmp_path_factory.mktemp("board") / "icebreaker"
    assert main(["board", str(rtl), "--ir", str(ir_dir), "--board", "ice40-up5k", "--out", str(out),
                 "--no-bitstream"]) == 0
    return out


def test_the_board_folder_holds_the_top_its_pins_and_the_link(board_dir):
    record = json.loads((board_dir / "board.json").read_text())
    assert (record["format"], record["platform"], record["pin_file"]) == ("hwq-board/1", "icebreaker", "hwq_board.pcf")
    assert record["link"]["divisor"] == 104 and record["link"]["baud"] == 115200  # 12 MHz / 115200
    pcf = (board_dir / "hwq_board.pcf").read_text()
    for pin in ("set_io clk12_0__io 35", "set_io uart_0__rx__io 6", "set_io uart_0__tx__io 9"):  # iCEBreaker's
        assert pin in pcf
    for name in ("hwq_board.il", "hwq_link.v", "ir/manifest.yaml", *record["network_files"]):
        assert (board_dir / name).is_file(), name


def test_the_simulated_board_answers_100_samples_through_the_driver(board_dir):
    """The host link and the network (hwq_link.v, the logic of the bitstream) at the board's real baud rate
    and clock, a serial line modelled bit by bit, and hwq.driver on the host side: 100 digits test samples,
    every logit equal to the golden model's."""
    with simulated_board(board_dir) as url, Device.open(board_dir, url, timeout=30) as dev:
        status = dev.status()
        x = load_dataset("digits", input_bits=dev.ir.input_bits).x_test[:100]
        got = dev.infer(x)
    assert status["design_id"] == json.loads((board_dir / "board.json").read_text())["link"]["design_id"]
    expected = golden.run(dev.ir, x)
    assert got.shape == expected.shape == (100, 10) and np.array_equal(got, expected)


def test_hwq_run_simulate_checks_the_logits_and_fails_on_another_design(board_dir, tmp_path, capsys):
    assert main(["run", str(board_dir), "--simulate", "--samples", "12", "--out", str(tmp_path / "run.json")]) == 0
    result = json.loads((tmp_path / "run.json").read_text())
    assert result["bit_exact"] and result["samples"] == 12 and result["mismatched_samples"] == 0
    # a board folder whose IR says otherwise (a changed bias) sees the difference
    other = tmp_path / "other"
    shutil.copytree(board_dir, other)
    from hwq.ir import load_ir, save_ir

    ir = load_ir(other / "ir")
    last = ir.layers[-1]
    ir.tensors[f"{last.name}.bias"] = ir.tensors[f"{last.name}.bias"] + 1
    save_ir(ir, other / "ir", force=True)
    assert main(["run", str(other), "--simulate", "--samples", "3", "--out", str(tmp_path / "bad.json")]) == 1
    assert "MISMATCH: 3 samples differ" in capsys.readouterr().out


def _built_board(tmp_path, demo_rtl):
    ir_dir, _, rtl = demo_rtl
    out = tmp_path / "built"
    assert main(["board", str(rtl), "--ir", str(ir_dir), "--out", str(out), "--no-bitstream"]) == 0
    return out


def test_board_errors_are_one_line(demo_rtl, tmp_path, capsys):
    ir_dir, _, rtl = demo_rtl
    cases = [
        (["board", str(rtl), "--ir", str(ir_dir), "--board", "ecp5-25f", "--out", str(tmp_path / "a")],
         "generated for ice40-up5k, not ecp5-25f"),
        (["board", str(rtl), "--ir", str(ir_dir), "--board", "ice40-up5k", "--baud", "5000000", "--no-bitstream",
          "--out", str(tmp_path / "b")], "--baud 5000000"),
        (["board", str(rtl), "--ir", str(tmp_path / "none"), "--out", str(tmp_path / "c")], "no IR there"),
        (["run", str(tmp_path), "--simulate"], "not a board folder"),
    ]
    built = _built_board(tmp_path, demo_rtl)
    cases += [(["run", str(built), "--port", str(tmp_path / "no-such-port")], "cannot open the serial port"),
              # pyserial's loop:// echoes what it is sent: no status reply comes back
              (["run", str(built), "--port", "loop://", "--timeout", "0.3"],
               "timed out after 0.3 s waiting for the status reply")]
    for argv, message in cases:
        assert main(argv) != 0
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_a_board_without_pins_and_a_board_file_naming_an_unknown_platform_are_refused(demo_rtl, tmp_path):
    from hwq.board import platform_for

    with pytest.raises(UserError, match="field 'platform' is missing"):
        platform_for(load_board("ecp5-25f"))
    text = (load_board("ice40-up5k").path and open(load_board("ice40-up5k").path).read())
    bad = tmp_path / "bad.yaml"
    bad.write_text(text.replace("platform: icebreaker", "platform: os.system"))
    with pytest.raises(UserError, match="field 'platform': expected one of icebreaker"):
        load_board(str(bad))
    clock = tmp_path / "clock.yaml"
    clock.write_text(text.replace("clock_mhz: 12", "clock_mhz: 48"))
    with pytest.raises(UserError, match="platform's clock runs at 12 MHz"):
        platform_for(load_board(str(clock)))


def test_xilinx_gets_a_vivado_script_and_an_axi_stream_wrapper_that_verilator_accepts(trained_ir, tmp_path):
    from sim.verilator import WARNING_FLAGS, setup_verilator

    ir_dir, _ = trained_ir
    rtl, out = tmp_path / "rtl", tmp_path / "arty"
    assert main(["rtl", str(ir_dir), "--board", "xc7a35t", "--out", str(rtl)]) == 0
    assert main(["board", str(rtl), "--ir", str(ir_dir), "--board", "xc7a35t", "--out", str(out)]) == 0
    record = json.loads((out / "board.json").read_text())
    assert record["bitstream"] is None and record["vivado"]["script"] == "hwq_board.tcl"
    tcl, xdc = (out / "hwq_board.tcl").read_text(), (out / "hwq_board.xdc").read_text()
    assert "create_project" in tcl and "write_bitstream" in tcl and "xc7a35ti" in tcl
    assert "set_property LOC E3" in xdc and "uart_0__tx__io" in xdc  # the Arty's 100 MHz clock and its UART
    setup_verilator()
    axis = (out / "hwq_axis.v").read_text()
    for port in ("s_axis_tdata", "s_axis_tvalid", "s_axis_tready", "m_axis_tdata", "m_axis_tvalid", "m_axis_tready"):
        assert port in axis
    proc = subprocess.run(["verilator", "--lint-only", *WARNING_FLAGS, "-Wno-MULTIDRIVEN", "--top-module", "hwq_axis",
                           str(out / "hwq_axis.v"), *(str(out / f) for f in record["network_files"])],
                          capture_output=True, text=True, cwd=out)
    assert proc.returncode == 0 and "%Error" not in proc.stderr, proc.stderr[-2000:]


@pytest.mark.synth
@pytest.mark.parametrize("board, magic", [("ice40-up5k", b"\x7e\xaa\x99\x7e"), ("ecp5-85f", b"\xff\xff\xbd\xb3")])
def test_bitstreams_of_the_demo_network(trained_ir, tmp_path, board, magic):
    """The iCEBreaker (.bin) and ULX3S (.bit) bitstreams of the demo network: yosys, nextpnr with the
    platform's pin file at the board's clock (met), icepack or ecppack; the file starts as each family's
    bitstreams do (a comment, then the sync word / preamble)."""
    if shutil.which("yosys") is None:
        pytest.skip("yosys is not installed (make installs it as root; else: sudo apt-get install -y yosys)")
    ir_dir, _ = trained_ir
    rtl, out = tmp_path / "rtl", tmp_path / "board"
    assert main(["rtl", str(ir_dir), "--board", board, "--out", str(rtl)]) == 0
    assert main(["board", str(rtl), "--ir", str(ir_dir), "--board", board, "--out", str(out)]) == 0
    record = json.loads((out / "board.json").read_text())
    data = (out / record["bitstream"]).read_bytes()
    assert magic in data[:256] and len(data) > 50_000
    timing = json.loads((out / "timing.json").read_text())
    assert timing["meets"] and timing["fmax_mhz"] >= load_board(board).clock_mhz
    assert (out / record["pin_file"]).is_file()
