"""Your own network, built from hwq's layers by a Python function: ``hwq train --model my_net.py:build``.

The function receives a :class:`Builder` and calls its layer methods in order; the builder follows the
shapes from the dataset's input to the logits and records the network as plain data (a list of layer
dicts, the ``spec``), which is what the checkpoint stores: loading a run never runs your file again.
Every method and bit setting of ``hwq train`` applies, and the network goes through export, RTL and
simulation like the bundled models::

    def build(net):                     # my_net.py, for the digits images (1 x 8 x 8)
        net.conv2d(8, kernel=3)         # 8 output channels, 3 x 3, zero padding 1 (keeps the size)
        net.maxpool(2)
        net.conv2d(16)
        net.maxpool(2)
        net.flatten()
        net.linear(10)                  # the last layer gives the logits: as many as the dataset's classes

``conv1d`` is a 1-D convolution over signals of shape (C, 1, L) (MNIST-1D): a 1 x k kernel.
"""

import importlib.util
import math
import re
from pathlib import Path

from .errors import UserError
from .ir import conv_out_side

__all__ = ["Builder", "builder_digest", "custom_model", "is_builder_ref", "load_builder", "record", "spec_names"]

_REF = re.compile(r"^(?P<path>.+\.py):(?P<func>[A-Za-z_][A-Za-z0-9_]*)$")
WEIGHT_SPEC_OPS = ("conv2d", "linear")


def is_builder_ref(text):
    """Whether ``text`` names a builder function, ``path/to/file.py:function``."""
    return isinstance(text, str) and _REF.match(text) is not None


class Builder:
    """Records a network layer by layer, following its shape from ``in_shape`` (C, H, W)."""

    def __init__(self, in_shape):
        self.shape = list(in_shape)
        self.flat_input = False  # the network starts with a linear layer: it reads the flattened input
        self.layers = []
        self.counts = {}

    def _name(self, kind):
        self.counts[kind] = self.counts.get(kind, 0) + 1
        return f"{kind}{self.counts[kind]}"

    def _fail(self, what, expected):
        raise UserError(f"layer {len(self.layers) + 1} ({what}): {expected}")

    @staticmethod
    def _positive(what, **values):
        for key, v in values.items():
            if not isinstance(v, int) or isinstance(v, bool) or v < (0 if key == "padding" else 1):
                raise UserError(f"{what}: {key} must be an integer >= {0 if key == 'padding' else 1}, not {v!r}")

    def conv2d(self, channels, kernel=3, stride=1, padding=None):
        """A 2-D convolution with ``channels`` outputs, a ``kernel`` x ``kernel`` window, ``stride`` and
        ``padding`` zeros on each side (default ``kernel // 2``), then batch-norm and the activation."""
        padding = kernel // 2 if padding is None else padding
        self._positive("conv2d", channels=channels, kernel=kernel, stride=stride, padding=padding)
        return self._conv("conv2d", channels, (kernel, kernel), stride, (padding, padding))

    def conv1d(self, channels, kernel=3, stride=1, padding=None):
        """A 1-D convolution over a (C, 1, L) signal: a 1 x ``kernel`` window."""
        padding = kernel // 2 if padding is None else padding
        self._positive("conv1d", channels=channels, kernel=kernel, stride=stride, padding=padding)
        if len(self.shape) != 3 or self.shape[1] != 1:
            self._fail("conv1d", f"takes a signal of shape (C, 1, L), not {tuple(self.shape)}")
        return self._conv("conv1d", channels, (1, kernel), stride, (0, padding))

    def _conv(self, what, channels, kernel, stride, padding):
        if len(self.shape) != 3:
            self._fail(what, f"takes (C, H, W) feature maps, not a vector of {self.shape[0]} (convolve before flatten)")
        c, h, w = self.shape
        out = [conv_out_side(d, k, stride, p) for d, k, p in zip((h, w), kernel, padding, strict=True)]
        if min(out) < 1:
            self._fail(what, f"the kernel {kernel[0]} x {kernel[1]} does not fit the input {h} x {w} with padding "
                             f"{padding[1]}")
        self.layers.append({"op": "conv2d", "name": self._name("conv"), "in": c, "out": channels,
                            "kernel": list(kernel), "stride": stride, "padding": list(padding)})
        self.shape = [channels, *out]

    def maxpool(self, kernel=2):
        """Max-pool over ``kernel`` x ``kernel`` windows with stride ``kernel``."""
        self._positive("maxpool", kernel=kernel)
        if len(self.shape) != 3 or min(self.shape[1:]) < kernel:
            self._fail("maxpool", f"needs a feature map of at least {kernel} x {kernel}, not {tuple(self.shape)}")
        self.layers.append({"op": "maxpool", "name": self._name("pool"), "kernel": kernel})
        self.shape = [self.shape[0], self.shape[1] // kernel, self.shape[2] // kernel]

    def flatten(self):
        """(C, H, W) -> C * H * W features, in C, H, W order."""
        if len(self.shape) != 3:
            self._fail("flatten", "the input is a vector already")
        self.layers.append({"op": "flatten", "name": self._name("flatten")})
        self.shape = [math.prod(self.shape)]

    def linear(self, features):
        """A fully connected layer with ``features`` outputs (the first layer may read the input's pixels
        directly; later ones need a flatten after convolutions)."""
        self._positive("linear", features=features)
        if len(self.shape) != 1:
            if self.layers:
                self._fail("linear", f"takes a vector; flatten the {tuple(self.shape)} feature map first")
            self.shape, self.flat_input = [math.prod(self.shape)], True
        self.layers.append({"op": "linear", "name": self._name("fc"), "in": self.shape[0], "out": features})
        self.shape = [features]


def spec_names(spec):
    """Names of the weight layers of a recorded network, input to output."""
    return [la["name"] for la in spec if la["op"] in WEIGHT_SPEC_OPS]


def load_builder(ref):
    """The function ``path.py:function`` names (the file is run: it is your code)."""
    match = _REF.match(ref)
    if match is None:
        raise UserError(f"--model {ref}: expected a bundled model or path/to/file.py:function")
    path = Path(match["path"])
    if not path.is_file():
        raise UserError(f"--model {ref}: {path}: no such file")
    spec = importlib.util.spec_from_file_location(f"hwq_user_model_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as e:  # the user's file: report its error in one line
        raise UserError(f"--model {ref}: running {path} failed: {type(e).__name__}: {e}") from None
    fn = getattr(module, match["func"], None)
    if not callable(fn):
        raise UserError(f"--model {ref}: {path} defines no function {match['func']!r}")
    return fn


def builder_digest(ref):
    """SHA-256 of the builder's file (a flow retrains when it changes)."""
    from .fileio import file_digest

    return file_digest(_REF.match(ref)["path"])


def record(build, in_shape, n_classes, where="--model"):
    """Run ``build`` (a function or a ``path.py:function`` reference) on a :class:`Builder` for inputs of
    ``in_shape``; return (spec, the network's input shape). The last layer must be the logits layer."""
    if isinstance(build, str):
        build = load_builder(build)
    b = Builder(in_shape)
    try:
        build(b)
    except UserError as e:
        raise UserError(f"{where}: {e}") from None
    except Exception as e:  # the user's function: one line, no traceback
        raise UserError(f"{where}: the builder failed: {type(e).__name__}: {e}") from None
    if not spec_names(b.layers):
        raise UserError(f"{where}: the network has no conv2d, conv1d or linear layer")
    last = b.layers[-1]
    if last["op"] != "linear" or b.shape != [n_classes]:
        raise UserError(f"{where}: the last layer must be linear({n_classes}) (the logits of the dataset's "
                        f"{n_classes} classes); the network ends with {last['op']} giving {tuple(b.shape)}")
    return b.layers, ([math.prod(in_shape)] if b.flat_input else list(in_shape))


def custom_model(build, *, dataset="digits", method="lsq", bits="2/2", first_last="same"):
    """An untrained :class:`hwq.models.QuantNet` of your builder function, with ``method``'s quantizers at
    ``bits`` (W/A) for ``dataset``'s inputs, to train with your own loop: float first (``net.quantized``
    False), then ``net.calibrate(codes)``, ``net.quantized = True`` and quantization-aware training; then
    ``hwq.Design.from_model(net, dataset=...)`` exports it (docs/api.md)."""
    from .data import load_dataset
    from .models import QuantNet
    from .train import TrainConfig, _net_config, parse_bits

    data = load_dataset(dataset)
    w_bits, a_bits = parse_bits(bits)
    cfg = TrainConfig(dataset=dataset, method=method, w_bits=w_bits, a_bits=a_bits, first_last=first_last)
    built = record(build, list(data.image_shape), data.n_classes, where="build")
    return QuantNet(_net_config(cfg, data, built))
