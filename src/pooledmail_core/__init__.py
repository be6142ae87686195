"""pooledmail's sans-I/O core: the SMTP client protocol, the pool machine, hosts and cooldown,
failure classification and retry. No I/O, no clock, no randomness: time and randomness come in."""

from ._capabilities import Capabilities
from ._classify import (
    Classification,
    FailureKind,
    Stage,
    classify,
    classify_pool_failure,
    retry_delay,
)
from ._config import Host, OAuth2TokenProvider, PoolConfig, SharedBudget, TLSMode
from ._entropy import RandomSource
from ._envelope import Envelope, PreparedMessage, checked_envelope
from ._errors import (
    ConfigError,
    DSNNotSupported,
    EightBitNotSupported,
    EnvelopeError,
    InvalidArgument,
    LocalProtocolError,
    MessageTooLarge,
    PooledMailError,
    ProtocolError,
    RemoteProtocolError,
    SMTPUTF8NotSupported,
)
from ._exchanges import (
    NEED_DATA,
    Done,
    Exchange,
    SetupResult,
    StartTLS,
    TransactionOutcome,
    Write,
)
from ._header_fields import message_id_of
from ._limits import Limits
from ._message import prepare_message
from ._pool import (
    Action,
    CloseSlot,
    FailWaiter,
    GrantSlot,
    HostStatistics,
    OpenConnection,
    PoolMachine,
    PoolStatistics,
    ProbeSlot,
    ReleaseLease,
    RequestLease,
    RequestTokens,
    ShareCooldown,
    SlotState,
)
from ._reply import Reply
from ._session import ClientSession
from ._state import SessionState

__all__ = [
    "NEED_DATA",
    "Action",
    "Capabilities",
    "Classification",
    "ClientSession",
    "CloseSlot",
    "ConfigError",
    "DSNNotSupported",
    "Done",
    "EightBitNotSupported",
    "Envelope",
    "EnvelopeError",
    "Exchange",
    "FailWaiter",
    "FailureKind",
    "GrantSlot",
    "Host",
    "HostStatistics",
    "InvalidArgument",
    "Limits",
    "LocalProtocolError",
    "MessageTooLarge",
    "OAuth2TokenProvider",
    "OpenConnection",
    "PoolConfig",
    "PoolMachine",
    "PoolStatistics",
    "PooledMailError",
    "PreparedMessage",
    "ProbeSlot",
    "ProtocolError",
    "RandomSource",
    "ReleaseLease",
    "RemoteProtocolError",
    "Reply",
    "RequestLease",
    "RequestTokens",
    "SMTPUTF8NotSupported",
    "SessionState",
    "SetupResult",
    "ShareCooldown",
    "SharedBudget",
    "SlotState",
    "Stage",
    "StartTLS",
    "TLSMode",
    "TransactionOutcome",
    "Write",
    "checked_envelope",
    "classify",
    "classify_pool_failure",
    "message_id_of",
    "prepare_message",
    "retry_delay",
]
