"""Hardware-aware bit allocation: each layer's weight and activation bits chosen for a board.

``allocate(run_dir, board, ...)`` takes a trained run (``hwq train``) and:

1. measures each layer's sensitivity to each candidate bitwidth (:mod:`hwq.sensitivity`: the loss change or
   the Hutchinson Hessian estimate, on a calibration split of the training set);
2. solves one integer program over every layer's bits *and* the folding (:mod:`rtl_gen.allocation`): the
   least summed sensitivity whose design, priced by the calibrated estimator, fits the LUT budget, the
   board's flip-flops, block RAMs, DSPs (and iCE40 logic cells) and meets the speed target (initiation
   interval and latency); among those the fastest, then the fewest LUTs. ``cost="bops"`` is the proxy
   baseline: the same solver with a bit-operations budget (sum over layers of MACs x w_bits x a_bits) in
   place of the estimator, the largest such budget whose bits then fit the board;
3. closes the loop: writes ``OUT/bits.yaml``, trains at those bits with the run's method and epochs from
   the run's float warm-up (recomputed from its seed: the start every uniform run of that seed has), exports, estimates the real
   integer design with the chosen folding (and, with ``synth``, synthesizes it); if the design misses the
   budget, the budget the program sees is tightened by the overshoot and the program solved again.

With ``finalists`` (default 3) each round first fine-tunes the program's best few bit settings and every
uniform design that fits, each trained without a held-out validation split of the training set, and builds
the one most accurate on it (:func:`finalist_designs`, :func:`rank_by_validation`). Uniform bits are the
default: a mixed setting is built only if it beats the best uniform finalist on the validation split by a
one-sided sign test at ``significance`` (0.05). A later round also keeps the earlier rounds' finalists that
no build has shown to miss (:func:`round_finalists`). Every round (bits, finalists, estimate, synthesis,
accuracy) goes into ``RUN/allocate.json``.
"""

import math
import shutil
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from .errors import UserError
from .fileio import write_json, write_yaml

__all__ = ["ALLOCATE_FORMAT", "COSTS", "DEFAULT_CANDIDATES", "DEFAULT_FINALISTS", "DEFAULT_SIGNIFICANCE", "allocate",
           "finalist_designs", "golden_correct", "is_uniform", "plan_allocation", "rank_by_validation",
           "round_finalists", "sign_test", "speed_limits"]

ALLOCATE_FORMAT = "hwq-allocate/1"
DEFAULT_CANDIDATES = (1, 2, 3, 4, 6, 8)
COSTS = ("estimator", "bops")
FRONTIER_FRACTIONS = (0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 1.0)
FRONTIER_INTERVALS = 6
MAX_ROUNDS = 3
DEFAULT_FINALISTS = 3  # what bench/allocate.py measures
DEFAULT_SIGNIFICANCE = 0.05  # a mixed finalist must beat the best uniform one on validation at this level
VALIDATION_FRACTION = 0.2  # of the training set, held out when finalists are chosen by validation accuracy


def speed_limits(board, *, max_latency_cycles=None, min_throughput=None):
    """(interval limit or None, latency limit or None) from the user's speed target at the board's clock."""
    interval = None
    if min_throughput is not None:
        interval = math.floor(board.clock_mhz * 1e6 / min_throughput)
        if interval < 1:
            raise UserError(f"--min-throughput {min_throughput:g}: more than one inference per cycle at "
                            f"{board.name}'s {board.clock_mhz:g} MHz clock")
    return interval, max_latency_cycles


def _acc_bits_fn(model, input_bits):
    """``acc_bits(name, w_bits, a_bits)``: the proven accumulator width of a layer's trained float weights
    quantized to ``w_bits`` (MSE step) reading unsigned ``a_bits`` codes."""
    from .golden import accumulator_range
    from .intrange import range_bits
    from .sensitivity import weight_codes

    layers = {m.name: m for m in model.qlayers}
    cache = {}

    def acc_bits(name, w_bits, a_bits):
        key = (name, w_bits, a_bits)
        if key not in cache:
            w = layers[name].weight.detach()
            codes = weight_codes(w, w_bits)[0].reshape(len(w), -1).numpy().astype(np.int64)
            lo, hi = accumulator_range(codes, 0, (1 << a_bits) - 1)
            cache[key] = max(2, range_bits(lo.min(), hi.max()))
        return cache[key]

    return acc_bits


def _limits(board, lut_budget, ff_budget):
    from rtl_gen.folding import board_limits

    limits, cell_model, cell_limit = board_limits(board, lut_budget)
    if ff_budget is not None:
        limits["ff"] = min(limits["ff"], ff_budget)
    return limits, cell_model, cell_limit


def _bits_text(alloc):
    return " ".join(f"{n}:W{w}/A{a}" for n, w, a in zip(alloc.names, alloc.w_bits, alloc.a_bits, strict=True))


def _infeasible(search, board, limits, cell_model, cell_limit, interval_limit, latency_limit):
    """The one-line error of a request no bits and folding can meet."""
    speed = []
    if interval_limit is not None:
        speed.append(f"an interval of at most {interval_limit} cycles "
                     f"({board.clock_mhz * 1e6 / interval_limit:,.0f} inferences/s)")
    if latency_limit is not None:
        speed.append(f"a latency of at most {latency_limit} cycles")
    hard = {"bram": board.bram, "dsp": board.dsp}
    small = search.smallest(interval_limit=interval_limit, latency_limit=latency_limit, limits=hard)
    fast = search.fastest(limits, cell_model=cell_model, cell_limit=cell_limit)
    need = (f"the smallest design that meets the speed target needs {small.totals['lut']} LUTs"
            + (f" and {small.totals['cells']} logic cells" if "cells" in small.totals else "")
            if small else "no design meets the speed target even without a LUT budget")
    best = (f"the fastest within the budget takes {fast.interval} cycles per inference "
            f"({board.clock_mhz * 1e6 / fast.interval:,.0f}/s) and {fast.totals['latency']} cycles of latency"
            if fast else "nothing fits the budget at any speed, even at the lowest candidate bits")
    target = f" with {' and '.join(speed)}" if speed else ""
    return UserError(f"no bits and folding fit {board.name} within {limits['lut']:.0f} LUTs{target}: {need}; {best}")


def _fits(search, w_bits, a_bits, limits, cell_model, cell_limit, interval_limit, latency_limit):
    """The fastest, then smallest, design of these bits within the limits, or None."""
    mask = search.bits_mask(w_bits, a_bits)
    return search.fastest(limits, cell_model=cell_model, cell_limit=cell_limit, interval_limit=interval_limit,
                          latency_limit=latency_limit, exclude=mask)


def _bops_allocation(search, limits, cell_model, cell_limit, interval_limit, latency_limit, log, k=1):
    """The bit-operations baseline: least score under a BOPs budget (no hardware in the program), with the
    largest BOPs budget whose bits fit the board (bisection on the budget); then the fastest design of
    those bits within the limits, as the estimator's folding places it. ``k`` > 1: a list of up to ``k``
    designs, the next ones the next-least-score bits within the same BOPs budget that fit, each with its
    fewest-LUT folding at the interval limit (as :meth:`AllocationSearch.ranked` gives the estimator's)."""
    top = search.interval_cap(interval_limit)
    widest = max(b for bits in search.boundary_bits for b in bits if b is not None)
    hi = sum(search.macs.values()) * widest * 8  # more than any choice's bit operations
    lo, best, checked = 0.0, None, {}
    for _ in range(24):
        mid = (lo + hi) / 2
        bits = search.bits_for_bops(mid)
        if bits is None:
            lo = mid
            continue
        key = (tuple(bits[0]), tuple(bits[1]))
        if key not in checked:
            checked[key] = search.solve(top, limits, cell_model, cell_limit, latency_limit=latency_limit,
                                        exclude=search.bits_mask(*bits))
            log(f"  bops <= {mid:,.0f}: W{bits[0]} A{bits[1]} {'fits' if checked[key] else 'does not fit'}")
        if checked[key] is not None:
            lo, best = mid, bits
        else:
            hi = mid
        if hi - lo < 0.01 * hi:
            break
    if best is None:
        return [] if k > 1 else None
    if k == 1:
        return _fits(search, *best, limits, cell_model, cell_limit, interval_limit, latency_limit)
    found, tried = [checked[(tuple(best[0]), tuple(best[1]))]], [tuple(best)]
    while len(found) < k and len(tried) < 3 * k:
        bits = search.bits_for_bops(lo, exclude_bits=tried)
        if bits is None:
            break
        tried.append(tuple(bits))
        a = search.solve(top, limits, cell_model, cell_limit, latency_limit=latency_limit,
                         exclude=search.bits_mask(*bits))
        if a is not None:
            found.append(a)
    return found


def _uniform(search, candidates, input_bits, limits, cell_model, cell_limit, interval_limit, latency_limit):
    """{bits: the smallest design at uniform W=A=bits within the limits and the speed target, or None}."""
    n = len(search.names)
    top = search.interval_cap(interval_limit)
    out = {}
    for b in sorted(candidates, reverse=True):
        mask = search.bits_mask([b] * n, [input_bits] + [b] * (n - 1))
        out[b] = search.solve(top, limits, cell_model, cell_limit, latency_limit=latency_limit, exclude=mask)
    return out


def _frontier(search, limits, cell_model, cell_limit, interval_limit, latency_limit, log):
    """Least-score points against the LUT budget (fractions of it) and against the interval limit."""
    lut, interval = [], []
    top = search.interval_cap(interval_limit)
    for frac in FRONTIER_FRACTIONS:
        budget = limits["lut"] * frac
        a = search.solve(top, {**limits, "lut": budget}, cell_model, cell_limit, minimize="score",
                         latency_limit=latency_limit)
        lut.append({"lut_budget": round(budget), **(_point(a) if a else {"feasible": False})})
    periods = [p for p in search.periods() if p <= top]
    for t in sorted({min(periods, key=lambda p, v=v: abs(p - v))
                     for v in np.geomspace(periods[0], top, FRONTIER_INTERVALS)}):
        a = search.solve(t, limits, cell_model, cell_limit, minimize="score", latency_limit=latency_limit)
        interval.append({"interval_limit": t, **(_point(a) if a else {"feasible": False})})
    log(f"  frontier: {len(lut)} LUT budgets, {len(interval)} interval limits")
    return {"lut": lut, "interval": interval}


def _point(a):
    return {"feasible": True, "score": a.totals["score"], "lut": a.totals["lut"], "interval": a.interval,
            "latency": a.totals["latency"], "w_bits": a.w_bits, "a_bits": a.a_bits}


def plan_allocation(model, data, ir, board, *, lut_budget=None, ff_budget=None, interval_limit=None,
                    latency_limit=None, candidates=DEFAULT_CANDIDATES, sensitivity="loss", cost="estimator",
                    frontier=True, log=print, reuse=None):
    """The allocation of a trained :class:`hwq.models.QuantNet` (``ir``: its export, for the shapes) without
    training: {"allocation", "search", "sensitivity", "uniform", "frontier", "limits"}. ``reuse``: an earlier
    result for the same model, board and candidates, whose sensitivity and program are reused (a
    tightened budget changes only the limits). ``frontier=False`` skips the frontier and the uniform baselines."""
    from rtl_gen.allocation import AllocationSearch

    from .sensitivity import layer_sensitivity

    if cost not in COSTS:
        raise UserError(f"--cost: unknown value {cost!r}; expected one of {', '.join(COSTS)}")
    bad = [b for b in candidates if not 1 <= b <= 8]
    if bad or not candidates:
        raise UserError(f"--candidates: expected bitwidths in 1..8, found {list(candidates)}")
    if reuse is not None:
        sens, search = reuse["sensitivity"], reuse["search"]
    else:
        t = time.perf_counter()
        sens = layer_sensitivity(model, data, candidates, sensitivity)
        log(f"sensitivity ({sensitivity}) of {len(sens.weights)} layers x {len(candidates)} bitwidths on "
            f"{sens.samples} calibration samples ({time.perf_counter() - t:.1f} s)")
        t = time.perf_counter()
        search = AllocationSearch(ir, board.family, candidates, _acc_bits_fn(model, ir.input_bits), sens.weights,
                                  sens.acts, bram_ok=board.bram > 0, dsp_ok=board.dsp > 0)
        log(f"allocation program: {search.n_vars} choices of bits and folding ({time.perf_counter() - t:.1f} s)")
    limits, cell_model, cell_limit = _limits(board, lut_budget, ff_budget)
    speed = dict(interval_limit=interval_limit, latency_limit=latency_limit)
    t = time.perf_counter()
    if cost == "estimator":
        alloc = search.best(limits, cell_model=cell_model, cell_limit=cell_limit, **speed)
    else:
        alloc = _bops_allocation(search, limits, cell_model, cell_limit, interval_limit, latency_limit, log)
    if alloc is None:
        raise _infeasible(search, board, limits, cell_model, cell_limit, interval_limit, latency_limit)
    log(f"allocated ({cost}, {time.perf_counter() - t:.1f} s): {_bits_text(alloc)}; estimated {alloc.totals['lut']} "
        f"LUT, interval {alloc.interval} cycles")
    uniform = _uniform(search, candidates, ir.input_bits, limits, cell_model, cell_limit, **speed) if frontier else None
    return {"allocation": alloc, "search": search, "sensitivity": sens, "limits": limits,
            "cell_limit": cell_limit, "cell_model": cell_model, "uniform": uniform,
            "frontier": _frontier(search, limits, cell_model, cell_limit, interval_limit, latency_limit, log)
            if frontier else None}


def finalist_designs(search, cost, k, limits, cell_model, cell_limit, interval_limit, latency_limit, uniform,
                     log=print):
    """The designs validation accuracy chooses among: the ``k`` best allocations of ``cost`` (distinct bits:
    least summed sensitivity priced by the estimator, or the BOPs baseline's bits) and every uniform design
    that fits (``uniform``: {bits: Allocation or None}, from :func:`_uniform`). A list of (label, Allocation),
    the program's choices first, without repeated bits."""
    if cost == "estimator":
        ranked = search.ranked(limits, k, interval_limit=interval_limit, latency_limit=latency_limit,
                               cell_model=cell_model, cell_limit=cell_limit)
    else:
        ranked = _bops_allocation(search, limits, cell_model, cell_limit, interval_limit, latency_limit,
                                  lambda *_: None, k=k)
    out, seen = [], set()
    labelled = [(f"{cost} #{i + 1}", a) for i, a in enumerate(ranked)]
    labelled += [(f"uniform W{b}/A{b}", a) for b, a in sorted(uniform.items(), reverse=True) if a is not None]
    for label, a in labelled:
        bits = (tuple(a.w_bits), tuple(a.a_bits))
        if bits not in seen:
            seen.add(bits)
            out.append((label, a))
    log(f"finalists: {', '.join(f'{label} ({_bits_text(a)})' for label, a in out)}")
    return out


def is_uniform(w_bits, a_bits):
    """Whether a bit setting is uniform: every layer's weights and activations at one width (the first layer's
    input is the dataset's codes, not chosen)."""
    return len({*w_bits, *a_bits[1:]}) == 1


def sign_test(better, other):
    """One-sided exact sign (McNemar) test on paired per-sample correctness: the probability of at least as many
    samples that ``better`` gets right and ``other`` wrong, among the samples where they disagree, if either were
    equally likely. 1.0 when they never disagree."""
    from scipy.stats import binomtest

    better, other = np.asarray(better, bool), np.asarray(other, bool)
    wins, losses = int((better & ~other).sum()), int((~better & other).sum())
    return float(binomtest(wins, wins + losses, 0.5, alternative="greater").pvalue) if wins + losses else 1.0


def rank_by_validation(entries, significance=DEFAULT_SIGNIFICANCE):
    """``entries`` (dicts with "val_acc" and "est_lut") best first: the higher validation accuracy, then the
    fewer estimated LUTs, then the earlier (the program's order).

    The uniform default: when entries carry "uniform" and "val_correct" (per-sample correctness on the
    validation split) and the first is a mixed setting, it stays first only if it beats the best uniform entry
    significantly (:func:`sign_test` below ``significance``); otherwise that uniform entry goes first. A
    difference of a few validation samples is noise, and a mixed design the data cannot tell from uniform
    bits earns nothing. The mixed entry gets "p_over_uniform". ``significance`` >= 1: the plain order."""
    order = sorted(range(len(entries)), key=lambda i: (-entries[i]["val_acc"], entries[i]["est_lut"], i))
    ranked = [entries[i] for i in order]
    uniform = [e for e in ranked if e.get("uniform")]
    if significance >= 1 or not uniform or ranked[0].get("uniform") or "val_correct" not in ranked[0]:
        return ranked
    top, best_uniform = ranked[0], uniform[0]
    top["p_over_uniform"] = sign_test(top["val_correct"], best_uniform["val_correct"])
    if top["p_over_uniform"] < significance:
        return ranked
    return [best_uniform] + [e for e in ranked if e is not best_uniform]


def round_finalists(designs, earlier, missed):
    """A round's finalists: the program's (``designs``: (label, Allocation) pairs) and then the earlier rounds'
    (``earlier``) whose bits no build has yet shown to miss the budget (``missed``: a set of (w_bits, a_bits)
    tuples), without repeated bits. A tightened program can drop a design that fits (the estimator's error is
    not the same for every design); one already trained stays a candidate until it is built and misses."""
    out, seen = [], set(missed)
    for label, a in [*designs, *earlier]:
        bits = (tuple(a.w_bits), tuple(a.a_bits))
        if bits not in seen:
            seen.add(bits)
            out.append((label, a))
    return out


def _golden_accuracy(ir, x, y):
    return float(golden_correct(ir, x, y).mean())


def golden_correct(ir, x, y):
    """Per-sample correctness (bool array) of the golden model's predictions."""
    from . import golden

    return golden.run(ir, x).argmax(1) == y


def _learned_start(run_dir, cfg, plan, board, input_bits, interval_limit, latency_limit, log):
    """SINAREQ's learned bits (``hwq train --method sinareq --learn-bits``: the run's bits.yaml), priced by
    the same program: their sensitivity and the smallest design of them within the limits (None if none)."""
    if cfg.method != "sinareq" or not cfg.sinareq_learn_bits:
        return None
    from .train import load_bits_file

    search = plan["search"]
    learned = load_bits_file(Path(run_dir) / "bits.yaml", search.names)
    w_bits = [learned[n][0] for n in search.names]
    a_bits = [input_bits] + [learned[n][1] for n in search.names[1:]]
    top = search.interval_cap(interval_limit)
    outside = [b for b in w_bits + a_bits[1:] if b not in search.boundary_bits[1] + [input_bits]]
    found = None if outside else search.solve(top, plan["limits"], plan["cell_model"], plan["cell_limit"],
                                              latency_limit=latency_limit, exclude=search.bits_mask(w_bits, a_bits))
    log(f"SINAREQ's learned bits W{w_bits} A{a_bits}: " + (f"fit ({found.totals['lut']} LUT, sensitivity "
                                                          f"{found.totals['score']:.4g})" if found else
                                                          "do not fit within the limits or the candidates"))
    return {"w_bits": w_bits, "a_bits": a_bits, "fits": found is not None,
            "design": found.to_json() if found else None}


def _key(alloc):
    return tuple(alloc.w_bits), tuple(alloc.a_bits), tuple(alloc.widths), alloc.dsp, alloc.block


def _bits_yaml(alloc):
    from .train import BITS_FORMAT

    return {"format": BITS_FORMAT, "layers": {n: {"w_bits": w, "a_bits": a}
                                             for n, w, a in zip(alloc.names, alloc.w_bits, alloc.a_bits, strict=True)}}


def _real_design(ir, board, alloc, lut_budget):
    """The exported design's folding, estimate and input load cycles: the allocation's own folding, less the
    DSP multipliers the real layers cannot have (a proxy's multiply-shift constants may be wider than the
    export's), or, if the board cannot build even that, the folding search's choice within ``lut_budget``."""
    from boards.model import dsp_eligible
    from rtl_gen.engine import EnginePlan
    from rtl_gen.folding import check_folding, choose_folding
    from rtl_gen.plan import Folding, network_plan

    from .estimate import estimate

    dsp = set(alloc.dsp)
    for s in network_plan(ir, tuple(alloc.widths)).stages:
        p = s.plan
        if isinstance(p, EnginePlan):
            if not (p.engine == "systolic" and dsp_eligible(board.family, p.w_bits, p.a_bits)):
                dsp.discard(s.layer.name)
            if not (p.kind == "multiply_shift" and dsp_eligible(board.family, p.acc_bits, p.mult_bits)):
                dsp.discard(f"{s.layer.name}.requant")
    folding = Folding(tuple(alloc.widths), frozenset(dsp), alloc.block)
    try:
        check_folding(network_plan(ir, folding), board)
    except UserError:
        folding = choose_folding(ir, board, lut_budget=lut_budget)
    return folding, estimate(ir, board, folding=folding), network_plan(ir, folding).load_cycles


def allocate(run_dir, board, *, out_dir=None, lut_budget=None, ff_budget=None, max_latency_cycles=None,
             min_throughput=None, candidates=DEFAULT_CANDIDATES, sensitivity="loss", cost="estimator",
             epochs=None, synth=False, dry_run=False, rounds=MAX_ROUNDS, finalists=DEFAULT_FINALISTS,
             significance=DEFAULT_SIGNIFICANCE, log=print, show_progress=True):
    """Allocate, fine-tune, export and check (see the module's doc); return the allocate.json dict (None for
    ``dry_run``, which prints the plan and writes nothing).

    ``finalists`` > 1: a validation split (``VALIDATION_FRACTION`` of the training set, stratified by the
    run's seed) is held out of every training, the float warm-up included; the ``finalists`` best
    allocations of ``cost`` and every uniform design that fits are fine-tuned, and the one with the best
    golden accuracy on the validation split (then the fewest estimated LUTs) goes on, except that a mixed
    setting must beat the best uniform finalist there by a sign test at ``significance`` (else that uniform
    design goes on: :func:`rank_by_validation`); if it misses the budget, the tightened program's finalists
    and the earlier ones not yet built are chosen among the same way (:func:`round_finalists`; those already
    trained are not trained again)."""
    from rtl_gen.folding import DEFAULT_LUT_FRACTION

    from . import golden
    from .data import holdout, load_dataset
    from .export import export_model, export_run
    from .flow import check_torch_integer
    from .models import QuantNet
    from .train import TrainConfig, _net_config, load_run, pretrain, train

    run_dir = Path(run_dir)
    model, ckpt = load_run(run_dir)
    cfg = TrainConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in ckpt["train"].items()})
    if cfg.method == "xnor":
        raise UserError(f"{run_dir}: a binary (xnor) run has 1-bit weights and activations by definition; "
                        "allocate from a run trained with a multi-bit method (lsq, uniq, pact, ...)")
    if finalists < 1:
        raise UserError(f"--finalists: expected at least 1, found {finalists}")
    data = load_dataset(cfg.dataset)
    validation = None
    if finalists > 1:
        data, validation = holdout(data, VALIDATION_FRACTION, seed=cfg.seed)
        log(f"validation split: {len(validation[1])} training samples held out of every training (the finalists "
            "are chosen by their accuracy on them, never the test set's)")
    ir = export_model(model, dataset=cfg.dataset, method=cfg.method)  # the network's shapes
    log(f"float warm-up of {cfg.model} (the run's seed {cfg.seed}, {cfg.epochs_float} epochs) for the sensitivity")
    start = pretrain(cfg, data)
    model = QuantNet(_net_config(cfg, data))
    model.load_state_dict(start[0], strict=False)
    interval_limit, latency_limit = speed_limits(board, max_latency_cycles=max_latency_cycles,
                                                 min_throughput=min_throughput)
    budget = lut_budget if lut_budget is not None else DEFAULT_LUT_FRACTION * board.lut
    plan = plan_allocation(model, data, ir, board, lut_budget=budget, ff_budget=ff_budget,
                           interval_limit=interval_limit, latency_limit=latency_limit, candidates=candidates,
                           sensitivity=sensitivity, cost=cost, log=log)
    alloc = plan["allocation"]
    uniform = {b: (a.to_json() if a else None) for b, a in plan["uniform"].items()}
    learned = _learned_start(run_dir, cfg, plan, board, ir.input_bits, interval_limit, latency_limit, log)
    fitting = [b for b, a in plan["uniform"].items() if a is not None]
    log(f"uniform bits that fit: {', '.join(f'W{b}/A{b}' for b in sorted(fitting)) or 'none'}")
    speed = (interval_limit, latency_limit)
    if dry_run:
        if finalists > 1:
            finalist_designs(plan["search"], cost, finalists, plan["limits"], plan["cell_model"], plan["cell_limit"],
                             *speed, plan["uniform"], log)
        log(f"estimate: {alloc.to_json()['estimate']}, interval {alloc.interval} cycles "
            f"({board.clock_mhz * 1e6 / alloc.interval:,.0f} inferences/s), latency {alloc.totals['latency']} cycles")
        for p in plan["frontier"]["lut"]:
            log(f"  lut budget {p['lut_budget']:>7}: " + (f"score {p['score']:.4g}, {p['lut']} LUT, interval "
                                                          f"{p['interval']}, W{p['w_bits']} A{p['a_bits']}"
                                                          if p["feasible"] else "infeasible"))
        return None
    out = Path(out_dir) if out_dir else run_dir / "allocated"
    out.mkdir(parents=True, exist_ok=True)

    def fine_tune(a, d):
        write_yaml(d / "bits.yaml", _bits_yaml(a))
        tune = replace(cfg, bits_file=str(d / "bits.yaml"), first_last="same",
                       epochs_qat=epochs if epochs is not None else cfg.epochs_qat)
        log(f"fine-tuning at {_bits_text(a)} ({tune.epochs_qat} epochs) -> {d / 'run'}")
        return tune, train(tune, d / "run", float_state=start, data=data, show_progress=show_progress)

    trained = {}  # finalists' bits -> (run directory, config, metrics, validation accuracy, correctness)
    earlier, missed = [], set()  # the finalists so far, (label, Allocation); the bits built that missed

    def choose(p):
        """The design a round builds from the program ``p`` (a :func:`plan_allocation` result): its allocation,
        or with finalists the one most accurate on the validation split; and the finalists, ranked."""
        if finalists == 1:
            return p["allocation"], None
        uniform = p["uniform"] or _uniform(p["search"], candidates, ir.input_bits, p["limits"], p["cell_model"],
                                           p["cell_limit"], *speed)
        entries = []
        designs = round_finalists(finalist_designs(p["search"], cost, finalists, p["limits"], p["cell_model"],
                                                   p["cell_limit"], *speed, uniform, log), earlier, missed)
        for label, a in designs:
            bits = (tuple(a.w_bits), tuple(a.a_bits))
            if bits not in trained:
                d = out / "finalists" / str(len(trained) + 1)
                tune, metrics = fine_tune(a, d)
                correct = golden_correct(export_run(d / "run", d / "ir"), *validation)
                trained[bits] = (d / "run", tune, metrics, float(correct.mean()), correct)
                log(f"finalist {len(trained)} ({label}): validation accuracy {correct.mean():.4f}, estimated "
                    f"{a.totals['lut']} LUT")
            entries.append({"label": label, "dir": str(trained[bits][0].parent), "bits": a.to_json()["layers"],
                            "est_lut": a.totals["lut"], "interval": a.interval, "val_acc": trained[bits][3],
                            "uniform": is_uniform(a.w_bits, a.a_bits), "val_correct": trained[bits][4], "alloc": a})
        earlier[:] = designs
        ranked = rank_by_validation(entries, significance)
        for top in (e for e in entries if "p_over_uniform" in e):
            log(f"{top['label']} against the best uniform finalist on validation: sign test p = "
                f"{top['p_over_uniform']:.3g} ({'<' if ranked[0] is top else '>='} {significance:g}); "
                f"{ranked[0]['label']} goes on")
        return ranked[0]["alloc"], [{k: v for k, v in e.items() if k not in ("alloc", "val_correct")} for e in ranked]

    alloc, chosen = choose(plan)
    history, program_budget, tried = [], budget, set()
    final = None
    for r in range(1, rounds + 1):
        bits = (tuple(alloc.w_bits), tuple(alloc.a_bits))
        if bits in trained:  # a finalist: its training is the round's
            src, tune, metrics = trained[bits][:3]
            log(f"round {r}: {_bits_text(alloc)}, the finalist trained in {src}")
            write_yaml(out / "bits.yaml", _bits_yaml(alloc))
            shutil.copytree(src, out / "run", dirs_exist_ok=True)
        else:
            log(f"round {r}:")
            tune, metrics = fine_tune(alloc, out)
        real = export_run(out / "run", out / "ir")
        gdata = load_dataset(real.dataset, input_bits=real.input_bits)
        acc = float((golden.run(real, gdata.x_test).argmax(1) == gdata.y_test).mean())
        check = check_torch_integer(out / "run", real, gdata.x_test)
        differ = check["fake_quant_mismatches"] / len(gdata.y_test)
        if not check["equal"] or differ > 0.01:
            log(f"round {r}: WARNING: the exported integers differ from the trained model (torch integer path "
                f"{'equal' if check['equal'] else 'DIFFERENT'}; {check['fake_quant_mismatches']} of "
                f"{len(gdata.y_test)} predictions differ from fake-quant): golden accuracy {acc:.4f} against "
                f"fake-quant {metrics['accuracy']['fake_quant']:.4f}")
        folding, est, load = _real_design(real, board, alloc, budget)
        measured = {"source": "estimate", "lut": est["totals"]["lut"], "fits": est["fits"]}
        entry = {"round": r, "program_lut_budget": round(program_budget), "bits": alloc.to_json()["layers"],
                 "program": alloc.to_json(), "finalists": chosen, "accuracy": {"fake_quant": metrics["accuracy"]["fake_quant"],
                                                          "golden": acc},
                 "integer_check": {k: check[k] for k in ("equal", "fake_quant_mismatches", "logit_ties",
                                                         "multiply_shift_rounding", "unexplained")},
                 "estimate": est["totals"], "folding": folding.to_json(),
                 "interval": est["initiation_interval_cycles"], "latency": load + est["latency_cycles"]}
        if synth:
            from rtl_gen.emit import generate_rtl

            from .synth import synth_rtl

            generate_rtl(real, board, out / "rtl", folding=folding)
            syn = synth_rtl(out / "rtl", board, pnr=True, show_progress=show_progress)
            entry["synth"] = {"total": syn["total"], "fits": syn["fits"], "pnr": syn.get("pnr")}
            measured = {"source": "yosys", "lut": syn["total"]["lut"], "fits": syn["fits"]}
        over_speed = ((interval_limit is not None and entry["interval"] > interval_limit)
                      or (latency_limit is not None and entry["latency"] > latency_limit))
        ok = measured["fits"] and measured["lut"] <= budget and not over_speed
        entry["meets_budget"] = ok
        history.append(entry)
        log(f"round {r}: golden accuracy {acc:.4f}; {measured['source']} {measured['lut']} LUT "
            f"(budget {budget:.0f}), interval {entry['interval']} -> {'meets the budget' if ok else 'misses it'}")
        final = entry
        if ok or r == rounds:
            break
        tried.add(_key(alloc))
        missed.add(bits)
        # tighten by the overshoot: the program's own estimate of this design, scaled by budget / measured
        program_budget = min(program_budget, alloc.totals["lut"]) * min(0.98, budget / max(measured["lut"], 1))
        tightened = plan_allocation(model, data, ir, board, lut_budget=program_budget, ff_budget=ff_budget,
                                    interval_limit=interval_limit, latency_limit=latency_limit,
                                    candidates=candidates, sensitivity=sensitivity, cost=cost, frontier=False,
                                    log=log, reuse=plan)
        alloc, chosen = choose(tightened)
        if _key(alloc) in tried:
            log(f"round {r}: a tighter budget gives the same design; stopping")
            break
    report = {
        "format": ALLOCATE_FORMAT, "run": str(run_dir), "out": str(out), "board": board.name,
        "model": cfg.model, "dataset": cfg.dataset, "method": cfg.method, "cost": cost, "sensitivity": sensitivity,
        "candidates": sorted(candidates),
        "limits": {"lut": budget, "ff": plan["limits"]["ff"], "bram": board.bram, "dsp": board.dsp,
                   "cells": plan["cell_limit"], "interval_cycles": interval_limit, "latency_cycles": latency_limit},
        "sensitivity_table": plan["sensitivity"].to_json(),
        "uniform": {str(b): v for b, v in uniform.items()},
        "sinareq_start": learned,
        "validation_samples": len(validation[1]) if validation else None,
        "significance": significance if validation else None,
        "frontier": plan["frontier"],
        "rounds": history,
        "final": {"bits": final["bits"], "accuracy": final["accuracy"], "estimate": final["estimate"],
                  "folding": final["folding"], "interval": final["interval"], "latency": final["latency"],
                  "synth": final.get("synth"), "meets_budget": final["meets_budget"]},
        "train": asdict(tune),
    }
    write_json(run_dir / "allocate.json", report)
    return report

