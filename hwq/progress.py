"""Progress bars for long work (rich), quiet when output is not a terminal or when disabled."""

import sys
from contextlib import contextmanager

__all__ = ["progress_bar", "status"]


@contextmanager
def progress_bar(description, total, *, enabled=True):
    """Yield a ``tick(n=1)`` function that advances a progress bar of ``total`` steps."""
    if not enabled or not sys.stderr.isatty():
        yield lambda n=1: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, transient=True) as progress:
        task = progress.add_task(description, total=total)
        yield lambda n=1: progress.advance(task, n)


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
