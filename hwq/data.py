"""Datasets as integer input codes.

``digits`` is scikit-learn's bundled 8x8 handwritten digits (1,797 images, pixel values 0..16). Nothing is
downloaded. Pixels p in 0..16 become unsigned 4-bit codes 0..15 by the integer rule
``code = (15 * p + 8) // 16`` (p * 15/16 rounded half up). The network's input is ``code * input_scale``
with ``input_scale = 1/15``, so the codes are exactly what the hardware receives.

>>> pixels_to_codes(np.array([0, 8, 16]), bits=4).tolist()
[0, 8, 15]
"""

from dataclasses import dataclass

import numpy as np

from .errors import UserError

__all__ = ["DATASETS", "Dataset", "load_dataset", "pixels_to_codes"]

DATASETS = ("digits",)
DIGITS_MAX_PIXEL = 16


@dataclass(frozen=True)
class Dataset:
    """Train/test split of integer input codes and labels."""

    name: str
    x_train: np.ndarray  # int64 codes, shape (N, features)
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    input_bits: int
    input_scale: float  # real value of one code step
    n_classes: int

    @property
    def in_features(self):
        return int(self.x_train.shape[1])


def pixels_to_codes(pixels, bits, max_pixel=DIGITS_MAX_PIXEL):
    """Round pixel values 0..max_pixel to codes 0..2^bits-1, with integers only."""
    top = (1 << bits) - 1
    return (np.asarray(pixels, dtype=np.int64) * top + max_pixel // 2) // max_pixel


def load_dataset(name="digits", *, input_bits=4, test_fraction=0.2, split_seed=0):
    """Load a dataset by name; the split is fixed by ``split_seed`` (stratified)."""
    if name != "digits":
        raise UserError(f"unknown dataset {name!r}; known datasets: {', '.join(DATASETS)}")
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    codes = pixels_to_codes(digits.data.astype(np.int64), input_bits)
    labels = digits.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(
        codes, labels, test_size=test_fraction, random_state=split_seed, stratify=labels
    )
    return Dataset(
        name="digits",
        x_train=x_tr,
        y_train=y_tr,
        x_test=x_te,
        y_test=y_te,
        input_bits=input_bits,
        input_scale=1.0 / ((1 << input_bits) - 1),
        n_classes=10,
    )
