"""Resource and latency estimates per layer and in total, from the components' own plans.

Cycle counts are exact (the engine's analytic latency, checked against simulation). Resources come
from the calibrated model in ``boards/model.py``: per-component features times coefficients fitted to
yosys results for the board's family (see docs/results/estimator.md for its measured error).
"""

from boards import RESOURCES
from rtl_gen.top import DEFAULT_COLS, DEFAULT_ROWS, TopPlan, plans_from_ir, top_latency

__all__ = ["estimate"]


def estimate(ir, board, *, rows=DEFAULT_ROWS, cols=DEFAULT_COLS):
    """Return {"layers": [...], "totals": {...}} for the IR mapped on arrays of rows x cols."""
    plans = plans_from_ir(ir, rows=rows, cols=cols)
    layers, totals = [], dict.fromkeys(RESOURCES, 0)
    for layer, plan in zip(ir.layers, plans, strict=True):
        res = plan.resources(board.family)
        for k in RESOURCES:
            totals[k] += res[k]
        layers.append({"name": layer.name, "estimate": {**res, "cycles": plan.latency}})
    top = TopPlan(n_layers=len(plans), in_features=ir.in_features, input_bits=ir.input_bits).resources(board.family)
    for k in RESOURCES:
        totals[k] += top[k]
    latency = top_latency(plans)
    totals["cycles"] = latency
    over = board.over(totals)
    return {
        "board": board.name,
        "layers": layers,
        "top": top,
        "totals": totals,
        "fits": not over,
        "over": over,
        "latency_cycles": latency,
        "latency_us": latency / board.clock_mhz,
    }
