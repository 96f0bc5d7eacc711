"""From Verilog to a board: the network behind a UART host link, the board's pins and clock from an
``amaranth-boards`` platform, and a bitstream built with open tools where they exist.

``build_board(rtl_dir, ir_dir, board, out_dir)`` writes a folder that holds everything a user loads
and runs: ``board.json`` (the board, platform, clock, baud rate and the link's protocol numbers),
``ir/`` (the golden reference ``hwq run`` compares with), the network's Verilog and memory files,
``hwq_link.v`` (the host link and the network: what the simulated board runs), the platform's top
(``hwq_board.il``) and pin file (``.pcf``, ``.lpf`` or ``.xdc``), and then

- iCE40 and ECP5: yosys, nextpnr with the pin file and the board's clock (``timing.json``; a design
  that misses the clock is an error), then icepack (``hwq_board.bin``) or ecppack (``hwq_board.bit``);
- Xilinx 7-series: no open bitstream flow is used; ``hwq_board.tcl`` and ``.xdc`` are for Vivado
  (``vivado -mode batch -source hwq_board.tcl`` in the folder), and ``hwq_axis.v`` wraps the network in
  AXI4-Stream ports for a block design.

Only platforms named in :data:`PLATFORMS` are loaded: a board file names one of them, never a module.
"""

import importlib
import shutil
import subprocess
import time
from pathlib import Path

from .errors import UserError
from .fileio import write_json, write_text

__all__ = ["BOARD_FORMAT", "DEFAULT_BAUD", "PLATFORMS", "build_board", "load_board_dir"]

BOARD_FORMAT = "hwq-board/1"
DEFAULT_BAUD = 115200
TOP = "hwq_board"
# platform name (a board file's ``platform``) -> (amaranth_boards module, class, openFPGALoader's name for the
# board); each has a UART and two LEDs
PLATFORMS = {
    "icebreaker": ("amaranth_boards.icebreaker", "ICEBreakerPlatform", "icebreaker"),
    "ulx3s-85f": ("amaranth_boards.ulx3s", "ULX3S_85F_Platform", "ulx3s"),
    "arty-a7-35": ("amaranth_boards.arty_a7", "ArtyA7_35Platform", "arty_a7_35t"),
    "arty-a7-100": ("amaranth_boards.arty_a7", "ArtyA7_100Platform", "arty_a7_100t"),
}
PIN_FILES = {"ice40": ".pcf", "ecp5": ".lpf", "xilinx7": ".xdc"}


def platform_for(board):
    """The amaranth-boards platform instance of ``board`` (its ``platform`` field), checked against the
    board's clock."""
    if not board.platform:
        raise UserError(f"{board.path}: field 'platform' is missing: this board has no pin description, so "
                        f"no board top can be built (boards with one: {', '.join(_boards_with_platform())})")
    if board.platform not in PLATFORMS:
        raise UserError(f"{board.path}: field 'platform': expected one of {', '.join(PLATFORMS)}, "
                        f"found {board.platform!r}")
    module, cls, _ = PLATFORMS[board.platform]
    try:
        platform = getattr(importlib.import_module(module), cls)()
    except ImportError:
        raise UserError("board tops need the amaranth-boards package: pip install amaranth-boards") from None
    if abs(platform.default_clk_frequency - board.clock_mhz * 1e6) > 1:
        raise UserError(f"{board.path}: field 'clock_mhz': {board.clock_mhz} MHz, but the {board.platform} "
                        f"platform's clock runs at {platform.default_clk_frequency / 1e6:g} MHz")
    return platform


def _boards_with_platform():
    from boards import known_boards, load_board

    return [n for n in known_boards() if load_board(n).platform]


def divisor_for(clock_hz, baud):
    """Clock cycles per UART bit; the baud rate must come out within 2% (what a UART receiver tolerates)."""
    if baud <= 0:
        raise UserError(f"--baud must be positive, not {baud}")
    divisor = round(clock_hz / baud)
    if divisor < 4 or abs(clock_hz / divisor - baud) / baud > 0.02:
        raise UserError(f"--baud {baud}: a {clock_hz / 1e6:g} MHz clock cannot make it within 2% "
                        f"({divisor} clocks per bit)")
    return divisor


def _board_top(info, divisor):
    from amaranth import ClockDomain, ClockSignal, DomainRenamer, Elaboratable, Module, ResetSignal, Signal
    from amaranth.lib import io

    from rtl_gen.hostlink import HostLink

    class BoardTop(Elaboratable):
        """The host link in its own clock domain (the board clock) with a power-on reset of 15 cycles."""

        def elaborate(self, platform):
            m = Module()
            m.domains.link = ClockDomain("link")
            por = Signal(range(16), init=15)
            with m.If(por != 0):
                m.d.sync += por.eq(por - 1)
            m.d.comb += [ClockSignal("link").eq(ClockSignal("sync")), ResetSignal("link").eq(por != 0)]
            link = HostLink(info, divisor, clock_hz=platform.default_clk_frequency)
            m.submodules.link = DomainRenamer("link")(link)
            uart = platform.request("uart", 0, dir="-")
            m.submodules.rx = rx = io.Buffer("i", uart.rx)
            m.submodules.tx = tx = io.Buffer("o", uart.tx)
            m.submodules.led0 = led0 = io.Buffer("o", platform.request("led", 0, dir="-"))
            m.submodules.led1 = led1 = io.Buffer("o", platform.request("led", 1, dir="-"))
            m.d.comb += [link.rx.eq(rx.i), tx.o.eq(link.tx), led0.o.eq(link.led_alive), led1.o.eq(link.led_output)]
            return m

    return BoardTop()


AXIS_TEMPLATE = """// hwq: the network with AXI4-Stream ports (generated by hwq board), for a Vivado block design.
// s_axis: one input word per beat ({words} beats per sample, {word_bits} bits each, first lane in the low
// bits; see docs/formats.md); m_axis: one output per beat ({out_bits} bits: {features} logits of {bits}
// bits, two's complement, logit 0 in the low bits). tlast marks a sample's last beat (outputs: every beat).
module hwq_axis (
  input  wire aclk,
  input  wire aresetn,
  input  wire [{word_pad}-1:0] s_axis_tdata,
  input  wire s_axis_tvalid,
  output wire s_axis_tready,
  input  wire s_axis_tlast,
  output wire [{out_pad}-1:0] m_axis_tdata,
  output wire m_axis_tvalid,
  input  wire m_axis_tready,
  output wire m_axis_tlast
);
  wire [{out_bits}-1:0] o_payload;
  wire [{cyc_w}-1:0] cycles;
  {top} net (.clk(aclk), .rst(~aresetn), .i__payload(s_axis_tdata[{word_bits}-1:0]), .i__valid(s_axis_tvalid),
    .i__ready(s_axis_tready), .o__payload(o_payload), .o__valid(m_axis_tvalid), .o__ready(m_axis_tready),
    .cycles(cycles));
  assign m_axis_tdata = {{{{({out_pad}-{out_bits}){{1'b0}}}}, o_payload}};
  assign m_axis_tlast = 1'b1;
endmodule
"""


def axis_verilog(info, params):
    """Verilog of ``hwq_axis``: the network top with standard AXI4-Stream port names (byte-padded data)."""
    pad = lambda n: max(8, (n + 7) // 8 * 8)  # noqa: E731
    return AXIS_TEMPLATE.format(top=info["top"], words=params["words"], word_bits=params["word_bits"],
                                word_pad=pad(params["word_bits"]), out_bits=params["out_bits"],
                                out_pad=pad(params["out_bits"]), features=info["output"]["features"],
                                bits=info["output"]["bits"],
                                cyc_w=info.get("counter_bits", 32) * len(info["stages"]))


def build_board(rtl_dir, ir_dir, board, out_dir, *, baud=DEFAULT_BAUD, bitstream=True, force=False, log=print,
                timeout=3600):
    """Write the board folder ``out_dir`` for the design in ``rtl_dir`` (checked against the IR in
    ``ir_dir``) on ``board``; return ``board.json``'s dict. The folder is built beside ``out_dir`` and
    swapped in when complete (an existing folder that hwq did not write is kept unless ``force``)."""
    from rtl_gen.emit import _portable, verilog_sources
    from rtl_gen.hostlink import link_params, link_verilog
    from sim.runner import load_rtl

    from .ir import atomic_dir, load_ir, save_ir

    ir = load_ir(ir_dir)
    info = load_rtl(rtl_dir, ir)
    if info["board"] != board.name:
        raise UserError(f"{rtl_dir}: generated for {info['board']}, not {board.name} (its memories and multipliers "
                        f"are the board family's); run `hwq rtl IR --board {board.name}` first")
    platform = platform_for(board)
    divisor = divisor_for(platform.default_clk_frequency, baud)
    params = {**link_params(info, divisor), "baud": baud}
    sources = verilog_sources(rtl_dir, info)
    names = [p.name for p in sources]
    clash = {n for n in names if n.startswith(("hwq_board", "hwq_link", "hwq_axis"))}
    if clash:
        raise UserError(f"{rtl_dir}: file names {sorted(clash)} clash with the board top's files")
    t0 = time.perf_counter()
    with atomic_dir(out_dir, force=force) as tmp:
        save_ir(ir, tmp / "ir")
        for src in sources:
            shutil.copyfile(src, tmp / src.name)
        mem = Path(rtl_dir) / "mem"
        for f in info.get("memory_files", []):
            (tmp / "mem").mkdir(exist_ok=True)
            shutil.copyfile(mem / Path(f).name, tmp / "mem" / Path(f).name)
        write_text(tmp / "hwq_link.v", _portable(link_verilog(info, divisor, clock_hz=platform.default_clk_frequency)))
        for name in names:
            platform.add_file(name, (tmp / name).read_text())
        plan = platform.prepare(_board_top(info, divisor), name=TOP)
        kept = [f for f in plan.files if f.startswith(TOP) and not f.endswith((".ys", ".debug.v"))]
        for f in kept:
            content = plan.files[f]
            write_text(tmp / f, content if isinstance(content, str) else content.decode())
        record = {"format": BOARD_FORMAT, "board": board.name, "platform": board.platform, "family": board.family,
                  "part": board.part, "clock_mhz": board.clock_mhz, "link": params, "top": TOP,
                  "network_top": info["top"], "network_files": names, "pin_file": TOP + PIN_FILES[board.family],
                  "ir_sha256": info["ir_sha256"], "bitstream": None, "timing": None, "vivado": None}
        if board.family == "xilinx7":
            write_text(tmp / "hwq_axis.v", axis_verilog(info, params))
            record["vivado"] = {"script": f"{TOP}.tcl", "command": f"vivado -mode batch -source {TOP}.tcl",
                                "axis_wrapper": "hwq_axis.v"}
            log(f"Xilinx: no open bitstream flow is used; in {out_dir} run `vivado -mode batch -source {TOP}.tcl` "
                f"(with Vivado), or add hwq_axis.v and the network's files to a block design")
        elif bitstream:
            record["bitstream"], record["timing"] = _bitstream(tmp, board, names, log, timeout)
        record["seconds"] = round(time.perf_counter() - t0, 1)
        write_json(tmp / "board.json", record)
    return record


def _bitstream(work, board, names, log, timeout):
    """yosys, nextpnr (pins and clock from the platform's files) and the packer, in ``work``; return
    (the bitstream's file name, the timing dict). Raises UserError when the design misses the clock."""
    from boards.pnr import PnrError, _tool, fmax_mhz, run_nextpnr, utilization
    from boards.synth import tool_env

    yosys = shutil.which("yosys")
    if yosys is None:
        raise UserError("yosys not found; install it with `sudo apt-get install -y yosys`")
    env = tool_env()
    script = (f"read_verilog {' '.join(names)}; read_rtlil {TOP}.il; "
              f"{board.yosys_synth} -top {TOP} -json {TOP}.json")
    log(f"synthesizing the board top with yosys ({board.yosys_synth}) ...")
    t = time.perf_counter()
    proc = subprocess.run([yosys, "-q", "-l", "yosys.log", "-p", script], capture_output=True, text=True,
                          timeout=timeout, cwd=work, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"yosys failed on the board top:\n{proc.stderr[-2000:]}")
    t_synth = time.perf_counter() - t
    pins = TOP + PIN_FILES[board.family]
    if board.family == "ice40":
        pnr = ["--pcf", pins, "--asc", f"{TOP}.asc"]
    else:
        pnr = ["--lpf", pins, "--textcfg", f"{TOP}.config"]
    log(f"placing and routing with {board.pnr['tool']} at the board's {board.clock_mhz:g} MHz clock ...")
    t = time.perf_counter()
    try:  # the pin file holds the clock's constraint
        data = run_nextpnr(board, [*pnr, "--json", f"{TOP}.json", "--log", "nextpnr.log"], work, env, timeout)
    except PnrError as exc:
        raise UserError(f"could not place and route the board top on {board.name}: {exc}") from None
    clocks = {name: v for name, v in data.get("fmax", {}).items() if "achieved" in v}
    fmax = fmax_mhz(data)
    timing = {"tool": board.pnr["tool"], "clock_mhz": board.clock_mhz, "fmax_mhz": fmax,
              "clocks": {k: {"achieved_mhz": round(v["achieved"], 2), "constraint_mhz": round(v["constraint"], 2)}
                         for k, v in clocks.items()},
              "meets": fmax is not None and fmax >= board.clock_mhz, "utilization": utilization(data),
              "seconds": {"synth": round(t_synth, 1), "pnr": round(time.perf_counter() - t, 1)}}
    write_json(work / "timing.json", timing)
    if not timing["meets"]:
        raise UserError(f"the board top on {board.name} does not meet the board's {board.clock_mhz:g} MHz clock: "
                        f"Fmax {timing['fmax_mhz']} MHz (nextpnr); fold the network less widely (--lut-budget) "
                        f"or pick a faster board")
    log(f"timing: Fmax {timing['fmax_mhz']} MHz at a {board.clock_mhz:g} MHz clock (met)")
    if board.family == "ice40":
        out, cmd = f"{TOP}.bin", [_tool("icepack"), f"{TOP}.asc", f"{TOP}.bin"]
    else:
        out, cmd = f"{TOP}.bit", [_tool("ecppack"), "--compress", "--input", f"{TOP}.config", "--bit", f"{TOP}.bit"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=work, env=env)
    if proc.returncode != 0 or not (work / out).is_file():
        raise RuntimeError(f"{cmd[0]} failed: {(proc.stderr + proc.stdout)[-500:]}")
    for f in (f"{TOP}.asc", f"{TOP}.config", f"{TOP}.json"):  # intermediates: the netlist and text config
        (work / f).unlink(missing_ok=True)
    log(f"bitstream: {out} ({(work / out).stat().st_size:,} bytes)")
    return out, timing


def load_board_dir(path):
    """``board.json`` of a board folder, checked: (its dict, the IR)."""
    from .fileio import read_json
    from .ir import load_ir

    path = Path(path)
    if not (path / "board.json").is_file():
        raise UserError(f"{path}: not a board folder (no board.json; `hwq board` writes one)")
    record = read_json(path / "board.json")
    if not isinstance(record, dict) or record.get("format") != BOARD_FORMAT:
        raise UserError(f"{path / 'board.json'}: field 'format': expected {BOARD_FORMAT!r}")
    link = record.get("link")
    need = ("divisor", "word_bits", "words", "word_bytes", "in_bytes", "out_bits", "out_bytes", "fifo_bytes",
            "design_id", "baud", "protocol", "status_bytes", "word_lanes", "out_features")
    if not isinstance(link, dict) or any(not isinstance(link.get(k), (int, str)) for k in need):
        raise UserError(f"{path / 'board.json'}: field 'link': expected the link's numbers ({', '.join(need)})")
    shape = link.get("input_shape")
    if not isinstance(shape, list) or not shape or not all(isinstance(v, int) and v > 0 for v in shape):
        raise UserError(f"{path / 'board.json'}: field 'link.input_shape': expected a list of positive integers, "
                        f"found {shape!r}")
    return record, load_ir(path / "ir")
