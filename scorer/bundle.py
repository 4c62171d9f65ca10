"""Model bundles: a fitted scikit-learn estimator plus everything needed to trust and feed it.

A bundle is a directory::

    model.joblib    the estimator (a pickle: load only bundles from a trusted source)
    bundle.json     name, version, task, classes, positive class, training schema, label type,
                    scikit-learn and joblib versions, SHA-256 of model.joblib, creation time

``load_bundle`` checks the hash *before* unpickling, turns scikit-learn's ``InconsistentVersionWarning``
into a refusal, and checks the estimator's ``feature_names_in_`` against the schema, so a mismatch is a
clear start-up error rather than wrong scores.

May import: errors, schema. Third-party: joblib, scikit-learn, numpy, pandas.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import joblib
import numpy as np
import pandas as pd
import sklearn
from sklearn.base import is_classifier, is_regressor
from sklearn.exceptions import InconsistentVersionWarning

from scorer.errors import BundleError, SchemaError
from scorer.schema import Task, TrainingSchema

__all__ = ["ModelBundle", "build_bundle", "load_bundle", "read_table"]

MODEL_FILE = "model.joblib"
META_FILE = "bundle.json"
ProbabilitySource = Literal["predict_proba", "decision_function", "none"]


@dataclass(frozen=True)
class ModelBundle:
    """A loaded, verified model with its contract. ``estimator`` is ``None`` until loaded."""

    name: str
    version: str
    task: Task
    schema: TrainingSchema
    classes: tuple[Any, ...] | None
    positive_class: Any | None
    probability_source: ProbabilitySource
    label_from_proba: bool
    sklearn_version: str
    joblib_version: str
    model_sha256: str
    created_at: str
    estimator: Any = None

    def metadata(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "task": self.task,
            "schema": self.schema.to_json(),
            "classes": None if self.classes is None else [_plain(c) for c in self.classes],
            "positive_class": _plain(self.positive_class),
            "probability_source": self.probability_source,
            "label_from_proba": self.label_from_proba,
            "sklearn_version": self.sklearn_version,
            "joblib_version": self.joblib_version,
            "model_sha256": self.model_sha256,
            "created_at": self.created_at,
        }

    def save(self, directory: Path) -> Path:
        """Write ``model.joblib`` and ``bundle.json``; the hash is of the file as written."""
        directory.mkdir(parents=True, exist_ok=True)
        model_path = directory / MODEL_FILE
        joblib.dump(self.estimator, model_path)
        saved = replace(self, model_sha256=_sha256(model_path))
        (directory / META_FILE).write_text(json.dumps(saved.metadata(), indent=2) + "\n")
        return directory


def read_table(path: Path) -> pd.DataFrame:
    """Read a CSV or Parquet file by its extension."""
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return pd.read_csv(path)
    if suffix in {".parquet", ".pq"}:
        return pd.read_parquet(path)
    raise BundleError(f"{path}: unsupported file type {suffix!r}; use .csv or .parquet")


def build_bundle(
    estimator: Any,
    training_data: pd.DataFrame,
    label: str,
    name: str,
    version: str,
    task: Task | None = None,
    positive_class: Any | None = None,
) -> ModelBundle:
    """Describe a fitted estimator and its training data as a bundle (not yet saved).

    The task is inferred from the estimator and the label (two classes: binary), unless given.
    """
    try:
        schema = TrainingSchema.from_frame(training_data, label=label)
    except SchemaError as exc:
        raise BundleError(f"training data: {exc}") from exc
    task = task or _infer_task(estimator)
    classes = tuple(_plain(c) for c in getattr(estimator, "classes_", ())) or None
    if task != "regression":
        if classes is None:
            raise BundleError(f"task {task!r} needs a classifier with classes_; got {type(estimator).__name__}")
        if task == "binary" and len(classes) != 2:
            raise BundleError(f"task 'binary' needs two classes, the model has {len(classes)}: {classes}")
        if task == "multiclass" and len(classes) < 2:
            raise BundleError("a classifier needs at least two classes")
        positive_class = classes[-1] if positive_class is None else positive_class
        if positive_class not in classes:  # from the command line it is text: "1" names the class 1
            positive_class = next((c for c in classes if str(c) == str(positive_class)), positive_class)
        if task == "binary" and positive_class not in classes:
            raise BundleError(f"positive class {positive_class!r} is not one of the model's classes {classes}")
    if task == "regression":
        schema = replace(schema, label_type="double")
        classes, positive_class = None, None
    _check_feature_names(estimator, schema)
    features = training_data[schema.feature_names]
    source = _probability_source(estimator) if task != "regression" else "none"
    return ModelBundle(
        name=name,
        version=version,
        task=task,
        schema=schema,
        classes=classes,
        positive_class=positive_class if task == "binary" else None,
        probability_source=source,
        label_from_proba=task != "regression" and _label_is_argmax(estimator, features, source),
        sklearn_version=sklearn.__version__,
        joblib_version=joblib.__version__,
        model_sha256="",
        created_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        estimator=estimator,
    )


def load_bundle(directory: Path, expected_sha256: str | None = None) -> ModelBundle:
    """Load and verify a bundle: hash before unpickling, scikit-learn version, feature names."""
    meta_path, model_path = directory / META_FILE, directory / MODEL_FILE
    if not meta_path.is_file() or not model_path.is_file():
        raise BundleError(f"{directory} is not a model bundle: it needs {META_FILE} and {MODEL_FILE}")
    meta = json.loads(meta_path.read_text())
    actual = _sha256(model_path)
    if actual != meta["model_sha256"]:
        raise BundleError(
            f"{model_path} has SHA-256 {actual}, but {META_FILE} records {meta['model_sha256']}: "
            "the model file was changed or replaced; rebuild the bundle from a trusted model"
        )
    if expected_sha256 and actual != expected_sha256:
        raise BundleError(f"{model_path} has SHA-256 {actual}, not the pinned {expected_sha256}")
    with warnings.catch_warnings():
        warnings.simplefilter("error", InconsistentVersionWarning)
        try:
            estimator = joblib.load(model_path)
        except InconsistentVersionWarning as exc:
            raise BundleError(
                f"the bundle was made with scikit-learn {meta['sklearn_version']}, this is "
                f"{sklearn.__version__}: install scikit-learn=={meta['sklearn_version']} or rebuild the "
                f"bundle with this version ({exc})"
            ) from exc
    schema = TrainingSchema.from_json(meta["schema"])
    _check_feature_names(estimator, schema)
    return ModelBundle(
        name=meta["name"],
        version=meta["version"],
        task=meta["task"],
        schema=schema,
        classes=tuple(meta["classes"]) if meta["classes"] is not None else None,
        positive_class=meta["positive_class"],
        probability_source=meta["probability_source"],
        label_from_proba=meta["label_from_proba"],
        sklearn_version=meta["sklearn_version"],
        joblib_version=meta["joblib_version"],
        model_sha256=actual,
        created_at=meta["created_at"],
        estimator=estimator,
    )


def _infer_task(estimator: Any) -> Task:
    if is_classifier(estimator):
        return "binary" if len(getattr(estimator, "classes_", ())) == 2 else "multiclass"
    if is_regressor(estimator):
        return "regression"
    raise BundleError(f"{type(estimator).__name__} is neither a classifier nor a regressor: pass task=")


def _probability_source(estimator: Any) -> ProbabilitySource:
    if hasattr(estimator, "predict_proba"):
        return "predict_proba"
    if hasattr(estimator, "decision_function"):
        return "decision_function"
    return "none"


def _label_is_argmax(estimator: Any, features: pd.DataFrame, source: ProbabilitySource) -> bool:
    """Whether ``predict`` equals the most probable class on the training rows.

    When it does (most classifiers), scoring makes one probability call per batch instead of two.
    Measured once here, not assumed: SVC(probability=True), for one, disagrees.
    """
    if source != "predict_proba":
        return False
    sample = features.iloc[:5000]
    labels = estimator.predict(sample)
    argmax = np.asarray(estimator.classes_)[np.argmax(estimator.predict_proba(sample), axis=1)]
    return bool(np.array_equal(labels, argmax))


def _check_feature_names(estimator: Any, schema: TrainingSchema) -> None:
    names = getattr(estimator, "feature_names_in_", None)
    if names is None:
        return
    if list(names) != schema.feature_names:
        raise BundleError(
            f"the estimator was fitted on features {list(names)} but the training schema lists "
            f"{schema.feature_names}: build the bundle from the same data the model was fitted on"
        )


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _plain(value: Any) -> Any:
    """numpy scalars to Python ones, so that classes survive JSON."""
    return value.item() if isinstance(value, np.generic) else value
