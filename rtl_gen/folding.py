"""The folding search: how many output and input channels each engine processes per cycle.

The word width ``g`` of a buffer is the ``rows`` of the engine before it and the ``cols`` of the engine
after it. :func:`choose_folding` searches the divisors of each buffer's channel count for the fastest
pipeline (smallest initiation interval, then fewest estimated LUTs) that fits a LUT budget;
``fold={layer: (rows, cols)}`` overrides it layer by layer.
"""

import itertools

from hwq.errors import UserError
from hwq.ir import WEIGHT_OPS

from .engine import EnginePlan
from .plan import _prepare, buffer_channels, network_plan, width_ties

__all__ = ["DEFAULT_LUT_FRACTION", "MAX_LANES", "choose_folding"]

# Not more: on iCE40 a logic cell holds one LUT4 and one flip-flop, and packing needed 1.4-1.6x as many
# cells as LUT4s; the demo MLP folded at 80% (4,199 LUTs estimated) needed 5,613 of 5,280 cells.
DEFAULT_LUT_FRACTION = 0.6
MAX_LANES = 64  # largest rows x cols array the folding search considers for one layer


def _divisors(n, limit=MAX_LANES):
    return [d for d in range(1, min(n, limit) + 1) if n % d == 0]


def choose_folding(ir, board, *, lut_budget=None, fold=None):
    """Word widths for :func:`network_plan`: the smallest initiation interval whose estimated LUTs fit
    ``lut_budget`` (default: ``DEFAULT_LUT_FRACTION`` of the board's), fewest LUTs among equals.

    ``fold``: {layer name: (rows, cols)} fixes those layers (checked against the chain: a layer's
    cols is the previous engine's rows). Raises UserError when an override is invalid or nothing fits
    (unless the user fixed every layer: then their folding is returned, and the estimate says it does
    not fit).
    """
    counts = buffer_channels(ir)
    names = [la.name for la in ir.layers if la.op in WEIGHT_OPS]
    fold = dict(fold or {})
    unknown = set(fold) - set(names)
    if unknown:
        raise UserError(f"--fold: no conv2d/linear layer named {sorted(unknown)[0]!r} (layers: {', '.join(names)})")
    options = []
    for k, n in enumerate(counts):
        opts = _divisors(n) if k < len(counts) - 1 else list(range(1, min(n, MAX_LANES) + 1))
        for name, (rows, cols) in fold.items():
            i = names.index(name)
            if k == i + 1:
                opts = [g for g in opts if g == rows]
                if not opts:
                    raise UserError(f"--fold {name}={rows}x{cols}: rows must divide the layer's {n} outputs"
                                    if k < len(counts) - 1 else f"--fold {name}: rows must be 1..{n}")
            if k == i:
                opts = [g for g in opts if g == cols]
                if not opts:
                    raise UserError(f"--fold {name}={rows}x{cols}: cols must divide the layer's {n} input channels")
        options.append(opts)
    ties = width_ties(ir)
    for i, j, add in ties:
        common = sorted(set(options[i]) & set(options[j]))
        if not common:
            raise UserError(f"--fold: the residual add '{add}' reads its two inputs word by word, so their "
                            f"producers need equal rows; the choices left are {options[i]} and {options[j]}")
        options[i] = options[j] = common
    budget = lut_budget if lut_budget is not None else DEFAULT_LUT_FRACTION * board.lut
    best, smallest, prepared = None, None, _prepare(ir)
    for widths in itertools.product(*options):
        if any(widths[i] != widths[j] for i, j, _ in ties):
            continue
        plan = network_plan(ir, widths, prepared)
        if any(s.plan.lanes > MAX_LANES for s in plan.stages if isinstance(s.plan, EnginePlan)) and not fold:
            continue
        res = plan.resources(board.family)
        if smallest is None or res["lut"] < smallest[0]:
            smallest = (res["lut"], widths)
        if res["lut"] > budget or res["bram"] > board.bram:
            continue
        key = (plan.initiation_interval, res["lut"])
        if best is None or key < best[0]:
            best = (key, widths)
    if best is None and fold and all(name in fold for name in names):
        return smallest[1]  # every layer fixed by the user: theirs, even over budget (estimate says so)
    if best is None:
        raise UserError(f"no folding of this network fits {board.name} within {budget:.0f} LUTs and "
                        f"{board.bram} block RAMs; raise --lut-budget or choose a larger board")
    return best[1]
