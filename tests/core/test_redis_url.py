"""A Redis password given in the URL's query never reaches a repr."""

from __future__ import annotations

import urllib.parse

import pytest

from pooledmail_core import Host, PoolConfig, SharedBudget


@pytest.mark.parametrize(
    "url",
    [
        "redis://127.0.0.1:6379/0?password=hunter2",
        "rediss://redis.internal:6380/0?db=1&password=hunter2",
        "unix:///run/redis.sock?password=hunter2",
        # The client reads the query with urllib.parse.parse_qs, which decodes the names too.
        "redis://127.0.0.1:6379/0?pass%77ord=hunter2",
        "redis://127.0.0.1/0?db=1&%70assword=hunter2",
    ],
)
def test_a_password_in_the_query_is_not_in_any_repr(url: str) -> None:
    # coredis takes `?password=` from the query as it takes the URL's userinfo.
    assert urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)["password"] == ["hunter2"]
    budget = SharedBudget("b", redis_url=url, max_connections=2)
    config = PoolConfig([Host("smtp.example.com", 587, budget=budget)])
    for text in (repr(budget), str(budget), repr(config), str(config)):
        assert "hunter2" not in text


@pytest.mark.parametrize(
    "url",
    [
        "redis://:hunter2@127.0.0.1:notaport/0",
        "redis://:hunter2@127.0.0.1:99999/0",
        # Port 0 is no port a Redis server listens on; the rule says 1 to 65535.
        "redis://:hunter2@127.0.0.1:0/0",
        # No host: the client has nowhere to connect (it crashed the pool's first store call).
        "redis://",
        "redis://:6379/0",
        "rediss://:hunter2@:6380/0",
        "redis://:hunter2@/0",
        # No socket path.
        "unix://",
        "unix://:hunter2@?db=1",
    ],
)
def test_a_redis_url_the_client_cannot_read_fails_at_construction(url: str) -> None:
    from pooledmail_core import ConfigError

    with pytest.raises(ConfigError) as caught:
        SharedBudget("b", redis_url=url, max_connections=2)
    assert caught.value.option == "redis_url"
    assert "hunter2" not in str(caught.value)
