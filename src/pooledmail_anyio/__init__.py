"""pooledmail's anyio driver: the public async API, on asyncio and trio.

async with SMTPPool(PoolConfig([Host("smtp.example.com")])) as pool:
    result = await pool.send(message)
"""

from pooledmail_core import (
    ConfigError,
    Envelope,
    EnvelopeError,
    FailureKind,
    Host,
    InvalidArgument,
    Limits,
    LocalProtocolError,
    PoolConfig,
    PooledMailError,
    PoolStatistics,
    RemoteProtocolError,
    Reply,
    Stage,
    TLSMode,
)

from ._blocking import BlockingSMTPPool
from ._pool import SMTPPool
from ._results import SendFailed, SendResult, SendStatistics

__all__ = [
    "BlockingSMTPPool",
    "ConfigError",
    "Envelope",
    "EnvelopeError",
    "FailureKind",
    "Host",
    "InvalidArgument",
    "Limits",
    "LocalProtocolError",
    "PoolConfig",
    "PoolStatistics",
    "PooledMailError",
    "RemoteProtocolError",
    "Reply",
    "SMTPPool",
    "SendFailed",
    "SendResult",
    "SendStatistics",
    "Stage",
    "TLSMode",
]
