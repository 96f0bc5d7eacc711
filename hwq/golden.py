"""The golden model: the IR executed with numpy integers only. It defines hwq's integer semantics.

Per layer (``op: linear``), with input codes ``x`` (int64):

- ``acc = x @ W.T`` (integer weights ``W``; a 1-bit weight is -1 or +1),
- ``requant.kind == "thresholds"``: ``y[o] = #{k : acc[o] >= T[o, k]}`` (unsigned ``out_bits`` codes;
  ReLU, bias and the activation step are all inside the integer thresholds),
- ``requant.kind == "bias"`` (the logits layer): ``y[o] = acc[o] + b[o]``.

>>> import numpy as np
>>> thresholds_apply(np.array([[-3, 0, 5]]), np.array([[0, 4], [0, 4], [0, 4]]))
array([[0, 1, 2]])
"""

import numpy as np

__all__ = ["accumulator_range", "run", "run_layers", "thresholds_apply"]


def thresholds_apply(acc, thresholds):
    """Count, per output, how many of its thresholds the accumulator reaches."""
    return (acc[..., None] >= thresholds[None, ...]).sum(axis=-1).astype(np.int64)


def accumulator_range(weights, a_lo, a_hi):
    """Proven per-output bounds (lo, hi) of ``x @ W.T`` for every input with codes in [a_lo, a_hi].

    Every partial sum of the dot product (any subset of its terms) also lies in [lo, hi], so an
    accumulator that holds this range never overflows, in whatever order the terms are added.
    """
    w = np.asarray(weights, dtype=np.int64)
    t1, t2 = w * a_lo, w * a_hi
    return np.minimum(t1, t2).clip(max=0).sum(axis=1), np.maximum(t1, t2).clip(min=0).sum(axis=1)


def _layer(layer, tensors, x):
    acc = x @ tensors[layer.weights].astype(np.int64).T
    if layer.requant_kind == "thresholds":
        return thresholds_apply(acc, tensors[layer.thresholds].astype(np.int64))
    return acc + tensors[layer.bias].astype(np.int64)


def run_layers(ir, codes):
    """Every layer's integer output for input codes of shape (N, in_features)."""
    x = np.asarray(codes, dtype=np.int64)
    outputs = []
    for layer in ir.layers:
        x = _layer(layer, ir.tensors, x)
        outputs.append(x)
    return outputs


def run(ir, codes):
    """The network's integer output (logits) for input codes of shape (N, in_features)."""
    return run_layers(ir, codes)[-1]
