"""Writing outputs atomically (a reader never sees a half-written file), and reading YAML inputs."""

import hashlib
import json
import os
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

import yaml

from .errors import UserError

__all__ = [
    "atomic_path",
    "cache_dir",
    "cache_lock",
    "file_digest",
    "read_cache",
    "read_json",
    "read_text",
    "read_yaml",
    "umask_mode",
    "write_cache",
    "write_json",
    "write_text",
    "write_yaml",
]


def cache_dir(kind):
    """Where cached results of ``kind`` ("verilator", "synth", "pnr") live: $HWQ_CACHE/kind, else
    ~/.cache/hwq/kind. Entries are named by a hash of everything that determines them. A cache that
    cannot be written falls back to one in the temporary folder, with a one-line warning."""
    path = Path(os.environ.get("HWQ_CACHE", Path.home() / ".cache" / "hwq")) / kind
    try:
        path.mkdir(parents=True, exist_ok=True)
        if os.access(path, os.W_OK | os.X_OK):
            return path
    except OSError:
        pass
    fallback = Path(tempfile.gettempdir()) / f"hwq-cache-{os.getuid()}" / kind
    fallback.mkdir(parents=True, exist_ok=True, mode=0o700)
    if path not in _WARNED:
        _WARNED.add(path)
        print(f"warning: cache {path} is not writable; using {fallback}", file=sys.stderr)
    return fallback


_WARNED = set()


def umask_mode(directory=False):
    """The mode a new file (or folder) gets from the umask, as ``open`` and ``mkdir`` would give it.
    Temporary names are created private (0600/0700); outputs are set to this before they are renamed into
    place, so a colleague can read a report as with any other file."""
    mask = os.umask(0)
    os.umask(mask)
    return (0o777 if directory else 0o666) & ~mask


@contextmanager
def atomic_path(path):
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, umask_mode())
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


def read_text(path):
    """A UTF-8 text file; other bytes are a UserError naming the file and the offset."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not UTF-8 text (byte {exc.start})") from None


def read_json(path):
    """Parse a JSON file; a syntax error or non-UTF-8 bytes are a UserError naming the file."""
    text = read_text(path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: not valid JSON (line {exc.lineno})") from None


def _digest(value):
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


@contextmanager
def cache_lock(path):
    """Hold an exclusive lock on cache entry ``path`` (a file ``<path>.lock`` beside it): builds of one
    entry wait for each other, builds of different entries run in parallel."""
    import fcntl

    lock = Path(path).with_name(Path(path).name + ".lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def file_digest(path):
    """SHA-256 of a file's bytes (hex)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_cache(path, value):
    """Store a JSON-able ``value`` as a cache entry with its digest (written to a temporary name, then renamed)."""
    write_json(path, {"digest": _digest(value), "value": value})


def read_cache(path):
    """A cache entry's value, or None when it is missing; a damaged or edited entry (unreadable, or its
    digest does not match) is removed with a one-line warning, so that the caller rebuilds it."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        entry = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(entry, dict) and set(entry) == {"digest", "value"} and entry["digest"] == _digest(entry["value"]):
            return entry["value"]
        if isinstance(entry, dict) and "digest" not in entry:  # written by an hwq before digests: rebuilt quietly
            path.unlink(missing_ok=True)
            return None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        pass
    print(f"warning: {path}: damaged cache entry; rebuilding it", file=sys.stderr)
    path.unlink(missing_ok=True)
    return None


def read_yaml(path):
    """Parse a YAML file; a syntax error or non-UTF-8 bytes are a UserError naming the file (and the line)."""
    try:
        return yaml.safe_load(read_text(path))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark else ""
        raise UserError(f"{path}: not valid YAML{at}") from None
