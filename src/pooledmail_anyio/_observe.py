"""What a pool tells the world: log records, and metrics when OpenTelemetry is installed.

The pool reports to one `Observer` at a handful of points (docs/guide/operations.md lists them): a
connection opened, failed to open, or closed; a host recovered; a probe failed; a send finished,
was retried, or was cancelled after its terminator; and, only while metrics are on, how long an
acquire waited and a lease lasted. Everything rare is always reported (the logger decides whether
it is written); the three reports a successful send would make are guarded in the pool by one
attribute check (`metered`), so a pool without metrics pays nothing else per message. `metered` is
False as well while the metrics go nowhere: OpenTelemetry's API is installed but no SDK (its
global provider drops every measurement until an SDK installs a real one; the pool then asks, once
per send, whether that happened), or the provider is a no-op one.

Logging goes to the standard `logging` module under `pooledmail` (`pooledmail.connection`,
`pooledmail.host`, `pooledmail.send`). Records carry their fields in `extra` (host, kind, stage,
message_id, attempt ...). Nothing that could hold a secret or a message body is ever passed to a
logger: replies and reasons are the server's words and the pool's own, and recipient addresses
are masked in them unless the application asked for them (`log_recipients=True`).

Metrics live in `_metrics`, which imports OpenTelemetry; this module imports it only when a pool
asks for metrics and the package is installed (`pooledmail[otel]`).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from pooledmail_core import FailureKind

if TYPE_CHECKING:
    from ._metrics import PoolMetrics
    from ._results import SendFailed, SendResult

__all__ = ["Observer", "connection_log", "host_log", "send_log"]

connection_log = logging.getLogger("pooledmail.connection")
host_log = logging.getLogger("pooledmail.host")
send_log = logging.getLogger("pooledmail.send")

_DEBUG = logging.DEBUG
_INFO = logging.INFO
_UNKNOWN = FailureKind.UNKNOWN_AFTER_DATA


def _named(message_id: str | None, prefix: str = "") -> str:
    """How a record's text names a message: by its Message-ID (raw bytes may have none)."""
    return "a message without Message-ID" if message_id is None else prefix + message_id


def _load_metrics(name: str, meter_provider: Any, pool: Any) -> PoolMetrics | None:
    try:
        from ._metrics import PoolMetrics
    except ImportError:
        # pooledmail[otel] is not installed: no metrics, and nothing of OpenTelemetry imported.
        return None
    return PoolMetrics(name, meter_provider, pool)


class Observer:
    """The one place the pool reports to. Built by `SMTPPool`; not part of the public API."""

    __slots__ = ("log_recipients", "metered", "metrics", "name", "waiting_for_provider")

    def __init__(
        self,
        name: str,
        *,
        metrics: bool,
        meter_provider: Any,
        log_recipients: bool,
        pool: Any,
    ) -> None:
        self.name = name
        self.log_recipients = log_recipients
        self.metrics: PoolMetrics | None = (
            _load_metrics(name, meter_provider, pool) if metrics else None
        )
        # The pool checks this one attribute before each per-message report: True only while
        # the metrics are recorded somewhere.
        self.metered = False
        # While the metrics go nowhere until an SDK installs a global provider: the check that
        # says it did (see `refresh`).
        self.waiting_for_provider: Callable[[], bool] | None = None
        if self.metrics is not None:
            recording = self.metrics.recording
            if callable(recording):
                self.waiting_for_provider = recording
                self.metered = recording()
            else:
                self.metered = recording

    def refresh(self) -> bool:
        """Ask again whether the metrics are recorded (an SDK may have installed a provider
        since); once they are, they stay so and nothing is asked any more. Returns `metered`."""
        check = self.waiting_for_provider
        if check is not None and check():
            self.metered = True
            self.waiting_for_provider = None
        return self.metered

    # -- connections -------------------------------------------------------------------------

    def connection_opened(self, host: str, seconds: float, tls_version: str | None) -> None:
        if self.metrics is not None:
            self.metrics.connection_opened(host, seconds)
        if connection_log.isEnabledFor(_DEBUG):
            connection_log.debug(
                "connection to %s opened in %.3f s (%s)",
                host,
                seconds,
                tls_version or "no TLS",
                extra={
                    "pool": self.name,
                    "host": host,
                    "seconds": seconds,
                    "tls_version": tls_version,
                },
            )

    def connection_closed(self, host: str, reason: str) -> None:
        if self.metrics is not None:
            self.metrics.connection_closed(host, reason)
        if connection_log.isEnabledFor(_DEBUG):
            connection_log.debug(
                "connection to %s closed (%s)",
                host,
                reason,
                extra={"pool": self.name, "host": host, "reason": reason},
            )

    def probe_failed(self, host: str) -> None:
        if self.metrics is not None:
            self.metrics.probe_failed(host)
        if connection_log.isEnabledFor(_DEBUG):
            connection_log.debug(
                "idle connection to %s failed its NOOP probe; it is closed and not reused",
                host,
                extra={"pool": self.name, "host": host},
            )

    def connect_failed(
        self,
        host: str,
        kind: FailureKind,
        stage: Any,
        reason: str,
        cooldown_seconds: float | None,
        failures: int,
    ) -> None:
        """A connection could not be opened; the host now cools down for `cooldown_seconds`."""
        if self.metrics is not None:
            self.metrics.connect_failed(host, kind, stage)
        if cooldown_seconds is None:
            # The pool was closing: nothing was held against the host.
            return
        host_log.warning(
            "host %s cooling down for %.3g s after %s during %s: %s (%d consecutive failure%s)",
            host,
            cooldown_seconds,
            kind.name,
            stage.name,
            reason,
            failures,
            "" if failures == 1 else "s",
            extra={
                "pool": self.name,
                "host": host,
                "kind": kind.value,
                "stage": stage.value,
                "reason": reason,
                "cooldown_seconds": cooldown_seconds,
                "failures": failures,
            },
        )

    def host_recovered(self, host: str, failures: int) -> None:
        host_log.info(
            "host %s is usable again after %d failed connection attempt%s",
            host,
            failures,
            "" if failures == 1 else "s",
            extra={"pool": self.name, "host": host, "failures": failures},
        )

    # -- sends (the per-message reports are made only while `metered`) ---------------------

    def acquired(self, seconds: float) -> None:
        assert self.metrics is not None
        self.metrics.acquired(seconds)

    def released(self, host: str, seconds: float) -> None:
        assert self.metrics is not None
        self.metrics.released(host, seconds)

    def send_accepted(self, host: str, seconds: float) -> None:
        assert self.metrics is not None
        self.metrics.send_accepted(host, seconds)

    def send_failed(self, failure: SendFailed, seconds: float, recipients: Sequence[str]) -> None:
        kind = failure.kind
        if self.metrics is not None:
            self.metrics.send_failed(failure, seconds)
        level = logging.WARNING if kind is _UNKNOWN else _INFO
        if not send_log.isEnabledFor(level):
            return
        reason = self._mask(failure.reason, recipients)
        extra: dict[str, object] = {
            "pool": self.name,
            "host": failure.host,
            "kind": kind.value,
            "stage": failure.stage.value,
            "message_id": failure.message_id,
            "attempt": failure.attempts,
            "definitely_not_accepted": failure.definitely_not_accepted,
            "reason": reason,
        }
        if self.log_recipients:
            extra["recipients"] = tuple(recipients)
        where = f" at {failure.host}" if failure.host else ""
        text = "send of %s failed: %s during %s%s after %d attempt(s): %s"
        if kind is _UNKNOWN:
            text += "; it may have been delivered: reconcile before sending it again"
        send_log.log(
            level,
            text,
            _named(failure.message_id),
            kind.name,
            failure.stage.name,
            where,
            failure.attempts,
            reason,
            extra=extra,
        )

    def send_partly_refused(
        self, result: SendResult, recipients: Sequence[str], *, earlier_unknown: str | None
    ) -> None:
        """An accepted send that the server refused for some recipients (RFC 5321 §3.3: each
        RCPT is answered alone): always logged at WARNING, as a failed send would be noticed.

        `earlier_unknown` is the host of an earlier attempt that ended UNKNOWN_AFTER_DATA
        (retried under retry_unknown=True): it may have delivered the message to the recipients
        this attempt was refused for, so the record says so instead of "send it to them again"."""
        refused = result.refused
        transient = sum(1 for _, reply in refused if reply.is_transient)
        if self.metrics is not None:
            self.metrics.recipients_refused(result.host, transient, len(refused) - transient)
        if not send_log.isEnabledFor(logging.WARNING):
            return
        # Each distinct reply once, in order: a server refusing 50 recipients beyond its limit
        # says the same thing 50 times.
        replies = "; ".join(dict.fromkeys(str(reply) for _, reply in refused))
        reason = self._mask(replies, recipients)
        extra: dict[str, object] = {
            "pool": self.name,
            "host": result.host,
            "message_id": result.message_id,
            "attempt": result.attempts,
            "accepted": len(result.accepted),
            "refused": len(refused),
            "transient": transient,
            "reason": reason,
            "earlier_unknown": earlier_unknown is not None,
        }
        if self.log_recipients:
            extra["recipients"] = tuple(recipient for recipient, _ in refused)
        text = "send of %s was accepted at %s for %d recipient(s) and refused for %d: %s"
        arguments: list[object] = [
            _named(result.message_id),
            result.host,
            len(result.accepted),
            len(refused),
            reason,
        ]
        if earlier_unknown is not None:
            # Refused by this attempt, not necessarily undelivered: never advise a resend.
            text += "; an earlier attempt ended UNKNOWN_AFTER_DATA at %s: they may have it"
            arguments.append(earlier_unknown)
        elif transient:
            text += "; %d refused for now (4xx): send it to them again"
            arguments.append(transient)
        send_log.warning(text, *arguments, extra=extra)

    def retrying(
        self,
        *,
        kind: FailureKind,
        stage: Any,
        host: str | None,
        reason: str,
        attempt: int,
        delay: float,
        message_id: str | None,
        recipients: Sequence[str],
    ) -> None:
        if self.metrics is not None:
            self.metrics.retried(host, kind)
        if send_log.isEnabledFor(_DEBUG):
            masked = self._mask(reason, recipients)
            send_log.debug(
                "retrying %s in %.2f s after %s during %s (attempt %d): %s",
                _named(message_id),
                delay,
                kind.name,
                stage.name,
                attempt,
                masked,
                extra={
                    "pool": self.name,
                    "host": host,
                    "kind": kind.value,
                    "stage": stage.value,
                    "message_id": message_id,
                    "attempt": attempt,
                    "delay": delay,
                    "reason": masked,
                },
            )

    def cancelled_after_terminator(self, host: str, stage: Any, message_id: str | None) -> None:
        if self.metrics is not None:
            self.metrics.cancelled_after_terminator(host, stage)
        send_log.warning(
            "send cancelled after the message was handed to %s and before its final reply: "
            "it may have been delivered (%s)",
            host,
            _named(message_id, "Message-ID "),
            extra={
                "pool": self.name,
                "host": host,
                "kind": _UNKNOWN.value,
                "stage": stage.value,
                "message_id": message_id,
            },
        )

    # -- helpers -----------------------------------------------------------------------------

    def _mask(self, text: str, recipients: Sequence[str]) -> str:
        """`text` with every recipient address replaced, unless the application wants them.

        Servers quote the recipient in their refusals (`550 5.1.1 <b@example.com>: ...`)."""
        if self.log_recipients or not recipients:
            return text
        # Longest first: the alternation takes the first that matches, and an address that is
        # a prefix of another ("b@example.co", "b@example.com") would leave the rest in view.
        addresses = sorted({address for address in recipients if address}, key=len, reverse=True)
        pattern = "|".join(re.escape(address) for address in addresses)
        if not pattern:
            return text
        return re.sub(pattern, "<recipient>", text, flags=re.IGNORECASE)
