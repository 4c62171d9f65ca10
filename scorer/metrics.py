"""Prometheus metric definitions for the scorer service, on an injected ``CollectorRegistry``.

Names follow Prometheus conventions: units in the name (``_seconds``, ``_records``), ``_total`` on counters.
Services own the calls (core modules return counts instead), and tests pass a fresh registry each.

May import: errors. Third-party: prometheus_client.
"""

from __future__ import annotations

import json
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, start_http_server

__all__ = ["ScorerMetrics", "serve_metrics"]

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_STAGE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
_BATCH_BUCKETS = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000)


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
        self.end_to_end = Histogram(
            "scorer_end_to_end_latency_seconds",
            "Output acknowledged minus input record timestamp.",
            buckets=_LATENCY_BUCKETS,
            registry=registry,
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
        """librdkafka ``stats_cb``: copy consumer lag per assigned partition (library first: no lag math here)."""
        stats: dict[str, Any] = json.loads(stats_json)
        for topic, info in stats.get("topics", {}).items():
            for partition, values in info.get("partitions", {}).items():
                if partition == "-1" or values.get("consumer_lag", -1) < 0:
                    continue
                self.lag.labels(topic=topic, partition=partition).set(values["consumer_lag"])


def serve_metrics(port: int, host: str, registry: CollectorRegistry = REGISTRY) -> Any:
    """Serve ``/metrics`` on a daemon thread; returns the server (``shutdown()`` to stop), or None if port is 0."""
    if not port:
        return None
    server, _thread = start_http_server(port, addr=host, registry=registry)
    return server
