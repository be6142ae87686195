"""What goes on the wire is the address that was checked, and every recipient a header names."""

from __future__ import annotations

import contextlib
import enum
from email.message import EmailMessage
from typing import Any

import pytest

from pooledmail_anyio import EnvelopeError, Host, PoolConfig, SendFailed, SMTPPool

from .fakesmtp import FakeSMTPServer, Script

pytestmark = pytest.mark.anyio

BODY = b"Subject: hi\r\n\r\nhello\r\n"


class Mailbox(str, enum.Enum):
    # A str-valued enum of configured addresses: a common way to keep them in one place.
    ALERTS = "alerts@example.com"
    ONCALL = "oncall@example.com"


class Shouting(str):
    """A str subclass whose str() is not its text (as hostile or merely odd wrappers are)."""

    def __str__(self) -> str:
        return "x@example.com>\r\nRCPT TO:<intruder@example.net"


def local(port: int, **host: Any) -> Host:
    return Host("127.0.0.1", port, **{"tls": "none", **host})


@pytest.mark.parametrize("extensions", [("PIPELINING",), ()], ids=["pipelined", "one-at-a-time"])
async def test_an_address_that_is_a_str_enum_goes_on_the_wire_as_its_text(
    extensions: tuple[str, ...],
) -> None:
    server = FakeSMTPServer(Script(extensions=extensions))
    async with (
        server.running(),
        SMTPPool(PoolConfig([local(server.port)], max_retries=0)) as pool,
    ):
        await pool.send_raw(BODY, sender=Mailbox.ALERTS, recipients=[Mailbox.ONCALL])
    commands = [c for c in server.connections[0].commands if c[:4] in ("MAIL", "RCPT")]
    assert commands == ["MAIL FROM:<alerts@example.com>", "RCPT TO:<oncall@example.com>"]


async def test_a_str_subclass_recipient_cannot_add_a_recipient_after_being_checked() -> None:
    server = FakeSMTPServer(Script(extensions=("PIPELINING",)))
    async with (
        server.running(),
        SMTPPool(PoolConfig([local(server.port)], max_retries=0)) as pool,
    ):
        with contextlib.suppress(SendFailed):
            await pool.send_raw(
                BODY, sender="a@example.com", recipients=[Shouting("b@example.com")]
            )
    received = server.connections[0].received_bytes
    assert b"intruder" not in received
    assert b"RCPT TO:<b@example.com>\r\n" in received


@pytest.mark.parametrize("field", ["To", "Cc", "Bcc"])
@pytest.mark.parametrize(
    "value",
    ["alice@example.com; bob@example.com", "alice@example.com bob@example.com"],
    ids=["semicolon", "space"],
)
async def test_a_recipient_field_that_does_not_parse_whole_is_refused_not_cut_short(
    field: str, value: str
) -> None:
    message = EmailMessage()
    message["From"] = "a@example.com"
    message[field] = value
    message.set_content("hello\n")
    server = FakeSMTPServer(Script())
    async with (
        server.running(),
        SMTPPool(PoolConfig([local(server.port)], max_retries=0)) as pool,
    ):
        with pytest.raises(EnvelopeError, match=field):
            await pool.send(message)
    assert server.messages == []
