from __future__ import annotations

from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from pooledmail_core._config import Host
from pooledmail_core._hosts import HostSelector


def always(_: int) -> bool:
    return True


def names(selector: HostSelector, hosts: list[Host], usable: list[int], n: int) -> list[str]:
    chosen = []
    for _ in range(n):
        index = selector.choose(usable, always)
        assert index is not None
        chosen.append(hosts[index].hostname)
    return chosen


def test_weights_three_to_one_give_a_a_b_a() -> None:
    hosts = [Host("a", weight=3), Host("b", weight=1)]
    selector = HostSelector(hosts)
    assert names(selector, hosts, [0, 1], 8) == ["a", "a", "b", "a"] * 2


def test_equal_weights_alternate() -> None:
    hosts = [Host("a"), Host("b"), Host("c")]
    assert names(HostSelector(hosts), hosts, [0, 1, 2], 6) == ["a", "b", "c"] * 2


def test_only_the_best_priority_group_is_used() -> None:
    hosts = [Host("backup", priority=1, weight=10), Host("primary", priority=0)]
    selector = HostSelector(hosts)
    assert names(selector, hosts, [0, 1], 3) == ["primary"] * 3
    assert names(selector, hosts, [0], 2) == ["backup"] * 2


def test_a_full_best_group_does_not_overflow_to_a_worse_one() -> None:
    hosts = [Host("primary"), Host("backup", priority=1)]
    selector = HostSelector(hosts)
    assert selector.choose([0, 1], lambda index: index != 0) is None


def test_hosts_without_room_are_skipped_inside_the_group() -> None:
    hosts = [Host("a", weight=5), Host("b")]
    selector = HostSelector(hosts)
    assert selector.choose([0, 1], lambda index: index == 1) == 1


def test_no_usable_host_gives_none() -> None:
    selector = HostSelector([Host("a")])
    assert selector.choose([], always) is None
    assert selector.best_priority([]) is None


@settings(max_examples=200)
@given(weights=st.lists(st.integers(1, 9), min_size=1, max_size=5), rounds=st.integers(1, 5))
def test_every_full_cycle_matches_the_weights_exactly(weights: list[int], rounds: int) -> None:
    hosts = [Host(f"h{i}", weight=w) for i, w in enumerate(weights)]
    selector = HostSelector(hosts)
    usable = list(range(len(hosts)))
    picks = Counter(selector.choose(usable, always) for _ in range(sum(weights) * rounds))
    assert picks == Counter({i: w * rounds for i, w in enumerate(weights)})


@settings(max_examples=200)
@given(weights=st.lists(st.integers(1, 9), min_size=2, max_size=4), n=st.integers(1, 200))
def test_any_prefix_stays_within_one_pick_of_the_ideal_share(weights: list[int], n: int) -> None:
    hosts = [Host(f"h{i}", weight=w) for i, w in enumerate(weights)]
    selector = HostSelector(hosts)
    usable = list(range(len(hosts)))
    picks = Counter(selector.choose(usable, always) for _ in range(n))
    total = sum(weights)
    for i, w in enumerate(weights):
        # Smooth WRR never bursts: each host is within a handful of picks of its share.
        assert abs(picks[i] - n * w / total) < len(weights)
