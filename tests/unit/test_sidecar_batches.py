"""Unit tests of the sidecar's batch path: whole consumed batches give what the same records one by one give.

The consumer loop hands ``EvaluationSidecar._handle`` a list of messages; here they are stand-ins with the
four methods it calls (no Kafka), carrying real Confluent-framed Avro bodies, decoded by the real
``RecordDecoder`` over a dict of schemas. The oracle is ``ingest``, one decoded record at a time, and the
per-row ``Evaluator.score_of``.
"""

from __future__ import annotations

import io
import json
import math
import random
from typing import Any

import fastavro
import pytest
from prometheus_client import CollectorRegistry

from scorer.codec import RecordDecoder, frame_value
from scorer.evaluation import Evaluator
from scorer.join import PredictionFacts
from scorer.schema import label_schema, load_contract
from scorer.sidecar import EvaluationSidecar, _scores
from tests.fixtures.offline_sidecar import offline_settings

PREDICTION_ID, LABEL_ID = 41, 42
NOW_MS = 1_796_000_000_000


def prediction_schema(label_type: str = "string") -> dict[str, Any]:
    schema = load_contract("prediction")
    for spec in schema["fields"]:
        if spec["name"] == "scored_label":
            spec["type"] = label_type
    return schema


LABEL_V2_ID = 43  # the label contract with one more optional field: a producer on a newer schema version
NULLABLE_PREDICTION_ID = 44  # id and model_version made nullable: outside the contract, accepted by a registry
NOT_A_RECORD_ID = 45  # each test that uses it says what it stands for


def nullable_prediction_schema() -> dict[str, Any]:
    schema = prediction_schema()
    for spec in schema["fields"]:
        if spec["name"] in ("id", "model_version"):
            spec["type"] = ["null", "string"]
    return schema


SCHEMAS: dict[int, Any] = {
    PREDICTION_ID: prediction_schema(),
    LABEL_ID: label_schema("string"),
    LABEL_V2_ID: {
        **label_schema("string"),
        "fields": [*label_schema("string")["fields"], {"name": "source", "type": ["null", "string"], "default": None}],
    },
    NULLABLE_PREDICTION_ID: nullable_prediction_schema(),
}


def framed(schema_id: int, record: dict[str, Any]) -> bytes:
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, fastavro.parse_schema(SCHEMAS[schema_id]), record)
    return frame_value(schema_id, buffer.getvalue())


class Message:
    """What ``_handle`` reads of a confluent_kafka Message."""

    def __init__(self, topic: str, value: bytes, timestamp_ms: int) -> None:
        self._topic, self._value, self._timestamp = topic, value, timestamp_ms

    def error(self) -> None:
        return None

    def topic(self) -> str:
        return self._topic

    def value(self) -> bytes:
        return self._value

    def timestamp(self) -> tuple[int, int]:
        return 1, self._timestamp


def sidecar(more_schemas: dict[int, Any] | None = None) -> EvaluationSidecar:
    # count window: every row stays, so the metrics do not depend on the order rows joined in
    settings = offline_settings(count_window=100_000, time_windows="1h")
    side = EvaluationSidecar(settings, CollectorRegistry())
    schemas = {schema_id: json.dumps(schema) for schema_id, schema in {**SCHEMAS, **(more_schemas or {})}.items()}
    side.decoder = RecordDecoder(schemas.__getitem__, plain_types=True)
    return side


def prediction(n: int, version: str, rng: random.Random) -> dict[str, Any]:
    p = rng.random()
    shape = rng.random()
    return {
        "id": f"r-{n}",
        "scored_label": "yes" if p >= 0.5 else "no",
        "scored_probability": None if shape < 0.05 else p,
        "scored_label_probability": max(p, 1 - p),
        # mostly the full map; sometimes none, or one without the positive class (then scored_probability)
        "scored_probabilities": None if shape < 0.1 else {"no": 1 - p} if shape < 0.15 else {"no": 1 - p, "yes": p},
        "model_name": "churn",
        "model_version": version,
        "scored_at": NOW_MS + n,
    }


def stream(rng: random.Random, n: int) -> list[Message]:
    """Two model versions, duplicated predictions, late shuffled labels (some twice, some conflicting, some
    missing), a few records that cannot be decoded."""
    messages = []
    for i in range(n):
        record = prediction(i, "1" if i % 3 else "2", rng)
        for _ in range(rng.choice([1, 1, 1, 2])):
            messages.append(Message("predictions", framed(PREDICTION_ID, record), NOW_MS + i))
    labels = []
    for i in range(n):
        if rng.random() < 0.9:
            label = {"id": f"r-{i}", "label": rng.choice(["yes", "no"]), "event_time": NOW_MS + i}
            labels.append(Message("labels", framed(LABEL_ID, label), NOW_MS + n + i))
            if rng.random() < 0.05:
                label = {**label, "label": rng.choice(["yes", "no"])}
                labels.append(Message("labels", framed(LABEL_ID, label), NOW_MS + n + i))
    labels.append(Message("labels", b"\x00\x00\x00\x00", NOW_MS + 2 * n))  # truncated frame
    rng.shuffle(labels)
    # a consumer over both topics: runs of each, labels trailing their predictions
    merged, p, q = [], 0, 0
    while p < len(messages) or q < len(labels):
        if p < len(messages) and (q >= len(labels) or rng.random() < 0.6):
            merged += messages[p : p + 37]
            p += 37
        else:
            merged += labels[q : q + 23]
            q += 23
    return merged


def view_of(side: EvaluationSidecar) -> tuple[Any, ...]:
    view = side.view()
    windows = sorted(
        (w.model_name, w.model_version, w.window, sorted((k, repr(v)) for k, v in w.metrics.items()), repr(w.confusion))
        for w in view.windows
    )
    return windows, view.join_counts, view.invalid


def test_batches_give_the_metrics_and_counts_of_records_one_by_one() -> None:
    messages = stream(random.Random(3), 1_500)
    one_by_one = sidecar()
    for message in messages:
        decoded = one_by_one.decoder.decode(message.value())
        if isinstance(decoded, tuple):
            one_by_one._count_invalid(message.topic(), decoded[0].value)
        else:
            one_by_one.ingest(message.topic(), decoded, message.timestamp()[1])
    batched = sidecar()
    rng = random.Random(4)
    start = 0
    while start < len(messages):
        size = rng.choice([1, 7, 250, 1000])
        batched._handle(messages[start : start + size])
        start += size
    assert view_of(batched) == view_of(one_by_one)
    windows, joins, invalid = view_of(batched)
    assert {(w[0], w[1]) for w in windows} == {("churn", "1"), ("churn", "2")}
    assert joins["joined"] > 1_000 and joins["duplicate_predictions"] > 0 and joins["conflicting_labels"] > 0
    assert invalid[("labels", "truncated_frame")] == 1
    assert invalid[("labels", "not_evaluable")] > 0  # the rows with no probability for the positive class


@pytest.mark.parametrize("positive", ["yes", "no"])
def test_scores_of_a_decoded_batch_are_what_score_of_reads_row_by_row(positive: str) -> None:
    rng = random.Random(9)
    records = [prediction(n, "1", rng) for n in range(400)]
    records[0]["scored_probabilities"] = {"no": float("nan"), "yes": float("nan")}
    side = sidecar()
    frames, rejections = side.decoder.decode_frames([framed(PREDICTION_ID, r) for r in records])
    assert rejections == [] and len(frames) == 1
    evaluator = Evaluator("binary", ["no", "yes"], positive)
    got = _scores(frames[0].frame, evaluator)
    facts = [
        PredictionFacts(r["id"], "churn", "1", r["scored_label"], r["scored_probability"], r["scored_probabilities"])
        for r in records
    ]
    want = [evaluator.score_of(f) for f in facts]
    assert [repr(x) for x in got] == [repr(x) for x in want]
    assert any(x is None for x in got) and any(isinstance(x, float) and math.isnan(x) for x in got)


def test_labels_of_two_writer_schemas_in_one_batch_keep_their_order() -> None:
    """The first label for an id wins even when the next one was written with another schema version."""
    side = sidecar()
    side._handle([Message("predictions", framed(PREDICTION_ID, prediction(0, "1", random.Random(1))), NOW_MS)])
    labels = [
        Message(
            "labels",
            framed(LABEL_V2_ID, {"id": "other", "label": "no", "event_time": NOW_MS, "source": "x"}),
            NOW_MS + 1,
        ),
        Message("labels", framed(LABEL_ID, {"id": "r-0", "label": "yes", "event_time": NOW_MS}), NOW_MS + 2),
        Message(
            "labels", framed(LABEL_V2_ID, {"id": "r-0", "label": "no", "event_time": NOW_MS, "source": "x"}), NOW_MS + 3
        ),
    ]
    side._handle(labels)
    counts = side.joiner.counts
    assert (counts.joined, counts.conflicting_labels, counts.pending_labels) == (1, 1, 1)
    assert side.joiner.add_labels(["r-0"], ["yes"], [NOW_MS], NOW_MS + 4).labels == []
    assert side.joiner.counts.duplicate_labels == 1, "'yes', the first label, is the one that won"


def test_records_without_an_id_or_a_model_are_counted_not_joined() -> None:
    """Outside the contract (a writer schema that made them nullable), but never a crash or a None key."""
    side = sidecar()
    rng = random.Random(2)
    records = [
        prediction(0, "1", rng),
        {**prediction(1, "2", rng), "model_version": None},
        {**prediction(2, "1", rng), "id": None},
    ]
    side._handle([Message("predictions", framed(NULLABLE_PREDICTION_ID, r), NOW_MS) for r in records])
    assert side.invalid == {("predictions", "missing_field_id"): 1, ("predictions", "missing_field_model_version"): 1}
    assert side.joiner.counts.pending_predictions == 1


@pytest.mark.parametrize("writer", ["string", ["null", "string"], {"type": "map", "values": "string"}], ids=repr)
def test_a_writer_schema_that_is_not_a_record_is_rejected_not_a_crash(writer: Any) -> None:
    side = sidecar({NOT_A_RECORD_ID: writer})
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, fastavro.parse_schema(writer), {"a": "b"} if isinstance(writer, dict) else "x")
    side._handle([Message("labels", frame_value(NOT_A_RECORD_ID, buffer.getvalue()), NOW_MS)])
    assert side.invalid == {("labels", "malformed_body"): 1}
