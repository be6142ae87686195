"""A message rate as a generic cell rate algorithm (GCRA), with time passed in.

Theory of operation
-------------------
A rate of `r` messages per second with a burst of `b` is a token bucket that holds at most `b`
tokens and gains one every `T = 1/r` seconds. GCRA keeps the same bucket as one number, the
theoretical arrival time `tat`: the moment the bucket would be full again if nothing more were
taken. A message conforms at `now` when `now >= tat - tau`, with the tolerance `tau = (b - 1) * T`;
taking it moves `tat` to `max(tat, now) + T`.

One number instead of a float count of tokens matters here: the time the next token comes is
`tat - tau`, and the pool machine asks for a timer at exactly that float. When the timer fires,
`conforms(now)` compares the very same float, so a token announced for a time is there at that time.
A float count refilled by `rate * elapsed` can come out at 0.9999999 when the timer fires, and the
pool would ask for the same timer again and again.

The same arithmetic says how many tokens will have come before a given time (`count_before`), which
is how the pool tells a waiter at once that its turn cannot come before its deadline.
"""

from __future__ import annotations

import math

__all__ = ["Gcra"]


class Gcra:
    """One rate limit: `rate` tokens per second, at most `burst` at once."""

    __slots__ = ("interval", "rate", "tat", "tolerance")

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.interval = 1.0 / rate
        self.tolerance = (burst - 1) * self.interval
        # Nothing taken yet: the bucket is full.
        self.tat = -math.inf

    def ready_at(self) -> float:
        """The time the next token is there (in the past, or -inf, when one is there now)."""
        return self.tat - self.tolerance

    def conforms(self, now: float) -> bool:
        """Whether a token is there at `now`."""
        return self.tat - self.tolerance <= now

    def take(self, now: float) -> None:
        """Spend one token at `now`; only called when `conforms(now)`."""
        tat = self.tat
        self.tat = (tat if tat > now else now) + self.interval

    def available(self, now: float) -> int:
        """How many tokens can be taken at `now` at once."""
        tat = self.tat
        if tat - self.tolerance > now:
            return 0
        base = tat if tat > now else now
        return math.floor((now - base + self.tolerance) * self.rate + 1e-9) + 1

    def count_before(self, now: float, deadline: float) -> int:
        """How many tokens can be taken at `now` or later and strictly before `deadline`."""
        if deadline <= now:
            return 0
        tat = self.tat
        start = (tat if tat > now else now) - self.tolerance
        if start >= deadline:
            return 0
        # Tokens come at start, start + T, start + 2T ... (those before `now` are the burst, taken
        # at `now`). Rounding up errs towards more tokens: a waiter is never failed early by it.
        return math.ceil((deadline - start) * self.rate + 1e-9)

    def __repr__(self) -> str:
        return f"Gcra(rate={self.rate:g}, tat={self.tat}, tolerance={self.tolerance:g})"
