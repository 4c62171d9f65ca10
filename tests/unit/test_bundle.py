"""Unit tests of scorer.bundle: build/save/load round trips, task inference and the refusals on load."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pandas as pd
import pytest
import sklearn.base
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.preprocessing import StandardScaler
from sklearn.svm import LinearSVC
from sklearn.tree import DecisionTreeClassifier

from scorer.bundle import ModelBundle, build_bundle, load_bundle, read_table
from scorer.cli import main
from scorer.errors import BundleError
from scorer.scoring import Scorer

FEATURES = ["x1", "x2"]


def frame(n: int = 200, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    data = pd.DataFrame({"x1": rng.normal(size=n), "x2": rng.normal(size=n)})
    data["binary"] = np.where(data.x1 + data.x2 > 0, "yes", "no")
    data["multi"] = np.digitize(data.x1, [-0.5, 0.5]).astype(np.int64)
    data["amount"] = 3.0 * data.x1 - data.x2 + rng.normal(scale=0.1, size=n)
    return data


def training(label: str) -> pd.DataFrame:
    return frame()[[*FEATURES, label]]


def binary_bundle() -> ModelBundle:
    data = training("binary")
    model = LogisticRegression().fit(data[FEATURES], data["binary"])
    return build_bundle(model, data, "binary", "churn", "1")


def multiclass_bundle() -> ModelBundle:
    data = training("multi")
    model = LogisticRegression().fit(data[FEATURES], data["multi"])
    return build_bundle(model, data, "multi", "tiers", "2")


def regression_bundle() -> ModelBundle:
    data = training("amount")
    model = LinearRegression().fit(data[FEATURES], data["amount"])
    return build_bundle(model, data, "amount", "spend", "3")


class FixedProbabilities(ClassifierMixin, BaseEstimator):
    """Its predict disagrees with the argmax of its predict_proba (as SVC(probability=True) can)."""

    def fit(self, X: pd.DataFrame, y: Any) -> FixedProbabilities:
        self.classes_ = np.unique(y)
        self.feature_names_in_ = np.asarray(X.columns, dtype=object)
        return self

    def predict_proba(self, X: pd.DataFrame) -> np.ndarray:
        return np.tile([0.6, 0.4], (len(X), 1))

    def predict(self, X: pd.DataFrame) -> np.ndarray:
        return np.full(len(X), self.classes_[1])


# --- build ---------------------------------------------------------------------------------------------------


def test_binary_bundle_describes_the_model() -> None:
    bundle = binary_bundle()
    assert bundle.task == "binary"
    assert bundle.classes == ("no", "yes")
    assert bundle.positive_class == "yes"  # the last of classes_
    assert bundle.probability_source == "predict_proba"
    assert bundle.label_from_proba is True
    assert bundle.schema.feature_names == FEATURES
    assert (bundle.schema.label, bundle.schema.label_type) == ("binary", "string")
    assert (bundle.name, bundle.version, bundle.sklearn_version) == ("churn", "1", sklearn.__version__)


def test_multiclass_bundle_keeps_int_classes_and_has_no_positive_class() -> None:
    bundle = multiclass_bundle()
    assert bundle.task == "multiclass"
    assert bundle.classes == (0, 1, 2)
    assert all(type(c) is int for c in bundle.classes)  # numpy ints would not survive JSON
    assert bundle.positive_class is None
    assert bundle.schema.label_type == "long"


def test_regression_bundle_has_no_classes_and_a_double_label() -> None:
    bundle = regression_bundle()
    assert bundle.task == "regression"
    assert bundle.classes is None
    assert bundle.positive_class is None
    assert bundle.probability_source == "none"
    assert bundle.label_from_proba is False
    assert bundle.schema.label_type == "double"


def test_regression_on_integer_labels_still_writes_double_predictions() -> None:
    data = training("multi")
    model = LinearRegression().fit(data[FEATURES], data["multi"])
    bundle = build_bundle(model, data, "multi", "m", "1")
    assert (bundle.task, bundle.schema.label_type) == ("regression", "double")


def test_explicit_positive_class_and_its_text_form() -> None:
    data = training("binary")
    model = LogisticRegression().fit(data[FEATURES], data["binary"])
    assert build_bundle(model, data, "binary", "m", "1", positive_class="no").positive_class == "no"
    numeric = frame().assign(label=lambda d: (d.x1 > 0).astype(np.int64))[[*FEATURES, "label"]]
    model = LogisticRegression().fit(numeric[FEATURES], numeric["label"])
    # the CLI passes --positive-class as text
    assert build_bundle(model, numeric, "label", "m", "1", positive_class="0").positive_class == 0
    with pytest.raises(BundleError, match="positive class 'maybe' is not one of the model's classes"):
        build_bundle(model, numeric, "label", "m", "1", positive_class="maybe")


def test_binary_task_with_three_classes_is_refused() -> None:
    data = training("multi")
    model = LogisticRegression().fit(data[FEATURES], data["multi"])
    with pytest.raises(BundleError, match="task 'binary' needs two classes, the model has 3"):
        build_bundle(model, data, "multi", "m", "1", task="binary")


def test_classification_task_for_a_regressor_is_refused() -> None:
    data = training("amount")
    model = LinearRegression().fit(data[FEATURES], data["amount"])
    with pytest.raises(BundleError, match="needs a classifier with classes_; got LinearRegression"):
        build_bundle(model, data, "amount", "m", "1", task="multiclass")


def test_regression_task_for_a_classifier_of_strings_is_refused() -> None:
    """Its predictions ("yes") cannot be doubles: every record would be dead-lettered at scoring time."""
    data = training("binary")
    model = LogisticRegression().fit(data[FEATURES], data["binary"])
    with pytest.raises(BundleError, match=r"task 'regression' needs a model that predicts numbers; .*'no', 'yes'"):
        build_bundle(model, data, "binary", "m", "1", task="regression")


def test_an_estimator_that_is_neither_classifier_nor_regressor_is_refused() -> None:
    data = training("amount")
    scaler = StandardScaler().fit(data[FEATURES])
    with pytest.raises(BundleError, match="StandardScaler is neither a classifier nor a regressor"):
        build_bundle(scaler, data, "amount", "m", "1")


def test_model_without_predict_proba_uses_decision_function() -> None:
    data = training("binary")
    model = LinearSVC().fit(data[FEATURES], data["binary"])
    bundle = build_bundle(model, data, "binary", "svm", "1")
    assert bundle.probability_source == "decision_function"
    assert bundle.label_from_proba is False


def test_label_from_proba_is_measured_not_assumed() -> None:
    data = training("binary")
    model = FixedProbabilities().fit(data[FEATURES], data["binary"])
    assert build_bundle(model, data, "binary", "m", "1").label_from_proba is False


def test_estimator_fitted_on_other_columns_is_refused() -> None:
    data = training("binary")
    model = LogisticRegression().fit(data[["x2", "x1"]], data["binary"])
    with pytest.raises(BundleError, match=r"fitted on features \['x2', 'x1'\] but the training schema lists"):
        build_bundle(model, data, "binary", "m", "1")


def test_bad_training_data_is_a_bundle_error() -> None:
    data = training("binary").rename(columns={"x1": "x 1"})
    model = LogisticRegression().fit(data[["x 1", "x2"]], data["binary"])
    with pytest.raises(BundleError, match="training data: column 'x 1' is not a valid Avro field name"):
        build_bundle(model, data, "binary", "m", "1")


# --- save / load ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("make", [binary_bundle, multiclass_bundle, regression_bundle])
def test_save_load_round_trip(tmp_path: Path, make: Any) -> None:
    bundle = make()
    bundle.save(tmp_path / "bundle")
    loaded = load_bundle(tmp_path / "bundle")
    meta = json.loads((tmp_path / "bundle" / "bundle.json").read_text())
    assert loaded.model_sha256 == meta["model_sha256"] != ""
    assert loaded.metadata() == {**bundle.metadata(), "model_sha256": loaded.model_sha256}
    assert loaded.schema == bundle.schema
    assert loaded.classes == bundle.classes
    rows = training(bundle.schema.label)[FEATURES]
    np.testing.assert_array_equal(loaded.estimator.predict(rows), bundle.estimator.predict(rows))


def test_pinned_hash_is_accepted_when_it_matches(tmp_path: Path) -> None:
    binary_bundle().save(tmp_path)
    sha = load_bundle(tmp_path).model_sha256
    assert load_bundle(tmp_path, expected_sha256=sha).model_sha256 == sha


def test_pinned_hash_mismatch_is_refused(tmp_path: Path) -> None:
    binary_bundle().save(tmp_path)
    with pytest.raises(BundleError, match=f"not the pinned {'0' * 64}"):
        load_bundle(tmp_path, expected_sha256="0" * 64)


def test_tampered_model_file_is_refused_before_unpickling(tmp_path: Path) -> None:
    binary_bundle().save(tmp_path)
    regression_bundle().save(tmp_path / "other")
    # a valid pickle, but not the one the metadata describes
    (tmp_path / "model.joblib").write_bytes((tmp_path / "other" / "model.joblib").read_bytes())
    with pytest.raises(BundleError, match="the model file was changed or replaced; rebuild the bundle"):
        load_bundle(tmp_path)


def test_directory_without_bundle_files_is_refused(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="is not a model bundle: it needs bundle.json and model.joblib"):
        load_bundle(tmp_path)


def test_bundle_from_another_scikit_learn_version_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bundle = binary_bundle()
    # BaseEstimator.__getstate__ stamps sklearn.base.__version__ into the pickle; __setstate__ compares it
    with monkeypatch.context() as patch:
        patch.setattr(sklearn.base, "__version__", "0.0.1")
        bundle.save(tmp_path)
    meta = json.loads((tmp_path / "bundle.json").read_text())
    meta["sklearn_version"] = "0.0.1"
    (tmp_path / "bundle.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match=r"made with scikit-learn 0\.0\.1.*install scikit-learn==0\.0\.1") as info:
        load_bundle(tmp_path)
    assert type(info.value.__cause__).__name__ == "InconsistentVersionWarning"


def test_metadata_whose_features_disagree_with_the_model_is_refused(tmp_path: Path) -> None:
    binary_bundle().save(tmp_path)
    meta = json.loads((tmp_path / "bundle.json").read_text())
    meta["schema"]["features"].reverse()
    (tmp_path / "bundle.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match="build the bundle from the same data the model was fitted on"):
        load_bundle(tmp_path)


def test_decision_tree_bundle_round_trips_with_string_labels(tmp_path: Path) -> None:
    data = training("binary")
    model = DecisionTreeClassifier(max_depth=3, random_state=0).fit(data[FEATURES], data["binary"])
    build_bundle(model, data, "binary", "tree", "1", positive_class="no").save(tmp_path)
    loaded = load_bundle(tmp_path)
    assert (loaded.classes, loaded.positive_class, loaded.label_from_proba) == (("no", "yes"), "no", True)


# --- task override, accepted ----------------------------------------------------------------------------------


def save_with_task(via: str, estimator: Any, data: pd.DataFrame, label: str, task: Any, out: Path) -> None:
    """Build and save a bundle with ``task`` forced, through the Python API or ``scorer bundle``."""
    if via == "api":
        build_bundle(estimator, data, label, "forced", "1", task=task).save(out)
        return
    joblib.dump(estimator, out.parent / "model.joblib")
    data.to_csv(out.parent / "train.csv", index=False)
    args = ["bundle", str(out.parent / "model.joblib"), "--training-data", str(out.parent / "train.csv")]
    assert main([*args, "--label", label, "--name", "forced", "--version", "1", "--out", str(out), "--task", task]) == 0


def scored(directory: Path) -> list[dict[str, Any]]:
    """Predictions for the first rows of the training data, by the bundle loaded back from disk."""
    rows = frame()[FEATURES].head(20).assign(id=[f"r{i}" for i in range(20)])
    return Scorer(load_bundle(directory)).score(rows.to_dict("records")).predictions


@pytest.mark.parametrize("via", ["api", "cli"])
def test_two_class_model_forced_to_multiclass_scores_every_class_and_no_positive_one(
    tmp_path: Path, via: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two classes of which neither is "positive" (say cat and dog): consumers get a map, not one probability."""
    data = training("binary")
    model = LogisticRegression().fit(data[FEATURES], data["binary"])
    save_with_task(via, model, data, "binary", "multiclass", tmp_path / "bundle")
    if via == "cli":
        assert f"bundle forced 1 (multiclass, joblib) written to {tmp_path / 'bundle'}" in capsys.readouterr().out
    meta = json.loads((tmp_path / "bundle" / "bundle.json").read_text())
    assert (meta["task"], meta["classes"], meta["positive_class"]) == ("multiclass", ["no", "yes"], None)
    loaded = load_bundle(tmp_path / "bundle")
    assert (loaded.task, loaded.classes, loaded.positive_class) == ("multiclass", ("no", "yes"), None)
    predictions = scored(tmp_path / "bundle")
    assert all(p["scored_probability"] is None for p in predictions)  # binary would fill it
    for p in predictions:
        assert set(p["scored_probabilities"]) == {"no", "yes"}
        assert p["scored_probabilities"][p["scored_label"]] == p["scored_label_probability"]
    np.testing.assert_array_equal([p["scored_label"] for p in predictions], model.predict(frame()[FEATURES].head(20)))


@pytest.mark.parametrize("via", ["api", "cli"])
def test_classifier_of_integer_classes_forced_to_regression_scores_numbers(
    tmp_path: Path, via: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """An ordinal classifier (tiers 0, 1, 2) whose consumers want a number: double labels, no probabilities."""
    data = training("multi")
    model = LogisticRegression().fit(data[FEATURES], data["multi"])
    save_with_task(via, model, data, "multi", "regression", tmp_path / "bundle")
    if via == "cli":
        assert f"bundle forced 1 (regression, joblib) written to {tmp_path / 'bundle'}" in capsys.readouterr().out
    meta = json.loads((tmp_path / "bundle" / "bundle.json").read_text())
    assert (meta["task"], meta["classes"], meta["positive_class"]) == ("regression", None, None)
    assert (meta["probability_source"], meta["schema"]["label_type"]) == ("none", "double")
    loaded = load_bundle(tmp_path / "bundle")
    assert (loaded.task, loaded.classes, loaded.schema.label_type) == ("regression", None, "double")
    predictions = scored(tmp_path / "bundle")
    labels = [p["scored_label"] for p in predictions]
    assert all(type(label) is float for label in labels)  # the prediction schema types scored_label double
    assert labels == [float(v) for v in model.predict(frame()[FEATURES].head(20))]
    assert {0.0, 1.0, 2.0} >= set(labels) and len(set(labels)) > 1
    assert all(p["scored_probabilities"] is None and p["scored_label_probability"] is None for p in predictions)


# --- read_table ----------------------------------------------------------------------------------------------


def test_read_table_reads_csv_and_parquet(tmp_path: Path) -> None:
    data = training("binary")
    data.to_csv(tmp_path / "train.csv", index=False)
    data.to_parquet(tmp_path / "train.parquet", index=False)
    data.to_parquet(tmp_path / "TRAIN.PQ", index=False)
    for name in ("train.csv", "train.parquet", "TRAIN.PQ"):
        table = read_table(tmp_path / name)
        assert list(table.columns) == [*FEATURES, "binary"]
        np.testing.assert_allclose(table[FEATURES].to_numpy(), data[FEATURES].to_numpy(), rtol=1e-12)
        assert table["binary"].tolist() == data["binary"].tolist()


def test_read_table_refuses_other_extensions(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match=r"unsupported file type '\.txt'; use \.csv or \.parquet"):
        read_table(tmp_path / "train.txt")
