"""The core stays sans-I/O: no module of pooledmail_core may import I/O, clocks or randomness."""

from __future__ import annotations

import ast
import pathlib

import pooledmail_core

FORBIDDEN = frozenset(
    {
        "anyio",
        "asyncio",
        "trio",
        "socket",
        "ssl",
        "time",
        "datetime",
        "random",
        "secrets",
        "uuid",
        "os",
        "selectors",
        "threading",
        "subprocess",
        "logging",
        "coredis",
        "opentelemetry",
    }
)
CORE = pathlib.Path(pooledmail_core.__file__).parent


def imported_roots(tree: ast.AST) -> set[str]:
    roots: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


def test_core_modules_import_no_io_clock_or_randomness() -> None:
    modules = sorted(CORE.glob("*.py"))
    assert len(modules) >= 5
    offenders = {
        path.name: sorted(imported_roots(ast.parse(path.read_text())) & FORBIDDEN)
        for path in modules
    }
    assert {name: bad for name, bad in offenders.items() if bad} == {}


def test_the_rule_detects_a_forbidden_import() -> None:
    sample = "import os\nfrom time import monotonic\nif True:\n    import trio.lowlevel\n"
    assert imported_roots(ast.parse(sample)) & FORBIDDEN == {"os", "time", "trio"}
