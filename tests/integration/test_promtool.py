"""deploy/prometheus checked by Prometheus' own promtool: the config and rules load, and the rule unit tests pass.

promtool comes from Debian's ``prometheus`` package, unpacked into ``.venv/tools/promtool`` by
``make tools/promtool`` (``make test`` does it first). A missing promtool fails these tests rather than
skipping them: a rule file Prometheus refuses to load would otherwise go unnoticed until deployment.

The coverage tests need no promtool: every alerting rule must be shown to fire, and every recording rule to
give a value, by a case in rules-test.yml.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = REPO / "deploy" / "prometheus"
RULE_FILES = ("recording-rules.yml", "alerts.yml")


def _promtool() -> str:
    candidates = [os.environ.get("PROMTOOL"), str(REPO / ".venv" / "tools" / "promtool"), shutil.which("promtool")]
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return str(Path(candidate).resolve())  # the commands run in deploy/prometheus: no relative paths
    pytest.fail(
        "promtool not found (looked in $PROMTOOL, .venv/tools/promtool and PATH): "
        "run `make tools/promtool` to fetch it (Debian's prometheus package, unpacked, no root needed)"
    )


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [_promtool(), *args], cwd=PROMETHEUS_DIR, capture_output=True, text=True, timeout=60, check=False
    )


def test_scrape_config_and_both_rule_files_load() -> None:
    result = _run("check", "config", "prometheus.yml")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "SUCCESS: 2 rule files found" in output, output
    for rule_file in RULE_FILES:  # check config also parses every rule file it names
        assert f"Checking {rule_file}" in output, output


def test_rule_unit_tests_pass() -> None:
    result = _run("test", "rules", "rules-test.yml")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "SUCCESS" in output, output


# --- coverage of rules-test.yml -----------------------------------------------------------------------------


def _load(name: str) -> dict[str, Any]:
    return yaml.safe_load((PROMETHEUS_DIR / name).read_text(encoding="utf-8"))


def _rules(name: str) -> list[dict[str, Any]]:
    return [rule for group in _load(name)["groups"] for rule in group["rules"]]


def _cases(kind: str) -> list[dict[str, Any]]:
    return [case for test in _load("rules-test.yml")["tests"] for case in test.get(kind, [])]


def test_rules_test_loads_both_rule_files() -> None:
    assert sorted(_load("rules-test.yml")["rule_files"]) == sorted(RULE_FILES)


def test_every_alerting_rule_is_shown_to_fire() -> None:
    """Each alerting rule (an alert name may have several, told apart by their labels, such as
    ScorerModelQualityLow's ``metric``) needs an expected alert with its name and all of its labels."""
    fired = [
        (case["alertname"], {k: str(v) for k, v in alert.get("exp_labels", {}).items()})
        for case in _cases("alert_rule_test")
        for alert in case.get("exp_alerts") or []
    ]
    uncovered = []
    for rule in _rules("alerts.yml"):
        labels = {k: str(v) for k, v in rule.get("labels", {}).items()}
        if not any(name == rule["alert"] and labels.items() <= got.items() for name, got in fired):
            uncovered.append(f"{rule['alert']}{labels}")
    assert not uncovered, f"alerting rules no case in rules-test.yml expects to fire: {uncovered}"


def test_every_recording_rule_is_evaluated() -> None:
    """Each recorded series needs a promql_expr_test that reads it and expects samples."""
    checked = {
        sample["labels"].split("{", 1)[0]
        for case in _cases("promql_expr_test")
        for sample in case.get("exp_samples") or []
    }
    records = [rule["record"] for rule in _rules("recording-rules.yml")]
    uncovered = [record for record in records if record not in checked]
    assert not uncovered, f"recording rules no promql_expr_test in rules-test.yml checks: {uncovered}"
