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
    OAuth2TokenProvider,
    PoolConfig,
    PooledMailError,
    PoolStatistics,
    RemoteProtocolError,
    Reply,
    SharedBudget,
    Stage,
    TLSMode,
)

from ._blocking import BlockingSMTPPool
from ._health import HealthReport, HostCheck
from ._pool import SMTPPool
from ._results import SendFailed, SendResult, SendStatistics

__all__ = [
    "BlockingSMTPPool",
    "ConfigError",
    "Envelope",
    "EnvelopeError",
    "FailureKind",
    "HealthReport",
    "Host",
    "HostCheck",
    "InvalidArgument",
    "Limits",
    "LocalProtocolError",
    "OAuth2TokenProvider",
    "PoolConfig",
    "PoolStatistics",
    "PooledMailError",
    "RemoteProtocolError",
    "Reply",
    "SMTPPool",
    "SendFailed",
    "SendResult",
    "SendStatistics",
    "SharedBudget",
    "Stage",
    "TLSMode",
]
