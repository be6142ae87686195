"""Real servers on 127.0.0.1 for tests and benchmarks: Postfix, Exim, smtp-sink, Redis.

Each is private (its own temporary directory, a free loopback port), bounded in start-up time, and
certain to be cleaned up. Importing this package needs no pytest; the fixtures are in `fixtures`.
"""

from ._process import MissingBinary, ServerStartError
from .exim import EximServer, SpooledMessage
from .postfix import PostfixServer, SessionSummary, StoredMessage
from .redis import RedisServer
from .smtp_sink import SinkMessage, SmtpSink

__all__ = [
    "EximServer",
    "MissingBinary",
    "PostfixServer",
    "RedisServer",
    "ServerStartError",
    "SessionSummary",
    "SinkMessage",
    "SmtpSink",
    "SpooledMessage",
    "StoredMessage",
]
