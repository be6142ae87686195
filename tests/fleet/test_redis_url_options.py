"""The Redis URL's options: what the client reads is what SharedBudget checks, the TLS files a
rediss:// URL names fail when the pool is built, as redis_url, never later as an OSError, and the
TLS context built from them checks the server's name unless the URL opts out.
"""

from __future__ import annotations

import ssl
import urllib.parse
from pathlib import Path

import coredis
import pytest
import trustme
from coredis.pool._basic import ConnectionPoolParams

from pooledmail_anyio import ConfigError, Host, PoolConfig, SharedBudget, SMTPPool
from pooledmail_anyio._budget import tls_context
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


def test_a_hash_percent_encoded_in_the_query_password_reaches_the_client_as_a_hash() -> None:
    # What the ConfigError for a '#' in redis_url advises: %23, here in ?password= (the user
    # part is decoded too: tests/fleet/test_redis_password.py logs in with it).
    url = "redis://127.0.0.1:6379/0?password=hun%23ter2"
    SharedBudget("b", redis_url=url, max_connections=1)
    settings = coredis.Redis.from_url(url).connection_pool.connection_kwargs
    assert settings["password"] == "hun#ter2"
    # scaling.md's recipe for any password, '+' (a space in a query) and '%' included.
    password = "hun#ter+2 &%/@"
    url = f"redis://127.0.0.1:6379/0?password={urllib.parse.quote(password, safe='')}"
    SharedBudget("b", redis_url=url, max_connections=1)
    settings = coredis.Redis.from_url(url).connection_pool.connection_kwargs
    assert settings["password"] == password


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


@pytest.mark.parametrize(
    ("query", "verify_mode", "check_hostname"),
    [
        # The defaults: the chain and the name, as on the SMTP side (coredis alone checked no
        # name unless the URL said ?ssl_check_hostname=true).
        ("", ssl.CERT_REQUIRED, True),
        ("&ssl_cert_reqs=optional", ssl.CERT_OPTIONAL, True),
        ("&ssl_check_hostname=true", ssl.CERT_REQUIRED, True),
        # The opt-outs: the name only, or every check.
        ("&ssl_check_hostname=false", ssl.CERT_REQUIRED, False),
        ("&ssl_check_hostname=No", ssl.CERT_REQUIRED, False),
        ("&ssl_cert_reqs=none", ssl.CERT_NONE, False),
        ("&ssl_cert_reqs=none&ssl_check_hostname=0", ssl.CERT_NONE, False),
    ],
)
def test_the_tls_context_checks_the_server_name_unless_the_url_opts_out(
    tls_files: dict[str, Path], query: str, verify_mode: ssl.VerifyMode, check_hostname: bool
) -> None:
    url = f"rediss://:hunter2@127.0.0.1:6380/0?ssl_ca_certs={tls_files['ca']}{query}"
    SharedBudget("b", redis_url=url)  # the core takes it
    context = tls_context(url)
    assert context is not None
    assert context.verify_mode == verify_mode
    assert context.check_hostname is check_hostname


def test_no_tls_context_without_rediss() -> None:
    assert tls_context("redis://:hunter2@127.0.0.1:6379/0") is None
    assert tls_context("unix:///run/redis.sock?db=1") is None
