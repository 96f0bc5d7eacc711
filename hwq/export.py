"""Export a trained run to the integer IR.

For each weight layer: integer weights (the weight quantizer's codes), the proven accumulator width,
and either a per-channel requantization (every layer that feeds another: thresholds, or a
multiply-shift fitted to them, :mod:`hwq.requant`) or an integer bias (the logits layer). Residual
adds requantize the integer sum the same way; max-pool and flatten carry no numbers. Binary layers
(1-bit weights, bipolar inputs) are marked ``xnor``.

Thresholds: with ``f(acc)`` the float model's requantization (:meth:`hwq.models.QLayer.requant`:
bias, accumulator scale, folded batch-norm, ReLU and the output quantizer), ``T[o, k]`` is the smallest
integer ``acc`` with ``index(f(acc)) >= k``, found by bisection over the proven accumulator range.
``f`` is monotonic in ``acc``, so the thresholds reproduce it exactly, ties included. A channel whose
batch-norm multiplier is negative makes ``f`` non-increasing; it is exported with sign -1, and the
thresholds compare ``-acc`` (``requant.signs``).
"""

import math

import torch

from .golden import accumulator_range
from .intrange import act_levels, code_range, is_bipolar, range_bits, signed_width, weight_dtype
from .ir import IR, Layer, conv_out_side, save_ir
from .models import Add, Flatten, MaxPool, QLayer, pair
from .requant import MULTIPLY_SHIFT_MIN_BITS, REQUANT_POLICIES, fit_multiply_shift, signed_range
from .train import load_run

__all__ = ["derive_thresholds", "export_add", "export_model", "export_qlayer", "export_run", "multiply_shift_params"]


@torch.no_grad()
def derive_thresholds(fn, lo, hi, n_levels):
    """Smallest ``acc`` in [lo, hi+1] with ``fn(acc)[o, k-1] >= k``, for each output o and level k.

    ``fn`` maps an int64 tensor of shape (O, n_levels) to level indices of the same shape, row o using
    output o's parameters, and must be non-decreasing in ``acc``. ``hi + 1`` means never reached.
    """
    lo = torch.as_tensor(lo, dtype=torch.int64)
    hi = torch.as_tensor(hi, dtype=torch.int64)
    levels = torch.arange(1, n_levels + 1, dtype=torch.int64)
    a = lo[:, None].expand(-1, n_levels).clone()
    b = (hi + 1)[:, None].expand(-1, n_levels).clone()
    while bool((a < b).any()):
        mid = torch.div(a + b, 2, rounding_mode="floor")
        open_ = a < b  # settled entries stay put (a == b == hi + 1 is "never reached")
        reached = fn(mid) >= levels
        b = torch.where(open_ & reached, mid, b)
        a = torch.where(open_ & ~reached, mid + 1, a)
    return a


def _thresholds(requant, out_q, acc_lo, acc_hi, signs):
    """Thresholds (and signs) of a per-channel requantization ``requant(acc (O, K)) -> codes``."""
    lo_code, step, n = act_levels(out_q.bits, out_q.signed)
    sgn = signs[:, None]

    def index(t):  # t = sign * acc; level index of requant(acc), non-decreasing in t
        return torch.div(requant(t * sgn) - lo_code, step, rounding_mode="floor")

    return derive_thresholds(index, *signed_range(signs, acc_lo, acc_hi), n - 1)


def _choose(policy, name, out_bits, out_signed):
    """The requantization kind a layer gets: ``policy`` is a name in REQUANT_POLICIES or a mapping from
    layer name to "thresholds"/"multiply_shift" (re-exporting an IR's own choices)."""
    if isinstance(policy, dict):
        return policy.get(name, "thresholds")
    if policy not in REQUANT_POLICIES:
        raise ValueError(f"unknown requantization policy {policy!r}; known: {', '.join(REQUANT_POLICIES)}")
    if policy == "thresholds" or is_bipolar(out_bits, out_signed) or (policy == "auto" and out_bits < MULTIPLY_SHIFT_MIN_BITS):
        return "thresholds"
    return "multiply_shift"


def _set_requant(layer, tensors, node, requant, acc_lo, acc_hi, signs, policy):
    """Thresholds of ``requant`` (the model's function of the accumulator), encoded as the policy says."""
    out_q = node.out_q
    thr = _thresholds(requant, out_q, acc_lo, acc_hi, signs)
    layer.out_bits, layer.out_signed = out_q.bits, out_q.signed
    layer.out_scale = float(torch.as_tensor(out_q.scale).detach())
    if _choose(policy, node.name, out_q.bits, out_q.signed) == "multiply_shift":
        fit = fit_multiply_shift(thr.numpy(), signs.numpy(), *signed_range(signs, acc_lo, acc_hi))
        if fit is not None:
            mult, offset, layer.shift, layer.deviations = fit
            tensors[f"{node.name}.mult"], tensors[f"{node.name}.offset"] = mult, offset
            layer.requant_kind, layer.mult, layer.offset = "multiply_shift", f"{node.name}.mult", f"{node.name}.offset"
            return
    tensors[f"{node.name}.thresholds"] = thr.numpy()
    layer.requant_kind, layer.thresholds = "thresholds", f"{node.name}.thresholds"
    if bool((signs < 0).any()):
        tensors[f"{node.name}.signs"] = signs.numpy().astype("int8")
        layer.signs = f"{node.name}.signs"


def export_qlayer(node, in_shape, bits, signed, scale, *, requant="auto", inputs=None):
    """The IR layer of one :class:`~hwq.models.QLayer` whose input codes are ``bits``-bit (``signed``)
    at ``scale``: (layer, its tensors, the scale of its output codes or None for logits)."""
    tensors = {}
    w, w_scale = node.wq.integer(node.weight)
    a_lo, a_hi = code_range(bits, signed)
    acc_lo, acc_hi = (torch.from_numpy(r) for r in accumulator_range(w.reshape(len(w), -1).numpy(), a_lo, a_hi))
    if node.kind == "conv2d":
        (kh, kw), (ph, pw) = pair(node.kernel), pair(node.padding)
        out_shape = [w.shape[0], conv_out_side(in_shape[1], kh, node.stride, ph),
                     conv_out_side(in_shape[2], kw, node.stride, pw)]
        geo = dict(kernel=kw, stride=node.stride, padding=pw)
        if (kh, ph) != (kw, pw):  # rectangular (a 1-D convolution: kernel_h 1, padding_h 0)
            geo.update(kernel_h=kh, padding_h=ph)
    else:
        out_shape, geo = [w.shape[0]], {}
    tensors[f"{node.name}.weight"] = w.numpy().astype(weight_dtype(node.wq.bits, node.wq.grid))
    layer = Layer(name=node.name, op=node.kind, in_shape=list(in_shape), out_shape=out_shape, a_bits=bits,
                  a_signed=signed, inputs=inputs, w_bits=node.wq.bits, w_grid=node.wq.grid,
                  acc_bits=range_bits(acc_lo.min(), acc_hi.max()), weights=f"{node.name}.weight",
                  w_scale=w_scale.tolist() if w_scale.dim() else float(w_scale), out_bits=0, out_signed=True, **geo)
    layer.xnor = layer.binary
    if node.out_q is None:
        if bool((node.acc_scale(scale) <= 0).any()):  # integer argmax equals the model's only for scale > 0
            raise ValueError(f"layer {node.name!r}: logits scale is not positive")
        bias = node.bias_codes(scale).to(torch.int64)
        tensors[f"{node.name}.bias"] = bias.numpy()
        layer.out_bits = signed_width(int((acc_lo + bias).min()), int((acc_hi + bias).max()))
        layer.requant_kind, layer.bias = "bias", f"{node.name}.bias"
        layer.out_scale = float(node.acc_scale(scale).detach().max())
        return layer, tensors, None
    _set_requant(layer, tensors, node, lambda acc: node.requant(acc, scale, cdim=0), acc_lo, acc_hi,
                 node.direction(scale), requant)
    return layer, tensors, node.out_q.scale


def export_add(node, shape, inputs, scale, *, requant="auto"):
    """The IR layer of a residual :class:`~hwq.models.Add` of ``inputs`` = ((name, bits, signed) x 2)."""
    tensors = {}
    (n0, b0, g0), (n1, b1, g1) = inputs
    (lo0, hi0), (lo1, hi1) = code_range(b0, g0), code_range(b1, g1)
    c = shape[0]
    layer = Layer(name=node.name, op="add", in_shape=list(shape), out_shape=list(shape), a_bits=b0, a_signed=g0,
                  inputs=[n0, n1], out_bits=0, out_signed=True, acc_bits=range_bits(lo0 + lo1, hi0 + hi1))
    _set_requant(layer, tensors, node, lambda t: node.requant(t, scale), torch.full((c,), lo0 + lo1),
                 torch.full((c,), hi0 + hi1), torch.ones(c, dtype=torch.int64), requant)
    return layer, tensors, node.out_q.scale


@torch.no_grad()
def export_model(model, *, dataset="digits", method="lsq", requant="auto"):
    """Build the IR of a trained :class:`~hwq.models.QuantNet` (quantized, eval mode).

    ``requant``: "auto" (thresholds up to 4-bit outputs, multiply-shift above), "thresholds",
    "multiply-shift" (every layer that can; bipolar outputs keep thresholds), or a mapping from layer
    name to kind.
    """
    cfg = model.config
    model.eval()
    layers, tensors = [], {}
    # Per produced value: (name, shape, bits, signed, scale).
    cur = ("input", list(cfg.in_shape), cfg.input_bits, cfg.input_signed, model.input_scale)
    outputs = []
    for node in model.nodes:
        name, shape, bits, signed, scale = cur
        inputs = None if name == (layers[-1].name if layers else "input") else [name]
        if isinstance(node, QLayer):
            layer, new, out_scale = export_qlayer(node, shape, bits, signed, scale, requant=requant, inputs=inputs)
        elif isinstance(node, Add):
            skip = outputs[node.skip]
            layer, new, out_scale = export_add(node, shape, [(name, bits, signed), (skip[0], skip[2], skip[3])],
                                               scale, requant=requant)
        elif isinstance(node, MaxPool):
            side = [conv_out_side(s, node.kernel, node.kernel, 0) for s in shape[1:]]
            layer = Layer(name=node.name, op="maxpool", in_shape=shape, inputs=inputs, a_bits=bits, a_signed=signed,
                          out_shape=[shape[0], *side], out_bits=bits, out_signed=signed, kernel=node.kernel,
                          stride=node.kernel)
            new, out_scale = {}, scale
        elif isinstance(node, Flatten):
            layer = Layer(name=node.name, op="flatten", in_shape=shape, inputs=inputs, a_bits=bits, a_signed=signed,
                          out_shape=[math.prod(shape)], out_bits=bits, out_signed=signed)
            new, out_scale = {}, scale
        else:  # pragma: no cover - the zoo has no other nodes
            raise TypeError(f"cannot export node {node!r}")
        layers.append(layer)
        tensors.update(new)
        cur = (layer.name, list(layer.out_shape), layer.out_bits, layer.out_signed, out_scale)
        outputs.append(cur)
    return IR(model=cfg.model, dataset=dataset, method=method, input_shape=list(cfg.in_shape),
              input_bits=cfg.input_bits, input_signed=cfg.input_signed, input_scale=float(cfg.input_scale),
              layers=layers, tensors=tensors)


def multiply_shift_params(ir):
    """{layer name: (mult, offset, shift)} of the IR's multiply-shift layers, for the PyTorch integer path."""
    return {la.name: (ir.tensors[la.mult], ir.tensors[la.offset], la.shift)
            for la in ir.layers if la.requant_kind == "multiply_shift"}


def export_run(run_dir, out_dir, *, requant="auto", qonnx=False, force=False):
    """Export a run directory to an IR directory (with ``model.onnx`` in QONNX form if ``qonnx``);
    return the IR."""
    model, ckpt = load_run(run_dir)
    train_cfg = ckpt.get("train", {})
    ir = export_model(model, dataset=train_cfg.get("dataset", "digits"), method=train_cfg.get("method", "lsq"),
                      requant=requant)
    extra = None
    if qonnx:
        from .qonnx_export import to_qonnx, write_qonnx

        to_qonnx(ir)  # refuse before anything is written

        def extra(tmp):
            write_qonnx(ir, tmp / "model.onnx")
    save_ir(ir, out_dir, extra=extra, force=force)
    return ir
