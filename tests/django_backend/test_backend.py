"""Django's own mail API through `pooledmail_django.EmailBackend`, judged by the server's record."""

from __future__ import annotations

import email.generator
import itertools
import pickle
import smtplib
import ssl
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import pytest
import trustme
from django.core import mail
from django.core.exceptions import ImproperlyConfigured
from django.core.mail import EmailMessage, EmailMultiAlternatives, get_connection
from django.test import override_settings

from pooledmail_anyio import FailureKind, SendFailed, Stage, TLSMode
from pooledmail_django import EmailBackend, SMTPSendFailed
from tests.anyio.fakesmtp import DISCONNECT, Script
from tests.polling import eventually
from tests.sync.servers import fault_server, smtpd

Point = Callable[..., AbstractContextManager[Any]]
FIXED = {"Message-ID": "<fixed-1@example.com>", "Date": "Tue, 01 Jul 2025 10:00:00 -0000"}


def subject_of(content: bytes) -> str:
    for line in content.split(b"\r\n"):
        if line.startswith(b"Subject: "):
            return line[len(b"Subject: ") :].decode()
        if not line:
            break
    raise AssertionError("no Subject")


def test_send_mail_send_mass_mail_and_send_reuse_one_connection(pointed_at: Point) -> None:
    with smtpd() as (port, recorder), pointed_at(port):
        assert mail.send_mail("one", "Hello.", "alice@example.com", ["bob@example.com"]) == 1
        batch = [(f"mass {i}", "Hi.", "alice@example.com", [f"r{i}@example.com"]) for i in range(5)]
        assert mail.send_mass_mail(batch) == 5
        message = EmailMessage("three", "Hey.", "alice@example.com", ["carol@example.com"])
        assert message.send() == 1
        stats = get_connection().pool.statistics()
    assert [subject_of(d.content) for d in recorder.deliveries] == [
        "one",
        *(f"mass {i}" for i in range(5)),
        "three",
    ]
    assert recorder.deliveries[1].rcpt_tos == ("r0@example.com",)
    assert recorder.sessions == 1
    assert stats.created_total == 1


@pytest.fixture
def fixed_boundaries(monkeypatch: pytest.MonkeyPatch) -> Callable[[], None]:
    """MIME boundaries are random; this makes them a sequence restarted before each send."""
    counter = itertools.count()

    def make_boundary(cls: type, text: str | None = None) -> str:
        return f"===============test-boundary-{next(counter)}=="

    monkeypatch.setattr(email.generator.Generator, "_make_boundary", classmethod(make_boundary))

    def restart() -> None:
        nonlocal counter
        counter = itertools.count()

    return restart


def messages_for_comparison() -> list[EmailMessage]:
    plain = EmailMessage(
        "Plain",
        "Hello.\n.a line that starts with a dot\n..and two\n",
        "Alice Example <alice@example.com>",
        ["bob@example.com"],
        headers=FIXED,
    )
    rich = EmailMultiAlternatives(
        "Rich",
        "The text part.\n",
        "alice@example.com",
        ["Bob Été <bob@example.com>"],
        cc=["carol@example.com"],
        bcc=["hidden@example.com"],
        reply_to=["Support <support@example.com>"],
        headers={**FIXED, "X-Campaign": "spring", "List-Unsubscribe": "<mailto:u@example.com>"},
    )
    rich.attach_alternative("<p>The <b>HTML</b> part.</p>", "text/html")
    rich.attach("notes.txt", "line one\nline two\n", "text/plain")
    rich.attach("pixel.png", bytes(range(256)) * 8, "image/png")
    rich.attach("résumé.pdf", b"%PDF-1.4 not really", "application/pdf")
    international = EmailMessage(
        "Grüße \N{EN DASH} ünïcödé",
        "Body with ünïcödé, and a long line: " + "x" * 1200 + "\n",
        "José <jose@exämple.com>",
        ["anna@example.com"],
        headers=FIXED,
    )
    other_from = EmailMessage(
        "From header differs from the envelope",
        "Body.",
        "bounces@example.com",
        ["dan@example.com"],
        headers={**FIXED, "From": "Newsletter <news@example.com>"},
    )
    generated = EmailMessage("Django sets Date and Message-ID", "Body.", None, ["eve@example.com"])
    return [plain, rich, international, other_from, generated]


def test_the_server_receives_the_bytes_djangos_smtp_backend_sends(
    pointed_at: Point, fixed_boundaries: Callable[[], None]
) -> None:
    messages = messages_for_comparison()
    with smtpd() as (port, recorder), pointed_at(port):
        django_smtp = get_connection("django.core.mail.backends.smtp.EmailBackend")
        for message in messages:
            fixed_boundaries()
            assert django_smtp.send_messages([message]) == 1
        pooled = get_connection()
        for message in messages:
            fixed_boundaries()
            assert pooled.send_messages([message]) == 1
    theirs, ours = recorder.deliveries[: len(messages)], recorder.deliveries[len(messages) :]
    assert len(ours) == len(messages)
    for their, our in zip(theirs[:-1], ours[:-1], strict=True):
        assert our.mail_from == their.mail_from
        assert our.rcpt_tos == their.rcpt_tos
        assert our.content == their.content
    # The last message's Date and Message-ID are made by Django at each send: they are the only
    # difference, and each appears exactly once.
    theirs_lines, ours_lines = theirs[-1].content.split(b"\r\n"), ours[-1].content.split(b"\r\n")
    differing = [(a, b) for a, b in zip(theirs_lines, ours_lines, strict=True) if a != b]
    assert {a.split(b":")[0] for a, _ in differing} <= {b"Date", b"Message-ID"}
    assert sum(line.startswith(b"Message-ID: ") for line in ours_lines) == 1
    assert sum(line.startswith(b"Date: ") for line in ours_lines) == 1
    # Bcc is in the envelope, never in the bytes.
    assert "hidden@example.com" in ours[1].rcpt_tos
    assert b"hidden@example.com" not in ours[1].content


def send_from_threads(count: int, per_thread: int) -> tuple[list[int], list[BaseException]]:
    returned: list[int] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def sender(i: int) -> None:
        try:
            for n in range(per_thread):
                sent = mail.send_mail(
                    f"t{i}-m{n}", "Hello.", "alice@example.com", [f"u{i}@example.com"]
                )
                with lock:
                    returned.append(sent)
        except BaseException as exc:
            with lock:
                errors.append(exc)

    threads = [threading.Thread(target=sender, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not any(thread.is_alive() for thread in threads), "a sender never returned"
    return returned, errors


def test_32_threads_share_the_pool_and_each_message_is_stored_once(pointed_at: Point) -> None:
    with smtpd() as (port, recorder):
        with pointed_at(port, POOLEDMAIL={"max_messages_per_connection": None}):
            returned, errors = send_from_threads(32, 4)
            pool = get_connection().pool
            stats = pool.statistics()
        assert errors == []
        assert returned == [1] * 128
        subjects = sorted(subject_of(d.content) for d in recorder.deliveries)
        assert subjects == sorted(f"t{i}-m{n}" for i in range(32) for n in range(4))
        assert recorder.sessions <= 4
        assert stats.created_total == recorder.sessions


def test_32_threads_through_broken_connections_store_each_message_once(
    pointed_at: Point,
) -> None:
    # The first three connections drop at DATA, before any byte of the message: each message
    # they held is definitely not accepted and retried elsewhere.
    def script_for(n: int) -> Script:
        return Script(data=DISCONNECT) if n < 3 else Script()

    options = {"max_retries": 3, "retry_base_delay": 0.01, "max_messages_per_connection": None}
    with fault_server(script_for) as server:
        with pointed_at(server.port, POOLEDMAIL=options):
            returned, errors = send_from_threads(32, 4)
            stats = get_connection().pool.statistics()
        stored = sorted(subject_of(content) for content in server.messages)
    assert errors == []
    assert returned == [1] * 128
    assert stored == sorted(f"t{i}-m{n}" for i in range(32) for n in range(4))
    assert stats.created_total == len(server.connections)
    assert len(server.connections) - 3 <= 4


def test_a_failure_is_an_smtplib_exception_and_a_send_failed(pointed_at: Point) -> None:
    with fault_server(Script(rcpt="550 5.1.1 no such user")) as server:
        with pointed_at(server.port), pytest.raises(smtplib.SMTPException) as caught:
            mail.send_mail("refused", "Body.", "alice@example.com", ["nobody@example.com"])
        assert server.messages == []
    failure = caught.value
    assert isinstance(failure, SMTPSendFailed)
    assert isinstance(failure, SendFailed)
    assert isinstance(failure, OSError)
    assert failure.kind is FailureKind.PERMANENT
    assert failure.stage is Stage.RCPT
    assert failure.definitely_not_accepted
    assert failure.reply is not None
    assert failure.reply.code == 550
    copy = pickle.loads(pickle.dumps(failure))
    assert type(copy) is SMTPSendFailed
    assert (copy.kind, copy.stage, copy.reply, str(copy)) == (
        failure.kind,
        failure.stage,
        failure.reply,
        str(failure),
    )


def test_fail_silently_counts_only_what_was_sent(pointed_at: Point) -> None:
    def rcpt(line: str) -> str:
        return "550 5.1.1 no such user" if "nobody" in line else "250 2.1.5 ok"

    with fault_server(Script(rcpt=rcpt)) as server:
        with pointed_at(server.port):
            batch = [
                ("ok 1", "Body.", "alice@example.com", ["bob@example.com"]),
                ("refused", "Body.", "alice@example.com", ["nobody@example.com"]),
                ("ok 2", "Body.", "alice@example.com", ["carol@example.com"]),
            ]
            assert mail.send_mass_mail(batch, fail_silently=True) == 2
            # Some recipients refused, others accepted: sent, as with Django's SMTP backend.
            partial = EmailMessage(
                "partial", "Body.", "alice@example.com", ["dan@example.com", "nobody@example.com"]
            )
            assert partial.send() == 1
            # Without fail_silently the batch stops at the failure.
            with pytest.raises(SMTPSendFailed):
                mail.send_mass_mail(batch)
        stored = [subject_of(content) for content in server.messages]
    assert stored == ["ok 1", "ok 2", "partial", "ok 1"]


def test_a_message_some_recipients_refused_counts_as_sent_and_is_logged(
    pointed_at: Point, caplog: pytest.LogCaptureFixture
) -> None:
    # django.md: sent (Django's count), logged at WARNING with the address masked, and counted in
    # the pool's send_statistics().partly_refused.
    def rcpt(line: str) -> str:
        if "nobody" in line:
            return "550 5.1.1 <nobody@example.com>: no such user"
        return "250 2.1.5 ok"

    with fault_server(Script(rcpt=rcpt)) as server:
        with pointed_at(server.port), caplog.at_level("WARNING", logger="pooledmail.send"):
            connection = get_connection()
            partial = EmailMessage(
                "partial", "Body.", "alice@example.com", ["dan@example.com", "nobody@example.com"]
            )
            assert connection.send_messages([partial]) == 1
            statistics = connection.pool.send_statistics()
        stored = [subject_of(content) for content in server.messages]
    assert stored == ["partial"]
    assert statistics.partly_refused == 1
    (record,) = [r for r in caplog.records if "refused for" in r.getMessage()]
    assert "550 5.1.1 <<recipient>>: no such user" in record.getMessage()
    assert "nobody@" not in record.getMessage()


def test_unknown_after_data_reaches_django_code_as_such(pointed_at: Point) -> None:
    with fault_server(Script(data_end=DISCONNECT)) as server:
        with pointed_at(server.port), pytest.raises(SMTPSendFailed) as caught:
            EmailMessage("maybe", "Body.", "alice@example.com", ["bob@example.com"]).send()
        assert len(server.messages) == 1
    assert caught.value.kind is FailureKind.UNKNOWN_AFTER_DATA
    assert not caught.value.definitely_not_accepted


def test_fail_silently_does_not_count_a_message_whose_outcome_is_unknown(
    pointed_at: Point, caplog: pytest.LogCaptureFixture
) -> None:
    # django.md: skipped and not counted, though the server has it; logged and counted by the
    # pool, for reconciliation.
    with fault_server(Script(data_end=DISCONNECT)) as server:
        with pointed_at(server.port), caplog.at_level("WARNING", logger="pooledmail.send"):
            connection = get_connection(fail_silently=True)
            message = EmailMessage("maybe", "Body.", "alice@example.com", ["bob@example.com"])
            assert connection.send_messages([message]) == 0
            unknown = connection.pool.send_statistics().failed.get("unknown_after_data", 0)
        assert len(server.messages) == 1
    assert unknown == 1
    logged = [r for r in caplog.records if r.__dict__.get("kind") == "unknown_after_data"]
    assert [r.levelname for r in logged] == ["WARNING"]
    # Django gives every message a Message-ID; the log names it, to reconcile by.
    assert str(logged[0].__dict__["message_id"]).startswith("<")


def test_open_and_close_do_not_close_the_shared_pool(pointed_at: Point) -> None:
    with smtpd() as (port, recorder), pointed_at(port):
        connection = get_connection()
        assert connection.open() is True
        assert connection.open() is False
        first = EmailMessage("first", "Body.", "alice@example.com", ["bob@example.com"])
        nobody = EmailMessage("nobody", "Body.", "alice@example.com", [])
        assert connection.send_messages([first, nobody]) == 1
        assert connection.send_messages([]) == 0
        connection.close()
        assert not connection.pool.closed
        with get_connection() as other:
            assert other.pool is connection.pool
            other.send_messages([EmailMessage("second", "B.", "a@example.com", ["b@example.com"])])
        assert mail.send_mail("third", "Body.", "alice@example.com", ["bob@example.com"]) == 1
        assert connection.pool.statistics().created_total == 1
    assert [subject_of(d.content) for d in recorder.deliveries] == ["first", "second", "third"]


@pytest.fixture
def ca_file(tmp_path: Path) -> tuple[trustme.CA, Path]:
    ca = trustme.CA()
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return ca, path


def test_starttls_and_auth_from_djangos_settings(
    pointed_at: Point, ca_file: tuple[trustme.CA, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    from aiosmtpd.smtp import AuthResult, LoginPassword

    ca, path = ca_file
    # The pool's default context trusts the system store; point it at the test CA.
    monkeypatch.setenv("SSL_CERT_FILE", str(path))
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_tls)
    logins: list[bytes] = []

    def authenticator(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> Any:
        ok = isinstance(data, LoginPassword) and (data.login, data.password) == (b"app", b"pw")
        logins.append(data.login)
        return AuthResult(success=ok, handled=False)

    with (
        smtpd(tls_context=server_tls, require_starttls=True, authenticator=authenticator) as (
            port,
            recorder,
        ),
        pointed_at(port, EMAIL_USE_TLS=True, EMAIL_HOST_USER="app", EMAIL_HOST_PASSWORD="pw"),
    ):
        host = get_connection().pool.config.hosts[0]
        assert host.tls is TLSMode.STARTTLS
        assert mail.send_mail("secure", "Body.", "alice@example.com", ["bob@example.com"]) == 1
    assert logins == [b"app"]
    assert [subject_of(d.content) for d in recorder.deliveries] == ["secure"]


# -- configuration ------------------------------------------------------------------------------


def backend_with(**settings: Any) -> EmailBackend:
    with override_settings(**settings):
        return EmailBackend()


def test_settings_map_onto_the_pool_configuration() -> None:
    backend = backend_with(
        EMAIL_HOST="smtp.example.com",
        EMAIL_PORT="465",
        EMAIL_USE_SSL=True,
        EMAIL_HOST_USER="app",
        EMAIL_HOST_PASSWORD="secret",
        EMAIL_TIMEOUT=7,
        POOLEDMAIL={"max_size": 3},
    )
    config = backend.pool.config
    (host,) = config.hosts
    assert (host.hostname, host.port, host.tls) == ("smtp.example.com", 465, TLSMode.IMPLICIT)
    assert (host.username, host.password) == ("app", "secret")
    assert (config.connect_timeout, config.command_timeout, config.max_size) == (7.0, 7.0, 3)
    assert backend.pool.backend == "asyncio"
    # Arguments of get_connection() win over the settings, as with Django's SMTP backend.
    overridden = get_connection(host="other.example.com", port=2525, use_ssl=False, use_tls=True)
    (other,) = overridden.pool.config.hosts
    assert (other.hostname, other.port, other.tls) == ("other.example.com", 2525, TLSMode.STARTTLS)
    # A username without a password logs in to nothing, as with Django's SMTP backend.
    (anonymous,) = backend_with(EMAIL_HOST_USER="app").pool.config.hosts
    assert anonymous.username is None


def test_a_pooledmail_dict_with_hosts_is_the_whole_configuration() -> None:
    backend = backend_with(
        EMAIL_HOST="ignored.example.com",
        POOLEDMAIL={
            "backend": "trio",
            "hosts": [
                {"hostname": "mx1.example.com", "port": "587"},
                {"hostname": "mx2.example.com", "priority": 1},
            ],
            "acquire_timeout": "2.5",
        },
    )
    config = backend.pool.config
    assert [h.key for h in config.hosts] == ["mx1.example.com:587", "mx2.example.com:587"]
    assert config.acquire_timeout == 2.5
    assert backend.pool.backend == "trio"


def test_email_timeout_still_applies_beside_pooledmail_hosts() -> None:
    hosts = [{"hostname": "mx1.example.com"}]
    config = backend_with(EMAIL_TIMEOUT=7, POOLEDMAIL={"hosts": hosts}).pool.config
    assert (config.connect_timeout, config.command_timeout) == (7.0, 7.0)
    with override_settings(EMAIL_TIMEOUT=7, POOLEDMAIL={"hosts": hosts}):
        config = get_connection(timeout=3).pool.config
    assert (config.connect_timeout, config.command_timeout) == (3.0, 3.0)
    pooled = {"hosts": hosts, "connect_timeout": 4}
    config = backend_with(EMAIL_TIMEOUT=7, POOLEDMAIL=pooled).pool.config
    assert (config.connect_timeout, config.command_timeout) == (4.0, 7.0)


def test_email_timeout_gives_a_whole_send_three_blocking_operations() -> None:
    # Django's EMAIL_TIMEOUT bounds each blocking operation; a send is the connection, the
    # envelope's replies and the final reply: send_timeout is at least 3 x EMAIL_TIMEOUT, or a
    # slow final reply within EMAIL_TIMEOUT would be cut off at the 60 s default.
    assert backend_with(EMAIL_TIMEOUT=120).pool.config.send_timeout == 360.0
    assert backend_with(EMAIL_TIMEOUT="50").pool.config.send_timeout == 150.0
    # The default where it is the larger, and without EMAIL_TIMEOUT.
    assert backend_with(EMAIL_TIMEOUT=7).pool.config.send_timeout == 60.0
    assert backend_with(EMAIL_TIMEOUT=None).pool.config.send_timeout == 60.0
    with override_settings(EMAIL_TIMEOUT=7):
        assert get_connection(timeout=30).pool.config.send_timeout == 90.0
    hosts = [{"hostname": "mx1.example.com"}]
    config = backend_with(EMAIL_TIMEOUT=120, POOLEDMAIL={"hosts": hosts}).pool.config
    assert config.send_timeout == 360.0
    # POOLEDMAIL's own send_timeout wins, as for the other timeouts.
    pooled = {"send_timeout": 30}
    assert backend_with(EMAIL_TIMEOUT=120, POOLEDMAIL=pooled).pool.config.send_timeout == 30.0


@pytest.mark.parametrize(
    ("settings", "arguments", "named"),
    [
        ({"EMAIL_PORT": "smtp"}, {}, "EMAIL_PORT"),
        ({"EMAIL_PORT": 70000}, {}, "EMAIL_PORT"),
        ({}, {"port": "x"}, "port argument"),
        ({"EMAIL_TIMEOUT": -1}, {}, "EMAIL_TIMEOUT"),
        ({"EMAIL_USE_TLS": True, "EMAIL_USE_SSL": True}, {}, "EMAIL_USE_TLS/EMAIL_USE_SSL"),
        ({"EMAIL_HOST_USER": "u", "EMAIL_HOST_PASSWORD": "p"}, {}, "EMAIL_HOST_USER"),
        ({"POOLEDMAIL": {"max_sise": 3}}, {}, "POOLEDMAIL: max_sise"),
        (
            {"POOLEDMAIL": {"hosts": [{"hostname": "a", "port": "x"}]}},
            {},
            "POOLEDMAIL: hosts[0].port",
        ),
        ({"POOLEDMAIL": {"hosts": [{"hostname": "a"}]}}, {"host": "b"}, "host argument"),
        ({"POOLEDMAIL": {"backend": "curio"}}, {}, "POOLEDMAIL: backend"),
        ({"POOLEDMAIL": ["max_size", 3]}, {}, "POOLEDMAIL"),
        ({"EMAIL_SSL_KEYFILE": "/k.pem"}, {}, "EMAIL_SSL_KEYFILE"),
        ({"EMAIL_SSL_CERTFILE": "/nonexistent/cert.pem"}, {}, "EMAIL_SSL_CERTFILE"),
    ],
)
def test_a_wrong_setting_fails_at_construction_with_its_name(
    settings: dict[str, Any], arguments: dict[str, Any], named: str
) -> None:
    with override_settings(**settings), pytest.raises(ImproperlyConfigured) as caught:
        EmailBackend(**arguments)
    assert str(caught.value).startswith(named)


def test_the_trio_backend_without_trio_installed_is_an_improperly_configured_setting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Found by review: the blocking pool's ConfigError ("backend: 'trio' needs trio") went out
    # as itself, not as the ImproperlyConfigured naming the setting that django.md promises.
    import importlib.util

    find_spec = importlib.util.find_spec

    def without_trio(name: str, *args: Any) -> Any:
        return None if name == "trio" else find_spec(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", without_trio)
    with (
        override_settings(EMAIL_HOST="127.0.0.1", POOLEDMAIL={"backend": "trio"}),
        pytest.raises(ImproperlyConfigured) as caught,
    ):
        EmailBackend()
    assert str(caught.value).startswith("POOLEDMAIL: backend: ")
    assert "pooledmail[trio]" in str(caught.value)


def test_an_unknown_argument_is_refused_by_name() -> None:
    with pytest.raises(TypeError, match="use_starttls"):
        EmailBackend(use_starttls=True)


def test_no_password_appears_in_a_configuration_error() -> None:
    with (
        override_settings(EMAIL_HOST_USER="app", EMAIL_HOST_PASSWORD="hunter2-secret"),
        pytest.raises(ImproperlyConfigured) as caught,
    ):
        EmailBackend()
    assert "hunter2-secret" not in str(caught.value)


def test_the_shared_pool_closes_only_when_asked(pointed_at: Point) -> None:
    with smtpd() as (port, recorder), pointed_at(port):
        pool = get_connection().pool
        mail.send_mail("one", "Body.", "alice@example.com", ["bob@example.com"])
        pool.close()
        assert eventually(lambda: recorder.quits == 1)
        # A closed shared pool is replaced for the next backend.
        assert mail.send_mail("two", "Body.", "alice@example.com", ["bob@example.com"]) == 1
        get_connection().pool.close()
    assert recorder.sessions == 2


def test_an_invalid_address_raises_as_django_raises_it_even_silently(pointed_at: Point) -> None:
    with smtpd() as (port, recorder), pointed_at(port):
        with pytest.raises(ValueError, match="Invalid address"):
            mail.send_mail("bad", "Body.", "alice@example.com", ["a@b@example.com"])
        with pytest.raises(ValueError, match="Invalid address"):
            mail.send_mail("bad", "B.", "alice@example.com", ["@@"], fail_silently=True)
    assert recorder.sessions == 0
