"""An SMTP server on anyio that refuses AUTH by quoting back what the client sent.

Real servers do this ("535 5.7.8 Authentication failed: <the base64 you sent>", "501 cannot
decode <line>"), and some decode it first. This one offers one SASL mechanism, runs its exchange
(PLAIN and XOAUTH2 with an initial response, LOGIN and CRAM-MD5 with challenges), records every
line the client sent during it, and then refuses with a multi-line reply that quotes each of those
lines and the password or token it decoded from them. Every other command gets 250 (DATA 354).
"""

from __future__ import annotations

import base64
from collections.abc import Awaitable, Callable

from .lineserver import Lines, LineServer

CHALLENGE = base64.b64encode(b"<1896.697170952@echo.test>").decode()


class AuthEchoServer(LineServer):
    def __init__(self, mechanism: str, *, code: int = 535) -> None:
        self.mechanism = mechanism
        self.code = code
        # Every line the client sent during AUTH, the AUTH command line included.
        self.sasl_lines: list[str] = []

    async def session(self, lines: Lines) -> None:
        say = lines.say
        await say("220 echo.test ESMTP")
        while True:
            command = await lines.line()
            verb = command.split(" ", 1)[0].upper()
            if verb == "EHLO":
                await say(f"250-echo.test\r\n250-PIPELINING\r\n250 AUTH {self.mechanism}")
            elif verb == "AUTH":
                await self._refuse_auth(command, lines.line, say)
            elif verb == "DATA":
                await say("354 go")
            elif verb == "QUIT":
                await say("221 bye")
                return
            else:
                await say("250 ok")

    async def _refuse_auth(
        self,
        command: str,
        read: Callable[[], Awaitable[str]],
        write: Callable[[str], Awaitable[None]],
    ) -> None:
        sent = [command]
        parts = command.split(" ")
        if self.mechanism == "PLAIN":
            decoded = base64.b64decode(parts[2]).decode().split("\0")[2]
        elif self.mechanism == "XOAUTH2":
            fields = base64.b64decode(parts[2]).decode().split("\x01")
            decoded = fields[1].removeprefix("auth=Bearer ")
        elif self.mechanism == "LOGIN":
            await write("334 VXNlcm5hbWU6")
            sent.append(await read())
            await write("334 UGFzc3dvcmQ6")
            sent.append(await read())
            decoded = base64.b64decode(sent[-1]).decode()
        else:
            assert self.mechanism == "CRAM-MD5"
            await write(f"334 {CHALLENGE}")
            sent.append(await read())
            # "alice <hex digest>": the digest stands for the password here.
            decoded = base64.b64decode(sent[-1]).decode().split(" ")[-1]
        self.sasl_lines.extend(sent)
        # The first line (the one `str(reply)` shows) quotes the secret and the last line sent.
        first = f"Authentication failed for {decoded}: {sent[-1]}"
        lines = [first, *(f"you sent: {text}" for text in sent)]
        await write(
            "\r\n".join(f"{self.code}-5.7.8 {text}" for text in lines[:-1]) + "\r\n"
            f"{self.code} 5.7.8 {lines[-1]}"
        )
