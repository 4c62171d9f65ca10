"""Join prediction records with late-arriving true labels by record id, in bounded memory.

Pure core (numpy and the standard library): no Kafka, no clock, no threads. The sidecar owns the loop and
passes processing time in as ``now_ms``; this module decides what joins, what waits and what is dropped,
and *counts* every drop so the service can export it.

Why hand-written: a stream-stream join with a TTL is what a stream processor would give us, but we only
need keyed buffers with at-least-once dedup, fast enough to keep up with the scorer in one Python process.

How it is laid out, and why:

- Three rings (:class:`_Ring`) hold the waiting predictions, the waiting labels and the remembered
  (joined) ids, each in arrival order and *as columns* (a list of ids, a list of values, numpy arrays of
  arrival times and of "gone" flags), so the oldest entry is at the ring's ``head``: expiry is a binary
  search over the arrival times and eviction moves ``head``, amortised O(1) per entry.
- One dict maps each id to an int *code*: which ring, which of the ring's epochs, which position. A code
  is live only if it names its ring's current epoch and a position not before ``head`` and not marked
  gone; (epoch, position) pairs are never reused while a code that names them can be in the dict, which
  is what lets a live code stand for its id without comparing ids. Nothing is deleted from the dict when
  an entry expires, is evicted, joins or is forgotten: its code simply stops being live, and the id reads
  as new. The dict is rebuilt from the live entries when its dead codes outnumber them (and whenever a
  ring's epoch wraps round to 0). A ring drops dead entries from its front without renumbering (no code
  changes) and gives back array memory once a backlog has drained; only when dead entries pile up behind
  a live one that still waits, or positions near their limit, is it compacted into a new epoch, with new
  codes for its live entries. All of this is amortised O(1) per entry. (Deleting each id from the dict as
  it left cost 0.4 µs a row, a third of a label's join.)
- A batch is handled a run of distinct ids at a time (usually the whole batch is one run): one dict lookup
  per id, then numpy over the codes to sort the rows into new, joining and repeated, and list gathers
  (``itemgetter``) to move the values. Rows with distinct ids cannot affect one another, except through
  the oldest entries that the run itself pushes out (eviction, forgetting): a run ends just before a row
  that repeats an id whose entry the rows before it have pushed out, which keeps the result exactly what
  one row at a time gives (``tests/unit/test_join.py`` checks it against a plain row-by-row reference).
- Measured by ``python -m bench.join`` (a million ids in batches of 2,500, labels a few batches behind
  their predictions, shuffled): the per-row dict-of-entry-lists design this replaced cost 1.5-1.7 µs per
  prediction and 1.5-1.6 µs per label; this one 0.8 and 1.2-1.5 µs, and 15% less memory per pending
  prediction. Its one worse case: draining a million pending predictions with labels in random order,
  where every access misses the CPU cache and the draining ring is compacted several times (about 3.4 µs
  per label against 2.3 µs).

Batches: the sidecar hands over a whole consumed batch per side (:meth:`LabelJoiner.add_predictions`,
:meth:`LabelJoiner.add_labels`) and gets the joined rows back as three parallel lists (:class:`Joined`).
:meth:`~LabelJoiner.add_prediction` and :meth:`~LabelJoiner.add_label` are the one-row forms.

The joiner does not look inside a prediction: it keeps whatever payload the caller gives with its id. The
sidecar gives a small ``(evaluator, score)`` tuple; the one-row form keeps the :class:`PredictionFacts` it
was given.

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

from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import repeat
from operator import itemgetter
from typing import Any, Generic, TypeVar

import numpy as np

__all__ = ["JoinCounts", "Joined", "JoinedRow", "LabelJoiner", "PredictionFacts"]

P = TypeVar("P")

_PREDICTION, _LABEL, _JOINED = 0, 1, 2
"""The ring a code points into: its low two bits. An id the dict does not hold reads as ``_ABSENT``,
whose low bits (3) match no ring."""
_ABSENT = -1
_KIND_BITS = 2
_POSITION_BITS = 40
_POSITION_MASK = (1 << _POSITION_BITS) - 1
_POSITION_LIMIT = _POSITION_MASK - (1 << 32)  # a ring is compacted past this, so a batch cannot overflow
_EPOCHS = 1 << (63 - _KIND_BITS - _POSITION_BITS)  # epochs wrap to 0 here, so every code fits in an int64
_SLACK = 1024  # dead entries a ring, or dead codes the dict, may always hold before a rebuild


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
    return bool(a == b or (a != a and b != b))  # only NaN differs from itself, whatever its type


def _gather(values: Sequence[Any], rows: list[int], ascending: bool = False) -> list[Any]:
    """``[values[i] for i in rows]``, by ``itemgetter`` (a C loop), which is what makes columns pay off.

    ``ascending`` says ``rows`` are sorted and distinct, so as many rows as values means all of them.
    """
    if ascending and len(rows) == len(values):
        return list(values)
    if len(rows) > 1:
        return list(itemgetter(*rows)(values))
    return [values[rows[0]]] if rows else []


class _Ring:
    """The entries of one kind in arrival order, as columns.

    Entries are addressed by *position*: a count along the ring that only grows (until a compaction starts
    a new epoch). ``ids[0]`` is at position ``base``. Positions before ``head`` and positions flagged in
    ``gone`` are dead; the others (``live`` of them) are the entries. ``arrivals`` never decreases along the
    ring, so expiry is one binary search. Dead entries leave in two ways: from the front, cheaply (the
    columns are cut, positions stay, so no code changes); and, when dead entries pile up behind a live one
    that still waits, by a compaction that keeps only the live ones in a new epoch (their codes change).
    """

    __slots__ = ("arrivals", "base", "epoch", "event_times", "gone", "head", "ids", "kind", "live", "values")

    def __init__(self, kind: int) -> None:
        self.kind = kind
        self.ids: list[str] = []
        self.values: list[Any] = []  # payloads, or labels
        self.event_times: list[int] = []  # the waiting labels' event times; empty in the other rings
        self.arrivals = np.zeros(0, np.int64)  # capacity grows by doubling; len(self.ids) are in use
        self.gone = np.zeros(0, np.bool_)
        self.base = 0
        self.head = 0
        self.live = 0
        self.epoch = 0

    @property
    def end(self) -> int:
        return self.base + len(self.ids)

    def codes(self, positions: np.ndarray) -> list[int]:
        """The codes of entries at ``positions`` in this epoch: (epoch, position, kind) packed in one int."""
        located = positions | (self.epoch << _POSITION_BITS)
        return ((located << _KIND_BITS) | self.kind).tolist()

    def holds(self, kinds: np.ndarray, positions: np.ndarray, epochs: np.ndarray) -> np.ndarray:
        """Which of the decoded codes point at a live entry of this ring."""
        held = (kinds == self.kind) & (epochs == self.epoch) & (positions >= self.head)
        rows = np.flatnonzero(held)
        if len(rows):
            held[rows] = ~self.gone[positions[rows] - self.base]
        return held

    def at(self, column: list[Any], positions: np.ndarray) -> list[Any]:
        """The values of ``column`` (one of this ring's lists) at ``positions``."""
        return _gather(column, (positions - self.base).tolist())

    def append(self, ids: list[str], values: list[Any], event_times: list[int] | None, now_ms: int) -> list[int]:
        """Add entries at the end; return their codes."""
        start, stop = len(self.ids), len(self.ids) + len(ids)
        if stop > len(self.arrivals):
            capacity = max(stop, 2 * len(self.arrivals), _SLACK)
            self.arrivals = np.concatenate([self.arrivals[:start], np.zeros(capacity - start, np.int64)])
            self.gone = np.concatenate([self.gone[:start], np.zeros(capacity - start, np.bool_)])
        self.ids.extend(ids)
        self.values.extend(values)
        if event_times is not None:
            self.event_times.extend(event_times)
        self.arrivals[start:stop] = now_ms
        self.live += len(ids)
        return self.codes(np.arange(self.base + start, self.base + stop, dtype=np.int64))

    def mark_gone(self, positions: np.ndarray) -> None:
        self.gone[positions - self.base] = True
        self.live -= len(positions)

    def cut_after(self, count: int) -> int:
        """The position just past the ``count`` oldest live entries (``count`` <= ``live``)."""
        cut, stop = self.head - self.base, len(self.ids)
        while count:
            window = min(stop, cut + 2 * count + _SLACK)
            live = np.flatnonzero(~self.gone[cut:window])
            if len(live) >= count:
                return self.base + cut + int(live[count - 1]) + 1
            count -= len(live)
            cut = window
        return self.base + cut

    def drop_oldest(self, count: int) -> None:
        """Drop the ``count`` oldest live entries (eviction, forgetting)."""
        self.head = self.cut_after(count)
        self.live -= count

    def expire(self, deadline_ms: int) -> int:
        """Drop the live entries that arrived before ``deadline_ms``; return how many."""
        head, stop = self.head - self.base, len(self.ids)
        cut = head + int(np.searchsorted(self.arrivals[head:stop], deadline_ms, side="left"))
        if cut == head:
            return 0
        expired = (cut - head) - int(np.count_nonzero(self.gone[head:cut]))
        self.head = self.base + cut
        self.live -= expired
        return expired

    def live_positions(self) -> np.ndarray:
        head = self.head - self.base
        return np.flatnonzero(~self.gone[head : len(self.ids)]) + self.head

    def tidy(self) -> tuple[list[str], list[int]] | None:
        """Let go of dead entries: from the front, and by a compaction when they pile up behind live ones.

        Returns:
            After a compaction, the live ids and their new codes (for the dict); else ``None``.
        """
        self.head = self.cut_after(1) - 1 if self.live else self.end  # past the gone ones in front
        front = self.head - self.base
        if len(self.ids) - front > 2 * self.live + _SLACK or self.end >= _POSITION_LIMIT:
            kept = self.live_positions()
            rows = (kept - self.base).tolist()
            self.ids = _gather(self.ids, rows)
            self.values = _gather(self.values, rows)
            if self.event_times:
                self.event_times = _gather(self.event_times, rows)
            self.arrivals = self.arrivals[kept - self.base]
            self.gone = np.zeros(len(rows), np.bool_)
            self.base = self.head = 0
            self.epoch = (self.epoch + 1) % _EPOCHS  # at 0 again, the dict must be rebuilt (see _tidy)
            return self.ids, self.codes(np.arange(len(rows), dtype=np.int64))
        if front > len(self.ids) // 2 and front > _SLACK:  # cut the front off; positions stay as they are
            del self.ids[:front], self.values[:front], self.event_times[: front if self.event_times else 0]
            rest = len(self.ids)
            self.arrivals[:rest] = self.arrivals[front : front + rest]
            self.gone[:rest] = self.gone[front : front + rest]
            self.gone[rest : rest + front] = False
            self.base = self.head
            if len(self.arrivals) > 4 * rest + _SLACK:  # after a backlog has drained, give its memory back
                capacity = max(2 * rest, _SLACK)
                self.arrivals, self.gone = self.arrivals[:capacity].copy(), self.gone[:capacity].copy()
        return None


def _distinct_runs(ids: Sequence[str]) -> list[tuple[int, int]]:
    """Cut ``ids`` into consecutive runs without a repeated id: ``[(start, stop), ...]``."""
    if len(set(ids)) == len(ids):
        return [(0, len(ids))]
    runs, seen, start = [], set(), 0
    for row, id in enumerate(ids):
        if id in seen:
            runs.append((start, row))
            seen, start = set(), row
        seen.add(id)
    runs.append((start, len(ids)))
    return runs


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
        self._entries: dict[str, int] = {}  # id -> code of its entry; may hold dead codes (see _Ring.holds)
        self._predictions = _Ring(_PREDICTION)  # waiting predictions
        self._labels = _Ring(_LABEL)  # waiting labels
        self._remembered = _Ring(_JOINED)  # joined ids and the label that won, for dedup
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

        Raises:
            ValueError: If ``ids`` and ``payloads`` differ in length.
        """
        if len(ids) != len(payloads):
            raise ValueError(f"{len(ids)} ids but {len(payloads)} payloads")
        now = self._advance(now_ms)
        self._predictions_seen += len(ids)
        joined: Joined[P] = Joined()
        self._add(self._predictions, list(ids), list(payloads), None, now, joined)
        self._tidy()
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

        Raises:
            ValueError: If ``ids``, ``labels`` and ``event_times_ms`` differ in length.
        """
        if not len(ids) == len(labels) == len(event_times_ms):
            raise ValueError(f"{len(ids)} ids, {len(labels)} labels and {len(event_times_ms)} event times")
        now = self._advance(now_ms)
        self._labels_seen += len(ids)
        joined: Joined[P] = Joined()
        self._add(self._labels, list(ids), list(labels), list(event_times_ms), now, joined)
        self._tidy()
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
        self._tidy()

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
            pending_predictions=self._predictions.live,
            pending_labels=self._labels.live,
        )

    def _add(
        self,
        side: _Ring,
        ids: list[str],
        values: list[Any],
        event_times: list[int] | None,
        now: int,
        joined: Joined[P],
    ) -> None:
        """Add one side's arrivals (``side`` is the waiting predictions, ``values`` their payloads; or the
        waiting labels, ``values`` the labels, with ``event_times``), as few runs as the rules allow."""
        for start, stop in _distinct_runs(ids):
            while start < stop:  # a run may take only its leading rows (see _add_run); the rest go next
                times = None if event_times is None else event_times[start:stop]
                start += self._add_run(side, ids[start:stop], values[start:stop], times, now, joined)

    def _add_run(
        self,
        side: _Ring,
        ids: list[str],
        values: list[Any],
        event_times: list[int] | None,
        now: int,
        joined: Joined[P],
    ) -> int:
        """Add the leading rows of ``ids`` (which are distinct) that can go in together; return how many."""
        remembered = self._remembered
        predicting = side is self._predictions
        other = self._labels if predicting else self._predictions
        codes = np.fromiter(map(self._entries.get, ids, repeat(_ABSENT)), np.int64, len(ids))
        kinds = codes & ((1 << _KIND_BITS) - 1)
        located = codes >> _KIND_BITS
        positions, epochs = located & _POSITION_MASK, located >> _POSITION_BITS
        waiting = side.holds(kinds, positions, epochs)  # a repeat of an entry that still waits
        joining = other.holds(kinds, positions, epochs)  # its partner waits
        known = remembered.holds(kinds, positions, epochs)  # a repeat of an id that joined
        new = ~(waiting | joining | known)
        new_rows = np.flatnonzero(new).tolist()
        join_rows = np.flatnonzero(joining).tolist()
        evict = max(0, side.live + len(new_rows) - self._max_pending)
        forget = max(0, remembered.live + len(join_rows) - self._max_remembered) if self._max_remembered else 0
        pushed = []  # rows repeating an id whose entry this run pushes out before the row comes
        if evict and waiting.any():
            pushed.append(self._pushed_before(side, waiting, positions, new, side.live - self._max_pending))
        if forget and known.any():
            pushed.append(self._pushed_before(remembered, known, positions, joining, forget - len(join_rows)))
        first = min((int(rows[0]) for rows in pushed if len(rows)), default=0)
        if first:  # such a row is new, not a repeat: the run stops before it (the first row is always right)
            times = None if event_times is None else event_times[:first]
            return self._add_run(side, ids[:first], values[:first], times, now, joined)

        if join_rows:
            at = positions[joining]
            other.mark_gone(at)
            if predicting:  # predictions meet waiting labels
                payloads, labels = _gather(values, join_rows, ascending=True), other.at(other.values, at)
                times = other.at(other.event_times, at)
            else:  # labels meet waiting predictions
                payloads, labels = other.at(other.values, at), _gather(values, join_rows, ascending=True)
                times = _gather(event_times, join_rows, ascending=True)  # type: ignore[arg-type]
            joined.payloads.extend(payloads)
            joined.labels.extend(labels)
            joined.event_times_ms.extend(times)
            self._joined_count += len(join_rows)
            if self._max_remembered:  # else the partner's dead code stays, and the id reads as new
                joined_ids = _gather(ids, join_rows, ascending=True)
                self._entries.update(zip(joined_ids, remembered.append(joined_ids, labels, None, now), strict=True))
                if forget:
                    remembered.drop_oldest(forget)

        if new_rows:
            new_ids = _gather(ids, new_rows, ascending=True)
            new_times = None if event_times is None else _gather(event_times, new_rows, ascending=True)
            codes_of_new = side.append(new_ids, _gather(values, new_rows, ascending=True), new_times, now)
            self._entries.update(zip(new_ids, codes_of_new, strict=True))
            if evict:
                side.drop_oldest(evict)
                if predicting:
                    self._evicted_predictions += evict
                else:
                    self._evicted_labels += evict

        if predicting:
            self._duplicate_predictions += int(np.count_nonzero(waiting)) + int(np.count_nonzero(known))
        else:  # the first label wins; a repeat is a duplicate if it agrees, else a conflict
            for ring, held in ((side, waiting), (remembered, known)):
                for row, first in zip(
                    np.flatnonzero(held).tolist(), ring.at(ring.values, positions[held]), strict=True
                ):
                    if _same_label(first, values[row]):
                        self._duplicate_labels += 1
                    else:
                        self._conflicting_labels += 1
        return len(ids)

    @staticmethod
    def _pushed_before(
        ring: _Ring, repeats: np.ndarray, positions: np.ndarray, pushing: np.ndarray, excess: int
    ) -> np.ndarray:
        """The rows (ascending) of ``repeats`` whose entry in ``ring`` is pushed out before their turn.

        ``excess`` is how far the ring is over its bound before the run (zero or less). Each row flagged in
        ``pushing`` adds an entry, and every addition that takes the ring past its bound pushes out the
        oldest live entry, so the entry of rank k (0 = oldest) is gone by the row that makes the (k + 1)-th
        push. Only entries older than the run's last push can be gone, so only that stretch is ranked.
        """
        rows = np.flatnonzero(repeats)
        pushes = int(np.count_nonzero(pushing)) + excess
        if pushes <= 0:
            return rows[:0]
        rows = rows[positions[rows] < ring.cut_after(min(pushes, ring.live))]
        if not len(rows):
            return rows
        start = ring.head - ring.base
        live = ~ring.gone[start : int(positions[rows].max()) - ring.base + 1]
        ranks = (np.cumsum(live) - 1)[positions[rows] - ring.head]
        pushes_before = np.cumsum(pushing)[rows] - pushing[rows] + excess
        return rows[ranks < pushes_before]

    def _advance(self, now_ms: int) -> int:
        if self._now_ms is not None and now_ms <= self._now_ms:
            return self._now_ms  # the clock has not moved, so nothing new can have expired
        now = self._now_ms = now_ms
        deadline = now - self._ttl_ms
        self._expired_predictions += self._predictions.expire(deadline)
        self._expired_labels += self._labels.expire(deadline)
        return now

    def _tidy(self) -> None:
        """Let go of the rings' dead entries; rebuild the dict when its dead codes outnumber the live ones."""
        rings = (self._predictions, self._labels, self._remembered)
        moved = [ring.tidy() for ring in rings]
        wrapped = any(ring.epoch == 0 and ids_and_codes for ring, ids_and_codes in zip(rings, moved, strict=True))
        live = sum(ring.live for ring in rings)
        # A fresh dict holds the moved codes too, and no dead code of an earlier epoch 0 that could alias them.
        if wrapped or len(self._entries) > 2 * live + _SLACK:
            entries: dict[str, int] = {}
            for ring in rings:
                kept = ring.live_positions()
                entries.update(zip(ring.at(ring.ids, kept), ring.codes(kept), strict=True))
            self._entries = entries
        else:
            for ids_and_codes in moved:
                if ids_and_codes is not None:
                    self._entries.update(zip(*ids_and_codes, strict=True))
