"""Learned-step quantizers (LSQ-style) with the straight-through estimator.

Forward values are exact: ``code = round(clamp(x / step, lo, hi))`` computed by :func:`quantize_codes`,
the same function export and the integer path use, so the fake-quant grid and the exported integers are
one thing. Rounding is ``torch.round`` (half to even) everywhere.

Backward: the rounding passes the gradient straight through (STE); the clamp blocks it outside the
range; the step's gradient is scaled by ``1 / sqrt(numel * hi)`` as in LSQ (Esser et al., 2020).
A 1-bit weight quantizer is binary: codes {-1, +1} (sign, with 0 -> +1), values ``step * code``.
"""

import math
from dataclasses import dataclass

import torch
from torch import nn

from .intrange import check_bits, max_int, min_int, weight_range

__all__ = [
    "ActQuantizer",
    "QuantConfig",
    "WeightQuantizer",
    "quantize_codes",
    "requantize_float",
]


class _RoundSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return torch.round(x)

    @staticmethod
    def backward(ctx, grad):
        return grad


class _SignSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return torch.where(x >= 0, torch.ones_like(x), -torch.ones_like(x))

    @staticmethod
    def backward(ctx, grad):
        return grad


class _GradScale(torch.autograd.Function):
    """Identity forward (bit for bit), gradient times ``scale`` backward."""

    @staticmethod
    def forward(ctx, x, scale):
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad * ctx.scale, None


def quantize_codes(x, step, lo, hi, *, binary=False):
    """Integer codes (as floats) of ``x`` on the grid ``step * {lo..hi}``; differentiable by STE.

    ``binary`` gives sign codes {-1, +1} instead (1-bit weights).
    """
    v = x / step
    if binary:
        return _SignSTE.apply(torch.clamp(v, -1.0, 1.0))
    return _RoundSTE.apply(torch.clamp(v, lo, hi))


def requantize_float(acc, bias, acc_scale, out_step, out_bits):
    """Next layer's unsigned activation codes from an integer accumulator, as the float model computes them.

    ``acc`` and ``bias`` are integer tensors, ``acc_scale = w_step * in_step`` and ``out_step`` float32.
    ReLU is the clamp at code 0. Export derives integer thresholds from this function, so the
    thresholds reproduce it exactly (it is monotonic in ``acc``).
    """
    y = (acc + bias).to(torch.float32) * acc_scale
    return quantize_codes(y, out_step, 0, max_int(out_bits, False))


@dataclass(frozen=True)
class QuantConfig:
    """Bits of one quantized layer: its weights and its input activations."""

    w_bits: int
    a_bits: int

    def __post_init__(self):
        check_bits(self.w_bits, name="w_bits")
        check_bits(self.a_bits, name="a_bits")


class WeightQuantizer(nn.Module):
    """Symmetric signed weight quantizer with one learned step per tensor."""

    def __init__(self, bits):
        super().__init__()
        self.bits = check_bits(bits, name="w_bits")
        self.lo, self.hi = weight_range(self.bits)
        self.step = nn.Parameter(torch.tensor(1.0))

    @property
    def binary(self):
        return self.bits == 1

    @torch.no_grad()
    def init_step(self, w):
        """LSQ's initialisation 2 E|w| / sqrt(Qp); for binary weights E|w| (XNOR-Net's scale)."""
        mean_abs = w.abs().mean().clamp_min(1e-8)
        self.step.copy_(mean_abs if self.binary else 2 * mean_abs / math.sqrt(max(self.hi, 1)))

    def codes(self, w):
        g = 1.0 / math.sqrt(w.numel() * max(self.hi, 1))
        return quantize_codes(w, _GradScale.apply(self.step, g), self.lo, self.hi, binary=self.binary)

    def forward(self, w):
        return self.codes(w) * self.step

    @torch.no_grad()
    def integer(self, w):
        """Integer weights (int64): the codes the forward pass multiplies by ``step``."""
        return self.codes(w).to(torch.int64)


class ActQuantizer(nn.Module):
    """Unsigned activation quantizer (after ReLU) with one learned step."""

    def __init__(self, bits):
        super().__init__()
        self.bits = check_bits(bits, name="a_bits")
        self.lo, self.hi = min_int(self.bits, False), max_int(self.bits, False)
        self.step = nn.Parameter(torch.tensor(1.0))

    @torch.no_grad()
    def init_step(self, x):
        """LSQ's initialisation 2 E|x| / sqrt(Qp) from a batch of (post-ReLU) activations."""
        self.step.copy_((2 * x.abs().mean() / math.sqrt(self.hi)).clamp_min(1e-8))

    def codes(self, x):
        g = 1.0 / math.sqrt(x.numel() * self.hi)
        return quantize_codes(x, _GradScale.apply(self.step, g), self.lo, self.hi)

    def forward(self, x):
        return self.codes(x) * self.step
