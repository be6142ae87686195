"""The states of a pool slot and every transition between them, as data.

Theory of operation
-------------------
A slot is one connection the pool owns, from the moment it asks the driver to open it until the
driver reports it closed. Each slot is in exactly one `SlotState` at any time, kept as a field and
changed only through `SLOT_TRANSITIONS`; nothing about a slot is inferred from predicates on a
connection object. (A pool that infers "is this idle?" from flags on the connection leaves, sooner
or later, a slot that matches no cleanup rule after a cancellation, and waits on it forever.) Every
count the pool reports — live, idle, leased … — is derived by counting states.

    CONNECTING  the driver is connecting: TCP, greeting, TLS, EHLO, AUTH. Ends in `connected`
                (IDLE), `connect_failed` (CLOSED: the driver already dropped the half-open
                connection; the host cools down) or `connect_cancelled` (CLOSED: the pool closed
                meanwhile).
    IDLE        usable and owned by nobody. It is granted to the head waiter (LEASED), probed
                first when it has been idle for `keepalive_interval` (PROBING), or retired
                (CLOSING): idle or age limit, a better-priority host came back (or needs room
                for its trial connection), the pool closed.
    PROBING     the driver is sending NOOP. Success makes it IDLE again (and so grantable at once);
                failure closes it abruptly.
    LEASED      owned by exactly one waiter until `release`. A broken lease goes to CLOSING, never
                to IDLE; a healthy one goes back to IDLE, and from there may be retired (age,
                message count, a better-priority host came back, pool closed).
    CLOSING     the driver is closing it (QUIT or abrupt). It still counts as live, because its
                socket still exists on both ends, until `slot_closed`.
    CLOSED      gone; the pool forgets the slot and its id is never reused.

Inputs are `SlotEvent`s. A pair missing from the table is a caller error: the pool raises
`LocalProtocolError` before changing anything. docs/internals/pool.md draws its state diagram from
this table (scripts/state_diagrams.py).
"""

from __future__ import annotations

import enum

__all__ = ["LIVE_STATES", "SLOT_TRANSITIONS", "SlotEvent", "SlotState"]


class SlotState(enum.Enum):
    """Where one connection of the pool is in its life."""

    # Enum's own __hash__ is Python code; the transition table is consulted on every pool input,
    # and members are singletons compared by identity anyway.
    __hash__ = object.__hash__

    CONNECTING = "connecting"
    IDLE = "idle"
    PROBING = "probing"
    LEASED = "leased"
    CLOSING = "closing"
    CLOSED = "closed"


class SlotEvent(enum.Enum):
    """What can happen to a slot, from the driver (reports) or the pool (decisions)."""

    __hash__ = object.__hash__

    CONNECTED = "connected"
    CONNECT_FAILED = "connect_failed"
    CONNECT_CANCELLED = "connect_cancelled"
    GRANT = "grant"
    PROBE = "probe"
    PROBE_SUCCEEDED = "probe_succeeded"
    PROBE_FAILED = "probe_failed"
    RELEASE_HEALTHY = "release_healthy"
    RELEASE_BROKEN = "release_broken"
    RETIRE = "retire"
    SLOT_CLOSED = "slot_closed"


SLOT_TRANSITIONS: dict[SlotState, dict[SlotEvent, SlotState]] = {
    SlotState.CONNECTING: {
        SlotEvent.CONNECTED: SlotState.IDLE,
        SlotEvent.CONNECT_FAILED: SlotState.CLOSED,
        SlotEvent.CONNECT_CANCELLED: SlotState.CLOSED,
    },
    SlotState.IDLE: {
        SlotEvent.GRANT: SlotState.LEASED,
        SlotEvent.PROBE: SlotState.PROBING,
        SlotEvent.RETIRE: SlotState.CLOSING,
    },
    SlotState.PROBING: {
        SlotEvent.PROBE_SUCCEEDED: SlotState.IDLE,
        SlotEvent.PROBE_FAILED: SlotState.CLOSING,
    },
    SlotState.LEASED: {
        SlotEvent.RELEASE_HEALTHY: SlotState.IDLE,
        SlotEvent.RELEASE_BROKEN: SlotState.CLOSING,
    },
    SlotState.CLOSING: {
        SlotEvent.SLOT_CLOSED: SlotState.CLOSED,
    },
    SlotState.CLOSED: {},
}

# States that hold a socket, and so count against max_size and max_connections.
LIVE_STATES = frozenset(
    {
        SlotState.CONNECTING,
        SlotState.IDLE,
        SlotState.PROBING,
        SlotState.LEASED,
        SlotState.CLOSING,
    }
)
