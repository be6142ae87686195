"""One process of a fleet, for the multi-process tests: `python -m tests.fleet.worker SPEC`.

SPEC is JSON: backend, smtp_port, budget (SharedBudget's keyword arguments), and how to send:
`count` messages (or for `duration` seconds), `concurrency` at a time, each with its own
Message-ID "<tag-n@fleet.test>"; or, with "hold": true, open min_size connections, say
"ready" and wait to be killed.
It prints one JSON line per event: {"ready": true}, then {"done": ...} with what each send came to
and the budget modes it saw.
"""

from __future__ import annotations

import itertools
import json
import math
import sys
from typing import Any

import anyio
from pooledmail_anyio import Host, PoolConfig, SendFailed, SharedBudget, SMTPPool


def say(**event: Any) -> None:
    print(json.dumps(event), flush=True)


async def run(spec: dict[str, Any]) -> None:
    budget = SharedBudget(**spec["budget"])
    host = Host("127.0.0.1", spec["smtp_port"], tls="none", budget=budget)
    config = PoolConfig(
        [host],
        max_size=spec.get("max_size", 4),
        min_size=spec.get("min_size", 0),
        send_timeout=spec.get("send_timeout", 20.0),
        acquire_timeout=spec.get("acquire_timeout", 15.0),
        max_retries=0,
        keepalive_interval=None,
    )
    tag = spec["tag"]
    accepted: list[str] = []
    failed: list[list[str]] = []
    modes: set[str] = set()
    async with SMTPPool(config) as pool:
        if spec.get("hold"):
            with anyio.fail_after(10):
                # The pool opens min_size connections in the background; nothing signals it.
                while pool.statistics().idle < config.min_size:  # noqa: ASYNC110
                    await anyio.sleep(0.01)
            say(ready=True, leases=pool.budget_statistics()[budget.name]["leases"])
            await anyio.sleep(60)
            return
        # A number of messages, or as many as fit in `duration` seconds.
        pending = iter(range(spec["count"])) if "count" in spec else itertools.count()
        until = anyio.current_time() + spec.get("duration", math.inf)

        async def sender() -> None:
            for number in pending:
                if anyio.current_time() >= until:
                    return
                message_id = f"<{tag}-{number}@fleet.test>"
                data = f"Message-ID: {message_id}\r\nSubject: {number}\r\n\r\nhello\r\n".encode()
                try:
                    await pool.send_raw(data, sender="a@fleet.test", recipients=["b@fleet.test"])
                    accepted.append(message_id)
                except SendFailed as failure:
                    failed.append([message_id, failure.kind.value])
                    if spec.get("pause_after_failure"):
                        await anyio.sleep(spec["pause_after_failure"])
                modes.add(str(pool.budget_statistics()[budget.name]["mode"]))

        async with anyio.create_task_group() as senders:
            for _ in range(spec.get("concurrency", 4)):
                senders.start_soon(sender)
        stats = pool.budget_statistics()[budget.name]
    say(done=True, accepted=accepted, failed=failed, modes=sorted(modes), stats=stats)


def main() -> None:
    spec = json.loads(sys.argv[1])
    anyio.run(run, spec, backend=spec["backend"])


if __name__ == "__main__":
    main()
