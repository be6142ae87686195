"""The test servers themselves: they start, stop, restart on the same port, and record truly."""

from __future__ import annotations

import smtplib
import socket
import ssl
from collections.abc import Callable

import pytest
import trustme

from tests.polling import eventually
from tests.servers import EximServer, RedisServer, SmtpSink
from tests.servers._process import process_exists
from tests.servers.fixtures import REQUIRE_SERVERS, exim_instance, postfix_instance, unavailable


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


def test_exim_records_a_message_in_its_spool_before_it_answers() -> None:
    ca = trustme.CA()
    with exim_instance(ca, recipients_max=2) as server:
        client_tls = ssl.create_default_context()
        ca.configure_trust(client_tls)
        with smtplib.SMTP(server.host, server.port, timeout=10) as client:
            client.ehlo()
            # AUTH is offered only over TLS; CHUNKING and PIPELINING always.
            assert not client.has_extn("auth")
            assert client.has_extn("chunking")
            assert client.has_extn("pipelining")
            client.starttls(context=client_tls)
            client.ehlo()
            assert client.has_extn("auth")
            client.login(server.username, server.password)
            refused = client.sendmail(
                "alice@example.com",
                ["bob@example.com", "carol@example.com", "dave@example.com"],
                b"Message-ID: <one@exim.test>\r\nSubject: x\r\n\r\n.dot line\r\n",
            )
            # Read right after the 250: the spool files are already complete.
            (stored,) = server.stored()
        assert refused == {"dave@example.com": (452, b"too many recipients")}
        assert stored.message_id == "<one@exim.test>"
        assert stored.sender == "alice@example.com"
        assert stored.recipients == ("bob@example.com", "carol@example.com")
        assert stored.auth_id == server.username
        assert stored.body == b".dot line\n"
        assert server.queue() == {stored.queue_id: (stored.sender, stored.recipients)}
        # A client still connected when the server closes: its session process must go too.
        lingering = socket.create_connection((server.host, server.port), timeout=10)
        assert lingering.recv(100).startswith(b"220 ")
        pids = server.instance_pids()
        assert len(pids) == 2  # the daemon and the session
        directory = server.directory
    lingering.close()
    # Closed: no process of the instance is left, and its directory is gone.
    assert not any(process_exists(pid) for pid in pids)
    assert not directory.exists()


def test_exim_fault_options_withdraw_extensions_and_run_the_acls_given() -> None:
    ca = trustme.CA()
    with pytest.raises(ValueError, match="acls: unknown ACL"):
        EximServer(certificate_chain_pem=b"", private_key_pem=b"", acls={"rcpt": "accept"})
    acls = {"data": "deny message = refused by the data ACL"}
    with exim_instance(ca, chunking=False, pipelining=False, acls=acls) as server:
        client_tls = ssl.create_default_context()
        ca.configure_trust(client_tls)
        with smtplib.SMTP(server.host, server.port, timeout=10) as client:
            client.starttls(context=client_tls)
            client.ehlo()
            assert not client.has_extn("chunking")
            assert not client.has_extn("pipelining")
            client.login(server.username, server.password)
            with pytest.raises(smtplib.SMTPDataError) as refused:
                client.sendmail(
                    "alice@example.com", ["bob@example.com"], b"Subject: x\r\n\r\nx\r\n"
                )
            # The session process is the daemon's child, and the main log names it on the line
            # it writes about the refusal (just after its reply).
            (session,) = server.session_pids()
            assert eventually(lambda: f"[{session}] " in server.log_text())
        assert refused.value.smtp_code == 550
        assert b"refused by the data ACL" in refused.value.smtp_error
        assert server.stored() == []
