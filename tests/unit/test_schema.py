"""Unit tests of scorer.schema: dtype to Avro, column-name checks, writer compatibility, output schemas."""

from __future__ import annotations

import copy
import io
import json
from typing import Any

import fastavro
import numpy as np
import pandas as pd
import pytest

from scorer.errors import SchemaError
from scorer.schema import Feature, TrainingSchema, avro_field_type, check_readable, prediction_schema


def training_frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "age": np.array([31, 45, 52], dtype=np.int64),
            "income": [1200.5, np.nan, 980.0],
            "member": [True, False, True],
            "city": pd.Series(["oslo", "rome", None], dtype=object),
            "plan": pd.Series(["a", "b", "a"], dtype="string"),
            "tier": pd.Categorical(["gold", "silver", "gold"]),
            "churned": ["no", "yes", "no"],
        }
    )


@pytest.fixture
def schema() -> TrainingSchema:
    return TrainingSchema.from_frame(training_frame(), label="churned")


def writer_of(schema: TrainingSchema, **changes: Any) -> dict[str, Any]:
    """The training record as a writer schema, with field types replaced (None drops the field)."""
    writer = copy.deepcopy(schema.to_avro())
    fields = []
    for spec in writer["fields"]:
        if spec["name"] in changes:
            if changes[spec["name"]] is None:
                continue
            spec = {"name": spec["name"], "type": changes[spec["name"]]}
        fields.append(spec)
    writer["fields"] = fields
    return writer


# --- dtype -> Avro -------------------------------------------------------------------------------------------


def test_from_frame_maps_dtypes_and_keeps_training_order(schema: TrainingSchema) -> None:
    assert [(f.name, f.type) for f in schema.features] == [
        ("age", "long"),
        ("income", "double"),
        ("member", "boolean"),
        ("city", "string"),
        ("plan", "string"),
        ("tier", "string"),
    ]
    assert schema.feature_names == ["age", "income", "member", "city", "plan", "tier"]


def test_nullable_only_where_training_data_had_nulls(schema: TrainingSchema) -> None:
    nullable = {f.name: f.nullable for f in schema.features}
    assert nullable == {
        "age": False,
        "income": True,
        "member": False,
        "city": True,
        "plan": False,
        "tier": False,
    }
    by_name = {f.name: f for f in schema.features}
    assert by_name["income"].avro_type() == ["null", "double"]
    assert by_name["age"].avro_type() == "long"


def test_string_columns_record_their_sorted_categories_without_null(schema: TrainingSchema) -> None:
    by_name = {f.name: f for f in schema.features}
    assert by_name["city"].categories == ("oslo", "rome")
    assert by_name["plan"].categories == ("a", "b")
    assert by_name["tier"].categories == ("gold", "silver")
    assert by_name["age"].categories is None
    assert by_name["income"].categories is None


def test_free_text_column_records_no_categories() -> None:
    frame = pd.DataFrame({"note": [f"text {i}" for i in range(1001)], "y": [0] * 1001})
    (note,) = TrainingSchema.from_frame(frame, label="y").features
    assert note.type == "string"
    assert note.categories is None


def test_nullable_integer_and_object_boolean_columns() -> None:
    frame = pd.DataFrame(
        {
            "visits": pd.array([1, None, 3], dtype="Int64"),
            "flag": pd.Series([True, None, False], dtype=object),
            "y": [0.5, 1.5, 2.5],
        }
    )
    schema = TrainingSchema.from_frame(frame, label="y")
    assert schema.features == (
        Feature("visits", "long", nullable=True),
        Feature("flag", "boolean", nullable=True),
    )


@pytest.mark.parametrize(
    ("label_values", "label_type"),
    [
        (["no", "yes", "no"], "string"),
        ([0, 1, 2], "long"),
        ([0.5, 1.5, 2.5], "double"),
        ([True, False, True], "boolean"),
    ],
)
def test_label_is_excluded_and_typed(label_values: list[Any], label_type: str) -> None:
    frame = pd.DataFrame({"x": [1.0, 2.0, 3.0], "target": label_values})
    schema = TrainingSchema.from_frame(frame, label="target")
    assert schema.feature_names == ["x"]
    assert schema.label == "target"
    assert schema.label_type == label_type


def test_avro_field_type_refuses_unsupported_dtypes() -> None:
    assert avro_field_type(np.dtype("int32")) == "long"
    assert avro_field_type(np.dtype("float32")) == "double"
    with pytest.raises(SchemaError, match="unsupported column type"):
        avro_field_type(np.dtype("datetime64[ns]"))


def test_missing_label_and_label_only_frames_are_refused() -> None:
    with pytest.raises(SchemaError, match="'target' is not in the training data"):
        TrainingSchema.from_frame(pd.DataFrame({"x": [1.0]}), label="target")
    with pytest.raises(SchemaError, match="no feature columns"):
        TrainingSchema.from_frame(pd.DataFrame({"target": [1.0]}), label="target")


def test_object_column_mixing_types_is_refused_naming_it() -> None:
    frame = pd.DataFrame({"mixed": pd.Series(["a", 1, "b"], dtype=object), "y": [0, 1, 0]})
    with pytest.raises(SchemaError, match="'mixed' mixes types"):
        TrainingSchema.from_frame(frame, label="y")


@pytest.mark.parametrize("bad_name", ["mean radius", "2nd", "price-usd", "naïve"])
def test_invalid_avro_column_name_is_refused_naming_it(bad_name: str) -> None:
    frame = pd.DataFrame({"ok": [1.0, 2.0], bad_name: [1.0, 2.0], "y": [0, 1]})
    with pytest.raises(SchemaError, match="not a valid Avro field name") as info:
        TrainingSchema.from_frame(frame, label="y")
    assert repr(bad_name) in str(info.value)
    assert info.value.fields == [bad_name]


def test_json_round_trip_is_lossless(schema: TrainingSchema) -> None:
    assert TrainingSchema.from_json(json.loads(json.dumps(schema.to_json()))) == schema


# --- check_readable: compatible evolution ---------------------------------------------------------------------


def test_identical_writer_is_readable(schema: TrainingSchema) -> None:
    assert check_readable(schema, schema.to_avro()) == []
    assert check_readable(schema, json.dumps(schema.to_avro())) == []


def test_writer_with_extra_fields_reordered_and_renamed_is_readable(schema: TrainingSchema) -> None:
    writer = writer_of(schema)
    writer["fields"] = [
        {"name": "id", "type": "string"},
        *reversed(writer["fields"]),
        {"name": "event_time", "type": {"type": "long", "logicalType": "timestamp-millis"}},
    ]
    writer["name"], writer["namespace"] = "CustomerEvent", "com.example.crm"
    assert check_readable(schema, writer) == []


def test_dotted_writer_name_is_readable(schema: TrainingSchema) -> None:
    writer = writer_of(schema)
    del writer["namespace"]
    writer["name"] = "com.example.Customer"
    assert check_readable(schema, writer) == []


def test_numeric_promotions_are_readable(schema: TrainingSchema) -> None:
    # int -> long; int, long and float -> double (nullable reader takes a non-null writer too)
    assert check_readable(schema, writer_of(schema, age="int", income="int")) == []
    assert check_readable(schema, writer_of(schema, income="long")) == []
    assert check_readable(schema, writer_of(schema, income=["null", "float"])) == []


def test_non_nullable_writer_for_nullable_reader_is_readable(schema: TrainingSchema) -> None:
    assert check_readable(schema, writer_of(schema, income="double", city="string")) == []


# --- check_readable: incompatible writers name the field ------------------------------------------------------


def test_missing_field_without_default_is_named(schema: TrainingSchema) -> None:
    differences = check_readable(schema, writer_of(schema, age=None))
    assert differences == ["age: missing from the writer schema (training type long)"]


def test_string_written_for_double_is_named(schema: TrainingSchema) -> None:
    differences = check_readable(schema, writer_of(schema, income="string"))
    assert len(differences) == 1
    assert differences[0].startswith("income:")
    assert '"string"' in differences[0]
    assert '["null", "double"]' in differences[0]


def test_nullable_writer_for_non_nullable_reader_is_named(schema: TrainingSchema) -> None:
    differences = check_readable(schema, writer_of(schema, member=["null", "boolean"]))
    assert len(differences) == 1
    assert differences[0].startswith("member:")


def test_narrowing_is_not_a_promotion(schema: TrainingSchema) -> None:
    (difference,) = check_readable(schema, writer_of(schema, age="double"))
    assert difference.startswith("age:")


def test_extra_writer_fields_do_not_appear_in_the_differences(schema: TrainingSchema) -> None:
    writer = writer_of(schema, plan="long")
    writer["fields"].append({"name": "unused", "type": "bytes"})
    assert [d.split(":")[0] for d in check_readable(schema, writer)] == ["plan"]


def test_every_offending_field_is_listed(schema: TrainingSchema) -> None:
    differences = check_readable(schema, writer_of(schema, age=None, plan="long", member="string"))
    assert sorted(d.split(":")[0] for d in differences) == ["age", "member", "plan"]


def test_non_record_writers_are_differences_not_crashes(schema: TrainingSchema) -> None:
    assert check_readable(schema, '"string"') == ['writer schema is "string", not a record']
    assert check_readable(schema, {"type": "object"}) == ["writer schema is a 'object', not a record"]
    union = ["null", writer_of(schema)]
    (difference,) = check_readable(schema, json.dumps(union))
    assert difference.endswith("not a record")


def test_invalid_writer_schemas_raise_schema_error(schema: TrainingSchema) -> None:
    with pytest.raises(SchemaError, match="not Avro JSON"):
        check_readable(schema, 'syntax = "proto3"; message Features {}')
    broken = writer_of(schema, age="no-such-type")
    with pytest.raises(SchemaError, match="invalid Avro schema"):
        check_readable(schema, broken)


# --- output and reader schemas --------------------------------------------------------------------------------


@pytest.mark.parametrize("label_type", ["string", "long", "boolean", "double"])
def test_prediction_schema_types_scored_label_and_parses(schema: TrainingSchema, label_type: str) -> None:
    output = prediction_schema(schema, label_type)
    parsed = fastavro.parse_schema(output)
    fields = {f["name"]: f["type"] for f in output["fields"]}
    assert fields["scored_label"] == label_type
    assert "features" not in fields
    assert list(fields)[:2] == ["id", "scored_label"]
    # the same function called twice must not share (and mutate) one loaded contract
    assert {f["name"]: f["type"] for f in prediction_schema(schema, "string")["fields"]}["scored_label"] == "string"
    assert parsed["name"] == "scorer.Prediction"


def test_prediction_schema_with_features_round_trips_a_record(schema: TrainingSchema) -> None:
    output = prediction_schema(schema, "string", include_features=True)
    features = output["fields"][-1]
    assert features["name"] == "features"
    assert [f["name"] for f in features["type"]["fields"]] == schema.feature_names
    record = {
        "id": "c-1",
        "scored_label": "yes",
        "scored_probability": 0.75,
        "scored_label_probability": 0.75,
        "scored_probabilities": {"no": 0.25, "yes": 0.75},
        "model_name": "churn",
        "model_version": "3",
        "scored_at": 1_700_000_000_000,
        "features": {"age": 40, "income": None, "member": True, "city": None, "plan": "a", "tier": "gold"},
    }
    parsed = fastavro.parse_schema(output)
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, parsed, record)
    buffer.seek(0)
    decoded = fastavro.schemaless_reader(buffer, parsed, None)
    assert decoded["features"] == record["features"]
    assert decoded["scored_probabilities"] == record["scored_probabilities"]


def test_reader_schema_adds_an_optional_id_field(schema: TrainingSchema) -> None:
    reader = schema.reader_schema("customer_id")
    assert [f["name"] for f in reader["fields"]] == [*schema.feature_names, "customer_id"]
    assert reader["fields"][-1] == {"name": "customer_id", "type": ["null", "string", "long"], "default": None}
    assert (reader["name"], reader["namespace"]) == ("Features", "scorer")
    fastavro.parse_schema(reader)


def test_reader_schema_takes_the_writer_name_and_does_not_duplicate_a_feature_id(schema: TrainingSchema) -> None:
    reader = schema.reader_schema("age", writer={"type": "record", "name": "x.y.Customer", "fields": []})
    assert (reader["name"], reader["namespace"]) == ("Customer", "x.y")
    assert [f["name"] for f in reader["fields"]] == schema.feature_names
