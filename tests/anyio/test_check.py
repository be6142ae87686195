"""`await pool.check()` against good and failing hosts, on asyncio and trio."""

from __future__ import annotations

import ssl
from typing import Any

import pytest

from pooledmail_anyio import FailureKind, HealthReport, Host, PoolConfig, SMTPPool, Stage
from pooledmail_anyio._ports import free_port

from .fakesmtp import DISCONNECT, STALL, FakeSMTPServer, Script

pytestmark = pytest.mark.anyio


@pytest.mark.aiosmtpd(tls_context="server_tls", with_auth=True, require_starttls=True)
async def test_a_good_host_passes_with_tls_and_auth_and_nothing_is_sent(
    aiosmtpd_server: Any, client_tls: ssl.SSLContext
) -> None:
    controller, handler = aiosmtpd_server
    host = Host("127.0.0.1", controller.port, username="alice", password="s3cret-pw")
    async with SMTPPool(PoolConfig([host]), ssl_context=client_tls) as pool:
        report = await pool.check()
        stats = pool.statistics()
    assert isinstance(report, HealthReport)
    assert report.ok
    assert report.failures == ()
    (found,) = report.hosts
    assert found.host == host.key
    assert found.stage is Stage.AUTH
    assert found.kind is None
    assert str(found.tls_version).startswith("TLSv1")
    assert found.auth_mechanism in ("PLAIN", "LOGIN")
    assert found.round_trip_seconds is not None
    assert handler.mechanisms  # it really authenticated
    assert handler.envelopes == []  # and sent nothing
    assert stats.created_total == 0  # the pool was not touched
    assert str(report).startswith(f"{host.key}: ok (TLSv1")


@pytest.mark.aiosmtpd(tls_context="server_tls", with_auth=True, require_starttls=True)
async def test_wrong_credentials_are_reported_as_auth_failed_without_cooling_the_host(
    aiosmtpd_server: Any, client_tls: ssl.SSLContext
) -> None:
    controller, _ = aiosmtpd_server
    host = Host("127.0.0.1", controller.port, username="alice", password="wrong")
    async with SMTPPool(PoolConfig([host]), ssl_context=client_tls) as pool:
        report = await pool.check()
        stats = pool.statistics()
    (found,) = report.failures
    assert not report.ok
    assert found.kind is FailureKind.AUTH_FAILED
    assert found.stage is Stage.AUTH
    assert found.reply is not None
    assert found.reply.code == 535
    assert "wrong" not in str(report)
    assert stats.hosts[host.key].consecutive_failures == 0


@pytest.mark.aiosmtpd(tls_context="server_tls", require_starttls=True)
async def test_an_untrusted_certificate_is_tls_failed(aiosmtpd_server: Any) -> None:
    controller, _ = aiosmtpd_server
    async with SMTPPool(PoolConfig([Host("127.0.0.1", controller.port)])) as pool:
        report = await pool.check()
    (found,) = report.hosts
    assert found.kind is FailureKind.TLS_FAILED
    assert "certificate verify failed" in found.reason


async def test_every_host_is_reported_in_order_good_refused_and_silent() -> None:
    good = FakeSMTPServer(Script())
    silent = FakeSMTPServer(Script(noop=STALL))
    refusing_noop = FakeSMTPServer(Script(noop="502 5.5.1 no NOOP here"))
    dead = free_port()
    async with good.running(), silent.running(), refusing_noop.running():
        hosts = [
            Host("127.0.0.1", good.port, tls="none"),
            Host("127.0.0.1", dead, tls="none", priority=1),
            Host("127.0.0.1", refusing_noop.port, tls="none", priority=2),
            Host("127.0.0.1", silent.port, tls="none", priority=3),
        ]
        async with SMTPPool(PoolConfig(hosts, connect_timeout=0.3)) as pool:
            report = await pool.check()
    assert [found.host for found in report.hosts] == [host.key for host in hosts]
    assert [found.ok for found in report.hosts] == [True, False, False, False]
    refused, noop_refused, noop_silent = report.failures
    assert refused.kind is FailureKind.CONNECT_FAILED
    assert refused.stage is Stage.CONNECT
    assert refused.reason == "connection refused"
    assert noop_refused.reply is not None
    assert "NOOP was refused" in noop_refused.reason
    assert "NOOP failed" in noop_silent.reason
    # No message went anywhere, and each connection that opened was closed with QUIT.
    assert good.messages == []
    assert good.connections[0].commands[-1] == "QUIT"
    lines = str(report).splitlines()
    assert len(lines) == 4
    assert lines[1].startswith(f"127.0.0.1:{dead}: CONNECT_FAILED during CONNECT")


async def test_check_works_before_the_pool_is_entered() -> None:
    server = FakeSMTPServer(Script())
    async with server.running():
        report = await SMTPPool(PoolConfig([Host("127.0.0.1", server.port, tls="none")])).check()
    assert report.ok
    assert report.hosts[0].tls_version is None
    assert report.hosts[0].stage is Stage.EHLO


@pytest.mark.parametrize("tls", ["none", "starttls"])
@pytest.mark.parametrize(
    ("noop", "said"),
    [
        (STALL, "no reply to NOOP within 0.3 s (connect_timeout)"),
        (DISCONNECT, "the server closed the connection during NOOP"),
    ],
    ids=["silent", "closed"],
)
async def test_a_failed_noop_is_described_as_the_noop_not_as_a_setup_stage(
    tls: str, noop: str, said: str, server_tls: ssl.SSLContext, client_tls: ssl.SSLContext
) -> None:
    # Setup went through (EHLO answered, the TLS handshake done): the reason must not say
    # that EHLO got no reply or that the handshake did not finish.
    extensions = ("PIPELINING", "STARTTLS")
    server = FakeSMTPServer(Script(noop=noop, extensions=extensions, tls_context=server_tls))
    async with server.running():
        host = Host("127.0.0.1", server.port, tls=tls)
        pool = SMTPPool(PoolConfig([host], connect_timeout=0.3), ssl_context=client_tls)
        report = await pool.check()
    (found,) = report.failures
    assert "NOOP" in server.connections[0].commands
    assert (found.tls_version is not None) is (tls == "starttls")
    assert found.reason == f"the session was ready but NOOP failed: {said}"
