"""Envelope addresses: what a mailbox is (RFC 5321 §4.1.2, RFC 6531 §3.3), checked up front."""

from __future__ import annotations

import pickle
import re
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from pooledmail_core import (
    Capabilities,
    Envelope,
    EnvelopeError,
    InvalidArgument,
    LocalProtocolError,
    PreparedMessage,
    checked_envelope,
)
from pooledmail_core._address import _PLAIN_MAILBOX, domain_of, mailbox_problem
from pooledmail_core._commands import Mail, Rcpt
from pooledmail_core._transaction import plan_transaction

LONG_LABEL = "d" * 63
# 64 + 1 + 189 = 254 octets: the longest address a 256-octet path can hold.
LONGEST_DOMAIN = ".".join([LONG_LABEL, LONG_LABEL, "e" * 61])
assert len(LONGEST_DOMAIN) == 189

VALID = [
    "a@example.com",
    "first.last@example.com",
    "a+tag@sub.example.com",
    "!#$%&'*+/=?^_`{|}~-@example.com",
    "A@EXAMPLE.COM",
    "a@localhost",
    "a@b",
    "a@x-y--z.example",
    "a@1example.com",
    "a@123",
    '"john doe"@example.com',
    '"a\\"b"@example.com',
    '"a\\\\b"@example.com',
    '"a\\ b"@example.com',
    '""@example.com',
    '"a@b"@example.com',
    '".a..b."@example.com',
    '"(),:;[]\\\\"@example.com',
    '"ü ö"@example.com',
    "jörg@exämple.org",
    "用户@例子.广告",
    "δοκιμή@παράδειγμα.δοκιμή",
    "अजय@डाटा.भारत",
    "a@[192.0.2.1]",
    "a@[001.002.003.004]",
    "a@[255.255.255.255]",
    "a@[0.0.0.0]",
    "a@[IPv6:2001:db8::1]",
    "a@[ipv6:::1]",
    "a@[IPv6:::]",
    "a@[IPv6:1::]",
    "a@[IPv6:1:2:3:4:5:6:7:8]",
    "a@[IPv6:1:2:3::6:7:8]",
    "a@[IPv6:1:2:3:4:5:6::]",
    "a@[IPv6:::ffff:192.0.2.1]",
    "a@[IPv6:1:2:3:4:5:6:192.0.2.1]",
    "a@[IPv6:1:2::3:4:192.0.2.1]",
    "a@[IPv6:::192.0.2.1]",
    "a@[IPv6:ABCD:ef01::]",
    "x" * 64 + "@example.com",
    "é" * 32 + "@example.com",
    "x" * 64 + "@" + LONGEST_DOMAIN,
]

INVALID = [
    ("victim\x00@example.com", "control character (U+0000)"),
    ("victim\r@example.com", "control character (U+000D)"),
    ("victim\n@example.com", "control character (U+000A)"),
    ("victim@example.com\r\nRCPT TO:<evil@example.org>", "control character"),
    ("victim\t@example.com", "control character (U+0009)"),
    ("victim\x7f@example.com", "control character (U+007F)"),
    ("victim\x80@example.com", "control character (U+0080)"),
    ("victim\x85@example.com", "control character (U+0085)"),
    ("victim\x9f@example.com", "control character (U+009F)"),
    ('"vic\rtim"@example.com', "control character"),
    ("victim@exam\x00ple.com", "control character"),
    ("victim\u2028@example.com", "line or paragraph separator (U+2028)"),
    ("victim@example\u2029.com", "line or paragraph separator (U+2029)"),
    ('"vic\u2028tim"@example.com', "line or paragraph separator"),
    ("vic\u200btim@example.com", "invisible, unassigned or surrogate character (U+200B)"),
    ("vic\u202etim@example.com", "invisible"),
    ("vic\u00a0tim@example.com", "invisible"),
    ("vic\ue000tim@example.com", "invisible"),
    ("vic\ud800tim@example.com", "invisible"),
    ("vic\u0378tim@example.com", "invisible"),
    ("<victim@example.com>", "'<' or '>'"),
    ("victim>@example.com", "'<' or '>'"),
    ('"vic>tim"@example.com', "'<' or '>'"),
    ("victim@example.com> SIZE=1", "'<' or '>'"),
    ("victim", "no '@'"),
    ("victim@", "empty domain"),
    ("@example.com", "empty local part"),
    (".victim@example.com", "starts or ends with a dot"),
    ("victim.@example.com", "starts or ends with a dot"),
    ("vic..tim@example.com", "two dots in a row"),
    ("vic tim@example.com", "space outside a quoted local part"),
    ("victim @example.com", "space outside a quoted local part"),
    ("vic(tim@example.com", "'(' outside"),
    ("vic)tim@example.com", "')' outside"),
    ("vic,tim@example.com", "',' outside"),
    ("vic:tim@example.com", "':' outside"),
    ("vic;tim@example.com", "';' outside"),
    ("vic\\tim@example.com", "'\\\\' outside"),
    ('vic"tim@example.com', "'\"' outside"),
    ("vic[tim@example.com", "'[' outside"),
    ("vic]tim@example.com", "']' outside"),
    ("victim@exa@mple.com", "'@' in its domain"),
    ("victim@exa mple.com", "' ' in its domain"),
    ("victim@exa_mple.com", "'_' in its domain"),
    ("victim@exa/mple.com", "'/' in its domain"),
    ("victim@example.com]", "']' in its domain"),
    ('"victim@example.com', "without its closing quote"),
    ('"victim\\"@example.com', "without its closing quote"),
    ('"vic\\é"@example.com', "quotes no ASCII character"),
    ('"victim\\', "quotes no ASCII character"),
    ('"victim"x@example.com', "no '@' right after its quoted local part"),
    ('"victim"', "no '@' right after its quoted local part"),
    ("victim@.example.com", "empty label"),
    ("victim@example.com.", "empty label"),
    ("victim@example..com", "empty label"),
    ("victim@-example.com", "starts or ends with a hyphen"),
    ("victim@example-.com", "starts or ends with a hyphen"),
    ("victim@[192.0.2]", "malformed address literal"),
    ("victim@[192.0.2.1.5]", "malformed address literal"),
    ("victim@[256.0.2.1]", "malformed address literal"),
    ("victim@[1922.0.2.1]", "malformed address literal"),
    ("victim@[192.0.2.a]", "malformed address literal"),
    ("victim@[192.0.2.\u0661]", "malformed address literal"),  # an Arabic-Indic digit
    ("victim@[192.0.2.1", "malformed address literal"),
    ("victim@[]", "malformed address literal"),
    ("victim@[", "malformed address literal"),
    ("victim@[IPv6:1:2:3:4:5:6:7]", "malformed address literal"),
    ("victim@[IPv6:1:2:3:4:5:6:7:8:9]", "malformed address literal"),
    ("victim@[IPv6:1::2::3]", "malformed address literal"),
    ("victim@[IPv6:1:::2]", "malformed address literal"),
    ("victim@[IPv6::1:2]", "malformed address literal"),
    ("victim@[IPv6:12345::]", "malformed address literal"),
    ("victim@[IPv6:1:2:3:4:5:6:7::]", "malformed address literal"),
    ("victim@[IPv6:g::1]", "malformed address literal"),
    ("victim@[IPv6:1:2:3:4:5::192.0.2.1]", "malformed address literal"),
    ("victim@[IPv6:1:2:3:4:5:192.0.2.1]", "malformed address literal"),
    ("victim@[IPv6:192.0.2.1::]", "malformed address literal"),
    ("victim@[IPv6:::192.0.2]", "malformed address literal"),
    ("victim@[IPv6:fe80::1%eth0]", "malformed address literal"),
    ("victim@[IPv6:]", "malformed address literal"),
    ("victim@[x-tag:abc]", "malformed address literal"),
    ("x" * 65 + "@example.com", "local part longer than 64 octets"),
    ("é" * 33 + "@example.com", "local part longer than 64 octets"),
    ('"' + "x" * 63 + '"@example.com', "local part longer than 64 octets"),
    ("victim@" + ".".join([LONG_LABEL] * 4) + ".eu", "domain longer than 255 octets"),
    ("x" * 64 + "@" + LONGEST_DOMAIN + "e", "longer than 256 octets as a path"),
    ("é" * 32 + "@" + LONGEST_DOMAIN[:-1] + "ab", "longer than 256 octets as a path"),
    ("x" * 64 + "@" + LONGEST_DOMAIN[:-1] + "é", "longer than 256 octets as a path"),
    ("x" * 1000 + "@example.com", "local part longer than 64 octets"),
]


@pytest.mark.parametrize("address", VALID)
def test_a_mailbox_is_accepted_as_sender_and_recipient(address: str) -> None:
    assert mailbox_problem(address) is None
    envelope = checked_envelope(address, [address])
    assert envelope.sender == address
    assert envelope.recipients == (address,)


@pytest.mark.parametrize(("address", "rule"), INVALID)
def test_what_is_not_a_mailbox_is_refused_naming_the_rule_not_the_address(
    address: str, rule: str
) -> None:
    problem = mailbox_problem(address)
    assert problem is not None
    assert rule in problem
    with pytest.raises(InvalidArgument) as as_sender:
        checked_envelope(address, ["ok@example.com"])
    with pytest.raises(InvalidArgument) as as_recipient:
        checked_envelope("ok@example.com", ["ok@example.com", "fine@example.org", address])
    assert str(as_sender.value) == f"sender: the address {problem}"
    assert str(as_recipient.value) == f"recipients[2]: the address {problem}"
    assert (as_recipient.value.argument, as_recipient.value.rule) == (
        "recipients[2]",
        f"the address {problem}",
    )
    if address:
        assert address not in str(as_sender.value)
        assert "victim" not in str(as_recipient.value)


def test_the_null_sender_is_accepted_but_not_as_a_recipient() -> None:
    assert checked_envelope("", ["a@example.com"]).sender == ""
    assert mailbox_problem("") == "is empty"
    with pytest.raises(InvalidArgument, match=r"recipients\[0\]: the address is empty"):
        checked_envelope("", [""])


@pytest.mark.parametrize("postmaster", ["postmaster", "Postmaster", "POSTMASTER", "PostMaster"])
def test_postmaster_alone_is_a_recipient_but_not_a_sender(postmaster: str) -> None:
    assert checked_envelope("a@example.com", postmaster).recipients == (postmaster,)
    assert mailbox_problem(postmaster) == "has no '@'"
    with pytest.raises(InvalidArgument, match="sender: the address has no '@'"):
        checked_envelope(postmaster, ["a@example.com"])


@pytest.mark.parametrize(
    "near_miss", ["postmasters", "postmaste", "post master", "p\u043estmaster"]
)
def test_only_the_word_postmaster_stands_alone(near_miss: str) -> None:
    with pytest.raises(InvalidArgument, match="recipients"):
        checked_envelope("a@example.com", near_miss)


def test_a_single_string_is_one_recipient_named_recipients() -> None:
    assert checked_envelope("a@example.com", "b@example.org").recipients == ("b@example.org",)
    with pytest.raises(InvalidArgument, match=r"^recipients: the address has no '@'$"):
        checked_envelope("a@example.com", "b.example.org")


def test_duplicates_are_sent_once_in_first_seen_order() -> None:
    envelope = checked_envelope("a@example.com", ["c@x.org", "b@x.org", "c@x.org", "b@x.org"])
    assert envelope.recipients == ("c@x.org", "b@x.org")


def test_a_duplicate_is_checked_before_it_is_dropped() -> None:
    with pytest.raises(InvalidArgument, match=r"recipients\[1\]"):
        checked_envelope("a@example.com", ["b@x.org", "b x@x.org", "b x@x.org"])


def test_no_recipient_is_an_envelope_error_and_an_invalid_argument() -> None:
    with pytest.raises(EnvelopeError, match="recipients: at least one recipient is needed"):
        checked_envelope("a@example.com", [])
    with pytest.raises(EnvelopeError):
        checked_envelope("a@example.com", ())
    assert issubclass(EnvelopeError, InvalidArgument)


def test_invalid_argument_is_a_value_error_and_a_local_protocol_error() -> None:
    assert issubclass(InvalidArgument, ValueError)
    assert issubclass(InvalidArgument, LocalProtocolError)
    with pytest.raises(ValueError, match="sender"):
        checked_envelope("a b@example.com", ["b@example.org"])


def test_invalid_argument_pickles_with_its_argument_and_rule() -> None:
    with pytest.raises(InvalidArgument) as info:
        checked_envelope("a@example.com", ["b@example.org", "b..c@example.org"])
    copy = pickle.loads(pickle.dumps(info.value))
    assert (copy.argument, copy.rule, str(copy)) == (
        info.value.argument,
        info.value.rule,
        str(info.value),
    )
    plain = pickle.loads(pickle.dumps(InvalidArgument("a rule")))
    assert (plain.argument, str(plain)) == (None, "a rule")


class Addresses(Sequence[str]):
    """A sequence that is neither a list nor a tuple."""

    def __init__(self, *items: str) -> None:
        self._items = items

    def __getitem__(self, index: Any) -> Any:
        return self._items[index]

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)


def test_any_sequence_of_str_is_accepted() -> None:
    envelope = checked_envelope("a@example.com", Addresses("b@x.org", "c@x.org"))
    assert envelope.recipients == ("b@x.org", "c@x.org")


@pytest.mark.parametrize(
    ("sender", "recipients", "message"),
    [
        (None, ["b@x.org"], "sender: expected str, got NoneType"),
        (b"a@x.org", ["b@x.org"], "sender: expected str, got bytes"),
        (42, ["b@x.org"], "sender: expected str, got int"),
        ("a@x.org", None, "recipients: expected a str or a sequence of str, got NoneType"),
        ("a@x.org", 42, "recipients: expected a str or a sequence of str, got int"),
        ("a@x.org", b"b@x.org", "recipients: expected a str or a sequence of str, got bytes"),
        ("a@x.org", bytearray(b"b@x"), "recipients: expected a str or a sequence of str, got "),
        ("a@x.org", memoryview(b"b@x"), "recipients: expected a str or a sequence of str, got "),
        ("a@x.org", {"b@x.org"}, "recipients: expected a str or a sequence of str, got set"),
        ("a@x.org", {"b@x.org": 1}, "recipients: expected a str or a sequence of str, got dict"),
        ("a@x.org", iter(["b@x.org"]), "recipients: expected a str or a sequence of str, got "),
        ("a@x.org", [b"b@x.org"], r"recipients\[0\]: expected str, got bytes"),
        ("a@x.org", ["b@x.org", None], r"recipients\[1\]: expected str, got NoneType"),
        ("a@x.org", ("b@x.org", 7), r"recipients\[1\]: expected str, got int"),
        ("a@x.org", Addresses("b@x.org", 7), r"recipients\[1\]: expected str, got int"),  # type: ignore[arg-type]
    ],
)
def test_a_wrong_type_is_a_type_error_naming_the_argument(
    sender: Any, recipients: Any, message: str
) -> None:
    with pytest.raises(TypeError, match=message):
        checked_envelope(sender, recipients)


def test_the_envelope_constructor_applies_the_same_rules() -> None:
    assert Envelope("a@example.com", "b@example.org").recipients == ("b@example.org",)  # type: ignore[arg-type]
    assert Envelope("a@example.com", ("b@x.org", "b@x.org")).recipients == ("b@x.org",)
    with pytest.raises(InvalidArgument, match=r"recipients\[0\]: the address contains '<'"):
        Envelope("a@example.com", ("<b@x.org>",))
    with pytest.raises(TypeError, match="sender: expected str"):
        Envelope(None, ("b@x.org",))  # type: ignore[arg-type]
    with pytest.raises(EnvelopeError):
        Envelope("a@example.com", ())


def test_the_low_level_commands_apply_the_same_rules() -> None:
    assert Mail("").to_bytes() == b"MAIL FROM:<>\r\n"
    assert Rcpt("Postmaster").to_bytes() == b"RCPT TO:<Postmaster>\r\n"
    with pytest.raises(InvalidArgument, match="sender: the address contains a space"):
        Mail("a b@example.com")
    with pytest.raises(InvalidArgument, match="recipient: the address has no '@'"):
        Rcpt("bob")
    with pytest.raises(TypeError, match="recipient: expected str"):
        Rcpt(None)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("address", "domain"),
    [
        ("a@example.com", "example.com"),
        ('"a@b"@example.com', "example.com"),
        ("a@[192.0.2.1]", "[192.0.2.1]"),
        ("jörg@exämple.org", "exämple.org"),
        ("", None),
        ("postmaster", None),
    ],
)
def test_domain_of_a_checked_address(address: str, domain: str | None) -> None:
    assert domain_of(address) == domain


# --- properties --------------------------------------------------------------------------------

ATEXT = "abcxyzABZ0189!#$%&'*+/=?^_`{|}~-"
UNICODE_TEXT = "éüß用户δ"
atom = st.text(alphabet=ATEXT + UNICODE_TEXT, min_size=1, max_size=12)
dot_string = st.lists(atom, min_size=1, max_size=4).map(".".join)
qcontent = st.one_of(
    st.sampled_from(list(" !#$%&()*,.:;@[]^`{|}~abcXYZ019" + UNICODE_TEXT)),
    st.sampled_from(list(' !"#\\()*.@[]az~')).map(lambda char: "\\" + char),
)
quoted_string = st.lists(qcontent, max_size=12).map(lambda parts: '"' + "".join(parts) + '"')
label = st.from_regex(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,10}[A-Za-z0-9])?", fullmatch=True) | st.text(
    alphabet="äöü例子δ", min_size=1, max_size=6
)
host = st.lists(label, min_size=1, max_size=4).map(".".join)
snum = st.integers(0, 255).map(str)
ipv4 = st.lists(snum, min_size=4, max_size=4).map(".".join)
hex_group = st.from_regex(r"[0-9a-fA-F]{1,4}", fullmatch=True)


@st.composite
def ipv6(draw: st.DrawFn) -> str:
    with_ipv4 = draw(st.booleans())
    total = 6 if with_ipv4 else 8
    tail = [draw(ipv4)] if with_ipv4 else []
    if draw(st.booleans()):
        groups = draw(st.lists(hex_group, min_size=total, max_size=total))
        return ":".join(groups + tail)
    kept = draw(st.integers(0, total - 2))
    groups = draw(st.lists(hex_group, min_size=kept, max_size=kept))
    split = draw(st.integers(0, kept))
    after = groups[split:] + tail
    return ":".join(groups[:split]) + "::" + ":".join(after)


literal = st.one_of(ipv4, ipv6().map(lambda text: "IPv6:" + text)).map(lambda t: f"[{t}]")
mailbox = st.builds(
    lambda local, domain: f"{local}@{domain}",
    st.one_of(dot_string, quoted_string),
    st.one_of(host, literal),
).filter(
    lambda address: len(address.encode()) <= 254 and len(address.rpartition("@")[0].encode()) <= 64
)
TOKENS = st.sampled_from(
    [
        *'ab.@"\\[]:<> ()\r\n\x00\t\x85\u2028\u200bé例-0123456789',
        "postmaster",
        "IPv6:",
        "::",
        "example.com",
    ]
)
ANY_TEXT = st.lists(TOKENS, max_size=30).map("".join)


@st.composite
def near_mailbox(draw: st.DrawFn) -> str:
    """A mailbox with a few characters inserted, deleted or replaced: often still one."""
    text = draw(mailbox)
    for _ in range(draw(st.integers(1, 3))):
        position = draw(st.integers(0, len(text)))
        edit = draw(st.sampled_from(["insert", "delete", "replace"]))
        token = draw(TOKENS) if edit != "delete" else ""
        skip = 0 if edit == "insert" else 1
        text = text[:position] + token + text[position + skip :]
    return text


SOMETHING = st.one_of(ANY_TEXT, near_mailbox(), st.text(max_size=60))
FORBIDDEN = st.one_of(
    st.characters(max_codepoint=0x1F),
    st.sampled_from(["\x7f", "\x85", "\x9f", "\u2028", "\u2029", "<", ">", "\u200b", "\ud800"]),
    st.characters(min_codepoint=0x80, max_codepoint=0x9F),
)

CAPABILITIES = Capabilities(esmtp=True, smtputf8=True, pipelining=True, size=0)


def mail_and_rcpt_lines(sender: str, recipient: str) -> list[bytes]:
    envelope = Envelope(sender, (recipient,))
    plan = plan_transaction(PreparedMessage(envelope, b"x\r\n"), CAPABILITIES, 1 << 20)
    return plan.flight.split(b"\r\n")[:-1]


def assert_safe_on_the_wire(sender: str, recipient: str) -> None:
    lines = mail_and_rcpt_lines(sender, recipient)
    assert len(lines) == 3  # MAIL, RCPT, DATA: nothing split a line or added one
    for line, path in zip(lines, (sender, recipient), strict=False):
        assert not re.search(rb"[\r\n\x00]", line)
        encoded = path.encode()
        assert b"<" + encoded + b">" in line
        assert len(encoded) + 2 <= 256
        assert line.count(b"<") == 1
        assert line.count(b">") == 1


@settings(max_examples=300, deadline=None)
@given(mailbox)
def test_every_generated_mailbox_is_accepted_and_safe_on_the_wire(address: str) -> None:
    assert mailbox_problem(address) is None
    assert_safe_on_the_wire(address, address)


@settings(max_examples=500, deadline=None)
@given(SOMETHING)
def test_anything_accepted_is_safe_on_the_wire(text: str) -> None:
    try:
        envelope = checked_envelope("a@example.com", [text])
    except InvalidArgument:
        return
    assert_safe_on_the_wire("a@example.com", envelope.recipients[0])
    if text and text.lower() != "postmaster":
        assert_safe_on_the_wire(text, "b@example.org")


@settings(max_examples=300, deadline=None)
@given(mailbox, FORBIDDEN, st.integers(min_value=0))
def test_a_forbidden_character_anywhere_is_refused(address: str, bad: str, where: int) -> None:
    position = where % (len(address) + 1)
    spoiled = address[:position] + bad + address[position:]
    with pytest.raises(InvalidArgument):
        checked_envelope(spoiled, ["b@example.org"])
    with pytest.raises(InvalidArgument):
        checked_envelope("a@example.com", [spoiled])


@settings(max_examples=300, deadline=None)
@given(st.one_of(SOMETHING, mailbox))
def test_the_fast_path_accepts_nothing_the_grammar_refuses(text: str) -> None:
    if _PLAIN_MAILBOX.fullmatch(text) and len(text) <= 254:
        assert mailbox_problem(text) is None


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=ATEXT + ".", min_size=1, max_size=70), host)
def test_the_fast_path_and_the_grammar_agree_on_ascii_dot_strings(local: str, domain: str) -> None:
    address = f"{local}@{domain}"
    assume(domain.isascii())
    fast = bool(_PLAIN_MAILBOX.fullmatch(address)) and len(address) <= 254
    assert fast == (mailbox_problem(address) is None)
