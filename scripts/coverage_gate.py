"""Print the coverage report and hold each package to its own floor of branch coverage.

    python -m coverage run -m pytest -q && python scripts/coverage_gate.py

The floors: the sans-I/O core, where every branch is a decision about the protocol or the pool,
95 %; the driver (`pooledmail_anyio`) and the Django backend, whose remaining branches are mostly
I/O error paths that only hostile timing reaches, 90 %. Exits 1 naming each package below its
floor.
"""

from __future__ import annotations

import io
import sys

import coverage

FLOORS = {
    "pooledmail_core": 95.0,
    "pooledmail_anyio": 90.0,
    "pooledmail_django": 90.0,
}


def main() -> int:
    data = coverage.Coverage()
    data.load()
    # Worker processes and forked children leave data files of their own (`patch` in
    # pyproject.toml); fold any still apart into the main one.
    try:
        data.combine(keep=False)
    except coverage.CoverageException:
        pass  # nothing left to combine
    else:
        data.save()
    data.report(show_missing=True, skip_covered=True)
    below = []
    for package, floor in FLOORS.items():
        total = data.report(include=[f"*/{package}/*"], file=io.StringIO())
        print(f"{package}: {total:.2f} % of statements and branches (floor {floor:g} %)")
        if total < floor:
            below.append(package)
    if below:
        print(f"below the floor: {', '.join(below)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
