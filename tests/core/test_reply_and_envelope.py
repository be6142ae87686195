"""The shared value types: `Reply`, `Envelope`, `PreparedMessage`."""

from __future__ import annotations

import pytest

from pooledmail_core import Envelope, PreparedMessage, Reply


def test_reply_classes_follow_the_first_digit() -> None:
    assert Reply(250).is_positive
    assert Reply(354).is_intermediate
    assert Reply(451).is_transient
    assert Reply(554).is_permanent
    assert not Reply(250).is_transient


@pytest.mark.parametrize("code", [0, 199, 600, 1000])
def test_reply_code_outside_200_to_599_is_refused(code: int) -> None:
    with pytest.raises(ValueError, match="reply code"):
        Reply(code)


def test_reply_lines_given_as_a_list_become_a_tuple() -> None:
    reply = Reply(250, ["first", "second"])  # type: ignore[arg-type]
    assert reply.lines == ("first", "second")
    assert reply.text == "first\nsecond"
    assert hash(reply) == hash(Reply(250, ("first", "second")))


def test_reply_str_shows_code_enhanced_status_and_first_line() -> None:
    assert str(Reply(550, ("no such user", "more"), (5, 1, 1))) == "550 5.1.1 no such user"
    assert str(Reply(250)) == "250"


def test_envelope_recipients_given_as_a_list_become_a_tuple() -> None:
    envelope = Envelope("a@example.com", ["b@example.com"])  # type: ignore[arg-type]
    assert envelope.recipients == ("b@example.com",)


def test_prepared_message_repr_never_shows_the_body() -> None:
    prepared = PreparedMessage(Envelope("a@example.com", ("b@example.com",)), b"secret body")
    assert "secret" not in repr(prepared)
    assert "11 bytes" in repr(prepared)
