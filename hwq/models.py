"""The model zoo (MLP, CNN, ResNet) as one quantized network class with three paths.

A :class:`QuantNet` is a list of nodes (quantized conv/linear layers, max-pool, flatten, residual add).
Each node reads the previous node's output, or, for an add, two outputs. It runs in one of three ways:

- float (``model.quantized = False``): conv/linear -> batch-norm -> ReLU, the pretraining network;
- fake-quant (``quantized = True``): weights through their quantizer, bias quantized at the
  accumulator's scale, outputs through activation quantizers; trained with the STE;
- integer (:meth:`QuantNet.integer_forward`): integer codes end to end. Each layer's accumulator is
  exact (int64, or float64 convolution of integers, exact below 2^53), then :meth:`QLayer.requant`
  maps it to the next codes with the float32 operations the fake-quant model uses in eval mode.
  :mod:`hwq.export` turns ``requant`` into integer thresholds; :mod:`hwq.golden` must equal this path.

Batch-norm is kept during QAT (batch statistics in training, running statistics in eval) and folded
at export into the integer thresholds.
"""

import math
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .config import MODELS, NET_MODELS
from .intrange import act_levels, check_bits
from .ir import conv_out_side
from .quant import (
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
    per_channel,
    round_ste,
)

__all__ = ["MODELS", "NetConfig", "QLayer", "QuantNet", "build_model", "layer_names", "pair"]

BIAS_LIMIT = 2.0**31 - 1
RESIDUAL_EXTRA_BITS = 2  # the residual branch is requantized to (skip bits + 2) signed bits

WEIGHT_QUANT = {
    "lsq": lambda bits, pc, n: LSQWeight(bits),
    "uniq": lambda bits, pc, n: UniQWeight(bits),
    "dorefa": lambda bits, pc, n: DoReFaWeight(bits),
    "xnor": lambda bits, pc, n: XNORWeight(bits, per_channel=pc),
    "fixed": lambda bits, pc, n: FixedStepWeight(bits, torch.ones(n) if pc else torch.tensor(1.0)),
}
ACT_QUANT = {"lsq": LSQAct, "uniq": UniQAct, "pact": PACTAct, "dorefa": DoReFaAct, "sign": SignAct,
             "sparse": SparseAct, "fixed": FixedStepAct}


def pair(value):
    """(height, width) of a kernel or padding given as one number or a pair."""
    return (value, value) if isinstance(value, int) else tuple(value)


def layer_names(model, n_hidden=2):
    """Names of the weight layers of a model, input to output."""
    if model == "mlp":
        return [f"fc{i + 1}" for i in range(n_hidden + 1)]
    if model == "cnn":
        return ["conv1", "conv2", "fc"]
    if model == "resnet":
        return ["conv1", "res1a", "res1b", "conv2", "fc"]
    if model == "cnn1d":
        return ["conv1", "conv2", "conv3", "fc"]
    raise ValueError(f"unknown model {model!r}")


@dataclass
class NetConfig:
    """Everything needed to rebuild a model from a checkpoint.

    ``w_bits[i]``/``a_bits[i]``: weight bits of weight layer i and bits of its input activations
    (``a_bits[0]`` is the dataset's input bits). ``wq[i]``: weight quantizer name; ``aq[i]`` the
    quantizer producing layer i's input (``aq[0]`` unused); ``per_channel[i]``: per-output-channel
    weight scales.
    """

    model: str = "mlp"
    in_shape: list = field(default_factory=lambda: [64])
    n_classes: int = 10
    input_bits: int = 4
    input_scale: float = 1.0 / 15
    input_signed: bool = False  # two's complement input codes
    hidden: list = field(default_factory=lambda: [32, 16])  # mlp widths
    channels: list = field(default_factory=lambda: [16, 32])  # cnn/resnet widths
    w_bits: list = field(default_factory=lambda: [2, 2, 2])
    a_bits: list = field(default_factory=lambda: [4, 2, 2])
    wq: list = field(default_factory=lambda: ["lsq"] * 3)
    aq: list = field(default_factory=lambda: ["lsq"] * 3)
    per_channel: list = field(default_factory=lambda: [False] * 3)
    bn: bool = True  # batch-norm after hidden conv layers (False once folded into the weights)
    spec: list | None = None  # model "custom": the layers a builder recorded (hwq.custom), as plain data

    def __post_init__(self):
        if self.model == "custom" and not self.spec:
            raise ValueError("a custom model needs its recorded layers (spec)")
        if self.model not in NET_MODELS:
            raise ValueError(f"unknown model {self.model!r}; known models: {', '.join(MODELS)}")
        n = len(self.names)
        for name in ("w_bits", "a_bits", "wq", "aq", "per_channel"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"need {n} values of {name} for {self.model}, got {getattr(self, name)}")
        for b in (*self.w_bits, *self.a_bits):
            check_bits(b)
        if self.a_bits[0] != self.input_bits:
            raise ValueError(f"a_bits[0] ({self.a_bits[0]}) must equal input_bits ({self.input_bits})")

    @property
    def names(self):
        if self.model == "custom":
            from .custom import spec_names

            return spec_names(self.spec)
        return layer_names(self.model, len(self.hidden))

    def to_dict(self):
        return asdict(self)


class QLayer(nn.Module):
    """A conv2d or linear layer: quantized weight, bias at the accumulator's scale, optional batch-norm,
    and the quantizer of its output (``None`` for the logits layer).

    ``out(acc) = out_q(bn((acc + b_int) * s_w * s_in))`` with ``b_int = round(bias / (s_w * s_in))``.
    Unsigned output quantizers clamp at code 0, which is the ReLU; sign and aligned (residual
    branch) quantizers see the signed value.
    """

    def __init__(self, name, kind, n_in, n_out, wq, out_q, *, kernel=3, stride=1, padding=1, bn=True):
        super().__init__()
        self.name, self.kind = name, kind
        # kernel and padding: one number, or (height, width) / (rows, columns): (1, k) and (0, p) for 1-D signals
        self.kernel, self.stride, self.padding = kernel, stride, padding
        if kind == "conv2d":
            self.weight = nn.Parameter(torch.empty(n_out, n_in, *pair(kernel)))
        else:
            self.weight = nn.Parameter(torch.empty(n_out, n_in))
        self.bias = nn.Parameter(torch.zeros(n_out))
        bound = 1 / math.sqrt(self.weight[0].numel())
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        nn.init.uniform_(self.bias, -bound, bound)
        self.bn = nn.BatchNorm2d(n_out) if (bn and kind == "conv2d") else (nn.BatchNorm1d(n_out) if bn else None)
        self.wq = wq
        self.out_q = out_q
        self.relu_in_float = not isinstance(out_q, AlignedQuant)
        # Weight values used while some neurons stay float (neuron-by-neuron QAT): see freeze_mask.
        self.register_buffer("freeze_mask", torch.zeros(n_out, dtype=torch.bool))
        self.partial = False
        self.float_weight = False

    # --- pieces -------------------------------------------------------------------------------
    def _op(self, x, w, b=None):
        if self.kind == "conv2d":
            return F.conv2d(x, w, b, stride=self.stride, padding=self.padding)
        return F.linear(x, w, b)

    def quant_weight(self):
        """The weight the fake-quant model multiplies by (partly float during neuron-by-neuron QAT)."""
        wq = self.wq(self.weight)
        if not self.partial:
            return wq
        mask = per_channel(self.freeze_mask, self.weight.dim(), 0)
        return torch.where(mask, wq, self.weight)

    def acc_scale(self, in_scale):
        _, w_scale = self.wq.quantize(self.weight)
        return w_scale * in_scale

    def _int_bias(self, acc_scale):
        return round_ste(torch.clamp(self.bias / acc_scale, -BIAS_LIMIT, BIAS_LIMIT))

    def bias_codes(self, in_scale):
        return self._int_bias(self.acc_scale(in_scale))

    def bn_affine(self):
        """(multiplier, offset) of eval-mode batch-norm, float32 per channel."""
        bn = self.bn
        m = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        return m, bn.bias - bn.running_mean * m

    def bn_eval(self, z, cdim=1):
        """Eval-mode batch-norm as ``z * m + a`` per channel (dimension ``cdim``); the one formula the
        fake-quant eval path, the integer path and TSQ's targets share."""
        m, a = self.bn_affine()
        return z * per_channel(m, z.dim(), cdim) + per_channel(a, z.dim(), cdim)

    # --- paths --------------------------------------------------------------------------------
    def forward(self, x, in_scale, quantized):
        """Float: (activation values, None). Quantized: ``x`` holds input codes at ``in_scale``; returns
        (output codes, their scale), or (logits, None) for the last layer.

        The quantized path multiplies codes by codes (exact in float32 below 2^24) and scales the sum
        once, ``z = (conv(x, W_codes) + b_int) * s_w * s_in``: in eval mode the same float32 operations as
        :meth:`requant`, so fake-quant and integer predictions agree; the gradients are the STE's.
        """
        if not quantized:
            z = self._op(x, self.weight, self.bias)
            if self.bn is not None:
                z = self.bn(z)
            return (F.relu(z) if self.relu_in_float else z) if self.out_q is not None else z, None
        if self.float_weight:  # TSQ step 1 and SINAREQ's regularised phase: float weights, quantized acts
            z = self._op(x * in_scale, self.weight, self.bias)
        elif self.partial and not bool(self.freeze_mask.all()):
            # Neuron-by-neuron: float neurons keep a float bias; quantized neurons the integer bias.
            s = self.acc_scale(in_scale)
            b = torch.where(self.freeze_mask, self.bias_codes(in_scale) * s, self.bias)
            z = self._op(x * in_scale, self.quant_weight(), b)
        else:
            w_codes, w_scale = self.wq.quantize(self.weight)
            acc_scale = w_scale * in_scale
            b = self._int_bias(acc_scale)
            acc = self._op(x, w_codes)
            z = (acc + per_channel(b, acc.dim())) * per_channel(acc_scale, acc.dim())
        if self.bn is not None:
            z = self.bn(z) if self.training else self.bn_eval(z)
        if self.out_q is None:
            return z, None
        return self.out_q.quant(z)

    @torch.no_grad()
    def fold_bn(self):
        """Fold eval-mode batch-norm into the float weight and bias and drop it (NbN, TSQ)."""
        if self.bn is None:
            return
        m, a = self.bn_affine()
        self.weight.mul_(per_channel(m, self.weight.dim(), 0))
        self.bias.copy_(self.bias * m + a)
        self.bn = None

    @torch.no_grad()
    def integer_weight(self):
        return self.wq.integer(self.weight)[0]

    @torch.no_grad()
    def accumulate(self, x):
        """Exact integer accumulator (int64) of integer input codes ``x``."""
        w = self.integer_weight()
        if self.kind == "conv2d":
            return torch.round(self._op(x.to(torch.float64), w.to(torch.float64))).to(torch.int64)
        return x.to(torch.int64) @ w.T

    @torch.no_grad()
    def pre_activation(self, acc, in_scale, cdim=1):
        """The float32 value the output quantizer sees for integer accumulators ``acc``."""
        s = self.acc_scale(in_scale)
        b = self._int_bias(s).to(torch.int64)
        s = s.to(torch.float32)
        z = (acc + per_channel(b, acc.dim(), cdim)).to(torch.float32) * per_channel(s, acc.dim(), cdim)
        return self.bn_eval(z, cdim) if self.bn is not None else z

    @torch.no_grad()
    def requant(self, acc, in_scale, cdim=1):
        """Next integer codes from accumulators (the logits layer: ``acc + b_int``)."""
        if self.out_q is None:
            return acc + per_channel(self.bias_codes(in_scale).to(torch.int64), acc.dim(), cdim)
        return self.out_q.codes(self.pre_activation(acc, in_scale, cdim)).to(torch.int64)

    def direction(self, in_scale):
        """Per output channel, +1 if ``requant`` is non-decreasing in the accumulator, -1 if not."""
        s = torch.as_tensor(self.acc_scale(in_scale)).detach().expand(self.weight.shape[0])
        m = self.bn_affine()[0] if self.bn is not None else torch.ones_like(s)
        return torch.where(m * s >= 0, 1, -1).to(torch.int64)


class MaxPool(nn.Module):
    kind = "maxpool"

    def __init__(self, name, kernel=2):
        super().__init__()
        self.name, self.kernel = name, kernel

    def forward(self, x, in_scale, quantized):
        return F.max_pool2d(x, self.kernel), in_scale


class Flatten(nn.Module):
    kind = "flatten"

    def __init__(self, name):
        super().__init__()
        self.name = name

    def forward(self, x, in_scale, quantized):
        return torch.flatten(x, 1), in_scale


class Add(nn.Module):
    """Residual add of a scale-aligned branch and its skip input, then ReLU and the output quantizer.

    Integer form: ``out = out_q(relu((branch_code + skip_code) * s_skip))``.
    """

    kind = "add"

    def __init__(self, name, skip, out_q):
        super().__init__()
        self.name, self.skip, self.out_q = name, skip, out_q

    def forward(self, x, in_scale, quantized, skip):
        """Float: relu(x + skip). Quantized: codes of the branch and the skip at one scale."""
        if not quantized:
            return F.relu(x + skip), None
        return self.out_q.quant((x + skip) * in_scale)

    @torch.no_grad()
    def requant(self, total, in_scale):
        return self.out_q.codes(total.to(torch.float32) * torch.as_tensor(in_scale, dtype=torch.float32)).to(
            torch.int64)


def _multiply_shift(acc, out_q, mult, offset, shift):
    """``lo + step * clamp((acc * M + B) >> S, 0, n-1)`` per channel (dimension 1), in torch int64."""
    lo, step, n = act_levels(out_q.bits, out_q.signed)
    m, b = (per_channel(torch.as_tensor(v, dtype=torch.int64), acc.dim()) for v in (mult, offset))
    return lo + step * torch.clamp(torch.bitwise_right_shift(acc * m + b, shift), 0, n - 1)


def _wq(cfg, i, last, n_out):
    return WEIGHT_QUANT[cfg.wq[i]](cfg.w_bits[i], cfg.per_channel[i] and not last, n_out)


def _aq(cfg, i):
    return ACT_QUANT[cfg.aq[i]](cfg.a_bits[i])


class QuantNet(nn.Module):
    """A network of :class:`QLayer`, :class:`MaxPool`, :class:`Flatten` and :class:`Add` nodes."""

    def __init__(self, config: NetConfig):
        super().__init__()
        self.config = cfg = config
        names = cfg.names
        n = len(names)
        nodes = []

        def qlayer(i, kind, n_in, n_out, out_q=None, bn=True, **kw):
            last = i == n - 1
            if out_q is None and not last:
                out_q = _aq(cfg, i + 1)
            return QLayer(names[i], kind, n_in, n_out, _wq(cfg, i, last, n_out), out_q,
                          bn=bn and cfg.bn and not last, **kw)

        if cfg.model == "mlp":
            sizes = [cfg.in_shape[0], *cfg.hidden, cfg.n_classes]
            nodes = [qlayer(i, "linear", sizes[i], sizes[i + 1], bn=False) for i in range(n)]
        elif cfg.model == "cnn":
            c_in, (c1, c2) = cfg.in_shape[0], cfg.channels
            side = cfg.in_shape[1] // 4
            nodes = [qlayer(0, "conv2d", c_in, c1), MaxPool("pool1"), qlayer(1, "conv2d", c1, c2),
                     MaxPool("pool2"), Flatten("flatten"), qlayer(2, "linear", c2 * side * side, cfg.n_classes)]
        elif cfg.model == "custom":  # recorded by a builder (hwq.custom); the last layer gives the logits
            nodes, i = [], 0
            for la in cfg.spec:
                if la["op"] == "conv2d":
                    nodes.append(qlayer(i, "conv2d", la["in"], la["out"], kernel=tuple(la["kernel"]),
                                        stride=la["stride"], padding=tuple(la["padding"])))
                elif la["op"] == "linear":
                    nodes.append(qlayer(i, "linear", la["in"], la["out"]))
                elif la["op"] == "maxpool":
                    nodes.append(MaxPool(la["name"], la["kernel"]))
                else:
                    nodes.append(Flatten(la["name"]))
                i += la["op"] in ("conv2d", "linear")
        elif cfg.model == "cnn1d":  # MNIST-1D's CNN: three strided 1-D convolutions over (C, 1, L), then linear
            c_in, (c1, c2), length = cfg.in_shape[0], cfg.channels, cfg.in_shape[-1]
            nodes = []
            for i, (n_in, n_out, k) in enumerate(((c_in, c1, 5), (c1, c2, 3), (c2, c2, 3))):
                nodes.append(qlayer(i, "conv2d", n_in, n_out, kernel=(1, k), stride=2, padding=(0, 1)))
                length = conv_out_side(length, k, 2, 1)
            nodes += [Flatten("flatten"), qlayer(3, "linear", c2 * length, cfg.n_classes)]
        else:  # resnet
            c_in, (c1, c2) = cfg.in_shape[0], cfg.channels
            side = cfg.in_shape[1] // 4
            stem = qlayer(0, "conv2d", c_in, c1)
            branch_end = qlayer(2, "conv2d", c1, c1,
                                out_q=AlignedQuant(min(cfg.a_bits[1] + RESIDUAL_EXTRA_BITS, 8), stem.out_q))
            add = Add("add1", skip=0, out_q=_aq(cfg, 3))
            nodes = [stem, qlayer(1, "conv2d", c1, c1), branch_end, add, MaxPool("pool1"),
                     qlayer(3, "conv2d", c1, c2), MaxPool("pool2"), Flatten("flatten"),
                     qlayer(4, "linear", c2 * side * side, cfg.n_classes)]
        self.nodes = nn.ModuleList(nodes)
        self.register_buffer("input_scale", torch.tensor(cfg.input_scale, dtype=torch.float32))
        self.quantized = False

    # --- structure ----------------------------------------------------------------------------
    @property
    def qlayers(self):
        return [m for m in self.nodes if isinstance(m, QLayer)]

    def act_quantizers(self):
        """Every activation quantizer with the node it follows (calibrated from float activations)."""
        return [(m, m.out_q) for m in self.nodes if getattr(m, "out_q", None) is not None]

    def input_codes(self, codes):
        return torch.as_tensor(codes).reshape(-1, *self.config.in_shape)

    # --- paths --------------------------------------------------------------------------------
    def forward(self, codes, *, collect=False):
        """Logits (fake-quant or float); ``collect`` also returns each node's (input, output) values."""
        x = self.input_codes(codes).to(torch.float32)
        s = self.input_scale
        if not self.quantized:
            x, s = x * s, None
        outs, seen = [], []
        for node in self.nodes:
            x_in, s_in = x, s
            if isinstance(node, Add):
                x, s = node(x, s, self.quantized, outs[node.skip])
            else:
                x, s = node(x, s, self.quantized)
            outs.append(x)
            if collect:
                seen.append((x_in * s_in if s_in is not None else x_in, x * s if s is not None else x))
        return (x, seen) if collect else x

    @torch.no_grad()
    def integer_forward(self, codes, *, all_nodes=False, multiply_shift=None):
        """Integer logits (int64) from input codes, computed as the hardware does.

        ``multiply_shift``: {node name: (mult, offset, shift)} for nodes exported with a multiply-shift
        requantization (:func:`hwq.export.multiply_shift_params`); they apply it, in torch integers,
        instead of the float requantization their thresholds reproduce.
        """
        x = self.input_codes(codes).to(torch.int64)
        s = self.input_scale
        outs = []
        ms = multiply_shift or {}
        for node in self.nodes:
            if isinstance(node, QLayer):
                acc = node.accumulate(x)
                x = _multiply_shift(acc, node.out_q, *ms[node.name]) if node.name in ms else node.requant(acc, s)
                s = node.out_q.scale if node.out_q is not None else None
            elif isinstance(node, Add):
                total = x + outs[node.skip][0]
                x = _multiply_shift(total, node.out_q, *ms[node.name]) if node.name in ms else node.requant(total, s)
                s = node.out_q.scale
            elif isinstance(node, MaxPool):
                x = F.max_pool2d(x.to(torch.float64), node.kernel).to(torch.int64)
            else:
                x = torch.flatten(x, 1)
            outs.append((x, s))
        return [o[0] for o in outs] if all_nodes else x

    @torch.no_grad()
    def calibrate(self, codes, batch_size=256):
        """Initialise every quantizer from the float model's weights and activations (in batches)."""
        was = self.quantized
        self.quantized = False
        self.eval()
        for layer in self.qlayers:
            layer.wq.init(layer.weight)
        for start in range(0, len(codes), batch_size):
            _, seen = self.forward(codes[start:start + batch_size], collect=True)
            for node, (_, out) in zip(self.nodes, seen, strict=True):
                q = getattr(node, "out_q", None)
                if q is not None and not isinstance(q, AlignedQuant):
                    q.init(out)
        for _, q in self.act_quantizers():
            q.init_done()
        self.quantized = was


def build_model(config_dict):
    """Rebuild a model from the ``config`` stored in a checkpoint."""
    fields = dict(config_dict)
    if fields.get("model") not in NET_MODELS:
        raise ValueError(f"unknown model {fields.get('model')!r}")
    return QuantNet(NetConfig(**fields))
