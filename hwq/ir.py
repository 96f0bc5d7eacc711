"""The integer IR: ``manifest.yaml`` (structure, bits) + ``tensors.npz`` (integers). See docs/formats.md.

The IR is the contract between training and hardware: ``rtl_gen`` and ``sim`` read only this. Loading
validates every field and tensor and raises :class:`~hwq.errors.UserError` naming the file, the layer
and the field.
"""

import io
import math
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from .errors import UserError
from .golden import accumulator_range
from .intrange import max_int, min_int, signed_width, weight_range

__all__ = ["IR", "IR_FORMAT", "Layer", "atomic_dir", "load_ir", "save_ir"]

IR_FORMAT = "hwq-ir/1"
OPS = ("linear",)
REQUANT_KINDS = ("thresholds", "bias")


@dataclass
class Layer:
    name: str
    op: str
    in_features: int
    out_features: int
    w_bits: int
    a_bits: int
    a_signed: bool
    out_bits: int
    out_signed: bool
    acc_bits: int
    weights: str  # key in tensors
    requant_kind: str  # "thresholds" (hidden layers) or "bias" (logits)
    thresholds: str | None = None
    bias: str | None = None
    w_scale: float = 1.0  # informational: real value of one weight step
    out_scale: float = 1.0  # informational: real value of one output step

    def to_manifest(self):
        requant = {"kind": self.requant_kind, "out_scale": self.out_scale}
        if self.requant_kind == "thresholds":
            requant["thresholds"] = self.thresholds
        else:
            requant["bias"] = self.bias
        return {
            "name": self.name,
            "op": self.op,
            "in_shape": [self.in_features],
            "out_shape": [self.out_features],
            "w_bits": self.w_bits,
            "a_bits": self.a_bits,
            "a_signed": self.a_signed,
            "out_bits": self.out_bits,
            "out_signed": self.out_signed,
            "acc_bits": self.acc_bits,
            "weights": self.weights,
            "w_scale": self.w_scale,
            "requant": requant,
        }


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
        return int(self.input_shape[0])

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


@contextmanager
def atomic_dir(path):
    """Yield a temporary directory; on success it replaces ``path`` whole, on failure it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        yield tmp
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


def save_ir(ir, out_dir):
    """Write ``manifest.yaml`` and ``tensors.npz``; the directory appears whole or not at all."""
    validate(ir, Path(out_dir) / "manifest.yaml")
    with atomic_dir(out_dir) as tmp:
        (tmp / "manifest.yaml").write_text(yaml.safe_dump(ir.to_manifest(), sort_keys=False))
        np.savez(tmp / "tensors.npz", **ir.tensors)


class _Fields:
    """Reads manifest fields and reports problems as '<file>: <where>: field <name>: expected ...'."""

    def __init__(self, path, where, mapping):
        self.path, self.where, self.mapping = path, where, mapping
        if not isinstance(mapping, dict):
            self.fail(None, "a mapping", mapping)

    def fail(self, name, expected, found):
        loc = f"{self.path}: {self.where}" + (f": field '{name}'" if name else "")
        raise UserError(f"{loc}: expected {expected}, found {found!r}")

    def get(self, name, kind, expected=None):
        if name not in self.mapping:
            loc = f"{self.path}: {self.where}"
            raise UserError(f"{loc}: field '{name}' is missing")
        value = self.mapping[name]
        ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
        if not ok:
            self.fail(name, expected or kind.__name__, value)
        return value

    def bits(self, name):
        value = self.get(name, int, "an integer in 1..8")
        if not 1 <= value <= 8:
            self.fail(name, "an integer in 1..8", value)
        return value

    def shape1(self, name):
        value = self.get(name, list, "a shape [n]")
        if len(value) != 1 or not isinstance(value[0], int) or value[0] < 1:
            self.fail(name, "a shape [n] with n >= 1", value)
        return value


def _parse_layer(path, index, raw):
    f = _Fields(path, f"layers[{index}]", raw)
    name = f.get("name", str, "a layer name")
    f.where = f"layer '{name}'"
    op = f.get("op", str)
    if op not in OPS:
        f.fail("op", f"one of {', '.join(OPS)}", op)
    requant = _Fields(path, f"layer '{name}': requant", f.get("requant", dict, "a mapping"))
    kind = requant.get("kind", str)
    if kind not in REQUANT_KINDS:
        requant.fail("kind", f"one of {', '.join(REQUANT_KINDS)}", kind)
    acc_bits = f.get("acc_bits", int, "an integer in 2..64")
    if not 2 <= acc_bits <= 64:
        f.fail("acc_bits", "an integer in 2..64", acc_bits)
    out_bits = f.bits("out_bits") if kind == "thresholds" else f.get("out_bits", int)
    return Layer(
        name=name,
        op=op,
        in_features=f.shape1("in_shape")[0],
        out_features=f.shape1("out_shape")[0],
        w_bits=f.bits("w_bits"),
        a_bits=f.bits("a_bits"),
        a_signed=f.get("a_signed", bool),
        out_bits=out_bits,
        out_signed=f.get("out_signed", bool),
        acc_bits=acc_bits,
        weights=f.get("weights", str, "a tensor name"),
        requant_kind=kind,
        thresholds=requant.get("thresholds", str, "a tensor name") if kind == "thresholds" else None,
        bias=requant.get("bias", str, "a tensor name") if kind == "bias" else None,
        w_scale=float(f.get("w_scale", (int, float), "a number")),
        out_scale=float(requant.get("out_scale", (int, float), "a number")),
    )


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


def validate(ir, path):
    """Check shapes, ranges and the chain of bitwidths; raise UserError on the first problem."""
    prev_features, prev_bits, prev_signed = ir.in_features, ir.input_bits, ir.input_signed
    for i, layer in enumerate(ir.layers):
        where = f"{path}: layer '{layer.name}'"
        if layer.in_features != prev_features:
            raise UserError(f"{where}: field 'in_shape': expected [{prev_features}] (previous output), "
                            f"found [{layer.in_features}]")
        if (layer.a_bits, layer.a_signed) != (prev_bits, prev_signed):
            raise UserError(f"{where}: field 'a_bits': expected {prev_bits} (previous output bits), "
                            f"found {layer.a_bits}")
        last = i == len(ir.layers) - 1
        if (layer.requant_kind == "bias") != last:
            raise UserError(f"{where}: field 'requant.kind': expected "
                            f"{'bias (logits layer)' if last else 'thresholds'}, found {layer.requant_kind!r}")
        w = _tensor(path, ir.tensors, layer, layer.weights, (layer.out_features, layer.in_features))
        lo, hi = weight_range(layer.w_bits)
        bad = (w < lo) | (w > hi) | ((w == 0) if layer.w_bits == 1 else False)
        if bad.any():
            o, j = np.argwhere(bad)[0]
            raise UserError(f"{where}: tensor '{layer.weights}'[{o}, {j}] = {w[o, j]} is not a "
                            f"{layer.w_bits}-bit weight (expected {'-1 or +1' if layer.w_bits == 1 else f'{lo}..{hi}'})")
        a_lo, a_hi = min_int(layer.a_bits, layer.a_signed), max_int(layer.a_bits, layer.a_signed)
        acc_lo, acc_hi = accumulator_range(w, a_lo, a_hi)
        need = signed_width(min(acc_lo.min(), 0), max(acc_hi.max(), 0))
        if layer.acc_bits < need:
            raise UserError(f"{where}: field 'acc_bits': {layer.acc_bits} can overflow; these weights need {need}")
        if layer.requant_kind == "thresholds":
            n_levels = max_int(layer.out_bits, False)
            t = _tensor(path, ir.tensors, layer, layer.thresholds, (layer.out_features, n_levels))
            if (np.diff(t, axis=1) < 0).any():
                o = int(np.argwhere(np.diff(t, axis=1) < 0)[0][0])
                raise UserError(f"{where}: tensor '{layer.thresholds}' row {o} is not non-decreasing")
        else:
            b = _tensor(path, ir.tensors, layer, layer.bias, (layer.out_features,))
            need_out = signed_width(int((acc_lo + b).min()), int((acc_hi + b).max()))
            if layer.out_bits < need_out:
                raise UserError(f"{where}: field 'out_bits': {layer.out_bits} cannot hold the logits; need {need_out}")
        prev_features, prev_bits, prev_signed = layer.out_features, layer.out_bits, layer.out_signed


def load_ir(ir_dir):
    """Load and validate an IR directory."""
    ir_dir = Path(ir_dir)
    manifest_path, tensors_path = ir_dir / "manifest.yaml", ir_dir / "tensors.npz"
    if not ir_dir.is_dir():
        raise UserError(f"{ir_dir}: IR directory not found (make one with `hwq export RUN --out {ir_dir}`)")
    for p in (manifest_path, tensors_path):
        if not p.is_file():
            raise UserError(f"{p}: missing; is {ir_dir} an IR directory from `hwq export`?")
    try:
        raw = yaml.safe_load(manifest_path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark else ""
        raise UserError(f"{manifest_path}: not valid YAML{at}") from None
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
        input_shape=inp.shape1("shape"),
        input_bits=inp.bits("bits"),
        input_signed=inp.get("signed", bool),
        input_scale=float(inp.get("scale", (int, float), "a number")),
        layers=[_parse_layer(manifest_path, i, r) for i, r in enumerate(raw_layers)],
        tensors=tensors,
    )
    if not math.isfinite(ir.input_scale) or ir.input_scale <= 0:
        inp.fail("scale", "a positive number", ir.input_scale)
    names = [layer.name for layer in ir.layers]
    if len(set(names)) != len(names):
        top.fail("layers", "unique layer names", names)
    validate(ir, manifest_path)
    return ir
