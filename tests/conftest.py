from __future__ import annotations

pytest_plugins = ["tests.fixtures.stack", "tests.fixtures.models", "tests.fixtures.results"]
