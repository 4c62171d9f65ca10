"""`make demo` is the first thing a newcomer runs: it must run to the end and show what it promises."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys

import pytest

from scorer import devstack
from scorer.demo import broken_records

pytestmark = pytest.mark.integration


def test_the_demo_runs_to_the_end_and_prints_scores_dead_letters_and_rolling_metrics(tmp_path) -> None:
    records = 300
    command = [sys.executable, "-m", "scorer", "demo", "--records", str(records), "--rate", "600"]
    demo = subprocess.Popen(
        [*command, "--state-dir", str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group: the services it starts go with it on a timeout
    )
    try:
        stdout, stderr = demo.communicate(timeout=240)
    finally:
        if demo.poll() is None:
            os.killpg(demo.pid, signal.SIGKILL)
            demo.wait()
        devstack.stop(tmp_path / "stack")  # the broker and registry run detached: stopped by their PIDs
    out = stdout
    assert demo.returncode == 0, stdout[-3000:] + stderr[-3000:]
    assert re.search(r"^sample of 10 scored records \(of 301\):", out, re.M), out
    assert re.search(r"^patient-\d{5} ", out, re.M), "the sample table shows scored records by id"
    malformed = len(broken_records(schema_id=1))
    broken = re.search(r"^dead letters \((\d+)\):", out, re.M)
    assert broken and int(broken.group(1)) == malformed, "each malformed record shows up as a dead letter"
    summary = re.search(
        r"^summary: (\d+) in, (\d+) predictions, (\d+) dead letters, [\d.]+ s, [\d,]+ predictions/s", out, re.M
    )
    assert summary, out
    assert int(summary.group(1)) == records + 1 + malformed
    assert int(summary.group(2)) == records + 1, "every good record (and the warm-up one) is scored"
    assert int(summary.group(3)) == malformed
    assert "scorer_records_scored_total" in out, "the running counters are printed"
    joined = re.search(r"^rolling evaluation \(labels arrived late; (\d+) joined", out, re.M)
    assert joined and int(joined.group(1)) > 0, "late labels are joined and the rolling metrics printed"
    assert "dev stack stopped" in out
    codes = re.findall(r"stopped \(exit code (-?\d+)\)", out)
    assert codes == ["0", "0"], f"scorer run and scorer evaluate stop cleanly, exit codes {codes}"
