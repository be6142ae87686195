"""Fixtures shared by every test directory."""

# Real servers on 127.0.0.1 (Postfix, smtp-sink, Redis) with skip-or-fail when one is missing.
pytest_plugins = ["tests.servers.fixtures"]
