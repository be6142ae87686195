"""The state tables: every (state, command) and (state, reply) pair, the low-level API, the docs."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pooledmail_core._commands import (
    Auth,
    AuthResponse,
    Bdat,
    Command,
    Data,
    Ehlo,
    Helo,
    Mail,
    MessageData,
    Noop,
    Quit,
    Rcpt,
    Rset,
    Starttls,
)
from pooledmail_core._errors import InvalidArgument, LocalProtocolError, RemoteProtocolError
from pooledmail_core._reply import Reply
from pooledmail_core._session import NEED_DATA, ClientSession
from pooledmail_core._state import (
    COMMAND_TRANSITIONS,
    KEEP,
    LAST_IN_GROUP,
    REPLY_TRANSITIONS,
    ReplyKind,
    SessionState,
    Verb,
)

S = SessionState
EHLO_REPLY = b"250-mx\r\n250-PIPELINING\r\n250-STARTTLS\r\n250 AUTH PLAIN\r\n"

COMMANDS: list[Command] = [
    Ehlo("client.example"),
    Helo("client.example"),
    Starttls(),
    Auth("PLAIN", b"AHUAcA=="),
    AuthResponse(b"dQ=="),
    Mail("a@example.com"),
    Rcpt("b@example.net"),
    Data(),
    MessageData(b"Subject: x\r\n\r\nbody\r\n"),
    Bdat(b"chunk", last=False),
    Bdat(b"chunk", last=True),
    Rset(),
    Noop(),
    Quit(),
]
REPLIES = [
    b"220 hi\r\n",
    b"221 bye\r\n",
    b"235 ok\r\n",
    b"250 ok\r\n",
    b"334 challenge\r\n",
    b"354 go\r\n",
    b"421 closing\r\n",
    b"451 later\r\n",
    b"554 no\r\n",
]


def step(session: ClientSession, command: Command, reply: bytes) -> None:
    session.send(command)
    session.receive_data(reply)
    assert isinstance(session.next_event(), Reply)


def greeted(reply: bytes = b"220 hi\r\n") -> ClientSession:
    session = ClientSession("client.example")
    session.receive_data(reply)
    assert isinstance(session.next_event(), Reply)
    return session


def ready() -> ClientSession:
    session = greeted()
    step(session, Ehlo("client.example"), EHLO_REPLY)
    return session


def in_transaction() -> ClientSession:
    session = ready()
    step(session, Mail("a@example.com"), b"250 ok\r\n")
    return session


def in_body() -> ClientSession:
    session = in_transaction()
    step(session, Rcpt("b@example.net"), b"250 ok\r\n")
    step(session, Data(), b"354 go\r\n")
    return session


def tls_handshake() -> ClientSession:
    session = ready()
    step(session, Starttls(), b"220 go\r\n")
    return session


def authenticating() -> ClientSession:
    session = ready()
    step(session, Auth("LOGIN"), b"334 VXNlcm5hbWU6\r\n")
    return session


def closing() -> ClientSession:
    session = ready()
    session.quit()
    return session


def closed() -> ClientSession:
    return greeted(b"421 go away\r\n")


def errored() -> ClientSession:
    session = ClientSession("client.example")
    session.receive_data(b"garbage\r\n")
    with pytest.raises(RemoteProtocolError):
        session.next_event()
    return session


BUILDERS: dict[SessionState, Callable[[], ClientSession]] = {
    S.AWAIT_GREETING: lambda: ClientSession("client.example"),
    S.GREETED: greeted,
    S.REJECTED: lambda: greeted(b"554 no\r\n"),
    S.READY: ready,
    S.TLS_HANDSHAKE: tls_handshake,
    S.AUTH: authenticating,
    S.TRANSACTION: in_transaction,
    S.BODY: in_body,
    S.CLOSING: closing,
    S.CLOSED: closed,
    S.ERROR: errored,
}


def test_every_state_has_a_builder() -> None:
    assert set(BUILDERS) == set(SessionState)
    for state, build in BUILDERS.items():
        assert build().state is state


@pytest.mark.parametrize("state", list(SessionState))
def test_every_state_command_pair_is_a_transition_or_local_error(state: SessionState) -> None:
    for command in COMMANDS:
        session = BUILDERS[state]()
        key = (state, command.expects())
        allowed = key in COMMAND_TRANSITIONS and not session.awaiting
        if allowed:
            assert session.send(command) == command.to_bytes()
            assert session.state is COMMAND_TRANSITIONS[key]
            assert session.awaiting == (command.expects(),)
        else:
            with pytest.raises(LocalProtocolError):
                session.send(command)
            expected = S.CLOSED if state is S.CLOSED else S.ERROR
            assert session.state is expected


def _kind(code: int) -> ReplyKind:
    return {2: ReplyKind.POSITIVE, 3: ReplyKind.INTERMEDIATE}.get(code // 100, ReplyKind.FAILURE)


@pytest.mark.parametrize("state", list(SessionState))
def test_every_state_reply_pair_is_a_transition_or_remote_error(state: SessionState) -> None:
    for raw in REPLIES:
        session = BUILDERS[state]()
        awaiting = session.awaiting
        before = session.state
        code = int(raw[:3])
        if before in (S.CLOSED,):
            session.receive_data(raw)
            assert session.next_event() is NEED_DATA
            continue
        if before is S.ERROR or before is S.TLS_HANDSHAKE:
            session.receive_data(raw)
            with pytest.raises(RemoteProtocolError):
                session.next_event()
            continue
        session.receive_data(raw)
        if code == 421:
            assert session.next_event() == Reply(421, ("closing",))
            assert session.state is S.CLOSED
            continue
        if not awaiting:
            with pytest.raises(RemoteProtocolError):
                session.next_event()
            assert session.state is S.ERROR
            continue
        target = REPLY_TRANSITIONS.get((awaiting[0], _kind(code)))
        if target is None:
            with pytest.raises(RemoteProtocolError):
                session.next_event()
            assert session.state is S.ERROR
        else:
            assert isinstance(session.next_event(), Reply)
            assert session.state is (before if target is KEEP else target)


@pytest.mark.parametrize("verb_index", range(len(COMMANDS)))
def test_every_verb_reply_pair_is_a_transition_or_remote_error(verb_index: int) -> None:
    command = COMMANDS[verb_index]
    verb = command.expects()
    sources = [state for (state, v) in COMMAND_TRANSITIONS if v is verb]
    assert sources
    for raw in REPLIES:
        session = BUILDERS[sources[0]]()
        session.send(command)
        after = session.state
        session.receive_data(raw)
        code = int(raw[:3])
        target = REPLY_TRANSITIONS.get((verb, _kind(code)))
        if code == 421:
            assert isinstance(session.next_event(), Reply)
            assert session.state is S.CLOSED
        elif target is None:
            with pytest.raises(RemoteProtocolError):
                session.next_event()
        else:
            assert isinstance(session.next_event(), Reply)
            assert session.state is (after if target is KEEP else target)


def test_without_pipelining_one_command_per_flight() -> None:
    session = greeted()
    step(session, Ehlo("client.example"), b"250 mx\r\n")
    session.send(Mail("a@example.com"))
    with pytest.raises(LocalProtocolError):
        session.send(Rcpt("b@example.net"))


def test_with_pipelining_a_group_must_end_with_its_last_command() -> None:
    session = ready()
    session.send(Mail("a@example.com"))
    session.send(Rcpt("b@example.net"))
    session.send(Data())
    assert session.awaiting == (Verb.MAIL, Verb.RCPT, Verb.DATA)
    with pytest.raises(LocalProtocolError):
        session.send(Rset())


def test_a_flight_allowed_once_is_judged_again_where_anything_it_depends_on_differs() -> None:
    # Allowed flights are remembered across sessions; the state, the verb awaited last,
    # PIPELINING and TLS still decide each time.
    with_pipelining = ready()
    with_pipelining.send(Mail("a@example.com"))
    with_pipelining.send(Rcpt("b@example.net"))
    without = greeted()
    step(without, Ehlo("client.example"), b"250 mx\r\n")
    without.send(Mail("a@example.com"))
    with pytest.raises(LocalProtocolError):
        without.send(Rcpt("b@example.net"))
    with pytest.raises(LocalProtocolError):
        in_transaction().send(Mail("a@example.com"))
    starttls = ready()
    starttls.send(Starttls())
    tls = tls_handshake()
    tls.tls_established()
    step(tls, Ehlo("client.example"), EHLO_REPLY)
    with pytest.raises(LocalProtocolError):
        tls.send(Starttls())


def test_starttls_twice_is_local_error() -> None:
    session = tls_handshake()
    session.tls_established()
    assert session.tls_active
    step(session, Ehlo("client.example"), EHLO_REPLY)
    with pytest.raises(LocalProtocolError):
        session.send(Starttls())


def test_tls_established_outside_a_handoff_is_local_error() -> None:
    session = ready()
    with pytest.raises(LocalProtocolError):
        session.tls_established()


def test_send_rejects_non_commands() -> None:
    with pytest.raises(LocalProtocolError):
        ready().send("MAIL FROM:<a>")  # type: ignore[arg-type]


def test_greeting_must_arrive_before_any_command() -> None:
    session = ClientSession("client.example")
    with pytest.raises(LocalProtocolError):
        session.send(Ehlo("client.example"))


@pytest.mark.parametrize(
    "build",
    [
        lambda: Ehlo("bad name"),
        lambda: Ehlo(""),
        lambda: Helo("a\r\nMAIL"),
        lambda: Mail("a@b>\r\nRCPT TO:<x"),
        lambda: Mail("a\0b"),
        lambda: Rcpt(""),
        lambda: Rcpt("<b@c>"),
        lambda: Mail("a@b", ("SIZE=1\r\n",)),
        lambda: Mail("a@b", ("A B",)),
        lambda: Auth("PLAIN\r\n"),
        lambda: Auth("PLAIN", b"not base64!"),
        lambda: AuthResponse(b"abc\r\ndef"),
        lambda: ClientSession("bad\nname"),
    ],
)
def test_injection_into_a_command_is_refused(build: Callable[[], object]) -> None:
    with pytest.raises(InvalidArgument):
        build()


def test_command_bytes() -> None:
    assert Auth("PLAIN", b"").to_bytes() == b"AUTH PLAIN =\r\n"
    assert Auth("LOGIN").to_bytes() == b"AUTH LOGIN\r\n"
    assert AuthResponse(b"*").to_bytes() == b"*\r\n"
    assert Mail("", ("SIZE=10",)).to_bytes() == b"MAIL FROM:<> SIZE=10\r\n"
    assert Rcpt("b@c", ("NOTIFY=NEVER",)).to_bytes() == b"RCPT TO:<b@c> NOTIFY=NEVER\r\n"
    assert Bdat(b"abc", last=True).to_bytes() == b"BDAT 3 LAST\r\nabc"
    assert Bdat(b"abc").to_bytes() == b"BDAT 3\r\nabc"
    assert MessageData(b".x\n.y\r").to_bytes() == b"..x\r\n..y\r\n.\r\n"
    assert "secret" not in repr(AuthResponse(b"c2VjcmV0"))
    assert "AHUAcA" not in repr(Auth("PLAIN", b"AHUAcA=="))
    assert "body" not in repr(MessageData(b"body"))


@settings(max_examples=300, deadline=None)
@given(
    actions=st.lists(
        st.one_of(
            st.sampled_from(COMMANDS),
            st.sampled_from(REPLIES),
            st.just(b""),
            st.just("tls"),
        ),
        max_size=25,
    )
)
def test_any_sequence_raises_only_protocol_errors(actions: list[object]) -> None:
    session = ClientSession("client.example")
    for action in actions:
        try:
            if isinstance(action, Command):
                session.send(action)
            elif action == "tls":
                session.tls_established()
            else:
                assert isinstance(action, bytes)
                session.receive_data(action)
                while session.next_event() is not NEED_DATA:
                    pass
        except (LocalProtocolError, RemoteProtocolError):
            assert session.state in (S.ERROR, S.CLOSED)
        assert len(session.awaiting) <= 25
        if session.state in (S.CLOSED, S.ERROR):
            assert session.awaiting == ()


def test_last_in_group_names_the_rfc2920_verbs() -> None:
    assert {Verb.EHLO, Verb.DATA, Verb.NOOP, Verb.QUIT} <= LAST_IN_GROUP
    assert Verb.RCPT not in LAST_IN_GROUP
    assert Verb.MAIL not in LAST_IN_GROUP


def test_quit_may_follow_mail_in_a_flight_but_not_data() -> None:
    # protocol.md, "QUIT": with PIPELINING, QUIT is refused only while the reply awaited last
    # is to a command that must end a flight (DATA here; RFC 2920 §3.1).
    session = ready()
    session.send(Mail("a@example.com"))
    assert session.quit() == b"QUIT\r\n"
    assert session.state is S.CLOSING
    session = ready()
    for command in (Mail("a@example.com"), Rcpt("b@example.net"), Data()):
        session.send(command)
    with pytest.raises(LocalProtocolError, match="QUIT cannot follow DATA"):
        session.quit()
    assert session.state is S.ERROR
