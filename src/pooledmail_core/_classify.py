"""Failure classification and retry decisions (docs/internals/design.md, "The ambiguity boundary").

Theory of operation
-------------------
Every failed send or acquire is reduced to one `Classification`: what kind of failure it was,
where it happened, whether the message was *definitely not accepted*, whether sending it again is
allowed by default, whether the session may go back to the pool, and whether the host should cool
down. Three inputs decide it, and nothing else:

1. the stage the failure happened in (`Stage`);
2. the server's reply, if there was one (`None` means a transport failure: disconnect, timeout,
   TLS alert, protocol violation);
3. whether the message terminator (`CRLF.CRLF`, or the `BDAT ... LAST` chunk) had already been
   handed to the transport, as reported by the protocol machine (`terminator_sent`).

The third input is the ambiguity boundary. Before the terminator leaves, the server cannot have
taken responsibility for the message (RFC 5321 §4.1.1.4: the transaction is only complete at the
end of the mail data), so any failure is *definitely not accepted* and safe to retry. After it has
left, a server may have queued the message and lost the connection before its reply reached us
(RFC 1047; RFC 5321 §4.5.3.2.6): without a final reply the outcome is *unknown*, and resending
may deliver twice. A 4xx or 5xx final reply settles it the other way: definitely not accepted.
This module is the only place that turns `terminator_sent` into `UNKNOWN_AFTER_DATA`.

`classify` first reduces its inputs to one `_Outcome` (what the server or the transport did),
then reads the answer from `_TABLE`, which holds one precomputed `Classification` for every
(stage, outcome) pair. The table is built from `_SETUP_ROWS` and `_TRANSACTION_ROWS` below, which
are the table of docs/guide/failures.md written as data.

`retry_delay` is the retry decision: pure, with time (`now`, `deadline`) and randomness (`rng`)
passed in.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

from ._entropy import RandomSource
from ._reply import Reply

__all__ = [
    "Classification",
    "FailureKind",
    "Stage",
    "classify",
    "classify_pool_failure",
    "retry_delay",
]


class FailureKind(enum.Enum):
    """What kind of failure a send or an acquire ended with."""

    POOL_EXHAUSTED = "pool_exhausted"
    HOSTS_UNAVAILABLE = "hosts_unavailable"
    CONNECT_FAILED = "connect_failed"
    TLS_FAILED = "tls_failed"
    AUTH_FAILED = "auth_failed"
    TRANSIENT = "transient"
    PERMANENT = "permanent"
    UNKNOWN_AFTER_DATA = "unknown_after_data"
    POOL_CLOSED = "pool_closed"
    # A host's message rate (local or fleet-wide) has no token for the send before its deadline.
    RATE_LIMITED = "rate_limited"
    # A shared budget's store is unreachable and the budget says on_store_failure="refuse".
    BUDGET_UNAVAILABLE = "budget_unavailable"


class Stage(enum.Enum):
    """Where in the life of a send a failure happened."""

    ACQUIRE = "acquire"
    CONNECT = "connect"
    GREETING = "greeting"
    TLS = "tls"
    EHLO = "ehlo"
    AUTH = "auth"
    MAIL = "mail"
    RCPT = "rcpt"
    DATA = "data"
    BODY = "body"
    DATA_END = "data_end"


# Don't subclass this.
@dataclass(frozen=True, slots=True)
class Classification:
    """The verdict on one failure.

    `retryable`: sending again (on this or another host) is allowed by default.
    `definitely_not_accepted`: the server cannot have taken the message; False only for
    `UNKNOWN_AFTER_DATA`. `keep_connection`: the session may return to the pool, provided the
    protocol machine also reports it in sync (after its own RSET). `cool_down_host`: the host
    failed to give us a usable session and should rest before the next connection attempt.
    """

    kind: FailureKind
    stage: Stage
    retryable: bool
    definitely_not_accepted: bool
    keep_connection: bool
    cool_down_host: bool


class _Outcome(enum.Enum):
    """What the server or the transport did, reduced to what classification needs."""

    LOCAL_REFUSAL = "local_refusal"  # refused by us before any byte (SIZE, SMTPUTF8, 8BITMIME, DSN)
    TRANSIENT_REPLY = "transient_reply"  # 4xx other than 421
    PERMANENT_REPLY = "permanent_reply"  # 5xx
    CLOSING_REPLY = "closing_reply"  # 421: the server closes the channel (RFC 5321 §3.8)
    BROKEN_BEFORE_TERMINATOR = "broken_before_terminator"  # no usable reply, terminator unsent
    BROKEN_AFTER_TERMINATOR = "broken_after_terminator"  # no usable reply, terminator sent


_SETUP_STAGES = (Stage.CONNECT, Stage.GREETING, Stage.TLS, Stage.EHLO, Stage.AUTH)
_TRANSACTION_STAGES = (Stage.MAIL, Stage.RCPT, Stage.DATA, Stage.BODY, Stage.DATA_END)

# Setup stages: no message byte has been sent, so everything is definitely not accepted, and the
# session is never kept (it never became usable). The host cools down because it failed to give
# us a session. Connect and TLS failures may well succeed elsewhere; AUTH failures are a
# credentials or policy problem that another attempt will not cure (docs/guide/failures.md).
# (kind, retryable)
_SETUP_ROWS: dict[Stage, tuple[FailureKind, bool]] = {
    Stage.CONNECT: (FailureKind.CONNECT_FAILED, True),
    Stage.GREETING: (FailureKind.CONNECT_FAILED, True),
    Stage.TLS: (FailureKind.TLS_FAILED, True),
    Stage.EHLO: (FailureKind.CONNECT_FAILED, True),
    Stage.AUTH: (FailureKind.AUTH_FAILED, False),
}

# Transaction stages: (kind, retryable, definitely_not_accepted, keep_connection).
# A 4xx/5xx other than 421 leaves the session usable once the protocol machine has sent RSET;
# a 421 or a broken transport leaves nothing to reuse. Only a broken transport after the
# terminator is ambiguous.
_TRANSACTION_ROWS: dict[_Outcome, tuple[FailureKind, bool, bool, bool]] = {
    _Outcome.LOCAL_REFUSAL: (FailureKind.PERMANENT, False, True, True),
    _Outcome.TRANSIENT_REPLY: (FailureKind.TRANSIENT, True, True, True),
    _Outcome.PERMANENT_REPLY: (FailureKind.PERMANENT, False, True, True),
    _Outcome.CLOSING_REPLY: (FailureKind.TRANSIENT, True, True, False),
    _Outcome.BROKEN_BEFORE_TERMINATOR: (FailureKind.TRANSIENT, True, True, False),
    _Outcome.BROKEN_AFTER_TERMINATOR: (FailureKind.UNKNOWN_AFTER_DATA, False, False, False),
}


# Failures the pool machine reports before any session exists (FailWaiter kinds).
_POOL_ROWS: dict[FailureKind, Classification] = {
    kind: Classification(kind, Stage.ACQUIRE, False, True, False, False)
    for kind in (
        FailureKind.POOL_EXHAUSTED,
        FailureKind.HOSTS_UNAVAILABLE,
        FailureKind.POOL_CLOSED,
        FailureKind.RATE_LIMITED,
        FailureKind.BUDGET_UNAVAILABLE,
    )
}
_TRANSPORT_OUTCOMES = frozenset(
    {_Outcome.BROKEN_BEFORE_TERMINATOR, _Outcome.BROKEN_AFTER_TERMINATOR}
)


def _build_table() -> dict[tuple[Stage, _Outcome], Classification]:
    table: dict[tuple[Stage, _Outcome], Classification] = {}
    for outcome in _Outcome:
        table[Stage.ACQUIRE, outcome] = _POOL_ROWS[FailureKind.POOL_EXHAUSTED]
        for stage in _SETUP_STAGES:
            kind, retryable = _SETUP_ROWS[stage]
            if stage is Stage.AUTH and outcome in _TRANSPORT_OUTCOMES:
                # Nobody judged the credentials: the connection broke during the AUTH exchange.
                # That is a failure to get a usable session, like one during EHLO.
                kind, retryable = FailureKind.CONNECT_FAILED, True
            table[stage, outcome] = Classification(kind, stage, retryable, True, False, True)
        for stage in _TRANSACTION_STAGES:
            kind, retryable, not_accepted, keep = _TRANSACTION_ROWS[outcome]
            table[stage, outcome] = Classification(
                kind, stage, retryable, not_accepted, keep, False
            )
    return table


_TABLE = _build_table()
_SETUP_KIND_STAGE: dict[FailureKind, Stage] = {
    FailureKind.CONNECT_FAILED: Stage.CONNECT,
    FailureKind.TLS_FAILED: Stage.TLS,
    FailureKind.AUTH_FAILED: Stage.AUTH,
}


def _outcome(reply: Reply | None, terminator_sent: bool, local_refusal: bool) -> _Outcome:
    if local_refusal:
        return _Outcome.LOCAL_REFUSAL
    if reply is not None:
        if reply.code == 421:
            return _Outcome.CLOSING_REPLY
        if reply.is_transient:
            return _Outcome.TRANSIENT_REPLY
        if reply.is_permanent:
            return _Outcome.PERMANENT_REPLY
    # No reply, or a 2xx/3xx where a failure was reported: the exchange broke without a
    # verdict from the server, which is a protocol failure like any other.
    if terminator_sent:
        return _Outcome.BROKEN_AFTER_TERMINATOR
    return _Outcome.BROKEN_BEFORE_TERMINATOR


def classify(
    stage: Stage,
    *,
    reply: Reply | None = None,
    terminator_sent: bool = False,
    local_refusal: bool = False,
) -> Classification:
    """Classify a failure at `stage` (docs/internals/design.md, "The ambiguity boundary").

    `reply` is the failing server reply; None (with `local_refusal` False) is a transport
    failure: disconnect, timeout or protocol error. `terminator_sent` is the protocol machine's
    `tx.terminator_sent` at the moment of failure. `local_refusal` means the core refused the
    message before producing a byte (SIZE, SMTPUTF8, 8BITMIME, DSN); it outranks `reply`. Never
    raises.
    """
    return _TABLE[stage, _outcome(reply, terminator_sent, local_refusal)]


def classify_pool_failure(kind: FailureKind) -> Classification:
    """Classify a failure the pool machine reported for a waiter (`FailWaiter.kind`).

    POOL_EXHAUSTED, HOSTS_UNAVAILABLE, POOL_CLOSED, RATE_LIMITED and BUDGET_UNAVAILABLE happen at
    ACQUIRE with no session: never retried by default (the send's deadline or the pool's life is
    over, or the limit that held the send back is still there). CONNECT_FAILED,
    TLS_FAILED and AUTH_FAILED are classified as a transport failure at CONNECT, TLS and AUTH;
    when the driver knows the exact setup stage and reply, `classify` gives a finer answer.
    Raises ValueError for the kinds that only a transaction produces.
    """
    row = _POOL_ROWS.get(kind)
    if row is not None:
        return row
    stage = _SETUP_KIND_STAGE.get(kind)
    if stage is None:
        raise ValueError(f"{kind.name} is not a pool failure; classify() the transaction instead")
    if stage is Stage.AUTH:
        # The pool only says AUTH failed; assume the server refused the credentials.
        return _TABLE[stage, _Outcome.PERMANENT_REPLY]
    return _TABLE[stage, _Outcome.BROKEN_BEFORE_TERMINATOR]


def retry_delay(
    classification: Classification,
    *,
    attempt: int,
    max_retries: int,
    base_delay: float,
    jitter: float,
    now: float,
    deadline: float | None,
    rng: RandomSource,
    retry_unknown: bool = False,
) -> float | None:
    """Seconds to wait before the next attempt, or None to stop retrying.

    `attempt` is the number of attempts made so far (1 after the first). A retry happens only
    for a retryable failure of a message that was definitely not accepted, or for
    UNKNOWN_AFTER_DATA when the caller opted in with `retry_unknown=True` (it may deliver the
    message twice); at most `max_retries` retries follow the first attempt. The delay is
    `base_delay * 2**(attempt - 1)`, scaled by a factor drawn uniformly from
    [1 - jitter, 1 + jitter) so that senders that failed together do not retry together. No
    retry is offered when the next attempt could not start before `deadline` (absolute, same
    clock as `now`). `rng` is consulted exactly once per retry offered, and never otherwise.
    Raises ValueError for an argument out of range.
    """
    if attempt < 1:
        raise ValueError("attempt counts attempts made so far and must be at least 1")
    if max_retries < 0:
        raise ValueError("max_retries must be at least 0")
    if not base_delay >= 0.0 or math.isinf(base_delay):
        raise ValueError("base_delay must be a finite number of seconds, at least 0")
    if not 0.0 <= jitter <= 1.0:
        raise ValueError("jitter must be a fraction in [0, 1]")

    if classification.kind is FailureKind.UNKNOWN_AFTER_DATA:
        eligible = retry_unknown
    else:
        eligible = classification.retryable and classification.definitely_not_accepted
    if not eligible or attempt > max_retries:
        return None

    # 2.0**1023 is the largest finite power of two; an exponent past that would raise
    # OverflowError, and a delay that large cannot be honoured anyway.
    exponent = attempt - 1
    if exponent > 1023:
        return None
    delay = base_delay * 2.0**exponent * (1.0 + jitter * (2.0 * rng.random() - 1.0))
    if math.isinf(delay) or (deadline is not None and now + delay >= deadline):
        return None
    return delay
