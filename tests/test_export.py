import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hwq import golden
from hwq.data import load_dataset
from hwq.flow import check_torch_integer
from hwq.intrange import act_levels
from hwq.quant import LSQAct, SignAct


@settings(max_examples=60, deadline=None)
@given(
    out_bits=st.integers(1, 8),
    acc_scale=st.floats(1e-4, 10.0),
    out_step=st.floats(1e-3, 10.0),
    bias=st.integers(-300, 300),
    lo=st.integers(-2000, 0),
    span=st.integers(0, 3000),
    negative=st.booleans(),
    bipolar=st.booleans(),
)
def test_thresholds_reproduce_float_requant_exhaustively(out_bits, acc_scale, out_step, bias, lo, span, negative,
                                                         bipolar):
    """For every accumulator in range, thresholds equal the float requantization, including
    decreasing channels (a negative batch-norm multiplier: sign -1) and bipolar outputs."""
    from hwq.export import _thresholds

    hi = lo + span
    q = SignAct() if bipolar else LSQAct(out_bits)
    if not bipolar:
        with torch.no_grad():
            q.step.fill_(out_step)
    mult = torch.tensor(-acc_scale if negative else acc_scale, dtype=torch.float32)

    def requant(acc):
        return q.codes((acc + bias).to(torch.float32) * mult).to(torch.int64)

    signs = torch.tensor([-1 if negative else 1])
    thr = _thresholds(requant, q, [lo], [hi], signs).numpy()
    accs = np.arange(lo, hi + 1)
    expected = requant(torch.from_numpy(accs)).numpy()
    lo_code, step, _ = act_levels(q.bits, q.signed)
    got = golden.thresholds_apply(accs[:, None], thr, signs.numpy(), (lo_code, step))[:, 0]
    assert np.array_equal(got, expected)


def test_accumulator_bound_holds_for_extreme_inputs():
    rng = np.random.default_rng(0)
    w = rng.integers(-8, 8, size=(5, 40))
    lo, hi = golden.accumulator_range(w, 0, 15)
    for x in (np.zeros(40, int), np.full(40, 15), (w[0] > 0) * 15, (w[0] < 0) * 15):
        acc = w @ x
        assert (lo <= acc).all() and (acc <= hi).all()
    assert (w[0] @ ((w[0] > 0) * 15)) == hi[0]  # the bound is reached
    assert (w[0] @ ((w[0] < 0) * 15)) == lo[0]


def test_golden_equals_torch_integer_path(trained_run, trained_ir):
    run_dir, _ = trained_run
    _, ir = trained_ir
    data = load_dataset()
    check = check_torch_integer(run_dir, ir, data.x_test)
    assert check["equal"]
    assert check["fake_quant_mismatches"] == 0  # eval fake-quant computes the integer path's float32 operations


def test_torch_integer_check_detects_a_changed_weight(trained_run, trained_ir):
    run_dir, ir = trained_run[0], trained_ir[1]
    data = load_dataset()
    w = ir.tensors["fc3.weight"]
    original = w.copy()
    try:
        w[0, :] = np.where(w[0, :] == 1, -1, 1)  # flip a whole row of the logits layer
        assert not check_torch_integer(run_dir, ir, data.x_test)["equal"]
    finally:
        w[...] = original


def test_export_reports_proven_widths(trained_ir):
    _, ir = trained_ir
    fc1 = ir.layers[0]
    assert (fc1.w_bits, fc1.a_bits, fc1.out_bits) == (2, 4, 2)
    lo, hi = golden.accumulator_range(ir.tensors[fc1.weights], 0, 15)
    assert -(2 ** (fc1.acc_bits - 1)) <= lo.min() and hi.max() <= 2 ** (fc1.acc_bits - 1) - 1


def test_training_is_deterministic(tmp_path):
    from hwq.train import TrainConfig, train

    a = train(TrainConfig(epochs_float=2, epochs_qat=2, seed=3), tmp_path / "a", show_progress=False)
    b = train(TrainConfig(epochs_float=2, epochs_qat=2, seed=3), tmp_path / "b", show_progress=False)
    assert a["accuracy"] == b["accuracy"]
    sa = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=True)["state_dict"]
    sb = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
