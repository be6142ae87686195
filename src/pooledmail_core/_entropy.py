"""The randomness the core accepts: anything with `random()`, such as a `random.Random`.

The core never creates a random source itself (jitter and tie-breaks must be reproducible in
tests); the driver passes one in.
"""

from __future__ import annotations

from typing import Protocol

__all__ = ["RandomSource"]


class RandomSource(Protocol):
    """A source of uniform floats in [0, 1): `random.Random` satisfies it."""

    def random(self) -> float: ...
