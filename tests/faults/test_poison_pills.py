"""The poison-pill catalogue: one test per kind of hostile input record (README, "Dead letters").

One scorer serves the whole module: every pill is produced between two good records, with its own key
and a ``trace`` header, and each test checks its own row: the dead-letter reason (or that it was scored),
what the dead letter carries, that the good neighbours were scored, and that nothing was lost or doubled.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient

from scorer.codec import frame_value
from scorer.demo import feature_writer_schema
from scorer.pipeline import MAX_DEAD_LETTER_VALUE
from scorer.schema import label_schema
from tests.faults.common import Outputs, collect_outputs, metric, scorer_with_metrics
from tests.fixtures.process import ScorerProcess
from tests.fixtures.stack import QUIET
from tests.integration.test_dead_letters import _body

pytestmark = [pytest.mark.integration]

SCORED = "scored"
HUGE = 1_000_500  # over the default SCORER_MAX_RECORD_BYTES (1,000,000) and the dead-letter value limit
FUTURE_S = 3600

# row: expected outcome (dead-letter reason, or "scored")
CATALOGUE = {
    "empty value": "empty_value",
    "key but no value (tombstone)": "empty_value",
    "shorter than the 5-byte header": "truncated_frame",
    "wrong magic byte": "bad_magic_byte",
    "unknown schema id": "unknown_schema_id",
    "truncated body": "malformed_body",
    "garbage body": "malformed_body",
    "trailing bytes after the record": "malformed_body",
    "invalid UTF-8 in a string field": "malformed_body",
    "value of another topic's schema": "incompatible_schema",
    "incompatible field type": "incompatible_schema",
    "null in a non-nullable feature": "incompatible_schema",
    "NaN in a feature": "invalid_value",
    "infinity in a feature": "invalid_value",
    "unknown category": "unknown_category",
    "no id": "missing_id",
    "huge record": "record_too_large",
    "extra unknown fields": SCORED,
    "timestamp in the future": SCORED,
}


@dataclass
class Pill:
    key: str
    value: bytes | None
    timestamp_ms: int | None = None


@dataclass
class Served:
    """What the module's scorer did with everything: outputs, the inputs' offsets, metrics."""

    pills: dict[str, Pill]
    outputs: Outputs
    offsets: dict[str, tuple[int, int]]  # key -> (partition, offset) of the input
    source: str
    latency_sum: float | None
    latency_lowest_bucket: float | None


def _pills(registry: SchemaRegistryClient, source: str, model) -> dict[str, Pill]:  # noqa: ANN001
    writer = feature_writer_schema(model.bundle.schema)
    sid = registry.register_schema(f"{source}-value", Schema(json.dumps(writer), "AVRO"))
    now = int(time.time() * 1000)
    good = {"id": "", "x0": 0.1, "x1": -0.3, "x2": 1.0, "x3": 0.0, "colour": "red", "event_time": now}

    def variant(name: str, change) -> tuple[dict, int]:  # noqa: ANN001
        schema = {**writer, "fields": [change(f) for f in writer["fields"]]}
        return schema, registry.register_schema(f"{name}-{source}-value", Schema(json.dumps(schema), "AVRO"))

    def framed(record: dict, schema: dict = writer, schema_id: int = sid) -> bytes:
        return frame_value(schema_id, _body(schema, {**good, **record}))

    string_x0, string_x0_id = variant(
        "string-x0", lambda f: {"name": "x0", "type": "string"} if f["name"] == "x0" else f
    )
    null_x1, null_x1_id = variant(
        "null-x1", lambda f: {"name": "x1", "type": ["null", "double"]} if f["name"] == "x1" else f
    )
    extra = {**writer, "fields": [*writer["fields"], {"name": "note", "type": "string", "default": ""}]}
    extra_id = registry.register_schema(f"extra-{source}-value", Schema(json.dumps(extra), "AVRO"))
    no_id = {**writer, "fields": [f for f in writer["fields"] if f["name"] != "id"]}
    no_id_id = registry.register_schema(f"noid-{source}-value", Schema(json.dumps(no_id), "AVRO"))
    labels = label_schema("string")
    labels_id = registry.register_schema(f"labels-{source}-value", Schema(json.dumps(labels), "AVRO"))
    accented = framed({"id": "bad-utf8", "colour": "\u00e9"})

    values: dict[str, bytes | None] = {
        "empty value": b"",
        "key but no value (tombstone)": None,
        "shorter than the 5-byte header": b"\x00\x00\x01",
        "wrong magic byte": b"\x01" + framed({"id": "magic"})[1:],
        "unknown schema id": frame_value(2_000_000_000, _body(writer, {**good, "id": "unknown"})),
        "truncated body": framed({"id": "truncated"})[:-6],
        "garbage body": frame_value(sid, b"\xff" * 40),
        "trailing bytes after the record": framed({"id": "trailing"}) + b"\x00\x01\x02",
        "invalid UTF-8 in a string field": accented.replace("\u00e9".encode(), b"\xff\xfe"),
        "value of another topic's schema": frame_value(
            labels_id, _body(labels, {"id": "label-1", "label": "yes", "event_time": now})
        ),
        "incompatible field type": framed({"id": "s", "x0": "1.5"}, string_x0, string_x0_id),
        "null in a non-nullable feature": framed({"id": "null", "x1": None}, null_x1, null_x1_id),
        "NaN in a feature": framed({"id": "nan", "x1": float("nan")}),
        "infinity in a feature": framed({"id": "inf", "x2": float("inf")}),
        "unknown category": framed({"id": "purple", "colour": "purple"}),
        "no id": frame_value(no_id_id, _body(no_id, {k: v for k, v in good.items() if k != "id"})),
        "huge record": framed({"id": "huge", "note": "x" * HUGE}, extra, extra_id),
        "extra unknown fields": framed({"id": "extra", "note": "hello"}, extra, extra_id),
        "timestamp in the future": framed({"id": "future", "event_time": now + FUTURE_S * 1000}),
    }
    assert set(values) == set(CATALOGUE)
    pills = {name: Pill(f"pill-{n}", value) for n, (name, value) in enumerate(values.items())}
    pills["timestamp in the future"].timestamp_ms = now + FUTURE_S * 1000
    return pills


@pytest.fixture(scope="module")
def served(stack, trained, tmp_path_factory, fault_results) -> Served:
    """Produce the catalogue between good records, run one scorer over it, read everything back."""
    model = trained("binary")
    admin = AdminClient({"bootstrap.servers": stack.bootstrap, **QUIET})
    source, sink = f"pills-{uuid.uuid4().hex[:8]}", f"pills-out-{uuid.uuid4().hex[:8]}"
    for future in admin.create_topics([NewTopic(t, 3, replication_factor=-1) for t in (source, sink)]).values():
        future.result(timeout=15)
    registry = SchemaRegistryClient({"url": stack.registry_url})
    writer = feature_writer_schema(model.bundle.schema)
    good_id = registry.register_schema(f"{source}-value", Schema(json.dumps(writer), "AVRO"))
    pills = _pills(registry, source, model)
    registry.__exit__()

    producer = Producer({"bootstrap.servers": stack.bootstrap, "message.max.bytes": 2_000_000, **QUIET})
    offsets: dict[str, tuple[int, int]] = {}

    def produce(key: str, value: bytes | None, timestamp_ms: int | None = None) -> None:
        def delivered(error, message) -> None:  # noqa: ANN001
            assert error is None, error
            offsets[key] = (message.partition(), message.offset())

        extra = {"timestamp": timestamp_ms} if timestamp_ms else {}
        producer.produce(
            source, key=key.encode(), value=value, headers=[("trace", key.encode())], on_delivery=delivered, **extra
        )

    rows = model.frame.sample(n=2 * len(pills), replace=True, random_state=1).to_dict("records")
    for n, pill in enumerate(pills.values()):
        for side, row in (("before", rows[2 * n]), ("after", rows[2 * n + 1])):
            key = f"good-{side}-{n}"
            record = {"id": key, **row, "event_time": int(time.time() * 1000)}
            if side == "after":
                produce(pill.key, pill.value, pill.timestamp_ms)
            produce(key, frame_value(good_id, _body(writer, record)))
    assert producer.flush(30) == 0

    env, port = scorer_with_metrics(stack, source, sink, model)  # default SCORER_MAX_RECORD_BYTES: 1,000,000
    scorer = ScorerProcess(env, tmp_path_factory.mktemp("pills") / "scorer.log")
    try:
        outputs = collect_outputs(stack.bootstrap, sink, f"{source}.dlq", offsets, timeout_s=90)
        latency_sum = metric(port, "scorer_end_to_end_latency_seconds_sum")
        lowest = metric(port, "scorer_end_to_end_latency_seconds_bucket", le="0.005")
    finally:
        scorer.stop()
    assert scorer.process.returncode == 0, scorer.output()[-3000:]
    lost, extra = outputs.account(offsets)
    fault_results.add(
        f"poison pills ({len(pills)} kinds, each between good records)", len(offsets), len(lost), extra, None
    )
    return Served(pills, outputs, offsets, source, latency_sum, lowest)


@pytest.mark.timeout(150)
@pytest.mark.parametrize("row", list(CATALOGUE))
def test_poison_pill(row: str, served: Served) -> None:
    pill, expected = served.pills[row], CATALOGUE[row]
    n = list(served.pills).index(row)
    predicted = [m for m in served.outputs.predictions if m.key() == pill.key.encode()]
    letters = [m for m in served.outputs.dead_letters if m.key() == pill.key.encode()]
    for neighbour in (f"good-before-{n}", f"good-after-{n}"):
        scored = [m for m in served.outputs.predictions if m.key() == neighbour.encode()]
        assert len(scored) == 1, f"the good record {neighbour} next to the pill has {len(scored)} predictions"
    if expected == SCORED:
        assert len(predicted) == 1 and not letters, f"{row}: {len(predicted)} predictions, {len(letters)} dead letters"
        if row == "timestamp in the future":
            assert served.latency_sum is not None and served.latency_sum >= 0, "end-to-end latency went negative"
            assert served.latency_lowest_bucket and served.latency_lowest_bucket >= 1, (
                "the future record is clamped to 0 s"
            )
        return
    assert not predicted, f"{row} was scored"
    assert len(letters) == 1, f"{row}: {len(letters)} dead letters (expected exactly one)"
    letter = letters[0]
    headers = dict(letter.headers())
    assert headers["scorer.reason"] == expected.encode(), (
        f"{row}: {headers['scorer.reason']!r}: {headers['scorer.detail']!r}"
    )
    assert headers["scorer.detail"], "the dead letter says why"
    partition, offset = served.offsets[pill.key]
    assert headers["scorer.source.topic"] == served.source.encode()
    assert (headers["scorer.source.partition"], headers["scorer.source.offset"]) == (
        str(partition).encode(),
        str(offset).encode(),
    ), "the dead letter leads back to its input"
    assert headers["trace"] == pill.key.encode(), "the input's own headers are kept"
    if pill.value is not None and len(pill.value) > MAX_DEAD_LETTER_VALUE:
        assert (letter.value() or b"") == b"", "a value too large to produce again is left out"
        assert headers["scorer.value.omitted"] == str(len(pill.value)).encode(), "...and its size is given"
    else:
        assert (letter.value() or b"") == (pill.value or b""), "the dead letter keeps the input's bytes"
        assert "scorer.value.omitted" not in headers
