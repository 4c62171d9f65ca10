"""The core knows nothing of Kafka, Prometheus or the network, so files and HTTP can reuse the same scoring path.

An ``ast`` walk over each core module finds every import (inside functions too, and
``importlib.import_module`` with a literal name) and checks it against the layers of
shared/docs/house-style.md, 2.1 and 2.2.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

import scorer

PACKAGE = Path(scorer.__file__).parent
CORE = (
    "schema",
    "bundle",
    "codec",
    "batching",
    "scoring",
    "avroblock",
    "deadletter",
    "evaluation",
    "join",
    "types",
    "errors",
)
FORBIDDEN_LIBRARIES = {
    "confluent_kafka": "Kafka belongs to the adapters (kafka.py, registry.py)",
    "prometheus_client": "metrics belong to metrics.py; the core returns counts",
    "http": "the network belongs to the adapters",
    "socket": "the network belongs to the adapters",
    "socketserver": "the network belongs to the adapters",
    "urllib": "the network belongs to the adapters",
    "threading": "the core is pure: services own the threads",
    "subprocess": "the core is pure: only devstack starts processes",
}
# Every other scorer module is above the core: adapters, services and entry points (pipeline, kafka,
# registry, metrics, cli, service, sidecar, devstack, devregistry, demo, ... and any module added later).
CORE_OR_BELOW = {*CORE, "config"}
ABOVE_CORE = sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem not in CORE_OR_BELOW and not p.stem.startswith("__"))


def imported_modules(tree: ast.Module) -> Iterator[tuple[int, str]]:
    """(line, dotted name) of everything a scorer module imports; ``from scorer import x`` yields ``scorer.x``."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                source = node.module or ""
            else:  # relative: the core modules sit directly in the scorer package
                source = "scorer" if node.level == 1 else "<outside scorer>"
                source += f".{node.module}" if node.module else ""
            yield node.lineno, source
            if source == "scorer":  # ``from scorer import pipeline`` imports the module scorer.pipeline
                for alias in node.names:
                    yield node.lineno, f"{source}.{alias.name}"
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
            if name in ("import_module", "__import__") and isinstance(node.args[0].value, str):
                yield node.lineno, node.args[0].value


def violations(module: str) -> list[str]:
    path = PACKAGE / f"{module}.py"
    found = set()
    for line, name in imported_modules(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        parts = name.split(".")
        if parts[0] in FORBIDDEN_LIBRARIES:
            found.add(f"scorer/{module}.py:{line} imports {name}: {FORBIDDEN_LIBRARIES[parts[0]]}")
        elif parts[0] == "scorer" and len(parts) > 1 and parts[1] in ABOVE_CORE:
            found.add(f"scorer/{module}.py:{line} imports {name}, a module above the core")
    return sorted(found)


@pytest.mark.parametrize("module", CORE)
def test_core_module_imports_nothing_from_the_layers_above(module: str) -> None:
    assert {"pipeline", "kafka", "registry", "metrics", "cli", "devstack"} <= set(ABOVE_CORE)  # the walk sees them
    found = violations(module)
    assert not found, "the core must stay free of Kafka, Prometheus and the network:\n" + "\n".join(found)
