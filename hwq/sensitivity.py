"""How much a trained network suffers when one layer's weights or activations get fewer bits.

Two measures, each per weight layer and candidate bitwidth, for the weights and for the layer's output
activations (the next layer's input codes), on a calibration split of the training set (never the test set):

- ``loss``: the measured increase of the cross-entropy when that layer alone is quantized to the candidate
  (the rest of the network float), against the float network.
- ``hessian``: HAWQ-V2/V3's second-order estimate, ``tr(H) / n * ||Q(x) - x||^2``: the average Hessian trace
  of the loss with respect to the layer's weights (or its output activations), estimated with Hutchinson's
  method (``E[v^T H v]`` over Rademacher vectors ``v``, Hessian-vector products by double backpropagation),
  times the squared quantization perturbation.

The quantizers here are the same for every training method (so the measure ranks bitwidths, not
methods): weights symmetric uniform with the MSE-optimal step (1 bit: ``sign(w) * mean|w|``); activations,
which follow a ReLU, unsigned uniform with the MSE-optimal step on the calibration activations.
"""

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .config import SENSITIVITY_METHODS

__all__ = ["SENSITIVITY_METHODS", "Sensitivity", "calibration_split", "layer_sensitivity", "quantize_acts",
           "quantize_weights", "weight_codes"]

CALIBRATION_SAMPLES = 512
HUTCHINSON_SAMPLES = 16


@dataclass
class Sensitivity:
    """``weights[layer][bits]`` and ``acts[layer][bits]`` (the layer's output codes; not for the logits layer),
    the cost of that choice in the chosen measure (lower is better, 0 at most for the float network)."""

    method: str
    weights: dict
    acts: dict
    baseline_loss: float
    samples: int

    def to_json(self):
        return {"method": self.method, "samples": self.samples, "baseline_loss": self.baseline_loss,
                "weights": {k: {str(b): v for b, v in d.items()} for k, d in self.weights.items()},
                "acts": {k: {str(b): v for b, v in d.items()} for k, d in self.acts.items()}}


def calibration_split(data, n=CALIBRATION_SAMPLES, seed=0):
    """``n`` training samples (fixed by ``seed``): the calibration split, disjoint from the test set."""
    rng = np.random.default_rng(seed)
    idx = rng.permutation(len(data.x_train))[:n]
    return torch.from_numpy(data.x_train[idx]), torch.from_numpy(data.y_train[idx])


def _mse_step(x, lo, hi, grid=64):
    """The step s minimising ``||clamp(round(x / s), lo, hi) * s - x||^2`` over a grid of clipping ranges."""
    top = float(x.abs().max()) if lo < 0 else float(x.max())
    if top <= 0:
        return 1.0
    best, best_err = None, None
    for frac in np.linspace(0.1, 1.0, grid):
        s = frac * top / max(hi, 1)
        err = float(((torch.clamp(torch.round(x / s), lo, hi) * s - x) ** 2).sum())
        if best_err is None or err < best_err:
            best, best_err = s, err
    return best


@torch.no_grad()
def weight_codes(w, bits):
    """(integer codes, step) of :func:`quantize_weights`: codes in ``-2**(bits-1) .. 2**(bits-1) - 1`` (1 bit:
    -1 or +1)."""
    if bits == 1:
        return torch.where(w >= 0, 1.0, -1.0), float(w.abs().mean())
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    s = _mse_step(w, lo, hi)
    return torch.clamp(torch.round(w / s), lo, hi), s


@torch.no_grad()
def quantize_weights(w, bits):
    """Symmetric uniform quantization of a weight tensor at ``bits`` (1 bit: ``sign(w) * mean|w|``), with
    the step that minimises the squared error."""
    codes, step = weight_codes(w, bits)
    return codes * step


@torch.no_grad()
def quantize_acts(a, bits, step=None):
    """Unsigned uniform quantization of (post-ReLU) activations at ``bits``; ``step`` defaults to the
    MSE-optimal one for ``a``."""
    hi = (1 << bits) - 1
    s = step if step is not None else _mse_step(a, 0, hi)
    return torch.clamp(torch.round(a / s), 0, hi) * s


def _float_model(model):
    model.quantized = False
    model.eval()
    return model


def _hidden(model):
    """The weight layers whose outputs are quantized activations (all but the logits layer)."""
    return [m for m in model.qlayers if m.out_q is not None]


def _loss(model, x, y, hooks=()):
    handles = [layer.register_forward_hook(fn) for layer, fn in hooks]
    try:
        with torch.no_grad():
            return float(F.cross_entropy(model(x), y))
    finally:
        for h in handles:
            h.remove()


def _replace_output(fn):
    """A forward hook that replaces a node's output value (nodes return (value, scale))."""
    def hook(_module, _args, output):
        value, scale = output
        return fn(value), scale
    return hook


def _loss_sensitivity(model, x, y, candidates):
    base = _loss(model, x, y)
    weights, acts = {}, {}
    for layer in model.qlayers:
        original = layer.weight.data.clone()
        weights[layer.name] = {}
        for b in candidates:
            layer.weight.data.copy_(quantize_weights(original, b))
            weights[layer.name][b] = _loss(model, x, y) - base
        layer.weight.data.copy_(original)
    for layer in _hidden(model):
        acts[layer.name] = {b: _loss(model, x, y, [(layer, _replace_output(lambda a, b=b: quantize_acts(a, b)))]) - base
                            for b in candidates}
    return base, weights, acts


def _hutchinson(loss_fn, tensors, samples, generator):
    """Per tensor, ``E[v^T H v] / n`` (the average Hessian diagonal) over Rademacher ``v``."""
    traces = [0.0] * len(tensors)
    for _ in range(samples):
        loss, leaves = loss_fn()
        grads = torch.autograd.grad(loss, leaves, create_graph=True)
        vs = [torch.randint(0, 2, g.shape, generator=generator).to(g.dtype) * 2 - 1 for g in grads]
        hv = torch.autograd.grad(grads, leaves, grad_outputs=vs)
        for i, (v, h) in enumerate(zip(vs, hv, strict=True)):
            traces[i] += float((v * h).sum()) / samples / v.numel()
    return traces


def _hessian_sensitivity(model, x, y, candidates, samples, seed):
    gen = torch.Generator().manual_seed(seed)
    layers, hidden = model.qlayers, _hidden(model)
    base = _loss(model, x, y)

    def weight_loss():
        return F.cross_entropy(model(x), y), [m.weight for m in layers]

    w_trace = _hutchinson(weight_loss, layers, samples, gen)
    captured = {}

    def act_loss():  # the hidden layers' outputs as the tensors to differentiate by
        handles = []
        for layer in hidden:
            def hook(_module, _args, output, layer=layer):
                value, scale = output
                captured[layer.name] = value
                return value, scale
            handles.append(layer.register_forward_hook(hook))
        try:
            loss = F.cross_entropy(model(x), y)
        finally:
            for h in handles:
                h.remove()
        return loss, [captured[layer.name] for layer in hidden]

    a_trace = _hutchinson(act_loss, hidden, samples, gen) if hidden else []
    weights = {m.name: {b: w_trace[i] * float(((quantize_weights(m.weight.data, b) - m.weight.data) ** 2).sum())
                        for b in candidates} for i, m in enumerate(layers)}
    acts = {}
    for i, layer in enumerate(hidden):  # (the activations the last Hessian-vector product captured)
        a = captured[layer.name].detach()
        # the loss is a mean over the batch: the Hessian of one sample's loss by its own activations is len(a)
        # times that of the mean; times that sample's perturbation, averaged over the samples
        acts[layer.name] = {b: a_trace[i] * float(((quantize_acts(a, b) - a) ** 2).sum()) for b in candidates}
    return base, weights, acts


def layer_sensitivity(model, data, candidates, method="loss", *, samples=CALIBRATION_SAMPLES, seed=0):
    """The :class:`Sensitivity` of a trained :class:`hwq.models.QuantNet` (its float path) for every weight
    layer and candidate bitwidth, on ``samples`` calibration samples of ``data``'s training set."""
    if method not in SENSITIVITY_METHODS:
        raise ValueError(f"sensitivity must be one of {SENSITIVITY_METHODS}, not {method!r}")
    model = _float_model(model)
    x, y = calibration_split(data, samples, seed)
    candidates = sorted(set(candidates))
    if method == "loss":
        base, weights, acts = _loss_sensitivity(model, x, y, candidates)
    else:
        base, weights, acts = _hessian_sensitivity(model, x, y, candidates, HUTCHINSON_SAMPLES, seed)
    return Sensitivity(method, weights, acts, base, len(y))
