"""The calibrated resource model: resources = sum of coefficient * feature, per family and resource.

Coefficients are fitted (non-negative least squares) from yosys runs by ``python -m boards.calibrate``
and stored in ``boards/calibration/coefficients.json``; the features are defined by the components
(``rtl_gen.engine.EnginePlan.cost_features`` / ``register_bits``, ``rtl_gen.plan.TopPlan``).
"""

import json
import math
import re
from functools import cache
from importlib import resources

import numpy as np

from hwq.errors import UserError

__all__ = ["BRAM_SHAPES", "DSP_MAX_WIDTHS", "DSP_MIN_PRODUCT_BITS", "bram_blocks", "cells", "coefficients",
           "correction_log_ratio", "dsp_eligible", "fit", "fit_correction", "multiplier_luts", "multipliers", "plan_resources", "predict",
           "resolve"]

COEFFICIENTS = "calibration/coefficients.json"
MULTIPLIERS = "calibration/multipliers.json"

# Block-RAM aspect ratios per family: (cost in blocks, [(depth, width), ...]) for each primitive that yosys
# maps a memory with one read and one write port to. Xilinx has two primitives (RAMB18E1 counts as half a
# RAMB36E1, as boards/synth.py counts it). Checked against yosys on 24 memory geometries per family.
BRAM_SHAPES = {
    "ice40": [(1, [(256, 16), (512, 8), (1024, 4), (2048, 2)])],                       # SB_RAM40_4K
    "ecp5": [(1, [(512, 36), (1024, 18), (2048, 9), (4096, 4), (8192, 2), (16384, 1)])],  # DP16KD
    "xilinx7": [(0.5, [(512, 36), (1024, 18), (2048, 9), (4096, 4), (8192, 2), (16384, 1)]),  # RAMB18E1
                (1, [(512, 72), (1024, 36), (2048, 18), (4096, 9), (8192, 4), (16384, 2), (32768, 1)])],
}


# The narrowest product (w_bits + a_bits) that yosys maps to a DSP block, per family: its mul2dsp rule
# (DSP_Y_MINWIDTH: 11 bits for iCE40's SB_MAC16, 9 for 7-series' DSP48E1; ECP5's MULT18X18D takes any
# product of two operands of at least 2 bits). A lane we mark for a DSP multiplies with ``*`` and gets one
# DSP; every other product is shift-and-add logic (rtl_gen.arith), so the count is exact. Checked against
# yosys for every pair of bits in tests/test_boards.py (synth).
DSP_MIN_PRODUCT_BITS = {"ice40": 11, "ecp5": 4, "xilinx7": 9}
# The widest operands one DSP block multiplies (wider products are split over several blocks by yosys).
DSP_MAX_WIDTHS = {"ice40": (16, 16), "ecp5": (18, 18), "xilinx7": (25, 18)}


def dsp_eligible(family, a_bits, b_bits):
    """Whether an ``a_bits`` x ``b_bits`` multiplier maps to exactly one DSP block of ``family``."""
    if family not in DSP_MIN_PRODUCT_BITS:
        return False
    wide, narrow = max(a_bits, b_bits), min(a_bits, b_bits)
    max_a, max_b = DSP_MAX_WIDTHS[family]
    return narrow >= 2 and a_bits + b_bits >= DSP_MIN_PRODUCT_BITS[family] and wide <= max_a and narrow <= max_b


@cache
def coefficients():
    path = resources.files("boards") / COEFFICIENTS
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"boards/{COEFFICIENTS} is missing: run `python -m boards.calibrate` to make it") from None


@cache
def multipliers():
    """The measured multiplier table: ``{"families": {family: {"4x8u": LUTs, ...}}, ...}``: what yosys makes of
    one processing element (:class:`rtl_gen.pe.ProcessingElement`, its :func:`rtl_gen.arith.lut_mul` product
    and partial-sum adder) for each pair of operand widths; made by ``python -m boards.calibrate multipliers``."""
    path = resources.files("boards") / MULTIPLIERS
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"boards/{MULTIPLIERS} is missing: run `python -m boards.calibrate multipliers` to make it") from None


def multiplier_luts(family, key):
    """The measured LUTs of multiplier ``key`` (``"<w>x<a><s|u>"``) on ``family``; an activation width between two
    measured ones (9..15 bits: 8, 12 and 16 are measured) is interpolated linearly in the activation width."""
    table = multipliers()["families"].get(family, {})
    if key in table:
        return table[key]
    w, a, sign = re.fullmatch(r"(\d+)x(\d+)([su])", key).groups()
    below = max((b for b in range(1, int(a)) if f"{w}x{b}{sign}" in table), default=None)
    above = min((b for b in range(int(a) + 1, 33) if f"{w}x{b}{sign}" in table), default=None)
    if below is None or above is None:
        raise UserError(f"no measured {key} multiplier for FPGA family {family!r} in boards/{MULTIPLIERS}: "
                        "run `python -m boards.calibrate multipliers`")
    lo, hi = table[f"{w}x{below}{sign}"], table[f"{w}x{above}{sign}"]
    return lo + (hi - lo) * (int(a) - below) / (above - below)


def resolve(family, features):
    """``features`` with every measured one (``"name@key": count``, key of :func:`rtl_gen.arith.multiplier_key`)
    turned into ``"name": count x the family's measured LUTs for key``, summed over keys; others unchanged."""
    out = {}
    for name, value in features.items():
        if "@" in name:
            name, key = name.split("@", 1)
            if value:
                value = value * multiplier_luts(family, key)
        out[name] = out.get(name, 0) + value
    return out


def predict(family, resource, features, correction=None):
    """Estimate of ``resource`` ("lut"/"ff") for a component with these named features; ``correction``: the
    named inputs of the family's correction trees for this resource, if it has them (layer engines' LUTs;
    an engine of more lanes than the family's own sweep had takes the wide sweeps' trees, where fitted)."""
    model = coefficients().get(family, {}).get(resource)
    if model is None:
        raise UserError(f"no calibrated {resource} model for FPGA family {family!r} in boards/{COEFFICIENTS}")
    value = sum(model.get(name, 0.0) * v for name, v in resolve(family, features).items())
    fam = coefficients().get(family, {})
    trees = fam.get(f"{resource}_correction")
    if correction is not None and fam.get(f"{resource}_correction_wide") and \
            correction.get("rows", 0) * correction.get("cols", 0) > fam.get("wide_lanes", math.inf):
        trees = fam[f"{resource}_correction_wide"]  # an engine wider than the family's sweep: the wide sweeps' trees
    if correction is not None and trees:
        value *= math.exp(correction_log_ratio(trees, resolve(family, correction)))
    return round(value)


def correction_log_ratio(trees, inputs):
    """The log of the factor by which boosted regression trees (fitted by ``boards.calibrate``) correct the
    linear model: ``init + rate * sum(tree(inputs))``, each tree stored as parallel lists of nodes (walked
    all at once, level by level; the sum in the trees' order)."""
    feature, threshold, left, right, value, depth, base = _tree_arrays(id(trees), trees)
    x = np.array([float(inputs.get(name, 0)) for name in trees["inputs"]])
    at = base  # each tree's node, as an index into the flat (tree, node) arrays
    for _ in range(depth):
        nxt = np.where(x[feature[at]] <= threshold[at], left[at], right[at])  # (at a leaf: feature -2, not used)
        at = np.where(nxt >= 0, base + nxt, at)  # a leaf stays
    total = trees["init"]
    for v in (trees["rate"] * value[at]).tolist():
        total += v
    return total


_TREE_CACHE = {}


def _tree_arrays(key, trees):
    """The trees as flat arrays of their padded nodes (feature, threshold, left, right, value), their depth and
    each tree's first node, made once per trees object (``key``: its id, kept alive with it)."""
    hit = _TREE_CACHE.get(key)
    if hit is not None and hit[0] is trees:
        return hit[1]
    width = max(len(t[0]) for t in trees["trees"])

    def pad(i, fill, dtype):
        return np.array([t[i] + [fill] * (width - len(t[i])) for t in trees["trees"]], dtype=dtype)

    left, right = pad(2, -1, np.intp), pad(3, -1, np.intp)
    depth = max(_depth(l_, r_) for l_, r_ in zip(left.tolist(), right.tolist(), strict=True))
    arrays = (pad(0, -2, np.intp).ravel(), pad(1, 0.0, float).ravel(), left.ravel(), right.ravel(),
              pad(4, 0.0, float).ravel(), depth, np.arange(len(left)) * width)
    _TREE_CACHE[key] = (trees, arrays)
    return arrays


def _depth(left, right, node=0):
    return 0 if left[node] < 0 else 1 + max(_depth(left, right, left[node]), _depth(left, right, right[node]))


def cells(family, lut, ff):
    """Packed logic cells for a design of ``lut`` LUTs and ``ff`` flip-flops, where the family packs them
    together (iCE40: a logic cell holds one LUT4, one flip-flop and carry logic); None elsewhere. The model
    (linear in LUTs and flip-flops) is fitted to nextpnr's packer on the calibration sweep."""
    model = coefficients().get(family, {}).get("cells")
    if model is None:
        return None
    return round(model.get("const", 0.0) + model.get("lut", 0.0) * lut + model.get("ff", 0.0) * ff)


def bram_blocks(family, depth, width):
    """Block RAMs for a ``depth`` x ``width`` memory: its words tiled over the cheapest primitive shape.

    Known to over-count by one block some deep memories of odd width (yosys packs a 4096 x 9 memory into
    9 iCE40 blocks, this says 10)."""
    shapes = BRAM_SHAPES.get(family)
    if shapes is None:
        raise UserError(f"no block-RAM shapes for FPGA family {family!r} (known: {', '.join(BRAM_SHAPES)})")
    return min(cost * math.ceil(depth / d) * math.ceil(width / w) for cost, options in shapes for d, w in options)


def plan_resources(family, plan):
    """{"lut", "ff", "bram", "dsp"} of a component plan (its ``cost_features`` and ``register_bits``).

    BRAM and DSP are 0 here: components with block-RAM memories or DSP multipliers add their own counts in
    their ``resources``.
    """
    correction = getattr(plan, "correction_inputs", None)
    return {"lut": predict(family, "lut", plan.cost_features, correction),
            "ff": predict(family, "ff", plan.register_bits), "bram": 0, "dsp": 0}


def fit_correction(inputs, actual, linear, seed=0):
    """Boosted regression trees (scikit-learn, 100 trees of depth 3) of ``log(actual / linear)`` on the named
    ``inputs`` of each data point: what the linear model misses in a component's structure (how synthesis
    merges a small ROM into multipliers, constants into comparators, ...). Returned as plain lists for
    :func:`correction_log_ratio`."""
    import numpy as np
    from sklearn.ensemble import GradientBoostingRegressor

    names = sorted({k for row in inputs for k in row})
    x = np.array([[row.get(k, 0) for k in names] for row in inputs], dtype=float)
    y = np.log(np.maximum(np.asarray(actual, float), 1) / np.maximum(np.asarray(linear, float), 1))
    model = GradientBoostingRegressor(n_estimators=100, max_depth=3, learning_rate=0.05, subsample=0.8,
                                      random_state=seed).fit(x, y)
    trees = []
    for (est,) in model.estimators_:
        t = est.tree_
        trees.append([t.feature.tolist(), [round(float(v), 6) for v in t.threshold], t.children_left.tolist(),
                      t.children_right.tolist(), [round(float(v), 6) for v in t.value[:, 0, 0]]])
    return {"inputs": names, "init": float(model.init_.constant_[0][0]), "rate": model.learning_rate, "trees": trees}


def fit(rows, targets, scale=None):
    """Non-negative least squares: coefficients (dict) such that sum(c * row) ~ target, in relative error.

    Each equation is divided by its ``scale`` (default: its target), so large and small designs weigh alike
    (the goal is a small relative error on every design; a component's scale is its design's total).
    """
    import numpy as np
    from scipy.optimize import nnls

    names = sorted({k for r in rows for k in r})
    a = np.array([[r.get(k, 0) for k in names] for r in rows], dtype=float)
    b = np.array(targets, dtype=float)
    w = 1.0 / np.maximum(b if scale is None else np.asarray(scale, dtype=float), 1.0)
    coef, _ = nnls(a * w[:, None], b * w)
    return {k: float(c) for k, c in zip(names, coef, strict=True) if c > 0}
