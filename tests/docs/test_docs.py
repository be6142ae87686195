"""The docs hold what the code does: every Python block of README.md and docs/ runs here (or in
test_recipes.py), the links resolve, the state diagrams are the transition tables, and the tables
of metrics and exit statuses are the code's own. Outcomes are judged by the servers' records."""

from __future__ import annotations

import importlib.util
import os
import re
import ssl
import subprocess
import sys
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import trustme
from anyio.streams.tls import TLSStream

import anyio
from pooledmail_anyio import Host, PoolConfig, SMTPPool, TLSMode
from pooledmail_anyio._cli import EXIT_CODES
from pooledmail_anyio._metrics import INSTRUMENTS
from pooledmail_anyio._ports import free_port
from pooledmail_anyio.testing import LocalSMTPServer
from tests.anyio.fakesmtp import DISCONNECT, FakeSMTPServer, Script
from tests.anyio.tokenserver import TokenServer
from tests.servers import PostfixServer
from tests.servers.fixtures import postfix_instance

from .test_recipes import PAGES as RECIPE_PAGES

ROOT = Path(__file__).resolve().parents[2]
SNIPPET = re.compile(r"<!-- snippet: ([\w-]+) -->\n```python\n(.*?)\n```", re.DOTALL)
# The snippets this module runs; test_recipes.py runs the others.
RUN_HERE = {
    "readme-asyncio",
    "readme-trio",
    "readme-failures",
    "operations-check",
    "options-token-provider",
    "options-from-mapping",
    "providers-gmail",
    "providers-microsoft",
    "providers-ses",
    "providers-relay",
    "providers-postfix",
    "use-case-one-relay",
    "use-case-backup",
    "use-case-never-twice",
    "failures-refused-recipients",
    "use-case-tests",
    "protocol-setup-loop",
    "scaling-office365",
}


def pages() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def all_snippets() -> dict[str, str]:
    found: dict[str, str] = {}
    for page in pages():
        for name, code in SNIPPET.findall(page.read_text()):
            assert name not in found, f"snippet {name} appears twice"
            found[name] = code
    return found


def snippet(name: str) -> str:
    return all_snippets()[name]


def run_snippet(name: str) -> dict[str, Any]:
    namespace: dict[str, Any] = {"__name__": f"snippet_{name.replace('-', '_')}"}
    exec(compile(snippet(name), f"<snippet {name}>", "exec"), namespace)
    return namespace


def child_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}


def run_python(*args: str, cwd: Path | None = None, timeout: float = 120) -> Any:
    """`python ARGS` in a child with this checkout's code on its path; its output as text."""
    return subprocess.run(
        [sys.executable, *args],
        cwd=cwd,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


# -- the pages as a whole ---------------------------------------------------------------------


def test_every_python_block_in_the_readme_and_docs_is_named_and_run() -> None:
    for page in pages():
        text = page.read_text()
        blocks = text.count("```python")
        named = len(SNIPPET.findall(text))
        assert blocks == named, f"{page.relative_to(ROOT)}: a python block without a snippet name"
    recipes = set().union(*RECIPE_PAGES.values())
    assert set(all_snippets()) == RUN_HERE | recipes


def test_every_relative_link_in_the_docs_resolves() -> None:
    for page in pages():
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if "://" in target or target.startswith("mailto:"):
                continue
            assert (page.parent / target).exists(), f"{page.relative_to(ROOT)} links {target}"


def headings(page: Path) -> set[str]:
    """The anchors a markdown renderer gives the page's headings (lower case, punctuation but
    `-` and `_` dropped, spaces as `-`); headings inside code blocks are not headings."""
    text = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.DOTALL | re.MULTILINE)
    titles = re.findall(r"^#+ (.*)$", text, re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", title.strip().lower()).replace(" ", "-") for title in titles}


def test_every_link_to_a_heading_names_a_heading_that_exists() -> None:
    for page in pages():
        for target, anchor in re.findall(r"\]\(([^)#\s]*)#([^)\s]+)\)", page.read_text()):
            if "://" in target:
                continue
            linked = (page.parent / target).resolve() if target else page
            assert anchor in headings(linked), f"{page.relative_to(ROOT)} links {target}#{anchor}"


def _diagrams() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "state_diagrams", ROOT / "scripts" / "state_diagrams.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_state_diagrams_are_drawn_from_the_transition_tables() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "state_diagrams.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout


def test_a_changed_table_makes_the_check_fail(monkeypatch: pytest.MonkeyPatch) -> None:
    diagrams = _diagrams()
    assert diagrams.stale() == []
    slots = diagrams.SlotState
    changed = {state: dict(events) for state, events in diagrams.SLOT_TRANSITIONS.items()}
    changed[slots.IDLE][diagrams.SlotEvent.CONNECTED] = slots.LEASED
    monkeypatch.setattr(diagrams, "SLOT_TRANSITIONS", changed)
    assert diagrams.stale() == [ROOT / "docs" / "internals" / "pool.md"]


def test_the_metrics_table_is_the_instruments_of_the_code() -> None:
    text = (ROOT / "docs" / "guide" / "operations.md").read_text()
    rows = re.findall(r"^\| `(pooledmail\.[\w.]+)` \| (\w+) \| `([^`]+)` \|", text, re.M)
    assert {name: (kind, unit) for name, kind, unit in rows} == {
        name: (kind, unit) for name, (kind, unit, _) in INSTRUMENTS.items()
    }


def test_the_metrics_table_gives_each_instrument_the_attributes_it_records() -> None:
    text = (ROOT / "docs" / "guide" / "operations.md").read_text()
    rows = re.findall(r"^\| `(pooledmail\.[\w.]+)` \| \w+ \| `[^`]+` \| ([^|]+) \|", text, re.M)
    # The table writes the two attributes every instrument has as "pool" and "host".
    short = {"pool": "pooledmail.pool.name", "host": "pooledmail.host"}
    documented = {
        name: tuple(short.get(a, a.strip("`")) for a in attributes.strip().split(", "))
        for name, attributes in rows
    }
    assert documented == {name: attributes for name, (_, _, attributes) in INSTRUMENTS.items()}


def test_the_exit_status_table_is_the_code_s() -> None:
    text = (ROOT / "docs" / "guide" / "operations.md").read_text()
    table = text.split("<!-- exit-codes -->", 1)[1].split("\n\n", 1)[0]
    documented = dict(re.findall(r"^\| (\d+) \| ([A-Z_]+) \|$", table, re.M))
    assert {int(code): kind for code, kind in documented.items()} == {
        code: kind.name for kind, code in EXIT_CODES.items()
    }


# -- README.md --------------------------------------------------------------------------------


SHELL_BLOCK = re.compile(r"^```sh\n(.*?)\n```", re.DOTALL | re.MULTILINE)
# docs/benchmarks.md's commands are the benchmark itself, which runs only in bench/, never in a
# test; every other page's shell commands are checked here.
SHELL_PAGES_LEFT_OUT = {ROOT / "docs" / "benchmarks.md"}
# The environment a page asks for first; the tests run in one that has it already.
SETUP = {"python -m venv .venv", ". .venv/bin/activate"}


def shell_commands() -> list[str]:
    commands = []
    for page in pages():
        if page in SHELL_PAGES_LEFT_OUT:
            continue
        for block in SHELL_BLOCK.findall(page.read_text()):
            for line in block.splitlines():
                line = line.split("  #", 1)[0].strip()
                commands += [command.strip() for command in line.split("&&") if command.strip()]
    return commands


def extras() -> dict[str, str]:
    text = (ROOT / "pyproject.toml").read_text()
    section = text.split("[project.optional-dependencies]", 1)[1].split("\n[", 1)[0]
    return dict(re.findall(r"^(\w+) = (\[.*?\])$", section, re.M | re.DOTALL))


def test_every_shell_command_of_the_docs_is_known_here() -> None:
    known = re.compile(
        r'python -m pip install (-e )?"\.\[[\w,]+\]"'
        r"|pooledmail demo"
        r"|python -m coverage run -m pytest -q|python scripts/coverage_gate\.py"
        r"|python bench/harness\.py --quick"
    )
    for command in shell_commands():
        assert command in SETUP or known.fullmatch(command), f"no test runs `{command}`"


def test_the_extras_the_docs_install_exist_and_bring_what_they_promise() -> None:
    declared = extras()
    for command in shell_commands():
        for names in re.findall(r'"\.\[([\w,]+)\]"', command):
            for name in names.split(","):
                assert name in declared, f"`{command}`: no extra {name!r} in pyproject.toml"
    # "the `demo` extra brings the local test server the examples use, and trio"
    assert "aiosmtpd" in declared["demo"]
    assert "trio" in declared["demo"]


def test_pooledmail_demo_runs_as_the_readme_gives_it(tmp_path: Path) -> None:
    assert "pooledmail demo" in shell_commands()
    # The `pooledmail` script is `python -m pooledmail_anyio`: both call the command's main().
    scripts = (ROOT / "pyproject.toml").read_text().split("[project.scripts]", 1)[1]
    assert re.search(r'^pooledmail = "pooledmail_anyio\._cli:main"$', scripts, re.M)
    # (`demo --backend trio` runs in tests/anyio/test_cli.py, with fewer messages.)
    done = run_python("-m", "pooledmail_anyio", "demo", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    # "1,000 messages through a pool to an SMTP server embedded on 127.0.0.1"
    assert re.search(r"^server received +1000$", done.stdout, re.M), done.stdout
    assert re.search(r"^backend +asyncio$", done.stdout, re.M)


def test_the_readme_test_command_is_the_one_ci_runs() -> None:
    # .ci/run takes the line after "Install and run the tests" from README.md and runs it.
    ci = (ROOT / ".ci" / "run").read_text()
    awk = re.search(r"test_command=\$\(awk '([^']+)' README\.md\)", ci)
    assert awk is not None
    assert 'eval "$test_command"' in ci
    done = subprocess.run(
        ["awk", awk.group(1), "README.md"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    taken = done.stdout.strip()
    assert taken == (
        'python -m pip install -e ".[test]" && python -m coverage run -m pytest -q'
        " && python scripts/coverage_gate.py"
    )
    assert (ROOT / "scripts" / "coverage_gate.py").is_file()


def test_the_benchmark_command_of_the_readme_names_flags_the_harness_has() -> None:
    assert "python bench/harness.py --quick" in shell_commands()
    done = run_python(str(ROOT / "bench" / "harness.py"), "--help", timeout=60)
    assert done.returncode == 0, done.stderr
    assert "--quick" in done.stdout


@pytest.mark.parametrize("name", ["readme-asyncio", "readme-trio"])
def test_the_quick_starts_run_as_pasted(name: str, tmp_path: Path) -> None:
    program = tmp_path / "quickstart.py"
    program.write_text(snippet(name))
    done = run_python(str(program), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    if name == "readme-asyncio":
        assert lines[0].startswith("accepted for ('ann@example.com',) by 127.0.0.1:")
        assert lines[2] == "connections opened: 1"
        assert lines[3] == "the server received 2 messages"
    else:
        assert lines == ["the server received 3 messages"]


def message(to: str = "bob@example.com") -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = "alice@example.com"
    msg["To"] = to
    msg["Subject"] = "docs"
    msg.set_content("Hello.\n")
    return msg


def local(port: int) -> PoolConfig:
    return PoolConfig([Host("127.0.0.1", port, tls="none")], max_retries=0)


@pytest.mark.anyio
async def test_the_readme_failure_handling_says_what_happened() -> None:
    deliver = run_snippet("readme-failures")["deliver"]
    refusing = FakeSMTPServer(Script(rcpt="550 5.1.1 no such user"))
    vanishing = FakeSMTPServer(Script(data_end=DISCONNECT))
    greylisting = FakeSMTPServer(Script(mail="451 4.7.1 greylisted"))
    good = FakeSMTPServer(Script())
    async with refusing.running(), vanishing.running(), greylisting.running(), good.running():
        outcomes = []
        for server in (refusing, vanishing, greylisting, good):
            async with SMTPPool(local(server.port)) as pool:
                outcomes.append(await deliver(pool, message()))
    assert outcomes[0] == "refused: 550 5.1.1 no such user"
    assert outcomes[1].startswith("unknown: <")
    assert vanishing.received == 1  # the server has the message the caller may not resend
    assert outcomes[2] == "later: TRANSIENT: server said 451 4.7.1 greylisted"
    assert outcomes[3].startswith("sent: <")
    assert len(good.messages) == 1


# -- docs/guide/operations.md -----------------------------------------------------------------


@pytest.mark.anyio
async def test_failing_fast_at_start_up() -> None:
    run_with_mail = run_snippet("operations-check")["run_with_mail"]
    ran: list[SMTPPool] = []

    async def application(pool: SMTPPool) -> None:
        ran.append(pool)

    server = FakeSMTPServer(Script())
    async with server.running():
        await run_with_mail(local(server.port), application)
    assert len(ran) == 1
    dead = free_port()
    with pytest.raises(SystemExit) as stopped:
        await run_with_mail(local(dead), application)
    assert f"127.0.0.1:{dead}: CONNECT_FAILED during CONNECT" in str(stopped.value)
    assert len(ran) == 1


# -- docs/guide/options.md --------------------------------------------------------------------


@pytest.mark.anyio
async def test_the_token_cache_refreshes_a_refused_token_and_the_pool_sends() -> None:
    namespace = run_snippet("options-token-provider")
    issued = iter(["expired-token", "fresh-token"])
    fetched: list[str] = []

    async def fetch() -> str:
        fetched.append(next(issued))
        return fetched[-1]

    host = namespace["gmail_host"]("app@gmail.com", fetch)
    assert host.hostname == "smtp.gmail.com"
    assert host.tls is TLSMode.STARTTLS
    server = TokenServer({"fresh-token"})
    async with server.running():
        cache = namespace["TokenCache"](fetch)
        config = PoolConfig(
            [
                Host(
                    "127.0.0.1",
                    server.port,
                    tls="none",
                    allow_plaintext_auth=True,
                    username="app@gmail.com",
                    oauth2_token_provider=cache,
                )
            ],
            max_messages_per_connection=1,
        )
        async with SMTPPool(config) as pool:
            await pool.send(message())
            await pool.send(message())  # a second connection: the cached token, no fetch
    assert server.tokens_seen == ["expired-token", "fresh-token", "fresh-token"]
    assert fetched == ["expired-token", "fresh-token"]
    assert len(server.messages) == 2


def test_the_mapping_example_builds_its_config(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SMTP_PASSWORD", "from-the-environment")
    monkeypatch.delenv("SMTP_POOL_SIZE", raising=False)
    config = run_snippet("options-from-mapping")["config"]
    assert [h.key for h in config.hosts] == ["smtp.example.com:587", "backup.example.net:587"]
    assert config.hosts[0].password == "from-the-environment"
    assert config.hosts[1].priority == 1
    assert config.max_size == 8
    assert config.idle_timeout is None


# -- docs/guide/providers.md ------------------------------------------------------------------


@pytest.fixture
def provider_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("SES_SMTP_USERNAME", "SES_SMTP_PASSWORD", "SENDGRID_API_KEY"):
        monkeypatch.setenv(name, f"{name.lower()}-value")


@pytest.mark.parametrize(
    ("name", "variable", "key", "tls", "auth"),
    [
        ("providers-gmail", "gmail", "smtp.gmail.com:587", TLSMode.STARTTLS, "provider"),
        (
            "providers-microsoft",
            "microsoft_365",
            "smtp.office365.com:587",
            TLSMode.STARTTLS,
            "provider",
        ),
        (
            "providers-ses",
            "ses",
            "email-smtp.eu-west-1.amazonaws.com:587",
            TLSMode.STARTTLS,
            "password",
        ),
        ("providers-relay", "sendgrid", "smtp.sendgrid.net:587", TLSMode.STARTTLS, "password"),
        ("providers-postfix", "local_postfix", "127.0.0.1:25", TLSMode.NONE, None),
    ],
)
def test_each_provider_example_builds_a_valid_config(
    name: str, variable: str, key: str, tls: TLSMode, auth: str | None, provider_env: None
) -> None:
    config = run_snippet(name)[variable]
    (host,) = config.hosts
    assert host.key == key
    assert host.tls is tls
    if auth == "provider":
        token = anyio.run(host.oauth2_token_provider, None)
        assert isinstance(token, str)
        assert token
    elif auth == "password":
        assert host.password
    else:
        assert host.username is None
    if name == "providers-relay":
        assert host.username == "apikey"
        assert config.max_messages_per_connection == 5000
    if name == "providers-microsoft":
        assert config.max_size == 1


# -- docs/guide/use-cases.md ------------------------------------------------------------------


@pytest.mark.anyio
async def test_one_relay_for_a_web_application() -> None:
    namespace = run_snippet("use-case-one-relay")
    config = namespace["relay_config"]("s3cret")
    assert config.max_size == 4
    assert config.acquire_timeout == 5.0
    assert config.send_timeout == 20.0
    assert config.hosts[0].password == "s3cret"
    with LocalSMTPServer() as server:
        local_config = PoolConfig([Host("127.0.0.1", server.port, tls="none")], max_size=4)
        await namespace["serve"](local_config, [message(f"u{n}@example.com") for n in range(10)])
    assert len(server.messages) == 10


def test_a_primary_and_a_backup() -> None:
    config = run_snippet("use-case-backup")["failover_config"]("s3cret")
    assert [(h.key, h.priority) for h in config.hosts] == [
        ("mx1.example:587", 0),
        ("mx2.example:587", 1),
    ]


@pytest.mark.anyio
async def test_never_sending_twice_records_each_outcome() -> None:
    send_once = run_snippet("use-case-never-twice")["send_once"]
    vanishing = FakeSMTPServer(Script(data_end=DISCONNECT))
    greylisting = FakeSMTPServer(Script(mail="451 4.7.1 greylisted"))
    refusing = FakeSMTPServer(Script(rcpt="550 5.1.1 no such user"))
    locked = FakeSMTPServer(
        Script(
            extensions=("PIPELINING", "AUTH PLAIN"),
            auth="535 5.7.8 Authentication credentials invalid",
        )
    )
    good = FakeSMTPServer(Script())
    servers = (vanishing, greylisting, refusing, locked, good)
    outcomes: list[str] = []
    async with (
        vanishing.running(),
        greylisting.running(),
        refusing.running(),
        locked.running(),
        good.running(),
    ):
        for server in servers:
            ledger: dict[str, str] = {}
            config = local(server.port)
            if server is locked:
                config = PoolConfig(
                    [
                        Host(
                            "127.0.0.1",
                            server.port,
                            tls="none",
                            username="app",
                            password="wrong",
                            allow_plaintext_auth=True,
                        )
                    ],
                    max_retries=0,
                )
            async with SMTPPool(config) as pool:
                await send_once(pool, message(), ledger)
            (outcome,) = ledger.values()
            outcomes.append(outcome)
    assert outcomes == ["unknown", "retry later", "refused", "held: fix the credentials", "sent"]
    # Judged by what each server stored: only the vanishing one may have it, the good one has it.
    assert vanishing.received == 1
    assert greylisting.messages == refusing.messages == locked.messages == []
    assert len(good.messages) == 1


@pytest.fixture(scope="module")
def limited_postfix(ca: trustme.CA) -> Iterator[PostfixServer]:
    """A private Postfix that takes at most 2 recipients a message: 452 4.5.3 to the others."""
    with postfix_instance(ca, main_cf={"smtpd_recipient_limit": "2"}) as server:
        yield server


@pytest.mark.anyio
async def test_sending_to_everyone_sends_again_to_the_recipients_refused_for_now(
    limited_postfix: PostfixServer, client_tls: ssl.SSLContext
) -> None:
    send_to_everyone = run_snippet("failures-refused-recipients")["send_to_everyone"]
    recipients = [f"rcpt{number}@example.net" for number in range(5)]
    host = Host(
        limited_postfix.host,
        limited_postfix.port,
        tls="starttls",
        username=limited_postfix.username,
        password=limited_postfix.password,
    )
    everyone, short = EmailMessage(), EmailMessage()
    for message in (everyone, short):
        message["From"] = "alice@example.com"
        message["To"] = ", ".join(recipients)
        message["Subject"] = "to five"
        message.set_content("Hello, all five.")
    async with SMTPPool(PoolConfig([host], max_size=1), ssl_context=client_tls) as pool:
        fate = await send_to_everyone(pool, everyone)
        # Two sends only: the fifth recipient is still refused for now.
        fate_short = await send_to_everyone(pool, short, rounds=2)
        statistics = pool.send_statistics()
    assert fate == dict.fromkeys(recipients, "sent")
    assert fate_short == {
        **dict.fromkeys(recipients[:4], "sent"),
        recipients[4]: "refused: 452 4.5.3 Error: too many recipients",
    }
    assert statistics.accepted == 5
    # Each send that left someone out: two of each message's (the third of the first had none).
    assert statistics.partly_refused == 4
    # Judged by Postfix's queue (shared by both backends' runs): every send carried the same
    # message (one Message-ID), and each recipient it reported sent is held once, no one else.
    held: dict[str, list[str]] = {}
    for record in limited_postfix.stored():
        held.setdefault(str(record.message_id), []).extend(record.recipients)
    assert sorted(held[everyone["Message-ID"]]) == recipients
    assert sorted(held[short["Message-ID"]]) == recipients[:4]


@pytest.mark.anyio
async def test_every_round_of_sending_to_everyone_is_the_same_message_without_bcc(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The pool's clock moves a minute between sends: a send that writes its own Date would give
    # the later round another Date than the first, so it would not be the same message.
    import datetime
    import types
    from email import message_from_bytes
    from email.policy import SMTP

    from pooledmail_anyio import _pool
    from tests.anyio.test_partly_refused import LimitingHandler

    start = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)
    minutes = iter(range(60))

    class Moving(datetime.datetime):
        @classmethod
        def now(cls, tz: Any = None) -> Any:
            return start + datetime.timedelta(minutes=next(minutes))

    monkeypatch.setattr(_pool, "datetime", types.SimpleNamespace(datetime=Moving))
    send_to_everyone = run_snippet("failures-refused-recipients")["send_to_everyone"]
    from aiosmtpd.controller import Controller

    handler = LimitingHandler()  # 2 recipients a transaction, 452 to the others
    controller = Controller(handler, hostname="127.0.0.1", port=free_port())
    controller.start()
    try:
        message = EmailMessage()
        message["From"] = "alice@example.com"
        message["To"] = "one@example.net, two@example.net"
        message["Bcc"] = "hidden@example.net"  # the third: refused for now by the first round
        message["Subject"] = "to three"
        message.set_content("Hello.")
        config = PoolConfig([Host("127.0.0.1", controller.port, tls="none")], max_size=1)
        async with SMTPPool(config) as pool:
            fate = await send_to_everyone(pool, message)
    finally:
        controller.stop()
    everyone = ["one@example.net", "two@example.net", "hidden@example.net"]
    assert fate == dict.fromkeys(everyone, "sent")
    # Judged by what the server stored: two transactions, each recipient once, one message.
    assert [recipient for e in handler.envelopes for recipient in e.rcpt_tos] == everyone
    stored = [message_from_bytes(e.original_content, policy=SMTP) for e in handler.envelopes]
    assert len({(m["Message-ID"], m["Date"]) for m in stored}) == 1
    assert all(m["Bcc"] is None for m in stored)
    # What the docs say the recipe does to the caller's message: the first send's Message-ID.
    assert message["Message-ID"] == stored[0]["Message-ID"]


@pytest.mark.anyio
async def test_the_example_test_of_your_own_code_passes() -> None:
    await run_snippet("use-case-tests")["test_the_welcome_mail_goes_to_the_new_user"]()


# -- docs/internals/protocol.md ---------------------------------------------------------------


@pytest.mark.anyio
async def test_the_setup_loop_of_the_protocol_page_sets_a_session_up(
    server_tls: ssl.SSLContext, client_tls: ssl.SSLContext
) -> None:
    set_up = run_snippet("protocol-setup-loop")["set_up"]
    server = FakeSMTPServer(
        Script(extensions=("PIPELINING", "STARTTLS", "AUTH PLAIN"), tls_context=server_tls)
    )

    async def upgrade(stream: Any) -> Any:
        return await TLSStream.wrap(stream, hostname="127.0.0.1", ssl_context=client_tls)

    async with server.running():
        stream = await anyio.connect_tcp("127.0.0.1", server.port)
        async with stream:
            result = await set_up(stream, upgrade)
    assert result.ok
    assert server.connections[0].commands[:4] == [
        "EHLO client.example",
        "STARTTLS",
        "EHLO client.example",
        "AUTH",
    ]


def test_scaling_office365_builds_a_budget_for_four_workers() -> None:
    from pooledmail_anyio import SharedBudget

    namespace: dict[str, Any] = {
        "REDIS_URL": "redis://:s3cret@redis.internal:6379/0",
        "SMTP_PASSWORD": "app-password",
    }
    exec(compile(snippet("scaling-office365"), "<snippet scaling-office365>", "exec"), namespace)
    config = namespace["config"]
    assert isinstance(config, PoolConfig)
    (host,) = config.hosts
    budget = host.budget
    assert isinstance(budget, SharedBudget)
    assert (budget.max_connections, budget.max_messages_per_second) == (3, 0.5)
    assert (budget.on_store_failure, budget.local_share) == ("local", 0.25)
    # The Redis password never shows.
    assert "s3cret" not in repr(config)
