"""Every quantizer: values on its grid, gradients flow, its paper's initialisation, export = fake-quant."""

import math

import pytest
import torch

from hwq.intrange import act_levels, weight_codes
from hwq.quant import (
    UNIQ_DELTA_HALF_NORMAL,
    UNIQ_DELTA_NORMAL,
    AlignedQuant,
    DoReFaAct,
    DoReFaWeight,
    FixedStepAct,
    FixedStepWeight,
    LSQAct,
    LSQWeight,
    PACTAct,
    SignAct,
    SparseAct,
    UniQAct,
    UniQWeight,
    XNORWeight,
    mmse_step,
    uniform_codes,
)

WEIGHTS = {
    "lsq": LSQWeight,
    "uniq": UniQWeight,
    "dorefa": DoReFaWeight,
    "fixed": lambda b: FixedStepWeight(b, torch.tensor(0.3)),
    "fixed_pc": lambda b: FixedStepWeight(b, torch.full((16,), 0.25)),
}
ACTS = {"lsq": LSQAct, "uniq": UniQAct, "pact": lambda b: PACTAct(b, alpha_init=3.0), "dorefa": DoReFaAct,
        "fixed": lambda b: FixedStepAct(b, 0.2), "sparse": SparseAct}


def _weight_quantizer(kind, bits):
    torch.manual_seed(bits)
    q = WEIGHTS[kind](bits)
    w = torch.randn(16, 8, 3, 3)
    q.init(w)
    return q, w


@pytest.mark.parametrize("kind", sorted(WEIGHTS))
@pytest.mark.parametrize("bits", range(1, 9))
def test_weight_codes_lie_on_the_grid_and_export_equals_fake_quant(kind, bits):
    q, w = _weight_quantizer(kind, bits)
    codes, _scale = q.quantize(w)
    lo, hi = weight_codes(bits, q.grid, symmetric=q.symmetric)
    assert torch.equal(codes, codes.round())
    assert codes.min() >= lo and codes.max() <= hi
    if q.grid == "odd" or bits == 1:
        assert torch.all(codes.remainder(2) == 1)  # odd codes: mid-rise, no zero level
    int_codes, int_scale = q.integer(w)
    per_ch = int_scale.reshape(-1, 1, 1, 1) if int_scale.dim() else int_scale
    assert torch.equal(q(w), int_codes.to(torch.float32) * per_ch)  # fake-quant = integers x scale
    assert len(torch.unique(codes)) <= hi - lo + 1


@pytest.mark.parametrize("kind", ["lsq", "uniq", "dorefa", "fixed"])
@pytest.mark.parametrize("bits", [1, 2, 4])
def test_weight_gradients_flow(kind, bits):
    q, w = _weight_quantizer(kind, bits)
    w = w.clone().requires_grad_(True)
    q(w).pow(2).sum().backward()
    assert w.grad is not None and w.grad.abs().sum() > 0
    for p in q.parameters():
        assert p.grad is not None and p.grad != 0


def test_lsq_gradients_are_clipped_outside_the_range():
    q = LSQWeight(3)
    w = torch.randn(16, 8, requires_grad=True)
    q.init(w.detach())
    q(w).sum().backward()
    inside = (w.detach() / q.step.detach()).round().clamp(-4, 3) == (w.detach() / q.step.detach()).round()
    assert torch.all(w.grad[~inside] == 0)
    assert torch.all(w.grad[inside] == 1)


def test_lsq_step_gradient_is_scaled_as_in_lsq():
    # dQ/ds = round(v) - v inside (v = w/s), times 1/sqrt(N Qp); here N = 1, Qp = 3 (3 bits).
    q = LSQWeight(3)
    with torch.no_grad():
        q.step.fill_(1.0)
    q(torch.tensor([0.3])).sum().backward()
    assert math.isclose(float(q.step.grad), (0 - 0.3) / math.sqrt(3), rel_tol=1e-5)


def test_lsq_init():
    w = torch.tensor([[-1.0, 1.0, 2.0, -2.0]])
    q = LSQWeight(2)
    q.init(w)
    assert math.isclose(float(q.step.detach()), 2 * 1.5 / math.sqrt(1))


@pytest.mark.parametrize("bits", range(1, 9))
def test_uniq_weight_init_and_levels(bits):
    torch.manual_seed(0)
    w = torch.randn(4096) * 0.3
    q = UniQWeight(bits)
    q.init(w)
    assert math.isclose(float(q.delta.detach()), float(w.std()) * UNIQ_DELTA_NORMAL[bits - 1], rel_tol=1e-6)
    values = torch.unique(q(w))
    c = ((1 << bits) - 1) / 2
    expected = (torch.arange((1 << bits), dtype=torch.float32) - c) * q.delta.detach()
    assert (values[:, None] - expected[None, :]).abs().min(dim=1).values.max() < 1e-6  # every value is a level
    if bits == 1:  # binary is the same formula: +-Δ/2
        assert torch.allclose(values.abs(), q.delta.detach() / 2)


def test_uniq_step_gradient_matches_the_paper():
    # Inside the range dQ/dΔ = round(w/Δ + c) - c - w/Δ; above it +c (here b = 2, c = 1.5).
    q = UniQWeight(2)
    with torch.no_grad():
        q.delta.fill_(1.0)
    w = torch.tensor([0.3, 5.0])
    for i, expected in ((0, round(0.3 + 1.5) - 1.5 - 0.3), (1, 1.5)):
        q.delta.grad = None
        q(w)[i].backward()
        g = 1 / math.sqrt(2 * 1)  # grad scale 1/sqrt(N Qp)
        assert math.isclose(float(q.delta.grad), expected * g, rel_tol=1e-5)


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 8])
def test_uniq_act_init_uses_the_half_normal_table_and_running_max(bits):
    torch.manual_seed(1)
    q = UniQAct(bits)
    x1 = torch.relu(torch.randn(1000))
    x2 = torch.relu(torch.randn(1000) * 2)
    q.init(x1)
    q.init(x2)
    expected = max(float(torch.sqrt(2 * (x ** 2).mean())) for x in (x1, x2)) * UNIQ_DELTA_HALF_NORMAL[bits - 1]
    assert math.isclose(float(q.step.detach()), expected, rel_tol=1e-6)


def test_uniq_table_is_the_mse_optimal_gaussian_step():
    # The paper's initialisation: the step minimising the MSE of a unit Gaussian (checked by search).
    torch.manual_seed(0)
    x = torch.randn(200_000)
    for bits in (2, 3, 4):
        c = ((1 << bits) - 1) / 2

        def mse(d, bits=bits, c=c):
            return float(((torch.round(torch.clamp(x / d + c, 0, 2 * c)) - c) * d - x).pow(2).mean())

        best = min((mse(d), d) for d in torch.linspace(0.5, 1.5, 201) * UNIQ_DELTA_NORMAL[bits - 1])[1]
        assert math.isclose(float(best), UNIQ_DELTA_NORMAL[bits - 1], rel_tol=0.03)


@pytest.mark.parametrize("kind", sorted(ACTS))
@pytest.mark.parametrize("bits", [1, 2, 3, 4, 8])
def test_activation_codes_on_grid_and_export_equals_fake_quant(kind, bits):
    q = ACTS[kind](bits)
    x = torch.linspace(-3, 8, 2001)
    q.init(torch.relu(x))
    q.init_done()
    codes = q.codes(x)
    lo, step, n = act_levels(bits, q.signed)
    assert torch.equal(codes, codes.round())
    assert codes.min() >= lo and codes.max() <= lo + step * (n - 1)
    assert torch.equal(q(x), codes * q.scale)


@pytest.mark.parametrize("kind", ["lsq", "uniq", "pact"])
def test_activation_gradients_flow(kind):
    q = ACTS[kind](2)
    x = torch.linspace(-1, 8, 200, requires_grad=True)
    q.init(torch.relu(x.detach()))
    q(x).sum().backward()
    assert x.grad.abs().sum() > 0
    assert all(p.grad is not None and p.grad != 0 for p in q.parameters())


def test_pact_gradients_are_the_papers():
    q = PACTAct(2, alpha_init=2.0)
    x = torch.tensor([-1.0, 0.7, 3.0], requires_grad=True)
    q(x).sum().backward()
    assert x.grad.tolist() == [0.0, 1.0, 0.0]  # 1 on [0, α), 0 elsewhere
    assert float(q.alpha.grad) == 1.0  # one input at or above α
    assert float(q.alpha.detach()) == 2.0  # the paper's α init is a constant (10 by default)
    assert float(PACTAct(4).alpha.detach()) == 10.0


def test_dorefa_weights_are_the_papers_formula():
    torch.manual_seed(0)
    w = torch.randn(50)
    bits = 3
    n = (1 << bits) - 1
    t = torch.tanh(w) / (2 * torch.tanh(w).abs().max()) + 0.5
    expected = 2 * torch.round(t * n) / n - 1
    assert torch.allclose(DoReFaWeight(bits)(w), expected, atol=1e-6)
    assert torch.allclose(DoReFaWeight(1)(w), torch.sign(w) * w.abs().mean())


def test_xnor_weights_have_one_scale_per_channel():
    torch.manual_seed(0)
    w = torch.randn(6, 4, 3, 3)
    q = XNORWeight(1)
    codes, scale = q.quantize(w)
    assert set(codes.unique().tolist()) == {-1.0, 1.0}
    assert torch.allclose(scale, w.abs().mean(dim=(1, 2, 3)))
    assert XNORWeight(1, per_channel=False).quantize(w)[1].dim() == 0


def test_sign_activation_is_bipolar_with_clipped_ste():
    q = SignAct()
    x = torch.tensor([-2.0, -0.5, 0.0, 0.5, 2.0], requires_grad=True)
    assert q(x).tolist() == [-1.0, -1.0, 1.0, 1.0, 1.0]
    q(x).sum().backward()
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 0.0]


def test_sparse_activation_zeroes_small_values():
    q = SparseAct(2, sparsity=0.5)
    x = torch.relu(torch.randn(10_000, generator=torch.Generator().manual_seed(0)))
    q.init(x)
    q.init_done()
    codes = q.codes(x)
    pos = x[x > 0]
    assert float(q.eps) >= float(q.step) / 2
    frac_zero = float((codes[x > 0] == 0).float().mean())
    assert 0.45 <= frac_zero <= 0.55  # the sparsity quantile of the positive activations
    assert codes[x > q.eps].min() >= 1 and pos.numel() > 0


@pytest.mark.parametrize("bits", [1, 2, 3, 4])
def test_mmse_step_beats_its_neighbours(bits):
    torch.manual_seed(0)
    w = torch.randn(5000)
    s = mmse_step(w, bits, signed=True)
    lo, hi = weight_codes(bits, "int", symmetric=True)

    def mse(step):
        q = torch.where(w >= 0, 1.0, -1.0) * step if bits == 1 else torch.clamp(torch.round(w / step), lo, hi) * step
        return float((q - w).pow(2).mean())

    assert mse(s) <= mse(s * 1.05) + 1e-9 and mse(s) <= mse(s * 0.95) + 1e-9


def test_aligned_quantizer_follows_its_source_step():
    src = LSQAct(2)
    with torch.no_grad():
        src.step.fill_(0.5)
    q = AlignedQuant(4, src)
    assert q(torch.tensor([0.74, -3.0, 100.0])).tolist() == [0.5, -3.0, 3.5]  # signed 4-bit at step 0.5


def test_rounding_is_half_to_even_everywhere():
    codes = uniform_codes(torch.tensor([0.5, 1.5, 2.5]), torch.tensor(1.0), 0, 7)
    assert codes.tolist() == [0.0, 2.0, 2.0]
