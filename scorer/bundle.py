"""Model bundles: a fitted scikit-learn estimator plus everything needed to trust and feed it.

A bundle is a directory::

    model.joblib    the estimator as a pickle (format "joblib", the default), or
    model.skops     the estimator in skops' format (format "skops")
    bundle.json     name, version, task, classes, positive class, training schema, label type,
                    model format and file, scikit-learn and joblib (and skops) versions, SHA-256 of the
                    model file, creation time; for skops, the types the author vouches for
                    (``trusted_types``)

Two formats because they trust differently. A pickle runs whatever code it names while it is loaded, so a
joblib bundle is only as safe as its source: the hash proves the file is the one its ``bundle.json``
describes, nothing more. A skops file is a zip of JSON and arrays that names the types to rebuild, and
``skops.io.get_untrusted_types`` lists those outside skops' defaults *without importing or constructing
anything*; so ``load_bundle`` refuses a skops model that needs a type vouched for neither by the bundle's
author (recorded at build time) nor by the operator (``trusted_types=``), before any of its code runs.

``load_bundle`` checks the hash *before* loading, turns scikit-learn's ``InconsistentVersionWarning``
into a refusal, and checks the estimator's ``feature_names_in_`` against the schema, so a mismatch is a
clear start-up error rather than wrong scores. Bundles written before the skops format have no
``model_format`` and are joblib.

May import: errors, schema. Third-party: joblib, scikit-learn, numpy, pandas, skops (lazily: importing
``skops.io`` takes about a second, which joblib bundles should not pay).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import warnings
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from types import ModuleType
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

META_FILE = "bundle.json"
ModelFormat = Literal["joblib", "skops"]
MODEL_FILES: dict[ModelFormat, str] = {"joblib": "model.joblib", "skops": "model.skops"}
ProbabilitySource = Literal["predict_proba", "decision_function", "none"]


@dataclass(frozen=True)
class ModelBundle:
    """A loaded, verified model with its contract. ``estimator`` is ``None`` until loaded.

    ``trusted_types`` and ``skops_version`` are only set for the skops format, once saved or loaded.
    """

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
    model_format: ModelFormat = "joblib"
    trusted_types: tuple[str, ...] = ()
    skops_version: str | None = None

    def metadata(self) -> dict[str, Any]:
        meta: dict[str, Any] = {
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
            "model_format": self.model_format,
            "model_file": MODEL_FILES[self.model_format],
            "model_sha256": self.model_sha256,
            "created_at": self.created_at,
        }
        if self.model_format == "skops":
            meta["skops_version"] = self.skops_version
            meta["trusted_types"] = list(self.trusted_types)
        return meta

    def save(self, directory: Path, format: ModelFormat | None = None) -> Path:
        """Write the model file and ``bundle.json``; the hash is of the file as written.

        ``format`` is ``"joblib"`` (a pickle) or ``"skops"``; by default the bundle's own, which is joblib
        for a bundle fresh from ``build_bundle``. For skops, the types the file needs beyond skops' defaults
        are recorded as ``trusted_types``: saving a bundle is its author vouching for them, and loading
        it refuses any type not recorded (or allowed by the operator).
        """
        model_format = format or self.model_format
        if model_format not in MODEL_FILES:
            raise BundleError(f"unknown model format {model_format!r}; use one of {sorted(MODEL_FILES)}")
        directory.mkdir(parents=True, exist_ok=True)
        model_path = directory / MODEL_FILES[model_format]
        trusted: tuple[str, ...] = ()
        skops_version = None
        if model_format == "skops":
            skops_io = _skops_io()
            skops_io.dump(self.estimator, model_path)
            # computed from the file as written, exactly as load_bundle will compute it
            trusted = tuple(skops_io.get_untrusted_types(file=model_path))
            skops_version = _skops_version()
        else:
            joblib.dump(self.estimator, model_path)
        saved = replace(
            self,
            model_format=model_format,
            trusted_types=trusted,
            skops_version=skops_version,
            model_sha256=_sha256(model_path),
        )
        (directory / META_FILE).write_text(json.dumps(saved.metadata(), indent=2) + "\n")
        for name in MODEL_FILES.values():
            if name != model_path.name:
                # a model of the other format left from an earlier save is unverified, and may be a pickle
                (directory / name).unlink(missing_ok=True)
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
        if classes is not None and not all(isinstance(c, int | float) for c in classes):
            # scoring turns each prediction into a double: "yes" would dead-letter every record
            raise BundleError(
                f"task 'regression' needs a model that predicts numbers; this one predicts the classes {classes}: "
                "use task 'binary' or 'multiclass'"
            )
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


def load_bundle(directory: Path, expected_sha256: str | None = None, trusted_types: Sequence[str] = ()) -> ModelBundle:
    """Load and verify a bundle: hash before loading, then (skops) types, scikit-learn version, feature names.

    ``expected_sha256`` pins the model file, for an operator who knows which model they mean to run.
    ``trusted_types`` (skops only) are fully qualified type names, as ``get_untrusted_types`` reports
    them, that the operator allows on top of those the bundle's author recorded.
    """
    if isinstance(trusted_types, str):  # a str is a Sequence[str] of characters: surely a mistake
        raise TypeError("trusted_types must be a sequence of type names, not one string")
    meta_path = directory / META_FILE
    if not meta_path.is_file():
        raise BundleError(
            f"{directory} is not a model bundle: it needs {META_FILE} and "
            f"{MODEL_FILES['joblib']} or {MODEL_FILES['skops']}"
        )
    meta = json.loads(meta_path.read_text())
    model_format = meta.get("model_format", "joblib")  # bundles made before skops have no model_format
    if model_format not in MODEL_FILES:
        raise BundleError(
            f"{meta_path}: unknown model_format {model_format!r}; this scorer reads {sorted(MODEL_FILES)}"
        )
    model_path = directory / MODEL_FILES[model_format]
    # the file name follows from the format; a bundle.json that points elsewhere is not followed
    if meta.get("model_file", model_path.name) != model_path.name:
        raise BundleError(
            f"{meta_path}: a {model_format} bundle's model_file is {model_path.name}, not {meta['model_file']!r}"
        )
    if not model_path.is_file():
        raise BundleError(f"{directory} is not a model bundle: it needs {META_FILE} and {model_path.name}")
    data: bytes | None = None
    if model_format == "skops":
        # read once, so that the bytes that are hashed and checked are the bytes that are loaded
        data = model_path.read_bytes()
        actual = hashlib.sha256(data).hexdigest()
    else:
        actual = _sha256(model_path)
    if actual != meta["model_sha256"]:
        raise BundleError(
            f"{model_path} has SHA-256 {actual}, but {META_FILE} records {meta['model_sha256']}: "
            "the model file was changed or replaced; rebuild the bundle from a trusted model"
        )
    if expected_sha256 and actual != expected_sha256:
        raise BundleError(f"{model_path} has SHA-256 {actual}, not the pinned {expected_sha256}")
    recorded: tuple[str, ...] = ()
    if model_format == "skops":
        recorded = _recorded_trusted_types(meta, meta_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error", InconsistentVersionWarning)
        try:
            if data is not None:
                estimator = _load_skops(data, model_path, recorded, tuple(trusted_types))
            else:
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
        model_format=model_format,
        trusted_types=recorded,
        skops_version=meta.get("skops_version") if model_format == "skops" else None,
    )


def _recorded_trusted_types(meta: dict[str, Any], meta_path: Path) -> tuple[str, ...]:
    recorded = meta.get("trusted_types", [])
    if not isinstance(recorded, list) or not all(isinstance(name, str) for name in recorded):
        raise BundleError(f"{meta_path}: trusted_types must be a list of type names, got {recorded!r}")
    return tuple(recorded)


def _load_skops(data: bytes, model_path: Path, recorded: tuple[str, ...], allowed: tuple[str, ...]) -> Any:
    """Load a skops model only if every type it needs beyond skops' defaults is recorded or allowed.

    ``get_untrusted_types`` reads the file's schema without importing a module or constructing an object,
    so a refusal here comes before any code of the model runs. ``skops.io.loads`` audits the same again
    with the same list; ``trusted=True`` (trust everything) is never passed.
    """
    skops_io = _skops_io()
    try:
        needed = skops_io.get_untrusted_types(data=data)
    except (zipfile.BadZipFile, KeyError, ValueError) as exc:
        raise BundleError(f"{model_path} is not a readable skops file: {exc}") from exc
    refused = sorted(set(needed) - set(recorded) - set(allowed))
    if refused:
        raise BundleError(
            f"{model_path} needs types that neither the bundle's author nor the operator trusts: "
            f"{', '.join(refused)}. Loading constructs them, and so runs their code: review them, and if you "
            "trust them, pass them to load_bundle(trusted_types=[...]), or rebuild the bundle (saving it "
            "records the types its author vouches for)"
        )
    try:
        return skops_io.loads(data, trusted=[*recorded, *allowed])
    except ImportError as exc:
        raise BundleError(f"{model_path} needs {exc.name or exc}, which cannot be imported here: {exc}") from exc


def _skops_io() -> ModuleType:
    """``skops.io``, imported on first use: it imports every scikit-learn estimator (about a second)."""
    import skops.io  # noqa: PLC0415

    return skops.io


def _skops_version() -> str:
    import skops  # noqa: PLC0415

    return str(skops.__version__)


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
