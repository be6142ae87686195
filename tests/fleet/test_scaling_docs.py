"""The code of docs/guide/scaling.md, run as written (taken from the page, so it cannot drift)."""

from __future__ import annotations

import re
from pathlib import Path

from pooledmail_anyio import PoolConfig, SharedBudget

ROOT = Path(__file__).resolve().parents[2]
SNIPPET = re.compile(r"<!-- snippet: ([\w-]+) -->\n```python\n(.*?)\n```", re.DOTALL)


def snippets() -> dict[str, str]:
    return dict(SNIPPET.findall((ROOT / "docs" / "guide" / "scaling.md").read_text()))


def test_every_python_block_of_the_page_is_named_and_run() -> None:
    text = (ROOT / "docs" / "guide" / "scaling.md").read_text()
    assert set(snippets()) == {"scaling-office365"}
    assert text.count("```python") == len(snippets())


def test_the_office365_example_builds_a_budget_for_four_workers() -> None:
    namespace: dict[str, object] = {
        "REDIS_URL": "redis://:s3cret@redis.internal:6379/0",
        "SMTP_PASSWORD": "app-password",
    }
    exec(snippets()["scaling-office365"], namespace)
    config = namespace["config"]
    assert isinstance(config, PoolConfig)
    (host,) = config.hosts
    budget = host.budget
    assert isinstance(budget, SharedBudget)
    assert (budget.max_connections, budget.max_messages_per_second) == (3, 0.5)
    assert budget.on_store_failure == "local"
    assert budget.local_share == 0.25
    assert "s3cret" not in repr(config)
