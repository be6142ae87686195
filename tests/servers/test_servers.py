"""The test servers themselves: they start, stop, restart on the same port, and record truly."""

from __future__ import annotations

import smtplib
import socket
from collections.abc import Callable

import pytest
import trustme

from tests.servers import RedisServer, SmtpSink
from tests.servers.fixtures import REQUIRE_SERVERS, postfix_instance, unavailable


def redis_ping(server: RedisServer) -> bytes:
    with socket.create_connection((server.host, server.port), timeout=5) as connection:
        connection.sendall(b"PING\r\n")
        return connection.recv(64)


def test_redis_starts_stops_and_restarts_on_the_same_port(redis_server: RedisServer) -> None:
    port = redis_server.port
    assert redis_ping(redis_server) == b"+PONG\r\n"
    redis_server.stop()
    with pytest.raises(ConnectionRefusedError):
        redis_ping(redis_server)
    redis_server.start()
    assert redis_server.port == port
    assert redis_ping(redis_server) == b"+PONG\r\n"


def test_smtp_sink_records_a_message_before_it_answers(
    smtp_sink: Callable[..., SmtpSink],
) -> None:
    sink = smtp_sink(record=True)
    with smtplib.SMTP(sink.host, sink.port, timeout=10) as client:
        for number in range(5):
            client.sendmail(
                "alice@example.com",
                ["bob@example.com", "carol@example.com"],
                f"Message-ID: <{number}@sink.test>\r\nSubject: x\r\n\r\n.dot line\r\n".encode(),
            )
            # Read right after the 250: the capture must already be complete on disk.
            received = sink.received()
            assert sorted(str(message.message_id) for message in received) == [
                f"<{sent}@sink.test>" for sent in range(number + 1)
            ]
    assert received[0].sender == "alice@example.com"
    assert received[0].recipients == ("bob@example.com", "carol@example.com")
    assert received[0].content.endswith(b"\n.dot line\n")


def test_smtp_sink_fault_flags_reach_the_sink(smtp_sink: Callable[..., SmtpSink]) -> None:
    sink = smtp_sink("-Q", "RCPT", record=True)
    with smtplib.SMTP(sink.host, sink.port, timeout=10) as client:
        client.ehlo()
        client.mail("alice@example.com")
        code, _ = client.rcpt("bob@example.com")
    assert code == 421
    assert sink.received() == []


def test_postfix_without_required_auth_takes_mail_from_loopback() -> None:
    # require_auth=False once wrote a relay restriction Postfix refuses to start smtpd with.
    with postfix_instance(trustme.CA(), require_tls=False, require_auth=False) as server:
        with smtplib.SMTP(server.host, server.port, timeout=10) as client:
            client.sendmail(
                "alice@example.com",
                ["bob@example.com"],
                b"Message-ID: <open@postfix.test>\r\nSubject: x\r\n\r\nhi\r\n",
            )
        stored = server.stored()
    assert [str(message.message_id) for message in stored] == ["<open@postfix.test>"]


def test_a_missing_server_skips_unless_servers_are_required(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(REQUIRE_SERVERS, raising=False)
    with pytest.raises(pytest.skip.Exception, match="no-such-server"):
        unavailable("no-such-server not found")
    monkeypatch.setenv(REQUIRE_SERVERS, "1")
    with pytest.raises(pytest.fail.Exception, match="no-such-server"):
        unavailable("no-such-server not found")
