"""Confluent wire format and Avro decoding/encoding of whole batches.

A Confluent-framed value is ``0x00`` (magic byte), a 4-byte big-endian schema id, then the Avro body.
confluent-kafka's ``AvroDeserializer`` decodes one message per call and raises on bad input; we need a
batch decoder that turns each bad record into a ``Rejection`` (never an exception that stops the batch),
resolves every writer schema onto the training schema, and caches the parsed reader per writer schema id
so the hot path makes no registry call. The Avro work itself is fastavro's.

May import: errors, types, schema. Third-party: fastavro.
"""

from __future__ import annotations

import io
import json
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import fastavro

from scorer.errors import RegistryError, RegistryUnavailable, RejectReason, SchemaError
from scorer.schema import TrainingSchema, check_readable
from scorer.types import Rejection

__all__ = [
    "DecodedBatch",
    "FeatureDecoder",
    "PredictionEncoder",
    "RecordDecoder",
    "SchemaLookup",
    "frame_value",
    "split_frame",
]

MAGIC_BYTE = 0
_HEADER = struct.Struct(">bI")


class SchemaLookup(Protocol):
    """Returns the writer schema (JSON text) registered under ``schema_id``.

    Raises ``RegistryError`` with ``error_code`` 40403 for an unknown id and ``RegistryUnavailable`` when
    the registry cannot be reached (the caller then retries: good records are never dead-lettered just
    because the registry blinked).
    """

    def __call__(self, schema_id: int) -> str: ...


def split_frame(value: bytes | None) -> tuple[int, bytes] | tuple[RejectReason, str]:
    """Split a framed value into ``(schema_id, body)``, or return ``(reason, detail)`` if it is not framed."""
    if not value:
        return RejectReason.EMPTY_VALUE, "the record has no value (tombstone or empty)"
    if len(value) < _HEADER.size:
        return RejectReason.TRUNCATED_FRAME, f"{len(value)} bytes is shorter than the 5-byte Confluent header"
    magic, schema_id = _HEADER.unpack_from(value)
    if magic != MAGIC_BYTE:
        return (
            RejectReason.BAD_MAGIC_BYTE,
            f"first byte is {value[0]:#04x}, expected 0x00 (Confluent framing)",
        )
    return schema_id, value[_HEADER.size :]


def frame_value(schema_id: int, body: bytes) -> bytes:
    return _HEADER.pack(MAGIC_BYTE, schema_id) + body


@dataclass
class DecodedBatch:
    """Decoded records in reader shape, the batch positions they came from, and the rejections."""

    records: list[dict[str, Any]] = field(default_factory=list)
    indices: list[int] = field(default_factory=list)
    schema_ids: list[int] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)


@dataclass(frozen=True)
class _WriterEntry:
    writer: Any = None
    reader: Any = None
    incompatible: str | None = None


class FeatureDecoder:
    """Decodes framed Avro feature records onto the training schema, with a per-schema-id cache.

    A writer schema the training schema cannot read is remembered as incompatible: its records are
    rejected with the fields that differ, at the cost of one registry lookup per schema id.
    """

    def __init__(self, training: TrainingSchema, id_field: str, lookup: SchemaLookup) -> None:
        self._training = training
        self._id_field = id_field
        self._lookup = lookup
        self._cache: dict[int, _WriterEntry] = {}

    def decode(self, values: Sequence[bytes | None]) -> DecodedBatch:
        batch = DecodedBatch()
        for index, value in enumerate(values):
            framed = split_frame(value)
            if isinstance(framed[0], RejectReason):
                batch.rejections.append(Rejection(index, framed[0], str(framed[1])))
                continue
            schema_id, body = framed
            assert isinstance(schema_id, int) and isinstance(body, bytes)  # noqa: S101 - narrows the union
            entry = self._entry(schema_id)
            if entry is None:
                batch.rejections.append(
                    Rejection(
                        index,
                        RejectReason.UNKNOWN_SCHEMA_ID,
                        f"schema id {schema_id} is not in the registry",
                        schema_id,
                    )
                )
            elif entry.incompatible is not None:
                batch.rejections.append(
                    Rejection(index, RejectReason.INCOMPATIBLE_SCHEMA, entry.incompatible, schema_id)
                )
            else:
                record = _read_body(body, entry)
                if isinstance(record, str):
                    batch.rejections.append(Rejection(index, RejectReason.MALFORMED_BODY, record, schema_id))
                else:
                    batch.records.append(record)
                    batch.indices.append(index)
                    batch.schema_ids.append(schema_id)
        return batch

    def _entry(self, schema_id: int) -> _WriterEntry | None:
        cached = self._cache.get(schema_id)
        if cached is not None:
            return cached
        try:
            writer_text = self._lookup(schema_id)
        except RegistryUnavailable:
            raise
        except RegistryError as exc:
            if exc.error_code == 40403 or exc.status == 404:
                return None
            raise
        try:  # the text, not parsed JSON: a non-record or non-JSON writer schema is a difference, not a crash
            differences = check_readable(self._training, writer_text)
        except SchemaError as exc:
            differences = [str(exc)]
        if differences:
            entry = _WriterEntry(
                incompatible=f"schema id {schema_id} cannot be read as the training schema: " + "; ".join(differences)
            )
        else:
            writer_json = json.loads(writer_text)
            reader = self._training.reader_schema(self._id_field, writer=writer_json)
            entry = _WriterEntry(writer=fastavro.parse_schema(writer_json), reader=fastavro.parse_schema(reader))
        self._cache[schema_id] = entry
        return entry


def _read_body(body: bytes, entry: _WriterEntry) -> dict[str, Any] | str:
    """Decode one body; a string result says why it could not be decoded."""
    stream = io.BytesIO(body)
    try:
        record = fastavro.schemaless_reader(stream, entry.writer, entry.reader)
    except (EOFError, StopIteration):
        return "the Avro body ends before the record does (truncated)"
    except UnicodeDecodeError as exc:
        return f"a string field is not valid UTF-8: {exc.reason}"
    except Exception as exc:  # noqa: BLE001 - fastavro raises many types on garbage input; all mean the same
        return f"the Avro body cannot be decoded: {type(exc).__name__}: {exc}"
    if stream.tell() != len(body):
        return f"{len(body) - stream.tell()} bytes left over after the record: the body is not this schema"
    if not isinstance(record, dict):
        return "the Avro body is not a record"
    return record


class PredictionEncoder:
    """Encodes prediction records with a registered schema id, in the Confluent framing."""

    def __init__(self, schema: dict[str, Any], schema_id: int) -> None:
        self._parsed = fastavro.parse_schema(schema)
        self._prefix = _HEADER.pack(MAGIC_BYTE, schema_id)

    def encode(self, records: Sequence[dict[str, Any]]) -> list[bytes]:
        encoded = []
        stream = io.BytesIO()
        for record in records:
            stream.seek(0)
            stream.truncate()
            stream.write(self._prefix)
            fastavro.schemaless_writer(stream, self._parsed, record)
            encoded.append(stream.getvalue())
        return encoded


class RecordDecoder:
    """Decodes framed Avro records with their writer schema as is (no reader schema).

    For consumers that read what scorer itself wrote (predictions) or a documented contract (labels):
    the fields are looked up by name, so any compatible evolution of those schemas reads fine.
    """

    def __init__(self, lookup: SchemaLookup) -> None:
        self._lookup = lookup
        self._parsed: dict[int, Any] = {}

    def decode(self, value: bytes | None) -> dict[str, Any] | tuple[RejectReason, str]:
        framed = split_frame(value)
        if isinstance(framed[0], RejectReason):
            return framed[0], str(framed[1])
        schema_id, body = framed
        assert isinstance(schema_id, int) and isinstance(body, bytes)  # noqa: S101 - narrows the union
        writer = self._parsed.get(schema_id)
        if writer is None:
            try:
                writer = fastavro.parse_schema(json.loads(self._lookup(schema_id)))
            except RegistryUnavailable:
                raise
            except RegistryError as exc:
                if exc.error_code == 40403 or exc.status == 404:
                    return RejectReason.UNKNOWN_SCHEMA_ID, f"schema id {schema_id} is not in the registry"
                raise
            self._parsed[schema_id] = writer
        record = _read_body(body, _WriterEntry(writer=writer, reader=None))
        if isinstance(record, str):
            return RejectReason.MALFORMED_BODY, record
        return record
