"""Unit tests of scorer.codec: Confluent framing, batch decoding with rejections, the schema cache, encoding."""

from __future__ import annotations

import datetime as dt
import io
import json
from collections import Counter
from typing import Any

import fastavro
import pandas as pd
import pytest

from scorer.codec import FeatureDecoder, PredictionEncoder, frame_value, split_frame
from scorer.errors import RegistryError, RegistryUnavailable, RejectReason
from scorer.schema import TrainingSchema, prediction_schema

WRITER_ID, OLD_WRITER_ID, INCOMPATIBLE_ID, UNKNOWN_ID = 7, 8, 9, 404


def training_schema() -> TrainingSchema:
    frame = pd.DataFrame(
        {
            "age": [30, 40],
            "income": [1.5, None],
            "city": ["oslo", "rome"],
            "member": [True, False],
            "label": ["no", "yes"],
        }
    )
    return TrainingSchema.from_frame(frame, label="label")


WRITER = {
    "type": "record",
    "name": "CustomerEvent",
    "namespace": "com.example",
    "fields": [
        {"name": "id", "type": "string"},
        {"name": "city", "type": "string"},
        {"name": "source", "type": "string"},
        {"name": "age", "type": "int"},
        {"name": "income", "type": ["null", "double"]},
        {"name": "member", "type": "boolean"},
        {"name": "event_time", "type": {"type": "long", "logicalType": "timestamp-millis"}},
    ],
}
OLD_WRITER = {  # no id, long age, non-null income: still readable
    "type": "record",
    "name": "Features",
    "fields": [
        {"name": "age", "type": "long"},
        {"name": "income", "type": "double"},
        {"name": "city", "type": "string"},
        {"name": "member", "type": "boolean"},
    ],
}
INCOMPATIBLE = {
    "type": "record",
    "name": "CustomerEvent",
    "fields": [
        {"name": "id", "type": "string"},
        {"name": "age", "type": "string"},
        {"name": "city", "type": "string"},
        {"name": "member", "type": "boolean"},
    ],
}


class DictLookup:
    """A ``SchemaLookup`` over a dict that counts its calls per id."""

    def __init__(self, schemas: dict[int, dict[str, Any]]) -> None:
        self.schemas = schemas
        self.calls: Counter[int] = Counter()

    def __call__(self, schema_id: int) -> str:
        self.calls[schema_id] += 1
        if schema_id not in self.schemas:
            raise RegistryError(f"schema id {schema_id} not found", status=404, error_code=40403)
        return json.dumps(self.schemas[schema_id])


@pytest.fixture
def lookup() -> DictLookup:
    return DictLookup({WRITER_ID: WRITER, OLD_WRITER_ID: OLD_WRITER, INCOMPATIBLE_ID: INCOMPATIBLE})


@pytest.fixture
def decoder(lookup: DictLookup) -> FeatureDecoder:
    return FeatureDecoder(training_schema(), "id", lookup)


def body(schema: dict[str, Any], record: dict[str, Any]) -> bytes:
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, fastavro.parse_schema(schema), record)
    return buffer.getvalue()


def event(n: int, **changes: Any) -> dict[str, Any]:
    record = {
        "id": f"c-{n}",
        "city": "oslo",
        "source": "web",
        "age": 30 + n,
        "income": 100.0 * n,
        "member": n % 2 == 0,
        "event_time": 1_700_000_000_000,
    }
    return {**record, **changes}


def framed(n: int, **changes: Any) -> bytes:
    return frame_value(WRITER_ID, body(WRITER, event(n, **changes)))


# --- framing -------------------------------------------------------------------------------------------------


def test_frame_round_trip() -> None:
    value = frame_value(258, b"avro")
    assert value == b"\x00\x00\x00\x01\x02avro"
    assert split_frame(value) == (258, b"avro")
    assert split_frame(frame_value(2**32 - 1, b"")) == (2**32 - 1, b"")


@pytest.mark.parametrize(
    ("value", "reason", "detail"),
    [
        (None, RejectReason.EMPTY_VALUE, "no value"),
        (b"", RejectReason.EMPTY_VALUE, "no value"),
        (b"\x00\x00\x07", RejectReason.TRUNCATED_FRAME, "3 bytes is shorter than the 5-byte Confluent header"),
        (b"\x01\x00\x00\x00\x07abc", RejectReason.BAD_MAGIC_BYTE, "first byte is 0x01, expected 0x00"),
        (b'{"json": 1}', RejectReason.BAD_MAGIC_BYTE, "first byte is 0x7b"),
        (b"\xff\x00\x00\x00\x07abc", RejectReason.BAD_MAGIC_BYTE, "first byte is 0xff"),
    ],
)
def test_split_frame_reasons(value: bytes | None, reason: RejectReason, detail: str) -> None:
    got_reason, got_detail = split_frame(value)
    assert got_reason is reason
    assert isinstance(got_detail, str)
    assert detail in got_detail


# --- decoding ------------------------------------------------------------------------------------------------


def test_decodes_onto_training_schema_despite_extra_fields_and_other_name(decoder: FeatureDecoder) -> None:
    batch = decoder.decode([framed(1), framed(2, income=None)])
    assert batch.rejections == []
    assert batch.indices == [0, 1]
    assert batch.schema_ids == [WRITER_ID, WRITER_ID]
    assert batch.records == [
        {"age": 31, "income": 100.0, "city": "oslo", "member": False, "id": "c-1"},
        {"age": 32, "income": None, "city": "oslo", "member": True, "id": "c-2"},
    ]


def test_records_without_id_decode_with_id_none(decoder: FeatureDecoder) -> None:
    value = frame_value(OLD_WRITER_ID, body(OLD_WRITER, {"age": 5, "income": 2.5, "city": "rome", "member": True}))
    batch = decoder.decode([value])
    assert batch.records == [{"age": 5, "income": 2.5, "city": "rome", "member": True, "id": None}]


def test_unknown_schema_id_is_a_rejection(decoder: FeatureDecoder) -> None:
    batch = decoder.decode([frame_value(UNKNOWN_ID, b"\x02a")])
    (rejection,) = batch.rejections
    assert rejection.reason is RejectReason.UNKNOWN_SCHEMA_ID
    assert rejection.schema_id == UNKNOWN_ID
    assert f"schema id {UNKNOWN_ID}" in rejection.detail
    assert batch.records == []


def test_incompatible_writer_schema_names_the_field(decoder: FeatureDecoder) -> None:
    value = frame_value(INCOMPATIBLE_ID, body(INCOMPATIBLE, {"id": "x", "age": "old", "city": "a", "member": True}))
    (rejection,) = decoder.decode([value]).rejections
    assert rejection.reason is RejectReason.INCOMPATIBLE_SCHEMA
    assert rejection.schema_id == INCOMPATIBLE_ID
    assert "age:" in rejection.detail
    assert "income: missing from the writer schema" in rejection.detail


@pytest.mark.parametrize(
    "writer_text",
    ['"string"', json.dumps(["null", WRITER]), 'syntax = "proto3"; message M {}', '{"type": "object"}'],
)
def test_writer_schema_that_is_not_an_avro_record_rejects_instead_of_crashing(writer_text: str) -> None:
    decoder = FeatureDecoder(training_schema(), "id", lambda schema_id: writer_text)
    (rejection,) = decoder.decode([frame_value(3, b"\x02a")]).rejections
    assert rejection.reason is RejectReason.INCOMPATIBLE_SCHEMA
    assert rejection.schema_id == 3


def test_malformed_bodies_are_rejected_with_a_reason(decoder: FeatureDecoder) -> None:
    good = body(WRITER, event(1))
    garbage = b"\xff" * 12
    invalid_utf8 = body(WRITER, event(1, city="ab")).replace(b"\x04ab", b"\x04a\xff", 1)
    values = [
        frame_value(WRITER_ID, good[:-3]),
        frame_value(WRITER_ID, garbage),
        frame_value(WRITER_ID, good + b"\x00\x00"),
        frame_value(WRITER_ID, invalid_utf8),
        frame_value(WRITER_ID, b""),
    ]
    batch = decoder.decode(values)
    assert batch.records == []
    assert [r.index for r in batch.rejections] == [0, 1, 2, 3, 4]
    assert {r.reason for r in batch.rejections} == {RejectReason.MALFORMED_BODY}
    assert {r.schema_id for r in batch.rejections} == {WRITER_ID}
    details = [r.detail for r in batch.rejections]
    # fastavro's C reader raises IndexError for a cut varint, as for a bad union index: no "truncated" then
    assert details[0].startswith("the Avro body")
    assert "cannot be decoded" in details[1]
    assert details[2] == "2 bytes left over after the record: the body is not this schema"
    assert "not valid UTF-8" in details[3]
    assert "truncated" in details[4]


def test_good_records_around_bad_ones_keep_their_batch_positions(decoder: FeatureDecoder) -> None:
    values = [
        None,
        framed(1),
        b"\x01\x00\x00\x00\x07",
        framed(3),
        frame_value(UNKNOWN_ID, b""),
        frame_value(WRITER_ID, b"\x02"),
        framed(6),
    ]
    batch = decoder.decode(values)
    assert batch.indices == [1, 3, 6]
    assert [r["id"] for r in batch.records] == ["c-1", "c-3", "c-6"]
    assert [(r.index, r.reason) for r in batch.rejections] == [
        (0, RejectReason.EMPTY_VALUE),
        (2, RejectReason.BAD_MAGIC_BYTE),
        (4, RejectReason.UNKNOWN_SCHEMA_ID),
        (5, RejectReason.MALFORMED_BODY),
    ]
    assert len(batch.records) + len(batch.rejections) == len(values)


def test_lookup_is_called_once_per_schema_id_across_batches(decoder: FeatureDecoder, lookup: DictLookup) -> None:
    incompatible = frame_value(INCOMPATIBLE_ID, b"")
    for _ in range(3):
        batch = decoder.decode([framed(1), framed(2), incompatible, incompatible])
        assert len(batch.records) == 2
        assert len(batch.rejections) == 2
    assert lookup.calls == Counter({WRITER_ID: 1, INCOMPATIBLE_ID: 1})


def test_registry_unavailable_propagates_and_is_retried_later(lookup: DictLookup) -> None:
    down = {"down": True}

    def flaky(schema_id: int) -> str:
        if down["down"]:
            raise RegistryUnavailable("registry cannot be reached")
        return lookup(schema_id)

    decoder = FeatureDecoder(training_schema(), "id", flaky)
    with pytest.raises(RegistryUnavailable):
        decoder.decode([framed(1)])
    down["down"] = False
    assert decoder.decode([framed(1)]).indices == [0]  # the failure was not cached as a verdict


def test_other_registry_errors_propagate() -> None:
    def refusing(schema_id: int) -> str:
        raise RegistryError("unauthorized", status=401, error_code=40101)

    decoder = FeatureDecoder(training_schema(), "id", refusing)
    with pytest.raises(RegistryError, match="unauthorized"):
        decoder.decode([framed(1)])


# --- encoding ------------------------------------------------------------------------------------------------


def test_prediction_encoder_output_decodes_back_with_its_schema_id() -> None:
    schema = prediction_schema(training_schema(), "string")
    records = [
        {
            "id": f"c-{n}",
            "scored_label": "yes",
            "scored_probability": 0.25 * n,
            "scored_label_probability": 0.9,
            "scored_probabilities": {"no": 1 - 0.25 * n, "yes": 0.25 * n},
            "model_name": "churn",
            "model_version": "4",
            "scored_at": 1_700_000_000_123,
        }
        for n in range(3)
    ]
    encoded = PredictionEncoder(schema, schema_id=42).encode(records)
    assert len(encoded) == 3
    parsed = fastavro.parse_schema(schema)
    for value, record in zip(encoded, records, strict=True):
        schema_id, avro_body = split_frame(value)
        assert schema_id == 42
        assert isinstance(avro_body, bytes)
        decoded = fastavro.schemaless_reader(io.BytesIO(avro_body), parsed, None)
        assert decoded == {**record, "scored_at": dt.datetime(2023, 11, 14, 22, 13, 20, 123000, tzinfo=dt.UTC)}


def test_prediction_encoder_refuses_a_record_that_does_not_fit() -> None:
    encoder = PredictionEncoder(prediction_schema(training_schema(), "long"), schema_id=1)
    with pytest.raises((ValueError, TypeError)):
        encoder.encode([{"id": "x", "scored_label": "not a long"}])
