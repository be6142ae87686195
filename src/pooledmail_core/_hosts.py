"""Host selection: priority groups, then smooth weighted round-robin inside the best group.

Priority is for failover: the pool connects only to the best (lowest) priority group among the
hosts it may currently use (the pool machine decides which those are: out of cooldown, and not
already running a trial connection after one). A worse group is used only when every host of the
better groups is unusable, never as overflow when a better host is merely at `max_connections`:
a backup relay is often a paid or rate-limited service that should carry mail only during an outage.

Inside a group, smooth weighted round-robin (the algorithm nginx uses for upstreams): every choice
adds each candidate's weight to its running score, picks the highest score (ties go to the host
listed first) and subtracts the group's total weight from the winner. Weights 3:1 give a, a, b, a:
the heavy host is chosen in proportion to its weight, but spread out rather than in bursts, so a
burst of new connections does not land on one server. No randomness is involved, which keeps the
order reproducible.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from ._config import Host

__all__ = ["HostSelector"]


class HostSelector:
    """Chooses the host for each new connection. Indexes refer to the `hosts` sequence."""

    __slots__ = ("_hosts", "_scores")

    def __init__(self, hosts: Sequence[Host]) -> None:
        self._hosts = tuple(hosts)
        self._scores = [0] * len(self._hosts)

    def best_priority(self, usable: Iterable[int]) -> int | None:
        """The best priority among the usable hosts, or None when there is none."""
        return min((self._hosts[index].priority for index in usable), default=None)

    def choose(self, usable: Iterable[int], has_room: Callable[[int], bool]) -> int | None:
        """Pick a host for one new connection, or None when the best group has no room.

        `usable` are the hosts the pool may connect to now; `has_room(index)` says whether that
        host is below its `max_connections`.
        """
        usable_list = list(usable)
        best = self.best_priority(usable_list)
        if best is None:
            return None
        group = [i for i in usable_list if self._hosts[i].priority == best and has_room(i)]
        if not group:
            return None
        total = 0
        chosen = group[0]
        for index in group:
            weight = self._hosts[index].weight
            self._scores[index] += weight
            total += weight
            if self._scores[index] > self._scores[chosen]:
                chosen = index
        self._scores[chosen] -= total
        return chosen
