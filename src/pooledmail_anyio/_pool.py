"""`SMTPPool`: the public async API over the core's pool machine and protocol machine.

The pool machine owns every decision about slots and waiters; this module performs the actions
it returns, right after each input, and nothing else.

Lifecycle. `__aenter__` opens a task group and starts one runner task in it; the runner owns a
second task group, entered and left in that one task, in which all background work runs
(connecting, probing, closing, the timer that wakes on `next_deadline()`). Shutting down is a
request: `aclose()`, from any task and any number of times, asks the runner to close and waits for
it; `__aexit__` does the same and then leaves the outer task group, which by then holds nothing.
The runner closes in three steps: refuse new work and QUIT idle connections, give leased
connections up to `DRAIN_GRACE` to come back, then abort whatever is left. A close that is itself
cancelled (or a block left by cancellation) skips the wait and aborts at once. Either way nothing
the pool started runs after the block exits, and the body's own exception leaves the block as
itself, never wrapped in an exception group.
"""

from __future__ import annotations

import contextlib
import datetime
import email.utils
import logging
import math
import random as _random
import secrets
import ssl
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from email.message import Message
from types import MappingProxyType, TracebackType
from typing import Any, NoReturn

import anyio.abc

import anyio
from pooledmail_core import (
    Action,
    Classification,
    CloseSlot,
    ConfigError,
    FailureKind,
    FailWaiter,
    GrantSlot,
    Limits,
    LocalProtocolError,
    OpenConnection,
    PoolConfig,
    PoolMachine,
    PoolStatistics,
    PreparedMessage,
    ProbeSlot,
    RandomSource,
    Reply,
    Stage,
    checked_envelope,
    classify,
    classify_pool_failure,
    message_id_of,
    prepare_message,
    retry_delay,
)

from ._connection import (
    TRANSPORT_ERRORS,
    ConnectFailure,
    Connection,
    describe_transport_failure,
    open_connection,
)
from ._health import HealthReport, HostCheck, check_host
from ._limit_reasons import describe_limit
from ._observe import Observer
from ._results import SendFailed, SendResult, SendStatistics, accepted_result
from ._stream import backend_cancel_point, backend_clock

__all__ = ["SMTPPool"]

logger = logging.getLogger("pooledmail")

# Bounds for closing: a healthy connection gets this long to say QUIT; a broken one is aborted.
QUIT_GRACE = 2.0
ABORT_GRACE = 0.5
# How long closing the pool waits for senders to give their connections back.
DRAIN_GRACE = 10.0
# A probe that fails in any of these ways means the connection is not fit for reuse.
PROBE_ERRORS: tuple[type[BaseException], ...] = (*TRANSPORT_ERRORS, LocalProtocolError)


class _Waiter:
    """A caller waiting for a slot. Filled in by GrantSlot or FailWaiter."""

    __slots__ = ("error", "event", "kind", "slot")

    def __init__(self) -> None:
        self.event: anyio.Event | None = None
        self.slot: int | None = None
        self.kind: FailureKind | None = None
        self.error: object = None


@dataclass(frozen=True, slots=True)
class _Failure:
    """One failed attempt, as the driver reports it."""

    classification: Classification
    reply: Reply | None
    cause: BaseException | None
    host: str | None
    reason: str


class _AcquireFailed(Exception):
    def __init__(self, failure: _Failure) -> None:
        self.failure = failure


class SMTPPool:
    """A pool of SMTP connections shared by concurrent senders.

    Use as `async with SMTPPool(config) as pool:`; `await pool.send(message)`.
    """

    def __init__(
        self,
        config: PoolConfig,
        *,
        ssl_context: ssl.SSLContext | None = None,
        clock: Callable[[], float] | None = None,
        random: RandomSource | None = None,
        limits: Limits | None = None,
        name: str | None = None,
        metrics: bool = True,
        meter_provider: Any = None,
        log_recipients: bool = False,
    ) -> None:
        if not isinstance(config, PoolConfig):
            raise TypeError("config: expected a PoolConfig")
        # A wrong option fails here, naming it, as a wrong PoolConfig value does.
        if name is not None and (not isinstance(name, str) or not name.strip()):
            raise ConfigError("name", "must be a non-empty string")
        if name is not None and not name.isprintable():
            # It goes into every log line and metric attribute of the pool: a line break would
            # forge a log line, and a lone surrogate cannot be written out at all.
            raise ConfigError("name", "must be printable (no line breaks or control characters)")
        for option, value in (("metrics", metrics), ("log_recipients", log_recipients)):
            if not isinstance(value, bool):
                raise ConfigError(option, "must be True or False")
        if ssl_context is not None and not isinstance(ssl_context, ssl.SSLContext):
            raise ConfigError("ssl_context", "must be an ssl.SSLContext")
        if limits is not None and not isinstance(limits, Limits):
            raise ConfigError("limits", "must be a pooledmail_core.Limits")
        if random is not None and not callable(getattr(random, "random", None)):
            raise ConfigError("random", "must have a random() method, as random.Random has")
        if clock is not None and not callable(clock):
            raise ConfigError("clock", "must be a callable returning the time in seconds")
        if meter_provider is not None and not callable(getattr(meter_provider, "get_meter", None)):
            raise ConfigError("meter_provider", "must be an OpenTelemetry MeterProvider")
        self._config = config
        self._ssl_context = ssl_context
        # Resolved on entry (the event loop's own clock, read without anyio's per-call backend
        # look-up) unless one is given.
        self._clock: Callable[[], float] = clock or anyio.current_time
        self._custom_clock = clock is not None
        # The backend's `checkpoint_if_cancelled`, resolved on entry as the clock is.
        self._cancel_point: Callable[[], Awaitable[None]] = anyio.lowlevel.checkpoint_if_cancelled
        self._rng: RandomSource = random if random is not None else _random.Random()
        self._limits = limits or Limits()
        self._local_hostname = config.local_hostname or "localhost"
        self._machine = PoolMachine(config, self._rng)
        # --- shared budgets (issue 12): the store I/O lives in `_budget`, which imports coredis,
        # so it is imported only when some host names a SharedBudget (docs/guide/scaling.md).
        self._fleet: Any = None
        budgets = {host.budget.name: host.budget for host in config.hosts if host.budget}
        if budgets:
            from ._budget import FleetLink

            self._fleet = FleetLink(
                list(budgets.values()),
                machine=self._machine,
                perform=self._perform,
                clock=lambda: self._clock(),
                spawn=self._spawn,
            )
        # --- end of shared budgets
        self._connections: dict[int, Connection] = {}
        self._waiters: dict[int, _Waiter] = {}
        # Cancel scopes of the connect and probe tasks in flight, cancelled when the pool closes.
        self._setup_scopes: dict[int, anyio.CancelScope] = {}
        # Leased slots whose connection the close aborted under their sender.
        self._aborted_by_close: set[int] = set()
        # The latest failure to connect to each host, cleared by a success (for messages).
        self._host_failures: dict[str, ConnectFailure] = {}
        self._task_group: anyio.abc.TaskGroup | None = None
        self._background: anyio.abc.TaskGroup | None = None
        self._timer_wakeup: anyio.Event | None = None
        self._timer_deadline = math.inf
        self._state = "new"  # new -> starting -> open -> closing -> closed
        self._forced = False
        self._shutdown: anyio.Event | None = None
        self._closing: anyio.Event | None = None
        self._closed: anyio.Event | None = None
        self._closer_wakeup: anyio.Event | None = None
        # Send outcomes, for `send_statistics()`.
        self._accepted = 0
        self._failed: Counter[str] = Counter()
        self._retries = 0
        self._cancelled_after_terminator = 0
        self._stale_discarded = 0
        self._partly_refused = 0
        # Where the pool reports what happens (logs, and metrics with pooledmail[otel]).
        self._observer = Observer(
            name or "default",
            metrics=metrics,
            meter_provider=meter_provider,
            log_recipients=log_recipients,
            pool=self,
        )
        # Checked before each per-message report: False unless metrics are recorded somewhere.
        self._metered = self._observer.metered
        # Asked once per send while metrics wait for an SDK's global provider (see `_observe`).
        self._metrics_pending = self._observer.waiting_for_provider is not None
        # When each leased slot was granted, while metered (for the lease duration).
        self._leased_at: dict[int, float] = {}

    # -- lifecycle ---------------------------------------------------------------------------

    async def __aenter__(self) -> SMTPPool:
        if self._state != "new":
            raise RuntimeError("an SMTPPool can be entered only once")
        if self._ssl_context is None and any(h.tls.value != "none" for h in self._config.hosts):
            self._ssl_context = ssl.create_default_context()
        if not self._custom_clock:
            self._clock = backend_clock()
        self._cancel_point = backend_cancel_point()
        self._shutdown = anyio.Event()
        self._closing = anyio.Event()
        self._closed = anyio.Event()
        # Claimed before the first await: a second task entering meanwhile is refused above.
        self._state = "starting"
        task_group = anyio.create_task_group()
        try:
            await task_group.__aenter__()
            try:
                await task_group.start(self._run)
            except BaseException:
                # Left as it was entered, innermost scope first (a shield around `__aexit__`
                # would be exited after the task group's own scope: a corrupted scope stack).
                # The task group is cancelled, so leaving it only waits for what already runs.
                task_group.cancel_scope.cancel()
                await task_group.__aexit__(None, None, None)
                raise
        except BaseException:
            # It never opened: closed for good, and a later aclose() has nothing to wait for.
            self._state = "closed"
            self._closed.set()
            raise
        self._task_group = task_group
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is not None and isinstance(exc, anyio.get_cancelled_exc_class()):
            # The block is being cancelled: nobody will wait for leased connections to drain.
            self._force()
        task_group = self._task_group
        try:
            with anyio.CancelScope(shield=True):
                await self.aclose()
        finally:
            if task_group is not None:
                self._task_group = None
                # The runner has finished (or is finishing): leaving the task group collects it.
                # It is left with no exception of the body's, so that nothing is ever wrapped in
                # an exception group, and not under a new cancel scope, which would break the
                # nesting of scopes.
                try:
                    await task_group.__aexit__(None, None, None)
                except BaseException as collected:
                    if exc is None:
                        raise
                    # The block's own exception goes out as itself. A cancellation met while
                    # collecting the runner comes again at the caller's next checkpoint.
                    if not isinstance(collected, anyio.get_cancelled_exc_class()):
                        logger.error("the pool's runner failed", exc_info=collected)
        # The body's exception, if any, propagates as itself.

    async def aclose(self) -> None:
        """Close the pool: refuse new sends, QUIT idle connections, give leased ones up to
        10 s to come back, then abort the rest. Safe from any task, any number of times.

        If the call is cancelled, the pool still closes, at once: leased connections are aborted
        and their senders fail (POOL_CLOSED, or UNKNOWN_AFTER_DATA after the terminator).
        """
        if self._state == "new":
            self._state = "closed"  # never opened: nothing to close, and it cannot open now
            return
        assert self._shutdown is not None
        assert self._closed is not None
        self._shutdown.set()
        try:
            await self._closed.wait()
        except BaseException:
            self._force()
            with anyio.CancelScope(shield=True), anyio.move_on_after(QUIT_GRACE + ABORT_GRACE):
                await self._closed.wait()
            raise

    def _force(self) -> None:
        """Close without waiting for leased connections (a close that was cancelled)."""
        self._forced = True
        if self._shutdown is not None:
            self._shutdown.set()
        self._wake_closer()

    def _wake_closer(self) -> None:
        wakeup = self._closer_wakeup
        if wakeup is not None:
            wakeup.set()

    async def _run(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        """The runner: owns the background task group from start to end, in this one task."""
        assert self._shutdown is not None
        assert self._closed is not None
        # Shared budgets: the store's clients are entered and left in this task too, around the
        # background task group, so that no store call outlives them.
        fleet = contextlib.nullcontext() if self._fleet is None else self._fleet.running()
        try:
            async with fleet, anyio.create_task_group() as background:
                self._background = background
                self._state = "open"
                if self._fleet is not None:
                    self._fleet.start(background)
                background.start_soon(self._timer_loop)
                self._perform(self._machine.handle_timer(self._clock()))
                task_status.started()
                try:
                    await self._shutdown.wait()
                except BaseException:
                    # Cancelled from outside (the block's scope): close at once.
                    self._forced = True
                    raise
                finally:
                    with anyio.CancelScope(shield=True):
                        await self._shut_down()
                    background.cancel_scope.cancel()
        finally:
            self._background = None
            self._state = "closed"
            # Slots whose task was cancelled with the task group are gone with their sockets.
            for connection in self._connections.values():
                await connection.abort(ABORT_GRACE)
            self._closed.set()

    async def _shut_down(self) -> None:
        assert self._closing is not None
        self._state = "closing"
        self._closing.set()
        self._perform(self._machine.close(self._clock()))
        for scope in list(self._setup_scopes.values()):
            scope.cancel()
        clock = backend_clock()
        drain_until = clock() + DRAIN_GRACE
        while not self._forced and self._machine.statistics().leased:
            self._closer_wakeup = anyio.Event()
            with anyio.move_on_after(drain_until - clock()) as waited:
                await self._closer_wakeup.wait()
            if waited.cancelled_caught:
                break
        # Whatever is still leased is aborted under its sender, who learns it from the failure.
        for slot, connection in list(self._connections.items()):
            if self._forced or self._machine.slot_state(slot).value == "leased":
                if self._machine.slot_state(slot).value == "leased":
                    self._aborted_by_close.add(slot)
                await connection.abort(ABORT_GRACE)
        # Closing tasks (QUIT, abort) and senders whose connection was aborted report back.
        close_until = clock() + QUIT_GRACE + ABORT_GRACE
        while not self._machine.is_closed:
            self._closer_wakeup = anyio.Event()
            with anyio.move_on_after(close_until - clock()) as waited:
                await self._closer_wakeup.wait()
            if waited.cancelled_caught:
                break
        self._closer_wakeup = None

    # -- the machine's actions ---------------------------------------------------------------

    def _perform(self, actions: Sequence[Action]) -> None:
        """Carry out the actions the pool machine returned for one input, in order."""
        if actions:  # a grant from idle and a healthy release usually return none
            self._perform_each(list(actions))
        self._rearm_timer()
        if self._state == "closing":
            self._wake_closer()

    def _perform_each(self, pending: list[Action]) -> None:
        while pending:
            action = pending.pop(0)
            if type(action) is GrantSlot:
                waiter = self._waiters.pop(action.waiter, None)
                if waiter is not None:
                    waiter.slot = action.slot
                    if waiter.event is not None:
                        waiter.event.set()
            elif type(action) is FailWaiter:
                waiter = self._waiters.pop(action.waiter, None)
                if waiter is not None:
                    waiter.kind = action.kind
                    waiter.error = action.error
                    if waiter.event is not None:
                        waiter.event.set()
            elif type(action) is OpenConnection:
                if not self._spawn(self._open, action.slot):
                    pending += self._machine.connect_cancelled(action.slot, self._clock())
            elif type(action) is ProbeSlot:
                if not self._spawn(self._probe, action.slot):
                    pending += self._machine.probe_failed(action.slot, self._clock())
            elif type(action) is CloseSlot:
                if not self._spawn(self._close, action.slot, action.graceful, action.reason):
                    # After shutdown every connection has been aborted already.
                    gone = self._connections.pop(action.slot, None)
                    if gone is not None:
                        self._observer.connection_closed(gone.key, action.reason)
                    pending += self._machine.slot_closed(action.slot, self._clock())
            elif self._fleet is not None:
                # RequestLease, ReleaseLease, RequestTokens, ShareCooldown (shared budgets).
                self._fleet.perform(action)
            else:  # pragma: no cover - the machine returns only the actions above
                raise AssertionError(f"unknown action {action!r}")

    def _spawn(self, func: Callable[..., Any], *args: object) -> bool:
        background = self._background
        if background is None:
            return False
        background.start_soon(func, *args)
        return True

    def _rearm_timer(self) -> None:
        deadline = self._machine.next_deadline()
        if deadline is not None and deadline < self._timer_deadline:
            self._timer_deadline = deadline
            if self._timer_wakeup is not None:
                self._timer_wakeup.set()

    async def _timer_loop(self) -> None:
        while True:
            deadline = self._machine.next_deadline()
            self._timer_deadline = math.inf if deadline is None else deadline
            self._timer_wakeup = anyio.Event()
            delay = math.inf if deadline is None else deadline - self._clock()
            if delay > 0:
                with anyio.move_on_after(delay):
                    await self._timer_wakeup.wait()
            else:
                # Due already: still let the other tasks run, so that a deadline the machine
                # keeps reporting as due can never starve the event loop.
                await anyio.lowlevel.checkpoint()
            self._timer_wakeup = None
            self._perform(self._machine.handle_timer(self._clock()))

    async def _open(self, slot: int) -> None:
        host = self._machine.slot_host(slot)
        started = self._clock()
        outcome: Connection | ConnectFailure | None = None
        scope = self._setup_scopes[slot] = anyio.CancelScope()
        try:
            with scope:
                outcome = await open_connection(
                    host,
                    local_hostname=self._local_hostname,
                    connect_timeout=self._config.connect_timeout,
                    ssl_context=self._ssl_context,
                    limits=self._limits,
                    quit_grace=QUIT_GRACE,
                )
        except Exception as exc:  # a bug must not leave a slot connecting for ever
            logger.exception("unexpected error while connecting to %s", host.key)
            outcome = ConnectFailure(
                host.key, classify(Stage.CONNECT), None, exc, f"unexpected {type(exc).__name__}"
            )
        finally:
            self._setup_scopes.pop(slot, None)
            if outcome is None:  # cancelled: the pool is closing
                self._perform(self._machine.connect_cancelled(slot, self._clock()))
        if isinstance(outcome, ConnectFailure):
            self._host_failures[host.key] = outcome
            now = self._clock()
            self._perform(self._machine.connect_failed(slot, now, outcome.kind, outcome))
            self._report_connect_failure(host.key, outcome, now)
            return
        if outcome is not None:
            now = self._clock()
            if self._host_failures.pop(host.key, None) is not None:
                failures = self._machine.statistics().hosts[host.key].consecutive_failures
                self._observer.host_recovered(host.key, failures)
            self._connections[slot] = outcome
            self._observer.connection_opened(host.key, now - started, outcome.tls_version())
            self._perform(self._machine.connected(slot, now))

    def _report_connect_failure(self, key: str, failure: ConnectFailure, now: float) -> None:
        host = self._machine.statistics(now).hosts[key]
        until = host.cooldown_until
        self._observer.connect_failed(
            key,
            failure.kind,
            failure.stage,
            failure.reason,
            None if until is None else max(0.0, until - now),
            host.consecutive_failures,
        )

    async def _probe(self, slot: int) -> None:
        connection = self._connections[slot]
        ok = False
        scope = self._setup_scopes[slot] = anyio.CancelScope()
        # Found closed by the server (or out of step) before any NOOP: stale, as at a lease.
        found: str | None = None
        try:
            with scope:
                found = connection.unusable()
                if found is None:
                    probe = connection.session.noop()
                    await connection.run(probe, step_timeout=self._config.probe_timeout)
                    ok = probe.result.is_positive and connection.unusable() is None
        except PROBE_ERRORS:
            ok = False
        finally:
            self._setup_scopes.pop(slot, None)
            now = self._clock()
            if ok:
                self._perform(self._machine.probe_succeeded(slot, now))
            elif found is not None:
                if self._state == "open":
                    self._stale_discarded += 1
                self._perform(self._machine.probe_failed(slot, now, reason=found))
            else:
                if self._state == "open":
                    self._observer.probe_failed(connection.key)
                self._perform(self._machine.probe_failed(slot, now))

    async def _close(self, slot: int, graceful: bool, reason: str) -> None:
        connection = self._connections.pop(slot, None)
        try:
            if connection is not None:
                if graceful and not self._forced:
                    await connection.quit(QUIT_GRACE)
                else:
                    await connection.abort(ABORT_GRACE)
        finally:
            if connection is not None:
                self._observer.connection_closed(connection.key, reason)
            self._perform(self._machine.slot_closed(slot, self._clock()))

    # -- acquiring ---------------------------------------------------------------------------

    async def _acquire(self, deadline: float, now: float) -> int:
        """Wait for a slot; returns it, or raises `_AcquireFailed`. `now` is the clock read just
        before (the send's start)."""
        if self._state != "open":
            raise _AcquireFailed(self._closed_failure(Stage.ACQUIRE, None))
        # A warm pool usually has an idle connection for nobody else: take it without a waiter.
        slot, actions = self._machine.acquire_now(now)
        self._perform(actions)
        if slot is not None:
            if self._metered:
                self._leased_at[slot] = now
            return slot
        waiter = _Waiter()
        waiter_id, actions = self._machine.acquire(now, deadline)
        self._waiters[waiter_id] = waiter
        self._perform(actions)
        if waiter.slot is None and waiter.kind is None:
            waiter.event = anyio.Event()
            try:
                await waiter.event.wait()
            except BaseException:
                # Cancelled while waiting. If the slot was granted meanwhile it is unused and
                # healthy: give it back. Either way the machine forgets the waiter at once.
                self._waiters.pop(waiter_id, None)
                if waiter.slot is not None:
                    self._perform(self._machine.release(waiter.slot, self._clock(), healthy=True))
                else:
                    self._perform(self._machine.cancel(waiter_id, self._clock()))
                raise
        if waiter.slot is not None:
            if self._metered:
                self._leased_at[waiter.slot] = self._clock() if waiter.event is not None else now
            return waiter.slot
        assert waiter.kind is not None
        raise _AcquireFailed(self._acquire_failure(waiter.kind, waiter.error, deadline))

    async def _lease(self, deadline: float, now: float) -> tuple[int, Connection]:
        """A slot and its connection, checked usable without a round trip.

        A connection the server closed while it was idle, or that holds bytes nobody asked for,
        is discarded and another one taken, within the same deadline: it costs the sender no
        attempt and no back-off. A server that closes connection after connection before they
        can be used ends this after `max_size + 1` of them.
        """
        asked = now
        for _ in range(self._config.max_size + 1):
            slot = await self._acquire(deadline, now)
            connection = self._connections[slot]
            why = connection.unusable()
            if why is None:
                if self._metered:
                    # One wait per attempt, from its start: connections discarded on the way
                    # are part of it (docs/guide/operations.md, `pooledmail.acquire.duration`).
                    self._observer.acquired(self._leased_at.get(slot, asked) - asked)
                return slot, connection
            self._stale_discarded += 1
            self._leased_at.pop(slot, None)
            now = self._clock()
            self._perform(self._machine.release(slot, now, healthy=False, reason=why))
        raise _AcquireFailed(
            _Failure(
                classify(Stage.CONNECT),
                None,
                None,
                connection.key,
                "the server closed every connection before it could be used",
            )
        )

    def _closed_failure(self, stage: Stage, host: str | None) -> _Failure:
        if self._state in ("new", "starting"):
            raise RuntimeError(
                "the pool is not open: use `async with SMTPPool(config) as pool:` around sends"
            )
        classification = classify_pool_failure(FailureKind.POOL_CLOSED)
        if stage is not Stage.ACQUIRE:
            classification = _relabel(classification, FailureKind.POOL_CLOSED, stage)
        return _Failure(classification, None, None, host, "the pool is closed")

    def _acquire_failure(self, kind: FailureKind, error: object, deadline: float) -> _Failure:
        """The failure a waiter ends with, in words."""
        if kind is FailureKind.POOL_CLOSED:
            return self._closed_failure(Stage.ACQUIRE, None)
        if isinstance(error, ConnectFailure) and kind is error.kind:
            # The connection opened for this waiter failed and no other host could take over.
            reason = error.reason
            others = [
                f"{key}: {failure.reason}"
                for key, failure in self._host_failures.items()
                if key != error.host
            ]
            if others:
                reason += f" (also failing: {'; '.join(others)})"
            return _Failure(error.classification, error.reply, error.error, error.host, reason)
        classification = classify_pool_failure(kind)
        if kind in (FailureKind.RATE_LIMITED, FailureKind.BUDGET_UNAVAILABLE):
            # Rates and shared budgets (issue 12): the reason names the limit that held it.
            reason = describe_limit(kind, self._config, self._machine.budget_statistics())
            return _Failure(classification, None, None, None, reason)
        if kind is FailureKind.HOSTS_UNAVAILABLE:
            return _Failure(classification, None, _cause(error), None, self._hosts_unavailable())
        stats = self._machine.statistics()
        waited = self._config.acquire_timeout
        reason = (
            f"no connection became free in time (acquire_timeout {waited:g} s or the send's "
            f"deadline): {stats.leased} of max_size {self._config.max_size} in use, "
            f"{stats.waiting} other sender(s) waiting"
        )
        if stats.connecting:
            reason += f", {stats.connecting} connection(s) still being set up"
        return _Failure(classification, None, None, None, reason)

    def _hosts_unavailable(self) -> str:
        now = self._clock()
        parts = []
        for key, host in self._machine.statistics(now).hosts.items():
            failure = self._host_failures.get(key)
            why = f" after {failure.kind.name} ({failure.reason})" if failure else ""
            if host.cooling_down and host.cooldown_until is not None:
                parts.append(f"{key} cooling down for {host.cooldown_until - now:.1f} s more{why}")
            else:
                parts.append(f"{key} failing{why}")
        return "no host can take a connection now: " + "; ".join(parts)

    # -- sending -----------------------------------------------------------------------------

    async def send(
        self,
        message: Message,
        *,
        sender: str | None = None,
        recipients: str | Sequence[str] | None = None,
        notify: str | Sequence[str] | None = None,
        ret: str | None = None,
        envid: str | None = None,
        orcpt: bool = False,
        retry_unknown: bool = False,
    ) -> SendResult:
        """Send an `email.message.EmailMessage`.

        The envelope comes from its headers unless `sender` and `recipients` are given. A message
        without a `Date` gets one (now, local time with its offset) and one without a
        `Message-ID` gets a new one on the sender's domain; the caller's message is not changed
        and the result carries the Message-ID. `notify`, `ret`, `envid` and `orcpt` ask for
        delivery status notifications (RFC 3461); a server that does not offer DSN refuses the
        message locally (PERMANENT) rather than silently dropping the request.
        `retry_unknown=True` lets pooledmail send the message again after UNKNOWN_AFTER_DATA,
        which may deliver it twice: only for messages where a duplicate is harmless.
        """
        if not isinstance(message, Message):
            raise TypeError(
                f"message: expected an email.message.EmailMessage, got {type(message).__name__}"
                "; use send_raw() for a message already serialized as bytes"
            )
        _check_flag("retry_unknown", retry_unknown)
        prepared = prepare_message(
            message,  # type: ignore[arg-type]
            sender=sender,
            recipients=recipients,
            notify=notify,
            ret=ret,
            envid=envid,
            orcpt=orcpt,
            date=email.utils.format_datetime(datetime.datetime.now().astimezone()),
            new_message_id=self._new_message_id,
        )
        return await self._send(prepared, retry_unknown)

    def _new_message_id(self, domain: str | None) -> str:
        # RFC 5322 §3.6.4: unique worldwide; 128 random bits on the sender's domain.
        return f"<{secrets.token_hex(16)}@{domain or self._local_hostname}>"

    async def send_raw(
        self,
        data: bytes,
        *,
        sender: str,
        recipients: str | Sequence[str],
        notify: str | Sequence[str] | None = None,
        ret: str | None = None,
        envid: str | None = None,
        orcpt: bool = False,
        retry_unknown: bool = False,
    ) -> SendResult:
        """Send a message already serialized as bytes (CRLF or LF line endings), as it is.

        Nothing is added to the bytes; the result carries their Message-ID, if they have one.
        The other arguments are those of `send()`.
        """
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"data: expected bytes, got {type(data).__name__}")
        _check_flag("retry_unknown", retry_unknown)
        # A caller's mistake is refused here, before a connection is even asked for.
        envelope = checked_envelope(
            sender, recipients, notify=notify, ret=ret, envid=envid, orcpt=orcpt
        )
        raw = bytes(data)
        return await self._send(PreparedMessage(envelope, raw, message_id_of(raw)), retry_unknown)

    async def _send(self, prepared: PreparedMessage, retry_unknown: bool) -> SendResult:
        config = self._config
        clock = self._clock
        started = clock()
        if self._state != "open":
            self._refuse(self._closed_failure(Stage.ACQUIRE, None), 0, prepared, started)
        if self._metrics_pending:
            self._metered = self._observer.refresh()
            self._metrics_pending = self._observer.waiting_for_provider is not None
        deadline = started + config.send_timeout
        attempts = 0
        previous: _Failure | None = None
        # An earlier attempt handed the message over in full and heard no final reply (retried
        # under retry_unknown=True): no later failure makes the message "definitely not accepted".
        unknown: _Failure | None = None
        now = started
        while True:
            attempts += 1
            try:
                # A caller already cancelled is refused before a connection is taken: a warm
                # pool lends one and writes the first flight without waiting for anything, and
                # a cancellation met only at the replies would cost that connection.
                await self._cancel_point()
                acquire_deadline = min(deadline, now + config.acquire_timeout)
                slot, connection = await self._lease(acquire_deadline, now)
            except _AcquireFailed as failed:
                failure = failed.failure
            except BaseException:
                self._note_cancelled_unknown(unknown, prepared)
                raise
            else:
                outcome = await self._transact(
                    slot, connection, prepared, deadline, attempts, unknown
                )
                if type(outcome) is SendResult:
                    self._accepted += 1
                    if outcome.refused:
                        # Accepted, but not for everyone: easy to miss in a return value.
                        self._partly_refused += 1
                        self._observer.send_partly_refused(
                            outcome,
                            prepared.envelope.recipients,
                            earlier_unknown=None if unknown is None else unknown.host or "",
                        )
                    if self._metered:
                        self._observer.send_accepted(outcome.host, clock() - started)
                    return outcome
                assert isinstance(outcome, _Failure)
                failure = outcome
            if unknown is not None and failure.classification.definitely_not_accepted:
                self._refuse(
                    unknown, attempts, prepared, started, f"; a later attempt: {failure.reason}"
                )
            if previous is not None and failure.classification.kind is (
                FailureKind.HOSTS_UNAVAILABLE
            ):
                # The retry found every host cooling down, the one that just failed included:
                # the failure that made us retry says more than "unavailable". The retry is
                # still an attempt, as a first one that finds no host is, and was counted in
                # `retries` (docs/guide/failures.md, "Reading a SendFailed").
                self._refuse(
                    previous,
                    attempts,
                    prepared,
                    started,
                    f"; no host to retry on: {failure.reason}",
                )
            if self._state != "open":
                self._refuse(self._closing_failure(failure), attempts, prepared, started)
            delay = retry_delay(
                failure.classification,
                attempt=attempts,
                max_retries=config.max_retries,
                base_delay=config.retry_base_delay,
                jitter=config.cooldown_jitter,
                now=clock(),
                deadline=deadline,
                rng=self._rng,
                retry_unknown=retry_unknown,
            )
            if delay is None:
                self._refuse(failure, attempts, prepared, started)
            previous = failure
            if failure.classification.kind is FailureKind.UNKNOWN_AFTER_DATA:
                unknown = unknown or failure
            self._retries += 1
            classification = failure.classification
            self._observer.retrying(
                kind=classification.kind,
                stage=classification.stage,
                host=failure.host,
                reason=failure.reason,
                attempt=attempts,
                delay=delay,
                message_id=prepared.message_id,
                recipients=prepared.envelope.recipients,
            )
            assert self._closing is not None
            try:
                with anyio.move_on_after(delay):
                    await self._closing.wait()
            except BaseException:
                self._note_cancelled_unknown(unknown, prepared)
                raise
            if self._state != "open":
                # The pool closed during the wait: say so now rather than after the delay.
                self._refuse(self._closing_failure(failure), attempts, prepared, started)
            now = clock()

    def _closing_failure(self, failure: _Failure) -> _Failure:
        """A failure that would be retried, but the pool is closing: POOL_CLOSED, with the truth
        about the message (a failure after the terminator stays UNKNOWN_AFTER_DATA)."""
        classification = failure.classification
        if not classification.definitely_not_accepted or classification.kind in (
            FailureKind.POOL_CLOSED,
            FailureKind.PERMANENT,
            FailureKind.AUTH_FAILED,
        ):
            return failure
        return _Failure(
            _relabel(classification, FailureKind.POOL_CLOSED, classification.stage),
            failure.reply,
            failure.cause,
            failure.host,
            f"the pool closed; the last attempt had failed: {failure.reason}",
        )

    def _refuse(
        self,
        failure: _Failure,
        attempts: int,
        prepared: PreparedMessage,
        started: float,
        note: str = "",
    ) -> NoReturn:
        """Raise the `SendFailed` for `failure`, counting and reporting it."""
        classification = failure.classification
        self._failed[classification.kind.value] += 1
        failed = SendFailed(
            classification.kind,
            classification.stage,
            host=failure.host,
            attempts=attempts,
            reply=failure.reply,
            definitely_not_accepted=classification.definitely_not_accepted,
            reason=failure.reason + note,
            message_id=prepared.message_id,
        )
        self._observer.send_failed(failed, self._clock() - started, prepared.envelope.recipients)
        raise failed from failure.cause

    async def _transact(
        self,
        slot: int,
        connection: Connection,
        prepared: PreparedMessage,
        deadline: float,
        attempts: int,
        earlier_unknown: _Failure | None = None,
    ) -> SendResult | _Failure:
        """One attempt on a leased connection. Always gives the slot back to the machine."""
        healthy = False
        reason = "broken"
        messages = 1
        host = connection.key
        try:
            try:
                transaction = connection.session.transaction(prepared)
            except LocalProtocolError as exc:
                # Refused before any byte: the session is untouched and carried no message.
                healthy, messages = True, 0
                return _Failure(classify(Stage.MAIL, local_refusal=True), None, exc, host, str(exc))
            if self._custom_clock:
                # `clock=` may count from another epoch than the event loop, in whose time the
                # connection waits: hand it the time left, not the pool clock's instant.
                deadline = backend_clock()() + (deadline - self._clock())
            try:
                await connection.run(
                    transaction,
                    step_timeout=self._config.command_timeout,
                    deadline=deadline,
                )
            except TRANSPORT_ERRORS as exc:
                classification = classify(
                    transaction.stage, terminator_sent=transaction.terminator_sent
                )
                refusal = transaction.refusal
                if slot in self._aborted_by_close:
                    # A close that was forced by cancelling the block cancels this caller too:
                    # then the cancellation, not the close it caused, is what the caller sees.
                    try:
                        await anyio.lowlevel.checkpoint_if_cancelled()
                    except BaseException:
                        self._note_cancelled(transaction, prepared, host, earlier_unknown)
                        raise
                    if refusal is None:
                        return self._aborted(classification, exc, host)
                if refusal is not None:
                    # The server had refused the message; the connection failed only in the RSET
                    # (or lone ".") that tidies the session after a refusal (RFC 5321
                    # §4.1.1.5). The refusal decides, even after the terminator: it is a final
                    # reply. The connection is not reused.
                    stage, reply = refusal
                    refused = classify(
                        stage, reply=reply, terminator_sent=transaction.terminator_sent
                    )
                    why = f"server said {reply} (the connection failed after the refusal)"
                    return _Failure(refused, reply, exc, host, why)
                why = describe_transport_failure(
                    exc,
                    transaction.stage,
                    connection.host,
                    self._config.command_timeout,
                    connecting=False,
                    closed=connection.server_closed,
                )
                if not classification.definitely_not_accepted:
                    why += "; the message was handed over in full and the server may have stored it"
                return _Failure(classification, None, exc, host, why)
            except BaseException:
                self._note_cancelled(transaction, prepared, host, earlier_unknown)
                raise
            result = transaction.result
            if result.in_sync:
                # The parser and the TLS layer; the stream below is looked at before the
                # connection's next use.
                leftover = connection.unusable(transport=False)
                healthy = leftover is None
                if leftover is not None:
                    reason = leftover
            if result.failed_stage is None:
                assert result.reply is not None
                return accepted_result(
                    host,
                    attempts,
                    result.accepted,
                    result.refused,
                    result.reply,
                    prepared.message_id,
                )
            refused = classify(
                result.failed_stage,
                reply=result.reply,
                terminator_sent=transaction.terminator_sent,
            )
            healthy = healthy and refused.keep_connection
            return _Failure(refused, result.reply, None, host, f"server said {result.reply}")
        finally:
            if slot in self._aborted_by_close:
                self._aborted_by_close.discard(slot)
                if not healthy:
                    # The close aborted it: the connection did not break, the pool ended it.
                    reason = "pool_closed"
            now = self._clock()
            self._perform(
                self._machine.release(slot, now, healthy=healthy, messages=messages, reason=reason)
            )
            if self._metered:
                self._observer.released(host, now - self._leased_at.pop(slot, now))

    def _note_cancelled(
        self,
        transaction: Any,
        prepared: PreparedMessage,
        host: str,
        earlier_unknown: _Failure | None = None,
    ) -> None:
        """A caller cancelled a send: if the message had been handed over in full, it may have
        been delivered, and nobody will be told by an exception. Say so in the log and count it,
        so that an application can find the messages to reconcile. `earlier_unknown` is an
        earlier attempt that handed it over (retried under retry_unknown=True): if this one did
        not, that attempt's host is the one that may have it."""
        # A refusal the server gave is a final reply: the message was handed over, not stored.
        if not (transaction.terminator_sent and transaction.refusal is None):
            self._note_cancelled_unknown(earlier_unknown, prepared)
            return
        self._cancelled_after_terminator += 1
        self._observer.cancelled_after_terminator(host, transaction.stage, prepared.message_id)

    def _note_cancelled_unknown(self, unknown: _Failure | None, prepared: PreparedMessage) -> None:
        if unknown is None:
            return
        self._cancelled_after_terminator += 1
        self._observer.cancelled_after_terminator(
            unknown.host or "", unknown.classification.stage, prepared.message_id
        )

    def _aborted(self, classification: Classification, error: BaseException, host: str) -> _Failure:
        """The pool's close aborted this connection under its sender."""
        if classification.definitely_not_accepted:
            return _Failure(
                _relabel(classification, FailureKind.POOL_CLOSED, classification.stage),
                None,
                error,
                host,
                "the pool closed while the message was being sent; it was not handed over",
            )
        return _Failure(
            classification,
            None,
            error,
            host,
            "the pool closed after the message was handed over and before the server's final "
            "reply; the server may have stored it",
        )

    def _socket_fds(self) -> list[int]:
        """The file descriptors of the pool's established connections (for the blocking pool's
        fork hook: a child must not share them). A connection being opened is not counted."""
        fds = []
        for connection in self._connections.values():
            raw = connection.stream.extra(anyio.abc.SocketAttribute.raw_socket, None)
            if raw is not None and raw.fileno() >= 0:
                fds.append(raw.fileno())
        return fds

    def _detach_metrics(self) -> None:
        """Stop reporting this pool's metrics (for the blocking pool's fork hook: in a child, the
        parent's pool is kept but never run, and its counts are not the child's)."""
        if self._observer.metrics is not None:
            self._observer.metrics.detach()

    async def check(self) -> HealthReport:
        """Open one connection to each host up to a session ready for MAIL (TLS and AUTH as
        configured), time one NOOP on it, say QUIT, and report per host what worked and what did
        not. Sends no message and changes nothing in the pool (no cooldown, no connection kept).

        All hosts are checked at once, each within `connect_timeout`, its QUIT included. Usable
        before, during and after the pool's `async with`; typical at start-up::

            report = await pool.check()
            if not report.ok:
                raise SystemExit(f"mail relay not usable:\n{report}")
        """
        ssl_context = self._ssl_context
        if ssl_context is None and any(h.tls.value != "none" for h in self._config.hosts):
            ssl_context = ssl.create_default_context()
        hosts = self._config.hosts
        found: list[HostCheck | None] = [None] * len(hosts)
        clock = self._clock if self._custom_clock else backend_clock()

        async def run(index: int) -> None:
            found[index] = await check_host(
                hosts[index],
                clock=clock,
                local_hostname=self._local_hostname,
                connect_timeout=self._config.connect_timeout,
                ssl_context=ssl_context,
                limits=self._limits,
                quit_grace=QUIT_GRACE,
            )

        async with anyio.create_task_group() as checks:
            for index in range(len(hosts)):
                checks.start_soon(run, index)
        return HealthReport(tuple(check for check in found if check is not None))

    def statistics(self) -> PoolStatistics:
        """A frozen snapshot of the pool's connections and waiters."""
        return self._machine.statistics()

    def budget_statistics(self) -> dict[str, dict[str, object]]:
        """Per shared budget: "mode" ("fleet", "local" or "refuse": whether the store answers,
        and if not, the policy in force), the "leases" and "tokens_held" this pool holds, and
        the "store_calls" and "store_failures" it made. Empty without shared budgets."""
        stats = self._machine.budget_statistics()
        if self._fleet is not None:
            for name, counts in self._fleet.statistics().items():
                stats[name].update(counts)
        return stats

    def send_statistics(self) -> SendStatistics:
        """A frozen snapshot of what the pool's sends have come to so far."""
        return SendStatistics(
            accepted=self._accepted,
            failed=MappingProxyType(dict(self._failed)),
            retries=self._retries,
            cancelled_after_terminator=self._cancelled_after_terminator,
            stale_discarded=self._stale_discarded,
            partly_refused=self._partly_refused,
        )


def _relabel(classification: Classification, kind: FailureKind, stage: Stage) -> Classification:
    return Classification(
        kind,
        stage,
        retryable=False,
        definitely_not_accepted=classification.definitely_not_accepted,
        keep_connection=False,
        cool_down_host=False,
    )


def _cause(error: object) -> BaseException | None:
    if isinstance(error, ConnectFailure):
        return error.error
    return error if isinstance(error, BaseException) else None


def _check_flag(name: str, value: object) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{name}: expected True or False, got {type(value).__name__}")
