"""From Django settings (and `get_connection()` arguments) to a pool configuration.

Two ways, chosen by whether the `POOLEDMAIL` dict names `hosts` (docs/guide/django.md):

* Without `hosts`, the one host comes from Django's own settings, read as Django's SMTP backend
  reads them: `EMAIL_HOST`, `EMAIL_PORT`, `EMAIL_USE_TLS` (STARTTLS), `EMAIL_USE_SSL` (implicit
  TLS), `EMAIL_HOST_USER` and `EMAIL_HOST_PASSWORD` (AUTH only when both are set),
  `EMAIL_TIMEOUT` (the connect and per-command timeouts, and a `send_timeout` of at least three
  of them), each overridden by the matching argument of `get_connection()`; `POOLEDMAIL` may
  still set pool options (`max_size` ...).
* With `hosts`, `POOLEDMAIL` is the whole configuration, read by `PoolConfig.from_mapping`, and
  connection arguments are refused rather than silently ignored.

`POOLEDMAIL["backend"]` ("asyncio" or "trio") is the blocking pool's event loop. A wrong value
fails with `ImproperlyConfigured` naming the setting or argument it came from.
"""

from __future__ import annotations

import functools
import inspect
import math
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.mail.utils import DNS_NAME

from pooledmail_anyio import ConfigError, PoolConfig

__all__ = ["BackendOptions", "backend_options"]

# `EMAIL_TIMEOUT` bounds each blocking operation (Django's SMTP backend gives it to its socket).
# A pooled send is three in a row at most, each bounded by it: the connection, the replies to the
# envelope, the final reply; so the whole send gets at least this many of them.
_OPERATIONS_PER_SEND = 3
_DEFAULT_SEND_TIMEOUT: float = inspect.signature(PoolConfig).parameters["send_timeout"].default


@dataclass(frozen=True, slots=True)
class BackendOptions:
    """What selects the shared blocking pool: its configuration, event loop and TLS context."""

    config: PoolConfig
    backend: str
    ssl_context: ssl.SSLContext | None


# get_connection() argument -> (Host option, the Django setting it overrides)
_HOST_ARGUMENTS = {
    "host": ("hostname", "EMAIL_HOST"),
    "port": ("port", "EMAIL_PORT"),
    "username": ("username", "EMAIL_HOST_USER"),
    "password": ("password", "EMAIL_HOST_PASSWORD"),
    "use_tls": ("tls", "EMAIL_USE_TLS"),
    "use_ssl": ("tls", "EMAIL_USE_SSL"),
    "timeout": ("timeout", "EMAIL_TIMEOUT"),
}


def backend_options(**arguments: Any) -> BackendOptions:
    """Read the settings, with `get_connection()` arguments (None = use the setting)."""
    raw = getattr(settings, "POOLEDMAIL", None)
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise ImproperlyConfigured("POOLEDMAIL: must be a dict")
    options: dict[str, object] = dict(raw)
    backend = options.pop("backend", "asyncio")
    # Where each option came from, to name it in an error.
    sources: dict[str, str] = {}
    if "hosts" in options:
        given = [
            name
            for name in _HOST_ARGUMENTS
            if name != "timeout" and arguments.get(name) is not None
        ]
        if given:
            raise ImproperlyConfigured(
                f"{given[0]} argument: cannot override the hosts in POOLEDMAIL['hosts']"
            )
    else:
        options["hosts"] = [_host_from_settings(arguments, sources)]
    timeout, timeout_source = _value("timeout", arguments)
    if timeout is not None:
        for name in ("connect_timeout", "command_timeout"):
            if name not in options:
                options[name] = timeout
                sources[name] = timeout_source
        seconds = _seconds(timeout)
        if "send_timeout" not in options and seconds is not None:
            # Not capped below what EMAIL_TIMEOUT allows each step (a final reply slower than
            # the default send_timeout would otherwise end UNKNOWN_AFTER_DATA).
            options["send_timeout"] = max(_DEFAULT_SEND_TIMEOUT, _OPERATIONS_PER_SEND * seconds)
            sources["send_timeout"] = timeout_source
    if "local_hostname" not in options:
        # EHLO with the name Django's SMTP backend uses (RFC 5321 §4.1.1.1 wants the client's
        # FQDN), when it is a usable one.
        fqdn = str(DNS_NAME)
        if fqdn and fqdn.isascii() and not any(c.isspace() for c in fqdn):
            options["local_hostname"] = fqdn
    try:
        config = PoolConfig.from_mapping(options)
    except ConfigError as exc:
        raise ImproperlyConfigured(_describe(exc, sources)) from None
    return BackendOptions(config, _checked_backend(backend), _ssl_context(arguments))


def _seconds(value: object) -> float | None:
    """`value` as a positive, finite number of seconds, or None (a wrong value is then reported
    by `connect_timeout`'s own check, naming the setting)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    if not (seconds > 0 and math.isfinite(_OPERATIONS_PER_SEND * seconds)):
        return None
    return seconds


def _value(name: str, arguments: Mapping[str, Any]) -> tuple[Any, str]:
    """An argument if given, else its Django setting; and the name to quote in an error."""
    setting = _HOST_ARGUMENTS[name][1]
    value = arguments.get(name)
    if value is not None:
        return value, f"{name} argument"
    return getattr(settings, setting), setting


def _host_from_settings(arguments: Mapping[str, Any], sources: dict[str, str]) -> dict[str, Any]:
    hostname, sources["hosts[0].hostname"] = _value("host", arguments)
    port, sources["hosts[0].port"] = _value("port", arguments)
    use_tls, tls_source = _value("use_tls", arguments)
    use_ssl, ssl_source = _value("use_ssl", arguments)
    # Django reads these settings for their truth value; so does this.
    if use_tls and use_ssl:
        raise ImproperlyConfigured(
            f"{tls_source}/{ssl_source}: mutually exclusive, set only one of them to True"
        )
    host: dict[str, Any] = {
        # Django falls back to the setting when the argument is empty, and so does this.
        "hostname": hostname or settings.EMAIL_HOST,
        "port": port or settings.EMAIL_PORT,
        "tls": "implicit" if use_ssl else "starttls" if use_tls else "none",
    }
    username, user_source = _value("username", arguments)
    password, password_source = _value("password", arguments)
    # Django's SMTP backend logs in only when both are non-empty.
    if username and password:
        if not (use_tls or use_ssl):
            raise ImproperlyConfigured(
                f"{user_source}/{password_source}: pooledmail does not send a password over a "
                "plaintext connection; set EMAIL_USE_TLS or EMAIL_USE_SSL, or describe a trusted "
                "local relay in POOLEDMAIL['hosts'] with allow_plaintext_auth"
            )
        host["username"] = username
        host["password"] = password
        sources["hosts[0].username"] = user_source
        sources["hosts[0].password"] = password_source
    return host


def _describe(error: ConfigError, sources: Mapping[str, str]) -> str:
    source = sources.get(error.option)
    if source is None:
        return f"POOLEDMAIL: {error.option}: {error.rule}"
    return f"{source}: {error.rule}"


def _checked_backend(backend: object) -> str:
    if backend not in ("asyncio", "trio"):
        raise ImproperlyConfigured("POOLEDMAIL: backend: must be 'asyncio' or 'trio'")
    return str(backend)


def _ssl_context(arguments: Mapping[str, Any]) -> ssl.SSLContext | None:
    certfile = arguments.get("ssl_certfile") or getattr(settings, "EMAIL_SSL_CERTFILE", None)
    keyfile = arguments.get("ssl_keyfile") or getattr(settings, "EMAIL_SSL_KEYFILE", None)
    if not certfile and not keyfile:
        # The pool verifies against the system's trust store with its default context.
        return None
    if not certfile:
        raise ImproperlyConfigured("EMAIL_SSL_KEYFILE: needs EMAIL_SSL_CERTFILE as well")
    try:
        return _client_certificate_context(str(certfile), str(keyfile) if keyfile else None)
    except (OSError, ssl.SSLError) as exc:
        reason = exc.strerror or exc.__class__.__name__
        raise ImproperlyConfigured(
            f"EMAIL_SSL_CERTFILE: cannot load the client certificate: {reason}"
        ) from None


@functools.lru_cache(maxsize=8)
def _client_certificate_context(certfile: str, keyfile: str | None) -> ssl.SSLContext:
    # One context per certificate: the shared pool is chosen by it (identity), so a new context
    # per message would mean a new pool per message.
    context = ssl.create_default_context()
    context.load_cert_chain(certfile, keyfile)
    return context
