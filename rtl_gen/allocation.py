"""The hardware side of the bit allocation: every layer's bits and the folding, chosen jointly.

:class:`AllocationSearch` extends the folding program (:mod:`rtl_gen.folding`) with the bits: at every
buffer boundary ``k`` (the word-width index of the folding) one binary variable per (word width, code bits);
every engine has one variable per (weight bits, input width and bits, output width and bits, DSP and
memory choices), priced by the calibrated estimator exactly as the folding search prices it. An engine's
input bits are its producer's output bits because both are tied to the same boundary variable. The score
of a choice (its sensitivity, from :mod:`hwq.sensitivity`) sits on the engine variable (its weight bits) and
on the boundary variable (the activation bits of the layer before it), so the program's objective is the
summed sensitivity, with the resources, the initiation interval and the latency as constraints.

An engine at bits it was never exported with is a *proxy*: its accumulator width comes from
``acc_bits(name, w_bits, a_bits)`` (the allocator computes it from the trained float weights quantized to
``w_bits``), its requantization is the export's default (thresholds up to 4-bit outputs, then
multiply-shift with typical constants), so the allocation's estimate is checked again on the real export.
"""

from dataclasses import dataclass, replace

import numpy as np

from hwq.errors import UserError
from hwq.requant import MULTIPLY_SHIFT_MIN_BITS

from .folding import MAX_LANES, RESOURCE_KEYS, ChoiceProgram, Program, _divisors, _pareto, engine_variants
from .plan import BufferPlan, _prepare, buffer_channels, stage_specs, width_ties

__all__ = ["Allocation", "AllocationSearch", "proxy_engine"]

PROXY_MULT_BITS = 18            # a multiply-shift multiplier as wide as the export's exact fits tend to be (15-18)
PROXY_OFFSET_EXTRA = 12         # offset width over the accumulator's
PROXY_SHIFT_EXTRA = 5           # shift over the accumulator's width
SCORE_SCALE = 1e6


def proxy_engine(plan, w_bits, a_bits, out_bits, acc_bits):
    """``plan`` (an :class:`EnginePlan` of the exported layer) at other bits: ``out_bits`` None for the logits
    layer (a bias requantization). What the export's values decided is not carried over: every weight bit
    counts as live in some ROM word (the export's live bits are of its own weight bits), and constant
    multiply-shift multipliers have half their bits set."""
    common = dict(engine="systolic", w_bits=w_bits, a_bits=a_bits, acc_bits=acc_bits, w_live_bits=None,
                  mult_ones=plan.out_channels * PROXY_MULT_BITS // 2)
    if out_bits is None:
        return replace(plan, **common, out_bits=acc_bits, kind="bias", param_bits=max(2, acc_bits // 2),
                       mult_bits=0, offset_bits=0, shift=0)
    if out_bits < MULTIPLY_SHIFT_MIN_BITS:
        return replace(plan, **common, out_bits=out_bits, kind="thresholds", param_bits=max(2, acc_bits),
                       mult_bits=0, offset_bits=0, shift=0)
    return replace(plan, **common, out_bits=out_bits, kind="multiply_shift", param_bits=0, mult_bits=PROXY_MULT_BITS,
                   offset_bits=acc_bits + PROXY_OFFSET_EXTRA, shift=acc_bits + PROXY_SHIFT_EXTRA)


@dataclass
class Allocation:
    """A solution: per weight layer its weight bits and input bits (``a_bits[i]``, the bits of the codes it
    reads), the word widths, the DSP and block-RAM choices, and what the program's model says of it."""

    names: list
    w_bits: list
    a_bits: list
    widths: tuple
    dsp: frozenset
    block: frozenset
    totals: dict          # estimated lut, ff, bram, dsp (proxy), bops, score, latency
    interval: int

    def to_json(self):
        return {"layers": {n: {"w_bits": w, "a_bits": a} for n, w, a in zip(self.names, self.w_bits, self.a_bits,
                                                                            strict=True)},
                "widths": list(self.widths), "dsp": sorted(self.dsp), "block": sorted(self.block),
                "estimate": {k: self.totals[k] for k in (*RESOURCE_KEYS, "cells") if k in self.totals},
                "bops": self.totals.get("bops"), "score": self.totals.get("score"), "interval": self.interval,
                "latency": self.totals.get("latency")}


class AllocationSearch(ChoiceProgram):
    """The joint bits-and-folding program of a chain network (no residual adds) on one board family.

    ``candidates``: bitwidths for weights and activations; ``acc_bits(name, w_bits, a_bits)``: the proxy
    accumulator width; ``w_score[name][bits]`` and ``a_score[name][bits]``: the sensitivity of a weight
    layer's weights and of its output codes (the next layer's input) at ``bits``.
    """

    def __init__(self, ir, family, candidates, acc_bits, w_score, a_score, *, bram_ok=True, dsp_ok=True,
                 progress=None):
        from hwq.ir import WEIGHT_OPS

        if width_ties(ir):
            raise UserError("the bit allocation handles chains of layers (mlp, cnn); this network has residual "
                            "adds: choose its bits with --bits or --bits-file")
        self.family = family
        self.prog = prog = Program()
        first_shape, specs = stage_specs(ir, _prepare(ir))
        self.n_stages = len(specs)
        self.names = [la.name for la in ir.layers if la.op in WEIGHT_OPS]
        n = len(self.names)
        counts = buffer_channels(ir)
        widths = [_divisors(c, MAX_LANES) if k < len(counts) - 1 else list(range(1, min(c, MAX_LANES) + 1))
                  for k, c in enumerate(counts)]
        cands = sorted(set(candidates))
        # scores are scaled so that the largest is SCORE_SCALE: HiGHS's absolute gap (1e-6) would otherwise
        # swallow the differences of small sensitivities; reported back in the sensitivity's own units
        top = max([max(0.0, float(v)) for d in (*w_score.values(), *a_score.values()) for v in d.values()] or [0.0])
        self.score_scale = SCORE_SCALE / top if top > 0 else 1.0
        # boundary k's code bits: the input's, the candidates, and None after the logits layer
        bits = [[ir.input_bits], *([cands] * (n - 1)), [None]]
        self.boundary_bits, self.macs = bits, {}
        self._bits_only = None
        self._w_score = {name: {b: max(0.0, float(w_score[name][b])) * self.score_scale for b in cands}
                         for name in self.names}
        self._a_score = {k: {b: max(0.0, float(a_score[self.names[k - 1]][b])) * self.score_scale for b in cands}
                         for k in range(1, n)}
        styles = ("logic", "block") if bram_ok else ("logic",)
        self.y = [{(g, b): prog.var({}) for g in widths[k] for b in bits[k]} for k in range(n + 1)]
        self.tags = {}        # variable -> ("w", layer index, bits) or ("a", boundary, bits)
        for k, yk in enumerate(self.y):
            prog.equal(dict.fromkeys(yk.values(), 1), 1)
            for (_, b), v in yk.items():
                if 0 < k < n:
                    prog.scores[v] = max(0.0, float(a_score[self.names[k - 1]][b])) * self.score_scale
                    self.tags[v] = ("a", k, b)
        self.choices = {}
        self.top_vars = {}
        in_features = int(np.prod(first_shape))
        for (g, _), v in self.y[0].items():
            words = in_features // g
            self._buffer("buffer0", BufferPlan(words=words, lanes=g, bits=ir.input_bits), v, styles)
            prog.periods[v] = words
            prog.latencies[v] = words + 1
            self.top_vars[g] = (v, words)
        n_buffers = 1
        engines = [s for s in specs if s.kind == "engine"]
        for spec in specs:
            name = spec.layer.name
            k_in, k_out = spec.k_in, spec.k_out
            if spec.kind == "engine":
                i = k_in
                base0 = spec.make(1, 1)
                self.macs[i] = macs = base0.macs
                by_in, by_out = {}, {}
                combos = [(w, cols, a, rows, o) for w in cands for (cols, a) in self.y[k_in]
                          for (rows, o) in self.y[k_out] if rows * cols <= MAX_LANES]
                for w, cols, a, rows, o in combos:
                    base = proxy_engine(spec.make(cols, rows), w, a, o, acc_bits(name, w, a))
                    options = [(plan.resources(family), plan.latency + 1, plan)
                               for plan in engine_variants(base, family, styles, dsp_ok)]
                    for cost, period, plan in _pareto(options):
                        v = prog.var({**cost, "bops": macs * w * a}, period, score=max(0.0, float(w_score[name][w])) * self.score_scale,
                                     latency=period)
                        self.choices[v] = ("engine", name, plan)
                        self.tags[v] = ("w", i, w)
                        by_in.setdefault((cols, a), {})[v] = 1
                        by_out.setdefault((rows, o), {})[v] = 1
                for key, yv in self.y[k_in].items():
                    prog.equal({**by_in.get(key, {}), yv: -1}, 0)
                for key, yv in self.y[k_out].items():
                    prog.equal({**by_out.get(key, {}), yv: -1}, 0)
                if progress:
                    progress(engines.index(spec) + 1, len(engines))
            else:  # a maxpool keeps the width and the bits
                for (g, b), yv in self.y[k_in].items():
                    plan = replace(spec.make(g, g), bits=b)
                    v = prog.var(plan.resources(family), plan.latency + 1, latency=plan.latency + 1)
                    self.choices[v] = ("maxpool", name, plan)
                    prog.equal({v: 1, yv: -1}, 0)
            if spec.layer is not ir.layers[-1]:
                for (g, b), yv in self.y[k_out].items():
                    plan = spec.make(widths[k_in][0], g) if spec.kind == "engine" else spec.make(g, g)
                    self._buffer(f"buffer{n_buffers}", BufferPlan(words=spec.out_words(plan), lanes=g, bits=b),
                                 yv, styles)
                n_buffers += 1

    @property
    def n_vars(self):
        return len(self.prog.costs)

    def bits_mask(self, w_bits=None, a_bits=None):
        """Exclude every variable whose bits differ from the given ones (lists per weight layer; ``a_bits[i]``
        is layer i's input bits; None: free)."""
        mask = np.zeros(self.n_vars, dtype=bool)
        for v, (kind, idx, b) in self.tags.items():
            if kind == "w" and w_bits is not None:
                mask[v] = w_bits[idx] != b
            elif kind == "a" and a_bits is not None:
                mask[v] = a_bits[idx] != b
        return mask

    def solve(self, interval, limits, cell_model=None, cell_limit=None, **kw):
        """The program's solution at ``interval`` (see :meth:`Program.solve`) as an :class:`Allocation`, or
        None. The top's counters are priced for ``interval``."""
        found = self._solve_at(interval, limits, cell_model, cell_limit, presolve=False, **kw)
        if found is None:
            return None
        chosen, totals = found
        totals["score"] /= self.score_scale
        widths, a_bits = [], []
        for yk in self.y:
            g, b = next(key for key, v in yk.items() if v in chosen)
            widths.append(g)
            a_bits.append(b)
        w_bits = [0] * len(self.names)
        slowest = max(self.prog.periods[v] for v in chosen)
        for v in chosen:
            tag = self.tags.get(v)
            if tag and tag[0] == "w":
                w_bits[tag[1]] = tag[2]
        dsp, block = self.places(chosen)
        if cell_model is not None:
            totals["cells"] = round(cell_model.get("const", 0) + cell_model.get("lut", 0) * totals["lut"]
                                    + cell_model.get("ff", 0) * totals["ff"])
        return Allocation(self.names, w_bits, a_bits[:-1], tuple(widths), dsp, block, totals, slowest)

    def bits_for_bops(self, bops_limit, exclude_bits=()):
        """The least-score bits (no hardware) whose bit operations (sum over layers of MACs x w_bits x input
        bits) stay within ``bops_limit``: (w_bits, a_bits) or None; not any of ``exclude_bits`` ((w_bits,
        a_bits) pairs). A small program of its own: the bits alone, linked at the boundaries like the full one."""
        if self._bits_only is None:
            prog, y, tags = Program(), [], {}
            for k, opts in enumerate(self.boundary_bits):
                y.append({b: prog.var({}, score=self._a_score.get(k, {}).get(b, 0.0)) for b in opts})
                prog.equal(dict.fromkeys(y[k].values(), 1), 1)
            for i, name in enumerate(self.names):
                by_in, by_out = {}, {}
                for w in sorted(self._w_score[name]):
                    for a in y[i]:
                        for o in y[i + 1]:
                            v = prog.var({"bops": self.macs[i] * w * a}, score=self._w_score[name][w])
                            tags[v] = (i, w)
                            by_in.setdefault(a, {})[v] = 1
                            by_out.setdefault(o, {})[v] = 1
                for a, v in y[i].items():
                    prog.equal({**by_in[a], v: -1}, 0)
                for o, v in y[i + 1].items():
                    prog.equal({**by_out[o], v: -1}, 0)
            self._bits_only = (prog, y, tags)
        prog, y, tags = self._bits_only
        cuts = [({**{v: 1 for v, (i, w) in tags.items() if w == w_bits[i]},
                  **{y[k][a_bits[k]]: 1 for k in range(1, len(self.names))}}, 2 * len(self.names) - 2)
                for w_bits, a_bits in exclude_bits]
        found = prog.solve(0, {"bops": bops_limit}, minimize="score", cuts=cuts)
        if found is None:
            return None
        chosen = found[0]
        w_bits = [0] * len(self.names)
        for v in chosen:
            if v in tags:
                w_bits[tags[v][0]] = tags[v][1]
        a_bits = [next(b for b, v in yk.items() if v in chosen) for yk in y[:-1]]
        return w_bits, a_bits

    def _fastest(self, limits, interval_limit, cell_model, cell_limit, **kw):
        """The solution at the smallest interval (bisection over the periods up to ``interval_limit``)."""
        periods = [p for p in self.periods() if p <= interval_limit]
        if not periods:
            return None
        best = self.solve(periods[-1], limits, cell_model, cell_limit, **kw)
        if best is None:
            return None
        lo, hi = 0, len(periods) - 1
        while lo < hi:
            mid = (lo + hi) // 2
            found = self.solve(periods[mid], limits, cell_model, cell_limit, **kw)
            if found is None:
                lo = mid + 1
            else:
                hi, best = mid, found
        return best

    def interval_cap(self, interval_limit=None):
        """The interval the program runs at for a user's limit: the limit, or the slowest option's period."""
        slowest = max(self.periods())
        return min(interval_limit or slowest, slowest)

    def bits_cut(self, w_bits, a_bits):
        """A constraint (for ``cuts``) that rules out exactly these bits (any folding): of the variables that
        carry them, one weight choice per layer and one code choice per inner boundary, not all at once."""
        terms = {v: 1 for v, (kind, idx, b) in self.tags.items()
                 if b == (w_bits[idx] if kind == "w" else a_bits[idx])}
        return terms, len(self.names) + len(self.names) - 2

    def ranked(self, limits, k, *, interval_limit=None, latency_limit=None, cell_model=None, cell_limit=None):
        """The ``k`` least-score allocations with distinct bits within the limits, best first (fewer if fewer bit
        settings fit); each with its fewest-LUT folding at the interval limit (which leaves the most room
        for the estimate's error)."""
        found, cuts = [], []
        top = self.interval_cap(interval_limit)
        while len(found) < k:
            a = self.solve(top, limits, cell_model, cell_limit, minimize="score", latency_limit=latency_limit,
                           cuts=cuts)
            if a is None:
                break
            found.append(a)
            cuts.append(self.bits_cut(a.w_bits, a.a_bits))
        return found

    def best(self, limits, *, interval_limit=None, latency_limit=None, cell_model=None, cell_limit=None,
             exclude=None):
        """The least-score allocation within the limits; among those, the fastest; then the fewest LUTs."""
        kw = dict(latency_limit=latency_limit, exclude=exclude)
        first = self.solve(self.interval_cap(interval_limit), limits, cell_model, cell_limit, minimize="score", **kw)
        if first is None:
            return None
        s = first.totals["score"] * self.score_scale
        return self._fastest(limits, first.interval, cell_model, cell_limit, score_limit=s * (1 + 1e-7) + 1e-3,
                             **kw) or first

    def smallest(self, *, interval_limit=None, latency_limit=None, cell_model=None, exclude=None, limits=None):
        """The fewest-LUT allocation (any bits) within the speed limits and the hard ``limits``."""
        return self.solve(self.interval_cap(interval_limit), limits or {}, cell_model, None, latency_limit=latency_limit,
                          exclude=exclude)

    def fastest(self, limits, *, cell_model=None, cell_limit=None, interval_limit=None, latency_limit=None,
                exclude=None):
        """The allocation with the smallest interval within the limits (any bits not excluded), fewest LUTs."""
        return self._fastest(limits, self.interval_cap(interval_limit), cell_model, cell_limit,
                             latency_limit=latency_limit, exclude=exclude)
