"""The Redis URL's options: what the client reads is what SharedBudget checks, and the TLS files
a rediss:// URL names fail when the pool is built, as redis_url, never later as an OSError.
"""

from __future__ import annotations

from pathlib import Path

import coredis
import pytest
import trustme
from coredis.pool._basic import ConnectionPoolParams

from pooledmail_anyio import ConfigError, Host, PoolConfig, SharedBudget, SMTPPool
from pooledmail_core._config import _REDIS_CLIENT_SETTINGS, _REDIS_OPTIONS, _REDIS_TLS_OPTIONS

# What coredis takes from a URL's query besides its ConnectionPoolParams: the TLS options, read
# in ConnectionPool._parse_url for rediss:// only.
_COREDIS_TLS_OPTIONS = {
    "ssl_ca_certs",
    "ssl_certfile",
    "ssl_keyfile",
    "ssl_cert_reqs",
    "ssl_check_hostname",
}


def test_every_query_option_the_client_reads_is_either_checked_or_refused() -> None:
    # A coredis release that reads a new option from the URL fails this test instead of letting
    # that option through unchecked (SharedBudget refuses names it does not know, so a new one
    # would be refused, and this says why).
    read = set(ConnectionPoolParams.__annotations__)
    assert read == _REDIS_OPTIONS | _REDIS_CLIENT_SETTINGS
    assert _REDIS_TLS_OPTIONS == _COREDIS_TLS_OPTIONS


def test_the_options_it_takes_reach_the_client_as_written() -> None:
    url = "redis://127.0.0.1:6379/5?username=app&password=hunter2&client_name=mail-worker-1"
    budget = SharedBudget("b", redis_url=url, max_connections=1)
    settings = coredis.Redis.from_url(budget.redis_url).connection_pool.connection_kwargs
    assert settings["db"] == 5
    assert settings["username"] == "app"
    assert settings["password"] == "hunter2"
    assert settings["client_name"] == "mail-worker-1"
    query_db = "redis://127.0.0.1:6379/5?db=7"
    settings = coredis.Redis.from_url(query_db).connection_pool.connection_kwargs
    assert settings["db"] == 7  # the query wins over the path, and both were checked


@pytest.fixture
def tls_files(tmp_path: Path) -> dict[str, Path]:
    ca = trustme.CA()
    client = ca.issue_cert("pooledmail-client")
    files = {
        "ca": tmp_path / "ca.pem",
        "cert": tmp_path / "client.pem",
        "key": tmp_path / "client.key",
        "garbage": tmp_path / "garbage.pem",
    }
    ca.cert_pem.write_to_path(str(files["ca"]))
    client.cert_chain_pems[0].write_to_path(str(files["cert"]))
    client.private_key_pem.write_to_path(str(files["key"]))
    files["garbage"].write_text("not a certificate\n")
    return files


def pool_for(url: str) -> SMTPPool:
    budget = SharedBudget("b", redis_url=url, max_connections=1)
    return SMTPPool(PoolConfig([Host("127.0.0.1", 2525, tls="none", budget=budget)]))


URL = "rediss://:hunter2@127.0.0.1:6380/0?ssl_cert_reqs=required"


def test_tls_files_that_can_be_read_are_taken(tls_files: dict[str, Path]) -> None:
    pool_for(
        f"{URL}&ssl_ca_certs={tls_files['ca']}"
        f"&ssl_certfile={tls_files['cert']}&ssl_keyfile={tls_files['key']}"
    )
    pool_for(f"{URL}&ssl_ca_certs={tls_files['ca'].parent}")  # a directory: a CA path


@pytest.mark.parametrize(
    ("query", "named"),
    [
        ("ssl_ca_certs={missing}", "?ssl_ca_certs="),
        ("ssl_ca_certs={garbage}", "?ssl_ca_certs="),
        ("ssl_certfile={missing}&ssl_keyfile={key}", "?ssl_certfile="),
        ("ssl_certfile={cert}&ssl_keyfile={missing}", "?ssl_keyfile="),
        ("ssl_certfile={garbage}&ssl_keyfile={key}", "?ssl_certfile="),
        ("ssl_certfile={cert}&ssl_keyfile={ca}", "?ssl_keyfile="),
    ],
)
def test_a_tls_file_that_cannot_be_used_fails_when_the_pool_is_built(
    tls_files: dict[str, Path], tmp_path: Path, query: str, named: str
) -> None:
    paths = {name: str(path) for name, path in tls_files.items()}
    url = f"{URL}&{query.format(missing=tmp_path / 'missing.pem', **paths)}"
    with pytest.raises(ConfigError) as caught:
        pool_for(url)
    assert caught.value.option == "redis_url"
    assert named in caught.value.rule
    assert "hunter2" not in str(caught.value)


@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
async def test_a_tls_file_gone_before_the_pool_starts_fails_the_start_as_redis_url(
    anyio_backend: str, tls_files: dict[str, Path]
) -> None:
    pool = pool_for(f"{URL}&ssl_ca_certs={tls_files['ca']}")
    tls_files["ca"].unlink()
    with pytest.raises(ConfigError) as caught:
        async with pool:
            pass  # pragma: no cover - the start fails before the block
    assert caught.value.option == "redis_url"
    assert "hunter2" not in str(caught.value)
