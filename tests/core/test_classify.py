"""Failure classification: every row of DESIGN.md's "ambiguity boundary" table, and properties."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pooledmail_core._classify import (
    Classification,
    FailureKind,
    Stage,
    classify,
    classify_pool_failure,
)
from pooledmail_core._reply import Reply

SETUP_STAGES = [Stage.CONNECT, Stage.GREETING, Stage.TLS, Stage.EHLO, Stage.AUTH]
TRANSACTION_STAGES = [Stage.MAIL, Stage.RCPT, Stage.DATA, Stage.BODY, Stage.DATA_END]
# Where a server reply can end a transaction: the replies to MAIL, RCPT, DATA and the final reply.
REPLY_STAGES = [Stage.MAIL, Stage.RCPT, Stage.DATA, Stage.DATA_END]


def verdict(c: Classification) -> tuple[FailureKind, bool, bool, bool, bool]:
    return (c.kind, c.retryable, c.definitely_not_accepted, c.keep_connection, c.cool_down_host)


# --- row: acquire deadline passed -> POOL_EXHAUSTED, not retried ---------------------------------


def test_acquire_deadline_passed_is_pool_exhausted_never_retried() -> None:
    for c in (classify(Stage.ACQUIRE), classify_pool_failure(FailureKind.POOL_EXHAUSTED)):
        assert c.stage is Stage.ACQUIRE
        assert verdict(c) == (FailureKind.POOL_EXHAUSTED, False, True, False, False)


def test_acquire_stage_is_pool_exhausted_whatever_else_is_said() -> None:
    c = classify(Stage.ACQUIRE, reply=Reply(421), terminator_sent=True, local_refusal=True)
    assert c.kind is FailureKind.POOL_EXHAUSTED


# --- row: every eligible host cooling down or failing -> HOSTS_UNAVAILABLE, not retried ----------


def test_every_host_cooling_down_or_failing_is_hosts_unavailable_never_retried() -> None:
    c = classify_pool_failure(FailureKind.HOSTS_UNAVAILABLE)
    assert c.stage is Stage.ACQUIRE
    assert verdict(c) == (FailureKind.HOSTS_UNAVAILABLE, False, True, False, False)


# --- row: connect / greeting / TLS / AUTH failed -------------------------------------------------


@pytest.mark.parametrize("stage", [Stage.CONNECT, Stage.GREETING, Stage.EHLO])
@pytest.mark.parametrize("reply", [None, Reply(421), Reply(554), Reply(450), Reply(220)])
def test_connect_greeting_or_ehlo_failure_is_connect_failed_retried_discarded_host_cools_down(
    stage: Stage, reply: Reply | None
) -> None:
    c = classify(stage, reply=reply)
    assert c.stage is stage
    assert verdict(c) == (FailureKind.CONNECT_FAILED, True, True, False, True)


@pytest.mark.parametrize("reply", [None, Reply(454), Reply(501), Reply(421)])
def test_tls_failure_is_tls_failed_retried_discarded_host_cools_down(reply: Reply | None) -> None:
    c = classify(Stage.TLS, reply=reply)
    assert verdict(c) == (FailureKind.TLS_FAILED, True, True, False, True)


@pytest.mark.parametrize("code", [535, 534, 538, 454, 432, 504, 421])
def test_auth_refused_is_auth_failed_never_retried_discarded_host_cools_down(code: int) -> None:
    c = classify(Stage.AUTH, reply=Reply(code))
    assert verdict(c) == (FailureKind.AUTH_FAILED, False, True, False, True)


def test_auth_refused_locally_is_auth_failed() -> None:
    c = classify(Stage.AUTH, local_refusal=True)
    assert verdict(c) == (FailureKind.AUTH_FAILED, False, True, False, True)


def test_disconnect_during_auth_is_connect_failed_retried_host_cools_down() -> None:
    # Nobody judged the credentials; the server went away mid-exchange.
    c = classify(Stage.AUTH)
    assert c.stage is Stage.AUTH
    assert verdict(c) == (FailureKind.CONNECT_FAILED, True, True, False, True)


def test_setup_failure_is_never_kept_even_when_refused_locally() -> None:
    for stage in SETUP_STAGES:
        c = classify(stage, local_refusal=True)
        assert not c.keep_connection
        assert c.cool_down_host


@pytest.mark.parametrize(
    ("kind", "stage"),
    [
        (FailureKind.CONNECT_FAILED, Stage.CONNECT),
        (FailureKind.TLS_FAILED, Stage.TLS),
        (FailureKind.AUTH_FAILED, Stage.AUTH),
    ],
)
def test_pool_reported_setup_failures_classify_like_their_stage(
    kind: FailureKind, stage: Stage
) -> None:
    c = classify_pool_failure(kind)
    assert (c.kind, c.stage) == (kind, stage)
    assert c.cool_down_host
    assert not c.keep_connection
    assert c.retryable is (kind is not FailureKind.AUTH_FAILED)


# --- row: 4xx to MAIL / RCPT / DATA / final reply -> TRANSIENT, retried, kept -------------------


@pytest.mark.parametrize("stage", REPLY_STAGES)
@pytest.mark.parametrize("code", [450, 451, 452, 454, 499])
@pytest.mark.parametrize("terminator_sent", [False, True])
def test_4xx_to_mail_rcpt_data_or_final_reply_is_transient_retried_connection_kept(
    stage: Stage, code: int, terminator_sent: bool
) -> None:
    c = classify(
        stage, reply=Reply(code, ("try later",), (4, 7, 1)), terminator_sent=terminator_sent
    )
    assert c.stage is stage
    assert verdict(c) == (FailureKind.TRANSIENT, True, True, True, False)


# --- row: 5xx, or SIZE / SMTPUTF8 refused locally -> PERMANENT, not retried, kept -----------------


@pytest.mark.parametrize("stage", REPLY_STAGES)
@pytest.mark.parametrize("code", [500, 501, 550, 552, 554])
@pytest.mark.parametrize("terminator_sent", [False, True])
def test_5xx_to_mail_rcpt_data_or_final_reply_is_permanent_never_retried_connection_kept(
    stage: Stage, code: int, terminator_sent: bool
) -> None:
    c = classify(stage, reply=Reply(code), terminator_sent=terminator_sent)
    assert verdict(c) == (FailureKind.PERMANENT, False, True, True, False)


@pytest.mark.parametrize("stage", TRANSACTION_STAGES)
def test_size_or_smtputf8_refused_locally_is_permanent_definitely_not_accepted_kept(
    stage: Stage,
) -> None:
    c = classify(stage, local_refusal=True)
    assert verdict(c) == (FailureKind.PERMANENT, False, True, True, False)


# --- row: 421, disconnect, timeout or protocol error BEFORE the terminator ------------------------


@pytest.mark.parametrize("stage", TRANSACTION_STAGES)
def test_421_before_terminator_is_transient_retried_connection_discarded(stage: Stage) -> None:
    c = classify(stage, reply=Reply(421, ("closing",)))
    assert verdict(c) == (FailureKind.TRANSIENT, True, True, False, False)


@pytest.mark.parametrize("stage", TRANSACTION_STAGES)
def test_disconnect_timeout_or_protocol_error_before_terminator_is_transient_retried_discarded(
    stage: Stage,
) -> None:
    c = classify(stage, reply=None, terminator_sent=False)
    assert verdict(c) == (FailureKind.TRANSIENT, True, True, False, False)


# --- row: disconnect, timeout or protocol error AFTER the terminator, no final reply -------------


@pytest.mark.parametrize("stage", TRANSACTION_STAGES)
def test_disconnect_after_terminator_is_unknown_after_data_never_retried(stage: Stage) -> None:
    # With BDAT ... LAST pipelined behind MAIL, the terminator may leave while the stage is
    # still MAIL: the flag decides, not the stage.
    c = classify(stage, reply=None, terminator_sent=True)
    assert c.stage is stage
    assert verdict(c) == (FailureKind.UNKNOWN_AFTER_DATA, False, False, False, False)


def test_421_as_final_reply_after_terminator_is_transient_definitely_not_accepted() -> None:
    c = classify(Stage.DATA_END, reply=Reply(421), terminator_sent=True)
    assert verdict(c) == (FailureKind.TRANSIENT, True, True, False, False)


@pytest.mark.parametrize("code", [200, 250, 354, 334])
def test_non_failure_reply_reported_as_a_failure_counts_as_a_protocol_error(code: int) -> None:
    before = classify(Stage.DATA, reply=Reply(code))
    after = classify(Stage.DATA_END, reply=Reply(code), terminator_sent=True)
    assert before.kind is FailureKind.TRANSIENT
    assert not before.keep_connection
    assert after.kind is FailureKind.UNKNOWN_AFTER_DATA


# --- row: pool closed -> POOL_CLOSED, not retried ---------------------------------------------


def test_pool_closed_is_pool_closed_never_retried() -> None:
    c = classify_pool_failure(FailureKind.POOL_CLOSED)
    assert verdict(c) == (FailureKind.POOL_CLOSED, False, True, False, False)


# --- rows: rate limited, budget unavailable -> at ACQUIRE, not retried ----------------------


@pytest.mark.parametrize("kind", [FailureKind.RATE_LIMITED, FailureKind.BUDGET_UNAVAILABLE])
def test_rate_and_budget_failures_happen_at_acquire_and_are_not_retried(kind: FailureKind) -> None:
    c = classify_pool_failure(kind)
    assert c.stage is Stage.ACQUIRE
    assert verdict(c) == (kind, False, True, False, False)


@pytest.mark.parametrize(
    "kind", [FailureKind.TRANSIENT, FailureKind.PERMANENT, FailureKind.UNKNOWN_AFTER_DATA]
)
def test_transaction_kinds_are_not_pool_failures(kind: FailureKind) -> None:
    with pytest.raises(ValueError, match=kind.name):
        classify_pool_failure(kind)


# --- the Classification event ----------------------------------------------------------------


def test_classification_is_frozen_and_slotted() -> None:
    c = classify(Stage.MAIL, reply=Reply(451))
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.retryable = False  # type: ignore[misc]
    assert not hasattr(c, "__dict__")


def test_classification_repr_names_no_reply_text() -> None:
    c = classify(Stage.DATA_END, reply=Reply(554, ("rejected: contains secret-token-123",)))
    assert "secret-token-123" not in repr(c)


# --- properties over every input -----------------------------------------------------------------

replies = st.one_of(st.none(), st.builds(Reply, st.integers(200, 599)))


@settings(max_examples=500)
@given(st.sampled_from(Stage), replies, st.booleans(), st.booleans())
def test_classification_is_total_and_consistent(
    stage: Stage, reply: Reply | None, terminator_sent: bool, local_refusal: bool
) -> None:
    c = classify(stage, reply=reply, terminator_sent=terminator_sent, local_refusal=local_refusal)
    assert c.stage is stage
    # Only the ambiguity boundary leaves the outcome open.
    assert c.definitely_not_accepted is (c.kind is not FailureKind.UNKNOWN_AFTER_DATA)
    # Anything retryable by default was definitely not accepted.
    assert not c.retryable or c.definitely_not_accepted
    is_failure_reply = reply is not None and reply.code >= 400
    if c.kind is FailureKind.UNKNOWN_AFTER_DATA:
        assert stage in TRANSACTION_STAGES
        assert terminator_sent
        assert not local_refusal
        assert not is_failure_reply
    # A session is only kept after a definite refusal that left it in sync.
    if c.keep_connection:
        assert stage in TRANSACTION_STAGES
        assert local_refusal or (is_failure_reply and reply is not None and reply.code != 421)
    # Only a failure to get a usable session cools the host down.
    assert c.cool_down_host is (stage in SETUP_STAGES)
    if stage in TRANSACTION_STAGES:
        assert c.kind in {
            FailureKind.TRANSIENT,
            FailureKind.PERMANENT,
            FailureKind.UNKNOWN_AFTER_DATA,
        }
        assert c.retryable is (c.kind is FailureKind.TRANSIENT)
    # A 421 closes the session; only a local refusal (which outranks any reply) keeps it.
    if reply is not None and reply.code == 421 and not local_refusal:
        assert not c.keep_connection


def test_every_stage_code_and_flag_combination_classifies() -> None:
    codes: list[Reply | None] = [None, *(Reply(code) for code in range(200, 600))]
    seen = set()
    for stage in Stage:
        for reply in codes:
            for terminator_sent in (False, True):
                for local_refusal in (False, True):
                    c = classify(
                        stage,
                        reply=reply,
                        terminator_sent=terminator_sent,
                        local_refusal=local_refusal,
                    )
                    seen.add(c.kind)
    assert seen == set(FailureKind) - {
        FailureKind.HOSTS_UNAVAILABLE,
        FailureKind.POOL_CLOSED,
        FailureKind.RATE_LIMITED,
        FailureKind.BUDGET_UNAVAILABLE,
    }
