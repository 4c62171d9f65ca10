"""`make demo` is the first thing a newcomer runs: it must run to the end and show what it promises."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration


def test_the_demo_runs_to_the_end_and_prints_scores_dead_letters_and_rolling_metrics(tmp_path) -> None:
    records = 300
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "scorer",
            "demo",
            "--records",
            str(records),
            "--rate",
            "600",
            "--state-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=240,
    )
    out = done.stdout
    assert done.returncode == 0, out[-3000:] + done.stderr[-3000:]
    assert re.search(r"^sample of 10 scored records \(of 301\):", out, re.M), out
    assert re.search(r"^patient-\d{5} ", out, re.M), "the sample table shows scored records by id"
    broken = re.search(r"^dead letters \((\d+)\):", out, re.M)
    assert broken and int(broken.group(1)) > 0, "the demo's malformed records show up as dead letters"
    summary = re.search(
        r"^summary: (\d+) in, (\d+) predictions, (\d+) dead letters, [\d.]+ s, [\d,]+ predictions/s", out, re.M
    )
    assert summary, out
    assert int(summary.group(1)) == records + 1 + int(broken.group(1))
    assert int(summary.group(2)) == records + 1
    assert "scorer_records_scored_total" in out, "the running counters are printed"
    joined = re.search(r"^rolling evaluation \(labels arrived late; (\d+) joined", out, re.M)
    assert joined and int(joined.group(1)) > 0, "late labels are joined and the rolling metrics printed"
    assert "dev stack stopped" in out
    assert "(exit code 0)" in out and "exit code 1" not in out, "both services stop cleanly"
