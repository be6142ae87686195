"""SASL mechanisms for SMTP AUTH (RFC 4954): PLAIN, LOGIN, CRAM-MD5 and XOAUTH2.

A mechanism produces the AUTH command line and the answer to each 334 challenge. Secrets live
only inside these objects and the bytes they return; no repr shows them.

Preference when the caller does not name mechanisms: XOAUTH2 when a token is given (the token is
the credential then), otherwise CRAM-MD5, PLAIN, LOGIN. CRAM-MD5 comes first because the password
itself never crosses the wire (RFC 2195); PLAIN before LOGIN because its initial response saves a
round trip (RFC 4954 §4). When the caller names mechanisms, their order is the preference.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Sequence

from ._errors import InvalidArgument, RemoteProtocolError
from ._reply import Reply

__all__ = ["DEFAULT_PREFERENCE", "Credentials", "SaslMechanism", "choose_mechanism"]

DEFAULT_PREFERENCE = ("XOAUTH2", "CRAM-MD5", "PLAIN", "LOGIN")
# RFC 4954 §4: a client answers a challenge it cannot handle with "*" to cancel the exchange.
_CANCEL = b"*\r\n"
# What replaces a secret a server quoted back in a reply.
_HIDDEN = "***"


def _b64(data: bytes) -> bytes:
    return base64.b64encode(data)


class Credentials:
    """A username with a password and/or an OAuth 2.0 bearer token. The repr hides both."""

    __slots__ = ("oauth2_token", "password", "username")

    def __init__(
        self, username: str | None, password: str | None, oauth2_token: str | None
    ) -> None:
        if username is None or (password is None and oauth2_token is None):
            raise InvalidArgument("AUTH needs a username with a password or an OAuth 2.0 token")
        for field, value in (
            ("username", username),
            ("password", password),
            ("oauth2_token", oauth2_token),
        ):
            if value is not None and (not isinstance(value, str) or "\0" in value):
                raise InvalidArgument(f"{field} must be a str without NUL")
        self.username = username
        self.password = password
        self.oauth2_token = oauth2_token

    def __repr__(self) -> str:
        return "Credentials(<hidden>)"


class SaslMechanism:
    """One SASL exchange: `command()` first, then `respond()` to each 334 challenge."""

    __slots__ = ("_cancelled", "_credentials", "_sent", "_step")
    name = ""

    def __init__(self, credentials: Credentials) -> None:
        self._credentials = credentials
        self._step = 0
        self._cancelled = False
        # What this exchange put on the wire that a reply must never show (see `redact`).
        self._sent: list[str] = []

    def __repr__(self) -> str:
        return f"<SASL {self.name}>"

    def command(self) -> bytes:
        """The AUTH command line, with an initial response when the mechanism has one."""
        return b"AUTH " + self.name.encode() + b"\r\n"

    def respond(self, challenge: str) -> bytes:
        """The line answering a 334 challenge (base64 text without the code)."""
        if self._cancelled:
            # RFC 4954 §4: after "*" the server MUST reject AUTH (501); asking again would keep
            # the client answering until connect_timeout.
            raise RemoteProtocolError("server sent a 334 after the client cancelled AUTH")
        self._step += 1
        answer = self._answer(challenge, self._step)
        self._cancelled = answer == _CANCEL
        self._sent.append(answer[:-2].decode("ascii"))
        return answer

    def redact(self, reply: Reply) -> Reply:
        """`reply` with every secret of this exchange replaced by "***".

        Servers quote what they were sent in their refusals ("535 5.7.8 Authentication failed:
        <the base64 line>"), and some decode it first; the reply is then shown to people (errors,
        logs, `pooledmail probe`). The client knows exactly what it sent: the password or token,
        the initial response and every answer (base64), and for CRAM-MD5 the digest.
        """
        creds = self._credentials
        initial = self.command()[len(b"AUTH ") + len(self.name) : -2].strip().decode("ascii")
        found = {creds.password, creds.oauth2_token, initial, *self._sent}
        # "*" and "" are the cancel and empty answers of RFC 4954 §4, not secrets.
        secrets = sorted((s for s in found if s and s != "*"), key=len, reverse=True)
        lines = []
        for line in reply.lines:
            for secret in secrets:
                line = line.replace(secret, _HIDDEN)
            lines.append(line)
        return Reply(reply.code, tuple(lines), reply.enhanced)

    def _answer(self, challenge: str, step: int) -> bytes:
        return _CANCEL


class _Plain(SaslMechanism):
    # RFC 4616 with the RFC 4954 §4 initial response: one round trip. A 334 after it means the
    # server ignored the initial response; cancel rather than guess.
    __slots__ = ()
    name = "PLAIN"

    def command(self) -> bytes:
        creds = self._credentials
        token = f"\0{creds.username}\0{creds.password}".encode()
        return b"AUTH PLAIN " + _b64(token) + b"\r\n"


class _Login(SaslMechanism):
    # The de-facto LOGIN mechanism: username, then password, each base64 in answer to a 334.
    __slots__ = ()
    name = "LOGIN"

    def _answer(self, challenge: str, step: int) -> bytes:
        creds = self._credentials
        if step == 1:
            return _b64(str(creds.username).encode()) + b"\r\n"
        if step == 2:
            return _b64(str(creds.password).encode()) + b"\r\n"
        return _CANCEL


class _CramMD5(SaslMechanism):
    # RFC 2195: answer "username hex(HMAC-MD5(password, challenge))".
    __slots__ = ()
    name = "CRAM-MD5"

    def _answer(self, challenge: str, step: int) -> bytes:
        if step > 1:
            return _CANCEL
        try:
            decoded = base64.b64decode(challenge.strip().encode("ascii"), validate=True)
        except (binascii.Error, UnicodeEncodeError):
            raise RemoteProtocolError("CRAM-MD5 challenge is not valid base64") from None
        creds = self._credentials
        digest = hmac.new(str(creds.password).encode(), decoded, hashlib.md5).hexdigest()
        self._sent.append(digest)
        return _b64(f"{creds.username} {digest}".encode()) + b"\r\n"


class _XOAuth2(SaslMechanism):
    # Google/Microsoft XOAUTH2: the token in the initial response. On failure the server sends a
    # 334 with a base64 JSON error and waits for an empty line before its final 5xx.
    __slots__ = ()
    name = "XOAUTH2"

    def command(self) -> bytes:
        creds = self._credentials
        token = f"user={creds.username}\x01auth=Bearer {creds.oauth2_token}\x01\x01".encode()
        return b"AUTH XOAUTH2 " + _b64(token) + b"\r\n"

    def _answer(self, challenge: str, step: int) -> bytes:
        return b"\r\n" if step == 1 else _CANCEL


_MECHANISMS: dict[str, type[SaslMechanism]] = {
    "PLAIN": _Plain,
    "LOGIN": _Login,
    "CRAM-MD5": _CramMD5,
    "XOAUTH2": _XOAuth2,
}


def choose_mechanism(
    offered: frozenset[str], credentials: Credentials, allowed: Sequence[str] | None = None
) -> SaslMechanism | None:
    """The preferred mechanism that the server offers and the credentials can serve, or None."""
    preference = DEFAULT_PREFERENCE if allowed is None else [name.upper() for name in allowed]
    for name in preference:
        if name not in offered or name not in _MECHANISMS:
            continue
        needs_token = name == "XOAUTH2"
        if (credentials.oauth2_token is None) if needs_token else (credentials.password is None):
            continue
        return _MECHANISMS[name](credentials)
    return None
