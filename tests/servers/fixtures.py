"""pytest fixtures for the real servers (a plugin: tests/conftest.py loads it).

A missing program skips the test with the package to install, unless POOLEDMAIL_REQUIRE_SERVERS=1
(CI sets it in .ci/run): then the test fails, so that CI never passes by skipping. When a test
fails, the last lines of the log of every server still running are added to its report.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Generator, Iterator, Sequence
from typing import TYPE_CHECKING, NoReturn, TypeVar

import pytest

from ._process import MissingBinary, live_servers
from .exim import EximServer
from .postfix import PostfixServer
from .redis import RedisServer
from .smtp_sink import SmtpSink

if TYPE_CHECKING:
    import trustme

__all__ = [
    "REQUIRE_SERVERS",
    "exim",
    "exim_instance",
    "postfix",
    "postfix_instance",
    "redis_server",
    "servers_required",
    "smtp_sink",
]

REQUIRE_SERVERS = "POOLEDMAIL_REQUIRE_SERVERS"


def servers_required() -> bool:
    return os.environ.get(REQUIRE_SERVERS) == "1"


def unavailable(reason: str) -> NoReturn:
    if servers_required():
        pytest.fail(f"{reason} ({REQUIRE_SERVERS}=1: a missing server fails)", pytrace=False)
    pytest.skip(f"{reason}; .ci/run installs it ({REQUIRE_SERVERS}=1 makes this a failure)")


_MTA = TypeVar("_MTA", PostfixServer, EximServer)


@contextlib.contextmanager
def _mta_instance(kind: type[_MTA], ca: trustme.CA, options: dict[str, object]) -> Iterator[_MTA]:
    """A started private MTA of `kind` with a certificate for 127.0.0.1 from `ca`; closed on
    exit. Both need root (their daemons drop to their own users)."""
    if os.geteuid() != 0:
        unavailable(f"a private {kind.name} must be started as root")
    leaf = ca.issue_cert("127.0.0.1", "localhost")
    try:
        server = kind(
            certificate_chain_pem=b"".join(pem.bytes() for pem in leaf.cert_chain_pems),
            private_key_pem=leaf.private_key_pem.bytes(),
            **options,  # type: ignore[arg-type]
        )
    except MissingBinary as missing:
        unavailable(str(missing))
    with server:
        yield server


@contextlib.contextmanager
def postfix_instance(ca: trustme.CA, **options: object) -> Iterator[PostfixServer]:
    """A started PostfixServer with a certificate for 127.0.0.1 from `ca`; closed on exit."""
    with _mta_instance(PostfixServer, ca, options) as server:
        yield server


@pytest.fixture(scope="module")
def postfix(ca: trustme.CA) -> Iterator[PostfixServer]:
    """One private Postfix per module: STARTTLS and AUTH required, user `alice`.

    `ca` is the trustme CA of the requesting directory (tests/anyio/conftest.py); clients trust it.
    """
    with postfix_instance(ca) as server:
        yield server


@contextlib.contextmanager
def exim_instance(ca: trustme.CA, **options: object) -> Iterator[EximServer]:
    """A started EximServer with a certificate for 127.0.0.1 from `ca`; closed on exit.
    `options` are EximServer's (`recipients_max=`, `message_size_limit=`, `options=`...)."""
    with _mta_instance(EximServer, ca, options) as server:
        yield server


@pytest.fixture(scope="module")
def exim(ca: trustme.CA) -> Iterator[EximServer]:
    """One private Exim per module: STARTTLS, then AUTH (user `alice`) before any recipient."""
    with exim_instance(ca) as server:
        yield server


@pytest.fixture
def smtp_sink() -> Generator[Callable[..., SmtpSink], None, None]:
    """`smtp_sink(*flags, record=False)` starts a sink; every sink is closed after the test."""
    sinks: list[SmtpSink] = []

    def start(*flags: str, record: bool = False) -> SmtpSink:
        try:
            sink = SmtpSink(flags, record=record)
        except MissingBinary as missing:
            unavailable(str(missing))
        sinks.append(sink)
        sink.start()
        return sink

    try:
        yield start
    finally:
        for sink in sinks:
            sink.close()


@contextlib.contextmanager
def redis_instance(arguments: Sequence[str] = ()) -> Iterator[RedisServer]:
    """A started private redis-server (`arguments`: extra `--name value` options), without
    persistence; closed on exit (resumed first if the test paused it)."""
    try:
        server = RedisServer(arguments)
    except MissingBinary as missing:
        unavailable(str(missing))
    with server:
        yield server


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    """One private redis-server per module."""
    with redis_instance() as server:
        yield server


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, object, None]:
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if report.failed:
        for server in live_servers():
            report.sections.append((f"{server.name} log (last lines)", server.log_tail()))
