"""Fixtures for the Django backend's tests: both loops, and a way to point Django at a server."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any

import pytest

from . import configured  # noqa: F401  (configures Django before the tests import it)


@pytest.fixture(params=["asyncio", "trio"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def pointed_at(backend: str) -> Iterator[Callable[..., AbstractContextManager[Any]]]:
    """`with pointed_at(port, **settings):` sends through a pool to 127.0.0.1:port on the
    test's backend; every pool used is closed when the test ends."""
    from django.core.mail import get_connection
    from django.test import override_settings

    pools: list[Any] = []

    def point(port: int, **extra: Any) -> AbstractContextManager[Any]:
        pooledmail = {"backend": backend, "max_size": 4, **extra.pop("POOLEDMAIL", {})}
        overridden = override_settings(
            EMAIL_HOST="127.0.0.1", EMAIL_PORT=port, POOLEDMAIL=pooledmail, **extra
        )
        with overridden:
            pools.append(get_connection().pool)
        return overridden

    yield point
    for pool in pools:
        pool.close()
