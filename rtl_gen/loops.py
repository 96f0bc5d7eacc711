"""Loop nests in hardware: counters that step through nested loops one iteration per cycle, and linear
functions of the loop indices (buffer addresses, pixel coordinates) kept in registers and updated by a
constant per step instead of being multiplied out every cycle.

Why: an address like ``((oy * stride + ky - padding) * W + ox * stride + kx - padding) * groups + g``
computed from the counters is a chain of adders and constant multipliers in front of a block RAM, the
critical path of a convolution engine on iCE40 (30 MHz measured). A linear function of the indices
changes by a constant that only depends on which loop steps (the innermost one that is not at its last
value; the inner ones wrap to 0), so the register updates with one adder and a small multiplexer of
constants.
"""

from dataclasses import dataclass

from amaranth import Mux, Signal

__all__ = ["LoopNest"]


@dataclass
class LoopNest:
    """Loops of ``counts`` iterations (innermost first) stepping while ``step`` is high: ``index[i]``,
    ``last[i]`` (the index is at its last value) and ``done`` (every loop at its last value: the next step
    wraps them all to 0, so the nest is back at its start between runs)."""

    index: list
    last: list
    counts: tuple
    step: object

    @classmethod
    def build(cls, m, counts, step, names):
        counts = tuple(int(c) for c in counts)
        index = [Signal(range(max(c, 2)), name=n) for c, n in zip(counts, names, strict=True)]
        last = [ix == c - 1 for ix, c in zip(index, counts, strict=True)]
        carry = step
        for ix, lst, c in zip(index, last, counts, strict=True):
            if c > 1:
                with m.If(carry):
                    m.d.sync += ix.eq(Mux(lst, 0, ix + 1))
            carry = carry & lst
        return cls(index, last, counts, step)

    @property
    def done(self):
        out = 1
        for lst, c in zip(self.last, self.counts, strict=True):
            if c > 1:
                out = out & lst
        return out

    def all_at(self, loops):
        """Whether the loops numbered ``loops`` are all at their last value."""
        out = 1
        for i in loops:
            if self.counts[i] > 1:
                out = out & self.last[i]
        return out

    def first(self, loops):
        """Whether the loops numbered ``loops`` are all at 0."""
        out = 1
        for i in loops:
            if self.counts[i] > 1:
                out = out & (self.index[i] == 0)
        return out

    def track(self, m, strides, base, shape, name):
        """A register holding ``base + sum(strides[i] * index[i])`` (wrapping in ``shape``'s width): it
        starts at ``base`` and, at each step, adds the change of that sum, a constant chosen by the innermost
        loop that is not at its last value (the loops inside it go back to 0); when all are, back to base."""
        reg = Signal(shape, name=name, init=base)
        delta = -sum((c - 1) * s for c, s in zip(self.counts, strides, strict=True))  # every loop wraps
        for j in reversed(range(len(self.counts))):
            if self.counts[j] > 1:
                inner = sum((c - 1) * s for c, s in zip(self.counts[:j], strides[:j], strict=True))
                delta = Mux(~self.last[j], strides[j] - inner, delta)
        with m.If(self.step):
            m.d.sync += reg.eq(reg + delta)
        return reg
