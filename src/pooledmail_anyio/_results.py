"""What a send ends with: `SendResult` on success, `SendFailed` otherwise."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from pooledmail_core import FailureKind, Reply, Stage

__all__ = ["SendFailed", "SendResult", "SendStatistics"]


# Don't subclass this.
@dataclass(frozen=True, slots=True)
class SendResult:
    """A message the server accepted (its final reply was 2xx) for at least one recipient.

    `refused` lists recipients the server refused with their replies; this transaction did not
    send the message to them (but an earlier attempt that ended UNKNOWN_AFTER_DATA, retried under
    `retry_unknown=True`, may have: the WARNING record says so). `reply` is the final reply after
    the message terminator. `message_id` is the message's Message-ID header (the one pooledmail
    added, if it had none), or None when raw bytes without one were sent.
    """

    host: str
    attempts: int
    accepted: tuple[str, ...]
    refused: tuple[tuple[str, Reply], ...]
    reply: Reply
    message_id: str | None = None


_setters = tuple(
    SendResult.__dict__[name].__set__
    for name in ("host", "attempts", "accepted", "refused", "reply", "message_id")
)


def accepted_result(
    host: str,
    attempts: int,
    accepted: tuple[str, ...],
    refused: tuple[tuple[str, Reply], ...],
    reply: Reply,
    message_id: str | None,
) -> SendResult:
    """`SendResult(...)` without the dataclass's __init__, whose six assignments go through
    object.__setattr__: one is built for every message sent."""
    result: SendResult = object.__new__(SendResult)
    set_host, set_attempts, set_accepted, set_refused, set_reply, set_message_id = _setters
    set_host(result, host)
    set_attempts(result, attempts)
    set_accepted(result, accepted)
    set_refused(result, refused)
    set_reply(result, reply)
    set_message_id(result, message_id)
    return result


class SendFailed(Exception):
    """A send that did not end with the server accepting the message.

    `kind` says what happened (see docs/guide/failures.md), `stage` where, `reason` why in one line,
    `definitely_not_accepted` whether the server is known not to have taken the message: it is
    False only for `FailureKind.UNKNOWN_AFTER_DATA`, where the message may have been delivered.
    `reply` is the server's reply when it gave one, `host` the server that had the last word,
    `attempts` how many attempts were made, `message_id` the message's Message-ID when known. The
    underlying error, if any, is the exception's `__cause__`; everything else survives pickling.
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
        reason: str = "",
        message_id: str | None = None,
    ) -> None:
        self.kind = kind
        self.stage = stage
        self.host = host
        self.attempts = attempts
        self.reply = reply
        self.definitely_not_accepted = definitely_not_accepted
        self.reason = reason or (f"server said {reply}" if reply is not None else kind.value)
        self.message_id = message_id
        where = f" at {host}" if host else ""
        super().__init__(
            f"{kind.name} during {stage.name}{where} after {attempts} attempt(s): {self.reason}"
        )

    def __reduce__(self) -> tuple[object, ...]:
        # Keyword-only fields: rebuild through a module-level function so that the exception
        # pickles (for process pools and task queues that carry failures across processes).
        fields = {
            "host": self.host,
            "attempts": self.attempts,
            "reply": self.reply,
            "definitely_not_accepted": self.definitely_not_accepted,
            "reason": self.reason,
            "message_id": self.message_id,
        }
        return (_rebuild_send_failed, (type(self), self.kind, self.stage, fields))


def _rebuild_send_failed(
    cls: type[SendFailed], kind: FailureKind, stage: Stage, fields: Mapping[str, object]
) -> SendFailed:
    return cls(kind, stage, **fields)  # type: ignore[arg-type]


# Don't subclass this.
@dataclass(frozen=True, slots=True)
class SendStatistics:
    """What the pool's sends have come to so far; a frozen snapshot.

    `accepted` counts sends that ended with a 2xx final reply; `failed` counts failed sends by
    `FailureKind` value ("transient", "unknown_after_data" …); `retries` counts attempts after the
    first; `cancelled_after_terminator` counts sends cancelled by their caller after the message
    terminator was handed to the server and before its final reply: those messages may have been
    delivered (each is logged at WARNING with its Message-ID and host); `stale_discarded` counts
    idle connections found closed or out of step before they were lent, which cost no send
    anything; `partly_refused` counts accepted sends (counted in `accepted` too) that the server
    refused for some of their recipients: the accepted transaction did not take it for those (each
    is logged at WARNING, and `SendResult.refused` lists them).
    """

    accepted: int
    failed: Mapping[str, int]
    retries: int
    cancelled_after_terminator: int
    stale_discarded: int
    partly_refused: int = 0
