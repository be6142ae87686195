from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pooledmail_core._cooldown import Cooldown, CooldownPolicy


class Fixed:
    """A random source that always returns one value."""

    def __init__(self, value: float) -> None:
        self.value = value

    def random(self) -> float:
        return self.value


def test_delay_doubles_from_the_base_without_jitter() -> None:
    policy = CooldownPolicy(base=30.0, cap=300.0, jitter=0.0)
    assert [policy.delay(n, 0.9) for n in range(1, 6)] == [30.0, 60.0, 120.0, 240.0, 300.0]


def test_delay_is_zero_before_any_failure() -> None:
    assert CooldownPolicy(base=30.0, cap=300.0, jitter=0.2).delay(0, 0.5) == 0.0


def test_jitter_spans_plus_and_minus_the_fraction() -> None:
    policy = CooldownPolicy(base=100.0, cap=1000.0, jitter=0.2)
    assert policy.delay(1, 0.0) == pytest.approx(80.0)
    assert policy.delay(1, 0.5) == pytest.approx(100.0)
    assert policy.delay(1, 0.999999) == pytest.approx(120.0, rel=1e-5)


def test_cap_holds_after_the_jitter_too() -> None:
    policy = CooldownPolicy(base=30.0, cap=300.0, jitter=0.5)
    assert policy.delay(20, 0.999) == 300.0


def test_a_host_failing_for_days_does_not_overflow() -> None:
    policy = CooldownPolicy(base=1.0, cap=60.0, jitter=0.0)
    assert policy.delay(100_000, 0.5) == 60.0


@settings(max_examples=500)
@given(
    base=st.floats(0.01, 100.0),
    factor=st.floats(1.0, 50.0),
    jitter=st.floats(0.0, 1.0),
    failures=st.integers(1, 40),
    uniform=st.floats(0.0, 1.0, exclude_max=True),
)
def test_delay_stays_inside_the_jitter_band_and_under_the_cap(
    base: float, factor: float, jitter: float, failures: int, uniform: float
) -> None:
    cap = base * factor
    policy = CooldownPolicy(base=base, cap=cap, jitter=jitter)
    delay = policy.delay(failures, uniform)
    nominal = min(base * 2.0 ** (failures - 1), cap)
    assert 0.0 <= delay <= cap
    assert nominal * (1 - jitter) - 1e-9 * nominal <= delay <= nominal * (1 + jitter) + 1e-9 * cap


@settings(max_examples=300)
@given(
    base=st.floats(0.01, 100.0),
    failures=st.integers(1, 30),
    uniform=st.floats(0.0, 1.0, exclude_max=True),
)
def test_without_jitter_the_delay_never_shrinks_as_failures_grow(
    base: float, failures: int, uniform: float
) -> None:
    policy = CooldownPolicy(base=base, cap=base * 16, jitter=0.0)
    assert policy.delay(failures + 1, uniform) >= policy.delay(failures, uniform)


def test_failure_starts_a_cooldown_and_success_resets_it() -> None:
    policy = CooldownPolicy(base=10.0, cap=100.0, jitter=0.0)
    cooldown = Cooldown()
    assert not cooldown.is_cooling(0.0)
    assert cooldown.record_failure(5.0, policy, Fixed(0.5))
    assert cooldown.until == 15.0
    assert cooldown.is_cooling(14.9)
    assert not cooldown.is_cooling(15.0)
    assert cooldown.on_probation(15.0)
    assert cooldown.record_failure(15.0, policy, Fixed(0.5))
    assert (cooldown.consecutive_failures, cooldown.until) == (2, 35.0)
    cooldown.record_success()
    assert cooldown.consecutive_failures == 0
    assert cooldown.until is None
    assert not cooldown.on_probation(40.0)
    assert "consecutive_failures=0" in repr(cooldown)


def test_failures_while_already_cooling_do_not_count_again() -> None:
    # Eight parallel connects failing in one outage are one failure, not eight.
    policy = CooldownPolicy(base=10.0, cap=1000.0, jitter=0.0)
    cooldown = Cooldown()
    assert cooldown.record_failure(0.0, policy, Fixed(0.5))
    for t in range(1, 8):
        assert not cooldown.record_failure(float(t), policy, Fixed(0.5))
    assert (cooldown.consecutive_failures, cooldown.until) == (1, 10.0)


def test_jitter_comes_only_from_the_injected_source() -> None:
    policy = CooldownPolicy(base=30.0, cap=300.0, jitter=0.2)
    first, second = Cooldown(), Cooldown()
    first.record_failure(0.0, policy, random.Random(7))
    second.record_failure(0.0, policy, random.Random(7))
    assert first.until == second.until
