"""anyio's TLS stream, with a receive that does not start with a read bound to fail.

`TLSStream.receive()` first asks the TLS object for data and, when it has none, catches the
`SSLWantReadError` that says so before it reads from the stream below. Between SMTP exchanges the
TLS layer never holds anything (an idle connection that holds bytes is not lent, see
`Connection.unusable()`), so every reply costs that exception: a few microseconds each, the
largest single cost TLS adds to a message after the cryptography. This subclass reads from the
stream below first whenever the TLS layer provably has nothing to give (no undecrypted bytes in its
input, no decrypted bytes waiting, nothing of its own to send first), then lets anyio's receive
decrypt: the same bytes, errors and end-of-stream handling, one exception fewer per reply.

The TLS layer can also have something to give with nothing held: once it has read the peer's
close_notify or a fatal alert, or its input has ended, its read answers at once (end of stream or
the error) without reading from below, where a read from below could wait forever on a peer that
keeps the connection open (or take bytes that follow the TLS session, after `unwrap()`). So the
shortcut is taken only while every earlier `receive()` returned bytes and the TLS layer's input has
not been ended (by an error on either side or by `unwrap()`); otherwise every receive is anyio's.

One difference remains, out of the driver's reach (it never sends while it receives): when a send
running beside a receive breaks the stream (its write to the stream below failed or was
cancelled) while that receive waits here, the receive raises `BrokenResourceError` once bytes
arrive, where anyio's, having checked before it waited, would go on to decrypt them.

It relies on three attributes of anyio's `TLSStream` that are not public API (`_read_bio`,
`_write_bio`, `_broken`); where any is missing, it is anyio's own receive unchanged.
"""

from __future__ import annotations

import dataclasses

from anyio.streams.tls import TLSStream

import anyio

__all__ = ["LeanTLSStream"]

# Whether this anyio's `TLSStream` has the fields the shortcut reads (looked up once, not per
# receive).
_LEAN = {"_read_bio", "_write_bio", "_broken"} <= {f.name for f in dataclasses.fields(TLSStream)}


class LeanTLSStream(TLSStream):
    """`TLSStream` (made by `LeanTLSStream.wrap`) whose `receive()` skips the doomed first read."""

    # Set when a `receive()` raised: from then on the TLS layer may answer without input (see
    # the module's docstring), and every receive is anyio's own.
    _ended = False

    async def receive(self, max_bytes: int = 65536) -> bytes:
        if (
            _LEAN
            and max_bytes >= 1
            and not self._ended
            and not (read_bio := self._read_bio).pending
            and not read_bio.eof
            and not (write_bio := self._write_bio).pending
            and not self._ssl_object.pending()
            and not self._broken
        ):
            # What anyio does after the SSLWantReadError, without raising it first.
            try:
                data = await self.transport_stream.receive()
            except anyio.EndOfStream:
                read_bio.write_eof()
            except OSError as exc:
                self._ended = True
                read_bio.write_eof()
                write_bio.write_eof()
                raise anyio.BrokenResourceError from exc
            except Exception:
                self._ended = True
                raise
            else:
                read_bio.write(data)
        try:
            return await super().receive(max_bytes)
        except Exception:
            self._ended = True
            raise
