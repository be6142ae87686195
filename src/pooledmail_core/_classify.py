"""Failure classification and retry decisions (see DESIGN.md, "The ambiguity boundary")."""

from __future__ import annotations

import enum

__all__ = ["FailureKind", "Stage"]


class FailureKind(enum.Enum):
    """What kind of failure a send or an acquire ended with."""

    POOL_EXHAUSTED = "pool_exhausted"
    HOSTS_UNAVAILABLE = "hosts_unavailable"
    CONNECT_FAILED = "connect_failed"
    TLS_FAILED = "tls_failed"
    AUTH_FAILED = "auth_failed"
    TRANSIENT = "transient"
    PERMANENT = "permanent"
    UNKNOWN_AFTER_DATA = "unknown_after_data"
    POOL_CLOSED = "pool_closed"


class Stage(enum.Enum):
    """Where in the life of a send a failure happened."""

    ACQUIRE = "acquire"
    CONNECT = "connect"
    GREETING = "greeting"
    TLS = "tls"
    EHLO = "ehlo"
    AUTH = "auth"
    MAIL = "mail"
    RCPT = "rcpt"
    DATA = "data"
    BODY = "body"
    DATA_END = "data_end"
