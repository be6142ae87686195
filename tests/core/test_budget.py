"""Shared budgets in the pool machine: it asks the store through actions and takes its answers."""

from __future__ import annotations

import random
from typing import Any

import pytest

from pooledmail_core._admission import BATCH_HORIZON, LEASE_RETRY, STORE_RETRY
from pooledmail_core._classify import FailureKind
from pooledmail_core._config import Host, PoolConfig, SharedBudget
from pooledmail_core._errors import ConfigError, LocalProtocolError
from pooledmail_core._pool import (
    Action,
    CloseSlot,
    FailWaiter,
    GrantSlot,
    OpenConnection,
    PoolMachine,
    ReleaseLease,
    RequestLease,
    RequestTokens,
    ShareCooldown,
)

URL = "redis://127.0.0.1:6379/0"


def budget(**options: Any) -> SharedBudget:
    return SharedBudget("provider-x", redis_url=URL, **options)


def machine(hosts: list[Host], **options: Any) -> PoolMachine:
    options.setdefault("cooldown_jitter", 0.0)
    options.setdefault("keepalive_interval", None)
    return PoolMachine(PoolConfig(hosts, **options), random.Random(0))


def only(actions: list[Action], kind: type[Any]) -> list[Any]:
    return [action for action in actions if isinstance(action, kind)]


# --------------------------------------------------------------------------- configuration


def test_shared_budget_validates_each_option_by_name() -> None:
    with pytest.raises(ConfigError, match="redis_url"):
        SharedBudget("x", redis_url="http://example.com")
    with pytest.raises(ConfigError, match="max_connections"):
        budget(max_connections=0)
    with pytest.raises(ConfigError, match="max_messages_per_second"):
        budget(max_messages_per_second=float("inf"))
    with pytest.raises(ConfigError, match="burst"):
        budget(burst=3)
    with pytest.raises(ConfigError, match="store_timeout"):
        budget(lease_ttl=1.0, store_timeout=0.5)
    with pytest.raises(ConfigError, match="on_store_failure"):
        budget(on_store_failure="ignore")
    with pytest.raises(ConfigError, match="local_share"):
        budget(on_store_failure="local")
    with pytest.raises(ConfigError, match="local_share"):
        budget(local_share=0.5)
    with pytest.raises(ConfigError, match="name"):
        SharedBudget("two words", redis_url=URL)


def test_host_validates_its_rate_options_by_name() -> None:
    with pytest.raises(ConfigError, match="max_messages_per_second"):
        Host("a.example", max_messages_per_second=0)
    with pytest.raises(ConfigError, match="burst"):
        Host("a.example", burst=2)
    with pytest.raises(ConfigError, match="burst"):
        Host("a.example", max_messages_per_second=1, burst=0)
    with pytest.raises(ConfigError, match="budget"):
        Host("a.example", budget="provider-x")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"hosts\[0\]\.budget\.max_connections"):
        PoolConfig.from_mapping(
            {
                "hosts": [
                    {
                        "hostname": "a",
                        "budget": {"name": "x", "redis_url": URL, "max_connections": "0"},
                    }
                ]
            }
        )


def test_budgets_from_a_mapping_take_strings() -> None:
    host = Host.from_mapping(
        {
            "hostname": "a.example",
            "max_messages_per_second": "2.5",
            "burst": "3",
            "budget": {
                "name": "provider-x",
                "redis_url": URL,
                "max_connections": "3",
                "on_store_failure": "local",
                "local_share": "0.25",
            },
        }
    )
    assert (host.max_messages_per_second, host.burst) == (2.5, 3)
    assert host.budget == budget(max_connections=3, on_store_failure="local", local_share=0.25)


def test_two_different_budgets_may_not_share_a_name() -> None:
    with pytest.raises(ConfigError, match="provider-x"):
        PoolConfig(
            [
                Host("a.example", budget=budget(max_connections=3)),
                Host("b.example", budget=budget(max_connections=4)),
            ]
        )


def test_the_redis_password_never_shows_in_a_repr() -> None:
    shared = SharedBudget("x", redis_url="redis://app:hunter2-secret@redis.internal:6379/0")
    assert "hunter2" not in repr(shared)
    assert "hunter2" not in repr(Host("a.example", budget=shared))


# ------------------------------------------------------------------------------ connections


def test_a_connection_under_a_budget_opens_only_with_a_lease_and_gives_it_back() -> None:
    host = Host("a.example", 25, budget=budget(max_connections=3))
    m = machine([host])
    waiter, actions = m.acquire(0.0, 10.0)
    (request,) = actions
    assert isinstance(request, RequestLease)
    assert request.host == host
    assert m.statistics().live == 0
    (open_,) = m.lease_granted(request.request, 0.01, "lease-1")
    assert isinstance(open_, OpenConnection)
    assert m.connected(open_.slot, 0.02) == [GrantSlot(open_.slot, waiter)]
    assert m.release(open_.slot, 0.03, healthy=False) == [
        CloseSlot(open_.slot, graceful=False, reason="broken")
    ]
    assert m.slot_closed(open_.slot, 0.04) == [ReleaseLease(host.budget, "lease-1")]  # type: ignore[arg-type]


def test_a_lease_nobody_needs_any_more_goes_back_at_once() -> None:
    host = Host("a.example", 25, budget=budget(max_connections=3))
    m = machine([host])
    waiter, (request,) = m.acquire(0.0, 10.0)
    assert m.cancel(waiter, 0.001) == []
    assert m.lease_granted(request.request, 0.01, "lease-1") == [
        ReleaseLease(host.budget, "lease-1")  # type: ignore[arg-type]
    ]


def test_a_full_fleet_is_asked_again_later_and_the_waiter_keeps_its_deadline() -> None:
    host = Host("a.example", 25, budget=budget(max_connections=1))
    m = machine([host])
    waiter, (request,) = m.acquire(0.0, 1.0)
    assert m.lease_refused(request.request, 0.01, retry_at=0.01 + LEASE_RETRY) == []
    assert m.next_deadline() == 0.01 + LEASE_RETRY
    (again,) = m.handle_timer(0.01 + LEASE_RETRY)
    assert isinstance(again, RequestLease)
    assert m.lease_refused(again.request, 0.9, retry_at=0.95) == []
    assert m.handle_timer(1.0) == [FailWaiter(waiter, FailureKind.POOL_EXHAUSTED)]


def test_a_host_down_for_the_fleet_cools_down_here_too() -> None:
    host = Host("a.example", 25, budget=budget(max_connections=3))
    m = machine([host])
    waiter, (request,) = m.acquire(0.0, 10.0)
    actions = m.lease_refused(request.request, 0.01, retry_at=0.01, cooling_until=20.0)
    assert actions == [FailWaiter(waiter, FailureKind.HOSTS_UNAVAILABLE)]
    host_stats = m.statistics().hosts[host.key]
    assert host_stats.cooling_down
    assert host_stats.cooldown_until == 20.0


def test_a_host_this_pool_finds_down_is_shared_with_the_fleet() -> None:
    host = Host("a.example", 25, budget=budget(max_connections=3))
    m = machine([host], reconnect_cooldown=30.0)
    _waiter, (request,) = m.acquire(0.0, 10.0)
    (open_,) = m.lease_granted(request.request, 0.0, "lease-1")
    actions = m.connect_failed(open_.slot, 1.0, FailureKind.CONNECT_FAILED)
    assert ReleaseLease(host.budget, "lease-1") in actions  # type: ignore[arg-type]
    assert ShareCooldown(host.budget, host, 30.0) in actions  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------- tokens


def rated() -> tuple[Host, PoolMachine, int]:
    """A host under a budget of 40 messages/s (no connection cap), one idle connection."""
    host = Host("a.example", 25, budget=budget(max_messages_per_second=40))
    m = machine([host])
    waiter, (lease,) = m.acquire(0.0, 10.0)
    (open_,) = m.lease_granted(lease.request, 0.0, None)
    (tokens,) = m.connected(open_.slot, 0.0)
    assert tokens == RequestTokens(tokens.request, host.budget, 1, BATCH_HORIZON, 10.0)  # type: ignore[arg-type]
    assert m.tokens_granted(tokens.request, 0.001, [0.001]) == [GrantSlot(open_.slot, waiter)]
    return host, m, open_.slot


def test_a_message_under_a_fleet_rate_waits_for_a_token_from_the_store() -> None:
    _host, m, slot = rated()
    assert m.release(slot, 0.002, healthy=True, messages=1) == []
    waiter, actions = m.acquire(0.003, 10.0)
    (request,) = only(actions, RequestTokens)
    # The store reserves the fleet's next token 25 ms from now: the waiter waits for it.
    assert m.tokens_granted(request.request, 0.004, [0.029]) == []
    assert m.next_deadline() == 0.029
    assert m.handle_timer(0.029) == [GrantSlot(slot, waiter)]


def test_tokens_come_in_growing_batches_for_a_fast_sender() -> None:
    _host, m, slot = rated()
    counts = []
    now = 0.002
    for _ in range(6):
        m.release(slot, now, healthy=True, messages=1)
        waiter, actions = m.acquire(now, now + 10.0)
        requests = only(actions, RequestTokens)
        if requests:
            (request,) = requests
            counts.append(request.count)
            times = [now + i * 0.025 for i in range(request.count)]
            actions = m.tokens_granted(request.request, now, times)
        if not only(actions, GrantSlot):
            deadline = m.next_deadline()
            assert deadline is not None
            now = deadline
            actions = m.handle_timer(now)
        assert only(actions, GrantSlot) == [GrantSlot(slot, waiter)]
    # 1, 2, then 4 (40/s reaches 4 tokens ahead at most): 3 round trips for 7 messages.
    assert counts == [2, 4]


def test_a_token_not_used_in_its_lifetime_is_dropped_never_used_late() -> None:
    _host, m, slot = rated()
    m.release(slot, 0.002, healthy=True, messages=1)
    # Nothing waits, so no timer is asked for tokens (only for the idle connection).
    assert m.next_deadline() == 0.002 + 120.0
    # A waiter long after: nothing left from before is used.
    _waiter, actions = m.acquire(5.0, 15.0)
    assert only(actions, RequestTokens)


def test_no_token_before_the_deadline_fails_the_waiter_at_once() -> None:
    _host, m, slot = rated()
    m.release(slot, 0.002, healthy=True, messages=1)
    waiter, actions = m.acquire(0.003, 1.0)
    (request,) = only(actions, RequestTokens)
    # The fleet's next token is in 5 s: nobody in the fleet can have one before.
    assert m.tokens_granted(request.request, 0.004, [], retry_at=5.0) == [
        FailWaiter(waiter, FailureKind.RATE_LIMITED)
    ]


# ------------------------------------------------------------------------------ store down


def test_refuse_policy_fails_the_waiters_that_need_the_store_with_budget_unavailable() -> None:
    host = Host("a.example", 25, budget=budget(max_connections=3))
    m = machine([host])
    waiter, (request,) = m.acquire(0.0, 10.0)
    assert m.request_failed(request.request, 0.5) == [
        FailWaiter(waiter, FailureKind.BUDGET_UNAVAILABLE)
    ]
    # Until the store is due another try, new sends fail at once too.
    late, actions = m.acquire(0.6, 10.0)
    assert actions == [FailWaiter(late, FailureKind.BUDGET_UNAVAILABLE)]
    # Then the next send asks the store again, and waits for its answer.
    again, actions = m.acquire(0.5 + STORE_RETRY, 10.0)
    (retry,) = actions
    assert isinstance(retry, RequestLease)
    (open_,) = m.lease_granted(retry.request, 1.6, "lease-2")
    assert m.connected(open_.slot, 1.7) == [GrantSlot(open_.slot, again)]


def test_local_policy_keeps_to_its_share_and_retires_unleased_connections_on_recovery() -> None:
    shared = budget(max_connections=4, on_store_failure="local", local_share=0.5)
    host = Host("a.example", 25, budget=shared)
    m = machine([host], max_size=4)
    _first, (request,) = m.acquire(0.0, 10.0)
    # The store is down: this pool may hold 4 * 0.5 = 2 connections on its own.
    opens = only(m.request_failed(request.request, 0.1), OpenConnection)
    assert len(opens) == 1
    for _ in range(3):
        _, actions = m.acquire(0.2, 10.0)
        opens += only(actions, OpenConnection)
    assert len(opens) == 2
    for open_ in opens:
        m.connected(open_.slot, 0.3)
    assert m.statistics().leased == 2
    # The store answers again (a lease for a third connection): the connections opened without
    # a lease retire once they are idle, so the fleet's cap holds again.
    _waiter, actions = m.acquire(0.1 + STORE_RETRY, 10.0)
    (retry,) = only(actions, RequestLease)
    m.lease_granted(retry.request, 1.2, "lease-3")
    actions = m.release(opens[0].slot, 1.3, healthy=True, messages=1)
    assert CloseSlot(opens[0].slot, graceful=True, reason="lease_lost") in actions
    assert m.statistics().closed_total.get("lease_lost", 0) == 0  # still closing
    m.slot_closed(opens[0].slot, 1.4)
    assert m.statistics().closed_total["lease_lost"] == 1


def test_a_lost_lease_retires_its_connection_when_idle() -> None:
    host = Host("a.example", 25, budget=budget(max_connections=3))
    m = machine([host])
    _waiter, (request,) = m.acquire(0.0, 10.0)
    (open_,) = m.lease_granted(request.request, 0.0, "lease-1")
    m.connected(open_.slot, 0.0)
    assert m.lease_lost("provider-x", "lease-1", 1.0) == []
    # Its lease is gone from the store: nothing to give back when it closes.
    assert m.release(open_.slot, 2.0, healthy=True, messages=1) == [
        CloseSlot(open_.slot, graceful=True, reason="lease_lost")
    ]
    assert m.slot_closed(open_.slot, 2.1) == []


def test_store_answers_are_checked() -> None:
    host = Host("a.example", 25, budget=budget(max_connections=3))
    m = machine([host])
    with pytest.raises(LocalProtocolError):
        m.lease_granted(7, 0.0, "lease")
    _, (request,) = m.acquire(0.0, 10.0)
    with pytest.raises(LocalProtocolError):
        m.tokens_granted(request.request, 0.0, [0.0])
    with pytest.raises(LocalProtocolError):
        m.lease_lost("unknown-budget", "lease", 0.0)
    with pytest.raises(LocalProtocolError):
        machine([Host("a.example")]).store_failed("provider-x", 0.0)


def test_a_lease_granted_after_close_goes_straight_back() -> None:
    host = Host("a.example", 25, budget=budget(max_connections=3))
    m = machine([host])
    _, (request,) = m.acquire(0.0, 10.0)
    m.close(0.1)
    assert m.lease_granted(request.request, 0.2, "lease-1") == [
        ReleaseLease(host.budget, "lease-1")  # type: ignore[arg-type]
    ]


def test_failing_lease_renewals_do_not_put_off_the_next_try_of_the_store() -> None:
    host = Host("a.example", 25, budget=budget(max_connections=3))
    m = machine([host])
    m.store_failed("provider-x", 0.0)
    m.store_failed("provider-x", 0.5)
    m.store_failed("provider-x", 0.9)
    # The store is tried again STORE_RETRY after the first failure, with the next request.
    _, actions = m.acquire(STORE_RETRY, 10.0)
    assert only(actions, RequestLease)


def test_refuse_policy_fails_a_waiter_whose_token_cannot_come_in_time_with_budget_unavailable() -> (
    None
):
    # The renewal failed while a token request was still out: the store is away, the budget
    # refuses, and a send whose deadline comes before the store is asked again cannot get a
    # token. The store held it back, not the rate (docs/guide/failures.md).
    shared = budget(max_connections=3, max_messages_per_second=10)
    m = machine([Host("a.example", 25, budget=shared)])
    _first, (lease,) = m.acquire(0.0, 10.0)
    (open_,) = m.lease_granted(lease.request, 0.0, "lease-1")
    (tokens,) = m.connected(open_.slot, 0.1)
    assert isinstance(tokens, RequestTokens)
    assert m.store_failed("provider-x", 1.0) == []
    late, actions = m.acquire(1.1, 1.0 + STORE_RETRY - 0.1)
    assert actions == [FailWaiter(late, FailureKind.BUDGET_UNAVAILABLE)]


def test_a_token_whose_answer_came_late_is_still_used() -> None:
    # 10 messages/s: a fleet token lives 0.05 s (half an emission interval) from the time the
    # answer says, on the pool's clock. An answer slower than that (a distant Redis, a busy event
    # loop) must still let the waiter send: counting the lifetime from the ask instead dropped
    # every token on arrival and the pool, asking again and again, never sent (each ask burning
    # one of the fleet's tokens). The price is documented in scaling.md: a token may be used up
    # to one answer's delay after the fleet's slot for it.
    host = Host("a.example", 25, budget=budget(max_messages_per_second=10))
    m = machine([host])
    waiter, (lease,) = m.acquire(0.0, 10.0)
    (open_,) = m.lease_granted(lease.request, 0.0, None)
    (tokens,) = m.connected(open_.slot, 1.0)
    actions = m.tokens_granted(tokens.request, 1.2, [1.2])
    assert only(actions, GrantSlot) == [GrantSlot(open_.slot, waiter)]
