"""Unit tests of scorer.join: arrival orders, TTL, eviction, dedup and the counting invariant."""

from __future__ import annotations

import dataclasses
import math
import random
from collections import Counter, OrderedDict
from decimal import Decimal

import numpy as np
import pytest

from scorer import join
from scorer.join import JoinCounts, JoinedRow, LabelJoiner, PredictionFacts


def pred(id: str, label: object = "yes", p: float = 0.9) -> PredictionFacts:
    return PredictionFacts(id, "churn", "7", label, p, {"no": 1 - p, "yes": p})


def assert_invariants(c: JoinCounts) -> None:
    assert c.predictions_seen == (
        c.joined + c.expired_predictions + c.evicted_predictions + c.duplicate_predictions + c.pending_predictions
    )
    assert c.labels_seen == (
        c.joined + c.expired_labels + c.evicted_labels + c.duplicate_labels + c.conflicting_labels + c.pending_labels
    )


def test_prediction_first_then_label() -> None:
    j = LabelJoiner(ttl_ms=1_000, max_pending=10)
    p = pred("a")
    assert j.add_prediction(p, now_ms=0) is None
    assert j.counts.pending_predictions == 1
    row = j.add_label("a", "no", event_time_ms=42, now_ms=500)
    assert row == JoinedRow(prediction=p, label="no", event_time_ms=42)
    c = j.counts
    assert (c.joined, c.pending_predictions, c.pending_labels) == (1, 0, 0)
    assert_invariants(c)


def test_label_first_then_prediction() -> None:
    j = LabelJoiner(ttl_ms=1_000, max_pending=10)
    assert j.add_label("a", "yes", event_time_ms=7, now_ms=0) is None
    assert j.counts.pending_labels == 1
    row = j.add_prediction(pred("a"), now_ms=1_000)  # exactly ttl_ms later: still kept
    assert row is not None
    assert (row.label, row.event_time_ms, row.prediction.id) == ("yes", 7, "a")
    assert j.counts.joined == 1
    assert_invariants(j.counts)


def test_unrelated_ids_do_not_join() -> None:
    j = LabelJoiner(ttl_ms=1_000, max_pending=10)
    assert j.add_prediction(pred("a"), now_ms=0) is None
    assert j.add_label("b", "yes", event_time_ms=0, now_ms=1) is None
    c = j.counts
    assert (c.joined, c.pending_predictions, c.pending_labels) == (0, 1, 1)


def test_prediction_expires_after_ttl_and_late_label_waits() -> None:
    j = LabelJoiner(ttl_ms=1_000, max_pending=10)
    j.add_prediction(pred("a"), now_ms=0)
    assert j.add_label("a", "yes", event_time_ms=0, now_ms=1_001) is None
    c = j.counts
    assert (c.expired_predictions, c.pending_predictions, c.pending_labels, c.joined) == (1, 0, 1, 0)
    assert_invariants(c)


def test_expire_drops_labels_and_predictions() -> None:
    j = LabelJoiner(ttl_ms=100, max_pending=10)
    j.add_label("a", "yes", event_time_ms=0, now_ms=0)
    j.add_prediction(pred("b"), now_ms=50)
    j.expire(now_ms=120)
    c = j.counts
    assert (c.expired_labels, c.pending_labels, c.expired_predictions, c.pending_predictions) == (1, 0, 0, 1)
    j.expire(now_ms=151)
    assert j.counts.expired_predictions == 1
    assert j.counts.pending_predictions == 0
    assert_invariants(j.counts)


def test_now_going_backwards_is_clamped() -> None:
    j = LabelJoiner(ttl_ms=100, max_pending=10)
    j.add_prediction(pred("a"), now_ms=1_000)
    j.add_prediction(pred("b"), now_ms=500)  # treated as 1_000
    j.expire(now_ms=1_100)
    assert j.counts.pending_predictions == 2
    j.expire(now_ms=1_101)
    assert j.counts.expired_predictions == 2


def test_eviction_at_max_pending_oldest_first() -> None:
    j = LabelJoiner(ttl_ms=10_000, max_pending=2)
    for i, id in enumerate("abc"):
        j.add_prediction(pred(id), now_ms=i)
    assert j.counts.evicted_predictions == 1
    assert j.counts.pending_predictions == 2
    assert j.add_label("a", "yes", event_time_ms=0, now_ms=10) is None  # "a" was evicted
    assert j.add_label("b", "yes", event_time_ms=0, now_ms=11) is not None
    for i, id in enumerate("xyz"):
        j.add_label(id, "no", event_time_ms=0, now_ms=20 + i)
    c = j.counts
    assert c.evicted_labels == 2  # "a" and "x" made room for "y" and "z"
    assert c.pending_labels == 2
    assert j.add_prediction(pred("z"), now_ms=30) is not None
    assert j.add_prediction(pred("x"), now_ms=31) is None
    assert_invariants(j.counts)


def test_duplicate_and_conflicting_labels_first_wins() -> None:
    j = LabelJoiner(ttl_ms=10_000, max_pending=10)
    j.add_label("a", "yes", event_time_ms=1, now_ms=0)
    j.add_label("a", "yes", event_time_ms=2, now_ms=1)
    j.add_label("a", "no", event_time_ms=3, now_ms=2)
    row = j.add_prediction(pred("a"), now_ms=3)
    assert row is not None
    assert (row.label, row.event_time_ms) == ("yes", 1)
    assert j.add_label("a", "yes", event_time_ms=4, now_ms=4) is None  # after the join
    assert j.add_label("a", "no", event_time_ms=5, now_ms=5) is None
    c = j.counts
    assert (c.duplicate_labels, c.conflicting_labels, c.joined) == (2, 2, 1)
    assert_invariants(c)


def test_nan_label_redelivered_is_a_duplicate() -> None:
    j = LabelJoiner(ttl_ms=10_000, max_pending=10)
    j.add_label("a", math.nan, event_time_ms=1, now_ms=0)
    j.add_label("a", math.nan, event_time_ms=1, now_ms=1)
    assert (j.counts.duplicate_labels, j.counts.conflicting_labels) == (1, 0)


def test_duplicate_predictions_pending_and_after_join_never_join_twice() -> None:
    j = LabelJoiner(ttl_ms=10_000, max_pending=10)
    first = pred("a", p=0.9)
    j.add_prediction(first, now_ms=0)
    assert j.add_prediction(pred("a", p=0.1), now_ms=1) is None
    row = j.add_label("a", "yes", event_time_ms=0, now_ms=2)
    assert row is not None
    assert row.prediction == first  # the first prediction is kept (rebuilt from its packed form: equal, not same)
    assert j.add_prediction(first, now_ms=3) is None
    assert j.add_label("a", "yes", event_time_ms=0, now_ms=4) is None
    c = j.counts
    assert (c.duplicate_predictions, c.joined, c.pending_predictions, c.pending_labels) == (2, 1, 0, 0)
    assert_invariants(c)


def test_remembered_ids_are_bounded() -> None:
    j = LabelJoiner(ttl_ms=10_000, max_pending=10, max_remembered=2)
    for i, id in enumerate("abc"):
        j.add_prediction(pred(id), now_ms=i)
        assert j.add_label(id, "yes", event_time_ms=0, now_ms=i) is not None
    assert j.add_prediction(pred("c"), now_ms=10) is None
    assert j.counts.duplicate_predictions == 1
    assert j.add_prediction(pred("a"), now_ms=11) is None  # "a" was forgotten: a new arrival that waits
    c = j.counts
    assert (c.duplicate_predictions, c.pending_predictions) == (1, 1)
    assert_invariants(c)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"ttl_ms": 0, "max_pending": 1}, "ttl_ms"),
        ({"ttl_ms": 1, "max_pending": 0}, "max_pending"),
        ({"ttl_ms": 1, "max_pending": 1, "max_remembered": -1}, "max_remembered"),
    ],
)
def test_rejects_bad_bounds(kwargs: dict[str, int], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        LabelJoiner(**kwargs)


def random_events(seed: int, n_ids: int) -> list[tuple[int, str, str, object]]:
    """(arrival_ms, kind, id, label) events: late, shuffled, duplicated, conflicting and missing labels."""
    rng = random.Random(seed)
    events: list[tuple[int, str, str, object]] = []
    for i in range(n_ids):
        id, t = f"r{i}", i * 10
        for _ in range(rng.choice([1, 1, 1, 2, 3])):  # at-least-once upstream
            events.append((t + rng.randint(0, 50), "p", id, None))
        if rng.random() < 0.85:
            label = rng.choice(["yes", "no"])
            for copy in range(rng.choice([1, 1, 2])):
                conflicting = copy and rng.random() < 0.3
                events.append((t + rng.randint(-100, 3_000), "l", id, "maybe" if conflicting else label))
    rng.shuffle(events)
    events.sort(key=lambda e: e[0])  # stable: equal arrival times stay shuffled
    return events


def feed(j: LabelJoiner, events: list[tuple[int, str, str, object]]) -> dict[str, list[JoinedRow]]:
    joined: dict[str, list[JoinedRow]] = {}
    for step, (now, kind, id, label) in enumerate(events):
        if kind == "p":
            row = j.add_prediction(pred(id), now_ms=now)
        else:
            row = j.add_label(id, label, event_time_ms=now - 5, now_ms=now)
        if row is not None:
            assert row.prediction.id == id
            joined.setdefault(id, []).append(row)
        if step % 97 == 0:
            j.expire(now)
        assert_invariants(j.counts)
    return joined


def test_counting_invariant_under_random_stream() -> None:
    events = random_events(seed=7, n_ids=3_000)
    j = LabelJoiner(ttl_ms=1_000, max_pending=40, max_remembered=500)
    joined = feed(j, events)
    c = j.counts
    assert c.predictions_seen == sum(1 for e in events if e[1] == "p")
    assert c.labels_seen == sum(1 for e in events if e[1] == "l")
    assert c.joined == sum(len(rows) for rows in joined.values())
    assert c.joined > 0
    # The stream is meant to hit every path; if one stays at zero the test proves less than it claims.
    for field in dataclasses.fields(JoinCounts):
        if field.name not in ("pending_predictions", "pending_labels"):
            assert getattr(c, field.name) > 0, field.name
    j.expire(events[-1][0] + 1_001)
    c = j.counts
    assert (c.pending_predictions, c.pending_labels) == (0, 0)
    assert_invariants(c)


def test_unbounded_join_matches_first_label_per_id() -> None:
    events = random_events(seed=11, n_ids=2_000)
    j = LabelJoiner(ttl_ms=10**9, max_pending=10**6, max_remembered=10**6)
    joined = feed(j, events)
    first_label: dict[str, object] = {}
    predicted = set()
    for _, kind, id, label in events:
        if kind == "l":
            first_label.setdefault(id, label)
        else:
            predicted.add(id)
    assert set(joined) == predicted & set(first_label)
    for id, rows in joined.items():
        assert len(rows) == 1
        assert rows[0].label == first_label[id]
    c = j.counts
    assert (c.expired_predictions, c.expired_labels, c.evicted_predictions, c.evicted_labels) == (0, 0, 0, 0)


def test_batches_give_what_the_same_arrivals_one_by_one_give() -> None:
    """The sidecar feeds whole batches, one side at a time, at one instant; the one-row calls (batches of
    one, whose rules the tests above pin down) are the oracle.

    The stream is cut into runs of one kind that share an arrival time (as a consumed batch is handed over
    per topic at the batch's latest timestamp); each run goes in as one batch call on one joiner and row by
    row on another. Joined rows, their order and every counter must agree.
    """
    events = random_events(seed=3, n_ids=3_000)
    rng = random.Random(5)
    runs: list[list[tuple[int, str, str, object]]] = []
    for event in events:
        if runs and runs[-1][0][1] == event[1] and len(runs[-1]) < rng.randint(1, 60):
            runs[-1].append(event)
        else:
            runs.append([event])
    batched: LabelJoiner[PredictionFacts] = LabelJoiner(ttl_ms=1_000, max_pending=40, max_remembered=500)
    one_by_one: LabelJoiner[PredictionFacts] = LabelJoiner(ttl_ms=1_000, max_pending=40, max_remembered=500)
    for run in runs:
        now = max(e[0] for e in run)
        if run[0][1] == "p":
            predictions = [pred(id) for _, _, id, _ in run]
            got = batched.add_predictions([p.id for p in predictions], predictions, now)
            want = [one_by_one.add_prediction(p, now) for p in predictions]
        else:
            ids, labels, times = [e[2] for e in run], [e[3] for e in run], [e[0] - 5 for e in run]
            got = batched.add_labels(ids, labels, times, now)
            want = [one_by_one.add_label(i, label, t, now) for i, label, t in zip(ids, labels, times, strict=True)]
        rows = [row for row in want if row is not None]
        assert got.payloads == [row.prediction for row in rows]
        assert got.labels == [row.label for row in rows]
        assert got.event_times_ms == [row.event_time_ms for row in rows]
        assert batched.counts == one_by_one.counts
    c = batched.counts
    assert min(c.joined, c.evicted_predictions, c.duplicate_labels, c.conflicting_labels, c.expired_labels) > 0


def test_joined_rows_come_in_the_order_of_the_batch_that_completed_them() -> None:
    """A batch of labels that completes every waiting prediction, in another order than theirs: the rows
    follow the labels (the evaluators' count window keeps the last N rows by that order)."""
    j: LabelJoiner[str] = LabelJoiner(ttl_ms=1_000, max_pending=10)
    j.add_predictions(["a", "b", "c"], ["pa", "pb", "pc"], now_ms=0)
    joined = j.add_labels(["c", "a", "b"], ["lc", "la", "lb"], [3, 1, 2], now_ms=1)
    assert (joined.payloads, joined.labels, joined.event_times_ms) == (
        ["pc", "pa", "pb"],
        ["lc", "la", "lb"],
        [3, 1, 2],
    )
    j.add_labels(["f", "e", "d"], ["lf", "le", "ld"], [6, 5, 4], now_ms=2)
    joined = j.add_predictions(["d", "f", "e"], ["pd", "pf", "pe"], now_ms=3)
    assert (joined.payloads, joined.labels, joined.event_times_ms) == (
        ["pd", "pf", "pe"],
        ["ld", "lf", "le"],
        [4, 6, 5],
    )


def test_memory_follows_what_waits_not_what_went_by() -> None:
    """Joined predictions leave dead entries behind in their ring and dead codes in the id dict; memory must
    follow what still waits and what is remembered.

    Labels join in random order, so most dead entries are not at the front where expiry would drop them:
    without compaction a long TTL would keep one entry per prediction ever seen.
    """
    j: LabelJoiner[int] = LabelJoiner(ttl_ms=10**12, max_pending=10**9, max_remembered=10)
    rng = random.Random(2)
    for round in range(20):
        ids = [f"r{round}-{i}" for i in range(5_000)]
        j.add_predictions(ids, list(range(len(ids))), now_ms=round)
        rng.shuffle(ids)
        joined = j.add_labels(ids[:4_900], ["y"] * 4_900, [0] * 4_900, now_ms=round)
        assert len(joined) == 4_900
        waiting = j.counts.pending_predictions
        assert waiting == 100 * (round + 1)
        live = waiting + 10  # the waiting ones and the remembered ones
        assert len(j._predictions.ids) <= 2 * waiting + 1024
        assert len(j._remembered.ids) <= 2 * 10 + 1024
        assert len(j._entries) <= 2 * live + 1024


class ReferenceJoiner:
    """The joiner's rules, one row at a time over ``OrderedDict``\\ s: slow, short and plainly right.

    The fast joiner (rings, codes, vectorised runs) must give exactly what this gives.
    """

    def __init__(self, ttl_ms: int, max_pending: int, max_remembered: int) -> None:
        self.ttl_ms, self.max_pending, self.max_remembered = ttl_ms, max_pending, max_remembered
        self.now: int | None = None
        self.predictions: OrderedDict[str, tuple[int, object]] = OrderedDict()  # id -> (arrival, payload)
        self.labels: OrderedDict[str, tuple[int, object, int]] = OrderedDict()  # id -> (arrival, label, time)
        self.remembered: OrderedDict[str, object] = OrderedDict()  # id -> the label that won
        self.c: Counter[str] = Counter()

    def advance(self, now: int) -> int:
        if self.now is None or now > self.now:
            self.now = now
            for side, waiting in (("predictions", self.predictions), ("labels", self.labels)):
                while waiting and next(iter(waiting.values()))[0] < now - self.ttl_ms:
                    waiting.popitem(last=False)
                    self.c[f"expired_{side}"] += 1
        return self.now

    def wait(self, side: str, waiting: OrderedDict, id: str, entry: tuple) -> None:
        waiting[id] = entry
        if len(waiting) > self.max_pending:
            waiting.popitem(last=False)
            self.c[f"evicted_{side}"] += 1

    def join(self, id: str, label: object) -> None:
        self.c["joined"] += 1
        if self.max_remembered:
            self.remembered[id] = label
            if len(self.remembered) > self.max_remembered:
                self.remembered.popitem(last=False)

    def add_predictions(self, ids: list[str], payloads: list[object], now: int) -> list[tuple]:
        now = self.advance(now)
        rows = []
        for id, payload in zip(ids, payloads, strict=True):
            self.c["predictions_seen"] += 1
            if id in self.predictions or id in self.remembered:
                self.c["duplicate_predictions"] += 1
            elif id in self.labels:
                _, label, time = self.labels.pop(id)
                self.join(id, label)
                rows.append((payload, label, time))
            else:
                self.wait("predictions", self.predictions, id, (now, payload))
        return rows

    def add_labels(self, ids: list[str], labels: list[object], times: list[int], now: int) -> list[tuple]:
        now = self.advance(now)
        rows = []
        for id, label, time in zip(ids, labels, times, strict=True):
            self.c["labels_seen"] += 1
            first = self.labels[id][1] if id in self.labels else self.remembered.get(id, self)
            if first is not self:
                same = first == label or (first != first and label != label)  # NaN matches NaN
                self.c["duplicate_labels" if same else "conflicting_labels"] += 1
            elif id in self.predictions:
                _, payload = self.predictions.pop(id)
                self.join(id, label)
                rows.append((payload, label, time))
            else:
                self.wait("labels", self.labels, id, (now, label, time))
        return rows

    @property
    def counts(self) -> JoinCounts:
        return JoinCounts(
            **{f.name: self.c[f.name] for f in dataclasses.fields(JoinCounts) if not f.name.startswith("pending")},
            pending_predictions=len(self.predictions),
            pending_labels=len(self.labels),
        )


@pytest.mark.parametrize("tiny_limits", [False, True], ids=["limits as shipped", "tiny limits"])
@pytest.mark.parametrize("seed", range(15))
def test_the_joiner_gives_what_the_reference_rules_give(
    seed: int, tiny_limits: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Random streams, random batch cuts, tiny bounds (so eviction, forgetting, expiry, compaction and the
    dict rebuild all happen, and evicted or forgotten ids come back within one batch): every batch's joined
    rows, in order, and every counter must equal the reference's.

    With tiny limits, rings are compacted and the dict rebuilt after a couple of dead entries, positions
    hit their limit after a few thousand, and epochs wrap after four compactions: what a sidecar meets
    after months, here in every stream.
    """
    if tiny_limits:
        monkeypatch.setattr(join, "_SLACK", 2)
        monkeypatch.setattr(join, "_POSITION_LIMIT", 3_000)
        monkeypatch.setattr(join, "_EPOCHS", 4)
    rng = random.Random(seed)
    ttl_ms, max_pending, max_remembered = rng.randint(5, 200), rng.randint(1, 30), rng.choice([0, 1, 3, 50])
    fast: LabelJoiner[object] = LabelJoiner(ttl_ms, max_pending, max_remembered)
    reference = ReferenceJoiner(ttl_ms, max_pending, max_remembered)
    n_ids = rng.choice([20, 300, 3_000])
    now = 0
    for _ in range(200):
        now += rng.choice([0, 0, 1, 3, 20, -5])  # a clock that stalls and steps back is clamped
        size = rng.choice([1, 2, 7, 40, 400])
        ids = [f"r{rng.randrange(n_ids)}" for _ in range(size)]
        if rng.random() < 0.5:
            payloads = [(id, rng.random()) for id in ids]
            got, want = fast.add_predictions(ids, payloads, now), reference.add_predictions(ids, payloads, now)
        else:
            labels = [rng.choice(["a", "b", math.nan]) for _ in ids]
            times = [now - rng.randrange(100) for _ in ids]
            got, want = fast.add_labels(ids, labels, times, now), reference.add_labels(ids, labels, times, now)
        assert list(zip(got.payloads, got.labels, got.event_times_ms, strict=True)) == want
        assert fast.counts == reference.counts
    c = fast.counts
    assert_invariants(c)
    assert c.joined > 0 and c.duplicate_predictions + c.duplicate_labels > 0
    if tiny_limits:
        assert max(fast._predictions.epoch, fast._labels.epoch, fast._remembered.epoch) < 4


def test_a_run_stops_only_before_rows_whose_entry_it_pushed_out() -> None:
    """A full buffer gets a batch of its oldest ids again followed by as many new ones: the repeats come
    before the evictions, so the batch is one run (stopping at each would cost time quadratic in its size);
    a batch of new ids followed by the repeats must stop where the repeated entries are already gone."""
    j: LabelJoiner[str] = LabelJoiner(ttl_ms=10**9, max_pending=1_000, max_remembered=10)
    old = [f"o{i}" for i in range(1_000)]
    j.add_predictions(old, old, now_ms=0)
    runs: list[int] = []  # the rows each _add_run call was given
    add_run = j._add_run
    j._add_run = lambda side, ids, *rest: runs.append(len(ids)) or add_run(side, ids, *rest)  # type: ignore[method-assign]
    new = [f"n{i}" for i in range(500)]
    j.add_predictions(old[:500] + new, old[:500] + new, now_ms=1)
    assert runs == [1_000]
    assert (j.counts.duplicate_predictions, j.counts.evicted_predictions) == (500, 500)
    runs.clear()
    newer = [f"m{i}" for i in range(3)]
    j.add_predictions([*newer, old[500], old[999]], [*newer, "again", "again"], now_ms=2)
    # The 5 rows stop after 3 (which push old[500] out, so it is new again) and the last 2 go together
    # (old[999] still waits: a repeat).
    assert runs == [5, 3, 2]
    assert (j.counts.duplicate_predictions, j.counts.evicted_predictions) == (501, 504)


def test_nan_labels_of_any_type_are_duplicates_not_conflicts() -> None:
    j: LabelJoiner[str] = LabelJoiner(ttl_ms=1_000, max_pending=10)
    for nan in (float("nan"), np.float32("nan"), Decimal("NaN")):
        id = f"r-{type(nan).__name__}"
        j.add_labels([id, id], [nan, nan], [0, 0], now_ms=0)
    assert (j.counts.duplicate_labels, j.counts.conflicting_labels) == (3, 0)


def test_memory_is_given_back_after_a_backlog_drains() -> None:
    j: LabelJoiner[str] = LabelJoiner(ttl_ms=1_000, max_pending=10**6, max_remembered=10)
    backlog = [f"r{i}" for i in range(200_000)]
    j.add_predictions(backlog, backlog, now_ms=0)
    for t in range(1, 50):
        j.add_predictions([f"q{t}"], ["q"], now_ms=t * 10_000)  # the backlog expires; one waits at a time
    ring = j._predictions
    assert ring.live == 1
    assert len(ring.ids) <= 1 + 2 * 1024 and len(ring.arrivals) <= 4 * len(ring.ids) + 1024
    assert len(j._entries) <= 2 * 11 + 1024


def test_the_reference_check_reaches_compaction_and_the_dict_rebuild() -> None:
    """A long stream, so rings are cut at the front, compacted (dead entries behind a live one that still
    waits) and the dict is rebuilt, several times each, while ids come back after being evicted or
    forgotten; checked against the reference."""
    rng = random.Random(99)
    fast: LabelJoiner[object] = LabelJoiner(ttl_ms=10**9, max_pending=2_000, max_remembered=300)
    reference = ReferenceJoiner(ttl_ms=10**9, max_pending=2_000, max_remembered=300)
    epochs, bases, rebuilt, entries = set(), set(), 0, fast._entries
    for now in range(600):
        space = 5_000 if now < 400 else 50_000  # few ids: many joins, dead piles; then many: dead codes
        ids = [f"r{rng.randrange(space)}" for _ in range(rng.randint(1, 300))]
        if rng.random() < 0.5:
            got, want = fast.add_predictions(ids, ids, now), reference.add_predictions(ids, ids, now)
        else:
            labels, times = [rng.choice("xyz") for _ in ids], [now] * len(ids)
            got, want = fast.add_labels(ids, labels, times, now), reference.add_labels(ids, labels, times, now)
        assert list(zip(got.payloads, got.labels, got.event_times_ms, strict=True)) == want
        assert fast.counts == reference.counts
        epochs.add((fast._predictions.epoch, fast._labels.epoch, fast._remembered.epoch))
        bases.add((fast._predictions.base, fast._labels.base, fast._remembered.base))
        rebuilt += fast._entries is not entries
        entries = fast._entries
    assert len(epochs) > 3 and len(bases) > 3 and rebuilt > 2
