"""Shared fixtures: a small trained run, its IR, and random IRs for hardware tests."""

import numpy as np
import pytest

from hwq.golden import accumulator_range
from hwq.intrange import max_int, min_int, signed_width, weight_range
from hwq.ir import IR, Layer, save_ir


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
    """A short training run of the default MLP (few epochs: the integer checks do not need accuracy)."""
    from hwq.train import TrainConfig, train

    out = tmp_path_factory.mktemp("run")
    metrics = train(TrainConfig(epochs_float=5, epochs_qat=5, seed=1), out, show_progress=False)
    return out, metrics


@pytest.fixture(scope="session")
def trained_ir(trained_run, tmp_path_factory):
    from hwq.export import export_run
    from hwq.ir import load_ir

    out = tmp_path_factory.mktemp("ir")
    export_run(trained_run[0], out)
    return out, load_ir(out)


def random_ir(rng, sizes, w_bits, a_bits, input_bits=4, extreme=False):
    """A valid IR with random integer weights and monotone thresholds (no training).

    ``sizes`` = [in, hidden..., out]; ``w_bits``/``a_bits`` per layer (a_bits[0] is ignored: the
    input has ``input_bits``). ``extreme`` uses the most negative weight everywhere (worst-case sums).
    """
    layers, tensors = [], {}
    in_bits = input_bits
    n = len(sizes) - 1
    for i in range(n):
        name = f"l{i}"
        lo, hi = weight_range(w_bits[i])
        shape = (sizes[i + 1], sizes[i])
        if extreme:
            w = np.full(shape, lo)
        elif w_bits[i] == 1:
            w = rng.choice([-1, 1], size=shape)
        else:
            w = rng.integers(lo, hi + 1, size=shape)
        acc_lo, acc_hi = accumulator_range(w, 0, max_int(in_bits, False))
        acc_bits = signed_width(min(acc_lo.min(), 0), max(acc_hi.max(), 0))
        tensors[f"{name}.weight"] = w.astype(np.int8)
        common = dict(name=name, op="linear", in_features=sizes[i], out_features=sizes[i + 1],
                      w_bits=w_bits[i], a_bits=in_bits, a_signed=False, acc_bits=acc_bits,
                      weights=f"{name}.weight")
        if i < n - 1:
            out_bits = a_bits[i + 1]
            k = max_int(out_bits, False)
            thr = np.sort(rng.integers(acc_lo.min(), acc_hi.max() + 2, size=(sizes[i + 1], k)), axis=1)
            tensors[f"{name}.thresholds"] = thr
            layers.append(Layer(**common, out_bits=out_bits, out_signed=False, requant_kind="thresholds",
                                thresholds=f"{name}.thresholds"))
            in_bits = out_bits
        else:
            b = rng.integers(-50, 51, size=sizes[i + 1])
            tensors[f"{name}.bias"] = b
            out_bits = signed_width(int((acc_lo + b).min()), int((acc_hi + b).max()))
            layers.append(Layer(**common, out_bits=out_bits, out_signed=True, requant_kind="bias",
                                bias=f"{name}.bias"))
    return IR(model="mlp", dataset="digits", method="lsq", input_shape=[sizes[0]], input_bits=input_bits,
              input_signed=False, input_scale=1 / 15, layers=layers, tensors=tensors)


def random_inputs(rng, ir, n):
    return rng.integers(min_int(ir.input_bits, False), max_int(ir.input_bits, False) + 1,
                        size=(n, ir.in_features))


@pytest.fixture
def save_random_ir(tmp_path):
    def make(ir, name="ir"):
        save_ir(ir, tmp_path / name)
        return tmp_path / name
    return make
