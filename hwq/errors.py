"""User-facing errors: raised for bad input, printed by the CLI as one line without a traceback."""

__all__ = ["UserError"]


class UserError(Exception):
    """A mistake in what the user gave us (a file, a flag, a value), not a bug in hwq.

    The message names the file or flag, the field and what was expected; the CLI prints it as one
    line and exits with status 2.
    """
