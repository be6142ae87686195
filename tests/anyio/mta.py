"""What the tests against the private MTAs (Postfix, Exim; tests/servers/) share: a host that
logs in after STARTTLS, a message with its own Message-ID, and a send that returns its failure."""

from __future__ import annotations

from email.message import EmailMessage
from email.utils import make_msgid
from typing import Protocol

import anyio
from pooledmail_anyio import Host, SendFailed, SendResult, SMTPPool

Outcome = SendResult | SendFailed


class PrivateMTA(Protocol):
    host: str
    port: int

    @property
    def username(self) -> str: ...

    @property
    def password(self) -> str: ...


def starttls_host(mta: PrivateMTA, **options: object) -> Host:
    """`mta` over STARTTLS, with its user's credentials; `options` are Host's."""
    settings: dict[str, object] = {
        "tls": "starttls",
        "username": mta.username,
        "password": mta.password,
        **options,
    }
    return Host(mta.host, mta.port, **settings)  # type: ignore[arg-type]


def make_message(
    *,
    sender: str = "alice@example.com",
    to: str | list[str] = "bob@example.com",
    body: str = "Hello.\n",
    subject: str = "pooledmail against a real MTA",
) -> EmailMessage:
    message = EmailMessage()
    message["From"] = sender
    message["To"] = to if isinstance(to, str) else ", ".join(to)
    message["Subject"] = subject
    message["Message-ID"] = make_msgid(domain="pooledmail.test")
    message.set_content(body)
    return message


async def send_capturing(pool: SMTPPool, message: EmailMessage) -> Outcome:
    """The send's result, or its SendFailed."""
    try:
        return await pool.send(message)
    except SendFailed as failure:
        return failure


async def send_all(
    pool: SMTPPool, messages: list[EmailMessage], senders: int
) -> dict[str, Outcome]:
    """Every message, sent by `senders` concurrent tasks; each outcome by Message-ID."""
    outcomes: dict[str, Outcome] = {}
    queue = list(reversed(messages))

    async def sender() -> None:
        while queue:
            message = queue.pop()
            outcomes[message["Message-ID"]] = await send_capturing(pool, message)

    async with anyio.create_task_group() as tg:
        for _ in range(senders):
            tg.start_soon(sender)
    return outcomes
