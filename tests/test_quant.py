import math

import pytest
import torch

from hwq.intrange import weight_range
from hwq.quant import ActQuantizer, WeightQuantizer, quantize_codes


@pytest.mark.parametrize("bits", range(1, 9))
def test_weight_values_lie_on_the_grid(bits):
    torch.manual_seed(bits)
    q = WeightQuantizer(bits)
    w = torch.randn(64, 32)
    q.init_step(w)
    codes = q.codes(w)
    lo, hi = weight_range(bits)
    assert torch.equal(codes, codes.round())
    assert codes.min() >= lo and codes.max() <= hi
    if bits == 1:
        assert set(codes.unique().tolist()) <= {-1.0, 1.0}
    assert torch.equal(q(w), codes * q.step)
    assert torch.equal(q.integer(w), codes.to(torch.int64))


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
def test_activation_codes_unsigned_and_clamped(bits):
    q = ActQuantizer(bits)
    x = torch.linspace(-3, 50, 1000)
    q.init_step(x.clamp(min=0))
    codes = q.codes(x)
    assert codes.min() == 0 and codes.max() <= 2**bits - 1
    assert torch.equal(codes, codes.round())


def test_ste_gradients_flow_to_input_and_step():
    q = WeightQuantizer(3)
    w = torch.randn(16, 8, requires_grad=True)
    q.init_step(w.detach())
    q(w).sum().backward()
    assert w.grad is not None and w.grad.abs().sum() > 0
    assert q.step.grad is not None and q.step.grad != 0
    # clipped values get no gradient
    inside = (w.detach() / q.step.detach()).abs() <= 3
    assert torch.all(w.grad[~inside] == 0)


def test_lsq_init():
    w = torch.tensor([[-1.0, 1.0, 2.0, -2.0]])
    q = WeightQuantizer(2)
    q.init_step(w)
    assert math.isclose(float(q.step.detach()), 2 * 1.5 / math.sqrt(1))


def test_rounding_is_half_to_even_everywhere():
    codes = quantize_codes(torch.tensor([0.5, 1.5, 2.5]), torch.tensor(1.0), 0, 7)
    assert codes.tolist() == [0.0, 2.0, 2.0]
