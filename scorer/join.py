"""Join prediction records with late-arriving true labels by record id, in bounded memory.

Pure core (standard library only): no Kafka, no clock, no
threads. The sidecar owns the loop and passes processing time in as ``now_ms``; this module decides what
joins, what waits and what is dropped, and *counts* every drop so the service can export it.

Why hand-written: a stream-stream join with a TTL is what a stream processor would give us, but we only
need one keyed buffer per side with at-least-once dedup. Two ``OrderedDict``\\ s (insertion order is
arrival order, so the oldest entry is always at the front) give O(1) amortised expiry and eviction without
a framework.

Memory: with the default ``max_pending`` of a million, pending predictions are most of the sidecar's
memory, so each is kept as one flat tuple (see :meth:`LabelJoiner._pack`), not as the
:class:`PredictionFacts` with its own probability dict that came in: about half the bytes. A joined row
carries an equal, rebuilt :class:`PredictionFacts`.

Rules:

- Whichever side arrives first waits for the other, for at most ``ttl_ms`` of processing time and in a
  buffer of at most ``max_pending`` entries per side (the oldest is evicted when full).
- Upstream is at-least-once. A second prediction for an id that is pending or already joined is a
  duplicate and never joins twice. The first label for an id wins; a later identical label is a
  duplicate, a later different one is a conflict.
- Joined ids are remembered (the last ``max_remembered`` of them) for that dedup; an id that expired or was
  evicted is forgotten, so a redelivery after that counts as a new arrival.

Every arrival ends in exactly one bucket, which gives the invariants the tests check::

    predictions_seen == joined + expired_predictions + evicted_predictions + duplicate_predictions
                        + pending_predictions
    labels_seen == joined + expired_labels + evicted_labels + duplicate_labels + conflicting_labels
                   + pending_labels
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

__all__ = ["JoinCounts", "JoinedRow", "LabelJoiner", "PredictionFacts"]


@dataclass(frozen=True, slots=True)
class PredictionFacts:
    """What the sidecar knows of one prediction record.

    Attributes:
        id: The record id shared by the prediction and its label.
        model_name: Name of the model that scored the record.
        model_version: Version of that model.
        scored_label: The predicted label: str/int/bool for classifiers, float for regression.
        scored_probability: Probability of the positive class for binary classifiers, else ``None``.
        scored_probabilities: Class (as ``str``) to probability for classifiers, ``None`` for regression.
    """

    id: str
    model_name: str
    model_version: str
    scored_label: object
    scored_probability: float | None
    scored_probabilities: dict[str, float] | None


@dataclass(frozen=True, slots=True)
class JoinedRow:
    """A prediction together with its true label; ``event_time_ms`` is the label's event time."""

    prediction: PredictionFacts
    label: object
    event_time_ms: int


@dataclass(frozen=True, slots=True)
class JoinCounts:
    """Counters of a :class:`LabelJoiner` (monotonic) plus the two current buffer sizes (gauges)."""

    predictions_seen: int = 0
    labels_seen: int = 0
    joined: int = 0
    expired_predictions: int = 0
    expired_labels: int = 0
    evicted_predictions: int = 0
    evicted_labels: int = 0
    duplicate_predictions: int = 0
    duplicate_labels: int = 0
    conflicting_labels: int = 0
    pending_predictions: int = 0
    pending_labels: int = 0


_MAX_SHARED = 4096  # most distinct names, labels and class sets a LabelJoiner shares between pending entries


def _unpack(id: str, packed: tuple[Any, ...]) -> PredictionFacts:
    """The :class:`PredictionFacts` that :meth:`LabelJoiner._pack` packed (equal, not the same object)."""
    _arrival_ms, model_name, model_version, scored_label, scored_probability, classes = packed[:6]
    probabilities = None if classes is None else dict(zip(classes, packed[6:], strict=True))
    return PredictionFacts(id, model_name, model_version, scored_label, scored_probability, probabilities)


def _same_label(a: object, b: object) -> bool:
    """Label equality where NaN equals NaN, so a redelivered NaN label is a duplicate, not a conflict."""
    if a == b:
        return True
    return isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b)


class LabelJoiner:
    """Buffer both sides of the prediction/label join and emit a :class:`JoinedRow` when an id completes.

    ``now_ms`` is processing time and must not go backwards; a smaller value is treated as the largest one
    seen so far, which keeps the buffers in arrival order. Every call first expires entries older than
    ``ttl_ms``, so a late partner never joins an expired entry even if :meth:`expire` was not called.

    Args:
        ttl_ms: How long an unmatched prediction or label waits for its partner.
        max_pending: Most unmatched entries kept per side; the oldest is evicted beyond that.
        max_remembered: Most joined ids remembered for deduplication; the oldest is forgotten beyond that.

    Raises:
        ValueError: If ``ttl_ms`` or ``max_pending`` is not positive, or ``max_remembered`` is negative.

    Example:
        >>> j = LabelJoiner(ttl_ms=60_000, max_pending=100)
        >>> p = PredictionFacts("r1", "churn", "3", "yes", 0.9, {"no": 0.1, "yes": 0.9})
        >>> j.add_label("r1", "yes", event_time_ms=1_000, now_ms=5_000) is None
        True
        >>> j.add_prediction(p, now_ms=6_000).label
        'yes'
        >>> j.add_prediction(p, now_ms=7_000) is None  # redelivered: counted, not joined again
        True
        >>> c = j.counts
        >>> (c.joined, c.duplicate_predictions, c.pending_labels)
        (1, 1, 0)
    """

    def __init__(self, ttl_ms: int, max_pending: int, max_remembered: int = 100_000) -> None:
        if ttl_ms <= 0:
            raise ValueError(f"ttl_ms must be positive, got {ttl_ms}")
        if max_pending <= 0:
            raise ValueError(f"max_pending must be positive, got {max_pending}")
        if max_remembered < 0:
            raise ValueError(f"max_remembered must not be negative, got {max_remembered}")
        self._ttl_ms = ttl_ms
        self._max_pending = max_pending
        self._max_remembered = max_remembered
        self._now_ms: int | None = None
        # id -> packed prediction (arrival_ms first) and id -> (label, event_time_ms, arrival_ms), oldest first.
        self._predictions: OrderedDict[str, tuple[Any, ...]] = OrderedDict()
        self._labels: OrderedDict[str, tuple[object, int, int]] = OrderedDict()
        self._shared: dict[Any, Any] = {}  # see _pack
        self._joined: OrderedDict[str, object] = OrderedDict()  # id -> label that won
        self._predictions_seen = 0
        self._labels_seen = 0
        self._joined_count = 0
        self._expired_predictions = 0
        self._expired_labels = 0
        self._evicted_predictions = 0
        self._evicted_labels = 0
        self._duplicate_predictions = 0
        self._duplicate_labels = 0
        self._conflicting_labels = 0

    def add_prediction(self, p: PredictionFacts, now_ms: int) -> JoinedRow | None:
        """Record a prediction; return the joined row if its label is already waiting.

        Args:
            p: The prediction.
            now_ms: Processing time of this arrival.

        Returns:
            The :class:`JoinedRow`, or ``None`` if the prediction now waits or was a duplicate.
        """
        now = self._advance(now_ms)
        self._predictions_seen += 1
        if p.id in self._joined or p.id in self._predictions:
            self._duplicate_predictions += 1
            return None
        waiting = self._labels.pop(p.id, None)
        if waiting is not None:
            label, event_time_ms, _ = waiting
            return self._join(p, label, event_time_ms)
        if len(self._predictions) >= self._max_pending:
            self._predictions.popitem(last=False)
            self._evicted_predictions += 1
        self._predictions[p.id] = self._pack(p, now)
        return None

    def add_label(self, id: str, label: object, event_time_ms: int, now_ms: int) -> JoinedRow | None:
        """Record a true label; return the joined row if its prediction is already waiting.

        Args:
            id: The record id.
            label: The true label.
            event_time_ms: When the label became true (event time); carried into the joined row.
            now_ms: Processing time of this arrival.

        Returns:
            The :class:`JoinedRow`, or ``None`` if the label now waits or was a duplicate or conflict.
        """
        now = self._advance(now_ms)
        self._labels_seen += 1
        if id in self._joined:
            self._count_repeat_label(self._joined[id], label)
            return None
        pending = self._labels.get(id)
        if pending is not None:
            self._count_repeat_label(pending[0], label)
            return None
        waiting = self._predictions.pop(id, None)
        if waiting is not None:
            return self._join(_unpack(id, waiting), label, event_time_ms)
        if len(self._labels) >= self._max_pending:
            self._labels.popitem(last=False)
            self._evicted_labels += 1
        self._labels[id] = (label, event_time_ms, now)
        return None

    def expire(self, now_ms: int) -> None:
        """Drop (and count) unmatched entries that have waited longer than ``ttl_ms``."""
        self._advance(now_ms)

    @property
    def counts(self) -> JoinCounts:
        """A snapshot of the counters and buffer sizes."""
        return JoinCounts(
            predictions_seen=self._predictions_seen,
            labels_seen=self._labels_seen,
            joined=self._joined_count,
            expired_predictions=self._expired_predictions,
            expired_labels=self._expired_labels,
            evicted_predictions=self._evicted_predictions,
            evicted_labels=self._evicted_labels,
            duplicate_predictions=self._duplicate_predictions,
            duplicate_labels=self._duplicate_labels,
            conflicting_labels=self._conflicting_labels,
            pending_predictions=len(self._predictions),
            pending_labels=len(self._labels),
        )

    def _pack(self, p: PredictionFacts, now_ms: int) -> tuple[Any, ...]:
        """``(arrival_ms, model_name, model_version, scored_label, scored_probability, classes, *probabilities)``.

        ``classes`` is ``None`` when there is no probability map, else the map's keys as a tuple. A 2-class
        prediction then takes a 104-byte tuple, where the :class:`PredictionFacts`, its dict and an
        ``(facts, arrival)`` pair took 320 bytes.

        Decoded records each carry their own copies of the few distinct model names, versions, class
        labels and sets of classes; an entry keeps one shared copy of each (about 50 bytes a string). The
        table of shared values stops growing at ``_MAX_SHARED``, so a stream of distinct labels cannot
        grow it without bound.
        """
        share = self._shared.setdefault if len(self._shared) < _MAX_SHARED else self._shared.get
        label = p.scored_label
        if type(label) is str:
            label = share(label, label)
        name, version = share(p.model_name, p.model_name), share(p.model_version, p.model_version)
        probabilities = p.scored_probabilities
        if probabilities is None:
            return (now_ms, name, version, label, p.scored_probability, None)
        classes = tuple(probabilities)
        return (now_ms, name, version, label, p.scored_probability, share(classes, classes), *probabilities.values())

    def _advance(self, now_ms: int) -> int:
        if self._now_ms is not None and now_ms <= self._now_ms:
            return self._now_ms  # the clock has not moved, so nothing new can have expired
        now = self._now_ms = now_ms
        deadline = now - self._ttl_ms
        # Both buffers are in arrival order, so expiry stops at the first live entry: amortised O(1).
        while self._predictions and next(iter(self._predictions.values()))[0] < deadline:
            self._predictions.popitem(last=False)
            self._expired_predictions += 1
        while self._labels and next(iter(self._labels.values()))[2] < deadline:
            self._labels.popitem(last=False)
            self._expired_labels += 1
        return now

    def _join(self, p: PredictionFacts, label: object, event_time_ms: int) -> JoinedRow:
        self._joined_count += 1
        if self._max_remembered:
            self._joined[p.id] = label
            if len(self._joined) > self._max_remembered:
                self._joined.popitem(last=False)
        return JoinedRow(prediction=p, label=label, event_time_ms=event_time_ms)

    def _count_repeat_label(self, first: object, label: object) -> None:
        if _same_label(first, label):
            self._duplicate_labels += 1
        else:
            self._conflicting_labels += 1
