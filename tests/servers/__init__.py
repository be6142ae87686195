"""Real servers on 127.0.0.1 for tests and benchmarks: Postfix, smtp-sink, Redis.

Each is private (its own temporary directory, a free loopback port), bounded in start-up time, and
certain to be cleaned up. Importing this package needs no pytest; the fixtures are in `fixtures`.
"""

from ._process import MissingBinary, ServerStartError
from .postfix import PostfixServer, SessionSummary, StoredMessage
from .redis import RedisServer
from .smtp_sink import SinkMessage, SmtpSink

__all__ = [
    "MissingBinary",
    "PostfixServer",
    "RedisServer",
    "ServerStartError",
    "SessionSummary",
    "SinkMessage",
    "SmtpSink",
    "StoredMessage",
]
