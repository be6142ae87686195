"""`EmailBackend`: Django's email backend contract over a process-wide `BlockingSMTPPool`.

Each message is converted exactly as Django's own SMTP backend converts it (the same envelope
from `sanitize_address`, the same bytes from `message().as_bytes(linesep="\\r\\n")`) and handed
to the pool's `send_raw`, so the server receives what it would have received from Django, over a
reused connection. Backend instances are cheap and many (Django builds one per `send_mail()`);
they all share one pool per configuration, which none of them closes.
"""

from __future__ import annotations

import smtplib
from collections.abc import Sequence
from email.utils import parseaddr
from typing import Any, cast

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.mail.backends.base import BaseEmailBackend
from django.core.mail.message import EmailMessage, sanitize_address

from pooledmail_anyio import (
    BlockingSMTPPool,
    ConfigError,
    FailureKind,
    SendFailed,
    SendResult,
    Stage,
)

from ._settings import backend_options

__all__ = ["EmailBackend", "SMTPSendFailed"]

# The keyword arguments Django's SMTP backend takes (through `get_connection(**kwargs)`).
_ARGUMENTS = frozenset(
    {
        "host",
        "port",
        "username",
        "password",
        "use_tls",
        "use_ssl",
        "timeout",
        "ssl_keyfile",
        "ssl_certfile",
    }
)


class SMTPSendFailed(SendFailed, smtplib.SMTPException):
    """A `SendFailed` raised by the Django backend; also an `smtplib.SMTPException`.

    Code written for Django's SMTP backend catches `smtplib.SMTPException` (or `OSError`, its
    base); both catch this, as does `except SendFailed`. It carries the failure's `kind`,
    `stage`, `host`, `attempts`, `reply` and `definitely_not_accepted`; `__cause__` is the
    underlying error, as on `SendFailed`. Only the Django layer raises it: the pool itself never
    raises an `OSError` subclass for a classified failure.
    """

    @classmethod
    def from_failure(cls, failure: SendFailed) -> SMTPSendFailed:
        # Every field, taken as SendFailed pickles itself, so that none is left behind.
        rebuild = cast(
            "tuple[object, tuple[object, FailureKind, Stage, dict[str, Any]]]", failure.__reduce__()
        )
        _, (_, kind, stage, fields) = rebuild
        return cls(kind, stage, **fields)


def _envelope_address(sanitized: str) -> str:
    # `sanitize_address` gives "Name <local@domain>"; the envelope carries the address alone,
    # which `smtplib` extracts the same way before MAIL FROM and RCPT TO.
    _, address = parseaddr(sanitized)
    return address or sanitized


class EmailBackend(BaseEmailBackend):  # type: ignore[misc]
    """`EMAIL_BACKEND = "pooledmail_django.EmailBackend"`. See docs/guide/django.md.

    Takes the keyword arguments of Django's SMTP backend (`host`, `port`, `username`,
    `password`, `use_tls`, `use_ssl`, `timeout`, `ssl_keyfile`, `ssl_certfile`,
    `fail_silently`); any other is refused by name.
    """

    def __init__(self, fail_silently: bool = False, **kwargs: Any) -> None:
        super().__init__(fail_silently=fail_silently)
        unknown = sorted(set(kwargs) - _ARGUMENTS)
        if unknown:
            raise TypeError(f"{unknown[0]}: not an argument of pooledmail_django.EmailBackend")
        options = backend_options(**kwargs)
        try:
            self.pool: BlockingSMTPPool = BlockingSMTPPool.shared(
                options.config, backend=options.backend, ssl_context=options.ssl_context
            )
        except ConfigError as exc:
            # The settings were read above; what is left is POOLEDMAIL["backend"] naming a loop
            # whose package is not installed ("trio" without trio).
            raise ImproperlyConfigured(f"POOLEDMAIL: {exc}") from None
        self._opened = False

    def open(self) -> bool | None:
        """Start the shared pool if it is not running yet.

        Returns True the first time this backend is opened and False after, as Django's SMTP
        backend does for a connection already open; None when starting failed silently.
        Connections are opened by the pool when a message needs one.
        """
        if self._opened:
            return False
        try:
            self.pool.start()
        except Exception:
            if not self.fail_silently:
                raise
            return None
        self._opened = True
        return True

    def close(self) -> None:
        """End this backend's use of the pool. The shared pool stays open for everyone else."""
        self._opened = False

    def send_messages(self, email_messages: Sequence[EmailMessage]) -> int:
        """Send each message in turn; return how many the server accepted.

        A message without recipients is skipped. A failure raises `SMTPSendFailed` and stops
        the batch (the messages before it were sent, the ones after it were not), unless
        `fail_silently`, which skips the failed message and goes on. A message that some
        recipients refused still counts as sent, as with Django's SMTP backend.
        """
        if not email_messages:
            return 0
        sent = 0
        for message in email_messages:
            if self._send(message) is not None:
                sent += 1
        return sent

    def _send(self, email_message: EmailMessage) -> SendResult | None:
        recipients = email_message.recipients()
        if not recipients:
            return None
        encoding = email_message.encoding or settings.DEFAULT_CHARSET
        sender = _envelope_address(sanitize_address(email_message.from_email, encoding))
        envelope = [_envelope_address(sanitize_address(r, encoding)) for r in recipients]
        data = email_message.message().as_bytes(linesep="\r\n")
        try:
            return self.pool.send_raw(data, sender=sender, recipients=envelope)
        except SendFailed as failure:
            if self.fail_silently:
                return None
            raise SMTPSendFailed.from_failure(failure) from failure.__cause__
