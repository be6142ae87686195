"""What a send needs besides a free connection: message tokens, and room in the fleet.

Theory of operation
-------------------
The pool machine grants a waiter an idle slot, and opens a new connection, only when this module
says the host allows it. It keeps two kinds of limits, both with time passed in:

* A host's own message rate (`Host.max_messages_per_second`, `burst`): a `Gcra` per host. A grant
  takes one token, so a message that waits for its token holds no connection meanwhile.
* A `SharedBudget` that several hosts, pools and processes share, kept in a store (Redis) by the
  driver. Its `_Ledger` here holds what this pool has obtained from the store and asks, through
  actions, for more:

  - Connections: before opening a connection to a host under a budget, the pool holds a lease
    from the store (`RequestLease`). The store refuses while the host is cooling down fleet-wide
    (the pool then cools the host down too) or while the fleet holds `max_connections` leases
    (the pool asks again `LEASE_RETRY` later). A lease is bound to the slot it opened and given
    back (`ReleaseLease`) when the slot is gone; a granted lease nobody needs any more is given
    back in the same input.
  - Messages: the store hands out tokens of the fleet's rate in small batches (`RequestTokens`),
    each with the time at which it may be used; a token not used within its lifetime after that
    time is dropped. The first token of a request may come as late as the latest waiter can wait:
    it is the pool's place in the fleet's queue, so that a pool that asks while others keep the
    near future reserved is not starved by them. The batch starts at one token, doubles while
    every token of the last batch was used and halves when one was dropped, up to the tokens of
    `BATCH_HORIZON` seconds and `MAX_BATCH`, so a fast sender makes far fewer than one store round
    trip per message and a slow one wastes little.

When the store fails (`request_failed`, `store_failed`), the budget follows its
`on_store_failure`: "local" keeps to `local_share` of the budget with a local `Gcra` and a local
connection cap; "refuse" lets nothing need the store until it answers again (waiters that only a
refused budget could serve fail with BUDGET_UNAVAILABLE). Every `STORE_RETRY` seconds a request
that is needed goes to the store again, and the first answer puts the budget back in the fleet's
hands. Connections opened without a lease meanwhile, and those whose lease the store lost, are
"doomed": retired as soon as they are idle, so the fleet's cap holds again.

A waiter whose token cannot come before its deadline fails at once with RATE_LIMITED: when every
host is rate limited, `tokens_before(now, deadline)` is an upper bound on the tokens that can come
before the deadline, and a waiter with that many senders ahead of it in the queue cannot get one.
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from collections.abc import Sequence

from ._config import Host, SharedBudget
from ._errors import LocalProtocolError
from ._pool_actions import Action, ReleaseLease, RequestLease, RequestTokens
from ._ratelimit import Gcra

__all__ = ["BATCH_HORIZON", "LEASE_RETRY", "STORE_RETRY", "Admission"]

# How long after a refusal for lack of room in the fleet the pool asks again (the store has no
# way to say when a lease will be given back).
LEASE_RETRY = 0.05
# How long after a store failure the pool tries the store again.
STORE_RETRY = 1.0
# A batch of fleet tokens reaches at most this far ahead, so that one process does not reserve
# the fleet's near future for itself.
BATCH_HORIZON = 0.1
# The shortest lifetime of a fleet token (half an emission interval otherwise): below it, the
# driver's own scheduling delay would drop tokens at very high rates.
MIN_TOKEN_LIFETIME = 0.02
# The most tokens one request asks for: beyond it, the store's script and the reply grow for
# little gain (one round trip per 32 messages at most).
MAX_BATCH = 32

_FLEET = "fleet"
_LOCAL = "local"
_REFUSE = "refuse"


class _Ledger:
    """One shared budget as this pool holds it."""

    __slots__ = (
        "batch",
        "batch_cap",
        "budget",
        "cap",
        "doomed",
        "lease_request",
        "lease_retry_at",
        "lease_wanted",
        "lifetime",
        "local",
        "local_cap",
        "mode",
        "rate",
        "slots",
        "spare",
        "store_retry_at",
        "token_request",
        "token_retry_at",
        "tokens",
        "wasted",
    )

    def __init__(self, budget: SharedBudget) -> None:
        self.budget = budget
        rate = budget.max_messages_per_second
        self.rate = rate
        self.cap = budget.max_connections
        self.mode = _FLEET
        self.store_retry_at: float | None = None
        # Connections.
        self.spare: list[str | None] = []
        self.lease_request: int | None = None
        self.lease_retry_at: float | None = None
        self.lease_wanted: int | None = None
        self.slots: dict[int, str | None] = {}
        self.doomed: set[int] = set()
        # Messages: the times at which the fleet's tokens in hand may be used, in order.
        self.tokens: deque[float] = deque()
        self.token_request: int | None = None
        self.token_retry_at: float | None = None
        self.lifetime = max(0.5 / rate, MIN_TOKEN_LIFETIME) if rate else 0.0
        self.batch = 1
        self.batch_cap = min(MAX_BATCH, max(1, math.floor(rate * BATCH_HORIZON))) if rate else 0
        self.wasted = False
        # The per-process share used while the store is unreachable (policy "local").
        share = budget.local_share
        self.local = (
            Gcra(rate * share, max(1, math.floor((budget.burst or 1) * share)))
            if rate is not None and share is not None
            else None
        )
        self.local_cap = (
            math.floor(self.cap * share) if self.cap is not None and share is not None else None
        )

    def drop_expired(self, now: float) -> None:
        tokens = self.tokens
        lifetime = self.lifetime
        while tokens and tokens[0] + lifetime <= now:
            tokens.popleft()
            self.wasted = True

    def has_token(self, now: float) -> bool:
        if self.rate is None:
            return True
        self.drop_expired(now)
        tokens = self.tokens
        if tokens and tokens[0] <= now:
            return True
        # Tokens the fleet granted stay good while the store is away; beyond them, only the
        # local share may be used, and only under the "local" policy.
        return self.mode is _LOCAL and self.local is not None and self.local.conforms(now)

    def available(self, now: float) -> float:
        """Roughly how many messages could start now (inf when the fleet has not said no)."""
        if self.rate is None:
            return math.inf
        self.drop_expired(now)
        due = bisect.bisect_right(self.tokens, now)
        if self.mode is _FLEET:
            # Tokens are only asked for when a connection is free to use them, so a pool that
            # has not asked yet must not wait for them to open one.
            pending = self.token_retry_at is not None and self.token_retry_at > now
            return due if pending else math.inf
        if self.mode is _LOCAL and self.local is not None:
            return due + self.local.available(now)
        return due

    def take(self, now: float) -> None:
        if self.rate is None:
            return
        # `has_token(now)` held: a fleet token in hand goes first, else the local share.
        if self.tokens and self.tokens[0] <= now:
            self.tokens.popleft()
        elif self.local is not None:
            self.local.take(now)

    def store_due(self, now: float) -> bool:
        """Whether a request may go to the store now."""
        return self.mode is _FLEET or (
            self.store_retry_at is not None and self.store_retry_at <= now
        )

    def tokens_before(self, now: float, deadline: float) -> int:
        """An upper bound on the tokens of this budget usable before `deadline`."""
        if self.rate is None:
            return 1 << 62
        self.drop_expired(now)
        held = bisect.bisect_left(self.tokens, deadline)
        if self.mode is _LOCAL:
            assert self.local is not None
            return held + self.local.count_before(now, deadline)
        start = now
        if self.mode is _REFUSE and self.store_retry_at is not None:
            start = max(start, self.store_retry_at)
        if self.token_retry_at is not None:
            start = max(start, self.token_retry_at)
        if deadline <= start:
            return held
        # Whatever the fleet does, it cannot hand out more than its rate and its burst.
        return held + math.ceil(self.rate * (deadline - start) + 1e-9) + (self.budget.burst or 1)


class Admission:
    """The limits of every host of one pool, by host index."""

    def __init__(self, hosts: Sequence[Host]) -> None:
        self._local: list[Gcra | None] = [
            None
            if host.max_messages_per_second is None
            else Gcra(host.max_messages_per_second, host.burst or 1)
            for host in hosts
        ]
        ledgers: dict[str, _Ledger] = {}
        self._ledger_of: list[_Ledger | None] = []
        for host in hosts:
            budget = host.budget
            if budget is None:
                self._ledger_of.append(None)
            else:
                self._ledger_of.append(ledgers.setdefault(budget.name, _Ledger(budget)))
        self._ledgers = list(ledgers.values())
        self._hosts = tuple(hosts)
        # Every host has a message rate: only then can a waiter be told at once it is too late.
        self.every_host_rated = all(
            local is not None or (ledger is not None and ledger.rate is not None)
            for local, ledger in zip(self._local, self._ledger_of, strict=True)
        )
        self.has_rates = any(
            local is not None or (ledger is not None and ledger.rate is not None)
            for local, ledger in zip(self._local, self._ledger_of, strict=True)
        )
        # Requests in flight: id -> (ledger, host index for a lease request, or -1 for tokens).
        self._requests: dict[int, tuple[_Ledger, int]] = {}
        self._next_request = 0
        self._closed = False

    # -------------------------------------------------------------------------- grants

    def grantable(self, host: int, now: float) -> bool:
        """Whether a message to `host` may start at `now`."""
        local = self._local[host]
        if local is not None and not local.conforms(now):
            return False
        ledger = self._ledger_of[host]
        return ledger is None or ledger.has_token(now)

    def take(self, host: int, now: float) -> None:
        """A grant to `host` at `now`: spend its tokens (`grantable` held)."""
        local = self._local[host]
        if local is not None:
            local.take(now)
        ledger = self._ledger_of[host]
        if ledger is not None:
            ledger.take(now)

    def rate_limited(self, host: int, now: float) -> bool:
        """Whether `host` lacks a token at `now` (as opposed to lacking nothing)."""
        return not self.grantable(host, now)

    def tokens_now(self, now: float) -> float:
        """Roughly how many messages could start now on all hosts together (inf if unlimited)."""
        total = 0.0
        for local, ledger in zip(self._local, self._ledger_of, strict=True):
            count = math.inf if local is None else local.available(now)
            if ledger is not None:
                count = min(count, ledger.available(now))
            total += count
        return total

    def tokens_before(self, now: float, deadline: float) -> int | None:
        """An upper bound on the tokens of all hosts together usable before `deadline`, or None
        when some host has no rate at all."""
        if not self.every_host_rated:
            return None
        total = 0
        by_ledger: dict[int, int] = {}
        for index, local in enumerate(self._local):
            count = (1 << 62) if local is None else local.count_before(now, deadline)
            ledger = self._ledger_of[index]
            if ledger is None or ledger.rate is None:
                total += count
            else:
                key = id(ledger)
                by_ledger[key] = by_ledger.get(key, 0) + count
        for ledger in self._ledgers:
            if ledger.rate is not None and id(ledger) in by_ledger:
                total += min(by_ledger[id(ledger)], ledger.tokens_before(now, deadline))
        return total

    # ---------------------------------------------------------------------- connections

    def may_open(self, host: int) -> bool:
        """Whether a connection to `host` may be opened now, as far as its budget goes."""
        ledger = self._ledger_of[host]
        if ledger is None:
            return True
        mode = ledger.mode
        if mode is _FLEET:
            return bool(ledger.spare)
        if mode is _LOCAL:
            return ledger.local_cap is None or len(ledger.slots) < ledger.local_cap
        return ledger.cap is None

    def want(self, host: int) -> None:
        """A connection to `host` is wanted and `may_open` said no: ask the store for a lease."""
        ledger = self._ledger_of[host]
        if ledger is not None and ledger.lease_wanted is None:
            ledger.lease_wanted = host

    def bind(self, host: int, slot: int) -> None:
        """Slot `slot` is opened to `host` (`may_open` held): it takes a lease, if it needs one."""
        ledger = self._ledger_of[host]
        if ledger is None:
            return
        lease = ledger.spare.pop() if ledger.mode is _FLEET else None
        ledger.slots[slot] = lease

    def slot_gone(self, host: int, slot: int, actions: list[Action]) -> None:
        """Slot `slot` is gone: its lease goes back to the store."""
        ledger = self._ledger_of[host]
        if ledger is None:
            return
        lease = ledger.slots.pop(slot, None)
        ledger.doomed.discard(slot)
        if lease is not None:
            actions.append(ReleaseLease(ledger.budget, lease))

    def doomed(self) -> list[int]:
        """Slots that must retire as soon as they are idle (no valid lease in the fleet)."""
        return [slot for ledger in self._ledgers for slot in ledger.doomed]

    def has_doomed(self) -> bool:
        return any(ledger.doomed for ledger in self._ledgers)

    def blocked(self, host: int, now: float, live: bool) -> bool:
        """Whether only a store that refuses stands between `host` and a waiter, and it will not
        be asked again yet. `live`: some slot of the host's budget exists (under a connection cap
        without a rate, it can still serve)."""
        ledger = self._ledger_of[host]
        if ledger is None or ledger.mode is not _REFUSE or ledger.store_due(now):
            return False
        if ledger.lease_request is not None or ledger.token_request is not None:
            return False
        if ledger.rate is not None:
            return not ledger.has_token(now)
        return ledger.cap is not None and not live

    def refusing(self, host: int) -> bool:
        """Whether the budget of `host` refuses: its store does not answer, under "refuse"."""
        ledger = self._ledger_of[host]
        return ledger is not None and ledger.mode is _REFUSE

    def budget_live(self, host: int) -> bool:
        """Whether some slot is open under the budget of `host`."""
        ledger = self._ledger_of[host]
        return ledger is not None and bool(ledger.slots)

    # ------------------------------------------------------------------------- the store

    def flush(
        self, now: float, demand: int, actions: list[Action], *, keep_spare: bool, wait: float
    ) -> None:
        """End of a settling pass: give back leases nobody took (unless `keep_spare`: something
        still wants a connection), ask the store for what is wanted.

        `demand` is how many waiters could start a message now if they had a token; `wait` how
        long the latest of them can still wait.
        """
        for ledger in self._ledgers:
            budget = ledger.budget
            while ledger.spare and not (keep_spare and not self._closed):
                lease = ledger.spare.pop()
                if lease is not None:
                    actions.append(ReleaseLease(budget, lease))
            wanted = ledger.lease_wanted
            ledger.lease_wanted = None
            if self._closed:
                continue
            if ledger.lease_retry_at is not None and ledger.lease_retry_at <= now:
                ledger.lease_retry_at = None
            due = ledger.store_due(now)
            if (
                wanted is not None
                and due
                and ledger.lease_request is None
                and ledger.lease_retry_at is None
            ):
                request = self._new_request(ledger, wanted)
                ledger.lease_request = request
                actions.append(RequestLease(request, budget, self._hosts[wanted]))
            if ledger.rate is None or ledger.token_request is not None or demand <= 0 or not due:
                continue
            if ledger.mode is not _FLEET:
                # The store is due another try: one token, which also brings the budget back.
                count = 1
            else:
                if ledger.token_retry_at is not None:
                    if ledger.token_retry_at > now:
                        continue
                    ledger.token_retry_at = None
                ledger.drop_expired(now)
                need = demand - len(ledger.tokens)
                if need <= 0:
                    continue
                if ledger.wasted:
                    ledger.batch = max(1, ledger.batch // 2)
                    ledger.wasted = False
                count = min(ledger.batch_cap, max(need, ledger.batch))
            request = self._new_request(ledger, -1)
            ledger.token_request = request
            actions.append(RequestTokens(request, budget, count, BATCH_HORIZON, max(wait, 0.0)))

    def _new_request(self, ledger: _Ledger, host: int) -> int:
        request = self._next_request
        self._next_request += 1
        self._requests[request] = (ledger, host)
        return request

    def _take_request(self, request: int, lease: bool) -> tuple[_Ledger, int]:
        entry = self._requests.get(request) if isinstance(request, int) else None
        if entry is None or (entry[1] >= 0) is not lease:
            raise LocalProtocolError(f"unknown {'lease' if lease else 'token'} request {request!r}")
        del self._requests[request]
        ledger = entry[0]
        if entry[1] >= 0:
            ledger.lease_request = None
        else:
            ledger.token_request = None
        return entry

    def _recovered(self, ledger: _Ledger) -> None:
        if ledger.mode is _FLEET:
            return
        ledger.mode = _FLEET
        ledger.store_retry_at = None
        # Connections opened without a lease while the store was away retire when idle.
        if ledger.cap is not None:
            ledger.doomed.update(slot for slot, lease in ledger.slots.items() if lease is None)

    def lease_granted(self, request: int, lease: str | None, actions: list[Action]) -> None:
        ledger, _ = self._take_request(request, lease=True)
        if lease is not None and not isinstance(lease, str):
            raise LocalProtocolError("lease must be a string or None")
        self._recovered(ledger)
        if self._closed:
            if lease is not None:
                actions.append(ReleaseLease(ledger.budget, lease))
            return
        ledger.spare.append(lease)

    def lease_refused(
        self, request: int, now: float, retry_at: float | None, cooling_until: float | None
    ) -> tuple[int, float] | None:
        """Returns (host, until) when the refusal says the host is cooling down fleet-wide."""
        ledger, host = self._take_request(request, lease=True)
        self._recovered(ledger)
        if cooling_until is not None:
            return host, float(cooling_until)
        ledger.lease_retry_at = now + LEASE_RETRY if retry_at is None else max(retry_at, now)
        return None

    def tokens_granted(
        self, request: int, now: float, times: Sequence[float], retry_at: float | None
    ) -> None:
        ledger, _ = self._take_request(request, lease=False)
        self._recovered(ledger)
        granted = sorted(float(at) for at in times)
        if granted:
            if not ledger.wasted and len(granted) >= ledger.batch:
                ledger.batch = min(ledger.batch_cap, ledger.batch * 2)
            ledger.tokens.extend(granted)
            if len(ledger.tokens) > 1 and ledger.tokens[-1] < ledger.tokens[0]:
                ledger.tokens = deque(sorted(ledger.tokens))
            ledger.token_retry_at = None
        elif retry_at is not None:
            ledger.token_retry_at = max(float(retry_at), now)

    def request_failed(self, request: int, now: float) -> SharedBudget:
        entry = self._requests.pop(request, None) if isinstance(request, int) else None
        if entry is None:
            raise LocalProtocolError(f"unknown request {request!r}")
        ledger, host = entry
        if host >= 0:
            ledger.lease_request = None
        else:
            ledger.token_request = None
        self._store_down(ledger, now)
        return ledger.budget

    def store_failed(self, budget: str, now: float) -> None:
        ledger = self._ledger(budget)
        # Renewals keep failing while the store is away: only the first one counts, so that they
        # do not push the next try of the store further and further away.
        if ledger.mode is _FLEET:
            self._store_down(ledger, now)

    def _store_down(self, ledger: _Ledger, now: float) -> None:
        ledger.mode = _LOCAL if ledger.budget.on_store_failure == "local" else _REFUSE
        ledger.store_retry_at = now + STORE_RETRY
        ledger.lease_retry_at = None
        ledger.token_retry_at = None

    def lease_lost(self, budget: str, lease: str) -> None:
        ledger = self._ledger(budget)
        if lease in ledger.spare:
            ledger.spare.remove(lease)
            return
        for slot, held in ledger.slots.items():
            if held == lease:
                # Its connection stays until it is idle; the store no longer counts it, so the
                # slot no longer owns a lease to give back.
                ledger.slots[slot] = None
                ledger.doomed.add(slot)
                return

    def _ledger(self, budget: str) -> _Ledger:
        for ledger in self._ledgers:
            if ledger.budget.name == budget:
                return ledger
        raise LocalProtocolError(f"unknown budget {budget!r}")

    def close(self) -> None:
        self._closed = True

    def next_deadline(self, now: float, waiting: bool) -> float | None:
        """The earliest time, after `now`, at which a token or a store retry is due."""
        earliest: float = math.inf
        at: float | None
        if waiting:
            for local in self._local:
                if local is not None:
                    at = local.ready_at()
                    if now < at < earliest:
                        earliest = at
        for ledger in self._ledgers:
            if waiting:
                for at in (ledger.token_retry_at, ledger.store_retry_at):
                    if at is not None and now < at < earliest:
                        earliest = at
                if ledger.tokens:
                    at = ledger.tokens[0]
                    if now < at < earliest:
                        earliest = at
                if ledger.mode is _LOCAL and ledger.local is not None:
                    at = ledger.local.ready_at()
                    if now < at < earliest:
                        earliest = at
            at = ledger.lease_retry_at
            if at is not None and now < at < earliest:
                earliest = at
        return None if earliest == math.inf else earliest

    def statistics(self) -> dict[str, dict[str, object]]:
        return {
            ledger.budget.name: {
                "mode": ledger.mode,
                "leases": sum(1 for lease in ledger.slots.values() if lease is not None),
                "tokens_held": len(ledger.tokens),
            }
            for ledger in self._ledgers
        }
