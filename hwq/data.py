"""Datasets as integer input codes. Nothing is downloaded.

- ``digits`` (default): scikit-learn's bundled 8x8 handwritten digits (1,797 images, pixel values
  0..16). Pixels become unsigned 4-bit codes by the integer rule ``code = (15 * p + 8) // 16`` (p * 15/16
  rounded half up); the network's input is ``code / 15``. Split 1,437 / 360, stratified, seed 0.
- ``mnist``: the four IDX files (``train-images-idx3-ubyte`` etc., optionally ``.gz``) in
  ``$HWQ_DATA/mnist`` (default ``~/.cache/hwq/data/mnist``); 8-bit codes = the pixels.
- ``cifar10``: the binary version (``cifar-10-batches-bin/data_batch_{1..5}.bin``, ``test_batch.bin``)
  in ``$HWQ_DATA/cifar10``; 8-bit codes = the pixels, shape (3, 32, 32).
- ``mnist1d``: MNIST-1D (Greydanus, 2020), generated offline by the ``mnist1d`` package from its templates
  with the published default arguments (4,000 training and 1,000 test sequences of 40 samples, 10 classes),
  cached in ``$HWQ_DATA/mnist1d`` after the first generation (about 10 s). Samples (about -5..5) become
  signed 8-bit codes ``clip(round(x * 128 / 4), -128, 127)`` (step 1/32; zero stays zero: offset unsigned
  codes cost an MLP about 25 points of accuracy); shape (1, 1, 40).
- ``synthetic``: 10 classes of random 8x8 prototypes plus noise, 4-bit codes (for fast tests).

>>> pixels_to_codes(np.array([0, 8, 16]), bits=4).tolist()
[0, 8, 15]
"""

import gzip
import os
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from .errors import UserError
from .fileio import atomic_path

__all__ = ["DATASETS", "Dataset", "data_dir", "holdout", "load_dataset", "pixels_to_codes"]

DATASETS = ("digits", "mnist", "mnist1d", "cifar10", "synthetic")
MNIST1D_RANGE = 4.0  # samples in [-4, 4) map onto the signed 8-bit codes (the few beyond are clipped)
DIGITS_MAX_PIXEL = 16


@dataclass(frozen=True)
class Dataset:
    """Train/test split of integer input codes (flattened) and labels."""

    name: str
    x_train: np.ndarray  # int64 codes, shape (N, features)
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    input_bits: int
    input_scale: float  # real value of one code step
    n_classes: int
    image_shape: tuple  # (C, H, W) of one sample
    input_signed: bool = False  # two's complement codes (unsigned 0..2^b-1 otherwise)

    @property
    def in_features(self):
        return int(self.x_train.shape[1])


def holdout(data, fraction, seed=0):
    """(``data`` with a stratified ``fraction`` of its training set taken out, (x, y) of those samples): a
    validation split that no training sees, for choosing among trained designs without the test set."""
    from sklearn.model_selection import train_test_split

    x_tr, x_val, y_tr, y_val = train_test_split(data.x_train, data.y_train, test_size=fraction, random_state=seed,
                                                stratify=data.y_train)
    return replace(data, x_train=x_tr, y_train=y_tr), (x_val, y_val)


def pixels_to_codes(pixels, bits, max_pixel=DIGITS_MAX_PIXEL):
    """Round pixel values 0..max_pixel to codes 0..2^bits-1, with integers only."""
    top = (1 << bits) - 1
    return (np.asarray(pixels, dtype=np.int64) * top + max_pixel // 2) // max_pixel


def data_dir(name):
    """Where local dataset files are read from: $HWQ_DATA/<name>, else ~/.cache/hwq/data/<name>."""
    return Path(os.environ.get("HWQ_DATA", Path.home() / ".cache" / "hwq" / "data")) / name


def _split(name, codes, labels, input_bits, test_fraction, split_seed, shape, n_classes=10):
    from sklearn.model_selection import train_test_split

    x_tr, x_te, y_tr, y_te = train_test_split(codes, labels, test_size=test_fraction, random_state=split_seed,
                                              stratify=labels)
    return Dataset(name, x_tr, y_tr, x_te, y_te, input_bits, 1.0 / ((1 << input_bits) - 1), n_classes, shape)


SPLIT_KEYS = ("x_train", "y_train", "x_test", "y_test")


def _kept_arrays(path, keys, make):
    """The arrays ``keys`` kept in ``path`` (an .npz in the data folder), else ``make()``'s, kept there for the
    next load. A damaged file (a bad zip, a missing or pickled array) is made again; a folder that cannot be
    written is no error (the next load makes them again)."""
    try:
        with np.load(path) as raw:
            return {k: raw[k] for k in keys}
    except Exception:
        pass
    arrays = make()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, **{k: arrays[k] for k in keys})
    except OSError:
        pass
    return arrays


def _digits(input_bits, test_fraction, split_seed):
    from importlib.metadata import version

    def split():
        from sklearn.datasets import load_digits

        digits = load_digits()
        codes = pixels_to_codes(digits.data.astype(np.int64), input_bits)
        data = _split("digits", codes, digits.target.astype(np.int64), input_bits, test_fraction, split_seed,
                      (1, 8, 8))
        return {k: getattr(data, k) for k in SPLIT_KEYS}

    # scikit-learn takes 1.5 s to import: the split is kept (per scikit-learn version, since it makes both)
    kept = data_dir("digits") / f"digits-{version('scikit-learn')}-b{input_bits}-t{test_fraction}-s{split_seed}.npz"
    parts = _kept_arrays(kept, SPLIT_KEYS, split)
    return Dataset("digits", *(parts[k].astype(np.int64) for k in SPLIT_KEYS), input_bits,
                   1.0 / ((1 << input_bits) - 1), 10, (1, 8, 8))


def _synthetic(input_bits, test_fraction, split_seed, n=700):
    rng = np.random.default_rng(1234)
    top = (1 << input_bits) - 1
    protos = rng.uniform(0, top, size=(10, 64))
    labels = np.arange(n) % 10
    codes = np.clip(np.rint(protos[labels] + rng.normal(0, top / 4, size=(n, 64))), 0, top).astype(np.int64)
    return _split("synthetic", codes, labels.astype(np.int64), input_bits, test_fraction, split_seed, (1, 8, 8))


def _need(path, name, what):
    if not path.is_file():
        raise UserError(f"{path}: missing; put the {name} {what} in {path.parent} (or set HWQ_DATA to the "
                        f"folder that holds {path.parent.name}/); hwq downloads nothing")
    return path


def _idx(path):
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        raw = fh.read()
    if len(raw) < 8 or raw[0] != 0 or raw[1] != 0 or raw[2] != 8:
        raise UserError(f"{path}: not an IDX file of unsigned bytes")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise UserError(f"{path}: IDX header says {dims} but the file holds {data.size} values")
    return data.reshape(dims)


def _mnist():
    root = data_dir("mnist")

    def find(stem):
        for cand in (root / stem, root / f"{stem}.gz"):
            if cand.is_file():
                return cand
        return _need(root / stem, "MNIST", f"file {stem} (or {stem}.gz)")

    x_tr = _idx(find("train-images-idx3-ubyte")).reshape(-1, 784).astype(np.int64)
    y_tr = _idx(find("train-labels-idx1-ubyte")).astype(np.int64)
    x_te = _idx(find("t10k-images-idx3-ubyte")).reshape(-1, 784).astype(np.int64)
    y_te = _idx(find("t10k-labels-idx1-ubyte")).astype(np.int64)
    return Dataset("mnist", x_tr, y_tr, x_te, y_te, 8, 1.0 / 255, 10, (1, 28, 28))


def _cifar10():
    root = data_dir("cifar10") / "cifar-10-batches-bin"

    def batch(name):
        raw = np.fromfile(_need(root / name, "CIFAR-10 binary version's", f"file {name}"), dtype=np.uint8)
        if raw.size % 3073:
            raise UserError(f"{root / name}: expected records of 3,073 bytes (label + 3x32x32 pixels)")
        rec = raw.reshape(-1, 3073)
        return rec[:, 1:].astype(np.int64), rec[:, 0].astype(np.int64)

    parts = [batch(f"data_batch_{i}.bin") for i in range(1, 6)]
    x_te, y_te = batch("test_batch.bin")
    x_tr = np.concatenate([p[0] for p in parts])
    y_tr = np.concatenate([p[1] for p in parts])
    return Dataset("cifar10", x_tr, y_tr, x_te, y_te, 8, 1.0 / 255, 10, (3, 32, 32))


def _mnist1d():
    keys = ("x", "y", "x_test", "y_test")

    def generate():
        try:
            from mnist1d.data import get_dataset_args, make_dataset
        except ImportError:
            raise UserError("the mnist1d dataset needs the mnist1d package: pip install mnist1d") from None
        data = make_dataset(get_dataset_args())  # the published defaults; generated here, nothing downloaded
        return {k: np.asarray(data[k]) for k in keys}

    raw = _kept_arrays(data_dir("mnist1d") / "mnist1d-default.npz", keys, generate)

    def codes(x):
        return np.clip(np.rint(np.asarray(x, dtype=np.float64) * 128 / MNIST1D_RANGE), -128, 127).astype(np.int64)

    return Dataset("mnist1d", codes(raw["x"]), np.asarray(raw["y"], dtype=np.int64), codes(raw["x_test"]),
                   np.asarray(raw["y_test"], dtype=np.int64), 8, MNIST1D_RANGE / 128, 10, (1, 1, 40),
                   input_signed=True)


def load_dataset(name="digits", *, input_bits=4, test_fraction=0.2, split_seed=0):
    """Load a dataset by name (digits and synthetic are split by ``split_seed``, stratified)."""
    if name == "digits":
        return _digits(input_bits, test_fraction, split_seed)
    if name == "synthetic":
        return _synthetic(input_bits, test_fraction, split_seed)
    if name == "mnist":
        return _mnist()
    if name == "mnist1d":
        return _mnist1d()
    if name == "cifar10":
        return _cifar10()
    raise UserError(f"unknown dataset {name!r}; known datasets: {', '.join(DATASETS)}")
