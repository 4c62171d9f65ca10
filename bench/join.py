"""Join-only benchmark of scorer.join.LabelJoiner, against the plainest keyed join measured in the same run.

Run: ``python -m bench.join [--rows N] [--batch B]``. Prints nanoseconds per prediction and per label for
two shapes of stream:

- ``steady``: labels arrive a few batches after their predictions, shuffled within a window of four
  batches; what a sidecar beside a live scorer sees. Pending stays small.
- ``drain``: all predictions first (``--rows`` of them pending), then every label in random order; the
  worst case for memory locality.

The baseline is a bare ``dict``: predictions stored by id, a label pops its prediction. It has no TTL, no
bounds, no dedup and no counters, so it is the floor for a keyed join in Python; the ratio says what the
joiner's rules cost on top of it. Nothing here is asserted: timings are for reading (bench/analysis.md).
"""

from __future__ import annotations

import argparse
import gc
import random
import time
from collections.abc import Callable

from scorer.join import LabelJoiner

Batches = list[tuple[str, list[str]]]  # ("p" or "l", the batch's ids), in arrival order


def _stream(rows: int, batch: int, shape: str) -> Batches:
    ids = [f"id-{i:09d}" for i in range(rows)]
    rng = random.Random(1)
    predictions = [ids[s : s + batch] for s in range(0, rows, batch)]
    if shape == "drain":
        shuffled = ids[:]
        rng.shuffle(shuffled)
        labels = [shuffled[s : s + batch] for s in range(0, rows, batch)]
        return [("p", b) for b in predictions] + [("l", b) for b in labels]
    order: list[str] = []
    for s in range(0, rows, 4 * batch):
        window = ids[s : s + 4 * batch]
        rng.shuffle(window)
        order.extend(window)
    labels = [order[s : s + batch] for s in range(0, rows, batch)]
    lag = 8
    stream: Batches = []
    for k in range(len(predictions) + lag):
        if k < len(predictions):
            stream.append(("p", predictions[k]))
        if k >= lag:
            stream.append(("l", labels[k - lag]))
    return stream


def _time(
    stream: Batches, add_predictions: Callable[[list[str]], object], add_labels: Callable[[list[str]], object]
) -> tuple[float, float]:
    """Seconds spent in predictions and in labels."""
    gc.collect()
    in_predictions = in_labels = 0.0
    for kind, ids in stream:
        started = time.perf_counter()
        if kind == "p":
            add_predictions(ids)
            in_predictions += time.perf_counter() - started
        else:
            add_labels(ids)
            in_labels += time.perf_counter() - started
    return in_predictions, in_labels


def measure(rows: int, batch: int, shape: str) -> dict[str, float]:
    """ns per row for the joiner and for the bare-dict baseline, on the same stream."""
    stream = _stream(rows, batch, shape)
    payload, label = (None, 0.5), "yes"

    waiting: dict[str, object] = {}
    joined: list[object] = []

    def bare_predictions(ids: list[str]) -> None:
        waiting.update(zip(ids, [payload] * len(ids), strict=True))

    def bare_labels(ids: list[str]) -> None:
        pop = waiting.pop
        joined.extend(pop(id, None) for id in ids)

    base_p, base_l = _time(stream, bare_predictions, bare_labels)
    joiner: LabelJoiner[object] = LabelJoiner(ttl_ms=10**12, max_pending=rows + 1)
    now = iter(range(10**9))
    join_p, join_l = _time(
        stream,
        lambda ids: joiner.add_predictions(ids, [payload] * len(ids), next(now)),
        lambda ids: joiner.add_labels(ids, [label] * len(ids), [0] * len(ids), next(now)),
    )
    assert joiner.counts.joined == rows
    return {
        "joiner_prediction_ns": join_p / rows * 1e9,
        "joiner_label_ns": join_l / rows * 1e9,
        "bare_prediction_ns": base_p / rows * 1e9,
        "bare_label_ns": base_l / rows * 1e9,
        "ratio": (join_p + join_l) / (base_p + base_l),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=2_500)
    args = parser.parse_args()
    for shape in ("steady", "drain"):
        r = measure(args.rows, args.batch, shape)
        print(
            f"{shape:<6} joiner {r['joiner_prediction_ns']:5.0f} ns/prediction {r['joiner_label_ns']:5.0f} ns/label; "
            f"bare dict {r['bare_prediction_ns']:4.0f} + {r['bare_label_ns']:4.0f} ns; joiner/bare {r['ratio']:.1f}x"
        )


if __name__ == "__main__":
    main()
