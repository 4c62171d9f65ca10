"""The training schema: which features a model reads, their Avro types, and how writer schemas must relate.

A model bundle carries a ``TrainingSchema`` derived from its training data. It becomes:

- the Avro *reader* schema used to decode every input record (so compatible schema evolution works:
  a producer may add fields, reorder them or widen ``int`` to ``long``);
- the reference for the start-up and per-schema-id compatibility check, decided by the ``avro``
  package's ``ReaderWriterCompatibilityChecker`` (library first); this module only adds a field-by-field
  diff so that the error message names the fields that differ.

May import: errors. Third-party: avro, pandas (dtype inspection only).
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import avro.errors
import avro.schema
import numpy as np
import pandas as pd
from avro.compatibility import ReaderWriterCompatibilityChecker, SchemaCompatibilityType

from scorer.errors import SchemaError

__all__ = [
    "Feature",
    "TrainingSchema",
    "avro_field_type",
    "check_readable",
    "label_schema",
    "load_contract",
    "pandas_column",
    "prediction_schema",
    "without_logical_types",
]

AvroPrimitive = Literal["double", "long", "boolean", "string"]
Task = Literal["binary", "multiclass", "regression"]

_AVRO_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
MAX_RECORDED_CATEGORIES = 1000
"""String columns with more distinct values than this are free text: no category check at scoring time."""


@dataclass(frozen=True)
class Feature:
    """One model input column: its Avro type, whether nulls are allowed, and its known categories."""

    name: str
    type: AvroPrimitive
    nullable: bool = False
    categories: tuple[str, ...] | None = None

    def avro_type(self) -> str | list[str]:
        return ["null", self.type] if self.nullable else self.type


@dataclass(frozen=True)
class TrainingSchema:
    """Feature names and types in training column order, plus the label's name and Avro type.

    >>> frame = pd.DataFrame({"x": [1.0, 2.0], "colour": ["red", "blue"], "y": [0, 1]})
    >>> schema = TrainingSchema.from_frame(frame, label="y")
    >>> [(f.name, f.type) for f in schema.features], schema.label_type
    ([('x', 'double'), ('colour', 'string')], 'long')
    """

    features: tuple[Feature, ...]
    label: str
    label_type: AvroPrimitive
    record_name: str = "Features"
    namespace: str = "scorer"

    @property
    def feature_names(self) -> list[str]:
        return [f.name for f in self.features]

    @classmethod
    def from_frame(cls, frame: pd.DataFrame, label: str, record_name: str = "Features") -> TrainingSchema:
        """Derive the schema from training data: numeric, boolean and string/categorical columns."""
        if label not in frame.columns:
            raise SchemaError(f"label column {label!r} is not in the training data (columns: {list(frame)})")
        features = tuple(_feature(frame[name]) for name in frame.columns if name != label)
        if not features:
            raise SchemaError("the training data has no feature columns besides the label")
        label_type = _column_type(frame[label])
        return cls(features=features, label=label, label_type=label_type, record_name=record_name)

    def to_avro(self, name: str | None = None, namespace: str | None = None) -> dict[str, Any]:
        """The Avro record schema of the features, optionally renamed (Avro resolution matches names)."""
        return {
            "type": "record",
            "name": name or self.record_name,
            "namespace": self.namespace if namespace is None else namespace,
            "fields": [{"name": f.name, "type": f.avro_type()} for f in self.features],
        }

    def reader_schema(self, id_field: str, writer: dict[str, Any] | None = None) -> dict[str, Any]:
        """The schema that decodes input records: the features plus the record id.

        The id is optional in the reader (a null default) so that a record without it still decodes and is
        rejected with a clear reason instead of a resolution error. The record takes the writer's name,
        because Avro only resolves records whose full names match.
        """
        name, namespace = _full_name(writer) if writer else (self.record_name, self.namespace)
        schema = self.to_avro(name=name, namespace=namespace)
        if id_field not in self.feature_names:
            schema["fields"].append({"name": id_field, "type": ["null", "string", "long"], "default": None})
        return schema

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TrainingSchema:
        features = tuple(
            Feature(
                name=f["name"],
                type=f["type"],
                nullable=f["nullable"],
                categories=tuple(f["categories"]) if f.get("categories") is not None else None,
            )
            for f in data["features"]
        )
        return cls(
            features=features,
            label=data["label"],
            label_type=data["label_type"],
            record_name=data.get("record_name", "Features"),
            namespace=data.get("namespace", "scorer"),
        )


def avro_field_type(dtype: Any) -> AvroPrimitive:
    """Map a pandas dtype to the Avro primitive that carries it without loss."""
    if pd.api.types.is_bool_dtype(dtype):
        return "boolean"
    if pd.api.types.is_integer_dtype(dtype):
        return "long"
    if pd.api.types.is_float_dtype(dtype):
        return "double"
    if (
        pd.api.types.is_string_dtype(dtype)
        or isinstance(dtype, pd.CategoricalDtype)
        or pd.api.types.is_object_dtype(dtype)
    ):
        return "string"
    raise SchemaError(f"unsupported column type {dtype}: use numeric, boolean or string columns")


def _column_type(column: pd.Series) -> AvroPrimitive:
    if pd.api.types.is_object_dtype(column.dtype):
        kinds = {type(v) for v in column.dropna()}
        if kinds and kinds <= {bool}:
            return "boolean"
        if kinds and not kinds <= {str}:
            raise SchemaError(f"column {column.name!r} mixes types {sorted(k.__name__ for k in kinds)}")
    return avro_field_type(column.dtype)


def _feature(column: pd.Series) -> Feature:
    name = str(column.name)
    if not _AVRO_NAME.match(name):
        raise SchemaError(
            f"column {name!r} is not a valid Avro field name ([A-Za-z_][A-Za-z0-9_]*): "
            "rename it in the training data and retrain, so that the model's feature names match the schema",
            fields=[name],
        )
    kind = _column_type(column)
    categories = None
    if kind == "string":
        levels = sorted({str(v) for v in column.dropna()})
        categories = tuple(levels) if len(levels) <= MAX_RECORDED_CATEGORIES else None
    return Feature(name=name, type=kind, nullable=bool(column.isna().any()), categories=categories)


def _full_name(schema: dict[str, Any]) -> tuple[str, str]:
    name = str(schema.get("name", "Features"))
    if "." in name:
        namespace, _, short = name.rpartition(".")
        return short, namespace
    return name, str(schema.get("namespace", ""))


def check_readable(training: TrainingSchema, writer: dict[str, Any] | str) -> list[str]:
    """Return the differences that stop the training schema from reading ``writer`` (empty: compatible).

    The verdict is the ``avro`` checker's; the returned list names each offending field so that the
    start-up error and the dead-letter detail say what to fix.
    """
    try:
        writer_json = json.loads(writer) if isinstance(writer, str) else writer
    except json.JSONDecodeError as exc:
        raise SchemaError(f"the writer schema is not Avro JSON (a Protobuf or other schema?): {exc}") from exc
    if not isinstance(writer_json, dict):  # a primitive ("string") or a top-level union
        return [f"writer schema is {json.dumps(writer_json)[:200]}, not a record"]
    if writer_json.get("type") != "record":
        return [f"writer schema is a {writer_json.get('type')!r}, not a record"]
    try:
        writer_schema = avro.schema.parse(json.dumps(writer_json))
        reader_schema = avro.schema.parse(json.dumps(training.to_avro(*_full_name(writer_json))))
    except avro.errors.SchemaParseException as exc:
        raise SchemaError(f"invalid Avro schema: {exc}") from exc
    result = ReaderWriterCompatibilityChecker().get_compatibility(reader_schema, writer_schema)
    if result.compatibility is SchemaCompatibilityType.compatible:
        return []
    differences = _field_diff(training, writer_json)
    return differences or [str(m) for m in result.messages]


def _field_diff(training: TrainingSchema, writer: dict[str, Any]) -> list[str]:
    checker = ReaderWriterCompatibilityChecker()
    writer_fields = {f["name"]: f for f in writer.get("fields", [])}
    differences = []
    for feature in training.features:
        written = writer_fields.get(feature.name)
        if written is None:
            differences.append(f"{feature.name}: missing from the writer schema (training type {feature.type})")
            continue
        reader_field = avro.schema.parse(json.dumps(feature.avro_type()))
        try:
            writer_field = avro.schema.parse(json.dumps(written["type"]))
        except avro.errors.SchemaParseException:
            differences.append(f"{feature.name}: writer type {written['type']!r} is named elsewhere")
            continue
        verdict = checker.get_compatibility(reader_field, writer_field)
        if verdict.compatibility is not SchemaCompatibilityType.compatible:
            differences.append(
                f"{feature.name}: written as {json.dumps(written['type'])}, "
                f"training type {json.dumps(feature.avro_type())}"
            )
    return differences


def _contract_dir() -> Path:
    """Where the Avro contracts are: inside an installed package (``scorer/schemas``, see pyproject.toml)
    or, in a source tree and an editable install, ``schemas/`` at the top of the repository."""
    package = Path(__file__).resolve().parent
    installed = package / "schemas"
    return installed if installed.is_dir() else package.parent / "schemas"


SCHEMA_DIR = _contract_dir()
"""The checked-in Avro contracts (schemas/*.avsc)."""


def load_contract(name: str) -> dict[str, Any]:
    """Load ``schemas/<name>.avsc``: the documented record formats for downstream consumers."""
    path = SCHEMA_DIR / f"{name}.avsc"
    if not path.is_file():
        raise SchemaError(f"{path} is missing: reinstall scorer (the wheel ships schemas/*.avsc as scorer/schemas)")
    return dict(json.loads(path.read_text()))


def label_schema(label_type: str) -> dict[str, Any]:
    """The label record schema (``schemas/label.avsc``) with ``label`` typed like the model's label."""
    schema = load_contract("label")
    for spec in schema["fields"]:
        if spec["name"] == "label":
            spec["type"] = label_type
    return schema


def prediction_schema(training: TrainingSchema, label_type: str, include_features: bool = False) -> dict[str, Any]:
    """The prediction record schema for a model: the contract with ``scored_label`` typed like its label."""
    schema = load_contract("prediction")
    for spec in schema["fields"]:
        if spec["name"] == "scored_label":
            spec["type"] = label_type
    if include_features:
        features = training.to_avro(name="PredictionFeatures", namespace="scorer")
        schema["fields"].append({"name": "features", "type": features, "doc": "The input features as scored."})
    return schema


def pandas_column(values: list[Any], kind: str | None, index: pd.Index) -> pd.Series:
    """A decoded column typed by its training type, the same way whichever path decoded it.

    ``kind`` None means the id (text, None when missing). Longs with a null become pandas' nullable
    ``Int64`` (exact; float64 would round above 2**53), doubles float64 with NaN, booleans with a null
    and strings object columns (pandas' arrow-backed ``str`` dtype slows scikit-learn's encoders).
    """
    if kind is None:
        return pd.Series([None if v is None else str(v) for v in values], index=index, dtype=object)
    has_null = any(v is None for v in values)
    if kind == "long":
        return pd.Series(values, index=index, dtype="Int64" if has_null else np.int64)
    if kind == "double":
        return pd.Series([np.nan if v is None else v for v in values], index=index, dtype=np.float64)
    if kind == "boolean" and not has_null:
        return pd.Series(values, index=index, dtype=bool)
    return pd.Series(values, index=index, dtype=object)


def without_logical_types(schema: Any) -> Any:
    """``schema`` with every ``logicalType`` annotation removed.

    The reader (training) schema has no logical types, and Avro reads an annotated value as its plain
    type when the reader does not ask for the annotation; fastavro would otherwise hand back dates,
    datetimes and UUIDs, and polars its own types, where the model expects the numbers and text.
    """
    if isinstance(schema, list):
        return [without_logical_types(branch) for branch in schema]
    if isinstance(schema, dict):
        return {key: without_logical_types(value) for key, value in schema.items() if key != "logicalType"}
    return schema
