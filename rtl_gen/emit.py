"""Emit the Verilog of a network for a board: ``top.v`` and ``rtl.json`` (every engine's parameters)."""

import time
from pathlib import Path

from amaranth.back import verilog

from hwq.fileio import write_json
from hwq.ir import atomic_dir

from .top import DEFAULT_COLS, DEFAULT_ROWS, NetworkTop, engines_from_ir

__all__ = ["RTL_FORMAT", "TOP_NAME", "generate_rtl"]

RTL_FORMAT = "hwq-rtl/1"
TOP_NAME = "hwq_top"


def _describe(top, ir, board, rows, cols):
    layers = []
    for layer, engine in zip(ir.layers, top.engines, strict=True):
        p = engine.plan
        layers.append({
            "name": layer.name, "op": layer.op, "engine": "systolic",
            "in_features": p.in_features, "out_features": p.out_features,
            "w_bits": p.w_bits, "a_bits": p.a_bits, "out_bits": p.out_bits, "acc_bits": p.acc_bits,
            "requant": p.kind, "param_bits": p.param_bits, "array": [p.rows, p.cols],
            "tiles": [p.n_out_tiles, p.n_in_tiles], "latency_cycles": p.latency,
        })
    return {
        "format": RTL_FORMAT,
        "top": TOP_NAME,
        "board": board.name,
        "clock_mhz": board.clock_mhz,
        "requested_array": [rows, cols],
        "input": {"features": ir.in_features, "bits": ir.input_bits},
        "output": {"features": top.engines[-1].out_features, "bits": top.engines[-1].out_bits, "signed": True},
        "latency_cycles": top.latency,
        "initiation_interval_cycles": top.initiation_interval,
        "counter_bits": 32,
        "layers": layers,
        "files": ["top.v"],
    }


def generate_rtl(ir, board, out_dir, *, rows=DEFAULT_ROWS, cols=DEFAULT_COLS):
    """Write ``out_dir/top.v`` and ``out_dir/rtl.json``; return the rtl.json dict."""
    t0 = time.perf_counter()
    top = NetworkTop(engines_from_ir(ir, rows=rows, cols=cols), input_bits=ir.input_bits,
                     names=[layer.name for layer in ir.layers])
    text = verilog.convert(top, name=TOP_NAME, emit_src=False)
    info = _describe(top, ir, board, rows, cols)
    info["seconds"] = round(time.perf_counter() - t0, 3)
    with atomic_dir(out_dir) as tmp:
        Path(tmp, "top.v").write_text(text)
        write_json(Path(tmp, "rtl.json"), info)
    return info
