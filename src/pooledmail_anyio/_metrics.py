"""OpenTelemetry metrics for a pool (installed with `pooledmail[otel]`).

Imported only by `_observe` when a pool asks for metrics; importing it imports OpenTelemetry's API.
The contract (names, types, units, attributes) is documented instrument by instrument in
docs/guide/operations.md, and `INSTRUMENTS` below is checked against that page by a test.

Instruments are created once per meter provider and shared by every pool that uses it; each pool
adds its own attributes (`pooledmail.pool.name`, `pooledmail.host`). The observable instruments
read the pool machine's own counts when the SDK collects: one callback per instrument walks the
pools alive at that moment (held weakly, so a metric reader never keeps a pool alive).
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from opentelemetry import metrics as otel_metrics
from opentelemetry.metrics import CallbackOptions, NoOpCounter, Observation

from pooledmail_core import FailureKind, PoolStatistics, Stage

if TYPE_CHECKING:
    from ._results import SendFailed

__all__ = ["INSTRUMENTS", "PoolMetrics"]

_METER = "pooledmail"
POOL = "pooledmail.pool.name"
HOST = "pooledmail.host"
STATE = "pooledmail.connection.state"
REASON = "pooledmail.close.reason"
KIND = "pooledmail.failure.kind"
STAGE = "pooledmail.failure.stage"
OUTCOME = "pooledmail.send.outcome"

# Seconds: from 1 ms (a local relay) to a minute (a send_timeout), as OpenTelemetry's semantic
# conventions advise for durations.
_SECONDS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

# name: (instrument type, unit, attributes). The documentation's table is checked against this.
INSTRUMENTS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "pooledmail.connection.count": ("ObservableUpDownCounter", "{connection}", (POOL, STATE)),
    "pooledmail.connection.max": ("ObservableUpDownCounter", "{connection}", (POOL,)),
    "pooledmail.acquire.pending": ("ObservableUpDownCounter", "{request}", (POOL,)),
    "pooledmail.host.connection.count": (
        "ObservableUpDownCounter",
        "{connection}",
        (POOL, HOST),
    ),
    "pooledmail.host.cooling_down": ("ObservableGauge", "1", (POOL, HOST)),
    "pooledmail.host.available": ("ObservableGauge", "1", (POOL, HOST)),
    "pooledmail.connect.suppressed": ("ObservableCounter", "{connection}", (POOL, HOST)),
    "pooledmail.acquire.duration": ("Histogram", "s", (POOL,)),
    "pooledmail.lease.duration": ("Histogram", "s", (POOL, HOST)),
    "pooledmail.connection.create_time": ("Histogram", "s", (POOL, HOST)),
    "pooledmail.send.duration": ("Histogram", "s", (POOL, HOST, OUTCOME, KIND)),
    "pooledmail.connection.created": ("Counter", "{connection}", (POOL, HOST)),
    "pooledmail.connection.closed": ("Counter", "{connection}", (POOL, HOST, REASON)),
    "pooledmail.connect.failures": ("Counter", "{attempt}", (POOL, HOST, KIND, STAGE)),
    "pooledmail.probe.failures": ("Counter", "{probe}", (POOL, HOST)),
    "pooledmail.sends": ("Counter", "{message}", (POOL, HOST, OUTCOME, KIND, STAGE)),
    "pooledmail.sends.not_accepted": ("Counter", "{message}", (POOL, HOST, KIND)),
    "pooledmail.sends.ambiguous": ("Counter", "{message}", (POOL, HOST)),
    "pooledmail.retries": ("Counter", "{retry}", (POOL, HOST, KIND)),
    "pooledmail.recipients.refused": ("Counter", "{recipient}", (POOL, HOST, KIND)),
}

_STATES = ("connecting", "idle", "probing", "leased", "closing")
_SNAPSHOT_TRIES = 5


class _Instruments:
    """The instruments of one meter provider, shared by the pools that use it."""

    def __init__(self, meter: otel_metrics.Meter) -> None:
        self.pools: weakref.WeakSet[PoolMetrics] = weakref.WeakSet()
        self.lock = threading.Lock()

        def histogram(name: str, description: str) -> otel_metrics.Histogram:
            _, unit, _ = INSTRUMENTS[name]
            return meter.create_histogram(
                name, unit, description, explicit_bucket_boundaries_advisory=_SECONDS
            )

        def counter(name: str, description: str) -> otel_metrics.Counter:
            return meter.create_counter(name, INSTRUMENTS[name][1], description)

        def observe(
            create: Callable[..., Any],
            name: str,
            description: str,
            read: Callable[[PoolMetrics, PoolStatistics], Iterable[tuple[int, dict[str, str]]]],
        ) -> None:
            create(
                name,
                callbacks=[self._callback(read)],
                unit=INSTRUMENTS[name][1],
                description=description,
            )

        self.acquire_duration = histogram(
            "pooledmail.acquire.duration", "How long a send waited for a connection"
        )
        self.lease_duration = histogram(
            "pooledmail.lease.duration", "How long a connection was lent to one send"
        )
        self.create_time = histogram(
            "pooledmail.connection.create_time",
            "How long opening a connection took, up to a session ready for MAIL",
        )
        self.send_duration = histogram(
            "pooledmail.send.duration", "How long a send took, retries included, by outcome"
        )
        self.created = counter("pooledmail.connection.created", "Connections opened")
        self.closed = counter("pooledmail.connection.closed", "Connections closed, by reason")
        self.connect_failures = counter(
            "pooledmail.connect.failures", "Connection attempts that failed, by kind"
        )
        self.probe_failures = counter(
            "pooledmail.probe.failures", "Idle connections that failed their NOOP probe"
        )
        self.sends = counter("pooledmail.sends", "Sends by outcome, kind and stage")
        self.not_accepted = counter(
            "pooledmail.sends.not_accepted", "Failed sends the server definitely did not accept"
        )
        self.ambiguous = counter(
            "pooledmail.sends.ambiguous",
            "Sends whose outcome is unknown: UNKNOWN_AFTER_DATA, or cancelled after the terminator",
        )
        self.retries = counter("pooledmail.retries", "Attempts after the first")
        self.recipients_refused = counter(
            "pooledmail.recipients.refused",
            "Recipients the server refused in sends it accepted for others, by kind",
        )
        self.recording = _recording(self.sends)
        observe(
            meter.create_observable_up_down_counter,
            "pooledmail.connection.count",
            "Connections by state; they add up to the live connections",
            _connections_by_state,
        )
        observe(
            meter.create_observable_up_down_counter,
            "pooledmail.connection.max",
            "The pool's max_size",
            _max_size,
        )
        observe(
            meter.create_observable_up_down_counter,
            "pooledmail.acquire.pending",
            "Sends waiting for a connection",
            _waiting,
        )
        observe(
            meter.create_observable_up_down_counter,
            "pooledmail.host.connection.count",
            "Live connections to each host",
            _host_live,
        )
        observe(
            meter.create_observable_gauge,
            "pooledmail.host.cooling_down",
            "1 while the host is cooling down after a failure",
            _host_cooling_down,
        )
        observe(
            meter.create_observable_gauge,
            "pooledmail.host.available",
            "1 while the host has had no failure since its last success",
            _host_available,
        )
        observe(
            meter.create_observable_counter,
            "pooledmail.connect.suppressed",
            "Connections not opened to a host because it was cooling down",
            _host_suppressed,
        )

    def _callback(
        self, read: Callable[[PoolMetrics, PoolStatistics], Iterable[tuple[int, dict[str, str]]]]
    ) -> Callable[[CallbackOptions], Iterator[Observation]]:
        def callback(options: CallbackOptions) -> Iterator[Observation]:
            # Two pools with one name are reported together: one observation per attribute set.
            totals: dict[tuple[tuple[str, str], ...], int] = {}
            with self.lock:
                pools = list(self.pools)
            for pool_metrics in pools:
                stats = pool_metrics.statistics()
                if stats is None:
                    continue
                for value, attributes in read(pool_metrics, stats):
                    key = tuple(sorted(attributes.items()))
                    totals[key] = totals.get(key, 0) + value
            for key, value in totals.items():
                yield Observation(value, dict(key))

        return callback


def _connections_by_state(
    pool: PoolMetrics, stats: PoolStatistics
) -> Iterator[tuple[int, dict[str, str]]]:
    for state in _STATES:
        yield getattr(stats, state), {POOL: pool.name, STATE: state}


def _max_size(pool: PoolMetrics, stats: PoolStatistics) -> Iterator[tuple[int, dict[str, str]]]:
    yield pool.max_size, {POOL: pool.name}


def _waiting(pool: PoolMetrics, stats: PoolStatistics) -> Iterator[tuple[int, dict[str, str]]]:
    yield stats.waiting, {POOL: pool.name}


def _host_live(pool: PoolMetrics, stats: PoolStatistics) -> Iterator[tuple[int, dict[str, str]]]:
    for key, host in stats.hosts.items():
        yield host.live, {POOL: pool.name, HOST: key}


def _host_cooling_down(
    pool: PoolMetrics, stats: PoolStatistics
) -> Iterator[tuple[int, dict[str, str]]]:
    for key, host in stats.hosts.items():
        yield int(host.cooling_down), {POOL: pool.name, HOST: key}


def _host_available(
    pool: PoolMetrics, stats: PoolStatistics
) -> Iterator[tuple[int, dict[str, str]]]:
    for key, host in stats.hosts.items():
        yield int(host.consecutive_failures == 0), {POOL: pool.name, HOST: key}


def _host_suppressed(
    pool: PoolMetrics, stats: PoolStatistics
) -> Iterator[tuple[int, dict[str, str]]]:
    for key, host in stats.hosts.items():
        yield host.connects_suppressed, {POOL: pool.name, HOST: key}


def _recording(probe: otel_metrics.Counter) -> Callable[[], bool] | bool:
    """Whether the instruments made with `probe` record anything: True or False for good, or a
    check to ask again later.

    A no-op provider (`NoOpMeterProvider`) makes no-op instruments, which never record. The API's
    global provider, while no SDK has installed a real one, makes proxy instruments that drop
    every measurement until one is installed (`metrics.set_meter_provider`, which may come after
    the pool was made): then they forward to a real instrument, which the check finds. The
    proxy's attribute is OpenTelemetry's own; if it ever goes, the instruments are taken as
    recording, as they were before this check existed.
    """
    if isinstance(probe, NoOpCounter):
        return False
    if not hasattr(probe, "_real_instrument"):
        return True

    def installed() -> bool:
        real = probe._real_instrument
        return real is not None and not isinstance(real, NoOpCounter)

    return installed


# Instruments by meter provider. A provider is held weakly where it can be.
_registry: weakref.WeakKeyDictionary[Any, _Instruments] = weakref.WeakKeyDictionary()
_registry_lock = threading.Lock()


def after_fork_in_child() -> None:
    """In a child after fork: new locks, as only the forking thread exists there.

    Another thread may have held one at the fork (a pool being made, a metric reader collecting
    from its own thread): nobody would ever release it in the child, and the next pool made there
    would wait for it forever. The blocking pool's fork hook makes pools, so it calls this first
    (hooks run in the order they were registered, and it was registered before this module was
    imported); calling it twice is harmless.
    """
    global _registry_lock
    _registry_lock = threading.Lock()
    for instruments in list(_registry.values()):
        instruments.lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=after_fork_in_child)


def _instruments(meter_provider: Any) -> _Instruments:
    provider = meter_provider if meter_provider is not None else otel_metrics.get_meter_provider()
    with _registry_lock:
        found = _registry.get(provider)
        if found is None:
            from importlib.metadata import PackageNotFoundError, version

            try:
                own_version: str | None = version("pooledmail")
            except PackageNotFoundError:  # pragma: no cover - running from a source tree
                own_version = None
            found = _Instruments(provider.get_meter(_METER, own_version))
            _registry[provider] = found
        return found


class PoolMetrics:
    """What one pool records. Every method is one or two calls on a shared instrument."""

    __slots__ = (
        "__weakref__",
        "_instruments",
        "_pool",
        "_pool_only",
        "max_size",
        "name",
    )

    def __init__(self, name: str, meter_provider: Any, pool: Any) -> None:
        self.name = name
        self.max_size: int = pool._config.max_size
        # The pool is read through a weak reference: metrics never keep it alive.
        self._pool = weakref.ref(pool)
        self._pool_only = {POOL: name}
        self._instruments = _instruments(meter_provider)
        with self._instruments.lock:
            self._instruments.pools.add(self)

    def detach(self) -> None:
        """Report nothing more for this pool: in a forked child, the copy of a parent's pool, which
        is never run there, must not add its frozen counts to those of the child's own pool."""
        with self._instruments.lock:
            self._instruments.pools.discard(self)

    @property
    def recording(self) -> Callable[[], bool] | bool:
        """Whether what this pool records goes anywhere (see `_recording`)."""
        return self._instruments.recording

    def statistics(self) -> PoolStatistics | None:
        """The pool's snapshot, or None once it is gone or closed.

        A metric reader may collect from its own thread while the pool's event loop changes the
        machine: a snapshot that met a change half-way is taken again. Cooldowns are judged at
        the latest time the pool has seen (its timer wakes at every cooldown's end)."""
        pool = self._pool()
        if pool is None or pool._state in ("new", "closed"):
            return None
        for _ in range(_SNAPSHOT_TRIES):
            try:
                stats: PoolStatistics = pool._machine.statistics()
            except RuntimeError:  # a dict changed size while it was read
                continue
            return stats
        return None

    def _host(self, host: str | None) -> dict[str, str]:
        if host is None:
            return self._pool_only
        return {POOL: self.name, HOST: host}

    # -- connections -------------------------------------------------------------------------

    def connection_opened(self, host: str, seconds: float) -> None:
        attributes = self._host(host)
        self._instruments.created.add(1, attributes)
        self._instruments.create_time.record(seconds, attributes)

    def connection_closed(self, host: str, reason: str) -> None:
        self._instruments.closed.add(1, {POOL: self.name, HOST: host, REASON: reason})

    def connect_failed(self, host: str, kind: FailureKind, stage: Stage) -> None:
        self._instruments.connect_failures.add(
            1, {POOL: self.name, HOST: host, KIND: kind.value, STAGE: stage.value}
        )

    def probe_failed(self, host: str) -> None:
        self._instruments.probe_failures.add(1, self._host(host))

    # -- sends -------------------------------------------------------------------------------

    def acquired(self, seconds: float) -> None:
        self._instruments.acquire_duration.record(seconds, self._pool_only)

    def released(self, host: str, seconds: float) -> None:
        self._instruments.lease_duration.record(seconds, self._host(host))

    def send_accepted(self, host: str, seconds: float) -> None:
        instruments = self._instruments
        attributes = {POOL: self.name, HOST: host, OUTCOME: "accepted"}
        instruments.sends.add(1, attributes)
        instruments.send_duration.record(seconds, attributes)

    def send_failed(self, failure: SendFailed, seconds: float) -> None:
        instruments = self._instruments
        kind = failure.kind
        attributes = {POOL: self.name, OUTCOME: "failed", KIND: kind.value}
        if failure.host is not None:
            attributes[HOST] = failure.host
        instruments.send_duration.record(seconds, attributes)
        instruments.sends.add(1, {**attributes, STAGE: failure.stage.value})
        if failure.definitely_not_accepted:
            instruments.not_accepted.add(1, {**self._host(failure.host), KIND: kind.value})
        else:
            instruments.ambiguous.add(1, self._host(failure.host))

    def cancelled_after_terminator(self, host: str, stage: Stage) -> None:
        instruments = self._instruments
        instruments.sends.add(
            1,
            {
                POOL: self.name,
                HOST: host,
                OUTCOME: "cancelled",
                KIND: FailureKind.UNKNOWN_AFTER_DATA.value,
                STAGE: stage.value,
            },
        )
        instruments.ambiguous.add(1, self._host(host))

    def recipients_refused(self, host: str, transient: int, permanent: int) -> None:
        counter = self._instruments.recipients_refused
        for kind, count in ((FailureKind.TRANSIENT, transient), (FailureKind.PERMANENT, permanent)):
            if count:
                counter.add(count, {POOL: self.name, HOST: host, KIND: kind.value})

    def retried(self, host: str | None, kind: FailureKind) -> None:
        self._instruments.retries.add(1, {**self._host(host), KIND: kind.value})
