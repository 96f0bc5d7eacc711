"""Emit the Verilog of a network for a board: ``top.v`` and ``rtl.json`` (every engine's parameters)."""

import time
from dataclasses import asdict
from pathlib import Path

from amaranth.back import verilog

from hwq.fileio import write_json
from hwq.ir import atomic_dir

from .engine import EnginePlan
from .top import NetworkTop, choose_folding, network_plan

__all__ = ["RTL_FORMAT", "TOP_NAME", "describe", "generate_rtl"]

RTL_FORMAT = "hwq-rtl/2"
TOP_NAME = "hwq_top"


def _stage_info(stage, index):
    p = stage.plan
    info = {"stage": index, "engine": stage.kind, "latency_cycles": p.latency, "period_cycles": stage.period}
    if isinstance(p, EnginePlan):
        info.update({
            "array": [p.rows, p.cols], "lanes": p.lanes, "w_bits": p.w_bits, "a_bits": p.a_bits, "out_bits": p.out_bits,
            "acc_bits": p.acc_bits, "requant": p.kind, "param_bits": p.param_bits, "positions": p.positions,
            "tiles": [p.positions, p.n_out_tiles, p.n_in_tiles], "macs": p.macs,
            "macs_per_cycle": round(p.macs / p.latency, 3),
        })
    else:
        info.update({"array": [p.lanes, 1], "lanes": p.lanes, "bits": p.bits, "reads": p.n_reads})
    return info


def describe(plan, ir, board, widths):
    """The rtl.json dict: one entry per IR layer (flatten has no hardware: ``stage`` null)."""
    by_name = {s.layer.name: (k, s) for k, s in enumerate(plan.stages)}
    layers = []
    for layer in ir.layers:
        entry = {"name": layer.name, "op": layer.op}
        if layer.name in by_name:
            entry.update(_stage_info(by_name[layer.name][1], by_name[layer.name][0]))
        else:
            entry.update({"stage": None, "engine": "none", "latency_cycles": 0, "period_cycles": 0})
        layers.append(entry)
    buffers = [{"name": f"buffer{k}", **asdict(b), "total_bits": b.total_bits, "memory": b.style,
                "bram_blocks": b.bram_blocks(board.family)} for k, b in enumerate(plan.buffers)]
    return {
        "format": RTL_FORMAT,
        "top": TOP_NAME,
        "board": board.name,
        "clock_mhz": board.clock_mhz,
        "folding": list(widths),
        "input": {"features": ir.in_features, "bits": ir.input_bits, "load_cycles": plan.load_cycles},
        "output": {"features": plan.out_features, "bits": plan.out_bits, "signed": True},
        "latency_cycles": plan.latency,
        "initiation_interval_cycles": plan.initiation_interval,
        "throughput_per_s": round(board.clock_mhz * 1e6 / plan.initiation_interval, 1),
        "counter_bits": 32,
        "stages": [s.layer.name for s in plan.stages],
        "layers": layers,
        "buffers": buffers,
        "files": ["top.v"],
    }


def generate_rtl(ir, board, out_dir, *, fold=None, lut_budget=None, widths=None):
    """Choose the folding (or take ``widths``, see :func:`rtl_gen.top.network_plan`), write
    ``out_dir/top.v`` and ``out_dir/rtl.json``; return the rtl.json dict."""
    t0 = time.perf_counter()
    widths = widths or choose_folding(ir, board, lut_budget=lut_budget, fold=fold)
    plan = network_plan(ir, widths)
    top = NetworkTop(plan)
    text = verilog.convert(top, name=TOP_NAME, emit_src=False)
    info = describe(plan, ir, board, widths)
    info["seconds"] = round(time.perf_counter() - t0, 3)
    with atomic_dir(out_dir) as tmp:
        Path(tmp, "top.v").write_text(text)
        write_json(Path(tmp, "rtl.json"), info)
    return info
