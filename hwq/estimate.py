"""Resource and latency estimates per layer and in total, from the components' own plans.

Cycle counts are exact (the engines' analytic latencies, checked against simulation). Resources come
from the calibrated model in ``boards/model.py``: per-component features times coefficients fitted to
yosys results for the board's family (see docs/results/estimator.md for its measured error). Block
RAMs and DSPs are counted from the folding's choices (``rtl_gen.plan.Folding``: the memories in block RAM,
tiled over the family's block shapes, a ROM over the columns that vary between its words, and one DSP per
multiplier of a DSP layer). On iCE40 the packed
logic cells are estimated too (``boards.model.cells``), and ``fits`` compares them with the board's cells,
since that is what placement needs.
"""

from boards import RESOURCES
from rtl_gen.folding import choose_folding
from rtl_gen.plan import as_folding, network_plan
from rtl_gen.top import stage_bram_blocks

from .ir import check_size

__all__ = ["estimate"]


def estimate(ir, board, *, fold=None, lut_budget=None, folding=None):
    """Return {"layers": [...], "buffers": [...], "top": {...}, "totals": {...}} for the IR on ``board``,
    with the folding ``hwq rtl`` would choose (or ``folding``: a Folding, rtl.json's ``folding`` or widths)."""
    from boards.model import cells

    check_size(ir)
    folding = as_folding(folding) if folding else choose_folding(ir, board, lut_budget=lut_budget, fold=fold)
    plan = network_plan(ir, folding)
    by_name = {s.layer.name: s for s in plan.stages}
    layers, totals = [], dict.fromkeys(RESOURCES, 0)

    def add(res):
        for k in RESOURCES:
            totals[k] += res[k]
        return res

    built_into = plan.built_into  # a shortcut layer's hardware is in its add's stage
    for layer in ir.layers:
        stage = by_name.get(layer.name)
        if stage:
            res = stage.plan.resources(board.family)
            res["bram"] = stage_bram_blocks(stage, board.family, last=stage is plan.stages[-1])  # from the data
            add(res)
        else:
            res = dict.fromkeys(RESOURCES, 0)
        layers.append({"name": layer.name, "estimate": {**res, "cycles": stage.plan.latency if stage else 0},
                       **({"in_stage": built_into[layer.name]} if layer.name in built_into else {})})
    buffers = [{"name": name, "estimate": add(b.resources(board.family))} for name, b in plan.memories]
    # the top module holds the buffers and skip rings: "top" is its own logic plus them, as yosys counts it
    top = add(plan.top.resources(board.family))
    for b in buffers:
        for k in RESOURCES:
            top[k] += b["estimate"][k]
    totals["cycles"] = plan.latency
    packed = cells(board.family, totals["lut"], totals["ff"])
    over = board.over(totals)
    if packed is not None:
        totals["cells"] = packed
        if packed > board.lut:  # an iCE40 logic cell holds one LUT4: the board's LUT count is its cells
            over["cells"] = packed - board.lut
    return {
        "board": board.name,
        "folding": folding.to_json(),
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
