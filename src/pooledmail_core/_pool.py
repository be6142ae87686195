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

Time only moves forward: an input whose `now` is older than one already seen (two driver tasks
read the clock in one order and call in the other) is treated as happening at the newest `now`.
"""

from __future__ import annotations

import heapq
import math
from collections import Counter
from itertools import takewhile
from types import MappingProxyType

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
)
from ._slots import SLOT_TRANSITIONS, SlotEvent, SlotState

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
    "SlotState",
]

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
)


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
        self.state = SlotState.CONNECTING
        self.connected_at = 0.0
        self.idle_since = 0.0
        self.messages = 0
        self.close_reason = ""


class PoolMachine:
    """The whole state of one SMTP connection pool, driven by synchronous inputs."""

    def __init__(self, config: PoolConfig, rng: RandomSource) -> None:
        self._config = config
        self._rng = rng
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
        self._slots: dict[int, _Slot] = {}
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
        # Warm min_size as soon as the driver first calls handle_timer.
        self._refill_at: float | None = -math.inf if config.min_size > 0 else None

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
                self._grant(slot, waiter, actions)
                self._arm_refill(now)
                return waiter, actions
        self._waiters[waiter] = float(deadline)
        heapq.heappush(self._deadlines, (float(deadline), waiter))
        self._settle(now, actions)
        return waiter, actions

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
        record = self._slot(slot, SlotEvent.CONNECTED)
        now = self._advance(now)
        self._move(record, SlotEvent.CONNECTED)
        record.connected_at = now
        record.idle_since = now
        self._cooldowns[record.host].record_success()
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
        record = self._slot(slot, SlotEvent.CONNECT_FAILED)
        now = self._advance(now)
        self._move(record, SlotEvent.CONNECT_FAILED)
        del self._slots[record.id]
        self._closed_total["connect_failed"] += 1
        self._cooldowns[record.host].record_failure(now, self._policy, self._rng)
        self._last_connect_error = error
        actions: list[Action] = []
        if kind is FailureKind.AUTH_FAILED and self._waiters:
            head = next(iter(self._waiters))
            self._fail(head, FailureKind.AUTH_FAILED, error, actions)
        self._settle(now, actions)
        return actions

    def release(self, slot: int, now: float, *, healthy: bool, messages: int = 0) -> list[Action]:
        """The lease on `slot` ended. `healthy=False` (transport error, timeout, protocol error,
        421, out of sync) closes it abruptly; a healthy slot is reused unless it is too old or has
        carried `max_messages_per_connection` messages, in which case it is retired with QUIT.
        `messages` is how many messages the lease sent.
        """
        if isinstance(messages, bool) or not isinstance(messages, int) or messages < 0:
            raise LocalProtocolError("messages must be a non-negative integer")
        event = SlotEvent.RELEASE_HEALTHY if healthy else SlotEvent.RELEASE_BROKEN
        record = self._slot(slot, event)
        now = self._advance(now)
        record.messages += messages
        actions: list[Action] = []
        self._move(record, event)
        if not healthy:
            record.close_reason = "broken"
            actions.append(CloseSlot(record.id, graceful=False))
        else:
            record.idle_since = now
            reason = self._retirement_due(record, now, on_release=True)
            if reason is not None:
                self._retire(record, reason, actions)
        self._settle(now, actions)
        return actions

    def probe_succeeded(self, slot: int, now: float) -> list[Action]:
        """The NOOP on `slot` was answered: it is fresh again and goes to the head waiter."""
        record = self._slot(slot, SlotEvent.PROBE_SUCCEEDED)
        now = self._advance(now)
        self._move(record, SlotEvent.PROBE_SUCCEEDED)
        record.idle_since = now
        actions: list[Action] = []
        if self._close_requested:
            self._retire(record, "pool_closed", actions)
        self._settle(now, actions)
        return actions

    def probe_failed(self, slot: int, now: float) -> list[Action]:
        """The NOOP on `slot` failed (timeout, disconnect, 421): close it and serve from elsewhere.

        The host does not cool down: servers drop idle connections as a matter of course.
        """
        record = self._slot(slot, SlotEvent.PROBE_FAILED)
        now = self._advance(now)
        self._move(record, SlotEvent.PROBE_FAILED)
        record.close_reason = "probe_failed"
        actions: list[Action] = [CloseSlot(record.id, graceful=False)]
        self._settle(now, actions)
        return actions

    def slot_closed(self, slot: int, now: float) -> list[Action]:
        """The driver finished closing `slot`; its room goes to waiters or to the refill."""
        record = self._slot(slot, SlotEvent.SLOT_CLOSED)
        now = self._advance(now)
        self._move(record, SlotEvent.SLOT_CLOSED)
        del self._slots[record.id]
        self._closed_total[record.close_reason] += 1
        actions: list[Action] = []
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
        return actions

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
        for record in self._slots_in(SlotState.IDLE):
            self._retire(record, "pool_closed", actions)
        return actions

    # ---------------------------------------------------------------------------------- queries

    @property
    def is_closed(self) -> bool:
        """True once `close` was called and no slot is live any more."""
        return self._close_requested and not self._slots

    def next_deadline(self) -> float | None:
        """When `handle_timer` must next be called, or None when no timer is needed.

        The earliest of: a waiter's deadline, an idle slot's idle or age limit, the end of a
        host's cooldown, the scheduled refill.
        """
        candidates: list[float] = []
        while self._deadlines and self._deadlines[0][1] not in self._waiters:
            heapq.heappop(self._deadlines)
        if self._deadlines:
            candidates.append(self._deadlines[0][0])
        config = self._config
        for record in self._slots_in(SlotState.IDLE):
            if config.idle_timeout is not None:
                candidates.append(record.idle_since + config.idle_timeout)
            if config.max_connection_age is not None:
                candidates.append(record.connected_at + config.max_connection_age)
        if not self._close_requested:
            for cooldown in self._cooldowns:
                if cooldown.until is not None and cooldown.until > self._now:
                    candidates.append(cooldown.until)
        if self._refill_at is not None:
            candidates.append(self._refill_at)
        return min(candidates, default=None)

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
        return SlotState.CLOSED if record is None else record.state

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
            )
            for index, (host, cooldown) in enumerate(zip(self._hosts, self._cooldowns, strict=True))
        }
        return PoolStatistics(
            live=len(self._slots),
            connecting=by_state[SlotState.CONNECTING],
            idle=by_state[SlotState.IDLE],
            probing=by_state[SlotState.PROBING],
            leased=by_state[SlotState.LEASED],
            closing=by_state[SlotState.CLOSING],
            waiting=len(self._waiters),
            created_total=self._created_total,
            closed_total=MappingProxyType(dict(self._closed_total)),
            hosts=MappingProxyType(hosts),
            close_requested=self._close_requested,
        )

    # --------------------------------------------------------------------------------- plumbing

    def _advance(self, now: float) -> float:
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

    @staticmethod
    def _move(record: _Slot, event: SlotEvent) -> None:
        # Inputs are checked by `_slot` and decisions are only taken for slots in the right
        # state, so a KeyError here would be a bug in this module, not in the caller.
        record.state = SLOT_TRANSITIONS[record.state][event]

    def _slots_in(self, state: SlotState) -> list[_Slot]:
        return [record for record in self._slots.values() if record.state is state]

    def _count(self, *states: SlotState) -> int:
        return sum(1 for record in self._slots.values() if record.state in states)

    def _host_live(self, host: int) -> int:
        return sum(1 for record in self._slots.values() if record.host == host)

    def _host_has_room(self, host: int) -> bool:
        limit = self._hosts[host].max_connections
        return limit is None or self._host_live(host) < limit

    def _host_usable(self, host: int, now: float) -> bool:
        cooldown = self._cooldowns[host]
        if cooldown.is_cooling(now):
            return False
        if cooldown.on_probation(now):
            # One trial connection at a time to a host that has just come out of cooldown.
            return not any(
                record.host == host and record.state is SlotState.CONNECTING
                for record in self._slots.values()
            )
        return True

    def _all_hosts_cooling(self, now: float) -> bool:
        return all(cooldown.is_cooling(now) for cooldown in self._cooldowns)

    def _needs_probe(self, record: _Slot, now: float) -> bool:
        interval = self._config.keepalive_interval
        return interval is not None and now - record.idle_since >= interval

    def _pick_idle(self, now: float, *, fresh: bool) -> _Slot | None:
        # Most recently used first: it is the least likely to need a probe, and the rest age
        # out by idle_timeout, so the pool shrinks back after a burst.
        best: _Slot | None = None
        for record in self._slots_in(SlotState.IDLE):
            if fresh and self._needs_probe(record, now):
                continue
            if best is None or (record.idle_since, record.id) > (best.idle_since, best.id):
                best = record
        return best

    def _retirement_due(self, record: _Slot, now: float, *, on_release: bool) -> str | None:
        config = self._config
        if self._close_requested:
            return "pool_closed"
        age_limit = config.max_connection_age
        if age_limit is not None and now - record.connected_at >= age_limit:
            return "max_age"
        if on_release:
            limit = config.max_messages_per_connection
            if limit is not None and record.messages >= limit:
                return "max_messages"
        elif config.idle_timeout is not None and now - record.idle_since >= config.idle_timeout:
            return "idle_timeout"
        return None

    def _retire(self, record: _Slot, reason: str, actions: list[Action]) -> None:
        self._move(record, SlotEvent.RETIRE)
        record.close_reason = reason
        actions.append(CloseSlot(record.id, graceful=True))

    def _grant(self, record: _Slot, waiter: int, actions: list[Action]) -> None:
        self._move(record, SlotEvent.GRANT)
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
        if host is None:
            return False
        self._add_slot(host, actions, background_trial=False)
        return True

    def _add_slot(self, host: int, actions: list[Action], *, background_trial: bool) -> None:
        record = _Slot(self._next_slot, host, background_trial=background_trial)
        self._next_slot += 1
        self._slots[record.id] = record
        self._created_total += 1
        actions.append(OpenConnection(record.id, self._hosts[host]))

    def _can_open(self, now: float) -> bool:
        if len(self._slots) >= self._config.max_size:
            return False
        usable = [i for i in range(len(self._hosts)) if self._host_usable(i, now)]
        best = self._selector.best_priority(usable)
        return any(self._hosts[i].priority == best and self._host_has_room(i) for i in usable)

    def _refill_deficit(self) -> int:
        # Only asked while the pool is open: close() cancels the refill and stops settling.
        return self._config.min_size - (len(self._slots) - self._count(SlotState.CLOSING))

    # ---------------------------------------------------------------------------- the settling

    def _settle(
        self, now: float, actions: list[Action], *, retired_from: int | None = None
    ) -> None:
        self._expire_waiters(now, actions)
        for record in self._slots.values():
            if record.state is SlotState.IDLE:
                reason = self._retirement_due(record, now, on_release=False)
                if reason is not None:
                    self._retire(record, reason, actions)
        if self._close_requested:
            return
        self._serve(now, actions)
        self._fail_hopeless(now, actions)
        self._open_trials(now, actions, retired_from)
        if not self._waiters:
            self._retire_for_priority(actions)
        self._arm_refill(now)

    def _expire_waiters(self, now: float, actions: list[Action]) -> None:
        while self._deadlines and self._deadlines[0][0] <= now:
            _, waiter = heapq.heappop(self._deadlines)
            if waiter not in self._waiters:
                continue
            if self._hosts_failing(now):
                self._fail(waiter, FailureKind.HOSTS_UNAVAILABLE, self._last_connect_error, actions)
            else:
                self._fail(waiter, FailureKind.POOL_EXHAUSTED, None, actions)

    def _hosts_failing(self, now: float) -> bool:
        # "Cooling down or failing": out of cooldown but with no success since the last failure
        # counts as failing too (a trial connection may be hanging right now).
        return all(
            cooldown.is_cooling(now) or cooldown.consecutive_failures > 0
            for cooldown in self._cooldowns
        )

    def _serve(self, now: float, actions: list[Action]) -> None:
        if not self._waiters:
            return
        while self._waiters:
            record = self._pick_idle(now, fresh=True)
            if record is None:
                break
            self._grant(record, next(iter(self._waiters)), actions)
        # A background trial covers nobody: it goes to a host that failed last time, and may hang
        # for connect_timeout while the next group could serve the waiter now.
        covering = sum(
            1
            for record in self._slots.values()
            if record.state is SlotState.PROBING
            or (record.state is SlotState.CONNECTING and not record.background_trial)
        )
        uncovered = len(self._waiters) - covering
        while uncovered > 0:
            # Every idle slot left needs a probe, or the loop above would have granted it.
            record = self._pick_idle(now, fresh=False)
            if record is not None:
                self._move(record, SlotEvent.PROBE)
                actions.append(ProbeSlot(record.id))
            elif not self._open(now, actions):
                break
            uncovered -= 1

    def _fail_hopeless(self, now: float, actions: list[Action]) -> None:
        if not self._waiters or not self._all_hosts_cooling(now):
            return
        if self._count(SlotState.CONNECTING, SlotState.PROBING, SlotState.LEASED):
            return
        recovery = min(cooldown.until for cooldown in self._cooldowns if cooldown.until is not None)
        for waiter, deadline in list(self._waiters.items()):
            if deadline <= recovery:
                self._fail(waiter, FailureKind.HOSTS_UNAVAILABLE, self._last_connect_error, actions)

    def _open_trials(self, now: float, actions: list[Action], retired_from: int | None) -> None:
        # Recovery must not depend on a waiter needing a new connection: while a worse host's
        # slots serve every acquire, none does, and traffic would stay on the backup forever. So
        # the pool tries a recovered better host itself. One trial at a time per host, and a
        # failed trial starts a longer cooldown, so this costs one connect per cooldown period.
        if self._single_priority:
            return
        hosts = self._hosts
        cooldowns = self._cooldowns
        # Cheap first: usually no host is on probation.
        if not any(cooldown.on_probation(now) for cooldown in cooldowns):
            return
        # The priorities in use. A slot retired for priority counts until it is gone, and in the
        # input that reports it gone (`retired_from`): it may be the last backup slot, retired to
        # make room for this very trial.
        in_use = [
            hosts[record.host].priority
            for record in self._slots.values()
            if record.state is not SlotState.CLOSING
            or record.close_reason == "retired_for_priority"
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
                continue
            if len(self._slots) < self._config.max_size:
                self._add_slot(index, actions, background_trial=True)
            elif not self._waiters and not self._count(SlotState.CLOSING):
                # Full: retire one idle slot to a worse host and open the trial when it is gone.
                # Only while no slot is closing (one already frees room), and never ahead of a
                # waiter, who would get that idle slot now.
                self._make_room_for_trial(priority, actions)

    def _make_room_for_trial(self, priority: int, actions: list[Action]) -> None:
        hosts = self._hosts
        # The worst host's least recently used idle slot: the least likely to be missed.
        candidates = [
            record
            for record in self._slots_in(SlotState.IDLE)
            if hosts[record.host].priority > priority
        ]
        if candidates:
            victim = max(
                candidates,
                key=lambda record: (hosts[record.host].priority, -record.idle_since, -record.id),
            )
            self._retire(victim, "retired_for_priority", actions)

    def _retire_for_priority(self, actions: list[Action]) -> None:
        if self._single_priority:
            return
        hosts = self._hosts
        top = self._top_priority
        # Cheap first: usually no idle slot sits on a host outside the top configured group.
        worse = [
            record
            for record in self._slots.values()
            if record.state is SlotState.IDLE and hosts[record.host].priority > top
        ]
        if not worse:
            return
        # A success resets the failures and the cooldown together, so "no failures" is healthy.
        healthy = [
            i for i, cooldown in enumerate(self._cooldowns) if cooldown.consecutive_failures == 0
        ]
        best = self._selector.best_priority(healthy)
        if best is None:
            return
        for record in worse:
            if hosts[record.host].priority > best:
                self._retire(record, "retired_for_priority", actions)

    def _arm_refill(self, now: float) -> None:
        if self._config.min_size == 0:
            return
        if self._refill_deficit() <= 0:
            self._refill_at = None
        elif self._refill_at is None and self._can_open(now):
            self._refill_at = now + self._config.refill_delay
