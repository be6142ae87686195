"""CPU cost of checking an envelope: one address, and a whole `checked_envelope`.

Every address is checked against RFC 5321's Mailbox grammar before a connection is asked for.
The common address (ASCII atoms at a host name) takes one precompiled regular expression; the
rest (non-ASCII, quoted local parts, address literals) walks the grammar. Prints nanoseconds per
call, best of several rounds.
Run: python bench/bench_envelope.py
"""

from __future__ import annotations

import timeit
from collections.abc import Callable

from pooledmail_core import checked_envelope
from pooledmail_core._address import check_recipient


def per_call_ns(fn: Callable[[], object], number: int) -> float:
    return min(timeit.repeat(fn, number=number, repeat=7)) / number * 1e9


def main() -> None:
    for label, address in (
        ("ASCII address", "carol.example@mail.example.net"),
        ("non-ASCII address", "jörg.müller@exämple.org"),
        ("quoted local part", '"carol example"@example.net'),
        ("IPv6 address literal", "carol@[IPv6:2001:db8::1]"),
    ):
        cost = per_call_ns(lambda address=address: check_recipient(address, "r"), 200_000)  # type: ignore[misc]
        print(f"{label:24s} {cost:8.0f} ns per address")
    recipients = ["bob@example.org", "carol@example.net", "audit@example.com"]
    cost = per_call_ns(lambda: checked_envelope("alice@example.com", recipients), 100_000)
    print(f"{'checked_envelope':24s} {cost:8.0f} ns (sender and 3 recipients)")


if __name__ == "__main__":
    main()
