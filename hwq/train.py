"""Quantization-aware training: a float warm-up, then one of the methods of :mod:`hwq.methods`.

``train(TrainConfig(...), out_dir)`` writes ``out_dir/checkpoint.pt`` (config + state dict),
``out_dir/metrics.json`` (float and fake-quant test accuracy, timings) and ``out_dir/bits.yaml`` (the
per-layer bits used; for SINAREQ with learned bits, the learned ones). Deterministic for a given
``seed`` on a given machine and thread count.
"""

import os
import random
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from .config import FIRST_LAST, TrainConfig, parse_bits
from .custom import is_builder_ref, record, spec_names
from .data import load_dataset
from .errors import UserError
from .fileio import atomic_path, read_yaml, write_json, write_yaml
from .methods import METHODS, Fitter, accuracy, quantizer_names, run_method
from .models import MODELS, NetConfig, QuantNet, build_model, layer_names
from .progress import progress_bar

__all__ = ["BITS_FORMAT", "FIRST_LAST", "METHODS", "MODELS", "RUN_FORMAT", "TrainConfig", "load_bits_file",
           "load_run", "parse_bits", "pretrain", "resolve_bits", "train"]

RUN_FORMAT = "hwq-run/2"
BITS_FORMAT = "hwq-bits/1"


def load_bits_file(path, names):
    """Read a ``bits.yaml`` (``format: hwq-bits/1``, ``layers: {name: {w_bits, a_bits}}``).

    Returns {name: (w_bits, a_bits)} for the layers it names; raises UserError naming the file and field.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: bits file not found")
    raw = read_yaml(path)
    if not isinstance(raw, dict) or raw.get("format") != BITS_FORMAT:
        found = raw.get("format") if isinstance(raw, dict) else raw
        raise UserError(f"{path}: field 'format': expected {BITS_FORMAT!r}, found {found!r}")
    layers = raw.get("layers")
    if not isinstance(layers, dict):
        raise UserError(f"{path}: field 'layers': expected a mapping of layer name to bits, found {layers!r}")
    out = {}
    for name, entry in layers.items():
        if name not in names:
            raise UserError(f"{path}: layers: unknown layer {name!r}; this model has {', '.join(names)}")
        if not isinstance(entry, dict):
            raise UserError(f"{path}: layers.{name}: expected {{w_bits: W, a_bits: A}}, found {entry!r}")
        bits = []
        for key in ("w_bits", "a_bits"):
            value = entry.get(key)
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 8:
                raise UserError(f"{path}: layers.{name}.{key}: expected an integer in 1..8, found {value!r}")
            bits.append(value)
        out[name] = tuple(bits)
    return out


def resolve_bits(cfg, names, input_bits):
    """Per-layer (w_bits, a_bits) lists from --bits, --bits-file and the first/last-layer policy.

    ``a_bits[i]`` is the bits of layer i's input; the first layer's input is the dataset's codes.
    """
    w = [cfg.w_bits] * len(names)
    a = [input_bits] + [cfg.a_bits] * (len(names) - 1)
    if cfg.first_last == "8":
        w[0] = w[-1] = 8
        if len(names) > 1:
            a[-1] = 8
    if cfg.bits_file:
        for name, (wb, ab) in load_bits_file(cfg.bits_file, names).items():
            i = names.index(name)
            w[i] = wb
            if i == 0 and ab != input_bits:
                raise UserError(f"{cfg.bits_file}: layers.{name}.a_bits: the first layer reads the "
                                f"dataset's {input_bits}-bit codes, found {ab}")
            a[i] = ab
    return w, a


def train_threads():
    """Threads torch trains with: 1 unless ``HWQ_TRAIN_THREADS`` says otherwise. With more threads, torch's
    parallel reductions add in an order that depends on the thread count, so weights trained on a 2-core
    and a 4-core machine would differ; with one they are bit-identical."""
    text = os.environ.get("HWQ_TRAIN_THREADS", "1")
    if not text.isdigit() or int(text) < 1:
        raise UserError(f"HWQ_TRAIN_THREADS: expected a positive integer, found {text!r}")
    return int(text)


def _seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(train_threads())


def _net_config(cfg, data, built=None):
    """The NetConfig of ``cfg`` on ``data``; ``built``: (spec, input shape) of a custom network already
    recorded (:func:`hwq.custom.record`), else ``cfg.model`` says which."""
    if cfg.model in ("cnn", "resnet") and min(data.image_shape[1:]) < 4:
        raise UserError(f"--model {cfg.model}: its 3x3 convolutions and two 2x2 poolings need images of at least "
                        f"4x4; {data.name} samples are {'x'.join(map(str, data.image_shape[1:]))} (use --model mlp, "
                        f"or cnn1d for 1-D signals)")
    if cfg.model == "cnn1d" and (data.image_shape[1] != 1 or data.image_shape[2] < 5):
        raise UserError(f"--model cnn1d: takes 1-D signals (C x 1 x L, L >= 5, e.g. --dataset mnist1d); {data.name} "
                        f"samples are {'x'.join(map(str, data.image_shape))}")
    spec = None
    if built is not None or is_builder_ref(cfg.model):
        spec, in_shape = built or record(cfg.model, list(data.image_shape), data.n_classes,
                                         where=f"--model {cfg.model}")
        names = spec_names(spec)
    else:
        in_shape = [data.in_features] if cfg.model == "mlp" else list(data.image_shape)
        names = layer_names(cfg.model, len(cfg.hidden))
    w_bits, a_bits = resolve_bits(cfg, names, data.input_bits)
    wq, aq, pc = quantizer_names(cfg.method, w_bits, a_bits)
    return NetConfig(model="custom" if spec else cfg.model, spec=spec, in_shape=in_shape, n_classes=data.n_classes, input_bits=data.input_bits,
                     input_scale=data.input_scale, input_signed=data.input_signed, hidden=list(cfg.hidden),
                     channels=list(cfg.channels), w_bits=w_bits, a_bits=a_bits, wq=wq, aq=aq, per_channel=pc)


def pretrain(cfg, data=None, *, tick=None):
    """Train the float network (the same for every method); return (float state dict, test accuracy)."""
    _seed_everything(cfg.seed)
    data = data or load_dataset(cfg.dataset)
    model = QuantNet(_net_config(cfg, data))
    fitter = _fitter(cfg, data)
    fitter.fit(model, cfg.epochs_float, cfg.lr_float, tick=tick)
    return _float_state(model), accuracy(model, *_test(data))


def _float_state(model):
    """The float parameters and batch-norm statistics (no quantizer state)."""
    keep = {}
    for name, t in model.state_dict().items():
        leaf = name.rsplit(".", 1)[-1]
        if ".bn." in name or (leaf in ("weight", "bias") and ".wq." not in name and ".out_q." not in name):
            keep[name] = t.clone()
    return keep


def _fitter(cfg, data):
    gen = torch.Generator().manual_seed(cfg.seed)
    return Fitter(torch.from_numpy(data.x_train), torch.from_numpy(data.y_train), cfg.batch_size, gen)


def _test(data):
    return torch.from_numpy(data.x_test), torch.from_numpy(data.y_test)


def train(cfg: TrainConfig, out_dir, *, show_progress=True, float_state=None, data=None):
    """Train a quantized model and write the run directory; return the metrics dict.

    ``float_state`` = (state dict, accuracy) from :func:`pretrain` skips the float warm-up (benchmarks
    share one per seed).
    """
    t0 = time.perf_counter()
    data = data or load_dataset(cfg.dataset)
    ticks = (0 if float_state else cfg.epochs_float) + cfg.epochs_qat
    with progress_bar(f"train {cfg.model}/{cfg.method} epoch", total=ticks, enabled=show_progress, lines=True) as tick:
        if float_state is None:
            float_state = pretrain(cfg, data, tick=tick)
        _seed_everything(cfg.seed)
        model = QuantNet(_net_config(cfg, data))
        model.load_state_dict(float_state[0], strict=False)
        info = run_method(cfg.method, model, _fitter(cfg, data), cfg, tick)
    model.quantized = True
    acc_fq = accuracy(model, *_test(data))
    mcfg = model.config
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    checkpoint = {"format": RUN_FORMAT, "config": mcfg.to_dict(), "train": asdict(cfg),
                  "state_dict": model.state_dict()}
    with atomic_path(out_dir / "checkpoint.pt") as tmp:
        torch.save(checkpoint, tmp)
    bits = {"format": BITS_FORMAT, "layers": {n: {"w_bits": w, "a_bits": a}
                                             for n, w, a in zip(mcfg.names, mcfg.w_bits, mcfg.a_bits, strict=True)}}
    write_yaml(out_dir / "bits.yaml", bits)
    metrics = {
        "format": RUN_FORMAT,
        "model": cfg.model,
        "dataset": cfg.dataset,
        "method": cfg.method,
        "w_bits": mcfg.w_bits,
        "a_bits": mcfg.a_bits,
        "seed": cfg.seed,
        "accuracy": {"float": float_state[1], "fake_quant": acc_fq},
        "test_samples": len(data.y_test),
        "train_seconds": round(time.perf_counter() - t0, 3),
        **info,
    }
    write_json(out_dir / "metrics.json", metrics)
    return metrics


def load_run(run_dir):
    """Load a run directory written by :func:`train`; return (model, checkpoint dict).

    Raises UserError naming the file when the directory or checkpoint is missing or unreadable.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: run directory not found (make one with `hwq train --out {run_dir}`)")
    path = run_dir / "checkpoint.pt"
    if not path.is_file():
        raise UserError(f"{path}: checkpoint missing; is {run_dir} a run directory from `hwq train`?")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many kinds for a corrupt file
        raise UserError(f"{path}: not a readable hwq checkpoint ({type(exc).__name__})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != RUN_FORMAT:
        found = ckpt.get("format") if isinstance(ckpt, dict) else type(ckpt).__name__
        raise UserError(f"{path}: field 'format': expected {RUN_FORMAT!r}, found {found!r}")
    try:
        model = build_model(ckpt["config"])
        model.load_state_dict(ckpt["state_dict"])
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise UserError(f"{path}: checkpoint does not match its config ({exc})") from None
    model.quantized = True
    model.eval()
    return model, ckpt
