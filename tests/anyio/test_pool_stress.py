"""Many concurrent sends through a pool, random sizes, plain and STARTTLS, DATA and BDAT: every
message the server stored is byte for byte the one sent."""

from __future__ import annotations

import random
import ssl
from collections import Counter

import pytest

import anyio
from pooledmail_anyio import Host, PoolConfig, SMTPPool

from . import fakesmtp
from .fakesmtp import FakeSMTPServer, Script

pytestmark = pytest.mark.anyio

SENDERS = 32
PER_SENDER = 2


# Every run draws the same sizes and read sizes (tests are deterministic); change it to explore.
SEED = 20261202


def body(rng: random.Random) -> bytes:
    r = rng.random()
    size = (
        rng.randrange(0, 200)
        if r < 0.3
        else rng.randrange(0, 70_000)
        if r < 0.8
        else rng.randrange(0, 2 << 20)
    )
    lines = []
    total = 0
    while total < size:
        n = rng.randrange(0, 990)
        line = bytes(rng.choice(b"abcdefghij .:-XYZ") for _ in range(min(n, 50))) * (n // 50 + 1)
        line = line[:n]
        if rng.random() < 0.1:
            line = b"." + line
        lines.append(line + b"\r\n")
        total += len(line) + 2
    return b"Subject: s\r\n\r\n" + b"".join(lines)


def unstuff(stored: bytes) -> bytes:
    lines = stored.split(b"\r\n")
    return b"\r\n".join(line[1:] if line.startswith(b".") else line for line in lines)


@pytest.mark.parametrize("chunking", [False, True], ids=["data", "bdat"])
@pytest.mark.parametrize("tls", [False, True], ids=["plain", "starttls"])
async def test_every_message_arrives_byte_for_byte(
    tls: bool,
    chunking: bool,
    server_tls: ssl.SSLContext,
    client_tls: ssl.SSLContext,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seed = SEED  # fixed: the same sizes and chunking on every run
    rng = random.Random(seed)
    read_rng = random.Random(seed + 1)

    async def _read(self: fakesmtp._Session) -> None:
        try:
            chunk = await self.stream.receive(read_rng.choice([1, 17, 1000, 65536, 1 << 20]))
        except anyio.EndOfStream:
            self.record.closed_by_client = True
            raise fakesmtp._Stop from None
        self.record.reads.append(chunk)
        self.buffer += chunk

    monkeypatch.setattr(fakesmtp._Session, "_read", _read)
    extensions = ["PIPELINING", "8BITMIME", "SIZE 100000000"]
    if chunking:
        extensions.append("CHUNKING")
    if tls:
        extensions.append("STARTTLS")
    server = FakeSMTPServer(
        Script(extensions=tuple(extensions), tls_context=server_tls if tls else None)
    )
    bodies = [[body(rng) for _ in range(PER_SENDER)] for _ in range(SENDERS)]
    async with server.running():
        config = PoolConfig(
            [Host("127.0.0.1", server.port, tls="starttls" if tls else "none")],
            max_size=12,
            max_retries=0,
        )
        async with SMTPPool(config, ssl_context=client_tls if tls else None) as pool:

            async def sender(i: int) -> None:
                for b in bodies[i]:
                    await pool.send_raw(b, sender="a@example.com", recipients=["b@example.com"])

            with anyio.fail_after(60):
                async with anyio.create_task_group() as tg:
                    for i in range(SENDERS):
                        tg.start_soon(sender, i)
            stats = pool.statistics()
    print("bytes", sum(len(b) for bs in bodies for b in bs), "created", stats.created_total)
    stored = [m if chunking else unstuff(m) for m in server.messages]
    sent = [b for bs in bodies for b in bs]
    if not chunking:
        sent = [b if b.endswith(b"\r\n") else b + b"\r\n" for b in sent]
    assert Counter(stored) == Counter(sent)
    for connection in server.connections:
        assert not connection.desynced
