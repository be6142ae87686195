"""Frozen, validated configuration: `Host`, `PoolConfig` and `TLSMode`."""

from __future__ import annotations

import enum

__all__ = ["TLSMode"]


class TLSMode(enum.Enum):
    """How a connection to a host is encrypted."""

    STARTTLS = "starttls"
    """Upgrade with STARTTLS (RFC 3207); a server that does not offer it is refused."""
    IMPLICIT = "implicit"
    """TLS from the first byte (RFC 8314, usually port 465)."""
    STARTTLS_IF_AVAILABLE = "starttls_if_available"
    """Opportunistic: upgrade when offered, carry on in plaintext when not. An explicit opt-in."""
    NONE = "none"
    """Plaintext. AUTH is refused unless the host sets `allow_plaintext_auth`."""
