"""Columnar decoding of many Avro bodies that share one writer schema, with every record boundary verified.

Why this exists: fastavro decodes one record per call into a dict (about 15 µs for a 26-field record
here), which made decoding the largest cost of scoring. polars' Avro reader decodes a whole object
container block straight into columns (under 1 µs per record). So a batch of bodies is wrapped into one
in-memory container file (header, one block, sync marker) and read by polars.

A block has no per-record boundaries, so a malformed body could be read into its neighbour. This module
therefore recomputes, from the decoded columns, how many bytes each record's encoding takes and
compares that with each body's length. The decoder consumes at least the canonical size of what it
decoded and cannot read past the block, so if every size matches, every record was decoded from
exactly its own body. Any mismatch, decoding error or unsupported schema returns ``None`` and the caller
falls back to the per-record path, which isolates the bad record.

Supported writer schemas: flat records of null, boolean, int, long, float, double, string and bytes fields
(logical types over int/long included), and maps of float, double, string or bytes values, each optionally
in a union with null. A map is read as a list of ``{"key", "value"}`` structs: Avro encodes a map exactly
as an array of records of a string and a value, which polars reads. Anything else (nested records, arrays,
maps of other values, enums, fixed, wider unions) uses the per-record path.

May import: nothing from scorer. Third-party: fastavro (the container header), polars, numpy.
"""

from __future__ import annotations

import io
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

import fastavro
import numpy as np
import polars as pl
from polars.exceptions import PanicException, PolarsError

__all__ = ["BlockLayout", "decode_block", "layout_of"]

_FIXED_SIZE = {"null": 0, "boolean": 1, "float": 4, "double": 8}
_VARINT = {"int", "long"}
_LENGTH_PREFIXED = {"string", "bytes"}
_SUPPORTED = _FIXED_SIZE.keys() | _VARINT | _LENGTH_PREFIXED
_MAP_VALUES = {"float", "double", "string", "bytes"}  # no varint or boolean values: their sizes need more
_TIME_OF_DAY = {"time-millis", "time-micros"}  # polars keeps nanoseconds: the size check never matches
_VARINT_LIMITS = np.array([1 << (7 * k) for k in range(1, 10)], dtype=np.uint64)


@dataclass(frozen=True)
class _Field:
    name: str
    kind: str  # a primitive type name, or "map"
    null_branch: int | None  # union branch index of null, or None when the field is not a union
    values: str | None = None  # a map's value type


@dataclass(frozen=True)
class BlockLayout:
    """What the size check needs to know of a writer schema, and the container header to reuse."""

    fields: tuple[_Field, ...]
    header: bytes
    sync: bytes


def layout_of(writer: Any, used: Collection[str] | None = ()) -> BlockLayout | None:
    """The layout of a flat writer schema, or ``None`` if it needs the per-record path.

    ``used`` names the fields the reader keeps (None: all of them). Those must carry no logical type: fastavro turns
    logical types into Python objects (dates, UUIDs) where polars keeps numbers or formats them
    differently, and both paths must give the same values. Fields the reader drops may have logical types
    over int and long (their values only matter for the size check).
    """
    if not isinstance(writer, dict) or writer.get("type") != "record":
        return None
    if used is None:
        used = [spec["name"] for spec in writer.get("fields", [])]
    fields = []
    readable = []  # the writer's fields as polars reads them: maps as arrays of key/value records
    for spec in writer.get("fields", []):
        kind, null_branch, logical = _field_kind(spec["type"])
        if kind in (None, "null") or (
            logical and (spec["name"] in used or kind not in _VARINT or logical in _TIME_OF_DAY)
        ):
            return None
        values = None
        if kind == "map":
            values = _map_values(spec["type"])
            entry = {
                "type": "record",
                "name": f"scorer_map_entry_{len(fields)}",
                "fields": [{"name": "key", "type": "string"}, {"name": "value", "type": values}],
            }
            array = {"type": "array", "items": entry}
            # only the type is read: a map's default ({} or null) would not be a valid default of an array
            spec = {"name": spec["name"], "type": array if null_branch is None else _with_null(array, null_branch)}
        fields.append(_Field(spec["name"], kind, null_branch, values))
        readable.append(spec)
    container = io.BytesIO()
    try:
        fastavro.writer(container, fastavro.parse_schema({**writer, "fields": readable}), [], codec="null")
    except Exception:  # noqa: BLE001 - a writer schema fastavro reads but we cannot restate: per-record path
        return None
    header = container.getvalue()
    return BlockLayout(tuple(fields), header, header[-16:])


def _field_kind(avro_type: Any) -> tuple[str | None, int | None, str | None]:
    """(primitive kind or "map", union index of null or None, logical type or None); kind None: unsupported."""
    if isinstance(avro_type, list):
        if len(avro_type) != 2 or "null" not in avro_type:
            return None, None, None
        kind, _, logical = _field_kind(avro_type[1 - avro_type.index("null")])
        return (kind, avro_type.index("null"), logical) if kind not in (None, "null") else (None, None, None)
    if isinstance(avro_type, dict):
        if avro_type.get("type") == "map":
            values = avro_type.get("values")
            return ("map", None, None) if isinstance(values, str) and values in _MAP_VALUES else (None, None, None)
        if avro_type.get("type") not in _SUPPORTED:
            return None, None, None
        return avro_type["type"], None, avro_type.get("logicalType")
    return (avro_type, None, None) if avro_type in _SUPPORTED else (None, None, None)


def _map_values(avro_type: Any) -> str:
    """The value type of a (possibly nullable) map that ``_field_kind`` accepted."""
    if isinstance(avro_type, list):
        return _map_values(next(branch for branch in avro_type if branch != "null"))
    return str(avro_type["values"])


def _with_null(avro_type: Any, null_branch: int) -> list[Any]:
    return ["null", avro_type] if null_branch == 0 else [avro_type, "null"]


def decode_block(bodies: Sequence[bytes], layout: BlockLayout) -> pl.DataFrame | None:
    """Decode ``bodies`` into one column per writer field, or ``None`` if any record does not fit exactly."""
    payload = b"".join(bodies)
    container = layout.header + _varint(len(bodies)) + _varint(len(payload)) + payload + layout.sync
    try:
        frame = pl.read_avro(io.BytesIO(container))
        if frame.height != len(bodies):
            return None
        lengths = np.fromiter(map(len, bodies), dtype=np.int64, count=len(bodies))
        sizes, checks = _field_sizes(frame, layout)
    except (PolarsError, OSError, PanicException, ValueError):
        return None
    if not np.array_equal(np.sum(sizes, axis=0), lengths):
        return None
    return frame if _bytes_agree(np.frombuffer(payload, dtype=np.uint8), lengths, sizes, checks) else None


def _field_sizes(frame: pl.DataFrame, layout: BlockLayout) -> tuple[np.ndarray, list[tuple[int, int, np.ndarray]]]:
    """Bytes each field of each row takes in canonical Avro binary encoding, and the bytes to check.

    Returns a (fields x rows) size matrix and a list of (field position, offset within the field, expected
    byte per row; -1 for no check): union branch indexes and boolean bytes, which decoders read leniently
    (polars takes branch 2 of a two-branch union, and a boolean byte 2 as False where fastavro says True)
    and whose size is always one byte, so the size check alone cannot see them.

    One polars ``select`` extracts what the sizes depend on (string byte lengths, integer values, null
    masks, booleans); the arithmetic is numpy. Calling polars once per column costs more than decoding.
    """
    wanted: list[pl.Expr] = []
    for spec in layout.fields:
        column = pl.col(spec.name)
        if spec.kind in _VARINT:
            wanted.append(column.cast(pl.Int64).fill_null(0).alias(f"value:{spec.name}"))
        elif spec.kind in _LENGTH_PREFIXED:
            length = column.str.len_bytes() if frame.schema[spec.name] == pl.String else column.bin.size()
            wanted.append(length.cast(pl.Int64).fill_null(0).alias(f"length:{spec.name}"))
        elif spec.kind == "boolean":
            wanted.append(column.cast(pl.Int64).fill_null(-1).alias(f"value:{spec.name}"))
        elif spec.kind == "map":
            wanted.append(column.list.len().cast(pl.Int64).fill_null(0).alias(f"count:{spec.name}"))
        if spec.null_branch is not None:
            wanted.append(column.is_null().alias(f"null:{spec.name}"))
    parts = frame.select(wanted) if wanted else frame.clear()
    sizes = np.zeros((len(layout.fields), frame.height), dtype=np.int64)
    checks: list[tuple[int, int, np.ndarray]] = []
    for position, spec in enumerate(layout.fields):
        if spec.kind in _VARINT:
            size = _varint_sizes(parts.get_column(f"value:{spec.name}").to_numpy())
        elif spec.kind in _LENGTH_PREFIXED:
            length = parts.get_column(f"length:{spec.name}").to_numpy()
            size = length + _varint_sizes(length)
        elif spec.kind == "map":  # one block: its count, the entries, then the count 0 that ends the map
            count = parts.get_column(f"count:{spec.name}").to_numpy()
            items = _map_entry_sizes(frame.get_column(spec.name), count, str(spec.values))
            size = np.where(count > 0, _varint_sizes(count) + items, 0) + 1
        else:
            size = np.full(frame.height, _FIXED_SIZE[spec.kind], dtype=np.int64)
        branch = 0
        if spec.null_branch is not None:  # the branch index (0 or 1) takes one byte; a null adds nothing more
            null = parts.get_column(f"null:{spec.name}").to_numpy()
            value_branch = 1 - spec.null_branch
            checks.append((position, 0, np.where(null, 2 * spec.null_branch, 2 * value_branch)))
            size = 1 + np.where(null, 0, size)
            branch = 1
        if spec.kind == "boolean":
            checks.append((position, branch, parts.get_column(f"value:{spec.name}").to_numpy()))
        sizes[position] = size
    return sizes, checks


def _bytes_agree(
    payload: np.ndarray, lengths: np.ndarray, sizes: np.ndarray, checks: list[tuple[int, int, np.ndarray]]
) -> bool:
    """Whether every checked byte holds what the decoded value says it must."""
    if not checks:
        return True
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    field_starts = starts + np.concatenate([np.zeros((1, len(lengths)), dtype=np.int64), np.cumsum(sizes, axis=0)[:-1]])
    for position, within, expected in checks:
        rows = expected >= 0  # a null boolean has no value byte
        offsets = field_starts[position][rows] + within
        if not np.array_equal(payload[offsets], expected[rows]):
            return False
    return True


def _map_entry_sizes(column: pl.Series, count: np.ndarray, values: str) -> np.ndarray:
    """Per row, the bytes that a map's entries (each key, then its value) take; 0 for a null or empty map.

    From the flattened entries of every non-empty map (in row order, ``count`` per row): numpy sums them per
    row. (A polars ``list.eval`` per row did the same at twice the cost.)
    """
    per_row = np.zeros(len(count), dtype=np.int64)
    filled = count > 0
    if not filled.any():
        return per_row
    entries = column.filter(pl.Series(filled)).explode()
    key_length = entries.struct.field("key").str.len_bytes().cast(pl.Int64).to_numpy()
    sizes = key_length + _varint_sizes(key_length)
    if values in _FIXED_SIZE:
        sizes += _FIXED_SIZE[values]
    else:
        value = entries.struct.field("value")
        value_length = (value.str.len_bytes() if values == "string" else value.bin.size()).cast(pl.Int64).to_numpy()
        sizes += value_length + _varint_sizes(value_length)
    starts = np.concatenate(([0], np.cumsum(count[filled])[:-1]))
    per_row[filled] = np.add.reduceat(sizes, starts)
    return per_row


def _varint_sizes(values: np.ndarray) -> np.ndarray:
    """Length of each zig-zag varint of signed 64-bit values, vectorised."""
    signed = values.astype(np.int64, copy=False)
    zigzag = ((signed << 1) ^ (signed >> 63)).view(np.uint64)
    return 1 + np.searchsorted(_VARINT_LIMITS, zigzag, side="right").astype(np.int64)


def _varint(value: int) -> bytes:
    """Zig-zag varint of a non-negative count (the block header's record count and byte size)."""
    value <<= 1
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)
