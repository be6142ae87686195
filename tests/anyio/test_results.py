"""The result objects a send returns are ordinary frozen dataclasses, however they were built."""

from __future__ import annotations

import dataclasses
import pickle

import pytest

from pooledmail_anyio import SendResult
from pooledmail_anyio._results import accepted_result
from pooledmail_core import Reply


def test_a_result_built_for_a_send_is_the_dataclass_built_by_hand() -> None:
    reply = Reply(250, ("Ok: queued as 1A2B",), (2, 0, 0))
    refused = (("c@example.net", Reply(550, ("no such user",), (5, 1, 1))),)
    fields = ("mx.example:25", 1, ("b@example.net",), refused, reply, "<id@example.com>")
    built = accepted_result(*fields)
    expected = SendResult(*fields)
    assert built == expected
    assert hash(built) == hash(expected)
    assert repr(built) == repr(expected)
    assert dataclasses.astuple(built) == dataclasses.astuple(expected)
    assert pickle.loads(pickle.dumps(built)) == expected
    with pytest.raises(dataclasses.FrozenInstanceError):
        built.attempts = 2  # type: ignore[misc]
