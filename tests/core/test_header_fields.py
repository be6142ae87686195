"""`message_id_of`: the Message-ID of raw message bytes, for the driver's logs about send_raw."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pooledmail_core import message_id_of


@pytest.mark.parametrize(
    ("data", "message_id"),
    [
        (b"Message-ID: <a@example.com>\r\n\r\nbody\r\n", "<a@example.com>"),
        (b"From: x@y\r\nmessage-id: <a@example.com>\r\nTo: z@y\r\n\r\n", "<a@example.com>"),
        (b"MESSAGE-ID:<a@example.com>\r\n\r\n", "<a@example.com>"),
        (b"Message-Id :  <a@example.com>  \r\n\r\n", "<a@example.com>"),
        (b"From: x@y\nMessage-ID: <lf@example.com>\nTo: z@y\n\nbody\n", "<lf@example.com>"),
        (b"Message-ID:\r\n <folded@example.com>\r\n\r\n", "<folded@example.com>"),
        (b"Message-ID: <a@example.com>\r\n\t(comment)\r\n\r\n", "<a@example.com> (comment)"),
        (b"Message-ID:\n\t<lf-folded@example.com>\n\n", "<lf-folded@example.com>"),
        (b"Message-ID: <first@x>\r\nMessage-ID: <second@x>\r\n\r\n", "<first@x>"),
        (b"Subject: no body\r\nMessage-ID: <end@x>\r\n", "<end@x>"),
        (b"Subject: no final line break\r\nMessage-ID: <end@x>", "<end@x>"),
        (b"Message-ID: <\xff@example.com>\r\n\r\n", "<\ufffd@example.com>"),
        (b"Message-ID: <\xc3\xa4@example.com>\r\n\r\n", "<\u00e4@example.com>"),
        (b"Message-ID: <a\x00b\rc@x>\r\n\r\n", "<a\ufffdb\ufffdc@x>"),
        (b"Message-ID: <a\xc2\x85b@x>\r\n\r\n", "<a\ufffdb@x>"),
    ],
)
def test_the_message_id_is_found_unfolded_and_stripped(data: bytes, message_id: str) -> None:
    assert message_id_of(data) == message_id


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"From: x@y\r\n\r\nbody\r\n",
        b"X-Message-ID: <not@this>\r\n\r\n",
        b"Subject: about\r\n Message-ID: <continuation@x>\r\n\r\n",
        b"Subject: x\r\n\r\nMessage-ID: <in-the-body@x>\r\n",
        b"Subject: x\n\nMessage-ID: <in-the-body@x>\n",
        b"\r\nMessage-ID: <body-only@x>\r\n",
        b"\nMessage-ID: <body-only@x>\n",
        b"Message-ID:\r\n\r\n",
        b"Message-ID:   \r\n \r\n\r\n",
        b"Message-IDs: <a@x>\r\n\r\n",
    ],
)
def test_no_message_id_in_the_header_section_is_none(data: bytes) -> None:
    assert message_id_of(data) is None


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200), st.binary(max_size=200))
def test_message_id_of_never_fails_and_never_returns_a_line_break(head: bytes, tail: bytes) -> None:
    found = message_id_of(head + b"Message-ID: <x@y>\r\n" + tail)
    assert found is None or (found == found.strip() and found.isprintable() and found)
