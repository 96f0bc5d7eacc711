"""What a training run is configured by, without importing PyTorch: the command line and the flow's
checks read it before anything is trained (``hwq --help`` and a reused run stay quick)."""

from dataclasses import dataclass

from .custom import is_builder_ref
from .errors import UserError
from .intrange import check_bits

__all__ = ["FIRST_LAST", "METHODS", "MODELS", "NBN_VARIANTS", "NET_MODELS", "SENSITIVITY_METHODS", "TrainConfig", "parse_bits"]

METHODS = ("lsq", "uniq", "dorefa", "pact", "xnor", "sinareq", "tsq", "nbn")
NBN_VARIANTS = ("nbn", "direct", "layer")
MODELS = ("mlp", "cnn", "resnet", "cnn1d")
NET_MODELS = (*MODELS, "custom")  # what a NetConfig may hold: the bundled models, or a recorded custom one
FIRST_LAST = ("same", "8")
SENSITIVITY_METHODS = ("loss", "hessian")  # hwq allocate --sensitivity (hwq/sensitivity.py)


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
    bits_file: str | None = None
    first_last: str = "same"  # "8": first and last layer weights, and the last layer's input, at 8 bits
    hidden: tuple = (32, 16)
    channels: tuple = (16, 32)
    epochs_float: int = 40
    epochs_qat: int = 100
    batch_size: int = 64
    lr_float: float = 1e-2
    lr_qat: float = 5e-3
    seed: int = 0
    nbn_variant: str = "nbn"
    nbn_groups: int = 4
    tsq_iters: int = 20
    tsq_samples: int = 2000
    sinareq_learn_bits: bool = False
    sinareq_lambda: float = 1.0
    sinareq_lambda_bits: float = 0.03
    sinareq_lr_bits: float = 0.05

    def __post_init__(self):
        for name, value, known in (("model", self.model, MODELS), ("method", self.method, METHODS),
                                   ("first-last", self.first_last, FIRST_LAST),
                                   ("nbn-variant", self.nbn_variant, NBN_VARIANTS)):
            if value not in known and not (name == "model" and is_builder_ref(value)):
                more = " or path/to/file.py:function (your own network, docs in hwq/custom.py)" if name == "model" else ""
                raise UserError(f"--{name}: unknown value {value!r}; expected one of {', '.join(known)}{more}")
        for name in ("epochs_float", "epochs_qat", "batch_size", "nbn_groups"):
            low = 1 if name in ("batch_size", "nbn_groups") else 0
            if getattr(self, name) < low:
                raise UserError(f"--{name.replace('_', '-')} must be at least {low}, not {getattr(self, name)}")
