"""The SMTP envelope: who the message is from and to (RFC 5321 §2.3.1), apart from its content."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Envelope", "PreparedMessage"]


# Don't subclass this.
@dataclass(frozen=True, slots=True)
class Envelope:
    """Reverse-path, forward-paths and the DSN parameters (RFC 3461).

    `sender` may be "" for the null reverse-path. `ret` is "FULL" or "HDRS"; `envid` is an
    xtext-free envelope id; `notify` applies to every recipient ("NEVER" alone, or any of
    "SUCCESS", "FAILURE", "DELAY"); `orcpt` adds ORCPT=rfc822;<recipient> to every RCPT.
    DSN parameters are only sent when the server offers DSN.
    """

    sender: str
    recipients: tuple[str, ...]
    ret: str | None = None
    envid: str | None = None
    notify: tuple[str, ...] | None = None
    orcpt: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.recipients, tuple):
            object.__setattr__(self, "recipients", tuple(self.recipients))


# Don't subclass this.
@dataclass(frozen=True, slots=True)
class PreparedMessage:
    """An envelope and the message bytes, serialized once with CRLF line endings.

    `data` is the message as it will be transmitted before dot-stuffing: the terminator and any
    stuffing are added by the protocol machine. The repr never shows the body.
    """

    envelope: Envelope
    data: bytes

    def __repr__(self) -> str:
        return f"PreparedMessage(envelope={self.envelope!r}, data=<{len(self.data)} bytes>)"
