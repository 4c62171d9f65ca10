"""Unit tests of scorer.codec: Confluent framing, batch decoding with rejections, the schema cache, encoding."""

from __future__ import annotations

import datetime as dt
import io
import json
import math
from collections import Counter
from decimal import Decimal
from typing import Any

import fastavro
import numpy as np
import pandas as pd
import polars as pl
import pytest

from scorer import codec
from scorer.codec import (
    DecodedBatch,
    FeatureDecoder,
    PredictionEncoder,
    RecordDecoder,
    WriterLookup,
    frame_value,
    split_frame,
)
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


COLUMNS = ["age", "income", "city", "member", "id"]
"""The decoded frame's columns: the training features in training order, then the id."""


def plain(value: Any) -> Any:
    """pandas' missing value (NaN in a float column, ``pd.NA`` in a nullable ``Int64`` one) as the None it
    was decoded from. Only these: any other value, a NaT or a NaN in an object column, stays as it is."""
    return None if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)) else value


def records_of(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """The frame's rows as plain Python records (what the decoder used to return), nulls as None.

    Check the column dtypes separately: a null reads as None here whether the column held NaN or ``pd.NA``.
    """
    return [{name: plain(value) for name, value in row.items()} for row in frame.to_dict("records")]


def typed(records: list[dict[str, Any]]) -> list[dict[str, tuple[str, Any]]]:
    """Records with each value's type, so that 31 and 31.0 or True and 1 do not compare equal."""
    return [{name: (type(value).__name__, value) for name, value in record.items()} for record in records]


@pytest.fixture
def block_results(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Whether each columnar attempt (``decode_block``) succeeded, in call order."""
    results: list[bool] = []
    real = codec.decode_block

    def spy(bodies: Any, layout: Any) -> Any:
        frame = real(bodies, layout)
        results.append(frame is not None)
        return frame

    monkeypatch.setattr(codec, "decode_block", spy)
    return results


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


@pytest.mark.parametrize("fallback", [False, True], ids=["columnar", "per-record"])
def test_decodes_onto_training_schema_despite_extra_fields_and_other_name(
    decoder: FeatureDecoder, fallback: bool
) -> None:
    values = [framed(1), framed(2, income=None)]
    batch = decoder.decode([*values, frame_value(WRITER_ID, b"\x02")] if fallback else values)
    assert [r.index for r in batch.rejections] == ([2] if fallback else [])
    assert batch.indices == [0, 1]
    assert batch.frame.index.tolist() == [0, 1]
    assert batch.schema_ids == [WRITER_ID, WRITER_ID]
    assert list(batch.frame.columns) == COLUMNS
    assert batch.frame["age"].dtype == np.int64
    assert batch.frame["income"].dtype == np.float64
    assert batch.frame["member"].dtype == np.bool_
    assert typed(records_of(batch.frame)) == typed(
        [
            {"age": 31, "income": 100.0, "city": "oslo", "member": False, "id": "c-1"},
            {"age": 32, "income": None, "city": "oslo", "member": True, "id": "c-2"},
        ]
    )
    assert batch.frame["income"].isna().tolist() == [False, True]


@pytest.mark.parametrize("fallback", [False, True], ids=["columnar", "per-record"])
def test_records_without_id_decode_with_id_none(decoder: FeatureDecoder, fallback: bool) -> None:
    value = frame_value(OLD_WRITER_ID, body(OLD_WRITER, {"age": 5, "income": 2.5, "city": "rome", "member": True}))
    batch = decoder.decode([value, frame_value(OLD_WRITER_ID, b"\x02")] if fallback else [value])
    assert batch.indices == [0]
    assert batch.schema_ids == [OLD_WRITER_ID]
    assert list(batch.frame.columns) == COLUMNS
    assert typed(records_of(batch.frame)) == typed(
        [{"age": 5, "income": 2.5, "city": "rome", "member": True, "id": None}]
    )
    assert batch.frame["id"].isna().all()


def test_unknown_schema_id_is_a_rejection(decoder: FeatureDecoder) -> None:
    batch = decoder.decode([frame_value(UNKNOWN_ID, b"\x02a")])
    (rejection,) = batch.rejections
    assert rejection.reason is RejectReason.UNKNOWN_SCHEMA_ID
    assert rejection.schema_id == UNKNOWN_ID
    assert f"schema id {UNKNOWN_ID}" in rejection.detail
    assert_empty(batch)


def assert_empty(batch: DecodedBatch) -> None:
    """No decoded rows, but still a frame with the reader's columns (the scorer takes it as is)."""
    assert batch.frame.empty
    assert list(batch.frame.columns) == COLUMNS
    assert batch.indices == []
    assert batch.schema_ids == []


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
    assert_empty(batch)
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
    assert batch.frame["id"].tolist() == ["c-1", "c-3", "c-6"]
    assert batch.frame["age"].tolist() == [31, 33, 36]
    assert batch.schema_ids == [WRITER_ID] * 3
    assert [(r.index, r.reason) for r in batch.rejections] == [
        (0, RejectReason.EMPTY_VALUE),
        (2, RejectReason.BAD_MAGIC_BYTE),
        (4, RejectReason.UNKNOWN_SCHEMA_ID),
        (5, RejectReason.MALFORMED_BODY),
    ]
    assert len(batch.frame) + len(batch.rejections) == len(values)


def test_lookup_is_called_once_per_schema_id_across_batches(decoder: FeatureDecoder, lookup: DictLookup) -> None:
    incompatible = frame_value(INCOMPATIBLE_ID, b"")
    for _ in range(3):
        batch = decoder.decode([framed(1), framed(2), incompatible, incompatible])
        assert len(batch.frame) == 2
        assert batch.indices == [0, 1]
        assert len(batch.rejections) == 2
    assert lookup.calls == Counter({WRITER_ID: 1, INCOMPATIBLE_ID: 1})


def test_an_unknown_schema_id_is_asked_again_only_after_a_while(lookup: DictLookup) -> None:
    now = [0.0]
    decoder = FeatureDecoder(training_schema(), "id", lookup, clock=lambda: now[0])
    garbage = frame_value(UNKNOWN_ID, b"\x02a")
    for _ in range(3):
        (rejection,) = decoder.decode([garbage]).rejections
        assert rejection.reason is RejectReason.UNKNOWN_SCHEMA_ID
    assert lookup.calls[UNKNOWN_ID] == 1, "a flood of one unknown id costs one registry call, not one per batch"
    lookup.schemas[UNKNOWN_ID] = WRITER  # registered late (for example a lagging registry replica)
    now[0] = WriterLookup.UNKNOWN_ID_TTL_S + 0.1
    assert decoder.decode([frame_value(UNKNOWN_ID, body(WRITER, event(1)))]).indices == [0], "found once asked again"
    assert lookup.calls[UNKNOWN_ID] == 2


def test_the_sidecars_decoder_also_asks_for_an_unknown_id_only_after_a_while(lookup: DictLookup) -> None:
    now = [0.0]
    decoder = RecordDecoder(lookup, clock=lambda: now[0])
    for _ in range(50):  # the sidecar decodes record by record: one call per garbage record without the memory
        reason, _detail = decoder.decode(frame_value(UNKNOWN_ID, b"\x02a"))
        assert reason is RejectReason.UNKNOWN_SCHEMA_ID
    assert lookup.calls[UNKNOWN_ID] == 1
    now[0] = WriterLookup.UNKNOWN_ID_TTL_S + 0.1
    decoder.decode(frame_value(UNKNOWN_ID, b"\x02a"))
    assert lookup.calls[UNKNOWN_ID] == 2


def test_the_memory_of_unknown_ids_is_bounded(lookup: DictLookup) -> None:
    writers = WriterLookup(lookup, clock=lambda: 0.0)
    for schema_id in range(1000, 1000 + WriterLookup.MAX_UNKNOWN_IDS + 1):
        assert writers.text(schema_id) is None
    assert len(writers._unknown) <= WriterLookup.MAX_UNKNOWN_IDS


def test_plain_types_read_timestamp_millis_as_epoch_milliseconds() -> None:
    from scorer.schema import label_schema

    schema = label_schema("string")
    value = frame_value(77, body(schema, {"id": "a", "label": "yes", "event_time": 1_796_000_000_123}))
    lookup = DictLookup({77: schema})
    plain = RecordDecoder(lookup, plain_types=True).decode(value)
    assert plain == {"id": "a", "label": "yes", "event_time": 1_796_000_000_123}, "the sidecar's clock is in ms"
    assert type(plain["event_time"]) is int
    converted = RecordDecoder(lookup).decode(value)
    assert converted["event_time"].tzinfo is not None, "without plain_types (scorer sample) a datetime is shown"


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


# --- the columnar and the per-record path give the same frame -----------------------------------------------
#
# A group of bodies sharing a writer schema is decoded in one columnar pass when every body fits exactly; one
# body that does not makes the whole group fall back to fastavro record by record. Decoding a batch twice,
# once as is and once with a malformed body inserted, therefore compares the two paths on the same records.

RICH_ID = 21


def rich_training() -> TrainingSchema:
    frame = pd.DataFrame(
        {
            "n_long": pd.array([1, None], dtype="Int64"),
            "i_long": np.array([1, 2], dtype=np.int64),
            "l_double": [1.0, 2.0],
            "f_double": [1.0, None],
            "nf_double": [1.0, None],
            "flag": [True, False],
            "nflag": pd.Series([True, None], dtype=object),
            "name": ["a", "b"],
            "nname": ["a", None],
            "y": ["no", "yes"],
        }
    )
    return TrainingSchema.from_frame(frame, label="y")


RICH_WRITER = {  # every promotion the reader allows, nulls in both union orders, and a long id
    "type": "record",
    "name": "Rich",
    "namespace": "com.example",
    "fields": [
        {"name": "nname", "type": ["string", "null"]},
        {"name": "id", "type": ["null", "long"]},
        {"name": "n_long", "type": ["null", "int"]},
        {"name": "i_long", "type": "int"},
        {"name": "l_double", "type": "long"},
        {"name": "f_double", "type": ["float", "null"]},
        {"name": "nf_double", "type": ["null", "long"]},
        {"name": "flag", "type": "boolean"},
        {"name": "nflag", "type": ["null", "boolean"]},
        {"name": "name", "type": "string"},
        {"name": "unused", "type": ["null", "bytes"]},
    ],
}
RICH_COLUMNS = ["n_long", "i_long", "l_double", "f_double", "nf_double", "flag", "nflag", "name", "nname", "id"]
RICH_RECORDS = [
    {"nname": None, "id": 7, "n_long": None, "i_long": -5, "l_double": 2**53 + 1, "f_double": 0.1, "nf_double": None,
     "flag": True, "nflag": None, "name": "héllo ✓ 😀", "unused": b"\xff"},
    {"nname": "x", "id": None, "n_long": 3, "i_long": 2**31 - 1, "l_double": -3, "f_double": None, "nf_double": 2**62,
     "flag": False, "nflag": True, "name": "", "unused": None},
    {"nname": "中文" * 100, "id": 2**53 + 1, "n_long": -(2**31), "i_long": -(2**31), "l_double": 2**63 - 1,
     "f_double": -0.0, "nf_double": -(2**63), "flag": True, "nflag": False, "name": "x" * 20000, "unused": b""},
    {"nname": "", "id": -(2**63), "n_long": 0, "i_long": 0, "l_double": -(2**63), "f_double": 3.4028234663852886e38,
     "nf_double": 0, "flag": False, "nflag": None, "name": "\x00\n\t", "unused": b"\x00" * 200},
    {"nname": None, "id": 0, "n_long": 64, "i_long": -64, "l_double": 8192, "f_double": 1e-45, "nf_double": -8193,
     "flag": True, "nflag": True, "name": "naïve café", "unused": None},
]  # fmt: skip
RICH_EXPECTED = [  # what the reader schema makes of RICH_RECORDS, in a frame (nullable longs stay exact ints)
    {"n_long": None, "i_long": -5, "l_double": 9007199254740992.0, "f_double": 0.10000000149011612,
     "nf_double": None, "flag": True, "nflag": None, "name": "héllo ✓ 😀", "nname": None, "id": "7"},
    {"n_long": 3, "i_long": 2147483647, "l_double": -3.0, "f_double": None, "nf_double": 4.611686018427388e18,
     "flag": False, "nflag": True, "name": "", "nname": "x", "id": None},
    {"n_long": -2147483648, "i_long": -2147483648, "l_double": 9.223372036854776e18, "f_double": -0.0,
     "nf_double": -9.223372036854776e18, "flag": True, "nflag": False, "name": "x" * 20000, "nname": "中文" * 100,
     "id": "9007199254740993"},
    {"n_long": 0, "i_long": 0, "l_double": -9.223372036854776e18, "f_double": 3.4028234663852886e38,
     "nf_double": 0.0, "flag": False, "nflag": None, "name": "\x00\n\t", "nname": "", "id": "-9223372036854775808"},
    {"n_long": 64, "i_long": -64, "l_double": 8192.0, "f_double": 1.401298464324817e-45, "nf_double": -8193.0,
     "flag": True, "nflag": True, "name": "naïve café", "nname": None, "id": "0"},
]  # fmt: skip


RICH_DTYPES = {
    "n_long": pd.Int64Dtype(),  # a long with nulls: exact integers, pd.NA for null
    "i_long": np.dtype(np.int64),
    "l_double": np.dtype(np.float64),
    "f_double": np.dtype(np.float64),
    "nf_double": np.dtype(np.float64),  # a double with nulls: NaN for null
    "flag": np.dtype(np.bool_),
    "nflag": np.dtype(object),  # a boolean with nulls: True, False or None
    "name": np.dtype(object),
    "nname": np.dtype(object),
    "id": np.dtype(object),  # the id, not a feature: text or None
}


def assert_rich_dtypes(frame: pd.DataFrame, expected: list[dict[str, Any]] = RICH_EXPECTED) -> None:
    """RICH_DTYPES, and each kind of column's own missing value where ``expected`` has a null."""
    assert frame.dtypes.to_dict() == RICH_DTYPES
    for name in ("n_long", "nf_double", "nflag", "nname"):
        assert frame[name].isna().tolist() == [e[name] is None for e in expected], name
    assert all(v is pd.NA for v in frame["n_long"][frame["n_long"].isna()])  # not NaN
    assert all(v is None for v in frame["nflag"][frame["nflag"].isna()])
    assert all(v is None for v in frame["nname"][frame["nname"].isna()])
    assert all(math.isnan(v) for v in frame["nf_double"][frame["nf_double"].isna()])


@pytest.fixture
def rich_decoder() -> FeatureDecoder:
    return FeatureDecoder(rich_training(), "id", DictLookup({RICH_ID: RICH_WRITER, WRITER_ID: WRITER}))


def rich_values() -> list[bytes]:
    return [frame_value(RICH_ID, body(RICH_WRITER, record)) for record in RICH_RECORDS]


def exact(records: list[dict[str, Any]]) -> list[dict[str, tuple[str, Any]]]:
    """``typed``, with floats by repr so that -0.0 and 0.0 differ."""
    return [
        {name: (type(v).__name__, repr(v) if isinstance(v, float) else v) for name, v in record.items()}
        for record in records
    ]


def test_the_columnar_path_decodes_what_the_reader_schema_says(
    rich_decoder: FeatureDecoder, block_results: list[bool]
) -> None:
    batch = rich_decoder.decode(rich_values())
    assert block_results == [True]
    assert batch.rejections == []
    assert batch.indices == [0, 1, 2, 3, 4]
    assert batch.schema_ids == [RICH_ID] * 5
    assert list(batch.frame.columns) == RICH_COLUMNS
    assert exact(records_of(batch.frame)) == exact(RICH_EXPECTED)
    assert batch.frame["id"].tolist()[0] == "7"  # not "7.0", though the next record has no id
    assert batch.frame["id"].isna().tolist() == [False, True, False, False, False]
    assert_rich_dtypes(batch.frame)


@pytest.mark.parametrize("position", [0, 2, 5])
@pytest.mark.parametrize(
    "malformed",
    [
        b"\x02",  # truncated
        b"\xff" * 12,  # garbage
        b"",  # empty
        "trailing",
        "invalid utf-8",
    ],
)
def test_one_malformed_body_falls_back_to_the_same_frame(
    rich_decoder: FeatureDecoder, block_results: list[bool], position: int, malformed: bytes | str
) -> None:
    good = rich_values()
    if malformed == "trailing":
        bad = good[1] + b"\x00"
    elif malformed == "invalid utf-8":
        bad = frame_value(RICH_ID, body(RICH_WRITER, {**RICH_RECORDS[0], "name": "abcdé"})).replace(
            "é".encode(), b"\xff\xff"
        )
    else:
        assert isinstance(malformed, bytes)
        bad = frame_value(RICH_ID, malformed)
    columnar = rich_decoder.decode(good)
    fallback = rich_decoder.decode([*good[:position], bad, *good[position:]])
    assert block_results == [True, False]
    assert [(r.index, r.reason) for r in fallback.rejections] == [(position, RejectReason.MALFORMED_BODY)]
    assert fallback.indices == [i if i < position else i + 1 for i in range(len(good))]
    assert fallback.schema_ids == columnar.schema_ids
    assert exact(records_of(fallback.frame)) == exact(records_of(columnar.frame)) == exact(RICH_EXPECTED)
    assert_rich_dtypes(columnar.frame)
    assert_rich_dtypes(fallback.frame)
    pd.testing.assert_frame_equal(
        fallback.frame.reset_index(drop=True), columnar.frame.reset_index(drop=True), check_exact=True
    )


@pytest.mark.parametrize("nulls", ["every", "no"])
def test_column_types_follow_the_nulls_in_the_group_on_both_paths(
    rich_decoder: FeatureDecoder, block_results: list[bool], nulls: str
) -> None:
    """A long or boolean column is Int64 or object only when the group holds a null; all-null columns agree too."""
    nullable = ["nname", "id", "n_long", "f_double", "nf_double", "nflag"]
    if nulls == "every":
        records = [{**r, **dict.fromkeys(nullable)} for r in RICH_RECORDS]
        dtypes = RICH_DTYPES
    else:
        changes = {"nname": "n", "f_double": 0.5, "nflag": False}
        records = [{**r, **changes, "id": n, "n_long": -n, "nf_double": n} for n, r in enumerate(RICH_RECORDS)]
        dtypes = {**RICH_DTYPES, "n_long": np.dtype(np.int64), "nflag": np.dtype(np.bool_)}
    values = [frame_value(RICH_ID, body(RICH_WRITER, r)) for r in records]
    columnar = rich_decoder.decode(values)
    fallback = rich_decoder.decode([*values, frame_value(RICH_ID, b"")])
    assert block_results == [True, False]
    assert columnar.frame.dtypes.to_dict() == dtypes
    assert fallback.frame.dtypes.to_dict() == dtypes
    assert exact(records_of(fallback.frame)) == exact(records_of(columnar.frame))
    pd.testing.assert_frame_equal(fallback.frame, columnar.frame, check_exact=True)
    if nulls == "every":
        assert all(v is pd.NA for v in columnar.frame["n_long"])
        assert all(v is None for name in ("nflag", "nname", "id") for v in columnar.frame[name])
    else:
        assert columnar.frame["n_long"].tolist() == [0, -1, -2, -3, -4]
        assert columnar.frame["id"].tolist() == ["0", "1", "2", "3", "4"]


def test_a_non_canonical_body_is_read_by_the_per_record_path(
    rich_decoder: FeatureDecoder, block_results: list[bool]
) -> None:
    """An overlong varint is valid Avro: the columnar path refuses the group, fastavro reads the record."""
    good = rich_values()
    record = {**RICH_RECORDS[4], "nname": "y"}
    canonical = body(RICH_WRITER, record)
    assert canonical.startswith(b"\x00\x02y\x02\x00")  # nname: branch 0, "y"; id: branch 1, 0
    overlong = b"\x00\x02y\x02\x80\x00" + canonical[5:]  # the id 0 in two bytes
    batch = rich_decoder.decode([*good, frame_value(RICH_ID, overlong)])
    assert block_results == [False]
    assert batch.rejections == []
    expected = [*RICH_EXPECTED, {**RICH_EXPECTED[4], "nname": "y"}]
    assert exact(records_of(batch.frame)) == exact(expected)
    assert_rich_dtypes(batch.frame, expected)


@pytest.mark.parametrize("fallback", [False, True], ids=["columnar", "per-record"])
def test_long_ids_become_exact_strings_when_another_record_has_none(
    rich_decoder: FeatureDecoder, block_results: list[bool], fallback: bool
) -> None:
    ids = [7, None, 2**53 + 1, None, -1]
    values = [frame_value(RICH_ID, body(RICH_WRITER, {**RICH_RECORDS[0], "id": v})) for v in ids]
    batch = rich_decoder.decode([*values, frame_value(RICH_ID, b"")] if fallback else values)
    assert block_results == [not fallback]
    assert [plain(v) for v in batch.frame["id"].tolist()] == ["7", None, "9007199254740993", None, "-1"]


def test_writers_on_both_paths_in_one_batch_come_out_in_batch_order(block_results: list[bool]) -> None:
    """Groups are decoded separately (here one columnar, one per record) and merged back by position."""
    rich = rich_values()
    flat_writer = {  # the training fields as a plain record: a second writer schema, with a string id
        "type": "record",
        "name": "Rich",
        "namespace": "com.example",
        "fields": [
            *[{"name": f.name, "type": f.avro_type()} for f in rich_training().features],
            {"name": "id", "type": "string"},
        ],
    }
    decoder = FeatureDecoder(rich_training(), "id", DictLookup({RICH_ID: RICH_WRITER, 22: flat_writer}))
    flat = [  # the same feature values as the rich records, as the flat writer writes them
        frame_value(22, body(flat_writer, {**e, "id": f"s-{n}"})) for n, e in enumerate(RICH_EXPECTED)
    ]
    values = [flat[0], rich[0], flat[1], rich[1], frame_value(RICH_ID, b""), rich[2], flat[2]]
    batch = decoder.decode(values)
    assert sorted(block_results) == [False, True]  # the flat group columnar, the rich group per record
    assert batch.indices == [0, 1, 2, 3, 5, 6]
    assert batch.schema_ids == [22, RICH_ID, 22, RICH_ID, RICH_ID, 22]
    assert [(r.index, r.reason) for r in batch.rejections] == [(4, RejectReason.MALFORMED_BODY)]
    assert [plain(v) for v in batch.frame["id"].tolist()] == ["s-0", "7", "s-1", None, "9007199254740993", "s-2"]
    expected = [
        RICH_EXPECTED[0],
        RICH_EXPECTED[0],
        RICH_EXPECTED[1],
        RICH_EXPECTED[1],
        RICH_EXPECTED[2],
        RICH_EXPECTED[2],
    ]
    strip = [{k: v for k, v in e.items() if k != "id"} for e in expected]
    assert exact([{k: v for k, v in r.items() if k != "id"} for r in records_of(batch.frame)]) == exact(strip)
    assert list(batch.frame.columns) == RICH_COLUMNS
    assert_rich_dtypes(batch.frame, expected)


def test_a_writer_the_columnar_path_cannot_take_decodes_the_same(block_results: list[bool]) -> None:
    nested = {**WRITER, "fields": [*WRITER["fields"], {"name": "tags", "type": {"type": "array", "items": "string"}}]}
    decoder = FeatureDecoder(training_schema(), "id", DictLookup({WRITER_ID: WRITER, 30: nested}))
    events = [event(1), event(2, income=None, city="rome"), event(3, id="ü")]
    flat = decoder.decode([frame_value(WRITER_ID, body(WRITER, e)) for e in events])
    assert block_results == [True]
    per_record = decoder.decode([frame_value(30, body(nested, {**e, "tags": ["a", "b"]})) for e in events])
    assert block_results == [True]  # no layout for the nested writer: not even tried
    assert per_record.schema_ids == [30] * 3
    assert typed(records_of(per_record.frame)) == typed(records_of(flat.frame))
    pd.testing.assert_frame_equal(per_record.frame, flat.frame, check_exact=True)


# --- writer types only the per-record path takes, and ids the reader refuses -----------------------------------
#
# A writer schema either has a layout (its groups are tried on the columnar path, and fall back per record when a
# body does not fit) or has none (every group goes per record). Either way both paths must give the same
# outcome. ``block_results`` shows which path a decode took: [] means the columnar path was not even tried.


def writer_with(**types: Any) -> dict[str, Any]:
    """WRITER with some field types replaced (and new fields appended)."""
    fields = [{"name": f["name"], "type": types.pop(f["name"], f["type"])} for f in WRITER["fields"]]
    return {**WRITER, "fields": fields + [{"name": name, "type": kind} for name, kind in types.items()]}


def field_bytes(avro_type: Any, value: Any) -> bytes:
    return body({"type": "record", "name": "One", "fields": [{"name": "v", "type": avro_type}]}, {"v": value})


def hand_written(**raw: bytes) -> bytes:
    """A WRITER body for event(1), with the named fields' bytes replaced by ``raw``."""
    record = event(1)
    return b"".join(raw.get(f["name"], field_bytes(f["type"], record[f["name"]])) for f in WRITER["fields"])


def outcome(batch: DecodedBatch, ignore: int | None = None) -> tuple[Any, ...]:
    rejected = [(r.index, r.reason) for r in batch.rejections if r.index != ignore]
    return batch.indices, exact(records_of(batch.frame)), rejected


def assert_both_paths_agree(
    writer: dict[str, Any], bodies: list[bytes], block_results: list[bool], attempts: list[bool]
) -> DecodedBatch:
    """Decode ``bodies`` as they are, then with an empty body appended (which no columnar attempt survives).

    ``attempts`` is what ``block_results`` must then be: [True, False] for a writer with a layout whose bodies
    fit, [] for one without (both decodes went per record, or the schema was refused before decoding).
    Returns the first batch.
    """
    decoder = FeatureDecoder(training_schema(), "id", DictLookup({40: writer}))
    values = [frame_value(40, b) for b in bodies]
    first = decoder.decode(values)
    second = decoder.decode([*values, frame_value(40, b"")])
    assert block_results == attempts
    assert [r.index for r in second.rejections if r.index == len(values)] == [len(values)]  # the empty body
    assert outcome(first) == outcome(second, ignore=len(values))
    pd.testing.assert_frame_equal(first.frame, second.frame, check_exact=True)
    return first


UUID_TEXT = "550e8400-e29b-41d4-a716-446655440000"
REFUSED_IDS = {  # id type -> the ids of three records: the reader's id is ["null", "string", "long"]
    "double": [1.5, -0.0, 2.0],
    "float": [0.1, 1.0, -3.5],
    "boolean": [True, False, True],
    "uuid string": [UUID_TEXT, UUID_TEXT.upper(), "00000000-0000-0000-0000-000000000000"],
    "nullable uuid": [UUID_TEXT, None, UUID_TEXT],
    "nullable double": [None, 1.5, 2.0],
    "bytes": [b"c-1", b"", b"\xff"],
    "timestamp-millis": [dt.datetime(2023, 11, 14, 22, 13, 20, tzinfo=dt.UTC)] * 3,
    "date": [dt.date(2024, 1, 2)] * 3,
    "time-millis": [dt.time(12, 30)] * 3,
    "decimal": [Decimal("12.34")] * 3,
}
REFUSED_ID_TYPES: dict[str, Any] = {
    "double": "double",
    "float": "float",
    "boolean": "boolean",
    "uuid string": {"type": "string", "logicalType": "uuid"},
    "nullable uuid": ["null", {"type": "string", "logicalType": "uuid"}],
    "nullable double": ["null", "double"],
    "bytes": "bytes",
    "timestamp-millis": {"type": "long", "logicalType": "timestamp-millis"},
    "date": {"type": "int", "logicalType": "date"},
    "time-millis": {"type": "int", "logicalType": "time-millis"},
    "decimal": {"type": "bytes", "logicalType": "decimal", "precision": 10, "scale": 2},
}


@pytest.mark.parametrize("case", list(REFUSED_IDS))
def test_an_id_written_as_other_than_a_string_or_an_integer_is_an_incompatible_schema(
    case: str, block_results: list[bool]
) -> None:
    """A double, boolean or logical-type id would become a different text on each path: the schema is refused."""
    writer = writer_with(id=REFUSED_ID_TYPES[case])
    lookup = DictLookup({40: writer})
    decoder = FeatureDecoder(training_schema(), "id", lookup)
    values = [frame_value(40, body(writer, event(n, id=v))) for n, v in enumerate(REFUSED_IDS[case])]
    for batch, count in ((decoder.decode(values), 3), (decoder.decode([*values, frame_value(40, b"")]), 4)):
        assert_empty(batch)
        assert [r.index for r in batch.rejections] == list(range(count))  # every record, the empty body too
        assert {r.reason for r in batch.rejections} == {RejectReason.INCOMPATIBLE_SCHEMA}
        assert {r.schema_id for r in batch.rejections} == {40}
        assert all("id: written as " in r.detail for r in batch.rejections)
    assert block_results == []  # refused before any decoding, on either path
    assert lookup.calls == Counter({40: 1})  # and the verdict is cached
    assert_both_paths_agree(
        writer, [body(writer, event(n, id=v)) for n, v in enumerate(REFUSED_IDS[case])], block_results, []
    )


ACCEPTED_IDS: dict[str, tuple[Any, list[Any], list[bool]]] = {  # id type, ids, the columnar attempts
    "string": ("string", ["c-1", "", "ü"], [True, False]),
    "int": ("int", [7, -(2**31), 2**31 - 1], [True, False]),
    "long": ("long", [7, 2**53 + 1, -(2**63)], [True, False]),
    "null first": (["null", "long"], [None, 2**63 - 1, 0], [True, False]),
    "null last": (["string", "null"], ["a", None, None], [True, False]),
    "nullable int": (["null", "int"], [None, -1, None], [True, False]),
    "three branches": (["null", "string", "long"], ["a", 7, None], []),  # no layout: per record only
}


@pytest.mark.parametrize("case", list(ACCEPTED_IDS))
def test_an_id_written_as_a_string_or_an_integer_decodes_as_text_on_both_paths(
    case: str, block_results: list[bool]
) -> None:
    avro_type, ids, attempts = ACCEPTED_IDS[case]
    writer = writer_with(id=avro_type)
    batch = assert_both_paths_agree(
        writer, [body(writer, event(n, id=v)) for n, v in enumerate(ids)], block_results, attempts
    )
    assert batch.rejections == []
    assert batch.frame["id"].dtype == object
    assert [plain(v) for v in batch.frame["id"].tolist()] == [None if v is None else str(v) for v in ids]


EXTRA_FIELDS = {  # a field the reader drops, a value for it, and whether the columnar path takes it
    # logical types are read as their plain types (the reader has none), so these stay columnar
    "decimal": ({"type": "bytes", "logicalType": "decimal", "precision": 10, "scale": 2}, Decimal("12.34"), True),
    "uuid": ({"type": "string", "logicalType": "uuid"}, UUID_TEXT, True),
    "time-millis": ({"type": "int", "logicalType": "time-millis"}, dt.time(12, 30, 1, 5000), True),
    "time-micros": ({"type": "long", "logicalType": "time-micros"}, dt.time(23, 59, 59, 999999), True),
    "nullable uuid": (["null", {"type": "string", "logicalType": "uuid"}], None, True),
    "null": ("null", None, False),  # polars cannot read a column of nulls
}


@pytest.mark.parametrize("case", list(EXTRA_FIELDS))
def test_an_extra_field_of_any_type_decodes_to_the_same_frame(case: str, block_results: list[bool]) -> None:
    avro_type, value, columnar = EXTRA_FIELDS[case]
    writer = writer_with(extra=avro_type)
    decoder = FeatureDecoder(training_schema(), "id", DictLookup({WRITER_ID: WRITER, 41: writer}))
    events = [event(1), event(2, income=None, city="rome"), event(3, id="ü")]
    plain_batch = decoder.decode([frame_value(WRITER_ID, body(WRITER, e)) for e in events])
    assert block_results == [True]
    batch = decoder.decode([frame_value(41, body(writer, {**e, "extra": value})) for e in events])
    assert block_results == ([True, True] if columnar else [True])  # without a layout: not even tried
    assert batch.rejections == []
    assert batch.schema_ids == [41] * 3
    pd.testing.assert_frame_equal(batch.frame, plain_batch.frame, check_exact=True)
    block_results.clear()
    bodies = [body(writer, {**e, "extra": value}) for e in events]
    assert_both_paths_agree(writer, bodies, block_results, [True, False] if columnar else [])


INVALID_BYTES = {  # bytes whose size is right, so only decode_block's byte checks can see them
    # -> the record fastavro reads (as changes to event(1)), or None where it rejects the body
    "union branch 2": ({"income": b"\x04" + field_bytes("double", 1.5)}, None),  # fastavro: IndexError
    "union branch -2, value after": ({"income": b"\x03" + field_bytes("double", 1.5)}, None),  # bytes left over
    # fastavro takes -2 as Python's index into ["null", "double"]: "null", and the record ends where it should
    "union branch -2": ({"income": b"\x03"}, {"income": None}),
    "boolean byte 2": ({"member": b"\x02"}, {"member": True}),  # polars False, fastavro True
    "boolean byte 0xff": ({"member": b"\xff"}, {"member": True}),
}


@pytest.mark.parametrize("case", list(INVALID_BYTES))
def test_invalid_union_and_boolean_bytes_are_read_per_record_as_fastavro_reads_them(
    case: str, block_results: list[bool]
) -> None:
    raw, changes = INVALID_BYTES[case]
    decoder = FeatureDecoder(training_schema(), "id", DictLookup({40: WRITER}))
    good = [frame_value(40, body(WRITER, event(0))), frame_value(40, body(WRITER, event(2)))]
    batch = decoder.decode([good[0], frame_value(40, hand_written(**raw)), good[1]])
    assert block_results == [False]  # tried, refused: every record of the group went per record
    if changes is None:
        reference = decoder.decode(good)
        assert [(r.index, r.reason) for r in batch.rejections] == [(1, RejectReason.MALFORMED_BODY)]
        assert batch.indices == [0, 2]
    else:
        reference = decoder.decode([good[0], frame_value(40, body(WRITER, event(1, **changes))), good[1]])
        assert batch.rejections == []
        assert batch.indices == [0, 1, 2]
    assert block_results[1:] == [True]  # the reference went columnar
    assert exact(records_of(batch.frame)) == exact(records_of(reference.frame))
    pd.testing.assert_frame_equal(
        batch.frame.reset_index(drop=True), reference.frame.reset_index(drop=True), check_exact=True
    )


# --- known bugs (reported, not fixed here) -----------------------------------------------------------------------


def _without_logical(avro_type: Any) -> Any:
    """An Avro type with its logical types removed: what the bytes hold."""
    if isinstance(avro_type, list):
        return [_without_logical(t) for t in avro_type]
    return avro_type["type"] if isinstance(avro_type, dict) else avro_type


LOGICAL_FEATURES = {  # a feature written with a logical type over the type the reader takes: field, type, value
    "date feature": ("age", {"type": "int", "logicalType": "date"}, dt.date(2024, 1, 2)),
    "timestamp feature": ("income", {"type": "long", "logicalType": "timestamp-millis"}, dt.datetime(2024, 1, 2, tzinfo=dt.UTC)),
    "nullable timestamp feature": (
        "income", ["null", {"type": "long", "logicalType": "timestamp-micros"}], dt.datetime(2024, 1, 2, tzinfo=dt.UTC)
    ),
    "uuid feature": ("city", {"type": "string", "logicalType": "uuid"}, UUID_TEXT.upper()),
}  # fmt: skip


@pytest.mark.parametrize("case", list(LOGICAL_FEATURES))
def test_a_feature_written_with_a_logical_type_is_read_as_its_plain_type_or_refused(case: str) -> None:
    """Either outcome is consistent: the schema refused for every record (as for an id), or the value read as
    the number or text the bytes hold, exactly as for the same writer without the logical type."""
    name, avro_type, value = LOGICAL_FEATURES[case]
    writer = writer_with(**{name: avro_type})
    stripped = writer_with(**{name: _without_logical(avro_type)})
    decoder = FeatureDecoder(training_schema(), "id", DictLookup({40: writer, 41: stripped}))
    bodies = [body(writer, event(n, **{name: value})) for n in range(3)]
    batch = decoder.decode([frame_value(40, b) for b in bodies])  # must not raise
    if {r.reason for r in batch.rejections} == {RejectReason.INCOMPATIBLE_SCHEMA}:
        assert [r.index for r in batch.rejections] == [0, 1, 2]
        assert_empty(batch)
        return
    reference = decoder.decode([frame_value(41, b) for b in bodies])  # the same bytes, without the logical type
    assert reference.rejections == [] == batch.rejections
    assert exact(records_of(batch.frame)) == exact(records_of(reference.frame))
    pd.testing.assert_frame_equal(batch.frame, reference.frame, check_exact=True)


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


# --- RecordDecoder.decode_frames: the sidecar's columnar read ------------------------------------------------


def prediction_record(n: int, with_features: bool = False) -> dict[str, Any]:
    p = (n % 10) / 10
    record: dict[str, Any] = {
        "id": f"r-{n}",
        "scored_label": "yes" if p >= 0.5 else "no",
        "scored_probability": p,
        "scored_label_probability": max(p, 1 - p),
        "scored_probabilities": None if n % 7 == 0 else {"no": 1 - p, "yes": p},
        "model_name": "churn",
        "model_version": str(1 + n % 2),
        "scored_at": 1_796_000_000_000 + n,
    }
    if with_features:
        record["features"] = {"age": n, "income": None, "city": "oslo", "member": True}
    return record


def frame_rows(frame: pl.DataFrame) -> list[dict[str, Any]]:
    """Rows as fastavro reads them: a map's key/value structs back as a dict."""
    return [
        {k: {e["key"]: e["value"] for e in v} if isinstance(v, list) else v for k, v in row.items()}
        for row in frame.to_dicts()
    ]


@pytest.mark.parametrize("with_features", [False, True], ids=["columnar", "record by record (nested features)"])
def test_decode_frames_gives_what_fastavro_gives_record_by_record(with_features: bool) -> None:
    schema = prediction_schema(training_schema(), "string", include_features=with_features)
    decoder = RecordDecoder(DictLookup({61: schema}), plain_types=True)
    records = [prediction_record(n, with_features) for n in range(50)]
    values: list[bytes | None] = [frame_value(61, body(schema, r)) for r in records]
    frames, rejections = decoder.decode_frames(values)
    assert rejections == []
    assert [(f.schema_id, f.positions) for f in frames] == [(61, list(range(50)))]
    assert frames[0].frame.schema["scored_probabilities"] == pl.List(pl.Struct({"key": pl.String, "value": pl.Float64}))
    assert frame_rows(frames[0].frame) == [decoder.decode(v) for v in values]


def test_decode_frames_rejects_what_it_cannot_read_and_keeps_the_others_in_place() -> None:
    schema = prediction_schema(training_schema(), "string")
    decoder = RecordDecoder(DictLookup({61: schema}), plain_types=True)
    good = [frame_value(61, body(schema, prediction_record(n))) for n in range(6)]
    values: list[bytes | None] = [good[0], None, good[1], b"\x01junk", frame_value(UNKNOWN_ID, b"\x02a"), good[2]]
    values += [good[3][:-3], good[4]]  # a truncated body sends its whole group record by record
    frames, rejections = decoder.decode_frames(values)
    assert {r.index: r.reason for r in rejections} == {
        1: RejectReason.EMPTY_VALUE,
        3: RejectReason.BAD_MAGIC_BYTE,
        4: RejectReason.UNKNOWN_SCHEMA_ID,
        6: RejectReason.MALFORMED_BODY,
    }
    assert [f.positions for f in frames] == [[0, 2, 5, 7]]
    assert frames[0].frame.get_column("id").to_list() == ["r-0", "r-1", "r-2", "r-4"]
