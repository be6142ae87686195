"""A Redis that is up but does not answer: the shared budget's policy applies and nothing hangs.

The test's own redis-server is frozen with SIGSTOP while a pool sends through a SharedBudget to a
recording SMTP server on 127.0.0.1: its port and the pool's connections stay open, and nothing
is answered, which no error and no closed socket announces (unlike a Redis that is down). Each
send is timed on the pool's clock (the event loop's, which `anyio.current_time()` reads) and must
end by its own deadline, `send_timeout`, give or take a scheduling margin. Verdicts are judged
against the SMTP server's record of what it stored. The pool is then left while Redis is frozen
again: its exit is bounded, and nothing of it runs or stays connected afterwards.
"""

from __future__ import annotations

import itertools
import socket
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

import anyio
from pooledmail_anyio import FailureKind, SendFailed, SharedBudget, SMTPPool
from pooledmail_anyio._budget import keys
from tests.polling import until
from tests.servers.fixtures import redis_instance
from tests.servers.redis import RedisServer

from .links import budgeted_config
from .recording_server import RecordingServer
from .test_fleet import redis_command

SEND_TIMEOUT = 1.0
STORE_TIMEOUT = 0.15
LEASE_TTL = 0.6  # renewed every 0.2 s: a frozen store fails the renewals at once
FREEZE = 1.5  # longer than SEND_TIMEOUT, LEASE_TTL and STORE_RETRY (1 s) together
# What a send may overrun its deadline by on a loaded 2-core machine: scheduling, not waiting.
MARGIN = 0.5
# After the freeze, tokens the fleet granted before it may still be used (BATCH_HORIZON, 0.1 s,
# and a token's lifetime), and the first store call must time out before the policy applies.
SETTLE = STORE_TIMEOUT + 0.1 + 0.2
SENDERS = 3
# A freeze the test does not end itself (a hang under test) is ended by a watchdog after this
# long, so that a defect fails the test (on the bounds below) instead of hanging it.
WATCHDOG = 10.0


@pytest.fixture
def frozen_redis() -> Iterator[RedisServer]:
    """A redis-server of the test's own, resumed and stopped whatever the test did to it."""
    with redis_instance() as server:
        yield server


class Freezer:
    """Pauses a RedisServer, and resumes it at the latest WATCHDOG seconds later, from a thread:
    even a shielded wait of the event loop for the store ends."""

    def __init__(self, server: RedisServer) -> None:
        self.server = server
        self._watchdog: threading.Timer | None = None

    def freeze(self) -> None:
        self.thaw()
        self.server.pause()
        self._watchdog = threading.Timer(WATCHDOG, self.server.resume)
        self._watchdog.daemon = True
        self._watchdog.start()

    def thaw(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        self.server.resume()


@dataclass
class Attempt:
    message_id: str
    started: float
    ended: float
    failure: SendFailed | None


def connected_clients(redis: RedisServer) -> int:
    """Redis's own count of its client connections, this one's included (INFO, by hand)."""
    with socket.create_connection((redis.host, redis.port), timeout=5) as connection:
        connection.sendall(b"*2\r\n$4\r\nINFO\r\n$7\r\nclients\r\n")
        reply = connection.makefile("rb")
        length = int(reply.readline()[1:])
        text = reply.read(length).decode()
    (line,) = [line for line in text.splitlines() if line.startswith("connected_clients:")]
    return int(line.partition(":")[2])


@pytest.mark.parametrize("policy", ["refuse", "local"])
@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
async def test_a_frozen_store_follows_the_policy_no_send_hangs_and_the_pool_exits(
    anyio_backend: str, policy: str, frozen_redis: RedisServer
) -> None:
    clock = anyio.current_time  # the pool's clock: the event loop's
    name = f"frozen-{policy}-{anyio_backend}"
    budget = SharedBudget(
        name,
        redis_url=frozen_redis.url,
        max_connections=4,
        max_messages_per_second=100,
        burst=4,
        lease_ttl=LEASE_TTL,
        store_timeout=STORE_TIMEOUT,
        on_store_failure=policy,
        local_share=0.5 if policy == "local" else None,
    )
    attempts: list[Attempt] = []
    modes: set[str] = set()
    stopping = False
    freezer = Freezer(frozen_redis)
    tasks_before = {task.id for task in anyio.get_running_tasks()}
    with RecordingServer(final_reply_delay=0.005) as server:
        config = budgeted_config(
            server.port,
            budget,
            max_size=4,
            send_timeout=SEND_TIMEOUT,
            acquire_timeout=SEND_TIMEOUT,
        )
        try:
            # Whatever hangs outside a shield fails the test here rather than hanging it.
            with anyio.fail_after(3 * WATCHDOG):
                async with SMTPPool(config) as pool:

                    async def sender(tag: int) -> None:
                        for number in itertools.count():
                            if stopping:
                                return
                            message_id = f"<s{tag}-{number}@frozen.test>"
                            data = f"Message-ID: {message_id}\r\n\r\nhello\r\n".encode()
                            started = clock()
                            failure: SendFailed | None = None
                            try:
                                await pool.send_raw(
                                    data, sender="a@frozen.test", recipients=["b@t"]
                                )
                            except SendFailed as failed:
                                failure = failed
                            attempts.append(Attempt(message_id, started, clock(), failure))
                            modes.add(str(pool.budget_statistics()[name]["mode"]))
                            if failure is not None:
                                await anyio.sleep(0.05)  # a refusal comes at once: do not spin

                    def accepted_since(moment: float) -> int:
                        return sum(1 for a in attempts if a.failure is None and a.started >= moment)

                    async with anyio.create_task_group() as senders:
                        for tag in range(SENDERS):
                            senders.start_soon(sender, tag)
                        # Connections open under leases, tokens batched: the pool is in its stride.
                        await until(lambda: accepted_since(0.0) >= 10, what="the first sends")
                        frozen_at = clock()
                        freezer.freeze()
                        await anyio.sleep(FREEZE)
                        freezer.thaw()
                        thawed_at = clock()
                        # The pool tries the store again every second (STORE_RETRY), with the
                        # next call it needs; the first answer puts the budget back in the
                        # fleet's hands. The bound is generous; the time it took is reported.
                        await until(
                            lambda: (
                                pool.budget_statistics()[name]["mode"] == "fleet"
                                and accepted_since(thawed_at) >= 5
                            ),
                            what="the fleet's budget and sends after resume",
                            within=5,
                        )
                        back_at = clock()
                        # Frozen again while the senders send, and left frozen: their last sends
                        # and the pool's exit must not wait for it.
                        freezer.freeze()
                        await anyio.sleep(0.05)
                        stopping = True
                    exit_started = clock()
                exit_took = clock() - exit_started
        finally:
            freezer.thaw()
        stored = Counter(item.message_id for item in server.stored())
        await until(lambda: server.open_sessions == 0, what="SMTP sessions closed", within=5)

    durations = [a.ended - a.started for a in attempts]
    failures = [a for a in attempts if a.failure is not None]
    during = [a for a in attempts if frozen_at + SETTLE <= a.started and a.ended <= thawed_at]
    recovered = min(a.ended for a in attempts if a.failure is None and a.started >= thawed_at)
    report = (
        f"{len(attempts)} sends, longest {max(durations):.3f} s; "
        f"{len(failures)} failed {Counter(a.failure.kind.value for a in failures if a.failure)}; "
        f"{len(during)} during the freeze; after resume, first accepted in "
        f"{recovered - thawed_at:.3f} s, fleet mode by {back_at - thawed_at:.3f} s; "
        f"exit {exit_took:.3f} s; modes {sorted(modes)}"
    )
    print(report)

    # No send outlived its own deadline.
    assert max(durations) <= SEND_TIMEOUT + MARGIN, report
    # Every verdict is true: accepted means stored once, failed means not stored.
    assert all(count == 1 for count in stored.values()), "a message was stored twice"
    assert {a.message_id for a in attempts if a.failure is None} == set(stored), report
    assert not {a.message_id for a in failures} & set(stored), report
    assert during, report
    if policy == "refuse":
        assert "refuse" in modes, report
        # Every send that began once the store was silent and ended before it answered again
        # was refused, at once and for that reason, and definitely not accepted.
        assert all(a.failure is not None for a in during), report
        for attempt in failures:
            assert attempt.failure is not None
            assert attempt.failure.kind is FailureKind.BUDGET_UNAVAILABLE, report
            assert attempt.failure.definitely_not_accepted, report
    else:
        assert "local" in modes, report
        # The pool kept sending under its local share, and nothing failed.
        assert failures == [], report
        assert all(a.failure is None for a in during), report
    # The pool's exit did not wait for the frozen store beyond its bound (store_timeout for the
    # leases, the QUIT of idle connections to a server that answers at once).
    assert exit_took <= STORE_TIMEOUT + MARGIN, report
    # Nothing of the pool runs after its exit, nor stays connected to the store once it answers;
    # the leases it could not give back are given back by the bytes it had sent, or expire.
    assert {task.id for task in anyio.get_running_tasks()} <= tasks_before
    await until(
        lambda: connected_clients(frozen_redis) == 1, what="store connections closed", within=5
    )
    leases_key, _ = keys(budget)
    await until(
        lambda: redis_command(frozen_redis, "ZCARD", leases_key) == 0,
        what="the pool's leases gone from the store",
        within=2 * LEASE_TTL + 1,
    )
