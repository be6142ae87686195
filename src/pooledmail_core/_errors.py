"""Error types of the core.

Two families, as in h11: `LocalProtocolError` means the caller used the API wrongly and is raised
before any byte is produced; `RemoteProtocolError` means the server broke the protocol. A machine
that raised either stays in its ERROR state.

Messages never contain secrets or message bodies: they name the rule that was broken and, where
useful, the field, never the offending value when that value may be private.
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "DSNNotSupported",
    "EightBitNotSupported",
    "EnvelopeError",
    "InvalidArgument",
    "LocalProtocolError",
    "MessageTooLarge",
    "PooledMailError",
    "ProtocolError",
    "RemoteProtocolError",
    "SMTPUTF8NotSupported",
]


class PooledMailError(Exception):
    """Base class of every error pooledmail raises on purpose."""


class ProtocolError(PooledMailError):
    """Base class of the two protocol error families."""


class LocalProtocolError(ProtocolError):
    """The caller asked for something the protocol or the server's capabilities forbid.

    Raised before any byte of the offending command is produced.
    """


class RemoteProtocolError(ProtocolError):
    """The server sent something that breaks the protocol (or exceeds a configured limit)."""


class InvalidArgument(LocalProtocolError, ValueError):
    """An argument breaks a rule: an address that is not a mailbox, a CR or LF in a parameter ...

    `argument` names the argument when there is one to name (`sender`, `recipients[3]`,
    `notify`), `rule` says what is wrong. Neither ever holds the value itself: addresses are
    personal data. A `ValueError` too, as the standard library raises for a bad value.
    """

    def __init__(self, rule: str, argument: str | None = None) -> None:
        # Both go into `args`, so the exception pickles with its argument and rule.
        super().__init__(rule, argument)
        self.rule = rule
        self.argument = argument

    def __str__(self) -> str:
        return self.rule if self.argument is None else f"{self.argument}: {self.rule}"


class EnvelopeError(InvalidArgument):
    """The envelope cannot be derived from the message's headers, or has no recipient.

    Raised when there is no sender or no recipient to be found, when From names several
    mailboxes without a Sender, or when there is more than one Resent- block (there is no
    reliable way to tell which is the newest). Passing `sender` and `recipients` explicitly
    avoids the derivation. A `ValueError` too, as `smtplib` raises for the same causes.
    """


class MessageTooLarge(LocalProtocolError):
    """The message is larger than the SIZE the server advertised (RFC 1870)."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"message of {size} bytes exceeds the server's SIZE limit of {limit}")
        self.size = size
        self.limit = limit


class SMTPUTF8NotSupported(LocalProtocolError):
    """Non-ASCII addresses or headers, but the server does not offer SMTPUTF8 (RFC 6531)."""


class DSNNotSupported(LocalProtocolError):
    """DSN parameters were asked for, but the server does not offer DSN (RFC 3461 §4).

    They are refused rather than left out: a caller who asked for NOTIFY, RET, ENVID or ORCPT
    counts on the notifications they control, and the server's default would differ silently.
    """


class EightBitNotSupported(LocalProtocolError):
    """8-bit body content, but the server offers neither 8BITMIME nor SMTPUTF8 (RFC 6152)."""


class ConfigError(PooledMailError, ValueError):
    """A configuration value is wrong. `option` names it; the message states the rule."""

    def __init__(self, option: str, rule: str) -> None:
        super().__init__(f"{option}: {rule}")
        self.option = option
        self.rule = rule
