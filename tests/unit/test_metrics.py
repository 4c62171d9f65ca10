"""Unit tests of scorer.metrics: names follow Prometheus conventions and match the README, lag, /metrics port.

Every test builds its metrics on a fresh ``CollectorRegistry`` (prometheus client_python's own test style).
"""

from __future__ import annotations

import json
import re
import socket
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.metrics import MetricWrapperBase

from scorer.errors import ConfigError
from scorer.evaluation import Evaluator
from scorer.join import JoinedRow, PredictionFacts
from scorer.metrics import (
    EvaluationCollector,
    EvaluationView,
    ScorerMetrics,
    ServeMetrics,
    exposition,
    serve_metrics,
)
from scorer.sidecar import window_views

README = Path(__file__).resolve().parents[2] / "README.md"
UNITS = ("_seconds", "_records", "_bytes")


def families(registry: CollectorRegistry) -> dict[str, str]:
    """Exported metric name as PromQL spells it (counters with ``_total``) -> metric type."""
    return {(f"{m.name}_total" if m.type == "counter" else m.name): m.type for m in registry.collect()}


def series(registry: CollectorRegistry) -> set[str]:
    """Every sample name the registry exports now (``_bucket``, ``_gsum``, ``_total``...)."""
    return {sample.name for m in registry.collect() for sample in m.samples}


def readme_section(heading: str) -> str:
    """The README text under ``heading`` up to the next heading of the same or a higher level (not in code)."""
    lines = README.read_text(encoding="utf-8").splitlines()
    level = len(heading.split(" ", 1)[0])
    start = lines.index(heading) + 1
    in_code = False
    for end in range(start, len(lines)):
        in_code ^= lines[end].startswith("```")
        hashes = len(lines[end]) - len(lines[end].lstrip("#"))
        if not in_code and 0 < hashes <= level and lines[end][hashes : hashes + 1] == " ":
            return "\n".join(lines[start:end])
    return "\n".join(lines[start:])


def table_rows(section: str) -> list[list[str]]:
    """Body rows of the first Markdown table in ``section``, as lists of cells."""
    rows = [line for line in section.splitlines() if line.startswith("|")]
    return [[cell.strip() for cell in row.strip().strip("|").split("|")] for row in rows[2:]]


def readme_run_metrics() -> dict[str, tuple[str, tuple[str, ...]]]:
    """The README "Metrics" table: metric name -> (kind, label names)."""
    listed: dict[str, tuple[str, tuple[str, ...]]] = {}
    for names_cell, kinds_cell, labels_cell in table_rows(readme_section("## Metrics")):
        names = re.findall(r"`(scorer_\w+)`", names_cell)
        kinds = [kind.split()[0] for kind in kinds_cell.split(",")]
        labels = tuple(re.findall(r"`(\w+)`", labels_cell))
        for name, kind in zip(names, kinds * len(names) if len(kinds) == 1 else kinds, strict=True):
            listed[name] = (kind, labels)
    return listed


# --- scorer run: names ---------------------------------------------------------------------------------------


def test_readme_metrics_table_lists_exactly_what_scorer_run_exports() -> None:
    registry = CollectorRegistry()
    metrics = ScorerMetrics(registry)
    exported = families(registry)
    listed = readme_run_metrics()
    assert set(listed) == set(exported)
    for name, (kind, _labels) in listed.items():
        assert exported[name] == kind, name
    label_names = {
        f"{w._name}_total" if w._type == "counter" else w._name: w._labelnames
        for w in vars(metrics).values()
        if isinstance(w, MetricWrapperBase)
    }
    for name, (_kind, labels) in listed.items():
        assert label_names.get(name, ()) == labels, name  # BatchHistogram (not a wrapper) has no labels


@pytest.mark.parametrize("build", [ScorerMetrics, ServeMetrics], ids=["run", "serve"])
def test_metric_names_follow_prometheus_conventions(build: Callable[[CollectorRegistry], Any]) -> None:
    registry = CollectorRegistry()
    build(registry)
    exported = families(registry)
    assert exported
    for name, kind in exported.items():
        assert re.fullmatch(r"scorer_[a-z][a-z0-9_]*[a-z0-9]", name), name
        assert name.endswith("_total") == (kind == "counter"), name
        if kind == "histogram":
            assert name.endswith(UNITS), f"{name}: a histogram's name says its unit"
        if re.search(r"duration|latency|time", name):
            assert name.endswith("_seconds"), name
        if re.search(r"size|lag|bytes", name):
            assert name.endswith(("_records", "_bytes")), name
        if kind == "gauge" and not name.endswith(UNITS):
            assert name.endswith(("_info", "_ready")), f"{name}: a gauge with no unit should be info or a flag"


def test_model_info_carries_model_name_and_version() -> None:
    registry = CollectorRegistry()
    metrics = ScorerMetrics(registry)
    metrics.model_info.labels("churn", "3", "binary").set(1)  # as ScoringPipeline.start does
    assert (
        registry.get_sample_value("scorer_model_info", {"model_name": "churn", "model_version": "3", "task": "binary"})
        == 1
    )
    text = exposition(registry)[0].decode()
    assert 'scorer_model_info{model_name="churn",model_version="3",task="binary"} 1.0' in text


def test_rejection_reasons_are_exported_at_zero_before_any_rejection() -> None:
    registry = CollectorRegistry()
    ScorerMetrics(registry)
    for reason in ("empty_value", "malformed_body", "incompatible_schema", "unknown_schema_id", "invalid_value"):
        assert registry.get_sample_value("scorer_records_rejected_total", {"reason": reason}) == 0, reason


# --- scorer run: consumer lag from librdkafka statistics -----------------------------------------------------


def _partition(number: int, *, desired: bool, lag: int, committed: int, high: int) -> dict[str, Any]:
    """One entry of ``topics.<topic>.partitions`` as librdkafka 2.x emits it (the fields scorer may read)."""
    return {
        "partition": number,
        "broker": 1 if number >= 0 else -1,
        "leader": 1 if number >= 0 else -1,
        "desired": desired,
        "unknown": False,
        "msgq_cnt": 0,
        "msgq_bytes": 0,
        "fetchq_cnt": 0,
        "fetchq_size": 0,
        "fetch_state": "active" if desired else ("none" if number < 0 else "stopped"),
        "query_offset": -1001,
        "next_offset": committed if committed >= 0 else -1001,
        "app_offset": committed if committed >= 0 else -1001,
        "stored_offset": -1001,
        "committed_offset": committed,
        "eof_offset": -1001,
        "lo_offset": 0 if high >= 0 else -1001,
        "hi_offset": high,
        "ls_offset": high,
        "consumer_lag": lag,
        "consumer_lag_stored": -1,
        "txmsgs": 0,
        "rxmsgs": max(committed, 0),
    }


def stats(partitions: dict[str, dict[str, Any]], topic: str = "features") -> str:
    return json.dumps(
        {
            "name": "rdkafka#consumer-1",
            "client_id": "scorer",
            "type": "consumer",
            "ts": 5_016_483_227_792,
            "time": 1_727_060_869,
            "brokers": {"127.0.0.1:9092/1": {"name": "127.0.0.1:9092/1", "nodeid": 1, "state": "UP"}},
            "topics": {topic: {"topic": topic, "metadata_age": 2_000, "partitions": partitions}},
            "cgrp": {"state": "up", "join_state": "steady", "assignment_size": 2},
        }
    )


def lag(registry: CollectorRegistry, partition: str, topic: str = "features") -> float | None:
    return registry.get_sample_value("scorer_consumer_lag_records", {"topic": topic, "partition": partition})


def test_lag_is_exported_per_assigned_partition() -> None:
    registry = CollectorRegistry()
    metrics = ScorerMetrics(registry)
    metrics.on_stats(
        stats(
            {
                "0": _partition(0, desired=True, lag=42, committed=1200, high=1242),
                "1": _partition(1, desired=True, lag=0, committed=900, high=900),
                "2": _partition(2, desired=False, lag=-1, committed=-1001, high=-1001),  # another replica's
                "-1": _partition(-1, desired=False, lag=-1, committed=-1001, high=-1001),  # librdkafka's internal one
            }
        )
    )
    assert (lag(registry, "0"), lag(registry, "1")) == (42, 0)
    assert lag(registry, "2") is None
    assert lag(registry, "-1") is None
    exported = {s.labels["partition"] for m in registry.collect() for s in m.samples if m.name.endswith("lag_records")}
    assert exported == {"0", "1"}


def test_lag_of_a_revoked_partition_is_removed() -> None:
    registry = CollectorRegistry()
    metrics = ScorerMetrics(registry)
    both = {
        "0": _partition(0, desired=True, lag=42, committed=1200, high=1242),
        "1": _partition(1, desired=True, lag=7, committed=893, high=900),
        "-1": _partition(-1, desired=False, lag=-1, committed=-1001, high=-1001),
    }
    metrics.on_stats(stats(both))
    assert lag(registry, "1") == 7

    # gone from the statistics altogether
    metrics.on_stats(stats({"0": both["0"], "-1": both["-1"]}))
    assert lag(registry, "1") is None
    assert lag(registry, "0") == 42

    # or, as librdkafka does after a rebalance, still listed, no longer desired, with its last lag frozen
    metrics.on_stats(stats(both))
    assert lag(registry, "1") == 7
    revoked = {**both, "1": _partition(1, desired=False, lag=7, committed=893, high=900)}
    metrics.on_stats(stats(revoked))
    assert lag(registry, "1") is None
    assert lag(registry, "0") == 42


def test_lag_of_a_topic_no_longer_consumed_is_removed() -> None:
    registry = CollectorRegistry()
    metrics = ScorerMetrics(registry)
    metrics.on_stats(stats({"0": _partition(0, desired=True, lag=3, committed=10, high=13)}, topic="old"))
    assert lag(registry, "0", topic="old") == 3
    metrics.on_stats(stats({"0": _partition(0, desired=True, lag=5, committed=10, high=15)}, topic="new"))
    assert lag(registry, "0", topic="old") is None
    assert lag(registry, "0", topic="new") == 5


# --- the /metrics endpoint -----------------------------------------------------------------------------------


def test_metrics_endpoint_serves_the_registry_and_port_0_turns_it_off() -> None:
    registry = CollectorRegistry()
    ScorerMetrics(registry).ready.set(1)
    assert serve_metrics(0, "127.0.0.1", registry) is None
    with socket.socket() as probe:  # a free port: bind, note it, release it
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = serve_metrics(port, "127.0.0.1", registry)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:  # noqa: S310
            assert "scorer_ready 1.0" in response.read().decode()
    finally:
        server.shutdown()
        server.server_close()


def test_metrics_port_in_use_is_a_config_error_naming_it() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError) as info:
            serve_metrics(port, "127.0.0.1", CollectorRegistry())
    assert info.value.setting == "--metrics-port / SCORER_METRICS_PORT"
    assert f"127.0.0.1:{port}" in str(info.value)
    assert "0 to turn the endpoint off" in str(info.value)


def test_metrics_host_that_is_not_ours_is_a_config_error_naming_it() -> None:
    with pytest.raises(ConfigError) as info:
        serve_metrics(9400, "192.0.2.1", CollectorRegistry())  # TEST-NET-1: never a local address
    assert info.value.setting == "--metrics-host / SCORER_METRICS_HOST"


# --- scorer evaluate: the evaluation collector ---------------------------------------------------------------


def _evaluator(task: str) -> Evaluator:
    """An evaluator with a few joined rows, as the sidecar builds one per model version."""
    classes = {"binary": ["no", "yes"], "multiclass": ["a", "b", "c"], "regression": None}[task]
    evaluator = Evaluator(task, classes, count_window=3, time_windows_s=[300])  # type: ignore[arg-type]
    for i in range(4):
        if task == "regression":
            facts = PredictionFacts(str(i), "price", "1", 10.0 + i, None, None)
            label: object = 11.0 + i
        else:
            chosen = classes[i % len(classes)]  # type: ignore[index]
            probabilities = {c: (0.8 if c == chosen else 0.2 / (len(classes) - 1)) for c in classes}  # type: ignore[union-attr]
            facts = PredictionFacts(str(i), task, "2", chosen, probabilities.get("yes"), probabilities)
            label = classes[(i + 1) % len(classes)] if i == 3 else chosen  # type: ignore[index]
        evaluator.add(JoinedRow(facts, label, event_time_ms=1_000 * i))
    return evaluator


def _view(evaluators: dict[str, Evaluator]) -> EvaluationView:
    """What EvaluationSidecar.view() hands the collector, built from real evaluators."""
    windows = [view for task, evaluator in evaluators.items() for view in window_views(task, "2", evaluator)]
    counts = {"joined": 12, "predictions_seen": 14, "labels_seen": 13, "pending_predictions": 2}
    return EvaluationView(windows, counts, {("labels", "missing_field"): 1}, {("binary", "2", "5m"): 1})


@pytest.fixture
def evaluation_registry() -> CollectorRegistry:
    registry = CollectorRegistry()
    evaluators = {task: _evaluator(task) for task in ("binary", "multiclass", "regression")}
    registry.register(EvaluationCollector(lambda: _view(evaluators)))
    return registry


def test_evaluation_metric_names_follow_prometheus_conventions(evaluation_registry: CollectorRegistry) -> None:
    for metric in evaluation_registry.collect():
        assert re.fullmatch(r"scorer_evaluation_[a-z0-9_]+", metric.name), metric.name
        for sample in metric.samples:
            assert sample.name.endswith("_total") == (metric.type == "counter"), sample.name
            if metric.type in ("gauge", "gaugehistogram") and sample.name != "scorer_evaluation_pending":
                assert {"window", "model_name", "model_version"} <= set(sample.labels), sample


def test_readme_lists_the_evaluation_metrics_of_each_task(evaluation_registry: CollectorRegistry) -> None:
    rows = {
        task: set(re.findall(r"`(\w+)`", cell))
        for task, cell in table_rows(readme_section("### Metrics (`--metrics-port`, default 9401)"))
    }
    per_task: dict[str, set[str]] = {}
    for metric in evaluation_registry.collect():
        for sample in metric.samples:
            task = sample.labels.get("model_name")
            if metric.type == "gauge" and task and not sample.labels.keys() - {"window", "model_name", "model_version"}:
                per_task.setdefault(task, set()).add(sample.name.removeprefix("scorer_evaluation_"))
    additive = {
        "abs_error_sum",
        "squared_error_sum",
        "label_sum",
        "label_squared_sum",
    }  # fleet-wide, listed below the table
    for task in ("binary", "multiclass", "regression"):
        assert rows[task] | rows["all"] == per_task[task] - additive, task


def test_every_evaluation_series_the_readme_names_is_exported(evaluation_registry: CollectorRegistry) -> None:
    named = set(re.findall(r"(?<![\w:])scorer_evaluation_[a-z0-9_]*[a-z0-9]", readme_section("## Evaluation sidecar")))
    assert {"scorer_evaluation_confusion", "scorer_evaluation_records_total", "scorer_evaluation_tp"} <= named
    assert named <= series(evaluation_registry)
