"""The retry decision: `retry_delay`."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pooledmail_core._classify import (
    Classification,
    FailureKind,
    Stage,
    classify,
    classify_pool_failure,
    retry_delay,
)
from pooledmail_core._reply import Reply

TRANSIENT = classify(Stage.RCPT, reply=Reply(451))
PERMANENT = classify(Stage.RCPT, reply=Reply(550))
UNKNOWN = classify(Stage.DATA_END, terminator_sent=True)
AUTH = classify(Stage.AUTH, reply=Reply(535))


class FixedRandom:
    """A RandomSource that always returns the same value and counts the calls."""

    def __init__(self, value: float) -> None:
        self.value = value
        self.calls = 0

    def random(self) -> float:
        self.calls += 1
        return self.value


def delay(
    c: Classification,
    attempt: int = 1,
    *,
    max_retries: int = 3,
    base_delay: float = 1.0,
    jitter: float = 0.0,
    now: float = 100.0,
    deadline: float | None = None,
    rng: FixedRandom | None = None,
    retry_unknown: bool = False,
) -> float | None:
    return retry_delay(
        c,
        attempt=attempt,
        max_retries=max_retries,
        base_delay=base_delay,
        jitter=jitter,
        now=now,
        deadline=deadline,
        rng=rng or FixedRandom(0.5),
        retry_unknown=retry_unknown,
    )


def test_transient_failure_is_retried_after_the_base_delay() -> None:
    assert delay(TRANSIENT, 1) == 1.0


def test_delay_doubles_with_each_attempt() -> None:
    assert [delay(TRANSIENT, n, max_retries=5, base_delay=0.5) for n in (1, 2, 3, 4)] == [
        0.5,
        1.0,
        2.0,
        4.0,
    ]


def test_at_most_max_retries_follow_the_first_attempt() -> None:
    assert delay(TRANSIENT, 2, max_retries=2) is not None
    assert delay(TRANSIENT, 3, max_retries=2) is None


def test_max_retries_zero_never_retries() -> None:
    assert delay(TRANSIENT, 1, max_retries=0) is None


def test_permanent_failure_is_never_retried() -> None:
    assert delay(PERMANENT, 1) is None


def test_auth_failure_is_never_retried() -> None:
    assert delay(AUTH, 1) is None


@pytest.mark.parametrize(
    "kind", [FailureKind.POOL_EXHAUSTED, FailureKind.HOSTS_UNAVAILABLE, FailureKind.POOL_CLOSED]
)
def test_pool_failures_are_never_retried(kind: FailureKind) -> None:
    assert delay(classify_pool_failure(kind), 1) is None


def test_connect_and_tls_failures_are_retried() -> None:
    assert delay(classify(Stage.CONNECT), 1) == 1.0
    assert delay(classify(Stage.TLS), 1) == 1.0


def test_unknown_after_data_is_never_retried_without_opt_in() -> None:
    assert delay(UNKNOWN, 1, max_retries=10) is None


def test_unknown_after_data_is_retried_with_explicit_opt_in() -> None:
    assert delay(UNKNOWN, 1, retry_unknown=True) == 1.0


def test_opt_in_does_not_make_permanent_failures_retryable() -> None:
    assert delay(PERMANENT, 1, retry_unknown=True) is None


def test_jitter_spreads_the_delay_both_ways() -> None:
    assert delay(TRANSIENT, 1, base_delay=10.0, jitter=0.2, rng=FixedRandom(0.0)) == 8.0
    assert delay(TRANSIENT, 1, base_delay=10.0, jitter=0.2, rng=FixedRandom(0.5)) == 10.0
    assert delay(TRANSIENT, 1, base_delay=10.0, jitter=0.2, rng=FixedRandom(0.75)) == 11.0


def test_no_retry_that_would_start_at_or_after_the_deadline() -> None:
    assert delay(TRANSIENT, 1, now=100.0, deadline=101.5) == 1.0
    assert delay(TRANSIENT, 1, now=100.0, deadline=101.0) is None
    assert delay(TRANSIENT, 1, now=100.0, deadline=100.5) is None


def test_randomness_is_drawn_once_per_retry_offered_and_never_otherwise() -> None:
    rng = FixedRandom(0.3)
    delay(PERMANENT, 1, rng=rng)
    delay(TRANSIENT, 5, max_retries=2, rng=rng)
    assert rng.calls == 0
    delay(TRANSIENT, 1, jitter=0.1, rng=rng)
    assert rng.calls == 1


def test_an_attempt_too_late_to_compute_is_not_retried() -> None:
    assert delay(TRANSIENT, 5000, max_retries=10_000) is None
    assert delay(TRANSIENT, 1025, max_retries=10_000, base_delay=1e-300) is None


def test_a_delay_too_large_for_a_float_is_not_retried() -> None:
    assert delay(TRANSIENT, 2, base_delay=1e308) is None


@pytest.mark.parametrize(
    ("argument", "value", "message"),
    [
        ("attempt", 0, "attempt"),
        ("max_retries", -1, "max_retries"),
        ("base_delay", -1.0, "base_delay"),
        ("base_delay", math.nan, "base_delay"),
        ("base_delay", math.inf, "base_delay"),
        ("jitter", -0.1, "jitter"),
        ("jitter", 1.5, "jitter"),
        ("jitter", math.nan, "jitter"),
    ],
)
def test_arguments_out_of_range_are_refused(argument: str, value: float, message: str) -> None:
    arguments: dict[str, float] = {
        "attempt": 1,
        "max_retries": 1,
        "base_delay": 1.0,
        "jitter": 0.2,
    }
    arguments[argument] = value
    with pytest.raises(ValueError, match=message):
        retry_delay(
            TRANSIENT,
            attempt=int(arguments["attempt"]),
            max_retries=int(arguments["max_retries"]),
            base_delay=arguments["base_delay"],
            jitter=arguments["jitter"],
            now=0.0,
            deadline=None,
            rng=random.Random(1),
        )


# --- properties ----------------------------------------------------------------------------------

classifications = st.builds(
    lambda stage, code, terminator_sent, local_refusal: classify(
        stage,
        reply=None if code is None else Reply(code),
        terminator_sent=terminator_sent,
        local_refusal=local_refusal,
    ),
    st.sampled_from(Stage),
    st.one_of(st.none(), st.integers(200, 599)),
    st.booleans(),
    st.booleans(),
) | st.sampled_from(
    [classify_pool_failure(k) for k in (FailureKind.HOSTS_UNAVAILABLE, FailureKind.POOL_CLOSED)]
)


@settings(max_examples=500)
@given(
    c=classifications,
    attempt=st.integers(1, 12),
    max_retries=st.integers(0, 10),
    base_delay=st.floats(0.0, 60.0),
    jitter=st.floats(0.0, 1.0),
    now=st.floats(0.0, 1e6),
    budget=st.one_of(st.none(), st.floats(0.0, 1e5)),
    draw=st.floats(0.0, 1.0, exclude_max=True),
    retry_unknown=st.booleans(),
)
def test_retry_decision_properties(
    c: Classification,
    attempt: int,
    max_retries: int,
    base_delay: float,
    jitter: float,
    now: float,
    budget: float | None,
    draw: float,
    retry_unknown: bool,
) -> None:
    deadline = None if budget is None else now + budget
    result = retry_delay(
        c,
        attempt=attempt,
        max_retries=max_retries,
        base_delay=base_delay,
        jitter=jitter,
        now=now,
        deadline=deadline,
        rng=FixedRandom(draw),
        retry_unknown=retry_unknown,
    )
    # Offered exactly when it should be: an eligible failure, retries left, and a delay (the
    # nominal one scaled by the drawn jitter factor) that ends before the deadline.
    eligible = (
        retry_unknown
        if c.kind is FailureKind.UNKNOWN_AFTER_DATA
        else c.retryable and c.definitely_not_accepted
    )
    drawn = base_delay * 2.0 ** (attempt - 1) * (1.0 + jitter * (2.0 * draw - 1.0))
    expected = eligible and attempt <= max_retries and (deadline is None or now + drawn < deadline)
    assert (result is not None) is expected
    if result is None:
        return
    assert result == drawn
    # Never a permanent failure, never an unknown outcome without the opt-in.
    assert c.kind is not FailureKind.PERMANENT
    assert c.kind is not FailureKind.UNKNOWN_AFTER_DATA or retry_unknown
    assert c.definitely_not_accepted or retry_unknown
    assert c.retryable or c.kind is FailureKind.UNKNOWN_AFTER_DATA
    # Bounded by max_retries.
    assert attempt <= max_retries
    # Never past the deadline.
    assert deadline is None or now + result < deadline
    # Within the jitter bounds around the exponential delay.
    nominal = base_delay * 2.0 ** (attempt - 1)
    assert nominal * (1 - jitter) - 1e-9 <= result <= nominal * (1 + jitter) + 1e-9
    assert result >= 0.0


@settings(max_examples=200)
@given(attempt=st.integers(1, 50), max_retries=st.integers(0, 50), seed=st.integers(0, 2**32))
def test_never_retries_permanent_or_unknown_by_default(
    attempt: int, max_retries: int, seed: int
) -> None:
    for c in (PERMANENT, UNKNOWN, AUTH, classify(Stage.BODY, terminator_sent=True)):
        assert (
            retry_delay(
                c,
                attempt=attempt,
                max_retries=max_retries,
                base_delay=1.0,
                jitter=0.5,
                now=0.0,
                deadline=None,
                rng=random.Random(seed),
            )
            is None
        )
