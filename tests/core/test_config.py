from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pooledmail_core._config import Host, PoolConfig, SharedBudget, TLSMode
from pooledmail_core._errors import ConfigError
from pooledmail_core._limits import Limits

SECRET = "s3cr3t-Pa55"
TOKEN = "ya29.t0ken-value"


def host(**kwargs: Any) -> Host:
    return Host("smtp.example.com", **kwargs)


# ------------------------------------------------------------------------------------- Host


def test_host_defaults_are_submission_with_required_starttls() -> None:
    h = Host("smtp.example.com")
    assert h.port == 587
    assert h.tls is TLSMode.STARTTLS
    assert (h.priority, h.weight, h.max_connections) == (0, 1, None)
    assert h.allow_plaintext_auth is False
    assert h.key == "smtp.example.com:587"


@pytest.mark.parametrize(
    ("given_tls", "mode"),
    [
        ("starttls", TLSMode.STARTTLS),
        ("implicit", TLSMode.IMPLICIT),
        ("starttls_if_available", TLSMode.STARTTLS_IF_AVAILABLE),
        ("none", TLSMode.NONE),
        (" Implicit ", TLSMode.IMPLICIT),
        (TLSMode.NONE, TLSMode.NONE),
    ],
)
def test_host_tls_is_normalised_to_the_enum(given_tls: Any, mode: TLSMode) -> None:
    assert Host("mx.example", 465, tls=given_tls).tls is mode


def test_ipv6_literal_key_is_bracketed() -> None:
    assert Host("2001:db8::1", 25).key == "[2001:db8::1]:25"
    assert Host("[2001:db8::1]", 25).key == "[2001:db8::1]:25"
    # Brackets are how URLs write an IPv6 address; the socket wants it bare.
    assert Host("[2001:db8::1]", 25).hostname == "2001:db8::1"


def test_a_port_inside_the_hostname_is_refused_with_the_fix() -> None:
    with pytest.raises(
        ConfigError, match=r"hostname: must not include a port.*Host\(hostname, port\)"
    ):
        Host("smtp.example.com:587")


async def _provider(refused: str | None) -> str:
    return "fresh-token"


def test_a_host_takes_a_token_provider_instead_of_a_token_and_hides_it() -> None:
    h = Host("smtp.gmail.com", 587, username="alice@gmail.com", oauth2_token_provider=_provider)
    assert h.oauth2_token_provider is _provider
    assert h.oauth2_token is None
    assert repr(h) == (
        "Host('smtp.gmail.com', 587, tls='starttls', username='alice@gmail.com', "
        "oauth2_token_provider=<provider>)"
    )


@pytest.mark.parametrize(
    ("kwargs", "option"),
    [
        ({"hostname": ""}, "hostname"),
        ({"hostname": "mx.example\r\nRCPT"}, "hostname"),
        ({"hostname": "mx example"}, "hostname"),
        ({"hostname": 42}, "hostname"),
        ({"hostname": "smtp.example.com:587"}, "hostname"),
        ({"hostname": "[smtp.example.com]:587"}, "hostname"),
        ({"hostname": "[2001:db8::1]:25"}, "hostname"),
        ({"port": 0}, "port"),
        ({"port": 65536}, "port"),
        ({"port": "25"}, "port"),
        ({"port": True}, "port"),
        ({"tls": "ssl"}, "tls"),
        ({"tls": 3}, "tls"),
        ({"username": "u\r\n"}, "username"),
        ({"username": "", "password": "p"}, "username"),
        ({"password": "p"}, "password"),
        ({"username": "u", "password": ""}, "password"),
        ({"username": "u", "password": "a\x00b"}, "password"),
        ({"oauth2_token": "t"}, "oauth2_token"),
        ({"username": "u", "oauth2_token": "t\r\n"}, "oauth2_token"),
        ({"username": "u", "oauth2_token": "tökén"}, "oauth2_token"),
        ({"username": "u", "password": "p", "oauth2_token": "t"}, "oauth2_token"),
        ({"username": "u"}, "username"),
        ({"username": "u", "oauth2_token_provider": "token"}, "oauth2_token_provider"),
        ({"oauth2_token_provider": _provider}, "oauth2_token_provider"),
        (
            {"username": "u", "password": "p", "oauth2_token_provider": _provider},
            "oauth2_token_provider",
        ),
        (
            {"username": "u", "oauth2_token": "t", "oauth2_token_provider": _provider},
            "oauth2_token_provider",
        ),
        ({"priority": 1.5}, "priority"),
        ({"weight": 0}, "weight"),
        ({"weight": -2}, "weight"),
        ({"max_connections": 0}, "max_connections"),
        ({"allow_plaintext_auth": "yes"}, "allow_plaintext_auth"),
        ({"tls": "none", "username": "u", "password": "p"}, "allow_plaintext_auth"),
    ],
)
def test_host_refuses_a_wrong_value_naming_the_option(kwargs: dict[str, Any], option: str) -> None:
    args = {"hostname": "smtp.example.com", **kwargs}
    with pytest.raises(ConfigError) as info:
        Host(**args)
    assert info.value.option == option
    assert str(info.value).startswith(f"{option}: ")


def test_plaintext_auth_is_allowed_when_the_host_opts_in() -> None:
    h = Host("relay.lan", 25, tls="none", username="u", password="p", allow_plaintext_auth=True)
    assert h.allow_plaintext_auth


def test_host_repr_never_shows_password_or_token() -> None:
    with_password = host(username="alice", password=SECRET, weight=2, priority=1)
    with_token = host(username="alice", oauth2_token=TOKEN, max_connections=3)
    for h in (with_password, with_token):
        text = repr(h) + str(h)
        assert SECRET not in text
        assert TOKEN not in text
        assert "***" in text
    assert "weight=2" in repr(with_password)
    assert "max_connections=3" in repr(with_token)


def test_host_repr_shows_only_what_differs_from_the_defaults() -> None:
    assert repr(Host("a.example")) == "Host('a.example', 587, tls='starttls')"
    relay = Host("relay", 25, tls="none", username="u", password="p", allow_plaintext_auth=True)
    assert repr(relay) == (
        "Host('relay', 25, tls='none', username='u', password='***', allow_plaintext_auth=True)"
    )


def test_host_error_messages_never_quote_secrets() -> None:
    with pytest.raises(ConfigError) as info:
        host(password=SECRET)
    assert SECRET not in str(info.value)
    with pytest.raises(ConfigError) as info:
        host(username="alice", password=SECRET + "\x00")
    assert SECRET not in str(info.value)


def test_host_is_frozen_and_hashable() -> None:
    h = host()
    with pytest.raises(dataclasses.FrozenInstanceError):
        h.port = 25  # type: ignore[misc]
    assert hash(h) == hash(host())
    assert dataclasses.replace(h, port=2525).key == "smtp.example.com:2525"


# ------------------------------------------------------------------------------- PoolConfig


def test_pool_config_defaults_match_the_documented_table() -> None:
    c = PoolConfig([host()])
    assert (c.min_size, c.max_size) == (0, 8)
    assert c.acquire_timeout == 15.0
    assert c.idle_timeout == 120.0
    assert c.keepalive_interval == 60.0
    assert c.probe_timeout == 10.0
    assert c.max_connection_age == 300.0
    assert c.max_messages_per_connection == 100
    assert c.refill_delay == 0.0
    assert (c.connect_timeout, c.command_timeout, c.send_timeout) == (10.0, 30.0, 60.0)
    assert (c.reconnect_cooldown, c.max_reconnect_cooldown, c.cooldown_jitter) == (1.0, 60.0, 0.2)
    assert (c.max_retries, c.retry_base_delay) == (1, 1.0)
    assert c.local_hostname is None
    assert isinstance(c.hosts, tuple)


def test_none_switches_off_the_optional_limits() -> None:
    c = PoolConfig(
        [host()],
        idle_timeout=None,
        keepalive_interval=None,
        max_connection_age=None,
        max_messages_per_connection=None,
    )
    assert c.idle_timeout is None
    assert c.keepalive_interval is None
    assert c.max_connection_age is None
    assert c.max_messages_per_connection is None


@pytest.mark.parametrize(
    ("kwargs", "option"),
    [
        ({"min_size": 3, "max_size": 2}, "min_size"),
        ({"min_size": -1}, "min_size"),
        ({"max_size": 0}, "max_size"),
        ({"max_size": 2.0}, "max_size"),
        ({"acquire_timeout": -1.0}, "acquire_timeout"),
        ({"acquire_timeout": 0}, "acquire_timeout"),
        ({"acquire_timeout": None}, "acquire_timeout"),
        ({"acquire_timeout": float("inf")}, "acquire_timeout"),
        ({"acquire_timeout": float("nan")}, "acquire_timeout"),
        ({"idle_timeout": -5}, "idle_timeout"),
        ({"keepalive_interval": 0}, "keepalive_interval"),
        ({"probe_timeout": 0}, "probe_timeout"),
        ({"max_connection_age": -1}, "max_connection_age"),
        ({"max_messages_per_connection": 0}, "max_messages_per_connection"),
        ({"refill_delay": -0.5}, "refill_delay"),
        ({"connect_timeout": -1}, "connect_timeout"),
        ({"command_timeout": None}, "command_timeout"),
        ({"send_timeout": "60"}, "send_timeout"),
        ({"reconnect_cooldown": 0}, "reconnect_cooldown"),
        ({"reconnect_cooldown": 60, "max_reconnect_cooldown": 30}, "max_reconnect_cooldown"),
        ({"max_reconnect_cooldown": -1}, "max_reconnect_cooldown"),
        ({"cooldown_jitter": 1.5}, "cooldown_jitter"),
        ({"cooldown_jitter": -0.1}, "cooldown_jitter"),
        ({"cooldown_jitter": float("nan")}, "cooldown_jitter"),
        ({"cooldown_jitter": "0.1"}, "cooldown_jitter"),
        ({"max_retries": -1}, "max_retries"),
        ({"max_retries": True}, "max_retries"),
        ({"retry_base_delay": -1}, "retry_base_delay"),
        ({"local_hostname": "client example"}, "local_hostname"),
        ({"local_hostname": "client\r\nMAIL FROM:<x>"}, "local_hostname"),
        ({"local_hostname": ""}, "local_hostname"),
        ({"local_hostname": "bücher.example"}, "local_hostname"),
    ],
)
def test_pool_config_refuses_a_wrong_value_naming_the_option(
    kwargs: dict[str, Any], option: str
) -> None:
    with pytest.raises(ConfigError) as info:
        PoolConfig([host()], **kwargs)
    assert info.value.option == option


@pytest.mark.parametrize("hosts", [[], "smtp.example.com", Host("a.example"), None, ["a.example"]])
def test_pool_config_refuses_hosts_that_are_not_a_list_of_host(hosts: Any) -> None:
    with pytest.raises(ConfigError) as info:
        PoolConfig(hosts)
    assert info.value.option == "hosts"


def test_duplicate_host_and_port_is_refused_case_insensitively() -> None:
    with pytest.raises(ConfigError, match="duplicate host") as info:
        PoolConfig([Host("MX.example", 25), Host("mx.example", 25)])
    assert info.value.option == "hosts"
    # Same name on another port is another server.
    assert len(PoolConfig([Host("mx.example", 25), Host("mx.example", 587)]).hosts) == 2


def test_pool_config_repr_hides_host_secrets() -> None:
    c = PoolConfig([host(username="alice", password=SECRET)], local_hostname="client.example")
    assert SECRET not in repr(c)
    assert "client.example" in repr(c)


def test_zero_jitter_and_zero_refill_delay_are_allowed() -> None:
    c = PoolConfig([host()], cooldown_jitter=0, refill_delay=0, retry_base_delay=0, max_retries=0)
    assert c.cooldown_jitter == 0.0
    assert isinstance(c.cooldown_jitter, float)


@settings(max_examples=300)
@given(
    option=st.sampled_from(
        ["acquire_timeout", "probe_timeout", "connect_timeout", "command_timeout", "send_timeout"]
    ),
    value=st.one_of(st.floats(max_value=0.0), st.integers(max_value=0)),
)
def test_any_non_positive_network_timeout_is_refused_by_name(option: str, value: float) -> None:
    kwargs: dict[str, Any] = {option: value}
    with pytest.raises(ConfigError) as info:
        PoolConfig([host()], **kwargs)
    assert info.value.option == option


@settings(max_examples=300)
@given(min_size=st.integers(0, 50), max_size=st.integers(1, 50))
def test_min_size_above_max_size_is_always_refused(min_size: int, max_size: int) -> None:
    if min_size <= max_size:
        assert PoolConfig([host()], min_size=min_size, max_size=max_size).min_size == min_size
    else:
        with pytest.raises(ConfigError) as info:
            PoolConfig([host()], min_size=min_size, max_size=max_size)
        assert info.value.option == "min_size"


# ----------------------------------------------------------------------------- from_mapping


def test_from_mapping_builds_the_same_config_as_the_constructor() -> None:
    mapping = {
        "hosts": [
            {"hostname": "a.example", "port": 465, "tls": "implicit", "weight": 3},
            {"hostname": "b.example", "priority": 1, "username": "u", "password": SECRET},
            Host("c.example"),
        ],
        "max_size": 4,
        "idle_timeout": None,
        "local_hostname": "client.example",
    }
    expected = PoolConfig(
        [
            Host("a.example", 465, tls="implicit", weight=3),
            Host("b.example", priority=1, username="u", password=SECRET),
            Host("c.example"),
        ],
        max_size=4,
        idle_timeout=None,
        local_hostname="client.example",
    )
    assert PoolConfig.from_mapping(mapping) == expected


def test_from_mapping_accepts_strings_as_environment_variables_give_them() -> None:
    c = PoolConfig.from_mapping(
        {
            "hosts": [
                {
                    "hostname": "relay.lan",
                    "port": " 25 ",
                    "tls": "none",
                    "max_connections": "2",
                    "allow_plaintext_auth": "TRUE",
                    "username": "u",
                    "password": " keep spaces ",
                }
            ],
            "min_size": "1",
            "acquire_timeout": "2.5",
            "keepalive_interval": "none",
            "max_messages_per_connection": "OFF",
            "cooldown_jitter": "0.5",
        }
    )
    h = c.hosts[0]
    assert (h.port, h.max_connections, h.allow_plaintext_auth) == (25, 2, True)
    assert h.password == " keep spaces "
    assert c.min_size == 1
    assert c.acquire_timeout == 2.5
    assert c.keepalive_interval is None
    assert c.max_messages_per_connection is None
    assert c.cooldown_jitter == 0.5


@pytest.mark.parametrize("word", ["false", "No", "off", "0"])
def test_from_mapping_reads_false_words(word: str) -> None:
    c = PoolConfig.from_mapping({"hosts": [{"hostname": "a", "allow_plaintext_auth": word}]})
    assert c.hosts[0].allow_plaintext_auth is False


@pytest.mark.parametrize(
    ("mapping", "option"),
    [
        ({"hosts": [{"hostname": "a"}], "max_szie": 3}, "max_szie"),
        ({"hosts": [{"hostname": "a", "prot": 25}]}, "hosts[0].prot"),
        ({"hosts": [{"hostname": "a"}, {"hostname": "b", "port": "x"}]}, "hosts[1].port"),
        ({"hosts": [{"hostname": "a"}, {"port": 25}]}, "hosts[1].hostname"),
        ({"hosts": [{"hostname": "a", "weight": "0"}]}, "hosts[0].weight"),
        (
            {"hosts": [{"hostname": "a", "allow_plaintext_auth": "maybe"}]},
            "hosts[0].allow_plaintext_auth",
        ),
        ({"hosts": ["a.example"]}, "hosts[0]"),
        ({"hosts": "a.example"}, "hosts"),
        ({"hosts": {"hostname": "a"}}, "hosts"),
        ({"hosts": 3}, "hosts"),
        ({"max_size": 3}, "hosts"),
        ({"hosts": [{"hostname": "a"}], "max_size": "three"}, "max_size"),
        ({"hosts": [{"hostname": "a"}], "max_size": "2.0"}, "max_size"),
        ({"hosts": [{"hostname": "a"}], "acquire_timeout": "soon"}, "acquire_timeout"),
        ({"hosts": [{"hostname": "a"}], "acquire_timeout": "none"}, "acquire_timeout"),
        ({"hosts": [{"hostname": "a"}], "acquire_timeout": "inf"}, "acquire_timeout"),
        ({"hosts": [{"hostname": "a"}], "cooldown_jitter": "lots"}, "cooldown_jitter"),
        ({"hosts": [{"hostname": "a"}], "min_size": "5", "max_size": "2"}, "min_size"),
        ({"hosts": [], "max_size": 2}, "hosts"),
    ],
)
def test_from_mapping_refuses_wrong_input_naming_the_key(
    mapping: dict[str, Any], option: str
) -> None:
    with pytest.raises(ConfigError) as info:
        PoolConfig.from_mapping(mapping)
    assert info.value.option == option


def test_from_mapping_refuses_a_non_mapping() -> None:
    with pytest.raises(ConfigError) as info:
        PoolConfig.from_mapping([("hosts", [])])  # type: ignore[arg-type]
    assert info.value.option == "config"


def test_host_from_mapping_refuses_a_non_mapping() -> None:
    with pytest.raises(ConfigError) as info:
        Host.from_mapping("a.example")  # type: ignore[arg-type]
    assert info.value.option == "host"


def test_host_from_mapping_refuses_unknown_keys() -> None:
    with pytest.raises(ConfigError) as info:
        Host.from_mapping({"hostname": "a", "passwd": SECRET})
    assert info.value.option == "passwd"
    assert SECRET not in str(info.value)


@pytest.mark.parametrize("option", ["username", "oauth2_token"])
def test_a_credential_that_cannot_be_sent_is_refused_at_construction(option: str) -> None:
    credentials = {"username": "alice", "oauth2_token": "token", option: "x\udce9y"}
    with pytest.raises(ConfigError) as refused:
        Host("mx.example", 25, **credentials)  # type: ignore[arg-type]
    assert refused.value.option == option


def test_a_password_that_cannot_be_sent_is_refused_at_construction() -> None:
    # As os.environ gives a non-UTF-8 byte (surrogateescape): found at connect time instead,
    # the codec's error would quote part of the password into a log record.
    with pytest.raises(ConfigError) as refused:
        Host("mx.example", 25, username="alice", password="hunter\udce9-secret-tail")
    assert refused.value.option == "password"
    assert "hunter" not in str(refused.value)


# An int too large for a float (a JSON or TOML file may hold one: `acquire_timeout = 1e400`
# written out as digits) is a wrong value like infinity, refused by name, not an OverflowError.
HUGE = 10**400


@pytest.mark.parametrize(
    ("build", "option"),
    [
        (lambda: PoolConfig([host()], acquire_timeout=HUGE), "acquire_timeout"),
        (lambda: PoolConfig([host()], idle_timeout=HUGE), "idle_timeout"),
        (lambda: PoolConfig([host()], refill_delay=HUGE), "refill_delay"),
        (lambda: PoolConfig([host()], cooldown_jitter=HUGE), "cooldown_jitter"),
        (lambda: host(max_messages_per_second=HUGE), "max_messages_per_second"),
        (lambda: SharedBudget("b", redis_url="redis://r", lease_ttl=HUGE), "lease_ttl"),
        (
            lambda: SharedBudget(
                "b", redis_url="redis://r", on_store_failure="local", local_share=HUGE
            ),
            "local_share",
        ),
        (
            lambda: PoolConfig.from_mapping({"hosts": [{"hostname": "a"}], "send_timeout": HUGE}),
            "send_timeout",
        ),
    ],
)
def test_an_int_too_large_for_a_float_is_refused_naming_the_option(build: Any, option: str) -> None:
    with pytest.raises(ConfigError) as refused:
        build()
    assert refused.value.option == option


@pytest.mark.parametrize(
    "option", ["max_line_length", "max_reply_lines", "max_buffered_bytes", "bdat_chunk_size"]
)
@pytest.mark.parametrize("flag", [True, False])
def test_limits_refuse_a_bool_naming_the_option(option: str, flag: bool) -> None:
    # `bdat_chunk_size=True` is a bug, not chunks of 1 byte (docs/guide/options.md: True/False
    # are refused where a number is expected).
    kwargs: dict[str, Any] = {option: flag}
    with pytest.raises(ConfigError) as refused:
        Limits(**kwargs)
    assert refused.value.option == option
