"""Constructor argument checks shared by the components (TypeError for kind, ValueError for value)."""

import operator

__all__ = ["check_int"]


def check_int(name, value, lo, hi=None):
    """Return ``value`` as an int in [lo, hi]; raise TypeError/ValueError naming ``name`` otherwise."""
    span = f"{lo}..{hi}" if hi is not None else f">= {lo}"
    try:
        result = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an integer {span}, not {value!r}") from None
    if isinstance(value, bool) or result < lo or (hi is not None and result > hi):
        raise ValueError(f"{name} must be an integer {span}, not {value!r}")
    return result
