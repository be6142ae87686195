"""CPU cost of one mail transaction in the sans-I/O core alone.

One recipient, a 1 KiB message, PIPELINING on a ready session (MAIL+RCPT+DATA in one flight,
then the data), each read handed over with `data_received` as the driver does: the driver's
hot path without any I/O. Prints microseconds per transaction.
Run: python bench/bench_core.py
"""

from __future__ import annotations

import sys
import timeit

from pooledmail_core._config import TLSMode
from pooledmail_core._envelope import Envelope, PreparedMessage
from pooledmail_core._exchanges import DONE, NEED_DATA, Write
from pooledmail_core._session import ClientSession

GREETING = b"220 mx.example ESMTP\r\n"
EHLO = (
    b"250-mx.example\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n250-8BITMIME\r\n"
    b"250 ENHANCEDSTATUSCODES\r\n"
)
FLIGHT_REPLIES = b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 End data with <CR><LF>.<CR><LF>\r\n"
# Every final reply differs (the queue id), as on a real server, so none comes from a cache.
FINAL_REPLIES = [b"250 2.0.0 Ok: queued as 4A%07X\r\n" % index for index in range(1 << 16)]


def ready_session() -> ClientSession:
    session = ClientSession("client.example")
    setup = session.setup(tls=TLSMode.NONE)
    for server in (GREETING, EHLO):
        while setup.next_step() is not NEED_DATA:
            pass
        session.receive_data(server)
    while setup.next_step() is not DONE:
        pass
    assert setup.result.ok
    return session


def message() -> PreparedMessage:
    headers = (
        b"From: sender@example.com\r\nTo: rcpt@example.net\r\nSubject: benchmark\r\n"
        b"Message-ID: <bench@example.com>\r\n\r\n"
    )
    body = b"The quick brown fox jumps over the lazy dog.\r\n" * 24
    data = (headers + body)[:1024]
    return PreparedMessage(Envelope("sender@example.com", ("rcpt@example.net",)), data)


def one_transaction(session: ClientSession, prepared: PreparedMessage, final: bytes) -> None:
    tx = session.transaction(prepared)
    step = tx.next_step()  # MAIL + RCPT + DATA
    assert type(step) is Write
    assert tx.next_step() is NEED_DATA
    step = tx.data_received(FLIGHT_REPLIES)  # as the driver hands over each read
    assert type(step) is Write  # the data and its terminator
    assert tx.next_step() is NEED_DATA
    assert tx.data_received(final) is DONE
    assert tx.result.failed_stage is None


def main() -> None:
    session = ready_session()
    prepared = message()
    number = 20_000
    finals = iter(FINAL_REPLIES * 8)
    one_transaction(session, prepared, next(finals))
    best = min(
        timeit.repeat(
            lambda: one_transaction(session, prepared, next(finals)), number=number, repeat=5
        )
    )
    microseconds = best / number * 1e6
    print(f"core: {microseconds:.2f} µs per transaction (1 recipient, 1 KiB, pipelined)")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
