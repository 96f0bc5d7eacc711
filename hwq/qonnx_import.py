"""Import a QONNX model (Brevitas' ``export_qonnx``, qonnx's converters, hwq's own export) into the integer IR.

The graph is cleaned with qonnx's own transformations (those of :func:`qonnx.util.cleanup.cleanup_model`:
shapes inferred, constants folded except the quantizers; not its renaming, so that errors name the user's
nodes), then walked node by node. Every tensor
is one of:

- **codes**: integers of ``bits`` (signed or not) times one real ``scale``, the output of a ``Quant``,
  ``BipolarQuant`` or ``MultiThreshold`` (or of a max-pool or flatten of such codes): what hwq's
  buffers hold;
- an **accumulator** in progress: ``v = post(gain[o] * acc + offset[o])`` where ``acc`` is the exact
  integer sum of a ``Gemm``/``MatMul``/``Conv`` of codes by integer weights (or a residual ``Add`` of two
  code tensors at one scale, or the window sums of an average pool), ``gain`` and ``offset`` the real scales and biases per output channel
  (``BatchNormalization`` and constant ``Mul``/``Div``/``Add``/``Sub`` fold in) and ``post`` the
  monotonic ``Relu`` / ``Clip`` that follow;
- a **constant** (initializers, quantized weights and biases).

A ``Quant`` (or ``BipolarQuant``, ``MultiThreshold``) on an accumulator closes the layer: the output code
is a non-decreasing function of ``sign[o] * acc`` (``sign`` is the sign of the channel's gain), so hwq's
thresholds, found by bisection over the proven accumulator range (:func:`hwq.export.derive_thresholds`,
the same code as hwq's own export), reproduce it for every accumulator value; a multiply-shift is
fitted when the requantization policy asks for one. The graph's output must be an accumulator with no
``Relu``: the logits, ``gain * (acc + b)``; ``gain`` must be one positive number and ``b = offset / gain``
integers (a float bias has no integer equivalent: in Brevitas, quantize it with ``Int32Bias``).

Then the import checks itself: qonnx's executor runs the original model on the given (or generated)
inputs, and every logit must equal ``gain`` times hwq's golden integer logit (within float32 rounding:
under a quarter of one integer step, whereas a changed activation code moves a logit by a whole
weight). Anything else is an error naming the node, its op and what was expected; nothing is written.
"""

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from .errors import UserError
from .export import _set_requant
from .golden import accumulator_range
from .intrange import MAX_A_BITS, MAX_BITS, MAX_W_BITS, code_range, signed_width, weight_dtype
from .ir import IR, Layer, conv_out_side, range_bits

__all__ = ["SUPPORTED_OPS", "check_and_save", "check_import", "check_inputs", "import_qonnx", "load_qonnx",
           "lower_qonnx"]

SUPPORTED_OPS = ("Quant", "BipolarQuant", "MultiThreshold", "Gemm", "MatMul", "Conv", "BatchNormalization", "Relu",
                 "Clip", "Add", "Sub", "Mul", "Div", "MaxPool", "AveragePool", "GlobalAveragePool", "ReduceMean",
                 "Flatten", "Reshape", "Identity")
QUANT_OPS = ["Quant", "BipolarQuant", "QuantizeLinear", "DequantizeLinear"]  # kept by constant folding
TOLERANCE = 0.25  # |onnx logit / scale - golden logit| allowed (float32 rounding; a code change moves it >= 1)


@dataclass
class Codes:
    """Integer codes (``bits``, ``signed``) times ``scale``, produced by IR layer ``name`` ("input")."""

    name: str
    shape: list
    bits: int
    signed: bool
    scale: float


@dataclass
class Acc:
    """``post(gain * acc + offset)`` per output channel, ``acc`` the integer accumulator of ``layer``."""

    layer: Layer
    tensors: dict
    acc_lo: np.ndarray
    acc_hi: np.ndarray
    gain: np.ndarray
    offset: np.ndarray
    post: list = field(default_factory=list)  # ("relu",) or ("clip", lo, hi), in order


@dataclass
class Weights:
    """Integer weight codes (out first) and the real value of one code per output channel."""

    codes: np.ndarray
    step: np.ndarray
    bits: int
    grid: str
    value: np.ndarray  # the dequantized weights, as the graph computes them


class _Importer:
    def __init__(self, model, path, requant, dataset):
        self.model, self.path, self.requant, self.dataset = model, path, requant, dataset
        self.input = None  # the network input's codes, once its quantizer is seen
        self.values, self.layers, self.tensors, self.counts = {}, [], {}, {}

    # ---- helpers ------------------------------------------------------------------------------------
    def fail(self, node, expected):
        name = repr(node.name) if node.name else f"#{list(self.model.graph.node).index(node)} (unnamed)"
        raise UserError(f"{self.path}: node {name} ({node.op_type}): {expected}")

    def const(self, name):
        """The value of a constant input (an initializer, or quantized weights), else None."""
        if name in self.values and isinstance(self.values[name], Weights):
            return self.values[name].value
        if name in self.values and isinstance(self.values[name], np.ndarray):
            return self.values[name]
        init = self.model.get_initializer(name)
        return None if init is None else np.asarray(init, dtype=np.float64)

    def scalar(self, node, k, what):
        value = self.const(node.input[k]) if len(node.input) > k else None
        if value is None or value.size != 1:
            self.fail(node, f"{what} must be one constant number")
        return float(value.reshape(()))

    def attr(self, node, name, default=None):
        from onnx import helper

        for a in node.attribute:
            if a.name == name:
                v = helper.get_attribute_value(a)
                return v.decode() if isinstance(v, bytes) else v
        return default

    def new_name(self, kind):
        self.counts[kind] = self.counts.get(kind, 0) + 1
        return f"{kind}{self.counts[kind]}"

    def inputs_of(self, codes):
        return None if codes.name == (self.layers[-1].name if self.layers else "input") else [codes.name]

    def value_in(self, node, kind, k=0):
        """Input ``k`` of ``node``, which must be a :class:`Codes` or an :class:`Acc` (``kind``)."""
        value = self.values.get(node.input[k])
        if not isinstance(value, kind):
            what = ("quantized activations (the output of a Quant, BipolarQuant or MultiThreshold node)"
                    if kind is Codes else "the output of a Gemm, MatMul, Conv or residual Add")
            self.fail(node, f"input {node.input[k]!r} must be {what}, not {_kind(value)}")
        return value

    def codes_in(self, node, k=0):
        return self.value_in(node, Codes, k)

    def acc_in(self, node, k=0):
        return self.value_in(node, Acc, k)

    def channel_vector(self, node, value, channels, channel_axis, what):
        """A constant that is one number per channel (or one number) -> float64 (channels,)."""
        v = np.asarray(value, dtype=np.float64)
        if v.size == 1:
            return np.full(channels, float(v.reshape(())))
        axes = [i for i, d in enumerate(v.shape) if d != 1]
        if v.size == channels and (v.ndim == 1 or axes == [channel_axis]):
            return v.reshape(channels)
        self.fail(node, f"{what} must be one number or one per output channel (shape {v.shape} found)")

    # ---- quantizers -----------------------------------------------------------------------------------
    def quant_params(self, node):
        scale = self.const(node.input[1])
        if scale is None:
            self.fail(node, "the scale must be a constant")
        if node.op_type == "BipolarQuant":
            return dict(scale=scale, zeropt=0.0, bits=1, signed=True, narrow=False, mode="ROUND")
        zeropt = self.const(node.input[2])
        bits = self.scalar(node, 3, "the bit width")
        if zeropt is None:
            self.fail(node, "the zero point must be a constant")
        if bits == 1 and self.attr(node, "signed", 1):
            self.fail(node, "a 1-bit signed Quant gives the codes -1 and 0; hwq's 1-bit signed codes are -1 and +1 "
                            "(write it as a BipolarQuant)")
        if bits != int(bits) or not 1 <= bits <= 32:
            self.fail(node, f"the bit width must be an integer from 1 to 32, not {bits:g}")
        return dict(scale=scale, zeropt=zeropt, bits=int(bits), signed=bool(self.attr(node, "signed", 1)),
                    narrow=bool(self.attr(node, "narrow", 0)), mode=str(self.attr(node, "rounding_mode", "ROUND")))

    def quantize(self, v, q):
        """Integer codes of the real values ``v`` under quantizer ``q`` (qonnx's own functions)."""
        from qonnx.custom_op.general.quant import quant

        if q["op"] == "BipolarQuant":  # qonnx's binary_quant: +scale for v >= 0, else -scale
            return np.where(v >= 0, 1, -1).astype(np.int64)
        scale = np.asarray(q["scale"], dtype=np.float64)
        out = quant(v, scale, np.asarray(q["zeropt"], dtype=np.float64), np.asarray(float(q["bits"])), q["signed"],
                    q["narrow"], q["mode"])
        return np.rint(out / scale + q["zeropt"]).astype(np.int64)

    def on_quant(self, node):
        q = self.quant_params(node)
        q["op"] = node.op_type
        src = node.input[0]
        value = self.values.get(src)
        init = self.model.get_initializer(src)
        if init is not None or isinstance(value, np.ndarray):  # weights or a quantized bias
            self.values[node.output[0]] = self.weights(node, np.asarray(init if init is not None else value,
                                                                           dtype=np.float64), q)
            return
        if q["bits"] > MAX_A_BITS:
            self.fail(node, f"activations of 1 to {MAX_A_BITS} bits are imported, not {q['bits']}")
        if q["scale"].size != 1:
            self.fail(node, "activations need one scale for the whole tensor (per-channel activation scales have "
                            "no place in hwq's buffers)")
        if np.asarray(q["zeropt"]).reshape(-1)[0] != 0 or np.asarray(q["zeropt"]).size != 1:
            self.fail(node, "activations need zero point 0")
        if q["scale"].reshape(()) <= 0:
            self.fail(node, "the scale must be positive")
        scale = float(q["scale"].reshape(()))
        if isinstance(value, dict) and value.get("float"):  # the network input
            self.values[node.output[0]] = Codes("input", value["shape"], q["bits"], q["signed"], scale)
            self.input = self.values[node.output[0]]
        elif isinstance(value, Acc):
            self.close(node, value, q["bits"], q["signed"], scale, lambda v: self.quantize(v, q))
        elif isinstance(value, Codes):
            if (value.bits, value.signed, value.scale) != (q["bits"], q["signed"], scale):
                self.fail(node, f"re-quantizing codes ({value.bits}-bit at scale {value.scale:g}) to other codes "
                                f"({q['bits']}-bit at {scale:g}) is not supported")
            self.values[node.output[0]] = value
        else:
            self.fail(node, f"cannot quantize {_kind(value)}")

    def weights(self, node, w, q):
        if q["op"] == "BipolarQuant":
            codes, grid, per_code = self.quantize(w, q), "int", np.asarray(q["scale"], dtype=np.float64)
        else:
            zp = np.unique(np.asarray(q["zeropt"]))
            if not q["signed"]:
                self.fail(node, "weights must be signed")
            if zp.size != 1 or zp[0] not in (0.0, -0.5):
                self.fail(node, "weights need zero point 0 (or -0.5: odd codes, as hwq's own export writes them)")
            q_int = self.quantize(w, q)
            if zp[0] == 0:
                codes, grid, per_code = q_int, "int", np.asarray(q["scale"], dtype=np.float64)
            else:
                codes, grid, per_code = 2 * q_int + 1, "odd", np.asarray(q["scale"], dtype=np.float64) / 2
        value = codes * per_code
        return Weights(codes=codes, step=per_code, bits=q["bits"], grid=grid, value=value)

    def multithreshold(self, node):
        acc = self.acc_in(node)
        t = self.const(node.input[1])
        if t is None or t.ndim != 2:
            self.fail(node, "the thresholds must be a constant (channels, steps) matrix")
        if str(self.attr(node, "data_layout", "NCHW")) not in ("NCHW", "NC"):
            self.fail(node, "data_layout must be NCHW or NC")
        out_scale, out_bias = float(self.attr(node, "out_scale", 1.0)), float(self.attr(node, "out_bias", 0.0))
        steps = t.shape[1]
        bits = max(1, math.ceil(math.log2(steps + 1)))
        if bits > MAX_A_BITS:
            self.fail(node, f"{steps} thresholds per channel make codes of {bits} bits; at most {MAX_A_BITS} are imported")
        if out_scale <= 0:
            self.fail(node, "out_scale must be positive")
        lo = out_bias / out_scale
        if steps == 1 and lo == -0.5:  # {-a, +a}: bipolar codes at scale a
            signed, scale, bits, offset, step = True, out_scale / 2, 1, -1, 2
        elif lo in (0.0, -(2 ** (bits - 1))) and steps <= 2**bits - 1:
            signed, scale, offset, step = lo < 0, out_scale, int(lo), 1
        else:
            self.fail(node, f"out_bias / out_scale must be 0 (unsigned codes) or -2^(bits-1) (signed), not {lo:g}")
        thresholds = np.broadcast_to(t, (acc.layer.channels, steps)) if t.shape[0] == 1 else t
        if thresholds.shape[0] != acc.layer.channels:
            self.fail(node, f"{thresholds.shape[0]} threshold rows for {acc.layer.channels} channels")

        ordered = np.sort(thresholds, axis=1)  # a threshold table is sorted; the count does not depend on it

        def fn(v):  # v: (channels, K); per channel, the thresholds <= v (one sorted search, not K x steps)
            return offset + step * np.stack([np.searchsorted(row, x, side="right") for row, x in zip(ordered, v, strict=True)])

        self.close(node, acc, bits, signed, scale, fn)

    def close(self, node, acc, bits, signed, scale, fn):
        """Finish ``acc``'s layer with the requantization ``fn`` (real values -> integer codes)."""
        layer = acc.layer
        direction = acc.gain.copy()
        for op in acc.post:
            if op[0] == "affine":
                direction = direction * op[1]
        signs = torch.from_numpy(np.where(direction < 0, -1, 1).astype(np.int64))

        def requant(a):  # a: int64 tensor (channels, K) -> codes
            v = self.real(acc, a.numpy().astype(np.float64))
            return torch.from_numpy(np.asarray(fn(v), dtype=np.int64))

        shim = _Node(layer.name, _OutQ(bits, signed, scale))
        policy = self.requant if bits <= MAX_BITS else "multiply-shift"  # 2^bits - 1 thresholds are not built
        _set_requant(layer, acc.tensors, shim, requant, torch.from_numpy(acc.acc_lo), torch.from_numpy(acc.acc_hi),
                     signs, policy)
        if layer.requant_kind == "thresholds" and bits > MAX_BITS:
            self.fail(node, f"{bits}-bit codes need a multiply-shift requantization (above {MAX_BITS} bits "
                            "thresholds are not built), and no multiply-shift within 32-bit multipliers and 64-bit "
                            "products reproduces this one")
        self.layers.append(layer)
        self.tensors.update(acc.tensors)
        self.values[node.output[0]] = Codes(layer.name, list(layer.out_shape), bits, signed, scale)

    @staticmethod
    def real(acc, a):
        """The graph's real value for accumulator values ``a`` (channels, K), in float64."""
        v = acc.gain[:, None] * a + acc.offset[:, None]
        for op in acc.post:
            if op[0] == "relu":
                v = np.maximum(v, 0)
            elif op[0] == "clip":
                v = np.clip(v, op[1], op[2])
            else:
                v = op[1][:, None] * v + op[2][:, None]
        return v

    # ---- layers ---------------------------------------------------------------------------------------
    def weight_layer(self, node, x, w, bias, op, geo):
        codes = w.codes.astype(np.int64)
        out = codes.shape[0]
        step = self.channel_vector(node, w.step, out, 0, "the weight scale")
        a_lo, a_hi = code_range(x.bits, x.signed)
        acc_lo, acc_hi = accumulator_range(codes.reshape(out, -1), a_lo, a_hi)
        name = self.new_name("fc" if op == "linear" else "conv")
        if op == "conv2d":
            kh, ph = geo.get("kernel_h", geo["kernel"]), geo.get("padding_h", geo["padding"])
            out_shape = [out, conv_out_side(x.shape[1], kh, geo["stride"], ph),
                         conv_out_side(x.shape[2], geo["kernel"], geo["stride"], geo["padding"])]
        else:
            out_shape = [out]
        tensors = {f"{name}.weight": codes.astype(weight_dtype(w.bits, w.grid))}
        layer = Layer(name=name, op=op, in_shape=list(x.shape), out_shape=out_shape, a_bits=x.bits, a_signed=x.signed,
                      inputs=self.inputs_of(x), w_bits=w.bits, w_grid=w.grid, weights=f"{name}.weight",
                      acc_bits=range_bits(acc_lo.min(), acc_hi.max()), out_bits=0, out_signed=True,
                      w_scale=step.tolist() if len(set(step.tolist())) > 1 else float(step[0]), **geo)
        layer.xnor = layer.binary
        offset = np.zeros(out) if bias is None else self.channel_vector(node, bias, out, 1, "the bias")
        self.values[node.output[0]] = Acc(layer, tensors, acc_lo, acc_hi, x.scale * step, offset)

    def weights_in(self, node, k):
        w = self.values.get(node.input[k])
        if not isinstance(w, Weights):
            self.fail(node, f"the weights {node.input[k]!r} must be quantized (a Quant or BipolarQuant node on "
                            f"the weight tensor), not {_kind(w) if w is not None else 'float weights'}")
        if w.bits > MAX_W_BITS:
            self.fail(node, f"weights of 1 to {MAX_W_BITS} bits are supported (hwq's range), not {w.bits}")
        return w

    def on_gemm(self, node):
        x = self.codes_in(node)
        if len(x.shape) != 1:
            self.fail(node, f"the input must be a vector (flatten it first), not of shape {x.shape}")
        w = self.weights_in(node, 1)
        if self.attr(node, "transA", 0) or self.attr(node, "alpha", 1.0) != 1.0 or self.attr(node, "beta", 1.0) != 1.0:
            self.fail(node, "transA must be 0 and alpha, beta 1")
        if not self.attr(node, "transB", 0):
            w = _transposed(w)
        bias = self.const(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        self.weight_layer(node, x, w, bias, "linear", {})

    def on_matmul(self, node):
        x = self.codes_in(node)
        if len(x.shape) != 1:
            self.fail(node, f"the input must be a vector (flatten it first), not of shape {x.shape}")
        self.weight_layer(node, x, _transposed(self.weights_in(node, 1)), None, "linear", {})

    def on_conv(self, node):
        """2-D convolutions (square or rectangular kernels) and 1-D ones, which become 2-D over (C, 1, L)
        with a 1 x k kernel; a depthwise Conv whose weights are constant ones (hwq's export of ``avgpool``) is
        the window sum of an average pool."""
        x = self.codes_in(node)
        ones = self.const(node.input[1])
        if self.attr(node, "group", 1) != 1 and isinstance(ones, np.ndarray):
            if len(x.shape) != 3 or ones.shape[:2] != (x.shape[0], 1) or not (ones == 1).all() or len(node.input) > 2:
                self.fail(node, "a grouped Conv is supported as a window sum (an average pool): group = channels, "
                                "constant weights of 1 of shape (channels, 1, k, k), no bias")
            self.average_pool(node, self.pooled_codes(node, "average pool"), mean=False)
            return
        w = self.weights_in(node, 1)
        one_d = w.codes.ndim == 3
        if len(x.shape) != 3 or w.codes.ndim not in (3, 4) or (one_d and x.shape[1] != 1):
            self.fail(node, f"only 1-D and 2-D convolutions are supported (input of shape {x.shape})")
        dims = 1 if one_d else 2
        k = list(self.attr(node, "kernel_shape", w.codes.shape[2:]))
        strides = list(self.attr(node, "strides", [1] * dims))
        pads = list(self.attr(node, "pads", [0] * 2 * dims))
        if self.attr(node, "group", 1) != 1 or any(d != 1 for d in self.attr(node, "dilations", [1] * dims)):
            self.fail(node, "groups and dilations must be 1")
        if one_d:  # (O, C, k) -> (O, C, 1, k); the height is 1: no padding, any stride
            w = Weights(codes=w.codes[:, :, None, :], step=w.step, bits=w.bits, grid=w.grid, value=w.value[:, :, None])
            k, strides, pads = [1, k[0]], [strides[0]] * 2, [0, pads[0], 0, pads[1]]
        if strides[0] != strides[1] or pads[:2] != pads[2:]:
            self.fail(node, f"equal strides and the same padding before and after are supported (strides {strides}, "
                            f"pads {pads})")
        bias = self.const(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        geo = dict(kernel=int(k[1]), stride=int(strides[0]), padding=int(pads[1]))
        if (k[0], pads[0]) != (k[1], pads[1]):
            geo.update(kernel_h=int(k[0]), padding_h=int(pads[0]))
        self.weight_layer(node, x, w, bias, "conv2d", geo)

    def on_affine(self, node):
        """Mul/Div/Add/Sub by a constant, on an accumulator (or Add of two code tensors: a residual add)."""
        a, b = (self.values.get(n) for n in node.input[:2])
        if node.op_type == "Add" and isinstance(a, Codes) and isinstance(b, Codes):
            return self.residual(node, a, b)
        k = 0 if isinstance(a, Acc) else 1
        acc = self.acc_in(node, k)
        c = self.const(node.input[1 - k])
        if c is None:
            self.fail(node, "one input must be a constant (or both quantized activations, for a residual Add)")
        c = self.channel_vector(node, c, acc.layer.channels, 1, "the constant")
        one, op = np.ones_like(c), node.op_type
        if op == "Div" and (k == 1 or (c == 0).any()):
            self.fail(node, "only a division of the layer output by a non-zero constant is supported")
        if op == "Mul":
            g, h = c, 0 * c
        elif op == "Div":
            g, h = 1 / c, 0 * c
        elif op == "Add":
            g, h = one, c
        else:  # Sub: acc - c, or c - acc
            g, h = (one, -c) if k == 0 else (-one, c)
        self.values[node.output[0]] = self.affine(acc, g, h)

    @staticmethod
    def affine(acc, g, h):
        if acc.post:
            return Acc(**{**acc.__dict__, "post": [*acc.post, ("affine", g, h)]})
        return Acc(**{**acc.__dict__, "gain": acc.gain * g, "offset": acc.offset * g + h})

    def on_batchnorm(self, node):
        acc = self.acc_in(node)
        p = [self.const(n) for n in node.input[1:5]]
        if any(v is None for v in p):
            self.fail(node, "scale, bias, mean and variance must be constants")
        gamma, beta, mean, var = (self.channel_vector(node, v, acc.layer.channels, 0, "a parameter") for v in p)
        g = gamma / np.sqrt(var + float(self.attr(node, "epsilon", 1e-5)))
        self.values[node.output[0]] = self.affine(acc, g, beta - mean * g)

    def on_relu(self, node):
        value = self.values.get(node.input[0])
        if isinstance(value, Codes) and not value.signed:
            self.values[node.output[0]] = value  # unsigned codes: ReLU changes nothing
            return
        acc = self.acc_in(node)
        self.values[node.output[0]] = Acc(**{**acc.__dict__, "post": [*acc.post, ("relu",)]})

    def on_clip(self, node):
        acc = self.acc_in(node)
        lo = self.const(node.input[1]) if len(node.input) > 1 and node.input[1] else None
        hi = self.const(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        lo = -np.inf if lo is None else float(lo.reshape(()))
        hi = np.inf if hi is None else float(hi.reshape(()))
        self.values[node.output[0]] = Acc(**{**acc.__dict__, "post": [*acc.post, ("clip", lo, hi)]})

    def pooled_codes(self, node, what):
        """The codes a pool reads (a pool of a layer's output before its quantizer is an error)."""
        if isinstance(self.values.get(node.input[0]), Acc):
            self.fail(node, f"{what} before the activation quantizer: hwq pools codes (put the pool after the "
                            "Quant/QuantReLU; for a max-pool the result is the same, the quantizer being non-decreasing)")
        return self.codes_in(node)

    def on_maxpool(self, node):
        x = self.pooled_codes(node, "max-pool")
        k, s = list(self.attr(node, "kernel_shape", [])), list(self.attr(node, "strides", [1, 1]))
        pads = list(self.attr(node, "pads", [0, 0, 0, 0]))
        if len(x.shape) != 3 or len(k) != 2 or k[0] != k[1] or s != k or any(pads) or self.attr(node, "ceil_mode", 0):
            self.fail(node, f"square 2-D windows with stride = kernel and no padding are supported (kernel {k}, "
                            f"strides {s}, pads {pads})")
        name = self.new_name("pool")
        side = [conv_out_side(d, k[0], k[0], 0) for d in x.shape[1:]]
        self.layers.append(Layer(name=name, op="maxpool", in_shape=list(x.shape), out_shape=[x.shape[0], *side],
                                 inputs=self.inputs_of(x), a_bits=x.bits, a_signed=x.signed, out_bits=x.bits,
                                 out_signed=x.signed, kernel=int(k[0]), stride=int(k[0])))
        self.values[node.output[0]] = Codes(name, [x.shape[0], *side], x.bits, x.signed, x.scale)

    def on_averagepool(self, node):
        """``AveragePool``, ``GlobalAveragePool`` and ``ReduceMean`` over height and width (what Brevitas exports
        for ``AdaptiveAvgPool2d(1)``) of codes: the window's mean, i.e. its integer sum at the codes' scale over
        the window's size (hwq's ``avgpool`` requantizes the sum)."""
        self.average_pool(node, self.pooled_codes(node, "average pool"), mean=True)

    def average_pool(self, node, x, mean):
        """The window sums of ``x`` as an accumulator of an ``avgpool`` layer, at ``x.scale`` (``mean``: over the
        window's size)."""
        if len(x.shape) != 3:
            self.fail(node, f"the input must be a (channels, height, width) map, not of shape {x.shape}")
        if node.op_type == "ReduceMean":
            axes = self.attr(node, "axes", None)
            if axes is None and len(node.input) > 1:  # (opset 18: the axes are an input)
                axes = self.const(node.input[1])
            if axes is None or sorted(int(a) % 4 for a in np.ravel(axes)) != [2, 3] or not self.attr(node, "keepdims", 1):
                self.fail(node, "a ReduceMean over height and width (axes 2, 3) with keepdims=1 is supported "
                                "(a global average pool)")
        if node.op_type in ("GlobalAveragePool", "ReduceMean"):
            k, s, pads = [x.shape[1], x.shape[2]], [1, 1], [0] * 4
        else:
            k = list(self.attr(node, "kernel_shape", []))
            s, pads = list(self.attr(node, "strides", [1, 1])), list(self.attr(node, "pads", [0, 0, 0, 0]))
        if (len(k) != 2 or k[0] != k[1] or s[0] != s[1] or any(pads) or self.attr(node, "ceil_mode", 0)
                or any(d != 1 for d in self.attr(node, "dilations", [1, 1]))):
            self.fail(node, f"square windows, equal strides and no padding are supported (kernel {k}, strides {s}, "
                            f"pads {pads})")
        c, k2 = x.shape[0], k[0] * k[0]
        lo, hi = code_range(x.bits, x.signed)
        side = [conv_out_side(d, k[0], s[0], 0) for d in x.shape[1:]]
        if min(side) < 1:
            self.fail(node, f"a {k[0]}x{k[0]} window does not fit the {x.shape[1]}x{x.shape[2]} map")
        name = self.new_name("avgpool")
        layer = Layer(name=name, op="avgpool", in_shape=list(x.shape), out_shape=[c, *side], a_bits=x.bits,
                      a_signed=x.signed, inputs=self.inputs_of(x), out_bits=0, out_signed=True, kernel=int(k[0]),
                      stride=int(s[0]), acc_bits=range_bits(k2 * lo, k2 * hi))
        gain = x.scale / k2 if mean else x.scale
        self.values[node.output[0]] = Acc(layer, {}, np.full(c, k2 * lo), np.full(c, k2 * hi), np.full(c, gain),
                                          np.zeros(c))

    def on_flatten(self, node):
        x = self.codes_in(node)
        if node.op_type == "Reshape":
            target = self.const(node.input[1])
            n = math.prod(x.shape)
            if target is None or [int(d) for d in target.reshape(-1)[1:]] not in ([n], [-1]):
                self.fail(node, f"only a flatten to (batch, {n}) is supported")
        elif self.attr(node, "axis", 1) != 1:
            self.fail(node, "only Flatten with axis 1 is supported")
        if len(x.shape) == 1:
            self.values[node.output[0]] = x
            return
        name = self.new_name("flatten")
        self.layers.append(Layer(name=name, op="flatten", in_shape=list(x.shape), out_shape=[math.prod(x.shape)],
                                 inputs=self.inputs_of(x), a_bits=x.bits, a_signed=x.signed, out_bits=x.bits,
                                 out_signed=x.signed))
        self.values[node.output[0]] = Codes(name, [math.prod(x.shape)], x.bits, x.signed, x.scale)

    def residual(self, node, a, b):
        if not math.isclose(a.scale, b.scale, rel_tol=1e-6) or a.shape != b.shape:
            self.fail(node, f"a residual Add needs two inputs of one shape at one scale (found {a.shape} at "
                            f"{a.scale:g} and {b.shape} at {b.scale:g})")
        last = self.layers[-1].name if self.layers else "input"
        branch, skip = (a, b) if a.name == last else (b, a)
        (lo0, hi0), (lo1, hi1) = code_range(branch.bits, branch.signed), code_range(skip.bits, skip.signed)
        c = a.shape[0]
        name = self.new_name("add")
        layer = Layer(name=name, op="add", in_shape=list(a.shape), out_shape=list(a.shape), a_bits=branch.bits,
                      a_signed=branch.signed, inputs=[branch.name, skip.name], out_bits=0, out_signed=True,
                      acc_bits=range_bits(lo0 + lo1, hi0 + hi1))
        self.values[node.output[0]] = Acc(layer, {}, np.full(c, lo0 + lo1), np.full(c, hi0 + hi1),
                                          np.full(c, a.scale), np.zeros(c))

    def logits(self, acc):
        layer = acc.layer
        if acc.post:
            raise UserError(f"{self.path}: the graph's output passes through {acc.post[0][0]} after the last layer; "
                            f"hwq's last layer produces logits, an accumulator plus a bias")
        if layer.op in ("add", "avgpool"):
            raise UserError(f"{self.path}: the graph ends with {'a residual Add' if layer.op == 'add' else 'an average pool'}"
                            "; hwq's last layer is a Gemm, MatMul or Conv")
        gain = acc.gain
        if not (gain > 0).all() or not np.allclose(gain, gain[0], rtol=1e-6):
            raise UserError(f"{self.path}: the output layer's scale must be one positive number for every output "
                            f"(found {gain.min():g} to {gain.max():g}): use a per-tensor weight scale there")
        b = acc.offset / gain[0]
        if np.abs(b - np.rint(b)).max() > 1e-3:
            raise UserError(f"{self.path}: the output layer's bias is not a whole multiple of its accumulator scale "
                            f"{gain[0]:g}, so the logits are not integers (in Brevitas: bias_quant=Int32Bias on that "
                            f"layer, or no bias)")
        b = np.rint(b).astype(np.int64)
        acc.tensors[f"{layer.name}.bias"] = b
        layer.out_bits = signed_width(int((acc.acc_lo + b).min()), int((acc.acc_hi + b).max()))
        layer.requant_kind, layer.bias, layer.out_scale = "bias", f"{layer.name}.bias", float(gain[0])
        self.layers.append(layer)
        self.tensors.update(acc.tensors)

    # ---- the walk -------------------------------------------------------------------------------------
    def run(self):
        g = self.model.graph
        if len(g.input) != 1 or len(g.output) != 1:
            raise UserError(f"{self.path}: the graph must have one input and one output "
                            f"({len(g.input)} inputs, {len(g.output)} outputs)")
        shape = self.model.get_tensor_shape(g.input[0].name)
        if not shape or len(shape) not in (2, 3, 4):
            raise UserError(f"{self.path}: the input must be (batch, features), (batch, channels, length) or "
                            f"(batch, channels, height, width), not of shape {shape}")
        # a 1-D signal (C, L) is an image (C, 1, L) in the IR
        inner = [shape[1], 1, shape[2]] if len(shape) == 3 else list(shape[1:])
        self.values[g.input[0].name] = {"float": True, "shape": inner}
        handlers = {"Quant": self.on_quant, "BipolarQuant": self.on_quant, "MultiThreshold": self.multithreshold,
                    "Gemm": self.on_gemm, "MatMul": self.on_matmul, "Conv": self.on_conv, "Relu": self.on_relu,
                    "Clip": self.on_clip, "BatchNormalization": self.on_batchnorm, "MaxPool": self.on_maxpool,
                    "AveragePool": self.on_averagepool, "GlobalAveragePool": self.on_averagepool,
                    "ReduceMean": self.on_averagepool,
                    "Flatten": self.on_flatten, "Reshape": self.on_flatten, "Add": self.on_affine,
                    "Sub": self.on_affine, "Mul": self.on_affine, "Div": self.on_affine,
                    "Identity": lambda n: self.values.__setitem__(n.output[0], self.values.get(n.input[0]))}
        for node in g.node:
            if node.op_type not in handlers:
                self.fail(node, f"unsupported op; hwq imports {', '.join(SUPPORTED_OPS)}")
            if len(node.output) != 1:
                self.fail(node, "nodes with more than one output are not supported")
            handlers[node.op_type](node)
        if self.input is None:
            raise UserError(f"{self.path}: the graph's input is not quantized: it must go through a Quant or "
                            f"BipolarQuant node first (hwq's input is integer codes)")
        out = self.values.get(g.output[0].name)
        if not isinstance(out, Acc):
            raise UserError(f"{self.path}: the graph's output must be the logits of a last Gemm, MatMul or Conv "
                            f"layer, not {_kind(out)}")
        self.logits(out)
        x = self.input
        return IR(model="imported", dataset=self.dataset, method="qonnx", input_shape=list(x.shape),
                  input_bits=x.bits, input_signed=x.signed, input_scale=x.scale, layers=self.layers,
                  tensors=self.tensors)


@dataclass
class _OutQ:
    bits: int
    signed: bool
    scale: float


@dataclass
class _Node:
    name: str
    out_q: _OutQ


def _kind(value):
    return {Codes: "quantized activations", Acc: "an unquantized layer output", Weights: "weights",
            np.ndarray: "a constant", dict: "the unquantized input", type(None): "an unknown tensor"}.get(type(value),
                                                                                                     "this tensor")


def _transposed(w):
    """Weights stored (in, out) (MatMul, Gemm without transB) -> (out, in)."""
    return Weights(codes=w.codes.T, step=np.asarray(w.step).T, bits=w.bits, grid=w.grid, value=w.value.T)


def load_qonnx(path):
    """The model at ``path``, cleaned with qonnx's transformations (those of
    :func:`qonnx.util.cleanup.cleanup_model` but the renaming ones); a one-line error if it is not ONNX."""
    import onnx
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.transformation.fold_constants import FoldConstants
    from qonnx.transformation.general import (
        GiveUniqueParameterTensors,
        RemoveStaticGraphInputs,
        RemoveUnusedTensors,
    )
    from qonnx.transformation.infer_shapes import InferShapes
    from qonnx.transformation.quant_constant_folding import FoldTransposeIntoQuantInit

    try:
        model = ModelWrapper(onnx.load(str(path)))
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except Exception as e:
        raise UserError(f"{path}: not an ONNX model ({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None
    for node in model.graph.node:  # as cleanup_model: older Brevitas wrote its own domain for these
        if node.op_type in ("Quant", "Trunc", "BipolarQuant"):
            node.domain = "qonnx.custom_op.general"
    try:  # qonnx's cleanup_model without its renaming passes: errors name the user's nodes
        for step in (InferShapes(), GiveUniqueParameterTensors(), FoldConstants(exclude_op_types=QUANT_OPS),
                     FoldTransposeIntoQuantInit(), RemoveUnusedTensors(), RemoveStaticGraphInputs(), InferShapes()):
            model = model.transform(step)
        return model
    except Exception as e:
        raise UserError(f"{path}: qonnx could not clean the graph ({type(e).__name__}: "
                        f"{str(e).splitlines()[0][:200] if str(e) else ''})") from None


def check_import(model, ir, codes, path):
    """Run ``model`` in qonnx's executor on the input ``codes`` and compare with hwq's golden logits; return
    the check's summary. A mismatch is an error."""
    from qonnx.core.onnx_exec import execute_onnx
    from qonnx.transformation.change_batchsize import ChangeBatchSize
    from qonnx.transformation.infer_shapes import InferShapes

    from . import golden

    shape = model.get_tensor_shape(model.graph.input[0].name)[1:]  # the graph's own layout ((C, L) for 1-D)
    x = (np.asarray(codes, dtype=np.float64).reshape(len(codes), *shape) * ir.input_scale).astype(np.float32)
    batch = model.transform(ChangeBatchSize(len(x))).transform(InferShapes())
    name_in, name_out = batch.graph.input[0].name, batch.graph.output[0].name
    got = np.asarray(execute_onnx(batch, {name_in: x})[name_out], dtype=np.float64).reshape(len(x), -1)
    want = golden.run(ir, codes)
    scale = ir.layers[-1].out_scale
    err = np.abs(got / scale - want)
    if err.max() >= TOLERANCE:
        s, j = np.unravel_index(int(np.argmax(err)), err.shape)
        raise UserError(f"{path}: the model's arithmetic is not reproduced in integers: sample {s}, output {j}: qonnx "
                        f"gives {got[s, j]:.6g} = {got[s, j] / scale:.4f} x {scale:g}, hwq's integer model {want[s, j]} "
                        f"({int((err >= TOLERANCE).any(1).sum())} of {len(x)} samples differ; float32 rounding at a "
                        f"quantization boundary, or arithmetic with no integer equivalent)")
    return {"samples": len(x), "equal": True, "max_error_steps": float(err.max()), "logit_scale": scale}


def lower_qonnx(path, *, dataset="none", requant="auto"):
    """(IR, the cleaned qonnx model) of the QONNX file at ``path``: a one-line error for anything that
    hwq cannot represent exactly."""
    from .data import DATASETS, load_dataset
    from .ir import validate

    model = load_qonnx(path)
    ir = _Importer(model, path, requant, dataset).run()
    validate(ir, path)
    if dataset in DATASETS:
        x = load_dataset(dataset, input_bits=ir.input_bits).x_test
        if math.prod(x.shape[1:]) != ir.in_features:
            raise UserError(f"{path}: the model takes {ir.in_features} input features; the {dataset} dataset has "
                            f"{math.prod(x.shape[1:])}")
    return ir, model


def check_inputs(ir, samples=64, seed=0):
    """(input codes for the import check, what they are): the dataset's first test samples when the IR
    names one of hwq's datasets, else ``samples`` random codes of the input's range."""
    from .data import DATASETS, load_dataset

    if ir.dataset in DATASETS:
        return load_dataset(ir.dataset, input_bits=ir.input_bits).x_test[:samples], f"{ir.dataset} test split"
    lo, hi = code_range(ir.input_bits, ir.input_signed)
    codes = np.random.default_rng(seed).integers(lo, hi + 1, size=(samples, math.prod(ir.input_shape)))
    bipolar = (ir.input_bits, ir.input_signed) == (1, True)
    return (np.where(codes > 0, 1, -1) if bipolar else codes), "random codes"


def check_and_save(model, ir, codes, path, out=None, *, inputs, force=False):
    """The import check (:func:`check_import`) on ``codes`` with where it came from (``source``, its
    ``source_sha256``, ``inputs``: what the codes are); when ``out`` is given, the IR is written there with
    the check as ``import.json``. Returns the check."""
    from .fileio import file_digest, write_json
    from .ir import save_ir

    check = check_import(model, ir, np.asarray(codes, dtype=np.int64).reshape(len(codes), -1), path)
    check.update(source=str(path), source_sha256=file_digest(path), inputs=inputs)
    if out is not None:
        save_ir(ir, out, force=force, extra=lambda tmp: write_json(tmp / "import.json", check))
    return check


def import_qonnx(path, out=None, *, dataset="none", requant="auto", inputs=None, samples=64, seed=0, force=False):
    """(IR, check) of the QONNX model at ``path``: ``inputs`` (codes), or else :func:`check_inputs`, run
    through qonnx's executor and hwq's golden model, must agree (:func:`check_and_save`, which writes the
    IR to ``out`` when given)."""
    ir, model = lower_qonnx(path, dataset=dataset, requant=requant)
    codes, what = check_inputs(ir, samples, seed) if inputs is None else (inputs, "given input codes")
    return ir, check_and_save(model, ir, codes, path, out, inputs=what, force=force)
