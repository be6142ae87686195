"""Frozen, validated configuration: `Host`, `PoolConfig`, `TLSMode` and `SharedBudget`.

Every value is checked when the object is built, so a wrong setting fails at start-up with a
`ConfigError` naming the option and the rule, never later in the middle of a send. Error messages
never quote a value that may be private (usernames, passwords, tokens).
"""

from __future__ import annotations

import enum
import ipaddress
import math
import urllib.parse
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeAlias

from ._errors import ConfigError

__all__ = ["Host", "OAuth2TokenProvider", "PoolConfig", "SharedBudget", "TLSMode"]

OAuth2TokenProvider: TypeAlias = Callable[[str | None], Awaitable[str]]
"""`async def provider(refused: str | None) -> str`: a current OAuth 2.0 access token.

The driver awaits it each time it opens a connection to the host (`refused` is None), and once
more when the server refused the token it returned (`refused` is that token: return a new one).
The core never calls it; it only checks that it is callable."""


class TLSMode(enum.Enum):
    """How a connection to a host is encrypted."""

    STARTTLS = "starttls"
    """Upgrade with STARTTLS (RFC 3207); a server that does not offer it is refused."""
    IMPLICIT = "implicit"
    """TLS from the first byte (RFC 8314, usually port 465)."""
    STARTTLS_IF_AVAILABLE = "starttls_if_available"
    """Opportunistic: upgrade when offered, carry on in plaintext when not. An explicit opt-in."""
    NONE = "none"
    """Plaintext. AUTH is refused unless the host sets `allow_plaintext_auth`."""


# Characters that would let a value smuggle a second command into an SMTP line (RFC 5321 §2.3.8).
_LINE_BREAKERS = frozenset("\r\n\x00")


def _check_int(option: str, value: object, *, minimum: int | None = None) -> int:
    # bool is an int subclass; `max_size=True` is a mistake, not 1.
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(option, "must be an integer")
    if minimum is not None and value < minimum:
        raise ConfigError(option, f"must be at least {minimum}")
    return value


def _as_float(value: int | float) -> float:
    # An int beyond the float range (a JSON or TOML file may hold one) is infinite for our needs;
    # float() would raise OverflowError, which names no option.
    try:
        return float(value)
    except OverflowError:
        return math.inf


def _check_seconds(option: str, value: object, *, allow_zero: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(option, "must be a number of seconds")
    seconds = _as_float(value)
    if not math.isfinite(seconds):
        raise ConfigError(option, "must be finite")
    if allow_zero and seconds < 0:
        raise ConfigError(option, "must not be negative")
    if not allow_zero and seconds <= 0:
        raise ConfigError(option, "must be greater than 0")
    return seconds


def _check_fraction(option: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(option, "must be a number between 0 and 1")
    fraction = _as_float(value)
    # `not (0 <= x <= 1)` also refuses NaN, which every comparison fails.
    if not 0.0 <= fraction <= 1.0:
        raise ConfigError(option, "must be between 0 and 1")
    return fraction


def _check_rate(option: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(option, "must be a number of messages per second")
    rate = _as_float(value)
    if not math.isfinite(rate) or rate <= 0:
        raise ConfigError(option, "must be a finite number greater than 0")
    return rate


def _check_optional_seconds(option: str, value: object) -> float | None:
    if value is None:
        return None
    return _check_seconds(option, value, allow_zero=False)


def _check_bool(option: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(option, "must be True or False")
    return value


def _check_line_safe(option: str, value: object, *, allow_space: bool) -> str:
    if not isinstance(value, str):
        raise ConfigError(option, "must be a string")
    if not value:
        raise ConfigError(option, "must not be empty")
    if any(ch in _LINE_BREAKERS for ch in value):
        raise ConfigError(option, "must not contain CR, LF or NUL")
    if not allow_space and any(ch.isspace() for ch in value):
        raise ConfigError(option, "must not contain whitespace")
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            # A lone surrogate (os.environ's surrogateescape for a byte that is not UTF-8).
            raise ConfigError(option, "must be valid Unicode (no lone surrogates)") from None
    return value


def _check_hostname(value: object) -> str:
    hostname = _check_line_safe("hostname", value, allow_space=False)
    if ":" in hostname:
        # Only an IPv6 address has a colon (RFC 3986 §3.2.2 brackets it; both forms are taken).
        literal = hostname[1:-1] if hostname[:1] == "[" and hostname[-1:] == "]" else hostname
        try:
            ipaddress.IPv6Address(literal)
        except ValueError:
            raise ConfigError(
                "hostname", "must not include a port: give it as Host(hostname, port)"
            ) from None
        hostname = literal
    return hostname


def _check_tls(value: object) -> TLSMode:
    if isinstance(value, TLSMode):
        return value
    if isinstance(value, str):
        try:
            return TLSMode(value.strip().lower())
        except ValueError:
            pass
    choices = ", ".join(repr(mode.value) for mode in TLSMode)
    raise ConfigError("tls", f"must be one of {choices}")


# Don't subclass this.
@dataclass(frozen=True, slots=True, init=False, repr=False)
class Host:
    """One SMTP server the pool may connect to.

    `priority` orders failover groups (lower is preferred); `weight` shares connections inside a
    group; `max_connections` caps the connections to this host (providers answer 421 beyond it).
    `key` is "hostname:port" ("[addr]:port" for an IPv6 literal); the repr never shows the
    password or the token. `oauth2_token_provider` (see `OAuth2TokenProvider`) replaces a static
    `oauth2_token` for pools that outlive a token. `max_messages_per_second` (with `burst`,
    default 1) limits the messages this pool sends to the host; `budget` shares connection and
    message limits with every pool of the fleet that names the same `SharedBudget`
    (docs/guide/scaling.md).
    """

    hostname: str
    port: int
    tls: TLSMode
    username: str | None
    password: str | None
    oauth2_token: str | None
    oauth2_token_provider: OAuth2TokenProvider | None
    priority: int
    weight: int
    max_connections: int | None
    allow_plaintext_auth: bool
    max_messages_per_second: float | None
    burst: int | None
    budget: SharedBudget | None

    def __init__(
        self,
        hostname: str,
        port: int = 587,
        *,
        tls: TLSMode | str = TLSMode.STARTTLS,
        username: str | None = None,
        password: str | None = None,
        oauth2_token: str | None = None,
        oauth2_token_provider: OAuth2TokenProvider | None = None,
        priority: int = 0,
        weight: int = 1,
        max_connections: int | None = None,
        allow_plaintext_auth: bool = False,
        max_messages_per_second: float | None = None,
        burst: int | None = None,
        budget: SharedBudget | None = None,
    ) -> None:
        hostname = _check_hostname(hostname)
        port = _check_int("port", port, minimum=1)
        if port > 65535:
            raise ConfigError("port", "must be at most 65535")
        mode = _check_tls(tls)
        if username is not None:
            _check_line_safe("username", username, allow_space=True)
        if password is not None:
            if not isinstance(password, str) or not password:
                raise ConfigError("password", "must be a non-empty string")
            # AUTH PLAIN separates its fields with NUL (RFC 4616 §2), so a NUL cannot be sent.
            if "\x00" in password:
                raise ConfigError("password", "must not contain NUL")
            try:
                password.encode("utf-8")
            except UnicodeEncodeError:
                # A lone surrogate (os.environ's surrogateescape for a non-UTF-8 byte) cannot be
                # sent; found at connect time, the codec's error would quote part of it.
                raise ConfigError(
                    "password", "must be valid Unicode (no lone surrogates)"
                ) from None
            if username is None:
                raise ConfigError("password", "requires a username")
        if oauth2_token is not None:
            _check_line_safe("oauth2_token", oauth2_token, allow_space=False)
            if not oauth2_token.isascii():
                # RFC 6750 §2.1: a bearer token is ASCII (b64token), as the provider's must be.
                raise ConfigError("oauth2_token", "must be ASCII, as a bearer token is")
            if username is None:
                raise ConfigError("oauth2_token", "requires a username")
            if password is not None:
                raise ConfigError("oauth2_token", "set either password or oauth2_token, not both")
        if oauth2_token_provider is not None:
            if not callable(oauth2_token_provider):
                raise ConfigError("oauth2_token_provider", "must be an async callable")
            if username is None:
                raise ConfigError("oauth2_token_provider", "requires a username")
            if password is not None or oauth2_token is not None:
                raise ConfigError(
                    "oauth2_token_provider", "set only one of password, oauth2_token and this"
                )
        if (
            username is not None
            and password is None
            and oauth2_token is None
            and oauth2_token_provider is None
        ):
            raise ConfigError(
                "username", "requires a password, an oauth2_token or an oauth2_token_provider"
            )
        priority = _check_int("priority", priority)
        weight = _check_int("weight", weight, minimum=1)
        if max_connections is not None:
            max_connections = _check_int("max_connections", max_connections, minimum=1)
        allow_plaintext_auth = _check_bool("allow_plaintext_auth", allow_plaintext_auth)
        # With tls="none" every AUTH would be refused by the session; say so now, not per send.
        if mode is TLSMode.NONE and username is not None and not allow_plaintext_auth:
            raise ConfigError(
                "allow_plaintext_auth", "credentials with tls='none' need allow_plaintext_auth=True"
            )
        setattr_ = object.__setattr__
        setattr_(self, "hostname", hostname)
        setattr_(self, "port", port)
        setattr_(self, "tls", mode)
        setattr_(self, "username", username)
        setattr_(self, "password", password)
        setattr_(self, "oauth2_token", oauth2_token)
        setattr_(self, "oauth2_token_provider", oauth2_token_provider)
        setattr_(self, "priority", priority)
        setattr_(self, "weight", weight)
        setattr_(self, "max_connections", max_connections)
        setattr_(self, "allow_plaintext_auth", allow_plaintext_auth)
        rate = None
        if max_messages_per_second is not None:
            rate = _check_rate("max_messages_per_second", max_messages_per_second)
        if burst is not None:
            if rate is None:
                raise ConfigError("burst", "requires max_messages_per_second")
            burst = _check_int("burst", burst, minimum=1)
        if budget is not None and not isinstance(budget, SharedBudget):
            raise ConfigError("budget", "must be a SharedBudget")
        setattr_(self, "max_messages_per_second", rate)
        # None without a rate, so that `dataclasses.replace` rebuilds the same host.
        setattr_(self, "burst", None if rate is None else (1 if burst is None else burst))
        setattr_(self, "budget", budget)

    @property
    def key(self) -> str:
        """ "hostname:port", the identity of a host inside one pool."""
        if ":" in self.hostname and not self.hostname.startswith("["):
            return f"[{self.hostname}]:{self.port}"
        return f"{self.hostname}:{self.port}"

    def __repr__(self) -> str:
        parts = [f"{self.hostname!r}", f"{self.port}", f"tls={self.tls.value!r}"]
        if self.username is not None:
            parts.append(f"username={self.username!r}")
        if self.password is not None:
            parts.append("password='***'")
        if self.oauth2_token is not None:
            parts.append("oauth2_token='***'")
        if self.oauth2_token_provider is not None:
            parts.append("oauth2_token_provider=<provider>")
        if self.priority != 0:
            parts.append(f"priority={self.priority}")
        if self.weight != 1:
            parts.append(f"weight={self.weight}")
        if self.max_connections is not None:
            parts.append(f"max_connections={self.max_connections}")
        if self.allow_plaintext_auth:
            parts.append("allow_plaintext_auth=True")
        if self.max_messages_per_second is not None:
            parts.append(f"max_messages_per_second={self.max_messages_per_second:g}")
            parts.append(f"burst={self.burst}")
        if self.budget is not None:
            parts.append(f"budget={self.budget!r}")
        return f"Host({', '.join(parts)})"

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, object]) -> Host:
        """Build a host from a plain mapping (a config file section, environment variables).

        Strings are accepted for numbers and booleans (see docs/guide/options.md); unknown keys are
        refused by name.
        """
        if not isinstance(mapping, Mapping):
            raise ConfigError("host", "must be a mapping")
        values: dict[str, Any] = {}
        for name, raw in mapping.items():
            kind = _HOST_FIELDS.get(name)
            if kind is None:
                raise ConfigError(str(name), "unknown host option")
            values[name] = _coerce(name, raw, kind)
        if "hostname" not in values:
            raise ConfigError("hostname", "is required")
        return cls(**values)


# Don't subclass this.
@dataclass(frozen=True, slots=True, init=False)
class PoolConfig:
    """Everything the pool needs to know, validated at construction.

    Durations are seconds (floats). `None` switches off `idle_timeout`, `keepalive_interval`,
    `max_connection_age` and `max_messages_per_connection`; every network timeout must be set,
    because an operation without a bound is how pools hang. See docs/guide/options.md.
    """

    hosts: tuple[Host, ...]
    min_size: int
    max_size: int
    acquire_timeout: float
    idle_timeout: float | None
    keepalive_interval: float | None
    probe_timeout: float
    max_connection_age: float | None
    max_messages_per_connection: int | None
    refill_delay: float
    connect_timeout: float
    command_timeout: float
    send_timeout: float
    reconnect_cooldown: float
    max_reconnect_cooldown: float
    cooldown_jitter: float
    max_retries: int
    retry_base_delay: float
    local_hostname: str | None

    def __init__(
        self,
        hosts: Iterable[Host],
        *,
        min_size: int = 0,
        max_size: int = 8,
        acquire_timeout: float = 15.0,
        idle_timeout: float | None = 120.0,
        keepalive_interval: float | None = 60.0,
        probe_timeout: float = 10.0,
        max_connection_age: float | None = 300.0,
        max_messages_per_connection: int | None = 100,
        refill_delay: float = 0.0,
        connect_timeout: float = 10.0,
        command_timeout: float = 30.0,
        send_timeout: float = 60.0,
        reconnect_cooldown: float = 1.0,
        max_reconnect_cooldown: float = 60.0,
        cooldown_jitter: float = 0.2,
        max_retries: int = 1,
        retry_base_delay: float = 1.0,
        local_hostname: str | None = None,
    ) -> None:
        if isinstance(hosts, (str, bytes, Host)) or not isinstance(hosts, Iterable):
            raise ConfigError("hosts", "must be a sequence of Host")
        host_tuple = tuple(hosts)
        if not host_tuple:
            raise ConfigError("hosts", "must name at least one host")
        seen: set[str] = set()
        for host in host_tuple:
            if not isinstance(host, Host):
                raise ConfigError("hosts", "must contain only Host objects")
            # Hostnames are case-insensitive (RFC 4343), so "A:25" and "a:25" are one server.
            folded = host.key.casefold()
            if folded in seen:
                raise ConfigError("hosts", f"duplicate host {host.key}")
            seen.add(folded)
        budgets: dict[str, SharedBudget] = {}
        for host in host_tuple:
            budget = host.budget
            if budget is None:
                continue
            # One name is one budget in the store: two different definitions would each believe
            # they own it.
            if budgets.setdefault(budget.name, budget) != budget:
                raise ConfigError("hosts", f"two different budgets are named {budget.name!r}")
        min_size = _check_int("min_size", min_size, minimum=0)
        max_size = _check_int("max_size", max_size, minimum=1)
        if min_size > max_size:
            raise ConfigError("min_size", "must not exceed max_size")
        if max_messages_per_connection is not None:
            max_messages_per_connection = _check_int(
                "max_messages_per_connection", max_messages_per_connection, minimum=1
            )
        reconnect = _check_seconds("reconnect_cooldown", reconnect_cooldown, allow_zero=False)
        max_reconnect = _check_seconds(
            "max_reconnect_cooldown", max_reconnect_cooldown, allow_zero=False
        )
        if max_reconnect < reconnect:
            raise ConfigError("max_reconnect_cooldown", "must not be less than reconnect_cooldown")
        jitter = _check_fraction("cooldown_jitter", cooldown_jitter)
        if local_hostname is not None:
            _check_line_safe("local_hostname", local_hostname, allow_space=False)
            # EHLO takes a domain or an address literal (RFC 5321 §4.1.1.1): ASCII only.
            if not local_hostname.isascii():
                raise ConfigError("local_hostname", "must be ASCII (use the IDNA A-label)")
        setattr_ = object.__setattr__
        setattr_(self, "hosts", host_tuple)
        setattr_(self, "min_size", min_size)
        setattr_(self, "max_size", max_size)
        setattr_(
            self,
            "acquire_timeout",
            _check_seconds("acquire_timeout", acquire_timeout, allow_zero=False),
        )
        setattr_(self, "idle_timeout", _check_optional_seconds("idle_timeout", idle_timeout))
        setattr_(
            self,
            "keepalive_interval",
            _check_optional_seconds("keepalive_interval", keepalive_interval),
        )
        setattr_(
            self, "probe_timeout", _check_seconds("probe_timeout", probe_timeout, allow_zero=False)
        )
        setattr_(
            self,
            "max_connection_age",
            _check_optional_seconds("max_connection_age", max_connection_age),
        )
        setattr_(self, "max_messages_per_connection", max_messages_per_connection)
        setattr_(
            self, "refill_delay", _check_seconds("refill_delay", refill_delay, allow_zero=True)
        )
        setattr_(
            self,
            "connect_timeout",
            _check_seconds("connect_timeout", connect_timeout, allow_zero=False),
        )
        setattr_(
            self,
            "command_timeout",
            _check_seconds("command_timeout", command_timeout, allow_zero=False),
        )
        setattr_(
            self, "send_timeout", _check_seconds("send_timeout", send_timeout, allow_zero=False)
        )
        setattr_(self, "reconnect_cooldown", reconnect)
        setattr_(self, "max_reconnect_cooldown", max_reconnect)
        setattr_(self, "cooldown_jitter", jitter)
        setattr_(self, "max_retries", _check_int("max_retries", max_retries, minimum=0))
        setattr_(
            self,
            "retry_base_delay",
            _check_seconds("retry_base_delay", retry_base_delay, allow_zero=True),
        )
        setattr_(self, "local_hostname", local_hostname)

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, object]) -> PoolConfig:
        """Build a configuration from a plain mapping, with the same validation.

        `hosts` is a list of `Host` objects or of mappings with `Host`'s argument names. Numbers
        and booleans may be given as strings (as environment variables are); "none" or "off"
        switches off an option that accepts `None`. Unknown keys are refused by name.
        """
        if not isinstance(mapping, Mapping):
            raise ConfigError("config", "must be a mapping")
        values: dict[str, Any] = {}
        for name, raw in mapping.items():
            if name == "hosts":
                continue
            kind = _POOL_FIELDS.get(name)
            if kind is None:
                raise ConfigError(str(name), "unknown option")
            values[name] = _coerce(name, raw, kind)
        if "hosts" not in mapping:
            raise ConfigError("hosts", "is required")
        raw_hosts = mapping["hosts"]
        if isinstance(raw_hosts, (str, bytes, Mapping)) or not isinstance(raw_hosts, Iterable):
            raise ConfigError("hosts", "must be a list of hosts")
        hosts: list[Host] = []
        for index, item in enumerate(raw_hosts):
            if isinstance(item, Host):
                hosts.append(item)
                continue
            if not isinstance(item, Mapping):
                raise ConfigError(f"hosts[{index}]", "must be a Host or a mapping")
            try:
                hosts.append(Host.from_mapping(item))
            except ConfigError as exc:
                # Name the host too: "hosts[1].port" is findable in a long config file.
                raise ConfigError(f"hosts[{index}].{exc.option}", exc.rule) from None
        return cls(hosts, **values)


# ------------------------------------------------------------------------------- shared budgets

# The ways a store failure can be met (docs/guide/scaling.md, "When Redis fails").
STORE_FAILURE_POLICIES = ("refuse", "local")
_URL_SCHEMES = ("redis://", "rediss://", "unix://")


# Don't subclass this.
@dataclass(frozen=True, slots=True, init=False, repr=False)
class SharedBudget:
    """A budget shared by every pool of a fleet that names it, kept in Redis (guide/scaling.md).

    `max_connections` caps the connections the whole fleet holds at once to the hosts that carry
    this budget; `max_messages_per_second` (with `burst`) caps the messages they send. Several
    hosts, pools and processes share one budget by `name`. The object is plain data: the core
    only reads it, and the driver does the Redis I/O. `lease_ttl` is how long a connection's
    lease outlives a process that died; every store call is bounded by `store_timeout`.
    `on_store_failure` says what happens while the store is unreachable: "refuse" (sends that
    need the budget fail with BUDGET_UNAVAILABLE) or "local" (this process keeps to
    `local_share` of the budget on its own). The repr never shows a password in `redis_url`.
    """

    name: str
    redis_url: str
    max_connections: int | None
    max_messages_per_second: float | None
    burst: int | None
    lease_ttl: float
    store_timeout: float
    on_store_failure: str
    local_share: float | None
    key_prefix: str

    def __init__(
        self,
        name: str,
        *,
        redis_url: str,
        max_connections: int | None = None,
        max_messages_per_second: float | None = None,
        burst: int | None = None,
        lease_ttl: float = 10.0,
        store_timeout: float = 0.5,
        on_store_failure: str = "refuse",
        local_share: float | None = None,
        key_prefix: str = "pooledmail",
    ) -> None:
        name = _check_key_part("name", name)
        if not isinstance(redis_url, str) or not redis_url.startswith(_URL_SCHEMES):
            raise ConfigError("redis_url", "must be a redis://, rediss:// or unix:// URL")
        if any(ch in _LINE_BREAKERS or ch.isspace() for ch in redis_url):
            raise ConfigError("redis_url", "must not contain whitespace, CR, LF or NUL")
        # '#' starts the URL's fragment, which the client drops with everything after it: an
        # unencoded '#' in a password silently cut it short there (or cut off the host).
        if "#" in redis_url:
            raise ConfigError(
                "redis_url",
                "must not contain '#' (it starts a fragment, which the Redis client drops with "
                "everything after it): percent-encode '#' as %23, in the user part or in "
                "?password=",
            )
        try:
            # What the Redis client reads when the pool starts; the value is never quoted.
            parts = urllib.parse.urlsplit(redis_url)
            redis_port = parts.port
        except ValueError:
            redis_port = -1
        if redis_port is not None and not 1 <= redis_port <= 65535:
            raise ConfigError("redis_url", "has a port that is not a number from 1 to 65535")
        # Without a host (or a socket path) the client has nowhere to connect, and says so only
        # inside the pool's first store call.
        if redis_url.startswith("unix://"):
            if not parts.path:
                raise ConfigError("redis_url", "has no socket path (unix:///path/to/redis.sock)")
        elif not parts.hostname:
            raise ConfigError("redis_url", "has no host")
        # The client percent-decodes the host and the socket path (the driver asks it to, for
        # the user part): one that decodes to a control character can name no host and no file,
        # and would fail only at the pool's first store call.
        where = parts.path if parts.scheme == "unix" else parts.hostname
        if any(ord(ch) < 32 or ord(ch) == 127 for ch in urllib.parse.unquote(where or "")):
            raise ConfigError(
                "redis_url",
                "has a host or socket path that decodes to a control character (%00 to %1F, %7F)",
            )
        _check_redis_options(parts)
        if max_connections is not None:
            max_connections = _check_int("max_connections", max_connections, minimum=1)
        rate = None
        if max_messages_per_second is not None:
            rate = _check_rate("max_messages_per_second", max_messages_per_second)
        if burst is not None:
            if rate is None:
                raise ConfigError("burst", "requires max_messages_per_second")
            burst = _check_int("burst", burst, minimum=1)
        ttl = _check_seconds("lease_ttl", lease_ttl, allow_zero=False)
        timeout = _check_seconds("store_timeout", store_timeout, allow_zero=False)
        # A lease is renewed every lease_ttl / 3; a renewal that may take longer than that could
        # let the lease lapse while the process is alive.
        if timeout * 3 > ttl:
            raise ConfigError("store_timeout", "must be at most a third of lease_ttl")
        if on_store_failure not in STORE_FAILURE_POLICIES:
            raise ConfigError("on_store_failure", "must be 'refuse' or 'local'")
        if on_store_failure == "local":
            if local_share is None:
                raise ConfigError(
                    "local_share",
                    "is required with on_store_failure='local': the fraction of the budget one "
                    "process may use while the store is unreachable (1 / number of processes)",
                )
            local_share = _check_fraction("local_share", local_share)
            if local_share == 0:
                raise ConfigError("local_share", "must be greater than 0")
        elif local_share is not None:
            raise ConfigError("local_share", "only applies with on_store_failure='local'")
        key_prefix = _check_key_part("key_prefix", key_prefix)
        setattr_ = object.__setattr__
        setattr_(self, "name", name)
        setattr_(self, "redis_url", redis_url)
        setattr_(self, "max_connections", max_connections)
        setattr_(self, "max_messages_per_second", rate)
        setattr_(self, "burst", None if rate is None else (1 if burst is None else burst))
        setattr_(self, "lease_ttl", ttl)
        setattr_(self, "store_timeout", timeout)
        setattr_(self, "on_store_failure", on_store_failure)
        setattr_(self, "local_share", local_share)
        setattr_(self, "key_prefix", key_prefix)

    def __repr__(self) -> str:
        parts = [repr(self.name), f"redis_url={_redacted_url(self.redis_url)!r}"]
        if self.max_connections is not None:
            parts.append(f"max_connections={self.max_connections}")
        if self.max_messages_per_second is not None:
            parts.append(f"max_messages_per_second={self.max_messages_per_second:g}")
            parts.append(f"burst={self.burst}")
        parts.append(f"on_store_failure={self.on_store_failure!r}")
        if self.local_share is not None:
            parts.append(f"local_share={self.local_share:g}")
        return f"SharedBudget({', '.join(parts)})"

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, object]) -> SharedBudget:
        """Build a budget from a plain mapping, validated alike (see `Host.from_mapping`)."""
        if not isinstance(mapping, Mapping):
            raise ConfigError("budget", "must be a mapping")
        values: dict[str, Any] = {}
        for name, raw in mapping.items():
            kind = _BUDGET_FIELDS.get(name)
            if kind is None:
                raise ConfigError(str(name), "unknown budget option")
            values[name] = _coerce(name, raw, kind)
        for required in ("name", "redis_url"):
            if required not in values:
                raise ConfigError(required, "is required")
        name = values.pop("name")
        return cls(name, **values)


# The query options the Redis client (coredis 6) reads from a URL. It ignores any other name
# without a word, and fails on a value it cannot read only when the pool starts, with an error
# that names neither the option nor redis_url: so both are refused here (docs/guide/scaling.md,
# "The Redis URL"). What needs the filesystem (the ssl_* files) is checked by the driver.
_REDIS_OPTIONS = frozenset({"db", "username", "password", "client_name"})
# Read only from a rediss:// URL; the client ignores them in any other.
_REDIS_TLS_OPTIONS = frozenset(
    {"ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_cert_reqs", "ssl_check_hostname"}
)
# Read by the client too, but they are pooledmail's to set (store_timeout bounds every call;
# noreply would leave the scripts without answers) or they take objects, not text.
_REDIS_CLIENT_SETTINGS = frozenset(
    {
        "connect_timeout",
        "stream_timeout",
        "timeout",
        "max_connections",
        "max_idle_time",
        "noreply",
        "noevict",
        "notouch",
        "encoding",
        "decode_responses",
        "connection_class",
        "credential_provider",
        "ssl_context",
        "processing_budget",
        "_cache",
    }
)
_CERT_REQS = ("none", "optional", "required")
# The spellings of a boolean the client reads (any other it takes as true), upper-cased.
_REDIS_FALSE = frozenset({"0", "F", "FALSE", "N", "NO"})
_REDIS_BOOLEANS = _REDIS_FALSE | frozenset({"1", "T", "TRUE", "Y", "YES"})


def _is_database(text: str) -> bool:
    # int() would also take "+1", "1_0" and non-ASCII digits; a database is written as digits.
    return text.isascii() and text.isdigit()


def _check_redis_options(parts: urllib.parse.SplitResult) -> None:
    # Messages name the option, never its value, nor an unknown name: the query may hold a
    # password, and a name that is no option may be one typed in the wrong place.
    tls = parts.scheme == "rediss"
    if parts.scheme != "unix":
        # The client takes the path as the database number; one it cannot read as a number
        # silently meant database 0.
        path = parts.path
        if path not in ("", "/") and not (path.startswith("/") and _is_database(path[1:])):
            raise ConfigError(
                "redis_url", "has a path that is not a database number (redis://host:port/N)"
            )
    # The client reads the query with urllib.parse.parse_qs, which decodes names and values and
    # drops an option without a value.
    given: dict[str, str] = {}
    for name, value in urllib.parse.parse_qsl(parts.query, keep_blank_values=True):
        if name in _REDIS_CLIENT_SETTINGS:
            raise ConfigError(
                "redis_url",
                f"?{name}= is not taken: pooledmail sets the Redis client up itself "
                "(store_timeout bounds every call)",
            )
        if name in _REDIS_TLS_OPTIONS:
            if not tls:
                raise ConfigError(
                    "redis_url", f"?{name}= applies only to rediss:// (the client ignores it here)"
                )
        elif name not in _REDIS_OPTIONS:
            raise ConfigError(
                "redis_url",
                "has a query option the Redis client does not read (it reads db, username, "
                "password, client_name, and with rediss:// ssl_ca_certs, ssl_certfile, "
                "ssl_keyfile, ssl_cert_reqs, ssl_check_hostname)",
            )
        if not value:
            raise ConfigError("redis_url", f"?{name}= has no value (the client would ignore it)")
        if name in given:
            raise ConfigError("redis_url", f"gives ?{name}= more than once")
        given[name] = value
    # The user part and the query would both set the same credential, and the client would
    # silently take the user part's: a password typed in two places is a mistake in one.
    for credential, in_user_part in (("username", parts.username), ("password", parts.password)):
        if in_user_part and credential in given:
            raise ConfigError(
                "redis_url",
                f"gives the {credential} twice: in the user part and in ?{credential}=",
            )
    database = given.get("db")
    if database is not None and not _is_database(database):
        raise ConfigError("redis_url", "?db= must be a database number (0 or more)")
    client_name = given.get("client_name")
    # Redis refuses a name with spaces or characters outside '!'..'~' (CLIENT SETNAME).
    if client_name is not None and not all("!" <= ch <= "~" for ch in client_name):
        raise ConfigError("redis_url", "?client_name= must be printable ASCII without spaces")
    cert_reqs = given.get("ssl_cert_reqs")
    if cert_reqs is not None and cert_reqs not in _CERT_REQS:
        raise ConfigError("redis_url", "?ssl_cert_reqs= must be 'none', 'optional' or 'required'")
    check_hostname = given.get("ssl_check_hostname")
    if check_hostname is not None and check_hostname.upper() not in _REDIS_BOOLEANS:
        raise ConfigError(
            "redis_url", "?ssl_check_hostname= must be true or false (yes/no, 1/0 are taken too)"
        )
    # The driver checks the server's name unless the URL says ?ssl_check_hostname=false, or
    # turns verification off altogether with ?ssl_cert_reqs=none: without a verified
    # certificate there is no name to check, so asking for both is a contradiction.
    if (
        cert_reqs == "none"
        and check_hostname is not None
        and check_hostname.upper() not in _REDIS_FALSE
    ):
        raise ConfigError(
            "redis_url",
            "?ssl_check_hostname= cannot be true with ?ssl_cert_reqs=none (a certificate "
            "that is not verified names nobody)",
        )
    if ("ssl_certfile" in given) != ("ssl_keyfile" in given):
        raise ConfigError(
            "redis_url",
            "?ssl_certfile= and ?ssl_keyfile= go together (the client ignores one alone)",
        )


def _check_key_part(option: str, value: object) -> str:
    # Part of every Redis key of the budget: printable ASCII without spaces, so that keys can be
    # read in redis-cli and never split a command.
    text = _check_line_safe(option, value, allow_space=False)
    if not text.isascii() or not text.isprintable():
        raise ConfigError(option, "must be printable ASCII")
    return text


def _redacted_url(url: str) -> str:
    # "redis://user:secret@host" -> "redis://user:***@host"; "...?password=secret" (the Redis
    # client reads a password from the query too) -> "...?password=***".
    url, question, query = url.partition("?")
    if question:
        fields = []
        for field in query.split("&"):
            name, equals, _ = field.partition("=")
            # The client decodes the names as it reads them (urllib.parse.parse_qs):
            # "pass%77ord" is "password" to it.
            password = urllib.parse.unquote_plus(name).lower() == "password"
            fields.append(f"{name}=***" if equals and password else field)
        query = "&".join(fields)
    scheme, sep, rest = url.partition("://")
    userinfo, at, location = rest.rpartition("@")
    if at:
        user, colon, _ = userinfo.partition(":")
        rest = f"{user}{':***' if colon else ''}@{location}"
    return f"{scheme}{sep}{rest}{question}{query}"


# How `from_mapping` turns strings into values. Kinds: "int", "int?", "float", "float?", "bool",
# "str", "str?", "tls", "rate?" (messages per second), "budget" (a SharedBudget or a mapping).
_HOST_FIELDS: dict[str, str] = {
    "hostname": "str",
    "port": "int",
    "tls": "tls",
    "username": "str?",
    "password": "str?",
    "oauth2_token": "str?",
    "priority": "int",
    "weight": "int",
    "max_connections": "int?",
    "allow_plaintext_auth": "bool",
    "max_messages_per_second": "rate?",
    "burst": "int?",
    "budget": "budget",
}

_BUDGET_FIELDS: dict[str, str] = {
    "name": "str",
    "redis_url": "str",
    "max_connections": "int?",
    "max_messages_per_second": "rate?",
    "burst": "int?",
    "lease_ttl": "float",
    "store_timeout": "float",
    "on_store_failure": "str",
    "local_share": "fraction?",
    "key_prefix": "str",
}

_POOL_FIELDS: dict[str, str] = {
    "min_size": "int",
    "max_size": "int",
    "acquire_timeout": "float",
    "idle_timeout": "float?",
    "keepalive_interval": "float?",
    "probe_timeout": "float",
    "max_connection_age": "float?",
    "max_messages_per_connection": "int?",
    "refill_delay": "float",
    "connect_timeout": "float",
    "command_timeout": "float",
    "send_timeout": "float",
    "reconnect_cooldown": "float",
    "max_reconnect_cooldown": "float",
    "cooldown_jitter": "fraction",
    "max_retries": "int",
    "retry_base_delay": "float",
    "local_hostname": "str?",
}

_TRUE_WORDS = frozenset({"true", "yes", "on", "1"})
_FALSE_WORDS = frozenset({"false", "no", "off", "0"})
_NONE_WORDS = frozenset({"none", "off"})


def _coerce(option: str, raw: object, kind: str) -> object:
    """Turn a string from a config file or the environment into the option's type.

    Anything that is not a string is passed through unchanged for the constructor to validate.
    Secrets are never coerced: a password is taken as given.
    """
    if kind == "budget":
        if raw is None or isinstance(raw, SharedBudget):
            return raw
        if isinstance(raw, Mapping):
            try:
                return SharedBudget.from_mapping(raw)
            except ConfigError as exc:
                raise ConfigError(f"{option}.{exc.option}", exc.rule) from None
        raise ConfigError(option, "must be a SharedBudget or a mapping")
    if not isinstance(raw, str) or kind in ("str", "str?", "tls"):
        return raw
    text = raw.strip()
    if kind.endswith("?") and text.lower() in _NONE_WORDS:
        return None
    base = kind.rstrip("?")
    if base == "bool":
        if text.lower() in _TRUE_WORDS:
            return True
        if text.lower() in _FALSE_WORDS:
            return False
        raise ConfigError(option, "must be true or false")
    if base == "int":
        try:
            return int(text, 10)
        except ValueError:
            raise ConfigError(option, "must be an integer") from None
    try:
        return float(text)
    except ValueError:
        rule = "must be a number" if base in ("fraction", "rate") else "must be a number of seconds"
        raise ConfigError(option, rule) from None
