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

from pooledmail_core import message_id_of
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
    with pytest.raises(EnvelopeError, match="recipients: at least one recipient is needed"):
        prepare_message(make_message(From="a@example.com"), recipients=[])


def test_an_empty_recipient_is_refused() -> None:
    with pytest.raises(InvalidArgument, match=r"recipients\[1\]: the address is empty"):
        prepare_message(make_message(From="a@example.com"), recipients=["b@example.org", ""])


@pytest.mark.parametrize("bad", ["\r", "\n", "\x00", "\r\nRCPT TO:<evil@example.org>", "\t"])
def test_control_character_in_a_recipient_is_refused_without_echoing_it(bad: str) -> None:
    msg = make_message(From="a@example.com")
    with pytest.raises(InvalidArgument, match=r"recipients\[0\]: .* control character") as info:
        prepare_message(msg, recipients=[f"victim{bad}@example.org"])
    assert "victim" not in str(info.value)
    assert info.value.argument == "recipients[0]"


@pytest.mark.parametrize("bad", ["\r", "\n", "\x00"])
def test_control_character_in_the_sender_is_refused_without_echoing_it(bad: str) -> None:
    msg = make_message(To="b@example.org")
    with pytest.raises(InvalidArgument, match="sender: the address contains") as info:
        prepare_message(msg, sender=f"me{bad}@example.com")
    assert "me@" not in str(info.value)
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


@settings(max_examples=200)
@given(
    text=st.text(alphabet="ab\r\n", max_size=60),
    slice_size=st.integers(min_value=1, max_value=9),
)
def test_body_text_written_in_slices_equals_the_standard_library(
    text: str, slice_size: int
) -> None:
    # A long body is converted and written a slice at a time (about a MiB each, cut just after
    # a line feed): with tiny slices, every kind of line break lands on every kind of cut.
    from unittest import mock

    import pooledmail_core._message as message_module

    msg = EmailMessage()
    msg["From"] = "a@example.com"
    msg["To"] = "b@example.org"
    # A payload set as it is (set_content would have turned every line break into "\n").
    msg.set_payload(text + "end\n")
    with mock.patch.object(message_module, "_LINES_SLICE", slice_size):
        prepared = prepare_message(msg)
    assert prepared.data == stdlib_bytes(msg)


def test_a_body_over_a_mebibyte_is_written_whole() -> None:
    msg = EmailMessage()
    msg["From"] = "a@example.com"
    msg["To"] = "b@example.org"
    msg.set_payload(("x" * 997 + "\r\n" + "y" * 50 + "\r" + "z\n") * 3000)
    prepared = prepare_message(msg)
    assert len(prepared.data) > 3 << 20
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


def test_compat32_header_that_would_inject_a_field_is_refused_without_quoting_it() -> None:
    # compat32 accepts any text as a header; the standard library's folding raises its own
    # HeaderParseError, quoting the value, when the text after a line break looks like a field.
    msg = Message()
    msg["From"] = "a@example.com"
    msg["To"] = "b@example.org"
    msg["Subject"] = "private words\r\nBcc: injected@example.org"
    msg.set_payload("body\n")
    with pytest.raises(InvalidArgument, match="Subject") as refused:
        prepare_message(msg)  # type: ignore[arg-type]
    assert "private" not in str(refused.value)
    assert "injected" not in str(refused.value)


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


# --- addresses from the headers are checked like the caller's, named by their field -------------


def test_a_header_recipient_that_is_not_a_mailbox_is_named_by_its_field() -> None:
    msg = make_message(From="a@example.com", To="b@example.org", Cc="c@example.org, carol")
    with pytest.raises(InvalidArgument) as info:
        prepare_message(msg)
    assert str(info.value) == "Cc[1]: the address has no '@'"
    assert "carol" not in str(info.value)


def test_a_resent_recipient_is_named_by_its_resent_field() -> None:
    msg = make_message(
        From="a@example.com",
        Resent_From="r@example.com",
        Resent_To="x@example.org, y@example.org",
        Resent_Bcc="z@exa_mple.org",
    )
    with pytest.raises(InvalidArgument, match=r"^Resent-Bcc\[0\]: .*'_' in its domain"):
        prepare_message(msg)


def test_a_header_sender_that_is_not_a_mailbox_is_named_by_its_field() -> None:
    msg = make_message(From="alice@-example.com", To="b@example.org")
    with pytest.raises(InvalidArgument, match=r"^From: the address has a domain label"):
        prepare_message(msg)
    msg = make_message(From="a@example.com", Sender="agent", To="b@example.org")
    with pytest.raises(InvalidArgument, match=r"^Sender: the address has no '@'"):
        prepare_message(msg)


def test_given_addresses_are_named_as_arguments_even_when_headers_supply_the_rest() -> None:
    msg = make_message(From="a@example.com", To="b@example.org")
    with pytest.raises(InvalidArgument, match=r"^recipients\[0\]: "):
        prepare_message(msg, recipients=["b..c@example.org"])
    with pytest.raises(InvalidArgument, match=r"^sender: "):
        prepare_message(msg, sender="x y@example.org")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"sender": b"a@example.com"}, "sender: expected str, got bytes"),
        ({"recipients": [None]}, r"recipients\[0\]: expected str, got NoneType"),
        ({"recipients": 3}, "recipients: expected a str or a sequence of str, got int"),
        ({"date": 3}, "date: expected str, got int"),
        ({"new_message_id": "<x@y>"}, "new_message_id: expected a callable, got str"),
    ],
)
def test_wrong_types_are_type_errors_naming_the_argument(
    options: dict[str, Any], message: str
) -> None:
    with pytest.raises(TypeError, match=message):
        prepare_message(make_message(From="a@example.com", To="b@example.org"), **options)


@pytest.mark.parametrize("not_a_message", ["From: a@example.com\r\n\r\nhi", b"From: x", None])
def test_something_other_than_a_message_is_a_type_error(not_a_message: Any) -> None:
    with pytest.raises(TypeError, match=r"msg: expected an email.message.EmailMessage"):
        prepare_message(not_a_message)


# --- Date and Message-ID ------------------------------------------------------------------------

DATE = "Mon, 23 Nov 2026 13:46:38 +0000"


def with_added(reference: bytes, *lines: str) -> bytes:
    """`reference` with header lines added at the end of its header section."""
    end = reference.index(b"\r\n\r\n") + 2
    return reference[:end] + "".join(line + "\r\n" for line in lines).encode() + reference[end:]


class IdMaker:
    """Stands in for the driver's Message-ID source; records the domains it was asked for."""

    def __init__(self, result: object = "<1.2.3@example.com>") -> None:
        self.result = result
        self.domains: list[str | None] = []

    def __call__(self, domain: str | None) -> str:
        self.domains.append(domain)
        return self.result  # type: ignore[return-value]


def test_date_and_message_id_are_added_after_the_messages_own_fields() -> None:
    msg = make_message(From="Alice <alice@example.com>", To="b@example.org", Bcc="c@example.org")
    new_id = IdMaker()
    prepared = prepare_message(msg, date=DATE, new_message_id=new_id)
    expected = with_added(stdlib_bytes(msg), f"Date: {DATE}", "Message-ID: <1.2.3@example.com>")
    assert prepared.data == expected
    assert prepared.message_id == "<1.2.3@example.com>"
    assert new_id.domains == ["example.com"]


def test_only_a_date_or_only_an_id_may_be_asked_for() -> None:
    msg = make_message(From="a@example.com", To="b@example.org")
    assert prepare_message(msg, date=DATE).data == with_added(stdlib_bytes(msg), f"Date: {DATE}")
    assert prepare_message(msg, date=DATE).message_id is None
    prepared = prepare_message(msg, new_message_id=IdMaker("<n@example.com>"))
    assert prepared.data == with_added(stdlib_bytes(msg), "Message-ID: <n@example.com>")


def test_nothing_is_added_without_a_date_or_an_id_source() -> None:
    msg = make_message(From="a@example.com", To="b@example.org")
    prepared = prepare_message(msg)
    assert prepared.data == stdlib_bytes(msg)
    assert prepared.message_id is None


def test_the_messages_own_date_and_message_id_are_kept() -> None:
    msg = make_message(
        From="a@example.com",
        To="b@example.org",
        Date="Tue, 01 Dec 2026 08:00:00 -0500",
        Message_ID="<own@example.com>",
    )
    new_id = IdMaker()
    prepared = prepare_message(msg, date=DATE, new_message_id=new_id)
    assert prepared.data == stdlib_bytes(msg)
    assert prepared.message_id == "<own@example.com>"
    assert new_id.domains == []


@pytest.mark.parametrize("name", ["DATE", "date", "Date"])
def test_a_date_field_in_any_case_counts(name: str) -> None:
    msg = make_message(From="a@example.com", To="b@example.org")
    msg[name] = "Tue, 01 Dec 2026 08:00:00 -0500"
    data = prepare_message(msg, date=DATE).data
    assert data.lower().count(b"\r\ndate: ") == 1
    assert DATE.encode() not in data


def test_a_compat32_messages_own_folded_message_id_is_reported_unfolded() -> None:
    msg = message_from_bytes(
        b"From: a@example.com\r\nTo: b@example.org\r\nMessage-ID:\r\n <folded@example.com>\r\n"
        b"\r\nbody\r\n"
    )
    assert prepare_message(msg).message_id == "<folded@example.com>"  # type: ignore[arg-type]


def test_an_empty_message_id_field_is_kept_and_nothing_added() -> None:
    msg = make_message(From="a@example.com", To="b@example.org")
    msg["Message-ID"] = ""
    prepared = prepare_message(msg, new_message_id=IdMaker())
    assert prepared.message_id is None
    assert prepared.data.count(b"Message-ID") == 1


@pytest.mark.parametrize(
    ("sender", "domain"),
    [
        ("", None),
        ("bounce@bounces.example.com", "bounces.example.com"),
        ('"a@b"@example.net', "example.net"),
        ("a@[192.0.2.1]", "[192.0.2.1]"),
    ],
)
def test_the_id_source_is_given_the_envelope_senders_domain(
    sender: str, domain: str | None
) -> None:
    new_id = IdMaker()
    prepare_message(
        make_message(From="a@example.com", To="b@example.org"),
        sender=sender,
        new_message_id=new_id,
    )
    assert new_id.domains == [domain]


def test_the_callers_message_is_neither_changed_nor_copied() -> None:
    msg = make_message(From="a@example.com", To="b@example.org", Bcc="c@example.org")
    before_items = list(msg.raw_items())
    before_bytes = msg.as_bytes()
    prepare_message(msg, date=DATE, new_message_id=IdMaker())
    assert list(msg.raw_items()) == before_items
    assert msg.as_bytes() == before_bytes
    assert "Date" not in msg
    assert "Message-ID" not in msg


def test_an_attached_message_gets_neither_date_nor_id() -> None:
    inner = make_message(From="x@example.com", To="y@example.org")
    outer = make_message(From="a@example.com", To="b@example.org")
    outer.add_attachment(inner)
    outer.as_bytes()  # fix the boundary
    prepared = prepare_message(outer, date=DATE, new_message_id=IdMaker())
    assert prepared.data.count(b"Date: ") == 1
    assert prepared.data.count(b"Message-ID: ") == 1
    assert prepared.data == with_added(
        stdlib_bytes(outer), f"Date: {DATE}", "Message-ID: <1.2.3@example.com>"
    )


@pytest.mark.parametrize(
    "date",
    [
        DATE,
        "23 Nov 2026 13:46:38 +0000",
        "Sun, 1 Mar 2026 00:00 -1200",
        "sat, 31 dec 2026 23:59:60 +1400",
    ],
)
def test_a_date_in_rfc_5322_form_is_accepted(date: str) -> None:
    msg = make_message(From="a@example.com", To="b@example.org")
    assert f"Date: {date}\r\n".encode() in prepare_message(msg, date=date).data


@pytest.mark.parametrize(
    "date",
    [
        "",
        "2026-11-23T13:46:38Z",
        "Mon, 23 Nov 2026 13:46:38",
        "Mon, 32 Nov 2026 13:46:38 +0000",
        "Mon, 23 Nov 2026 24:00:00 +0000",
        "Mon, 23 Nov 2026 13:46:38 +0000\r\nBcc: injected@example.org",
        "Mon, 23 Nov 2026 13:46:38 GMT",
        "Mon, 23 Nov 2026 13:46:38 +0000 ",
    ],
)
def test_a_date_that_is_not_rfc_5322_is_refused_even_when_unused(date: str) -> None:
    msg = make_message(From="a@example.com", To="b@example.org", Date=DATE)
    with pytest.raises(InvalidArgument, match=r"^date: must be an RFC 5322 date-time"):
        prepare_message(msg, date=date)


@pytest.mark.parametrize(
    "message_id",
    [
        "<a@example.com>",
        "<a.b.c@example.com>",
        "<!#$%&'*+/=?^_`{|}~-@x>",
        "<a@[192.0.2.1]>",
        "<a@[any-dtext!]>",
    ],
)
def test_a_new_message_id_that_is_a_msg_id_is_written(message_id: str) -> None:
    msg = make_message(From="a@example.com", To="b@example.org")
    prepared = prepare_message(msg, new_message_id=IdMaker(message_id))
    assert prepared.message_id == message_id
    assert f"Message-ID: {message_id}\r\n".encode() in prepared.data


@pytest.mark.parametrize(
    "message_id",
    [
        "",
        "a@example.com",
        "<a@example.com",
        "<a b@example.com>",
        "<a..b@example.com>",
        "<.a@example.com>",
        "<a@>",
        "<@example.com>",
        "<a@example.com> ",
        "<a@example.com>\r\nBcc: injected@example.org",
        "<a@exa\x00mple.com>",
        "<a@[x]y]>",
        "<a@\u2028example.com>",
        "<a@\u200bexample.com>",
        "<" + "x" * 990 + "@example.com>",
    ],
)
def test_a_new_message_id_that_is_not_a_msg_id_is_refused(message_id: str) -> None:
    msg = make_message(From="a@example.com", To="b@example.org")
    with pytest.raises(InvalidArgument, match=r"^new_message_id: must return an RFC 5322 msg-id"):
        prepare_message(msg, new_message_id=IdMaker(message_id))


def test_a_new_message_id_that_is_not_a_str_is_a_type_error() -> None:
    msg = make_message(From="a@example.com", To="b@example.org")
    with pytest.raises(TypeError, match="new_message_id: expected it to return str, got bytes"):
        prepare_message(msg, new_message_id=IdMaker(b"<a@example.com>"))


def test_a_non_ascii_message_id_only_goes_with_smtputf8() -> None:
    msg = make_message(From="a@example.com", To="b@example.org")
    with pytest.raises(InvalidArgument, match=r"non-ASCII msg-id .* without SMTPUTF8"):
        prepare_message(msg, new_message_id=IdMaker("<1@exämple.org>"))
    prepared = prepare_message(
        msg, sender="jörg@exämple.org", new_message_id=IdMaker("<1@exämple.org>")
    )
    assert "Message-ID: <1@exämple.org>\r\n".encode() in prepared.data
    assert prepared.message_id == "<1@exämple.org>"


@settings(max_examples=100, deadline=None)
@given(messages(), st.booleans(), st.booleans(), st.booleans())
def test_added_fields_leave_every_other_byte_as_the_standard_library_writes_it(
    msg: EmailMessage, utf8: bool, add_date: bool, add_id: bool
) -> None:
    recipients = ["jörg@exämple.org"] if utf8 else None
    prepared = prepare_message(
        msg,
        recipients=recipients,
        date=DATE if add_date else None,
        new_message_id=IdMaker() if add_id else None,
    )
    expected = stdlib_bytes(msg, email.policy.SMTPUTF8 if utf8 else email.policy.SMTP)
    added = [f"Date: {DATE}"] * add_date + ["Message-ID: <1.2.3@example.com>"] * add_id
    assert prepared.data == with_added(expected, *added)
    assert prepared.message_id == ("<1.2.3@example.com>" if add_id else None)
    assert message_id_of(prepared.data) == prepared.message_id


@pytest.mark.parametrize("lines", [1, 30_000], ids=["short", "over-a-mebibyte"])
def test_compat32_text_without_a_charset_is_refused_without_quoting_it(lines: int) -> None:
    import pickle

    msg = Message()
    msg["From"] = "a@example.com"
    msg["To"] = "b@example.org"
    msg.set_payload("h\u00e9llo, the secret body\n" * lines)
    with pytest.raises(InvalidArgument) as caught:
        prepare_message(msg)
    assert b"secret" not in pickle.dumps(caught.value)
    assert "charset" in str(caught.value)
    assert "\u00e9" not in str(caught.value)
    assert "secret" not in str(caught.value)
    assert caught.value.__cause__ is None
    assert caught.value.__suppress_context__
