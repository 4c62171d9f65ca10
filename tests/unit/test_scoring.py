"""Unit tests of scorer.scoring: predictions equal the estimator's, one model call per batch, rejections."""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

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
from scorer.codec import PredictionEncoder
from scorer.errors import RejectReason
from scorer.schema import prediction_schema
from scorer.scoring import Scorer

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
    schema = prediction_schema(bundle.schema, bundle.schema.label_type, include_features=True)
    assert len(PredictionEncoder(schema, schema_id=1).encode(result.predictions)) == 2


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
