"""What the pool tells operators agrees with what happened, on asyncio and trio.

A mixed workload runs against one fake server whose replies are chosen by each message's plan
(named in its sender: `<plan>.<tag>@example.com`): accepted messages, 4xx and 5xx at MAIL, RCPT,
DATA and after the terminator, partial recipient refusals, drops before and after the terminator,
stalls, retries (with and without `retry_unknown=True`), connections the server closes while they
are idle, `max_messages_per_connection` retirements, cancellations (before a connection, before
the terminator, after it) and a close with sends in flight. Then everything an operator reads is
held to what callers were told and to what the server recorded (`audit`):

* `send_statistics()`: `accepted` is the number of `SendResult`s, every one of them stored by the
  server; `failed[kind]` the number of `SendFailed` of that kind, each verdict true against the
  server's record; `retries` is the sum of `attempts - 1` over the sends that ended, and the
  number of "retrying" records; `cancelled_after_terminator` is the number of cancelled sends
  whose terminator reached the server; `stale_discarded` is among the `stale` and `out_of_sync`
  closes;
* `statistics()`: every connection the server saw was created, every one created is closed by
  some reason once the pool is gone, and the connection log records and metrics say the same per
  reason;
* the OpenTelemetry instruments equal those counters, per kind, stage and host;
* each failed send has exactly one record, whose fields are the `SendFailed`'s; no record holds
  the password, the message body or a recipient.

The existing per-feature tests (test_metrics, test_logging) check each instrument and record in
isolation; this one checks that they all add up across one workload.
"""

from __future__ import annotations

import base64
import logging
import re
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import anyio
from pooledmail_anyio import (
    FailureKind,
    Host,
    PoolConfig,
    SendFailed,
    SendResult,
    SMTPPool,
    Stage,
)

from ..polling import until
from .fakesmtp import DISCONNECT, EXTRA, STALL, FakeSMTPServer, Script
from .test_metrics import Metrics, value
from .verdicts import Sent, got_terminator, judge, settled, terminator_wire

pytestmark = pytest.mark.anyio

PASSWORD = "pw-3b7f-never-in-a-record"
BODY_MARKER = "body-8c41-never-in-a-record"
REFUSED = "refused.private@example.org"
NORMAL = {
    "mail": "250 2.1.0 ok",
    "rcpt": "250 2.1.5 ok",
    "data": "354 go ahead",
    "data_end": "250 2.0.0 queued",
}
# What the server answers at each point, the n-th time a message reaches it (the last repeats).
PLANS: dict[str, dict[str, list[str]]] = {
    "ok": {},
    "okbye": {},  # accepted, and the server closes the connection after its reply
    "okextra": {},  # accepted, and the server sends one reply more than asked for
    "partial": {},  # one recipient (REFUSED) refused, the other accepted
    "mail4": {"mail": ["451 4.3.0 try again later"]},
    "mail5": {"mail": ["550 5.7.1 sender refused"]},
    "rcpt4": {"rcpt": ["450 4.2.0 <{rcpt}>: mailbox busy"]},
    "rcpt5": {"rcpt": ["550 5.1.1 <{rcpt}>: no such user"]},
    "rcpt4once": {"rcpt": ["450 4.2.0 <{rcpt}>: greylisted", NORMAL["rcpt"]]},
    "data4": {"data": ["451 4.3.0 not now"]},
    "data5": {"data": ["554 5.5.0 no data now"]},
    "end4": {"data_end": ["452 4.3.1 queue full"]},
    "end5": {"data_end": ["554 5.7.1 refused as spam"]},
    "end421": {"data_end": ["421 4.3.2 closing the channel", NORMAL["data_end"]]},
    "maildrop": {"mail": [DISCONNECT, NORMAL["mail"]]},
    "datadrop": {"data": [DISCONNECT]},
    "enddrop": {"data_end": [DISCONNECT, NORMAL["data_end"]]},
    # Sent with retry_unknown=True: stored, unanswered, stored again on the retry.
    "enddropretry": {"data_end": [DISCONNECT, NORMAL["data_end"]]},
    # retry_unknown=True, and the retry stalls after its terminator (then it is cancelled).
    "enddropstall": {"data_end": [DISCONNECT, STALL]},
    "endstall": {"data_end": [STALL]},
    "datastall": {"data": [STALL]},
}
# Plans that end the same way however the workload's timing falls (no stall, no cancellation).
QUICK_PLANS = sorted(set(PLANS) - {"endstall", "datastall", "enddropstall"})
_SENDER = re.compile(r"<([a-z0-9]+)\.([^@>]+)@", re.IGNORECASE)


class PlannedServer:
    """A FakeSMTPServer whose replies follow the plan in each transaction's MAIL line. Every
    fourth connection is closed by the server after one message (a connection the pool then
    finds closed while idle, or breaks on)."""

    def __init__(self) -> None:
        self.reached: Counter[tuple[str, str]] = Counter()
        self.server = FakeSMTPServer(self._script)

    def _script(self, n: int) -> Script:
        record = self.server.connections[n]

        def at(point: str) -> Any:
            return lambda line: self._reply(record, point, line)

        def final(_number: int) -> str:
            reply = self._reply(record, "data_end", "")
            if self._plan(record) == "okbye":
                script.close_after_messages = len(record.messages) + 1
            return reply

        def extra(_number: int) -> bytes:
            return EXTRA if self._plan(record) == "okextra" else b""

        script = Script(
            extensions=("PIPELINING", "8BITMIME", "SIZE 10000000", "AUTH PLAIN"),
            mail=at("mail"),
            rcpt=at("rcpt"),
            data=at("data"),
            data_end=final,
            extra_after=extra,
            close_after_messages=1 if n % 4 == 3 else None,
        )
        return script

    @staticmethod
    def _plan(record: Any) -> str:
        return PlannedServer._transaction(record)[0]

    @staticmethod
    def _transaction(record: Any) -> tuple[str, str]:
        """(plan, tag) of the transaction under way on the connection `record`."""
        mail = [c for c in record.commands if c.upper().startswith("MAIL")][-1]
        found = _SENDER.search(mail)
        assert found is not None, mail
        plan, tag = found.groups()
        return plan, tag

    def _reply(self, record: Any, point: str, line: str) -> str:
        plan, tag = self._transaction(record)
        if point == "rcpt" and REFUSED in line:
            return f"550 5.1.1 <{REFUSED}>: Recipient address rejected: User unknown"
        self.reached[(tag, point)] += 1
        replies = PLANS[plan].get(point, [NORMAL[point]])
        reply = replies[min(self.reached[(tag, point)], len(replies)) - 1]
        address = re.search(r"<([^>]*)>", line)
        return reply.replace("{rcpt}", address.group(1) if address else "")


@dataclass
class Workload:
    """The sends made and how each ended: a `SendResult`, a `SendFailed`, or None (cancelled)."""

    planned: PlannedServer
    sent: dict[str, Sent] = field(default_factory=dict)
    plans: dict[str, str] = field(default_factory=dict)
    counter: int = 0

    def new(self, plan: str) -> str:
        self.counter += 1
        tag = f"t{self.counter}x{plan}"
        self.plans[tag] = plan
        return tag

    async def send(self, pool: SMTPPool, plan: str, tag: str | None = None) -> None:
        tag = tag or self.new(plan)
        data = message(tag)
        recipients = ["b@example.com", REFUSED] if plan == "partial" else [f"r-{tag}@example.com"]
        self.sent[tag] = Sent(tag, data, None)
        outcome: SendResult | SendFailed
        try:
            outcome = await pool.send_raw(
                data,
                sender=f"{plan}.{tag}@example.com",
                recipients=recipients,
                retry_unknown=plan.startswith("enddrop") and plan != "enddrop",
            )
        except SendFailed as failure:
            outcome = failure
        self.sent[tag] = Sent(tag, data, outcome)

    def results(self) -> list[SendResult]:
        return [s.outcome for s in self.sent.values() if isinstance(s.outcome, SendResult)]

    def failures(self) -> list[SendFailed]:
        return [s.outcome for s in self.sent.values() if isinstance(s.outcome, SendFailed)]

    def cancelled(self) -> list[Sent]:
        return [s for s in self.sent.values() if s.outcome is None]


def message(tag: str) -> bytes:
    return (
        f"Subject: m-{tag}\r\nFrom: a@example.com\r\nMessage-ID: <{tag}@example.com>\r\n\r\n"
        f"{BODY_MARKER} of {tag}\r\n"
    ).encode()


def config(port: int, **options: Any) -> PoolConfig:
    host = Host(
        "127.0.0.1",
        port,
        tls="none",
        username="alice",
        password=PASSWORD,
        allow_plaintext_auth=True,
    )
    defaults: dict[str, Any] = {
        "max_size": 3,
        "max_messages_per_connection": 3,
        "max_retries": 1,
        "retry_base_delay": 0.0,
        "command_timeout": 5.0,
        "keepalive_interval": None,
    }
    return PoolConfig([host], **{**defaults, **options})


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextmanager
def recording() -> Iterator[list[logging.LogRecord]]:
    logger = logging.getLogger("pooledmail")
    handler = Records()
    level = logger.level
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    try:
        yield handler.records
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def extra(record: logging.LogRecord, name: str) -> Any:
    """A field the pool put in a record's `extra`."""
    return record.__dict__[name]


# -- the audit ---------------------------------------------------------------------------------


def audit(
    workload: Workload,
    pool: SMTPPool,
    records: list[logging.LogRecord],
    found: dict[str, Any],
) -> None:
    """Every disagreement between what the pool says and what happened fails the test."""
    server = workload.planned.server
    sends = list(workload.sent.values())
    results, failures, cancelled = workload.results(), workload.failures(), workload.cancelled()
    sending = pool.send_statistics()
    stats = pool.statistics()

    # Verdicts against the server's record. A message retried after UNKNOWN_AFTER_DATA under
    # retry_unknown=True may be stored twice: that is the documented price of the option.
    duplicates_allowed = {t for t, p in workload.plans.items() if p.startswith("enddrop")}
    wrong = [
        w
        for w in judge(server, sends, bdat=False, chunk_size=0)
        if not any(w.startswith(f"{t} stored") for t in duplicates_allowed)
    ]
    assert not wrong, wrong

    # send_statistics() against what callers were told.
    assert sending.accepted == len(results)
    assert dict(sending.failed) == dict(Counter(f.kind.value for f in failures))
    ended_attempts = sum(o.attempts - 1 for o in [*results, *failures])
    retried = [r for r in records if r.name == "pooledmail.send" and "retrying" in r.getMessage()]
    assert sending.retries == len(retried)
    # A cancelled send may have retried before it was cancelled: its retries count, and they
    # are the only ones no ended send's `attempts` accounts for.
    cancelled_ids = {f"<{s.tag}@example.com>" for s in cancelled}
    retries_of_cancelled = sum(1 for r in retried if extra(r, "message_id") in cancelled_ids)
    assert sending.retries == ended_attempts + retries_of_cancelled
    for outcome in [*results, *failures]:
        mine = [r for r in retried if extra(r, "message_id") == outcome.message_id]
        assert len(mine) == outcome.attempts - 1, outcome
        assert [extra(r, "attempt") for r in mine] == list(range(1, outcome.attempts))
    handed_over = [
        s
        for s in cancelled
        if got_terminator(server, terminator_wire(s.data, bdat=False, chunk_size=0))
    ]
    assert sending.cancelled_after_terminator == len(handed_over)
    cancelled_records = [
        r for r in records if r.name == "pooledmail.send" and "cancelled after" in r.getMessage()
    ]
    assert sorted(extra(r, "message_id") for r in cancelled_records) == sorted(
        f"<{s.tag}@example.com>" for s in handed_over
    )
    assert all(r.levelno == logging.WARNING for r in cancelled_records)

    # Each failed send: one record, its fields those of the SendFailed, at the documented level.
    failed_records = [
        r for r in records if r.name == "pooledmail.send" and " failed: " in r.getMessage()
    ]
    assert len(failed_records) == len(failures)
    for failure in failures:
        (record,) = [r for r in failed_records if extra(r, "message_id") == failure.message_id]
        unknown = failure.kind is FailureKind.UNKNOWN_AFTER_DATA
        assert record.levelno == (logging.WARNING if unknown else logging.INFO)
        assert extra(record, "kind") == failure.kind.value
        assert extra(record, "stage") == failure.stage.value
        assert extra(record, "host") == failure.host
        assert extra(record, "attempt") == failure.attempts
        assert extra(record, "definitely_not_accepted") is failure.definitely_not_accepted
        masked = re.sub(r"r-[^@\s>]+@example\.com", "<recipient>", failure.reason)
        assert extra(record, "reason") == masked
        assert extra(record, "pool") == "audited"

    # Connections: the server saw every one the pool created; all are closed once it is gone.
    assert stats.live == 0
    assert stats.created_total == server.attempts == len(server.connections)
    assert stats.created_total == sum(stats.closed_total.values())
    assert "connect_failed" not in stats.closed_total
    assert sending.stale_discarded <= stats.closed_total.get("stale", 0) + stats.closed_total.get(
        "out_of_sync", 0
    )
    opened = [
        r for r in records if r.name == "pooledmail.connection" and "opened" in r.getMessage()
    ]
    closed_logged = Counter(
        extra(r, "reason")
        for r in records
        if r.name == "pooledmail.connection" and " closed (" in r.getMessage()
    )
    created_metric = value(found, "pooledmail.connection.created")
    # A connection still being set up when the pool closed is in `created_total` and in
    # `closed_total["pool_closed"]`, but was never opened: no record, no metric.
    abandoned = stats.created_total - len(opened)
    assert created_metric == len(opened)
    assert value(found, "pooledmail.connection.create_time") == len(opened)
    for reason, count in stats.closed_total.items():
        metric = value(found, "pooledmail.connection.closed", close_reason=reason)
        expected = count - (abandoned if reason == "pool_closed" else 0)
        assert metric == closed_logged[reason] == expected, (reason, stats.closed_total)
    assert set(closed_logged) <= set(stats.closed_total)

    # Send instruments against send_statistics().
    sends_metric = "pooledmail.sends"
    assert value(found, sends_metric, send_outcome="accepted") == sending.accepted
    for result_host, count in Counter(r.host for r in results).items():
        assert value(found, sends_metric, send_outcome="accepted", host=result_host) == count
    for kind in FailureKind:
        count = sending.failed.get(kind.value, 0)
        assert value(found, sends_metric, send_outcome="failed", failure_kind=kind.value) == count
        if kind is not FailureKind.UNKNOWN_AFTER_DATA:
            not_accepted = value(found, "pooledmail.sends.not_accepted", failure_kind=kind.value)
            assert not_accepted == count, kind
    for (kind_value, stage_value), count in Counter(
        (f.kind.value, f.stage.value) for f in failures
    ).items():
        assert (
            value(
                found,
                sends_metric,
                send_outcome="failed",
                failure_kind=kind_value,
                failure_stage=stage_value,
            )
            == count
        )
    assert value(found, sends_metric, send_outcome="cancelled") == len(handed_over)
    assert value(found, "pooledmail.sends.ambiguous") == (
        sending.failed.get("unknown_after_data", 0) + sending.cancelled_after_terminator
    )
    assert value(found, "pooledmail.send.duration") == sending.accepted + sum(
        sending.failed.values()
    )
    assert value(found, "pooledmail.retries") == sending.retries
    for kind_value, count in Counter(extra(r, "kind") for r in retried).items():
        assert value(found, "pooledmail.retries", failure_kind=kind_value) == count
    # One lease per attempt that got a connection: every attempt but one that failed to get
    # one (the last of its send), and the attempts of cancelled sends that reached the server.
    leases = sum(o.attempts for o in [*results, *failures])
    leases -= sum(1 for f in failures if f.stage is Stage.ACQUIRE)
    reached = workload.planned.reached
    leases += sum(
        1 + sum(1 for r in retried if extra(r, "message_id") == f"<{s.tag}@example.com>")
        for s in cancelled
        if reached[(s.tag, "mail")]
    )
    assert value(found, "pooledmail.lease.duration") == leases
    # One wait for a connection per lease: a connection found unusable before it was lent
    # (`stale_discarded`) is part of the wait of the attempt that discarded it, not one more.
    assert value(found, "pooledmail.acquire.duration") == leases

    # Nothing secret, no body and no recipient in any record.
    plain = base64.b64encode(f"\0alice\0{PASSWORD}".encode()).decode()
    for record in records:
        text = logging.Formatter().format(record) + repr(record.__dict__)
        for secret in (PASSWORD, plain, BODY_MARKER, REFUSED, "r-t"):
            assert secret not in text, (secret, record.getMessage())


# -- the workloads -----------------------------------------------------------------------------


async def cancel_when(
    workload: Workload, pool: SMTPPool, plan: str, point: str, times: int = 1
) -> None:
    """Send with `plan`, and cancel the send once the server has answered (or not) `point` for
    it `times` times."""
    tag = workload.new(plan)
    reached = workload.planned.reached
    async with anyio.create_task_group() as tg:
        tg.start_soon(workload.send, pool, plan, tag)
        await until(lambda: reached[(tag, point)] >= times, what=f"{tag} at {point}")
        if point == "data_end":
            # The message is stored before the (withheld) reply: its terminator is in.
            await until(
                lambda: any(f"m-{tag}".encode() in m for m in workload.planned.server.messages),
                what=f"{tag} stored",
            )
        tg.cancel_scope.cancel()


@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
async def test_every_count_metric_and_record_agrees_with_a_mixed_workload() -> None:
    planned = PlannedServer()
    workload = Workload(planned)
    metrics = Metrics()
    try:
        with recording() as records:
            async with planned.server.running():
                pool = SMTPPool(
                    config(planned.server.port), name="audited", meter_provider=metrics.provider
                )
                async with pool:
                    # The server closes the pool's only connection after its message; the next
                    # send finds it closed while idle and takes a new one, at no cost.
                    await workload.send(pool, "okbye")
                    (idle,) = pool._connections.values()
                    await until(lambda: idle.unusable() == "stale", what="the close seen")
                    await workload.send(pool, "ok")
                    for plan in QUICK_PLANS:
                        await workload.send(pool, plan)
                    # Concurrent senders: more than max_size, so some wait.
                    async with anyio.create_task_group() as tg:
                        for plan in [*QUICK_PLANS, "ok", "ok", "partial"]:
                            tg.start_soon(workload.send, pool, plan)
                    # Cancelled before it asks for a connection: nothing sent, nothing counted.
                    with anyio.CancelScope() as scope:
                        scope.cancel()
                        await workload.send(pool, "ok")
                    # Cancelled before its terminator went out (DATA never answered).
                    await cancel_when(workload, pool, "datastall", "data")
                    # Cancelled after its terminator went out, before the final reply.
                    await cancel_when(workload, pool, "endstall", "data_end")
                    # retry_unknown=True: unknown once, then cancelled after the second terminator.
                    await cancel_when(workload, pool, "enddropstall", "data_end", times=2)
                    for plan in QUICK_PLANS:
                        await workload.send(pool, plan)
                    # A close with sends in flight: two hold their connection after the
                    # terminator, one before it, one more waits for a connection.
                    async with anyio.create_task_group() as tg:
                        in_flight = {"endstall": "data_end", "datastall": "data"}
                        tags = []
                        for plan in ("endstall", "endstall", "datastall"):
                            tags.append((workload.new(plan), in_flight[plan]))
                            tg.start_soon(workload.send, pool, plan, tags[-1][0])
                        for tag, point in tags:
                            await until(
                                lambda t=tag, p=point: planned.reached[(t, p)] > 0,  # type: ignore[misc]
                                what=f"{tag} at {point}",
                            )
                        tg.start_soon(workload.send, pool, "ok")
                        await until(lambda: pool.statistics().waiting == 1, what="a waiter")
                        # A close that is itself cancelled does not wait: it aborts at once.
                        with anyio.CancelScope() as scope:
                            scope.cancel()
                            await pool.aclose()
                assert await settled(planned.server)
            found = metrics.collect()
        audit(workload, pool, records, found)
    finally:
        metrics.provider.shutdown()
    # The workload did reach what it meant to: every kind of outcome and close it was built for.
    sending = pool.send_statistics()
    assert sending.cancelled_after_terminator == 2
    assert {"permanent", "transient", "unknown_after_data", "pool_closed"} <= set(sending.failed)
    closes = {"max_messages", "broken", "pool_closed", "stale", "out_of_sync"}
    assert closes <= set(pool.statistics().closed_total)
    assert sending.stale_discarded >= 1
    assert any(r.refused for r in workload.results())
    assert any(r.attempts == 2 for r in workload.results())


@settings(
    max_examples=6,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    plans=st.lists(st.sampled_from(QUICK_PLANS), min_size=1, max_size=12),
    senders=st.integers(1, 4),
    max_messages=st.integers(1, 3),
)
async def test_counts_agree_with_random_mixed_workloads(
    anyio_backend: str, plans: list[str], senders: int, max_messages: int
) -> None:
    planned = PlannedServer()
    workload = Workload(planned)
    metrics = Metrics()
    try:
        with recording() as records, anyio.fail_after(30):
            async with planned.server.running():
                options = {"max_messages_per_connection": max_messages, "max_size": 2}
                pool = SMTPPool(
                    config(planned.server.port, **options),
                    name="audited",
                    meter_provider=metrics.provider,
                )
                async with pool:
                    queue = iter(plans)

                    async def sender() -> None:
                        for plan in queue:
                            await workload.send(pool, plan)

                    async with anyio.create_task_group() as tg:
                        for _ in range(senders):
                            tg.start_soon(sender)
                assert await settled(planned.server)
            found = metrics.collect()
        audit(workload, pool, records, found)
    finally:
        metrics.provider.shutdown()


@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
@pytest.mark.parametrize("forced", [True, False], ids=["cancelled-close", "drain-ends"])
async def test_connections_the_close_aborts_under_their_senders_are_closed_for_pool_closed(
    forced: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Two sends hold their connections when the pool closes, one after its terminator, one
    # before; the close aborts both. Nothing broke on the server's side: operators must read
    # `pool_closed`, not `broken` (docs/guide/operations.md, close reasons), in the statistics,
    # the metric and the log alike.
    from pooledmail_anyio import _pool

    monkeypatch.setattr(_pool, "DRAIN_GRACE", 0.05)
    planned = PlannedServer()
    workload = Workload(planned)
    metrics = Metrics()
    try:
        with recording() as records:
            async with planned.server.running():
                pool = SMTPPool(
                    config(planned.server.port, command_timeout=60.0),
                    name="audited",
                    meter_provider=metrics.provider,
                )
                async with pool, anyio.create_task_group() as tg:
                    tags = [
                        (workload.new("endstall"), "data_end"),
                        (workload.new("datastall"), "data"),
                    ]
                    for tag, _point in tags:
                        tg.start_soon(workload.send, pool, workload.plans[tag], tag)
                    for tag, point in tags:
                        await until(
                            lambda t=tag, p=point: planned.reached[(t, p)] > 0,  # type: ignore[misc]
                            what=f"{tag} at {point}",
                        )
                    if forced:
                        with anyio.CancelScope() as scope:
                            scope.cancel()
                            await pool.aclose()
                    else:
                        await pool.aclose()
                assert await settled(planned.server)
            found = metrics.collect()
        audit(workload, pool, records, found)
    finally:
        metrics.provider.shutdown()
    kinds = sorted(f.kind.value for f in workload.failures())
    assert kinds == ["pool_closed", "unknown_after_data"]
    stats = pool.statistics()
    assert dict(stats.closed_total) == {"pool_closed": 2}
    assert value(found, "pooledmail.connection.closed", close_reason="pool_closed") == 2


@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
async def test_a_connection_abandoned_at_close_is_in_created_total_but_was_never_opened() -> None:
    # The server never greets: the close abandons the connection being set up. It is counted in
    # `created_total` and in `closed_total["pool_closed"]`, and, never usable, in no connection
    # metric or record (docs/guide/operations.md).
    server = FakeSMTPServer(Script(greeting=STALL))
    metrics = Metrics()
    try:
        with recording() as records:
            async with server.running():
                pool = SMTPPool(
                    config(server.port, connect_timeout=60.0), meter_provider=metrics.provider
                )
                async with pool, anyio.create_task_group() as tg:
                    tg.start_soon(Workload(PlannedServer()).send, pool, "ok")
                    await until(lambda: server.attempts == 1, what="the connection accepted")
                    await pool.aclose()
            found = metrics.collect()
    finally:
        metrics.provider.shutdown()
    stats = pool.statistics()
    assert stats.created_total == 1
    assert dict(stats.closed_total) == {"pool_closed": 1}
    assert pool.send_statistics().failed == {"pool_closed": 1}
    assert value(found, "pooledmail.connection.created") == 0
    assert value(found, "pooledmail.connection.closed") == 0
    assert [r for r in records if r.name == "pooledmail.connection"] == []


@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
async def test_an_idle_connection_found_closed_before_its_probe_is_stale_not_a_failed_noop() -> (
    None
):
    # keepalive_interval makes the next lease probe the idle connection first; the server has
    # closed it meanwhile, so no NOOP is ever sent. Operators must read what happened: a stale
    # connection discarded at no cost, not "failed its NOOP probe".
    planned = PlannedServer()
    workload = Workload(planned)
    metrics = Metrics()
    try:
        with recording() as records:
            async with planned.server.running():
                options = {"keepalive_interval": 0.01}
                pool = SMTPPool(
                    config(planned.server.port, **options),
                    name="audited",
                    meter_provider=metrics.provider,
                )
                async with pool:
                    await workload.send(pool, "okbye")
                    (idle,) = pool._connections.values()
                    await until(lambda: idle.unusable() == "stale", what="the close seen")
                    await anyio.sleep(0.02)  # idle past keepalive_interval: the lease probes
                    await workload.send(pool, "ok")
                assert await settled(planned.server)
            found = metrics.collect()
        audit(workload, pool, records, found)
    finally:
        metrics.provider.shutdown()
    assert len(workload.results()) == 2
    assert not any("NOOP" in c for conn in planned.server.connections for c in conn.commands)
    assert pool.statistics().closed_total.get("stale") == 1
    assert "probe_failed" not in pool.statistics().closed_total
    assert pool.send_statistics().stale_discarded == 1
    assert value(found, "pooledmail.probe.failures") == 0
    assert not [r for r in records if "NOOP probe" in r.getMessage()]
