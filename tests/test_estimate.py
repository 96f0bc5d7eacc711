import numpy as np
import pytest

from boards import known_boards, load_board
from boards.model import coefficients, fit, predict
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
