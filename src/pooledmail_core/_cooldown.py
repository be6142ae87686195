"""Per-host cooldown: exponential backoff with jitter and a cap, reset by a success.

A host that failed to give a usable connection (connect, greeting, TLS, AUTH) is left alone for
`reconnect_cooldown * 2**(failures - 1)` seconds, capped at `max_reconnect_cooldown`. The jitter
(±`cooldown_jitter` of the delay) spreads the return of many clients that saw the same outage, so
they do not all reconnect in the same second; the cap is applied after the jitter too, so the
delay never exceeds `max_reconnect_cooldown`.

Failures reported while the host is already cooling down come from attempts that were started
before the first failure was known (parallel connects during one outage); they do not count again,
or eight parallel connects would jump the delay straight to the cap.
"""

from __future__ import annotations

from dataclasses import dataclass

from ._entropy import RandomSource

__all__ = ["Cooldown", "CooldownPolicy"]


# Don't subclass this.
@dataclass(frozen=True, slots=True)
class CooldownPolicy:
    """The numbers of the backoff, taken from `PoolConfig`."""

    base: float
    cap: float
    jitter: float

    def delay(self, failures: int, uniform: float) -> float:
        """The cooldown after `failures` consecutive failures; `uniform` is a draw in [0, 1)."""
        if failures < 1:
            return 0.0
        # Grow until the cap, without computing 2**failures for a host that failed for days.
        raw = self.base
        for _ in range(failures - 1):
            if raw >= self.cap:
                break
            raw *= 2.0
        raw = min(raw, self.cap)
        jittered = raw * (1.0 + self.jitter * (2.0 * uniform - 1.0))
        return min(max(jittered, 0.0), self.cap)


class Cooldown:
    """The backoff state of one host: consecutive failures and when the cooldown ends."""

    __slots__ = ("consecutive_failures", "until")

    def __init__(self) -> None:
        self.consecutive_failures = 0
        self.until: float | None = None

    def is_cooling(self, now: float) -> bool:
        """True while `now` is before the end of the cooldown."""
        return self.until is not None and now < self.until

    def on_probation(self, now: float) -> bool:
        """The cooldown is over but no connection has succeeded since the last failure."""
        return self.consecutive_failures > 0 and not self.is_cooling(now)

    def record_failure(self, now: float, policy: CooldownPolicy, rng: RandomSource) -> bool:
        """Count a failure and start (or lengthen) the cooldown; False if it did not count."""
        if self.is_cooling(now):
            return False
        self.consecutive_failures += 1
        self.until = now + policy.delay(self.consecutive_failures, rng.random())
        return True

    def adopt(self, now: float, until: float) -> bool:
        """Another process of the fleet found the host down and it rests until `until`: count it
        as a failure seen here (unless already cooling) and rest as long. False if `until` is
        already past."""
        if until <= now:
            return False
        if not self.is_cooling(now):
            self.consecutive_failures += 1
        if self.until is None or until > self.until:
            self.until = until
        return True

    def record_success(self) -> None:
        """A usable connection: forget every failure."""
        self.consecutive_failures = 0
        self.until = None

    def __repr__(self) -> str:
        return f"Cooldown(consecutive_failures={self.consecutive_failures}, until={self.until})"
