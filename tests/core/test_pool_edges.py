"""Pool machine edges: a background trial's AUTH failure, an idle slot waiting for a token, and
timer deadlines that are exactly float sums."""

from __future__ import annotations

import random

from pooledmail_core._classify import FailureKind
from pooledmail_core._config import Host, PoolConfig
from pooledmail_core._pool import (
    FailWaiter,
    GrantSlot,
    OpenConnection,
    PoolMachine,
)

A = Host("a.example", 25)
BACKUP = Host("backup.example", 25, priority=1)


def test_auth_failure_of_a_background_trial_fails_no_waiter() -> None:
    # "The trial covers no waiter": a waiter served by the backup must not fail because the
    # primary's background trial was refused at AUTH.
    m = PoolMachine(
        PoolConfig(
            [A, BACKUP],
            max_size=3,
            cooldown_jitter=0.0,
            reconnect_cooldown=10.0,
            max_reconnect_cooldown=100.0,
            keepalive_interval=None,
        ),
        random.Random(0),
    )
    w0, actions = m.acquire(0.0, 30.0)
    assert actions == [OpenConnection(0, A)]
    assert m.connect_failed(0, 0.0, FailureKind.CONNECT_FAILED) == [OpenConnection(1, BACKUP)]
    assert m.connected(1, 0.0) == [GrantSlot(1, w0)]
    assert m.release(1, 1.0, healthy=True) == []
    # A's cooldown ends: background trial.
    assert m.handle_timer(10.0) == [OpenConnection(2, A)]
    w1, actions = m.acquire(10.0, 40.0)
    assert actions == [GrantSlot(1, w1)]
    w2, actions = m.acquire(10.0, 40.0)
    assert actions == [OpenConnection(3, BACKUP)]  # w2's own connection to the backup
    actions = m.connect_failed(2, 11.0, FailureKind.AUTH_FAILED, "535 bad credentials")
    assert not any(isinstance(a, FailWaiter) for a in actions), actions
    assert m.connected(3, 11.5) == [GrantSlot(3, w2)]


def test_rate_limited_idle_slot_still_serves_a_waiter_while_its_host_cools_down() -> None:
    # An idle connection only waiting for its host's next token (1 s away) can serve the waiter
    # before its deadline (5 s); a parallel connect failing must not fail the waiter at once.
    host = Host("a.example", 25, max_messages_per_second=1.0)
    m = PoolMachine(
        PoolConfig(
            [host],
            max_size=2,
            cooldown_jitter=0.0,
            reconnect_cooldown=10.0,
            keepalive_interval=None,
        ),
        random.Random(0),
    )
    w0, actions = m.acquire(0.0, 30.0)
    assert actions == [OpenConnection(0, host)]
    assert m.connected(0, 0.0) == [GrantSlot(0, w0)]  # takes the token: next at 1.0
    w1, actions = m.acquire(0.0, 5.0)
    assert actions == [OpenConnection(1, host)]
    assert m.release(0, 0.1, healthy=True, messages=1) == []  # idle, waits for the token
    actions = m.connect_failed(1, 0.2, FailureKind.CONNECT_FAILED, "refused")
    assert actions == [], actions
    assert m.next_deadline() == 1.0
    assert m.handle_timer(1.0) == [GrantSlot(0, w1)]


def test_handle_timer_at_the_idle_deadline_retires_the_slot() -> None:
    # 0.7 + 0.1 == 0.7999999999999999 and 0.7999999999999999 - 0.7 < 0.1: the deadline the
    # pool reports must be the time at which it retires the slot, or the driver's timer loop
    # spins at that instant (on a frozen test clock, forever, without a checkpoint).
    m = PoolMachine(PoolConfig([A], idle_timeout=0.1, keepalive_interval=None), random.Random(0))
    w, _ = m.acquire(0.0, 30.0)
    assert m.connected(0, 0.0) == [GrantSlot(0, w)]
    assert m.release(0, 0.7, healthy=True) == []
    deadline = m.next_deadline()
    assert deadline is not None
    actions = m.handle_timer(deadline)
    assert [type(a).__name__ for a in actions] == ["CloseSlot"], actions
    after = m.next_deadline()
    assert after is None or after > deadline


def test_handle_timer_at_the_age_deadline_retires_the_slot() -> None:
    m = PoolMachine(
        PoolConfig([A], max_connection_age=0.1, idle_timeout=None, keepalive_interval=None),
        random.Random(0),
    )
    w, _ = m.acquire(0.7, 30.0)
    assert m.connected(0, 0.7) == [GrantSlot(0, w)]
    assert m.release(0, 0.7, healthy=True) == []
    deadline = m.next_deadline()
    assert deadline is not None
    actions = m.handle_timer(deadline)
    assert [type(a).__name__ for a in actions] == ["CloseSlot"], actions
