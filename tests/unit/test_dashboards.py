"""Static checks of deploy/ and the README: the Grafana dashboard, the Prometheus rules, the scrape config.

Every ``scorer_*`` name in them must be a series scorer really exports. The exported names are not
written out here: they are collected from ``ScorerMetrics``, ``ServeMetrics`` and the evaluation sidecar's
collector on fresh registries, with every labelled metric given representative labels and the sidecar fed
rows of a binary, a multiclass and a regression model, so that every series exists (including the
``_total``, ``_bucket``, ``_sum``, ``_count``, ``_gsum`` and ``_gcount`` samples). Renaming a metric in
the code therefore breaks this test until the dashboard, the rules and the README follow.

promtool's own checks of the rule files are in test_promtool.py.
"""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.metrics import MetricWrapperBase

from scorer.metrics import SCORE_BOUNDS, EvaluationCollector, ScorerMetrics, ServeMetrics
from scorer.sidecar import EvaluationSidecar
from tests.fixtures.offline_sidecar import offline_settings

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
DASHBOARD = DEPLOY / "grafana" / "scorer-dashboard.json"
PROMETHEUS_DIR = DEPLOY / "prometheus"
ALERTS = PROMETHEUS_DIR / "alerts.yml"
RECORDING = PROMETHEUS_DIR / "recording-rules.yml"
SCRAPE_CONFIG = PROMETHEUS_DIR / "prometheus.yml"
RULES_TEST = PROMETHEUS_DIR / "rules-test.yml"
README = REPO / "README.md"


# --- what the code exports ----------------------------------------------------------------------------------


def _label_everything(metrics: object) -> None:
    """Give each labelled metric of a metrics holder one child, so that it exports samples."""
    for metric in vars(metrics).values():
        if isinstance(metric, MetricWrapperBase) and metric._labelnames:
            metric.labels(*(f"some-{name}" for name in metric._labelnames))


def _samples(registry: CollectorRegistry) -> dict[str, set[str]]:
    """Family name -> the names of its samples."""
    families: dict[str, set[str]] = {}
    for family in registry.collect():
        families.setdefault(family.name, set()).update(sample.name for sample in family.samples)
    return families


@functools.cache
def run_families() -> dict[str, set[str]]:
    """What ``scorer run`` exports, as the pipeline builds it."""
    registry = CollectorRegistry()
    metrics = ScorerMetrics(registry)
    _label_everything(metrics)
    metrics.end_to_end.observe_many(np.array([0.2]))
    metrics.on_stats(json.dumps({"topics": {"features": {"partitions": {"0": {"consumer_lag": 7, "desired": True}}}}}))
    return _samples(registry)


@functools.cache
def serve_families() -> dict[str, set[str]]:
    """What ``scorer serve`` exports on its /metrics."""
    registry = CollectorRegistry()
    _label_everything(ServeMetrics(registry))
    return _samples(registry)


@functools.cache
def evaluate_families() -> dict[str, set[str]]:
    """What ``scorer evaluate`` exports: its collector over a sidecar that has joined rows of three models.

    The rows go through the sidecar's own record handling (``ingest``: decoded prediction and label records,
    the joiner, one evaluator per model version) without Kafka; only ``start()`` would connect.
    """
    registry = CollectorRegistry()
    settings = offline_settings(count_window=10, time_windows="5m,1h")
    sidecar = EvaluationSidecar(settings, registry)
    registry.register(EvaluationCollector(sidecar.view))
    now_ms = 1_700_000_000_000
    models = {
        "churn": (["no", "yes"], ["no", "yes", "yes", "no"]),
        "iris": (["setosa", "versicolor", "virginica"], ["setosa", "virginica", "versicolor", "setosa"]),
        "price": (None, [1.0, 2.5, 4.0, 3.0]),
    }
    for name, (classes, truths) in models.items():
        for i, truth in enumerate(truths):
            record_id = f"{name}-{i}"
            if classes is None:
                probabilities, predicted, positive = None, truth + 0.5, None
            else:
                p = np.full(len(classes), 0.1)
                p[i % len(classes)] = 1.0 - 0.1 * (len(classes) - 1)
                probabilities = dict(zip(classes, p.tolist(), strict=True))
                predicted = classes[i % len(classes)]
                positive = probabilities[classes[-1]] if len(classes) == 2 else None
            prediction = {
                "id": record_id,
                "model_name": name,
                "model_version": "1",
                "scored_label": predicted,
                "scored_probability": positive,
                "scored_probabilities": probabilities,
            }
            sidecar.ingest("predictions", prediction, timestamp_ms=now_ms + i)
            sidecar.ingest("labels", {"id": record_id, "label": truth, "event_time": now_ms + i}, now_ms + i)
    sidecar.ingest("labels", {"id": "no-label-field"}, now_ms)  # counted as invalid
    assert sidecar.joiner.counts.joined == sum(len(truths) for _, truths in models.values())
    return _samples(registry)


@functools.cache
def exported_series() -> frozenset[str]:
    """Every sample name scorer exports (``scorer run``, ``scorer serve``, ``scorer evaluate``)."""
    return frozenset(
        name
        for families in (run_families(), serve_families(), evaluate_families())
        for samples in families.values()
        for name in samples
    )


@functools.cache
def exported_families() -> frozenset[str]:
    """Every metric family name (histograms and counters without their sample suffixes)."""
    return frozenset(run_families()) | frozenset(serve_families()) | frozenset(evaluate_families())


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


def _unknown(names: set[str]) -> list[str]:
    return sorted(names - exported_series())


def test_every_exporter_contributes_and_names_match_the_pattern() -> None:
    """The collected names are complete enough to judge by: each exporter adds series, of every kind."""
    evaluate = evaluate_families()
    assert len(run_families()) >= 12 and serve_families() and len(evaluate) >= 30
    for task_metric in ("scorer_evaluation_auc", "scorer_evaluation_macro_recall", "scorer_evaluation_r2"):
        assert task_metric in evaluate, "every task's gauges are exported"
    assert {"scorer_evaluation_confusion", "scorer_evaluation_late_rows", "scorer_evaluation_invalid_records"} <= set(
        evaluate
    ), "labelled families exist once they have a child"
    assert {"scorer_stage_duration_seconds_bucket", "scorer_evaluation_score_gcount"} <= exported_series()
    for name in exported_series():
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
    assert not _unknown(used), f"metric names scorer does not export: {_unknown(used)}"


def test_dashboard_shows_every_run_metric(dashboard: dict[str, Any]) -> None:
    used = set().union(*(series_names(e) for e in _queries(dashboard)))
    families = {re.sub(r"_(total|bucket|sum|count)$", "", name) for name in used}
    missing = sorted(set(run_families()) - families)
    assert not missing, f"`scorer run` metrics the dashboard does not show: {missing}"


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


def test_the_rule_files_are_the_ones_checked_here() -> None:
    assert sorted(p.name for p in PROMETHEUS_DIR.glob("*.yml")) == sorted(
        p.name for p in (ALERTS, RECORDING, SCRAPE_CONFIG, RULES_TEST)
    )


@pytest.mark.parametrize("path", sorted(PROMETHEUS_DIR.glob("*.yml")), ids=lambda p: p.name)
def test_rule_files_use_only_known_metric_names(path: Path) -> None:
    """Recorded series (``scorer:...:...``) are not ``scorer_*`` names; they are checked against the rules."""
    unknown = _unknown(series_names(path.read_text(encoding="utf-8")))
    assert not unknown, f"metric names scorer does not export, in {path.name}: {unknown}"


@pytest.mark.parametrize("path", sorted((DEPLOY / "grafana").glob("*.json")), ids=lambda p: p.name)
def test_dashboards_name_only_exported_metrics(path: Path) -> None:
    """Anywhere in the JSON: queries (checked as series above) and descriptions, which may name a family."""
    unknown = sorted(series_names(path.read_text(encoding="utf-8")) - exported_series() - exported_families())
    assert not unknown, f"metric names scorer does not export, in {path.name}: {unknown}"


def _readme_promql() -> list[str]:
    return re.findall(r"^```promql\n(.*?)^```", README.read_text(encoding="utf-8"), flags=re.MULTILINE | re.DOTALL)


def test_readme_promql_uses_only_known_metric_names() -> None:
    blocks = _readme_promql()
    assert blocks, "the README documents the fleet-wide PromQL"
    used = set().union(*(series_names(block) for block in blocks))
    assert used and not _unknown(used), f"metric names scorer does not export, in the README's PromQL: {_unknown(used)}"


def test_readme_names_only_exported_metrics() -> None:
    """The metric tables and prose name families (histograms without suffixes) or series; a trailing
    ``_`` is the ``scorer_evaluation_<metric>`` pattern."""
    named = {name for name in series_names(README.read_text(encoding="utf-8")) if not name.endswith("_")}
    unknown = sorted(named - exported_series() - exported_families())
    assert not unknown, f"the README names metrics scorer does not export: {unknown}"


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
        assert not _unknown(names), f"{name}: metric names scorer does not export: {_unknown(names)}"


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
        assert not _unknown(names), f"{rule['record']}: metric names scorer does not export: {_unknown(names)}"
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
