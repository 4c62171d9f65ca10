"""The evaluation sidecar is killed (SIGKILL) and restarted: its metrics never double-count."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest

from scorer.schema import label_schema, prediction_schema
from tests.faults.common import running
from tests.integration.test_evaluation_sidecar import (
    EMPTY_SCHEMA,
    _expected,
    _produce,
    _records,
    _sidecar,
    _wait_until_read,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

FIRST = 1000  # ids read before the kill; the rest arrive while the sidecar is down


ORDER_DEPENDENT = "scorer_evaluation_late_rows_total"
"""Whether a row is late depends on the newest event time seen when it arrives, so on the order in which
the partitions of both topics happen to be read: a rebuild may count a few rows differently (the windows
themselves end up the same). Reported, not compared."""


def _series(values: dict) -> dict:
    """The sidecar's own series, without prometheus_client's per-process ``_created`` timestamps."""
    return {
        k: v
        for k, v in values.items()
        if k[0].startswith("scorer_evaluation_") and not k[0].endswith("_created") and k[0] != ORDER_DEPENDENT
    }


def _same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == b


@pytest.mark.timeout(120)
def test_sidecar_killed_and_restarted_rebuilds_the_same_windows(
    stack, topic_factory, producer, registry_client, tmp_path, fault_results
):
    """SIGKILL after 1,000 joined rows, restart in the same group, then 500 more rows.

    The sidecar keeps no offsets and rebuilds from the topics on every assignment, so after the restart
    every window gauge (rows, quality, confusion cells, sums) equals its value before the kill for the
    same data, the counters count the replayed records once (a process restart resets them) and add up,
    and after the rest arrives the windows hold each row exactly once and equal scikit-learn on them.
    """
    predictions, labels = _records("binary", np.random.default_rng(8))
    n = len(predictions)
    pred_topic, label_topic = topic_factory("predictions"), topic_factory("labels")
    prediction_avro, label_avro = prediction_schema(EMPTY_SCHEMA, "string"), label_schema("string")
    _produce(producer, registry_client, pred_topic, prediction_avro, predictions[:FIRST])
    _produce(producer, registry_client, label_topic, label_avro, labels[:FIRST])
    (tmp_path / "first").mkdir()
    (tmp_path / "second").mkdir()

    first, port = _sidecar(stack, pred_topic, label_topic, tmp_path / "first")
    with running(first):
        before_all = _wait_until_read(port, FIRST, FIRST, first)
        before = _series(before_all)
        first.process.kill()
        first.process.wait(10)
    killed = time.monotonic()

    second, port = _sidecar(stack, pred_topic, label_topic, tmp_path / "second")
    with running(second):
        after_all = _wait_until_read(port, FIRST, FIRST, second)
        after = _series(after_all)
        recovery = time.monotonic() - killed
        _produce(producer, registry_client, pred_topic, prediction_avro, predictions[FIRST:])
        _produce(producer, registry_client, label_topic, label_avro, labels[FIRST:])
        final = _series(_wait_until_read(port, n, n, second))
        second.sigterm()
        assert second.wait(30) == 0, second.output()[-3000:]

    window = (("model_name", "m"), ("model_version", "7"), ("window", "last_100000"))
    late_key = (ORDER_DEPENDENT, (("model_name", "m"), ("model_version", "7"), ("window", "10m")))
    late = f"{before_all.get(late_key, 0):.0f} → {after_all.get(late_key, 0):.0f}"
    rows = final[("scorer_evaluation_window_rows", window)]
    fault_results.add(
        "evaluation sidecar SIGKILL + restart",
        2 * n,
        max(0, n - int(rows)),
        max(0, int(rows) - n),
        recovery,
        "records = predictions + labels; lost / duplicates = rows missing from / counted twice in the window; "
        f"late rows of the 10m window before → after the restart: {late}",
    )
    differ = {
        k: (before.get(k), after.get(k))
        for k in before.keys() | after.keys()
        if not _same(before.get(k, math.nan), after.get(k, math.nan))
    }
    assert not differ, f"metrics after the restart differ from before the kill for the same data: {differ}"
    assert rows == n, f"the window holds {rows} rows for {n} joined ids"
    joined = [(predictions[i], labels[i]) for i in range(n)]
    for name, expected in _expected("binary", joined).items():
        assert final[(f"scorer_evaluation_{name}", window)] == pytest.approx(float(expected), rel=1e-9), name
    outcome = {dict(k[1])["outcome"]: v for k, v in final.items() if k[0] == "scorer_evaluation_records_total"}
    pending = final[("scorer_evaluation_pending", (("side", "prediction"),))]
    seen = final[("scorer_evaluation_seen_total", (("side", "prediction"),))]
    assert outcome["joined"] == n and seen == n, f"counters: {outcome}, seen {seen}"
    assert outcome["joined"] + outcome["expired_prediction"] + outcome["evicted_prediction"] + pending == seen
