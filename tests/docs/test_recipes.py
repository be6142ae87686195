"""The code in docs/guide/sync.md, docs/guide/django.md and the recipes of docs/guide/use-cases.md,
run as written.

Each block is taken from the markdown (`<!-- snippet: NAME -->` before a python block), so the
docs cannot drift from what works. Outcomes are judged by the test server's own record.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from pooledmail_anyio import BlockingSMTPPool, FailureKind, SendFailed, TLSMode
from tests.anyio.fakesmtp import DISCONNECT, Script
from tests.polling import eventually
from tests.sync.servers import fault_server, smtpd

ROOT = Path(__file__).resolve().parents[2]
SNIPPET = re.compile(r"<!-- snippet: ([\w-]+) -->\n```python\n(.*?)\n```", re.DOTALL)
# Every python block of these pages, with the test that runs it.
PAGES = {
    "sync.md": {"sync-basic", "sync-shared"},
    "django.md": {"django-settings", "django-pooledmail", "django-errors"},
    "use-cases.md": {
        "recipe-script",
        "recipe-flask-app",
        "recipe-flask-tests",
        "recipe-celery",
        "recipe-fastapi",
    },
}


def snippets(page: str) -> dict[str, str]:
    text = (ROOT / "docs" / "guide" / page).read_text()
    return dict(SNIPPET.findall(text))


def snippet(name: str) -> str:
    for page in PAGES:
        found = snippets(page).get(name)
        if found is not None:
            return found
    raise KeyError(name)


def test_every_python_block_of_these_pages_is_named_and_run() -> None:
    for page, names in PAGES.items():
        text = (ROOT / "docs" / "guide" / page).read_text()
        assert names <= set(snippets(page))
        if page == "use-cases.md":
            # The recipes for synchronous code; the earlier sections are fragments.
            text = text.split("## Synchronous code and frameworks", 1)[1]
        assert text.count("```python") == len(re.findall(r"<!-- snippet: [\w-]+ -->", text))


@pytest.fixture
def smtp_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """An aiosmtpd server, named by SMTP_HOST / SMTP_PORT / SMTP_TLS as the recipes read it."""
    with smtpd() as (port, recorder):
        monkeypatch.setenv("SMTP_HOST", "127.0.0.1")
        monkeypatch.setenv("SMTP_PORT", str(port))
        monkeypatch.setenv("SMTP_TLS", "none")
        yield recorder


def child_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}


def load_module(name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


# -- sync.md ------------------------------------------------------------------------------------


def test_sync_page(smtp_env: Any, capsys: pytest.CaptureFixture[str]) -> None:
    namespace: dict[str, Any] = {}
    exec(snippet("sync-basic"), namespace)
    assert capsys.readouterr().out == "('user@example.com',)\n"
    assert namespace["pool"].closed
    exec(snippet("sync-shared"), namespace)
    BlockingSMTPPool.shared(namespace["config"]).close()
    assert len(smtp_env.deliveries) == 1
    assert eventually(lambda: smtp_env.quits == 1)


# -- use-cases.md -------------------------------------------------------------------------------


def test_script_recipe(smtp_env: Any, tmp_path: Path) -> None:
    script = tmp_path / "send_reports.py"
    script.write_text(snippet("recipe-script"))
    done = subprocess.run(
        [sys.executable, str(script)], env=child_env(), capture_output=True, timeout=60
    )
    assert done.returncode == 0, done.stderr.decode()
    assert [d.rcpt_tos for d in smtp_env.deliveries] == [
        ("ann@example.com",),
        ("bob@example.com",),
        ("cid@example.com",),
    ]
    assert smtp_env.sessions == 1
    assert eventually(lambda: smtp_env.quits == 1)


def test_flask_recipe_runs_its_own_tests(smtp_env: Any, tmp_path: Path) -> None:
    (tmp_path / "app.py").write_text(snippet("recipe-flask-app"))
    (tmp_path / "test_app.py").write_text(snippet("recipe-flask-tests"))
    env = child_env()
    env["PYTHONPATH"] = os.pathsep.join([env["PYTHONPATH"], str(tmp_path)])
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_app.py"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout.decode() + done.stderr.decode()
    assert b"1 passed" in done.stdout
    assert [d.rcpt_tos for d in smtp_env.deliveries] == [("guest@example.com",)]
    # The fixture's teardown closed the pool: the server saw QUIT.
    assert eventually(lambda: smtp_env.quits == 1)


@pytest.mark.parametrize(
    ("script", "status"),
    [
        # Refused for good: the client must not be told to try again.
        (Script(rcpt="550 5.1.1 no such user"), 422),
        (Script(mail="451 4.7.1 greylisted"), 503),
    ],
)
def test_flask_recipe_answers_by_what_the_server_said(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, script: Script, status: int
) -> None:
    (tmp_path / "app.py").write_text(snippet("recipe-flask-app"))
    app_module = load_module("recipe_flask_app", tmp_path / "app.py")
    with fault_server(script) as server:
        app = app_module.create_app(
            {"SMTP_HOST": "127.0.0.1", "SMTP_PORT": server.port, "SMTP_TLS": "none"}
        )
        try:
            response = app.test_client().post("/invite", data={"email": "x@example.com"})
        finally:
            app.extensions["pooledmail"].close()
        assert server.messages == []
    assert response.status_code == status


@pytest.fixture
def celery_tasks(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[ModuleType]:
    monkeypatch.setenv("CELERY_BROKER_URL", "memory://")
    (tmp_path / "tasks.py").write_text(snippet("recipe-celery"))
    tasks = load_module("recipe_celery_tasks", tmp_path / "tasks.py")
    # Tasks run in the calling process, without a broker or a worker.
    tasks.app.conf.update(task_always_eager=True, task_eager_propagates=True)
    try:
        yield tasks
    finally:
        tasks.pool.close()
        sys.modules.pop("recipe_celery_tasks", None)


def test_celery_recipe_gives_each_worker_process_its_own_pool(
    smtp_env: Any, celery_tasks: ModuleType
) -> None:
    from celery.signals import worker_process_shutdown

    assert celery_tasks.send_welcome.delay("parent@example.com").get() == ["parent@example.com"]
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child leaves with os._exit
        code = 1
        try:
            os.close(read_end)
            accepted = celery_tasks.send_welcome.delay("child@example.com").get()
            created = celery_tasks.pool.statistics().created_total
            # What a prefork worker process does as it exits.
            worker_process_shutdown.send(sender=None, pid=os.getpid(), exitcode=0)
            report = {"accepted": accepted, "created": created}
            os.write(write_end, json.dumps(report).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    for _ in range(6000):
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        threading.Event().wait(0.01)
    else:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        pytest.fail("the child did not finish")
    with os.fdopen(read_end, "rb") as pipe:
        report = json.loads(pipe.read() or b"{}")
    assert os.waitstatus_to_exitcode(status) == 0
    assert report == {"accepted": ["child@example.com"], "created": 1}
    # The child's pool said QUIT on its own connection; the parent's is still in use.
    assert eventually(lambda: smtp_env.quits == 1)
    assert celery_tasks.send_welcome.delay("again@example.com").get() == ["again@example.com"]
    assert celery_tasks.pool.statistics().created_total == 1
    assert smtp_env.sessions == 2
    assert sorted(d.rcpt_tos[0] for d in smtp_env.deliveries) == [
        "again@example.com",
        "child@example.com",
        "parent@example.com",
    ]


def test_celery_recipe_retries_only_what_was_definitely_not_sent(
    monkeypatch: pytest.MonkeyPatch, celery_tasks: ModuleType
) -> None:
    busy = [2]  # the first two RCPTs (the send and the pool's own retry) are refused for now

    def rcpt(line: str) -> str:
        if busy[0]:
            busy[0] -= 1
            return "450 4.2.1 mailbox busy"
        return "250 2.1.5 ok"

    with fault_server(Script(rcpt=rcpt)) as server:
        pool = _repoint(celery_tasks, server.port, monkeypatch)
        # In eager mode Celery runs the retry at once, inside this call.
        celery_tasks.send_welcome.apply(args=("busy@example.com",), throw=False)
        pool.close()
        stored = server.messages
        rcpts = [c for conn in server.connections for c in conn.commands if c.startswith("RCPT")]
    # Two refusals (the send and the pool's own retry), then Celery's retry: stored once.
    assert len(rcpts) == 3
    assert len(stored) == 1

    with fault_server(Script(data_end=DISCONNECT)) as server:
        pool = _repoint(celery_tasks, server.port, monkeypatch)
        with pytest.raises(SendFailed) as caught:
            celery_tasks.send_welcome.delay("maybe@example.com")
        pool.close()
        assert len(server.messages) == 1
    assert caught.value.kind is FailureKind.UNKNOWN_AFTER_DATA


def test_celery_recipe_does_not_retry_a_permanent_refusal(
    monkeypatch: pytest.MonkeyPatch, celery_tasks: ModuleType
) -> None:
    # A 550 is definitely not accepted, but sending again will not cure it: no Celery retry.
    with fault_server(Script(rcpt="550 5.1.1 no such user")) as server:
        pool = _repoint(celery_tasks, server.port, monkeypatch)
        with pytest.raises(SendFailed) as caught:
            celery_tasks.send_welcome.delay("nobody@example.com")
        pool.close()
        rcpts = [c for conn in server.connections for c in conn.commands if c.startswith("RCPT")]
        stored = server.messages
    assert caught.value.kind is FailureKind.PERMANENT
    assert len(rcpts) == 1
    assert stored == []


def _repoint(tasks: ModuleType, port: int, monkeypatch: pytest.MonkeyPatch) -> BlockingSMTPPool:
    """Give the recipe's module a pool to another server, as its import would with that env."""
    from pooledmail_anyio import Host, PoolConfig

    pool = BlockingSMTPPool(PoolConfig([Host("127.0.0.1", port, tls="none")], max_size=2))
    monkeypatch.setattr(tasks, "pool", pool)
    return pool


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_fastapi_recipe_holds_one_pool_for_the_application(
    smtp_env: Any, tmp_path: Path, backend: str
) -> None:
    from fastapi.testclient import TestClient

    (tmp_path / "main.py").write_text(snippet("recipe-fastapi"))
    main = load_module("recipe_fastapi_main", tmp_path / "main.py")
    with TestClient(main.app, backend=backend) as client:
        for address in ["a@example.com", "b@example.com", "c@example.com"]:
            response = client.post("/invite", params={"email": address})
            assert response.status_code == 200
            assert response.json() == {"accepted": [address]}
        # The lifespan's pool is still open: one connection carried all three.
        assert smtp_env.quits == 0
    assert smtp_env.sessions == 1
    assert eventually(lambda: smtp_env.quits == 1)
    assert len(smtp_env.deliveries) == 3


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_fastapi_recipe_maps_failures_to_status_codes(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, backend: str
) -> None:
    from fastapi.testclient import TestClient

    (tmp_path / "main.py").write_text(snippet("recipe-fastapi"))
    for script, status, detail in [
        (Script(rcpt="550 5.1.1 no such user"), 422, "permanent"),
        (Script(mail="451 4.7.1 greylisted"), 503, "transient"),
        (Script(data_end=DISCONNECT), 502, "unknown_after_data"),
    ]:
        with fault_server(script) as server:
            monkeypatch.setenv("SMTP_HOST", "127.0.0.1")
            monkeypatch.setenv("SMTP_PORT", str(server.port))
            monkeypatch.setenv("SMTP_TLS", "none")
            main = load_module("recipe_fastapi_main", tmp_path / "main.py")
            with TestClient(main.app, backend=backend) as client:
                response = client.post("/invite", params={"email": "x@example.com"})
        assert (response.status_code, response.json()) == (status, {"detail": detail})


# -- django.md ----------------------------------------------------------------------------------


def settings_of(code: str) -> dict[str, Any]:
    namespace: dict[str, Any] = {}
    exec(code, namespace)
    return {name: value for name, value in namespace.items() if name.isupper()}


def test_django_settings_snippets(monkeypatch: pytest.MonkeyPatch) -> None:
    from django.test import override_settings

    from pooledmail_django import EmailBackend
    from tests.django_backend import configured  # noqa: F401

    monkeypatch.setenv("SMTP_PASSWORD", "pw")
    monkeypatch.setenv("SMTP_HOST", "relay.example.com")
    with override_settings(**settings_of(snippet("django-settings"))):
        backend = EmailBackend()
    config = backend.pool.config
    (host,) = config.hosts
    assert (host.key, host.tls, host.username) == ("relay.example.com:587", TLSMode.STARTTLS, "app")
    assert (config.connect_timeout, config.command_timeout) == (10.0, 10.0)
    assert (config.max_size, config.acquire_timeout) == (4, 5.0)

    with override_settings(**settings_of(snippet("django-pooledmail"))):
        backend = EmailBackend()
    config = backend.pool.config
    assert [(h.key, h.priority) for h in config.hosts] == [
        ("mx1.example.com:587", 0),
        ("mx2.example.com:587", 1),
    ]
    assert (config.max_size, config.send_timeout, backend.pool.backend) == (8, 30.0, "asyncio")


def test_django_error_handling_snippet() -> None:
    from django.core.mail import get_connection
    from django.test import override_settings

    from tests.django_backend import configured  # noqa: F401

    namespace: dict[str, Any] = {}
    exec(snippet("django-errors"), namespace)
    notify = namespace["notify"]

    def outcome(port: int) -> str:
        with override_settings(
            EMAIL_BACKEND="pooledmail_django.EmailBackend",
            EMAIL_HOST="127.0.0.1",
            EMAIL_PORT=port,
            POOLEDMAIL={"max_retries": 0},
        ):
            try:
                return str(notify("customer@example.com"))
            finally:
                get_connection().pool.close()

    with smtpd() as (port, recorder):
        assert outcome(port) == "sent"
        assert len(recorder.deliveries) == 1
    with fault_server(Script(rcpt="550 5.1.1 no such user")) as server:
        assert outcome(server.port) == "not sent"
        assert server.messages == []
    with fault_server(Script(data_end=DISCONNECT)) as server:
        assert outcome(server.port) == "maybe sent: record it, do not resend blindly"
        assert len(server.messages) == 1
