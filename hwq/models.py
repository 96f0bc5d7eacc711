"""Quantized models with a fake-quant float path (for training) and an integer path (for checking export).

The integer path (:meth:`QuantMLP.integer_forward`) computes with int64 tensors: integer weights and
biases, integer accumulation, and the float requantization of :func:`hwq.quant.requantize_float`.
The golden model (:mod:`hwq.golden`) computes the same network from the exported IR with numpy and
integer thresholds; the two must agree exactly.
"""

from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .quant import ActQuantizer, WeightQuantizer, quantize_codes, requantize_float

__all__ = ["MLPConfig", "QuantLinear", "QuantMLP", "build_model"]


@dataclass
class MLPConfig:
    """Everything needed to rebuild a model from a checkpoint."""

    in_features: int = 64
    hidden: list = field(default_factory=lambda: [32, 16])
    n_classes: int = 10
    input_bits: int = 4
    input_scale: float = 1.0 / 15
    w_bits: list = field(default_factory=lambda: [2, 2, 2])  # per layer
    a_bits: list = field(default_factory=lambda: [4, 2, 2])  # per layer input; [0] is input_bits

    def __post_init__(self):
        n = len(self.hidden) + 1
        if len(self.w_bits) != n or len(self.a_bits) != n:
            raise ValueError(f"need {n} w_bits and a_bits, got {self.w_bits} and {self.a_bits}")
        if self.a_bits[0] != self.input_bits:
            raise ValueError(f"a_bits[0] ({self.a_bits[0]}) must equal input_bits ({self.input_bits})")

    def to_dict(self):
        return {"model": "mlp", **asdict(self)}


class QuantLinear(nn.Module):
    """Linear layer with a quantized weight and a bias quantized to the accumulator's scale.

    With input step ``s_in`` and weight step ``s_w`` the output is ``s_w * s_in * (acc + b_int)`` where
    ``acc`` is the integer dot product and ``b_int = round(bias / (s_w * s_in))``.
    """

    def __init__(self, in_features, out_features, w_bits):
        super().__init__()
        self.linear = nn.Linear(in_features, out_features)
        self.w_quant = WeightQuantizer(w_bits)

    def acc_scale(self, in_step):
        return self.w_quant.step * in_step

    def bias_codes(self, in_step):
        return quantize_codes(self.linear.bias, self.acc_scale(in_step), -(2.0**31), 2.0**31 - 1)

    def forward(self, x, in_step=None, quantized=False):
        if not quantized:
            return self.linear(x)
        return F.linear(x, self.w_quant(self.linear.weight), self.bias_codes(in_step) * self.acc_scale(in_step))

    @torch.no_grad()
    def integer_weight(self):
        return self.w_quant.integer(self.linear.weight)

    @torch.no_grad()
    def integer_bias(self, in_step):
        return self.bias_codes(in_step).to(torch.int64)


class QuantMLP(nn.Module):
    """An MLP whose hidden activations are unsigned ``a_bits`` codes and whose inputs are integer codes."""

    def __init__(self, config: MLPConfig):
        super().__init__()
        self.config = config
        sizes = [config.in_features, *config.hidden, config.n_classes]
        self.layers = nn.ModuleList(
            QuantLinear(sizes[i], sizes[i + 1], config.w_bits[i]) for i in range(len(sizes) - 1)
        )
        self.acts = nn.ModuleList(ActQuantizer(b) for b in config.a_bits[1:])
        self.register_buffer("input_scale", torch.tensor(config.input_scale, dtype=torch.float32))
        self.quantized = False

    def in_steps(self):
        """The step of each layer's input: the input scale, then each activation quantizer's step."""
        return [self.input_scale, *(a.step for a in self.acts)]

    def forward(self, codes):
        x = codes.to(torch.float32) * self.input_scale
        steps = self.in_steps()
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            y = layer(x, steps[i], quantized=self.quantized)
            if i == last:
                return y
            x = self.acts[i](y) if self.quantized else F.relu(y)
        raise AssertionError("unreachable")

    @torch.no_grad()
    def hidden_activations(self, codes):
        """Post-ReLU float activations of each hidden layer (to initialise the activation steps)."""
        x = codes.to(torch.float32) * self.input_scale
        out = []
        for layer in self.layers[:-1]:
            x = F.relu(layer(x))
            out.append(x)
        return out

    @torch.no_grad()
    def integer_forward(self, codes):
        """Logits (int64) from input codes (int64), computed with integers as the hardware does."""
        x = torch.as_tensor(codes, dtype=torch.int64)
        steps = self.in_steps()
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            acc = x @ layer.integer_weight().T
            bias = layer.integer_bias(steps[i])
            if i == last:
                return acc + bias
            x = requantize_float(acc, bias, layer.acc_scale(steps[i]), self.acts[i].step, self.acts[i].bits)
            x = x.to(torch.int64)
        raise AssertionError("unreachable")


def build_model(config_dict):
    """Rebuild a model from the ``config`` stored in a checkpoint."""
    kind = config_dict.get("model")
    if kind != "mlp":
        raise ValueError(f"unknown model {kind!r}")
    fields = {k: v for k, v in config_dict.items() if k != "model"}
    return QuantMLP(MLPConfig(**fields))
