"""Per-host message rates in the pool machine, in virtual time (the core takes `now`)."""

from __future__ import annotations

import random
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from pooledmail_core._classify import FailureKind
from pooledmail_core._config import Host, PoolConfig
from pooledmail_core._pool import FailWaiter, GrantSlot, OpenConnection, PoolMachine
from pooledmail_core._ratelimit import Gcra


def machine(hosts: list[Host], **options: Any) -> PoolMachine:
    options.setdefault("cooldown_jitter", 0.0)
    options.setdefault("keepalive_interval", None)
    return PoolMachine(PoolConfig(hosts, **options), random.Random(0))


def idle_connection(m: PoolMachine, now: float = 0.0) -> int:
    """Open one connection through an acquire, send one message on it, and leave it idle."""
    _, actions = m.acquire(now, now + 30.0)
    (open_,) = actions
    assert isinstance(open_, OpenConnection)
    (grant,) = m.connected(open_.slot, now)
    assert isinstance(grant, GrantSlot)
    assert m.release(open_.slot, now, healthy=True, messages=1) == []
    return open_.slot


# ----------------------------------------------------------------------------------- GCRA


def test_gcra_gives_the_burst_at_once_then_one_token_per_interval() -> None:
    bucket = Gcra(rate=4.0, burst=3)
    taken = 0
    while bucket.conforms(0.0):
        bucket.take(0.0)
        taken += 1
    assert taken == 3
    assert bucket.ready_at() == 0.25
    assert not bucket.conforms(0.2499)
    assert bucket.conforms(bucket.ready_at())


def test_a_timer_set_at_ready_at_always_finds_the_token_there() -> None:
    # The float the pool asks its timer for is the float conforms() compares with.
    bucket = Gcra(rate=3.0, burst=1)
    now = 0.1
    for _ in range(1000):
        assert bucket.conforms(now)
        bucket.take(now)
        now = bucket.ready_at()


@settings(max_examples=300)
@given(
    rate=st.floats(0.1, 100.0),
    burst=st.integers(1, 5),
    takes=st.lists(st.floats(0.0, 3.0), max_size=10),
    horizon=st.floats(0.0, 5.0),
)
def test_count_before_never_undercounts_what_taking_greedily_gets(
    rate: float, burst: int, takes: list[float], horizon: float
) -> None:
    bucket = Gcra(rate, burst)
    now = 0.0
    for gap in takes:
        now += gap
        if bucket.conforms(now):
            bucket.take(now)
    deadline = now + horizon
    predicted = bucket.count_before(now, deadline)
    # Take every token as soon as it comes, strictly before the deadline.
    greedy = 0
    at = now
    while True:
        at = max(at, bucket.ready_at())
        if at >= deadline:
            break
        bucket.take(at)
        greedy += 1
    assert greedy <= predicted <= greedy + 1


# ------------------------------------------------------------------------ the pool machine


def test_a_send_past_the_rate_waits_for_its_token_holding_no_connection() -> None:
    host = Host("a.example", 25, max_messages_per_second=2.0)
    m = machine([host])
    slot = idle_connection(m)  # took the only token of the burst at 0.0
    waiter, actions = m.acquire(0.1, 10.0)
    assert actions == []
    stats = m.statistics()
    assert (stats.idle, stats.leased, stats.waiting) == (1, 0, 1)
    # The token comes half a second after the first: that is the timer the driver sets.
    assert m.next_deadline() == 0.5
    assert m.handle_timer(0.5) == [GrantSlot(slot, waiter)]


def test_waiters_get_their_tokens_first_come_first_served() -> None:
    host = Host("a.example", 25, max_messages_per_second=1.0)
    m = machine([host])
    slot = idle_connection(m)
    first, _ = m.acquire(0.0, 10.0)
    second, _ = m.acquire(0.0, 10.0)
    assert m.next_deadline() == 1.0
    actions = m.handle_timer(1.0)
    assert [a for a in actions if isinstance(a, GrantSlot)] == [GrantSlot(slot, first)]
    # The only connection is in use: one more warms up for the next token.
    (open_,) = [a for a in actions if isinstance(a, OpenConnection)]
    assert m.connected(open_.slot, 1.5) == []
    assert m.next_deadline() == 2.0
    assert m.handle_timer(2.0) == [GrantSlot(open_.slot, second)]


def test_a_waiter_whose_token_cannot_come_in_time_fails_at_once_rate_limited() -> None:
    host = Host("a.example", 25, max_messages_per_second=1.0)
    m = machine([host])
    idle_connection(m)
    # The next token comes at 1.0; this sender would give up at 0.5.
    waiter, actions = m.acquire(0.0, 0.5)
    assert actions == [FailWaiter(waiter, FailureKind.RATE_LIMITED)]
    # With two senders ahead of it, a third's token comes at 3.0 at the earliest.
    m.acquire(0.0, 10.0)
    m.acquire(0.0, 10.0)
    third, actions = m.acquire(0.0, 2.5)
    assert actions == [FailWaiter(third, FailureKind.RATE_LIMITED)]
    assert m.statistics().waiting == 2


def test_a_waiter_expiring_beside_an_idle_connection_without_token_is_rate_limited() -> None:
    # One host without any rate (so no failure at once), down; one rate-limited host up.
    limited = Host("a.example", 25, max_messages_per_second=0.5)
    free = Host("b.example", 25, priority=1)
    m = machine([limited, free], max_size=1)
    idle_connection(m)
    waiter, _ = m.acquire(0.0, 1.0)
    assert m.handle_timer(1.0) == [FailWaiter(waiter, FailureKind.RATE_LIMITED)]


def test_a_rate_limited_pool_opens_connections_only_for_tokens_it_has() -> None:
    host = Host("a.example", 25, max_messages_per_second=1.0, burst=2)
    m = machine([host], max_size=8)
    opened = []
    for _ in range(6):
        _, actions = m.acquire(0.0, 60.0)
        opened += [a for a in actions if isinstance(a, OpenConnection)]
    # Two tokens now and one connection warming up for the next: not max_size.
    assert len(opened) == 3


def test_a_pool_without_rates_has_no_admission_at_all() -> None:
    m = machine([Host("a.example", 25)])
    assert m._admission is None
