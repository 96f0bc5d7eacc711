"""Board descriptions: one YAML file per board in this package; users may point at their own file."""

import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from hwq.errors import UserError
from hwq.fileio import read_yaml

__all__ = ["DEFAULT_BOARD", "RESOURCES", "Board", "known_boards", "load_board"]

DEFAULT_BOARD = "ice40-up5k"
FAMILIES = ("ice40", "ecp5", "xilinx7")
SYNTH_COMMANDS = {"ice40": "synth_ice40", "ecp5": "synth_ecp5", "xilinx7": "synth_xilinx"}
PNR_TOOLS = {"ice40": "nextpnr-ice40", "ecp5": "nextpnr-ecp5"}
# The options a board file may give the tools (anything else could run a script: yosys' ``;`` and
# ``tee``, nextpnr's ``--pre-pack script.py``). Each maps to the values it takes (None: a flag).
SYNTH_OPTIONS = {
    "ice40": {"-dsp": None, "-abc9": None, "-abc2": None, "-noflatten": None, "-nocarry": None, "-nobram": None,
              "-spram": None, "-device": ("hx", "lp", "u")},
    "ecp5": {"-abc9": None, "-abc2": None, "-noflatten": None, "-nodsp": None, "-nobram": None, "-nolutram": None,
             "-nowidelut": None},
    "xilinx7": {"-family": ("xc7", "xcup", "xcu", "xc6s"), "-flatten": None, "-nolutram": None, "-nobram": None,
                "-nodsp": None, "-nocarry": None, "-nosrl": None, "-abc9": None, "-widemux": ("4", "5", "6", "7", "8")},
}
PNR_DEVICE = {"ice40": re.compile(r"--(lp|hx|up|u)\d+k"), "ecp5": re.compile(r"--(um5g-|um-)?\d+k")}
PNR_OPTIONS = {"--package": re.compile(r"[A-Za-z0-9]{2,16}"), "--speed": re.compile(r"[6-8]")}
RESOURCES = ("lut", "ff", "bram", "dsp")  # the resource kinds every count and estimate uses


@dataclass(frozen=True)
class Board:
    name: str
    description: str
    family: str
    part: str
    lut: int
    ff: int
    bram: int
    bram_bits: int  # bits per block RAM
    dsp: int
    clock_mhz: float
    yosys_synth: str  # yosys command (and flags) that synthesizes for this part
    pnr: dict | None  # {"tool": "nextpnr-ice40", "args": [...]}, or None where no open tool exists
    path: str
    platform: str | None = None  # the amaranth-boards platform of the board's pins (hwq.board.PLATFORMS)

    def over(self, usage):
        """By how much ``usage`` (lut/ff/bram/dsp) exceeds the board, for each resource it exceeds."""
        return {k: usage[k] - getattr(self, k) for k in RESOURCES if usage.get(k, 0) > getattr(self, k)}

    def fits(self, usage):
        """Whether every resource in ``usage`` is within the board's."""
        return not self.over(usage)


def _board_files():
    return sorted((p for p in resources.files("boards").iterdir() if p.name.endswith(".yaml")),
                  key=lambda p: p.name)


def known_boards():
    """Names of the bundled boards."""
    return [p.name[: -len(".yaml")] for p in _board_files()]


def _parse(path, raw):
    if not isinstance(raw, dict):
        raise UserError(f"{path}: expected a mapping of board fields, found {type(raw).__name__}")

    def field(name, kind, expected):
        if name not in raw:
            raise UserError(f"{path}: field '{name}' is missing ({expected})")
        value = raw[name]
        if not isinstance(value, kind) or isinstance(value, bool):
            raise UserError(f"{path}: field '{name}': expected {expected}, found {value!r}")
        return value

    family = field("family", str, f"one of {', '.join(FAMILIES)}")
    if family not in FAMILIES:
        raise UserError(f"{path}: field 'family': expected one of {', '.join(FAMILIES)}, found {family!r}")
    counts = {}
    for name in (*RESOURCES, "bram_bits"):
        counts[name] = field(name, int, "a non-negative integer")
        low = 1 if name in ("lut", "ff", "bram_bits") else 0  # a block RAM of 0 bits would divide by zero
        if counts[name] < low:
            raise UserError(f"{path}: field '{name}': expected {'a positive' if low else 'a non-negative'} integer, "
                            f"found {counts[name]}")
    clock = field("clock_mhz", (int, float), "a positive number (MHz)")
    if clock <= 0:
        raise UserError(f"{path}: field 'clock_mhz': expected a positive number (MHz), found {clock}")
    synth = field("yosys_synth", str, f"a yosys command starting with {SYNTH_COMMANDS[family]}")
    _check_synth(path, family, synth)
    if "pnr" not in raw:
        raise UserError(f"{path}: field 'pnr' is missing ({{tool: ..., args: [...]}} or null)")
    pnr = raw["pnr"]
    if pnr is not None:
        ok = (isinstance(pnr, dict) and pnr.get("tool") == PNR_TOOLS.get(family) and isinstance(pnr.get("args"), list)
              and all(isinstance(a, str) for a in pnr["args"]))
        if not ok:
            expected = f"{{tool: {PNR_TOOLS[family]}, args: [...]}} or null" if family in PNR_TOOLS else "null"
            raise UserError(f"{path}: field 'pnr': expected {expected}, found {pnr!r}")
        _check_pnr_args(path, family, pnr["args"])
    platform = raw.get("platform")
    if platform is not None:
        from hwq.board import PLATFORMS

        if platform not in PLATFORMS:
            raise UserError(f"{path}: field 'platform': expected one of {', '.join(PLATFORMS)} or null, "
                            f"found {platform!r}")
    return Board(
        name=field("name", str, "the board's name"),
        description=field("description", str, "a one-line description"),
        family=family,
        part=field("part", str, "the FPGA part"),
        clock_mhz=float(clock),
        yosys_synth=synth,
        pnr=pnr,
        path=str(path),
        platform=platform,
        **counts,
    )


def _check_synth(path, family, text):
    """``yosys_synth`` is the family's synthesis command and options from :data:`SYNTH_OPTIONS`, nothing else."""
    words, options = text.split(), SYNTH_OPTIONS[family]
    expected = (f"{SYNTH_COMMANDS[family]} followed by options from {', '.join(options)} (for family {family}; "
                f"see boards/__init__.py)")
    if not words or words[0] != SYNTH_COMMANDS[family]:
        raise UserError(f"{path}: field 'yosys_synth': expected {expected}, found {text!r}")
    k = 1
    while k < len(words):
        word = words[k]
        if word not in options:
            raise UserError(f"{path}: field 'yosys_synth': option {word!r} is not allowed; expected {expected}")
        if options[word] is not None:
            if k + 1 >= len(words) or words[k + 1] not in options[word]:
                got = words[k + 1] if k + 1 < len(words) else "nothing"
                raise UserError(f"{path}: field 'yosys_synth': {word} takes one of {', '.join(options[word])}, "
                                f"found {got!r}")
            k += 1
        k += 1


def _check_pnr_args(path, family, args):
    """nextpnr arguments: the device flag, ``--package NAME`` and ``--speed N`` (see :data:`PNR_OPTIONS`)."""
    expected = f"a device flag such as {'--up5k' if family == 'ice40' else '--25k'}, --package NAME or --speed N"
    k = 0
    while k < len(args):
        arg = args[k]
        if PNR_DEVICE[family].fullmatch(arg):
            k += 1
            continue
        if arg not in PNR_OPTIONS or k + 1 >= len(args) or not PNR_OPTIONS[arg].fullmatch(args[k + 1]):
            raise UserError(f"{path}: field 'pnr.args': {arg!r} is not allowed here; expected {expected}")
        k += 2


def load_board(name_or_path):
    """A bundled board by name, or a board YAML file by path."""
    text = str(name_or_path)
    path = Path(text)
    if text.endswith((".yaml", ".yml")) or path.is_file():
        if not path.is_file():
            raise UserError(f"{path}: board file not found")
        return _parse(path, read_yaml(path))
    for p in _board_files():
        if p.name == f"{text}.yaml":
            return _parse(f"boards/{p.name}", read_yaml(p))
    raise UserError(f"unknown board {text!r}; known boards: {', '.join(known_boards())} (or a path to a .yaml file)")
