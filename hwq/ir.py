"""The integer IR: ``manifest.yaml`` (structure, bits) + ``tensors.npz`` (integers). See docs/formats.md.

The IR is the contract between training and hardware: ``rtl_gen`` and ``sim`` read only this. Loading
validates every field and tensor and raises :class:`~hwq.errors.UserError` naming the file, the layer
and the field.
"""

import hashlib
import io
import json
import math
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from .errors import UserError
from .fileio import read_yaml, umask_mode
from .golden import accumulator_range
from .intrange import (
    MAX_A_BITS,
    MAX_BITS,
    MAX_W_BITS,
    W_GRIDS,
    act_levels,
    code_range,
    is_bipolar,
    range_bits,
    signed_width,
    weight_codes,
    weight_storage_bits,
)
from .names import NAME_EXPECTED, is_name
from .requant import MAX_SHIFT, PRODUCT_LIMIT, thresholds_of

__all__ = [
    "IR",
    "IR_FORMAT",
    "MAX_WEIGHTS",
    "OUTPUT_MARKER",
    "Layer",
    "accumulator_bounds",
    "atomic_dir",
    "check_size",
    "input_codes",
    "ir_digest",
    "load_ir",
    "out_bits_limit",
    "requant_thresholds",
    "save_ir",
]

IR_FORMAT = "hwq-ir/2"
WEIGHT_OPS = ("linear", "conv2d")
POOL_OPS = ("maxpool", "avgpool")
OPS = (*WEIGHT_OPS, *POOL_OPS, "flatten", "add")
REQUANT_KINDS = ("thresholds", "multiply_shift", "bias")
XNOR_ENCODING = {"bit_1": 1, "bit_0": -1, "dot": "2 * popcount(xnor(x_bits, w_bits)) - n_valid"}


@dataclass
class Layer:
    """One IR node. Weight layers (linear, conv2d) carry weights and a requantization; ``add`` carries a
    requantization of the integer sum of its two inputs, ``avgpool`` of the sum of each window's codes;
    ``maxpool`` and ``flatten`` only move codes.
    ``inputs`` names the producing layers (``"input"`` is the network input; ``None`` = the previous
    layer)."""

    name: str
    op: str
    in_shape: list
    out_shape: list
    a_bits: int  # bits of the (first) input's codes
    a_signed: bool
    out_bits: int
    out_signed: bool
    inputs: list | None = None
    w_bits: int | None = None
    w_grid: str = "int"
    acc_bits: int | None = None
    weights: str | None = None  # key in tensors
    kernel: int | None = None  # conv2d, maxpool, avgpool (conv2d: the kernel's width; its height is kernel_h)
    stride: int | None = None
    padding: int | None = None  # conv2d: columns of zeros left and right (rows: padding_h)
    kernel_h: int | None = None  # conv2d with a rectangular kernel (1 for a 1-D convolution); None: = kernel
    padding_h: int | None = None  # rows of zeros above and below; None: = padding
    requant_kind: str | None = None  # "thresholds"/"multiply_shift" (codes), "bias" (logits), None: none
    thresholds: str | None = None
    signs: str | None = None  # per-channel +1/-1: compare sign * acc >= T (None: all +1)
    mult: str | None = None  # multiply_shift: per-channel multiplier and offset tensors, one shift
    offset: str | None = None
    shift: int | None = None
    deviations: int = 0  # multiply_shift: accumulator values where it differs from the trained model
    bias: str | None = None
    xnor: bool = False  # binary layer ({-1,+1} weights and inputs) stated for XNOR-popcount
    w_scale: float | list = 1.0  # informational: real value of one weight step (per channel: a list)
    out_scale: float = 1.0  # informational: real value of one output step

    @property
    def in_features(self):
        return math.prod(self.in_shape)

    @property
    def out_features(self):
        return math.prod(self.out_shape)

    @property
    def channels(self):
        return int(self.out_shape[0])

    @property
    def binary(self):
        """1-bit weights and bipolar inputs: an XNOR-popcount layer (it must carry ``xnor``)."""
        return self.op in WEIGHT_OPS and self.w_bits == 1 and is_bipolar(self.a_bits, self.a_signed)

    @property
    def fan_in(self):
        """Terms in one output's dot product (padding included)."""
        return math.prod(self.weight_shape()[1:])

    @property
    def n_levels(self):
        return act_levels(self.out_bits, self.out_signed)[2]

    @property
    def w_storage_bits(self):
        return weight_storage_bits(self.w_bits, self.w_grid)

    @property
    def kernel_hw(self):
        """(height, width) of a conv2d's kernel: ``kernel_h`` (default ``kernel``) by ``kernel``."""
        return (self.kernel if self.kernel_h is None else self.kernel_h), self.kernel

    @property
    def padding_hw(self):
        """(rows, columns) of zero padding on each side of a conv2d's input."""
        pad = self.padding or 0
        return (pad if self.padding_h is None else self.padding_h), pad

    def weight_shape(self):
        if self.op == "conv2d":
            return (self.out_shape[0], self.in_shape[0], *self.kernel_hw)
        return (self.out_features, self.in_features)

    def to_manifest(self):
        m = {"name": self.name, "op": self.op}
        if self.inputs is not None:
            m["inputs"] = list(self.inputs)
        m.update({"in_shape": list(self.in_shape), "out_shape": list(self.out_shape),
                  "a_bits": self.a_bits, "a_signed": self.a_signed,
                  "out_bits": self.out_bits, "out_signed": self.out_signed})
        if self.op in WEIGHT_OPS:
            m.update({"w_bits": self.w_bits, "w_grid": self.w_grid, "weights": self.weights,
                      "w_scale": self.w_scale})
        if self.op in ("conv2d", *POOL_OPS):
            m["kernel"] = self.kernel
            m["stride"] = self.stride
        if self.op == "conv2d":
            m["padding"] = self.padding
            if self.kernel_hw[0] != self.kernel or self.padding_hw[0] != self.padding_hw[1]:
                m["kernel_h"], m["padding_h"] = self.kernel_hw[0], self.padding_hw[0]
        if self.xnor:
            m["xnor"] = {**XNOR_ENCODING, "n": self.fan_in}
        if self.requant_kind is not None:
            m["acc_bits"] = self.acc_bits
            requant = {"kind": self.requant_kind, "out_scale": self.out_scale}
            if self.requant_kind == "thresholds":
                requant["thresholds"] = self.thresholds
                if self.signs is not None:
                    requant["signs"] = self.signs
            elif self.requant_kind == "multiply_shift":
                requant.update(mult=self.mult, offset=self.offset, shift=self.shift, deviations=self.deviations)
            else:
                requant["bias"] = self.bias
            m["requant"] = requant
        return m


def conv_out_side(side, kernel, stride, padding):
    return (side + 2 * padding - kernel) // stride + 1


@dataclass
class IR:
    model: str
    dataset: str
    method: str
    input_shape: list
    input_bits: int
    input_signed: bool
    input_scale: float
    layers: list
    tensors: dict = field(repr=False)

    @property
    def in_features(self):
        return math.prod(self.input_shape)

    def wired(self):
        """Each layer with the names of the values it reads: its ``inputs``, else the previous layer
        (``"input"`` for the first)."""
        prev = "input"
        for layer in self.layers:
            yield layer, (list(layer.inputs) if layer.inputs is not None else [prev])
            prev = layer.name

    def to_manifest(self):
        return {
            "format": IR_FORMAT,
            "model": self.model,
            "dataset": self.dataset,
            "method": self.method,
            "input": {"shape": list(self.input_shape), "bits": self.input_bits,
                      "signed": self.input_signed, "scale": self.input_scale, "zero_point": 0},
            "layers": [layer.to_manifest() for layer in self.layers],
            "output": {"layer": self.layers[-1].name, "kind": "logits"},
        }


_MISSING = object()


OUTPUT_MARKER = ".hwq-output"  # in every folder atomic_dir writes: hwq may replace it next time


def _earlier_output(path):
    """A folder written by an hwq from before the marker: only the files an IR or RTL folder holds."""
    names = {p.name for p in path.iterdir()}
    if "manifest.yaml" in names:
        return names <= {"manifest.yaml", "tensors.npz", "model.onnx"}
    if "rtl.json" not in names:
        return False
    try:
        info = json.loads((path / "rtl.json").read_text(encoding="utf-8"))
        listed = {f for f in info.get("files", []) if "/" not in f}
    except (OSError, ValueError, AttributeError, TypeError):
        return False
    known = all(n in listed or n in ("rtl.json", "synth.json", "sim.json", "mem") or
                (n.startswith("sim-") and n.endswith(".json")) for n in names)
    mem = path / "mem"
    return known and (not mem.exists() or (mem.is_dir() and all(p.suffix == ".hex" for p in mem.iterdir())))


@contextmanager
def atomic_dir(path, *, force=False):
    """Yield a temporary directory beside ``path``; on success it replaces ``path`` whole (the old folder
    is removed only after the new one is in place), on failure it is removed and ``path`` is untouched.

    A non-empty folder that hwq did not write (no :data:`OUTPUT_MARKER` in it) is never replaced unless
    ``force``; neither is the current folder or one that holds it."""
    path = Path(path).absolute()
    if path.exists():
        if not path.is_dir():
            raise UserError(f"{path}: exists and is not a folder; choose another output folder")
        if Path.cwd().resolve().is_relative_to(path.resolve()):
            raise UserError(f"{path}: is the current folder (or holds it); choose another output folder")
        if not force and not (path / OUTPUT_MARKER).is_file() and any(path.iterdir()) and not _earlier_output(path):
            raise UserError(f"{path}: not empty and not written by hwq; choose another output folder, or pass "
                            f"--force to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        (tmp / OUTPUT_MARKER).write_text("written by hwq; hwq replaces this folder when asked to write here again\n")
        yield tmp
        tmp.chmod(umask_mode(directory=True))  # mkdtemp made it private
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old.", dir=path.parent))
            path.rename(old / "x")
            tmp.rename(path)
            shutil.rmtree(old)
        else:
            tmp.rename(path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


MAX_WEIGHTS = 4_000_000  # what hwq generates hardware for; see check_size


def check_size(ir):
    """The network's weight count; refuse, before any work, a network too large to generate here:
    generation takes about 30 s and 0.4 GB of memory per million weights (measured: a 1024-1024-10 MLP, 30 s, 0.42 GB), so
    :data:`MAX_WEIGHTS` (4 million, more than FINN's CNV-w1a1) bounds it at about two minutes and 2 GB."""
    n = sum(math.prod(layer.weight_shape()) for layer in ir.layers if layer.weights)
    if n > MAX_WEIGHTS:
        raise UserError(f"the IR has {n:,} weights; hwq generates and estimates networks of up to {MAX_WEIGHTS:,} "
                        f"(generation needs about 30 s and 0.4 GB per million weights)")
    return n


def ir_digest(ir):
    """SHA-256 of what an IR means: its manifest and every tensor's name, dtype, shape and bytes. RTL
    records it (``rtl.json``'s ``ir_sha256``) so a simulation can tell that it was given another IR."""
    h = hashlib.sha256(yaml.safe_dump(ir.to_manifest(), sort_keys=True).encode())
    for name in sorted(ir.tensors):
        t = np.ascontiguousarray(ir.tensors[name])
        h.update(f"{name}:{t.dtype.str}:{t.shape}".encode())
        h.update(t.tobytes())
    return h.hexdigest()


def save_ir(ir, out_dir, *, extra=None, force=False):
    """Write ``manifest.yaml`` and ``tensors.npz`` (and whatever ``extra(tmp_dir)`` writes, e.g.
    ``model.onnx``); the directory appears whole or not at all (see :func:`atomic_dir` for ``force``)."""
    validate(ir, Path(out_dir) / "manifest.yaml")
    with atomic_dir(out_dir, force=force) as tmp:
        (tmp / "manifest.yaml").write_text(yaml.safe_dump(ir.to_manifest(), sort_keys=False))
        np.savez(tmp / "tensors.npz", **ir.tensors)
        if extra is not None:
            extra(tmp)


class _Fields:
    """Reads manifest fields and reports problems as '<file>: <where>: field <name>: expected ...'."""

    def __init__(self, path, where, mapping):
        self.path, self.where, self.mapping = path, where, mapping
        if not isinstance(mapping, dict):
            self.fail(None, "a mapping", mapping)

    def fail(self, name, expected, found):
        loc = f"{self.path}: {self.where}" + (f": field '{name}'" if name else "")
        raise UserError(f"{loc}: expected {expected}, found {found!r}")

    def get(self, name, kind, expected=None, default=_MISSING):
        if name not in self.mapping:
            if default is not _MISSING:
                return default
            raise UserError(f"{self.path}: {self.where}: field '{name}' is missing")
        value = self.mapping[name]
        ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
        if not ok:
            self.fail(name, expected or kind.__name__, value)
        return value

    def number(self, name):
        value = self.get(name, (int, float), "a finite number")
        if isinstance(value, bool) or not math.isfinite(value):
            self.fail(name, "a finite number", value)
        return float(value)

    def bits(self, name, top=MAX_BITS, expected=None):
        expected = expected or f"an integer in 1..{top}"
        value = self.get(name, int, expected)
        if not 1 <= value <= top:
            self.fail(name, expected, value)
        return value

    def positive(self, name, low=1):
        value = self.get(name, int, f"an integer >= {low}")
        if value < low:
            self.fail(name, f"an integer >= {low}", value)
        return value

    def shape(self, name):
        value = self.get(name, list, "a shape [n] or [c, h, w]")
        if len(value) not in (1, 3) or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1
                                               for v in value):
            self.fail(name, "a shape [n] or [c, h, w] of positive integers", value)
        return value


def _parse_layer(path, index, raw):
    f = _Fields(path, f"layers[{index}]", raw)
    name = f.get("name", str, NAME_EXPECTED)
    if not is_name(name) or name == "input":
        f.fail("name", NAME_EXPECTED + ", not 'input'", name)
    f.where = f"layer '{name}'"
    op = f.get("op", str)
    if op not in OPS:
        f.fail("op", f"one of {', '.join(OPS)}", op)
    inputs = f.get("inputs", list, "a list of layer names", default=None)
    if inputs is not None and not all(is_name(i) for i in inputs):
        f.fail("inputs", "a list of layer names", inputs)
    layer = Layer(name=name, op=op, inputs=inputs, in_shape=f.shape("in_shape"), out_shape=f.shape("out_shape"),
                  a_bits=f.bits("a_bits", MAX_A_BITS), a_signed=f.get("a_signed", bool), out_bits=f.get("out_bits", int),
                  out_signed=f.get("out_signed", bool))
    if op in WEIGHT_OPS:
        layer.w_bits = f.bits("w_bits", MAX_W_BITS)
        layer.w_grid = f.get("w_grid", str)
        if layer.w_grid not in W_GRIDS:
            f.fail("w_grid", f"one of {', '.join(W_GRIDS)}", layer.w_grid)
        layer.weights = f.get("weights", str, "a tensor name")
        ws = f.get("w_scale", (int, float, list), "a number or a list of numbers")
        values = ws if isinstance(ws, list) else [ws]
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values):
            f.fail("w_scale", "a finite number or a list of finite numbers", ws)
        layer.w_scale = ws if isinstance(ws, list) else float(ws)
    if op in ("conv2d", *POOL_OPS):
        layer.kernel = f.positive("kernel")
        layer.stride = f.positive("stride")
    if op == "conv2d":
        layer.padding = f.positive("padding", 0)
        layer.kernel_h = f.positive("kernel_h") if "kernel_h" in raw else None
        layer.padding_h = f.positive("padding_h", 0) if "padding_h" in raw else None
    if "xnor" in raw:
        _parse_xnor(f, layer)
    if op in (*WEIGHT_OPS, "add", "avgpool"):
        requant = _Fields(path, f"layer '{name}': requant", f.get("requant", dict, "a mapping"))
        kind = requant.get("kind", str)
        allowed = REQUANT_KINDS if op in WEIGHT_OPS else REQUANT_KINDS[:2]
        if kind not in allowed:
            requant.fail("kind", f"one of {', '.join(allowed)}", kind)
        layer.requant_kind = kind
        layer.acc_bits = f.get("acc_bits", int, "an integer in 2..64")
        if not 2 <= layer.acc_bits <= 64:
            f.fail("acc_bits", "an integer in 2..64", layer.acc_bits)
        if kind != "bias":
            layer.out_bits = f.bits("out_bits", *out_bits_limit(op, kind))
        if kind == "thresholds":
            layer.thresholds = requant.get("thresholds", str, "a tensor name")
            layer.signs = requant.get("signs", str, "a tensor name", default=None)
        elif kind == "multiply_shift":
            layer.mult = requant.get("mult", str, "a tensor name")
            layer.offset = requant.get("offset", str, "a tensor name")
            layer.shift = requant.get("shift", int, f"an integer in 0..{MAX_SHIFT}")
            if not 0 <= layer.shift <= MAX_SHIFT:
                requant.fail("shift", f"an integer in 0..{MAX_SHIFT}", layer.shift)
            layer.deviations = requant.get("deviations", int, "a count >= 0", default=0)
            if layer.deviations < 0:
                requant.fail("deviations", "a count >= 0", layer.deviations)
        else:
            layer.bias = requant.get("bias", str, "a tensor name")
        layer.out_scale = requant.number("out_scale")
    return layer


def _parse_xnor(f, layer):
    """The binary encoding stated on an XNOR-popcount layer: checked, not configurable."""
    x = _Fields(f.path, f"{f.where}: xnor", f.get("xnor", dict, "a mapping"))
    if not layer.binary:
        f.fail("xnor", "no xnor field (only layers with 1-bit weights and bipolar inputs have one)",
               {k: x.mapping[k] for k in x.mapping})
    for key, value in XNOR_ENCODING.items():
        if x.get(key, type(value)) != value:
            x.fail(key, repr(value), x.mapping[key])
    if x.get("n", int, "the fan-in") != layer.fan_in:
        x.fail("n", f"{layer.fan_in} (the layer's fan-in)", x.mapping["n"])
    layer.xnor = True


def _tensor(path, tensors, layer, key, shape):
    where = f"{path}: layer '{layer.name}'"
    if key not in tensors:
        raise UserError(f"{where}: tensor '{key}' is missing from tensors.npz")
    t = tensors[key]
    if t.dtype.kind not in "iu":
        raise UserError(f"{where}: tensor '{key}': expected integers, found dtype {t.dtype}")
    if tuple(t.shape) != tuple(shape):
        raise UserError(f"{where}: tensor '{key}': expected shape {list(shape)}, found {list(t.shape)}")
    return t.astype(np.int64)


def _fail(where, name, expected, found):
    raise UserError(f"{where}: field '{name}': expected {expected}, found {found}")


def _expected_out_shape(layer, in_shape):
    """The output shape an op produces from ``in_shape`` (None where the op does not apply)."""
    if layer.op == "linear":
        return [layer.weight_shape()[0]] if len(in_shape) == 1 else None
    if layer.op == "flatten":
        return [math.prod(in_shape)]
    if len(in_shape) != 3:
        return None
    c, h, w = in_shape
    if layer.op == "add":
        return list(in_shape)
    if layer.op in POOL_OPS:
        return [c, conv_out_side(h, layer.kernel, layer.stride, 0), conv_out_side(w, layer.kernel, layer.stride, 0)]
    (kh, kw), (ph, pw) = layer.kernel_hw, layer.padding_hw
    return [layer.out_shape[0], conv_out_side(h, kh, layer.stride, ph), conv_out_side(w, kw, layer.stride, pw)]


def input_codes(ir, layer):
    """(bits, signed) of each input of ``layer``, in order."""
    produced = {"input": (ir.input_bits, ir.input_signed)}
    for la, names in ir.wired():
        if la is layer:
            return [produced[n] for n in names]
        produced[la.name] = (la.out_bits, la.out_signed)
    raise ValueError(f"layer {layer.name!r} is not in this IR")


def accumulator_bounds(ir, layer):
    """Proven per-channel (lo, hi) of a weight, add or avgpool layer's accumulator."""
    ranges = [code_range(b, g) for b, g in input_codes(ir, layer)]
    c = layer.channels
    if layer.op == "add":
        return np.full(c, ranges[0][0] + ranges[1][0]), np.full(c, ranges[0][1] + ranges[1][1])
    if layer.op == "avgpool":
        k2 = layer.kernel * layer.kernel
        return np.full(c, k2 * ranges[0][0]), np.full(c, k2 * ranges[0][1])
    w = ir.tensors[layer.weights].astype(np.int64)
    return accumulator_range(w.reshape(len(w), -1), *ranges[0])


def requant_thresholds(ir, layer):
    """(thresholds, signs) of a thresholds or multiply-shift requantization, clipped to the proven
    accumulator range: the comparator form of either (the same integer function)."""
    lo, hi = accumulator_bounds(ir, layer)
    return thresholds_of(layer.requant_kind, ir.tensors, layer.n_levels, lo, hi, thresholds=layer.thresholds,
                         signs=layer.signs, mult=layer.mult, offset=layer.offset, shift=layer.shift)


def validate(ir, path, *, logits=True):
    """Check shapes, ranges and the chain of bitwidths; raise UserError on the first problem.
    ``logits``: the last layer must produce logits (a whole network; False for a lone layer)."""
    produced = {"input": (list(ir.input_shape), ir.input_bits, ir.input_signed)}
    for i, (layer, inputs) in enumerate(ir.wired()):
        if not is_name(layer.name) or layer.name == "input":
            _fail(f"{path}: layers[{i}]", "name", NAME_EXPECTED + ", not 'input'", repr(layer.name))
        where = f"{path}: layer '{layer.name}'"
        if layer.name in produced:
            _fail(where, "name", "a name no other layer has", repr(layer.name))
        if len(inputs) != (2 if layer.op == "add" else 1):
            _fail(where, "inputs", f"{2 if layer.op == 'add' else 1} layer name(s)", inputs)
        for name in inputs:
            if name not in produced:
                _fail(where, "inputs", "names of earlier layers (or 'input')", name)
        shape, bits, signed = produced[inputs[0]]
        if list(layer.in_shape) != list(shape):
            _fail(where, "in_shape", f"{shape} (the output of '{inputs[0]}')", list(layer.in_shape))
        if (layer.a_bits, layer.a_signed) != (bits, signed):
            _fail(where, "a_bits", f"{bits} bits {'signed' if signed else 'unsigned'} (the output of "
                  f"'{inputs[0]}')", f"{layer.a_bits} bits {'signed' if layer.a_signed else 'unsigned'}")
        want = _expected_out_shape(layer, shape)
        if want is None or list(layer.out_shape) != want or min(want) < 1:
            _fail(where, "out_shape", want if want and min(want) >= 1 else f"an input shape that {layer.op} "
                  f"accepts (input is {shape})", list(layer.out_shape))
        last = i == len(ir.layers) - 1
        if layer.op in ("maxpool", "flatten"):
            if (layer.out_bits, layer.out_signed) != (bits, signed):
                _fail(where, "out_bits", f"{bits} (maxpool and flatten keep the codes)", layer.out_bits)
        elif layer.op == "add":
            _check_add(ir, path, where, layer, produced, inputs)
        elif layer.op == "avgpool":
            lo, hi = code_range(bits, signed)
            _check_requant(ir, path, where, layer, lo * layer.kernel ** 2, hi * layer.kernel ** 2)
        else:
            _check_weight_layer(ir, path, where, layer, last)
        produced[layer.name] = (list(layer.out_shape), layer.out_bits, layer.out_signed)
    last = ir.layers[-1]
    if logits and last.requant_kind != "bias":
        _fail(f"{path}: layer '{last.name}'", "requant.kind", "bias (the last layer produces logits)",
              repr(last.requant_kind))


def out_bits_limit(op, kind):
    """(most output bits, what is expected) of a requantization ``kind`` of an ``op`` layer: a weight layer's
    multiply-shift makes codes of up to 16 bits; thresholds, and an add's or a pool's requantization (built as
    comparators), 2^bits - 1 per channel, stop at 8."""
    if kind == "multiply_shift" and op in WEIGHT_OPS:
        return MAX_A_BITS, f"an integer in 1..{MAX_A_BITS}"
    return MAX_BITS, (f"an integer in 1..{MAX_BITS} (2^bits - 1 thresholds or comparators per channel; above "
                      f"{MAX_BITS} bits only a weight layer's multiply_shift)")


def _check_requant(ir, path, where, layer, acc_lo, acc_hi):
    top, expected = out_bits_limit(layer.op, layer.requant_kind)
    if not 1 <= layer.out_bits <= top:
        _fail(where, "out_bits", expected, layer.out_bits)
    need = range_bits(np.min(acc_lo), np.max(acc_hi))
    if layer.acc_bits < need:
        raise UserError(f"{where}: field 'acc_bits': {layer.acc_bits} can overflow; these inputs need {need}")
    if layer.requant_kind == "multiply_shift":
        m = _tensor(path, ir.tensors, layer, layer.mult, (layer.channels,))
        b = _tensor(path, ir.tensors, layer, layer.offset, (layer.channels,))
        if (m == 0).any():
            raise UserError(f"{where}: tensor '{layer.mult}'[{int(np.argmax(m == 0))}] = 0: expected a non-zero "
                            "multiplier")
        worst = max(abs(int(np.min(acc_lo))), abs(int(np.max(acc_hi)))) * int(np.abs(m).max()) + int(np.abs(b).max())
        if worst >= PRODUCT_LIMIT:
            raise UserError(f"{where}: tensor '{layer.mult}': acc * mult + offset can reach {worst}, beyond 2^62")
        return
    t = _tensor(path, ir.tensors, layer, layer.thresholds, (layer.channels, layer.n_levels - 1))
    if (np.diff(t, axis=1) < 0).any():
        o = int(np.argwhere(np.diff(t, axis=1) < 0)[0][0])
        raise UserError(f"{where}: tensor '{layer.thresholds}' row {o} is not non-decreasing")
    if layer.signs is not None:
        s = _tensor(path, ir.tensors, layer, layer.signs, (layer.channels,))
        if not np.isin(s, (-1, 1)).all():
            raise UserError(f"{where}: tensor '{layer.signs}': expected only -1 and +1")


def _check_add(ir, path, where, layer, produced, inputs):
    (s0, b0, g0), (s1, b1, g1) = produced[inputs[0]], produced[inputs[1]]
    if list(s0) != list(s1):
        _fail(where, "inputs", f"two inputs of one shape, '{inputs[0]}' is {s0}", f"'{inputs[1]}' {s1}")
    (lo0, hi0), (lo1, hi1) = code_range(b0, g0), code_range(b1, g1)
    _check_requant(ir, path, where, layer, lo0 + lo1, hi0 + hi1)


def _check_weight_layer(ir, path, where, layer, last):
    if layer.binary and not layer.xnor:
        raise UserError(f"{where}: field 'xnor' is missing (a layer with 1-bit weights and bipolar inputs "
                        f"states its XNOR-popcount encoding: {dict(XNOR_ENCODING, n=layer.fan_in)})")
    w = _tensor(path, ir.tensors, layer, layer.weights, layer.weight_shape())
    lo, hi = weight_codes(layer.w_bits, layer.w_grid)
    odd = layer.w_grid == "odd" or layer.w_bits == 1
    bad = (w < lo) | (w > hi) | ((w % 2 == 0) if odd else False)
    if bad.any():
        idx = tuple(int(v) for v in np.argwhere(bad)[0])
        expected = (f"an odd integer in {lo}..{hi}" if layer.w_bits > 1 else "-1 or +1") if odd else f"{lo}..{hi}"
        raise UserError(f"{where}: tensor '{layer.weights}'{list(idx)} = {w[idx]} is not a {layer.w_bits}-bit "
                        f"{layer.w_grid}-grid weight (expected {expected})")
    if layer.requant_kind is None:
        _fail(where, "requant", "a requantization for a weight layer", None)
    a_lo, a_hi = code_range(layer.a_bits, layer.a_signed)
    acc_lo, acc_hi = accumulator_range(w.reshape(w.shape[0], -1), a_lo, a_hi)
    if layer.requant_kind != "bias":
        _check_requant(ir, path, where, layer, acc_lo, acc_hi)
        return
    need = range_bits(acc_lo.min(), acc_hi.max())
    if layer.acc_bits < need:
        raise UserError(f"{where}: field 'acc_bits': {layer.acc_bits} can overflow; these weights need {need}")
    if not last:
        _fail(where, "requant.kind", "thresholds or multiply_shift (only the last layer produces logits)",
              repr(layer.requant_kind))
    b = _tensor(path, ir.tensors, layer, layer.bias, (layer.channels,))
    need_out = signed_width(int((acc_lo + b).min()), int((acc_hi + b).max()))
    if layer.out_bits < need_out:
        raise UserError(f"{where}: field 'out_bits': {layer.out_bits} cannot hold the logits; need {need_out}")


def load_ir(ir_dir):
    """Load and validate an IR directory."""
    ir_dir = Path(ir_dir)
    manifest_path, tensors_path = ir_dir / "manifest.yaml", ir_dir / "tensors.npz"
    if not ir_dir.is_dir():
        raise UserError(f"{ir_dir}: IR directory not found (make one with `hwq export RUN --out {ir_dir}`)")
    for p in (manifest_path, tensors_path):
        if not p.is_file():
            raise UserError(f"{p}: missing; is {ir_dir} an IR directory from `hwq export`?")
    raw = read_yaml(manifest_path)
    top = _Fields(manifest_path, "top level", raw)
    fmt = top.get("format", str, f"'{IR_FORMAT}'")
    if fmt != IR_FORMAT:
        top.fail("format", f"'{IR_FORMAT}'", fmt)
    inp = _Fields(manifest_path, "input", top.get("input", dict, "a mapping"))
    raw_layers = top.get("layers", list, "a list of layers")
    if not raw_layers:
        top.fail("layers", "at least one layer", raw_layers)
    try:
        with np.load(io.BytesIO(tensors_path.read_bytes()), allow_pickle=False) as npz:
            tensors = {k: npz[k] for k in npz.files}
    except (ValueError, OSError, EOFError) as exc:
        raise UserError(f"{tensors_path}: not a readable .npz file ({exc})") from None
    ir = IR(
        model=top.get("model", str),
        dataset=top.get("dataset", str),
        method=top.get("method", str),
        input_shape=inp.shape("shape"),
        input_bits=inp.bits("bits", MAX_A_BITS),
        input_signed=inp.get("signed", bool),
        input_scale=float(inp.get("scale", (int, float), "a number")),
        layers=[_parse_layer(manifest_path, i, r) for i, r in enumerate(raw_layers)],
        tensors=tensors,
    )
    if not math.isfinite(ir.input_scale) or ir.input_scale <= 0:
        inp.fail("scale", "a positive number", ir.input_scale)
    names = [layer.name for layer in ir.layers]
    if len(set(names)) != len(names) or "input" in names:
        top.fail("layers", "unique layer names other than 'input'", names)
    validate(ir, manifest_path)
    return ir
