"""What the pool machine asks the driver to do, and the snapshot it reports.

Every input of `PoolMachine` returns a list of these actions, in the order the driver should start
them. The driver performs them and reports back (`connected`, `probe_failed`, `slot_closed` …); it
never changes the pool's state by itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TypeAlias

from ._classify import FailureKind
from ._config import Host, SharedBudget

__all__ = [
    "Action",
    "CloseSlot",
    "FailWaiter",
    "GrantSlot",
    "HostStatistics",
    "OpenConnection",
    "PoolStatistics",
    "ProbeSlot",
    "ReleaseLease",
    "RequestLease",
    "RequestTokens",
    "ShareCooldown",
]


# Don't subclass this.
@dataclass(frozen=True, slots=True)
class OpenConnection:
    """Connect slot `slot` to `host`: TCP, greeting, TLS, EHLO, AUTH, all under connect_timeout.

    Report the end with `connected(slot, now)` or `connect_failed(slot, now, kind, error)`.
    """

    slot: int
    host: Host


# Don't subclass this.
@dataclass(frozen=True, slots=True)
class ProbeSlot:
    """Send NOOP on slot `slot` under probe_timeout; report `probe_succeeded` or `probe_failed`."""

    slot: int


# Don't subclass this.
@dataclass(frozen=True, slots=True)
class CloseSlot:
    """Close slot `slot`: with QUIT if `graceful`, else drop the transport. Then `slot_closed`.

    `reason` is why, one of `CLOSE_REASONS` ("idle_timeout", "broken", "pool_closed" ...): the
    key under which `closed_total` will count the slot once it is closed.
    """

    slot: int
    graceful: bool
    reason: str


# Don't subclass this.
@dataclass(frozen=True, slots=True)
class GrantSlot:
    """Hand slot `slot` to waiter `waiter`; the waiter owns it until `release`."""

    slot: int
    waiter: int


# Don't subclass this.
@dataclass(frozen=True, slots=True)
class FailWaiter:
    """Waiter `waiter` will not get a slot. `error` is the driver's own connect error, if any.

    The repr names only the error's type: the error is opaque to the core and may carry text the
    core has not vetted.
    """

    waiter: int
    kind: FailureKind
    error: object = field(default=None, repr=False)

    def __repr__(self) -> str:
        error = "None" if self.error is None else f"<{type(self.error).__name__}>"
        return f"FailWaiter(waiter={self.waiter}, kind={self.kind}, error={error})"


# The four actions below exist only for hosts with a `SharedBudget`: a pool without one never
# returns them. docs/guide/scaling.md describes what the driver does for each in the store.


# Don't subclass this.
@dataclass(frozen=True, slots=True)
class RequestLease:
    """Ask the store for room for one more connection to `host` under `budget`.

    The store refuses while `host` is cooling down fleet-wide, or while the fleet holds
    `budget.max_connections` leases. Report `lease_granted(request, now, lease)` (`lease` is the
    driver's id for it, None when the budget has no connection cap and so nothing to hold),
    `lease_refused(request, now, retry_at, cooling_until)` or `request_failed(request, now)`.
    """

    request: int
    budget: SharedBudget
    host: Host


# Don't subclass this.
@dataclass(frozen=True, slots=True)
class ReleaseLease:
    """Give `lease` back to the store: its connection is gone (or it was never used)."""

    budget: SharedBudget
    lease: str


# Don't subclass this.
@dataclass(frozen=True, slots=True)
class RequestTokens:
    """Ask the store for up to `count` message tokens of `budget`: the first may come as late as
    `wait` seconds from now (how long the latest waiter can still wait: it is this pool's place
    in the fleet's queue), the others no later than `horizon` seconds from now (so that one pool
    does not reserve the fleet's near future for itself).

    Report `tokens_granted(request, now, times, retry_at)`: the times (on the driver's clock) at
    which each granted token may be used, and when none was granted, when to ask again; or
    `request_failed(request, now)`.
    """

    request: int
    budget: SharedBudget
    count: int
    horizon: float
    wait: float


# Don't subclass this.
@dataclass(frozen=True, slots=True)
class ShareCooldown:
    """`host` just started a cooldown of `seconds`: tell the fleet, so it backs off together."""

    budget: SharedBudget
    host: Host
    seconds: float


Action: TypeAlias = (
    OpenConnection
    | ProbeSlot
    | CloseSlot
    | GrantSlot
    | FailWaiter
    | RequestLease
    | ReleaseLease
    | RequestTokens
    | ShareCooldown
)
"""Any of the actions; dispatch on the class."""


# Don't subclass this.
@dataclass(frozen=True, slots=True)
class HostStatistics:
    """One host as the pool sees it. `cooldown_until` is None when no cooldown was ever set.

    `connects_suppressed` counts the times the pool needed a new connection and did not open one
    to this host because it was cooling down, while it would otherwise have been considered (its
    priority no worse than that of the host chosen instead, or no host could be chosen).
    """

    live: int
    cooling_down: bool
    consecutive_failures: int
    cooldown_until: float | None
    connects_suppressed: int = 0


# Don't subclass this.
@dataclass(frozen=True, slots=True)
class PoolStatistics:
    """A frozen snapshot of the pool; every count is derived from the slots' states.

    `live` = connecting + idle + probing + leased + closing. `created_total` counts connections
    the pool asked for; `closed_total` counts, by reason, slots that are gone, so
    `created_total == live + sum(closed_total.values())` always holds. `hosts` is keyed by
    `Host.key`, in configuration order. `close_requested` is True once `close` was called (the
    pool may still have live slots until the driver reports them closed).
    """

    live: int
    connecting: int
    idle: int
    probing: int
    leased: int
    closing: int
    waiting: int
    created_total: int
    closed_total: Mapping[str, int]
    hosts: Mapping[str, HostStatistics]
    close_requested: bool
