"""A server that quotes the client's AUTH exchange back in its refusal (servers do: "535 5.7.8
Authentication failed: <the base64 you sent>") must not make the password, the token or the SASL
lines reach a `SendFailed` (its text, its reply, its pickle), a log record, a `check()` report
or the `pooledmail` command's output. The server's reply is still shown, with those strings
replaced by "***". On asyncio and trio."""

from __future__ import annotations

import base64
import logging
import pickle
from collections.abc import Iterator

import pytest
from anyio.from_thread import start_blocking_portal

from pooledmail_anyio import FailureKind, Host, PoolConfig, SendFailed, SMTPPool
from pooledmail_anyio._cli import EXIT_CODES, main

from .authecho import AuthEchoServer

PASSWORD = "pw-echo-4b1d-secret"
TOKEN = "ya29.echo-token-secret"
MECHANISMS = ["PLAIN", "LOGIN", "CRAM-MD5", "XOAUTH2"]


def host_for(server: AuthEchoServer) -> Host:
    credential = (
        {"oauth2_token": TOKEN} if server.mechanism == "XOAUTH2" else {"password": PASSWORD}
    )
    return Host(
        "127.0.0.1",
        server.port,
        tls="none",
        allow_plaintext_auth=True,
        username="alice",
        **credential,  # type: ignore[arg-type]
    )


def forbidden(server: AuthEchoServer) -> list[str]:
    """The secrets and every SASL payload the client sent, as the server recorded them."""
    found = [PASSWORD, TOKEN]
    for line in server.sasl_lines:
        # The AUTH command's initial response (PLAIN, XOAUTH2), or an answer to a 334.
        payload = line.split(" ", 2)[2:] if line.upper().startswith("AUTH ") else [line]
        found.extend(text for text in payload if text not in ("", "*"))
    if server.mechanism == "CRAM-MD5":
        # "alice <HMAC-MD5 of the challenge keyed with the password>": the digest stands for it.
        found.append(base64.b64decode(server.sasl_lines[-1]).decode().split(" ")[-1])
    assert len(found) > 2, server.sasl_lines  # the exchange did send something
    return found


def leaked(text: str, server: AuthEchoServer) -> list[str]:
    return [secret for secret in forbidden(server) if secret in text]


pytestmark = pytest.mark.anyio


@pytest.mark.parametrize("mechanism", MECHANISMS)
async def test_send_failed_and_logs_never_quote_what_the_server_echoed_of_auth(
    mechanism: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="pooledmail")
    server = AuthEchoServer(mechanism)
    async with server.running():
        config = PoolConfig([host_for(server)], max_retries=0)
        async with SMTPPool(config) as pool:
            with pytest.raises(SendFailed) as caught:
                await pool.send_raw(
                    b"Subject: x\r\n\r\nhi\r\n", sender="a@x.org", recipients=["b@x.org"]
                )
            report = await pool.check()
            statistics = repr(pool.statistics()) + repr(pool.send_statistics())
    failure = caught.value
    assert failure.kind is FailureKind.AUTH_FAILED
    assert failure.reply is not None
    assert failure.reply.code == 535
    copy = pickle.loads(pickle.dumps(failure))
    seen = {
        "str": str(failure),
        "repr": repr(failure),
        "reason": failure.reason,
        "reply": repr(failure.reply) + failure.reply.text,
        "pickle": repr(pickle.dumps(failure)) + str(copy) + repr(copy.reply),
        "check": str(report) + repr(report),
        "statistics": statistics,
    }
    records = [r for r in caplog.records if r.name.startswith("pooledmail")]
    assert any("cooling down" in r.getMessage() for r in records)
    for number, record in enumerate(records):
        text = logging.Formatter().format(record) + repr(record.__dict__)
        seen[f"record {number}: {record.getMessage()[:40]}"] = text
    assert {where: leaked(text, server) for where, text in seen.items()} == {
        where: [] for where in seen
    }
    # The server's words are still shown, with "***" for what it quoted.
    assert "Authentication failed for ***" in failure.reply.text


@pytest.fixture
def echo_server(request: pytest.FixtureRequest) -> Iterator[AuthEchoServer]:
    server = AuthEchoServer(request.param)
    with (
        start_blocking_portal("asyncio") as portal,
        portal.wrap_async_context_manager(server.running()) as running,
    ):
        yield running


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
@pytest.mark.parametrize("echo_server", ["PLAIN", "LOGIN", "XOAUTH2"], indirect=True)
@pytest.mark.parametrize("command", ["probe", "check", "send"])
def test_the_command_never_prints_what_the_server_echoed_of_auth(
    echo_server: AuthEchoServer,
    command: str,
    backend: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    address = f"127.0.0.1:{echo_server.port}"
    where = [address] if command == "probe" else ["--host", address]
    argv = ["--backend", backend, command, *where, "--tls", "none", "--allow-plaintext-auth"]
    argv += ["--user", "alice"]
    if command == "send":
        argv += ["--from", "a@x.org", "--to", "b@x.org", "--max-retries", "0"]
        monkeypatch.setattr("sys.stdin", type("In", (), {"buffer": _Stdin()})())
    variable = (
        "POOLEDMAIL_OAUTH2_TOKEN" if echo_server.mechanism == "XOAUTH2" else "POOLEDMAIL_PASSWORD"
    )
    secret = TOKEN if echo_server.mechanism == "XOAUTH2" else PASSWORD
    code = main(argv, environ={variable: secret})
    out, err = capsys.readouterr()
    assert code == EXIT_CODES[FailureKind.AUTH_FAILED]
    assert leaked(out + err, echo_server) == []
    assert "Authentication failed for ***" in out + err


class _Stdin:
    def read(self) -> bytes:
        return b"hello\n"
