"""Every OpenTelemetry instrument of the contract, read with the SDK's in-memory reader, on asyncio
and trio. Counts are judged against what the servers recorded and what the pool machine says."""

from __future__ import annotations

import gc
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

import anyio
from pooledmail_anyio import FailureKind, Host, PoolConfig, SendFailed, SMTPPool
from pooledmail_anyio._metrics import INSTRUMENTS
from pooledmail_anyio._ports import free_port

from ..polling import until
from .fakesmtp import DISCONNECT, STALL, FakeSMTPServer, Script

pytestmark = pytest.mark.anyio

BODY = b"Subject: hi\r\n\r\nhello\r\n"


@dataclass
class Point:
    attributes: dict[str, Any]
    value: float  # a sum or a gauge; for a histogram, the count
    total: float | None  # a histogram's sum


class Metrics:
    def __init__(self) -> None:
        self.reader = InMemoryMetricReader()
        self.provider = MeterProvider(metric_readers=[self.reader])
        self.kinds: dict[str, tuple[str, str, bool | None]] = {}

    def collect(self) -> dict[str, list[Point]]:
        found: dict[str, list[Point]] = {}
        data = self.reader.get_metrics_data()
        if data is None:
            return found
        for resource in data.resource_metrics:
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    kind = type(metric.data).__name__
                    monotonic = getattr(metric.data, "is_monotonic", None)
                    self.kinds[metric.name] = (kind, metric.unit, monotonic)
                    points = found.setdefault(metric.name, [])
                    for point in metric.data.data_points:
                        if kind == "Histogram":
                            points.append(Point(dict(point.attributes), point.count, point.sum))
                        else:
                            points.append(Point(dict(point.attributes), point.value, None))
        return found


@pytest.fixture
def metrics() -> Iterator[Metrics]:
    found = Metrics()
    yield found
    found.provider.shutdown()


def value(found: dict[str, list[Point]], name: str, **attributes: str) -> float:
    """The sum of the points of `name` whose attributes include `attributes`."""
    wanted = {f"pooledmail.{key.replace('_', '.', 1)}": v for key, v in attributes.items()}
    return sum(
        point.value
        for point in found.get(name, [])
        if all(point.attributes.get(k) == v for k, v in wanted.items())
    )


def local(port: int, **options: Any) -> Host:
    return Host("127.0.0.1", port, tls="none", **options)


async def send(pool: SMTPPool, to: str = "b@example.com") -> Any:
    return await pool.send_raw(BODY, sender="a@example.com", recipients=[to])


async def test_accepted_sends_record_connections_waits_leases_and_durations(
    metrics: Metrics,
) -> None:
    server = FakeSMTPServer(Script())
    async with server.running():
        config = PoolConfig([local(server.port)], max_size=3, max_messages_per_connection=2)
        async with SMTPPool(config, name="mailer", meter_provider=metrics.provider) as pool:
            for _ in range(3):
                await send(pool)
            live = metrics.collect()
            stats = pool.statistics()
        closed = metrics.collect()
    key = f"127.0.0.1:{server.port}"
    assert len(server.messages) == 3
    # Three messages, two per connection: two connections, the first retired after two.
    assert value(live, "pooledmail.connection.created", host=key, pool_name="mailer") == 2
    assert value(live, "pooledmail.connection.create_time", host=key) == 2
    assert value(live, "pooledmail.connection.closed", close_reason="max_messages") == 1
    assert value(live, "pooledmail.acquire.duration", pool_name="mailer") == 3
    assert value(live, "pooledmail.lease.duration", host=key) == 3
    assert value(live, "pooledmail.send.duration", send_outcome="accepted") == 3
    assert value(live, "pooledmail.sends", send_outcome="accepted", host=key) == 3
    # Read live from the machine: the second connection is idle, nothing else is live.
    assert value(live, "pooledmail.connection.count", connection_state="idle") == stats.idle == 1
    assert value(live, "pooledmail.connection.count") == stats.live == 1
    assert value(live, "pooledmail.connection.max", pool_name="mailer") == 3
    assert value(live, "pooledmail.acquire.pending") == 0
    assert value(live, "pooledmail.host.connection.count", host=key) == 1
    assert value(live, "pooledmail.host.cooling_down", host=key) == 0
    assert value(live, "pooledmail.host.available", host=key) == 1
    # The pool's close retires the idle connection; a closed pool is no longer observed.
    assert value(closed, "pooledmail.connection.closed", close_reason="pool_closed") == 1
    assert "pooledmail.connection.count" not in closed or not closed["pooledmail.connection.count"]


async def test_failed_sends_are_counted_by_outcome_kind_and_stage(metrics: Metrics) -> None:
    replies = {
        "permanent@example.com": "550 5.1.1 no such user",
        "transient@example.com": "451 4.3.0 try later",
    }
    script = Script(
        rcpt=lambda line: next((r for k, r in replies.items() if k in line), "250 ok"),
        data_end=lambda n: DISCONNECT if n == 0 else "250 2.0.0 queued",
    )
    server = FakeSMTPServer(script)
    async with server.running():
        config = PoolConfig([local(server.port)], max_retries=1, retry_base_delay=0.0)
        async with SMTPPool(config, meter_provider=metrics.provider) as pool:
            with pytest.raises(SendFailed) as unknown:
                await send(pool)
            with pytest.raises(SendFailed) as permanent:
                await send(pool, "permanent@example.com")
            with pytest.raises(SendFailed) as transient:
                await send(pool, "transient@example.com")
        found = metrics.collect()
    assert unknown.value.kind is FailureKind.UNKNOWN_AFTER_DATA
    assert permanent.value.kind is FailureKind.PERMANENT
    assert transient.value.kind is FailureKind.TRANSIENT
    assert transient.value.attempts == 2
    assert server.received == 1  # the one that is ambiguous was handed over in full
    key = f"127.0.0.1:{server.port}"
    sends = "pooledmail.sends"
    assert value(found, sends, send_outcome="failed", failure_kind="unknown_after_data") == 1
    assert value(found, sends, failure_kind="permanent", failure_stage="rcpt") == 1
    assert value(found, sends, failure_kind="transient", failure_stage="rcpt", host=key) == 1
    assert value(found, sends, send_outcome="accepted") == 0
    assert value(found, "pooledmail.sends.ambiguous", host=key) == 1
    assert value(found, "pooledmail.sends.not_accepted", failure_kind="permanent") == 1
    assert value(found, "pooledmail.sends.not_accepted", failure_kind="transient") == 1
    assert value(found, "pooledmail.retries", failure_kind="transient", host=key) == 1
    assert value(found, "pooledmail.send.duration", send_outcome="failed") == 3
    # The disconnect broke its connection; the refusals left theirs in sync.
    assert value(found, "pooledmail.connection.closed", close_reason="broken") == 1


async def test_connect_failures_cooldown_and_suppressed_connects_per_host(
    metrics: Metrics,
) -> None:
    server = FakeSMTPServer(Script())
    dead = free_port()
    async with server.running():
        config = PoolConfig(
            [local(dead), local(server.port, priority=1)],
            reconnect_cooldown=60.0,
            max_reconnect_cooldown=60.0,
        )
        async with SMTPPool(config, meter_provider=metrics.provider) as pool:
            await send(pool)  # the primary is refused; the backup takes the message
            await send(pool)
            found = metrics.collect()
    dead_key = f"127.0.0.1:{dead}"
    backup = f"127.0.0.1:{server.port}"
    assert len(server.messages) == 2
    assert (
        value(
            found,
            "pooledmail.connect.failures",
            host=dead_key,
            failure_kind="connect_failed",
            failure_stage="connect",
        )
        == 1
    )
    assert value(found, "pooledmail.host.cooling_down", host=dead_key) == 1
    assert value(found, "pooledmail.host.available", host=dead_key) == 0
    assert value(found, "pooledmail.host.available", host=backup) == 1
    # The backup connection was opened while the primary cooled down.
    assert value(found, "pooledmail.connect.suppressed", host=dead_key) >= 1
    assert value(found, "pooledmail.connect.suppressed", host=backup) == 0
    assert value(found, "pooledmail.connection.created", host=backup) == 1


async def test_a_failed_keepalive_probe_is_counted(metrics: Metrics) -> None:
    server = FakeSMTPServer(Script(noop="421 4.4.2 idle too long"))
    async with server.running():
        config = PoolConfig([local(server.port)], keepalive_interval=0.01)
        async with SMTPPool(config, meter_provider=metrics.provider) as pool:
            await send(pool)
            await anyio.sleep(0.05)  # idle past keepalive_interval: the next lease probes first
            await send(pool)
        found = metrics.collect()
    assert len(server.messages) == 2
    assert value(found, "pooledmail.probe.failures") == 1
    assert value(found, "pooledmail.connection.closed", close_reason="probe_failed") == 1
    assert value(found, "pooledmail.connection.created") == 2


async def test_a_send_cancelled_after_its_terminator_is_counted_as_ambiguous(
    metrics: Metrics,
) -> None:
    server = FakeSMTPServer(Script(data_end=STALL))
    async with server.running():
        config = PoolConfig([local(server.port)], command_timeout=60.0)
        async with (
            SMTPPool(config, meter_provider=metrics.provider) as pool,
            anyio.create_task_group() as tg,
        ):
            tg.start_soon(send, pool)
            # The terminator reached the server, and then the caller gives up.
            await until(lambda: server.received == 1, what="the terminator received")
            tg.cancel_scope.cancel()
        found = metrics.collect()
    assert server.received == 1
    assert value(found, "pooledmail.sends", send_outcome="cancelled") == 1
    assert value(found, "pooledmail.sends.ambiguous") == 1


async def test_waiting_senders_are_observed_while_they_wait(metrics: Metrics) -> None:
    server = FakeSMTPServer(Script(data_end=lambda n: STALL if n == 0 else "250 ok"))
    async with server.running():
        config = PoolConfig([local(server.port)], max_size=1, command_timeout=60.0)
        async with (
            SMTPPool(config, meter_provider=metrics.provider) as pool,
            anyio.create_task_group() as tg,
        ):
            tg.start_soon(send, pool)
            # The first send holds the only connection (its terminator went out, no reply
            # comes), and the second waits for it.
            await until(lambda: server.received == 1, what="the first terminator received")
            tg.start_soon(send, pool)
            await until(lambda: pool.statistics().waiting == 1, what="the second send waiting")
            found = metrics.collect()
            tg.cancel_scope.cancel()
    assert value(found, "pooledmail.acquire.pending") == 1
    assert value(found, "pooledmail.connection.count", connection_state="leased") == 1


async def test_pools_sharing_a_provider_are_told_apart_by_name(metrics: Metrics) -> None:
    server = FakeSMTPServer(Script())
    async with server.running():
        config = PoolConfig([local(server.port)], max_size=2)
        async with (
            SMTPPool(config, name="alerts", meter_provider=metrics.provider) as alerts,
            SMTPPool(config, name="newsletters", meter_provider=metrics.provider) as news,
        ):
            await send(alerts)
            await send(news)
            await send(news)
            found = metrics.collect()
    assert value(found, "pooledmail.sends", pool_name="alerts") == 1
    assert value(found, "pooledmail.sends", pool_name="newsletters") == 2
    assert value(found, "pooledmail.connection.max", pool_name="alerts") == 2
    assert value(found, "pooledmail.connection.count", pool_name="newsletters") == 1


async def test_every_instrument_has_the_documented_type_unit_and_attributes(
    metrics: Metrics,
) -> None:
    # One run that touches every instrument: a refused host, a retry, a permanent refusal, a
    # send refused for one of its recipients, a failed probe, a cancellation after the
    # terminator.
    script = Script(
        rcpt=lambda line: "451 4.3.0 later" if "later@" in line else "250 ok",
        noop="421 4.4.2 bye",
        data_end=lambda n: STALL if n == 2 else "250 ok",
    )
    server = FakeSMTPServer(script)
    async with server.running():
        config = PoolConfig(
            [local(free_port()), local(server.port, priority=1)],
            keepalive_interval=0.01,
            retry_base_delay=0.0,
            command_timeout=60.0,
        )
        async with SMTPPool(config, meter_provider=metrics.provider) as pool:
            await send(pool)
            partly = await pool.send_raw(
                BODY, sender="a@example.com", recipients=["b@example.com", "later@example.com"]
            )
            assert [recipient for recipient, _ in partly.refused] == ["later@example.com"]
            with pytest.raises(SendFailed):
                await send(pool, "later@example.com")
            await anyio.sleep(0.05)
            async with anyio.create_task_group() as tg:
                tg.start_soon(send, pool)
                # The refused send never reached DATA: this one's terminator is the third.
                await until(lambda: server.received == 3, what="the fourth send's terminator")
                tg.cancel_scope.cancel()
            found = metrics.collect()
    kinds = {
        "Counter": ("Sum", True),
        "ObservableCounter": ("Sum", True),
        "ObservableUpDownCounter": ("Sum", False),
        "ObservableGauge": ("Gauge", None),
        "Histogram": ("Histogram", None),
    }
    assert set(found) == set(INSTRUMENTS)
    for name, (instrument, unit, attributes) in INSTRUMENTS.items():
        data_kind, monotonic = kinds[instrument]
        assert metrics.kinds[name] == (data_kind, unit, monotonic), name
        assert found[name], f"{name} recorded nothing"
        for point in found[name]:
            assert set(point.attributes) <= set(attributes), name
            assert "pooledmail.pool.name" in point.attributes


def test_without_opentelemetry_nothing_of_it_is_imported_and_the_pool_works() -> None:
    code = """
import sys
sys.modules["opentelemetry"] = None  # as if pooledmail[otel] were not installed
import anyio
from pooledmail_anyio import Host, PoolConfig, SMTPPool
from pooledmail_anyio.testing import LocalSMTPServer

async def main(port):
    async with SMTPPool(PoolConfig([Host("127.0.0.1", port, tls="none")])) as pool:
        assert not pool._metered
        await pool.send_raw(b"Subject: x\\r\\n\\r\\nx\\r\\n", sender="a@x.test",
                            recipients=["b@x.test"])

with LocalSMTPServer() as sink:
    anyio.run(main, sink.port)
    assert sink.received == 1
assert not [m for m in sys.modules if m.startswith("opentelemetry") and sys.modules[m]]
assert "pooledmail_anyio._metrics" not in sys.modules
print("ok")
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "ok", done.stderr


def test_importing_the_driver_imports_no_opentelemetry() -> None:
    code = (
        "import sys, pooledmail_anyio; "
        "print(any(m.startswith('opentelemetry') for m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "False", done.stderr


async def test_metrics_false_records_nothing(metrics: Metrics) -> None:
    server = FakeSMTPServer(Script())
    async with server.running():
        config = PoolConfig([local(server.port)])
        async with SMTPPool(config, metrics=False, meter_provider=metrics.provider) as pool:
            await send(pool)
            assert not pool._metered
        assert metrics.collect() == {}


async def test_a_pool_that_is_gone_is_not_kept_alive_by_its_metrics(metrics: Metrics) -> None:
    server = FakeSMTPServer(Script())
    async with server.running():
        async with SMTPPool(
            PoolConfig([local(server.port)]), meter_provider=metrics.provider
        ) as pool:
            await send(pool)
        del pool
        gc.collect()
        found = metrics.collect()
    assert not found.get("pooledmail.connection.count")


async def test_a_no_op_meter_provider_makes_the_pool_meter_nothing_per_send() -> None:
    from opentelemetry.metrics import NoOpMeterProvider

    server = FakeSMTPServer(Script())
    async with server.running():
        config = PoolConfig([local(server.port)])
        async with SMTPPool(config, meter_provider=NoOpMeterProvider()) as pool:
            await send(pool)
            assert not pool._metered
            assert not pool._leased_at
    assert len(server.messages) == 1


def test_without_an_sdk_nothing_is_metered_until_one_installs_a_global_provider() -> None:
    # The global provider can be installed once per process: this runs in its own.
    code = """
import anyio
from opentelemetry import metrics
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from pooledmail_anyio import Host, PoolConfig, SMTPPool
from pooledmail_anyio.testing import LocalSMTPServer

BODY = b"Subject: x\\r\\n\\r\\nx\\r\\n"

def sends(reader):
    data = reader.get_metrics_data()
    if data is None:
        return 0
    return sum(
        point.value
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
        if metric.name == "pooledmail.sends"
        for point in metric.data.data_points
    )

async def main(port):
    async with SMTPPool(PoolConfig([Host("127.0.0.1", port, tls="none")])) as pool:
        # The API alone: its proxy provider drops every measurement, so none is made.
        await pool.send_raw(BODY, sender="a@x.test", recipients=["b@x.test"])
        assert not pool._metered
        reader = InMemoryMetricReader()
        metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
        # The next send finds the SDK's provider installed, and is recorded.
        for _ in range(2):
            await pool.send_raw(BODY, sender="a@x.test", recipients=["b@x.test"])
        assert pool._metered
        print(sends(reader))

with LocalSMTPServer() as sink:
    anyio.run(main, sink.port)
    assert sink.received == 3
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "2", done.stderr
