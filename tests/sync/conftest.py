"""Fixtures for blocking callers: the event loop backend the blocking pool runs on."""

from __future__ import annotations

import pytest


@pytest.fixture(params=["asyncio", "trio"])
def backend(request: pytest.FixtureRequest) -> str:
    # Both loops the blocking pool supports, listed explicitly as for the async tests.
    return str(request.param)
