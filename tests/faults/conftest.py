"""The fault suite's results table: each fault test adds a row; the session writes it as Markdown.

The table goes to ``$SCORER_RELIABILITY_REPORT`` if set, else to ``reliability-results.md`` under pytest's
base temporary directory, and is printed in the terminal summary (copy it into docs/reliability.md).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest

REPORT_ENV = "SCORER_RELIABILITY_REPORT"
_ROWS = pytest.StashKey[list["FaultResult"]]()
_PATH = pytest.StashKey[Path]()


@dataclass(frozen=True)
class FaultResult:
    fault: str
    records: int
    lost: int
    duplicates: int
    recovery_s: float | None
    note: str = ""


class Results:
    """What a test hands its row to (the ``fault_results`` fixture)."""

    def __init__(self, rows: list[FaultResult]) -> None:
        self._rows = rows

    def add(
        self, fault: str, records: int, lost: int, duplicates: int, recovery_s: float | None, note: str = ""
    ) -> None:
        row = FaultResult(fault, records, lost, duplicates, recovery_s, note)
        self._rows.append(row)
        print(f"fault result: {row}")


@pytest.fixture(scope="session")
def fault_results(pytestconfig: pytest.Config, tmp_path_factory: pytest.TempPathFactory) -> Results:
    rows = pytestconfig.stash.setdefault(_ROWS, [])
    chosen = os.environ.get(REPORT_ENV)
    pytestconfig.stash[_PATH] = Path(chosen) if chosen else tmp_path_factory.getbasetemp() / "reliability-results.md"
    return Results(rows)


def markdown(rows: list[FaultResult]) -> str:
    lines = [
        "| fault | records | lost | duplicates | recovery (s) | notes |",
        "| --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for row in rows:
        recovery = "–" if row.recovery_s is None else f"{row.recovery_s:.1f}"
        lines.append(f"| {row.fault} | {row.records:,} | {row.lost} | {row.duplicates} | {recovery} | {row.note} |")
    return "\n".join(lines) + "\n"


def pytest_sessionfinish(session: pytest.Session) -> None:
    rows = session.config.stash.get(_ROWS, [])
    if rows:
        path = session.config.stash[_PATH]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(markdown(rows))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    rows = config.stash.get(_ROWS, [])
    if not rows:
        return
    terminalreporter.section("fault injection results")
    terminalreporter.write(markdown(rows))
    terminalreporter.write_line(f"written to {config.stash[_PATH]}")
