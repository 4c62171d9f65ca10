"""Each kind of bad record lands in the dead-letter topic with its reason; the good ones around it are scored."""

from __future__ import annotations

import io
import json

import fastavro
import pytest
from confluent_kafka.schema_registry import Schema

from scorer.codec import frame_value
from scorer.demo import feature_writer_schema
from tests.fixtures.stack import read_topic
from tests.integration.helpers import read_predictions, scorer_env, start_scorer

pytestmark = pytest.mark.integration


def _body(schema: dict, record: dict) -> bytes:
    out = io.BytesIO()
    fastavro.schemaless_writer(out, fastavro.parse_schema(schema), record)
    return out.getvalue()


def test_bad_records_are_dead_lettered_with_their_reason(
    stack, trained, topic_factory, producer, registry_client, tmp_path
):
    model = trained("binary")
    source, sink = topic_factory("features"), topic_factory("predictions")
    writer = feature_writer_schema(model.bundle.schema)
    schema_id = registry_client.register_schema(f"{source}-value", Schema(json.dumps(writer), "AVRO"))
    good = {"id": "", "x0": 0.1, "x1": -0.3, "x2": 1.0, "x3": 0.0, "colour": "red", "event_time": 0}

    def framed(record: dict, schema: dict = writer, sid: int = schema_id) -> bytes:
        return frame_value(sid, _body(schema, record))

    string_x0 = {
        **writer,
        "fields": [f if f["name"] != "x0" else {"name": "x0", "type": "string"} for f in writer["fields"]],
    }
    string_x0_id = registry_client.register_schema(f"other-{source}-value", Schema(json.dumps(string_x0), "AVRO"))
    no_id = {**writer, "fields": [f for f in writer["fields"] if f["name"] != "id"]}
    no_id_id = registry_client.register_schema(f"noid-{source}-value", Schema(json.dumps(no_id), "AVRO"))
    prediction_like = {"type": "record", "name": "Other", "fields": [{"name": "id", "type": "string"}]}
    other_id = registry_client.register_schema(f"unrelated-{source}-value", Schema(json.dumps(prediction_like), "AVRO"))
    accented = framed({**good, "id": "bad-utf8", "colour": "\u00e9"})
    bad_utf8 = accented.replace("\u00e9".encode(), b"\xff\xfe")

    bad = {
        "empty": (b"", "empty_value"),
        "tombstone": (None, "empty_value"),
        "magic": (b"\x01" + framed({**good, "id": "magic"})[1:], "bad_magic_byte"),
        "short": (b"\x00\x00\x01", "truncated_frame"),
        "unknown-id": (frame_value(987654, b"\x02a"), "unknown_schema_id"),
        "truncated": (framed({**good, "id": "truncated"})[:-6], "malformed_body"),
        "garbage": (frame_value(schema_id, b"\xff" * 40), "malformed_body"),
        "bad-utf8": (bad_utf8, "malformed_body"),
        "string-x0": (framed({**good, "id": "s", "x0": "1.5"}, string_x0, string_x0_id), "incompatible_schema"),
        "other-schema": (frame_value(other_id, _body(prediction_like, {"id": "o"})), "incompatible_schema"),
        "nan": (framed({**good, "id": "nan", "x1": float("nan")}), "invalid_value"),
        "inf": (framed({**good, "id": "inf", "x2": float("inf")}), "invalid_value"),
        "purple": (framed({**good, "id": "purple", "colour": "purple"}), "unknown_category"),
        "no-id": (framed({k: v for k, v in good.items() if k != "id"}, no_id, no_id_id), "missing_id"),
    }
    good_ids = []
    for n, (key, (value, _reason)) in enumerate(bad.items()):
        good_ids.append(f"good-{n}")
        producer.produce(source, key=good_ids[-1].encode(), value=framed({**good, "id": good_ids[-1]}))
        producer.produce(source, key=key.encode(), value=value, headers=[("trace", b"t-" + key.encode())])
    extra_field = {**writer, "fields": [*writer["fields"], {"name": "note", "type": "string", "default": ""}]}
    extra_id = registry_client.register_schema(f"extra-{source}-value", Schema(json.dumps(extra_field), "AVRO"))
    producer.produce(source, key=b"extra", value=framed({**good, "id": "extra", "note": "hi"}, extra_field, extra_id))
    good_ids.append("extra")
    producer.flush(10)

    scorer = start_scorer(scorer_env(stack, source, sink, model), tmp_path)
    try:
        predictions = read_predictions(stack, registry_client, sink, expected=len(good_ids))
        letters = read_topic(stack.bootstrap, f"{source}.dlq", expected=len(bad))
    finally:
        scorer.sigterm()
        assert scorer.wait(60) == 0, scorer.output()[-2000:]

    assert sorted(record["id"] for _, record in predictions) == sorted(good_ids), (
        "good records around bad ones are scored"
    )
    by_key = {m.key().decode(): m for m in letters}
    assert sorted(by_key) == sorted(bad), "every bad record is dead-lettered exactly once"
    for key, (value, reason) in bad.items():
        headers = dict(by_key[key].headers())
        assert headers["scorer.reason"] == reason.encode(), f"{key}: {headers['scorer.detail']!r}"
        assert headers["scorer.source.topic"] == source.encode()
        assert headers["trace"] == b"t-" + key.encode(), "original headers are kept"
        assert (by_key[key].value() or b"") == (value or b""), "the original bytes are kept"
        assert headers["scorer.detail"]
    assert b"x0" in dict(by_key["string-x0"].headers())["scorer.detail"], "the detail names the field that differs"
