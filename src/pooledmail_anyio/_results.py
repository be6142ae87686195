"""What a send ends with: `SendResult` on success, `SendFailed` otherwise."""

from __future__ import annotations

import functools
from dataclasses import dataclass

from pooledmail_core._classify import FailureKind, Stage
from pooledmail_core._reply import Reply

__all__ = ["SendFailed", "SendResult"]


# Don't subclass this.
@dataclass(frozen=True, slots=True)
class SendResult:
    """A message the server accepted (its final reply was 2xx) for at least one recipient.

    `refused` lists recipients the server refused with their replies; the message was not sent to
    them. `reply` is the final reply after the message terminator.
    """

    host: str
    attempts: int
    accepted: tuple[str, ...]
    refused: tuple[tuple[str, Reply], ...]
    reply: Reply


class SendFailed(Exception):
    """A send that did not end with the server accepting the message.

    `kind` says what happened (see docs/failures.md), `stage` where, `definitely_not_accepted`
    whether the server is known not to have taken the message: it is False only for
    `FailureKind.UNKNOWN_AFTER_DATA`, where the message may have been delivered. The underlying
    error, if any, is the exception's `__cause__`.
    """

    def __init__(
        self,
        kind: FailureKind,
        stage: Stage,
        *,
        host: str | None,
        attempts: int,
        reply: Reply | None,
        definitely_not_accepted: bool,
    ) -> None:
        self.kind = kind
        self.stage = stage
        self.host = host
        self.attempts = attempts
        self.reply = reply
        self.definitely_not_accepted = definitely_not_accepted
        where = f" at {host}" if host else ""
        said = f": server said {reply}" if reply is not None else ""
        super().__init__(
            f"{kind.name} during {stage.name}{where} after {attempts} attempt(s){said}"
        )

    def __reduce__(self) -> tuple[object, ...]:
        # Keyword-only fields: rebuild through a partial so that the exception pickles (for
        # process pools and task queues that carry failures across processes).
        rebuild = functools.partial(
            SendFailed,
            host=self.host,
            attempts=self.attempts,
            reply=self.reply,
            definitely_not_accepted=self.definitely_not_accepted,
        )
        return (rebuild, (self.kind, self.stage))
