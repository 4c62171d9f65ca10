"""Static checks of deploy/: the Grafana dashboard, the Prometheus rules and the scrape config.

Every ``scorer_*`` name in them must be a series scorer exports. The names are spelled out here on
purpose instead of being read from ``scorer.metrics``: renaming a metric breaks this test until the
dashboard, the rules and this list follow.

promtool is not needed here. Where it is installed (Debian's ``prometheus`` package ships it)::

    cd deploy/prometheus
    promtool check config prometheus.yml        # also checks both rule files
    promtool test rules rules-test.yml          # evaluates the recording rules and alerts on fixed series
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from scorer.metrics import SCORE_BOUNDS

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
DASHBOARD = DEPLOY / "grafana" / "scorer-dashboard.json"
PROMETHEUS_DIR = DEPLOY / "prometheus"
ALERTS = PROMETHEUS_DIR / "alerts.yml"
RECORDING = PROMETHEUS_DIR / "recording-rules.yml"
SCRAPE_CONFIG = PROMETHEUS_DIR / "prometheus.yml"
RULES_TEST = PROMETHEUS_DIR / "rules-test.yml"

# `scorer run`
_RUN_COUNTERS = {
    "scorer_records_consumed",
    "scorer_records_scored",
    "scorer_records_rejected",
    "scorer_batches",
    "scorer_registry_retries",
    "scorer_delivery_retries",
}
_RUN_HISTOGRAMS = {"scorer_batch_size_records", "scorer_stage_duration_seconds", "scorer_end_to_end_latency_seconds"}
_RUN_GAUGES = {"scorer_consumer_lag_records", "scorer_model_info", "scorer_ready"}

# `scorer evaluate`: per-window gauges scorer_evaluation_<metric>{window, model_name, model_version}
_BINARY = {"accuracy", "precision", "recall", "f1", "auc", "log_loss", "threshold", "tn", "fp", "fn", "tp"}
_MULTICLASS = {
    "overall_accuracy",
    "average_accuracy",
    "micro_precision",
    "macro_precision",
    "micro_recall",
    "macro_recall",
}
_REGRESSION = {"mae", "rmse", "rae", "rse", "r2"}
_ADDITIVE = {"confusion", "abs_error_sum", "squared_error_sum", "label_sum", "label_squared_sum", "window_rows"}
_EVAL_GAUGES = {f"scorer_evaluation_{name}" for name in _BINARY | _MULTICLASS | _REGRESSION | _ADDITIVE} | {
    "scorer_evaluation_pending"
}
_EVAL_COUNTERS = {
    "scorer_evaluation_records",
    "scorer_evaluation_invalid_records",
    "scorer_evaluation_seen",
    "scorer_evaluation_late_rows",
}
_EVAL_GAUGE_HISTOGRAMS = {"scorer_evaluation_score"}

KNOWN_SERIES = (
    {f"{name}_total" for name in _RUN_COUNTERS | _EVAL_COUNTERS}
    | _RUN_GAUGES
    | _EVAL_GAUGES
    | {f"{name}{suffix}" for name in _RUN_HISTOGRAMS for suffix in ("_bucket", "_sum", "_count")}
    | {f"{name}{suffix}" for name in _EVAL_GAUGE_HISTOGRAMS for suffix in ("_bucket", "_gsum", "_gcount")}
)

REQUIRED_ALERTS = {
    "ScorerConsumerLagGrowing",
    "ScorerDeadLetterRateHigh",
    "ScorerNotReady",
    "ScorerDown",
    "ScorerModelQualityLow",
    "ScorerLabelsNotArriving",
    "ScorerEndToEndLatencyHigh",
}
REQUIRED_RECORDS = {
    "scorer:evaluation_accuracy:fleet",
    "scorer:evaluation_precision:fleet",
    "scorer:evaluation_recall:fleet",
    "scorer:evaluation_f1:fleet",
    "scorer:evaluation_mae:fleet",
    "scorer:evaluation_rmse:fleet",
    "scorer:evaluation_r2:fleet",
    "scorer:evaluation_score_bucket:fleet",
}
SEVERITIES = {"critical", "warning", "info"}

_SERIES_RE = re.compile(r"(?<![\w:])scorer_[a-z0-9_]+")
_RECORDED_RE = re.compile(r"(?<![\w:])scorer:[a-z0-9_]+:[a-z0-9_]+")
_DURATION_RE = re.compile(r"^(\d+(ms|s|m|h|d|w|y))+$")
_QUANTILE_RE = re.compile(
    r"histogram_quantile\(0\.\d+, sum by \(le(, \w+)*\) \(rate\((scorer_\w+)_bucket\[5m\]\)\)\)",
)


def series_names(text: str) -> set[str]:
    """The ``scorer_*`` series named in PromQL or in any text."""
    return set(_SERIES_RE.findall(text))


def recorded_names(text: str) -> set[str]:
    """The ``scorer:*:*`` recording-rule names in a text."""
    return set(_RECORDED_RE.findall(text))


# --- the dashboard ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text(encoding="utf-8"))


def _panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """All panels, including those inside collapsed rows."""
    out = []
    for panel in dashboard["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))
    return out


def _queries(dashboard: dict[str, Any]) -> list[str]:
    """Every PromQL expression: panel targets and query variables."""
    exprs = [t["expr"] for p in _panels(dashboard) for t in p.get("targets", [])]
    for var in dashboard["templating"]["list"]:
        if var["type"] == "query":
            query = var["query"]
            exprs.append(query["query"] if isinstance(query, dict) else query)
    return exprs


def test_metric_name_list_is_not_empty_and_matches_the_pattern() -> None:
    assert len(KNOWN_SERIES) > 50
    for name in KNOWN_SERIES:
        assert series_names(name) == {name}, name


def test_dashboard_is_a_grafana_dashboard(dashboard: dict[str, Any]) -> None:
    assert dashboard["title"] == "scorer"
    assert dashboard["uid"]
    assert 36 <= dashboard["schemaVersion"] <= 41
    ids = [p["id"] for p in _panels(dashboard)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in _panels(dashboard):
        pos = panel["gridPos"]
        assert pos["w"] >= 1 and pos["x"] >= 0 and pos["x"] + pos["w"] <= 24, panel["title"]


def test_template_variables(dashboard: dict[str, Any]) -> None:
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert {"datasource", "model_name", "model_version", "window"} <= set(variables)
    datasource = variables["datasource"]
    assert datasource["type"] == "datasource"
    assert datasource["query"] == "prometheus"
    for name in ("model_name", "model_version", "window"):
        var = variables[name]
        assert var["type"] == "query"
        assert var["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert var["includeAll"] and var["multi"]


def test_every_panel_has_a_title_the_datasource_variable_and_queries(dashboard: dict[str, Any]) -> None:
    for panel in _panels(dashboard):
        assert panel.get("title"), f"panel {panel['id']} has no title"
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        targets = panel.get("targets")
        assert targets, f"{panel['title']}: no targets"
        ref_ids = [t["refId"] for t in targets]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]
        for target in targets:
            assert target["expr"].strip(), panel["title"]
            assert target.get("datasource", panel["datasource"]) == panel["datasource"], panel["title"]


def test_dashboard_uses_only_known_metric_names(dashboard: dict[str, Any]) -> None:
    used: set[str] = set()
    for expr in _queries(dashboard):
        names = series_names(expr) | recorded_names(expr)
        assert names, f"no scorer metric in {expr!r}"
        used |= series_names(expr)
    assert used <= KNOWN_SERIES, f"unknown metric names: {sorted(used - KNOWN_SERIES)}"


def test_dashboard_shows_every_run_metric(dashboard: dict[str, Any]) -> None:
    used = set().union(*(series_names(e) for e in _queries(dashboard)))
    families = {re.sub(r"_(total|bucket|sum|count)$", "", name) for name in used}
    assert _RUN_COUNTERS | _RUN_HISTOGRAMS | _RUN_GAUGES <= families


def test_dashboard_recorded_series_are_defined() -> None:
    dashboard_text = DASHBOARD.read_text(encoding="utf-8")
    defined = set(re.findall(r"record:\s*(\S+)", RECORDING.read_text(encoding="utf-8")))
    assert recorded_names(dashboard_text) <= defined


def test_quantiles_come_from_summed_bucket_rates(dashboard: dict[str, Any]) -> None:
    quantiles = [e for e in _queries(dashboard) if "histogram_quantile" in e]
    assert len(quantiles) >= 6
    for expr in quantiles:
        assert _QUANTILE_RE.fullmatch(expr), expr
    stage = [e for e in quantiles if "scorer_stage_duration_seconds_bucket" in e]
    assert stage and all("sum by (le, stage)" in e for e in stage)


def test_quality_panels_filter_on_the_template_variables(dashboard: dict[str, Any]) -> None:
    selector = 'model_name=~"$model_name", model_version=~"$model_version", window=~"$window"'
    for expr in _queries(dashboard):
        window_metrics = {n for n in series_names(expr) if n.startswith("scorer_evaluation_")} - {
            "scorer_evaluation_records_total",
            "scorer_evaluation_pending",
            "scorer_evaluation_seen_total",
            "scorer_evaluation_invalid_records_total",
            "scorer_evaluation_window_rows",  # the variables' own source
        }
        if window_metrics:
            assert selector in expr, expr


# --- the rule files, as text (no YAML parser needed) --------------------------------------------------------


@pytest.mark.parametrize("path", [ALERTS, RECORDING, SCRAPE_CONFIG, RULES_TEST], ids=lambda p: p.name)
def test_rule_files_use_only_known_metric_names(path: Path) -> None:
    names = series_names(path.read_text(encoding="utf-8"))
    assert names <= KNOWN_SERIES, f"unknown metric names in {path.name}: {sorted(names - KNOWN_SERIES)}"


def test_alerts_use_only_defined_recorded_series() -> None:
    defined = set(re.findall(r"record:\s*(\S+)", RECORDING.read_text(encoding="utf-8")))
    assert recorded_names(ALERTS.read_text(encoding="utf-8")) <= defined


def test_auc_rule_shifts_buckets_by_the_exported_bounds() -> None:
    """The fleet AUC rule relabels each score bucket with the next bound; they must be scorer's bounds."""
    text = RECORDING.read_text(encoding="utf-8")
    pairs = re.findall(r'scorer:evaluation_score_bucket:fleet\{le="([^"]+)"\}, "le", "([^"]+)", "", ""', text)
    bounds = [str(bound) for bound in SCORE_BOUNDS]
    assert pairs == list(zip(bounds, bounds[1:], strict=False))


# --- the rule files, parsed ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def yaml() -> ModuleType:
    import yaml as pyyaml  # in the dev extra

    return pyyaml


def _rules(yaml: ModuleType, path: Path) -> list[dict[str, Any]]:
    doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert set(doc) == {"groups"}
    rules = []
    for group in doc["groups"]:
        assert group["name"] and group["rules"], group
        rules.extend(group["rules"])
    return rules


def test_alerts_have_expr_for_severity_summary_and_description(yaml: ModuleType) -> None:
    rules = _rules(yaml, ALERTS)
    assert REQUIRED_ALERTS <= {r["alert"] for r in rules}
    for rule in rules:
        name = rule["alert"]
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, name
        assert rule["expr"].strip(), name
        assert _DURATION_RE.match(rule["for"]), name
        assert rule["labels"]["severity"] in SEVERITIES, name
        assert rule["annotations"]["summary"].strip(), name
        assert rule["annotations"]["description"].strip(), name
        names = series_names(rule["expr"])
        assert names <= KNOWN_SERIES, f"{name}: unknown metric names {sorted(names - KNOWN_SERIES)}"


def test_quality_alerts_state_their_threshold(yaml: ModuleType) -> None:
    quality = [r for r in _rules(yaml, ALERTS) if r["alert"] == "ScorerModelQualityLow"]
    assert {r["labels"]["metric"] for r in quality} == {"accuracy", "auc", "r2"}
    for rule in quality:
        assert 'window="1h"' in rule["expr"]
        assert re.search(r"scorer_evaluation_window_rows\{[^}]*\} > 100", rule["expr"]), rule["expr"]
        threshold = re.search(r"\) < ([0-9.]+)|\} < ([0-9.]+)", rule["expr"])
        assert threshold, rule["expr"]
        value = threshold.group(1) or threshold.group(2)
        assert f"< {value}" in rule["annotations"]["summary"]
        assert f"threshold: < {value}" in rule["annotations"]["description"]


def test_recording_rules_are_named_and_use_known_metrics(yaml: ModuleType) -> None:
    rules = _rules(yaml, RECORDING)
    records = [r["record"] for r in rules]
    assert len(records) == len(set(records))
    assert REQUIRED_RECORDS <= set(records)
    for rule in rules:
        assert set(rule) <= {"record", "expr", "labels"}, rule["record"]
        assert _RECORDED_RE.fullmatch(rule["record"]), rule["record"]
        names = series_names(rule["expr"])
        assert names <= KNOWN_SERIES, f"{rule['record']}: unknown metric names {sorted(names - KNOWN_SERIES)}"
        # A rule may only read recorded series defined before it (same group, evaluated in order).
        assert recorded_names(rule["expr"]) <= set(records[: records.index(rule["record"])]), rule["record"]


def test_scrape_config_loads_both_rule_files_and_scrapes_both_jobs(yaml: ModuleType) -> None:
    config = yaml.safe_load(SCRAPE_CONFIG.read_text(encoding="utf-8"))
    assert config["global"]["evaluation_interval"] == "15s"
    assert sorted(config["rule_files"]) == ["alerts.yml", "recording-rules.yml"]
    for rule_file in config["rule_files"]:
        assert (PROMETHEUS_DIR / rule_file).is_file()
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert jobs["scorer"]["static_configs"][0]["targets"] == ["scorer:9400"]
    assert jobs["scorer-evaluate"]["static_configs"][0]["targets"] == ["evaluate:9401"]
    alert_jobs = set(re.findall(r'job="([^"]+)"', ALERTS.read_text(encoding="utf-8")))
    assert alert_jobs <= set(jobs)


def test_rules_test_file_covers_every_recording_rule(yaml: ModuleType) -> None:
    doc = yaml.safe_load(RULES_TEST.read_text(encoding="utf-8"))
    assert sorted(doc["rule_files"]) == ["alerts.yml", "recording-rules.yml"]
    tested = {
        recorded
        for test in doc["tests"]
        for case in test.get("promql_expr_test", [])
        for recorded in recorded_names(case["expr"])
    }
    final = {r["record"] for r in _rules(yaml, RECORDING)} - {
        "scorer:evaluation_score_bucket:fleet",  # inputs of the AUC rule, tested through it
        "scorer:evaluation_score_bucket_prev:fleet",
    }
    assert final <= tested
