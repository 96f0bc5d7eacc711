"""The folding search: the integer program finds what exhaustive enumeration finds, and respects every budget."""

import itertools
from dataclasses import replace

import numpy as np
import pytest

from boards import load_board
from boards.calibrate import random_resnet
from boards.model import dsp_eligible
from hwq.errors import UserError
from rtl_gen.engine import EnginePlan
from rtl_gen.folding import FoldingSearch, _width_options, board_limits, choose_folding
from rtl_gen.plan import Folding, network_plan, width_ties

from .conftest import random_ir


def _accounted(search, plan, interval):
    """A plan's totals as the search prices them at ``interval``: the components' resources, with the top's
    cycle counters sized for the interval."""
    top = search._top_cost(interval)[plan.buffers[0].lanes]
    total = dict.fromkeys(("lut", "ff", "bram", "dsp"), 0)
    for name, component in plan.components():
        res = top if name == "top" else component.resources(search.family)
        for k in total:
            total[k] += res[k]
    return total


def _every_plan(ir, board, options):
    """Every folding's word widths (ties respected) and DSP choices (where eligible), as a plan with every
    memory in logic; the memories' places are enumerated by the caller (their costs add up)."""
    ties = width_ties(ir)
    for widths in itertools.product(*options):
        if any(widths[i] != widths[j] for i, j, _ in ties):
            continue
        plan = network_plan(ir, widths)
        if any(isinstance(s.plan, EnginePlan) and s.plan.lanes > 64 for s in plan.stages):
            continue
        dsp_names = []
        for s in plan.stages:
            p = s.plan
            if isinstance(p, EnginePlan) and p.engine == "systolic" and dsp_eligible(board.family, p.w_bits, p.a_bits):
                dsp_names.append(s.layer.name)
            if isinstance(p, EnginePlan) and p.kind == "multiply_shift" and dsp_eligible(board.family, p.acc_bits,
                                                                                          p.mult_bits):
                dsp_names.append(f"{s.layer.name}.requant")
        for n_dsp in range(len(dsp_names) + 1):
            for dsp in itertools.combinations(dsp_names, n_dsp):
                yield network_plan(ir, Folding(widths, dsp))


def _block_choices(ir, plan, family):
    """Per component with memories (a buffer, or a stage's ROMs together): for each choice of which of them are
    block RAM, (the names, how the totals change). A stage's ROMs are enumerated jointly, since its estimate
    is rounded as a whole."""
    groups = [[name] for name, _ in plan.memories]
    groups += [[f"{s.layer.name}.{mem[0]}" for mem in s.plan.memories] for s in plan.stages
               if getattr(s.plan, "memories", None)]
    base = plan.resources(family)
    out = []
    for names in groups:
        choices = []
        for n in range(len(names) + 1):
            for subset in itertools.combinations(names, n):
                res = network_plan(ir, replace(plan.folding, block=set(subset))).resources(family)
                choices.append((subset, {k: res[k] - base[k] for k in base}))
        out.append(choices)
    return out


def _brute_force(ir, board, lut_budget):
    options, _, _ = _width_options(ir, None)
    search = FoldingSearch(ir, board.family, options)
    limits, cell_model, cell_limit = board_limits(board, lut_budget)
    best = None
    for plan in _every_plan(ir, board, options):
        t = plan.initiation_interval
        base = _accounted(search, plan, t)
        groups = _block_choices(ir, plan, board.family) if board.bram else []
        for choice in itertools.product(*groups):
            if sum(len(names) for names, _ in choice) > 2 * board.bram:  # a block memory takes half a block or more
                continue
            res = {k: base[k] + sum(d[k] for _, d in choice) for k in base}
            cells = cell_model and (cell_model.get("const", 0) + cell_model.get("lut", 0) * res["lut"]
                                    + cell_model.get("ff", 0) * res["ff"])
            if any(res[k] > v for k, v in limits.items()) or (cell_limit is not None and cells > cell_limit):
                continue
            key = (t, res["lut"])
            if best is None or key < best[0]:
                best = (key, choice)
    return best, search


@pytest.mark.parametrize("case", range(6))
def test_the_program_finds_the_brute_force_optimum(case):
    """Small random networks on boards of each family with budgets that bind: the same smallest interval,
    and at it the same fewest LUTs, as enumerating every width, DSP and block-RAM choice."""
    rng = np.random.default_rng(case)
    board = load_board(["ice40-up5k", "ecp5-25f", "xc7a35t"][case % 3])
    sizes = [int(rng.choice([4, 6, 8])), int(rng.choice([2, 4, 6])), int(rng.integers(2, 5))]
    w_bits = [int(rng.integers(2, 9)), int(rng.integers(1, 9))]
    ir = random_ir(rng, sizes, w_bits, [4, int(rng.integers(1, 5))], input_bits=int(rng.integers(2, 9)))
    board = replace(board, bram=int(rng.integers(1, 4)), dsp=int(rng.integers(0, 9)))  # scarce hard blocks
    # a LUT budget between the smallest and the largest design, so that it binds
    options, _, _ = _width_options(ir, None)
    search = FoldingSearch(ir, board.family, options)
    limits = {"lut": None, "ff": None, "bram": board.bram, "dsp": board.dsp}
    lo = search.solve(max(search.periods()), limits)[1]["lut"]
    budget = lo + (board.lut - lo) * 0.02 if case % 2 else lo * 1.5
    (key, _), search = _brute_force(ir, board, budget)
    folding = choose_folding(ir, board, lut_budget=budget)
    plan = network_plan(ir, folding)
    got = _accounted(search, plan, plan.initiation_interval)
    assert (plan.initiation_interval, got["lut"]) == key
    assert got["bram"] <= board.bram and got["dsp"] <= board.dsp and got["lut"] <= budget


@pytest.mark.parametrize("seed", range(2))
def test_the_program_ties_a_residual_adds_producers_like_brute_force(seed):
    """A small resnet without hard blocks (word widths only, the add's two producers tied): the same optimum
    as enumerating every width."""
    rng = np.random.default_rng(10 + seed)
    ir = random_resnet(rng, False)
    board = replace(load_board("xc7a35t"), bram=0, dsp=0)
    options, _, _ = _width_options(ir, None)
    search = FoldingSearch(ir, board.family, options, bram_ok=False, dsp_ok=False)
    lo = search.solve(max(search.periods()), {"lut": None, "ff": None, "bram": None, "dsp": None})[1]["lut"]
    (key, _), search = _brute_force(ir, board, lo * 1.3)
    plan = network_plan(ir, choose_folding(ir, board, lut_budget=lo * 1.3))
    assert (plan.initiation_interval, _accounted(search, plan, plan.initiation_interval)["lut"]) == key


def test_nothing_fits_names_the_smallest_design():
    ir = random_ir(np.random.default_rng(3), [32, 16, 8], [8, 8], [8, 4], input_bits=8)
    board = load_board("ice40-up5k")
    with pytest.raises(UserError, match=r"no folding of this network fits ice40-up5k within 100 LUTs.*the smallest "
                                        r"needs \d+ LUTs"):
        choose_folding(ir, board, lut_budget=100)


def test_hard_blocks_are_used_and_budgeted():
    """An 8-bit network on boards with and without DSPs and block RAMs: the choice uses them when the board
    has them, never more than it has, and the plan's counts are what the folding says."""
    ir = random_ir(np.random.default_rng(4), [32, 16, 8], [8, 8], [8, 4], input_bits=8)
    board = load_board("xc7a35t")
    folding = choose_folding(ir, board)
    plan = network_plan(ir, folding)
    assert folding.dsp and folding.block
    assert plan.dsp_blocks == sum(s.plan.lanes for s in plan.stages if s.layer.name in folding.dsp)
    none = replace(board, dsp=0, bram=0)
    bare = network_plan(ir, choose_folding(ir, none))
    assert bare.dsp_blocks == 0 and bare.resources(board.family)["bram"] == 0
    assert all(b.style == "logic" for _, b in bare.memories)
    few = replace(board, dsp=5)
    assert network_plan(ir, choose_folding(ir, few)).dsp_blocks <= 5


def test_a_folding_the_family_cannot_build_is_refused():
    from rtl_gen.folding import check_folding

    ir = random_ir(np.random.default_rng(5), [8, 4, 3], [2, 2], [2, 2], input_bits=2)
    plan = network_plan(ir, Folding([2, 2, 3], {"l0"}))  # a 2x2-bit product: no iCE40 DSP takes it
    with pytest.raises(UserError, match="layer 'l0': its 2x2-bit multipliers do not map to ice40 DSP blocks"):
        check_folding(plan, load_board("ice40-up5k"))
    plan = network_plan(ir, Folding([2, 2, 3], (), {"nope"}))
    with pytest.raises(UserError, match="no memory named 'nope'"):
        check_folding(plan, load_board("ice40-up5k"))


def test_lanes_are_bounded_by_the_layer_and_the_board_not_64():
    """On a large board a 256-256-10 binary MLP folds wider than 64 lanes (faster than any 64-lane design
    can be: a layer of M MACs takes at least M / 64 cycles on 64 lanes), within the budget."""
    from boards.calibrate import network_ir, random_layer

    rng = np.random.default_rng(0)
    layers, tensors = [], {}
    bits, signed = 1, False
    for i, (n_in, n_out) in enumerate([(256, 256), (256, 256), (256, 10)]):
        last = i == 2
        layer, t = random_layer(rng, f"l{i}", n_in, n_out, 1, bits, None if last else 1, in_signed=signed,
                                out_signed=not last)
        layers.append(layer)
        tensors.update(t)
        bits, signed = layer.out_bits, layer.out_signed
    ir = network_ir(layers, tensors, input_bits=1)
    board = load_board("xc7z020")
    plan = network_plan(ir, choose_folding(ir, board))
    slowest_at_64 = max(-(-la.fan_in * la.channels // 64) for la in ir.layers)
    assert plan.initiation_interval < slowest_at_64
    assert max(s.plan.lanes for s in plan.stages if isinstance(s.plan, EnginePlan)) > 64
    limits, _, _ = board_limits(board)
    res = plan.resources(board.family)
    assert all(res[k] <= limits[k] for k in ("lut", "bram", "dsp"))


@pytest.mark.parametrize("n", [1, 10, 64, 97])
def test_the_last_layer_is_offered_the_fewest_rows_for_each_number_of_tiles(n):
    """Its rows need not divide its outputs, but more rows with as many output tiles only cost more: the
    options are, for each tile count, the fewest rows that reach it; a --fold may still give any rows."""
    from rtl_gen.folding import _last_rows

    fewest = {}
    for rows in range(1, n + 1):
        fewest.setdefault(-(-n // rows), rows)
    assert _last_rows(n) == sorted(fewest.values())
    ir = random_ir(np.random.default_rng(n), [8, 4, n], [2, 2], [4, 2])
    options, _, _ = _width_options(ir, {"l1": (n - 1 or 1, 4)})
    assert options[-1] == [n - 1 or 1]


def test_an_undecided_probe_counts_as_infeasible_and_is_listed(monkeypatch):
    """A bisection probe HiGHS cannot settle in PROBE_SECONDS counts as "no" (listed in ``undecided``): the
    folding is then the fastest found; here every probe is cut off at once, so the search settles on the
    slowest interval, which its first (unlimited) solve showed feasible."""
    import rtl_gen.folding as folding

    monkeypatch.setattr(folding, "PROBE_SECONDS", 0.0)
    ir = random_ir(np.random.default_rng(3), [16, 8, 4], [2, 3], [4, 2])
    board = load_board("ice40-up5k")
    options, _, _ = _width_options(ir, None)
    search = FoldingSearch(ir, board.family, options)
    limits, cell_model, cell_limit = board_limits(board)
    fold, _ = search.fastest(limits, cell_model, cell_limit)
    assert search.undecided and network_plan(ir, fold).initiation_interval == max(search.periods())


def test_folding_offers_only_words_the_engines_take():
    """A layer wider than an engine's word (FINN's TFC: 784 binarized pixels, all of which one XNOR row could
    take per cycle) is folded with words of at most MAX_WORD codes, and the design generates (the search
    once chose cols = 784, which LayerEngine refuses)."""
    from boards.calibrate import network_ir, random_layer
    from rtl_gen.engine import MAX_WORD
    from rtl_gen.plan import network_plan
    from rtl_gen.top import NetworkTop

    rng = np.random.default_rng(0)
    l1, t1 = random_layer(rng, "fc1", 784, 64, 1, 1, 1, in_signed=True, out_signed=True)
    l2, t2 = random_layer(rng, "fc2", 64, 10, 1, 1, None, in_signed=True)
    ir = network_ir([l1, l2], {**t1, **t2}, input_bits=1, input_signed=True)
    board = load_board("xc7z020")
    folding = choose_folding(ir, board)
    assert max(folding.widths) <= MAX_WORD and folding.widths[0] > 64
    NetworkTop(network_plan(ir, folding))  # the engines accept their plans (elaborating them would take minutes)
    with pytest.raises(UserError, match="cols must divide the layer's 784 input channels and be at most 256"):
        choose_folding(ir, board, fold={"fc1": (16, 392)})  # (a user's --fold: an error, not the engine's ValueError)
