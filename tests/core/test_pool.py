from __future__ import annotations

import math
import random
from typing import Any

import pytest

from pooledmail_core._classify import FailureKind
from pooledmail_core._config import Host, PoolConfig
from pooledmail_core._errors import LocalProtocolError
from pooledmail_core._pool import (
    CloseSlot,
    FailWaiter,
    GrantSlot,
    OpenConnection,
    PoolMachine,
    ProbeSlot,
    SlotState,
)

A = Host("a.example", 25)
B = Host("b.example", 25)
BACKUP = Host("backup.example", 25, priority=1)
SECRET = "hunter2-secret"


def machine(hosts: list[Host] | None = None, **options: Any) -> PoolMachine:
    options.setdefault("cooldown_jitter", 0.0)
    options.setdefault("reconnect_cooldown", 10.0)
    options.setdefault("max_reconnect_cooldown", 100.0)
    return PoolMachine(PoolConfig(hosts or [A], **options), random.Random(0))


def leased_slot(m: PoolMachine, now: float = 0.0) -> int:
    """Acquire a fresh connection and return the slot, leased."""
    _, actions = m.acquire(now, now + 30)
    (open_,) = actions
    assert isinstance(open_, OpenConnection)
    (grant,) = m.connected(open_.slot, now)
    assert isinstance(grant, GrantSlot)
    return open_.slot


def prove(m: PoolMachine, now: float = 0.0) -> None:
    """Give the first host one working session (slot 0) and close it: from then on the pool
    waits for that host to recover instead of failing its waiters at once."""
    slot = leased_slot(m, now)
    m.release(slot, now, healthy=False)
    m.slot_closed(slot, now)


def idle_slot(m: PoolMachine, now: float = 0.0) -> int:
    slot = leased_slot(m, now)
    assert m.release(slot, now, healthy=True) == []
    return slot


# ----------------------------------------------------------------------------- acquire/grant


def test_first_acquire_opens_a_connection_and_grants_it_when_connected() -> None:
    m = machine()
    waiter, actions = m.acquire(0.0, 15.0)
    assert actions == [OpenConnection(0, A)]
    assert m.slot_state(0) is SlotState.CONNECTING
    assert m.slot_host(0) == A
    assert m.connected(0, 1.0) == [GrantSlot(0, waiter)]
    assert m.slot_state(0) is SlotState.LEASED


def test_idle_slot_is_granted_immediately() -> None:
    m = machine()
    slot = idle_slot(m)
    waiter, actions = m.acquire(1.0, 16.0)
    assert actions == [GrantSlot(slot, waiter)]


def test_most_recently_used_idle_slot_is_granted_first() -> None:
    m = machine()
    first = leased_slot(m, 0.0)
    second = leased_slot(m, 0.0)
    m.release(second, 1.0, healthy=True)
    m.release(first, 2.0, healthy=True)
    waiter, actions = m.acquire(3.0, 10.0)
    assert actions == [GrantSlot(first, waiter)]


@pytest.mark.parametrize("release_order", [(0, 1, 2), (2, 1, 0), (1, 2, 0)])
def test_slots_idle_since_the_same_moment_are_granted_greatest_id_first(
    release_order: tuple[int, int, int],
) -> None:
    m = machine()
    slots = [leased_slot(m, 0.0) for _ in range(3)]
    m.release(slots[0], 0.5, healthy=True)  # idle longer than the other two
    for index in release_order:
        if index != 0:
            m.release(slots[index], 1.0, healthy=True)
    granted = []
    for now in (2.0, 2.0, 2.0):
        waiter, actions = m.acquire(now, now + 10.0)
        (grant,) = actions
        assert grant == GrantSlot(grant.slot, waiter)
        granted.append(grant.slot)
    assert granted == [slots[2], slots[1], slots[0]]


def test_acquire_now_grants_the_idle_slot_acquire_would_grant_without_a_waiter() -> None:
    m = machine()
    first = leased_slot(m, 0.0)
    second = leased_slot(m, 0.0)
    m.release(second, 1.0, healthy=True)
    m.release(first, 2.0, healthy=True)
    assert m.acquire_now(3.0) == (first, [])
    assert m.slot_state(first) is SlotState.LEASED
    assert m.statistics().waiting == 0
    assert m.acquire_now(3.0) == (second, [])
    # Nothing idle left: the caller must queue, and nothing was changed meanwhile.
    assert m.acquire_now(3.0) == (None, [])
    assert m.statistics().connecting == 0
    assert m.release(first, 4.0, healthy=True) == []


def test_acquire_now_grants_nothing_that_needs_a_probe() -> None:
    m = machine(keepalive_interval=5.0)
    slot = idle_slot(m, 0.0)
    assert m.acquire_now(6.0) == (None, [])
    assert m.slot_state(slot) is SlotState.IDLE
    # Queued, the waiter gets a probe of it instead.
    _, actions = m.acquire(6.0, 20.0)
    assert actions == [ProbeSlot(slot)]


def test_acquire_now_returns_what_settling_decided() -> None:
    m = machine(idle_timeout=10.0)
    first = leased_slot(m, 0.0)
    second = leased_slot(m, 0.0)
    m.release(first, 1.0, healthy=True)
    m.release(second, 9.0, healthy=True)
    # At 12 the first has been idle too long: it retires, and the second is granted.
    assert m.acquire_now(12.0) == (second, [CloseSlot(first, graceful=True, reason="idle_timeout")])


def test_acquire_now_grants_nothing_once_closed() -> None:
    m = machine()
    idle_slot(m)
    m.close(1.0)
    assert m.acquire_now(2.0) == (None, [])


def test_idle_slot_is_granted_even_when_the_deadline_is_already_due() -> None:
    m = machine()
    slot = idle_slot(m)
    waiter, actions = m.acquire(5.0, 5.0)
    assert actions == [GrantSlot(slot, waiter)]


def test_a_due_deadline_with_nothing_idle_fails_at_once_as_exhausted() -> None:
    m = machine(max_size=1)
    leased_slot(m)
    waiter, actions = m.acquire(5.0, 5.0)
    assert actions == [FailWaiter(waiter, FailureKind.POOL_EXHAUSTED)]


def test_waiters_are_granted_in_arrival_order() -> None:
    m = machine(max_size=1)
    slot = leased_slot(m)
    w1, a1 = m.acquire(1.0, 30.0)
    w2, a2 = m.acquire(2.0, 30.0)
    assert a1 == a2 == []
    assert m.release(slot, 3.0, healthy=True) == [GrantSlot(slot, w1)]
    assert m.release(slot, 4.0, healthy=True) == [GrantSlot(slot, w2)]


def test_live_slots_never_exceed_max_size() -> None:
    m = machine(max_size=2)
    opens = [m.acquire(0.0, 30.0)[1] for _ in range(4)]
    assert opens[0] == [OpenConnection(0, A)]
    assert opens[1] == [OpenConnection(1, A)]
    assert opens[2] == opens[3] == []
    assert m.statistics().live == 2


def test_host_max_connections_caps_connections_to_that_host() -> None:
    capped = Host("capped.example", 25, max_connections=1)
    m = machine([capped], max_size=5)
    assert m.acquire(0.0, 30.0)[1] == [OpenConnection(0, capped)]
    assert m.acquire(0.0, 30.0)[1] == []
    assert m.statistics().hosts[capped.key].live == 1


def test_weighted_hosts_share_new_connections() -> None:
    heavy = Host("heavy.example", 25, weight=3)
    m = machine([heavy, B], max_size=8)
    hosts = []
    for _ in range(4):
        (action,) = m.acquire(0.0, 30.0)[1]
        assert isinstance(action, OpenConnection)
        hosts.append(action.host)
    assert hosts == [heavy, heavy, B, heavy]


def test_waiter_past_its_deadline_fails_as_exhausted() -> None:
    m = machine(max_size=1)
    leased_slot(m)
    waiter, _ = m.acquire(1.0, 11.0)
    assert m.next_deadline() == 11.0
    assert m.handle_timer(10.9) == []
    assert m.handle_timer(11.0) == [FailWaiter(waiter, FailureKind.POOL_EXHAUSTED)]
    assert m.next_deadline() is None


# ----------------------------------------------------------------------------------- cancel


def test_connection_opened_for_a_cancelled_waiter_goes_to_the_next_waiter() -> None:
    m = machine(max_size=1)
    w1, actions = m.acquire(0.0, 30.0)
    assert actions == [OpenConnection(0, A)]
    w2, actions = m.acquire(0.0, 30.0)
    assert actions == []
    assert m.cancel(w1, 1.0) == []
    assert m.connected(0, 2.0) == [GrantSlot(0, w2)]


def test_connection_opened_for_a_cancelled_waiter_goes_to_idle() -> None:
    m = machine()
    waiter, _ = m.acquire(0.0, 30.0)
    m.cancel(waiter, 1.0)
    assert m.connected(0, 2.0) == []
    assert m.slot_state(0) is SlotState.IDLE


def test_cancel_of_a_finished_waiter_is_a_no_op() -> None:
    m = machine()
    slot = idle_slot(m)
    waiter, actions = m.acquire(1.0, 10.0)
    assert actions == [GrantSlot(slot, waiter)]
    assert m.cancel(waiter, 2.0) == []
    assert m.cancel(waiter, 2.0) == []
    assert m.slot_state(slot) is SlotState.LEASED


@pytest.mark.parametrize("waiter", [-1, 0, 7, "0"])
def test_cancel_of_an_unknown_waiter_is_a_local_protocol_error(waiter: Any) -> None:
    m = machine()
    with pytest.raises(LocalProtocolError):
        m.cancel(waiter, 0.0)


# ---------------------------------------------------------------------- connect failure/hosts


def test_connect_failure_fails_over_to_another_host_inside_the_same_acquire() -> None:
    m = machine([A, B])
    waiter, actions = m.acquire(0.0, 15.0)
    assert actions == [OpenConnection(0, A)]
    assert m.connect_failed(0, 1.0, FailureKind.CONNECT_FAILED, OSError()) == [OpenConnection(1, B)]
    assert m.connected(1, 2.0) == [GrantSlot(1, waiter)]
    stats = m.statistics()
    assert stats.hosts[A.key].cooling_down
    assert stats.hosts[A.key].consecutive_failures == 1
    assert stats.hosts[A.key].cooldown_until == 11.0
    assert stats.closed_total == {"connect_failed": 1}


def test_tls_failure_fails_over_to_the_backup_group() -> None:
    m = machine([A, BACKUP])
    m.acquire(0.0, 15.0)
    assert m.connect_failed(0, 1.0, FailureKind.TLS_FAILED) == [OpenConnection(1, BACKUP)]


def test_auth_failure_fails_the_oldest_waiter_with_its_error_and_does_not_fail_over() -> None:
    m = machine([A], max_size=1)
    error = PermissionError("535 5.7.8 authentication failed")
    w1, _ = m.acquire(0.0, 30.0)
    w2, _ = m.acquire(0.0, 10.0)
    actions = m.connect_failed(0, 1.0, FailureKind.AUTH_FAILED, error)
    assert actions[0] == FailWaiter(w1, FailureKind.AUTH_FAILED, error)
    assert isinstance(actions[0], FailWaiter)
    assert actions[0].error is error
    # Nothing else can serve w2 before the cooldown ends, so it does not wait in vain, and it
    # learns why from the attempt that was made.
    assert actions[1:] == [FailWaiter(w2, FailureKind.AUTH_FAILED, error)]


def test_auth_failure_with_another_host_lets_later_waiters_use_it() -> None:
    m = machine([A, B])
    w1, _ = m.acquire(0.0, 30.0)
    w2, _ = m.acquire(0.0, 30.0)  # slots 0 -> A, 1 -> B
    actions = m.connect_failed(0, 1.0, FailureKind.AUTH_FAILED, "bad password")
    assert actions == [FailWaiter(w1, FailureKind.AUTH_FAILED, "bad password")]
    assert m.connected(1, 2.0) == [GrantSlot(1, w2)]


def test_auth_failure_of_a_refill_connection_fails_nobody() -> None:
    m = machine(min_size=1)
    assert m.handle_timer(0.0) == [OpenConnection(0, A)]
    assert m.connect_failed(0, 1.0, FailureKind.AUTH_FAILED) == []


def test_when_every_host_cools_down_waiters_fail_at_once_with_the_last_error() -> None:
    m = machine([A, B])
    w, _ = m.acquire(0.0, 10.0)
    m.connect_failed(0, 1.0, FailureKind.CONNECT_FAILED, "first")
    # The waiter learns the failure of the attempt made for it, with its own kind.
    assert m.connect_failed(1, 2.0, FailureKind.TLS_FAILED, "second") == [
        FailWaiter(w, FailureKind.TLS_FAILED, "second")
    ]
    # And a new acquire during the outage fails at once too, without any connection attempt.
    w2, actions = m.acquire(3.0, 10.0)
    assert actions == [FailWaiter(w2, FailureKind.HOSTS_UNAVAILABLE, "second")]


def test_a_waiter_whose_deadline_outlasts_the_cooldown_keeps_waiting_for_a_trial() -> None:
    m = machine()
    prove(m)
    w, _ = m.acquire(0.0, 60.0)
    assert m.connect_failed(1, 1.0, FailureKind.CONNECT_FAILED) == []
    assert m.next_deadline() == 11.0
    assert m.handle_timer(11.0) == [OpenConnection(2, A)]
    assert m.connected(2, 12.0) == [GrantSlot(2, w)]
    assert m.statistics().hosts[A.key].consecutive_failures == 0


def test_a_host_that_never_worked_fails_its_waiters_at_once_with_the_cause() -> None:
    # A refused port or the wrong TLS mode is a configuration error far more often than a
    # restart: the caller learns it from the attempt, not after trials until its deadline.
    m = machine()
    w, _ = m.acquire(0.0, 60.0)
    assert m.connect_failed(0, 1.0, FailureKind.CONNECT_FAILED, "refused") == [
        FailWaiter(w, FailureKind.CONNECT_FAILED, "refused")
    ]
    # A later sender that can wait for the next trial does, and learns from it.
    w2, actions = m.acquire(2.0, 60.0)
    assert actions == []
    assert m.handle_timer(11.0) == [OpenConnection(1, A)]
    assert m.connect_failed(1, 11.5, FailureKind.TLS_FAILED, "no STARTTLS") == [
        FailWaiter(w2, FailureKind.TLS_FAILED, "no STARTTLS")
    ]
    # One that cannot wait that long is told at once that the host is cooling down.
    w3, actions = m.acquire(12.0, 20.0)
    assert actions == [FailWaiter(w3, FailureKind.HOSTS_UNAVAILABLE, "no STARTTLS")]


def test_a_failing_host_gets_one_trial_connection_at_a_time() -> None:
    m = machine([A], max_size=4)
    prove(m)
    w, _ = m.acquire(0.0, 100.0)
    m.connect_failed(1, 1.0, FailureKind.CONNECT_FAILED)
    m.acquire(2.0, 100.0)
    m.acquire(2.0, 100.0)
    assert m.handle_timer(11.0) == [OpenConnection(2, A)]
    assert m.statistics().connecting == 1
    # The trial works: the host is healthy again and gets the rest at once.
    actions = m.connected(2, 12.0)
    assert actions == [GrantSlot(2, w), OpenConnection(3, A), OpenConnection(4, A)]


def test_waiters_fail_over_to_the_backup_while_the_primary_trial_is_in_flight() -> None:
    m = machine([A, BACKUP], max_size=4)
    m.acquire(0.0, 100.0)
    m.connect_failed(0, 1.0, FailureKind.CONNECT_FAILED)  # -> opens 1 on BACKUP
    m.connected(1, 1.5)
    m.release(1, 2.0, healthy=False)
    m.slot_closed(1, 2.5)  # nothing is live: no background trial is due
    # A's cooldown is over: the new waiter's connection is A's trial...
    assert m.acquire(11.0, 100.0)[1] == [OpenConnection(2, A)]
    # ...and the next waiter does not queue behind that trial.
    assert m.acquire(11.0, 100.0)[1] == [OpenConnection(3, BACKUP)]


def test_connections_not_opened_because_a_host_cools_down_are_counted_per_host() -> None:
    m = machine([A, BACKUP], max_size=4)

    def suppressed() -> tuple[int, int]:
        hosts = m.statistics().hosts
        return hosts[A.key].connects_suppressed, hosts[BACKUP.key].connects_suppressed

    prove(m)
    m.acquire(0.0, 100.0)
    assert suppressed() == (0, 0)
    # A fails: the waiter's connection goes to BACKUP, and A was passed over for it.
    assert m.connect_failed(1, 1.0, FailureKind.CONNECT_FAILED) == [OpenConnection(2, BACKUP)]
    assert suppressed() == (1, 0)
    # BACKUP fails too: a connection is needed and both hosts are cooling down.
    assert m.connect_failed(2, 2.0, FailureKind.CONNECT_FAILED) == []
    assert suppressed() == (2, 1)
    # A's cooldown ends first: its trial is opened; BACKUP, worse than A, was not passed over.
    assert m.handle_timer(11.0) == [OpenConnection(3, A)]
    assert suppressed() == (2, 1)
    # A second waiter: A is on probation with its trial in flight (not cooling, not counted),
    # BACKUP is still cooling down and would have been asked.
    assert m.acquire(11.5, 100.0)[1] == []
    assert suppressed() == (2, 2)


def test_exhausted_waiter_reports_hosts_unavailable_while_every_host_is_failing() -> None:
    m = machine()
    prove(m)
    w, _ = m.acquire(0.0, 100.0)
    m.connect_failed(1, 1.0, FailureKind.CONNECT_FAILED, "refused")
    assert m.handle_timer(11.0) == [OpenConnection(2, A)]  # the trial hangs...
    assert m.handle_timer(100.0) == [FailWaiter(w, FailureKind.HOSTS_UNAVAILABLE, "refused")]


def test_cooldown_grows_with_consecutive_failures_and_resets_on_success() -> None:
    m = machine(min_size=1)
    until = []
    now = 0.0
    for _ in range(3):
        (open_,) = m.handle_timer(now)
        assert isinstance(open_, OpenConnection)
        m.connect_failed(open_.slot, now, FailureKind.CONNECT_FAILED)
        until.append(m.statistics().hosts[A.key].cooldown_until)
        deadline = m.next_deadline()
        assert deadline is not None
        now = deadline
    assert until == [10.0, 30.0, 70.0]
    (open_,) = m.handle_timer(now)
    assert isinstance(open_, OpenConnection)
    m.connected(open_.slot, now)
    assert m.statistics().hosts[A.key].consecutive_failures == 0
    assert m.statistics().hosts[A.key].cooldown_until is None


def test_when_the_better_host_recovers_idle_backup_connections_retire() -> None:
    m = machine([A, BACKUP], max_size=4)
    w, _ = m.acquire(0.0, 100.0)
    m.connect_failed(0, 1.0, FailureKind.CONNECT_FAILED)  # -> slot 1 on BACKUP
    m.connected(1, 2.0)
    m.release(1, 3.0, healthy=True)
    assert m.slot_state(1) is SlotState.IDLE  # A is not proven healthy yet
    assert m.next_deadline() == 11.0  # A's cooldown end
    assert m.handle_timer(11.0) == [OpenConnection(2, A)]  # the background trial
    w2, actions = m.acquire(12.0, 100.0)
    assert actions == [GrantSlot(1, w2)]  # the idle backup slot serves at once
    w3, actions = m.acquire(12.0, 100.0)
    assert actions == [OpenConnection(3, BACKUP)]  # not queued behind the trial
    assert m.connected(2, 13.0) == [GrantSlot(2, w3)]  # the trial won the race
    assert m.release(1, 14.0, healthy=True) == [
        CloseSlot(1, graceful=True, reason="retired_for_priority")
    ]
    assert m.connected(3, 14.5) == [CloseSlot(3, graceful=True, reason="retired_for_priority")]
    m.slot_closed(1, 15.0)
    m.slot_closed(3, 15.0)
    assert m.statistics().closed_total["retired_for_priority"] == 2
    assert w == 0


def test_idle_backup_slots_retire_when_the_primary_connects() -> None:
    m = machine([A, BACKUP], max_size=4, min_size=1)
    m.handle_timer(0.0)
    m.connect_failed(0, 0.0, FailureKind.CONNECT_FAILED)
    (backup_open,) = m.handle_timer(0.0)
    assert backup_open == OpenConnection(1, BACKUP)
    m.connected(1, 1.0)
    w, actions = m.acquire(11.0, 50.0)
    assert actions == [OpenConnection(2, A), GrantSlot(1, w)]  # A's trial, and the backup slot
    m.release(1, 11.0, healthy=True)
    w, actions = m.acquire(11.0, 50.0)
    assert actions == [GrantSlot(1, w)]
    _, actions = m.acquire(11.0, 50.0)
    assert actions == [OpenConnection(3, BACKUP)]
    m.release(1, 11.5, healthy=True)  # granted to the waiter, not left idle
    assert m.slot_state(1) is SlotState.LEASED
    m.release(1, 11.6, healthy=True)
    assert m.slot_state(1) is SlotState.IDLE  # A has not proven itself yet
    assert m.connected(2, 12.0) == [CloseSlot(1, graceful=True, reason="retired_for_priority")]
    assert m.slot_state(2) is SlotState.IDLE
    assert m.connected(3, 12.5) == [CloseSlot(3, graceful=True, reason="retired_for_priority")]


def test_idle_backup_connections_are_kept_while_every_host_is_failing() -> None:
    m = machine([A, BACKUP], max_size=4)
    m.acquire(0.0, 100.0)
    m.connect_failed(0, 1.0, FailureKind.CONNECT_FAILED)  # -> slot 1 on BACKUP
    m.connected(1, 1.5)
    w1, actions = m.acquire(2.0, 100.0)
    assert actions == [OpenConnection(2, BACKUP)]
    m.connect_failed(2, 2.5, FailureKind.CONNECT_FAILED)
    m.cancel(w1, 3.0)
    assert m.release(1, 4.0, healthy=True) == []
    assert m.slot_state(1) is SlotState.IDLE


# ------------------------------------------------------------------- recovery of a better host


def backup_serving(max_size: int = 4) -> PoolMachine:
    """A fails at 1.0 (cooldown until 11.0); slot 1 to BACKUP serves waiter 0 and is leased."""
    m = machine([A, BACKUP], max_size=max_size)
    assert m.acquire(0.0, 100.0)[1] == [OpenConnection(0, A)]
    assert m.connect_failed(0, 1.0, FailureKind.CONNECT_FAILED) == [OpenConnection(1, BACKUP)]
    assert m.connected(1, 1.5) == [GrantSlot(1, 0)]
    return m


def send_through(m: PoolMachine, now: float) -> Host:
    """One send as the driver does it: acquire an idle slot, release it healthy."""
    waiter, actions = m.acquire(now, now + 30)
    (grant,) = actions
    assert isinstance(grant, GrantSlot)
    assert grant.waiter == waiter
    host = m.slot_host(grant.slot)
    m.release(grant.slot, now, healthy=True)
    return host


def test_recovered_primary_gets_a_background_trial_when_its_cooldown_ends() -> None:
    m = backup_serving()
    assert m.release(1, 2.0, healthy=True) == []  # A has not recovered: the backup stays idle
    assert [send_through(m, t) for t in (3.0, 4.0)] == [BACKUP, BACKUP]
    assert m.next_deadline() == 11.0  # the timer wakes for A's cooldown end
    assert m.handle_timer(11.0) == [OpenConnection(2, A)]
    assert send_through(m, 11.5) == BACKUP  # the backup serves while the trial is in flight
    assert m.slot_state(1) is SlotState.IDLE
    # The trial works: the idle backup connection retires and the next send goes to A.
    assert m.connected(2, 12.0) == [CloseSlot(1, graceful=True, reason="retired_for_priority")]
    assert send_through(m, 12.5) == A
    stats = m.statistics()
    assert stats.hosts[A.key].consecutive_failures == 0
    assert stats.created_total == 3


def test_released_backup_connection_retires_once_primary_is_back() -> None:
    m = backup_serving()
    assert m.handle_timer(11.0) == [OpenConnection(2, A)]
    assert m.connected(2, 12.0) == []  # the backup connection is leased: nothing to retire yet
    assert m.release(1, 13.0, healthy=True) == [
        CloseSlot(1, graceful=True, reason="retired_for_priority")
    ]
    m.slot_closed(1, 14.0)
    assert m.statistics().closed_total == {"connect_failed": 1, "retired_for_priority": 1}


def test_released_backup_connection_serves_a_queued_waiter_before_it_retires() -> None:
    m = backup_serving(max_size=2)
    assert m.handle_timer(11.0) == [OpenConnection(2, A)]
    m.connected(2, 12.0)
    w1, actions = m.acquire(12.0, 100.0)
    assert actions == [GrantSlot(2, w1)]  # the primary's idle connection
    w2, actions = m.acquire(12.0, 100.0)
    assert actions == []  # the pool is full
    # Served now by the backup rather than made to wait for a connect to A...
    assert m.release(1, 13.0, healthy=True) == [GrantSlot(1, w2)]
    # ...which retires when nobody is waiting for it any more.
    assert m.release(1, 14.0, healthy=True) == [
        CloseSlot(1, graceful=True, reason="retired_for_priority")
    ]


def test_failed_background_trial_cools_the_primary_down_longer_and_retries_at_the_next_end() -> (
    None
):
    m = backup_serving()
    assert m.handle_timer(11.0) == [OpenConnection(2, A)]
    assert m.connect_failed(2, 12.0, FailureKind.CONNECT_FAILED) == []
    host = m.statistics().hosts[A.key]
    assert (host.consecutive_failures, host.cooldown_until) == (2, 32.0)  # 10 s, then 20 s
    assert m.next_deadline() == 32.0
    assert m.handle_timer(20.0) == []  # no retry before the cooldown ends
    assert m.release(1, 25.0, healthy=True) == []  # and the backup is kept meanwhile
    assert m.handle_timer(32.0) == [OpenConnection(3, A)]
    assert m.handle_timer(33.0) == []  # one trial at a time


def test_a_waiter_is_not_queued_behind_a_background_trial() -> None:
    m = backup_serving()
    assert m.handle_timer(11.0) == [OpenConnection(2, A)]
    waiter, actions = m.acquire(11.0, 20.0)
    assert actions == [OpenConnection(3, BACKUP)]  # the trial may hang for connect_timeout
    assert m.connected(3, 11.5) == [GrantSlot(3, waiter)]


def test_full_pool_retires_one_idle_backup_connection_to_make_room_for_the_trial() -> None:
    m = backup_serving(max_size=3)
    waiter, actions = m.acquire(2.0, 100.0)
    assert actions == [OpenConnection(2, BACKUP)]
    m.connected(2, 2.5)
    m.acquire(3.0, 100.0)
    m.connected(3, 3.5)  # slots 1, 2, 3: all to BACKUP, the pool is full
    m.release(2, 4.0, healthy=True)
    m.release(1, 5.0, healthy=True)
    # The least recently used idle backup connection makes room; only one at a time.
    assert m.handle_timer(11.0) == [CloseSlot(2, graceful=True, reason="retired_for_priority")]
    assert m.release(3, 11.5, healthy=True) == []
    assert m.handle_timer(11.5) == []
    assert m.slot_closed(2, 12.0) == [OpenConnection(4, A)]
    assert m.connected(4, 13.0) == [
        CloseSlot(1, graceful=True, reason="retired_for_priority"),
        CloseSlot(3, graceful=True, reason="retired_for_priority"),
    ]
    assert waiter == 1


def test_trial_blocked_by_a_full_pool_of_leased_backup_connections_follows_the_next_release() -> (
    None
):
    m = backup_serving(max_size=1)
    assert m.handle_timer(11.0) == []
    assert m.next_deadline() is None  # nothing can be done until a slot comes back: no busy timer
    assert m.release(1, 12.0, healthy=True) == [
        CloseSlot(1, graceful=True, reason="retired_for_priority")
    ]
    assert m.slot_closed(1, 12.5) == [OpenConnection(2, A)]
    m.connect_failed(2, 13.0, FailureKind.CONNECT_FAILED)
    # The trial failed: the next acquire fails over to the backup again, without thrashing.
    waiter, actions = m.acquire(14.0, 50.0)
    assert actions == [OpenConnection(3, BACKUP)]
    assert m.connected(3, 14.5) == [GrantSlot(3, waiter)]
    assert m.release(3, 15.0, healthy=True) == []


def test_room_for_a_trial_is_never_made_ahead_of_a_queued_waiter() -> None:
    m = backup_serving(max_size=1)
    waiter, actions = m.acquire(11.0, 100.0)
    assert actions == []  # the pool is full
    assert m.release(1, 12.0, healthy=True) == [GrantSlot(1, waiter)]


def test_under_load_the_trial_is_the_next_connection_a_waiter_needs() -> None:
    m = backup_serving(max_size=1)
    waiter, _ = m.acquire(11.0, 100.0)
    assert m.release(1, 12.0, healthy=False) == [CloseSlot(1, graceful=False, reason="broken")]
    assert m.slot_closed(1, 12.5) == [OpenConnection(2, A)]  # A is the best usable host
    assert m.connected(2, 13.0) == [GrantSlot(2, waiter)]


def test_no_background_trial_when_no_connection_is_in_use() -> None:
    m = machine([A, BACKUP])
    waiter, _ = m.acquire(0.0, 5.0)
    m.cancel(waiter, 0.5)
    assert m.connect_failed(0, 1.0, FailureKind.CONNECT_FAILED) == []
    assert m.handle_timer(11.0) == []  # nothing to move back: the next acquire tries A
    assert m.acquire(12.0, 20.0)[1] == [OpenConnection(1, A)]


def test_no_background_trial_for_a_host_no_better_than_the_one_in_use() -> None:
    m = machine([A, B])
    m.acquire(0.0, 100.0)
    assert m.connect_failed(0, 1.0, FailureKind.CONNECT_FAILED) == [OpenConnection(1, B)]
    m.connected(1, 1.5)
    assert m.handle_timer(11.0) == []


def test_every_recovered_host_better_than_the_one_in_use_gets_a_trial_best_first() -> None:
    first = Host("first.example", 25, priority=0)
    second = Host("second.example", 25, priority=1)
    third = Host("third.example", 25, priority=2)
    m = machine([third, second, first])
    m.acquire(0.0, 100.0)
    assert m.connect_failed(0, 1.0, FailureKind.CONNECT_FAILED) == [OpenConnection(1, second)]
    assert m.connect_failed(1, 2.0, FailureKind.CONNECT_FAILED) == [OpenConnection(2, third)]
    m.connected(2, 2.5)
    assert m.handle_timer(12.0) == [OpenConnection(3, first), OpenConnection(4, second)]
    # The second tier comes back while the first tier's trial still hangs: traffic moves up.
    assert m.connected(4, 12.5) == []
    assert m.release(2, 13.0, healthy=True) == [
        CloseSlot(2, graceful=True, reason="retired_for_priority")
    ]
    assert m.connected(3, 13.5) == [CloseSlot(4, graceful=True, reason="retired_for_priority")]


# --------------------------------------------------------------------------------- release


def test_broken_release_closes_abruptly_and_never_goes_idle() -> None:
    m = machine(max_size=1)
    slot = leased_slot(m)
    waiter, _ = m.acquire(1.0, 30.0)
    assert m.release(slot, 2.0, healthy=False) == [CloseSlot(slot, graceful=False, reason="broken")]
    assert m.slot_state(slot) is SlotState.CLOSING
    # A closing socket still counts against max_size; its room returns when it is gone.
    assert m.slot_closed(slot, 3.0) == [OpenConnection(1, A)]
    assert m.slot_state(slot) is SlotState.CLOSED
    assert m.statistics().closed_total == {"broken": 1}
    assert m.connected(1, 4.0) == [GrantSlot(1, waiter)]


def test_release_past_max_messages_retires_with_quit() -> None:
    m = machine(max_messages_per_connection=3)
    slot = leased_slot(m)
    assert m.release(slot, 1.0, healthy=True, messages=2) == []
    m.acquire(1.0, 10.0)
    assert m.release(slot, 2.0, healthy=True, messages=1) == [
        CloseSlot(slot, graceful=True, reason="max_messages")
    ]
    m.slot_closed(slot, 3.0)
    assert m.statistics().closed_total == {"max_messages": 1}


def test_release_past_max_connection_age_retires_with_quit() -> None:
    m = machine(max_connection_age=100.0)
    slot = leased_slot(m)
    assert m.release(slot, 100.0, healthy=True) == [
        CloseSlot(slot, graceful=True, reason="max_age")
    ]


def test_retired_slot_is_replaced_for_a_waiting_caller() -> None:
    m = machine(max_size=1, max_messages_per_connection=1)
    slot = leased_slot(m)
    waiter, _ = m.acquire(1.0, 30.0)
    assert m.release(slot, 2.0, healthy=True, messages=1) == [
        CloseSlot(slot, graceful=True, reason="max_messages")
    ]
    assert m.slot_closed(slot, 3.0) == [OpenConnection(1, A)]
    assert m.connected(1, 4.0) == [GrantSlot(1, waiter)]


@pytest.mark.parametrize("messages", [-1, True, 1.0])
def test_release_with_a_bad_message_count_is_refused_before_any_change(messages: Any) -> None:
    m = machine()
    slot = leased_slot(m)
    with pytest.raises(LocalProtocolError):
        m.release(slot, 1.0, healthy=True, messages=messages)
    assert m.slot_state(slot) is SlotState.LEASED


# ----------------------------------------------------------------------- idle, age, probes


def test_idle_slot_past_idle_timeout_retires_on_the_timer() -> None:
    m = machine(idle_timeout=50.0, max_connection_age=None)
    slot = idle_slot(m, 0.0)
    assert m.next_deadline() == 50.0
    assert m.handle_timer(50.0) == [CloseSlot(slot, graceful=True, reason="idle_timeout")]
    m.slot_closed(slot, 51.0)
    assert m.statistics().closed_total == {"idle_timeout": 1}
    assert m.next_deadline() is None


@pytest.mark.parametrize("limit", ["idle_timeout", "max_connection_age"])
def test_only_the_idle_slots_past_their_limit_retire(limit: str) -> None:
    options: dict[str, Any] = {"idle_timeout": None, "max_connection_age": None, limit: 50.0}
    m = machine(keepalive_interval=None, **options)
    older = leased_slot(m, 0.0)
    # The second connection is 10 s younger, or was used 10 s later.
    newer = leased_slot(m, 10.0 if limit == "max_connection_age" else 0.0)
    m.release(older, 10.0 if limit == "max_connection_age" else 0.0, healthy=True)
    m.release(newer, 10.0, healthy=True)
    assert m.next_deadline() == 50.0
    assert m.handle_timer(50.0) == [
        CloseSlot(
            older, graceful=True, reason="idle_timeout" if limit == "idle_timeout" else "max_age"
        )
    ]
    assert m.slot_state(newer) is SlotState.IDLE
    assert m.next_deadline() == 60.0


def test_idle_slot_past_max_age_retires_on_the_timer() -> None:
    m = machine(idle_timeout=None, keepalive_interval=None, max_connection_age=80.0)
    slot = leased_slot(m, 0.0)
    m.release(slot, 70.0, healthy=True)
    assert m.next_deadline() == 80.0
    assert m.handle_timer(80.0) == [CloseSlot(slot, graceful=True, reason="max_age")]


def test_with_limits_switched_off_an_idle_slot_needs_no_timer() -> None:
    m = machine(idle_timeout=None, max_connection_age=None, keepalive_interval=None)
    slot = idle_slot(m)
    assert m.next_deadline() is None
    waiter, actions = m.acquire(10_000.0, 10_010.0)
    assert actions == [GrantSlot(slot, waiter)]


def test_stale_idle_slot_is_probed_before_it_is_granted() -> None:
    m = machine(keepalive_interval=30.0)
    slot = idle_slot(m, 0.0)
    waiter, actions = m.acquire(30.0, 60.0)
    assert actions == [ProbeSlot(slot)]
    assert m.slot_state(slot) is SlotState.PROBING
    assert m.probe_succeeded(slot, 31.0) == [GrantSlot(slot, waiter)]


def test_next_deadline_is_a_waiters_deadline_when_no_idle_limit_comes_sooner() -> None:
    m = machine(keepalive_interval=30.0, idle_timeout=100.0, max_connection_age=200.0)
    first = leased_slot(m, 0.0)
    second = leased_slot(m, 0.0)
    m.release(first, 0.0, healthy=True)
    m.release(second, 0.0, healthy=True)
    # Both idle slots are stale: one is probed for the waiter, the other stays idle.
    waiter, actions = m.acquire(40.0, 45.0)
    assert actions == [ProbeSlot(second)]
    assert m.next_deadline() == 45.0
    assert m.handle_timer(45.0) == [FailWaiter(waiter, FailureKind.POOL_EXHAUSTED)]
    assert m.next_deadline() == 100.0


@pytest.mark.parametrize("reason", ["stale", "out_of_sync"])
def test_a_probe_that_found_the_connection_unusable_is_counted_under_that_reason(
    reason: str,
) -> None:
    m = machine(keepalive_interval=30.0)
    slot = idle_slot(m, 0.0)
    m.acquire(30.0, 60.0)
    (close, _) = m.probe_failed(slot, 31.0, reason=reason)
    assert close == CloseSlot(slot, graceful=False, reason=reason)
    m.slot_closed(slot, 31.0)
    assert m.statistics().closed_total == {reason: 1}


def test_probe_failed_refuses_an_unknown_reason() -> None:
    m = machine(keepalive_interval=30.0)
    slot = idle_slot(m, 0.0)
    m.acquire(30.0, 60.0)
    with pytest.raises(LocalProtocolError, match="reason"):
        m.probe_failed(slot, 31.0, reason="broken")
    assert m.slot_state(slot) is SlotState.PROBING


def test_failed_probe_closes_the_slot_and_serves_the_waiter_elsewhere() -> None:
    m = machine(keepalive_interval=30.0)
    slot = idle_slot(m, 0.0)
    waiter, _ = m.acquire(30.0, 60.0)
    assert m.probe_failed(slot, 31.0) == [
        CloseSlot(slot, graceful=False, reason="probe_failed"),
        OpenConnection(1, A),
    ]
    assert m.connected(1, 32.0) == [GrantSlot(1, waiter)]
    m.slot_closed(slot, 33.0)
    stats = m.statistics()
    assert stats.closed_total == {"probe_failed": 1}
    assert stats.hosts[A.key].consecutive_failures == 0  # a dropped idle link is no outage


def test_probed_slot_whose_waiter_left_goes_back_to_idle() -> None:
    m = machine(keepalive_interval=30.0)
    slot = idle_slot(m, 0.0)
    waiter, _ = m.acquire(30.0, 60.0)
    m.cancel(waiter, 30.5)
    assert m.probe_succeeded(slot, 31.0) == []
    assert m.slot_state(slot) is SlotState.IDLE


def test_fresh_idle_slot_is_preferred_over_probing_a_stale_one() -> None:
    m = machine(keepalive_interval=30.0)
    old = leased_slot(m, 0.0)
    new = leased_slot(m, 0.0)
    m.release(old, 0.0, healthy=True)
    m.release(new, 20.0, healthy=True)
    waiter, actions = m.acquire(35.0, 60.0)
    assert actions == [GrantSlot(new, waiter)]
    waiter, actions = m.acquire(35.0, 60.0)
    assert actions == [ProbeSlot(old)]


# ------------------------------------------------------------------------------- min_size


def test_min_size_is_warmed_by_the_first_timer_not_by_acquire() -> None:
    m = machine(min_size=2)
    assert m.next_deadline() == -math.inf
    assert m.handle_timer(0.0) == [OpenConnection(0, A), OpenConnection(1, A)]
    assert m.next_deadline() is None


def test_refill_waits_refill_delay_after_a_slot_is_lost() -> None:
    m = machine(min_size=1, refill_delay=5.0)
    (open_,) = m.handle_timer(0.0)
    assert isinstance(open_, OpenConnection)
    m.connected(open_.slot, 1.0)
    waiter, _ = m.acquire(2.0, 30.0)
    m.release(open_.slot, 3.0, healthy=False)
    # The refill clock starts when the slot is lost (CLOSING), not when its socket is gone.
    assert m.next_deadline() == 8.0
    assert m.slot_closed(open_.slot, 4.0) == []
    assert m.handle_timer(7.9) == []
    assert m.handle_timer(8.0) == [OpenConnection(1, A)]
    assert waiter == 0


def test_refill_never_exceeds_host_capacity_and_resumes_when_room_returns() -> None:
    capped = Host("capped.example", 25, max_connections=1)
    m = machine([capped], min_size=2, max_size=2)
    assert m.handle_timer(0.0) == [OpenConnection(0, capped)]
    assert m.next_deadline() is None  # blocked by capacity: no busy timer
    m.connect_failed(0, 1.0, FailureKind.CONNECT_FAILED)
    assert m.next_deadline() == 11.0  # the cooldown end
    assert m.handle_timer(11.0) == [OpenConnection(1, capped)]


def test_refill_connection_serves_a_waiter_that_arrives_meanwhile() -> None:
    m = machine(min_size=1, max_size=1)
    m.handle_timer(0.0)
    waiter, actions = m.acquire(0.5, 30.0)
    assert actions == []  # covered by the refill connection in flight
    assert m.connected(0, 1.0) == [GrantSlot(0, waiter)]


# ---------------------------------------------------------------------------------- close


def test_close_fails_waiters_closes_idle_and_waits_for_the_rest() -> None:
    m = machine(max_size=4, keepalive_interval=30.0)
    leased = leased_slot(m, 0.0)
    broken = leased_slot(m, 0.0)
    idle = leased_slot(m, 0.0)
    m.release(idle, 1.0, healthy=True)
    probing_waiter, actions = m.acquire(40.0, 100.0)
    assert actions == [ProbeSlot(idle)]
    connecting_waiter, actions = m.acquire(40.0, 100.0)
    assert actions == [OpenConnection(3, A)]
    actions = m.close(41.0)
    assert actions == [
        FailWaiter(probing_waiter, FailureKind.POOL_CLOSED),
        FailWaiter(connecting_waiter, FailureKind.POOL_CLOSED),
    ]
    assert not m.is_closed
    assert m.close(41.0) == []
    w, actions = m.acquire(42.0, 50.0)
    assert actions == [FailWaiter(w, FailureKind.POOL_CLOSED)]
    assert m.release(leased, 43.0, healthy=True) == [
        CloseSlot(leased, graceful=True, reason="pool_closed")
    ]
    assert m.release(broken, 43.0, healthy=False) == [
        CloseSlot(broken, graceful=False, reason="broken")
    ]
    assert m.connected(3, 44.0) == [CloseSlot(3, graceful=True, reason="pool_closed")]
    assert m.probe_succeeded(idle, 44.0) == [CloseSlot(idle, graceful=True, reason="pool_closed")]
    for slot in (leased, broken, 3, idle):
        assert not m.is_closed
        m.slot_closed(slot, 45.0)
    assert m.is_closed
    stats = m.statistics()
    assert stats.live == 0
    assert stats.close_requested
    assert stats.closed_total == {"pool_closed": 3, "broken": 1}
    assert m.next_deadline() is None


def test_close_with_idle_slots_sends_quit_on_each() -> None:
    m = machine(max_size=2)
    first = leased_slot(m)
    second = leased_slot(m)
    m.release(first, 1.0, healthy=True)
    m.release(second, 1.0, healthy=True)
    assert sorted(m.close(2.0), key=lambda a: a.slot) == [  # type: ignore[union-attr]
        CloseSlot(first, graceful=True, reason="pool_closed"),
        CloseSlot(second, graceful=True, reason="pool_closed"),
    ]


def test_connect_failure_after_close_needs_no_close_action() -> None:
    m = machine()
    m.acquire(0.0, 10.0)
    m.close(1.0)
    assert m.connect_failed(0, 2.0, FailureKind.CONNECT_FAILED) == []
    assert m.is_closed


def test_probe_failure_after_close_closes_abruptly() -> None:
    m = machine(keepalive_interval=30.0)
    slot = idle_slot(m)
    m.acquire(30.0, 60.0)
    m.close(31.0)
    assert m.probe_failed(slot, 32.0) == [CloseSlot(slot, graceful=False, reason="pool_closed")]


def test_close_with_min_size_cancels_the_refill() -> None:
    m = machine(min_size=1)
    m.close(0.0)
    assert m.handle_timer(0.0) == []
    assert m.next_deadline() is None
    assert m.is_closed


# ----------------------------------------------------------------------------- misuse, time


def test_inputs_for_unknown_or_wrong_state_slots_raise_and_change_nothing() -> None:
    m = machine()
    slot = idle_slot(m)
    before = m.statistics()
    with pytest.raises(LocalProtocolError):
        m.release(slot, 1.0, healthy=True)
    with pytest.raises(LocalProtocolError):
        m.connected(slot, 1.0)
    with pytest.raises(LocalProtocolError):
        m.slot_closed(slot, 1.0)
    with pytest.raises(LocalProtocolError):
        m.probe_succeeded(slot, 1.0)
    with pytest.raises(LocalProtocolError):
        m.connect_failed(slot, 1.0, FailureKind.CONNECT_FAILED)
    for unknown in (99, -1, "0"):
        with pytest.raises(LocalProtocolError):
            m.probe_failed(unknown, 1.0)  # type: ignore[arg-type]
        with pytest.raises(LocalProtocolError):
            m.slot_host(unknown)  # type: ignore[arg-type]
        with pytest.raises(LocalProtocolError):
            m.slot_state(unknown)  # type: ignore[arg-type]
    assert m.statistics() == before


def test_connect_failed_needs_a_failure_kind() -> None:
    m = machine()
    m.acquire(0.0, 10.0)
    with pytest.raises(LocalProtocolError):
        m.connect_failed(0, 1.0, "connect_failed")  # type: ignore[arg-type]
    assert m.slot_state(0) is SlotState.CONNECTING


@pytest.mark.parametrize("bad", [math.nan, "1.0", None])
def test_time_and_deadline_must_be_numbers(bad: Any) -> None:
    m = machine()
    with pytest.raises(LocalProtocolError):
        m.handle_timer(bad)
    with pytest.raises(LocalProtocolError):
        m.acquire(0.0, bad)


@pytest.mark.parametrize("bad", [math.nan, math.inf * 0, "1.0", None])
def test_acquire_now_refuses_a_time_that_is_not_a_number(bad: Any) -> None:
    m = machine()
    idle_slot(m)
    with pytest.raises(LocalProtocolError):
        m.acquire_now(bad)
    assert m.statistics().idle == 1


@pytest.mark.parametrize("messages", [True, -1, 1.0, "1"])
def test_release_refuses_a_message_count_that_is_not_a_count(messages: Any) -> None:
    m = machine()
    slot = leased_slot(m)
    with pytest.raises(LocalProtocolError):
        m.release(slot, 1.0, healthy=True, messages=messages)
    assert m.slot_state(slot) is SlotState.LEASED


def test_an_older_now_is_treated_as_the_newest_seen() -> None:
    m = machine(max_size=1)
    leased_slot(m, 0.0)
    waiter, _ = m.acquire(10.0, 20.0)
    assert m.handle_timer(25.0) == [FailWaiter(waiter, FailureKind.POOL_EXHAUSTED)]
    w2, _ = m.acquire(5.0, 24.0)  # a task that read the clock earlier
    assert m.next_deadline() is None
    assert w2 == 2


def test_statistics_is_a_frozen_snapshot_derived_from_states() -> None:
    m = machine([A, B], max_size=4)
    leased_slot(m)
    m.acquire(1.0, 30.0)
    m.acquire(1.0, 30.0)
    stats = m.statistics()
    assert (stats.live, stats.leased, stats.connecting, stats.idle, stats.waiting) == (
        3,
        1,
        2,
        0,
        2,
    )
    assert (stats.probing, stats.closing, stats.created_total) == (0, 0, 3)
    assert list(stats.hosts) == [A.key, B.key]
    with pytest.raises(AttributeError):
        stats.live = 0  # type: ignore[misc]
    with pytest.raises(TypeError):
        stats.closed_total["broken"] = 1  # type: ignore[index]


def test_statistics_judges_cooldown_at_the_given_time() -> None:
    m = machine()
    m.acquire(0.0, 5.0)
    m.connect_failed(0, 0.0, FailureKind.CONNECT_FAILED)
    assert m.statistics().hosts[A.key].cooling_down
    assert not m.statistics(now=10.0).hosts[A.key].cooling_down


def test_actions_never_show_secrets() -> None:
    host = Host("smtp.example.com", username="alice", password=SECRET)
    m = PoolMachine(PoolConfig([host]), random.Random(0))
    _, actions = m.acquire(0.0, 1.0)
    error = PermissionError(f"AUTH PLAIN {SECRET}")
    actions += m.connect_failed(0, 0.5, FailureKind.AUTH_FAILED, error)
    text = repr(actions) + repr(m.statistics())
    assert SECRET not in text
    assert "PermissionError" in text


def test_a_connection_abandoned_at_close_is_gone_without_cooling_its_host() -> None:
    m = machine()
    w, actions = m.acquire(0.0, 15.0)
    assert actions == [OpenConnection(0, A)]
    assert m.close(1.0) == [FailWaiter(w, FailureKind.POOL_CLOSED)]
    assert m.connect_cancelled(0, 1.5) == []
    stats = m.statistics()
    assert m.is_closed
    assert stats.closed_total == {"pool_closed": 1}
    assert stats.hosts[A.key].consecutive_failures == 0
    with pytest.raises(LocalProtocolError):
        m.connect_cancelled(0, 2.0)


def test_an_unhealthy_release_is_counted_under_its_reason() -> None:
    m = machine()
    for reason in ("stale", "out_of_sync", "broken", "pool_closed"):
        _, actions = m.acquire(0.0, 15.0)
        (open_,) = actions
        assert isinstance(open_, OpenConnection)
        (grant,) = m.connected(open_.slot, 0.0)
        assert isinstance(grant, GrantSlot)
        assert m.release(grant.slot, 0.0, healthy=False, reason=reason) == [
            CloseSlot(grant.slot, graceful=False, reason=reason)
        ]
        m.slot_closed(grant.slot, 0.0)
    assert m.statistics().closed_total == {
        "stale": 1,
        "out_of_sync": 1,
        "broken": 1,
        "pool_closed": 1,
    }


def test_release_refuses_an_unknown_reason() -> None:
    m = machine()
    m.acquire(0.0, 15.0)
    m.connected(0, 0.0)
    with pytest.raises(LocalProtocolError, match="reason"):
        m.release(0, 0.0, healthy=False, reason="tired")
    assert m.slot_state(0) is SlotState.LEASED


def test_a_probe_cut_short_by_close_is_counted_as_closing_not_as_a_failed_probe() -> None:
    m = machine(keepalive_interval=5.0)
    m.acquire(0.0, 15.0)
    m.connected(0, 0.0)
    m.release(0, 0.0, healthy=True, messages=1)
    _, actions = m.acquire(10.0, 25.0)
    assert actions == [ProbeSlot(0)]
    m.close(11.0)
    assert m.probe_failed(0, 11.0) == [CloseSlot(0, graceful=False, reason="pool_closed")]
    m.slot_closed(0, 11.5)
    assert m.statistics().closed_total == {"pool_closed": 1}
