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
    "EightBitNotSupported",
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


class InvalidArgument(LocalProtocolError):
    """A CR, LF or NUL (or another forbidden character) in an address, name or parameter."""


class MessageTooLarge(LocalProtocolError):
    """The message is larger than the SIZE the server advertised (RFC 1870)."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"message of {size} bytes exceeds the server's SIZE limit of {limit}")
        self.size = size
        self.limit = limit


class SMTPUTF8NotSupported(LocalProtocolError):
    """Non-ASCII addresses or headers, but the server does not offer SMTPUTF8 (RFC 6531)."""


class EightBitNotSupported(LocalProtocolError):
    """8-bit body content, but the server offers neither 8BITMIME nor SMTPUTF8 (RFC 6152)."""


class ConfigError(PooledMailError, ValueError):
    """A configuration value is wrong. `option` names it; the message states the rule."""

    def __init__(self, option: str, rule: str) -> None:
        super().__init__(f"{option}: {rule}")
        self.option = option
        self.rule = rule
