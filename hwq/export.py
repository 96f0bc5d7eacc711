"""Export a trained run to the integer IR.

For each layer: integer weights (the weight quantizer's codes), the proven accumulator width, and
either per-channel integer thresholds (hidden layers) or an integer bias (the logits layer).

Thresholds: with ``f(acc) = requantize_float(acc, bias, acc_scale, out_step, out_bits)`` the float
model's requantization, ``T[o, k]`` is the smallest integer ``acc`` with ``f(acc) >= k``, found by
bisection over the proven accumulator range. ``f`` is monotonic, so ``#{k : acc >= T[o, k]} == f(acc)``
for every ``acc`` in range: the thresholds are exact, including rounding ties.
"""

import torch

from .golden import accumulator_range
from .intrange import max_int, signed_width
from .ir import IR, Layer, save_ir
from .quant import requantize_float
from .train import load_run

__all__ = ["derive_thresholds", "export_model", "export_run"]


@torch.no_grad()
def derive_thresholds(fn, lo, hi, n_levels):
    """Smallest ``acc`` in [lo, hi+1] with ``fn(acc)[o, k-1] >= k``, for each output o and level k.

    ``fn`` maps an int64 tensor of shape (O, n_levels) to codes of the same shape, row o using output
    o's parameters, and must be non-decreasing in ``acc``. ``hi + 1`` means the level is never reached.
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


@torch.no_grad()
def export_model(model, *, dataset="digits", method="lsq"):
    """Build the IR of a trained QuantMLP (quantized mode)."""
    cfg = model.config
    steps = model.in_steps()
    layers, tensors = [], {}
    last = len(model.layers) - 1
    for i, qlayer in enumerate(model.layers):
        name = f"fc{i + 1}"
        w = qlayer.integer_weight()
        bias = qlayer.integer_bias(steps[i])
        a_bits = cfg.a_bits[i]
        acc_lo, acc_hi = (torch.from_numpy(r) for r in accumulator_range(w.numpy(), 0, max_int(a_bits, False)))
        acc_bits = signed_width(min(int(acc_lo.min()), 0), max(int(acc_hi.max()), 0))
        acc_scale = qlayer.acc_scale(steps[i])
        tensors[f"{name}.weight"] = w.numpy().astype("int8")
        common = dict(name=name, op="linear", in_features=w.shape[1], out_features=w.shape[0],
                      w_bits=cfg.w_bits[i], a_bits=a_bits, a_signed=False, acc_bits=acc_bits,
                      weights=f"{name}.weight", w_scale=float(qlayer.w_quant.step))
        if i < last:
            act = model.acts[i]
            n_levels = max_int(act.bits, False)
            fn = lambda acc, b=bias, s=acc_scale, a=act: requantize_float(acc, b[:, None], s, a.step, a.bits)  # noqa: E731
            thr = derive_thresholds(fn, acc_lo, acc_hi, n_levels)
            tensors[f"{name}.thresholds"] = thr.numpy()
            layers.append(Layer(**common, out_bits=act.bits, out_signed=False, requant_kind="thresholds",
                                thresholds=f"{name}.thresholds", out_scale=float(act.step)))
        else:
            out_bits = signed_width(int((acc_lo + bias).min()), int((acc_hi + bias).max()))
            tensors[f"{name}.bias"] = bias.numpy()
            layers.append(Layer(**common, out_bits=out_bits, out_signed=True, requant_kind="bias",
                                bias=f"{name}.bias", out_scale=float(acc_scale)))
    return IR(model="mlp", dataset=dataset, method=method, input_shape=[cfg.in_features],
              input_bits=cfg.input_bits, input_signed=False, input_scale=float(cfg.input_scale),
              layers=layers, tensors=tensors)


def export_run(run_dir, out_dir):
    """Export a run directory to an IR directory; return the IR."""
    model, ckpt = load_run(run_dir)
    train_cfg = ckpt.get("train", {})
    ir = export_model(model, dataset=train_cfg.get("dataset", "digits"), method=train_cfg.get("method", "lsq"))
    save_ir(ir, out_dir)
    return ir
