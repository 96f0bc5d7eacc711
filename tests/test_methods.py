"""Method procedures: SINAREQ's regulariser, TSQ's least-squares step, neuron-by-neuron freezing."""

import math

import torch

from hwq.methods import SinusoidalRegulariser, quantizer_names, sinareq_lambda, tsq_fit_layer
from hwq.models import QLayer
from hwq.quant import LSQWeight, UniQWeight


def _layer(w):
    layer = QLayer("l", "linear", w.shape[1], w.shape[0], LSQWeight(2), None, bn=False)
    with torch.no_grad():
        layer.weight.copy_(w)
    return layer


def test_sinusoidal_regulariser_is_zero_exactly_on_the_midrise_grid():
    bits, s = 3, 0.8
    grid = torch.arange(-7, 8, 2, dtype=torch.float32) * s / 7  # odd multiples of s/(2^b-1)
    reg = SinusoidalRegulariser([_layer(grid.reshape(1, -1))], [bits], learn_bits=True)
    with torch.no_grad():
        reg.scale.fill_(s)
    assert float(reg().detach()) < 1e-10
    off = SinusoidalRegulariser([_layer((grid[:-1] + s / 7).reshape(1, -1))], [bits], learn_bits=True)
    with torch.no_grad():
        off.scale.fill_(s)
    assert math.isclose(float(off().detach()), 1.0, rel_tol=1e-4)  # half-way between levels: the maximum
    # It is the grid of UniQ's quantizer with Δ = 2 s / (2^b - 1): quantizing changes nothing.
    q = UniQWeight(bits)
    with torch.no_grad():
        q.delta.fill_(2 * s / 7)
    assert torch.allclose(q(grid), grid, atol=1e-6)


def test_sinusoidal_regulariser_reaches_bits_and_scale():
    torch.manual_seed(0)
    reg = SinusoidalRegulariser([_layer(torch.randn(4, 16))], [4.3], learn_bits=True)
    reg().backward()
    assert reg.bits.grad is not None and reg.bits.grad.abs().sum() > 0
    assert reg.scale.grad is not None and reg.scale.grad.abs().sum() > 0


def test_sinareq_schedule_is_a_smooth_step_at_a_fifth():
    assert sinareq_lambda(0, 100) < 0.01 and sinareq_lambda(100, 100) > 0.99
    assert math.isclose(sinareq_lambda(20, 100), 0.5)


def test_tsq_least_squares_fits_better_than_rounding_the_weights():
    torch.manual_seed(0)
    x = torch.randn(3000, 12)
    codes = torch.randint(-1, 2, (5, 12)).double()
    alpha = torch.tensor([0.5, 1.0, 2.0, 0.7, 1.3], dtype=torch.float64)
    c = torch.tensor([0.5, -0.2, 0.0, 0.3, 1.0], dtype=torch.float64)
    y = torch.relu(x.double() @ (codes * alpha[:, None]).T + c)
    w_float = codes * alpha[:, None] + 0.3 * torch.randn(5, 12, dtype=torch.float64)
    naive, a0, _ = tsq_fit_layer(x, y, w_float, bits=2, iters=0)  # rounding at the MMSE step, c = 0

    def err(q, a, b):
        return float(((torch.relu(x.double() @ (q * a[:, None]).T + b) - y) ** 2).mean())

    got, a, b = tsq_fit_layer(x, y, w_float, bits=2, iters=40)
    assert set(got.unique().tolist()) <= {-1.0, 0.0, 1.0}  # ternary at 2 bits, as the paper
    assert err(got, a, b) < 1e-3 * err(naive, a0, torch.zeros(5, dtype=torch.float64))
    assert torch.equal(got, codes)  # the planted ternary weights are found, and their scales
    assert torch.allclose(a, alpha, atol=1e-2) and torch.allclose(b, c, atol=1e-2)


def test_quantizer_choice_per_method_and_policy():
    wq, aq, pc = quantizer_names("xnor", [8, 1, 8], [4, 1, 8])
    assert wq == ["lsq", "xnor", "lsq"] and aq == ["lsq", "sign", "lsq"] and pc == [True] * 3
    wq, _, pc = quantizer_names("tsq", [2, 2, 2], [4, 2, 2])
    assert wq == ["fixed", "fixed", "lsq"]  # the logits layer keeps one weight scale
    assert quantizer_names("pact", [2], [4])[:2] == (["dorefa"], ["pact"])
