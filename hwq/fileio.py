"""Writing outputs atomically (a reader never sees a half-written file), and reading YAML inputs."""

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

import yaml

from .errors import UserError

__all__ = ["atomic_path", "cache_dir", "read_yaml", "write_json", "write_text", "write_yaml"]


def cache_dir(kind):
    """Where cached results of ``kind`` ("verilator", "synth", "pnr") live: $HWQ_CACHE/kind, else
    ~/.cache/hwq/kind. Entries are named by a hash of everything that determines them."""
    return Path(os.environ.get("HWQ_CACHE", Path.home() / ".cache" / "hwq")) / kind


@contextmanager
def atomic_path(path):
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text(path, text):
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path, obj):
    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def write_yaml(path, obj):
    write_text(path, yaml.safe_dump(obj, sort_keys=False, default_flow_style=None))


def read_yaml(path):
    """Parse a YAML file; a syntax error is a UserError naming the file and the line."""
    try:
        return yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark else ""
        raise UserError(f"{path}: not valid YAML{at}") from None
