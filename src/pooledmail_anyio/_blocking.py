"""`BlockingSMTPPool`: one `SMTPPool` on an event loop in a background thread, for blocking code.

Theory of operation. Synchronous applications (Django and Flask views, Celery tasks, scripts)
cannot `await`, and `anyio.run()` per message would open a new pool, and new connections, every
time. So a blocking pool owns one event loop, run by anyio's blocking portal in a daemon thread,
and one `SMTPPool` entered on that loop by one long-lived task (the *holder*): the pool's task
group is entered and left in that same task, as the async pool requires. A caller thread hands
its call to the loop with the loop's own thread-safe "call soon" (one wake-up; a portal call
would cost a second round trip to learn that its task was spawned), the call runs as a task in a
task group the holder keeps around the pool, and the thread waits for its future. So any number
of threads share the pool's connections, and whatever the async pool raises (`SendFailed` with
its classification, `EnvelopeError`, `TypeError` ...) reaches the caller as itself. The waits are
bounded by the pool's own timeouts (`send_timeout` bounds a whole send); the thread adds none of
its own. A caller interrupted while it waits (KeyboardInterrupt) cancels its call on the loop.

Life cycle, one explicit state per pool:

    new --start()/first use--> open --close()--> closing --> closed
    new --close()--> closed
    open/new (in a child after fork) --> new        closing (in a child after fork) --> closed

* Lazy: constructing a pool checks the options and starts nothing; the thread and the loop start
  on first use (or `start()`, or `with`). A module-level pool therefore costs nothing until it
  sends, and is safe to create at import time.
* Closing refuses new calls, asks the holder to leave the pool's `async with`, which drains
  exactly as the async pool does (idle connections say QUIT, leased ones get the drain grace),
  waits for the calls still running (they end within their own deadlines, against a closed
  pool), then stops the loop and joins the thread. A send after close fails with
  `POOL_CLOSED`. Pools still open when the interpreter exits are closed by an `atexit` hook (a
  process that ends with `os._exit()`, as multiprocessing children do, skips it: close the pool
  yourself there).
* Fork: only the forking thread survives in a child, so the parent's loop thread does not exist
  there and the parent's sockets must not be touched. A hook registered with
  `os.register_at_fork` runs in the child: every started pool forgets its loop, thread and
  `SMTPPool` (kept referenced, never run or collected, so no destructor can act on them), the
  child's copies of the parent's SMTP sockets are pointed at /dev/null so that the child does not
  hold the parent's connections open, the parent's pool stops reporting metrics, every lock is
  replaced (another thread may have held it at the fork), and the pool is `new` again: its first
  use in the child starts the child's own loop and connections.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import contextvars
import dataclasses
import functools
import importlib.util
import os
import ssl
import sys
import threading
import weakref
from collections.abc import Callable, Coroutine, Sequence
from concurrent.futures import Future, InvalidStateError
from email.message import Message
from types import MappingProxyType, TracebackType
from typing import Any, TypeVar

import anyio.abc
from anyio.from_thread import BlockingPortal, start_blocking_portal

import anyio
from pooledmail_core import (
    ConfigError,
    FailureKind,
    Limits,
    PoolConfig,
    PoolStatistics,
    RandomSource,
    classify_pool_failure,
)

from ._health import HealthReport
from ._pool import SMTPPool
from ._results import SendFailed, SendResult, SendStatistics

__all__ = ["BlockingSMTPPool"]

_T = TypeVar("_T")

BACKENDS = ("asyncio", "trio")


class _Calls:
    """Calls handed from threads to the loop: one wake-up each, run as tasks of the holder.

    Cheaper than a portal call (which waits for its task to be spawned before waiting for its
    result): the caller queues the spawn with the loop's own thread-safe `call_soon` and waits
    once. The calls' task group encloses the pool, so closing drains the pool first (as the
    async pool does) and then waits for the calls still running, which end within their own
    deadlines. A call's future stays pending while it runs, so that the waiting thread can still
    cancel it.
    """

    def __init__(self, task_group: anyio.abc.TaskGroup, backend: str) -> None:
        self._task_group = task_group
        self._run_soon = _run_soon_function(backend)
        self._lock = threading.Lock()
        self._accepting = True
        self.stop = anyio.Event()
        # Built on the loop: a blocking call from this thread would wait for itself forever.
        self.loop_thread = threading.get_ident()

    def submit(
        self,
        func: Callable[[], Coroutine[Any, Any, _T]],
        on_refused: Callable[[SendFailed], None] | None = None,
    ) -> Future[_T]:
        """From any thread but the loop's: start `func()` on the loop; its future.

        `on_refused` is told of the POOL_CLOSED failure when the call cannot start any more
        (the calls' task group has ended) and so never reaches the pool."""
        if threading.get_ident() == self.loop_thread:
            raise RuntimeError(
                "BlockingSMTPPool called from its own event loop thread (a log handler or hook "
                "the pool runs?): it would wait for itself forever"
            )
        future: Future[_T] = Future()
        with self._lock:
            # Under the lock: once `refuse_new` returned, nothing more is queued on the loop.
            if not self._accepting:
                raise _closed_failure()
            self._run_soon(self._spawn, func, future, on_refused)
        return future

    def refuse_new(self) -> None:
        with self._lock:
            self._accepting = False

    def _spawn(
        self,
        func: Callable[[], Coroutine[Any, Any, _T]],
        future: Future[_T],
        on_refused: Callable[[SendFailed], None] | None,
    ) -> None:
        try:
            self._task_group.start_soon(self._run, func, future)
        except RuntimeError:
            # The calls' task group has already ended: the pool is closed.
            failure = _closed_failure()
            if on_refused is not None:
                on_refused(failure)
            _settle(future, error=failure)

    async def _run(self, func: Callable[[], Coroutine[Any, Any, _T]], future: Future[_T]) -> None:
        if future.cancelled():
            # The waiting thread gave up before the call began (an interrupt while the loop
            # was busy): nothing of it runs, so a send writes nothing.
            return
        with anyio.CancelScope() as scope:
            future.add_done_callback(functools.partial(self._cancel_if_cancelled, scope))
            try:
                result = await func()
            except Exception as exc:
                # The caller's outcome, delivered to the caller; the task group goes on.
                _settle(future, error=exc)
                return
            except BaseException as exc:
                # Cancellation (the caller's, through the scope, or the loop's) propagates.
                _settle(future, error=exc)
                raise
            _settle(future, result=result)

    def _cancel_if_cancelled(self, scope: anyio.CancelScope, future: Future[Any]) -> None:
        # Runs where the future was settled: in the loop (nothing to do) or, when the waiting
        # thread cancelled it, in that thread.
        if future.cancelled():
            with contextlib.suppress(RuntimeError):
                self._run_soon(scope.cancel)


def _settle(future: Future[_T], *, result: Any = None, error: BaseException | None = None) -> None:
    # A future the waiting thread cancelled meanwhile takes no outcome.
    with contextlib.suppress(InvalidStateError):
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)


def _run_soon_function(backend: str) -> Callable[..., None]:
    """A thread-safe "run this callback on the current loop soon", in the loop's context.

    The context is the one anyio runs in, so that callbacks may start tasks.
    """
    context = contextvars.copy_context()
    if backend == "trio":
        import trio

        token = trio.lowlevel.current_trio_token()

        def run_soon_trio(callback: Callable[..., object], *args: object) -> None:
            token.run_sync_soon(context.run, callback, *args)

        return run_soon_trio
    loop = asyncio.get_running_loop()

    def run_soon_asyncio(callback: Callable[..., object], *args: object) -> None:
        loop.call_soon_threadsafe(callback, *args, context=context)

    return run_soon_asyncio


class _Running:
    """What a started pool holds: the portal (and its thread), the holder's future, the calls."""

    __slots__ = ("calls", "holder", "pool", "portal", "portal_context")

    def __init__(
        self,
        portal_context: contextlib.ExitStack,
        portal: BlockingPortal,
        pool: SMTPPool,
        holder: Future[None],
        calls: _Calls,
    ) -> None:
        self.portal_context = portal_context
        self.portal = portal
        self.pool = pool
        self.holder = holder
        self.calls = calls

    def shut_down(self) -> None:
        """Leave the pool's `async with` (draining it), then stop the loop and join its thread."""
        try:
            self.calls.refuse_new()
            self.portal.call(self.calls.stop.set)
            # Re-raises whatever leaving the pool raised: a failure to close is not hidden.
            self.holder.result()
        finally:
            self.portal_context.close()

    def inherited_socket_fds(self) -> list[int]:
        """The file descriptors of the pool's SMTP connections (read in a child after fork)."""
        return self.pool._socket_fds()


async def _hold_open(
    pool: SMTPPool,
    backend: str,
    *,
    task_status: anyio.abc.TaskStatus[_Calls] = anyio.TASK_STATUS_IGNORED,
) -> None:
    # The one task that enters and leaves the pool's task group. The calls' task group is
    # outside the pool: leaving them waits for the calls still running after the drain.
    async with anyio.create_task_group() as task_group:
        calls = _Calls(task_group, backend)
        try:
            async with pool:
                task_status.started(calls)
                await calls.stop.wait()
        finally:
            calls.refuse_new()


class BlockingSMTPPool:
    """A thread-safe, blocking front for one `SMTPPool` running in a background thread.

    `pool = BlockingSMTPPool(config)`; `pool.send(message)` from any thread; `pool.close()` (or
    `with BlockingSMTPPool(config) as pool:`). `backend` is "asyncio" (the default) or "trio";
    `ssl_context`, `random`, `limits`, `name`, `metrics`, `meter_provider` and `log_recipients`
    are passed to `SMTPPool`. See docs/guide/sync.md.
    """

    def __init__(
        self,
        config: PoolConfig,
        *,
        backend: str = "asyncio",
        ssl_context: ssl.SSLContext | None = None,
        random: RandomSource | None = None,
        limits: Limits | None = None,
        name: str | None = None,
        metrics: bool = True,
        meter_provider: Any = None,
        log_recipients: bool = False,
    ) -> None:
        if not isinstance(config, PoolConfig):
            raise TypeError("config: expected a PoolConfig")
        if backend not in BACKENDS:
            raise ConfigError("backend", "must be 'asyncio' or 'trio'")
        if backend == "trio" and importlib.util.find_spec("trio") is None:
            raise ConfigError("backend", "'trio' needs trio: pip install 'pooledmail[trio]'")
        if ssl_context is not None and not isinstance(ssl_context, ssl.SSLContext):
            raise ConfigError("ssl_context", "must be an ssl.SSLContext")
        if random is not None and not callable(getattr(random, "random", None)):
            raise ConfigError("random", "must have a random() method, as random.Random has")
        if limits is not None and not isinstance(limits, Limits):
            raise ConfigError("limits", "must be a Limits")
        self._config = config
        self._backend = backend
        self._ssl_context = ssl_context
        self._random = random
        self._limits = limits
        # Checked by SMTPPool itself when the first pool is built below.
        self._observing: dict[str, Any] = {
            "name": name,
            "metrics": metrics,
            "meter_provider": meter_provider,
            "log_recipients": log_recipients,
        }
        self._lock = threading.Lock()
        self._state = "new"  # new -> open -> closing -> closed
        self._closed = threading.Event()
        self._running: _Running | None = None
        # While `close()` drains: the running pool, still read through its loop.
        self._draining: _Running | None = None
        self._pool = self._new_pool()
        # Sends this layer refused because the pool was closed: they never reach the pool,
        # whose counts only its loop changes, so they are counted here (`send_statistics()`).
        self._refusals_lock = threading.Lock()
        self._refused_sends = 0
        _ALL.add(self)

    def _new_pool(self) -> SMTPPool:
        return SMTPPool(
            self._config,
            ssl_context=self._ssl_context,
            random=self._random,
            limits=self._limits,
            **self._observing,
        )

    @classmethod
    def shared(
        cls,
        config: PoolConfig,
        *,
        backend: str = "asyncio",
        ssl_context: ssl.SSLContext | None = None,
        limits: Limits | None = None,
        name: str | None = None,
    ) -> BlockingSMTPPool:
        """The process-wide pool for these arguments, created on first request.

        Every caller that asks with an equal configuration (and the same backend, SSL context,
        limits and name) gets the same pool, so a framework adapter built per request still reuses
        connections. The pool starts on first use and closes at interpreter exit; once closed
        (by `close()` or the exit hook), the next request gets a new one. A forked child gets
        the same object, which starts its own loop and connections on first use in the child.
        """
        key = (config, backend, ssl_context, limits, name)
        with _registry.lock:
            pool = _registry.shared.get(key)
            if pool is None or pool.closed:
                pool = cls(
                    config, backend=backend, ssl_context=ssl_context, limits=limits, name=name
                )
                _registry.shared[key] = pool
            return pool

    # -- life cycle --------------------------------------------------------------------------

    @property
    def config(self) -> PoolConfig:
        return self._config

    @property
    def backend(self) -> str:
        return self._backend

    @property
    def closed(self) -> bool:
        """True once `close()` was called (or the interpreter is exiting)."""
        return self._state in ("closing", "closed")

    def start(self) -> None:
        """Start the background loop and the pool now, instead of on first use.

        Idempotent while open. Raises RuntimeError after `close()`.
        """
        if self.closed:
            raise RuntimeError("this BlockingSMTPPool is closed; create a new one")
        self._ensure_running()

    def _ensure_running(self) -> _Running:
        running = self._running
        if running is not None:
            return running
        with self._lock:
            if self._running is not None:
                return self._running
            if self._state != "new":
                raise _closed_failure()
            running = self._start()
            self._running = running
            self._state = "open"
        with _registry.lock:
            _registry.started.add(self)
        return running

    def _start(self) -> _Running:
        portal_context = contextlib.ExitStack()
        portal = portal_context.enter_context(start_blocking_portal(self._backend))
        try:
            holder, calls = portal.start_task(_hold_open, self._pool, self._backend)
        except BaseException:
            portal_context.close()
            raise
        return _Running(portal_context, portal, self._pool, holder, calls)

    def close(self) -> None:
        """Close the pool as leaving the async pool's `async with` does, then stop the thread.

        Waits for the drain (bounded) and for the sends still in flight (each bounded by
        `send_timeout`). Safe to call from any thread, any number of times: a second caller
        waits until the first has finished. Refused (RuntimeError) from the pool's own loop
        thread, as every other call is: it would wait for itself.
        """
        current = self._running or self._draining
        if current is not None and threading.get_ident() == current.calls.loop_thread:
            raise RuntimeError(
                "BlockingSMTPPool.close() called from its own event loop thread (a log handler "
                "or hook the pool runs?): it would wait for itself forever"
            )
        with self._lock:
            state = self._state
            running = self._running
            if state == "new":
                self._state = "closed"
                self._closed.set()
                return
            if state == "open":
                self._state = "closing"
                self._running = None
                self._draining = running
        if state != "open":
            self._closed.wait()
            return
        assert running is not None
        try:
            running.shut_down()
        finally:
            with self._lock:
                self._state = "closed"
                self._draining = None
                self._closed.set()
            with _registry.lock:
                _registry.started.discard(self)

    def __enter__(self) -> BlockingSMTPPool:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        hosts = ", ".join(host.key for host in self._config.hosts)
        return f"<BlockingSMTPPool {self._state} {self._backend} [{hosts}]>"

    # -- calls -------------------------------------------------------------------------------

    def _call(self, func: Callable[[], Coroutine[Any, Any, _T]], *, send: bool = False) -> _T:
        on_refused = self._refused if send else None
        try:
            running = self._ensure_running()
            # Raises POOL_CLOSED if the pool was closed since the check above.
            future = running.calls.submit(func, on_refused)
        except SendFailed as failure:
            # Only POOL_CLOSED is raised here: a send refused before it reached the pool.
            if on_refused is not None:
                on_refused(failure)
            raise
        try:
            return future.result()
        except BaseException:
            # The waiting thread was interrupted (KeyboardInterrupt, SystemExit): cancel the
            # send rather than leave it running for nobody. A finished future ignores this.
            future.cancel()
            raise

    def _refused(self, failure: SendFailed) -> None:
        """Count a send refused by this layer (the pool is closed) as the async pool counts one
        it refuses: in `send_statistics().failed`, the metrics and the log."""
        with self._refusals_lock:
            self._refused_sends += 1
            pool = self._pool
        # The observer's instruments and loggers are thread-safe; the pool's own counts are not
        # touched from here.
        pool._observer.send_failed(failure, 0.0, ())

    def send(
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
        """Send an `EmailMessage` (see `SMTPPool.send`); blocks until the server answered."""
        return self._call(
            functools.partial(
                self._pool.send,
                message,
                sender=sender,
                recipients=recipients,
                notify=notify,
                ret=ret,
                envid=envid,
                orcpt=orcpt,
                retry_unknown=retry_unknown,
            ),
            send=True,
        )

    def send_raw(
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
        """Send a message already serialized as bytes (see `SMTPPool.send_raw`)."""
        return self._call(
            functools.partial(
                self._pool.send_raw,
                data,
                sender=sender,
                recipients=recipients,
                notify=notify,
                ret=ret,
                envid=envid,
                orcpt=orcpt,
                retry_unknown=retry_unknown,
            ),
            send=True,
        )

    def check(self) -> HealthReport:
        """Check every host (see `SMTPPool.check`); blocks until each has answered or failed.

        Starts the pool's loop if it was not running; sends no message. After `close()` it
        raises `SendFailed` (POOL_CLOSED), as `send()` does: the loop it would run on is gone."""
        return self._call(self._pool.check)

    def statistics(self) -> PoolStatistics:
        """A frozen snapshot of the pool's state (all zeros before the pool started)."""
        return self._snapshot(lambda pool: pool.statistics())

    def send_statistics(self) -> SendStatistics:
        """What the pool's sends have come to so far (see `SMTPPool.send_statistics`): among
        others `cancelled_after_terminator`, the sends to reconcile. Sends refused after
        `close()` count as failed with POOL_CLOSED, as on the async pool."""
        stats = self._snapshot(lambda pool: pool.send_statistics())
        with self._refusals_lock:
            refused = self._refused_sends
        if not refused:
            return stats
        failed = dict(stats.failed)
        closed = FailureKind.POOL_CLOSED.value
        failed[closed] = failed.get(closed, 0) + refused
        return dataclasses.replace(stats, failed=MappingProxyType(failed))

    def budget_statistics(self) -> dict[str, dict[str, object]]:
        """Per shared budget, what this pool holds and how the store answers (see
        `SMTPPool.budget_statistics`); empty without shared budgets."""
        return self._snapshot(lambda pool: pool.budget_statistics())

    def _snapshot(self, read: Callable[[SMTPPool], _T]) -> _T:
        """`read(pool)` on the pool's loop while it runs (the only thread that changes the pool),
        during a close's drain included; directly once nothing runs any more."""
        running = self._running or self._draining
        if running is not None:
            if threading.get_ident() == running.calls.loop_thread:
                # On the loop thread itself (a log handler): nothing changes the pool meanwhile,
                # and waiting on the portal or the close from here would wait for itself.
                return read(running.pool)
            try:
                return running.portal.call(read, running.pool)
            except RuntimeError:
                if not self.closed:
                    raise
                # The loop stopped at the end of the drain: read once the close is over.
                self._closed.wait()
        return read(self._pool)

    # -- fork --------------------------------------------------------------------------------

    def _forget_after_fork(self) -> None:
        """In a child after fork: drop the parent's loop, thread and sockets (see the top)."""
        self._lock = threading.Lock()
        self._refusals_lock = threading.Lock()
        closed = threading.Event()
        # The parent's pool (running, draining, closed or never used) is never run here: its
        # metrics must not be reported beside those of the child's own pool.
        self._pool._detach_metrics()
        # The parent's running pool, or the one its close() was draining at the fork.
        running = self._running or self._draining
        self._running = self._draining = None
        if running is not None:
            _abandoned.append(running)
            _point_at_devnull(running.inherited_socket_fds())
        if self._state in ("open", "new"):
            # "new" too: another thread may have been inside the first start, the parent's
            # SMTPPool already entered, when this one forked; it could never be entered again.
            self._state = "new"
            self._pool = self._new_pool()
            # The child's pool starts its counts afresh; so do this layer's.
            self._refused_sends = 0
        elif self._state == "closing":
            self._state = "closed"
        if self._state == "closed":
            closed.set()
        self._closed = closed


def _closed_failure() -> SendFailed:
    # The same failure the async pool raises for a send on a closed pool.
    classification = classify_pool_failure(FailureKind.POOL_CLOSED)
    return SendFailed(
        FailureKind.POOL_CLOSED,
        classification.stage,
        host=None,
        attempts=0,
        reply=None,
        definitely_not_accepted=classification.definitely_not_accepted,
        reason="the pool is closed",
    )


def _point_at_devnull(fds: list[int]) -> None:
    """Replace each descriptor with /dev/null: the child stops holding the parent's sockets.

    `dup2` rather than `close`: the socket objects of the abandoned pool still own these numbers,
    and a closed number could be reused by a new socket that a late destructor would then close.
    """
    if not fds:
        return
    devnull = os.open(os.devnull, os.O_RDWR)
    try:
        for fd in fds:
            with contextlib.suppress(OSError):
                os.dup2(devnull, fd, inheritable=False)
    finally:
        os.close(devnull)


class _Registry:
    """Process-wide bookkeeping: the shared pools and the started ones (for exit and fork)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.shared: dict[tuple[object, ...], BlockingSMTPPool] = {}
        self.started: set[BlockingSMTPPool] = set()


_registry = _Registry()
# Every pool, for the fork hook (a pool being started by another thread at the fork holds its
# lock); weak, so that an unused pool is collected as usual.
_ALL: weakref.WeakSet[BlockingSMTPPool] = weakref.WeakSet()
# The parent's loops and pools, in a child after fork: referenced so that they are never
# collected (their destructors would act on objects that belong to the parent).
_abandoned: list[_Running] = []


def _close_started_pools() -> None:
    """At interpreter exit: close every pool still open, each one even if another fails."""
    with _registry.lock:
        started = list(_registry.started)
    failures: list[BaseException] = []
    for pool in started:
        try:
            pool.close()
        except Exception as exc:
            failures.append(exc)
    if failures:
        raise failures[0]


def _after_fork_in_child() -> None:
    metrics = sys.modules.get(f"{__package__}._metrics")
    if metrics is not None:
        # First: the pools made below register their metrics under that module's locks, which
        # another thread may have held at the fork (its own hook would come after this one).
        metrics.after_fork_in_child()
    _registry.lock = threading.Lock()
    _registry.started.clear()
    for pool in list(_ALL):
        pool._forget_after_fork()


atexit.register(_close_started_pools)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
