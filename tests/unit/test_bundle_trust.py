"""Model trust: the skops bundle format loads only types its author or its operator vouched for.

A joblib bundle is a pickle, which runs whatever code it names as it loads; a skops bundle names the types
it rebuilds, and ``load_bundle`` refuses one that needs a type nobody trusted *before* constructing anything.
``Marker`` proves the "before": rebuilding one from saved state writes a file.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pandas as pd
import pytest
import sklearn.base
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.tree import DecisionTreeClassifier

from scorer.bundle import ModelBundle, build_bundle, load_bundle
from scorer.cli import main
from scorer.errors import BundleError

FEATURES = ["x1", "x2"]


class Marker(TransformerMixin, BaseEstimator):
    """Passes its input through. Being rebuilt from saved state (as skops and pickle do) writes ``marker``."""

    def __init__(self, marker: str = "") -> None:
        self.marker = marker

    def fit(self, X: Any, y: Any = None) -> Marker:
        return self

    def transform(self, X: Any) -> Any:
        return X

    def __setstate__(self, state: dict[str, Any]) -> None:
        Path(state["marker"]).write_text("constructed")
        super().__setstate__(state)


MARKER_TYPE = f"{Marker.__module__}.Marker"


def training() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    data = pd.DataFrame({"x1": rng.normal(size=200), "x2": rng.normal(size=200)})
    data["label"] = np.where(data.x1 - data.x2 > 0, "yes", "no")
    return data


def bundle_of(model: Any) -> ModelBundle:
    data = training()
    return build_bundle(model.fit(data[FEATURES], data["label"]), data, "label", "churn", "1")


def pipeline_bundle() -> ModelBundle:
    return bundle_of(make_pipeline(StandardScaler(), LogisticRegression()))


def marker_bundle(marker: Path) -> ModelBundle:
    return bundle_of(
        Pipeline([("scale", StandardScaler()), ("mark", Marker(str(marker))), ("lr", LogisticRegression())])
    )


def read_meta(directory: Path) -> dict[str, Any]:
    return json.loads((directory / "bundle.json").read_text())


def write_meta(directory: Path, meta: dict[str, Any]) -> None:
    (directory / "bundle.json").write_text(json.dumps(meta, indent=2))


def assert_same_predictions(loaded: Any, original: Any) -> None:
    rows = training()[FEATURES]
    np.testing.assert_array_equal(loaded.predict(rows), original.predict(rows))
    np.testing.assert_array_equal(loaded.predict_proba(rows), original.predict_proba(rows))


# --- skops -----------------------------------------------------------------------------------------------------


def test_skops_round_trip_of_a_pipeline(tmp_path: Path) -> None:
    bundle = pipeline_bundle()
    bundle.save(tmp_path, format="skops")
    meta = read_meta(tmp_path)
    assert (meta["model_format"], meta["model_file"], meta["trusted_types"]) == ("skops", "model.skops", [])
    assert not (tmp_path / "model.joblib").exists()
    loaded = load_bundle(tmp_path)
    assert (loaded.model_format, loaded.trusted_types, loaded.model_sha256) == ("skops", (), meta["model_sha256"])
    assert json.loads(json.dumps(loaded.metadata())) == meta  # what save wrote is what load reports
    assert_same_predictions(loaded.estimator, bundle.estimator)


def test_types_the_author_vouched_for_are_recorded_and_load(tmp_path: Path) -> None:
    bundle = bundle_of(DecisionTreeClassifier(max_depth=3, random_state=0))
    bundle.save(tmp_path, format="skops")
    assert read_meta(tmp_path)["trusted_types"] == ["sklearn.tree._tree.Tree"]  # not trusted by skops by default
    loaded = load_bundle(tmp_path)
    assert loaded.trusted_types == ("sklearn.tree._tree.Tree",)
    assert_same_predictions(loaded.estimator, bundle.estimator)


def unrecorded_marker_bundle(tmp_path: Path) -> tuple[Path, Path, ModelBundle]:
    """A skops bundle whose bundle.json no longer vouches for Marker; the model file and its hash are intact."""
    directory, marker = tmp_path / "bundle", tmp_path / "constructed"
    bundle = marker_bundle(marker)
    bundle.save(directory, format="skops")
    meta = read_meta(directory)
    assert MARKER_TYPE in meta["trusted_types"]
    assert not marker.exists()  # neither dumping nor listing the types constructs a Marker
    meta["trusted_types"].remove(MARKER_TYPE)
    write_meta(directory, meta)
    return directory, marker, bundle


def test_an_unrecorded_type_is_refused_before_anything_is_constructed(tmp_path: Path) -> None:
    directory, marker, _ = unrecorded_marker_bundle(tmp_path)
    with pytest.raises(
        BundleError, match=r"needs types that neither the bundle's author nor the operator trusts"
    ) as info:
        load_bundle(directory)
    assert MARKER_TYPE in str(info.value)
    assert "load_bundle(trusted_types=[...])" in str(info.value)
    assert not marker.exists()


def test_the_operator_can_trust_an_unrecorded_type(tmp_path: Path) -> None:
    directory, marker, bundle = unrecorded_marker_bundle(tmp_path)
    loaded = load_bundle(directory, trusted_types=[MARKER_TYPE])
    assert marker.read_text() == "constructed"  # the marker does fire once the type is trusted
    assert_same_predictions(loaded.estimator, bundle.estimator)


def test_trusting_some_other_type_is_not_enough(tmp_path: Path) -> None:
    directory, marker, _ = unrecorded_marker_bundle(tmp_path)
    with pytest.raises(BundleError, match="Marker"):
        load_bundle(directory, trusted_types=["sklearn.tree._tree.Tree"])
    assert not marker.exists()


def test_trusted_types_as_one_string_is_a_mistake(tmp_path: Path) -> None:
    pipeline_bundle().save(tmp_path, format="skops")
    with pytest.raises(TypeError, match="not one string"):
        load_bundle(tmp_path, trusted_types=MARKER_TYPE)


def test_a_replaced_skops_file_is_refused_by_its_hash_before_anything_is_constructed(tmp_path: Path) -> None:
    pipeline_bundle().save(tmp_path / "bundle", format="skops")
    marker = tmp_path / "constructed"
    marker_bundle(marker).save(tmp_path / "other", format="skops")
    # a valid skops file, with types its own bundle.json vouched for, but not the file this bundle describes
    (tmp_path / "bundle" / "model.skops").write_bytes((tmp_path / "other" / "model.skops").read_bytes())
    with pytest.raises(BundleError, match="the model file was changed or replaced; rebuild the bundle"):
        load_bundle(tmp_path / "bundle", trusted_types=[MARKER_TYPE])
    assert not marker.exists()


def test_a_pinned_hash_applies_to_skops_too(tmp_path: Path) -> None:
    pipeline_bundle().save(tmp_path, format="skops")
    sha = read_meta(tmp_path)["model_sha256"]
    assert load_bundle(tmp_path, expected_sha256=sha).model_sha256 == sha
    with pytest.raises(BundleError, match=f"not the pinned {'0' * 64}"):
        load_bundle(tmp_path, expected_sha256="0" * 64)


def test_bundle_json_cannot_point_at_another_model_file(tmp_path: Path) -> None:
    pipeline_bundle().save(tmp_path, format="skops")
    meta = read_meta(tmp_path)
    write_meta(tmp_path, {**meta, "model_file": "../elsewhere.skops"})
    with pytest.raises(BundleError, match=r"a skops bundle's model_file is model\.skops, not '\.\./elsewhere\.skops'"):
        load_bundle(tmp_path)
    write_meta(tmp_path, {**meta, "model_format": "onnx"})
    with pytest.raises(BundleError, match="unknown model_format 'onnx'"):
        load_bundle(tmp_path)
    write_meta(tmp_path, {**meta, "trusted_types": "sklearn.tree._tree.Tree"})
    with pytest.raises(BundleError, match="trusted_types must be a list of type names"):
        load_bundle(tmp_path)


def test_a_skops_bundle_without_its_model_file_is_not_a_bundle(tmp_path: Path) -> None:
    pipeline_bundle().save(tmp_path, format="skops")
    (tmp_path / "model.skops").unlink()
    with pytest.raises(BundleError, match="is not a model bundle: it needs bundle.json and model.skops"):
        load_bundle(tmp_path)


def test_saving_in_another_format_removes_the_old_model_file(tmp_path: Path) -> None:
    bundle = pipeline_bundle()
    bundle.save(tmp_path)
    bundle.save(tmp_path, format="skops")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle.json", "model.skops"]
    bundle.save(tmp_path, format="joblib")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle.json", "model.joblib"]


# --- joblib, as before ----------------------------------------------------------------------------------------


def test_joblib_is_the_default_and_records_its_format(tmp_path: Path) -> None:
    bundle = pipeline_bundle()
    bundle.save(tmp_path)
    meta = read_meta(tmp_path)
    assert (meta["model_format"], meta["model_file"]) == ("joblib", "model.joblib")
    assert "trusted_types" not in meta  # a pickle trusts whatever it names: there is no list to keep
    loaded = load_bundle(tmp_path)
    assert (loaded.model_format, loaded.trusted_types) == ("joblib", ())
    assert_same_predictions(loaded.estimator, bundle.estimator)


def test_a_bundle_from_before_the_format_field_loads_as_joblib(tmp_path: Path) -> None:
    bundle = pipeline_bundle()
    bundle.save(tmp_path)
    meta = read_meta(tmp_path)
    del meta["model_format"], meta["model_file"]
    write_meta(tmp_path, meta)
    loaded = load_bundle(tmp_path)
    assert loaded.model_format == "joblib"
    assert_same_predictions(loaded.estimator, bundle.estimator)


# --- CLI ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["skops", None])
def test_cli_bundle_format(tmp_path: Path, capsys: pytest.CaptureFixture[str], fmt: str | None) -> None:
    data = training().assign(amount=lambda d: 2.0 * d.x1 - d.x2)[[*FEATURES, "amount"]]
    data.to_csv(tmp_path / "train.csv", index=False)
    joblib.dump(LinearRegression().fit(data[FEATURES], data["amount"]), tmp_path / "model.joblib")
    argv = ["bundle", str(tmp_path / "model.joblib"), "--training-data", str(tmp_path / "train.csv")]
    argv += ["--label", "amount", "--name", "spend", "--version", "3", "--out", str(tmp_path / "bundle")]
    assert main([*argv, "--format", fmt] if fmt else argv) == 0
    expected = fmt or "joblib"
    out = capsys.readouterr().out
    assert f"(regression, {expected}) written to" in out
    assert read_meta(tmp_path / "bundle")["model_format"] == expected
    assert load_bundle(tmp_path / "bundle").model_format == expected
    if fmt == "skops":
        assert "recorded as trusted: none" in out


def test_a_skops_bundle_from_another_scikit_learn_version_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bundle = pipeline_bundle()
    # BaseEstimator.__getstate__ stamps the version into the state; skops hands it back to __setstate__
    with monkeypatch.context() as patch:
        patch.setattr(sklearn.base, "__version__", "0.0.1")
        bundle.save(tmp_path, format="skops")
    write_meta(tmp_path, {**read_meta(tmp_path), "sklearn_version": "0.0.1"})
    with pytest.raises(BundleError, match=r"made with scikit-learn 0\.0\.1.*install scikit-learn==0\.0\.1"):
        load_bundle(tmp_path)


def test_an_unreadable_skops_file_is_a_bundle_error(tmp_path: Path) -> None:
    pipeline_bundle().save(tmp_path, format="skops")
    (tmp_path / "model.skops").write_bytes(b"not a zip")
    write_meta(tmp_path, {**read_meta(tmp_path), "model_sha256": hashlib.sha256(b"not a zip").hexdigest()})
    with pytest.raises(BundleError, match="is not a readable skops file"):
        load_bundle(tmp_path)
