"""Shared fixtures: a small trained run, its IR, and random IRs for hardware tests."""

import numpy as np
import pytest
import yaml

from boards.calibrate import network_ir, random_layer
from hwq.intrange import max_int, min_int
from hwq.ir import save_ir


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
    in_bits, n = input_bits, len(sizes) - 1
    for i in range(n):
        layer, t = random_layer(rng, f"l{i}", sizes[i], sizes[i + 1], w_bits[i], in_bits,
                                a_bits[i + 1] if i < n - 1 else None, extreme=extreme)
        layers.append(layer)
        tensors.update(t)
        in_bits = layer.out_bits
    return network_ir(layers, tensors, input_bits=input_bits, dataset="digits")


@pytest.fixture
def ir_dir(tmp_path):
    """A small random IR saved in tmp_path/ir (12-6-4, W2/2, 4-bit inputs)."""
    ir = random_ir(np.random.default_rng(0), [12, 6, 4], [2, 2], [4, 2])
    save_ir(ir, tmp_path / "ir")
    return tmp_path / "ir"


def edit_manifest(ir_dir, edit):
    """Apply ``edit`` to an IR folder's manifest (as a user with an editor might)."""
    path = ir_dir / "manifest.yaml"
    m = yaml.safe_load(path.read_text())
    edit(m)
    path.write_text(yaml.safe_dump(m, sort_keys=False))


def random_inputs(rng, ir, n):
    return rng.integers(min_int(ir.input_bits, False), max_int(ir.input_bits, False) + 1,
                        size=(n, ir.in_features))


@pytest.fixture
def save_random_ir(tmp_path):
    def make(ir, name="ir"):
        save_ir(ir, tmp_path / name)
        return tmp_path / name
    return make
