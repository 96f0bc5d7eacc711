import numpy as np
import pytest

from boards import known_boards, load_board
from boards.model import coefficients, fit, multiplier_luts, multipliers, predict, resolve
from hwq.errors import UserError
from hwq.estimate import estimate

from .conftest import random_ir


def test_fit_recovers_known_coefficients():
    rng = np.random.default_rng(0)
    rows = [{"a": int(rng.integers(1, 100)), "b": int(rng.integers(1, 100)), "const": 1} for _ in range(40)]
    targets = [3 * r["a"] + 0.5 * r["b"] + 7 for r in rows]
    coef = fit(rows, targets)
    assert coef == pytest.approx({"a": 3, "b": 0.5, "const": 7}, rel=1e-6)


def test_every_board_family_has_a_calibrated_model():
    for name in known_boards():
        family = load_board(name).family
        assert {"lut", "ff"} <= set(coefficients()[family])


def test_unknown_family_is_a_clear_error():
    with pytest.raises(UserError, match="no calibrated lut model for FPGA family 'virtex2'"):
        predict("virtex2", "lut", {"const": 1})


def test_the_multiplier_table_covers_every_processing_element_of_every_family():
    from boards.calibrate import MULTIPLIER_A_BITS
    from hwq.intrange import MAX_W_STORAGE_BITS
    from rtl_gen.arith import multiplier_key

    keys = {multiplier_key(w, a, s) for w in range(2, MAX_W_STORAGE_BITS + 1) for a in MULTIPLIER_A_BITS
            for s in (0, 1)}
    for family in coefficients():
        table = multipliers()["families"][family]
        assert set(table) == keys and all(v > 0 for v in table.values())
        # measured, and so not linear in the widths: on every family the widest costs several times the narrowest
        assert table["8x8s"] > 4 * table["2x2s"]


def test_resolve_prices_measured_features_by_the_table():
    table = multipliers()["families"]["ice40"]
    out = resolve("ice40", {"pe_mul@4x8u": 3, "pe_mul@2x2s": 2, "pe_mul@8x8s": 0, "acc": 5})
    assert out == {"pe_mul": 3 * table["4x8u"] + 2 * table["2x2s"], "acc": 5}
    with pytest.raises(UserError, match="no measured 18x2u multiplier for FPGA family 'ice40'"):
        resolve("ice40", {"pe_mul@18x2u": 1})
    with pytest.raises(UserError, match="no measured 4x17s multiplier for FPGA family 'ice40'"):
        resolve("ice40", {"pe_mul@4x17s": 1})


def test_activation_widths_between_the_measured_ones_are_interpolated():
    """9..11 and 13..15-bit activations are priced on the line between the measured 8, 12 and 16 bits."""
    table = multipliers()["families"]["xilinx7"]
    assert multiplier_luts("xilinx7", "6x10u") == (table["6x8u"] + table["6x12u"]) / 2
    assert multiplier_luts("xilinx7", "6x15s") == table["6x12s"] + 3 * (table["6x16s"] - table["6x12s"]) / 4
    assert multiplier_luts("xilinx7", "6x12s") == table["6x12s"]


@pytest.mark.parametrize("folding", [[4, 4, 4], [16, 12, 5], [2, 1, 3], [8, 6, 2], [16, 3, 1]])
def test_live_weight_bits_are_the_bits_set_in_some_word_of_the_weight_rom(folding):
    """The estimator's count of live weight bits (those a multiplier in logic keeps) is what the engine's ROM holds."""
    import warnings

    from amaranth.hdl import UnusedElaboratable

    from rtl_gen.engine import EnginePlan
    from rtl_gen.plan import network_plan
    from rtl_gen.top import build_stage

    rng = np.random.default_rng(3)
    ir = random_ir(rng, [16, 12, 5], [3, 4], [4, 2])
    ir.tensors[ir.layers[1].weights][:, 1::2] = 0  # columns of zeros: bits no word sets
    stages = network_plan(ir, folding).stages
    for stage in stages:
        plan = stage.plan
        assert isinstance(plan, EnginePlan)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UnusedElaboratable)
            engine = build_stage(stage, to_register=stage is stages[-1])
        engine._MustUse__silence = True
        union = 0
        for word in engine.weight_rom():
            union |= word
        assert plan.w_live_bits == union.bit_count() > 0
        assert plan.w_live_bits <= plan.lanes * plan.w_bits


@pytest.mark.synth
def test_the_multiplier_table_is_what_yosys_measures_now():
    """A yosys upgrade or a change to the processing element shows here before it skews the estimator."""
    from boards.calibrate import measure_multipliers

    board, table = measure_multipliers("ice40")
    assert multipliers()["commands"]["ice40"] == board.yosys_synth
    assert table == multipliers()["families"]["ice40"]


@pytest.mark.parametrize("board", ["ice40-up5k", "ecp5-25f", "xc7a35t"])
def test_estimate_totals_are_layers_plus_top(board):
    ir = random_ir(np.random.default_rng(1), [16, 8, 4], [2, 3], [4, 2])
    est = estimate(ir, load_board(board), folding=[4, 4, 4])
    for k in ("lut", "ff", "bram", "dsp"):  # the top module's estimate includes the buffers it holds
        assert est["totals"][k] == sum(la["estimate"][k] for la in est["layers"]) + est["top"][k]
        assert est["top"][k] >= sum(b["estimate"][k] for b in est["buffers"])
    assert est["totals"]["lut"] > 0 and est["fits"]
    assert est["latency_cycles"] == 1 + sum(la["estimate"]["cycles"] + 1 for la in est["layers"])


def test_estimate_says_by_how_much_it_does_not_fit():
    ir = random_ir(np.random.default_rng(1), [48, 24, 24], [8, 8], [8, 4], input_bits=8)
    small = load_board("ice40-up5k")
    est = estimate(ir, small, folding=[16, 12, 16])
    assert not est["fits"]
    assert est["over"]["lut"] == est["totals"]["lut"] - small.lut > 0


def test_the_wide_sweep_makes_valid_wide_designs_of_bounded_size():
    """``boards.calibrate sweep --wide``: networks of tens of channels folded with words of up to 64 codes and
    engines of up to 4,096 lanes (the large boards' designs, beyond the small sweep's 64 lanes), of a size
    yosys finishes in minutes; the same sequence for a seed every time (the sweep's tasks rebuild design k)."""
    from boards.calibrate import WIDE_BIT_PRODUCTS, WIDE_LOGIC_ROM_BITS, WIDE_MAX_LANES, sweep_designs
    from rtl_gen.engine import EnginePlan
    from rtl_gen.plan import network_plan

    _, cases = sweep_designs("ecp5", 12, 11, wide=True)
    lanes = []
    for ir, folding in cases:
        stages = network_plan(ir, folding).stages
        engines = [s.plan for s in stages if isinstance(s.plan, EnginePlan)]
        lanes += [p.lanes for p in engines]
        assert all(p.lanes <= WIDE_MAX_LANES for p in engines)
        assert sum(p.lanes * p.w_bits * p.a_bits for p in engines) <= WIDE_BIT_PRODUCTS
        assert sum(d * w for s in stages for _, d, w, style in getattr(s.plan, "memories", []) if style == "logic") \
            <= WIDE_LOGIC_ROM_BITS
    assert max(lanes) >= 512  # (widths are drawn in proportion to their size)
    again = sweep_designs("ecp5", 12, 11, wide=True)[1]
    assert [f for _, f in again] == [f for _, f in cases]


def test_block_ram_of_every_stage_kind_is_counted_from_its_roms():
    """The add's, the average pool's and a shortcut stage's ROMs (``prom``, ``aprom``, the shortcut's ``wrom``) in
    block RAM: ``hwq estimate`` counts their blocks from the ROMs' contents like a layer engine's."""
    from boards.calibrate import resnet8_ir
    from rtl_gen.plan import Folding, network_plan

    ir = resnet8_ir(np.random.default_rng(0), c0=1, side=8, channels=(4, 8, 8), w_bits=3, a_bits=2, input_bits=3)
    widths = [1, 2, 2, 2, 4, 4, 4, 2, 4, 4, 3]
    names = network_plan(ir, widths).memory_names
    assert {"add1.prom", "add2.wrom", "add2.prom", "add2.aprom", "avgpool.prom"} <= set(names)
    for board in ("ice40-up5k", "xc7a35t"):
        est = estimate(ir, load_board(board), folding=Folding(widths, (), names))
        by_layer = {la["name"]: la["estimate"] for la in est["layers"]}
        assert by_layer["add1"]["bram"] > 0 and by_layer["add2"]["bram"] > 0 and by_layer["avgpool"]["bram"] > 0
        assert by_layer["s2short"] == {"lut": 0, "ff": 0, "bram": 0, "dsp": 0, "cycles": 0}  # inside add2's stage
        assert next(la for la in est["layers"] if la["name"] == "s2short")["in_stage"] == "add2"
