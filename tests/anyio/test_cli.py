"""The `pooledmail` command, every subcommand, against the embedded server (aiosmtpd), aiosmtpd with
STARTTLS and AUTH, and the fault server; on both backends. Outcomes are judged by the servers' own
records, and exit statuses by the table in docs/guide/operations.md."""

from __future__ import annotations

import io
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme

from pooledmail_anyio._cli import EXIT_CODES, main
from pooledmail_anyio._ports import free_port
from pooledmail_anyio.testing import LocalSMTPServer
from pooledmail_core import FailureKind
from tests.sync.servers import fault_server

from .fakesmtp import DISCONNECT, FakeSMTPServer, Fault, Script

PASSWORD = "s3cret-pw"  # what tests/anyio/conftest.py's authenticator accepts for alice


@pytest.fixture(params=["asyncio", "trio"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def sink() -> Iterator[LocalSMTPServer]:
    with LocalSMTPServer(keep_messages=False) as running:
        yield running


@pytest.fixture
def cafile(ca: trustme.CA, tmp_path: Path) -> str:
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


def run(
    capsys: pytest.CaptureFixture[str],
    *argv: str,
    env: dict[str, str] | None = None,
    stdin: bytes = b"",
    monkeypatch: pytest.MonkeyPatch | None = None,
) -> tuple[int, str, str]:
    if monkeypatch is not None:
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin)))
    code = main(list(argv), environ=env or {})
    out, err = capsys.readouterr()
    return code, out, err


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--version"], environ={})
    assert exited.value.code == 0
    assert capsys.readouterr().out.startswith("pooledmail 0.")


# -- probe ------------------------------------------------------------------------------------


@pytest.mark.aiosmtpd(tls_context="server_tls", with_auth=True, require_starttls=True)
def test_probe_shows_greeting_extensions_tls_certificate_and_auth(
    aiosmtpd_server: Any, cafile: str, capsys: pytest.CaptureFixture[str], backend: str
) -> None:
    controller, handler = aiosmtpd_server
    code, out, _ = run(
        capsys,
        "--backend",
        backend,
        "probe",
        f"127.0.0.1:{controller.port}",
        "--cafile",
        cafile,
        "--user",
        "alice",
        env={"POOLEDMAIL_PASSWORD": PASSWORD},
    )
    assert code == 0
    fields = dict(line.split(None, 1) for line in out.splitlines() if " " in line)
    assert fields["server"] == f"127.0.0.1:{controller.port}"
    assert fields["greeting"].startswith("220 ")
    assert fields["TLS"].startswith("TLSv1.")
    assert fields["TLS"].endswith("(STARTTLS)")
    assert "127.0.0.1" in out or "localhost" in out  # the certificate's names
    assert "issuer" in fields
    assert "days)" in fields["expires"]
    assert "8BITMIME" in fields["extensions"]
    assert "AUTH mechanisms" in out
    assert "accepted for alice" in out
    assert "round trip" in out
    assert PASSWORD not in out
    assert handler.envelopes == []  # the probe sends nothing


@pytest.mark.aiosmtpd(tls_context="server_tls", with_auth=True, require_starttls=True)
def test_probe_with_a_wrong_password_exits_with_auth_failed(
    aiosmtpd_server: Any, cafile: str, capsys: pytest.CaptureFixture[str], backend: str
) -> None:
    controller, _ = aiosmtpd_server
    env = {"POOLEDMAIL_USERNAME": "alice", "POOLEDMAIL_PASSWORD": "wrong-pw"}
    argv = ["--backend", backend, "probe", f"127.0.0.1:{controller.port}", "--cafile", cafile]
    code, out, _ = run(capsys, *argv, env=env)
    assert code == EXIT_CODES[FailureKind.AUTH_FAILED]
    assert "AUTH_FAILED" in out
    assert "535" in out
    assert "wrong-pw" not in out


@pytest.mark.aiosmtpd(tls_context="server_tls", require_starttls=True)
def test_probe_of_an_untrusted_certificate_exits_with_tls_failed(
    aiosmtpd_server: Any, capsys: pytest.CaptureFixture[str], backend: str
) -> None:
    controller, _ = aiosmtpd_server
    code, out, _ = run(capsys, "--backend", backend, "probe", f"127.0.0.1:{controller.port}")
    assert code == EXIT_CODES[FailureKind.TLS_FAILED]
    assert "certificate verify failed" in out


def test_probe_of_a_closed_port_exits_with_connect_failed(
    capsys: pytest.CaptureFixture[str], backend: str
) -> None:
    port = free_port()
    code, out, _ = run(capsys, "--backend", backend, "probe", f"127.0.0.1:{port}", "--tls", "none")
    assert code == EXIT_CODES[FailureKind.CONNECT_FAILED]
    assert "CONNECT_FAILED during CONNECT" in out
    assert "connection refused" in out


def test_probe_of_a_fault_server_that_refuses_the_session(
    capsys: pytest.CaptureFixture[str], backend: str
) -> None:
    with fault_server(Script(greeting="554 5.3.2 go away")) as server:
        argv = ["--backend", backend, "probe", f"127.0.0.1:{server.port}", "--tls", "none"]
        code, out, _ = run(capsys, *argv)
    assert code == EXIT_CODES[FailureKind.CONNECT_FAILED]
    assert "554 5.3.2 go away" in out


def test_probe_and_check_exit_alike_when_the_server_refuses_noop(
    capsys: pytest.CaptureFixture[str], backend: str
) -> None:
    # The same outcome, the same status: a session that was ready but refused NOOP is
    # CONNECT_FAILED for `check`, and so for `probe` (which still shows what the server offers).
    with fault_server(Script(noop="502 5.5.1 no NOOP here")) as server:
        host = f"127.0.0.1:{server.port}"
        probed, out, _ = run(capsys, "--backend", backend, "probe", host, "--tls", "none")
        checked, _, _ = run(capsys, "--backend", backend, "check", "--host", host, "--tls", "none")
        noops = [c for conn in server.connections for c in conn.commands if c == "NOOP"]
    assert noops == ["NOOP", "NOOP"]
    assert checked == EXIT_CODES[FailureKind.CONNECT_FAILED]
    assert probed == checked
    assert "NOOP refused: server said 502 5.5.1 no NOOP here" in out
    assert "PIPELINING" in out


# -- send -------------------------------------------------------------------------------------


def test_send_delivers_stdin_to_the_embedded_server(
    sink: LocalSMTPServer,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    backend: str,
) -> None:
    code, out, _ = run(
        capsys,
        "--backend",
        backend,
        "send",
        "--host",
        f"127.0.0.1:{sink.port}",
        "--tls",
        "none",
        "--from",
        "a@example.com",
        "--to",
        "b@example.com",
        "--to",
        "c@example.com",
        "--subject",
        "hello",
        stdin=b"Hello from the command line.\n",
        monkeypatch=monkeypatch,
    )
    assert code == 0
    assert out.startswith(f"accepted by 127.0.0.1:{sink.port}: 250")
    assert "message-id <" in out
    assert sink.received == 1
    assert sink.recipients == 2


def send_raw_to(
    server: FakeSMTPServer,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    backend: str,
    *recipients: str,
) -> tuple[int, str, str]:
    """`pooledmail send --raw` of a message without a Message-ID to `recipients`, no retry."""
    to = [word for recipient in recipients for word in ("--to", recipient)]
    return run(
        capsys,
        "--backend",
        backend,
        "send",
        "--host",
        f"127.0.0.1:{server.port}",
        "--tls",
        "none",
        "--max-retries",
        "0",
        "--from",
        "a@example.com",
        *to,
        "--raw",
        stdin=b"Subject: raw\r\n\r\nraw body\r\n",
        monkeypatch=monkeypatch,
    )


@pytest.mark.parametrize(
    ("script", "kind", "stored"),
    [
        (Script(rcpt="550 5.1.1 no such user"), FailureKind.PERMANENT, 0),
        (Script(mail="451 4.3.0 later"), FailureKind.TRANSIENT, 0),
        (Script(data_end=DISCONNECT), FailureKind.UNKNOWN_AFTER_DATA, 1),
    ],
)
def test_send_exits_with_the_failure_kind_and_the_server_agrees(
    script: Script,
    kind: FailureKind,
    stored: int,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    backend: str,
) -> None:
    with fault_server(script) as server:
        code, out, err = send_raw_to(server, capsys, monkeypatch, backend, "b@example.com")
        received = server.received
    assert code == EXIT_CODES[kind]
    assert err.startswith(f"pooledmail: {kind.name} during ")
    assert out == ""
    # UNKNOWN_AFTER_DATA: the server has the message the client could not confirm.
    assert received == stored


def test_send_partly_refused_exits_22_and_names_each_refused_recipient(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, backend: str
) -> None:
    # Exit 0 would tell a script that everyone got it; a failure's status would invite sending
    # the whole message again, twice to b@.
    script = Script(rcpt=lambda line: "550 5.1.1 no such user" if "c@" in line else "250 ok")
    with fault_server(script) as server:
        code, out, err = send_raw_to(
            server, capsys, monkeypatch, backend, "b@example.com", "c@example.com"
        )
        stored = len(server.messages)
    assert code == 22
    assert out.startswith(f"accepted by 127.0.0.1:{server.port}: 250")
    assert out.splitlines()[-1] == "refused c@example.com: 550 5.1.1 no such user"
    # Raw bytes without a Message-ID: said in words, as the log records do, not as "None".
    assert out.splitlines()[1] == "message-id none (the message has no Message-ID)"
    assert stored == 1  # the server has it, for b@ alone
    assert "Traceback" not in err


# -- check ------------------------------------------------------------------------------------


def test_check_reports_every_host_and_exits_with_the_first_failure(
    sink: LocalSMTPServer, capsys: pytest.CaptureFixture[str], backend: str
) -> None:
    dead = free_port()
    env = {"POOLEDMAIL_HOST": f"127.0.0.1:{sink.port},127.0.0.1:{dead}", "POOLEDMAIL_TLS": "none"}
    code, out, _ = run(capsys, "--backend", backend, "check", env=env)
    assert code == EXIT_CODES[FailureKind.CONNECT_FAILED]
    lines = out.splitlines()
    assert lines[0].split() == ["host", "result", "TLS", "AUTH", "ready", "in", "NOOP", "detail"]
    assert lines[1].startswith(f"127.0.0.1:{sink.port}")
    assert " ok " in lines[1]
    assert lines[2].startswith(f"127.0.0.1:{dead}")
    assert "connection refused" in lines[2]
    assert sink.received == 0


def test_check_against_a_fault_server_that_refuses_auth(
    capsys: pytest.CaptureFixture[str], backend: str
) -> None:
    script = Script(extensions=("PIPELINING", "AUTH PLAIN"), auth="535 5.7.8 bad credentials")
    with fault_server(script) as server:
        code, out, _ = run(
            capsys,
            "--backend",
            backend,
            "check",
            "--host",
            f"127.0.0.1:{server.port}",
            "--tls",
            "none",
            "--allow-plaintext-auth",
            "--user",
            "alice",
            env={"POOLEDMAIL_PASSWORD": "not-this-one"},
        )
        commands = [command for connection in server.connections for command in connection.commands]
    assert code == EXIT_CODES[FailureKind.AUTH_FAILED]
    assert "AUTH_FAILED" in out
    assert "535 5.7.8 bad credentials" in out
    assert "not-this-one" not in out
    assert "MAIL" not in " ".join(commands)  # nothing was sent


def test_check_passes_for_a_good_host(
    sink: LocalSMTPServer, capsys: pytest.CaptureFixture[str], backend: str
) -> None:
    argv = ["--backend", backend, "check", "--host", f"127.0.0.1:{sink.port}", "--tls", "none"]
    code, out, _ = run(capsys, *argv)
    assert code == 0
    assert "ready for MAIL" in out


# -- bench and demo ---------------------------------------------------------------------------


def test_bench_against_the_embedded_server(
    sink: LocalSMTPServer, capsys: pytest.CaptureFixture[str], backend: str
) -> None:
    code, out, _ = run(
        capsys,
        "--backend",
        backend,
        "bench",
        "--host",
        f"127.0.0.1:{sink.port}",
        "--tls",
        "none",
        "-n",
        "40",
        "-c",
        "4",
        "--size",
        "2000",
        "--max-size",
        "2",
    )
    assert code == 0
    fields = dict(line.split(None, 1) for line in out.splitlines())
    assert fields["accepted"] == "40"
    assert fields["failures"] == "none"
    assert fields["connections"].startswith("2 created")
    assert fields["latency"].startswith("p50 ")
    assert fields["latency"].endswith(" ms")
    assert sink.received == 40
    # Every message carried the size asked for (give or take the line ending the sink adds).
    assert abs(sink.received_bytes / 40 - 2000) < 8


def test_bench_against_a_refusing_server_counts_failures_by_kind(
    capsys: pytest.CaptureFixture[str], backend: str
) -> None:
    with fault_server(Script(rcpt="550 5.1.1 no")) as server:
        code, out, _ = run(
            capsys,
            "--backend",
            backend,
            "bench",
            "--host",
            f"127.0.0.1:{server.port}",
            "--tls",
            "none",
            "-n",
            "10",
            "-c",
            "2",
        )
        stored = len(server.messages)
    assert code == EXIT_CODES[FailureKind.PERMANENT]
    assert "PERMANENT 10" in out
    assert stored == 0


def test_demo(capsys: pytest.CaptureFixture[str], backend: str) -> None:
    code, out, _ = run(capsys, "--backend", backend, "demo", "--messages", "30")
    assert code == 0
    assert "server received  30" in out
    assert "bounded by the embedded server" in out


# -- options ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        ([], {"POOLEDMAIL_MAX_SIZE": "many"}, "max_size: must be an integer (POOLEDMAIL_MAX_SIZE)"),
        (
            ["--connect-timeout", "-1"],
            {},
            "connect_timeout: must be greater than 0 (--connect-timeout)",
        ),
        ([], {"POOLEDMAIL_PORT": "smtp"}, "port: must be an integer (POOLEDMAIL_PORT)"),
        (["--port", "70000"], {}, "port: must be at most 65535 (--port)"),
        ([], {"POOLEDMAIL_IDLE_TIMEOUT": "soon"}, "idle_timeout: must be a number of seconds"),
        (
            ["--user", "alice"],
            {},
            "password: --user needs POOLEDMAIL_PASSWORD or POOLEDMAIL_OAUTH2_TOKEN",
        ),
        (
            ["--tls", "none", "--user", "alice"],
            {"POOLEDMAIL_PASSWORD": "pw"},
            "need allow_plaintext_auth=True (set with --allow-plaintext-auth)",
        ),
    ],
)
def test_a_wrong_option_exits_2_naming_the_option_and_its_source(
    argv: list[str], env: dict[str, str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, "check", "--host", "127.0.0.1", *argv, env=env)
    assert code == 2
    assert message in err
    assert out == ""


def test_probe_reads_the_variables_of_every_option_and_demo_none(
    capsys: pytest.CaptureFixture[str], sink: LocalSMTPServer
) -> None:
    # docs/guide/operations.md: probe has two option flags but reads every POOLEDMAIL_<OPTION>;
    # demo reads none of them.
    wrong = {"POOLEDMAIL_MAX_SIZE": "many"}
    code, out, err = run(capsys, "probe", f"127.0.0.1:{sink.port}", "--tls", "none", env=wrong)
    assert code == 2
    assert "max_size: must be an integer (POOLEDMAIL_MAX_SIZE)" in err
    assert out == ""
    code, out, _ = run(capsys, "demo", "--messages", "3", env=wrong)
    assert code == 0
    assert "server received  3" in out


def test_send_with_a_user_and_no_password_says_it_cannot_ask(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # `send` reads the message from stdin, so even at a terminal it asks for no password: the
    # error must not send the user to a terminal that would not help.
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"body")))
    monkeypatch.setattr(sys.stdin, "isatty", lambda: True)
    argv = ["send", "--host", "127.0.0.1", "--from", "a@example.com", "--to", "b@example.com"]
    code, out, err = run(capsys, *argv, "--user", "alice")
    assert code == 2
    assert "password: --user needs POOLEDMAIL_PASSWORD or POOLEDMAIL_OAUTH2_TOKEN" in err
    assert "send reads the message from stdin" in err
    assert "terminal" not in err
    assert out == ""


@pytest.mark.parametrize(
    ("argv", "env", "origin"),
    [
        (["check", "--host", "127.0.0.1:abc"], {}, "(--host)"),
        (["check", "--host", "127.0.0.1:abc", "--port", "25"], {}, "(--host)"),
        (["check", "--host", "127.0.0.1:25,127.0.0.1:abc"], {}, "(--host)"),
        (["check"], {"POOLEDMAIL_HOST": "127.0.0.1:abc"}, "(POOLEDMAIL_HOST)"),
        (["probe", "127.0.0.1:abc"], {}, "(the HOST[:PORT] argument)"),
        (["check", "--host", "127.0.0.1", "--port", "abc"], {}, "(--port)"),
        (["check", "--host", "127.0.0.1"], {"POOLEDMAIL_PORT": "abc"}, "(POOLEDMAIL_PORT)"),
    ],
    ids=["host", "host-beside-port", "second-host", "variable", "probe", "port", "port-variable"],
)
def test_a_bad_port_names_where_it_came_from(
    argv: list[str], env: dict[str, str], origin: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, *argv, "--tls", "none", env=env)
    assert code == 2
    assert "port: must be an integer" in err
    assert err.rstrip().endswith(origin)
    assert "set with" not in err
    assert out == ""


def test_no_host_at_all_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "check")
    assert code == 2
    assert "hosts: give a server with --host" in err


def test_options_come_from_a_file_then_the_environment_then_the_flags(
    sink: LocalSMTPServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "pool.json"
    config.write_text(
        json.dumps(
            {"hosts": [{"hostname": "127.0.0.1", "port": sink.port, "tls": "none"}], "max_size": 1}
        )
    )

    def created(out: str) -> str:
        return dict(line.split(None, 1) for line in out.splitlines())["connections"].split()[0]

    only_file = {"POOLEDMAIL_CONFIG": str(config)}
    code, out, _ = run(capsys, "bench", "-n", "12", "-c", "6", env=only_file)
    assert code == 0
    assert created(out) == "1"  # the file's max_size
    env = {**only_file, "POOLEDMAIL_MAX_SIZE": "3"}
    code, out, _ = run(capsys, "bench", "-n", "12", "-c", "6", env=env)
    assert code == 0
    assert created(out) == "3"  # six senders at once, and the environment's max_size
    code, out, _ = run(capsys, "bench", "-n", "12", "-c", "6", "--max-size", "2", env=env)
    assert code == 0
    assert created(out) == "2"  # the flag's
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"hosts": [{"hostname": "127.0.0.1", "prot": 25}]}))
    code, _, err = run(capsys, "check", "--config", str(bad))
    assert code == 2
    assert "hosts[0].prot: unknown host option" in err


def test_a_number_too_large_for_a_float_in_a_file_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # JSON and TOML integers have no bound; a float() of one too large raised OverflowError,
    # which left the command with a traceback instead of naming the option.
    config = tmp_path / "pool.json"
    config.write_text(
        '{"hosts": [{"hostname": "127.0.0.1"}], "acquire_timeout": 1' + "0" * 400 + "}"
    )
    code, _, err = run(capsys, "check", "--config", str(config))
    assert code == 2
    assert "acquire_timeout: must be finite" in err


def test_a_toml_file_works_too(
    sink: LocalSMTPServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "pool.toml"
    config.write_text(f'[[hosts]]\nhostname = "127.0.0.1"\nport = {sink.port}\ntls = "none"\n')
    code, out, _ = run(capsys, "check", "--config", str(config))
    assert code == 0
    assert "ok" in out


def test_a_bad_count_is_refused_by_argparse(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["bench", "--host", "x", "-n", "0"], environ={})
    assert exited.value.code == 2
    assert "must be at least 1" in capsys.readouterr().err


# -- output -----------------------------------------------------------------------------------


def test_rich_tables_where_a_terminal_is_attached(
    sink: LocalSMTPServer, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FORCE_COLOR", "1")  # what rich takes for "a terminal is attached"
    monkeypatch.delenv("NO_COLOR", raising=False)
    argv = ["check", "--host", f"127.0.0.1:{sink.port}", "--tls", "none"]
    code, out, _ = run(capsys, *argv)
    assert code == 0
    assert "┃" in out or "│" in out  # drawn by rich
    assert "ready for MAIL" in out
    code, out, _err = run(capsys, "demo", "--messages", "10")
    assert code == 0
    assert "│" in out


def test_plain_output_without_rich(
    sink: LocalSMTPServer, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FORCE_COLOR", "1")
    monkeypatch.setitem(sys.modules, "rich.console", None)  # as if rich were not installed
    argv = ["check", "--host", f"127.0.0.1:{sink.port}", "--tls", "none"]
    code, out, _ = run(capsys, *argv)
    assert code == 0
    assert "│" not in out
    assert out.splitlines()[0].startswith("host")


def test_every_failure_kind_has_its_own_exit_status() -> None:
    assert set(EXIT_CODES) == set(FailureKind)
    assert len(set(EXIT_CODES.values())) == len(FailureKind)


def test_backend_is_taken_after_the_command_as_well(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--backend", "trio", "--messages", "3"]) == 0
    out = capsys.readouterr().out
    assert "trio" in out


def test_probe_gives_the_noop_what_is_left_of_the_connect_timeout(
    capsys: pytest.CaptureFixture[str], backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # One deadline for the whole probe of a connection: a server that never answers NOOP holds
    # it no longer than `--connect-timeout` from the start, not that long again after setup.
    from pooledmail_anyio import _cli
    from pooledmail_anyio._connection import Connection

    deadlines: list[float] = []
    run_exchange = Connection.run

    async def recording(self: Connection, exchange: Any, **options: Any) -> None:
        deadlines.append(options.get("deadline", float("inf")))
        await run_exchange(self, exchange, **options)

    started: list[float] = []
    open_connection = _cli.open_connection

    async def timed_open(*args: Any, **options: Any) -> Any:
        started.append(_cli.anyio.current_time())
        return await open_connection(*args, **options)

    monkeypatch.setattr(Connection, "run", recording)
    monkeypatch.setattr(_cli, "open_connection", timed_open)
    script = Script(acts=(Fault("normal"), Fault("normal"), Fault("stall")))
    with fault_server(script) as server:
        argv = ["--backend", backend, "probe", f"127.0.0.1:{server.port}", "--tls", "none"]
        code = main([*argv, "--connect-timeout", "0.5"], environ={})
    out, _ = capsys.readouterr()
    assert code == EXIT_CODES[FailureKind.CONNECT_FAILED]
    assert "NOOP failed" in out
    assert deadlines
    assert started
    assert deadlines[-1] <= started[0] + 0.5


@pytest.mark.parametrize("command", ["send", "bench"])
@pytest.mark.parametrize(
    ("option", "value"),
    [("--to", "bob"), ("--from", "a@example.com\r\nBcc: eve@example.com")],
    ids=["no-at", "crlf"],
)
def test_a_malformed_address_exits_2_before_anything_is_sent(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    backend: str,
    command: str,
    option: str,
    value: str,
) -> None:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"hi\n")))
    addresses = {"--from": "a@example.com", "--to": "b@example.com", option: value}
    with fault_server(Script()) as server:
        argv = ["--backend", backend, command, "--host", f"127.0.0.1:{server.port}"]
        argv += ["--tls", "none", *(word for pair in addresses.items() for word in pair)]
        code = main(argv, environ={})
        received = server.received
    _, err = capsys.readouterr()
    assert code == 2
    assert "error:" in err
    assert received == 0


@pytest.mark.parametrize("terminal", [False, True], ids=["plain", "rich"])
def test_what_a_server_says_reaches_the_terminal_without_control_codes_or_markup(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    backend: str,
    terminal: bool,
) -> None:
    # A greeting that would retitle the operator's terminal (OSC 0), and rich markup that
    # would break (or style) the table if it were read as markup.
    if terminal:
        monkeypatch.setenv("FORCE_COLOR", "1")
    else:
        monkeypatch.delenv("FORCE_COLOR", raising=False)
    script = Script(greeting="220 mx.test \x1b]0;owned\x07 [/bold] ready")
    with fault_server(script) as server:
        argv = ["--backend", backend, "probe", f"127.0.0.1:{server.port}", "--tls", "none"]
        code = main(argv, environ={})
    out, _ = capsys.readouterr()
    assert code == 0
    assert "\x1b]0;" not in out
    assert "\x07" not in out
    assert "\\x1b]0;owned\\x07 [/bold] ready" in out


def test_host_takes_several_servers_separated_by_commas(
    sink: LocalSMTPServer, capsys: pytest.CaptureFixture[str]
) -> None:
    # As POOLEDMAIL_HOST does, and as `--help` says.
    dead = free_port()
    hosts = f"127.0.0.1:{sink.port},127.0.0.1:{dead}"
    code, out, _ = run(capsys, "check", "--host", hosts, "--tls", "none")
    assert code == EXIT_CODES[FailureKind.CONNECT_FAILED]
    lines = out.splitlines()
    assert lines[1].startswith(f"127.0.0.1:{sink.port}")
    assert " ok " in lines[1]
    assert lines[2].startswith(f"127.0.0.1:{dead}")


def test_a_wrong_backend_from_the_environment_exits_2_naming_it(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # As every other option: a wrong value stops the command with status 2, naming the option
    # and where it came from; not a traceback (argparse does not check a default's choices).
    argv = ["check", "--host", "127.0.0.1", "--tls", "none"]
    code, out, err = run(capsys, *argv, env={"POOLEDMAIL_BACKEND": "curio"})
    assert code == 2
    assert "backend" in err
    assert "(POOLEDMAIL_BACKEND)" in err
    assert out == ""
    monkeypatch.setenv("POOLEDMAIL_BACKEND", "curio")
    assert main(argv) == 2
    assert "(POOLEDMAIL_BACKEND)" in capsys.readouterr().err


def test_the_backend_comes_from_the_environment_main_is_given() -> None:
    # `main(environ=...)` reads every variable from that mapping, POOLEDMAIL_BACKEND included.
    from pooledmail_anyio import _cli

    seen: list[str] = []
    run_on = _cli.anyio.run

    def recording(*args: Any, backend: str, **options: Any) -> Any:
        seen.append(backend)
        return run_on(*args, backend=backend, **options)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_cli.anyio, "run", recording)
        assert main(["demo", "--messages", "2"], environ={"POOLEDMAIL_BACKEND": "trio"}) == 0
        # A flag still wins over the variable.
        argv = ["demo", "--backend", "asyncio", "--messages", "2"]
        assert main(argv, environ={"POOLEDMAIL_BACKEND": "trio"}) == 0
    assert seen == ["trio", "asyncio"]


def test_probe_of_a_server_that_drops_the_noop_exits_with_a_status_naming_the_noop(
    capsys: pytest.CaptureFixture[str], backend: str
) -> None:
    # Greeting (reply 0) and EHLO (reply 1) fine, then the connection drops at NOOP (reply 2):
    # a status and a line, not a traceback. EHLO was answered (the extensions are shown): the
    # failure is the NOOP's, not EHLO's.
    script = Script(acts=(Fault("normal"), Fault("normal"), Fault("disconnect")))
    with fault_server(script) as server:
        argv = ["--backend", backend, "probe", f"127.0.0.1:{server.port}", "--tls", "none"]
        code = main(argv, environ={})
    out, _ = capsys.readouterr()
    assert code == EXIT_CODES[FailureKind.CONNECT_FAILED]
    assert "NOOP failed: the server closed the connection during NOOP" in out
    assert "EHLO" not in out.split("NOOP failed", 1)[1]
