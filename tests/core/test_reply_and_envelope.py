"""The shared value types: `Reply`, `Envelope`, `PreparedMessage`."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pooledmail_core import Envelope, PreparedMessage, Reply, checked_envelope
from pooledmail_core._envelope import make_envelope


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


class _Lookalike(str):
    """A str subclass: equal to, and hashed as, the plain address it spells."""


class _EqualToAnything:
    """Not a str at all, yet equal to (and hashed as) the address it carries."""

    def __init__(self, address: str) -> None:
        self.address = address

    def __eq__(self, other: object) -> bool:
        return other == self.address

    def __hash__(self) -> int:
        return hash(self.address)


_ADDRESSES = ["a@example.com", "b@example.org", "postmaster", "", "bad address", "c@[127.0.0.1]"]
_address = st.sampled_from(_ADDRESSES)
_odd = st.one_of(_address, _address.map(_Lookalike), _address.map(_EqualToAnything))


def _checked(build: Callable[[], Envelope]) -> tuple[str, object]:
    try:
        envelope = build()
    except (TypeError, ValueError) as exc:
        return "refused", (type(exc), str(exc))
    return "built", (envelope, [type(r) for r in envelope.recipients], type(envelope.sender))


@settings(max_examples=300)
@given(
    sender=_odd,
    recipients=st.one_of(
        _odd,
        st.lists(_odd, max_size=4),
        st.lists(_odd, max_size=4).map(tuple),
        st.frozensets(_address, max_size=2),
    ),
    repeat=st.integers(1, 3),
)
def test_a_remembered_envelope_is_exactly_what_checking_builds(
    sender: object, recipients: object, repeat: int
) -> None:
    # checked_envelope remembers the envelopes it built for plain str addresses; whatever the
    # call, it gives what a fresh check gives (the same refusal, the same values of the same
    # types), however often it is asked.
    fresh = _checked(
        lambda: make_envelope(sender, recipients, None, None, None, False)  # type: ignore[arg-type]
    )
    for _ in range(repeat):
        assert _checked(lambda: checked_envelope(sender, recipients)) == fresh  # type: ignore[arg-type]


def test_the_same_plain_addresses_share_one_envelope_and_dsn_parameters_do_not() -> None:
    first = checked_envelope("a@example.com", ["b@example.org"])
    assert checked_envelope("a@example.com", ("b@example.org",)) is first
    assert checked_envelope("a@example.com", "b@example.org") is first
    assert checked_envelope("a@example.com", ["b@example.org", "b@example.org"]) == first
    with_dsn = checked_envelope("a@example.com", "b@example.org", notify="never")
    assert with_dsn.notify == ("NEVER",)
    assert with_dsn is not first
