"""Export a trained run to the integer IR.

For each weight layer: integer weights (the weight quantizer's codes), the proven accumulator width,
and either per-channel integer thresholds (every layer that feeds another) or an integer bias (the
logits layer). Residual adds get thresholds on the integer sum; max-pool and flatten carry no numbers.

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
from .intrange import act_levels, code_range, range_bits, signed_width
from .ir import IR, Layer, conv_out_side, save_ir
from .models import Add, Flatten, MaxPool, QLayer
from .train import load_run

__all__ = ["derive_thresholds", "export_model", "export_run"]


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
        reached = fn(mid) >= levels
        b = torch.where(reached, mid, b)
        a = torch.where(reached, a, mid + 1)
    return a


def _thresholds(requant, out_q, acc_lo, acc_hi, signs):
    """Thresholds (and signs) of a per-channel requantization ``requant(acc (O, K)) -> codes``."""
    lo_code, step, n = act_levels(out_q.bits, out_q.signed)
    acc_lo, acc_hi = torch.as_tensor(acc_lo), torch.as_tensor(acc_hi)
    sgn = signs[:, None]

    def index(t):  # t = sign * acc; level index of requant(acc), non-decreasing in t
        return torch.div(requant(t * sgn) - lo_code, step, rounding_mode="floor")

    t_lo = torch.where(signs > 0, acc_lo, -acc_hi)
    t_hi = torch.where(signs > 0, acc_hi, -acc_lo)
    return derive_thresholds(index, t_lo, t_hi, n - 1)


@torch.no_grad()
def export_model(model, *, dataset="digits", method="lsq"):
    """Build the IR of a trained :class:`~hwq.models.QuantNet` (quantized, eval mode)."""
    cfg = model.config
    model.eval()
    layers, tensors = [], {}
    # Per produced value: (name, shape, bits, signed, scale).
    cur = ("input", list(cfg.in_shape), cfg.input_bits, False, model.input_scale)
    outputs = []
    for node in model.nodes:
        name, shape, bits, signed, scale = cur
        common = dict(name=node.name, in_shape=shape, a_bits=bits, a_signed=signed,
                      inputs=None if name == (layers[-1].name if layers else "input") else [name])
        if isinstance(node, QLayer):
            w, w_scale = node.wq.integer(node.weight)
            a_lo, a_hi = code_range(bits, signed)
            acc_lo, acc_hi = (torch.from_numpy(r) for r in accumulator_range(w.reshape(len(w), -1).numpy(), a_lo, a_hi))
            acc_bits = range_bits(acc_lo.min(), acc_hi.max())
            if node.kind == "conv2d":
                side = [conv_out_side(s, node.kernel, node.stride, node.padding) for s in shape[1:]]
                out_shape = [w.shape[0], *side]
                geo = dict(kernel=node.kernel, stride=node.stride, padding=node.padding)
            else:
                out_shape, geo = [w.shape[0]], {}
            tensors[f"{node.name}.weight"] = w.numpy().astype("int8" if node.wq.grid == "int" else "int16")
            ws = w_scale.tolist() if w_scale.dim() else float(w_scale)
            layer = Layer(**common, op=node.kind, out_shape=out_shape, w_bits=node.wq.bits, w_grid=node.wq.grid,
                          acc_bits=acc_bits, weights=f"{node.name}.weight", w_scale=ws, out_bits=0,
                          out_signed=True, **geo)
            if node.out_q is None:
                bias = node.bias_codes(scale).to(torch.int64)
                tensors[f"{node.name}.bias"] = bias.numpy()
                layer.out_bits = signed_width(int((acc_lo + bias).min()), int((acc_hi + bias).max()))
                layer.requant_kind, layer.bias = "bias", f"{node.name}.bias"
                layer.out_scale = float(node.acc_scale(scale).max())
                out_scale = None
            else:
                signs = node.direction(scale)
                thr = _thresholds(lambda acc, n=node, s=scale: n.requant(acc, s, cdim=0), node.out_q,
                                  acc_lo, acc_hi, signs)
                _set_thresholds(layer, tensors, node, thr, signs)
                out_scale = node.out_q.scale
        elif isinstance(node, Add):
            skip = outputs[node.skip]
            lo0, hi0 = code_range(bits, signed)
            lo1, hi1 = code_range(skip[2], skip[3])
            c = shape[0]
            acc_lo, acc_hi = torch.full((c,), lo0 + lo1), torch.full((c,), hi0 + hi1)
            layer = Layer(**{**common, "inputs": [name, skip[0]]}, op="add", out_shape=list(shape), out_bits=0,
                          out_signed=True, acc_bits=range_bits(lo0 + lo1, hi0 + hi1))
            thr = _thresholds(lambda t, n=node, s=scale: n.requant(t, s), node.out_q, acc_lo, acc_hi,
                              torch.ones(c, dtype=torch.int64))
            _set_thresholds(layer, tensors, node, thr, None)
            out_scale = node.out_q.scale
        elif isinstance(node, MaxPool):
            side = [conv_out_side(s, node.kernel, node.kernel, 0) for s in shape[1:]]
            layer = Layer(**common, op="maxpool", out_shape=[shape[0], *side], out_bits=bits, out_signed=signed,
                          kernel=node.kernel, stride=node.kernel)
            out_scale = scale
        elif isinstance(node, Flatten):
            layer = Layer(**common, op="flatten", out_shape=[math.prod(shape)], out_bits=bits, out_signed=signed)
            out_scale = scale
        else:  # pragma: no cover - the zoo has no other nodes
            raise TypeError(f"cannot export node {node!r}")
        layers.append(layer)
        cur = (layer.name, list(layer.out_shape), layer.out_bits, layer.out_signed, out_scale)
        outputs.append(cur)
    return IR(model=cfg.model, dataset=dataset, method=method, input_shape=list(cfg.in_shape),
              input_bits=cfg.input_bits, input_signed=False, input_scale=float(cfg.input_scale),
              layers=layers, tensors=tensors)


def _set_thresholds(layer, tensors, node, thr, signs):
    tensors[f"{node.name}.thresholds"] = thr.numpy()
    layer.requant_kind, layer.thresholds = "thresholds", f"{node.name}.thresholds"
    layer.out_bits, layer.out_signed = node.out_q.bits, node.out_q.signed
    layer.out_scale = float(node.out_q.scale)
    if signs is not None and bool((signs < 0).any()):
        tensors[f"{node.name}.signs"] = signs.numpy().astype("int8")
        layer.signs = f"{node.name}.signs"


def export_run(run_dir, out_dir):
    """Export a run directory to an IR directory; return the IR."""
    model, ckpt = load_run(run_dir)
    train_cfg = ckpt.get("train", {})
    ir = export_model(model, dataset=train_cfg.get("dataset", "digits"), method=train_cfg.get("method", "lsq"))
    save_ir(ir, out_dir)
    return ir
