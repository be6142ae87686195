"""The pool against a real Exim 4 on 127.0.0.1, on asyncio and trio.

Exim is a second real MTA with its own answers: AUTH through its `plaintext` authenticators (no
SASL daemon), 452 for each recipient beyond `recipients_max`, SIZE from `message_size_limit`,
CHUNKING and PIPELINING offered after STARTTLS. One private Exim per module
(tests/servers/exim.py), plus one per test that needs other limits. Verdicts are judged against
Exim's own records: the spool's `-H` files (`stored()`), its queue listing (`exim -bpr`) and its
main log, never against the client's word alone.
"""

from __future__ import annotations

import re
import ssl
from collections import Counter

import pytest
import trustme

from pooledmail_anyio import FailureKind, PoolConfig, SendFailed, SendResult, SMTPPool, Stage
from tests.servers import EximServer, SpooledMessage
from tests.servers.fixtures import exim_instance

from .mta import make_message, send_all, send_capturing, starttls_host

pytestmark = pytest.mark.anyio


def records_of(exim: EximServer, message_id: str) -> list[SpooledMessage]:
    return [record for record in exim.stored() if record.message_id == message_id]


def arrivals(exim: EximServer, since: int) -> list[str]:
    """Exim's `<=` log lines (one per message it accepted) written after offset `since`."""
    return [line for line in exim.log_text(since).splitlines() if " <= " in line]


def assert_spool_and_queue_agree(exim: EximServer) -> None:
    """The -H files and Exim's own queue listing name the same messages and envelopes."""
    listed = exim.queue()
    spooled = {record.queue_id: (record.sender, record.recipients) for record in exim.stored()}
    assert spooled == listed


async def test_a_message_over_starttls_and_auth_is_stored_once_with_its_envelope(
    exim: EximServer, client_tls: ssl.SSLContext
) -> None:
    since = exim.log_position()
    message = make_message(to=["bob@example.com", "carol@example.org"], body=".leading dot\n")
    async with SMTPPool(
        PoolConfig([starttls_host(exim)], max_size=1), ssl_context=client_tls
    ) as pool:
        result = await pool.send(message)

    (record,) = records_of(exim, message["Message-ID"])
    assert record.sender == "alice@example.com"
    assert record.recipients == result.accepted == ("bob@example.com", "carol@example.org")
    assert result.refused == ()
    # Exim authenticated the session over TLS itself: ESMTP, Secure, Authenticated.
    assert record.auth_id == exim.username
    assert record.received_protocol == "esmtpsa"
    assert record.body == b".leading dot\n"
    (arrival,) = arrivals(exim, since)
    assert f" {record.queue_id} <= alice@example.com " in arrival
    assert " X=TLS1." in arrival
    assert_spool_and_queue_agree(exim)


async def test_messages_from_concurrent_senders_are_stored_once_each_through_bdat(
    exim: EximServer, client_tls: ssl.SSLContext
) -> None:
    since = exim.log_position()
    messages = [
        make_message(to=f"rcpt{number}@example.net", body=f"Message {number}.\n.dot line\n")
        for number in range(100)
    ]
    config = PoolConfig([starttls_host(exim)], max_size=4)
    async with SMTPPool(config, ssl_context=client_tls) as pool:
        outcomes = await send_all(pool, messages, senders=6)
        stats = pool.statistics()

    assert len(outcomes) == 100
    copies = Counter(record.message_id for record in exim.stored())
    for message in messages:
        message_id = message["Message-ID"]
        outcome = outcomes[message_id]
        assert isinstance(outcome, SendResult), f"{message_id}: {outcome}"
        assert copies[message_id] == 1, f"{message_id} accepted, stored {copies[message_id]}x"
    by_id = {record.message_id: record for record in exim.stored()}
    for message in messages:
        record = by_id[message["Message-ID"]]
        assert record.recipients == (message["To"],)
        assert record.auth_id == exim.username
        assert record.body.endswith(b"\n.dot line\n")
    # Reused connections: fewer sessions than messages.
    assert stats.created_total <= 4
    # Exim offered CHUNKING, so every message came by BDAT: Exim marks such an arrival with "K".
    lines = arrivals(exim, since)
    assert len(lines) == 100
    assert all(re.search(r" K( |$)", line) for line in lines), lines
    assert_spool_and_queue_agree(exim)


async def test_message_over_the_size_limit_is_permanent_and_not_stored(
    ca: trustme.CA, client_tls: ssl.SSLContext
) -> None:
    with exim_instance(ca, message_size_limit=4096) as exim:
        since = exim.log_position()
        small, large = make_message(), make_message(body=("y" * 76 + "\n") * 100)
        async with SMTPPool(
            PoolConfig([starttls_host(exim)], max_size=1), ssl_context=client_tls
        ) as pool:
            failure = await send_capturing(pool, large)
            accepted = await send_capturing(pool, small)
        assert isinstance(failure, SendFailed)
        assert failure.kind is FailureKind.PERMANENT
        assert failure.definitely_not_accepted
        # Exim advertised its message_size_limit as SIZE 4096 (RFC 1870), and the pool refused
        # the message before its MAIL: no server reply, and Exim saw nothing to reject.
        assert failure.stage is Stage.MAIL
        assert failure.reply is None
        assert "4096" in str(failure)
        assert "rejected" not in exim.log_text(since)
        # The same connection still carried the next message.
        assert isinstance(accepted, SendResult)
        assert records_of(exim, large["Message-ID"]) == []
        assert len(records_of(exim, small["Message-ID"])) == 1
        assert len(arrivals(exim, since)) == 1


async def test_recipients_beyond_recipients_max_are_refused_and_not_stored(
    ca: trustme.CA, client_tls: ssl.SSLContext
) -> None:
    with exim_instance(ca, recipients_max=2) as exim:
        recipients = [f"r{number}@example.org" for number in range(4)]
        message = make_message(to=recipients)
        async with SMTPPool(
            PoolConfig([starttls_host(exim)], max_size=1), ssl_context=client_tls
        ) as pool:
            result = await pool.send(message)
            statistics = pool.send_statistics()

        (record,) = records_of(exim, message["Message-ID"])
        # Exim took the first two and said 452 to the rest (RFC 5321 4.5.3.1.10).
        assert record.recipients == result.accepted == tuple(recipients[:2])
        assert [address for address, _ in result.refused] == recipients[2:]
        assert all(reply.code == 452 for _, reply in result.refused), result.refused
        assert statistics.partly_refused == 1
        assert "too many recipients: excess temporarily rejected" in exim.log_text()
        assert_spool_and_queue_agree(exim)


async def test_wrong_password_is_auth_failed_and_nothing_is_stored(
    exim: EximServer, client_tls: ssl.SSLContext
) -> None:
    since = exim.log_position()
    message = make_message()
    config = PoolConfig([starttls_host(exim, password="wrong-pw")], max_size=1)
    async with SMTPPool(config, ssl_context=client_tls) as pool:
        failure = await send_capturing(pool, message)

    assert isinstance(failure, SendFailed)
    assert failure.kind is FailureKind.AUTH_FAILED
    assert failure.stage is Stage.AUTH
    assert failure.definitely_not_accepted
    assert failure.reply is not None
    assert failure.reply.code == 535
    assert "wrong-pw" not in str(failure)
    assert records_of(exim, message["Message-ID"]) == []
    log = exim.log_text(since)
    # Exim's own word: its authenticator refused the session, and no message arrived.
    assert "authenticator failed" in log
    assert arrivals(exim, since) == []
