"""Outages under steady load, and the cooldown law (shared by test_outages*.py).

Time is `anyio.current_time()`: real on both backends, virtual under trio's MockClock, so the same
scenario runs in both. A relay goes down by dropping every session and closing each new
connection as soon as it is accepted (the server counts and times every attempt, so the law is
judged on the server's record), or by closing its listening socket altogether (a restart:
connection refused).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import anyio
from pooledmail_anyio import FailureKind, PoolConfig, SendFailed, SendResult, SMTPPool

from .fakesmtp import FakeSMTPServer
from .verdicts import Sent, message


def as_sent(sends: Sequence[Send]) -> list[Sent]:
    return [Sent(s.tag, s.data, s.outcome) for s in sends]


@dataclass
class Send:
    tag: str
    data: bytes
    host_key: str
    start: float
    deadline: float  # when its wait for a connection ends at the latest
    end: float = 0.0
    outcome: SendResult | SendFailed | None = None
    # The cooldown end of every host right after a failure, as the pool saw it.
    cooldowns_at_end: dict[str, float | None] = field(default_factory=dict)

    @property
    def failed(self) -> bool:
        return isinstance(self.outcome, SendFailed)


async def one_send(pool: SMTPPool, number: int, sends: list[Send]) -> None:
    now = anyio.current_time()
    config: PoolConfig = pool._config
    tag = f"o{number}"
    data = message(tag)
    sent = Send(tag, data, "", now, now + min(config.acquire_timeout, config.send_timeout))
    sends.append(sent)
    try:
        sent.outcome = await pool.send_raw(
            data, sender=f"{tag}@example.com", recipients=["b@example.com"]
        )
        sent.host_key = sent.outcome.host
    except SendFailed as failure:
        sent.outcome = failure
        sent.host_key = failure.host or ""
        hosts = pool.statistics().hosts
        sent.cooldowns_at_end = {key: h.cooldown_until for key, h in hosts.items()}
    sent.end = anyio.current_time()


async def steady_load(pool: SMTPPool, period: float, until: float, sends: list[Send]) -> None:
    """A new send every `period` seconds until `until`, each in its own task; returns once every
    send has ended.

    The sends keep to a schedule: those due while this process was stalled (a loaded machine)
    start at once when it runs again, so the load does not depend on how busy the machine is.
    """
    async with anyio.create_task_group() as senders:
        number = 0
        due = anyio.current_time()
        while due < until:
            senders.start_soon(one_send, pool, number, sends)
            number += 1
            due += period
            await anyio.sleep_until(due)


def attempts_between(server: FakeSMTPServer, start: float, end: float) -> list[float]:
    return [t for t in server.attempt_times if start <= t < end]


def cooldown_law(
    attempts: Sequence[float],
    config: PoolConfig,
    *,
    burst_window: float,
    demand: bool,
    slack: float,
    early_slack: float = 0.0,
) -> list[str]:
    """How `attempts` (times of connection attempts to one host during one outage, which began
    with the first of them) break the cooldown law, in words.

    The first attempts may come together (connections opened in parallel before the first
    failure was known, within `burst_window`); each later one starts a cooldown no shorter than
    `(1 - jitter) * min(cap, base * 2**(n - 1))` after the previous one (n-th counted failure),
    so there is at most one attempt per cooldown period. With `demand` (a send waiting whenever
    a cooldown ends) each also comes no later than `min(cap, (1 + jitter) * base * 2**(n - 1))`
    plus `slack`: the pool does try again as soon as it may.

    `early_slack` is for real time: the fake server stamps an attempt when its accepting task
    wakes up, after the kernel accepted the connection, and under load that lag differs between
    two attempts by milliseconds. (One CI run, when the stamp was taken later still, as the
    session's task first ran, saw an attempt 38 ms after the one before against a cooldown of
    at least 40 ms counted on the pool's own clock.) A gap short by less than `early_slack` is
    not counted against the pool.
    """
    base, cap, jitter = (
        config.reconnect_cooldown,
        config.max_reconnect_cooldown,
        config.cooldown_jitter,
    )
    if not attempts:
        return []
    first = attempts[0]
    later = [t for t in attempts if t - first > burst_window]
    wrong = []
    previous = first
    for n, t in enumerate(later, start=1):
        nominal = min(cap, base * 2 ** (n - 1))
        shortest = (1 - jitter) * nominal
        longest = min(cap, (1 + jitter) * base * 2 ** (n - 1))
        gap = t - previous
        if gap < shortest - early_slack - 1e-6:
            wrong.append(f"attempt {n} after {gap:.3f} s, before the cooldown of {shortest:.3f} s")
        if demand and gap > longest + slack:
            wrong.append(f"attempt {n} after {gap:.3f} s, later than the cooldown of {longest:.3f}")
        previous = t
    return wrong


def fail_fast_law(
    sends: Sequence[Send], hosts: Sequence[str], *, never_up: bool = False
) -> list[str]:
    """A send may fail before its deadline only when no recovery could come before it: at that
    moment every host cooled down until at least its deadline. One exception: while no host has
    ever worked (`never_up`), a send whose own connection attempt failed learns it at once, with
    that attempt's kind (docs/guide/options.md, "Cooldowns")."""
    wrong = []
    for sent in sends:
        if not sent.failed or sent.end >= sent.deadline - 1e-6:
            continue
        assert isinstance(sent.outcome, SendFailed)
        if sent.outcome.kind not in (FailureKind.HOSTS_UNAVAILABLE, FailureKind.CONNECT_FAILED):
            continue  # failed on a connection it had: not a question of waiting
        if never_up and sent.outcome.kind is FailureKind.CONNECT_FAILED:
            continue
        for key in hosts:
            until = sent.cooldowns_at_end.get(key)
            if until is None or until < sent.deadline - 1e-6:
                wrong.append(
                    f"send at {sent.start:.3f} failed fast at {sent.end:.3f} although {key} "
                    f"could recover at {until} before its deadline {sent.deadline:.3f}"
                )
                break
    return wrong
