"""`SMTPPool`: the public async API over the core's pool machine and protocol machine.

The pool machine owns every decision about slots and waiters; this module performs the actions
it returns, right after each input, and nothing else. Background work (connecting, probing,
closing, the timer that wakes on `next_deadline()`) runs in the pool's own task group, so nothing
outlives the `async with`.
"""

from __future__ import annotations

import math
import random as _random
import ssl
from collections.abc import Callable, Sequence
from email.message import EmailMessage
from types import TracebackType

import anyio.abc

import anyio
from pooledmail_core._classify import (
    Classification,
    FailureKind,
    Stage,
    classify,
    classify_pool_failure,
    retry_delay,
)
from pooledmail_core._config import PoolConfig
from pooledmail_core._entropy import RandomSource
from pooledmail_core._envelope import PreparedMessage
from pooledmail_core._errors import LocalProtocolError
from pooledmail_core._limits import Limits
from pooledmail_core._message import checked_envelope, prepare_message
from pooledmail_core._pool import (
    Action,
    CloseSlot,
    FailWaiter,
    GrantSlot,
    OpenConnection,
    PoolMachine,
    PoolStatistics,
    ProbeSlot,
)
from pooledmail_core._reply import Reply

from ._connection import (
    TRANSPORT_ERRORS,
    ConnectFailure,
    Connection,
    open_connection,
)
from ._results import SendFailed, SendResult
from ._stream import backend_clock

__all__ = ["SMTPPool"]

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
    ) -> None:
        if not isinstance(config, PoolConfig):
            raise TypeError("config: expected a PoolConfig")
        self._config = config
        self._ssl_context = ssl_context
        # Resolved on entry (the event loop's own clock, read without anyio's per-call backend
        # look-up) unless one is given.
        self._clock: Callable[[], float] = clock or anyio.current_time
        self._custom_clock = clock is not None
        self._rng: RandomSource = random if random is not None else _random.Random()
        self._limits = limits or Limits()
        self._local_hostname = config.local_hostname or "localhost"
        self._machine = PoolMachine(config, self._rng)
        self._connections: dict[int, Connection] = {}
        self._waiters: dict[int, _Waiter] = {}
        self._task_group: anyio.abc.TaskGroup | None = None
        self._timer_wakeup: anyio.Event | None = None
        self._timer_deadline = math.inf
        self._state = "new"  # new -> open -> closing -> closed
        self._drained: anyio.Event | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    async def __aenter__(self) -> SMTPPool:
        if self._state != "new":
            raise RuntimeError("an SMTPPool can be entered only once")
        if self._ssl_context is None and any(h.tls.value != "none" for h in self._config.hosts):
            self._ssl_context = ssl.create_default_context()
        if not self._custom_clock:
            self._clock = backend_clock()
        self._task_group = anyio.create_task_group()
        await self._task_group.__aenter__()
        self._state = "open"
        self._task_group.start_soon(self._timer_loop)
        self._perform(self._machine.handle_timer(self._clock()))
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        task_group = self._task_group
        assert task_group is not None
        try:
            with anyio.CancelScope(shield=True):
                await self._drain()
        finally:
            task_group.cancel_scope.cancel()
            try:
                suppress = await task_group.__aexit__(exc_type, exc, tb)
            finally:
                self._state = "closed"
                self._connections.clear()
        return suppress

    async def aclose(self) -> None:
        """Close the pool: the same as leaving the `async with` block."""
        if self._state == "open":
            await self.__aexit__(None, None, None)

    async def _drain(self) -> None:
        """Refuse new work, QUIT idle connections, wait (bounded) for leases to come back."""
        self._state = "closing"
        self._drained = anyio.Event()
        self._perform(self._machine.close(self._clock()))
        with anyio.move_on_after(DRAIN_GRACE):
            if not self._machine.is_closed:
                await self._drained.wait()
        # Whatever is still open now is closed abruptly, shielded and bounded.
        for connection in list(self._connections.values()):
            await connection.abort(ABORT_GRACE)

    # -- the machine's actions ---------------------------------------------------------------

    def _perform(self, actions: Sequence[Action]) -> None:
        """Carry out the actions the pool machine returned for one input, in order."""
        for action in actions:
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
                self._spawn(self._open, action.slot)
            elif type(action) is ProbeSlot:
                self._spawn(self._probe, action.slot)
            elif type(action) is CloseSlot:
                self._spawn(self._close, action.slot, action.graceful)
            else:  # pragma: no cover - the machine returns only the actions above
                raise AssertionError(f"unknown action {action!r}")
        self._rearm_timer()
        if self._drained is not None and self._machine.is_closed:
            self._drained.set()

    def _spawn(self, func: Callable[..., object], *args: object) -> None:
        if self._task_group is not None and self._state != "closed":
            self._task_group.start_soon(func, *args)  # type: ignore[arg-type]

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
            self._timer_wakeup = None
            self._perform(self._machine.handle_timer(self._clock()))

    async def _open(self, slot: int) -> None:
        config = self._config
        host = self._machine.slot_host(slot)
        assert self._ssl_context is not None or host.tls.value == "none"
        outcome = await open_connection(
            host,
            local_hostname=self._local_hostname,
            connect_timeout=config.connect_timeout,
            command_timeout=config.command_timeout,
            ssl_context=self._ssl_context,  # type: ignore[arg-type]
            limits=self._limits,
            quit_grace=QUIT_GRACE,
        )
        if isinstance(outcome, ConnectFailure):
            self._perform(self._machine.connect_failed(slot, self._clock(), outcome.kind, outcome))
            return
        self._connections[slot] = outcome
        self._perform(self._machine.connected(slot, self._clock()))

    async def _probe(self, slot: int) -> None:
        connection = self._connections[slot]
        ok = False
        try:
            probe = connection.session.noop()
            await connection.run(probe, step_timeout=self._config.probe_timeout)
            ok = probe.result.is_positive
        except PROBE_ERRORS:
            ok = False
        now = self._clock()
        if ok:
            self._perform(self._machine.probe_succeeded(slot, now))
        else:
            self._perform(self._machine.probe_failed(slot, now))

    async def _close(self, slot: int, graceful: bool) -> None:
        connection = self._connections.pop(slot, None)
        if connection is not None:
            if graceful:
                await connection.quit(QUIT_GRACE)
            else:
                await connection.abort(ABORT_GRACE)
        self._perform(self._machine.slot_closed(slot, self._clock()))

    # -- acquiring ---------------------------------------------------------------------------

    async def _acquire(self, deadline: float) -> int:
        """Wait for a slot; returns it, or raises `_AcquireFailed`."""
        if self._state != "open":
            raise _AcquireFailed(FailureKind.POOL_CLOSED, None)
        waiter = _Waiter()
        waiter_id, actions = self._machine.acquire(self._clock(), deadline)
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
            return waiter.slot
        assert waiter.kind is not None
        raise _AcquireFailed(waiter.kind, waiter.error)

    # -- sending -----------------------------------------------------------------------------

    async def send(
        self,
        message: EmailMessage,
        *,
        sender: str | None = None,
        recipients: Sequence[str] | None = None,
    ) -> SendResult:
        """Send an `EmailMessage`; the envelope comes from its headers unless given."""
        return await self._send(prepare_message(message, sender=sender, recipients=recipients))

    async def send_raw(self, data: bytes, *, sender: str, recipients: Sequence[str]) -> SendResult:
        """Send a message already serialized as bytes (CRLF or LF line endings)."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError("data: expected bytes")
        # A caller's mistake is refused here, before a connection is even asked for.
        envelope = checked_envelope(sender, recipients)
        return await self._send(PreparedMessage(envelope, bytes(data)))

    async def _send(self, prepared: PreparedMessage) -> SendResult:
        config = self._config
        clock = self._clock
        start = clock()
        deadline = start + config.send_timeout
        attempts = 0
        while True:
            attempts += 1
            host_key: str | None = None
            try:
                acquire_deadline = min(deadline, clock() + config.acquire_timeout)
                slot = await self._acquire(acquire_deadline)
            except _AcquireFailed as failure:
                classification, reply, cause, host_key = failure.describe()
            else:
                connection = self._connections[slot]
                host_key = connection.host.key
                outcome = await self._transact(slot, connection, prepared, deadline, attempts)
                if isinstance(outcome, SendResult):
                    return outcome
                classification, reply, cause = outcome
            delay = retry_delay(
                classification,
                attempt=attempts,
                max_retries=config.max_retries,
                base_delay=config.retry_base_delay,
                jitter=config.cooldown_jitter,
                now=clock(),
                deadline=deadline,
                rng=self._rng,
            )
            if delay is None:
                raise SendFailed(
                    classification.kind,
                    classification.stage,
                    host=host_key,
                    attempts=attempts,
                    reply=reply,
                    definitely_not_accepted=classification.definitely_not_accepted,
                ) from cause
            await anyio.sleep(delay)

    async def _transact(
        self,
        slot: int,
        connection: Connection,
        prepared: PreparedMessage,
        deadline: float,
        attempts: int,
    ) -> SendResult | tuple[Classification, Reply | None, BaseException | None]:
        """One attempt on a leased connection. Always gives the slot back to the machine."""
        healthy = False
        messages = 1
        try:
            try:
                transaction = connection.session.transaction(prepared)
            except LocalProtocolError as exc:
                # Refused before any byte: the session is untouched and carried no message.
                healthy, messages = True, 0
                local = classify(Stage.MAIL, local_refusal=True)
                return local, None, exc
            try:
                await connection.run(
                    transaction,
                    step_timeout=self._config.command_timeout,
                    deadline=deadline,
                )
            except TRANSPORT_ERRORS as exc:
                failed = classify(transaction.stage, terminator_sent=transaction.terminator_sent)
                return failed, None, exc
            result = transaction.result
            if result.failed_stage is None:
                healthy = result.in_sync
                assert result.reply is not None
                return SendResult(
                    connection.host.key, attempts, result.accepted, result.refused, result.reply
                )
            refused = classify(
                result.failed_stage,
                reply=result.reply,
                terminator_sent=transaction.terminator_sent,
            )
            healthy = result.in_sync and refused.keep_connection
            return refused, result.reply, None
        finally:
            self._perform(
                self._machine.release(slot, self._clock(), healthy=healthy, messages=messages)
            )

    def statistics(self) -> PoolStatistics:
        """A frozen snapshot of the pool's state."""
        return self._machine.statistics()


class _AcquireFailed(Exception):
    def __init__(self, kind: FailureKind, error: object) -> None:
        self.kind = kind
        self.error = error

    def describe(self) -> tuple[Classification, Reply | None, BaseException | None, str | None]:
        """The classification of a failed acquire, the server's reply, the cause, the host."""
        error = self.error
        failure = error if isinstance(error, ConnectFailure) else None
        if failure is not None and self.kind is failure.kind:
            # The connection opened for this waiter failed and no other host could take over.
            return (
                failure.classification,
                failure.reply,
                failure.error,
                failure.host,
            )
        cause = failure.error if failure is not None else error
        return (
            classify_pool_failure(self.kind),
            failure.reply if failure is not None else None,
            cause if isinstance(cause, BaseException) else None,
            failure.host if failure is not None else None,
        )
