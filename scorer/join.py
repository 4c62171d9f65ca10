"""Join prediction records with late-arriving true labels by record id, in bounded memory.

Pure core (standard library only): no Kafka, no clock, no
threads. The sidecar owns the loop and passes processing time in as ``now_ms``; this module decides what
joins, what waits and what is dropped, and *counts* every drop so the service can export it.

Why hand-written: a stream-stream join with a TTL is what a stream processor would give us, but we only
need keyed buffers with at-least-once dedup. One dict maps each id to where it stands (waiting prediction,
waiting label, or joined and remembered), so an arrival costs one lookup and one store; three deques keep
each kind in arrival order, so the oldest is always at the front, for O(1) amortised expiry and eviction.
An id that moves on (a waiting prediction that joins) leaves its old deque entry behind; such entries are
skipped when they reach the front, and a deque is compacted when they outnumber the live ones. (Two
``OrderedDict``\\ s and a third for the remembered ids did the same with three to four lookups per arrival:
half the sidecar's time at 80,000 rows a second.)

Batches: the sidecar hands over a whole consumed batch per side (:meth:`LabelJoiner.add_predictions`,
:meth:`LabelJoiner.add_labels`), one tight loop of dict operations each, and gets the joined rows back as
three parallel lists (:class:`Joined`): a Python call and an object per row is what made the per-row join
too slow to keep up with the scorer. :meth:`~LabelJoiner.add_prediction` and
:meth:`~LabelJoiner.add_label` are the one-row forms.

The joiner does not look inside a prediction: it keeps whatever payload the caller gives with its id. The
sidecar gives a small ``(evaluator, score)`` tuple, so a pending prediction costs about 250 bytes with its
id (the default ``max_pending`` of a million: about 250 MB); the one-row form keeps the
:class:`PredictionFacts` it was given.

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
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

__all__ = ["JoinCounts", "Joined", "JoinedRow", "LabelJoiner", "PredictionFacts"]

P = TypeVar("P")

_PREDICTION, _LABEL, _JOINED, _GONE = 0, 1, 2, 3
"""Where an id stands: its entry in ``LabelJoiner._entries`` is one of
``[_PREDICTION, arrival_ms, id, payload]``, ``[_LABEL, arrival_ms, id, label, event_time_ms]`` or
``(_JOINED, id, label that won)``. A waiting entry that joins is marked ``_GONE`` in place, so the deque
that still holds it can skip it without a lookup."""
_MIN_COMPACT = 1024  # a deque is compacted only beyond this many entries


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


@dataclass(slots=True)
class Joined(Generic[P]):
    """Rows a batch completed, as parallel lists: the prediction's payload, the label, the label's event time."""

    payloads: list[P] = field(default_factory=list)
    labels: list[object] = field(default_factory=list)
    event_times_ms: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.labels)


def _same_label(a: object, b: object) -> bool:
    """Label equality where NaN equals NaN, so a redelivered NaN label is a duplicate, not a conflict."""
    if a == b:
        return True
    return isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b)


class LabelJoiner(Generic[P]):
    """Buffer both sides of the prediction/label join and emit the rows whose ids complete.

    ``now_ms`` is processing time and must not go backwards; a smaller value is treated as the largest one
    seen so far, which keeps the buffers in arrival order. Every call first expires entries older than
    ``ttl_ms``, so a late partner never joins an expired entry even if :meth:`expire` was not called. A
    batch arrives at one instant: its ``now_ms``.

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
        >>> batch = j.add_predictions(["r2", "r3"], ["payload 2", "payload 3"], now_ms=8_000)
        >>> len(batch), j.add_labels(["r3", "r2"], ["no", "yes"], [2_000, 3_000], now_ms=9_000).payloads
        (0, ['payload 3', 'payload 2'])
        >>> c = j.counts
        >>> (c.joined, c.duplicate_predictions, c.pending_labels)
        (3, 1, 0)
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
        self._entries: dict[str, list[Any] | tuple[Any, ...]] = {}  # id -> where it stands (see _PREDICTION)
        self._waiting_predictions: deque[list[Any]] = deque()  # arrival order; may hold moved-on entries
        self._waiting_labels: deque[list[Any]] = deque()
        self._remembered: deque[tuple[Any, ...]] = deque()  # joined entries, oldest first (all live)
        self._pending_predictions = 0
        self._pending_labels = 0
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

    def add_predictions(self, ids: Sequence[str], payloads: Sequence[P], now_ms: int) -> Joined[P]:
        """Record predictions, in arrival order; return the rows whose labels were already waiting.

        Args:
            ids: The record ids.
            payloads: What to hand back with each id when it joins (one per id).
            now_ms: Processing time of this batch.

        Returns:
            The joined rows (the others now wait, or were duplicates).
        """
        now = self._advance(now_ms)
        self._predictions_seen += len(ids)
        joined: Joined[P] = Joined()
        # Locals and inlined bookkeeping: this loop and add_labels' are the sidecar's hottest Python.
        entries, waiting, remembered = self._entries, self._waiting_predictions, self._remembered
        max_pending, max_remembered = self._max_pending, self._max_remembered
        add_payload, add_label, add_time = joined.payloads.append, joined.labels.append, joined.event_times_ms.append
        pending, duplicates, evicted, joins = self._pending_predictions, 0, 0, 0
        for id, payload in zip(ids, payloads, strict=True):
            entry = entries.get(id)
            if entry is None:
                entry = entries[id] = [_PREDICTION, now, id, payload]
                waiting.append(entry)
                pending += 1
                if pending > max_pending:
                    self._drop_oldest(waiting)
                    pending -= 1
                    evicted += 1
            elif entry[0] == _LABEL:  # its label waits: join, and remember the id with the label that won
                entry[0] = _GONE
                joins += 1
                if max_remembered:
                    kept = entries[id] = (_JOINED, id, entry[3])
                    remembered.append(kept)
                    if len(remembered) > max_remembered:
                        del entries[remembered.popleft()[1]]
                else:
                    del entries[id]
                add_payload(payload)
                add_label(entry[3])
                add_time(entry[4])
            else:  # waiting or joined already
                duplicates += 1
        self._pending_predictions = pending
        self._pending_labels -= joins
        self._joined_count += joins
        self._evicted_predictions += evicted
        self._duplicate_predictions += duplicates
        self._tidy(self._waiting_labels, self._pending_labels)
        return joined

    def add_labels(
        self, ids: Sequence[str], labels: Sequence[object], event_times_ms: Sequence[int], now_ms: int
    ) -> Joined[P]:
        """Record true labels, in arrival order; return the rows whose predictions were already waiting.

        Args:
            ids: The record ids.
            labels: The true labels.
            event_times_ms: When each label became true (event time); carried into the joined rows.
            now_ms: Processing time of this batch.

        Returns:
            The joined rows (the other labels now wait, or were duplicates or conflicts).
        """
        now = self._advance(now_ms)
        self._labels_seen += len(ids)
        joined: Joined[P] = Joined()
        entries, waiting, remembered = self._entries, self._waiting_labels, self._remembered
        max_pending, max_remembered = self._max_pending, self._max_remembered
        add_payload, add_label, add_time = joined.payloads.append, joined.labels.append, joined.event_times_ms.append
        pending, evicted, joins = self._pending_labels, 0, 0
        for id, label, event_time_ms in zip(ids, labels, event_times_ms, strict=True):
            entry = entries.get(id)
            if entry is None:
                entry = entries[id] = [_LABEL, now, id, label, event_time_ms]
                waiting.append(entry)
                pending += 1
                if pending > max_pending:
                    self._drop_oldest(waiting)
                    pending -= 1
                    evicted += 1
            elif entry[0] == _PREDICTION:  # its prediction waits: join (as in add_predictions)
                entry[0] = _GONE
                joins += 1
                if max_remembered:
                    kept = entries[id] = (_JOINED, id, label)
                    remembered.append(kept)
                    if len(remembered) > max_remembered:
                        del entries[remembered.popleft()[1]]
                else:
                    del entries[id]
                add_payload(entry[3])
                add_label(label)
                add_time(event_time_ms)
            else:  # the first label (waiting, or joined) wins
                self._count_repeat_label(entry[3] if entry[0] == _LABEL else entry[2], label)
        self._pending_labels = pending
        self._pending_predictions -= joins
        self._joined_count += joins
        self._evicted_labels += evicted
        self._tidy(self._waiting_predictions, self._pending_predictions)
        return joined

    def add_prediction(self, p: PredictionFacts, now_ms: int) -> JoinedRow | None:
        """Record one prediction; return the joined row if its label is already waiting."""
        joined = self.add_predictions([p.id], [p], now_ms)
        return JoinedRow(p, joined.labels[0], joined.event_times_ms[0]) if joined else None

    def add_label(self, id: str, label: object, event_time_ms: int, now_ms: int) -> JoinedRow | None:
        """Record one true label; return the joined row if its prediction (a :class:`PredictionFacts`) waits."""
        joined = self.add_labels([id], [label], [event_time_ms], now_ms)
        return JoinedRow(joined.payloads[0], label, event_time_ms) if joined else None  # type: ignore[arg-type]

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
            pending_predictions=self._pending_predictions,
            pending_labels=self._pending_labels,
        )

    def _advance(self, now_ms: int) -> int:
        if self._now_ms is not None and now_ms <= self._now_ms:
            return self._now_ms  # the clock has not moved, so nothing new can have expired
        now = self._now_ms = now_ms
        deadline = now - self._ttl_ms
        # Both deques are in arrival order, so expiry stops at the first entry young enough: amortised O(1).
        expired = self._expire(self._waiting_predictions, deadline)
        self._expired_predictions += expired
        self._pending_predictions -= expired
        expired = self._expire(self._waiting_labels, deadline)
        self._expired_labels += expired
        self._pending_labels -= expired
        return now

    def _expire(self, waiting: deque[list[Any]], deadline: int) -> int:
        """Remove the entries that arrived before ``deadline``; return how many of them were still waiting."""
        entries = self._entries
        expired = 0
        while waiting and waiting[0][1] < deadline:
            entry = waiting.popleft()
            if entry[0] != _GONE:
                del entries[entry[2]]
                expired += 1
        return expired

    def _drop_oldest(self, waiting: deque[list[Any]]) -> None:
        """Remove the oldest entry of ``waiting`` that is still waiting (there is one: the caller counted it)."""
        entries = self._entries
        while True:
            entry = waiting.popleft()
            if entry[0] != _GONE:
                del entries[entry[2]]
                return

    def _tidy(self, waiting: deque[list[Any]], live: int) -> None:
        """Drop moved-on entries from the front of ``waiting``; rebuild it when they are most of it."""
        while waiting and waiting[0][0] == _GONE:
            waiting.popleft()
        if len(waiting) > 2 * live + _MIN_COMPACT:
            kept = [entry for entry in waiting if entry[0] != _GONE]
            waiting.clear()
            waiting.extend(kept)

    def _count_repeat_label(self, first: object, label: object) -> None:
        if _same_label(first, label):
            self._duplicate_labels += 1
        else:
            self._conflicting_labels += 1
