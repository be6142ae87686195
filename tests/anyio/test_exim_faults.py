"""Verdicts under faults, judged by a real Exim 4's spool, on asyncio and trio.

A transaction is broken at known points of a real Exim session: its session process is killed
(SIGKILL) while Exim holds the 354 to DATA (the MAIL and RCPT replies sent), in the middle of a
large body (BDAT, and DATA with CHUNKING off), and after the whole message arrived but before the
final reply (a `data` ACL that logs a marker, then delays); the final reply comes later than
`command_timeout`; the `data` ACL refuses the message after its body. Every verdict is compared
with Exim's spool (`-H` files, the record of what it accepted): "definitely not accepted" must
mean no `-H` file, "accepted" exactly one, and UNKNOWN_AFTER_DATA is allowed only once the
terminator was handed over. After each fault the next send must be stored once, on a fresh
connection when the session broke (the main log names each line's session process).

Synchronization is on Exim's own evidence, never on a sleep: the marker an ACL writes to the main
log (with the session's pid) and the `-D` file Exim writes the body into as it reads it. The
ACL's behaviour is chosen by the recipient's local part, so one Exim per CHUNKING setting serves
the module.
"""

from __future__ import annotations

import os
import re
import signal
import ssl
from collections.abc import Callable, Iterator
from email.utils import make_msgid
from pathlib import Path

import pytest
import trustme

import anyio
from pooledmail_anyio import FailureKind, PoolConfig, SendFailed, SendResult, SMTPPool, Stage
from tests.servers import EximServer
from tests.servers.fixtures import exim_instance

from .mta import starttls_host

pytestmark = pytest.mark.anyio

Outcome = SendResult | SendFailed

# A whole test's bound: every wait below is far shorter, and nothing may hang.
_TEST_BOUND = 20.0
# The large body: far more than the loopback socket buffers can hold while Exim is stopped.
_LARGE_BODY = 16 * 1024 * 1024

# The ACLs (Exim's syntax), keyed by the recipient's local part. `logwrite` puts a marker in the
# main log just before the delay, so a test knows where the session is; the 30 s delays are cut
# short by the kill.
_ACLS = {
    "mail": "warn logwrite = pooledmail-mail port=$sender_host_port\naccept",
    "predata": (
        "warn condition = ${if match{$recipients}{hold-354@}}\n"
        "  logwrite = pooledmail-hold-354\n"
        "  delay = 30s\n"
        "accept"
    ),
    "data": (
        "warn condition = ${if match{$recipients}{hold-final@}}\n"
        "  logwrite = pooledmail-hold-final\n"
        "  delay = 30s\n"
        "warn condition = ${if match{$recipients}{late-final@}}\n"
        "  logwrite = pooledmail-late-final\n"
        "  delay = 2s\n"
        "deny condition = ${if match{$recipients}{refuse@}}\n"
        "  message = refused by the test's data ACL\n"
        "defer condition = ${if match{$recipients}{defer@}}\n"
        "  message = deferred by the test's data ACL\n"
        "accept"
    ),
}


@pytest.fixture(scope="module", params=[True, False], ids=["bdat", "data"])
def exim(request: pytest.FixtureRequest, ca: trustme.CA) -> Iterator[EximServer]:
    """One Exim per CHUNKING setting: with it clients send BDAT, without it DATA."""
    with exim_instance(
        ca, chunking=request.param, acls=_ACLS, message_size_limit=4 * _LARGE_BODY
    ) as server:
        yield server


def pool_for(exim: EximServer, client_tls: ssl.SSLContext, **options: float) -> SMTPPool:
    # No retry unless asked: each verdict is about the one attempt the fault broke.
    options.setdefault("max_retries", 0)
    config = PoolConfig([starttls_host(exim)], max_size=1, **options)  # type: ignore[arg-type]
    return SMTPPool(config, ssl_context=client_tls)


def raw_message(body: bytes = b"Hello.\r\n") -> tuple[str, bytes]:
    message_id = make_msgid(domain="pooledmail.test")
    head = (
        "From: alice@example.com\r\nTo: someone@example.net\r\n"
        f"Subject: pooledmail under faults\r\nMessage-ID: {message_id}\r\n\r\n"
    )
    return message_id, head.encode() + body


async def send_capturing(pool: SMTPPool, data: bytes, recipient: str) -> Outcome:
    try:
        return await pool.send_raw(data, sender="alice@example.com", recipients=[recipient])
    except SendFailed as failure:
        return failure


def copies(exim: EximServer, message_id: str) -> int:
    return sum(record.message_id == message_id for record in exim.stored())


def assert_verdict_agrees_with_the_spool(
    outcome: Outcome, exim: EximServer, message_id: str
) -> None:
    """The rule every test holds: the verdict never contradicts what Exim stored."""
    stored = copies(exim, message_id)
    assert stored <= 1, f"{message_id} stored {stored} times"
    if isinstance(outcome, SendResult):
        assert stored == 1, f"accepted, but Exim's spool has no {message_id}"
    elif outcome.definitely_not_accepted:
        assert stored == 0, f"'definitely not accepted', but Exim stored {message_id}: {outcome}"
    else:
        assert outcome.kind is FailureKind.UNKNOWN_AFTER_DATA, outcome


_LINE_PID = re.compile(r"\[(\d+)\] ")


def pids_logging(exim: EximServer, since: int, text: str) -> list[int]:
    """The session processes that wrote a main-log line holding `text` after offset `since`."""
    pids = []
    for line in exim.log_text(since).splitlines():
        found = _LINE_PID.search(line)
        if text in line and found is not None:
            pids.append(int(found[1]))
    return pids


async def wait_for(check: Callable[[], object], what: str, exim: EximServer) -> object:
    """Poll `check` until it returns something true; fail with Exim's log after 10 s."""
    with anyio.move_on_after(10):
        while not (found := check()):  # noqa: ASYNC110 (Exim, another process, changes it)
            await anyio.sleep(0.005)
        return found
    pytest.fail(f"Exim never showed {what}\n{exim.log_tail(30)}")


async def session_pid_at(exim: EximServer, since: int, marker: str) -> int:
    found = await wait_for(lambda: pids_logging(exim, since, marker), marker, exim)
    assert isinstance(found, list)
    (pid,) = found
    return int(pid)


def kill(pid: int, how: signal.Signals = signal.SIGKILL) -> None:
    os.kill(pid, how)


async def assert_next_send_is_stored_once_on_a_fresh_connection(
    pool: SMTPPool, exim: EximServer, broken_pid: int
) -> None:
    """The broken session is gone from the pool: the next message goes on a new session."""
    since = exim.log_position()
    message_id, data = raw_message()
    outcome = await send_capturing(pool, data, "after@example.net")
    assert isinstance(outcome, SendResult), outcome
    assert copies(exim, message_id) == 1
    (pid,) = pids_logging(exim, since, "pooledmail-mail")
    assert pid != broken_pid
    assert pool.statistics().created_total == 2


async def run_until_killed(
    pool: SMTPPool, exim: EximServer, data: bytes, recipient: str, marker: str
) -> tuple[Outcome, int]:
    """Send, and SIGKILL the session process as soon as it logged `marker`."""
    since = exim.log_position()
    outcomes: list[Outcome] = []

    async def send() -> None:
        outcomes.append(await send_capturing(pool, data, recipient))

    async with anyio.create_task_group() as tg:
        tg.start_soon(send)
        pid = await session_pid_at(exim, since, marker)
        kill(pid)
    (outcome,) = outcomes
    return outcome, pid


@pytest.fixture(scope="module")
def lockstep_exim(ca: trustme.CA) -> Iterator[EximServer]:
    """An Exim without PIPELINING and CHUNKING: the client waits for each reply, then DATA."""
    with exim_instance(ca, chunking=False, pipelining=False, acls=_ACLS) as server:
        yield server


async def assert_a_kill_before_354_is_transient_at(
    stage: Stage, exim: EximServer, client_tls: ssl.SSLContext
) -> None:
    """Exim's session process, held by its predata ACL before the 354, is killed: the send is
    TRANSIENT at `stage`, definitely not accepted, nothing is in the spool, and the next send is
    stored once on a fresh connection."""
    with anyio.fail_after(_TEST_BOUND):
        async with pool_for(exim, client_tls) as pool:
            message_id, data = raw_message()
            outcome, pid = await run_until_killed(
                pool, exim, data, "hold-354@example.net", "pooledmail-hold-354"
            )
            assert isinstance(outcome, SendFailed), outcome
            assert outcome.kind is FailureKind.TRANSIENT
            assert outcome.stage is stage
            assert outcome.definitely_not_accepted
            assert_verdict_agrees_with_the_spool(outcome, exim, message_id)
            await assert_next_send_is_stored_once_on_a_fresh_connection(pool, exim, pid)


async def test_kill_after_the_mail_and_rcpt_replies_is_transient_and_nothing_is_stored(
    lockstep_exim: EximServer, client_tls: ssl.SSLContext
) -> None:
    # MAIL and RCPT were each answered 250 before DATA went; DATA never got its 354, so no byte
    # of the message left the client.
    await assert_a_kill_before_354_is_transient_at(Stage.DATA, lockstep_exim, client_tls)


# BDAT has no 354: there, the whole message leaves with MAIL and RCPT.
@pytest.mark.parametrize("exim", [False], ids=["data"], indirect=True)
async def test_kill_while_exim_holds_a_pipelined_flight_before_354_is_transient(
    exim: EximServer, client_tls: ssl.SSLContext
) -> None:
    # Exim keeps the replies to MAIL and RCPT in its output buffer while the predata ACL
    # delays: the client saw none of them, and sent no data.
    await assert_a_kill_before_354_is_transient_at(Stage.MAIL, exim, client_tls)


# A small message takes the core's fused path (one write for the whole BDAT flight, or for the
# data and its "." line); one of 3 MiB the general one (the body apart, BDAT in 1 MiB chunks).
@pytest.mark.parametrize("body_size", [8, 3 << 20], ids=["small", "3MiB"])
async def test_kill_after_the_terminator_before_the_final_reply_is_unknown_after_data(
    exim: EximServer, client_tls: ssl.SSLContext, body_size: int
) -> None:
    with anyio.fail_after(_TEST_BOUND):
        # Retries allowed: an unknown outcome must still not be sent again.
        async with pool_for(exim, client_tls, max_retries=2, retry_base_delay=0.01) as pool:
            line = b"z" * 62 + b"\r\n"
            message_id, data = raw_message(line * (body_size // len(line) + 1))
            since = exim.log_position()
            outcome, pid = await run_until_killed(
                pool, exim, data, "hold-final@example.net", "pooledmail-hold-final"
            )
            # The data ACL runs once the whole message arrived ("." or BDAT LAST): the client
            # had handed the terminator over and cannot know what Exim did with it.
            assert isinstance(outcome, SendFailed), outcome
            assert outcome.kind is FailureKind.UNKNOWN_AFTER_DATA
            # The stage names the reply awaited. With DATA, the final one. With BDAT, the
            # small message went in one flight and Exim still holds all its replies (MAIL's
            # awaited); for the large one, Exim sent the replies it owed whenever it found its
            # input empty, so the client read some of them: which, depends on scheduling.
            if not exim.chunking:
                assert outcome.stage is Stage.DATA_END
            elif body_size < 1 << 16:
                assert outcome.stage is Stage.MAIL
            assert not outcome.definitely_not_accepted
            # Not retried (RFC 5321 4.5.3.2 leaves its fate open): one attempt, and Exim saw
            # one transaction of it.
            assert outcome.attempts == 1
            assert pids_logging(exim, since, "pooledmail-mail") == [pid]
            # Killed before its -H file was written: Exim did not store it.
            assert copies(exim, message_id) == 0
            assert_verdict_agrees_with_the_spool(outcome, exim, message_id)
            await assert_next_send_is_stored_once_on_a_fresh_connection(pool, exim, pid)


def spool_files(exim: EximServer, suffix: str) -> dict[str, int]:
    """The spool's `-D` or `-H` files now, with their sizes."""
    sizes = {}
    for path in (exim.spool_directory / "input").glob(f"*{suffix}"):
        try:
            sizes[path.name] = path.stat().st_size
        except FileNotFoundError:
            continue
    return sizes


def socket_queues(port: int) -> int:
    """Bytes queued in the kernel on both ends of the connections to `port` on 127.0.0.1: what
    the server has not read yet plus what the client's socket has not sent yet."""
    queued = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote, queues = fields[1], fields[2], fields[4]
        transmit, receive = (int(part, 16) for part in queues.split(":"))
        if int(local.split(":")[1], 16) == port:
            queued += receive
        elif int(remote.split(":")[1], 16) == port:
            queued += transmit
    return queued


def client_sockets_closed_by_the_server(port: int) -> bool:
    """Whether a client socket connected to `port` received the server's FIN (CLOSE_WAIT)."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[2].split(":")[1], 16) == port and fields[3] == "08":
            return True
    return False


async def test_kill_in_the_middle_of_a_large_body_is_transient_and_nothing_is_stored(
    exim: EximServer, client_tls: ssl.SSLContext
) -> None:
    with anyio.fail_after(_TEST_BOUND):
        async with pool_for(exim, client_tls) as pool:
            line = b"x" * 998 + b"\r\n"
            message_id, data = raw_message(line * (_LARGE_BODY // len(line)))
            since = exim.log_position()
            before = set(spool_files(exim, "-D"))
            outcomes: list[Outcome] = []

            async def send() -> None:
                outcomes.append(await send_capturing(pool, data, "large@example.net"))

            async with anyio.create_task_group() as tg:
                tg.start_soon(send)
                pid = await session_pid_at(exim, since, "pooledmail-mail")

                def new_data_file() -> dict[str, int]:
                    return {
                        name: size
                        for name, size in spool_files(exim, "-D").items()
                        if name not in before
                    }

                await wait_for(new_data_file, "a -D file for the large message", exim)
                # Exim is reading the body into its -D file: stop it there, let the client
                # fill every buffer until its writes block, then kill the session.
                kill(pid, signal.SIGSTOP)
                queued = -1
                # Until the kernel's queues stop growing: the client's writes are blocked.
                while queued != (queued := socket_queues(exim.port)):  # noqa: ASYNC110
                    await anyio.sleep(0.05)
                (received,) = new_data_file().values()
                # Proof that the client was still in the body: what Exim wrote, plus what the
                # kernel holds in both directions, plus 1 MiB of the driver's own buffers and
                # TLS framing, is short of the message.
                assert received + queued + (1 << 20) < len(data), (received, queued)
                kill(pid)
            (outcome,) = outcomes
            assert isinstance(outcome, SendFailed), outcome
            assert outcome.kind is FailureKind.TRANSIENT
            assert outcome.stage is Stage.BODY
            assert outcome.definitely_not_accepted
            assert copies(exim, message_id) == 0
            assert_verdict_agrees_with_the_spool(outcome, exim, message_id)
            await assert_next_send_is_stored_once_on_a_fresh_connection(pool, exim, pid)


async def test_final_reply_later_than_command_timeout_is_unknown_and_the_spool_decides(
    exim: EximServer, client_tls: ssl.SSLContext
) -> None:
    with anyio.fail_after(_TEST_BOUND):
        async with pool_for(exim, client_tls, command_timeout=0.5) as pool:
            since = exim.log_position()
            message_id, data = raw_message()
            outcome = await send_capturing(pool, data, "late-final@example.net")
            (pid,) = pids_logging(exim, since, "pooledmail-late-final")
            assert isinstance(outcome, SendFailed), outcome
            assert outcome.kind is FailureKind.UNKNOWN_AFTER_DATA
            assert not outcome.definitely_not_accepted
            # Exim decides once its session ends, and its spool says what it decided. Exim 4.96
            # looks for a lost connection after the data ACL, before it writes the -H file: it
            # saw the client leave and dropped the message ("connection lost after final dot").
            # UNKNOWN_AFTER_DATA is still the only true verdict: the client cannot see that.
            await wait_for(lambda: pid not in exim.session_pids(), f"session {pid} ending", exim)
            assert "connection lost after final dot" in exim.log_text(since)
            assert_verdict_agrees_with_the_spool(outcome, exim, message_id)
            await assert_next_send_is_stored_once_on_a_fresh_connection(pool, exim, pid)


@pytest.mark.parametrize(
    ("local_part", "code", "kind"),
    [("refuse", 550, FailureKind.PERMANENT), ("defer", 451, FailureKind.TRANSIENT)],
)
async def test_refusal_by_the_data_acl_is_final_and_nothing_is_stored(
    exim: EximServer,
    client_tls: ssl.SSLContext,
    local_part: str,
    code: int,
    kind: FailureKind,
) -> None:
    with anyio.fail_after(_TEST_BOUND):
        async with pool_for(exim, client_tls) as pool:
            since = exim.log_position()
            message_id, data = raw_message()
            outcome = await send_capturing(pool, data, f"{local_part}@example.net")
            assert isinstance(outcome, SendFailed), outcome
            assert outcome.kind is kind
            assert outcome.stage is Stage.DATA_END
            assert outcome.reply is not None
            assert outcome.reply.code == code
            assert outcome.definitely_not_accepted
            assert_verdict_agrees_with_the_spool(outcome, exim, message_id)
            # Exim's own word: the refusal is logged (just after the reply), and no arrival.
            await wait_for(
                lambda: "by the test's data ACL" in exim.log_text(since), "the refusal", exim
            )
            assert " <= " not in exim.log_text(since)
            # The final reply ended the transaction in step (RFC 5321 4.1.1.4): the same
            # session carries the next message, stored once.
            after_id, after = raw_message()
            accepted = await send_capturing(pool, after, "after@example.net")
            assert isinstance(accepted, SendResult), accepted
            assert copies(exim, after_id) == 1
            assert pool.statistics().created_total == 1
            assert len(set(pids_logging(exim, since, "pooledmail-mail"))) == 1


async def test_an_idle_session_whose_exim_process_died_is_never_lent(
    exim: EximServer, client_tls: ssl.SSLContext
) -> None:
    with anyio.fail_after(_TEST_BOUND):
        async with pool_for(exim, client_tls) as pool:
            since = exim.log_position()
            first_id, first = raw_message()
            assert isinstance(await send_capturing(pool, first, "first@example.net"), SendResult)
            (pid,) = pids_logging(exim, since, "pooledmail-mail")
            # The session is idle in the pool; its Exim process dies, and the kernel closes its
            # end: awaited until the client's socket has the FIN (CLOSE_WAIT). The process
            # leaving /proc is no sign: its memory goes before its files are closed.
            kill(pid)
            await wait_for(lambda: client_sockets_closed_by_the_server(exim.port), "FIN", exim)
            # The pool sees the closed session before it lends it: the sender never meets it.
            message_id, data = raw_message()
            outcome = await send_capturing(pool, data, "second@example.net")
            assert isinstance(outcome, SendResult), outcome
            assert outcome.attempts == 1
            assert copies(exim, first_id) == copies(exim, message_id) == 1
            assert pool.statistics().created_total == 2
            assert len(set(pids_logging(exim, since, "pooledmail-mail"))) == 2
