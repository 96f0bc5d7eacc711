"""The folding search: how each layer is laid out on the chip, chosen jointly for the whole network.

A :class:`rtl_gen.plan.Folding` says, for every buffer, its word width (the ``rows`` of the engine before
it and the ``cols`` of the engine after it), which weight layers multiply on DSP blocks, and which memories
(buffers, skip rings, weight and parameter ROMs) are block RAMs. :func:`choose_folding` finds the fastest
pipeline (smallest initiation interval), then the fewest estimated LUTs, within the budgets: LUTs, the
board's flip-flops, block RAMs and DSPs, and on iCE40 the estimated packed logic cells.

The search is exact: an integer linear program (``scipy.optimize.milp``, HiGHS) over one binary variable
per way of building each component, priced by the calibrated resource model (every component's cost is
linear in its own features, so the design's cost is the sum over the chosen options). Word widths tie the
neighbours together (an engine's ``cols`` is the previous engine's ``rows``; a residual add's two producers
have equal ``rows``). For a given interval T, options slower than T are excluded and the program minimises
LUTs; the smallest feasible T is found by bisection over the options' periods.
"""

import itertools
from dataclasses import dataclass, replace

import numpy as np

from hwq.errors import UserError

from .engine import MAX_WORD, EnginePlan
from .plan import BufferPlan, Folding, TopPlan, _prepare, buffer_channels, stage_specs, width_ties

__all__ = ["CELL_FRACTION", "DEFAULT_LUT_FRACTION", "MAX_LANES", "ChoiceProgram", "FoldingSearch", "Program", "board_limits", "check_folding",
           "choose_folding"]

# The automatic folding keeps the estimated LUTs within this share of the board's LUTs, and on iCE40 the
# estimated packed logic cells within CELL_FRACTION of the board's cells (placement needs some room; the
# estimate's cells are fitted to nextpnr's packer, boards/model.py).
DEFAULT_LUT_FRACTION = 0.8
CELL_FRACTION = 0.9
# the bit allocation's program (bits x widths) and the calibration sweeps keep each layer's array within
# MAX_LANES rows x cols; the folding search bounds a layer's lanes only by its shape (rows divide its
# outputs, cols its input channels; the logits layer's rows, the fewest for each number of output tiles) and
# the board's limits
MAX_LANES = 64
# A probe of the interval bisection (is there any folding this fast?) that HiGHS cannot settle in this many
# seconds counts as "no": proving infeasibility near the optimum is what takes long (hls4ml's AD08, whose DSP
# budget is tight: 5.5 s for one proof). The folding returned is then the fastest found, and the final solve
# at its interval is exact; FoldingSearch.undecided lists the intervals left open.
PROBE_SECONDS = 1.5
RESOURCE_KEYS = ("lut", "ff", "bram", "dsp")


def _divisors(n, limit=None):
    return [d for d in range(1, min(n, limit or n) + 1) if n % d == 0]


def check_folding(plan, board):
    """Raise UserError if a folding asks for what the board's family cannot give: DSP multipliers on a
    layer whose product yosys would not put on a DSP (the count would be wrong)."""
    from boards.model import dsp_eligible

    from .shortcut import ShortcutPlan

    for s in plan.stages:
        p = s.plan.engine if isinstance(s.plan, ShortcutPlan) else s.plan  # a shortcut stage: its layer's engine
        if isinstance(p, EnginePlan) and p.dsp and (p.engine != "systolic" or
                                                    not dsp_eligible(board.family, p.w_bits, p.a_bits)):
            raise UserError(f"layer '{s.layer.name}': its {p.w_bits}x{p.a_bits}-bit multipliers do not map to "
                            f"{board.family} DSP blocks (see boards.model.DSP_MIN_PRODUCT_BITS)")
        if isinstance(p, EnginePlan) and p.requant_dsp and (p.kind != "multiply_shift" or
                                                            not dsp_eligible(board.family, p.acc_bits, p.mult_bits)):
            raise UserError(f"layer '{s.layer.name}': its requantization has no multiplier that maps to a "
                            f"{board.family} DSP block")
    names = {s.layer.name for s in plan.stages if isinstance(s.plan, (EnginePlan, ShortcutPlan))}
    unknown = {d for d in (plan.folding.dsp if plan.folding else ()) if d.removesuffix(".requant") not in names}
    if unknown:
        raise UserError(f"folding: no conv2d/linear layer named {sorted(unknown)[0]!r} for a DSP")
    unknown = set(plan.folding.block if plan.folding else ()) - set(plan.memory_names)
    if unknown:
        raise UserError(f"folding: no memory named {sorted(unknown)[0]!r} (memories: {', '.join(plan.memory_names)})")


@dataclass
class _Option:
    """One way to build one component: which variable chooses it, what it costs and how slow it is."""

    var: int
    cost: dict
    period: int = 0


class Program:
    """A 0/1 integer program under construction: variables with resource costs (and, for the bit allocation,
    a score and a latency), equality constraints."""

    def __init__(self):
        self.costs = []      # per variable: {"lut", "ff", "bram", "dsp"}
        self.periods = []    # per variable: the period it forces (0: none)
        self.scores = []     # per variable: what the allocation minimises (the sensitivity of a choice)
        self.latencies = []  # per variable: cycles it adds to the latency
        self.rows = []       # equality constraints: ({var: coefficient}, right-hand side)
        self._matrix = None

    def var(self, cost, period=0, score=0.0, latency=0):
        self.costs.append({**dict.fromkeys(RESOURCE_KEYS, 0), **cost})
        self.periods.append(period)
        self.scores.append(float(score))
        self.latencies.append(latency)
        self._matrix = None
        return len(self.costs) - 1

    def equal(self, terms, rhs=0):
        self.rows.append((terms, rhs))
        self._matrix = None

    def _equalities(self):
        from scipy.sparse import coo_array

        if self._matrix is None:
            r, c, v = [], [], []
            for i, (terms, _) in enumerate(self.rows):
                for var, coef in terms.items():
                    r.append(i)
                    c.append(var)
                    v.append(coef)
            rhs = np.array([value for _, value in self.rows], dtype=float)
            self._matrix = (coo_array((v, (r, c)), shape=(len(self.rows), len(self.costs))).tocsr(), rhs)
        return self._matrix

    def solve(self, interval, limits, cell_model=None, cell_limit=None, *, minimize="lut", score_limit=None,
              latency_limit=None, exclude=None, cuts=(), presolve=True, time_limit=120):
        """The chosen variables and the totals, or None if infeasible: every chosen variable's period <=
        ``interval``, the resource totals within ``limits`` ({key: max or None}), the iCE40 cells within
        ``cell_limit``, the summed score within ``score_limit`` and latency within ``latency_limit``.
        ``minimize``: "nothing" (any solution), "lut" (fewest LUTs, then flip-flops) or "score" (least score, then fewer LUTs: the LUTs
        weigh 1e-3 in all, so the scores should be scaled to make smaller differences irrelevant).
        ``limits`` may name other costs the variables carry (the allocation's "bops"); ``exclude``: a boolean
        mask of variables that must not be chosen; ``cuts``: more constraints, ({variable: coefficient},
        upper bound) each (the allocation's exclusion of bits already found). ``presolve``: HiGHS's presolve (the allocation's programs,
        tens of thousands of columns, solve faster without it)."""
        from scipy.optimize import Bounds, LinearConstraint, milp

        n = len(self.costs)
        cost = {k: np.array([c.get(k, 0) for c in self.costs], dtype=float) for k in {*RESOURCE_KEYS, *limits}}
        score, latency = np.array(self.scores), np.array(self.latencies, dtype=float)
        upper = np.ones(n)
        upper[np.array(self.periods) > interval] = 0
        if exclude is not None:
            upper[np.asarray(exclude, dtype=bool)] = 0
        eq, rhs = self._equalities()
        constraints = [LinearConstraint(eq, rhs, rhs)]
        ineq, bound = [], []
        for key, limit in limits.items():
            if limit is not None:
                ineq.append(cost[key])
                bound.append(limit)
        if cell_model is not None and cell_limit is not None:
            ineq.append(cell_model.get("lut", 0) * cost["lut"] + cell_model.get("ff", 0) * cost["ff"])
            bound.append(cell_limit - cell_model.get("const", 0))
        if score_limit is not None:
            ineq.append(score)
            bound.append(score_limit)
        if latency_limit is not None:
            ineq.append(latency)
            bound.append(latency_limit)
        for terms, upper_bound in cuts:
            row = np.zeros(n)
            row[list(terms)] = list(terms.values())
            ineq.append(row)
            bound.append(upper_bound)
        if ineq:
            constraints.append(LinearConstraint(np.array(ineq), -np.inf, np.array(bound, dtype=float)))
        hardware = cost["lut"] + 1e-4 * cost["ff"] + 1e-6 * (cost["bram"] + cost["dsp"])
        if minimize == "nothing":  # feasibility: the first solution found
            objective, gap = np.zeros(n), 0
        elif minimize == "lut":
            objective, gap = hardware, 0
        else:  # least score; fewer LUTs break ties (all of the LUTs within the limit weigh 1e-3)
            ref = float(limits.get("lut") or hardware.sum() or 1)
            objective, gap = score + (1e-3 / ref) * hardware, 1e-9
        # the variables that may be chosen: HiGHS solves the program on these columns only (without its presolve,
        # a column fixed at 0 still costs time; the probes at short intervals leave out most of the options)
        live = np.flatnonzero(upper > 0)
        constraints = [LinearConstraint(con.A[:, live], con.lb, con.ub) for con in constraints]
        res = milp(objective[live], integrality=np.ones(len(live)), bounds=Bounds(np.zeros(len(live)), upper[live]),
                   constraints=constraints, options={"mip_rel_gap": gap, "time_limit": time_limit, "presolve": presolve})
        self.last_status = res.status  # 1: the time limit was reached (with or without a solution)
        if res.status not in (0, 1) or res.x is None:  # 1: time limit reached with a feasible solution
            return None
        chosen = live[res.x > 0.5]
        totals = {k: round(float(cost[k][chosen].sum()) * 2) / 2 if k == "bram" else round(float(cost[k][chosen].sum()))
                  for k in cost}
        totals["score"] = float(score[chosen].sum())
        totals["latency"] = int(latency[chosen].sum())
        return set(chosen.tolist()), totals


def _pareto(options):
    """Drop options that another beats or ties on every resource and the period: (cost, period, plan) each."""
    keep = []
    for i, (cost, period, _) in enumerate(options):
        def beats(o, cost=cost, period=period):
            c, p, _ = o
            return all(c[k] <= cost[k] for k in RESOURCE_KEYS) and p <= period
        if not any(beats(o) and (o[:2] != (cost, period) or j < i) for j, o in enumerate(options) if j != i):
            keep.append((cost, period, options[i][2]))
    return keep


def engine_variants(base, family, styles, dsp_ok=True):
    """Every way to build the engine ``base``: its multipliers on DSP blocks or not (where the family's DSP
    takes the product), a multiply-shift requantizer's multipliers likewise, and each ROM of more than one
    word in each of ``styles``."""
    from boards.model import dsp_eligible

    dsps, rq_dsps = [False], [False]
    if dsp_ok and base.engine == "systolic" and dsp_eligible(family, base.w_bits, base.a_bits):
        dsps.append(True)
    if dsp_ok and base.kind == "multiply_shift" and dsp_eligible(family, base.acc_bits, base.mult_bits):
        rq_dsps.append(True)
    roms = styles if base.rom_words > 1 else ("logic",)
    proms = styles if base.n_out_tiles > 1 else ("logic",)
    for dsp, rq_dsp, rom, prom in itertools.product(dsps, rq_dsps, roms, proms):
        yield replace(base, dsp=dsp, rom_style=rom, prom_style=prom, requant_dsp=rq_dsp)


class ChoiceProgram:
    """What the folding and the allocation programs share: a :class:`Program` whose variables are ways of
    building components (``choices``: variable -> (kind, name, plan)), priced for one FPGA ``family``."""

    family: str
    prog: Program
    choices: dict

    def _buffer(self, name, buffer, zv, styles):
        """A buffer (or skip ring) of width choice ``zv``: one variable per place it may live (logic, block
        RAM), exactly one of them chosen when ``zv`` is."""
        terms = {}
        for style in styles:
            plan = replace(buffer, style=style)
            v = self.prog.var(plan.resources(self.family))
            self.choices[v] = ("memory", name, plan)
            terms[v] = 1
        self.prog.equal({**terms, zv: -1}, 0)

    def periods(self):
        """Every distinct period an option forces: the candidate initiation intervals."""
        return sorted({p for p in self.prog.periods if p > 0})

    def _period_floor(self):
        """No folding is faster than this: the slowest component (engine, pool, add, the input's load) at
        its fastest option."""
        by_name = {"(input)": [self.prog.periods[v] for v, _ in self.top_vars.values()]}
        for v, (_, name, _) in self.choices.items():
            by_name.setdefault(name, []).append(self.prog.periods[v])
        return max(min(p) for p in by_name.values())

    def _top_cost(self, interval):
        """The top's cost per input width when no stage takes longer than ``interval`` cycles (its cycle
        counters need ``bit_length(interval - 1)`` bits: an upper bound, so the budget check is safe).
        ``top_vars``: {input width: (its variable, input words)}."""
        bits = max(1, (interval - 1).bit_length())
        return {g: TopPlan(n_stages=self.n_stages, in_words=words, in_width=g, counter_bits=bits).resources(self.family)
                for g, (_, words) in self.top_vars.items()}

    def _solve_at(self, interval, limits, cell_model=None, cell_limit=None, **kw):
        """:meth:`Program.solve` with the top's counters priced for ``interval``: (chosen, totals) or None."""
        top = self._top_cost(interval)
        saved = {}
        for g, (zv, _) in self.top_vars.items():
            saved[zv] = self.prog.costs[zv]
            self.prog.costs[zv] = {**saved[zv], **{k: top[g][k] for k in RESOURCE_KEYS}}
        try:
            return self.prog.solve(interval, limits, cell_model, cell_limit, **kw)
        finally:
            for zv, cost in saved.items():
                self.prog.costs[zv] = cost

    def places(self, chosen):
        """(DSP names, block-RAM memory names) of the chosen variables, as a :class:`Folding` names them."""
        dsp, block = set(), set()
        for v in chosen:
            kind, name, plan = self.choices.get(v, (None, None, None))
            if kind in ("engine", "shortcut"):  # (a ShortcutPlan has the dsp flags and memories of both parts)
                if plan.dsp:
                    dsp.add(name)
                if plan.requant_dsp:
                    dsp.add(f"{name}.requant")
                block.update(f"{name}.{mem}" for mem, _, _, style in plan.memories if style == "block")
            elif kind in ("add", "avgpool") and plan.prom_style == "block":
                block.add(f"{name}.prom")
            elif kind == "memory" and plan.style == "block":
                block.add(name)
        return frozenset(dsp), frozenset(block)


class FoldingSearch(ChoiceProgram):
    """The folding choices of one IR on one board family, as an integer program (see the module's doc).

    ``options``: the word-width options per width index (a layer the user fixed has one). ``within``:
    {resource: limit}; an engine variant that alone needs more than a limit is left out of the program
    (it could never be chosen within those limits).
    """

    def __init__(self, ir, family, options, *, bram_ok=True, dsp_ok=True, within=None):

        self.family = family
        self.undecided = []  # intervals a probe of fastest() could not settle within PROBE_SECONDS
        self.prog = prog = Program()
        prepared = _prepare(ir)

        def over(value, key):
            return within is not None and within.get(key) is not None and value > within[key]

        first_shape, specs = stage_specs(ir, prepared)
        self.n_stages = len(specs)
        in_features = int(np.prod(first_shape))
        styles = ("logic", "block") if bram_ok else ("logic",)
        # width choices: z[k][g]
        self.z = [{g: prog.var({}) for g in opts} for opts in options]
        for zk in self.z:
            prog.equal(dict.fromkeys(zk.values(), 1), 1)
        for i, j, _ in width_ties(ir):
            for g in set(self.z[i]) | set(self.z[j]):
                terms = {}
                if g in self.z[i]:
                    terms[self.z[i][g]] = 1
                if g in self.z[j]:
                    terms[self.z[j][g]] = terms.get(self.z[j][g], 0) - 1
                prog.equal(terms, 0)
        self.top_vars = {}    # g -> (variable, in_words): the top's loader and counters (costed per interval)
        self.choices = {}     # variable -> (kind, detail) for reading a solution back
        # the input buffer and the load cycles
        for g, zv in self.z[0].items():
            words = in_features // g
            self._buffer("buffer0", BufferPlan(words=words, lanes=g, bits=ir.input_bits), zv, styles)
            self.prog.periods[zv] = words  # the interval is at least the load cycles
            self.top_vars[g] = (zv, words)
        n_buffers, n_skips = 1, 0
        for spec in specs:
            k_in, k_out = spec.k_in, spec.k_out
            name = spec.layer.name
            if spec.kind in ("engine", "shortcut"):
                by_cols, by_rows = {}, {}
                for cols in options[k_in]:
                    for rows in options[k_out]:
                        options_here = []
                        for plan in self._variants(spec, cols, rows, styles, dsp_ok):
                            if over(plan.dsp_blocks, "dsp") or over(plan.bram_blocks(family), "bram"):
                                continue  # (counted without the estimator: cheap)
                            cost = plan.resources(family)
                            if not any(over(cost[k], k) for k in RESOURCE_KEYS):
                                options_here.append((cost, plan.latency + 1, plan))
                        for cost, period, plan in _pareto(options_here):  # the others are never better
                            v = prog.var(cost, period)
                            self.choices[v] = (spec.kind, name, plan)
                            by_cols.setdefault(cols, {})[v] = 1
                            by_rows.setdefault(rows, {})[v] = 1
                for g, zv in self.z[k_in].items():
                    prog.equal({**by_cols.get(g, {}), zv: -1}, 0)
                for g, zv in self.z[k_out].items():
                    prog.equal({**by_rows.get(g, {}), zv: -1}, 0)
            else:  # maxpool, avgpool, add: one option per width (and the threshold ROM's place)
                for g, zv in self.z[k_in].items():
                    base = spec.make(g, g)
                    proms = styles if getattr(base, "memories", None) else ("logic",)
                    terms = {}
                    for prom in proms:
                        plan = replace(base, prom_style=prom) if spec.kind in ("add", "avgpool") else base
                        v = prog.var(plan.resources(family), plan.latency + 1)
                        self.choices[v] = (spec.kind, name, plan)
                        terms[v] = 1
                    prog.equal({**terms, zv: -1}, 0)
            if spec.skip is not None:
                producer, b_bits, _ = spec.skip
                for g, zv in self.z[k_in].items():
                    words = spec.make(g, options[k_out][0]).ring_words if spec.kind == "shortcut" else \
                        spec.make(g, g).words
                    self._buffer(f"skip{n_skips}", BufferPlan(words=words, lanes=g, bits=b_bits,
                                                              banks=2 * (spec.index - producer)), zv, styles)
                n_skips += 1
            if spec.layer is not ir.layers[-1]:
                for g, zv in self.z[k_out].items():
                    plan = spec.make(self._any(options[k_in], g, spec), g)
                    self._buffer(f"buffer{n_buffers}", BufferPlan(words=spec.out_words(plan), lanes=g,
                                                                  bits=spec.out_bits), zv, styles)
                n_buffers += 1

    @staticmethod
    def _any(opts, g, spec):
        """An input width for making a plan whose output words only depend on ``g`` (engines' output words
        do not depend on cols; pools' and adds' inputs are ``g``)."""
        return opts[0] if spec.kind in ("engine", "shortcut") else g

    def _variants(self, spec, cols, rows, styles, dsp_ok):
        """Every way to build a ``rows`` x ``cols`` engine stage (:func:`engine_variants`; a shortcut stage's
        engine with its add's threshold ROM in each place)."""
        base = spec.make(cols, rows)
        if spec.kind == "engine":
            yield from engine_variants(base, self.family, styles, dsp_ok)
            return
        proms = styles if base.add.memories else ("logic",)
        for engine in engine_variants(base.engine, self.family, styles, dsp_ok):
            for prom in proms:
                yield replace(base, engine=engine, add=replace(base.add, prom_style=prom))

    def solve(self, interval, limits, cell_model=None, cell_limit=None, minimize="lut", time_limit=120):
        """The cheapest folding whose interval is at most ``interval``: (Folding, totals) or None
        (``minimize="nothing"``: any folding within the limits; None also when HiGHS finds none within
        ``time_limit`` seconds). HiGHS's presolve is off: it took most of the time (the MLPerf Tiny
        autoencoder's search 12 s with it, 3.2 s without; hls4ml's AD08 42.8 s against 23.0), and the optimum
        is the same (every bundled model on every board gave the same folding)."""
        found = self._solve_at(interval, limits, cell_model, cell_limit, presolve=False, minimize=minimize,
                               time_limit=time_limit)
        if found is None:
            return None
        chosen, totals = found
        widths = [next(g for g, v in zk.items() if v in chosen) for zk in self.z]
        return Folding(tuple(widths), *self.places(chosen)), totals

    def fastest(self, limits, cell_model=None, cell_limit=None):
        """(Folding, totals) of the smallest feasible interval, fewest LUTs at it, or None: a bisection over
        :meth:`periods` that asks only whether some folding fits (HiGHS stops at its first solution, not
        the cheapest), from the slowest period any component allows, then one solve for the fewest LUTs. A
        probe undecided within :data:`PROBE_SECONDS` counts as infeasible (listed in ``undecided``)."""
        candidates = self.periods()
        floor = self._period_floor()
        lo, hi = next((i for i, p in enumerate(candidates) if p >= floor), len(candidates) - 1), len(candidates) - 1
        if self.solve(candidates[hi], limits, cell_model, cell_limit, minimize="nothing") is None:
            return None
        self.undecided = []
        while lo < hi:  # candidates[hi] is feasible
            mid = (lo + hi) // 2
            found = self.solve(candidates[mid], limits, cell_model, cell_limit, minimize="nothing",
                               time_limit=PROBE_SECONDS)
            if found is None:
                lo = mid + 1
                if self.prog.last_status == 1:  # not shown infeasible: HiGHS ran out of time
                    self.undecided.append(candidates[mid])
            else:
                hi = mid
        return self.solve(candidates[hi], limits, cell_model, cell_limit)


def _width_options(ir, fold):
    """Word-width options per width index, and {weight layer index: (rows, cols)} fixed by ``fold``."""
    from hwq.ir import WEIGHT_OPS

    counts = buffer_channels(ir)
    names = [la.name for la in ir.layers if la.op in WEIGHT_OPS]
    fold = dict(fold or {})
    unknown = set(fold) - set(names)
    if unknown:
        raise UserError(f"--fold: no conv2d/linear layer named {sorted(unknown)[0]!r} (layers: {', '.join(names)})")
    options = []
    for k, n in enumerate(counts):
        opts = _divisors(n, MAX_WORD) if k < len(counts) - 1 else [g for g in _last_rows(n) if g <= MAX_WORD]
        for name, (rows, cols) in fold.items():
            i = names.index(name)
            if k == i + 1:  # (the last layer's rows may be any 1..n when given)
                last = k == len(counts) - 1
                opts = [rows] if last and 1 <= rows <= min(n, MAX_WORD) else [g for g in opts if g == rows]
                if not opts:  # (opts hold at most MAX_WORD: an engine's word)
                    raise UserError(f"--fold {name}={rows}x{cols}: rows must divide the layer's {n} outputs and be at "
                                    f"most {MAX_WORD}" if k < len(counts) - 1
                                    else f"--fold {name}: rows must be 1..{min(n, MAX_WORD)}")
            if k == i:
                opts = [g for g in opts if g == cols]
                if not opts:
                    raise UserError(f"--fold {name}={rows}x{cols}: cols must divide the layer's {n} input channels "
                                    f"and be at most {MAX_WORD}")
        options.append(opts)
    for i, j, add in width_ties(ir):
        common = sorted(set(options[i]) & set(options[j]))
        if not common:
            raise UserError(f"--fold: the residual add '{add}' reads its two inputs word by word, so their "
                            f"producers need equal rows; the choices left are {options[i]} and {options[j]}")
        options[i] = options[j] = common
    fixed = {names.index(name): rc for name, rc in fold.items()}
    return options, fixed, len(names)


def _last_rows(n):
    """Rows options of the last layer (its rows need not divide its ``n`` outputs: it writes a register, not a
    buffer): the fewest rows for each number of output tiles; more rows with as many tiles cost more lanes for
    the same cycles."""
    return sorted({-(-n // tiles) for tiles in range(1, n + 1)})  # ceil(n / tiles)


def board_limits(board, lut_budget=None):
    """The search's resource limits on ``board``: ({lut, ff, bram, dsp}, cell model, cell limit)."""
    from boards.model import coefficients

    budget = lut_budget if lut_budget is not None else DEFAULT_LUT_FRACTION * board.lut
    limits = {"lut": budget, "ff": board.ff, "bram": board.bram, "dsp": board.dsp}
    cell_model = coefficients().get(board.family, {}).get("cells")
    cell_limit = CELL_FRACTION * board.lut if cell_model is not None else None
    return limits, cell_model, cell_limit


def choose_folding(ir, board, *, lut_budget=None, fold=None):
    """The :class:`Folding` with the smallest initiation interval whose estimate fits ``lut_budget``
    (default: ``DEFAULT_LUT_FRACTION`` of the board's LUTs), the board's flip-flops, block RAMs and DSPs
    (and on iCE40 ``CELL_FRACTION`` of its logic cells), fewest LUTs among equals.

    ``fold``: {layer name: (rows, cols)} fixes those layers (checked against the chain: a layer's
    cols is the previous engine's rows). Raises UserError when an override is invalid or nothing fits
    (unless the user fixed every layer: then their folding is returned, and the estimate says it does
    not fit).
    """
    options, fixed, n_weight = _width_options(ir, fold)
    limits, cell_model, cell_limit = board_limits(board, lut_budget)
    search = FoldingSearch(ir, board.family, options, bram_ok=board.bram > 0, dsp_ok=board.dsp > 0, within=limits)
    found = search.fastest(limits, cell_model, cell_limit)
    if found is not None:
        return found[0]
    # nothing fits: the smallest design, for the message (or the user's folding), with every variant
    search = FoldingSearch(ir, board.family, options, bram_ok=board.bram > 0, dsp_ok=board.dsp > 0)
    hard = {"lut": None, "ff": None, "bram": board.bram, "dsp": board.dsp}
    smallest = search.solve(max(search.periods()), hard)
    if smallest is None:  # not even with every memory in logic and no DSPs: the override is impossible
        smallest = search.solve(max(search.periods()), dict.fromkeys(RESOURCE_KEYS))
    if len(fixed) == n_weight:
        return smallest[0]  # every layer fixed by the user: theirs, even over budget (the estimate says so)
    totals = smallest[1]
    cells = ""
    if cell_model is not None:
        need = round(cell_model.get("const", 0) + cell_model.get("lut", 0) * totals["lut"]
                     + cell_model.get("ff", 0) * totals["ff"])
        cells = f" and {need} logic cells (limit {cell_limit:.0f})"
    raise UserError(f"no folding of this network fits {board.name} within {limits['lut']:.0f} LUTs, {board.ff} "
                    f"flip-flops, {board.bram} block RAMs and {board.dsp} DSPs; the smallest needs {totals['lut']} "
                    f"LUTs{cells}: raise --lut-budget or choose a larger board")
