"""In-memory cost per stage, in microseconds per record, on the same pre-encoded records for every approach.

No Kafka here: each approach's own stage functions are called on framed Avro values in memory.

- naive: the contender's per-message functions, one record at a time;
- batched: the contender's per-batch functions on batches of 1,000;
- scorer: ``FeatureDecoder.decode``, ``Scorer.score`` and ``PredictionEncoder.encode`` (``encode_scores``
  where it exists) on batches of scorer's default max batch size (``DEFAULT_MAX_BATCH_SIZE``), with a dict-backed schema lookup. ``Scorer.score`` builds the frame,
  validates it, calls the model and builds the prediction records; the model call is timed inside it
  through a thin proxy around the estimator, so "frame" for scorer is score minus predict.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import fastavro
import numpy as np

from bench.contenders import batched, common, naive
from scorer.bundle import load_bundle
from scorer.codec import FeatureDecoder, PredictionEncoder
from scorer.config import DEFAULT_MAX_BATCH_SIZE
from scorer.schema import prediction_schema
from scorer.scoring import Scorer

STAGES = ("decode", "frame", "predict", "encode")
PREDICTION_ID = 99  # any id: the bytes are only measured, never read back


class _TimedEstimator:
    """Delegates to the estimator, adding up the seconds spent in ``predict_proba``/``predict``."""

    def __init__(self, estimator: Any) -> None:
        self._estimator = estimator
        self.seconds = 0.0

    def predict_proba(self, features: Any) -> Any:
        started = time.perf_counter()
        try:
            return self._estimator.predict_proba(features)
        finally:
            self.seconds += time.perf_counter() - started

    def predict(self, features: Any) -> Any:
        started = time.perf_counter()
        try:
            return self._estimator.predict(features)
        finally:
            self.seconds += time.perf_counter() - started

    def __getattr__(self, name: str) -> Any:
        return getattr(self._estimator, name)


def _per_record(totals: dict[str, float], n: int) -> dict[str, float]:
    return {stage: seconds / n * 1e6 for stage, seconds in totals.items()}


def profile_naive(
    values: list[bytes], bundle_dir: Path, schema_text: str, max_seconds: float = 10.0
) -> dict[str, float]:
    """Per record, over ``values`` or as many of them as fit in ``max_seconds`` (at least 20)."""
    model, name, version, features = common.load_model(bundle_dir)
    classes = model.classes_
    writer = fastavro.parse_schema(json.loads(schema_text))
    output = fastavro.parse_schema(common.prediction_schema(common.label_type(classes)))
    prefix = naive.HEADER.pack(0, PREDICTION_ID)
    totals = dict.fromkeys(STAGES, 0.0)
    clock = time.perf_counter
    naive.predict(model, naive.to_frame(naive.decode(values[0], writer), features))  # warm-up
    deadline = clock() + max_seconds
    done = 0
    for value in values:
        if done >= 20 and clock() > deadline:
            break
        done += 1
        t0 = clock()
        record = naive.decode(value, writer)
        t1 = clock()
        frame = naive.to_frame(record, features)
        t2 = clock()
        probabilities = naive.predict(model, frame)
        t3 = clock()
        naive.encode(prefix, output, record["id"], probabilities, classes, name, version)
        t4 = clock()
        totals["decode"] += t1 - t0
        totals["frame"] += t2 - t1
        totals["predict"] += t3 - t2
        totals["encode"] += t4 - t3
    return _per_record(totals, done)


def _batches(values: list[bytes], size: int) -> list[list[bytes]]:
    return [values[i : i + size] for i in range(0, len(values), size)]


def profile_batched(values: list[bytes], bundle_dir: Path, schema_text: str, batch: int = 1000) -> dict[str, float]:
    model, name, version, features = common.load_model(bundle_dir)
    classes = model.classes_
    writer = fastavro.parse_schema(json.loads(schema_text))
    output = fastavro.parse_schema(common.prediction_schema(common.label_type(classes)))
    prefix = batched.HEADER.pack(0, PREDICTION_ID)

    def writer_for(_schema_id: int) -> Any:
        return writer

    totals = dict.fromkeys(STAGES, 0.0)
    clock = time.perf_counter
    batched.predict(model, batched.to_frame(batched.decode(values[:10], writer_for), features))  # warm-up
    for chunk in _batches(values, batch):
        t0 = clock()
        records = batched.decode(chunk, writer_for)
        t1 = clock()
        frame = batched.to_frame(records, features)
        t2 = clock()
        probabilities = batched.predict(model, frame)
        t3 = clock()
        batched.encode(prefix, output, [r["id"] for r in records], probabilities, classes, name, version)
        t4 = clock()
        totals["decode"] += t1 - t0
        totals["frame"] += t2 - t1
        totals["predict"] += t3 - t2
        totals["encode"] += t4 - t3
    return _per_record(totals, len(values))


def _scorer_steps(decoder: Any, scorer: Any, encoder: Any) -> tuple[Callable, Callable, Callable]:
    """decode, score and encode as ``ScoringPipeline._process`` chains them, for either codec API.

    The codec's batch result was a list of records (``records``/``indices``) and is becoming one frame
    (``frame``) with a column encoder (``encode_scores``); the benchmark follows whichever is installed.
    """

    def score(decoded: Any) -> Any:
        if hasattr(decoded, "frame"):
            return scorer.score(decoded.frame)
        return scorer.score(decoded.records, decoded.indices)

    def encode(result: Any) -> list[bytes]:
        if hasattr(encoder, "encode_scores"):
            return encoder.encode_scores(result)
        return encoder.encode(result.predictions)

    return decoder.decode, score, encode


def profile_scorer(
    values: list[bytes], bundle_dir: Path, schema_text: str, schema_id: int, batch: int = DEFAULT_MAX_BATCH_SIZE
) -> dict[str, float]:
    bundle = load_bundle(bundle_dir)
    timed = _TimedEstimator(bundle.estimator)
    bundle = dataclasses.replace(bundle, estimator=timed)
    texts = {schema_id: schema_text}
    decode, score, encode = _scorer_steps(
        FeatureDecoder(bundle.schema, "id", lambda sid: texts[sid]),
        Scorer(bundle),
        PredictionEncoder(prediction_schema(bundle.schema, bundle.schema.label_type), PREDICTION_ID),
    )
    encode(score(decode(values[:10])))  # warm-up: the schema check and reader parse happen once per id
    timed.seconds = 0.0
    totals = dict.fromkeys(STAGES, 0.0)
    clock = time.perf_counter
    rejected = 0
    for chunk in _batches(values, batch):
        t0 = clock()
        decoded = decode(chunk)
        t1 = clock()
        result = score(decoded)
        t2 = clock()
        encode(result)
        t3 = clock()
        rejected += len(decoded.rejections) + len(result.rejections)
        totals["decode"] += t1 - t0
        totals["frame"] += t2 - t1
        totals["encode"] += t3 - t2
    if rejected:
        raise RuntimeError(f"scorer rejected {rejected} of the benchmark records: the workload is wrong")
    totals["predict"] = timed.seconds
    totals["frame"] -= timed.seconds
    return _per_record(totals, len(values))


def profile_all(
    values: list[bytes],
    bundles: dict[str, Path],
    schema_text: str,
    schema_id: int,
    records: int,
    naive_records: int,
    repeats: int = 3,
    log: Callable[[str], None] = print,
) -> dict[str, dict[str, dict[str, float]]]:
    """``{approach: {model: {stage: us/record}}}``: the minimum of ``repeats`` passes per stage."""
    result: dict[str, dict[str, dict[str, float]]] = {"naive": {}, "batched": {}, "scorer": {}}
    sample, small = values[:records], values[:naive_records]
    for model, bundle_dir in bundles.items():
        runs: dict[str, list[dict[str, float]]] = {"naive": [], "batched": [], "scorer": []}
        for _ in range(repeats):
            runs["batched"].append(profile_batched(sample, bundle_dir, schema_text))
            runs["scorer"].append(profile_scorer(sample, bundle_dir, schema_text, schema_id))
            runs["naive"].append(profile_naive(small, bundle_dir, schema_text))
        for approach, passes in runs.items():
            result[approach][model] = {stage: float(np.min([p[stage] for p in passes])) for stage in STAGES}
            log(
                f"  stages {approach:<8} {model:<6} "
                + ", ".join(f"{k} {v:.1f}" for k, v in result[approach][model].items())
            )
    return result
