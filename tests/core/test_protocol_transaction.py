"""Planning a transaction: parameters, local refusals before any byte, data on the wire, secrets."""

from __future__ import annotations

import base64
import dataclasses
import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pooledmail_core._auth import Credentials, choose_mechanism
from pooledmail_core._body import normalise_line_endings, stuffed_with_terminator
from pooledmail_core._capabilities import Capabilities
from pooledmail_core._classify import Stage
from pooledmail_core._config import TLSMode
from pooledmail_core._envelope import Envelope, PreparedMessage
from pooledmail_core._errors import (
    DSNNotSupported,
    EightBitNotSupported,
    InvalidArgument,
    LocalProtocolError,
    MessageTooLarge,
    RemoteProtocolError,
    SMTPUTF8NotSupported,
)
from pooledmail_core._exchanges import (
    COALESCE_LIMIT,
    DONE,
    NEED_DATA,
    SetupResult,
    StartTLS,
    TransactionOutcome,
    Write,
)
from pooledmail_core._limits import Limits
from pooledmail_core._reply import Reply
from pooledmail_core._session import ClientSession
from pooledmail_core._state import SessionState


def caps(**options: Any) -> Capabilities:
    return Capabilities(esmtp=True, **options)


def session_with(capabilities: Capabilities) -> ClientSession:
    session = ClientSession("client.example")
    lines = ["mx"]
    if capabilities.size is not None:
        lines.append(f"SIZE {capabilities.size}")
    for flag, keyword in (
        ("pipelining", "PIPELINING"),
        ("eight_bit_mime", "8BITMIME"),
        ("smtputf8", "SMTPUTF8"),
        ("chunking", "CHUNKING"),
        ("dsn", "DSN"),
    ):
        if getattr(capabilities, flag):
            lines.append(keyword)
    raw = b"".join(
        b"250%s%s\r\n" % (b" " if i == len(lines) - 1 else b"-", line.encode())
        for i, line in enumerate(lines)
    )
    setup = session.setup(tls=TLSMode.NONE)
    for server in (b"220 hi\r\n", raw):
        while setup.next_step() is not NEED_DATA:
            pass
        session.receive_data(server)
    setup.next_step()
    assert setup.result.ok
    assert session.capabilities == capabilities
    return session


def first_flight(
    capabilities: Capabilities,
    data: bytes = b"Subject: x\r\n\r\nbody\r\n",
    sender: str = "a@example.com",
    recipients: tuple[str, ...] = ("b@example.net",),
    **envelope: Any,
) -> bytes:
    session = session_with(capabilities)
    tx = session.transaction(PreparedMessage(Envelope(sender, recipients, **envelope), data))
    step = tx.next_step()
    assert isinstance(step, Write)
    return step.data


def test_mail_parameters_follow_the_capabilities() -> None:
    assert first_flight(caps()).startswith(b"MAIL FROM:<a@example.com>\r\n")
    assert first_flight(caps(size=1000)).startswith(b"MAIL FROM:<a@example.com> SIZE=20\r\n")
    assert first_flight(caps(size=0)).startswith(b"MAIL FROM:<a@example.com> SIZE=20\r\n")
    flight = first_flight(caps(eight_bit_mime=True), b"Subject: x\r\n\r\n\xe9\r\n")
    assert flight.startswith(b"MAIL FROM:<a@example.com> BODY=8BITMIME\r\n")
    flight = first_flight(caps(smtputf8=True), b"Subject: x\r\n\r\n\xc3\xa9\r\n")
    assert flight.startswith(b"MAIL FROM:<a@example.com> SMTPUTF8\r\n")
    flight = first_flight(
        caps(smtputf8=True, eight_bit_mime=True), b"Subject: \xc3\xa9\r\n\r\n\xc3\xa9\r\n"
    )
    assert flight.startswith(b"MAIL FROM:<a@example.com> BODY=8BITMIME SMTPUTF8\r\n")
    flight = first_flight(caps(smtputf8=True), sender="ré@example.com")
    assert flight.startswith("MAIL FROM:<ré@example.com> SMTPUTF8\r\n".encode())


def test_dsn_parameters_are_sent_when_dsn_is_offered() -> None:
    dsn: dict[str, Any] = {
        "ret": "hdrs",
        "envid": "id+1=x",
        "notify": ("success", "FAILURE"),
        "orcpt": True,
    }
    flight = first_flight(caps(dsn=True, pipelining=True), **dsn)
    assert flight == (
        b"MAIL FROM:<a@example.com> RET=HDRS ENVID=id+2B1+3Dx\r\n"
        b"RCPT TO:<b@example.net> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;b@example.net\r\n"
        b"DATA\r\n"
    )
    flight = first_flight(caps(dsn=True, pipelining=True), orcpt=True)
    assert b"RCPT TO:<b@example.net> ORCPT=rfc822;b@example.net\r\n" in flight
    flight = first_flight(caps(dsn=True, pipelining=True), notify=("NEVER",))
    assert b"RCPT TO:<b@example.net> NOTIFY=NEVER\r\n" in flight
    flight = first_flight(
        caps(dsn=True, smtputf8=True, pipelining=True), recipients=("ü@example.net",), orcpt=True
    )
    assert "RCPT TO:<ü@example.net>\r\n".encode() in flight


@pytest.mark.parametrize(
    "envelope",
    [
        {"ret": "ALL"},
        {"envid": "a\tb"},
        {"envid": "é"},
        {"envid": ""},
        {"notify": ()},
        {"notify": ("NEVER", "SUCCESS")},
        {"notify": ("SOMETIMES",)},
        {"notify": ("DELAY", "DELAY")},
        {"sender": "a@b\r\nRCPT TO:<evil@x>"},
        {"sender": "a\0b"},
        {"sender": "<a@b>"},
        {"recipients": ()},
        {"recipients": ("",)},
        {"recipients": ("b@c>",)},
        {"recipients": ("b@c\n",)},
    ],
)
def test_an_invalid_envelope_cannot_even_be_built(envelope: dict[str, Any]) -> None:
    # So no transaction can be asked for with one: plan_transaction never sees it.
    fields: dict[str, Any] = {"sender": "a@example.com", "recipients": ("b@example.net",)}
    fields.update(envelope)
    with pytest.raises(InvalidArgument):
        Envelope(**fields)


@pytest.mark.parametrize(
    "dsn",
    [{"ret": "FULL"}, {"envid": "x"}, {"notify": ("NEVER",)}, {"orcpt": True}],
)
@pytest.mark.parametrize("pipelining", [False, True])
def test_dsn_asked_of_a_server_without_dsn_is_refused_before_any_byte(
    dsn: dict[str, Any], pipelining: bool
) -> None:
    session = session_with(caps(pipelining=pipelining, chunking=pipelining))
    message = PreparedMessage(Envelope("a@example.com", ("b@example.net",), **dsn), b"x\r\n")
    with pytest.raises(DSNNotSupported, match="does not offer DSN"):
        session.transaction(message)
    assert session.state is SessionState.READY
    assert session.awaiting == ()
    plain = PreparedMessage(Envelope("a@example.com", ("b@example.net",)), b"x\r\n")
    step = session.transaction(plain).next_step()
    assert isinstance(step, Write)
    assert step.data.startswith(b"MAIL FROM:<a@example.com>\r\n")


def test_local_refusals_leave_the_session_usable() -> None:
    session = session_with(caps(size=20))
    with pytest.raises(MessageTooLarge) as info:
        session.transaction(PreparedMessage(Envelope("a@b", ("c@d",)), b"x" * 30))
    assert (info.value.size, info.value.limit) == (32, 20)
    with pytest.raises(SMTPUTF8NotSupported):
        session.transaction(PreparedMessage(Envelope("ä@b", ("c@d",)), b"x"))
    with pytest.raises(SMTPUTF8NotSupported):
        session.transaction(PreparedMessage(Envelope("a@b", ("c@d",)), b"S: \xc3\xa4\r\n\r\nx"))
    with pytest.raises(EightBitNotSupported):
        session.transaction(PreparedMessage(Envelope("a@b", ("c@d",)), b"S: a\r\n\r\n\xe4"))
    with pytest.raises(SMTPUTF8NotSupported):  # no blank line: it is all header
        session.transaction(PreparedMessage(Envelope("a@b", ("c@d",)), b"\xe4"))
    assert session.state is SessionState.READY
    tx = session.transaction(PreparedMessage(Envelope("a@b", ("c@d",)), bytearray(b"ok")))  # type: ignore[arg-type]
    assert isinstance(tx.next_step(), Write)


def test_transaction_outside_ready_is_local_error() -> None:
    session = ClientSession("client.example")
    with pytest.raises(LocalProtocolError):
        session.transaction(PreparedMessage(Envelope("a@b", ("c@d",)), b"x"))
    assert session.state is SessionState.ERROR


@pytest.mark.parametrize(
    ("data", "wire"),
    [
        (b"", b".\r\n"),
        (b"a", b"a\r\n.\r\n"),
        (b"a\r\n", b"a\r\n.\r\n"),
        (b".a\r\n", b"..a\r\n.\r\n"),
        (b"a\r\n.\r\nb", b"a\r\n..\r\nb\r\n.\r\n"),
        (b"a\n.\nb\n", b"a\r\n..\r\nb\r\n.\r\n"),
        (b"a\rb\r", b"a\r\nb\r\n.\r\n"),
        (b"a\r\r\nb", b"a\r\n\r\nb\r\n.\r\n"),
        (b"x\n\r.\r\n", b"x\r\n\r\n..\r\n.\r\n"),
    ],
)
def test_data_is_normalised_and_dot_stuffed(data: bytes, wire: bytes) -> None:
    assert stuffed_with_terminator(normalise_line_endings(data)) == wire


@settings(max_examples=400, deadline=None)
@given(
    data=st.binary(max_size=200)
    | st.lists(st.sampled_from([b"\r", b"\n", b".", b"a"])).map(b"".join)
)
def test_no_bare_cr_or_lf_and_no_early_terminator_ever(data: bytes) -> None:
    wire = stuffed_with_terminator(normalise_line_endings(data))
    assert wire.count(b"\r") == wire.count(b"\n") == wire.count(b"\r\n")
    assert wire.endswith(b".\r\n")
    assert wire == b".\r\n" or wire.endswith(b"\r\n.\r\n")
    body = wire[:-3]
    assert b"\r\n.\r\n" not in body
    assert not body.startswith(b".\r\n")
    # un-stuffing gives back the normalised data
    lines = body.split(b"\r\n")
    unstuffed = b"\r\n".join(line[1:] if line.startswith(b".") else line for line in lines)
    assert unstuffed == normalise_line_endings(data)


def test_capabilities_parsing() -> None:
    reply = Reply(
        250,
        (
            "mx.example greets you",
            "size 2048",
            "auth=login plain",
            "AUTH CRAM-MD5",
            "",
            "pipelining",
            "8BITMIME",
            "SMTPUTF8",
            "CHUNKING",
            "STARTTLS",
            "ENHANCEDSTATUSCODES",
            "DSN",
            "X-UNKNOWN stuff",
        ),
    )
    assert Capabilities.from_ehlo(reply) == Capabilities(
        esmtp=True,
        size=2048,
        pipelining=True,
        eight_bit_mime=True,
        smtputf8=True,
        chunking=True,
        starttls=True,
        auth_mechanisms=frozenset({"LOGIN", "PLAIN", "CRAM-MD5"}),
        enhanced_status_codes=True,
        dsn=True,
    )
    assert Capabilities.from_ehlo(Reply(250, ("mx", "SIZE"))).size == 0
    assert Capabilities.from_ehlo(Reply(250, ("mx", "SIZE lots"))).size == 0
    assert Capabilities.from_ehlo(Reply(250, ("mx",))) == Capabilities(esmtp=True)


def test_mechanism_choice() -> None:
    password = Credentials("u", "p", None)
    token = Credentials("u", None, "t")
    both = Credentials("u", "p", "t")
    everything = frozenset({"XOAUTH2", "CRAM-MD5", "PLAIN", "LOGIN"})

    def name(offered: frozenset[str], creds: Credentials, allowed: Any = None) -> str | None:
        chosen = choose_mechanism(offered, creds, allowed)
        return None if chosen is None else chosen.name

    assert name(everything, password) == "CRAM-MD5"
    assert name(everything, token) == "XOAUTH2"
    assert name(everything, both) == "XOAUTH2"
    assert name(frozenset({"PLAIN", "LOGIN"}), password) == "PLAIN"
    assert name(frozenset({"LOGIN"}), password) == "LOGIN"
    assert name(frozenset({"PLAIN"}), token) is None
    assert name(everything, password, ["login"]) == "LOGIN"
    assert name(everything, password, ["GSSAPI"]) is None
    assert name(frozenset({"GSSAPI"}), password, ["GSSAPI"]) is None


@pytest.mark.parametrize(
    "options",
    [
        {"username": "u"},
        {"password": "p"},
        {"oauth2_token": "t"},
        {"username": "u", "password": "p\0"},
        {"username": 1, "password": "p"},
    ],
)
def test_incomplete_or_bad_credentials_are_refused(options: dict[str, Any]) -> None:
    session = ClientSession("client.example")
    with pytest.raises(InvalidArgument):
        session.setup(**options)
    assert session.state is SessionState.AWAIT_GREETING


def test_setup_tls_must_be_a_mode() -> None:
    with pytest.raises(LocalProtocolError):
        ClientSession("client.example").setup(tls="starttls")  # type: ignore[arg-type]


SECRET_PASSWORD = "hunter2-very-secret"
SECRET_TOKEN = "ya29.token-very-secret"


def _secret_forms() -> list[str]:
    forms = [SECRET_PASSWORD, SECRET_TOKEN]
    for plain in (
        f"\0user\0{SECRET_PASSWORD}",
        f"user=user\x01auth=Bearer {SECRET_TOKEN}\x01\x01",
        SECRET_PASSWORD,
    ):
        forms.append(base64.b64encode(plain.encode()).decode())
    return forms


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN", "CRAM-MD5", "XOAUTH2"])
def test_secrets_never_appear_in_reprs_or_errors(mechanism: str) -> None:
    session = ClientSession("client.example")
    setup = session.setup(
        tls=TLSMode.IMPLICIT,
        tls_active=True,
        username="user",
        password=SECRET_PASSWORD,
        oauth2_token=SECRET_TOKEN,
        mechanisms=[mechanism],
    )
    texts = [repr(setup), repr(session)]
    server = [
        b"220 hi\r\n",
        b"250-mx\r\n250 AUTH %s\r\n" % mechanism.encode(),
        b"334 PDE+\r\n",
        b"334 UGFzc3dvcmQ6\r\n",
        b"535 nope\r\n",
    ]
    try:
        while True:
            step = setup.next_step()
            texts.append(repr(step))
            if step is NEED_DATA:
                session.receive_data(server.pop(0))
            elif not isinstance(step, (Write, StartTLS)):
                break
    except RemoteProtocolError as exc:
        # A 334 after the client cancelled (PLAIN, XOAUTH2 answer "*" to a challenge they do
        # not expect): RFC 4954 §4 wants a 501 then, so the exchange fails.
        texts.append(str(exc))
    else:
        result = setup.result
        assert isinstance(result, SetupResult)
        assert not result.ok
        texts.append(repr(result))
        texts.append(result.reason)
    # a protocol error in the middle of AUTH: its text must not carry the secrets either
    broken = ClientSession("client.example")
    failing = broken.setup(
        tls=TLSMode.IMPLICIT,
        tls_active=True,
        username="user",
        password=SECRET_PASSWORD,
        oauth2_token=SECRET_TOKEN,
        mechanisms=[mechanism],
    )
    server = [b"220 hi\r\n", b"250-mx\r\n250 AUTH %s\r\n" % mechanism.encode(), b"bogus\r\n"]

    def drive() -> None:
        while True:
            if failing.next_step() is NEED_DATA:
                broken.receive_data(server.pop(0))

    with pytest.raises(RemoteProtocolError) as info:
        drive()
    texts.extend([str(info.value), repr(info.value), repr(broken), repr(failing)])
    texts.append(repr(Credentials("user", SECRET_PASSWORD, SECRET_TOKEN)))
    texts.append(
        repr(
            choose_mechanism(
                frozenset({mechanism}), Credentials("user", SECRET_PASSWORD, SECRET_TOKEN)
            )
        )
    )
    joined = "\n".join(texts)
    for form in _secret_forms():
        assert form not in joined


def test_message_body_never_appears_in_reprs() -> None:
    session = session_with(caps(pipelining=True))
    body = b"Subject: private\r\n\r\nthe secret plan\r\n"
    tx = session.transaction(PreparedMessage(Envelope("a@b", ("c@d",)), body))
    texts = [repr(tx), repr(tx._plan)]
    texts.append(repr(tx.next_step()))
    session.receive_data(b"250 ok\r\n250 ok\r\n354 go\r\n")
    texts.append(repr(tx.next_step()))
    assert "secret plan" not in "\n".join(texts)


def test_envid_alone_adds_no_rcpt_parameters() -> None:
    flight = first_flight(caps(dsn=True, pipelining=True), envid="abc")
    assert flight == (b"MAIL FROM:<a@example.com> ENVID=abc\r\nRCPT TO:<b@example.net>\r\nDATA\r\n")


def test_buffer_limit_reached_through_the_session_is_remote_error() -> None:
    session = ClientSession("client.example", Limits(max_line_length=16, max_buffered_bytes=16))
    session.receive_data(b"220-" + b"x" * 20)
    assert session.state is SessionState.ERROR
    with pytest.raises(RemoteProtocolError, match="limit"):
        session.next_event()
    session.receive_data(b"more")  # ignored once in ERROR


def test_quit_abandons_a_running_exchange() -> None:
    session = session_with(caps(pipelining=True))
    probe = session.noop()
    assert session.quit() == b"QUIT\r\n"
    with pytest.raises(LocalProtocolError):
        probe.next_step()
    assert session.state is SessionState.ERROR


def reference_lines(data: bytes) -> list[bytes]:
    """The lines of `data`, split the slow, obvious way at CRLF, CR and LF."""
    lines = re.split(rb"\r\n|\r|\n", data)
    if lines[-1] == b"":
        lines.pop()  # the data ended with a line ending (or was empty)
    return lines


def reference_wire(data: bytes) -> bytes:
    """The DATA wire form, written line by line."""
    stuffed = [b"." + line if line.startswith(b".") else line for line in reference_lines(data)]
    return b"".join(line + b"\r\n" for line in stuffed) + b".\r\n"


# Bodies already in wire form (CRLF only, ending with CRLF), where the fast path applies, and
# bodies that need normalising or stuffing, often only by one byte.
_LINE = st.binary(max_size=30).map(lambda raw: raw.replace(b"\r", b"").replace(b"\n", b""))
_CLEAN_BODY = st.lists(_LINE, max_size=12).map(lambda lines: b"".join(x + b"\r\n" for x in lines))
_ANY_BODY = (
    _CLEAN_BODY
    | st.tuples(
        _CLEAN_BODY, st.sampled_from([b"\r", b"\n", b".", b"\n.", b"\r\r\n", b"x"]), _LINE
    ).map(lambda parts: parts[0] + parts[1] + parts[2])
    | st.binary(max_size=300)
    | st.lists(st.sampled_from([b"\r", b"\n", b"\r\n", b".", b"a"]), max_size=40).map(b"".join)
)


@settings(max_examples=400, deadline=None)
@given(data=_ANY_BODY)
def test_fast_and_slow_data_paths_agree_with_the_line_by_line_form(data: bytes) -> None:
    assert stuffed_with_terminator(normalise_line_endings(data)) == reference_wire(data)


@settings(max_examples=200, deadline=None)
@given(data=_ANY_BODY, pipelining=st.booleans())
def test_the_data_write_of_a_transaction_is_the_line_by_line_form(
    data: bytes, pipelining: bool
) -> None:
    session = session_with(caps(pipelining=pipelining, eight_bit_mime=True, smtputf8=True))
    tx = session.transaction(PreparedMessage(Envelope("a@b", ("c@d", "e@f")), data))
    replies = [b"250 ok\r\n", b"250 ok\r\n", b"250 ok\r\n", b"354 go\r\n"]
    if pipelining:
        step = tx.next_step()
        assert isinstance(step, Write)
        assert step.data.startswith(b"MAIL FROM:<a@b>")
        assert step.data.endswith(b"\r\nRCPT TO:<c@d>\r\nRCPT TO:<e@f>\r\nDATA\r\n")
        assert tx.next_step() is NEED_DATA
        session.receive_data(b"".join(replies))
    else:
        for reply in replies:
            assert isinstance(tx.next_step(), Write)
            assert tx.next_step() is NEED_DATA
            session.receive_data(reply)
    step = tx.next_step()
    assert isinstance(step, Write)
    assert step.data == reference_wire(data)
    # Not handed to the transport yet: only the next step says the write was done.
    assert not tx.terminator_sent
    assert tx.next_step() is NEED_DATA
    assert tx.terminator_sent


@settings(max_examples=200, deadline=None)
@given(data=_ANY_BODY)
def test_a_pipelined_bdat_transaction_is_one_write_of_the_normalised_data(data: bytes) -> None:
    session = session_with(caps(pipelining=True, chunking=True, eight_bit_mime=True, smtputf8=True))
    tx = session.transaction(PreparedMessage(Envelope("a@b", ("c@d",)), data))
    step = tx.next_step()
    assert isinstance(step, Write)
    normalised = b"".join(line + b"\r\n" for line in reference_lines(data))
    head, _, chunk = step.data.partition(b"\r\nBDAT ")
    assert head.startswith(b"MAIL FROM:<a@b>")
    assert head.endswith(b"\r\nRCPT TO:<c@d>")
    assert chunk == b"%d LAST\r\n%s" % (len(normalised), normalised)
    assert not tx.terminator_sent
    assert tx.next_step() is NEED_DATA
    assert tx.terminator_sent


def test_parsed_and_outcome_values_are_ordinary_frozen_dataclasses() -> None:
    session = session_with(caps(pipelining=True))
    tx = session.transaction(PreparedMessage(Envelope("a@b", ("c@d",)), b"x\r\n"))
    tx.next_step()
    session.receive_data(b"250 2.1.0 ok\r\n250 2.1.5 ok\r\n354 go\r\n")
    tx.next_step()
    session.receive_data(b"250 2.0.0 queued as 1234\r\n")
    assert tx.next_step() is not NEED_DATA
    outcome = tx.result
    final = Reply(250, ("queued as 1234",), (2, 0, 0))
    assert outcome == TransactionOutcome(("c@d",), (), final, None, True)
    assert hash(outcome.reply) == hash(final)
    assert repr(outcome.reply) == repr(final)
    with pytest.raises(dataclasses.FrozenInstanceError):
        outcome.reply.code = 550  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        outcome.in_sync = False  # type: ignore[misc]


# -- large bodies: written apart from the commands, never copied, terminator last ------------

_LARGE = b"".join(b"line %06d of a large body\r\n" % n for n in range(4000))  # over 64 KiB


def test_a_large_data_body_is_written_uncopied_then_the_dot_line_on_its_own() -> None:
    assert len(_LARGE) > COALESCE_LIMIT
    session = session_with(caps(pipelining=True))
    tx = session.transaction(PreparedMessage(Envelope("a@b", ("c@d",)), _LARGE))
    assert isinstance(tx.next_step(), Write)
    session.receive_data(b"250 ok\r\n250 ok\r\n354 go\r\n")
    body = tx.next_step()
    assert isinstance(body, Write)
    assert body.data is _LARGE  # already CRLF, no leading dot: the caller's bytes as they are
    assert tx.stage is Stage.BODY
    dot = tx.next_step()
    assert isinstance(dot, Write)
    assert dot.data == b".\r\n"
    assert not tx.terminator_sent  # the "." line is in hand, not yet handed over
    assert tx.stage is Stage.BODY
    assert tx.next_step() is NEED_DATA
    assert tx.terminator_sent
    assert tx.stage is Stage.DATA_END
    session.receive_data(b"250 queued\r\n")
    assert tx.next_step() is DONE
    assert tx.result.failed_stage is None


def test_a_large_bdat_chunk_follows_its_command_uncopied() -> None:
    session = session_with(caps(pipelining=True, chunking=True))
    tx = session.transaction(PreparedMessage(Envelope("a@b", ("c@d",)), _LARGE))
    head = tx.next_step()
    assert isinstance(head, Write)
    assert head.data.endswith(b"RCPT TO:<c@d>\r\nBDAT %d LAST\r\n" % len(_LARGE))
    assert tx.stage is Stage.BODY
    payload = tx.next_step()
    assert isinstance(payload, Write)
    assert payload.data is _LARGE
    assert not tx.terminator_sent
    assert tx.next_step() is NEED_DATA
    assert tx.terminator_sent
    assert tx.stage is Stage.MAIL  # now waiting for the replies, MAIL's first


def test_bdat_chunks_share_the_message_buffer() -> None:
    session = session_with(caps(chunking=True))
    session.limits = Limits(bdat_chunk_size=COALESCE_LIMIT * 2)
    data = _LARGE * 3
    tx = session.transaction(PreparedMessage(Envelope("a@b", ("c@d",)), data))
    writes: list[bytes | memoryview] = []
    step = tx.next_step()
    replies = [b"250 ok\r\n", b"250 ok\r\n"]
    while step is not DONE:
        if isinstance(step, Write):
            writes.append(step.data)
            step = tx.next_step()
            continue
        session.receive_data(replies.pop(0) if replies else b"250 chunk ok\r\n")
        step = tx.next_step()
    payloads = [w for w in writes if isinstance(w, memoryview)]
    assert b"".join(payloads) == data
    assert all(p.obj is data for p in payloads)
    assert tx.result.failed_stage is None


senders = st.sampled_from(["a@example.com", "ré@example.com", "100%@example.org", ""])
recipient_addresses = st.sampled_from(
    ["b@example.net", "ré@example.com", "100%@example.org", "postmaster"]
)


@settings(max_examples=200, deadline=None)
@given(
    size=st.sampled_from([None, 0, 100_000]),
    pipelining=st.booleans(),
    chunking=st.booleans(),
    eight_bit_mime=st.booleans(),
    smtputf8=st.booleans(),
    sender=senders,
    recipients=st.lists(recipient_addresses, min_size=1, max_size=4, unique=True),
    data=st.sampled_from([b"Subject: x\r\n\r\nbody\r\n", b"Subject: \xc3\xa9\r\n\r\n\xe9\r\n"]),
)
def test_the_remembered_template_writes_what_the_full_planning_writes(
    size: int | None,
    pipelining: bool,
    chunking: bool,
    eight_bit_mime: bool,
    smtputf8: bool,
    sender: str,
    recipients: list[str],
    data: bytes,
) -> None:
    """A session writes MAIL and RCPT from a template per shape (number of recipients, 8-bit,
    SMTPUTF8), made once; it must write, every time, what planning from scratch writes."""
    from pooledmail_core._transaction import _commands, plan_transaction

    capabilities = caps(
        size=size,
        pipelining=pipelining,
        chunking=chunking,
        eight_bit_mime=eight_bit_mime,
        smtputf8=smtputf8,
    )
    message = PreparedMessage(Envelope(sender, tuple(recipients)), data)
    shapes: dict[Any, Any] = {}
    try:
        plans = [plan_transaction(message, capabilities, 1 << 20, shapes) for _ in range(2)]
    except (SMTPUTF8NotSupported, EightBitNotSupported):
        return
    eight_bit = not data.isascii()
    needs_utf8 = not (sender.isascii() and "".join(recipients).isascii())
    needs_utf8 = needs_utf8 or (eight_bit and (not data.split(b"\r\n\r\n")[0].isascii()))
    needs_utf8 = needs_utf8 or (eight_bit and not eight_bit_mime)
    commands, verbs = _commands(message.envelope, capabilities, len(data), eight_bit, needs_utf8)
    assert len(shapes) == 1
    for plan in plans:
        if pipelining:
            assert plan.flight == commands.encode()
            assert plan.flight_verbs == verbs
        else:
            assert b"".join(plan.lines) == commands.encode()


def test_templates_are_forgotten_with_the_capabilities_they_were_made_for() -> None:
    from pooledmail_core._state import Verb

    session = session_with(caps(pipelining=True))
    message = PreparedMessage(Envelope("a@example.com", ("b@example.net",)), b"x\r\n")
    session.transaction(message)
    assert session._shapes
    session._learn(Verb.EHLO, Reply(250, ("mx", "SIZE 10")))
    assert not session._shapes


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN", "XOAUTH2"])
def test_a_334_after_the_client_cancelled_auth_ends_the_exchange(mechanism: str) -> None:
    # RFC 4954 §4: after "*" the server must answer 501. One that keeps sending 334 would have
    # the client answering "*" until connect_timeout, thousands of round trips a second.
    session = ClientSession("client.example")
    secret = {"oauth2_token": "tok"} if mechanism == "XOAUTH2" else {"password": "pw"}
    setup = session.setup(
        tls=TLSMode.NONE,
        username="u",
        mechanisms=[mechanism],
        allow_plaintext_auth=True,
        **secret,  # type: ignore[arg-type]
    )
    server = [b"220 mx\r\n", b"250-mx\r\n250 AUTH " + mechanism.encode() + b"\r\n"]
    server += [b"334 \r\n"] * 10
    cancels = 0

    def run() -> None:
        nonlocal cancels
        for reply in server:
            while (step := setup.next_step()) is not NEED_DATA:
                if isinstance(step, Write) and bytes(step.data) == b"*\r\n":
                    cancels += 1
            session.receive_data(reply)
        setup.next_step()

    with pytest.raises(RemoteProtocolError, match="cancelled AUTH"):
        run()
    assert cancels == 1


def test_an_ehlo_size_longer_than_int_conversion_allows_is_no_crash() -> None:
    # Python refuses to convert more than 4300 digits (ValueError); a SIZE that long (possible
    # with a larger line limit) is taken as no fixed limit.
    session = ClientSession("client.example", Limits(max_line_length=8192))
    setup = session.setup(tls=TLSMode.NONE)
    replies = [b"220 mx ESMTP\r\n", b"250-mx\r\n250 SIZE " + b"9" * 5000 + b"\r\n"]
    for server in replies:
        while setup.next_step() is not NEED_DATA:
            pass
        session.receive_data(server)
    while setup.next_step() is not DONE:
        pass
    assert setup.result.ok
    assert session.capabilities.size == 0
