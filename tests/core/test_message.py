"""EmailMessage to envelope and bytes: `prepare_message`."""

from __future__ import annotations

import copy
import email.policy
import re
from email import message_from_bytes
from email.message import EmailMessage, Message
from email.policy import Policy
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pooledmail_core._errors import InvalidArgument, LocalProtocolError
from pooledmail_core._message import EnvelopeError, prepare_message

BARE_LINE_BREAK = re.compile(rb"\r(?!\n)|(?<!\r)\n")


def make_message(**headers: str | list[str]) -> EmailMessage:
    msg = EmailMessage()
    for name, value in headers.items():
        values = value if isinstance(value, list) else [value]
        for item in values:
            msg[name.replace("_", "-")] = item
    msg.set_content("Hello,\nthis is the body.\n")
    return msg


def stdlib_bytes(msg: Message[Any, Any], policy: Policy[Any] = email.policy.SMTP) -> bytes:
    """What `smtplib.send_message` would transmit: a copy without Bcc, flattened by stdlib."""
    reference = copy.deepcopy(msg)
    del reference["Bcc"]
    del reference["Resent-Bcc"]
    return reference.as_bytes(policy=policy)


def headers_of(data: bytes) -> bytes:
    return data.split(b"\r\n\r\n", 1)[0] + b"\r\n"


# --- envelope from headers ---------------------------------------------------------------------


def test_sender_is_from_and_recipients_are_to_cc_bcc() -> None:
    msg = make_message(
        From="Alice <alice@example.com>",
        To="Bob <bob@example.org>, carol@example.net",
        Cc="dave@example.com",
        Bcc="erin@example.com",
    )
    envelope = prepare_message(msg).envelope
    assert envelope.sender == "alice@example.com"
    assert envelope.recipients == (
        "bob@example.org",
        "carol@example.net",
        "dave@example.com",
        "erin@example.com",
    )


def test_sender_field_wins_over_from() -> None:
    msg = make_message(From="a@example.com, b@example.com", Sender="s@example.com", To="t@x.org")
    assert prepare_message(msg).envelope.sender == "s@example.com"


def test_from_with_several_mailboxes_and_no_sender_is_refused() -> None:
    msg = make_message(From="a@example.com, b@example.com", To="t@example.org")
    with pytest.raises(EnvelopeError, match="From names 2 mailboxes"):
        prepare_message(msg)


def test_missing_from_is_refused() -> None:
    with pytest.raises(EnvelopeError, match="no sender"):
        prepare_message(make_message(To="t@example.org"))


def test_sender_field_without_an_address_is_refused_rather_than_falling_back_to_from() -> None:
    msg = make_message(From="a@example.com", Sender="undisclosed:;", To="t@example.org")
    with pytest.raises(EnvelopeError, match="no address in Sender"):
        prepare_message(msg)


def test_no_recipient_anywhere_is_refused() -> None:
    msg = make_message(From="a@example.com", To="undisclosed-recipients:;")
    with pytest.raises(EnvelopeError, match="no recipients"):
        prepare_message(msg)


def test_group_syntax_contributes_its_members() -> None:
    msg = make_message(From="a@example.com", To="Team: b@example.org, c@example.org;")
    assert prepare_message(msg).envelope.recipients == ("b@example.org", "c@example.org")


def test_null_address_in_a_header_names_no_mailbox() -> None:
    msg = make_message(From="a@example.com", To="<>, b@example.org")
    assert prepare_message(msg).envelope.recipients == ("b@example.org",)


def test_duplicate_recipients_are_sent_once_in_first_seen_order() -> None:
    msg = make_message(From="a@example.com", To="b@example.org, c@example.org", Cc="b@example.org")
    assert prepare_message(msg).envelope.recipients == ("b@example.org", "c@example.org")


def test_one_resent_block_gives_the_envelope() -> None:
    msg = make_message(
        From="original@example.com",
        To="first@example.com",
        Resent_Date="Mon, 23 Nov 2026 13:46:38 +0000",
        Resent_From="forwarder@example.com",
        Resent_To="next@example.org",
        Resent_Bcc="hidden@example.org",
    )
    prepared = prepare_message(msg)
    assert prepared.envelope.sender == "forwarder@example.com"
    assert prepared.envelope.recipients == ("next@example.org", "hidden@example.org")
    assert b"hidden@example.org" not in prepared.data


def test_resent_sender_wins_over_resent_from() -> None:
    msg = make_message(
        From="original@example.com",
        To="first@example.com",
        Resent_From="a@example.com, b@example.com",
        Resent_Sender="agent@example.com",
        Resent_Cc="next@example.org",
    )
    assert prepare_message(msg).envelope.sender == "agent@example.com"


def test_resent_block_without_resent_from_is_refused() -> None:
    msg = make_message(
        From="original@example.com",
        To="first@example.com",
        Resent_Date="Mon, 23 Nov 2026 13:46:38 +0000",
        Resent_To="next@example.org",
    )
    with pytest.raises(EnvelopeError, match="no address in Resent-From"):
        prepare_message(msg)


def test_more_than_one_resent_block_is_refused() -> None:
    msg = make_message(
        From="original@example.com",
        To="first@example.com",
        Resent_Date=["Mon, 23 Nov 2026 13:46:38 +0000", "Tue, 24 Nov 2026 08:00:00 +0000"],
        Resent_From=["one@example.com", "two@example.com"],
        Resent_To=["x@example.org", "y@example.org"],
    )
    with pytest.raises(EnvelopeError, match="2 Resent- blocks"):
        prepare_message(msg)


def test_more_than_one_resent_block_is_fine_when_the_envelope_is_given() -> None:
    msg = make_message(
        From="original@example.com",
        Resent_From=["one@example.com", "two@example.com"],
        Resent_Bcc="hidden@example.org",
    )
    prepared = prepare_message(msg, sender="me@example.com", recipients=["you@example.org"])
    assert prepared.envelope.recipients == ("you@example.org",)
    assert b"hidden@example.org" not in prepared.data


def test_envelope_error_is_both_a_local_protocol_error_and_a_value_error() -> None:
    assert issubclass(EnvelopeError, LocalProtocolError)
    assert issubclass(EnvelopeError, ValueError)


# --- explicit envelope -------------------------------------------------------------------------


def test_explicit_envelope_overrides_the_headers() -> None:
    msg = make_message(From="a@example.com", To="b@example.org")
    prepared = prepare_message(msg, sender="bounce@example.com", recipients=["x@example.org"])
    assert prepared.envelope.sender == "bounce@example.com"
    assert prepared.envelope.recipients == ("x@example.org",)


def test_sender_alone_may_be_given_and_recipients_come_from_headers() -> None:
    msg = make_message(From="a@example.com, b@example.com", To="c@example.org")
    prepared = prepare_message(msg, sender="")
    assert prepared.envelope.sender == ""  # the null reverse-path (RFC 5321 §4.5.5)
    assert prepared.envelope.recipients == ("c@example.org",)


def test_recipients_alone_may_be_given_and_the_sender_comes_from_headers() -> None:
    msg = make_message(From="a@example.com")
    prepared = prepare_message(msg, recipients=("z@example.org",))
    assert prepared.envelope == prepared.envelope.__class__("a@example.com", ("z@example.org",))


def test_a_single_string_of_recipients_is_one_recipient() -> None:
    msg = make_message(From="a@example.com")
    assert prepare_message(msg, recipients="z@example.org").envelope.recipients == (
        "z@example.org",
    )


def test_an_empty_recipient_list_is_refused() -> None:
    with pytest.raises(EnvelopeError, match="no recipients"):
        prepare_message(make_message(From="a@example.com"), recipients=[])


def test_an_empty_recipient_is_refused() -> None:
    with pytest.raises(InvalidArgument, match="recipient 1 is empty"):
        prepare_message(make_message(From="a@example.com"), recipients=["b@example.org", ""])


@pytest.mark.parametrize("bad", ["\r", "\n", "\x00", "\r\nRCPT TO:<evil@example.org>", "\t"])
def test_control_character_in_a_recipient_is_refused_without_echoing_it(bad: str) -> None:
    msg = make_message(From="a@example.com")
    with pytest.raises(InvalidArgument, match="recipient 0 contains a control character") as info:
        prepare_message(msg, recipients=[f"victim{bad}@example.org"])
    assert "victim" not in str(info.value)


@pytest.mark.parametrize("bad", ["\r", "\n", "\x00"])
def test_control_character_in_the_sender_is_refused_without_echoing_it(bad: str) -> None:
    msg = make_message(To="b@example.org")
    with pytest.raises(InvalidArgument, match="sender address contains") as info:
        prepare_message(msg, sender=f"me{bad}@example.com")
    assert "me" not in str(info.value).split("address")[0]
    assert "example.com" not in str(info.value)


def test_nul_in_a_header_address_is_refused() -> None:
    msg = make_message(From="a@example.com", To="b\x00@example.org")
    with pytest.raises(InvalidArgument):
        prepare_message(msg)


# --- the bytes ---------------------------------------------------------------------------------


def test_bytes_equal_the_standard_library_without_bcc() -> None:
    msg = make_message(
        From="Alice <alice@example.com>", To="b@example.org", Bcc="secret@example.org"
    )
    prepared = prepare_message(msg)
    assert prepared.data == stdlib_bytes(msg)
    assert b"Bcc" not in prepared.data
    assert b"secret" not in prepared.data


def test_caller_message_keeps_its_bcc_and_every_header() -> None:
    msg = make_message(From="a@example.com", To="b@example.org", Bcc="c@example.org")
    msg.add_attachment(b"\x00\x01", maintype="application", subtype="octet-stream")
    msg.as_bytes()  # the standard library gives the multipart its boundary once
    before_items = list(msg.raw_items())
    before_bytes = msg.as_bytes()
    prepare_message(msg)
    assert list(msg.raw_items()) == before_items
    assert msg.as_bytes() == before_bytes
    assert msg["Bcc"] == "c@example.org"


def test_bcc_of_an_attached_message_is_kept() -> None:
    inner = make_message(From="x@example.com", To="y@example.org", Bcc="inner@example.org")
    outer = make_message(From="a@example.com", To="b@example.org", Bcc="outer@example.org")
    outer.add_attachment(inner)
    prepared = prepare_message(outer)
    assert b"outer@example.org" not in prepared.data
    assert b"Bcc: inner@example.org\r\n" in prepared.data
    assert prepared.data == stdlib_bytes(outer)


def test_every_line_ends_in_crlf_even_when_the_body_has_bare_cr_and_lf() -> None:
    msg = EmailMessage()
    msg["From"] = "a@example.com"
    msg["To"] = "b@example.org"
    msg.set_content("one\rtwo\nthree\r\nfour\n\n")
    prepared = prepare_message(msg)
    assert BARE_LINE_BREAK.search(prepared.data) is None
    assert b"one\r\ntwo\r\nthree\r\nfour\r\n\r\n" in prepared.data
    assert prepared.data == stdlib_bytes(msg)


def test_long_and_empty_headers_fold_exactly_as_the_standard_library() -> None:
    msg = make_message(
        From="a@example.com",
        To=", ".join(f"recipient{i}@example.org" for i in range(12)),
        Subject="word " * 40,
        X_Empty="",
    )
    prepared = prepare_message(msg)
    assert b"X-Empty:\r\n" in prepared.data
    assert b"\r\n " in headers_of(prepared.data)  # something was folded
    assert prepared.data == stdlib_bytes(msg)


def test_unparseable_date_folds_exactly_as_the_standard_library() -> None:
    msg = make_message(From="a@example.com", To="b@example.org", Date="not a date")
    assert prepare_message(msg).data == stdlib_bytes(msg)


def test_parsed_message_round_trips_its_source_headers() -> None:
    source = (
        b"From: a@example.com\r\nTo: b@example.org,\r\n c@example.org\r\n"
        b"Bcc: hidden@example.org\r\nSubject: hi\r\n\r\nbody\r\n"
    )
    msg = message_from_bytes(source, policy=email.policy.default)
    prepared = prepare_message(msg)
    assert prepared.envelope.recipients == ("b@example.org", "c@example.org", "hidden@example.org")
    assert prepared.data == source.replace(b"Bcc: hidden@example.org\r\n", b"")


def test_compat32_message_is_serialized_with_crlf_and_without_bcc() -> None:
    msg = Message()
    msg["From"] = "a@example.com"
    msg["To"] = "b@example.org, c@example.org"
    msg["Bcc"] = "hidden@example.org"
    msg.set_payload("line one\nline two\n")
    prepared = prepare_message(msg)  # type: ignore[arg-type]
    assert prepared.envelope.sender == "a@example.com"
    assert prepared.envelope.recipients == ("b@example.org", "c@example.org", "hidden@example.org")
    assert prepared.data == stdlib_bytes(msg, email.policy.compat32.clone(linesep="\r\n"))
    assert BARE_LINE_BREAK.search(prepared.data) is None


def test_a_custom_policy_is_kept_apart_from_line_endings() -> None:
    narrow = email.policy.default.clone(max_line_length=40)
    msg = EmailMessage(policy=narrow)
    msg["From"] = "a@example.com"
    msg["To"] = "b@example.org"
    msg["Subject"] = "a subject that is longer than forty characters"
    msg.set_content("body\n")
    prepared = prepare_message(msg)
    assert prepared.data == stdlib_bytes(msg, narrow.clone(linesep="\r\n"))
    assert max(len(line) for line in headers_of(prepared.data).split(b"\r\n")) <= 40


def test_header_that_would_inject_a_line_is_refused() -> None:
    msg = make_message(From="a@example.com", To="b@example.org")
    msg.set_raw("X-Note", "harmless\r\nBcc: injected@example.org")
    with pytest.raises(InvalidArgument, match="X-Note"):
        prepare_message(msg)


def test_prepared_message_repr_hides_the_body() -> None:
    msg = make_message(From="a@example.com", To="b@example.org")
    assert "this is the body" not in repr(prepare_message(msg))


# --- SMTPUTF8 only when needed ----------------------------------------------------------------


def test_ascii_message_has_ascii_bytes() -> None:
    msg = make_message(From="a@example.com", To="b@example.org")
    assert prepare_message(msg).data.isascii()


def test_non_ascii_display_name_and_subject_are_encoded_words_not_smtputf8() -> None:
    msg = make_message(From="Zoë <zoe@example.com>", To="Jörg <j@example.org>", Subject="héllo")
    prepared = prepare_message(msg)
    assert headers_of(prepared.data).isascii()
    assert b"=?utf-8?" in prepared.data
    assert prepared.data == stdlib_bytes(msg)


def test_message_with_smtputf8_policy_but_ascii_addresses_still_encodes_headers() -> None:
    msg = EmailMessage(policy=email.policy.SMTPUTF8)
    msg["From"] = "Zoë <zoe@example.com>"
    msg["To"] = "b@example.org"
    msg.set_content("body\n")
    assert headers_of(prepare_message(msg).data).isascii()


def test_non_ascii_envelope_address_chooses_raw_utf8_headers() -> None:
    msg = make_message(From="a@example.com", To="b@example.org", Subject="héllo")
    prepared = prepare_message(msg, recipients=["jörg@exämple.org"])
    assert "Subject: héllo\r\n".encode() in prepared.data
    assert prepared.data == stdlib_bytes(msg, email.policy.SMTPUTF8)


def test_non_ascii_address_in_a_header_chooses_raw_utf8_headers() -> None:
    msg = make_message(From="a@example.com", To="b@example.org", Reply_To="jörg@exämple.org")
    prepared = prepare_message(msg)
    assert prepared.envelope.recipients == ("b@example.org",)
    assert "Reply-To: jörg@exämple.org\r\n".encode() in prepared.data
    assert prepared.data == stdlib_bytes(msg, email.policy.SMTPUTF8)


def test_non_ascii_address_in_a_compat32_header_chooses_utf8() -> None:
    msg = Message()
    msg["From"] = "a@example.com"
    msg["To"] = "jörg@exämple.org"
    msg.set_payload("x\n")
    assert prepare_message(msg).envelope.recipients == ("jörg@exämple.org",)  # type: ignore[arg-type]


def test_custom_policy_with_non_ascii_address_is_cloned_with_utf8() -> None:
    narrow = email.policy.default.clone(max_line_length=60)
    msg = EmailMessage(policy=narrow)
    msg["From"] = "jörg@exämple.org"
    msg["To"] = "b@example.org"
    msg.set_content("body\n")
    prepared = prepare_message(msg)
    assert "From: jörg@exämple.org\r\n".encode() in prepared.data
    assert prepared.data == stdlib_bytes(msg, narrow.clone(linesep="\r\n", utf8=True))


# --- property: identical to the standard library -------------------------------------------------

header_text = st.text(
    alphabet=st.characters(blacklist_categories=("Cs", "Cc", "Zl", "Zp")), max_size=120
)
local_part = st.text(alphabet="abcz019.", min_size=1, max_size=10).filter(
    lambda lp: not lp.startswith(".") and not lp.endswith(".") and ".." not in lp
)
domain = st.sampled_from(["example.org", "example.com", "mail.example.net"])
ascii_address = st.builds(lambda lp, d: f"{lp}@{d}", local_part, domain)
display_name = st.text(alphabet="abcdé ZÖ.,'", max_size=20).map(str.strip)
mailbox = st.builds(
    lambda name, addr: f'"{name}" <{addr}>' if name else addr, display_name, ascii_address
)
address_list = st.lists(mailbox, min_size=1, max_size=4).map(", ".join)
body_text = st.lists(
    st.sampled_from(["abc ", "\n", "\r", "é", ".", "From ", "x" * 30, "\r\n"]), max_size=30
).map("".join)
filename = st.text(alphabet="abcxyz", min_size=1, max_size=30).map(lambda name: name + ".bin")


@st.composite
def messages(draw: st.DrawFn) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = draw(mailbox)
    msg["To"] = draw(address_list)
    if draw(st.booleans()):
        msg["Cc"] = draw(address_list)
    if draw(st.booleans()):
        msg["Bcc"] = draw(address_list)
    msg["Subject"] = draw(header_text)
    if draw(st.booleans()):
        msg["X-Custom"] = draw(header_text)
    msg.set_content(draw(body_text))
    if draw(st.booleans()):
        msg.add_attachment(
            draw(st.binary(max_size=300)),
            maintype="application",
            subtype="octet-stream",
            filename=draw(filename),
        )
        msg.set_boundary("==boundary==")  # the standard library would pick a random one
    return msg


@settings(max_examples=200, deadline=None)
@given(messages(), st.booleans())
def test_bytes_are_the_standard_librarys_without_bcc(msg: EmailMessage, utf8: bool) -> None:
    recipients = ["jörg@exämple.org"] if utf8 else None
    prepared = prepare_message(msg, recipients=recipients)
    expected = stdlib_bytes(msg, email.policy.SMTPUTF8 if utf8 else email.policy.SMTP)
    assert prepared.data == expected
    assert BARE_LINE_BREAK.search(prepared.data) is None
    if not utf8:
        assert headers_of(prepared.data).isascii()
