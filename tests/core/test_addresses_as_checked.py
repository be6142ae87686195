"""An address is planned as the exact text that was checked; an address list that does not parse
whole is refused, never cut short."""

from __future__ import annotations

import enum
from email.message import EmailMessage

import pytest

from pooledmail_core._capabilities import Capabilities
from pooledmail_core._envelope import PreparedMessage, checked_envelope
from pooledmail_core._message import EnvelopeError, prepare_message
from pooledmail_core._transaction import plan_transaction


class Role(str, enum.Enum):
    ADMIN = "admin@example.com"


@pytest.mark.parametrize("dsn", [{}, {"notify": "FAILURE"}])
def test_a_str_enum_address_is_planned_as_the_text_that_was_checked(dsn: dict[str, str]) -> None:
    envelope = checked_envelope(Role.ADMIN, [Role.ADMIN], **dsn)
    caps = Capabilities(esmtp=True, pipelining=True, dsn=True)
    plan = plan_transaction(PreparedMessage(envelope, b"Subject: x\r\n\r\nhi\r\n"), caps, 1 << 20)
    assert plan.flight.startswith(b"MAIL FROM:<admin@example.com>\r\nRCPT TO:<admin@example.com>")
    assert type(envelope.sender) is str
    assert all(type(r) is str for r in envelope.recipients)


@pytest.mark.parametrize("value", ["a@example.com; b@example.com", "a@example.com b@example.com"])
def test_a_recipient_after_an_unreadable_separator_is_not_silently_dropped(value: str) -> None:
    msg = EmailMessage()
    msg["From"] = "f@example.com"
    msg["To"] = value
    msg.set_content("hi\n")
    with pytest.raises(EnvelopeError, match="To"):
        prepare_message(msg)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("To", "Bob Smith bob@example.com"),
        ("Cc", "Bob Smith bob@example.com"),
        ("From", "Shop shop@example.com"),
    ],
)
def test_a_display_name_without_angle_brackets_is_refused_not_sent_as_a_made_up_address(
    field: str, value: str
) -> None:
    # The header parser reads "Bob Smith bob@example.com" as the local part "Bob Smith bob",
    # which is not RFC 5322 §3.4.1 syntax, and quotes it into an address nobody wrote
    # ('"Bob Smith bob"@example.com'): refuse it as a field that does not parse.
    msg = EmailMessage()
    msg["From"] = "f@example.com"
    msg["To"] = "t@example.com"
    del msg[field]
    msg[field] = value
    msg.set_content("hi\n")
    with pytest.raises(EnvelopeError, match=field):
        prepare_message(msg)


def test_an_obsolete_but_valid_local_part_is_still_read_as_the_parser_reads_it() -> None:
    # RFC 5322 §4.4 obs-local-part: words joined by dots with white space around them.
    msg = EmailMessage()
    msg["From"] = "f@example.com"
    msg["To"] = "Bob <bob . smith@example.com>"
    msg.set_content("hi\n")
    assert prepare_message(msg).envelope.recipients == ("bob.smith@example.com",)
