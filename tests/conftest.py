"""Fixtures shared by every test directory, and the hypothesis profiles."""

import os

from hypothesis import settings

# Real servers on 127.0.0.1 (Postfix, smtp-sink, Redis) with skip-or-fail when one is missing.
pytest_plugins = ["tests.servers.fixtures"]

# Deterministic by default: every run, CI's included, tries the same examples, so a red run is
# reproducible and never a new example found by chance. `HYPOTHESIS_PROFILE=explore` draws fresh
# examples (and more of them) to look for new failures; a failure it finds is printed with the
# steps to reproduce it, to be kept as an explicit test.
settings.register_profile("default", derandomize=True)
settings.register_profile("explore", derandomize=False, max_examples=500)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))
