"""The reason, in words, of a send held back by a message rate or a shared budget."""

from __future__ import annotations

from collections.abc import Mapping

from pooledmail_core import FailureKind, PoolConfig

__all__ = ["describe_limit"]


def describe_limit(
    kind: FailureKind, config: PoolConfig, budgets: Mapping[str, Mapping[str, object]]
) -> str:
    """Why a waiter failed RATE_LIMITED or BUDGET_UNAVAILABLE, naming each host's limit."""
    if kind is FailureKind.BUDGET_UNAVAILABLE:
        refused = sorted(name for name, stats in budgets.items() if stats.get("mode") == "refuse")
        names = ", ".join(repr(name) for name in refused) or "the shared budget"
        return (
            f"the store of shared budget {names} did not answer and on_store_failure='refuse': "
            "nothing is sent under it until the store answers again (it is retried every second)"
        )
    limits = []
    for host in config.hosts:
        parts = []
        if host.max_messages_per_second is not None:
            parts.append(f"{host.max_messages_per_second:g} msg/s, burst {host.burst}")
        budget = host.budget
        if budget is not None and budget.max_messages_per_second is not None:
            mode = budgets.get(budget.name, {}).get("mode", "fleet")
            if mode == "fleet":
                where = "fleet-wide"
            elif mode == "local":
                where = f"local share {budget.local_share:g}"
            else:  # "refuse": the store does not answer, and local_share is None
                where = "its store not answering, on_store_failure='refuse'"
            parts.append(
                f"budget {budget.name!r}: {budget.max_messages_per_second:g} msg/s {where}"
            )
        limits.append(f"{host.key} ({'; '.join(parts) or 'no rate'})")
    return (
        "no message token could come before the send's deadline, with the senders ahead of it: "
        + ", ".join(limits)
    )
