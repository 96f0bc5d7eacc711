"""Progress bars for long work (rich), quiet when output is not a terminal or when disabled."""

import sys
import time
from contextlib import contextmanager

__all__ = ["progress_bar", "status"]


def _fields(info):
    return "  ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in info.items())


@contextmanager
def progress_bar(description, total, *, enabled=True, lines=False):
    """Yield a ``tick(n=1, **info)`` function that advances a progress bar of ``total`` steps; ``info``
    (e.g. ``loss=0.41, acc=0.87``) is shown beside it. On a terminal: a bar with the rate and the time
    left. Elsewhere (a pipe, a CI log, a notebook's ``!hwq``): with ``lines``, one plain line per tick,
    else nothing."""
    if not enabled or (not sys.stderr.isatty() and not lines):
        yield lambda n=1, **info: None
        return
    if not sys.stderr.isatty():
        t0, done = time.perf_counter(), [0]

        def line(n=1, **info):
            done[0] += n
            parts = (f"{description}: {done[0]}/{total}", _fields(info), f"({time.perf_counter() - t0:.1f} s)")
            print("  ".join(p for p in parts if p), file=sys.stderr, flush=True)
        yield line
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("eta"), TimeRemainingColumn(), TextColumn("{task.fields[info]}"))
    with Progress(*columns, transient=True) as progress:
        task = progress.add_task(description, total=total, info="")
        yield lambda n=1, **info: progress.update(task, advance=n, info=_fields(info))


@contextmanager
def status(message, *, enabled=True):
    """A spinner with elapsed time while one long step runs (on a terminal); a plain line otherwise."""
    if not enabled:
        yield
        return
    if not sys.stderr.isatty():
        print(f"{message} ...", file=sys.stderr, flush=True)
        yield
        return
    from rich.console import Console

    with Console(stderr=True).status(message):
        yield
