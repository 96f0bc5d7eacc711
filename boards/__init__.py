"""Board descriptions: one YAML file per board in this package; users may point at their own file."""

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
        if counts[name] < 0:
            raise UserError(f"{path}: field '{name}': expected a non-negative integer, found {counts[name]}")
    clock = field("clock_mhz", (int, float), "a positive number (MHz)")
    if clock <= 0:
        raise UserError(f"{path}: field 'clock_mhz': expected a positive number (MHz), found {clock}")
    synth = field("yosys_synth", str, f"a yosys command starting with {SYNTH_COMMANDS[family]}")
    if synth.split()[0] != SYNTH_COMMANDS[family]:
        raise UserError(f"{path}: field 'yosys_synth': expected a command starting with {SYNTH_COMMANDS[family]} "
                        f"for family {family}, found {synth!r}")
    if "pnr" not in raw:
        raise UserError(f"{path}: field 'pnr' is missing ({{tool: ..., args: [...]}} or null)")
    pnr = raw["pnr"]
    if pnr is not None:
        ok = (isinstance(pnr, dict) and pnr.get("tool") == PNR_TOOLS.get(family) and isinstance(pnr.get("args"), list)
              and all(isinstance(a, str) for a in pnr["args"]))
        if not ok:
            expected = f"{{tool: {PNR_TOOLS[family]}, args: [...]}} or null" if family in PNR_TOOLS else "null"
            raise UserError(f"{path}: field 'pnr': expected {expected}, found {pnr!r}")
    return Board(
        name=field("name", str, "the board's name"),
        description=field("description", str, "a one-line description"),
        family=family,
        part=field("part", str, "the FPGA part"),
        clock_mhz=float(clock),
        yosys_synth=synth,
        pnr=pnr,
        path=str(path),
        **counts,
    )


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
