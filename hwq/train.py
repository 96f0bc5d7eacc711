"""Quantization-aware training: a float warm-up, then LSQ fake-quant training with the STE.

``train(TrainConfig(...), out_dir)`` writes ``out_dir/checkpoint.pt`` (config + state dict) and
``out_dir/metrics.json`` (float and fake-quant test accuracy, timings). Deterministic for a given
``seed`` on a given machine and thread count.
"""

import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .data import load_dataset
from .errors import UserError
from .fileio import atomic_path, write_json
from .intrange import check_bits
from .models import MLPConfig, QuantMLP, build_model
from .progress import progress_bar

__all__ = ["RUN_FORMAT", "TrainConfig", "load_run", "parse_bits", "train"]

RUN_FORMAT = "hwq-run/1"
METHODS = ("lsq",)
MODELS = ("mlp",)


def parse_bits(text):
    """Parse ``--bits W/A`` into (w_bits, a_bits), each 1..8; raise ValueError otherwise.

    >>> parse_bits("2/2")
    (2, 2)
    """
    parts = str(text).split("/")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise ValueError(f"expected W/A with integers in 1..8 (e.g. 2/2), not {text!r}")
    w, a = (int(p) for p in parts)
    for name, value in (("weight", w), ("activation", a)):
        try:
            check_bits(value)
        except ValueError:
            raise ValueError(f"{name} bits must be in 1..8, not {value} (in {text!r})") from None
    return w, a


@dataclass
class TrainConfig:
    model: str = "mlp"
    dataset: str = "digits"
    method: str = "lsq"
    w_bits: int = 2
    a_bits: int = 2
    hidden: tuple = (32, 16)
    epochs_float: int = 40
    epochs_qat: int = 100
    batch_size: int = 64
    lr_float: float = 1e-2
    lr_qat: float = 5e-3
    seed: int = 0

    def __post_init__(self):
        if self.model not in MODELS:
            raise UserError(f"--model: unknown model {self.model!r}; known models: {', '.join(MODELS)}")
        if self.method not in METHODS:
            raise UserError(f"--method: unknown method {self.method!r}; known methods: {', '.join(METHODS)}")
        for name in ("epochs_float", "epochs_qat", "batch_size"):
            if getattr(self, name) < (1 if name == "batch_size" else 0):
                raise UserError(f"--{name.replace('_', '-')} must be positive, not {getattr(self, name)}")


def _seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)


def _batches(n, batch_size, generator):
    order = torch.randperm(n, generator=generator)
    for start in range(0, n, batch_size):
        yield order[start : start + batch_size]


@torch.no_grad()
def accuracy(model, x, y):
    model.eval()
    return int((model(x).argmax(1) == y).sum()) / len(y)


def _fit(model, x, y, epochs, lr, batch_size, generator, tick):
    if epochs == 0:
        return
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    steps = epochs * math.ceil(len(x) / batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    for _ in range(epochs):
        model.train()
        for idx in _batches(len(x), batch_size, generator):
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        tick()


def _init_quantizers(model, x_calib):
    for layer in model.layers:
        layer.w_quant.init_step(layer.linear.weight)
    for act, h in zip(model.acts, model.hidden_activations(x_calib), strict=True):
        act.init_step(h)


def train(cfg: TrainConfig, out_dir, *, show_progress=True):
    """Train a quantized model and write the run directory; return the metrics dict."""
    _seed_everything(cfg.seed)
    t0 = time.perf_counter()
    data = load_dataset(cfg.dataset)
    n_layers = len(cfg.hidden) + 1
    mcfg = MLPConfig(
        in_features=data.in_features,
        hidden=list(cfg.hidden),
        n_classes=data.n_classes,
        input_bits=data.input_bits,
        input_scale=data.input_scale,
        w_bits=[cfg.w_bits] * n_layers,
        a_bits=[data.input_bits] + [cfg.a_bits] * (n_layers - 1),
    )
    model = QuantMLP(mcfg)
    x_tr, y_tr = torch.from_numpy(data.x_train), torch.from_numpy(data.y_train)
    x_te, y_te = torch.from_numpy(data.x_test), torch.from_numpy(data.y_test)
    gen = torch.Generator().manual_seed(cfg.seed)

    with progress_bar("train", total=cfg.epochs_float + cfg.epochs_qat, enabled=show_progress) as tick:
        _fit(model, x_tr, y_tr, cfg.epochs_float, cfg.lr_float, cfg.batch_size, gen, tick)
        acc_float = accuracy(model, x_te, y_te)
        _init_quantizers(model, x_tr)
        model.quantized = True
        _fit(model, x_tr, y_tr, cfg.epochs_qat, cfg.lr_qat, cfg.batch_size, gen, tick)
    acc_fq = accuracy(model, x_te, y_te)

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    checkpoint = {"format": RUN_FORMAT, "config": mcfg.to_dict(), "train": asdict(cfg),
                  "state_dict": model.state_dict()}
    with atomic_path(out_dir / "checkpoint.pt") as tmp:
        torch.save(checkpoint, tmp)
    metrics = {
        "format": RUN_FORMAT,
        "model": cfg.model,
        "dataset": cfg.dataset,
        "method": cfg.method,
        "w_bits": mcfg.w_bits,
        "a_bits": mcfg.a_bits,
        "seed": cfg.seed,
        "accuracy": {"float": acc_float, "fake_quant": acc_fq},
        "test_samples": len(y_te),
        "train_seconds": round(time.perf_counter() - t0, 3),
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
