"""A pool whose store client cannot be built fails to enter with that error itself."""

from __future__ import annotations

import coredis
import pytest

from pooledmail_anyio import Host, PoolConfig, SharedBudget, SMTPPool


class StoreSetupError(Exception):
    pass


@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
async def test_a_failure_while_the_pool_starts_arrives_as_itself(
    anyio_backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise StoreSetupError("no client")

    monkeypatch.setattr(coredis.Redis, "from_url", refuse)
    budget = SharedBudget("b", redis_url="redis://127.0.0.1:6379/0", max_connections=1)
    pool = SMTPPool(PoolConfig([Host("127.0.0.1", 2525, tls="none", budget=budget)]))
    with pytest.raises(StoreSetupError):
        async with pool:
            pass
