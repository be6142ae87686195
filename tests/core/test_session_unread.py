"""`ClientSession.has_unread`: a session in step with its server has nothing left to read."""

from __future__ import annotations

import pytest

from pooledmail_core import NEED_DATA, ClientSession, RemoteProtocolError, TLSMode
from pooledmail_core._state import SessionState


def ready_session() -> ClientSession:
    session = ClientSession("client.example")
    setup = session.setup(tls=TLSMode.NONE)
    for server in (b"220 mx ESMTP\r\n", b"250-mx\r\n250 PIPELINING\r\n"):
        while setup.next_step() is not NEED_DATA:
            pass
        session.receive_data(server)
    setup.next_step()
    assert setup.result.ok
    return session


def test_a_ready_session_has_nothing_unread() -> None:
    assert not ready_session().has_unread


def test_a_reply_nobody_asked_for_is_unread() -> None:
    session = ready_session()
    session.receive_data(b"250 one reply too many\r\n")
    assert session.has_unread


def test_part_of_a_line_is_unread() -> None:
    session = ready_session()
    session.receive_data(b"2")
    assert session.has_unread


def test_the_end_of_the_stream_is_unread() -> None:
    session = ready_session()
    session.receive_data(b"")
    assert session.has_unread


def test_a_session_that_broke_counts_as_out_of_step() -> None:
    session = ready_session()
    session.receive_data(b"not a reply\r\n")
    with pytest.raises(RemoteProtocolError):
        session.next_event()
    assert session.state is SessionState.ERROR
    assert session.has_unread
