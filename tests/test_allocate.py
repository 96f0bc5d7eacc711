"""The bit allocation: the joint bits-and-folding program against brute force, the infeasible error, the CLI."""

import itertools
import json
from dataclasses import replace

import numpy as np
import pytest
import yaml

from boards import load_board
from hwq.cli import main
from hwq.errors import UserError
from rtl_gen.allocation import AllocationSearch, proxy_engine
from rtl_gen.folding import MAX_LANES, _divisors
from rtl_gen.plan import BufferPlan, TopPlan, buffer_channels, stage_specs

from .conftest import random_ir


def _acc(name, w, a):
    return w + a + 3


def _brute_force(ir, family, cands, w_score, a_score, lut_limit, ff_limit, interval):
    """The least score over every weight bits, activation bits and word widths, priced plan by plan (every
    memory in logic, no DSPs), with the same limits; returns (score, lut) or None."""
    _, specs = stage_specs(ir)
    engines = [s for s in specs if s.kind == "engine"]
    names = [s.layer.name for s in engines]
    counts = buffer_channels(ir)
    widths = [_divisors(c, MAX_LANES) if k < len(counts) - 1 else list(range(1, min(c, MAX_LANES) + 1))
              for k, c in enumerate(counts)]
    n = len(engines)
    best = None
    bits_counter = max(1, (interval - 1).bit_length())
    for w in itertools.product(cands, repeat=n):
        for hidden in itertools.product(cands, repeat=n - 1):
            a = [ir.input_bits, *hidden]
            score = sum(w_score[names[i]][w[i]] for i in range(n)) + sum(a_score[names[i]][hidden[i]]
                                                                         for i in range(n - 1))
            if best is not None and score > best[0] + 1e-12:
                continue
            for g in itertools.product(*widths):
                total, periods = {"lut": 0, "ff": 0}, []
                words = int(np.prod(ir.layers[0].in_shape)) // g[0]
                parts = [BufferPlan(words=words, lanes=g[0], bits=ir.input_bits),
                         TopPlan(n_stages=n, in_words=words, in_width=g[0], counter_bits=bits_counter)]
                periods.append(words)
                ok = True
                for i, s in enumerate(engines):
                    if g[i] * g[i + 1] > MAX_LANES:
                        ok = False
                        break
                    out = hidden[i] if i < n - 1 else None
                    plan = proxy_engine(s.make(g[i], g[i + 1]), w[i], a[i], out, _acc(s.layer.name, w[i], a[i]))
                    parts.append(plan)
                    periods.append(plan.latency + 1)
                    if i < n - 1:
                        parts.append(BufferPlan(words=s.out_words(plan), lanes=g[i + 1], bits=hidden[i]))
                if not ok or max(periods) > interval:
                    continue
                for p in parts:
                    res = p.resources(family)
                    total["lut"] += res["lut"]
                    total["ff"] += res["ff"]
                if total["lut"] <= lut_limit and total["ff"] <= ff_limit:
                    if best is None or score < best[0] - 1e-12 or (abs(score - best[0]) <= 1e-12 and
                                                                    total["lut"] < best[1]):
                        best = (score, total["lut"])
    return best


def _random_search(rng, sizes, cands=(1, 2, 4)):
    """A random W2/A2 chain of ``sizes``, random sensitivities per candidate, and its program on ice40-up5k
    (no hard blocks): (ir, cands, w_score, a_score, board, search)."""
    ir = random_ir(rng, sizes, [2] * (len(sizes) - 1), [2] * len(sizes))
    names = [la.name for la in ir.layers]
    w_score = {n: {b: float(rng.uniform(0, 1)) / b for b in cands} for n in names}
    a_score = {n: {b: float(rng.uniform(0, 1)) / b for b in cands} for n in names}
    board = load_board("ice40-up5k")
    search = AllocationSearch(ir, board.family, cands, _acc, w_score, a_score, bram_ok=False, dsp_ok=False)
    return ir, cands, w_score, a_score, board, search


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_allocation_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    ir, cands, w_score, a_score, board, search = _random_search(rng, [4, 4, 3] if seed < 2 else [2, 4, 4, 3])
    interval = int(rng.choice(search.periods()[len(search.periods()) // 3:]))
    smallest = search.smallest(interval_limit=interval)
    lut_limit = smallest.totals["lut"] * float(rng.uniform(1.1, 1.8))
    limits = {"lut": lut_limit, "ff": board.ff, "bram": None, "dsp": None}
    found = search.solve(interval, limits, minimize="score")
    expected = _brute_force(ir, board.family, cands, w_score, a_score, lut_limit, board.ff, interval)
    assert found is not None and expected is not None
    assert found.totals["score"] == pytest.approx(expected[0], rel=1e-6)
    assert found.totals["lut"] <= lut_limit and found.interval <= interval
    # the coupling: each layer's input bits are the previous layer's output bits, the input's for the first
    assert found.a_bits[0] == ir.input_bits
    assert all(b in cands for b in found.w_bits + found.a_bits[1:])


def test_a_proxy_engine_keeps_nothing_the_exports_values_decided():
    """An engine priced at other bits than its export's: the export's live weight bits (of its own, fewer,
    weight bits) and constant multipliers (none, for a thresholds layer) would make it look cheaper than any
    real export at those bits; the proxy counts every weight bit live and half of each multiplier's bits."""
    from rtl_gen.engine import EnginePlan
    from rtl_gen.plan import network_plan

    rng = np.random.default_rng(4)
    ir = random_ir(rng, [16, 8, 4], [2, 2], [2, 2])
    plan = next(s.plan for s in network_plan(ir, (4, 1, 4)).stages if isinstance(s.plan, EnginePlan))
    assert plan.w_live_bits is not None and plan.kind == "thresholds"
    proxy = proxy_engine(plan, 8, 2, 6, 14)
    assert proxy.w_live_bits is None and proxy.array.live_bits is None
    assert proxy.kind == "multiply_shift" and proxy.mult_ones > 0
    honest = replace(proxy, w_live_bits=plan.rows * plan.cols * 8)  # every lane's 8 bits live
    assert proxy.resources("ice40")["lut"] == honest.resources("ice40")["lut"]


def test_ranked_allocations_are_the_k_best_bits():
    """ranked(k): the k least-score bit settings that fit (any folding), each once, checked against every
    setting solved on its own."""
    ir, cands, w_score, a_score, board, search = _random_search(np.random.default_rng(5), [6, 4, 4, 3])
    names = [la.name for la in ir.layers]
    interval = search.periods()[len(search.periods()) // 2]
    limits = {"lut": search.smallest(interval_limit=interval).totals["lut"] * 1.3, "ff": board.ff, "bram": None,
              "dsp": None}
    fitting = []
    for w in itertools.product(cands, repeat=3):
        for hidden in itertools.product(cands, repeat=2):
            a = [ir.input_bits, *hidden]
            if search.solve(interval, limits, exclude=search.bits_mask(list(w), a)) is not None:
                score = sum(w_score[names[i]][w[i]] for i in range(3)) + sum(a_score[names[i]][hidden[i]] for i in range(2))
                fitting.append(score)
    k = 5
    ranked = search.ranked(limits, k, interval_limit=interval)
    assert len(fitting) > k and len(ranked) == k
    assert len({(tuple(a.w_bits), tuple(a.a_bits)) for a in ranked}) == k
    got = [a.totals["score"] for a in ranked]
    assert got == pytest.approx(sorted(fitting)[:k], rel=1e-6)
    assert all(a.totals["lut"] <= limits["lut"] and a.interval <= interval for a in ranked)
    assert ranked[0].totals["score"] == pytest.approx(search.best(limits, interval_limit=interval).totals["score"])


def test_rank_by_validation_orders_accuracy_then_luts():
    from hwq.allocate import rank_by_validation

    entries = [{"n": 0, "val_acc": 0.9, "est_lut": 500}, {"n": 1, "val_acc": 0.95, "est_lut": 900},
               {"n": 2, "val_acc": 0.95, "est_lut": 700}, {"n": 3, "val_acc": 0.9, "est_lut": 500}]
    assert [e["n"] for e in rank_by_validation(entries)] == [2, 1, 0, 3]


def test_rank_by_validation_keeps_uniform_unless_mixed_is_significant():
    """Uniform bits are the default: a mixed finalist a few validation samples ahead is noise (sign test), one far
    ahead is built; without per-sample correctness or with significance 1 the plain order holds."""
    from hwq.allocate import is_uniform, rank_by_validation, round_finalists, sign_test

    assert is_uniform([2, 2, 2], [8, 2, 2]) and not is_uniform([2, 2, 2], [8, 2, 3]) and not is_uniform([4, 2], [8, 2])
    n = 300
    uniform = np.zeros(n, bool)
    uniform[:270] = True
    close, far = uniform.copy(), uniform.copy()
    close[270:272] = True  # 2 more right: p = 0.25
    far[270:285] = True    # 15 more right: p = 2^-15
    assert sign_test(close, uniform) == pytest.approx(0.25) and sign_test(far, uniform) == pytest.approx(2.0 ** -15)
    assert sign_test(uniform, uniform) == 1.0

    def entries(mixed):
        return [{"n": "mixed", "val_acc": mixed.mean(), "est_lut": 900, "uniform": False, "val_correct": mixed},
                {"n": "W1", "val_acc": 0.5, "est_lut": 300, "uniform": True, "val_correct": np.arange(n) < 150},
                {"n": "W2", "val_acc": uniform.mean(), "est_lut": 500, "uniform": True, "val_correct": uniform}]
    ranked = rank_by_validation(entries(close))
    assert [e["n"] for e in ranked] == ["W2", "mixed", "W1"] and ranked[1]["p_over_uniform"] == pytest.approx(0.25)
    assert [e["n"] for e in rank_by_validation(entries(far))] == ["mixed", "W2", "W1"]
    assert [e["n"] for e in rank_by_validation(entries(close), significance=1)] == ["mixed", "W2", "W1"]
    assert [e["n"] for e in rank_by_validation(entries(close), significance=0.3)] == ["mixed", "W2", "W1"]

    class A:  # an allocation's bits
        def __init__(self, w, a):
            self.w_bits, self.a_bits = w, a
    x, y, z = A([2, 2], [8, 2]), A([4, 2], [8, 2]), A([4, 4], [8, 4])
    # a later round: the program's finalists, then the earlier ones not built and missed, no repeats
    got = round_finalists([("p1", y), ("p2", x)], [("e1", z), ("e2", x), ("e3", y)], {((4, 4), (8, 4))})
    assert [label for label, _ in got] == ["p1", "p2"]
    got = round_finalists([("p1", y)], [("e1", z), ("e2", x)], {((4, 2), (8, 2))})
    assert [label for label, _ in got] == ["e1", "e2"]


def test_allocation_infeasible_names_what_is_feasible():
    from hwq.allocate import _infeasible

    rng = np.random.default_rng(0)
    ir = random_ir(rng, [4, 4, 3], [2, 2], [2, 2, 2])
    cands = (1, 2)
    flat = {la.name: dict.fromkeys(cands, 1.0) for la in ir.layers}
    board = load_board("ice40-up5k")
    search = AllocationSearch(ir, board.family, cands, _acc, flat, flat, bram_ok=False, dsp_ok=False)
    limits = {"lut": 10, "ff": board.ff, "bram": None, "dsp": None}
    assert search.best(limits) is None
    smallest = search.smallest()
    err = _infeasible(search, board, limits, None, None, None, None)
    assert isinstance(err, UserError)
    assert f"needs {smallest.totals['lut']} LUTs" in str(err) and "within 10 LUTs" in str(err)


def test_allocate_cli(trained_run, tmp_path, capsys):
    run, _ = trained_run
    # impossible: one line naming the smallest feasible budget, exit 2, nothing written
    code = main(["allocate", str(run), "--lut-budget", "50", "--candidates", "2,4", "--dry-run"])
    err = capsys.readouterr().err
    assert code == 2 and "no bits and folding fit ice40-up5k within 50 LUTs" in err and "needs" in err
    # the BOPs baseline plans too (dry run: the plan only)
    code = main(["allocate", str(run), "--cost", "bops", "--candidates", "2,4", "--lut-budget", "1500", "--dry-run"])
    err = capsys.readouterr().err
    assert code == 0 and "allocated (bops" in err, err
    out = tmp_path / "alloc"
    code = main(["allocate", str(run), "--candidates", "2,4", "--epochs", "2", "--lut-budget", "1500",
                 "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    report = json.loads((run / "allocate.json").read_text())
    bits = yaml.safe_load((out / "bits.yaml").read_text())
    assert bits["format"] == "hwq-bits/1"
    assert report["final"]["meets_budget"] and report["final"]["estimate"]["lut"] <= 1500
    from hwq.ir import load_ir

    ir = load_ir(out / "ir")
    for layer in ir.layers:  # the exported design has the allocated bits
        assert bits["layers"][layer.name] == {"w_bits": layer.w_bits, "a_bits": layer.a_bits}
        assert layer.w_bits in (2, 4)


def test_allocate_finalists_by_validation(trained_run, tmp_path, capsys):
    """--finalists: the program's best bits and the uniform designs that fit are each fine-tuned without a
    validation split, and the most accurate on it goes on (ties: fewer LUTs), unless it is a mixed setting
    the sign test cannot tell from the best uniform one: then that uniform design goes on."""
    run, _ = trained_run
    out = tmp_path / "alloc"
    code = main(["allocate", str(run), "--candidates", "2,4", "--epochs", "1", "--lut-budget", "1500",
                 "--finalists", "2", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 0, err
    report = json.loads((run / "allocate.json").read_text())
    fin = report["rounds"][-1]["finalists"]  # each round chooses among its program's finalists
    assert report["validation_samples"] > 0 and "validation split" in err
    labels = [f["label"] for f in fin]
    assert "estimator #1" in labels and any(lab.startswith("uniform") for lab in labels)
    assert len({json.dumps(f["bits"], sort_keys=True) for f in fin}) == len(fin)  # distinct bits
    for f in fin:
        w = [b["w_bits"] for b in f["bits"].values()]
        a = [b["a_bits"] for b in f["bits"].values()]
        assert f["uniform"] == (len({*w, *a[1:]}) == 1), f
    plain = sorted(fin, key=lambda f: (-f["val_acc"], f["est_lut"]))
    assert report["significance"] == 0.05
    if plain[0]["uniform"] or plain[0]["p_over_uniform"] < 0.05:
        assert fin == plain
    else:  # the best mixed finalist is not significantly better: the best uniform one goes first
        best_uniform = next(f for f in plain if f["uniform"])
        assert fin == [best_uniform] + [f for f in plain if f is not best_uniform]
    assert report["final"]["bits"] == fin[0]["bits"] and report["final"]["meets_budget"]
    assert (out / "finalists" / "1" / "run").is_dir() and (out / "run").is_dir()


def test_bops_bits_match_brute_force():
    rng = np.random.default_rng(3)
    ir = random_ir(rng, [6, 4, 4, 3], [2, 2, 2], [2, 2, 2, 2])
    cands = (1, 2, 4, 8)
    names = [la.name for la in ir.layers]
    w_score = {n: {b: float(rng.uniform(0, 1)) / b for b in cands} for n in names}
    a_score = {n: {b: float(rng.uniform(0, 1)) / b for b in cands} for n in names}
    search = AllocationSearch(ir, "ice40", cands, _acc, w_score, a_score, bram_ok=False, dsp_ok=False)
    macs = [la.fan_in * la.channels for la in ir.layers]
    for limit in (200, 400, 900):
        best = None
        for w in itertools.product(cands, repeat=3):
            for a in itertools.product(cands, repeat=2):
                a_in = [ir.input_bits, *a]
                if sum(m * wi * ai for m, wi, ai in zip(macs, w, a_in, strict=True)) > limit:
                    continue
                score = sum(w_score[names[i]][w[i]] for i in range(3)) + sum(a_score[names[i]][a[i]] for i in range(2))
                best = score if best is None else min(best, score)
        found = search.bits_for_bops(limit)
        assert (found is None) == (best is None)
        if found:
            w, a = found
            assert a[0] == ir.input_bits
            assert sum(m * wi * ai for m, wi, ai in zip(macs, w, a, strict=True)) <= limit
            got = sum(w_score[names[i]][w[i]] for i in range(3)) + sum(a_score[names[i]][a[i + 1]] for i in range(2))
            assert got == pytest.approx(best, rel=1e-6)
    # the next-best bits within a budget (the BOPs finalists): every setting's score, in order
    limit = 900
    scores = sorted(sum(w_score[names[i]][w[i]] for i in range(3)) + sum(a_score[names[i]][a[i]] for i in range(2))
                    for w in itertools.product(cands, repeat=3) for a in itertools.product(cands, repeat=2)
                    if sum(m * wi * ai for m, wi, ai in zip(macs, w, [ir.input_bits, *a], strict=True)) <= limit)
    tried = []
    for expected in scores[:4]:
        w, a = search.bits_for_bops(limit, exclude_bits=tried)
        assert (w, a) not in tried
        tried.append((w, a))
        got = sum(w_score[names[i]][w[i]] for i in range(3)) + sum(a_score[names[i]][a[i + 1]] for i in range(2))
        assert got == pytest.approx(expected, rel=1e-6)


def test_flow_allocate(tmp_path):
    """hwq flow --allocate: trains, allocates, retrains at the allocated bits and builds that design,
    bit-exact; the report carries the allocation."""
    from hwq.flow import run_flow
    from hwq.train import TrainConfig

    report = run_flow(tmp_path / "flow", board=load_board("ice40-up5k"), samples=20, log=lambda *_: None,
                      train_cfg=TrainConfig(epochs_float=3, epochs_qat=2), show_progress=False,
                      allocate_options={"candidates": (2, 4), "min_throughput": 20000})
    alloc = report["allocation"]
    assert alloc["meets_budget"] and alloc["limits"]["interval_cycles"] == 600
    assert report["bit_exact"]["rtl_vs_golden"] and report["totals"]["initiation_interval_cycles_sim"] <= 600
    for layer in report["layers"]:
        if layer["name"] in alloc["bits"]:
            assert layer["w_bits"] == alloc["bits"][layer["name"]]["w_bits"]
    page = (tmp_path / "flow" / "report.html").read_text()
    assert "Bit allocation" in page and "Finalists" in page and alloc["finalists"][0]["label"] in page


def test_allocate_from_sinareq_learned_bits(tmp_path, capsys):
    """A SINAREQ run with learned bits: they are priced as the starting point, and the allocation trains
    from the run's float warm-up."""
    from hwq.train import TrainConfig, train

    run = tmp_path / "run"
    train(TrainConfig(method="sinareq", sinareq_learn_bits=True, w_bits=8, a_bits=4, epochs_float=2, epochs_qat=2),
          run, show_progress=False)
    code = main(["allocate", str(run), "--candidates", "2,4", "--epochs", "1", "--out", str(tmp_path / "alloc")])
    err = capsys.readouterr().err
    assert code in (0, 1), err
    report = json.loads((run / "allocate.json").read_text())
    start = report["sinareq_start"]
    assert start is not None and len(start["w_bits"]) == 3 and "SINAREQ's learned bits" in err
