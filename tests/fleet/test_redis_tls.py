"""rediss:// checks that the Redis server's certificate names the host in the URL, as the SMTP
side does: a man in the middle with a valid certificate for another name is a store failure.

Two real redis-servers listen with TLS only on 127.0.0.1, both with certificates from the CA the
URL trusts (?ssl_ca_certs=): one for 127.0.0.1, the name the URL uses, one for another name.
coredis 6 alone, given the URL, checked the chain but not the name unless the URL said
?ssl_check_hostname=true, so both were accepted. Verdicts are judged against the SMTP server's
record of what it stored and against the leases Redis itself holds.
"""

from __future__ import annotations

import logging
import shutil
import socket
import ssl
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import pytest
import trustme

import anyio
from pooledmail_anyio import FailureKind, SendFailed, SharedBudget, SMTPPool
from pooledmail_anyio._budget import keys
from tests.servers._process import MissingBinary
from tests.servers.fixtures import unavailable
from tests.servers.redis import RedisServer, RedisTLS

from .links import budgeted_config, send_or_failure
from .recording_server import RecordingServer

SECRET = "hunter2-for-redis"
OTHER_NAME = "redis.elsewhere.test"
SENDS = 4


class TLSRedis(NamedTuple):
    right: RedisServer  # a certificate for 127.0.0.1
    wrong: RedisServer  # a certificate for OTHER_NAME, from the same CA
    ca_file: Path


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TLSRedis]:
    directory = tmp_path_factory.mktemp("redis-tls")
    ca = trustme.CA()
    ca_file = directory / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    servers: list[RedisServer] = []
    try:
        for label, name in (("right", "127.0.0.1"), ("wrong", OTHER_NAME)):
            leaf = ca.issue_cert(name)
            cert_file, key_file = directory / f"{label}.pem", directory / f"{label}.key"
            cert_file.write_bytes(b"".join(pem.bytes() for pem in leaf.cert_chain_pems))
            leaf.private_key_pem.write_to_path(str(key_file))
            try:
                server = RedisServer(
                    ["--requirepass", SECRET], tls=RedisTLS(cert_file, key_file, ca_file)
                )
            except MissingBinary as missing:
                unavailable(str(missing))
            servers.append(server)
            server.start()
        yield TLSRedis(servers[0], servers[1], ca_file)
    finally:
        for server in servers:
            server.close()


def url_of(server: RedisServer, ca_file: Path, extra: str = "") -> str:
    return f"rediss://:{SECRET}@{server.host}:{server.port}/0?ssl_ca_certs={ca_file}{extra}"


def leases_in_redis(server: RedisServer, ca_file: Path, budget: SharedBudget) -> int:
    """ZCARD of the budget's leases, asked of the TLS server by hand (RESP), trusting its CA."""
    context = ssl.create_default_context(cafile=str(ca_file))
    context.check_hostname = False  # the test's own look at a server it started
    request = b"".join(
        f"*{len(words)}\r\n".encode() + b"".join(f"${len(w)}\r\n{w}\r\n".encode() for w in words)
        for words in (["AUTH", SECRET], ["ZCARD", keys(budget)[0]])
    )
    with (
        socket.create_connection((server.host, server.port), timeout=5) as raw,
        context.wrap_socket(raw) as connection,
    ):
        connection.sendall(request)
        replies = connection.makefile("rb")
        assert replies.readline() == b"+OK\r\n"
        reply = replies.readline()
    assert reply.startswith(b":"), reply
    return int(reply[1:])


def message(number: int) -> bytes:
    return f"Message-ID: <m{number}@tls.test>\r\n\r\nhello\r\n".encode()


class Outcome(NamedTuple):
    failures: list[SendFailed | None]
    stored: Counter[str]
    most_sessions: int
    leases_while_open: int
    statistics: dict[str, object]


async def send_through(redis: RedisServer, ca_file: Path, url: str, name: str) -> Outcome:
    """SENDS concurrent sends through a pool whose only host is under a budget of one
    connection kept in `redis` at `url` (on_store_failure='refuse')."""
    budget = SharedBudget(name, redis_url=url, max_connections=1, store_timeout=2.0)
    failures: list[SendFailed | None] = [None] * SENDS
    with RecordingServer(final_reply_delay=0.02) as server:
        async with SMTPPool(budgeted_config(server.port, budget, max_size=SENDS)) as pool:

            async def send(number: int) -> None:
                failures[number] = await send_or_failure(pool, message(number), "a@tls.test")

            async with anyio.create_task_group() as tg:
                for number in range(SENDS):
                    tg.start_soon(send, number)
            # The connection is idle in the pool, still under its lease.
            leases = await anyio.to_thread.run_sync(leases_in_redis, redis, ca_file, budget)
            statistics = pool.budget_statistics()[name]
        stored = Counter(item.message_id for item in server.stored())
        return Outcome(failures, stored, server.most_sessions, leases, statistics)


def all_stored() -> Counter[str]:
    return Counter(f"<m{number}@tls.test>" for number in range(SENDS))


@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
async def test_a_certificate_for_the_url_host_from_the_trusted_ca_is_taken(
    anyio_backend: str, tls_redis: TLSRedis
) -> None:
    name = f"tls-right-{anyio_backend}"
    outcome = await send_through(
        tls_redis.right, tls_redis.ca_file, url_of(tls_redis.right, tls_redis.ca_file), name
    )
    assert outcome.failures == [None] * SENDS
    assert outcome.stored == all_stored()
    assert outcome.most_sessions == 1  # the budget held: one connection for the fleet
    assert outcome.leases_while_open == 1  # and its lease is in that Redis
    assert outcome.statistics["store_failures"] == 0


@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
async def test_a_certificate_for_another_name_from_the_trusted_ca_is_a_store_failure(
    anyio_backend: str, tls_redis: TLSRedis, caplog: pytest.LogCaptureFixture
) -> None:
    # Before, coredis took any certificate its CAs had signed: all four sends went out.
    caplog.set_level(logging.DEBUG, logger="pooledmail")
    name = f"tls-wrong-{anyio_backend}"
    outcome = await send_through(
        tls_redis.wrong, tls_redis.ca_file, url_of(tls_redis.wrong, tls_redis.ca_file), name
    )
    for failure in outcome.failures:
        assert failure is not None
        assert failure.kind is FailureKind.BUDGET_UNAVAILABLE
        assert failure.definitely_not_accepted
        assert SECRET not in str(failure)
    assert outcome.stored == Counter()
    assert outcome.leases_while_open == 0
    assert outcome.statistics["mode"] == "refuse"
    assert isinstance(outcome.statistics["store_failures"], int)
    assert outcome.statistics["store_failures"] >= 1
    assert SECRET not in caplog.text


@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
async def test_ssl_check_hostname_false_takes_a_certificate_for_another_name(
    anyio_backend: str, tls_redis: TLSRedis
) -> None:
    name = f"tls-opt-out-{anyio_backend}"
    url = url_of(tls_redis.wrong, tls_redis.ca_file, "&ssl_check_hostname=false")
    outcome = await send_through(tls_redis.wrong, tls_redis.ca_file, url, name)
    assert outcome.failures == [None] * SENDS
    assert outcome.stored == all_stored()
    assert outcome.most_sessions == 1
    assert outcome.leases_while_open == 1


@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
async def test_the_tls_files_are_read_once_when_the_pool_is_built(
    anyio_backend: str, tls_redis: TLSRedis, tmp_path: Path
) -> None:
    # A CA file gone between building the pool and starting it changes nothing: what the pool
    # was built with is what it connects with.
    ca_copy = tmp_path / "ca.pem"
    shutil.copy(tls_redis.ca_file, ca_copy)
    name = f"tls-once-{anyio_backend}"
    budget = SharedBudget(name, redis_url=url_of(tls_redis.right, ca_copy), max_connections=1)
    with RecordingServer() as server:
        pool = SMTPPool(budgeted_config(server.port, budget))
        ca_copy.unlink()
        async with pool:
            await pool.send_raw(message(0), sender="a@tls.test", recipients=["b@t"])
        assert [item.message_id for item in server.stored()] == ["<m0@tls.test>"]
