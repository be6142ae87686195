"""Reply parsing (RFC 5321 §4.2): multi-line replies, enhanced codes, limits, hostile bytes."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pooledmail_core._errors import ConfigError, RemoteProtocolError
from pooledmail_core._limits import Limits
from pooledmail_core._reply import Reply
from pooledmail_core._replyparser import NEED_DATA, ReplyParser
from pooledmail_core._session import ClientSession
from pooledmail_core._state import SessionState


def parse_all(data: bytes, limits: Limits | None = None, pieces: int = 1) -> list[Reply]:
    parser = ReplyParser(limits or Limits())
    replies: list[Reply] = []
    step = max(1, len(data) // pieces) if pieces > 1 else len(data) or 1
    for start in range(0, len(data), step):
        parser.feed(data[start : start + step])
        while (reply := parser.next_reply()) is not None:
            replies.append(reply)
    return replies


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"250 ok\r\n", Reply(250, ("ok",))),
        (b"250\r\n", Reply(250, ("",))),
        (b"250 \r\n", Reply(250, ("",))),
        (b"250-first\r\n250-\r\n250 last\r\n", Reply(250, ("first", "", "last"))),
        (b"250 2.1.0 Sender ok\r\n", Reply(250, ("Sender ok",), (2, 1, 0))),
        (b"550-5.1.1 no such\r\n550 5.1.1 user\r\n", Reply(550, ("no such", "user"), (5, 1, 1))),
        (b"550-5.1.1 no such\r\n550 other\r\n", Reply(550, ("no such", "other"), (5, 1, 1))),
        (b"421 4.4.2\r\n", Reply(421, ("",), (4, 4, 2))),
        # the class must match the code's first digit, and the shape must be exact
        (b"250 5.1.1 odd\r\n", Reply(250, ("5.1.1 odd",))),
        (b"250 2.1 short\r\n", Reply(250, ("2.1 short",))),
        (b"250 2.1.1000 long\r\n", Reply(250, ("2.1.1000 long",))),
        (b"250 2.1.0x glued\r\n", Reply(250, ("2.1.0x glued",))),
        (b"250 caf\xc3\xa9 ok\r\n", Reply(250, ("café ok",))),
        (b"250 bad \xff byte\r\n", Reply(250, ("bad \ufffd byte",))),
        (b"250 bare lf\n", Reply(250, ("bare lf",))),
        (b"250-mixed\n250 endings\r\n", Reply(250, ("mixed", "endings"))),
        (b"334 VXNlcm5hbWU6\r\n", Reply(334, ("VXNlcm5hbWU6",))),
    ],
)
def test_reply_is_parsed(raw: bytes, expected: Reply) -> None:
    for pieces in (1, 2, 3, len(raw)):
        assert parse_all(raw, pieces=pieces) == [expected]


def test_every_complete_reply_in_the_buffer_is_returned_in_order() -> None:
    raw = b"250 a\r\n250-b\r\n250 c\r\n354 d\r\n25"
    assert parse_all(raw) == [Reply(250, ("a",)), Reply(250, ("b", "c")), Reply(354, ("d",))]


def test_repeated_replies_are_equal_and_the_cache_stays_small() -> None:
    parser = ReplyParser(Limits())
    for index in range(200):
        parser.feed(b"250 2.1.0 Ok\r\n250 id %d\r\n" % index)
        assert parser.next_reply() == Reply(250, ("Ok",), (2, 1, 0))
        assert parser.next_reply() == Reply(250, (f"id {index}",))
        assert parser.next_reply() is None
    assert parser.buffered == 0


def test_a_remembered_read_gives_the_same_replies_and_sizes() -> None:
    flight = b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 End data with <CR><LF>.<CR><LF>\r\n"
    expected = [
        Reply(250, ("Ok",), (2, 1, 0)),
        Reply(250, ("Ok",), (2, 1, 5)),
        Reply(354, ("End data with <CR><LF>.<CR><LF>",)),
    ]
    for _ in range(3):  # parsed, then remembered (by this parser or any other)
        parser = ReplyParser(Limits())
        parser.feed(flight)
        assert parser.buffered == len(flight)
        first = parser.next_reply()
        assert parser.buffered == len(flight)  # the read is consumed once every reply was taken
        assert [first, parser.next_reply(), parser.next_reply()] == expected
        assert parser.next_reply() is None
        assert parser.buffered == 0


def test_a_line_remembered_under_a_larger_limit_is_still_too_long_for_a_smaller_one() -> None:
    line = b"250 2.0.0 a reply of some length\r\n"
    assert parse_all(line * 2) == [Reply(250, ("a reply of some length",), (2, 0, 0))] * 2
    small = Limits(max_line_length=16)
    for raw in (line, line * 2, b"250 ok\r\n" + line):
        with pytest.raises(RemoteProtocolError):
            parse_all(raw, small)


def test_the_rest_of_a_multi_line_reply_counts_as_buffered_until_it_ends() -> None:
    parser = ReplyParser(Limits())
    parser.feed(b"250 ok\r\n250-first\r\n")
    assert parser.next_reply() == Reply(250, ("ok",))
    assert parser.next_reply() is None
    assert parser.buffered == len(b"250-first\r\n")
    parser.feed(b"250 last\r\n")
    assert parser.next_reply() == Reply(250, ("first", "last"))
    assert parser.buffered == 0


@pytest.mark.parametrize(
    "raw",
    [
        b"25 short\r\n",
        b"abc text\r\n",
        b"150 one hundred\r\n",
        b"600 too big\r\n",
        b"250_bad separator\r\n",
        b"250-first\r\n251 other code\r\n",
        b"\r\n",
        b"2x0 x\r\n",
    ],
)
def test_malformed_reply_is_remote_error(raw: bytes) -> None:
    with pytest.raises(RemoteProtocolError):
        parse_all(raw)


def test_reply_before_a_malformed_line_is_still_returned_first() -> None:
    parser = ReplyParser(Limits())
    parser.feed(b"250 ok\r\nnonsense\r\n")
    assert parser.next_reply() == Reply(250, ("ok",))
    with pytest.raises(RemoteProtocolError):
        parser.next_reply()
    with pytest.raises(RemoteProtocolError):
        parser.next_reply()


def test_line_over_the_limit_is_remote_error_complete_or_not() -> None:
    limits = Limits(max_line_length=16)
    assert parse_all(b"250 0123456789\r\n", limits) == [Reply(250, ("0123456789",))]
    with pytest.raises(RemoteProtocolError):
        parse_all(b"250 01234567890\r\n", limits)
    with pytest.raises(RemoteProtocolError):
        parse_all(b"250 0123456789012", limits)
    with pytest.raises(RemoteProtocolError):
        parse_all(b"250 ok\r\n250 0123456789012", limits)
    with pytest.raises(RemoteProtocolError):
        parse_all(b"250 0123456789012\n" + b"250 ok\r\n" * 3, limits)
    # the same bound with bare LF endings
    assert parse_all(b"250 01234567890\n", limits) == [Reply(250, ("01234567890",))]


def test_reply_over_the_lines_limit_is_remote_error() -> None:
    limits = Limits(max_reply_lines=3)
    assert parse_all(b"250-a\r\n250-b\r\n250 c\r\n", limits) == [Reply(250, ("a", "b", "c"))]
    with pytest.raises(RemoteProtocolError):
        parse_all(b"250-a\r\n250-b\r\n250-c\r\n250 d\r\n", limits)


def test_buffer_over_the_limit_is_remote_error_and_dropped() -> None:
    parser = ReplyParser(Limits(max_line_length=16, max_buffered_bytes=32))
    parser.feed(b"250 ok\r\n" * 4)
    with pytest.raises(RemoteProtocolError):
        parser.feed(b"2")
    assert parser.buffered == 0


def test_eof_inside_a_reply_is_remote_error() -> None:
    for partial in (b"250-first\r\n", b"250 no crlf"):
        parser = ReplyParser(Limits())
        parser.feed(partial)
        parser.feed(b"")
        with pytest.raises(RemoteProtocolError):
            parser.next_reply()
    parser = ReplyParser(Limits())
    parser.feed(b"")
    assert parser.next_reply() is None
    with pytest.raises(RemoteProtocolError):
        parser.feed(b"late")


@pytest.mark.parametrize(
    "options",
    [
        {"max_line_length": 4},
        {"max_reply_lines": 0},
        {"max_buffered_bytes": 100},
        {"bdat_chunk_size": 0},
        {"max_line_length": "x"},
    ],
)
def test_limits_are_validated(options: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        Limits(**options)  # type: ignore[arg-type]


def test_need_data_repr() -> None:
    assert repr(NEED_DATA) == "NEED_DATA"


SMALL = Limits(max_line_length=64, max_reply_lines=8, max_buffered_bytes=256)

reply_lines = st.builds(
    lambda code, sep, text: code + sep + text + b"\r\n",
    st.sampled_from([b"250", b"354", b"421", b"550", b"220", b"199", b"25x"]),
    st.sampled_from([b" ", b"-", b"", b"_"]),
    st.binary(max_size=80),
)
server_bytes = st.one_of(
    st.binary(max_size=600),
    st.lists(reply_lines, max_size=20).map(b"".join),
)


@settings(max_examples=400, deadline=None)
@given(data=server_bytes, cut=st.integers(1, 50))
def test_arbitrary_server_bytes_only_raise_remote_errors_within_limits(
    data: bytes, cut: int
) -> None:
    session = ClientSession("client.example", SMALL)
    parser = session._parser
    try:
        for start in range(0, len(data), cut):
            session.receive_data(data[start : start + cut])
            assert parser.buffered <= SMALL.max_buffered_bytes
            while True:
                event = session.next_event()
                assert len(parser._lines) <= SMALL.max_reply_lines
                assert parser.buffered <= SMALL.max_buffered_bytes
                if event is NEED_DATA:
                    break
        session.receive_data(b"")
        session.next_event()
    except RemoteProtocolError:
        assert session.state is SessionState.ERROR
        with pytest.raises(RemoteProtocolError):
            session.next_event()


@settings(max_examples=300, deadline=None)
@given(lines=st.lists(reply_lines, max_size=12), cuts=st.lists(st.integers(1, 30), min_size=1))
def test_replies_do_not_depend_on_how_the_bytes_are_split(
    lines: list[bytes], cuts: list[int]
) -> None:
    data = b"".join(lines)

    def events(pieces: list[bytes]) -> list[object]:
        parser = ReplyParser(Limits())
        out: list[object] = []
        try:
            for piece in pieces:
                parser.feed(piece)
                while (reply := parser.next_reply()) is not None:
                    out.append(reply)
        except RemoteProtocolError:
            out.append("error")
        return out

    pieces = []
    start = 0
    index = 0
    while start < len(data):
        pieces.append(data[start : start + cuts[index % len(cuts)]])
        start += cuts[index % len(cuts)]
        index += 1
    assert events(pieces) == events([data])


def test_long_dotted_word_is_not_an_enhanced_code() -> None:
    assert parse_all(b"250 2.0.0.0.0.0 text\r\n") == [Reply(250, ("2.0.0.0.0.0 text",))]


def test_one_read_holding_several_replies_is_parsed_in_one_pass() -> None:
    parser = ReplyParser(Limits())
    parser.feed(b"250 2.1.0 a\r\n250-b\r\n250 c\r\n354 go\r\n25")
    assert parser.next_reply() == Reply(250, ("a",), (2, 1, 0))
    # The rest of the read is already parsed and queued; the partial line waits in the buffer.
    assert list(parser.replies) == [Reply(250, ("b", "c")), Reply(354, ("go",))]
    assert parser.next_reply() == Reply(250, ("b", "c"))
    assert parser.next_reply() == Reply(354, ("go",))
    assert parser.next_reply() is None
    assert parser.buffered == 2
