"""Unit tests of scorer.scoring: predictions equal the estimator's, one model call per batch, rejections."""

from __future__ import annotations

import copy
import dataclasses
import functools
import io
import json
import math
from typing import Any

import fastavro
import numpy as np
import pandas as pd
import pytest
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder
from sklearn.svm import LinearSVC

from scorer.bundle import ModelBundle, build_bundle
from scorer.codec import FeatureDecoder, PredictionEncoder, frame_value, split_frame
from scorer.errors import RejectReason
from scorer.schema import prediction_schema
from scorer.scoring import Scorer, ScoreResult

FEATURES = ["x1", "x2", "city"]
POISON = 999.0
"""A value of x1 that makes ``Fragile`` raise."""


@functools.cache
def training_frame(n: int = 300) -> pd.DataFrame:
    rng = np.random.default_rng(1)
    frame = pd.DataFrame(
        {
            "x1": rng.normal(size=n),
            "x2": rng.normal(size=n),
            "city": pd.Series(rng.choice(["oslo", "paris", "rome"], size=n), dtype=object),
        }
    )
    frame["churn"] = np.where(frame.x1 + (frame.city == "rome") > 0.3, "yes", "no")
    frame["tier"] = np.digitize(frame.x2, [-0.5, 0.5]).astype(np.int64)
    frame["spend"] = 2.0 * frame.x1 - frame.x2 + (frame.city == "oslo")
    return frame


def encoder() -> ColumnTransformer:
    return ColumnTransformer(
        [("num", "passthrough", ["x1", "x2"]), ("cat", OneHotEncoder(handle_unknown="ignore"), ["city"])]
    )


def fitted_bundle(label: str, estimator: Any, **options: Any) -> ModelBundle:
    data = training_frame()[[*FEATURES, label]]
    pipeline = make_pipeline(encoder(), estimator).fit(data[FEATURES], data[label])
    return build_bundle(pipeline, data, label, f"{label}-model", "5", **options)


@functools.cache
def binary() -> ModelBundle:
    return fitted_bundle("churn", LogisticRegression())


@functools.cache
def multiclass() -> ModelBundle:
    return fitted_bundle("tier", LogisticRegression())


@functools.cache
def regression() -> ModelBundle:
    return fitted_bundle("spend", LinearRegression())


@functools.cache
def boolean() -> ModelBundle:
    """A binary classifier whose labels are booleans (the prediction's scored_label is an Avro boolean)."""
    data = training_frame()[FEATURES].assign(vip=training_frame()["churn"] == "yes")
    pipeline = make_pipeline(encoder(), LogisticRegression()).fit(data[FEATURES], data["vip"])
    return build_bundle(pipeline, data, "vip", "vip-model", "2")


def rows_of(frame: pd.DataFrame) -> list[dict[str, Any]]:
    return [{**row, "id": f"r-{i}"} for i, row in enumerate(frame[FEATURES].to_dict("records"))]


def probabilities_of(predictions: list[dict[str, Any]], classes: tuple[Any, ...]) -> np.ndarray:
    return np.array([[p["scored_probabilities"][str(c)] for c in classes] for p in predictions])


class Counting:
    """Wraps an estimator and counts the model calls made through it."""

    def __init__(self, estimator: Any) -> None:
        self.estimator = estimator
        self.calls: list[str] = []

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self.estimator, name)
        if name in {"predict", "predict_proba", "decision_function"}:

            def counted(*args: Any, **kwargs: Any) -> Any:
                self.calls.append(name)
                return attribute(*args, **kwargs)

            return counted
        return attribute


class Fragile(ClassifierMixin, BaseEstimator):
    """A classifier that raises for any batch holding a row with x1 == POISON."""

    def fit(self, X: pd.DataFrame, y: Any) -> Fragile:
        self.classes_ = np.unique(y)
        self.feature_names_in_ = np.asarray(X.columns, dtype=object)
        return self

    def predict_proba(self, X: pd.DataFrame) -> np.ndarray:
        if (X["x1"] == POISON).any():
            raise ValueError("cannot score the poison row")
        positive = 1.0 / (1.0 + np.exp(-X["x1"].to_numpy()))
        return np.column_stack([1.0 - positive, positive])

    def predict(self, X: pd.DataFrame) -> np.ndarray:
        return self.classes_[np.argmax(self.predict_proba(X), axis=1)]


# --- predictions equal the estimator's -------------------------------------------------------------------------


def test_binary_predictions_equal_the_estimator() -> None:
    bundle = binary()
    data = training_frame().iloc[:80]
    result = Scorer(bundle).score(rows_of(data))
    assert result.rejections == []
    assert result.indices == list(range(80))
    estimator, features = bundle.estimator, data[FEATURES]
    labels = [p["scored_label"] for p in result.predictions]
    assert np.array_equal(labels, estimator.predict(features))
    proba = estimator.predict_proba(features)
    np.testing.assert_array_equal(probabilities_of(result.predictions, bundle.classes), proba)
    positive = list(estimator.classes_).index("yes")
    assert [p["scored_probability"] for p in result.predictions] == proba[:, positive].tolist()
    assert [p["scored_label_probability"] for p in result.predictions] == proba.max(axis=1).tolist()
    assert {k for p in result.predictions for k in p["scored_probabilities"]} == {"no", "yes"}
    assert [p["id"] for p in result.predictions] == [f"r-{i}" for i in range(80)]
    assert {(p["model_name"], p["model_version"]) for p in result.predictions} == {("churn-model", "5")}
    # the columns the predictions are built from
    assert len(result) == 80
    assert result.ids == [f"r-{i}" for i in range(80)]
    assert result.labels == estimator.predict(features).tolist()
    assert all(type(label) is str for label in result.labels)
    assert result.probabilities is not None
    np.testing.assert_array_equal(result.probabilities, proba)
    assert result.class_keys == ["no", "yes"]
    assert result.positive_column == positive
    assert result.label_probability == proba.max(axis=1).tolist()
    assert (result.model_name, result.model_version) == ("churn-model", "5")
    assert result.features is None


def test_binary_scored_probability_follows_an_explicit_positive_class() -> None:
    data = training_frame()[[*FEATURES, "churn"]]
    pipeline = make_pipeline(encoder(), LogisticRegression()).fit(data[FEATURES], data["churn"])
    bundle = build_bundle(pipeline, data, "churn", "m", "1", positive_class="no")
    result = Scorer(bundle).score(rows_of(data.iloc[:20]))
    proba_no = pipeline.predict_proba(data[FEATURES].iloc[:20])[:, 0]
    assert [p["scored_probability"] for p in result.predictions] == proba_no.tolist()


def test_multiclass_predictions_equal_the_estimator() -> None:
    bundle = multiclass()
    data = training_frame().iloc[:80]
    result = Scorer(bundle).score(rows_of(data))
    features = data[FEATURES]
    labels = [p["scored_label"] for p in result.predictions]
    assert np.array_equal(labels, bundle.estimator.predict(features))
    assert all(type(label) is int for label in labels)
    np.testing.assert_array_equal(
        probabilities_of(result.predictions, bundle.classes), bundle.estimator.predict_proba(features)
    )
    assert {p["scored_probability"] for p in result.predictions} == {None}
    assert set(result.predictions[0]["scored_probabilities"]) == {"0", "1", "2"}


def test_regression_predictions_equal_the_estimator() -> None:
    bundle = regression()
    data = training_frame().iloc[:80]
    result = Scorer(bundle).score(rows_of(data))
    labels = [p["scored_label"] for p in result.predictions]
    assert all(type(label) is float for label in labels)
    assert np.array_equal(labels, bundle.estimator.predict(data[FEATURES]))
    for field in ("scored_probability", "scored_label_probability", "scored_probabilities"):
        assert {p[field] for p in result.predictions} == {None}


def test_decision_function_models_get_sigmoid_probabilities_consistent_with_the_label() -> None:
    bundle = fitted_bundle("churn", LinearSVC())
    data = training_frame().iloc[:60]
    result = Scorer(bundle).score(rows_of(data))
    decision = bundle.estimator.decision_function(data[FEATURES])
    assert np.array_equal([p["scored_label"] for p in result.predictions], bundle.estimator.predict(data[FEATURES]))
    expected = 1.0 / (1.0 + np.exp(-decision))
    np.testing.assert_allclose([p["scored_probability"] for p in result.predictions], expected, rtol=1e-15)
    for p in result.predictions:
        assert (p["scored_label"] == "yes") == (p["scored_probability"] > 0.5)
        assert p["scored_label_probability"] == p["scored_probabilities"][p["scored_label"]]


def test_scored_at_comes_from_the_injected_clock() -> None:
    result = Scorer(binary(), clock=lambda: 1_700_000_000.25).score(rows_of(training_frame().iloc[:2]))
    assert [p["scored_at"] for p in result.predictions] == [1_700_000_000_250] * 2


# --- one model call per batch ----------------------------------------------------------------------------------


@pytest.mark.parametrize("make", [binary, multiclass, regression])
def test_exactly_one_model_call_per_batch(make: Any) -> None:
    counting = Counting(make().estimator)
    scorer = Scorer(dataclasses.replace(make(), estimator=counting))
    for start in (0, 100):
        scorer.score(rows_of(training_frame().iloc[start : start + 100]))
    expected = "predict" if make is regression else "predict_proba"
    assert counting.calls == [expected, expected]


def test_a_batch_of_only_invalid_rows_makes_no_model_call() -> None:
    counting = Counting(binary().estimator)
    scorer = Scorer(dataclasses.replace(binary(), estimator=counting))
    rows = [{**row, "id": None} for row in rows_of(training_frame().iloc[:5])]
    result = scorer.score(rows)
    assert result.predictions == []
    assert [r.reason for r in result.rejections] == [RejectReason.MISSING_ID] * 5
    assert counting.calls == []
    assert Scorer(binary()).score([]).predictions == []


# --- rejections ------------------------------------------------------------------------------------------------


def test_rows_failing_validation_are_rejected_and_the_rest_scored() -> None:
    rows = rows_of(training_frame().iloc[:6])
    rows[1]["id"] = None
    rows[2]["x1"] = math.nan
    rows[3]["x2"] = math.inf
    rows[4]["x1"] = None
    result = Scorer(binary()).score(rows)
    assert result.indices == [0, 5]
    assert [(r.index, r.reason) for r in result.rejections] == [
        (1, RejectReason.MISSING_ID),
        (2, RejectReason.INVALID_VALUE),
        (3, RejectReason.INVALID_VALUE),
        (4, RejectReason.INVALID_VALUE),
    ]
    details = {r.index: r.detail for r in result.rejections}
    assert details[1] == "the record has no 'id'"
    assert details[2] == "x1 is NaN or infinite"
    assert details[3] == "x2 is NaN or infinite"


def test_a_row_with_several_problems_is_rejected_once() -> None:
    (row,) = rows_of(training_frame().iloc[:1])
    result = Scorer(binary()).score([{**row, "id": None, "x1": math.nan, "city": "tokyo"}])
    assert [r.reason for r in result.rejections] == [RejectReason.MISSING_ID]


def test_unknown_category_rejected_by_default_and_scored_on_request() -> None:
    rows = rows_of(training_frame().iloc[:3])
    rows[1]["city"] = "tokyo"
    rejected = Scorer(binary()).score(rows)
    assert rejected.indices == [0, 2]
    (rejection,) = rejected.rejections
    assert (rejection.index, rejection.reason) == (1, RejectReason.UNKNOWN_CATEGORY)
    assert rejection.detail == "city='tokyo' was not seen in training"

    scored = Scorer(binary(), unknown_categories="score").score(rows)
    assert scored.rejections == []
    assert scored.indices == [0, 1, 2]
    features = pd.DataFrame.from_records(rows, columns=FEATURES)
    assert np.array_equal([p["scored_label"] for p in scored.predictions], binary().estimator.predict(features))


def test_a_row_the_model_fails_on_is_rejected_alone() -> None:
    data = training_frame()[[*FEATURES, "churn"]]
    bundle = build_bundle(Fragile().fit(data[FEATURES], data["churn"]), data, "churn", "fragile", "1")
    rows = rows_of(data.iloc[:9])
    rows[6]["x1"] = POISON
    result = Scorer(bundle).score(rows)
    (rejection,) = result.rejections
    assert (rejection.index, rejection.reason) == (6, RejectReason.MODEL_ERROR)
    assert "ValueError: cannot score the poison row" in rejection.detail
    assert result.indices == [0, 1, 2, 3, 4, 5, 7, 8]
    good = data[FEATURES].iloc[result.indices]
    assert np.array_equal([p["scored_label"] for p in result.predictions], bundle.estimator.predict(good))
    np.testing.assert_array_equal(
        [p["scored_probability"] for p in result.predictions], bundle.estimator.predict_proba(good)[:, 1]
    )


def test_a_model_failing_on_every_row_rejects_every_row() -> None:
    data = training_frame()[[*FEATURES, "churn"]]
    bundle = build_bundle(Fragile().fit(data[FEATURES], data["churn"]), data, "churn", "fragile", "1")
    rows = [{**row, "x1": POISON} for row in rows_of(data.iloc[:4])]
    result = Scorer(bundle).score(rows)
    assert result.predictions == []
    assert [(r.index, r.reason) for r in result.rejections] == [(i, RejectReason.MODEL_ERROR) for i in range(4)]


# --- output shape ----------------------------------------------------------------------------------------------


def test_indices_map_back_to_batch_positions() -> None:
    rows = rows_of(training_frame().iloc[:4])
    rows[2]["id"] = None
    result = Scorer(binary()).score(rows, indices=[10, 11, 14, 20])
    assert result.indices == [10, 11, 20]
    assert [p["id"] for p in result.predictions] == ["r-0", "r-1", "r-3"]
    assert [r.index for r in result.rejections] == [14]


def test_include_features_appends_the_input_features() -> None:
    rows = rows_of(training_frame().iloc[:3])
    plain = Scorer(binary()).score(rows)
    with_features = Scorer(binary(), include_features=True).score(rows)
    assert "features" not in plain.predictions[0]
    for prediction, row in zip(with_features.predictions, rows, strict=True):
        assert prediction["features"] == {name: row[name] for name in FEATURES}


def test_include_features_keeps_nulls_and_integers_so_the_record_encodes() -> None:
    frame = training_frame()[["x1", "churn"]].copy()
    frame["visits"] = pd.array([None if i % 5 == 0 else i % 7 for i in range(len(frame))], dtype="Int64")
    frame = frame[["x1", "visits", "churn"]]
    estimator = HistGradientBoostingClassifier(max_iter=5).fit(frame[["x1", "visits"]], frame["churn"])
    bundle = build_bundle(estimator, frame, "churn", "hgb", "1")
    assert [(f.name, f.type, f.nullable) for f in bundle.schema.features] == [
        ("x1", "double", False),
        ("visits", "long", True),
    ]
    rows = [{"x1": 0.5, "visits": None, "id": "a"}, {"x1": -0.5, "visits": 3, "id": "b"}]
    result = Scorer(bundle, include_features=True).score(rows)
    assert [p["features"] for p in result.predictions] == [{"x1": 0.5, "visits": None}, {"x1": -0.5, "visits": 3}]
    assert type(result.predictions[1]["features"]["visits"]) is int  # 3, not 3.0 (which compares equal)
    assert type(result.predictions[0]["features"]["x1"]) is float
    schema = prediction_schema(bundle.schema, bundle.schema.label_type, include_features=True)
    encoder = PredictionEncoder(schema, schema_id=1)
    assert len(encoder.encode(result.predictions)) == 2
    encoded = encoder.encode_scores(result)  # with features: the fastavro path
    assert encoded == encoder.encode(result.predictions)
    decoded = decode_predictions(schema, encoded, schema_id=1)
    assert decoded == result.predictions
    assert [d["features"] for d in decoded] == [{"x1": 0.5, "visits": None}, {"x1": -0.5, "visits": 3}]
    assert type(decoded[1]["features"]["visits"]) is int


def test_an_id_field_that_is_also_a_feature() -> None:
    frame = training_frame()[["x1", "churn"]].assign(account=lambda d: np.arange(len(d), dtype=np.int64))
    frame = frame[["x1", "account", "churn"]]
    estimator = LogisticRegression().fit(frame[["x1", "account"]], frame["churn"])
    bundle = build_bundle(estimator, frame, "churn", "m", "1")
    result = Scorer(bundle, id_field="account").score([{"x1": 0.1, "account": 7}, {"x1": 0.2, "account": None}])
    assert [p["id"] for p in result.predictions] == ["7"]
    assert [(r.index, r.reason) for r in result.rejections] == [(1, RejectReason.MISSING_ID)]


def test_long_ids_stay_integers_when_a_record_in_the_batch_has_no_id() -> None:
    rows = rows_of(training_frame().iloc[:3])
    ids = [2**53 + 1, None, 42]  # 2**53 + 1 is not a float
    result = Scorer(binary()).score([{**row, "id": record_id} for row, record_id in zip(rows, ids, strict=True)])
    assert [p["id"] for p in result.predictions] == ["9007199254740993", "42"]


def test_nan_is_scored_in_a_double_feature_that_had_nulls_in_training() -> None:
    frame = training_frame()[["x1", "x2", "churn"]].copy()
    frame.loc[::10, "x1"] = np.nan
    estimator = HistGradientBoostingClassifier(max_iter=5).fit(frame[["x1", "x2"]], frame["churn"])
    bundle = build_bundle(estimator, frame, "churn", "hgb", "1")
    rows = [
        {"x1": None, "x2": 0.5, "id": "a"},
        {"x1": math.nan, "x2": 0.5, "id": "b"},
        {"x1": 1.0, "x2": math.nan, "id": "c"},
    ]
    result = Scorer(bundle).score(rows)
    assert result.indices == [0, 1]
    assert [(r.index, r.reason) for r in result.rejections] == [(2, RejectReason.INVALID_VALUE)]


# --- frames: what the decoder hands over ---------------------------------------------------------------------


def frame_of(rows: list[dict[str, Any]], positions: list[int]) -> pd.DataFrame:
    """The frame ``FeatureDecoder`` returns for these rows: features, then the id, indexed by position."""
    return pd.DataFrame.from_records(rows, columns=[*FEATURES, "id"], index=pd.Index(positions, dtype=np.int64))


def columns_of(result: ScoreResult) -> dict[str, Any]:
    fields = dataclasses.asdict(result)
    probabilities = fields.pop("probabilities")
    return {**fields, "probabilities": None if probabilities is None else probabilities.tolist()}


@pytest.mark.parametrize("make", [binary, multiclass, regression, boolean])
def test_a_frame_scores_exactly_like_the_same_rows(make: Any) -> None:
    rows = rows_of(training_frame().iloc[:12])
    rows[3]["id"] = None
    rows[5]["city"] = "tokyo"
    rows[7]["x2"] = math.nan
    positions = [2 * i + 1 for i in range(12)]
    clock = lambda: 1_700_000_000.5  # noqa: E731
    from_rows = Scorer(make(), clock=clock, include_features=True).score(rows, indices=positions)
    from_frame = Scorer(make(), clock=clock, include_features=True).score(frame_of(rows, positions))
    assert from_frame.indices == [p for i, p in enumerate(positions) if i not in (3, 5, 7)]
    assert [(r.index, r.reason) for r in from_frame.rejections] == [
        (7, RejectReason.MISSING_ID),
        (11, RejectReason.UNKNOWN_CATEGORY),
        (15, RejectReason.INVALID_VALUE),
    ]
    assert columns_of(from_frame) == columns_of(from_rows)
    assert from_frame.predictions == from_rows.predictions
    assert len(from_frame) == 9


def test_an_empty_frame_scores_to_nothing() -> None:
    empty = pd.DataFrame(columns=[*FEATURES, "id"], index=pd.Index([], dtype=np.int64))
    result = Scorer(binary()).score(empty)
    assert (result.indices, result.predictions, result.rejections, len(result)) == ([], [], [], 0)
    assert result.class_keys == ["no", "yes"]


def test_label_probability_of_a_model_whose_label_is_not_the_argmax() -> None:
    bundle = dataclasses.replace(binary(), label_from_proba=False)
    data = training_frame().iloc[:30]
    result = Scorer(bundle).score(rows_of(data))
    proba = bundle.estimator.predict_proba(data[FEATURES])
    columns = [list(bundle.estimator.classes_).index(label) for label in result.labels]
    assert result.label_probability == proba[np.arange(30), columns].tolist()


class _SometimesUnsure(ClassifierMixin, BaseEstimator):
    """Wraps a fitted binary model; ``predict`` says "unsure" (not a class) on rows with x1 > 0.5."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.classes_ = inner.classes_

    def predict_proba(self, X: pd.DataFrame) -> np.ndarray:  # noqa: N803 - scikit-learn's names
        return self.inner.predict_proba(X)

    def predict(self, X: pd.DataFrame) -> np.ndarray:  # noqa: N803
        labels = self.inner.predict(X).astype(object)
        labels[X["x1"].to_numpy() > 0.5] = "unsure"
        return labels


def test_a_label_outside_the_classes_rejects_that_row_not_the_batch() -> None:
    base = binary()
    bundle = dataclasses.replace(base, estimator=_SometimesUnsure(base.estimator), label_from_proba=False)
    data = training_frame().iloc[:40]
    unsure = set(np.flatnonzero(data["x1"].to_numpy() > 0.5).tolist())
    assert 0 < len(unsure) < 40
    result = Scorer(bundle).score(rows_of(data))
    assert {r.index for r in result.rejections} == unsure
    assert {r.reason for r in result.rejections} == {RejectReason.MODEL_ERROR}
    assert "'unsure', which is not one of its classes ['no', 'yes']" in result.rejections[0].detail
    assert result.indices == [i for i in range(40) if i not in unsure]
    assert result.labels == base.estimator.predict(data[FEATURES].iloc[result.indices]).tolist()


class _ThreeColumns(_SometimesUnsure):
    """Answers three probability columns for a two-class problem."""

    def predict_proba(self, X: pd.DataFrame) -> np.ndarray:  # noqa: N803
        return np.full((len(X), 3), 1 / 3)


def test_outputs_of_the_wrong_shape_are_model_errors_of_the_rows_not_a_crash() -> None:
    base = binary()
    bundle = dataclasses.replace(base, estimator=_ThreeColumns(base.estimator))
    result = Scorer(bundle).score(rows_of(training_frame().iloc[:8]))
    assert len(result) == 0 and [r.index for r in result.rejections] == list(range(8))
    assert {r.reason for r in result.rejections} == {RejectReason.MODEL_ERROR}
    assert "probabilities of shape (1, 3) for 1 rows and 2 classes" in result.rejections[0].detail


# --- encoding the columns ------------------------------------------------------------------------------------


def decode_predictions(schema: dict[str, Any], encoded: list[bytes], schema_id: int) -> list[dict[str, Any]]:
    """fastavro's reading of the framed bytes, with scored_at as the long it is written as."""
    plain = copy.deepcopy(schema)
    for spec in plain["fields"]:
        if spec["name"] == "scored_at":
            spec["type"] = "long"
    parsed = fastavro.parse_schema(plain)
    records = []
    for value in encoded:
        assert split_frame(value) == (schema_id, value[5:])
        stream = io.BytesIO(value[5:])
        records.append(fastavro.schemaless_reader(stream, parsed, None))
        assert stream.tell() == len(value) - 5
    return records


def typed(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Records with each top-level value's type: True and 1, or 2 and 2.0, compare equal otherwise."""
    return [{name: (type(value).__name__, value) for name, value in record.items()} for record in records]


ENCODER_CASES: dict[str, Any] = {  # bundle factories
    "binary string labels": binary,
    "binary boolean labels": boolean,
    "multiclass long labels": multiclass,
    "regression": regression,
    "decision function": lambda: fitted_bundle("churn", LinearSVC()),
    "positive class first": lambda: build_bundle(
        binary().estimator, training_frame()[[*FEATURES, "churn"]], "churn", "m", "1", positive_class="no"
    ),
    "no probabilities": lambda: dataclasses.replace(binary(), probability_source="none"),
    "label not argmax": lambda: dataclasses.replace(multiclass(), label_from_proba=False),
}


@pytest.mark.parametrize("case", list(ENCODER_CASES))
@pytest.mark.parametrize("size", [0, 1, 57])
def test_encode_scores_writes_what_fastavro_writes(case: str, size: int) -> None:
    bundle = ENCODER_CASES[case]()
    scorer = Scorer(bundle, clock=lambda: 1_700_000_000.123)
    rows = rows_of(training_frame().iloc[100 : 100 + size])
    for n, row in enumerate(rows):
        row["id"] = ["r", "é-ü", "", "😀" * 40, "x" * 200][n % 5] + str(n)
    if size > 2:
        rows[1]["id"] = None  # a rejected row in between
    result = scorer.score(rows)
    schema = prediction_schema(bundle.schema, bundle.schema.label_type)
    encoder = PredictionEncoder(schema, schema_id=77)
    encoded = encoder.encode_scores(result)
    predictions = result.predictions
    assert len(encoded) == len(predictions) == max(size - (size > 2), 0)
    assert encoded == encoder.encode(predictions)  # fastavro writes the canonical encoding: byte for byte
    decoded = decode_predictions(schema, encoded, schema_id=77)
    assert decoded == predictions
    assert typed(decoded) == typed(predictions)
    for record in decoded:
        assert record["scored_at"] == 1_700_000_000_123
        if record["scored_probabilities"] is not None:
            assert list(record["scored_probabilities"]) == result.class_keys
    assert encoder.encode_scores(result) == encoded  # the label cache changes nothing on a second batch


def test_encode_scores_label_types_match_the_schema() -> None:
    expected = {
        binary: ("string", str),
        boolean: ("boolean", bool),
        multiclass: ("long", int),
        regression: ("double", float),
    }
    for make, (avro_type, python_type) in expected.items():
        bundle = make()
        assert bundle.schema.label_type == avro_type
        result = Scorer(bundle).score(rows_of(training_frame().iloc[:20]))
        schema = prediction_schema(bundle.schema, avro_type)
        decoded = decode_predictions(schema, PredictionEncoder(schema, 5).encode_scores(result), 5)
        assert {type(d["scored_label"]) for d in decoded} == {python_type}


def test_encode_scores_with_features_falls_back_to_fastavro_from_a_decoded_frame() -> None:
    frame = training_frame()[["x1", "churn"]].copy()
    frame["visits"] = pd.array([None if i % 5 == 0 else i % 7 for i in range(len(frame))], dtype="Int64")
    frame = frame[["x1", "visits", "churn"]]
    estimator = HistGradientBoostingClassifier(max_iter=5).fit(frame[["x1", "visits"]], frame["churn"])
    bundle = build_bundle(estimator, frame, "churn", "hgb", "1")
    writer = {**bundle.schema.to_avro(), "fields": [*bundle.schema.to_avro()["fields"], {"name": "id", "type": "long"}]}
    decoder = FeatureDecoder(bundle.schema, "id", lambda schema_id: json.dumps(writer))
    values = [
        frame_value(1, fastavro_body(writer, {"x1": 0.5, "visits": None, "id": 7})),
        frame_value(1, fastavro_body(writer, {"x1": -0.5, "visits": 3, "id": 8})),
        frame_value(1, fastavro_body(writer, {"x1": 1.5, "visits": 2**40, "id": 9})),
    ]
    schema = prediction_schema(bundle.schema, bundle.schema.label_type, include_features=True)
    encoder = PredictionEncoder(schema, schema_id=3)
    for batch in (decoder.decode(values), decoder.decode([*values, frame_value(1, b"")])):  # both decode paths
        assert batch.frame["visits"].isna().tolist() == [True, False, False]
        assert batch.frame["visits"].dtype == pd.Int64Dtype()  # exact integers, pd.NA for the null
        assert batch.frame["visits"].tolist()[1:] == [3, 2**40]
        result = Scorer(bundle, include_features=True).score(batch.frame)
        assert result.ids == ["7", "8", "9"]
        encoded = encoder.encode_scores(result)
        assert encoded == encoder.encode(result.predictions)
        decoded = decode_predictions(schema, encoded, schema_id=3)
        assert decoded == result.predictions
        assert [d["features"] for d in decoded] == [
            {"x1": 0.5, "visits": None},
            {"x1": -0.5, "visits": 3},
            {"x1": 1.5, "visits": 2**40},
        ]
        assert [type(d["features"]["visits"]) for d in decoded] == [type(None), int, int]


def fastavro_body(schema: dict[str, Any], record: dict[str, Any]) -> bytes:
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, fastavro.parse_schema(schema), record)
    return buffer.getvalue()


@pytest.mark.parametrize("fallback", [False, True], ids=["columnar", "per-record"])
def test_decoded_frames_score_and_encode_like_the_rows(fallback: bool) -> None:
    bundle = binary()
    writer = {
        "type": "record",
        "name": "Event",
        "fields": [
            {"name": "id", "type": ["null", "long"]},
            {"name": "city", "type": "string"},
            {"name": "x2", "type": "float"},  # float -> double
            {"name": "x1", "type": "int"},  # int -> double
        ],
    }
    decoder = FeatureDecoder(bundle.schema, "id", lambda schema_id: json.dumps(writer))
    records = [
        {"id": n if n % 4 else None, "city": ["oslo", "rome", "paris"][n % 3], "x2": n / 8, "x1": n - 5}
        for n in range(12)
    ]
    values = [frame_value(4, fastavro_body(writer, r)) for r in records]
    batch = decoder.decode([*values, frame_value(4, b"\xff")] if fallback else values)
    clock = lambda: 1_700_000_000.0  # noqa: E731
    result = Scorer(bundle, clock=clock).score(batch.frame)
    rows = [{"x1": float(r["x1"]), "x2": r["x2"], "city": r["city"], "id": r["id"]} for r in records]
    expected = Scorer(bundle, clock=clock).score(rows)
    assert result.indices == expected.indices == [n for n in range(12) if n % 4]
    assert result.ids == [str(n) for n in range(12) if n % 4]
    assert result.predictions == expected.predictions
    schema = prediction_schema(bundle.schema, "string")
    encoder = PredictionEncoder(schema, 9)
    assert encoder.encode_scores(result) == encoder.encode(expected.predictions)


# --- ids that are long features, and nullable longs: exact integers ---------------------------------------

CLOCK = lambda: 1_700_000_000.0  # noqa: E731


@pytest.mark.parametrize("fallback", [False, True], ids=["columnar", "per-record"])
def test_an_id_that_is_a_long_feature_keeps_its_type_and_encodes(fallback: bool) -> None:
    frame = training_frame()[["x1", "churn"]].assign(account=lambda d: np.arange(len(d), dtype=np.int64))
    frame = frame[["x1", "account", "churn"]]
    bundle = build_bundle(LogisticRegression().fit(frame[["x1", "account"]], frame["churn"]), frame, "churn", "m", "1")
    writer = bundle.schema.to_avro()
    decoder = FeatureDecoder(bundle.schema, "account", lambda schema_id: json.dumps(writer))
    accounts = [7, 2**53 + 1, -(2**63)]
    values = [frame_value(1, fastavro_body(writer, {"x1": 0.1, "account": a})) for a in accounts]
    batch = decoder.decode([*values, frame_value(1, b"")] if fallback else values)
    assert batch.indices == [0, 1, 2]
    assert list(batch.frame.columns) == ["x1", "account"]  # one column: the feature is the id
    assert batch.frame["account"].dtype == np.int64  # the feature's type, not text
    assert batch.frame["account"].tolist() == accounts
    result = Scorer(bundle, id_field="account", clock=CLOCK).score(batch.frame)
    assert result.ids == ["7", "9007199254740993", "-9223372036854775808"]
    expected = Scorer(bundle, id_field="account", clock=CLOCK).score([{"x1": 0.1, "account": a} for a in accounts])
    assert result.predictions == expected.predictions
    encoder = PredictionEncoder(prediction_schema(bundle.schema, "string"), 1)
    encoded = encoder.encode_scores(result)
    assert encoded == encoder.encode(result.predictions)
    assert [d["id"] for d in decode_predictions(prediction_schema(bundle.schema, "string"), encoded, 1)] == result.ids


@pytest.mark.parametrize("fallback", [False, True], ids=["columnar", "per-record"])
def test_a_nullable_long_id_feature_is_int64_and_a_null_is_a_missing_id(fallback: bool) -> None:
    frame = training_frame()[["x1", "churn"]].copy()
    frame["account"] = pd.array([None if i % 7 == 0 else i for i in range(len(frame))], dtype="Int64")
    frame = frame[["x1", "account", "churn"]]
    estimator = HistGradientBoostingClassifier(max_iter=3).fit(frame[["x1", "account"]], frame["churn"])
    bundle = build_bundle(estimator, frame, "churn", "hgb", "1")
    writer = bundle.schema.to_avro()
    decoder = FeatureDecoder(bundle.schema, "account", lambda schema_id: json.dumps(writer))
    accounts = [2**53 + 1, None, 7]
    values = [frame_value(1, fastavro_body(writer, {"x1": 0.1, "account": a})) for a in accounts]
    batch = decoder.decode([*values, frame_value(1, b"")] if fallback else values)
    assert batch.frame["account"].dtype == pd.Int64Dtype()
    assert batch.frame["account"].tolist()[0] == 2**53 + 1
    assert batch.frame["account"].tolist()[1] is pd.NA
    result = Scorer(bundle, id_field="account", include_features=True, clock=CLOCK).score(batch.frame)
    assert result.ids == ["9007199254740993", "7"]
    assert [(r.index, r.reason) for r in result.rejections] == [(1, RejectReason.MISSING_ID)]
    assert [p["features"]["account"] for p in result.predictions] == [2**53 + 1, 7]
    expected = Scorer(bundle, id_field="account", include_features=True, clock=CLOCK).score(
        [{"x1": 0.1, "account": a} for a in accounts]
    )
    assert result.predictions == expected.predictions


def include_features_bundle() -> ModelBundle:
    frame = training_frame()[["x1", "churn"]].copy()
    frame["visits"] = pd.array([None if i % 5 == 0 else i for i in range(len(frame))], dtype="Int64")
    frame = frame[["x1", "visits", "churn"]]
    estimator = HistGradientBoostingClassifier(max_iter=3).fit(frame[["x1", "visits"]], frame["churn"])
    return build_bundle(estimator, frame, "churn", "hgb", "1")


def test_include_features_echoes_large_nullable_longs_exactly() -> None:
    bundle = include_features_bundle()
    rows = [{"x1": 0.1, "visits": None, "id": "a"}, {"x1": 0.1, "visits": 2**53 + 1, "id": "b"}]
    result = Scorer(bundle, include_features=True).score(rows)
    assert [p["features"]["visits"] for p in result.predictions] == [None, 2**53 + 1]
    assert type(result.predictions[1]["features"]["visits"]) is int


@pytest.mark.parametrize("fallback", [False, True], ids=["columnar", "per-record"])
def test_include_features_echoes_decoded_nullable_longs_exactly_and_the_model_sees_floats(fallback: bool) -> None:
    bundle = include_features_bundle()
    writer = {
        **bundle.schema.to_avro(),
        "fields": [*bundle.schema.to_avro()["fields"], {"name": "id", "type": "string"}],
    }
    decoder = FeatureDecoder(bundle.schema, "id", lambda schema_id: json.dumps(writer))
    visits = [None, 2**53 + 1, -(2**63), 3]
    values = [
        frame_value(1, fastavro_body(writer, {"x1": 0.1, "visits": v, "id": f"r{n}"})) for n, v in enumerate(visits)
    ]
    batch = decoder.decode([*values, frame_value(1, b"")] if fallback else values)
    assert batch.frame["visits"].dtype == pd.Int64Dtype()
    result = Scorer(bundle, include_features=True).score(batch.frame)
    assert [p["features"]["visits"] for p in result.predictions] == visits
    assert [type(p["features"]["visits"]) for p in result.predictions] == [type(None), int, int, int]
    as_floats = pd.DataFrame({"x1": [0.1] * 4, "visits": [np.nan if v is None else float(v) for v in visits]})
    assert result.probabilities is not None
    np.testing.assert_array_equal(result.probabilities, bundle.estimator.predict_proba(as_floats))
    schema = prediction_schema(bundle.schema, bundle.schema.label_type, include_features=True)
    encoder = PredictionEncoder(schema, schema_id=3)
    decoded = decode_predictions(schema, encoder.encode_scores(result), schema_id=3)
    assert [d["features"]["visits"] for d in decoded] == visits
