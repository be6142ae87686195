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
