"""`SMTPPool.check()`: can each host give a session ready for MAIL right now?

A check opens one connection per host exactly as the pool would (TCP, greeting, TLS, EHLO, AUTH,
under `connect_timeout`), measures one NOOP round trip on it, says QUIT, and reports. One absolute
deadline, `connect_timeout` from the start, bounds all of it: the NOOP, and then the QUIT or the
abort, get what is left of it. It sends no message and changes nothing in the pool: a failing host
is not put in cooldown, a working connection is not kept.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from dataclasses import dataclass

from pooledmail_core import FailureKind, Host, Limits, LocalProtocolError, Reply, Stage, classify

from ._connection import (
    TRANSPORT_ERRORS,
    ConnectFailure,
    describe_transport_failure,
    open_connection,
)
from ._stream import backend_clock

__all__ = ["HealthReport", "HostCheck", "check_host"]

_NOOP_ERRORS: tuple[type[BaseException], ...] = (*TRANSPORT_ERRORS, LocalProtocolError)


# Don't subclass this.
@dataclass(frozen=True, slots=True)
class HostCheck:
    """What checking one host found.

    `ok` means a session became ready for MAIL (TLS and AUTH done as configured) and answered a
    NOOP. Otherwise `kind`, `stage` and `reason` say what failed, as a send would report it, and
    `reply` is the server's refusal if it gave one. `setup_seconds` is the time to a ready session
    (or to the failure), `round_trip_seconds` that of the NOOP. `tls_version` ("TLSv1.3") and
    `auth_mechanism` ("PLAIN") say what was negotiated, when it was.
    """

    host: str
    ok: bool
    kind: FailureKind | None
    stage: Stage
    reason: str
    reply: Reply | None
    setup_seconds: float
    round_trip_seconds: float | None
    tls_version: str | None
    auth_mechanism: str | None

    def __str__(self) -> str:
        if self.ok:
            tls = self.tls_version or "no TLS"
            auth = f", AUTH {self.auth_mechanism}" if self.auth_mechanism else ""
            rtt = self.round_trip_seconds or 0.0
            return (
                f"{self.host}: ok ({tls}{auth}; ready in {self.setup_seconds:.3f} s, "
                f"NOOP {rtt * 1000:.1f} ms)"
            )
        kind = self.kind.name if self.kind is not None else "FAILED"
        return (
            f"{self.host}: {kind} during {self.stage.name}: {self.reason} "
            f"(after {self.setup_seconds:.3f} s)"
        )


# Don't subclass this.
@dataclass(frozen=True, slots=True)
class HealthReport:
    """The result of `SMTPPool.check()`: one `HostCheck` per configured host, in order.

    `ok` is True when every host passed; `failures` lists those that did not. `str()` gives one
    line per host, fit for a log or a start-up error.
    """

    hosts: tuple[HostCheck, ...]

    @property
    def ok(self) -> bool:
        return all(host.ok for host in self.hosts)

    @property
    def failures(self) -> tuple[HostCheck, ...]:
        return tuple(host for host in self.hosts if not host.ok)

    def __str__(self) -> str:
        return "\n".join(str(host) for host in self.hosts)


async def check_host(
    host: Host,
    *,
    clock: Callable[[], float],
    local_hostname: str,
    connect_timeout: float,
    ssl_context: ssl.SSLContext | None,
    limits: Limits,
    quit_grace: float,
) -> HostCheck:
    """Check one host; never raises but for the caller's cancellation."""
    started = clock()
    # One deadline for the whole check, as for the setup: the NOOP gets what is left of it, and
    # the QUIT (or the abort) after it what is left then.
    deadline = backend_clock()() + connect_timeout
    try:
        outcome = await open_connection(
            host,
            local_hostname=local_hostname,
            connect_timeout=connect_timeout,
            ssl_context=ssl_context,
            limits=limits,
            quit_grace=quit_grace,
        )
    except Exception as exc:  # a bug must not hide the other hosts' results
        outcome = ConnectFailure(
            host.key, classify(Stage.CONNECT), None, exc, f"unexpected {type(exc).__name__}"
        )
    ready = clock() - started
    if isinstance(outcome, ConnectFailure):
        return HostCheck(
            host.key,
            False,
            outcome.kind,
            outcome.stage,
            outcome.reason,
            outcome.reply,
            ready,
            None,
            None,
            None,
        )
    connection = outcome
    tls_version = connection.tls_version()
    # The last stage setup completed, as `SetupResult.stage` says it.
    if connection.auth_mechanism:
        stage = Stage.AUTH
    elif tls_version:
        stage = Stage.TLS
    else:
        stage = Stage.EHLO
    try:
        before = clock()
        noop = connection.session.noop()
        await connection.run(noop, step_timeout=connect_timeout, deadline=deadline)
        round_trip = clock() - before
        reply = noop.result
    except _NOOP_ERRORS as exc:
        why = describe_transport_failure(
            exc,
            stage,
            host,
            connect_timeout,
            connecting=True,
            closed=connection.server_closed,
            command="NOOP",
        )
        await connection.abort(quit_grace, deadline=deadline)
        return HostCheck(
            host.key,
            False,
            FailureKind.CONNECT_FAILED,
            stage,
            f"the session was ready but NOOP failed: {why}",
            None,
            ready,
            None,
            tls_version,
            connection.auth_mechanism,
        )
    except BaseException:
        # Cancelled by the caller: the connection must not outlive the check.
        await connection.abort(quit_grace, deadline=deadline)
        raise
    await connection.quit(quit_grace, deadline=deadline)
    if not reply.is_positive:
        return HostCheck(
            host.key,
            False,
            FailureKind.CONNECT_FAILED,
            stage,
            f"the session was ready but NOOP was refused: server said {reply}",
            reply,
            ready,
            round_trip,
            tls_version,
            connection.auth_mechanism,
        )
    return HostCheck(
        host.key,
        True,
        None,
        stage,
        "ready for MAIL",
        None,
        ready,
        round_trip,
        tls_version,
        connection.auth_mechanism,
    )
