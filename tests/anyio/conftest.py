"""Fixtures for driver tests: both backends, trustme certificates, aiosmtpd on 127.0.0.1."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from typing import Any

import pytest
import trustme


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    # Listed explicitly: the anyio plugin would silently skip a backend that is not installed.
    return str(request.param)


@pytest.fixture(scope="session")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="session")
def server_tls(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    return context


@pytest.fixture(scope="session")
def client_tls(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


class RecordingHandler:
    """An aiosmtpd handler that keeps what it received."""

    def __init__(self) -> None:
        self.envelopes: list[Any] = []
        self.sessions: set[int] = set()
        self.mechanisms: list[str] = []

    def authenticate(
        self, server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any
    ) -> Any:
        from aiosmtpd.smtp import AuthResult, LoginPassword

        self.mechanisms.append(mechanism)
        ok = isinstance(auth_data, LoginPassword) and (
            auth_data.login == b"alice" and auth_data.password == b"s3cret-pw"
        )
        return AuthResult(success=ok, handled=False)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.envelopes.append(envelope)
        self.sessions.add(id(session))
        return "250 2.0.0 OK"


@pytest.fixture
def aiosmtpd_server(request: pytest.FixtureRequest) -> Iterator[tuple[Any, RecordingHandler]]:
    """Yields (controller, handler); options come from `@pytest.mark.aiosmtpd(**kwargs)`."""
    from aiosmtpd.controller import Controller

    from pooledmail_anyio._ports import free_port

    marker = request.node.get_closest_marker("aiosmtpd")
    options: dict[str, Any] = dict(marker.kwargs) if marker else {}
    handler = RecordingHandler()
    if options.pop("with_auth", False):
        options["authenticator"] = handler.authenticate
    for name in ("tls_context", "ssl_context"):
        if options.get(name) == "server_tls":
            options[name] = request.getfixturevalue("server_tls")
    controller = Controller(handler, hostname="127.0.0.1", port=free_port(), **options)
    controller.start()
    try:
        yield controller, handler
    finally:
        controller.stop()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "aiosmtpd(**kwargs): options for the aiosmtpd fixture")
