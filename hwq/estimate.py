"""Resource and latency estimates per layer and in total, from the engines' own plans.

Cycle counts are exact (the engine's analytic latency, checked against simulation); resources are a
first-order model that issue-tracked calibration against yosys will replace (see docs).
"""

from rtl_gen.top import plans_from_ir, top_latency

__all__ = ["estimate"]

_KEYS = ("lut", "ff", "bram", "dsp")


def estimate(ir, board, *, rows=8, cols=8):
    """Return {"layers": [...], "totals": {...}} for the IR mapped on arrays of rows x cols."""
    plans = plans_from_ir(ir, rows=rows, cols=cols)
    layers, totals = [], dict.fromkeys(_KEYS, 0)
    for layer, plan in zip(ir.layers, plans, strict=True):
        res = plan.resources
        for k in _KEYS:
            totals[k] += res[k]
        layers.append({"name": layer.name, "estimate": {**res, "cycles": plan.latency}})
    latency = top_latency(plans)
    totals["cycles"] = latency
    over = {k: totals[k] - getattr(board, k) for k in _KEYS if totals[k] > getattr(board, k)}
    return {
        "board": board.name,
        "layers": layers,
        "totals": totals,
        "fits": not over,
        "over": over,
        "latency_cycles": latency,
        "latency_us": latency / board.clock_mhz,
    }
