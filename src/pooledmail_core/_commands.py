"""Client commands for the low-level API (`ClientSession.send`), and their validation.

Each command is a frozen dataclass that validates its fields when built, so a command that exists
can always be written: CR, LF, NUL and other non-printable characters in a name or parameter
raise `InvalidArgument` (the command-injection class of bugs), and an address must be a mailbox
(`_address`: the same check as the envelope's). Fields that may carry secrets or message
content are left out of the repr.

Note the naming: `Starttls` is the STARTTLS command; `StartTLS` (in `_exchanges`) is the step that
tells the driver to run the TLS handshake.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import ClassVar

from ._address import check_recipient, check_sender
from ._body import normalise_line_endings, stuffed_with_terminator
from ._errors import InvalidArgument
from ._state import Verb

__all__ = [
    "Auth",
    "AuthResponse",
    "Bdat",
    "Command",
    "Data",
    "Ehlo",
    "Helo",
    "Mail",
    "MessageData",
    "Noop",
    "Quit",
    "Rcpt",
    "Rset",
    "Starttls",
    "check_hostname",
    "check_parameter",
]


def check_hostname(name: object) -> str:
    """An EHLO/HELO name: non-empty, printable, without white space."""
    if not isinstance(name, str) or not name or not name.isprintable() or " " in name:
        raise InvalidArgument(
            "the EHLO/HELO name must be a non-empty printable name without spaces"
        )
    return name


def check_parameter(parameter: object) -> str:
    """An ESMTP parameter (RFC 5321 §4.1.2 esmtp-param): printable ASCII, no space."""
    if (
        not isinstance(parameter, str)
        or not parameter
        or not parameter.isascii()
        or not parameter.isprintable()
        or " " in parameter
    ):
        raise InvalidArgument("an ESMTP parameter must be printable ASCII without spaces")
    return parameter


def _command_line(verb: bytes, argument: str, parameters: tuple[str, ...]) -> bytes:
    tail = " " + " ".join(parameters) if parameters else ""
    return b"%s%s%s\r\n" % (verb, argument.encode("utf-8"), tail.encode("ascii"))


class Command(abc.ABC):
    """Base of the commands: `expects()` names the reply it awaits, `to_bytes()` the wire form."""

    __slots__ = ()
    verb: ClassVar[Verb]

    def expects(self) -> Verb:
        return self.verb

    @abc.abstractmethod
    def to_bytes(self) -> bytes:
        """The command as written on the wire."""


# Don't subclass the commands below.
@dataclass(frozen=True, slots=True)
class Ehlo(Command):
    hostname: str
    verb: ClassVar[Verb] = Verb.EHLO

    def __post_init__(self) -> None:
        check_hostname(self.hostname)

    def to_bytes(self) -> bytes:
        return b"EHLO %s\r\n" % self.hostname.encode("utf-8")


@dataclass(frozen=True, slots=True)
class Helo(Command):
    hostname: str
    verb: ClassVar[Verb] = Verb.HELO

    def __post_init__(self) -> None:
        check_hostname(self.hostname)

    def to_bytes(self) -> bytes:
        return b"HELO %s\r\n" % self.hostname.encode("utf-8")


@dataclass(frozen=True, slots=True)
class Starttls(Command):
    verb: ClassVar[Verb] = Verb.STARTTLS

    def to_bytes(self) -> bytes:
        return b"STARTTLS\r\n"


@dataclass(frozen=True, slots=True)
class Auth(Command):
    """AUTH with an optional base64 initial response (RFC 4954 §4), hidden from the repr."""

    mechanism: str
    initial_response: bytes | None = field(default=None, repr=False)
    verb: ClassVar[Verb] = Verb.AUTH

    def __post_init__(self) -> None:
        check_parameter(self.mechanism)
        if self.initial_response is not None:
            _check_response(self.initial_response)

    def to_bytes(self) -> bytes:
        line = b"AUTH " + self.mechanism.encode("ascii")
        if self.initial_response is not None:
            line += b" " + (self.initial_response or b"=")
        return line + b"\r\n"


def _check_response(response: object) -> None:
    rest = response.translate(None, b"+/=") if isinstance(response, bytes) else None
    if rest is None or (rest and not rest.isalnum()):
        raise InvalidArgument("an AUTH response must be base64 text")


@dataclass(frozen=True, slots=True)
class AuthResponse(Command):
    """The base64 answer to a 334 challenge, or b"*" to cancel; hidden from the repr."""

    response: bytes = field(repr=False)
    verb: ClassVar[Verb] = Verb.AUTH_RESPONSE

    def __post_init__(self) -> None:
        if self.response != b"*":
            _check_response(self.response)

    def to_bytes(self) -> bytes:
        return self.response + b"\r\n"


@dataclass(frozen=True, slots=True)
class Mail(Command):
    sender: str
    parameters: tuple[str, ...] = ()
    verb: ClassVar[Verb] = Verb.MAIL

    def __post_init__(self) -> None:
        check_sender(self.sender)
        object.__setattr__(self, "parameters", tuple(map(check_parameter, self.parameters)))

    def to_bytes(self) -> bytes:
        return _command_line(b"MAIL FROM:<", self.sender + ">", self.parameters)


@dataclass(frozen=True, slots=True)
class Rcpt(Command):
    recipient: str
    parameters: tuple[str, ...] = ()
    verb: ClassVar[Verb] = Verb.RCPT

    def __post_init__(self) -> None:
        check_recipient(self.recipient, "recipient")
        object.__setattr__(self, "parameters", tuple(map(check_parameter, self.parameters)))

    def to_bytes(self) -> bytes:
        return _command_line(b"RCPT TO:<", self.recipient + ">", self.parameters)


@dataclass(frozen=True, slots=True)
class Data(Command):
    verb: ClassVar[Verb] = Verb.DATA

    def to_bytes(self) -> bytes:
        return b"DATA\r\n"


@dataclass(frozen=True, slots=True)
class MessageData(Command):
    """The message after DATA's 354: normalised to CRLF, dot-stuffed, then the "." line."""

    data: bytes = field(repr=False)
    verb: ClassVar[Verb] = Verb.END_OF_DATA

    def to_bytes(self) -> bytes:
        return stuffed_with_terminator(normalise_line_endings(bytes(self.data)))


@dataclass(frozen=True, slots=True)
class Bdat(Command):
    """One BDAT chunk (RFC 3030), sent exactly as given (BDAT data is counted, not stuffed)."""

    chunk: bytes = field(repr=False)
    last: bool = False
    verb: ClassVar[Verb] = Verb.BDAT

    def expects(self) -> Verb:
        return Verb.BDAT_LAST if self.last else Verb.BDAT

    def to_bytes(self) -> bytes:
        chunk = bytes(self.chunk)
        return b"BDAT %d%s\r\n%s" % (len(chunk), b" LAST" if self.last else b"", chunk)


@dataclass(frozen=True, slots=True)
class Rset(Command):
    verb: ClassVar[Verb] = Verb.RSET

    def to_bytes(self) -> bytes:
        return b"RSET\r\n"


@dataclass(frozen=True, slots=True)
class Noop(Command):
    verb: ClassVar[Verb] = Verb.NOOP

    def to_bytes(self) -> bytes:
        return b"NOOP\r\n"


@dataclass(frozen=True, slots=True)
class Quit(Command):
    verb: ClassVar[Verb] = Verb.QUIT

    def to_bytes(self) -> bytes:
        return b"QUIT\r\n"
