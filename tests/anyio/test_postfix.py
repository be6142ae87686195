"""The pool against a real Postfix smtpd on 127.0.0.1, on asyncio and trio.

One private Postfix per module (tests/servers/postfix.py): STARTTLS and AUTH required, PIPELINING,
CHUNKING, SMTPUTF8, 8BITMIME, SIZE and DSN offered, every accepted message held in its queue.
Verdicts are judged against Postfix's own records: the held queue files (`stored()`) and smtpd's
per-session command counts in its log (`sessions()`), never against the client's word alone.
"""

from __future__ import annotations

import ssl
from collections import Counter
from collections.abc import Iterable, Iterator

import pytest
import trustme

import anyio
from pooledmail_anyio import FailureKind, PoolConfig, SendFailed, SendResult, SMTPPool, Stage
from tests.servers import PostfixServer, SessionSummary, StoredMessage
from tests.servers.fixtures import postfix_instance

from .mta import Outcome, make_message, send_all, send_capturing, starttls_host

pytestmark = pytest.mark.anyio


def copies_by_message_id(stored: Iterable[StoredMessage]) -> Counter[str | None]:
    return Counter(record.message_id for record in stored)


def assert_verdicts_match_the_record(outcomes: dict[str, Outcome], postfix: PostfixServer) -> None:
    """Accepted: stored exactly once. Definitely not accepted: not stored. Unknown: at most once."""
    copies = copies_by_message_id(postfix.stored())
    for message_id, outcome in outcomes.items():
        if isinstance(outcome, SendResult):
            assert copies[message_id] == 1, f"{message_id} accepted, stored {copies[message_id]}x"
        elif outcome.definitely_not_accepted:
            assert copies[message_id] == 0, f"{message_id} {outcome.kind.name}, yet stored"
        else:
            assert copies[message_id] <= 1, f"{message_id} stored {copies[message_id]}x"


async def test_100_messages_from_concurrent_senders_are_stored_once_each_through_bdat(
    postfix: PostfixServer, client_tls: ssl.SSLContext
) -> None:
    log_position = postfix.log_position()
    messages = [
        make_message(to=f"rcpt{number}@example.net", body=f"Message {number}.\n.leading dot\n")
        for number in range(100)
    ]
    config = PoolConfig([starttls_host(postfix)], max_size=4)
    async with SMTPPool(config, ssl_context=client_tls) as pool:
        outcomes = await send_all(pool, messages, senders=6)

    assert len(outcomes) == 100
    assert_verdicts_match_the_record(outcomes, postfix)
    failures = {mid: o.kind.name for mid, o in outcomes.items() if isinstance(o, SendFailed)}
    assert failures == {}

    by_id = {record.message_id: record for record in postfix.stored()}
    for message in messages:
        record = by_id[message["Message-ID"]]
        outcome = outcomes[message["Message-ID"]]
        assert isinstance(outcome, SendResult)
        assert record.sender == "alice@example.com"
        assert record.recipients == outcome.accepted == (message["To"],)
        # Postfix authenticated every session itself before it accepted a message.
        assert record.attributes["sasl_username"] == "alice@pooledmail.test"
        assert not record.smtputf8_requested
        # The body arrived intact: a leading dot is data, not a terminator.
        assert b"\n.leading dot\n" in record.content

    # smtpd's own count of commands, per session: every message came by BDAT, none by DATA, and
    # every session that carried mail did STARTTLS and AUTH first. (A session without mail, such
    # as a connection the pool gave up while it was being set up, may have stopped anywhere.)
    def all_mail_sessions_ended(sessions: list[SessionSummary]) -> bool:
        return sum(session.succeeded.get("mail", 0) for session in sessions) >= 100

    sessions = postfix.wait_for_sessions(all_mail_sessions_ended, since=log_position)
    lines = [session.line for session in sessions]
    carrying_mail = [session for session in sessions if session.attempted.get("mail")]
    assert sum(session.succeeded.get("bdat", 0) for session in carrying_mail) >= 100, lines
    assert all("data" not in session.attempted for session in sessions), lines
    assert all(session.succeeded.get("starttls") == 1 for session in carrying_mail), lines
    assert all(session.succeeded.get("auth") == 1 for session in carrying_mail), lines


async def test_smtputf8_address_is_accepted_and_stored(
    postfix: PostfixServer, client_tls: ssl.SSLContext
) -> None:
    message = make_message(to="jörg@exämple.com", body="Grüße aus Köln.\n")
    async with SMTPPool(
        PoolConfig([starttls_host(postfix)], max_size=1), ssl_context=client_tls
    ) as pool:
        result = await pool.send(message)
    assert result.accepted == ("jörg@exämple.com",)
    records = [r for r in postfix.stored() if r.message_id == message["Message-ID"]]
    assert len(records) == 1
    assert records[0].recipients == ("jörg@exämple.com",)
    assert "Grüße aus Köln.".encode() in records[0].content
    # Postfix's queue file records that the MAIL FROM carried the SMTPUTF8 parameter.
    assert records[0].smtputf8_requested


async def test_postfix_stop_and_start_between_two_sends_gives_accepted_on_a_fresh_connection(
    postfix: PostfixServer, client_tls: ssl.SSLContext
) -> None:
    first, second = make_message(), make_message()
    # One connection, so that the second send would get the one the server closed while idle.
    config = PoolConfig([starttls_host(postfix)], max_size=1)
    async with SMTPPool(config, ssl_context=client_tls) as pool:
        before = await pool.send(first)
        # `postfix stop` kills every smtpd; the idle connection gets a FIN. Same port afterwards.
        await anyio.to_thread.run_sync(postfix.postfix_stop)
        await anyio.to_thread.run_sync(postfix.postfix_start)
        after = await send_capturing(pool, second)
        stats = pool.statistics()

    outcomes: dict[str, Outcome] = {first["Message-ID"]: before, second["Message-ID"]: after}
    assert_verdicts_match_the_record(outcomes, postfix)
    if isinstance(after, SendFailed):
        assert after.kind is not FailureKind.UNKNOWN_AFTER_DATA, (
            "the server received no byte of the second message on the closed connection, "
            f"yet the pool reported it as maybe delivered: {after}"
        )
    assert isinstance(after, SendResult), f"second send failed: {after}"
    # The dead connection was noticed before it was lent: it cost the sender no attempt.
    assert after.attempts == 1
    assert stats.created_total == 2
    copies = copies_by_message_id(postfix.stored())
    assert copies[first["Message-ID"]] == 1
    assert copies[second["Message-ID"]] == 1


async def test_wrong_password_is_auth_failed(
    postfix: PostfixServer, client_tls: ssl.SSLContext
) -> None:
    log_position = postfix.log_position()
    message = make_message()
    config = PoolConfig([starttls_host(postfix, password="wrong-pw")], max_size=1)
    async with SMTPPool(config, ssl_context=client_tls) as pool:
        with pytest.raises(SendFailed) as caught:
            await pool.send(message)
    failure = caught.value
    assert failure.kind is FailureKind.AUTH_FAILED
    assert failure.stage is Stage.AUTH
    assert failure.definitely_not_accepted
    assert failure.reply is not None
    assert failure.reply.code == 535
    assert "wrong-pw" not in str(failure)
    assert copies_by_message_id(postfix.stored())[message["Message-ID"]] == 0
    # Postfix saw one AUTH, refused it, and never a MAIL.
    (session,) = postfix.wait_for_sessions(1, since=log_position)
    assert session.attempted.get("auth") == 1
    assert session.succeeded.get("auth") == 0
    assert "mail" not in session.attempted


async def test_credentials_without_tls_are_refused_locally_before_any_auth(
    postfix: PostfixServer,
) -> None:
    # The server requires STARTTLS, so it offers AUTH only after it; without TLS the pool must
    # give up on its own, and never send the password in the clear.
    log_position = postfix.log_position()
    message = make_message()
    host = starttls_host(postfix, tls="none", allow_plaintext_auth=True)
    async with SMTPPool(PoolConfig([host], max_size=1)) as pool:
        with pytest.raises(SendFailed) as caught:
            await pool.send(message)
    failure = caught.value
    assert failure.kind is FailureKind.AUTH_FAILED
    assert failure.stage is Stage.AUTH
    assert failure.reply is None  # refused locally: the server never answered an AUTH
    assert failure.definitely_not_accepted
    (session,) = postfix.wait_for_sessions(1, since=log_position)
    assert "auth" not in session.attempted
    assert "starttls" not in session.attempted
    assert "mail" not in session.attempted
    assert copies_by_message_id(postfix.stored())[message["Message-ID"]] == 0


@pytest.fixture(scope="module")
def implicit_tls_postfix(ca: trustme.CA) -> Iterator[PostfixServer]:
    """A second private Postfix whose port speaks TLS from the first byte (RFC 8314)."""
    with postfix_instance(ca, main_cf={"smtpd_tls_wrappermode": "yes"}) as server:
        yield server


async def test_messages_through_implicit_tls_are_stored_once_each(
    implicit_tls_postfix: PostfixServer, client_tls: ssl.SSLContext
) -> None:
    postfix = implicit_tls_postfix
    log_position = postfix.log_position()
    messages = [make_message(body=f"Message {number}.\n") for number in range(20)]
    config = PoolConfig([starttls_host(postfix, tls="implicit")], max_size=3)
    async with SMTPPool(config, ssl_context=client_tls) as pool:
        outcomes = await send_all(pool, messages, senders=4)

    assert len(outcomes) == 20
    assert all(isinstance(outcome, SendResult) for outcome in outcomes.values()), outcomes
    assert_verdicts_match_the_record(outcomes, postfix)
    sessions = postfix.wait_for_sessions(
        lambda found: sum(session.succeeded.get("mail", 0) for session in found) >= 20,
        since=log_position,
    )
    carrying_mail = [session for session in sessions if session.attempted.get("mail")]
    assert carrying_mail
    # TLS from the first byte: no STARTTLS in any session, AUTH once in each.
    assert all("starttls" not in session.attempted for session in sessions)
    assert all(session.succeeded.get("auth") == 1 for session in carrying_mail)
