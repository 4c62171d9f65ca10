"""Prometheus metric definitions for the scorer service, on an injected ``CollectorRegistry``.

Names follow Prometheus conventions: units in the name (``_seconds``, ``_records``), ``_total`` on counters.
Services own the calls (core modules return counts instead), and tests pass a fresh registry each.

May import: errors. Third-party: prometheus_client.
"""

from __future__ import annotations

import errno
import json
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    start_http_server,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeHistogramMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from scorer.errors import ConfigError

__all__ = [
    "SCORE_BOUNDS",
    "BatchHistogram",
    "EvaluationCollector",
    "EvaluationView",
    "ScorerMetrics",
    "ServeMetrics",
    "WindowView",
    "exposition",
    "serve_metrics",
]

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_STAGE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
_BATCH_BUCKETS = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000)


class BatchHistogram(Collector):
    """A histogram observed a whole batch at a time.

    prometheus_client's ``Histogram.observe`` takes one value per call (about a microsecond each, with a
    lock); per-record latencies of a 1,000-record batch would cost a millisecond. This keeps the bucket
    counts in numpy and exports the usual ``_bucket``/``_sum``/``_count`` series at scrape time.
    """

    def __init__(self, name: str, documentation: str, buckets: tuple[float, ...], registry: CollectorRegistry) -> None:
        self._name, self._documentation = name, documentation
        self._bounds = np.asarray(buckets, dtype=np.float64)
        self._counts = np.zeros(len(buckets) + 1, dtype=np.int64)  # the last one is +Inf
        self._sum = 0.0
        self._lock = threading.Lock()
        registry.register(self)

    def observe_many(self, values: np.ndarray) -> None:
        if not len(values):
            return
        slots = np.searchsorted(self._bounds, values, side="left")  # le: value <= bound
        counts = np.bincount(slots, minlength=len(self._counts))
        with self._lock:
            self._counts += counts
            self._sum += float(values.sum())

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            cumulative = np.cumsum(self._counts).tolist()
            total = self._sum
        family = HistogramMetricFamily(self._name, self._documentation)
        bounds = [*(repr(float(b)) for b in self._bounds), "+Inf"]
        family.add_metric([], list(zip(bounds, cumulative, strict=True)), sum_value=total)
        yield family


class ScorerMetrics:
    """Everything ``scorer run`` exports."""

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.consumed = Counter("scorer_records_consumed", "Input records consumed.", ["topic"], registry=registry)
        self.scored = Counter("scorer_records_scored", "Input records scored and delivered.", registry=registry)
        self.rejected = Counter(
            "scorer_records_rejected",
            "Input records sent to the dead-letter topic, by reason.",
            ["reason"],
            registry=registry,
        )
        self.batches = Counter("scorer_batches", "Micro-batches processed.", registry=registry)
        self.batch_size = Histogram(
            "scorer_batch_size_records", "Records per micro-batch.", buckets=_BATCH_BUCKETS, registry=registry
        )
        self.stage_seconds = Histogram(
            "scorer_stage_duration_seconds",
            "Time per batch in each stage (decode, score, encode, produce, commit).",
            ["stage"],
            buckets=_STAGE_BUCKETS,
            registry=registry,
        )
        self.end_to_end = BatchHistogram(
            "scorer_end_to_end_latency_seconds",
            "Output acknowledged minus input record timestamp.",
            _LATENCY_BUCKETS,
            registry,
        )
        self.lag = Gauge(
            "scorer_consumer_lag_records",
            "Records behind the partition's high watermark (from librdkafka statistics).",
            ["topic", "partition"],
            registry=registry,
        )
        self.model_info = Gauge(
            "scorer_model_info",
            "The model being served (value 1).",
            ["model_name", "model_version", "task"],
            registry=registry,
        )
        self._lag_series: set[tuple[str, str]] = set()
        self.ready = Gauge(
            "scorer_ready", "1 while the scorer is consuming and its broker is reachable.", registry=registry
        )
        self.registry_retries = Counter(
            "scorer_registry_retries", "Registry calls retried because it was unreachable.", registry=registry
        )
        self.delivery_retries = Counter(
            "scorer_delivery_retries",
            "Batches whose outputs were produced again after a delivery failure.",
            registry=registry,
        )
        for reason in ("empty_value", "malformed_body", "incompatible_schema", "unknown_schema_id", "invalid_value"):
            self.rejected.labels(reason=reason)  # exported at 0 so that rate() works from the start

    def on_stats(self, stats_json: str) -> None:
        """librdkafka ``stats_cb``: copy consumer lag per assigned partition (library first: no lag math here).

        librdkafka goes on listing a revoked partition, with ``desired`` false and the lag it had when it was
        revoked; only ``desired`` partitions are this replica's. Partition -1 is librdkafka's internal one.
        """
        stats: dict[str, Any] = json.loads(stats_json)
        current = set()
        for topic, info in stats.get("topics", {}).items():
            for partition, values in info.get("partitions", {}).items():
                if partition == "-1" or not values.get("desired") or values.get("consumer_lag", -1) < 0:
                    continue
                self.lag.labels(topic=topic, partition=partition).set(values["consumer_lag"])
                current.add((topic, partition))
        for gone in self._lag_series - current:  # moved to another replica: stop exporting a stale value
            self.lag.remove(*gone)
        self._lag_series = current


def serve_metrics(port: int, host: str, registry: CollectorRegistry = REGISTRY) -> Any:
    """Serve ``/metrics`` on a daemon thread; returns the server (``shutdown()`` to stop), or None if port is 0.

    Raises:
        ConfigError: If the port is taken (or not ours to bind), naming ``--metrics-port``; if the host is
            not an address of this machine, naming ``--metrics-host``.
    """
    if not port:
        return None
    try:
        server, _thread = start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        bad_host = isinstance(exc, socket.gaierror) or exc.errno == errno.EADDRNOTAVAIL
        setting = "--metrics-host / SCORER_METRICS_HOST" if bad_host else "--metrics-port / SCORER_METRICS_PORT"
        hint = "" if bad_host else "; choose a free port, or 0 to turn the endpoint off"
        raise ConfigError(setting, f"cannot serve /metrics on {host}:{port}: {exc.strerror or exc}{hint}") from exc
    return server


SCORE_BOUNDS = tuple(round(0.05 * i, 2) for i in range(1, 21))
"""Upper bounds of the positive-class score buckets (0.05 ... 1.0) for the fleet-wide ROC approximation."""


@dataclass
class WindowView:
    """One window of one model version, as the evaluation sidecar sees it at scrape time."""

    model_name: str
    model_version: str
    window: str
    metrics: dict[str, float]
    confusion: dict[tuple[str, str], int] | None = None
    sums: dict[str, float] | None = None
    score_buckets: dict[bool, tuple[list[int], float]] | None = None


@dataclass
class EvaluationView:
    """Everything the sidecar exports, read under its lock in one go."""

    windows: list[WindowView] = field(default_factory=list)
    join_counts: dict[str, int] = field(default_factory=dict)
    invalid: dict[tuple[str, str], int] = field(default_factory=dict)
    late_rows: dict[tuple[str, str, str], int] = field(default_factory=dict)


_JOIN_OUTCOMES = {
    "joined": "joined",
    "expired_predictions": "expired_prediction",
    "expired_labels": "expired_label",
    "evicted_predictions": "evicted_prediction",
    "evicted_labels": "evicted_label",
    "duplicate_predictions": "duplicate_prediction",
    "duplicate_labels": "duplicate_label",
    "conflicting_labels": "conflicting_label",
}


class EvaluationCollector(Collector):
    """Exports rolling evaluation metrics computed at scrape time (prometheus' custom-collector pattern).

    Windows are recomputed from the sidecar's state on each scrape rather than pushed into gauges, so a
    window that loses its rows shows it at once, and nothing is exported twice after a restart.
    """

    def __init__(self, view: Callable[[], EvaluationView]) -> None:
        self._view = view

    def collect(self) -> Iterator[Metric]:
        view = self._view()
        keys = ["window", "model_name", "model_version"]
        families: dict[str, GaugeMetricFamily] = {}
        for w in view.windows:
            labels = [w.window, w.model_name, w.model_version]
            for name, value in w.metrics.items():
                metric = f"scorer_evaluation_{name}"
                if metric not in families:
                    families[metric] = GaugeMetricFamily(
                        metric, f"Rolling {name.replace('_', ' ')} per window.", labels=keys
                    )
                families[metric].add_metric(labels, value)
        yield from families.values()
        yield from _additive_families(view.windows, keys)
        counts = CounterMetricFamily(
            "scorer_evaluation_records", "Predictions and labels by join outcome.", labels=["outcome"]
        )
        for field_name, outcome in _JOIN_OUTCOMES.items():
            counts.add_metric([outcome], view.join_counts.get(field_name, 0))
        yield counts
        seen = CounterMetricFamily("scorer_evaluation_seen", "Records read, by topic kind.", labels=["side"])
        seen.add_metric(["prediction"], view.join_counts.get("predictions_seen", 0))
        seen.add_metric(["label"], view.join_counts.get("labels_seen", 0))
        yield seen
        pending = GaugeMetricFamily("scorer_evaluation_pending", "Unmatched records waiting.", labels=["side"])
        pending.add_metric(["prediction"], view.join_counts.get("pending_predictions", 0))
        pending.add_metric(["label"], view.join_counts.get("pending_labels", 0))
        yield pending
        invalid = CounterMetricFamily(
            "scorer_evaluation_invalid_records", "Records that could not be evaluated.", labels=["topic", "reason"]
        )
        for (topic, reason), count in view.invalid.items():
            invalid.add_metric([topic, reason], count)
        yield invalid
        late = CounterMetricFamily(
            "scorer_evaluation_late_rows", "Labelled rows older than a time window when they arrived.", labels=keys
        )
        for (name, version, window), count in view.late_rows.items():
            late.add_metric([window, name, version], count)
        yield late


def _additive_families(windows: list[WindowView], keys: list[str]) -> Iterator[Metric]:
    """Series that sum across replicas, for fleet-wide PromQL (see the README)."""
    confusion = GaugeMetricFamily(
        "scorer_evaluation_confusion", "Confusion matrix cells in the window.", labels=[*keys, "actual", "predicted"]
    )
    sums = {
        name: GaugeMetricFamily(f"scorer_evaluation_{name}", f"Window {name.replace('_', ' ')}.", labels=keys)
        for name in ("abs_error_sum", "squared_error_sum", "label_sum", "label_squared_sum")
    }
    scores = GaugeHistogramMetricFamily(
        "scorer_evaluation_score", "Positive-class scores in the window, by true class.", labels=[*keys, "actual"]
    )
    for w in windows:
        labels = [w.window, w.model_name, w.model_version]
        for (actual, predicted), count in (w.confusion or {}).items():
            confusion.add_metric([*labels, actual, predicted], count)
        for name, value in (w.sums or {}).items():
            sums[name].add_metric(labels, value)
        for positive, (cumulative, total) in (w.score_buckets or {}).items():
            buckets = [(str(bound), count) for bound, count in zip(SCORE_BOUNDS, cumulative, strict=True)]
            buckets.append(("+Inf", cumulative[-1]))
            scores.add_metric([*labels, "positive" if positive else "negative"], buckets, gsum_value=total)
    yield confusion
    yield from sums.values()
    yield scores


class ServeMetrics:
    """Everything ``scorer serve`` exports on its own ``/metrics``.

    The record counters have the names ``scorer run`` uses, so the same dashboards count both; the
    ``endpoint`` label takes only the known paths (anything else is ``other``), so that clients cannot
    create series by inventing URLs.
    """

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.registry = registry
        self.requests = Counter(
            "scorer_http_requests",
            "HTTP requests answered, by endpoint and status code.",
            ["endpoint", "code"],
            registry=registry,
        )
        self.request_seconds = Histogram(
            "scorer_http_request_duration_seconds",
            "Time from accepting the connection (one request each) to the end of the response, by endpoint.",
            ["endpoint"],
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.scored = Counter("scorer_records_scored", "Records scored.", registry=registry)
        self.rejected = Counter(
            "scorer_records_rejected",
            "Records rejected (returned in rejections), by reason.",
            ["reason"],
            registry=registry,
        )
        self.model_info = Gauge(
            "scorer_model_info",
            "The model being served (value 1).",
            ["model_name", "model_version", "task"],
            registry=registry,
        )
        for reason in ("malformed_body", "missing_id", "invalid_value", "unknown_category", "model_error"):
            self.rejected.labels(reason=reason)  # exported at 0 so that rate() works from the start


def exposition(registry: CollectorRegistry = REGISTRY) -> tuple[bytes, str]:
    """The registry in the Prometheus text format, and its content type, for a server of the caller's."""
    return generate_latest(registry), CONTENT_TYPE_LATEST
