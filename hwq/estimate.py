"""Resource and latency estimates per layer and in total, from the components' own plans.

Cycle counts are exact (the engines' analytic latencies, checked against simulation). Resources come
from the calibrated model in ``boards/model.py``: per-component features times coefficients fitted to
yosys results for the board's family (see docs/results/estimator.md for its measured error). Block
RAMs are counted from the memories the generator marks for block RAM (``rtl_gen.engine.ram_style``).
"""

from boards import RESOURCES
from rtl_gen.folding import choose_folding
from rtl_gen.plan import network_plan

__all__ = ["estimate"]


def estimate(ir, board, *, fold=None, lut_budget=None, widths=None):
    """Return {"layers": [...], "buffers": [...], "top": {...}, "totals": {...}} for the IR on ``board``,
    with the folding ``hwq rtl`` would choose (or ``widths``)."""
    widths = widths or choose_folding(ir, board, lut_budget=lut_budget, fold=fold)
    plan = network_plan(ir, widths)
    by_name = {s.layer.name: s for s in plan.stages}
    layers, totals = [], dict.fromkeys(RESOURCES, 0)

    def add(res):
        for k in RESOURCES:
            totals[k] += res[k]
        return res

    for layer in ir.layers:
        stage = by_name.get(layer.name)
        res = add(stage.plan.resources(board.family)) if stage else dict.fromkeys(RESOURCES, 0)
        layers.append({"name": layer.name, "estimate": {**res, "cycles": stage.plan.latency if stage else 0}})
    buffers = [{"name": name, "estimate": add(b.resources(board.family))} for name, b in plan.memories]
    # the top module holds the buffers and skip rings: "top" is its own logic plus them, as yosys counts it
    top = add(plan.top.resources(board.family))
    for b in buffers:
        for k in RESOURCES:
            top[k] += b["estimate"][k]
    totals["cycles"] = plan.latency
    over = board.over(totals)
    return {
        "board": board.name,
        "folding": list(widths),
        "layers": layers,
        "buffers": buffers,
        "top": top,
        "totals": totals,
        "fits": not over,
        "over": over,
        "latency_cycles": plan.latency,
        "latency_us": plan.latency / board.clock_mhz,
        "initiation_interval_cycles": plan.initiation_interval,
        "throughput_per_s": board.clock_mhz * 1e6 / plan.initiation_interval,
    }
