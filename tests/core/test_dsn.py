"""DSN parameters (RFC 3461): checked when the envelope is built, refused when DSN is lacking."""

from __future__ import annotations

from email.message import EmailMessage
from typing import Any

import pytest

from pooledmail_core import (
    Capabilities,
    DSNNotSupported,
    Envelope,
    InvalidArgument,
    LocalProtocolError,
    PreparedMessage,
    checked_envelope,
    prepare_message,
)
from pooledmail_core._dsn import xtext
from pooledmail_core._transaction import plan_transaction


def envelope_with(**dsn: Any) -> Envelope:
    return checked_envelope("a@example.com", ["b@example.org"], **dsn)


@pytest.mark.parametrize(
    ("dsn", "expected"),
    [
        ({}, {"notify": None, "ret": None, "envid": None, "orcpt": False}),
        ({"notify": "never"}, {"notify": ("NEVER",)}),
        ({"notify": "Success"}, {"notify": ("SUCCESS",)}),
        ({"notify": "success,failure"}, {"notify": ("SUCCESS", "FAILURE")}),
        ({"notify": "SUCCESS, DELAY"}, {"notify": ("SUCCESS", "DELAY")}),
        ({"notify": ["delay", "failure", "success"]}, {"notify": ("DELAY", "FAILURE", "SUCCESS")}),
        ({"notify": ("NEVER",)}, {"notify": ("NEVER",)}),
        ({"ret": "full"}, {"ret": "FULL"}),
        ({"ret": "HDRS"}, {"ret": "HDRS"}),
        ({"envid": "QQ314159 x"}, {"envid": "QQ314159 x"}),
        ({"envid": "x" * 100}, {"envid": "x" * 100}),
        ({"orcpt": True}, {"orcpt": True}),
    ],
)
def test_dsn_parameters_are_checked_and_upper_cased(
    dsn: dict[str, Any], expected: dict[str, Any]
) -> None:
    envelope = envelope_with(**dsn)
    for name, value in expected.items():
        assert getattr(envelope, name) == value
    assert envelope.asks_for_dsn == bool(dsn)


@pytest.mark.parametrize(
    ("dsn", "argument"),
    [
        ({"notify": ""}, "notify"),
        ({"notify": ()}, "notify"),
        ({"notify": "NEVER,SUCCESS"}, "notify"),
        ({"notify": ("never", "failure")}, "notify"),
        ({"notify": "SOMETIMES"}, "notify"),
        ({"notify": "DELAY,delay"}, "notify"),
        ({"notify": "SUCCESS,"}, "notify"),
        ({"ret": "ALL"}, "ret"),
        ({"ret": ""}, "ret"),
        ({"envid": ""}, "envid"),
        ({"envid": "é"}, "envid"),
        ({"envid": "a\tb"}, "envid"),
        ({"envid": "a\r\nMAIL FROM:<x@y>"}, "envid"),
        ({"envid": "x" * 101}, "envid"),
        ({"envid": "+" * 34}, "envid"),  # 102 characters once xtext-encoded
    ],
)
def test_a_wrong_dsn_value_is_refused_naming_the_parameter(
    dsn: dict[str, Any], argument: str
) -> None:
    with pytest.raises(InvalidArgument) as info:
        envelope_with(**dsn)
    assert info.value.argument == argument
    assert str(info.value).startswith(f"{argument}: ")


@pytest.mark.parametrize(
    ("dsn", "message"),
    [
        ({"notify": 1}, "notify: expected a str or a sequence of str, got int"),
        ({"notify": b"NEVER"}, "notify: expected a str or a sequence of str, got bytes"),
        ({"notify": {"NEVER"}}, "notify: expected a str or a sequence of str, got set"),
        ({"notify": ["NEVER", 1]}, "notify: expected a sequence of str, holding int"),
        ({"ret": 1}, "ret: expected str, got int"),
        ({"envid": b"x"}, "envid: expected str, got bytes"),
        ({"orcpt": 1}, "orcpt: expected bool, got int"),
        ({"orcpt": None}, "orcpt: expected bool, got NoneType"),
    ],
)
def test_a_wrong_dsn_type_is_a_type_error_naming_the_parameter(
    dsn: dict[str, Any], message: str
) -> None:
    with pytest.raises(TypeError, match=message):
        envelope_with(**dsn)


def test_prepare_message_takes_the_same_dsn_parameters() -> None:
    msg = EmailMessage()
    msg["From"] = "a@example.com"
    msg["To"] = "b@example.org"
    msg.set_content("x\n")
    prepared = prepare_message(msg, notify="failure", ret="hdrs", envid="id-1", orcpt=True)
    assert prepared.envelope == Envelope(
        "a@example.com", ("b@example.org",), "HDRS", "id-1", ("FAILURE",), True
    )
    with pytest.raises(InvalidArgument, match="ret: "):
        prepare_message(msg, ret="most")


def test_xtext_encodes_plus_equals_and_everything_outside_the_printable_range() -> None:
    assert xtext("id+1=x y~!") == "id+2B1+3Dx+20y~!"
    assert xtext("é") == "+C3+A9"


FULL = Capabilities(esmtp=True, pipelining=True, dsn=True)
NO_DSN = Capabilities(esmtp=True, pipelining=True)


@pytest.mark.parametrize(
    "dsn", [{"notify": "NEVER"}, {"ret": "FULL"}, {"envid": "x"}, {"orcpt": True}]
)
def test_asking_for_dsn_of_a_server_without_it_is_dsn_not_supported(dsn: dict[str, Any]) -> None:
    message = PreparedMessage(envelope_with(**dsn), b"x\r\n")
    with pytest.raises(DSNNotSupported) as info:
        plan_transaction(message, NO_DSN, 1 << 20)
    assert isinstance(info.value, LocalProtocolError)
    assert not isinstance(info.value, InvalidArgument)  # the message is fine; the server lacks it
    assert plan_transaction(message, FULL, 1 << 20).flight.startswith(b"MAIL FROM:<a@example.com>")


def test_a_message_without_dsn_goes_to_a_server_without_it() -> None:
    message = PreparedMessage(envelope_with(), b"x\r\n")
    assert plan_transaction(message, NO_DSN, 1 << 20).flight == (
        b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.org>\r\nDATA\r\n"
    )


def test_dsn_parameters_on_the_wire() -> None:
    envelope = checked_envelope(
        "a@example.com",
        ["b@example.org", "c+x@example.org"],
        notify="success,failure",
        ret="hdrs",
        envid="id+1",
        orcpt=True,
    )
    flight = plan_transaction(PreparedMessage(envelope, b"x\r\n"), FULL, 1 << 20).flight
    assert flight == (
        b"MAIL FROM:<a@example.com> RET=HDRS ENVID=id+2B1\r\n"
        b"RCPT TO:<b@example.org> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;b@example.org\r\n"
        b"RCPT TO:<c+x@example.org> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;c+2Bx@example.org\r\n"
        b"DATA\r\n"
    )
    only_ret = plan_transaction(PreparedMessage(envelope_with(ret="full"), b"x\r\n"), FULL, 99)
    assert only_ret.flight == (
        b"MAIL FROM:<a@example.com> RET=FULL\r\nRCPT TO:<b@example.org>\r\nDATA\r\n"
    )
