"""Hostile servers, generated: whatever a server sends, the pool never hangs, never raises
anything but `SendFailed`, keeps its memory within its limits, and tells the truth.

Hypothesis draws a server: for each of its first connections, what it does with each reply it
owes (answer normally, refuse, 421, disconnect, reset, stall, drip it byte by byte, send random
bytes, an overlong line, an endless line, a wrong code, leave it out, add one nobody asked for,
or push one later while the client is idle), and which extensions it offers. Later connections
are healthy, so the pool must recover. A few messages go through it one after the other.

Checks, for every example:

* never a hang: each send, and the whole example, is bounded (`fail_after`);
* nothing but `SendFailed` comes out of a send;
* bounded memory: the peak of what Python allocated during the example stays far below what an
  endless reply offers, and the server could not push an endless reply through (the client
  stopped reading at its `Limits`);
* every verdict against the server's record (verdicts.judge). A connection on which the server
  lied about which reply answers what (a reply left out, one too many, a code of another class
  than the one it acted on) is judged only on what no lie can make false: nothing stored twice,
  UNKNOWN_AFTER_DATA only once the whole terminator reached the server;
* afterwards nothing is leased or waiting, and the pool still sends.
"""

from __future__ import annotations

import tracemalloc
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import anyio
from pooledmail_anyio import Host, Limits, PoolConfig, SendFailed, SendResult, SMTPPool

from ..polling import until
from .fakesmtp import ENDLESS_CAP, FakeSMTPServer, Fault, Script
from .verdicts import Sent, judge, message, settled

pytestmark = pytest.mark.anyio

EXAMPLES = 100  # per backend
LIMITS = Limits(max_line_length=1024, max_reply_lines=20, max_buffered_bytes=64 << 10)
# Far below ENDLESS_CAP, far above what a few connections within LIMITS need.
MEMORY_BOUND = 8 << 20

OPTIONS: dict[str, Any] = {
    "max_size": 2,
    "retry_base_delay": 0.001,
    "connect_timeout": 0.2,
    "command_timeout": 0.2,
    "acquire_timeout": 3.0,
    "reconnect_cooldown": 0.01,
    "max_reconnect_cooldown": 0.01,
}
WRONG_LINES = [
    b"354 go on\r\n",
    b"220 hello again\r\n",
    b"250 fine\r\n",
    b"999 nine nine nine\r\n",
    b"099 zero\r\n",
    b"25 short\r\n",
    b"250-to be continued\r\n",
    b"554 5.7.1 no\r\n",
    b"451 4.3.0 later\r\n",
    b"334 VXNlcm5hbWU6\r\n",
    b"221 bye\r\n",
]
KINDS = ["normal"] * 3 + [
    "disconnect",
    "rst",
    "421",
    "4xx",
    "5xx",
    "stall",
    "malformed",
    "extra",
    "missing",
    "drip",
    "overlong",
    "endless",
    "wrong_code",
    "late",
]
stray = st.one_of(st.sampled_from(WRONG_LINES), st.binary(min_size=1, max_size=40))


@st.composite
def acts(draw: st.DrawFn) -> Fault:
    kind = draw(st.sampled_from(KINDS))
    data, delay = b"", 0.0
    if kind == "malformed":
        data = draw(st.binary(min_size=1, max_size=80))
    elif kind in ("extra", "late"):
        data = draw(stray)
        delay = draw(st.sampled_from([0.001, 0.02, 0.06]))
    elif kind == "wrong_code":
        data = draw(st.sampled_from(WRONG_LINES))
    elif kind == "drip":
        delay = draw(st.sampled_from([0.0005, 0.003, 0.02]))
    elif kind == "overlong":
        data = b"x" * draw(st.sampled_from([600, 3000, 70000]))
    return Fault(kind, data=data, delay=delay)


@st.composite
def servers(draw: st.DrawFn) -> tuple[tuple[str, ...], list[list[Fault]]]:
    extensions = tuple(
        draw(st.lists(st.sampled_from(["PIPELINING", "CHUNKING", "8BITMIME"]), unique=True))
    )
    # Each hostile connection behaves for a while (so that misdeeds land at every point of the
    # session: greeting, EHLO, MAIL, RCPT, DATA, the final reply, RSET, QUIT), then misbehaves.
    connection = st.tuples(st.integers(0, 8), st.lists(acts(), min_size=1, max_size=6)).map(
        lambda lead_acts: [Fault("normal")] * lead_acts[0] + lead_acts[1]
    )
    hostile = draw(st.lists(connection, min_size=1, max_size=3))
    return extensions, hostile


class Example:
    number = 0


@settings(
    max_examples=EXAMPLES,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    server_spec=servers(),
    sizes=st.lists(st.integers(0, 3000), min_size=1, max_size=3),
    retries=st.integers(0, 1),
)
async def test_a_hostile_server_never_hangs_crashes_or_lies_through_the_pool(
    anyio_backend: str,
    server_spec: tuple[tuple[str, ...], list[list[Fault]]],
    sizes: list[int],
    retries: int,
) -> None:
    extensions, hostile = server_spec
    Example.number += 1
    name = f"h{Example.number}"

    def script(n: int) -> Script:
        acts = hostile[n] if n < len(hostile) else []
        return Script(extensions=extensions, acts=acts)

    server = FakeSMTPServer(script)
    tracing = tracemalloc.is_tracing()
    if not tracing:
        tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        before = tracemalloc.get_traced_memory()[0]
        sends: list[Sent] = []
        with anyio.fail_after(20):
            async with server.running():
                host = Host("127.0.0.1", server.port, tls="none")
                config = PoolConfig([host], max_retries=retries, **OPTIONS)
                async with SMTPPool(config, limits=LIMITS) as pool:
                    for index, size in enumerate(sizes):
                        sends.append(await _send(pool, f"{name}-{index}", size))
                    stats = pool.statistics()
                    # Recovery: the hostile connections are used up; a healthy one must serve.
                    for index in range(len(hostile) + 2):
                        sends.append(await _send(pool, f"{name}-r{index}", 100))
                        if isinstance(sends[-1].outcome, SendResult):
                            break
                assert await settled(server)
        peak = tracemalloc.get_traced_memory()[1] - before
    finally:
        if not tracing:
            tracemalloc.stop()
    assert (stats.leased, stats.waiting) == (0, 0)
    assert isinstance(sends[-1].outcome, SendResult), sends[-1].outcome
    assert peak < MEMORY_BOUND, peak
    assert all(c.endless_bytes < ENDLESS_CAP for c in server.connections)
    lenient = frozenset(
        sent.tag
        for sent in sends
        if any(
            c.desynced and f"<{sent.tag}@".encode() in c.received_bytes for c in server.connections
        )
    )
    wrong = judge(
        server,
        sends,
        bdat="CHUNKING" in extensions,
        chunk_size=LIMITS.bdat_chunk_size,
        lenient=lenient,
    )
    assert not wrong, wrong


async def _send(pool: SMTPPool, tag: str, size: int) -> Sent:
    data = message(tag, size)
    outcome: SendResult | SendFailed
    with anyio.fail_after(5):
        try:
            outcome = await pool.send_raw(
                data, sender=f"{tag}@example.com", recipients=["b@example.com"]
            )
        except SendFailed as failure:
            outcome = failure
    return Sent(tag, data, outcome)


async def test_a_pool_keeps_no_greeting_however_long_the_server_made_it(
    anyio_backend: str,
) -> None:
    # A greeting may be max_reply_lines lines of max_line_length each (about 400 KB with the
    # default limits); the pool needs none of it once a session is ready, so 8 idle connections
    # must not hold 8 of them.
    lines = 200
    text = "x" * 2000
    greeting = "".join(f"220-{text}\r\n" for _ in range(lines - 1)) + "220 ready"
    server = FakeSMTPServer(Script(greeting=greeting))
    tracing = tracemalloc.is_tracing()
    if not tracing:
        tracemalloc.start()
    try:
        with anyio.fail_after(20):
            async with server.running():
                host = Host("127.0.0.1", server.port, tls="none")
                before = tracemalloc.get_traced_memory()[0]
                config = PoolConfig([host], min_size=8, max_size=8, refill_delay=0.0)
                async with SMTPPool(config) as pool:
                    await until(lambda: pool.statistics().idle >= 8, what="8 idle connections")
                    held = tracemalloc.get_traced_memory()[0] - before
    finally:
        if not tracing:
            tracemalloc.stop()
    # Kept, the 8 greetings alone would be over 8 times its size (3.5 to 4 MB measured); without
    # them the pool's 8 connections and its buffers held 0.2 (trio) to 0.7 MB (asyncio).
    assert held < 4 * len(greeting), (held, len(greeting))
