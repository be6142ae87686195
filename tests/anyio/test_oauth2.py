"""XOAUTH2 with a static token and with a token provider the pool awaits, on asyncio and trio.

The server (tokenserver.py) checks tokens as Gmail and Microsoft 365 do; every verdict is judged by
what it recorded: the tokens it was shown and the messages it stored.
"""

from __future__ import annotations

from typing import Any

import pytest

import anyio
from pooledmail_anyio import FailureKind, Host, PoolConfig, SendFailed, SMTPPool, Stage

from .tokenserver import TokenServer

pytestmark = pytest.mark.anyio

BODY = b"Subject: hi\r\n\r\nhello\r\n"


def pool_for(
    server: TokenServer,
    connect_timeout: float = 5.0,
    pool: dict[str, Any] | None = None,
    **host: Any,
) -> SMTPPool:
    options: dict[str, Any] = {"tls": "none", "allow_plaintext_auth": True, **host}
    options.setdefault("username", "alice@example.com")
    config = PoolConfig(
        [Host("127.0.0.1", server.port, **options)],
        max_retries=0,
        connect_timeout=connect_timeout,
        **(pool or {}),
    )
    return SMTPPool(config)


async def send(pool: SMTPPool) -> Any:
    return await pool.send_raw(BODY, sender="alice@example.com", recipients=["bob@example.com"])


class Provider:
    """Hands out tokens from a list; records what it was asked."""

    def __init__(self, *tokens: str) -> None:
        self.tokens = list(tokens)
        self.asked: list[str | None] = []

    async def __call__(self, refused: str | None) -> str:
        self.asked.append(refused)
        return self.tokens.pop(0)


async def test_a_static_token_keeps_working() -> None:
    server = TokenServer({"static-token"})
    async with server.running(), pool_for(server, oauth2_token="static-token") as pool:
        await send(pool)
    assert server.tokens_seen == ["static-token"]
    assert len(server.messages) == 1


async def test_the_provider_is_awaited_for_each_connection_the_pool_opens() -> None:
    server = TokenServer({"t1", "t2"})
    provider = Provider("t1", "t2")
    async with server.running():
        config = PoolConfig(
            [
                Host(
                    "127.0.0.1",
                    server.port,
                    tls="none",
                    allow_plaintext_auth=True,
                    username="alice@example.com",
                    oauth2_token_provider=provider,
                )
            ],
            max_messages_per_connection=1,  # each message on a new connection
        )
        async with SMTPPool(config) as pool:
            await send(pool)
            await send(pool)
    assert provider.asked == [None, None]
    assert server.tokens_seen == ["t1", "t2"]
    assert len(server.messages) == 2


async def test_a_refused_token_is_replaced_by_a_fresh_one_and_the_send_goes_through() -> None:
    server = TokenServer({"fresh"})
    provider = Provider("expired", "fresh")
    async with server.running(), pool_for(server, oauth2_token_provider=provider) as pool:
        result = await send(pool)
    # Told which token was refused, the provider refreshed it; the caller saw nothing of it.
    assert provider.asked == [None, "expired"]
    assert server.tokens_seen == ["expired", "fresh"]
    assert result.attempts == 1
    assert len(server.messages) == 1


async def test_the_same_token_again_after_a_refusal_is_auth_failed() -> None:
    server = TokenServer(set())
    provider = Provider("stale", "stale")
    async with server.running(), pool_for(server, oauth2_token_provider=provider) as pool:
        with pytest.raises(SendFailed) as caught:
            await send(pool)
    assert caught.value.kind is FailureKind.AUTH_FAILED
    assert caught.value.stage is Stage.AUTH
    assert "gave the refused token again" in caught.value.reason
    assert server.tokens_seen == ["stale"]  # not sent a second time
    assert server.messages == []


async def test_a_fresh_token_that_is_refused_too_is_auth_failed() -> None:
    server = TokenServer(set())
    provider = Provider("one", "two")
    async with server.running(), pool_for(server, oauth2_token_provider=provider) as pool:
        with pytest.raises(SendFailed) as caught:
            await send(pool)
    assert caught.value.kind is FailureKind.AUTH_FAILED
    assert caught.value.reply is not None
    assert caught.value.reply.code == 535
    assert server.tokens_seen == ["one", "two"]
    assert server.messages == []


async def test_a_provider_that_raises_fails_the_connection_without_quoting_its_error() -> None:
    server = TokenServer({"t"})

    async def broken(refused: str | None) -> str:
        raise RuntimeError("client_secret=do-not-print-me")

    # The host stays out past the send's deadline: the first failure is the one reported.
    cooling = {"reconnect_cooldown": 30.0}
    async with (
        server.running(),
        pool_for(server, pool=cooling, oauth2_token_provider=broken) as pool,
    ):
        with pytest.raises(SendFailed) as caught:
            await send(pool)
    failure = caught.value
    assert failure.kind is FailureKind.CONNECT_FAILED
    assert failure.stage is Stage.AUTH
    assert "RuntimeError" in failure.reason
    assert "do-not-print-me" not in str(failure)
    assert isinstance(failure.__cause__, RuntimeError)
    assert server.connections == 0  # no connection was opened without a token


async def test_a_provider_that_hangs_is_bounded_by_connect_timeout() -> None:
    server = TokenServer({"t"})

    async def hangs(refused: str | None) -> str:
        await anyio.sleep_forever()
        raise AssertionError  # pragma: no cover

    async with (
        server.running(),
        # The host stays out past the send's deadline, so that the first failure is the one
        # reported (docs/guide/options.md, "Cooldowns": with the default 1 s the send would wait
        # for trials, and its deadline could pass while one hangs).
        pool_for(
            server,
            connect_timeout=0.2,
            pool={"reconnect_cooldown": 30.0},
            oauth2_token_provider=hangs,
        ) as pool,
    ):
        with pytest.raises(SendFailed) as caught:
            await send(pool)
    assert caught.value.kind is FailureKind.CONNECT_FAILED
    assert caught.value.stage is Stage.AUTH
    assert "connect_timeout" in caught.value.reason


@pytest.mark.parametrize("token", ["", "has space", 42, "t\udce9", "tök"])
async def test_a_provider_that_returns_no_usable_token_is_auth_failed(token: Any) -> None:
    server = TokenServer({"t"})

    async def wrong(refused: str | None) -> Any:
        return token

    async with server.running(), pool_for(server, oauth2_token_provider=wrong) as pool:
        with pytest.raises(SendFailed) as caught:
            await send(pool)
    assert caught.value.kind is FailureKind.AUTH_FAILED
    assert "no usable token" in caught.value.reason
    assert server.connections == 0
