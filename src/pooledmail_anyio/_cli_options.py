"""The `pooledmail` command's configuration: flags, `POOLEDMAIL_*` environment variables, a file.

Every pool option can come from three places, the later winning: a JSON or TOML file
(`--config`, or `POOLEDMAIL_CONFIG`) in the shape `PoolConfig.from_mapping` takes, an environment
variable `POOLEDMAIL_<OPTION>` (`POOLEDMAIL_MAX_SIZE=4`), and a flag (`--max-size 4`). The host
comes from `--host HOST[:PORT]` (repeatable) or `POOLEDMAIL_HOST` (comma-separated), with
`--port`, `--tls`, `--user` and their variables; a password or token only from
`POOLEDMAIL_PASSWORD` / `POOLEDMAIL_OAUTH2_TOKEN` or a prompt (not for `send`, whose stdin is the
message), never from a flag (a command line is
visible to every user of the machine). Everything goes through `PoolConfig.from_mapping`, so a
wrong value fails with the option's name, and this module adds where the value came from.
"""

from __future__ import annotations

import argparse
import dataclasses
import getpass
import json
import ssl
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pooledmail_core import ConfigError, PoolConfig, TLSMode

__all__ = [
    "ENV_PREFIX",
    "POOL_OPTIONS",
    "CommandLineError",
    "add_host_options",
    "add_pool_options",
    "build_config",
    "parse_host",
    "ssl_context_from",
]

ENV_PREFIX = "POOLEDMAIL_"
# Every PoolConfig option but the hosts, in declaration order: each gets a flag and a variable.
POOL_OPTIONS = tuple(f.name for f in dataclasses.fields(PoolConfig) if f.name != "hosts")


class CommandLineError(Exception):
    """A wrong option: the message names it and where it came from. Exit status 2."""


def _flag(option: str) -> str:
    return "--" + option.replace("_", "-")


def _variable(option: str) -> str:
    return ENV_PREFIX + option.upper()


def add_host_options(parser: argparse.ArgumentParser, *, positional: bool) -> None:
    group = parser.add_argument_group("server")
    if positional:
        group.add_argument("host", metavar="HOST[:PORT]", help="the server (POOLEDMAIL_HOST)")
    else:
        group.add_argument(
            "--host",
            action="append",
            metavar="HOST[:PORT]",
            help="a server; repeat or separate with commas for several (POOLEDMAIL_HOST)",
        )
    group.add_argument("--port", help="default port (POOLEDMAIL_PORT; 587)")
    group.add_argument(
        "--tls",
        choices=[mode.value for mode in TLSMode],
        help="TLS mode (POOLEDMAIL_TLS; starttls)",
    )
    group.add_argument(
        "--user",
        help="AUTH user name; the password comes from POOLEDMAIL_PASSWORD, the token from "
        "POOLEDMAIL_OAUTH2_TOKEN, or a prompt (POOLEDMAIL_USERNAME)",
    )
    group.add_argument(
        "--allow-plaintext-auth",
        action="store_const",
        const="true",
        help="allow AUTH without TLS (POOLEDMAIL_ALLOW_PLAINTEXT_AUTH)",
    )
    group.add_argument(
        "--cafile",
        help="trust the certificate authorities in this PEM file as well (POOLEDMAIL_CAFILE)",
    )
    group.add_argument(
        "--config", help="a JSON or TOML file of pool options and hosts (POOLEDMAIL_CONFIG)"
    )


def add_pool_options(parser: argparse.ArgumentParser, *only: str) -> None:
    group = parser.add_argument_group(
        "pool options", "as in docs/guide/options.md; each also from POOLEDMAIL_<OPTION>"
    )
    for option in only or POOL_OPTIONS:
        group.add_argument(_flag(option), dest=option, metavar="VALUE", help=_variable(option))


def parse_host(text: str, default_port: int | str | None) -> dict[str, object]:
    """ "host", "host:port", "[v6]:port" or a bare IPv6 address, as a host mapping."""
    text = text.strip()
    hostname, port = text, default_port
    if text.startswith("["):
        end = text.find("]")
        if end != -1:
            hostname = text[1:end]
            rest = text[end + 1 :]
            if rest.startswith(":"):
                port = rest[1:]
    elif text.count(":") == 1:
        hostname, port = text.split(":")
    mapping: dict[str, object] = {"hostname": hostname}
    if port is not None:
        mapping["port"] = port
    return mapping


def _load_file(path: str, source: str) -> dict[str, Any]:
    file = Path(path)
    try:
        text = file.read_bytes()
    except OSError as exc:
        raise CommandLineError(f"config: cannot read {path}: {exc.strerror} ({source})") from None
    try:
        if file.suffix != ".toml":
            loaded = json.loads(text)
        elif sys.version_info >= (3, 11):
            import tomllib

            loaded = tomllib.loads(text.decode())
        else:  # pragma: no cover - Python 3.10 has no tomllib
            raise CommandLineError("config: TOML needs Python 3.11; use a .json file")
    except ValueError as exc:
        raise CommandLineError(f"config: {path} is not valid: {exc} ({source})") from None
    if not isinstance(loaded, dict):
        raise CommandLineError(f"config: {path} must hold a table of options ({source})")
    return loaded


def build_config(
    args: argparse.Namespace,
    environ: Mapping[str, str],
    *,
    hosts: list[str] | None = None,
    prompt: bool = True,
) -> PoolConfig:
    """The pool configuration from a file, the environment and the flags, validated.

    `hosts` overrides `--host` (the probe's positional argument)."""
    sources: dict[str, str] = {}
    mapping: dict[str, Any] = {}
    config_path = getattr(args, "config", None) or environ.get(_variable("config"))
    if config_path:
        source = "--config" if getattr(args, "config", None) else _variable("config")
        mapping.update(_load_file(config_path, source))
        for option in mapping:
            sources[option] = config_path
    for option in POOL_OPTIONS:
        flag_value = getattr(args, option, None)
        if flag_value is not None:
            mapping[option] = flag_value
            sources[option] = _flag(option)
        elif _variable(option) in environ:
            mapping[option] = environ[_variable(option)]
            sources[option] = _variable(option)
    host_mapping, host_sources = _host_fields(args, environ, prompt=prompt)
    names: list[str] | None = hosts if hosts is not None else getattr(args, "host", None)
    if names:
        # `--host a,b` as POOLEDMAIL_HOST takes it, and as `--help` reads.
        names = [name for value in names for name in value.split(",") if name.strip()]
    names_source = "the HOST[:PORT] argument" if hosts is not None else "--host"
    if not names and _variable("host") in environ:
        names = [name for name in environ[_variable("host")].split(",") if name.strip()]
        names_source = _variable("host")
    if names:
        mapping["hosts"] = []
        for index, name in enumerate(names):
            port = host_mapping.get("port")
            host = parse_host(name, port if isinstance(port, (int, str)) else None)
            if "port" in parse_host(name, None):
                # "host:port": this host's port came with its name, not from --port.
                sources[f"hosts[{index}].port"] = names_source
            mapping["hosts"].append({**host_mapping, **host})
        sources["hostname"] = names_source
    elif host_mapping and "hosts" in mapping:
        # Host options without a host name apply to the hosts of the file.
        mapping["hosts"] = [
            {**item, **host_mapping} if isinstance(item, dict) else item
            for item in mapping["hosts"]
        ]
    if "hosts" not in mapping:
        raise CommandLineError(
            "hosts: give a server with --host HOST[:PORT], POOLEDMAIL_HOST or --config"
        )
    try:
        return PoolConfig.from_mapping(mapping)
    except ConfigError as exc:
        option = exc.option.rsplit(".", 1)[-1]
        # The most precise first: one host's own value ("hosts[1].port"), then the option.
        origin = sources.get(exc.option) or host_sources.get(option) or sources.get(option)
        if origin:
            where = f" ({origin})"
        elif option in _HOST_FLAGS:
            # Not given, yet wrong: say which flag would set it.
            where = f" (set with {_HOST_FLAGS[option]})"
        else:
            where = ""
        raise CommandLineError(f"{exc}{where}") from None


# A host's options that flags set: (option, the flag's name, the variable's name).
_HOST_OPTIONS = (
    ("port", "port", "port"),
    ("tls", "tls", "tls"),
    ("username", "user", "username"),
    ("allow_plaintext_auth", "allow_plaintext_auth", "allow_plaintext_auth"),
)
# The flag that sets each, for an error about one that was not given.
_HOST_FLAGS = {option: _flag(flag) for option, flag, _ in _HOST_OPTIONS}


def _host_fields(
    args: argparse.Namespace, environ: Mapping[str, str], *, prompt: bool
) -> tuple[dict[str, object], dict[str, str]]:
    fields: dict[str, object] = {}
    sources: dict[str, str] = {}
    for option, flag, variable in _HOST_OPTIONS:
        value = getattr(args, flag, None)
        if value is not None:
            fields[option] = value
            sources[option] = _flag(flag)
        elif _variable(variable) in environ:
            fields[option] = environ[_variable(variable)]
            sources[option] = _variable(variable)
    for option in ("password", "oauth2_token"):
        if _variable(option) in environ:
            fields[option] = environ[_variable(option)]
            sources[option] = _variable(option)
    if "username" in fields and "password" not in fields and "oauth2_token" not in fields:
        needs = "password: --user needs POOLEDMAIL_PASSWORD or POOLEDMAIL_OAUTH2_TOKEN"
        if not prompt:
            # `send` reads the message from stdin: there is nothing to ask on, terminal or not.
            raise CommandLineError(f"{needs} (send reads the message from stdin, so it cannot ask)")
        if not sys.stdin.isatty():
            raise CommandLineError(f"{needs} (or a terminal to ask on)")
        fields["password"] = getpass.getpass(f"password for {fields['username']}: ")
        sources["password"] = "the prompt"
    return fields, sources


def ssl_context_from(args: argparse.Namespace, environ: Mapping[str, str]) -> ssl.SSLContext:
    """The system's trust store, plus `--cafile` / POOLEDMAIL_CAFILE. Never unverified."""
    context = ssl.create_default_context()
    cafile = getattr(args, "cafile", None) or environ.get(_variable("cafile"))
    if cafile:
        source = "--cafile" if getattr(args, "cafile", None) else _variable("cafile")
        try:
            context.load_verify_locations(cafile=cafile)
        except (OSError, ssl.SSLError) as exc:
            raise CommandLineError(f"cafile: cannot load {cafile}: {exc} ({source})") from None
    return context
