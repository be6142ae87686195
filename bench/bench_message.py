"""CPU cost of turning an EmailMessage into envelope + bytes, versus the standard library.

Run: python bench/bench_message.py
Prints microseconds per message for `prepare_message` (envelope derivation, Bcc stripping and
serialization together) and for `msg.as_bytes(policy=email.policy.SMTP)` alone, on a small text
message, on the same message without Date and Message-ID (which `prepare_message` adds, as the
driver asks it to), and on one with a 30 KiB attachment. Best of several rounds, to damp noise.
"""

from __future__ import annotations

import email.policy
import os
import time
from collections.abc import Callable
from email.message import EmailMessage

from pooledmail_core._message import prepare_message


def small_message() -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = "Alice Example <alice@example.com>"
    msg["To"] = "Bob Example <bob@example.org>, carol@example.net"
    msg["Bcc"] = "audit@example.com"
    msg["Subject"] = "Quarterly report for the team"
    msg["Date"] = "Mon, 23 Nov 2026 13:46:38 +0000"
    msg["Message-ID"] = "<20261123134638.1234@example.com>"
    msg.set_content("Hello Bob,\n\nThe report is attached to the next message.\n\n-- \nAlice\n")
    return msg


def bare_message() -> EmailMessage:
    msg = small_message()
    del msg["Date"]
    del msg["Message-ID"]
    return msg


def new_message_id(domain: str | None) -> str:
    return f"<20261123134638.1234@{domain}>"


def attachment_message() -> EmailMessage:
    msg = small_message()
    msg.add_attachment(
        os.urandom(30 * 1024), maintype="application", subtype="pdf", filename="report.pdf"
    )
    return msg


def per_call_us(fn: Callable[[], object], *, number: int, rounds: int = 5) -> float:
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(number):
            fn()
        best = min(best, time.perf_counter() - start)
    return best / number * 1e6


def main() -> None:
    date = "Mon, 23 Nov 2026 13:46:38 +0000"
    for name, make, number in (
        ("small text message", small_message, 2000),
        ("same, Date and Message-ID added", bare_message, 2000),
        ("message with 30 KiB attachment", attachment_message, 300),
    ):
        msg = make()
        msg.as_bytes()  # let the standard library fix the multipart boundary once
        ours = per_call_us(
            lambda msg=msg: prepare_message(msg, date=date, new_message_id=new_message_id),  # type: ignore[misc]
            number=number,
        )
        stdlib = per_call_us(
            lambda msg=msg: msg.as_bytes(policy=email.policy.SMTP),  # type: ignore[misc]
            number=number,
        )
        print(
            f"{name:32s} prepare_message {ours:8.1f} us/msg   "
            f"as_bytes(policy=SMTP) {stdlib:8.1f} us/msg   ratio {stdlib / ours:4.2f}x"
        )


if __name__ == "__main__":
    main()
