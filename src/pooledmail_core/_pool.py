"""The sans-I/O pool machine: slots, waiters, hosts and timers, owned in one place.

Theory of operation
-------------------
Every input (`acquire`, `cancel`, `connected`, `connect_failed`, `release`, `probe_succeeded`,
`probe_failed`, `slot_closed`, `handle_timer`, `close`) first checks that it is legal — unknown ids
and inputs the slot's state does not accept raise `LocalProtocolError` before anything changes —
then applies its own change, then runs one synchronous settling pass, and returns the actions the
driver must perform. Because state changes and decisions happen together, before any I/O, a
cancellation in the driver can never leave the pool half-updated.

The settling pass, in order:

1. Waiters whose deadline has come fail (POOL_EXHAUSTED, or HOSTS_UNAVAILABLE when every host is
   cooling down or failing).
2. Idle slots past `idle_timeout` or `max_connection_age` retire (QUIT).
3. Waiters are served strictly first come, first served: the head waiter gets the most recently
   used idle slot that does not need a probe. Waiters that remain and are not already covered by a
   connection in flight (CONNECTING or PROBING slots, except background trials; any of them will
   go to the head waiter when it becomes usable) get a probe of a stale idle slot, else a new
   connection to the host that host selection picks, as long as `max_size` and the host's
   `max_connections` allow.
4. When every host is cooling down and nothing in flight (connecting, probing or leased) could
   serve a waiter, the waiters whose deadline comes no later than the first cooldown end fail at
   once with HOSTS_UNAVAILABLE and the last connect error: nothing can help them, and waiting
   until their deadline would only hide the outage. Waiters with later deadlines keep waiting; a
   trial connection is opened when the first cooldown ends.
5. Recovery: a host whose cooldown is over but which has not succeeded since (on probation), and
   which is of a better priority than the host of some slot in use, gets one background trial
   connection, not tied to any waiter, as soon as there is room. Nothing else would ever try it:
   while a worse host's slots serve every acquire, no waiter needs a new connection. When
   `max_size` is what blocks the trial and no waiter is queued, one idle slot to a worse host
   retires to make room (never more than one while any slot is closing).
6. When no waiter is left, idle slots to hosts of a worse priority than the best healthy host
   retire, so traffic moves back to the preferred host once it has proven itself. A healthy
   release of a leased slot makes it idle first, so it retires here too unless a waiter takes it.
7. If fewer than `min_size` slots are live, a refill is scheduled `refill_delay` later. Refill
   connections are only ever opened from `handle_timer`, never as part of a caller's acquire.

Slots are not bound to waiters while they connect or probe: whichever becomes usable first goes to
the head of the queue. So a waiter that is cancelled while "its" connection is still connecting
cannot leak the slot — it simply goes to the next waiter, or to idle.

Hosts: a host that failed is cooling down (see `_cooldown`); once its cooldown ends it is on
probation, and the pool sends it one trial connection at a time until one succeeds. A host on
probation with a trial in flight is skipped by host selection, so other waiters fail over to the
next group instead of queueing behind a trial that may hang for `connect_timeout`. For the same
reason a background trial covers no waiter: a waiter that arrives while it is in flight gets its own
connection to the next group (or the first slot released), whichever the trial's outcome.

Rate limits and shared budgets (`_admission`): when a host has a message rate or a
`SharedBudget`, a grant also needs a token for the slot's host (step 3 serves the head waiter with
an idle slot whose host has one, and takes it), a new connection to a host under a budget also
needs a lease from the store, and the pool asks the store for both through actions
(`RequestLease`, `RequestTokens`) whose answers are inputs (`lease_granted`, `lease_refused`,
`tokens_granted`, `request_failed`, `lease_lost`, `store_failed`). Step 4 also fails at once the
waiters only a refusing store could serve (BUDGET_UNAVAILABLE) and, when every host is rate
limited, those whose token cannot come before their deadline (RATE_LIMITED, or BUDGET_UNAVAILABLE
when every host's store is away under "refuse": the store holds the token back, not the rate);
slots without a valid lease retire as soon as they are idle. Without rates and budgets none of
this runs.

Time only moves forward: an input whose `now` is older than one already seen (two driver tasks
read the clock in one order and call in the other) is treated as happening at the newest `now`.

Indexes: the driver makes an `acquire_now`, a release and two `next_deadline()` calls per message,
so none of them walks the slots on a warm pool. Each slot's `state` field is the truth; beside it
the machine keeps one dict of slots per live state, the count of idle slots outside the best
priority group, the set of hosts failing since their last success, and a cached idle slot with the
earliest `connected_at`. `_move` (the one place a slot changes state) and the two cooldown inputs
keep them in step; `_cached_indexes()` is checked against `_recomputed_indexes()` after every step
of the stateful test. The idle dict is in order of `idle_since` (a slot enters it at the newest
`now`, which never decreases); as float subtraction and addition are monotonic, the first idle
slot and the one connected the earliest decide, with the same comparisons, whether any idle slot
is due and when the first will be.
"""

from __future__ import annotations

import heapq
import math
from collections import Counter
from collections.abc import Sequence
from itertools import takewhile
from operator import attrgetter
from types import MappingProxyType

from ._admission import Admission
from ._classify import FailureKind
from ._config import Host, PoolConfig
from ._cooldown import Cooldown, CooldownPolicy
from ._entropy import RandomSource
from ._errors import LocalProtocolError
from ._hosts import HostSelector
from ._pool_actions import (
    Action,
    CloseSlot,
    FailWaiter,
    GrantSlot,
    HostStatistics,
    OpenConnection,
    PoolStatistics,
    ProbeSlot,
    ReleaseLease,
    RequestLease,
    RequestTokens,
    ShareCooldown,
)
from ._slots import LIVE_STATES, SLOT_TRANSITIONS, SlotEvent, SlotState

__all__ = [
    "CLOSE_REASONS",
    "Action",
    "CloseSlot",
    "FailWaiter",
    "GrantSlot",
    "HostStatistics",
    "OpenConnection",
    "PoolMachine",
    "PoolStatistics",
    "ProbeSlot",
    "ReleaseLease",
    "RequestLease",
    "RequestTokens",
    "ShareCooldown",
    "SlotState",
]

# Members as module constants: looking a member up on its Enum class costs about 100 ns on
# Python 3.11, several times a global, and the pool reads them on every input.
_CONNECTING = SlotState.CONNECTING
_IDLE = SlotState.IDLE
_PROBING = SlotState.PROBING
_LEASED = SlotState.LEASED
_CLOSING = SlotState.CLOSING
_CLOSED = SlotState.CLOSED
_CONNECTED = SlotEvent.CONNECTED
_CONNECT_FAILED = SlotEvent.CONNECT_FAILED
_GRANT = SlotEvent.GRANT
_PROBE_SUCCEEDED = SlotEvent.PROBE_SUCCEEDED
_PROBE_FAILED = SlotEvent.PROBE_FAILED
_PROBE = SlotEvent.PROBE
_RELEASE_HEALTHY = SlotEvent.RELEASE_HEALTHY
_RELEASE_BROKEN = SlotEvent.RELEASE_BROKEN
_RETIRE = SlotEvent.RETIRE
_SLOT_CLOSED = SlotEvent.SLOT_CLOSED
_CONNECT_CANCELLED = SlotEvent.CONNECT_CANCELLED

# The keys of `PoolStatistics.closed_total`.
CLOSE_REASONS = (
    "broken",
    "connect_failed",
    "idle_timeout",
    "max_age",
    "max_messages",
    "pool_closed",
    "probe_failed",
    "retired_for_priority",
    "stale",
    "out_of_sync",
    "lease_lost",
)
# The reasons `release(healthy=False)` accepts.
_BROKEN_REASONS = ("broken", "stale", "out_of_sync", "pool_closed")
# The reasons `probe_failed` accepts.
_PROBE_REASONS = ("probe_failed", "stale", "out_of_sync")


_connected_at = attrgetter("connected_at")


class _Slot:
    __slots__ = (
        "background_trial",
        "close_reason",
        "connected_at",
        "host",
        "id",
        "idle_since",
        "messages",
        "state",
    )

    def __init__(self, slot_id: int, host: int, *, background_trial: bool = False) -> None:
        self.id = slot_id
        self.host = host
        # Opened by the pool itself to try a recovered host, not for a waiter; see `_open_trials`.
        self.background_trial = background_trial
        self.state = _CONNECTING
        self.connected_at = 0.0
        self.idle_since = 0.0
        self.messages = 0
        self.close_reason = ""


class PoolMachine:
    """The whole state of one SMTP connection pool, driven by synchronous inputs."""

    def __init__(self, config: PoolConfig, rng: RandomSource) -> None:
        self._config = config
        self._rng = rng
        # Read on every input: kept as plain attributes rather than looked up on the config.
        self._idle_timeout = config.idle_timeout
        self._max_age = config.max_connection_age
        self._keepalive = config.keepalive_interval
        self._min_size = config.min_size
        self._max_messages = config.max_messages_per_connection
        self._hosts = config.hosts
        self._policy = CooldownPolicy(
            base=config.reconnect_cooldown,
            cap=config.max_reconnect_cooldown,
            jitter=config.cooldown_jitter,
        )
        self._selector = HostSelector(config.hosts)
        # With one priority group there is never a worse host to retire idle connections from.
        self._single_priority = len({host.priority for host in config.hosts}) == 1
        self._top_priority = min(host.priority for host in config.hosts)
        # Best priority first (ties in configuration order): the order trials are considered in.
        self._by_priority = sorted(range(len(config.hosts)), key=lambda i: config.hosts[i].priority)
        self._cooldowns = [Cooldown() for _ in config.hosts]
        # Hosts that have given this pool a session at least once: only their recovery is
        # waited for (see `_fail_hopeless`).
        self._proven = [False] * len(config.hosts)
        # Hosts with a failure since their last success: exactly those whose cooldown has an end
        # (`Cooldown.until` is set by a failure and cleared by a success, together with the count).
        self._failing: set[int] = set()
        # The hosts outside the best configured group, by index.
        self._off_top = [host.priority > self._top_priority for host in config.hosts]
        self._slots: dict[int, _Slot] = {}
        # Indexes over `_slots` for the per-message path (see "Indexes" below). The truth is each
        # slot's own `state`; these are kept in step by `_move` and are checked against a
        # recomputation after every step of the stateful test.
        self._by_state: dict[SlotState, dict[int, _Slot]] = {state: {} for state in LIVE_STATES}
        self._idle = self._by_state[_IDLE]
        self._connecting = self._by_state[_CONNECTING]
        self._closing = self._by_state[_CLOSING]
        self._idle_off_top = 0
        # An idle slot with the earliest `connected_at`, or None when no slot is idle or it must
        # be looked for again (the one it was stopped being idle).
        self._earliest_connected_idle: _Slot | None = None
        self._next_slot = 0
        # Waiting waiters by id; ids grow, so insertion order is arrival order (FIFO).
        self._waiters: dict[int, float] = {}
        self._next_waiter = 0
        # (deadline, waiter) for every waiter ever queued; finished ones are skipped lazily.
        self._deadlines: list[tuple[float, int]] = []
        self._now = -math.inf
        self._close_requested = False
        self._created_total = 0
        self._closed_total: Counter[str] = Counter()
        self._last_connect_error: object = None
        # Per host: connections not opened because the host was cooling down.
        self._connects_suppressed = [0] * len(config.hosts)
        # Warm min_size as soon as the driver first calls handle_timer.
        self._refill_at: float | None = -math.inf if config.min_size > 0 else None
        # Message rates and shared budgets (see `_admission`). None when no host has either, so
        # that such a pool pays one `is None` test where they would apply.
        self._admission: Admission | None = (
            Admission(config.hosts)
            if any(
                host.max_messages_per_second is not None or host.budget is not None
                for host in config.hosts
            )
            else None
        )

    # ----------------------------------------------------------------------------------- inputs

    def acquire(self, now: float, deadline: float) -> tuple[int, list[Action]]:
        """Ask for a slot until the absolute `deadline`; returns the new waiter's id and actions.

        The waiter ends with exactly one `GrantSlot` or `FailWaiter` carrying its id, in these
        actions or in those of a later input.
        """
        if not isinstance(deadline, (int, float)) or math.isnan(deadline):
            raise LocalProtocolError("deadline must be a number")
        now = self._advance(now)
        waiter = self._next_waiter
        self._next_waiter += 1
        if self._close_requested:
            return waiter, [FailWaiter(waiter, FailureKind.POOL_CLOSED)]
        actions: list[Action] = []
        self._settle(now, actions)
        if not self._waiters:
            slot = self._pick_idle(now, fresh=True)
            if slot is not None:
                # Usable at once: granted even if the deadline is already due.
                # No refill re-arming: the settling pass just did it, and a grant changes
                # nothing it depends on (live and closing counts, hosts' room and cooldowns).
                if self._admission is not None:
                    self._admission.take(slot.host, now)
                self._move(slot, _GRANT)
                actions.append(GrantSlot(slot.id, waiter))
                return waiter, actions
        self._waiters[waiter] = float(deadline)
        heapq.heappush(self._deadlines, (float(deadline), waiter))
        self._settle(now, actions)
        return waiter, actions

    def acquire_now(self, now: float) -> tuple[int | None, list[Action]]:
        """A slot at once, or None: the fast path of `acquire` for a warm pool.

        When nobody is queued and an idle slot needs no probe, that slot is granted (LEASED) and
        returned, exactly the one `acquire` would grant, but without a waiter made for it and a
        `GrantSlot` to carry it. Otherwise nothing is granted, and the caller queues with
        `acquire`. Either way the actions of the settling pass (usually none) are returned, to be
        performed like any others.
        """
        now = self._advance(now)
        if self._close_requested:
            return None, []
        actions: list[Action] = []
        self._settle(now, actions)
        if self._waiters:
            return None, actions
        record = self._pick_idle(now, fresh=True)
        if record is None:
            return None, actions
        if self._admission is not None:
            self._admission.take(record.host, now)
        self._move(record, _GRANT)
        return record.id, actions

    def cancel(self, waiter: int, now: float) -> list[Action]:
        """The waiter gave up. A no-op for a waiter that was already granted or failed.

        The driver may race a cancellation against a grant already returned; the slot of such a
        grant stays LEASED and must be released by whoever holds the `GrantSlot`.
        """
        if not isinstance(waiter, int) or not 0 <= waiter < self._next_waiter:
            raise LocalProtocolError(f"unknown waiter {waiter!r}")
        now = self._advance(now)
        if waiter not in self._waiters:
            return []
        del self._waiters[waiter]
        actions: list[Action] = []
        self._settle(now, actions)
        return actions

    def connected(self, slot: int, now: float) -> list[Action]:
        """Slot `slot` finished connecting (through AUTH): usable, and its host is healthy."""
        record = self._slot(slot, _CONNECTED)
        now = self._advance(now)
        record.connected_at = now
        record.idle_since = now
        self._move(record, _CONNECTED)
        self._cooldowns[record.host].record_success()
        self._failing.discard(record.host)
        self._proven[record.host] = True
        # Every host's latest outcome must be a failure before this error is reported again, and
        # each such failure stores a newer one; dropping it frees the traceback it holds.
        self._last_connect_error = None
        actions: list[Action] = []
        if self._close_requested:
            self._retire(record, "pool_closed", actions)
        self._settle(now, actions)
        return actions

    def connect_failed(
        self, slot: int, now: float, kind: FailureKind, error: object = None
    ) -> list[Action]:
        """Slot `slot` could not be connected; the driver has already dropped what it had.

        The host cools down. `kind` AUTH_FAILED fails the oldest waiter with it (wrong
        credentials are not fixed by another attempt); any other kind (CONNECT_FAILED,
        TLS_FAILED) lets the waiters fail over to another usable host. `error` is handed back
        in the `FailWaiter` actions it causes.
        """
        if not isinstance(kind, FailureKind):
            raise LocalProtocolError("kind must be a FailureKind")
        record = self._slot(slot, _CONNECT_FAILED)
        now = self._advance(now)
        self._move(record, _CONNECT_FAILED)
        del self._slots[record.id]
        self._closed_total["connect_failed"] += 1
        cooldown = self._cooldowns[record.host]
        counted = cooldown.record_failure(now, self._policy, self._rng)
        self._failing.add(record.host)
        self._last_connect_error = error
        actions: list[Action] = []
        if self._admission is not None:
            self._admission.slot_gone(record.host, record.id, actions)
            host = self._hosts[record.host]
            if counted and host.budget is not None and cooldown.until is not None:
                actions.append(ShareCooldown(host.budget, host, cooldown.until - now))
        if kind is FailureKind.AUTH_FAILED and self._waiters and not record.background_trial:
            head = next(iter(self._waiters))
            self._fail(head, FailureKind.AUTH_FAILED, error, actions)
        # Waiters that this failure leaves with nothing to wait for learn why from it, not from
        # a generic HOSTS_UNAVAILABLE: it is the attempt that was made for them.
        self._settle(now, actions, hopeless=(kind, error))
        return actions

    def connect_cancelled(self, slot: int, now: float) -> list[Action]:
        """The driver abandoned slot `slot`'s connection attempt because the pool is closing.

        Nothing is held against the host: it was never given the chance to answer.
        """
        record = self._slot(slot, _CONNECT_CANCELLED)
        now = self._advance(now)
        self._move(record, _CONNECT_CANCELLED)
        del self._slots[record.id]
        self._closed_total["pool_closed"] += 1
        actions: list[Action] = []
        if self._admission is not None:
            self._admission.slot_gone(record.host, record.id, actions)
        self._settle(now, actions)
        return actions

    def release(
        self, slot: int, now: float, *, healthy: bool, messages: int = 0, reason: str = "broken"
    ) -> list[Action]:
        """The lease on `slot` ended. `healthy=False` (transport error, timeout, protocol error,
        421, out of sync) closes it abruptly; a healthy slot is reused unless it is too old or has
        carried `max_messages_per_connection` messages, in which case it is retired with QUIT.
        `messages` is how many messages the lease sent. `reason` says why an unhealthy slot is
        closed, for `closed_total`: "broken" (the exchange failed), "stale" (found closed or
        unusable by the server before it was used), "out_of_sync" (bytes left unread) or
        "pool_closed" (the driver aborted it under its sender because the pool closed: nothing
        broke on the server's side).
        """
        # (type(True) is bool, not int: a bool is refused too.)
        if type(messages) is not int or messages < 0:
            raise LocalProtocolError("messages must be a non-negative integer")
        if reason not in _BROKEN_REASONS:
            raise LocalProtocolError(f"reason must be one of {', '.join(_BROKEN_REASONS)}")
        event = _RELEASE_HEALTHY if healthy else _RELEASE_BROKEN
        record = self._slot(slot, event)
        now = self._advance(now)
        record.messages += messages
        actions: list[Action] = []
        if not healthy:
            self._move(record, event)
            record.close_reason = reason
            actions.append(CloseSlot(record.id, graceful=False, reason=reason))
        else:
            record.idle_since = now
            self._move(record, event)
            retirement = self._retirement_on_release(record, now)
            if retirement is not None:
                self._retire(record, retirement, actions)
        self._settle(now, actions)
        return actions

    def probe_succeeded(self, slot: int, now: float) -> list[Action]:
        """The NOOP on `slot` was answered: it is fresh again and goes to the head waiter."""
        record = self._slot(slot, _PROBE_SUCCEEDED)
        now = self._advance(now)
        record.idle_since = now
        self._move(record, _PROBE_SUCCEEDED)
        actions: list[Action] = []
        if self._close_requested:
            self._retire(record, "pool_closed", actions)
        self._settle(now, actions)
        return actions

    def probe_failed(self, slot: int, now: float, *, reason: str = "probe_failed") -> list[Action]:
        """The NOOP on `slot` failed (timeout, disconnect, 421): close it and serve from elsewhere.
        `reason` is "stale" or "out_of_sync" when the driver found the connection closed by the
        server, or holding bytes nobody asked for, before it sent the NOOP (for `closed_total`,
        as `release` takes it).

        The host does not cool down: servers drop idle connections as a matter of course.
        """
        if reason not in _PROBE_REASONS:
            raise LocalProtocolError(f"reason must be one of {', '.join(_PROBE_REASONS)}")
        record = self._slot(slot, _PROBE_FAILED)
        now = self._advance(now)
        self._move(record, _PROBE_FAILED)
        # A probe cut short by close() says nothing about the connection.
        if self._close_requested:
            reason = "pool_closed"
        record.close_reason = reason
        actions: list[Action] = [CloseSlot(record.id, graceful=False, reason=reason)]
        self._settle(now, actions)
        return actions

    def slot_closed(self, slot: int, now: float) -> list[Action]:
        """The driver finished closing `slot`; its room goes to waiters or to the refill."""
        record = self._slot(slot, _SLOT_CLOSED)
        now = self._advance(now)
        self._move(record, _SLOT_CLOSED)
        del self._slots[record.id]
        self._closed_total[record.close_reason] += 1
        actions: list[Action] = []
        if self._admission is not None:
            self._admission.slot_gone(record.host, record.id, actions)
        # A slot retired for priority may have been the last backup slot, retired to make room
        # for a trial: its host still counts as in use for this settling pass.
        retired_from = (
            self._hosts[record.host].priority
            if record.close_reason == "retired_for_priority"
            else None
        )
        self._settle(now, actions, retired_from=retired_from)
        return actions

    def handle_timer(self, now: float) -> list[Action]:
        """Time has reached (at least) `next_deadline()`: expire, retire, refill."""
        now = self._advance(now)
        actions: list[Action] = []
        self._settle(now, actions)
        if self._refill_at is not None and self._refill_at <= now:
            self._refill_at = None
            while self._refill_deficit() > 0 and self._open(now, actions):
                pass
            self._arm_refill(now)
            if self._admission is not None:
                self._flush_admission(now, actions)
        return actions

    # ------------------------------------------- inputs from the store (shared budgets only)

    def lease_granted(self, request: int, now: float, lease: str | None) -> list[Action]:
        """The store gave `RequestLease` `request` a lease (None: the budget caps no connections,
        and the host is not cooling down fleet-wide). It opens a connection in this input, or
        goes back at once (`ReleaseLease`) when nothing needs it any more."""
        admission = self._need_admission()
        now = self._advance(now)
        actions: list[Action] = []
        admission.lease_granted(request, lease, actions)
        self._settle(now, actions)
        return actions

    def lease_refused(
        self,
        request: int,
        now: float,
        *,
        retry_at: float | None = None,
        cooling_until: float | None = None,
    ) -> list[Action]:
        """The store refused `RequestLease` `request`: the host is cooling down fleet-wide until
        `cooling_until` (this pool cools it down too), or the fleet holds every connection the
        budget allows (the pool asks again at `retry_at`, by default a short poll later: the
        store cannot say when a lease will be given back)."""
        admission = self._need_admission()
        now = self._advance(now)
        if retry_at is not None:
            _check_time("retry_at", retry_at)
        if cooling_until is not None:
            _check_time("cooling_until", cooling_until)
        cooling = admission.lease_refused(request, now, retry_at, cooling_until)
        if cooling is not None:
            host, until = cooling
            if self._cooldowns[host].adopt(now, until):
                self._failing.add(host)
        actions: list[Action] = []
        self._settle(now, actions)
        return actions

    def tokens_granted(
        self, request: int, now: float, times: Sequence[float], retry_at: float | None = None
    ) -> list[Action]:
        """The store answered `RequestTokens` `request`: one token per entry of `times`, each
        usable from that time (on the driver's clock) for a short lifetime; with no token,
        `retry_at` says when the fleet's next one comes."""
        admission = self._need_admission()
        now = self._advance(now)
        for at in times:
            _check_time("times", at)
        if retry_at is not None:
            _check_time("retry_at", retry_at)
        admission.tokens_granted(request, now, times, retry_at)
        actions: list[Action] = []
        self._settle(now, actions)
        return actions

    def request_failed(self, request: int, now: float) -> list[Action]:
        """The store could not answer `request` in time: the budget follows its
        `on_store_failure` until the store answers again (tried every few seconds)."""
        admission = self._need_admission()
        now = self._advance(now)
        admission.request_failed(request, now)
        actions: list[Action] = []
        self._settle(now, actions)
        return actions

    def store_failed(self, budget: str, now: float) -> list[Action]:
        """The driver's own store call for `budget` (renewing leases) failed, as in
        `request_failed`."""
        admission = self._need_admission()
        now = self._advance(now)
        admission.store_failed(budget, now)
        actions: list[Action] = []
        self._settle(now, actions)
        return actions

    def lease_lost(self, budget: str, lease: str, now: float) -> list[Action]:
        """The store no longer holds `lease` and had no room to take it back (it expired, or the
        store lost its data): its connection retires as soon as it is idle."""
        admission = self._need_admission()
        now = self._advance(now)
        admission.lease_lost(budget, lease)
        actions: list[Action] = []
        self._settle(now, actions)
        return actions

    def budget_statistics(self) -> dict[str, dict[str, object]]:
        """Per shared budget: the store's status as this pool sees it ("fleet", "local" or
        "refuse"), the leases held and the fleet tokens in hand. Empty without budgets."""
        return {} if self._admission is None else self._admission.statistics()

    def close(self, now: float) -> list[Action]:
        """Stop: no new grants, waiters fail POOL_CLOSED, idle slots close with QUIT.

        Leased slots are closed when released, connecting slots when their attempt ends,
        probing slots when their probe ends. Calling it again does nothing.
        """
        now = self._advance(now)
        if self._close_requested:
            return []
        self._close_requested = True
        self._refill_at = None
        actions: list[Action] = []
        for waiter in list(self._waiters):
            self._fail(waiter, FailureKind.POOL_CLOSED, None, actions)
        for record in self._slots_in(_IDLE):
            self._retire(record, "pool_closed", actions)
        if self._admission is not None:
            self._admission.close()
            self._flush_admission(now, actions)
        return actions

    # ---------------------------------------------------------------------------------- queries

    @property
    def is_closed(self) -> bool:
        """True once `close` was called and no slot is live any more."""
        return self._close_requested and not self._slots

    def next_deadline(self) -> float | None:
        """When `handle_timer` must next be called, or None when no timer is needed.

        The earliest of: a waiter's deadline, an idle slot's idle or age limit, the end of a
        host's cooldown, the scheduled refill, and (see `_admission`) while a waiter waits, the
        next token of a rate-limited host and a store retry.
        """
        # Called by the driver after every input, so every part is O(1) in the usual case: no
        # finished waiter at the top of the heap, the oldest idle slots at the front of their
        # indexes, no host failing.
        deadlines = self._deadlines
        waiters = self._waiters
        while deadlines and deadlines[0][1] not in waiters:
            heapq.heappop(deadlines)
        earliest = deadlines[0][0] if deadlines else None
        idle = self._idle
        if idle:
            # Addition is monotonic: the earliest idle limit is that of the slot idle the longest
            # (first in `_idle`), the earliest age limit that of the one connected the earliest.
            if self._idle_timeout is not None:
                due = next(iter(idle.values())).idle_since + self._idle_timeout
                if earliest is None or due < earliest:
                    earliest = due
            if self._max_age is not None:
                due = self._earliest_connection_idle().connected_at + self._max_age
                if earliest is None or due < earliest:
                    earliest = due
        if self._failing and not self._close_requested:
            cooldowns = self._cooldowns
            for host in self._failing:
                until = cooldowns[host].until
                if (
                    until is not None
                    and until > self._now
                    and (earliest is None or until < earliest)
                ):
                    earliest = until
        refill_at = self._refill_at
        if refill_at is not None and (earliest is None or refill_at < earliest):
            earliest = refill_at
        if self._admission is not None and not self._close_requested:
            token_due = self._admission.next_deadline(self._now, bool(waiters))
            if token_due is not None and (earliest is None or token_due < earliest):
                earliest = token_due
        return earliest

    def slot_host(self, slot: int) -> Host:
        """The host a live slot is connected (or connecting) to."""
        record = self._slots.get(slot) if isinstance(slot, int) else None
        if record is None:
            raise LocalProtocolError(f"unknown slot {slot!r}")
        return self._hosts[record.host]

    def slot_state(self, slot: int) -> SlotState:
        """The state of a slot; CLOSED for a slot that is gone."""
        if not isinstance(slot, int) or not 0 <= slot < self._next_slot:
            raise LocalProtocolError(f"unknown slot {slot!r}")
        record = self._slots.get(slot)
        return _CLOSED if record is None else record.state

    def statistics(self, now: float | None = None) -> PoolStatistics:
        """A frozen snapshot. `cooling_down` is judged at `now`, or at the latest `now` seen."""
        at = self._now if now is None else max(now, self._now)
        by_state = Counter(record.state for record in self._slots.values())
        by_host = Counter(record.host for record in self._slots.values())
        hosts = {
            host.key: HostStatistics(
                live=by_host[index],
                cooling_down=cooldown.is_cooling(at),
                consecutive_failures=cooldown.consecutive_failures,
                cooldown_until=cooldown.until,
                connects_suppressed=self._connects_suppressed[index],
            )
            for index, (host, cooldown) in enumerate(zip(self._hosts, self._cooldowns, strict=True))
        }
        return PoolStatistics(
            live=len(self._slots),
            connecting=by_state[_CONNECTING],
            idle=by_state[_IDLE],
            probing=by_state[_PROBING],
            leased=by_state[_LEASED],
            closing=by_state[_CLOSING],
            waiting=len(self._waiters),
            created_total=self._created_total,
            closed_total=MappingProxyType(dict(self._closed_total)),
            hosts=MappingProxyType(hosts),
            close_requested=self._close_requested,
        )

    # ---------------------------------------------------------------------- index self-check

    def _cached_indexes(self) -> dict[str, object]:
        """The indexes kept beside the slots' states, as the tests compare them with
        `_recomputed_indexes()` after every step: equal means every index is in step."""
        earliest = self._earliest_connected_idle
        return {
            "by_state": {state: sorted(slots) for state, slots in self._by_state.items()},
            "idle_since": [record.idle_since for record in self._idle.values()],
            "idle_off_top": self._idle_off_top,
            "earliest_connected_idle": (
                None if earliest is None else (earliest.state, earliest.connected_at)
            ),
            "failing": sorted(self._failing),
        }

    def _recomputed_indexes(self) -> dict[str, object]:
        """What `_cached_indexes()` must be, derived from the slots and cooldowns alone."""
        idle = [record for record in self._slots.values() if record.state is _IDLE]
        return {
            "by_state": {
                state: sorted(slot for slot, record in self._slots.items() if record.state is state)
                for state in self._by_state
            },
            # `_idle` must hold the idle slots in order of idle_since.
            "idle_since": sorted(record.idle_since for record in idle),
            "idle_off_top": sum(1 for record in idle if self._off_top[record.host]),
            # None is always allowed: it means "look for it again".
            "earliest_connected_idle": (
                None
                if self._earliest_connected_idle is None
                else (_IDLE, min(record.connected_at for record in idle))
            ),
            "failing": [
                index
                for index, cooldown in enumerate(self._cooldowns)
                if cooldown.consecutive_failures > 0 and cooldown.until is not None
            ],
        }

    # --------------------------------------------------------------------------------- plumbing

    def _advance(self, now: float) -> float:
        if type(now) is float and now > self._now:  # the usual input (never NaN: NaN > x fails)
            self._now = now
            return now
        if not isinstance(now, (int, float)) or math.isnan(now):
            raise LocalProtocolError("now must be a number")
        if now > self._now:
            self._now = float(now)
        return self._now

    def _slot(self, slot: int, event: SlotEvent) -> _Slot:
        record = self._slots.get(slot) if isinstance(slot, int) else None
        if record is None:
            raise LocalProtocolError(f"unknown slot {slot!r}")
        if event not in SLOT_TRANSITIONS[record.state]:
            raise LocalProtocolError(
                f"slot {slot} is {record.state.value}: {event.value} is not allowed"
            )
        return record

    def _move(self, record: _Slot, event: SlotEvent) -> None:
        # Inputs are checked by `_slot` and decisions are only taken for slots in the right
        # state, so a KeyError here would be a bug in this module, not in the caller. This is the
        # one place a slot changes state, so the indexes over states are kept here.
        old = record.state
        new = SLOT_TRANSITIONS[old][event]
        record.state = new
        by_state = self._by_state
        del by_state[old][record.id]
        if new is not _CLOSED:
            by_state[new][record.id] = record
        if old is _IDLE:
            if record is self._earliest_connected_idle:
                self._earliest_connected_idle = None
            if self._off_top[record.host]:
                self._idle_off_top -= 1
        elif new is _IDLE:
            # `connected_at` is set before a slot first becomes idle and never changes after.
            earliest = self._earliest_connected_idle
            if len(by_state[_IDLE]) == 1 or (
                earliest is not None and record.connected_at < earliest.connected_at
            ):
                self._earliest_connected_idle = record
            if self._off_top[record.host]:
                self._idle_off_top += 1

    def _slots_in(self, state: SlotState) -> list[_Slot]:
        # In slot id order, which is the order actions about several slots are returned in.
        return [record for record in self._slots.values() if record.state is state]

    def _count(self, *states: SlotState) -> int:
        return sum(len(self._by_state[state]) for state in states)

    def _host_live(self, host: int) -> int:
        return sum(1 for record in self._slots.values() if record.host == host)

    def _host_has_room(self, host: int) -> bool:
        limit = self._hosts[host].max_connections
        if limit is not None and self._host_live(host) >= limit:
            return False
        return self._admission is None or self._admission.may_open(host)

    def _host_has_local_room(self, host: int) -> bool:
        limit = self._hosts[host].max_connections
        return limit is None or self._host_live(host) < limit

    def _host_usable(self, host: int, now: float) -> bool:
        cooldown = self._cooldowns[host]
        if cooldown.is_cooling(now):
            return False
        if cooldown.on_probation(now):
            # One trial connection at a time to a host that has just come out of cooldown.
            return not any(record.host == host for record in self._connecting.values())
        return True

    def _all_hosts_cooling(self, now: float) -> bool:
        return all(cooldown.is_cooling(now) for cooldown in self._cooldowns)

    def _pick_idle(self, now: float, *, fresh: bool) -> _Slot | None:
        # Most recently used first: it is the least likely to need a probe, and the rest age
        # out by idle_timeout, so the pool shrinks back after a burst. "Most recently used" is
        # the greatest (idle_since, id); `_idle` is in order of idle_since, so it is among the
        # last entries that share the newest idle_since. A slot needs a probe when
        # `now - idle_since` reaches keepalive_interval, which holds for every slot idle at least
        # as long once it holds for the newest: so if the newest needs a probe, every one does.
        idle = self._idle
        if not idle:
            return None
        if self._admission is not None:
            return self._pick_idle_admitted(now, fresh=fresh)
        newest_first = reversed(idle.values())
        best = next(newest_first)
        newest = best.idle_since
        for record in newest_first:
            if record.idle_since != newest:
                break
            if record.id > best.id:
                best = record
        if fresh and self._keepalive is not None and now - newest >= self._keepalive:
            return None
        return best

    def _earliest_connection_idle(self) -> _Slot:
        # Only asked while some slot is idle. Usually cached: see `_move`.
        record = self._earliest_connected_idle
        if record is None:
            record = min(self._idle.values(), key=_connected_at)
            self._earliest_connected_idle = record
        return record

    def _retirement_on_release(self, record: _Slot, now: float) -> str | None:
        if self._close_requested:
            return "pool_closed"
        if self._max_age is not None and now >= record.connected_at + self._max_age:
            return "max_age"
        limit = self._max_messages
        if limit is not None and record.messages >= limit:
            return "max_messages"
        return None

    def _retirement_while_idle(self, record: _Slot, now: float) -> str | None:
        # No slot is idle once close() was called: close() retires the idle ones, and a slot that
        # becomes idle afterwards is retired by the same input.
        if self._max_age is not None and now >= record.connected_at + self._max_age:
            return "max_age"
        if self._idle_timeout is not None and now >= record.idle_since + self._idle_timeout:
            return "idle_timeout"
        return None

    def _retire(self, record: _Slot, reason: str, actions: list[Action]) -> None:
        self._move(record, _RETIRE)
        record.close_reason = reason
        actions.append(CloseSlot(record.id, graceful=True, reason=reason))

    def _grant(self, record: _Slot, waiter: int, actions: list[Action]) -> None:
        self._move(record, _GRANT)
        self._waiters.pop(waiter, None)
        actions.append(GrantSlot(record.id, waiter))

    def _fail(self, waiter: int, kind: FailureKind, error: object, actions: list[Action]) -> None:
        del self._waiters[waiter]
        actions.append(FailWaiter(waiter, kind, error))

    def _open(self, now: float, actions: list[Action]) -> bool:
        if len(self._slots) >= self._config.max_size:
            return False
        usable = [i for i in range(len(self._hosts)) if self._host_usable(i, now)]
        host = self._selector.choose(usable, self._host_has_room)
        if len(usable) < len(self._hosts):
            self._count_suppressed(now, host)
        if host is None:
            if self._admission is not None:
                self._want_lease(usable)
            return False
        self._add_slot(host, actions, background_trial=False)
        return True

    def _count_suppressed(self, now: float, chosen: int | None) -> None:
        # A connection was needed and a host was passed over because it is cooling down. Hosts of
        # a worse priority than the one chosen would not have been asked anyway: not counted.
        hosts = self._hosts
        worst = math.inf if chosen is None else hosts[chosen].priority
        for index in self._failing:
            if hosts[index].priority <= worst and self._cooldowns[index].is_cooling(now):
                self._connects_suppressed[index] += 1

    def _add_slot(self, host: int, actions: list[Action], *, background_trial: bool) -> None:
        record = _Slot(self._next_slot, host, background_trial=background_trial)
        self._next_slot += 1
        self._slots[record.id] = record
        self._connecting[record.id] = record
        self._created_total += 1
        if self._admission is not None:
            self._admission.bind(host, record.id)
        actions.append(OpenConnection(record.id, self._hosts[host]))

    def _can_open(self, now: float) -> bool:
        if len(self._slots) >= self._config.max_size:
            return False
        usable = [i for i in range(len(self._hosts)) if self._host_usable(i, now)]
        best = self._selector.best_priority(usable)
        if any(self._hosts[i].priority == best and self._host_has_room(i) for i in usable):
            return True
        if self._admission is not None:
            self._want_lease(usable)
        return False

    def _refill_deficit(self) -> int:
        # Only asked while the pool is open: close() cancels the refill and stops settling.
        return self._min_size - (len(self._slots) - len(self._closing))

    # ---------------------------------------------------------------------------- the settling

    def _settle(
        self,
        now: float,
        actions: list[Action],
        *,
        retired_from: int | None = None,
        hopeless: tuple[FailureKind, object] | None = None,
    ) -> None:
        # Each step is guarded by an O(1) test of whether it can have anything to do, so that an
        # input on a warm pool with nobody waiting (the driver's per-message path) costs little.
        if self._deadlines and self._deadlines[0][0] <= now:
            self._expire_waiters(now, actions)
        idle = self._idle
        # Whether `_retirement_while_idle` holds for some idle slot, by the very comparisons it
        # makes: with `now` fixed, subtraction is monotonic, so if any idle slot is past
        # idle_timeout the one idle the longest (first in `_idle`) is, and if any is past
        # max_connection_age the one connected the earliest is.
        if idle and (
            (
                self._idle_timeout is not None
                and now >= next(iter(idle.values())).idle_since + self._idle_timeout
            )
            or (
                self._max_age is not None
                and now >= self._earliest_connection_idle().connected_at + self._max_age
            )
        ):
            for record in self._slots_in(_IDLE):
                reason = self._retirement_while_idle(record, now)
                if reason is not None:
                    self._retire(record, reason, actions)
        admission = self._admission
        if admission is not None and admission.has_doomed():
            self._retire_doomed(actions)
        if self._close_requested:
            return
        if self._waiters:
            self._serve(now, actions)
            self._fail_hopeless(now, actions, hopeless)
            if admission is not None and self._waiters:
                self._fail_unservable(now, actions)
        # A host can be on probation only after a failure.
        if self._failing and not self._single_priority:
            self._open_trials(now, actions, retired_from)
        # Zero whenever every host is in one priority group.
        if self._idle_off_top and not self._waiters:
            self._retire_for_priority(actions)
        if self._min_size:
            self._arm_refill(now)
        if admission is not None:
            self._flush_admission(now, actions)

    # ------------------------------------------------ rates and budgets (see `_admission`)

    def _need_admission(self) -> Admission:
        if self._admission is None:
            raise LocalProtocolError("no host of this pool has a shared budget")
        return self._admission

    def _flush_admission(self, now: float, actions: list[Action]) -> None:
        admission = self._admission
        assert admission is not None
        demand = min(len(self._waiters), len(self._idle))
        # A lease granted for a waiter or for the refill waits for its connection to be opened
        # (the refill opens from `handle_timer` only); any other goes back at once.
        keep_spare = not self._close_requested and (
            bool(self._waiters) or (self._min_size > 0 and self._refill_deficit() > 0)
        )
        # How long the newest waiter can wait (O(1); with one acquire_timeout, the latest).
        wait = next(reversed(self._waiters.values())) - now if demand else 0.0
        admission.flush(now, demand, actions, keep_spare=keep_spare, wait=wait)

    def _pick_idle_admitted(self, now: float, *, fresh: bool) -> _Slot | None:
        # As `_pick_idle`, among idle slots whose host may start a message now. With `fresh`
        # False, the candidates for a probe: slots that need one. Walks the idle slots, which
        # only pools with rates or budgets do.
        admission = self._admission
        assert admission is not None
        keepalive = self._keepalive
        if not fresh:
            # Oldest first: if the slot idle the longest needs no probe, none does.
            if keepalive is None:
                return None
            for record in self._idle.values():
                if now - record.idle_since < keepalive:
                    return None
                if admission.grantable(record.host, now):
                    return record
            return None
        best: _Slot | None = None
        for record in reversed(self._idle.values()):
            stale = keepalive is not None and now - record.idle_since >= keepalive
            if stale == fresh:
                continue
            if best is not None and record.idle_since < best.idle_since:
                break
            if not admission.grantable(record.host, now):
                continue
            if best is None or record.id > best.id:
                best = record
        return best

    def _cover_admitted(self, now: float, actions: list[Action], covering: int) -> None:
        # Waiters beyond the tokens there are now cannot start before the next token anyway:
        # open connections only for those that could, plus one warming up for the next token.
        admission = self._admission
        assert admission is not None
        room = min(len(self._waiters), admission.tokens_now(now) + 1) - covering
        while room > 0:
            record = self._pick_idle_admitted(now, fresh=False)
            if record is None:
                break
            self._move(record, _PROBE)
            actions.append(ProbeSlot(record.id))
            room -= 1
        # Idle slots still here wait for their host's next token: each covers a waiter.
        room -= len(self._idle)
        while room > 0 and self._open(now, actions):
            room -= 1

    def _want_lease(self, usable: list[int]) -> None:
        # No host of the best usable group may be opened: if a lease is what one lacks, ask.
        admission = self._admission
        assert admission is not None
        best = self._selector.best_priority(usable)
        for index in usable:
            if (
                self._hosts[index].priority == best
                and self._host_has_local_room(index)
                and not admission.may_open(index)
            ):
                admission.want(index)
                return

    def _retire_doomed(self, actions: list[Action]) -> None:
        admission = self._admission
        assert admission is not None
        for slot in admission.doomed():
            record = self._slots.get(slot)
            if record is not None and record.state is _IDLE:
                self._retire(record, "lease_lost", actions)

    def _held_back_by_rate(self, now: float) -> bool:
        # A waiter that expires while an idle connection lacked only a token was rate limited.
        admission = self._admission
        assert admission is not None
        return admission.has_rates and any(
            admission.rate_limited(record.host, now) for record in self._idle.values()
        )

    def _fail_unservable(self, now: float, actions: list[Action]) -> None:
        admission = self._admission
        assert admission is not None
        hosts = range(len(self._hosts))
        if all(admission.blocked(i, now, admission.budget_live(i)) for i in hosts):
            for waiter in list(self._waiters):
                self._fail(waiter, FailureKind.BUDGET_UNAVAILABLE, None, actions)
            return
        if not admission.every_host_rated:
            return
        # Cheap first: if even by the earliest deadline queued (a finished waiter's, perhaps,
        # which is earlier still) there are tokens for every waiter, nobody is hopeless.
        earliest = self._deadlines[0][0]
        bound = admission.tokens_before(now, earliest)
        if bound is not None and bound > len(self._waiters):
            return
        # FIFO: a waiter's token comes after those of every waiter ahead of it.
        ahead = 0
        hopeless = self._rate_failure()
        for waiter, deadline in list(self._waiters.items()):
            bound = admission.tokens_before(now, deadline)
            if bound is not None and bound <= ahead:
                self._fail(waiter, hopeless, None, actions)
            else:
                ahead += 1

    def _rate_failure(self) -> FailureKind:
        # A token that cannot come in time because every host's store is away under "refuse"
        # is held back by the store, not by the rate (docs/guide/failures.md).
        admission = self._admission
        assert admission is not None
        if all(admission.refusing(i) for i in range(len(self._hosts))):
            return FailureKind.BUDGET_UNAVAILABLE
        return FailureKind.RATE_LIMITED

    def _expire_waiters(self, now: float, actions: list[Action]) -> None:
        exhausted = FailureKind.POOL_EXHAUSTED
        if self._admission is not None and self._held_back_by_rate(now):
            exhausted = self._rate_failure()
        while self._deadlines and self._deadlines[0][0] <= now:
            _, waiter = heapq.heappop(self._deadlines)
            if waiter not in self._waiters:
                continue
            if self._hosts_failing():
                self._fail(waiter, FailureKind.HOSTS_UNAVAILABLE, self._last_connect_error, actions)
            else:
                self._fail(waiter, exhausted, None, actions)

    def _hosts_failing(self) -> bool:
        # "Cooling down or failing": out of cooldown but with no success since the last failure
        # counts as failing too (a trial connection may be hanging right now). A host cools down
        # only after a failure, so this is "every host failed since its last success".
        return len(self._failing) == len(self._hosts)

    def _serve(self, now: float, actions: list[Action]) -> None:
        # Only called while some waiter waits.
        while self._waiters:
            record = self._pick_idle(now, fresh=True)
            if record is None:
                break
            if self._admission is not None:
                self._admission.take(record.host, now)
            self._grant(record, next(iter(self._waiters)), actions)
        # A background trial covers nobody: it goes to a host that failed last time, and may hang
        # for connect_timeout while the next group could serve the waiter now.
        covering = len(self._by_state[_PROBING]) + sum(
            1 for record in self._connecting.values() if not record.background_trial
        )
        if self._admission is not None:
            self._cover_admitted(now, actions, covering)
            return
        uncovered = len(self._waiters) - covering
        while uncovered > 0:
            # Every idle slot left needs a probe, or the loop above would have granted it.
            record = self._pick_idle(now, fresh=False)
            if record is not None:
                self._move(record, _PROBE)
                actions.append(ProbeSlot(record.id))
            elif not self._open(now, actions):
                break
            uncovered -= 1

    def _fail_hopeless(
        self, now: float, actions: list[Action], cause: tuple[FailureKind, object] | None
    ) -> None:
        if not self._waiters or not self._all_hosts_cooling(now):
            return
        if self._count(_CONNECTING, _IDLE, _PROBING, _LEASED):
            return
        recovery = min(cooldown.until for cooldown in self._cooldowns if cooldown.until is not None)
        if cause is not None and not any(self._proven):
            # The attempt made for these waiters just failed, and no host has ever given this
            # pool a session: a refused port, the wrong TLS mode, a server that never greets are
            # configuration errors far more often than a restart. They learn it now, from the
            # attempt, rather than after trials until their deadline. (Waiters that arrive during
            # the cooldown wait for the next trial if it can come in time, and learn from it.)
            recovery = math.inf
        kind, error = cause or (FailureKind.HOSTS_UNAVAILABLE, self._last_connect_error)
        for waiter, deadline in list(self._waiters.items()):
            if deadline <= recovery:
                self._fail(waiter, kind, error, actions)

    def _open_trials(self, now: float, actions: list[Action], retired_from: int | None) -> None:
        # Recovery must not depend on a waiter needing a new connection: while a worse host's
        # slots serve every acquire, none does, and traffic would stay on the backup forever. So
        # the pool tries a recovered better host itself. One trial at a time per host, and a
        # failed trial starts a longer cooldown, so this costs one connect per cooldown period.
        # Only called with several priority groups and some host failing.
        hosts = self._hosts
        cooldowns = self._cooldowns
        # Cheap first: usually no failing host is out of its cooldown yet.
        if all(cooldowns[index].is_cooling(now) for index in self._failing):
            return
        # The priorities in use. A slot retired for priority counts until it is gone, and in the
        # input that reports it gone (`retired_from`): it may be the last backup slot, retired to
        # make room for this very trial.
        in_use = [
            hosts[record.host].priority
            for record in self._slots.values()
            if record.state is not _CLOSING or record.close_reason == "retired_for_priority"
        ]
        if retired_from is not None:
            in_use.append(retired_from)
        if not in_use:
            return
        worst = max(in_use)
        for index in takewhile(lambda i: hosts[i].priority < worst, self._by_priority):
            priority = hosts[index].priority
            # `_host_usable` is False for a host on probation with a connection in flight: the
            # one-trial-at-a-time rule, shared with waiters' connections.
            if not (
                cooldowns[index].on_probation(now)
                and self._host_usable(index, now)
                and self._host_has_room(index)
            ):
                if (
                    self._admission is not None
                    and cooldowns[index].on_probation(now)
                    and self._host_usable(index, now)
                    and self._host_has_local_room(index)
                ):
                    self._admission.want(index)
                continue
            if len(self._slots) < self._config.max_size:
                self._add_slot(index, actions, background_trial=True)
            elif not self._waiters and not self._closing:
                # Full: retire one idle slot to a worse host and open the trial when it is gone.
                # Only while no slot is closing (one already frees room), and never ahead of a
                # waiter, who would get that idle slot now.
                self._make_room_for_trial(priority, actions)

    def _make_room_for_trial(self, priority: int, actions: list[Action]) -> None:
        hosts = self._hosts
        # The worst host's least recently used idle slot: the least likely to be missed.
        candidates = [
            record for record in self._slots_in(_IDLE) if hosts[record.host].priority > priority
        ]
        if candidates:
            victim = max(
                candidates,
                key=lambda record: (hosts[record.host].priority, -record.idle_since, -record.id),
            )
            self._retire(victim, "retired_for_priority", actions)

    def _retire_for_priority(self, actions: list[Action]) -> None:
        # Only called while some idle slot sits on a host outside the best configured group.
        hosts = self._hosts
        off_top = self._off_top
        worse = [
            record
            for record in self._slots.values()
            if record.state is _IDLE and off_top[record.host]
        ]
        # A success resets the failures and the cooldown together, so "no failures" is healthy.
        healthy = [index for index in range(len(hosts)) if index not in self._failing]
        best = self._selector.best_priority(healthy)
        if best is None:
            return
        for record in worse:
            if hosts[record.host].priority > best:
                self._retire(record, "retired_for_priority", actions)

    def _arm_refill(self, now: float) -> None:
        # Only called when min_size > 0.
        if self._min_size <= len(self._slots) - len(self._closing):
            self._refill_at = None
        elif self._refill_at is None and self._can_open(now):
            self._refill_at = now + self._config.refill_delay


def _check_time(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise LocalProtocolError(f"{name} must be a number")
