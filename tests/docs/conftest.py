"""Fixtures for the docs' tests: both backends and the TLS certificates of the driver's tests."""

from tests.anyio.conftest import anyio_backend, ca, client_tls, server_tls

__all__ = ["anyio_backend", "ca", "client_tls", "server_tls"]
