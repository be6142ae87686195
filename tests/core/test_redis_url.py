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
        # A host or socket path the client decodes to a control character: no host, no file.
        "redis://:hunter2@redis%00.internal:6379/0",
        "rediss://:hunter2@redis%0A.internal:6380/0",
        "unix://:hunter2@/run/redis%7F.sock",
        "unix:///run/re%1Fdis.sock?password=hunter2",
    ],
)
def test_a_redis_url_the_client_cannot_read_fails_at_construction(url: str) -> None:
    from pooledmail_core import ConfigError

    with pytest.raises(ConfigError) as caught:
        SharedBudget("b", redis_url=url, max_connections=2)
    assert caught.value.option == "redis_url"
    assert "hunter2" not in str(caught.value)


@pytest.mark.parametrize(
    ("url", "named"),
    [
        # The client reads the path as the database number, and took one it could not read as 0.
        ("redis://:hunter2@127.0.0.1:6379/abc", "path"),
        ("redis://:hunter2@127.0.0.1:6379/-1", "path"),
        ("redis://:hunter2@127.0.0.1:6379/1/2", "path"),
        ("redis://:hunter2@127.0.0.1:6379/%31", "path"),
        ("rediss://:hunter2@127.0.0.1:6380/x", "path"),
        # ?db= the client cannot read (a ValueError when the pool started), or int() takes but
        # is not a database number as written.
        ("redis://:hunter2@127.0.0.1:6379/0?db=abc", "?db="),
        ("redis://127.0.0.1:6379?db=-1&password=hunter2", "?db="),
        ("redis://127.0.0.1:6379?db=%2B1&password=hunter2", "?db="),
        ("redis://127.0.0.1:6379?db=1_0&password=hunter2", "?db="),
        ("redis://127.0.0.1:6379?db=%D9%A1&password=hunter2", "?db="),
        ("unix:///run/redis.sock?db=abc&password=hunter2", "?db="),
        # The client decodes the names: "d%62" is "db" to it.
        ("redis://:hunter2@127.0.0.1:6379/0?d%62=abc", "?db="),
        # A value the client looks up in a table (a KeyError when the pool started) or takes as
        # true whatever it says.
        ("rediss://:hunter2@127.0.0.1:6380/0?ssl_cert_reqs=bogus", "?ssl_cert_reqs="),
        ("rediss://:hunter2@127.0.0.1:6380/0?ssl_cert_reqs=REQUIRED", "?ssl_cert_reqs="),
        ("rediss://:hunter2@127.0.0.1:6380/0?ssl_check_hostname=maybe", "?ssl_check_hostname="),
        # No certificate verified, yet its name checked: a contradiction, whichever is meant.
        (
            "rediss://:hunter2@127.0.0.1:6380/0?ssl_cert_reqs=none&ssl_check_hostname=true",
            "?ssl_check_hostname=",
        ),
        ("rediss://:hunter2@127.0.0.1:6380/0?ssl_check_hostname=Y&ssl_cert_reqs=none", "none"),
        # TLS options the client ignores outside rediss://, or one without the other.
        ("redis://:hunter2@127.0.0.1:6379/0?ssl_ca_certs=/etc/ca.pem", "?ssl_ca_certs="),
        ("unix:///run/redis.sock?ssl_cert_reqs=required&password=hunter2", "?ssl_cert_reqs="),
        ("rediss://:hunter2@127.0.0.1:6380/0?ssl_certfile=/etc/c.pem", "?ssl_keyfile="),
        ("rediss://:hunter2@127.0.0.1:6380/0?ssl_keyfile=/etc/k.pem", "?ssl_keyfile="),
        # Names the client ignores without a word.
        ("redis://:hunter2@127.0.0.1:6379/0?database=1", "does not read"),
        ("redis://127.0.0.1:6379/0?passwd=hunter2", "does not read"),
        ("rediss://:hunter2@127.0.0.1:6380/0?ssl=true", "does not read"),
        # A secret typed where a name goes: the name is not quoted either.
        ("redis://127.0.0.1:6379/0?hunter2", "does not read"),
        # An option without a value, which the client drops, and one given twice.
        ("redis://127.0.0.1:6379/0?password=&db=1", "?password="),
        ("redis://:hunter2@127.0.0.1:6379/0?db", "?db="),
        ("redis://:hunter2@127.0.0.1:6379/0?db=1&db=2", "?db="),
        # The client's own settings: pooledmail's (store_timeout), or objects rather than text.
        ("redis://:hunter2@127.0.0.1:6379/0?noreply=yes", "?noreply="),
        ("redis://:hunter2@127.0.0.1:6379/0?stream_timeout=100", "?stream_timeout="),
        ("redis://:hunter2@127.0.0.1:6379/0?decode_responses=1", "?decode_responses="),
        ("redis://:hunter2@127.0.0.1:6379/0?connection_class=x", "?connection_class="),
        # A name Redis refuses in CLIENT SETNAME.
        ("redis://:hunter2@127.0.0.1:6379/0?client_name=mail%20worker", "?client_name="),
        # A credential in the user part and in the query: the client would take the user
        # part's and drop the other without a word.
        ("redis://:hunter2@127.0.0.1:6379/0?password=hunter3", "password twice"),
        ("redis://app:hunter2@127.0.0.1:6379/0?username=app", "username twice"),
        ("rediss://app:hunter2@redis.internal:6380/0?password=hunter2", "password twice"),
        ("unix://:hunter2@/run/redis.sock?password=hunter2", "password twice"),
    ],
)
def test_a_redis_url_option_the_client_would_misread_fails_at_construction(
    url: str, named: str
) -> None:
    from pooledmail_core import ConfigError

    with pytest.raises(ConfigError) as caught:
        SharedBudget("b", redis_url=url, max_connections=2)
    assert caught.value.option == "redis_url"
    assert named in caught.value.rule
    assert "hunter2" not in str(caught.value)
    # The same through a config file's mapping.
    with pytest.raises(ConfigError) as caught:
        SharedBudget.from_mapping({"name": "b", "redis_url": url})
    assert caught.value.option == "redis_url"


@pytest.mark.parametrize(
    "url",
    [
        "redis://127.0.0.1:6379",
        "redis://127.0.0.1:6379/",
        "redis://127.0.0.1:6379/15",
        "redis://127.0.0.1:6379/0?db=3",
        "redis://app:hunter2@127.0.0.1:6379/0?client_name=mail-worker-1",
        "redis://127.0.0.1:6379/0?username=app&password=hunter2",
        "unix:///run/redis.sock?db=2&password=hunter2",
        "rediss://redis.internal:6380/0?ssl_cert_reqs=required&ssl_check_hostname=true"
        "&ssl_ca_certs=/etc/ssl/redis-ca.pem",
        "rediss://redis.internal:6380/0?ssl_certfile=/etc/c.pem&ssl_keyfile=/etc/k.pem"
        "&ssl_check_hostname=NO&ssl_cert_reqs=none",
        "rediss://redis.internal:6380/0?ssl_cert_reqs=none",
        "rediss://redis.internal:6380/0?ssl_cert_reqs=optional&ssl_check_hostname=false",
    ],
)
def test_a_redis_url_with_options_the_client_reads_is_taken(url: str) -> None:
    assert SharedBudget("b", redis_url=url, max_connections=2).redis_url == url


@pytest.mark.parametrize(
    "url",
    [
        # An unencoded '#' in a password: the client took "hun" as the password, or found no
        # host at all, and nothing said why.
        "redis://127.0.0.1:6379/0?password=hun#ter2",
        "rediss://:hun#ter2@redis.internal:6380/0",
        "redis://app:hun#ter2@127.0.0.1:6379/0?db=1",
        # Any fragment, even an empty one: the client drops it without a word.
        "redis://:hunter2@127.0.0.1:6379/0#",
        "unix:///run/redis.sock?password=hunter2#primary",
    ],
)
def test_a_fragment_in_the_redis_url_fails_at_construction(url: str) -> None:
    from pooledmail_core import ConfigError

    with pytest.raises(ConfigError) as caught:
        SharedBudget("b", redis_url=url, max_connections=2)
    assert caught.value.option == "redis_url"
    assert "%23" in caught.value.rule
    text = str(caught.value)
    for part in ("hunter2", "hun", "ter2", "127.0.0.1", "redis.internal", "redis.sock"):
        assert part not in text
    with pytest.raises(ConfigError) as caught:
        SharedBudget.from_mapping({"name": "b", "redis_url": url})
    assert caught.value.option == "redis_url"


def test_a_percent_encoded_hash_in_the_query_password_is_taken() -> None:
    url = "redis://127.0.0.1:6379/0?password=hun%23ter2"
    assert SharedBudget("b", redis_url=url).redis_url == url


@pytest.mark.parametrize(
    "url",
    [
        "redis://app:hun%23ter2@127.0.0.1:6379/0",
        "redis://app@127.0.0.1:6379/0?password=hunter2",
        "redis://:hunter2@127.0.0.1:6379/0?username=app",
    ],
)
def test_each_credential_in_one_place_is_taken(url: str) -> None:
    assert SharedBudget("b", redis_url=url, max_connections=2).redis_url == url
