"""Transcripts of whole conversations, fed whole, byte by byte and in hypothesis-chosen splits.

A transcript is a list of entries: ("C", bytes) is one flight the client must write (one
`Write`), ("S", bytes) is what the server sends once the flights before it were written,
("TLS",) is where the client must ask for the TLS handshake, ("EOF",) is the server closing.
Every way of splitting the server's bytes must give the same flights and the same result.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pooledmail_core._classify import Stage
from pooledmail_core._config import TLSMode
from pooledmail_core._envelope import Envelope, PreparedMessage
from pooledmail_core._errors import LocalProtocolError, RemoteProtocolError
from pooledmail_core._exchanges import (
    DONE,
    NEED_DATA,
    Exchange,
    SetupResult,
    StartTLS,
    TransactionOutcome,
    Write,
)
from pooledmail_core._limits import Limits
from pooledmail_core._reply import Reply
from pooledmail_core._session import ClientSession
from pooledmail_core._state import SessionState, Verb

Entry = tuple[Any, ...]
Splitter = Callable[[bytes], list[bytes]]

GREETING = b"220 mx.example ESMTP\r\n"
EHLO = b"EHLO client.example\r\n"
EHLO_PLAIN = b"250-mx.example\r\n250-STARTTLS\r\n250 8BITMIME\r\n"
EHLO_FULL = (
    b"250-mx.example hello\r\n250-PIPELINING\r\n250-SIZE 100000\r\n250-8BITMIME\r\n"
    b"250-ENHANCEDSTATUSCODES\r\n250-AUTH PLAIN LOGIN\r\n250 SMTPUTF8\r\n"
)


def whole(data: bytes) -> list[bytes]:
    return [data]


def byte_by_byte(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


@dataclass
class Run:
    writes: list[bytes]
    result: object
    error: type[BaseException] | None
    state: SessionState
    terminator_flags: list[bool]


def run(
    transcript: Sequence[Entry],
    start: Callable[[ClientSession], Exchange],
    splitter: Splitter = whole,
    session: ClientSession | None = None,
) -> Run:
    """Drive the exchange `start` returns through `transcript`; return what happened."""
    session = session or ClientSession("client.example")
    entries = list(transcript)
    available: list[bytes] = []

    def release() -> None:
        while entries and entries[0][0] in ("S", "EOF"):
            entry = entries.pop(0)
            available.extend(splitter(entry[1]) if entry[0] == "S" else [b""])

    release()
    writes: list[bytes] = []
    flags: list[bool] = []
    exchange = start(session)
    error: type[BaseException] | None = None
    result: object = None
    # For each write, `terminator_sent` as the driver sees it once the write is done: before the
    # next `next_step()` call the write may still fail, so the flag is read after that call.
    unflagged = 0
    try:
        while True:
            step = exchange.next_step()
            for _ in range(unflagged):
                flags.append(bool(getattr(exchange, "terminator_sent", False)))
            unflagged = 0
            if step is DONE:
                break
            if isinstance(step, Write):
                writes.append(step.data)
                # A write in hand is not yet done: the flag is still what the last write left.
                assert bool(getattr(exchange, "terminator_sent", False)) == (
                    flags[-1] if flags else False
                ), "terminator_sent was set before the write that carries it was done"
                unflagged = 1
                assert entries, f"unexpected write {step.data!r}"
                kind, expected = entries.pop(0)
                assert kind == "C", f"client wrote {step.data!r} where {kind} was expected"
                assert step.data == expected
                release()
            elif isinstance(step, StartTLS):
                assert entries.pop(0) == ("TLS",)
                exchange.tls_established()
                release()
            else:
                assert step is NEED_DATA
                assert available, "the client waits for bytes the server never sent"
                session.receive_data(available.pop(0))
        result = exchange.result  # type: ignore[attr-defined]
        assert not entries, f"transcript not finished: {entries!r}"
    except RemoteProtocolError:
        error = RemoteProtocolError
    return Run(writes, result, error, session.state, flags)


def setup_with(**options: Any) -> Callable[[ClientSession], Exchange]:
    def start(session: ClientSession) -> Exchange:
        return session.setup(**options)

    return start


def ready_session(ehlo: bytes = EHLO_FULL, *, tls_active: bool = True) -> ClientSession:
    """A session after greeting and EHLO with the capabilities in `ehlo`."""
    session = ClientSession("client.example")
    outcome = run(
        [("S", GREETING), ("C", EHLO), ("S", ehlo)],
        setup_with(tls=TLSMode.NONE, tls_active=tls_active),
        session=session,
    )
    assert isinstance(outcome.result, SetupResult)
    assert outcome.result.ok
    return session


def message(
    data: bytes = b"Subject: hi\r\n\r\nHello\r\n", recipients: Sequence[str] = ("b@example.net",)
) -> PreparedMessage:
    return PreparedMessage(Envelope("a@example.com", tuple(recipients)), data)


def tx_run(
    ehlo: bytes, transcript: Sequence[Entry], msg: PreparedMessage, splitter: Splitter = whole
) -> Run:
    session = ready_session(ehlo)
    return run(transcript, lambda s: s.transaction(msg), splitter, session)


# --- setup ---------------------------------------------------------------------------------------

SETUP_CASES: dict[str, tuple[dict[str, Any], list[Entry], SetupResult | None, SessionState]] = {
    "plaintext_ehlo": (
        {"tls": TLSMode.NONE},
        [("S", GREETING), ("C", EHLO), ("S", EHLO_PLAIN)],
        SetupResult(True, Stage.EHLO, Reply(250, ("mx.example", "STARTTLS", "8BITMIME")), "ready"),
        SessionState.READY,
    ),
    "greeting_554_is_refusal": (
        {},
        [("S", b"554 5.7.1 go away\r\n")],
        SetupResult(False, Stage.GREETING, Reply(554, ("go away",), (5, 7, 1)), ""),
        SessionState.REJECTED,
    ),
    "greeting_421_closes": (
        {},
        [("S", b"421 busy\r\n")],
        SetupResult(False, Stage.GREETING, Reply(421, ("busy",)), ""),
        SessionState.CLOSED,
    ),
    "helo_fallback_after_ehlo_500": (
        {"tls": TLSMode.NONE},
        [
            ("S", GREETING),
            ("C", EHLO),
            ("S", b"500 what?\r\n"),
            ("C", b"HELO client.example\r\n"),
            ("S", b"250 mx.example\r\n"),
        ],
        SetupResult(True, Stage.EHLO, Reply(250, ("mx.example",)), "ready"),
        SessionState.READY,
    ),
    "ehlo_4xx_fails_without_helo": (
        {"tls": TLSMode.NONE},
        [("S", GREETING), ("C", EHLO), ("S", b"451 later\r\n")],
        SetupResult(False, Stage.EHLO, Reply(451, ("later",)), ""),
        SessionState.GREETED,
    ),
    "ehlo_and_helo_refused": (
        {"tls": TLSMode.NONE},
        [
            ("S", GREETING),
            ("C", EHLO),
            ("S", b"502 no\r\n"),
            ("C", b"HELO client.example\r\n"),
            ("S", b"550 no\r\n"),
        ],
        SetupResult(False, Stage.EHLO, Reply(550, ("no",)), ""),
        SessionState.GREETED,
    ),
    "starttls_then_ehlo_again": (
        {"tls": TLSMode.STARTTLS},
        [
            ("S", GREETING),
            ("C", EHLO),
            ("S", EHLO_PLAIN),
            ("C", b"STARTTLS\r\n"),
            ("S", b"220 2.0.0 go ahead\r\n"),
            ("TLS",),
            ("C", EHLO),
            ("S", b"250-mx.example\r\n250 PIPELINING\r\n"),
        ],
        SetupResult(True, Stage.TLS, Reply(250, ("mx.example", "PIPELINING")), "ready"),
        SessionState.READY,
    ),
    "starttls_required_but_not_offered": (
        {"tls": TLSMode.STARTTLS},
        [("S", GREETING), ("C", EHLO), ("S", b"250-mx.example\r\n250 PIPELINING\r\n")],
        SetupResult(False, Stage.TLS, None, "server does not offer STARTTLS"),
        SessionState.READY,
    ),
    "starttls_if_available_not_offered_goes_on": (
        {"tls": TLSMode.STARTTLS_IF_AVAILABLE},
        [("S", GREETING), ("C", EHLO), ("S", b"250 mx.example\r\n")],
        SetupResult(True, Stage.EHLO, Reply(250, ("mx.example",)), "ready"),
        SessionState.READY,
    ),
    "starttls_if_available_upgrades": (
        {"tls": TLSMode.STARTTLS_IF_AVAILABLE},
        [
            ("S", GREETING),
            ("C", EHLO),
            ("S", EHLO_PLAIN),
            ("C", b"STARTTLS\r\n"),
            ("S", b"220 go ahead\r\n"),
            ("TLS",),
            ("C", EHLO),
            ("S", b"250 mx.example\r\n"),
        ],
        SetupResult(True, Stage.TLS, Reply(250, ("mx.example",)), "ready"),
        SessionState.READY,
    ),
    "starttls_refused": (
        {"tls": TLSMode.STARTTLS},
        [
            ("S", GREETING),
            ("C", EHLO),
            ("S", EHLO_PLAIN),
            ("C", b"STARTTLS\r\n"),
            ("S", b"454 4.7.0 TLS not available\r\n"),
        ],
        SetupResult(False, Stage.TLS, Reply(454, ("TLS not available",), (4, 7, 0)), ""),
        SessionState.READY,
    ),
    "ehlo_refused_after_tls": (
        {"tls": TLSMode.STARTTLS},
        [
            ("S", GREETING),
            ("C", EHLO),
            ("S", EHLO_PLAIN),
            ("C", b"STARTTLS\r\n"),
            ("S", b"220 go ahead\r\n"),
            ("TLS",),
            ("C", EHLO),
            ("S", b"421 bye\r\n"),
        ],
        SetupResult(False, Stage.EHLO, Reply(421, ("bye",)), ""),
        SessionState.CLOSED,
    ),
    "implicit_tls_never_sends_starttls": (
        {"tls": TLSMode.IMPLICIT, "tls_active": True},
        [("S", GREETING), ("C", EHLO), ("S", EHLO_PLAIN)],
        SetupResult(True, Stage.EHLO, Reply(250, ("mx.example", "STARTTLS", "8BITMIME")), ""),
        SessionState.READY,
    ),
    "auth_plain_with_initial_response": (
        {"tls": TLSMode.IMPLICIT, "tls_active": True, "username": "u", "password": "p"},
        [
            ("S", GREETING),
            ("C", EHLO),
            ("S", EHLO_FULL),
            ("C", b"AUTH PLAIN " + base64.b64encode(b"\0u\0p") + b"\r\n"),
            ("S", b"235 2.7.0 ok\r\n"),
        ],
        SetupResult(True, Stage.AUTH, Reply(235, ("ok",), (2, 7, 0)), "ready"),
        SessionState.READY,
    ),
    "auth_login": (
        {"tls": TLSMode.NONE, "allow_plaintext_auth": True, "username": "u", "password": "p"},
        [
            ("S", GREETING),
            ("C", EHLO),
            ("S", b"250-mx\r\n250 AUTH LOGIN\r\n"),
            ("C", b"AUTH LOGIN\r\n"),
            ("S", b"334 VXNlcm5hbWU6\r\n"),
            ("C", base64.b64encode(b"u") + b"\r\n"),
            ("S", b"334 UGFzc3dvcmQ6\r\n"),
            ("C", base64.b64encode(b"p") + b"\r\n"),
            ("S", b"235 ok\r\n"),
        ],
        SetupResult(True, Stage.AUTH, Reply(235, ("ok",)), "ready"),
        SessionState.READY,
    ),
    "auth_login_extra_challenge_is_cancelled": (
        {"tls": TLSMode.NONE, "allow_plaintext_auth": True, "username": "u", "password": "p"},
        [
            ("S", GREETING),
            ("C", EHLO),
            ("S", b"250-mx\r\n250 AUTH=LOGIN\r\n"),
            ("C", b"AUTH LOGIN\r\n"),
            ("S", b"334 VXNlcm5hbWU6\r\n"),
            ("C", base64.b64encode(b"u") + b"\r\n"),
            ("S", b"334 UGFzc3dvcmQ6\r\n"),
            ("C", base64.b64encode(b"p") + b"\r\n"),
            ("S", b"334 again\r\n"),
            ("C", b"*\r\n"),
            ("S", b"501 5.7.0 cancelled\r\n"),
        ],
        SetupResult(False, Stage.AUTH, Reply(501, ("cancelled",), (5, 7, 0)), ""),
        SessionState.READY,
    ),
    "auth_plain_refused_535": (
        {"tls": TLSMode.IMPLICIT, "tls_active": True, "username": "u", "password": "p"},
        [
            ("S", GREETING),
            ("C", EHLO),
            ("S", b"250-mx\r\n250 AUTH PLAIN\r\n"),
            ("C", b"AUTH PLAIN " + base64.b64encode(b"\0u\0p") + b"\r\n"),
            ("S", b"535 5.7.8 bad credentials\r\n"),
        ],
        SetupResult(False, Stage.AUTH, Reply(535, ("bad credentials",), (5, 7, 8)), ""),
        SessionState.READY,
    ),
    # Servers quote what they were sent; the reply is shown to people, so the credentials and
    # every SASL line the client sent are replaced by "***" in it.
    "auth_plain_refusal_quoting_the_credentials_hides_them": (
        {"tls": TLSMode.IMPLICIT, "tls_active": True, "username": "u", "password": "pw-secret"},
        [
            ("S", GREETING),
            ("C", EHLO),
            ("S", b"250-mx\r\n250 AUTH PLAIN\r\n"),
            ("C", b"AUTH PLAIN " + base64.b64encode(b"\0u\0pw-secret") + b"\r\n"),
            (
                "S",
                b"535-5.7.8 bad: " + base64.b64encode(b"\0u\0pw-secret") + b"\r\n"
                b"535 5.7.8 (pw-secret for u)\r\n",
            ),
        ],
        SetupResult(False, Stage.AUTH, Reply(535, ("bad: ***", "(*** for u)"), (5, 7, 8)), ""),
        SessionState.READY,
    ),
    "auth_login_refusal_quoting_the_answers_hides_them": (
        {
            "tls": TLSMode.NONE,
            "allow_plaintext_auth": True,
            "username": "user",
            "password": "pw-secret",
        },
        [
            ("S", GREETING),
            ("C", EHLO),
            ("S", b"250-mx\r\n250 AUTH LOGIN\r\n"),
            ("C", b"AUTH LOGIN\r\n"),
            ("S", b"334 VXNlcm5hbWU6\r\n"),
            ("C", base64.b64encode(b"user") + b"\r\n"),
            ("S", b"334 UGFzc3dvcmQ6\r\n"),
            ("C", base64.b64encode(b"pw-secret") + b"\r\n"),
            ("S", b"501 cannot decode " + base64.b64encode(b"pw-secret") + b"\r\n"),
        ],
        SetupResult(False, Stage.AUTH, Reply(501, ("cannot decode ***",)), ""),
        SessionState.READY,
    ),
    "auth_xoauth2_success_quoting_the_token_hides_it": (
        {"tls": TLSMode.IMPLICIT, "tls_active": True, "username": "u", "oauth2_token": "tok-1"},
        [
            ("S", GREETING),
            ("C", EHLO),
            ("S", b"250-mx\r\n250 AUTH XOAUTH2\r\n"),
            (
                "C",
                b"AUTH XOAUTH2 "
                + base64.b64encode(b"user=u\x01auth=Bearer tok-1\x01\x01")
                + b"\r\n",
            ),
            ("S", b"235 2.7.0 welcome, tok-1\r\n"),
        ],
        SetupResult(True, Stage.AUTH, Reply(235, ("welcome, ***",), (2, 7, 0)), "ready"),
        SessionState.READY,
    ),
    "auth_plain_unexpected_challenge_cancelled": (
        {"tls": TLSMode.IMPLICIT, "tls_active": True, "username": "u", "password": "p"},
        [
            ("S", GREETING),
            ("C", EHLO),
            ("S", b"250-mx\r\n250 AUTH PLAIN\r\n"),
            ("C", b"AUTH PLAIN " + base64.b64encode(b"\0u\0p") + b"\r\n"),
            ("S", b"334 \r\n"),
            ("C", b"*\r\n"),
            ("S", b"501 cancelled\r\n"),
        ],
        SetupResult(False, Stage.AUTH, Reply(501, ("cancelled",)), ""),
        SessionState.READY,
    ),
    "auth_xoauth2_error_challenge": (
        {"tls": TLSMode.IMPLICIT, "tls_active": True, "username": "u", "oauth2_token": "tok"},
        [
            ("S", GREETING),
            ("C", EHLO),
            ("S", b"250-mx\r\n250 AUTH PLAIN XOAUTH2\r\n"),
            (
                "C",
                b"AUTH XOAUTH2 " + base64.b64encode(b"user=u\x01auth=Bearer tok\x01\x01") + b"\r\n",
            ),
            ("S", b"334 eyJzdGF0dXMiOiI0MDEifQ==\r\n"),
            ("C", b"\r\n"),
            ("S", b"535 5.7.8 nope\r\n"),
        ],
        SetupResult(False, Stage.AUTH, Reply(535, ("nope",), (5, 7, 8)), ""),
        SessionState.READY,
    ),
    "auth_xoauth2_extra_challenge_cancelled": (
        {"tls": TLSMode.IMPLICIT, "tls_active": True, "username": "u", "oauth2_token": "tok"},
        [
            ("S", GREETING),
            ("C", EHLO),
            ("S", b"250-mx\r\n250 AUTH XOAUTH2\r\n"),
            (
                "C",
                b"AUTH XOAUTH2 " + base64.b64encode(b"user=u\x01auth=Bearer tok\x01\x01") + b"\r\n",
            ),
            ("S", b"334 e30=\r\n"),
            ("C", b"\r\n"),
            ("S", b"334 e30=\r\n"),
            ("C", b"*\r\n"),
            ("S", b"235 ok anyway\r\n"),
        ],
        SetupResult(True, Stage.AUTH, Reply(235, ("ok anyway",)), "ready"),
        SessionState.READY,
    ),
    "auth_refused_without_tls": (
        {"tls": TLSMode.NONE, "username": "u", "password": "p"},
        [("S", GREETING), ("C", EHLO), ("S", EHLO_FULL)],
        SetupResult(False, Stage.AUTH, None, "AUTH refused over a connection without TLS"),
        SessionState.READY,
    ),
    "auth_not_offered": (
        {"tls": TLSMode.IMPLICIT, "tls_active": True, "username": "u", "password": "p"},
        [("S", GREETING), ("C", EHLO), ("S", b"250 mx\r\n")],
        SetupResult(False, Stage.AUTH, None, "server does not offer AUTH"),
        SessionState.READY,
    ),
    "auth_no_common_mechanism": (
        {"tls": TLSMode.IMPLICIT, "tls_active": True, "username": "u", "password": "p"},
        [("S", GREETING), ("C", EHLO), ("S", b"250-mx\r\n250 AUTH GSSAPI XOAUTH2\r\n")],
        SetupResult(False, Stage.AUTH, None, "no AUTH mechanism in common"),
        SessionState.READY,
    ),
    "auth_mechanisms_restrict_and_order": (
        {
            "tls": TLSMode.IMPLICIT,
            "tls_active": True,
            "username": "u",
            "password": "p",
            "mechanisms": ["login", "plain"],
        },
        [
            ("S", GREETING),
            ("C", EHLO),
            ("S", b"250-mx\r\n250 AUTH PLAIN LOGIN CRAM-MD5\r\n"),
            ("C", b"AUTH LOGIN\r\n"),
            ("S", b"334 VXNlcm5hbWU6\r\n"),
            ("C", base64.b64encode(b"u") + b"\r\n"),
            ("S", b"334 UGFzc3dvcmQ6\r\n"),
            ("C", base64.b64encode(b"p") + b"\r\n"),
            ("S", b"235 ok\r\n"),
        ],
        SetupResult(True, Stage.AUTH, Reply(235, ("ok",)), "ready"),
        SessionState.READY,
    ),
}


def _cram_case() -> tuple[dict[str, Any], list[Entry], SetupResult, SessionState]:
    challenge = b"<1896.697170952@postoffice.example.net>"
    digest = hmac.new(b"tanstaaftanstaaf", challenge, hashlib.md5).hexdigest()
    answer = base64.b64encode(f"tim {digest}".encode())
    return (
        {
            "tls": TLSMode.IMPLICIT,
            "tls_active": True,
            "username": "tim",
            "password": "tanstaaftanstaaf",
        },
        [
            ("S", GREETING),
            ("C", EHLO),
            ("S", b"250-mx\r\n250 AUTH LOGIN PLAIN CRAM-MD5\r\n"),
            ("C", b"AUTH CRAM-MD5\r\n"),
            ("S", b"334 " + base64.b64encode(challenge) + b"\r\n"),
            ("C", answer + b"\r\n"),
            ("S", b"235 ok\r\n"),
        ],
        SetupResult(True, Stage.AUTH, Reply(235, ("ok",)), "ready"),
        SessionState.READY,
    )


SETUP_CASES["auth_cram_md5_preferred_rfc2195_vector"] = _cram_case()


def _check_setup(name: str, splitter: Splitter) -> None:
    options, transcript, expected, state = SETUP_CASES[name]
    outcome = run(transcript, setup_with(**options), splitter)
    assert outcome.error is None
    assert isinstance(outcome.result, SetupResult)
    assert expected is not None
    assert outcome.result.ok == expected.ok
    assert outcome.result.stage == expected.stage
    assert outcome.result.reply == expected.reply
    if expected.reason:
        assert outcome.result.reason == expected.reason
    assert outcome.state is state


@pytest.mark.parametrize("name", sorted(SETUP_CASES))
@pytest.mark.parametrize("splitter", [whole, byte_by_byte])
def test_setup_transcript(name: str, splitter: Splitter) -> None:
    _check_setup(name, splitter)


def test_capabilities_forgotten_after_starttls_and_relearned() -> None:
    session = ClientSession("client.example")
    _, transcript, _, _ = SETUP_CASES["starttls_then_ehlo_again"]
    run(transcript, setup_with(tls=TLSMode.STARTTLS), session=session)
    assert session.tls_active
    assert session.capabilities.pipelining
    assert not session.capabilities.starttls
    assert not session.capabilities.eight_bit_mime


def test_bytes_after_starttls_220_are_an_injection() -> None:
    transcript = [
        ("S", GREETING),
        ("C", EHLO),
        ("S", EHLO_PLAIN),
        ("C", b"STARTTLS\r\n"),
        ("S", b"220 go ahead\r\n250-evil\r\n250 AUTH PLAIN\r\n"),
    ]
    outcome = run(transcript, setup_with(tls=TLSMode.STARTTLS))
    assert outcome.error is RemoteProtocolError
    assert outcome.state is SessionState.ERROR


@pytest.mark.parametrize("junk", [b"2", b"250-evil\r\n", b"250 x\r\n"])
def test_partial_bytes_after_starttls_220_are_an_injection(junk: bytes) -> None:
    transcript = [
        ("S", GREETING),
        ("C", EHLO),
        ("S", EHLO_PLAIN),
        ("C", b"STARTTLS\r\n"),
        ("S", b"220 go ahead\r\n" + junk),
    ]
    assert run(transcript, setup_with(tls=TLSMode.STARTTLS)).error is RemoteProtocolError


def test_bytes_during_tls_handshake_are_an_injection() -> None:
    session = ClientSession("client.example")
    setup = session.setup(tls=TLSMode.STARTTLS)
    for server in (GREETING, EHLO_PLAIN, b"220 go\r\n"):
        while setup.next_step() is not NEED_DATA:
            pass
        session.receive_data(server)
    assert setup.next_step() == StartTLS()
    session.receive_data(b"250 injected\r\n")
    with pytest.raises(RemoteProtocolError):
        setup.tls_established()
    assert session.state is SessionState.ERROR
    with pytest.raises(LocalProtocolError):
        setup.next_step()


def test_next_step_before_tls_established_is_local_error() -> None:
    session = ClientSession("client.example")
    setup = session.setup(tls=TLSMode.STARTTLS)
    for server in (GREETING, EHLO_PLAIN, b"220 go\r\n"):
        while setup.next_step() is not NEED_DATA:
            pass
        session.receive_data(server)
    assert isinstance(setup.next_step(), StartTLS)
    with pytest.raises(LocalProtocolError):
        setup.next_step()
    assert session.state is SessionState.ERROR


def test_tls_established_without_starttls_step_is_local_error() -> None:
    session = ClientSession("client.example")
    setup = session.setup(tls=TLSMode.NONE)
    with pytest.raises(LocalProtocolError):
        setup.tls_established()


def test_eof_instead_of_greeting_is_remote_error() -> None:
    outcome = run([("EOF",)], setup_with())
    assert outcome.error is RemoteProtocolError


def test_cram_md5_bad_challenge_is_remote_error() -> None:
    transcript = [
        ("S", GREETING),
        ("C", EHLO),
        ("S", b"250-mx\r\n250 AUTH CRAM-MD5\r\n"),
        ("C", b"AUTH CRAM-MD5\r\n"),
        ("S", b"334 !!notbase64!!\r\n"),
    ]
    outcome = run(
        transcript, setup_with(tls=TLSMode.NONE, tls_active=True, username="u", password="p")
    )
    assert outcome.error is RemoteProtocolError


def test_cram_md5_second_challenge_cancelled() -> None:
    transcript = [
        ("S", GREETING),
        ("C", EHLO),
        ("S", b"250-mx\r\n250 AUTH CRAM-MD5\r\n"),
        ("C", b"AUTH CRAM-MD5\r\n"),
        ("S", b"334 PDE+\r\n"),
        (
            "C",
            base64.b64encode(b"u " + hmac.new(b"p", b"<1>", hashlib.md5).hexdigest().encode())
            + b"\r\n",
        ),
        ("S", b"334 PDE+\r\n"),
        ("C", b"*\r\n"),
        ("S", b"501 cancelled\r\n"),
    ]
    outcome = run(
        transcript, setup_with(tls=TLSMode.NONE, tls_active=True, username="u", password="p")
    )
    assert isinstance(outcome.result, SetupResult)
    assert outcome.result.stage is Stage.AUTH
    assert not outcome.result.ok


# --- transactions --------------------------------------------------------------------------------

BODY = b"Subject: hi\r\n\r\nHello\r\n"
MAIL_OK = b"250 2.1.0 Ok\r\n"
RCPT_OK = b"250 2.1.5 Ok\r\n"
GO = b"354 go ahead\r\n"
QUEUED = b"250 2.0.0 queued\r\n"
EHLO_PIPE = b"250-mx\r\n250-PIPELINING\r\n250 8BITMIME\r\n"
EHLO_ONE = b"250-mx\r\n250 8BITMIME\r\n"
EHLO_BDAT = b"250-mx\r\n250-PIPELINING\r\n250-CHUNKING\r\n250 8BITMIME\r\n"
EHLO_BDAT_ONE = b"250-mx\r\n250 CHUNKING\r\n"
MAIL = b"MAIL FROM:<a@example.com>\r\n"
MAIL_8 = b"MAIL FROM:<a@example.com> BODY=8BITMIME\r\n"
RCPT_B = b"RCPT TO:<b@example.net>\r\n"
RCPT_C = b"RCPT TO:<c@example.net>\r\n"
TWO = ("b@example.net", "c@example.net")


def outcome(
    accepted: Sequence[str],
    refused: Sequence[tuple[str, bytes]],
    reply: bytes | None,
    stage: Stage | None,
    in_sync: bool,
) -> TransactionOutcome:
    def parse(raw: bytes) -> Reply:
        session = ClientSession()
        session.receive_data(raw)
        event = session.next_event()
        assert isinstance(event, Reply)
        return event

    return TransactionOutcome(
        tuple(accepted),
        tuple((r, parse(raw)) for r, raw in refused),
        None if reply is None else parse(reply),
        stage,
        in_sync,
    )


TX_CASES: dict[
    str, tuple[bytes, list[Entry], PreparedMessage, TransactionOutcome, SessionState, int | None]
] = {
    # name: (ehlo, transcript, message, outcome, state after, index of the terminator's write)
    "pipelined_data_one_flight": (
        EHLO_PIPE,
        [
            ("C", MAIL + RCPT_B + b"DATA\r\n"),
            ("S", MAIL_OK + RCPT_OK + GO),
            ("C", BODY + b".\r\n"),
            ("S", QUEUED),
        ],
        message(),
        outcome(["b@example.net"], [], QUEUED, None, True),
        SessionState.READY,
        1,
    ),
    "pipelined_partial_refusal": (
        EHLO_PIPE,
        [
            ("C", MAIL + RCPT_B + RCPT_C + b"DATA\r\n"),
            ("S", MAIL_OK + b"550 5.1.1 unknown\r\n" + RCPT_OK + GO),
            ("C", BODY + b".\r\n"),
            ("S", QUEUED),
        ],
        message(recipients=TWO),
        outcome(
            ["c@example.net"], [("b@example.net", b"550 5.1.1 unknown\r\n")], QUEUED, None, True
        ),
        SessionState.READY,
        1,
    ),
    "pipelined_all_refused_data_354_lone_dot": (
        EHLO_PIPE,
        [
            ("C", MAIL + RCPT_B + RCPT_C + b"DATA\r\n"),
            ("S", MAIL_OK + b"550 no\r\n" + b"451 later\r\n" + GO),
            ("C", b".\r\n"),
            ("S", b"554 no valid recipients\r\n"),
            ("C", b"RSET\r\n"),
            ("S", b"250 ok\r\n"),
        ],
        message(recipients=TWO),
        outcome(
            [],
            [("b@example.net", b"550 no\r\n"), ("c@example.net", b"451 later\r\n")],
            b"451 later\r\n",
            Stage.RCPT,
            True,
        ),
        SessionState.READY,
        None,
    ),
    "pipelined_all_refused_data_refused_rset": (
        EHLO_PIPE,
        [
            ("C", MAIL + RCPT_B + b"DATA\r\n"),
            ("S", MAIL_OK + b"550 no\r\n" + b"554 no valid recipients\r\n"),
            ("C", b"RSET\r\n"),
            ("S", b"250 ok\r\n"),
        ],
        message(),
        outcome([], [("b@example.net", b"550 no\r\n")], b"550 no\r\n", Stage.RCPT, True),
        SessionState.READY,
        None,
    ),
    "pipelined_mail_refused": (
        EHLO_PIPE,
        [
            ("C", MAIL + RCPT_B + b"DATA\r\n"),
            ("S", b"553 bad sender\r\n503 need MAIL\r\n503 need MAIL\r\n"),
            ("C", b"RSET\r\n"),
            ("S", b"250 ok\r\n"),
        ],
        message(),
        outcome([], [], b"553 bad sender\r\n", Stage.MAIL, True),
        SessionState.READY,
        None,
    ),
    "pipelined_mail_refused_data_354_anyway": (
        EHLO_PIPE,
        [
            ("C", MAIL + RCPT_B + b"DATA\r\n"),
            ("S", b"553 bad sender\r\n503 need MAIL\r\n" + GO),
            ("C", b".\r\n"),
            ("S", b"554 nothing\r\n"),
            ("C", b"RSET\r\n"),
            ("S", b"250 ok\r\n"),
        ],
        message(),
        outcome([], [], b"553 bad sender\r\n", Stage.MAIL, True),
        SessionState.READY,
        None,
    ),
    "pipelined_data_refused": (
        EHLO_PIPE,
        [
            ("C", MAIL + RCPT_B + b"DATA\r\n"),
            ("S", MAIL_OK + RCPT_OK + b"451 4.3.0 try later\r\n"),
            ("C", b"RSET\r\n"),
            ("S", b"250 ok\r\n"),
        ],
        message(),
        outcome(["b@example.net"], [], b"451 4.3.0 try later\r\n", Stage.DATA, True),
        SessionState.READY,
        None,
    ),
    "final_reply_5xx": (
        EHLO_PIPE,
        [
            ("C", MAIL + RCPT_B + b"DATA\r\n"),
            ("S", MAIL_OK + RCPT_OK + GO),
            ("C", BODY + b".\r\n"),
            ("S", b"554 5.7.1 spam\r\n"),
        ],
        message(),
        outcome(["b@example.net"], [], b"554 5.7.1 spam\r\n", Stage.DATA_END, True),
        SessionState.READY,
        1,
    ),
    "final_reply_421_is_out_of_sync": (
        EHLO_PIPE,
        [
            ("C", MAIL + RCPT_B + b"DATA\r\n"),
            ("S", MAIL_OK + RCPT_OK + GO),
            ("C", BODY + b".\r\n"),
            ("S", b"421 shutting down\r\n"),
        ],
        message(),
        outcome(["b@example.net"], [], b"421 shutting down\r\n", Stage.DATA_END, False),
        SessionState.CLOSED,
        1,
    ),
    "pipelined_421_instead_of_mail_reply": (
        EHLO_PIPE,
        [("C", MAIL + RCPT_B + b"DATA\r\n"), ("S", b"421 bye\r\n")],
        message(),
        outcome([], [], b"421 bye\r\n", Stage.MAIL, False),
        SessionState.CLOSED,
        None,
    ),
    "pipelined_421_instead_of_rcpt_reply": (
        EHLO_PIPE,
        [("C", MAIL + RCPT_B + b"DATA\r\n"), ("S", MAIL_OK + b"421 bye\r\n")],
        message(),
        outcome([], [], b"421 bye\r\n", Stage.RCPT, False),
        SessionState.CLOSED,
        None,
    ),
    "pipelined_421_instead_of_data_reply": (
        EHLO_PIPE,
        [("C", MAIL + RCPT_B + b"DATA\r\n"), ("S", MAIL_OK + RCPT_OK + b"421 bye\r\n")],
        message(),
        outcome(["b@example.net"], [], b"421 bye\r\n", Stage.DATA, False),
        SessionState.CLOSED,
        None,
    ),
    "pipelined_421_after_all_refused_keeps_rcpt_failure": (
        EHLO_PIPE,
        [("C", MAIL + RCPT_B + b"DATA\r\n"), ("S", MAIL_OK + b"550 no\r\n421 bye\r\n")],
        message(),
        outcome([], [("b@example.net", b"550 no\r\n")], b"550 no\r\n", Stage.RCPT, False),
        SessionState.CLOSED,
        None,
    ),
    "pipelined_421_after_lone_dot": (
        EHLO_PIPE,
        [
            ("C", MAIL + RCPT_B + b"DATA\r\n"),
            ("S", MAIL_OK + b"550 no\r\n" + GO),
            ("C", b".\r\n"),
            ("S", b"421 bye\r\n"),
        ],
        message(),
        outcome([], [("b@example.net", b"550 no\r\n")], b"550 no\r\n", Stage.RCPT, False),
        SessionState.CLOSED,
        None,
    ),
    "rset_421_is_out_of_sync": (
        EHLO_PIPE,
        [
            ("C", MAIL + RCPT_B + b"DATA\r\n"),
            ("S", MAIL_OK + RCPT_OK + b"451 later\r\n"),
            ("C", b"RSET\r\n"),
            ("S", b"421 bye\r\n"),
        ],
        message(),
        outcome(["b@example.net"], [], b"451 later\r\n", Stage.DATA, False),
        SessionState.CLOSED,
        None,
    ),
    "one_at_a_time_data": (
        EHLO_ONE,
        [
            ("C", MAIL),
            ("S", MAIL_OK),
            ("C", RCPT_B),
            ("S", RCPT_OK),
            ("C", RCPT_C),
            ("S", b"452 too many\r\n"),
            ("C", b"DATA\r\n"),
            ("S", GO),
            ("C", BODY + b".\r\n"),
            ("S", QUEUED),
        ],
        message(recipients=TWO),
        outcome(["b@example.net"], [("c@example.net", b"452 too many\r\n")], QUEUED, None, True),
        SessionState.READY,
        4,
    ),
    "one_at_a_time_mail_refused": (
        EHLO_ONE,
        [("C", MAIL), ("S", b"451 later\r\n"), ("C", b"RSET\r\n"), ("S", b"250 ok\r\n")],
        message(),
        outcome([], [], b"451 later\r\n", Stage.MAIL, True),
        SessionState.READY,
        None,
    ),
    "one_at_a_time_mail_421": (
        EHLO_ONE,
        [("C", MAIL), ("S", b"421 bye\r\n")],
        message(),
        outcome([], [], b"421 bye\r\n", Stage.MAIL, False),
        SessionState.CLOSED,
        None,
    ),
    "one_at_a_time_rcpt_421": (
        EHLO_ONE,
        [("C", MAIL), ("S", MAIL_OK), ("C", RCPT_B), ("S", b"421 bye\r\n")],
        message(),
        outcome([], [], b"421 bye\r\n", Stage.RCPT, False),
        SessionState.CLOSED,
        None,
    ),
    "one_at_a_time_all_refused_no_data": (
        EHLO_ONE,
        [
            ("C", MAIL),
            ("S", MAIL_OK),
            ("C", RCPT_B),
            ("S", b"550 no\r\n"),
            ("C", b"RSET\r\n"),
            ("S", b"250 ok\r\n"),
        ],
        message(),
        outcome([], [("b@example.net", b"550 no\r\n")], b"550 no\r\n", Stage.RCPT, True),
        SessionState.READY,
        None,
    ),
    "one_at_a_time_data_refused": (
        EHLO_ONE,
        [
            ("C", MAIL),
            ("S", MAIL_OK),
            ("C", RCPT_B),
            ("S", RCPT_OK),
            ("C", b"DATA\r\n"),
            ("S", b"554 no\r\n"),
            ("C", b"RSET\r\n"),
            ("S", b"250 ok\r\n"),
        ],
        message(),
        outcome(["b@example.net"], [], b"554 no\r\n", Stage.DATA, True),
        SessionState.READY,
        None,
    ),
    "bdat_pipelined_one_flight": (
        EHLO_BDAT,
        [
            ("C", MAIL + RCPT_B + b"BDAT %d LAST\r\n" % len(BODY) + BODY),
            ("S", MAIL_OK + RCPT_OK + QUEUED),
        ],
        message(),
        outcome(["b@example.net"], [], QUEUED, None, True),
        SessionState.READY,
        0,
    ),
    "bdat_pipelined_all_refused": (
        EHLO_BDAT,
        [
            ("C", MAIL + RCPT_B + b"BDAT %d LAST\r\n" % len(BODY) + BODY),
            ("S", MAIL_OK + b"550 no\r\n" + b"554 no valid recipients\r\n"),
            ("C", b"RSET\r\n"),
            ("S", b"250 ok\r\n"),
        ],
        message(),
        outcome([], [("b@example.net", b"550 no\r\n")], b"550 no\r\n", Stage.RCPT, True),
        SessionState.READY,
        0,
    ),
    "bdat_pipelined_last_refused": (
        EHLO_BDAT,
        [
            ("C", MAIL + RCPT_B + b"BDAT %d LAST\r\n" % len(BODY) + BODY),
            ("S", MAIL_OK + RCPT_OK + b"552 too big\r\n"),
            ("C", b"RSET\r\n"),
            ("S", b"250 ok\r\n"),
        ],
        message(),
        outcome(["b@example.net"], [], b"552 too big\r\n", Stage.DATA_END, True),
        SessionState.READY,
        0,
    ),
    "bdat_pipelined_421_after_flight": (
        EHLO_BDAT,
        [
            ("C", MAIL + RCPT_B + b"BDAT %d LAST\r\n" % len(BODY) + BODY),
            ("S", MAIL_OK + RCPT_OK + b"421 bye\r\n"),
        ],
        message(),
        outcome(["b@example.net"], [], b"421 bye\r\n", Stage.DATA_END, False),
        SessionState.CLOSED,
        0,
    ),
    "bdat_one_at_a_time": (
        EHLO_BDAT_ONE,
        [
            ("C", MAIL),
            ("S", MAIL_OK),
            ("C", RCPT_B),
            ("S", RCPT_OK),
            ("C", b"BDAT %d LAST\r\n" % len(BODY) + BODY),
            ("S", QUEUED),
        ],
        message(),
        outcome(["b@example.net"], [], QUEUED, None, True),
        SessionState.READY,
        2,
    ),
    "bdat_one_at_a_time_refused": (
        EHLO_BDAT_ONE,
        [
            ("C", MAIL),
            ("S", MAIL_OK),
            ("C", RCPT_B),
            ("S", RCPT_OK),
            ("C", b"BDAT %d LAST\r\n" % len(BODY) + BODY),
            ("S", b"451 later\r\n"),
            ("C", b"RSET\r\n"),
            ("S", b"250 ok\r\n"),
        ],
        message(),
        outcome(["b@example.net"], [], b"451 later\r\n", Stage.DATA_END, True),
        SessionState.READY,
        2,
    ),
    "eight_bit_body_sends_8bitmime": (
        EHLO_PIPE,
        [
            ("C", MAIL_8 + RCPT_B + b"DATA\r\n"),
            ("S", MAIL_OK + RCPT_OK + GO),
            ("C", b"Subject: hi\r\n\r\n\xc3\xa9t\xc3\xa9\r\n.\r\n"),
            ("S", QUEUED),
        ],
        message(b"Subject: hi\r\n\r\n\xc3\xa9t\xc3\xa9"),
        outcome(["b@example.net"], [], QUEUED, None, True),
        SessionState.READY,
        1,
    ),
}


def _check_tx(name: str, splitter: Splitter) -> None:
    ehlo, transcript, msg, expected, state, terminator_index = TX_CASES[name]
    result = tx_run(ehlo, transcript, msg, splitter)
    assert result.error is None
    assert result.result == expected
    assert result.state is state
    flags = result.terminator_flags
    if terminator_index is None:
        assert not any(flags)
    else:
        assert flags == [i >= terminator_index for i in range(len(flags))]


@pytest.mark.parametrize("name", sorted(TX_CASES))
@pytest.mark.parametrize("splitter", [whole, byte_by_byte])
def test_transaction_transcript(name: str, splitter: Splitter) -> None:
    _check_tx(name, splitter)


@st.composite
def splitters(draw: st.DrawFn) -> Splitter:
    seed = draw(st.lists(st.integers(1, 40), min_size=1, max_size=20))

    def split(data: bytes) -> list[bytes]:
        pieces: list[bytes] = []
        start = 0
        index = 0
        while start < len(data):
            size = seed[index % len(seed)]
            pieces.append(data[start : start + size])
            start += size
            index += 1
        return pieces

    return split


@settings(max_examples=150, deadline=None)
@given(name=st.sampled_from(sorted(TX_CASES)), splitter=splitters())
def test_transaction_transcripts_any_split(name: str, splitter: Splitter) -> None:
    _check_tx(name, splitter)


@settings(max_examples=150, deadline=None)
@given(name=st.sampled_from(sorted(SETUP_CASES)), splitter=splitters())
def test_setup_transcripts_any_split(name: str, splitter: Splitter) -> None:
    _check_setup(name, splitter)


def test_stage_follows_the_replies_in_a_pipelined_flight() -> None:
    session = ready_session(EHLO_PIPE)
    tx = session.transaction(message(recipients=TWO))
    stages = [tx.stage]
    assert isinstance(tx.next_step(), Write)
    stages.append(tx.stage)
    for reply in (MAIL_OK, RCPT_OK, RCPT_OK, GO):
        session.receive_data(reply)
        step = tx.next_step()
        stages.append(tx.stage)
    assert isinstance(step, Write)
    assert not tx.terminator_sent
    assert tx.next_step() is NEED_DATA
    stages.append(tx.stage)
    assert tx.terminator_sent
    session.receive_data(QUEUED)
    assert tx.next_step() is DONE
    assert stages == [
        Stage.MAIL,
        Stage.MAIL,
        Stage.RCPT,
        Stage.RCPT,
        Stage.DATA,
        Stage.BODY,
        Stage.DATA_END,
    ]


def test_stage_is_body_while_the_data_is_not_yet_written() -> None:
    session = ready_session(EHLO_ONE)
    tx = session.transaction(message())
    for reply in (MAIL_OK, RCPT_OK, GO):
        assert isinstance(tx.next_step(), Write)
        assert tx.next_step() is NEED_DATA
        session.receive_data(reply)
    assert not tx.terminator_sent
    step = tx.next_step()
    assert isinstance(step, Write)
    assert step.data.endswith(b"\r\n.\r\n")
    # Being written: a failure now is a failure during the body, before the terminator.
    assert not tx.terminator_sent
    assert tx.stage is Stage.BODY
    assert tx.next_step() is NEED_DATA
    assert tx.terminator_sent
    assert tx.stage is Stage.DATA_END


def test_large_message_goes_in_several_bdat_chunks() -> None:
    session = ClientSession("client.example", Limits(bdat_chunk_size=10))
    run(
        [("S", GREETING), ("C", EHLO), ("S", EHLO_BDAT)],
        setup_with(tls=TLSMode.NONE),
        session=session,
    )
    data = b"0123456789abcdefghij12345\r\n"
    transcript = [
        ("C", MAIL + RCPT_B + b"BDAT 10\r\n0123456789"),
        ("C", b"BDAT 10\r\nabcdefghij"),
        ("C", b"BDAT 7 LAST\r\n12345\r\n"),
        ("S", MAIL_OK + RCPT_OK + b"250 chunk\r\n250 chunk\r\n" + QUEUED),
    ]
    result = run(transcript, lambda s: s.transaction(message(data)), session=session)
    assert result.terminator_flags == [False, False, True]
    assert isinstance(result.result, TransactionOutcome)
    assert result.result.failed_stage is None


def test_bdat_chunk_refused_stops_and_resets() -> None:
    session = ClientSession("client.example", Limits(bdat_chunk_size=10))
    run(
        [("S", GREETING), ("C", EHLO), ("S", EHLO_BDAT_ONE)],
        setup_with(tls=TLSMode.NONE),
        session=session,
    )
    transcript = [
        ("C", MAIL),
        ("S", MAIL_OK),
        ("C", RCPT_B),
        ("S", RCPT_OK),
        ("C", b"BDAT 10\r\n0123456789"),
        ("S", b"552 too big\r\n"),
        ("C", b"RSET\r\n"),
        ("S", b"250 ok\r\n"),
    ]
    result = run(
        transcript, lambda s: s.transaction(message(b"0123456789abcdef\r\n")), session=session
    )
    assert isinstance(result.result, TransactionOutcome)
    assert result.result.failed_stage is Stage.BODY
    assert result.result.in_sync
    assert result.terminator_flags == [False, False, False, False]


def test_pipelined_bdat_chunks_failure_and_421() -> None:
    session = ClientSession("client.example", Limits(bdat_chunk_size=10))
    run(
        [("S", GREETING), ("C", EHLO), ("S", EHLO_BDAT)],
        setup_with(tls=TLSMode.NONE),
        session=session,
    )
    transcript = [
        ("C", MAIL + RCPT_B + b"BDAT 10\r\n0123456789"),
        ("C", b"BDAT 4 LAST\r\nab\r\n"),
        ("S", MAIL_OK + RCPT_OK + b"552 too big\r\n421 bye\r\n"),
    ]
    result = run(transcript, lambda s: s.transaction(message(b"0123456789ab\r\n")), session=session)
    assert isinstance(result.result, TransactionOutcome)
    assert result.result.failed_stage is Stage.BODY
    assert not result.result.in_sync
    assert result.state is SessionState.CLOSED


def test_eof_after_terminator_is_remote_error_with_terminator_sent() -> None:
    session = ready_session(EHLO_PIPE)
    tx = session.transaction(message())
    transcript = [
        ("C", MAIL + RCPT_B + b"DATA\r\n"),
        ("S", MAIL_OK + RCPT_OK + GO),
        ("C", BODY + b".\r\n"),
        ("EOF",),
    ]
    result = run(transcript, lambda s: tx, session=session)
    assert result.error is RemoteProtocolError
    assert tx.terminator_sent
    assert tx.stage is Stage.DATA_END
    with pytest.raises(LocalProtocolError):
        tx.next_step()


def test_noop_and_rset_exchanges() -> None:
    session = ready_session(EHLO_PIPE)
    result = run(
        [("C", b"NOOP\r\n"), ("S", b"250 2.0.0 ok\r\n")], lambda s: s.noop(), session=session
    )
    assert result.result == Reply(250, ("ok",), (2, 0, 0))
    result = run([("C", b"RSET\r\n"), ("S", b"250 ok\r\n")], lambda s: s.rset(), session=session)
    assert result.result == Reply(250, ("ok",))
    result = run(
        [("C", b"NOOP\r\n"), ("S", b"421 4.4.2 idle\r\n")], lambda s: s.noop(), session=session
    )
    assert result.result == Reply(421, ("idle",), (4, 4, 2))
    assert session.state is SessionState.CLOSED
    assert session.closed_by_server == Reply(421, ("idle",), (4, 4, 2))
    with pytest.raises(LocalProtocolError):
        session.noop()


def test_quit_then_221_or_eof_closes() -> None:
    session = ready_session(EHLO_PIPE)
    assert session.quit() == b"QUIT\r\n"
    assert session.awaiting == (Verb.QUIT,)
    session.receive_data(b"221 bye\r\n")
    assert session.next_event() == Reply(221, ("bye",))
    assert session.state is SessionState.CLOSED
    other = ready_session(EHLO_PIPE)
    other.quit()
    other.receive_data(b"")
    assert other.next_event() is NEED_DATA
    assert other.state is SessionState.CLOSED
    other.receive_data(b"ignored")
    assert other.next_event() is NEED_DATA


def test_unsolicited_421_while_idle_closes_the_session() -> None:
    session = ready_session(EHLO_PIPE)
    assert session.next_event() is NEED_DATA
    session.receive_data(b"421 4.4.2 idle too long\r\n")
    reply = session.next_event()
    assert reply == Reply(421, ("idle too long",), (4, 4, 2))
    assert session.closed_by_server == reply
    assert session.state is SessionState.CLOSED
    with pytest.raises(LocalProtocolError):
        session.transaction(message())


def test_unsolicited_other_reply_while_idle_is_remote_error() -> None:
    session = ready_session(EHLO_PIPE)
    session.receive_data(b"250 surprise\r\n")
    with pytest.raises(RemoteProtocolError):
        session.next_event()
    assert session.state is SessionState.ERROR
    with pytest.raises(RemoteProtocolError):
        session.next_event()


def test_eof_while_idle_closes_without_error() -> None:
    session = ready_session(EHLO_PIPE)
    session.receive_data(b"")
    assert session.next_event() is NEED_DATA
    assert session.state is SessionState.CLOSED
    assert session.closed_by_server is None


def test_exchange_result_before_done_is_local_error() -> None:
    session = ready_session(EHLO_PIPE)
    tx = session.transaction(message())
    with pytest.raises(LocalProtocolError):
        _ = tx.result
    assert "terminator_sent=False" in repr(tx)


def test_second_exchange_while_one_runs_is_local_error() -> None:
    session = ready_session(EHLO_PIPE)
    session.transaction(message())
    with pytest.raises(LocalProtocolError):
        session.noop()
    assert session.state is SessionState.ERROR


def test_done_is_returned_again_after_the_end() -> None:
    session = ready_session(EHLO_PIPE)
    result = run([("C", b"NOOP\r\n"), ("S", b"250 ok\r\n")], lambda s: s.noop(), session=session)
    assert result.result == Reply(250, ("ok",))
    probe = session.noop()
    probe.next_step()
    session.receive_data(b"250 ok\r\n")
    assert probe.next_step() is DONE
    assert probe.next_step() is DONE


def test_any_3xx_to_data_is_taken_as_go_ahead() -> None:
    for ehlo in (EHLO_PIPE, EHLO_ONE):
        session = ready_session(ehlo)
        tx = session.transaction(message())
        for reply in (MAIL_OK, RCPT_OK, b"350 go\r\n"):
            while isinstance(tx.next_step(), Write):
                pass
            session.receive_data(reply)
        step = tx.next_step()
        while step is NEED_DATA:
            step = tx.next_step()
        assert isinstance(step, Write)
        assert step.data == BODY + b".\r\n"


def test_2xx_to_data_is_remote_error() -> None:
    session = ready_session(EHLO_PIPE)
    transcript = [("C", MAIL + RCPT_B + b"DATA\r\n"), ("S", MAIL_OK + RCPT_OK + b"250 what\r\n")]
    result = run(transcript, lambda s: s.transaction(message()), session=session)
    assert result.error is RemoteProtocolError
    assert result.state is SessionState.ERROR


def test_3xx_to_data_with_no_recipient_gets_the_lone_dot() -> None:
    session = ready_session(EHLO_PIPE)
    transcript = [
        ("C", MAIL + RCPT_B + b"DATA\r\n"),
        ("S", MAIL_OK + b"550 no\r\n" + b"350 go\r\n"),
        ("C", b".\r\n"),
        ("S", b"554 no\r\n"),
        ("C", b"RSET\r\n"),
        ("S", b"250 ok\r\n"),
    ]
    result = run(transcript, lambda s: s.transaction(message()), session=session)
    assert isinstance(result.result, TransactionOutcome)
    assert result.result.failed_stage is Stage.RCPT
    assert result.result.in_sync


def test_setup_stage_tracks_where_a_transport_failure_would_strike() -> None:
    session = ClientSession("client.example")
    setup = session.setup(tls=TLSMode.STARTTLS, username="u", password="p")
    assert setup.greeting is None
    assert setup.auth_mechanism is None
    seen = [setup.stage]
    server = [
        GREETING,
        EHLO_PLAIN,
        b"220 go\r\n",
        b"250-mx\r\n250 AUTH PLAIN\r\n",
        b"235 ok\r\n",
    ]
    while True:
        step = setup.next_step()
        seen.append(setup.stage)
        if step is NEED_DATA:
            session.receive_data(server.pop(0))
        elif isinstance(step, StartTLS):
            setup.tls_established()
        elif step is DONE:
            break
    assert [stage for index, stage in enumerate(seen) if stage not in seen[:index]] == [
        Stage.GREETING,
        Stage.EHLO,
        Stage.TLS,
        Stage.AUTH,
    ]
    assert repr(setup) == "<SetupExchange AUTH tls=STARTTLS auth=True>"
    assert setup.result.ok
    # What `pooledmail probe` shows: the greeting, and the mechanism (never the credentials).
    assert setup.greeting is not None
    assert setup.greeting.code == 220
    assert setup.auth_mechanism == "PLAIN"


server_replies = st.lists(
    st.sampled_from(
        [
            b"250 ok\r\n",
            b"251 forwarded\r\n",
            b"354 go\r\n",
            b"334 what\r\n",
            b"421 bye\r\n",
            b"450 busy\r\n",
            b"452 too many\r\n",
            b"503 sequence\r\n",
            b"550 no\r\n",
            b"554 no\r\n",
            b"250-multi\r\n250 line\r\n",
            b"garbage\r\n",
            b"",
        ]
    ),
    max_size=12,
)


@settings(max_examples=300, deadline=None)
@given(
    ehlo=st.sampled_from([EHLO_PIPE, EHLO_ONE, EHLO_BDAT, EHLO_BDAT_ONE]),
    recipients=st.integers(1, 3),
    replies=server_replies,
)
def test_any_server_replies_end_a_transaction_cleanly_or_with_remote_error(
    ehlo: bytes, recipients: int, replies: list[bytes]
) -> None:
    session = ready_session(ehlo)
    tx = session.transaction(message(recipients=[f"r{i}@example.net" for i in range(recipients)]))
    pending = list(replies)
    try:
        while True:
            step = tx.next_step()
            if step is DONE:
                break
            if step is NEED_DATA:
                if not pending:
                    return  # the server went quiet: the driver's timeout decides
                session.receive_data(pending.pop(0))
    except RemoteProtocolError:
        assert session.state is SessionState.ERROR
        return
    outcome = tx.result
    assert len(outcome.accepted) + len(outcome.refused) <= recipients
    if outcome.failed_stage is None:
        assert outcome.accepted
        assert tx.terminator_sent
    if outcome.in_sync:
        assert session.state is SessionState.READY
    else:
        assert session.state in (SessionState.CLOSED, SessionState.READY, SessionState.TRANSACTION)


@settings(max_examples=300, deadline=None)
@given(
    tls=st.sampled_from(list(TLSMode)),
    auth=st.booleans(),
    replies=st.lists(
        st.sampled_from(
            [
                GREETING,
                EHLO_FULL,
                EHLO_PLAIN,
                b"250-mx\r\n250-STARTTLS\r\n250 AUTH LOGIN CRAM-MD5\r\n",
                b"220 go\r\n",
                b"334 VXNlcm5hbWU6\r\n",
                b"334 !!\r\n",
                b"235 ok\r\n",
                b"421 bye\r\n",
                b"454 no\r\n",
                b"500 what\r\n",
                b"535 no\r\n",
                b"554 no\r\n",
                b"x\r\n",
                b"",
            ]
        ),
        max_size=10,
    ),
)
def test_any_server_replies_end_setup_cleanly_or_with_remote_error(
    tls: TLSMode, auth: bool, replies: list[bytes]
) -> None:
    session = ClientSession("client.example")
    credentials: dict[str, Any] = {"username": "u", "password": "p"} if auth else {}
    setup = session.setup(tls=tls, allow_plaintext_auth=True, **credentials)
    pending = list(replies)
    try:
        while True:
            step = setup.next_step()
            if step is DONE:
                break
            if isinstance(step, StartTLS):
                setup.tls_established()
            elif step is NEED_DATA:
                if not pending:
                    return
                session.receive_data(pending.pop(0))
    except RemoteProtocolError:
        assert session.state is SessionState.ERROR
        return
    result = setup.result
    if result.ok:
        assert session.state is SessionState.READY
        if tls is TLSMode.STARTTLS:
            assert session.tls_active
    else:
        assert result.reason


def test_a_421_to_auth_that_quotes_the_credentials_is_hidden_in_the_session_too() -> None:
    # The session keeps the reply that closed it (`closed_by_server`), which a sans-I/O user may
    # show: the secrets the client sent must be hidden there as in the setup's result.
    session = ClientSession("client.test")
    setup = session.setup(tls=TLSMode.IMPLICIT, tls_active=True, username="u", password="pw-secret")
    sent_line = base64.b64encode(b"\0u\0pw-secret")
    replies = [
        GREETING,
        b"250-mx\r\n250 AUTH PLAIN\r\n",
        b"421 4.7.0 closing: " + sent_line + b" pw-secret\r\n",
    ]
    step = setup.next_step()
    while step is not DONE:
        step = setup.data_received(replies.pop(0)) if step is NEED_DATA else setup.next_step()
    assert setup.result.reply == Reply(421, ("closing: *** ***",), (4, 7, 0))
    assert session.closed_by_server == setup.result.reply
    assert "pw-secret" not in repr(session.closed_by_server)
    assert sent_line.decode() not in repr(session.closed_by_server)
