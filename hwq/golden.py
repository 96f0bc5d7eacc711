"""The golden model: the IR executed with numpy integers only. It defines hwq's integer semantics.

Activations are int64 arrays, (N, n) for vectors and (N, C, H, W) for feature maps. Per op:

- ``linear``: ``acc = x @ W.T``; ``conv2d``: ``acc[n, o, i, j] = sum_{c, u, v} W[o, c, u, v] *
  xpad[n, c, i*stride + u, j*stride + v]`` with ``xpad`` the input zero-padded by ``padding``;
- ``add``: ``acc = x0 + x1`` (the two inputs are at the same scale);
- binary layers (``xnor``: 1-bit weights, bipolar inputs) are computed the XNOR-popcount way: codes
  become bits (+1 -> 1, -1 -> 0) and ``acc = 2 * popcount(xnor(x_bits, w_bits)) - n_valid`` over the
  taps inside the image (``n_valid`` = the fan-in, less the taps that fall on zero padding);
- ``requant.kind == "thresholds"``: ``y = lo + step * #{k : sign[o] * acc[o] >= T[o, k]}`` per channel
  o, where (lo, step) are the output's levels (:func:`hwq.intrange.act_levels`: unsigned codes
  0, 1, ...; signed two's complement; or bipolar -1, +1) and ``sign`` is +1 unless ``requant.signs``
  is given. Bias, batch-norm, ReLU and the activation step are all inside ``T``;
- ``requant.kind == "multiply_shift"``: ``y = lo + step * clamp(floor((acc * M[o] + B[o]) / 2**S), 0,
  n - 1)`` (:func:`hwq.requant.multiply_shift_apply`);
- ``requant.kind == "bias"`` (the logits layer): ``y = acc + b``;
- ``maxpool``: the maximum code of each kernel x kernel window (stride ``stride``);
- ``avgpool``: ``acc`` = the sum of the codes of each kernel x kernel window (stride ``stride``; global
  average pooling is the kernel of the whole map), requantized by thresholds like ``add`` (the division
  by the window's size is inside ``T``);
- ``flatten``: ``x.reshape(N, -1)`` (C, H, W order).

>>> import numpy as np
>>> thresholds_apply(np.array([[-3, 0, 5]]), np.array([[0, 4], [0, 4], [0, 4]]))
array([[0, 1, 2]])
"""

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from .intrange import act_levels
from .requant import multiply_shift_apply

__all__ = ["accumulator_range", "conv2d", "prediction_disagreements", "run", "run_layer", "run_layers",
           "thresholds_apply", "xnor_popcount"]


def thresholds_apply(acc, thresholds, signs=None, levels=(0, 1)):
    """Per channel (the last axis of ``acc``), count the thresholds reached and map counts to codes."""
    if signs is not None:
        acc = acc * signs
    count = (acc[..., None] >= thresholds).sum(axis=-1).astype(np.int64)
    lo, step = levels
    return lo + step * count


def accumulator_range(weights, a_lo, a_hi):
    """Proven per-output bounds (lo, hi) of ``x @ W.T`` for every input with codes in [a_lo, a_hi].

    Every partial sum of the dot product (any subset of its terms) also lies in [lo, hi], so an
    accumulator that holds this range never overflows, in whatever order the terms are added.
    Zero padding is a subset of the terms too, so the bound holds for convolutions.
    """
    w = np.asarray(weights, dtype=np.int64)
    t1, t2 = w * a_lo, w * a_hi
    return np.minimum(t1, t2).clip(max=0).sum(axis=1), np.maximum(t1, t2).clip(min=0).sum(axis=1)


def conv2d(x, w, stride, padding):
    """Integer 2-D convolution (cross-correlation, as PyTorch) of (N, C, H, W) by (O, C, kh, kw);
    ``padding``: zeros on each side, one number or (rows, columns). A 1-D convolution is the case H = kh = 1."""
    kh, kw = w.shape[-2:]
    ph, pw = (padding, padding) if np.isscalar(padding) else padding
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    win = sliding_window_view(xp, (kh, kw), axis=(2, 3))[:, :, ::stride, ::stride]  # N, C, Ho, Wo, kh, kw
    return np.einsum("nchwuv,ocuv->nohw", win, w, optimize=True)


def _windows(x, k, stride):
    return sliding_window_view(x, (k, k), axis=(2, 3))[:, :, ::stride, ::stride]


def _maxpool(x, k, stride):
    return _windows(x, k, stride).max(axis=(-1, -2))


def _requant(layer, tensors, acc):
    if layer.requant_kind == "bias":
        b = tensors[layer.bias].astype(np.int64)
        return acc + (b[:, None, None] if acc.ndim == 4 else b)
    if acc.ndim == 4:  # channels last, then back
        return np.moveaxis(_requant_last(layer, tensors, np.moveaxis(acc, 1, -1)), -1, 1)
    return _requant_last(layer, tensors, acc)


def _requant_last(layer, tensors, acc):
    lo, step, n = act_levels(layer.out_bits, layer.out_signed)
    if layer.requant_kind == "multiply_shift":
        return multiply_shift_apply(acc, tensors[layer.mult].astype(np.int64), tensors[layer.offset].astype(np.int64),
                                    layer.shift, n, (lo, step))
    t = tensors[layer.thresholds].astype(np.int64)
    signs = tensors[layer.signs].astype(np.int64) if layer.signs else None
    return thresholds_apply(acc, t, signs, (lo, step))


def xnor_popcount(x, w, stride=None, padding=0):
    """A binary layer's accumulator from bits: ``2 * popcount(xnor) - n_valid`` (linear if ``stride`` is
    None, else conv2d). ``x``, ``w`` hold -1/+1 codes; padding taps are neither, so they are masked."""
    xb, wb = (x > 0).astype(np.int64), (w > 0).astype(np.int64)
    if stride is None:
        return 2 * (xb @ wb.T + (1 - xb) @ (1 - wb).T) - w.shape[1]
    valid = np.ones_like(xb)  # 1 inside the image; conv2d pads it with 0 like the data
    agree = conv2d(xb, wb, stride, padding) + conv2d(valid - xb, 1 - wb, stride, padding)
    n_valid = conv2d(valid[:1], np.ones_like(wb[:1]), stride, padding)
    return 2 * agree - n_valid


def run_layer(layer, tensors, x, others=()):
    """One layer's integer output for its input ``x`` (and, for ``add``, the second input in ``others``)."""
    op = layer.op
    if op in ("linear", "conv2d"):
        w = tensors[layer.weights].astype(np.int64)
        if layer.xnor:
            acc = xnor_popcount(x, w, layer.stride if op == "conv2d" else None, layer.padding_hw)
        elif op == "linear":
            acc = x @ w.T
        else:
            acc = conv2d(x, w, layer.stride, layer.padding_hw)
        return _requant(layer, tensors, acc)
    if op == "add":
        return _requant(layer, tensors, x + others[0])
    if op == "maxpool":
        return _maxpool(x, layer.kernel, layer.stride)
    if op == "avgpool":
        return _requant(layer, tensors, _windows(x, layer.kernel, layer.stride).sum(axis=(-1, -2)))
    if op == "flatten":
        return x.reshape(len(x), -1)
    raise ValueError(f"unknown op {op!r}")


def run_layers(ir, codes):
    """Every layer's integer output for input codes of shape (N, *input_shape) or (N, prod(input_shape))."""
    x = np.asarray(codes, dtype=np.int64).reshape(-1, *ir.input_shape)
    produced = {"input": x}
    outputs = []
    for layer, names in ir.wired():
        y = run_layer(layer, ir.tensors, produced[names[0]], [produced[n] for n in names[1:]])
        produced[layer.name] = y
        outputs.append(y)
    return outputs


def run(ir, codes):
    """The network's integer output (logits) for input codes."""
    return run_layers(ir, codes)[-1]


def prediction_disagreements(predictions, logits):
    """Per sample: (prediction differs from ``argmax(logits)``, the difference is a logit tie).

    A tie: the predicted class has the maximum integer logit too; argmax picks the first of equals.
    """
    predictions = np.asarray(predictions)
    differ = predictions != logits.argmax(axis=1)
    tie = logits[np.arange(len(logits)), predictions] == logits.max(axis=1)
    return differ, differ & tie
