"""Unit tests of scorer.avroblock: which writer schemas it takes, and that it decodes exactly what fastavro does.

``decode_block`` must either return the records fastavro would decode from each body, or ``None`` (the
caller then decodes record by record). The invalid-input cases below are built so that a columnar read of
the whole block would succeed or be misaligned: only the per-record size check can reject them.
"""

from __future__ import annotations

import datetime as dt
import io
import math
from collections.abc import Callable
from typing import Any

import fastavro
import numpy as np
import polars as pl
import pytest

from scorer.avroblock import BlockLayout, decode_block, layout_of


def record_schema(*fields: tuple[str, Any], name: str = "R") -> dict[str, Any]:
    return {"type": "record", "name": name, "fields": [{"name": n, "type": t} for n, t in fields]}


def encode(schema: dict[str, Any], record: dict[str, Any]) -> bytes:
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, fastavro.parse_schema(schema), record)
    return buffer.getvalue()


def fastavro_decode(schema: dict[str, Any], body: bytes) -> dict[str, Any]:
    """fastavro's record, insisting that it consumed the whole body (as the per-record path does)."""
    stream = io.BytesIO(body)
    record = fastavro.schemaless_reader(stream, fastavro.parse_schema(schema), None)
    assert stream.tell() == len(body)
    assert isinstance(record, dict)
    return record


def zigzag(value: int) -> bytes:
    """Avro long encoding, written out here so that the tests do not reuse the module's own."""
    value = (value << 1) ^ (value >> 63)
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        if not value:
            return bytes(out) + bytes([byte])
        out.append(byte | 0x80)


def layout(schema: dict[str, Any]) -> BlockLayout:
    got = layout_of(schema)
    assert got is not None
    return got


def comparable(value: Any) -> Any:
    """Floats by repr (so -0.0, inf and NaN compare exactly), everything else as is, types included."""
    if isinstance(value, float):
        return ("float", repr(value))
    return (type(value).__name__, value)


def rows(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{name: comparable(value) for name, value in record.items()} for record in records]


def assert_decodes_like_fastavro(schema: dict[str, Any], bodies: list[bytes]) -> None:
    frame = decode_block(bodies, layout(schema))
    assert frame is not None, "a block of valid canonical bodies must take the columnar path"
    assert frame.columns == [f["name"] for f in schema["fields"]]
    assert rows(frame.to_dicts()) == rows([fastavro_decode(schema, body) for body in bodies])


# --- layout_of -----------------------------------------------------------------------------------------------


def test_layout_of_a_flat_record_of_every_supported_kind() -> None:
    schema = record_schema(
        ("b", "boolean"),
        ("i", "int"),
        ("l", "long"),
        ("f", "float"),
        ("d", "double"),
        ("s", "string"),
        ("y", "bytes"),
        ("nl", ["null", "long"]),
        ("ln", ["long", "null"]),
        ("ns", ["null", "string"]),
        ("ts", {"type": "long", "logicalType": "timestamp-millis"}),
        ("day", {"type": "int", "logicalType": "date"}),
        ("nts", ["null", {"type": "long", "logicalType": "timestamp-micros"}]),
        ("plain", {"type": "string"}),
    )
    got = layout(schema)
    assert [(f.name, f.kind, f.null_branch) for f in got.fields] == [
        ("b", "boolean", None),
        ("i", "int", None),
        ("l", "long", None),
        ("f", "float", None),
        ("d", "double", None),
        ("s", "string", None),
        ("y", "bytes", None),
        ("nl", "long", 0),
        ("ln", "long", 1),
        ("ns", "string", 0),
        ("ts", "long", None),
        ("day", "int", None),
        ("nts", "long", 0),
        ("plain", "string", None),
    ]
    # the header is a real container header for this schema, and the sync marker is its last 16 bytes
    assert got.header.startswith(b"Obj\x01")
    assert got.sync == got.header[-16:]
    assert len(got.sync) == 16
    record = {f["name"]: None for f in schema["fields"]} | {
        "b": True,
        "i": -3,
        "l": 2**40,
        "f": 0.5,
        "d": -2.25,
        "s": "é",
        "y": b"\x00",
        "ln": 5,
        "ts": dt.datetime(2024, 1, 2, tzinfo=dt.UTC),
        "day": dt.date(2024, 1, 2),
        "plain": "",
    }
    body = encode(schema, record)
    block = got.header + zigzag(1) + zigzag(len(body)) + body + got.sync  # a block of one record
    (read,) = fastavro.reader(io.BytesIO(block))
    assert read == fastavro_decode(schema, body)


def test_layout_of_refuses_a_logical_type_on_a_field_the_reader_uses() -> None:
    schema = record_schema(("ts", {"type": "long", "logicalType": "timestamp-millis"}), ("x", "double"))
    assert layout_of(schema, used=["x"]) is not None
    assert layout_of(schema, used=["ts", "x"]) is None
    nullable = record_schema(("x", "double"), ("day", ["null", {"type": "int", "logicalType": "date"}]))
    assert layout_of(nullable) is not None
    assert layout_of(nullable, used=["day"]) is None
    assert layout_of(record_schema(("ts", {"type": "long", "logicalType": "timestamp-millis"})), used=["x"]) is not None


@pytest.mark.parametrize(
    "field_type",
    [
        {"type": "string", "logicalType": "uuid"},
        ["null", {"type": "string", "logicalType": "uuid"}],
        {"type": "bytes", "logicalType": "decimal", "precision": 10, "scale": 2},
        {"type": "int", "logicalType": "time-millis"},
        {"type": "long", "logicalType": "time-micros"},
        ["null", {"type": "long", "logicalType": "time-micros"}],
        "null",
    ],
    ids=repr,
)
def test_layout_of_refuses_these_types_even_on_a_field_the_reader_drops(field_type: Any) -> None:
    schema = record_schema(("x", "double"), ("dropped", field_type))
    assert layout_of(schema, used=["x"]) is None
    assert layout_of(record_schema(("x", "double")), used=["x"]) is not None


NESTED = {"type": "record", "name": "Inner", "fields": [{"name": "x", "type": "long"}]}


@pytest.mark.parametrize(
    "field_type",
    [
        NESTED,
        ["null", NESTED],
        {"type": "array", "items": "long"},
        {"type": "map", "values": "long"},  # varint values: the size check would need their zig-zag
        ["null", {"type": "map", "values": "boolean"}],
        {"type": "map", "values": ["null", "double"]},
        {"type": "map", "values": {"type": "map", "values": "double"}},
        {"type": "enum", "name": "Colour", "symbols": ["RED", "BLUE"]},
        ["null", {"type": "enum", "name": "Colour", "symbols": ["RED", "BLUE"]}],
        {"type": "fixed", "name": "Hash", "size": 16},
        {"type": "fixed", "name": "Dur", "size": 12, "logicalType": "duration"},
        ["long", "string"],
        ["int", "long"],
        ["null", "long", "string"],
        ["long"],
        ["null"],
        "null",  # polars cannot read a column of nulls
        {"type": "string", "logicalType": "uuid"},  # fastavro reads a UUID object: only the per-record path
        {"type": "bytes", "logicalType": "decimal", "precision": 10, "scale": 2},
        {"type": "int", "logicalType": "time-millis"},  # polars keeps nanoseconds: sizes never match
        "com.example.SomeNamedType",
    ],
    ids=repr,
)
def test_layout_of_refuses_what_the_size_check_cannot_handle(field_type: Any) -> None:
    schema = {
        "type": "record",
        "name": "R",
        "fields": [{"name": "ok", "type": "long"}, {"name": "odd", "type": field_type}],
    }
    assert layout_of(schema) is None


def test_layout_of_refuses_a_named_type_defined_earlier_in_the_record() -> None:
    schema = record_schema(("first", NESTED), ("second", "Inner"))
    assert layout_of(schema) is None
    assert layout_of(record_schema(("colour", {"type": "enum", "name": "C", "symbols": ["A"]}), ("again", "C"))) is None


@pytest.mark.parametrize(
    "schema", ["long", {"type": "enum", "name": "E", "symbols": ["A"]}, {"type": "map", "values": "long"}]
)
def test_layout_of_refuses_a_writer_that_is_not_a_record(schema: Any) -> None:
    assert layout_of(schema if isinstance(schema, dict) else {"type": schema}) is None


# --- decode_block equals fastavro on valid input -------------------------------------------------------------

LONG_EDGES = [
    0,
    1,
    -1,
    63,
    -63,
    64,
    -64,
    -65,
    8191,
    -8191,
    8192,
    -8192,
    -8193,
    2**31 - 1,
    -(2**31),
    2**53 + 1,
    2**62,
    -(2**62),
    2**63 - 1,
    -(2**63),
    -(2**63) + 1,
    2**63 - 2,
]
INT_EDGES = [v for v in LONG_EDGES if -(2**31) <= v < 2**31]
CHARACTERS = ["a", "Z", "0", " ", "é", "ß", "✓", "€", "中", "😀", "🎉", "\x00", "\n"]
"""One to four UTF-8 bytes each: byte length and character count differ."""
STRING_EDGES = [
    "",
    "x" * 63,
    "x" * 64,
    "x" * 127,  # the length prefix is one byte up to 63 bytes, two up to 8191, three from 8192
    "x" * 128,
    "é" * 64,  # 64 characters, 128 bytes
    "✓" * 2731,  # 8193 bytes
    "x" * 8191,
    "x" * 8192,
    "x" * 16383,
    "x" * 16384,
    "😀" * 4097,  # 16388 bytes
]


def random_long(rng: np.random.Generator) -> int:
    if rng.random() < 0.4:
        return int(rng.choice(np.array(LONG_EDGES, dtype=object)))
    bits = int(rng.integers(0, 64))  # every varint length, not only the ten-byte values uniform draws give
    magnitude = int(rng.integers(0, 2**bits)) if bits else 0
    return magnitude if rng.random() < 0.5 else -magnitude - 1


def random_int(rng: np.random.Generator) -> int:
    if rng.random() < 0.4:
        return int(rng.choice(np.array(INT_EDGES, dtype=object)))
    bits = int(rng.integers(0, 32))
    magnitude = int(rng.integers(0, 2**bits)) if bits else 0
    return magnitude if rng.random() < 0.5 else -magnitude - 1


def random_string(rng: np.random.Generator) -> str:
    if rng.random() < 0.05:
        return str(rng.choice(np.array(STRING_EDGES, dtype=object)))
    length = int(rng.choice([0, 1, 2, 5, 20, 40, 70, 130]))
    return "".join(rng.choice(CHARACTERS, size=length).tolist())


def random_bytes(rng: np.random.Generator) -> bytes:
    length = int(
        rng.choice(
            [0, 1, 3, 63, 64, 127, 128, 300, 8192, 16384], p=[0.2, 0.2, 0.2, 0.1, 0.1, 0.05, 0.05, 0.05, 0.03, 0.02]
        )
    )
    return rng.integers(0, 256, size=length, dtype=np.uint8).tobytes()  # any bytes: invalid UTF-8 is fine here


def random_double(rng: np.random.Generator) -> float:
    if rng.random() < 0.2:
        return float(rng.choice([0.0, -0.0, math.inf, -math.inf, math.nan, 5e-324, 1.7976931348623157e308, -1.5]))
    return float(rng.normal() * 10 ** int(rng.integers(-300, 300)))


def random_float(rng: np.random.Generator) -> float:
    if rng.random() < 0.2:
        return float(rng.choice([0.0, -0.0, math.inf, -math.inf, math.nan, 0.1, 3.4028234663852886e38, 1e-45]))
    return float(np.float32(rng.normal() * 10 ** int(rng.integers(-30, 30))))


GENERATORS: dict[str, Callable[[np.random.Generator], Any]] = {
    "null": lambda rng: None,
    "boolean": lambda rng: bool(rng.random() < 0.5),
    "int": random_int,
    "long": random_long,
    "float": random_float,
    "double": random_double,
    "string": random_string,
    "bytes": random_bytes,
}

RANDOM_SCHEMA = record_schema(  # no "null" field: it has no layout (see the test below)
    ("b", "boolean"),
    ("i", "int"),
    ("l", "long"),
    ("f", "float"),
    ("d", "double"),
    ("s", "string"),
    ("y", "bytes"),
    ("null_b", ["null", "boolean"]),
    ("b_null", ["boolean", "null"]),
    ("null_i", ["null", "int"]),
    ("i_null", ["int", "null"]),
    ("null_l", ["null", "long"]),
    ("l_null", ["long", "null"]),
    ("null_f", ["null", "float"]),
    ("f_null", ["float", "null"]),
    ("null_d", ["null", "double"]),
    ("d_null", ["double", "null"]),
    ("null_s", ["null", "string"]),
    ("s_null", ["string", "null"]),
    ("null_y", ["null", "bytes"]),
    ("y_null", ["bytes", "null"]),
    ("l2", "long"),
    ("s2", "string"),
)


def random_record(rng: np.random.Generator) -> dict[str, Any]:
    record = {}
    for spec in RANDOM_SCHEMA["fields"]:
        kind = spec["type"]
        if isinstance(kind, list):
            kind = next(k for k in kind if k != "null")
            record[spec["name"]] = None if rng.random() < 0.3 else GENERATORS[kind](rng)
        else:
            record[spec["name"]] = GENERATORS[kind](rng)
    return record


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_decode_block_equals_fastavro_for_random_records(seed: int) -> None:
    rng = np.random.default_rng(seed)
    records = [random_record(rng) for _ in range(600)]
    longs = {r[name] for r in records for name in ("l", "l2", "null_l", "l_null")}
    assert {-(2**63), 2**63 - 1, 0, 63, -64, 64, 8191, -8192, 8192} <= longs
    strings = [r[name] for r in records for name in ("s", "s2", "null_s", "s_null") if r[name] is not None]
    assert "" in strings
    assert any(len(v.encode()) > 16383 for v in strings)
    assert any(127 < len(v.encode()) < 16384 for v in strings)
    assert any(len(v.encode()) != len(v) for v in strings)
    assert all(
        any(r[spec["name"]] is None for r in records)
        for spec in RANDOM_SCHEMA["fields"]
        if isinstance(spec["type"], list)
    )
    bodies = [encode(RANDOM_SCHEMA, record) for record in records]
    assert_decodes_like_fastavro(RANDOM_SCHEMA, bodies)
    for size in (1, 2, 7, 64):  # and in smaller blocks, whatever the first record is
        start = int(rng.integers(0, len(bodies) - size))
        assert_decodes_like_fastavro(RANDOM_SCHEMA, bodies[start : start + size])


def test_decode_block_covers_every_edge_value_in_every_field_kind() -> None:
    schema = record_schema(("i", "int"), ("l", ["long", "null"]), ("s", ["null", "string"]), ("y", "bytes"))
    records = []
    for k, value in enumerate(LONG_EDGES):
        records.append(
            {
                "i": INT_EDGES[k % len(INT_EDGES)],
                "l": value,
                "s": STRING_EDGES[k % len(STRING_EDGES)],
                "y": STRING_EDGES[-1 - k % len(STRING_EDGES)].encode(),
            }
        )
        records.append({"i": 0, "l": None, "s": None, "y": b""})
    bodies = [encode(schema, record) for record in records]
    assert max(len(body) for body in bodies) > 16384
    assert_decodes_like_fastavro(schema, bodies)
    frame = decode_block(bodies, layout(schema))
    assert frame is not None
    assert frame.get_column("l").to_list()[::2] == LONG_EDGES
    assert frame.get_column("l").to_list()[1::2] == [None] * len(LONG_EDGES)


def test_a_null_field_is_refused() -> None:
    """polars cannot read a Null column, so a writer with a "null" field has no layout: the caller decodes it
    record by record (fastavro reads None), whether the field comes first, alone or after others."""
    for schema in (
        record_schema(("n", "null"), ("also", "null")),
        record_schema(("l", "long"), ("n", "null")),
        record_schema(("n", "null"), ("l", "long")),
    ):
        assert layout_of(schema) is None
        assert layout_of(schema, used=["l"]) is None  # also when the reader does not keep it
    assert fastavro_decode(record_schema(("l", "long"), ("n", "null")), b"\x04") == {"l": 2, "n": None}


def test_decode_block_reads_logical_types_as_their_instants() -> None:
    schema = record_schema(
        ("ts", {"type": "long", "logicalType": "timestamp-millis"}),
        ("nts", ["null", {"type": "long", "logicalType": "timestamp-millis"}]),
        ("day", {"type": "int", "logicalType": "date"}),
    )
    records = [
        {"ts": dt.datetime(2023, 11, 14, 22, 13, 20, 123000, tzinfo=dt.UTC), "nts": None, "day": dt.date(2024, 2, 29)},
        {
            "ts": dt.datetime(1969, 7, 20, 20, 17, tzinfo=dt.UTC),
            "nts": dt.datetime(2000, 1, 1, tzinfo=dt.UTC),
            "day": dt.date(1900, 1, 1),
        },
    ]
    bodies = [encode(schema, record) for record in records]
    frame = decode_block(bodies, layout(schema))
    assert frame is not None
    assert frame.to_dicts() == [fastavro_decode(schema, body) for body in bodies] == records


# --- decode_block refuses what is not exactly one canonical record per body -----------------------------------

PAIR = record_schema(("a", "long"), ("s", "string"))


def pair_bodies() -> list[bytes]:
    return [encode(PAIR, {"a": n * 1000, "s": "v" * n}) for n in range(6)]


def assert_refused(schema: dict[str, Any], bodies: list[bytes]) -> None:
    assert decode_block(bodies, layout(schema)) is None


def test_valid_pair_bodies_decode() -> None:  # the baseline the refusals below depart from
    assert_decodes_like_fastavro(PAIR, pair_bodies())


@pytest.mark.parametrize("position", [0, 2, 5])
def test_trailing_byte_on_one_body(position: int) -> None:
    bodies = pair_bodies()
    bodies[position] += b"\x00"
    assert_refused(PAIR, bodies)


@pytest.mark.parametrize("position", [0, 2, 5])
def test_truncated_body(position: int) -> None:
    bodies = pair_bodies()
    bodies[position] = bodies[position][:-1]
    assert_refused(PAIR, bodies)


def test_a_boundary_moved_between_two_bodies() -> None:
    """Same bytes, same record count, same total: only the per-record sizes show that body 2 is cut short."""
    bodies = pair_bodies()
    moved = [*bodies[:2], bodies[2][:-1], bodies[2][-1:] + bodies[3], *bodies[4:]]
    assert b"".join(moved) == b"".join(bodies)
    assert len(moved) == len(bodies)
    assert_refused(PAIR, moved)


def test_a_body_of_another_schema_as_long_as_two_neighbours() -> None:
    """A body of a wider schema reads as two records of this one; an empty body next to it keeps the count.

    Its length is the sum of the two bodies it stands for, so the block has as many records as bodies and the
    same total size as a valid batch, and is consumed to its last byte: a reader that only checked the count
    and the total would return a plausible frame with the rows after the wide body shifted by one.
    """
    double = record_schema(("a", "long"), ("s", "string"), ("a2", "long"), ("s2", "string"), name="Double")
    bodies = pair_bodies()
    wide = encode(double, {"a": 1, "s": "w", "a2": 2, "s2": "wxyz"})
    assert len(wide) == len(bodies[1]) + len(bodies[2])
    assert wide != bodies[1] + bodies[2]
    for shaped in (
        [bodies[0], wide, b"", *bodies[3:]],
        [bodies[0], b"", wide, *bodies[3:]],
        [bodies[0], wide, *bodies[3:], b""],
    ):
        assert len(shaped) == len(bodies)
        assert len(b"".join(shaped)) == len(b"".join(bodies))
        assert_refused(PAIR, shaped)
    # the same bytes split where its two records really end decode fine: only the boundaries were wrong
    first, second = encode(PAIR, {"a": 1, "s": "w"}), encode(PAIR, {"a": 2, "s": "wxyz"})
    assert wide == first + second
    assert_decodes_like_fastavro(PAIR, [bodies[0], first, second, *bodies[3:]])


@pytest.mark.parametrize("position", [0, 2, 5])
def test_a_body_of_another_schema_with_the_same_length(position: int) -> None:
    other = record_schema(("x", "double"), name="Other")  # eight bytes: 1.0 reads as a zero long, an empty string...
    body = encode(other, {"x": 1.0})
    bodies = [encode(PAIR, {"a": 5000, "s": "vwxyz"})] * 6
    assert len(body) == len(bodies[0]) == 8
    bodies[position] = body
    assert_refused(PAIR, bodies)


@pytest.mark.parametrize("garbage", [b"\xff" * 12, b"\x80" * 11, b"\x01", b"\x7f\x7f", b"\x00\x7f"])
def test_garbage_body(garbage: bytes) -> None:
    bodies = pair_bodies()
    bodies[2] = garbage
    assert_refused(PAIR, bodies)


@pytest.mark.parametrize("position", [0, 3, 5])
def test_empty_body(position: int) -> None:
    bodies = pair_bodies()
    bodies[position] = b""
    assert_refused(PAIR, bodies)


@pytest.mark.parametrize(
    ("schema", "valid", "overlong"),
    [
        (record_schema(("i", "int")), b"\x00", b"\x80\x00"),  # 0 in two bytes
        (record_schema(("i", "int")), b"\x02", b"\x82\x00"),  # 1
        (record_schema(("l", "long")), b"\x7f", b"\xff\x00"),  # -64
        (record_schema(("l", "long")), b"\x80\x01", b"\x80\x81\x00"),  # 64
        (record_schema(("s", "string")), b"\x02a", b"\x82\x00a"),  # length prefix
        (record_schema(("y", "bytes")), b"\x00", b"\x80\x80\x00"),  # empty bytes
        (record_schema(("u", ["null", "long"])), b"\x00", b"\x80\x00"),  # union branch index
        (record_schema(("u", ["null", "long"])), b"\x02\x04", b"\x02\x84\x00"),  # the long inside the union
    ],
)
def test_overlong_varint_of_a_valid_value(schema: dict[str, Any], valid: bytes, overlong: bytes) -> None:
    """fastavro reads both encodings to the same record; only the canonical one may take the columnar path."""
    assert fastavro_decode(schema, overlong) == fastavro_decode(schema, valid)
    assert_decodes_like_fastavro(schema, [valid, valid])
    assert_refused(schema, [valid, overlong, valid])
    assert_refused(schema, [overlong])


@pytest.mark.parametrize(
    ("schema", "bad"),
    [
        (record_schema(("s", "string")), b"\x04a\xff"),
        (record_schema(("s", "string")), b"\x02\x80"),  # a lone continuation byte
        (record_schema(("s", "string")), b"\x06\xed\xa0\x80"),  # a UTF-8 encoded surrogate
        (record_schema(("s", ["null", "string"])), b"\x02\x04\xc3\x28"),
        (record_schema(("s", ["string", "null"])), b"\x00\x04\xc3\x28"),
    ],
)
def test_invalid_utf8_in_a_string(schema: dict[str, Any], bad: bytes) -> None:
    with pytest.raises(UnicodeDecodeError):
        fastavro_decode(schema, bad)
    good = encode(schema, {"s": "ok"})
    assert_refused(schema, [good, bad, good])


def test_invalid_utf8_in_bytes_is_just_bytes() -> None:
    schema = record_schema(("y", "bytes"))
    assert_decodes_like_fastavro(schema, [b"\x04a\xff", b"\x02\x80", b"\x06\xed\xa0\x80"])


def test_more_bodies_than_records_or_fewer() -> None:
    bodies = pair_bodies()
    assert_refused(PAIR, [*bodies[:3], b"", *bodies[3:]])  # an extra empty body
    assert_refused(PAIR, [bodies[0] + bodies[1], *bodies[2:]])  # two records in one body


def test_every_body_decodes_alone_with_the_same_layout() -> None:
    """A layout is reused across batches: decoding one body after another gives the same rows."""
    bodies = pair_bodies()
    shared = layout(PAIR)
    whole = decode_block(bodies, shared)
    assert whole is not None
    singles = [decode_block([body], shared) for body in bodies]
    assert all(isinstance(single, pl.DataFrame) for single in singles)
    assert [single.row(0, named=True) for single in singles if single is not None] == whole.to_dicts()


# --- bytes the size check cannot see: union branch indexes and boolean bytes --------------------------------
#
# Both take exactly one byte whatever their value, so a wrong one keeps every size right. polars reads them
# leniently (branch 2 of a two-branch union, a boolean byte 2 as False where fastavro says True):
# decode_block checks those bytes at their computed offsets and refuses the block.


@pytest.mark.parametrize("position", [0, 2, 5])
@pytest.mark.parametrize(
    ("field_type", "bad"),
    [
        (["null", "long"], b"\x04\x02"),  # branch 2: fastavro IndexError, polars {"u": 1}
        (["long", "null"], b"\x03"),  # branch -2: fastavro EOFError, polars {"u": None}
        (["null", "long"], b"\x03"),  # branch -2 of a null-first union
        (["null", "long"], b"\x06\x02"),  # branch 3
        (["string", "null"], b"\x04\x02a"),  # branch 2 before a string
    ],
)
def test_union_branch_index_out_of_range_is_refused(field_type: list[str], bad: bytes, position: int) -> None:
    schema = record_schema(("l", "long"), ("u", field_type), ("s", "string"))
    good = [encode(schema, {"l": n, "u": None if n % 2 else ("v" if "string" in field_type else n), "s": "x" * n})
            for n in range(6)]  # fmt: skip
    assert_decodes_like_fastavro(schema, good)
    bodies = [*good]
    bodies[position] = b"\x02" + bad + b"\x00"  # l = 1, the bad union, s = ""
    assert_refused(schema, bodies)


@pytest.mark.parametrize(
    ("field_type", "bad"),
    [
        (["null", "long"], b"\x04\x02"),  # branch 2: fastavro IndexError
        (["long", "null"], b"\x03"),  # branch -2: fastavro takes "long" (Python's index -2), then EOFError
    ],
)
def test_union_branch_index_out_of_range_alone(field_type: list[str], bad: bytes) -> None:
    schema = record_schema(("u", field_type))
    with pytest.raises((IndexError, EOFError)):
        fastavro_decode(schema, bad)
    assert_refused(schema, [bad])


@pytest.mark.parametrize("position", [0, 2, 5])
@pytest.mark.parametrize("bad", [b"\x02", b"\xff", b"\x80"])
@pytest.mark.parametrize(
    ("field_type", "prefix"), [("boolean", b""), (["null", "boolean"], b"\x02"), (["boolean", "null"], b"\x00")]
)
def test_boolean_byte_other_than_0_or_1_is_refused(field_type: Any, prefix: bytes, bad: bytes, position: int) -> None:
    schema = record_schema(("s", "string"), ("b", field_type), ("l", "long"))
    good = [encode(schema, {"s": "é" * n, "b": n % 2 == 0, "l": -n}) for n in range(6)]
    assert_decodes_like_fastavro(schema, good)
    bodies = [*good]
    bodies[position] = b"\x02a" + prefix + bad + b"\x01"  # s = "a", the bad boolean, l = -1
    assert fastavro_decode(schema, bodies[position]) == {"s": "a", "b": True, "l": -1}  # fastavro: any non-zero
    assert_refused(schema, bodies)
    assert_refused(schema, [bodies[position]])


def test_null_booleans_and_null_unions_need_no_value_byte() -> None:
    """The byte checks skip a null's missing value byte, so nulls next to booleans still decode."""
    schema = record_schema(("nb", ["null", "boolean"]), ("b", "boolean"), ("bn", ["boolean", "null"]))
    records = [
        {"nb": None, "b": True, "bn": None},
        {"nb": False, "b": False, "bn": True},
        {"nb": True, "b": True, "bn": False},
        {"nb": None, "b": False, "bn": None},
    ]
    assert_decodes_like_fastavro(schema, [encode(schema, r) for r in records])


# --- maps (read as lists of key/value structs) ----------------------------------------------------------------

MAP_SCHEMA = record_schema(
    ("id", "string"),
    ("probabilities", ["null", {"type": "map", "values": "double"}]),
    ("tags", {"type": "map", "values": "string"}),
    ("blobs", [{"type": "map", "values": "bytes"}, "null"]),
    ("weights", {"type": "map", "values": "float"}),
)


def as_dicts(frame: pl.DataFrame) -> list[dict[str, Any]]:
    """Rows with each list of key/value structs turned back into the dict fastavro reads."""
    return [
        {
            name: {e["key"]: e["value"] for e in value} if isinstance(value, list) else value
            for name, value in row.items()
        }
        for row in frame.to_dicts()
    ]


def random_map_record(rng: np.random.Generator, i: int) -> dict[str, Any]:
    def key(j: int) -> str:  # lengths around the 1- and 2-byte varint limits of a length (63 and 8191)
        return "é" * int(rng.choice([0, 1, 31, 32, 63, 64, 4096])) + str(j)

    entries = int(rng.choice([0, 1, 2, 63, 64, 65, 200]))  # counts around the 1-byte limit too
    return {
        "id": str(i),
        "probabilities": None if i % 5 == 0 else {key(j): float(rng.normal()) for j in range(entries)},
        "tags": {key(j): "v" * int(rng.choice([0, 63, 64, 9000])) for j in range(int(rng.integers(0, 3)))},
        "blobs": None if i % 3 == 0 else {str(j): bytes(rng.integers(0, 256, 5, dtype=np.uint8)) for j in range(2)},
        "weights": {"w": float(np.float32(rng.normal()))},
    }


def test_maps_decode_like_fastavro() -> None:
    rng = np.random.default_rng(4)
    records = [random_map_record(rng, i) for i in range(300)]
    bodies = [encode(MAP_SCHEMA, record) for record in records]
    frame = decode_block(bodies, layout(MAP_SCHEMA))
    assert frame is not None
    assert frame.schema["probabilities"] == pl.List(pl.Struct({"key": pl.String, "value": pl.Float64}))
    assert as_dicts(frame) == [fastavro_decode(MAP_SCHEMA, body) for body in bodies]


def map_body(entries: bytes) -> bytes:
    """A body of ``record_schema(("id", "string"), ("m", map of double))`` with id "a" and the map's bytes."""
    return zigzag(1) + b"a" + entries


def entry(key: str, value: float) -> bytes:
    return zigzag(len(key)) + key.encode() + np.float64(value).tobytes()


PLAIN_MAP = record_schema(("id", "string"), ("m", {"type": "map", "values": "double"}))


def test_a_map_in_one_block_is_what_writers_send() -> None:
    canonical = map_body(zigzag(2) + entry("no", 0.25) + entry("yes", 0.75) + zigzag(0))
    assert canonical == encode(PLAIN_MAP, {"id": "a", "m": {"no": 0.25, "yes": 0.75}})
    assert decode_block([canonical, canonical], layout(PLAIN_MAP)) is not None


@pytest.mark.parametrize(
    "entries",
    [
        zigzag(1) + entry("no", 0.25) + zigzag(1) + entry("yes", 0.75) + zigzag(0),  # two blocks
        zigzag(-2) + zigzag(23) + entry("no", 0.25) + entry("yes", 0.75) + zigzag(0),  # a block with its byte size
        b"\x84\x00" + entry("no", 0.25) + entry("yes", 0.75) + zigzag(0),  # an overlong count
    ],
    ids=["two blocks", "negative count with size", "overlong count"],
)
def test_a_valid_but_not_canonical_map_takes_the_per_record_path(entries: bytes) -> None:
    """fastavro reads these; the columnar path cannot prove the record boundaries, so it refuses the block."""
    body = map_body(entries)
    assert fastavro_decode(PLAIN_MAP, body) == {"id": "a", "m": {"no": 0.25, "yes": 0.75}}
    canonical = encode(PLAIN_MAP, {"id": "a", "m": {"no": 0.25, "yes": 0.75}})
    assert decode_block([canonical, body, canonical], layout(PLAIN_MAP)) is None


def test_a_map_that_runs_into_the_next_body_is_refused() -> None:
    """A count of 3 where 2 entries follow: a columnar read takes the neighbour's bytes as the third entry."""
    short = map_body(zigzag(3) + entry("no", 0.25) + entry("yes", 0.75) + zigzag(0))
    canonical = encode(PLAIN_MAP, {"id": "a", "m": {"no": 0.25}})
    assert decode_block([short, canonical, canonical], layout(PLAIN_MAP)) is None


@pytest.mark.parametrize(
    ("field_type", "default"),
    [({"type": "map", "values": "string"}, {}), (["null", {"type": "map", "values": "double"}], None)],
    ids=["map with {} default", "nullable map with null default"],
)
def test_a_map_field_with_a_default_still_takes_the_columnar_path(field_type: Any, default: Any) -> None:
    """A default is valid for the map but not for the array it is read as: the layout must not carry it."""
    schema = {
        "type": "record",
        "name": "R",
        "fields": [{"name": "id", "type": "string"}, {"name": "m", "type": field_type, "default": default}],
    }
    bodies = [
        encode(schema, {"id": str(i), "m": {"k": "v"} if "string" in str(field_type) else {"k": 0.5}}) for i in range(3)
    ]
    frame = decode_block(bodies, layout(schema))
    assert frame is not None
    assert as_dicts(frame) == [fastavro_decode(schema, body) for body in bodies]
