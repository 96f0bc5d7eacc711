"""Names read from files (layer names, module names) and the paths built from them.

A layer name becomes a Verilog module name, a file name (``fc1.v``, ``mem/fc1_w.hex``) and a word in a
yosys script, so it is held to one pattern, checked wherever a name is read: an identifier of ASCII
letters, digits and ``_`` that does not start with a digit, at most 64 characters. Paths built from a
name are checked to stay inside the folder they are written to.

>>> is_name("fc1"), is_name("../evil"), is_name("a b"), is_name("1x")
(True, False, False, False)
"""

import re
from pathlib import Path

from .errors import UserError

__all__ = ["NAME_EXPECTED", "NAME_PATTERN", "inside", "is_name"]

NAME_PATTERN = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
NAME_EXPECTED = "a name of ASCII letters, digits and '_' that does not start with a digit (at most 64 characters)"


def is_name(value):
    return isinstance(value, str) and NAME_PATTERN.fullmatch(value) is not None


def inside(root, *parts):
    """``root / parts``, or a UserError when the result would leave ``root`` (``..``, an absolute part,
    a symbolic link pointing out)."""
    base = Path(root).resolve()
    path = Path(root, *parts)
    if not path.resolve().is_relative_to(base):
        raise UserError(f"{path}: outside the output folder {root}; refusing to write it")
    return path
