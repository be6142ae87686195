"""A Redis password that a URL can only carry percent-encoded, in the URL's user part.

'@', ':', '/', '#' and '%' cannot appear as themselves in a URL's user part (RFC 3986 §3.2.1):
written there they end the user part, the password or the whole authority early. So the user
part is percent-decoded, as in any URL. coredis takes it as written unless asked to decode it, so
`redis://:p%40ss@host` used to log in with the five characters "p%40ss", fail to, and refuse
every send under the budget. Verdicts are judged against the SMTP server's record of what it
stored, and the budget against the most sessions it saw at once.
"""

from __future__ import annotations

import shutil
import tempfile
import urllib.parse
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

import anyio
from pooledmail_anyio import SharedBudget, SMTPPool
from tests.servers.fixtures import redis_instance
from tests.servers.redis import RedisServer

from .links import budgeted_config, send_or_failure
from .recording_server import RecordingServer

# Every character that must be percent-encoded in a user part, and an escape-like "%41".
SECRET = "p@ss#w:rd/%41+x"
SENDS = 3


@pytest.fixture(scope="module")
def redis() -> Iterator[RedisServer]:
    with redis_instance(["--requirepass", SECRET]) as server:
        yield server


def message(number: int) -> bytes:
    return f"Message-ID: <m{number}@password.test>\r\n\r\nhello\r\n".encode()


@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
@pytest.mark.parametrize("user", ["", "default"])
async def test_a_percent_encoded_password_in_the_user_part_logs_in(
    anyio_backend: str, user: str, redis: RedisServer
) -> None:
    encoded = urllib.parse.quote(SECRET, safe="")
    url = f"redis://{user}:{encoded}@{redis.host}:{redis.port}/0"
    name = f"password-{anyio_backend}-{user or 'none'}"
    budget = SharedBudget(name, redis_url=url, max_connections=1, store_timeout=2.0)
    failures = []
    with RecordingServer(final_reply_delay=0.02) as server:
        async with SMTPPool(budgeted_config(server.port, budget, max_size=SENDS)) as pool:

            async def send(number: int) -> None:
                failures.append(await send_or_failure(pool, message(number), "a@password.test"))

            async with anyio.create_task_group() as tg:
                for number in range(SENDS):
                    tg.start_soon(send, number)
            statistics = pool.budget_statistics()[name]
        stored = Counter(item.message_id for item in server.stored())
    assert failures == [None] * SENDS
    assert stored == Counter(f"<m{number}@password.test>" for number in range(SENDS))
    assert server.most_sessions == 1  # the budget held: Redis was reached, logged in, and used
    assert statistics["store_failures"] == 0


@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
async def test_a_percent_encoded_socket_path_is_decoded(anyio_backend: str) -> None:
    # The socket path of unix:// is percent-decoded as the user part is: a directory with a
    # space cannot be written otherwise (whitespace is refused), and a '%' in it is written %25
    # ("%41" as itself would now mean "A"). docs/guide/scaling.md, "The Redis URL".
    directory = Path(tempfile.mkdtemp(prefix="redis %41 ", dir="/tmp"))
    socket_path = directory / "r.sock"
    try:
        with redis_instance(["--unixsocket", str(socket_path), "--unixsocketperm", "700"]):
            url = f"unix://{urllib.parse.quote(str(socket_path))}?db=0"
            name = f"socket-{anyio_backend}"
            budget = SharedBudget(name, redis_url=url, max_connections=1, store_timeout=2.0)
            with RecordingServer() as server:
                async with SMTPPool(budgeted_config(server.port, budget)) as pool:
                    failure = await send_or_failure(pool, message(0), "a@password.test")
                    statistics = pool.budget_statistics()[name]
                stored = [item.message_id for item in server.stored()]
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    assert failure is None
    assert stored == ["<m0@password.test>"]
    assert statistics["store_calls"] > 0
    assert statistics["store_failures"] == 0
