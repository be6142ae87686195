"""A small SMTP server on anyio that checks XOAUTH2 tokens as Gmail and Microsoft 365 do.

It offers `AUTH XOAUTH2` (over plaintext: tests set `allow_plaintext_auth`), accepts the tokens in
`valid`, and answers any other token the providers' way: a 334 with a base64 JSON error, then, once
the client sent its empty line, 535. It records every token it was shown and stores the messages of
authenticated sessions.
"""

from __future__ import annotations

import base64

from .lineserver import Lines, LineServer

_ERROR = base64.b64encode(b'{"status":"401","schemes":"bearer","scope":"https://mail"}').decode()


class TokenServer(LineServer):
    def __init__(self, valid: set[str]) -> None:
        self.valid = valid
        self.tokens_seen: list[str] = []
        self.connections = 0
        self.messages: list[bytes] = []

    async def session(self, lines: Lines) -> None:
        self.connections += 1
        say = lines.say
        authenticated = False
        await say("220 tokens.test ESMTP")
        while True:
            command = await lines.line()
            verb = command.split(" ", 1)[0].upper()
            if verb == "EHLO":
                await say("250-tokens.test\r\n250-PIPELINING\r\n250 AUTH XOAUTH2")
            elif verb == "AUTH":
                _, mechanism, initial = command.split(" ", 2)
                assert mechanism == "XOAUTH2"
                fields = base64.b64decode(initial).decode().split("\x01")
                token = fields[1].removeprefix("auth=Bearer ")
                self.tokens_seen.append(token)
                if token in self.valid:
                    authenticated = True
                    await say("235 2.7.0 Accepted")
                else:
                    await say(f"334 {_ERROR}")
                    await lines.line()  # the client's empty answer
                    await say("535 5.7.8 Username and Password not accepted")
            elif verb == "MAIL":
                await say("250 ok" if authenticated else "530 5.7.0 Authentication required")
            elif verb == "RCPT":
                await say("250 ok")
            elif verb == "DATA":
                await say("354 go")
                self.messages.append(await lines.until(b"\r\n.\r\n"))
                await say("250 2.0.0 queued")
            elif verb == "QUIT":
                await say("221 bye")
                return
            else:
                await say("250 ok")
