"""Evaluation sidecar benchmark: join-and-update throughput and memory with a million pending predictions.

Run: ``python -m bench.sidecar [--rows 200000] [--pending 1000000]`` (``make bench`` runs it too). It
measures, in one process and in the same run:

- join + window update throughput (rows/s) for each task, with predictions arriving first and their
  labels later in shuffled order (the sidecar's steady state), over the default windows (last 1000,
  5 minutes, 1 hour);
- peak memory (RSS growth and Python heap) while 1,000,000 predictions wait for labels that have not
  arrived: the bound that ``--max-pending`` enforces;
- snapshot (scrape) time for each task with full windows.

It writes ``docs/sidecar-performance.md``. Numbers are rates measured here, on this machine, now: compare
them with the scorer's throughput in ``docs/performance.md`` measured the same way.
"""

from __future__ import annotations

import argparse
import gc
import platform
import resource
import time
import tracemalloc
from pathlib import Path

import numpy as np

from scorer.evaluation import Evaluator
from scorer.join import LabelJoiner, PredictionFacts

OUT = Path(__file__).resolve().parent.parent / "docs" / "sidecar-performance.md"


def _rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _stream(task: str, n: int, seed: int) -> tuple[list[PredictionFacts], list[tuple[str, object, int]]]:
    rng = np.random.default_rng(seed)
    now = 1_796_000_000_000
    predictions, labels = [], []
    classes = {"binary": ["no", "yes"], "multiclass": ["a", "b", "c", "d"]}.get(task)
    for i in range(n):
        if classes is None:
            y = float(rng.normal(100, 20))
            predictions.append(PredictionFacts(f"r{i}", "m", "1", y + float(rng.normal()), None, None))
            labels.append((f"r{i}", y, now + i))
            continue
        p = rng.dirichlet(np.ones(len(classes)))
        best = classes[int(np.argmax(p))]
        probabilities = dict(zip(classes, map(float, p), strict=True))
        positive = float(p[-1]) if task == "binary" else None
        predictions.append(PredictionFacts(f"r{i}", "m", "1", best, positive, probabilities))
        labels.append((f"r{i}", best if rng.random() < 0.8 else classes[0], now + i))
    order = rng.permutation(n)
    return predictions, [labels[i] for i in order]


def measure_throughput(task: str, n: int) -> dict[str, float]:
    predictions, labels = _stream(task, n, seed=1)
    classes = {"binary": ["no", "yes"], "multiclass": ["a", "b", "c", "d"]}.get(task)
    evaluator = Evaluator(task, classes) if task != "regression" else Evaluator("regression")  # type: ignore[arg-type]
    joiner = LabelJoiner(ttl_ms=6 * 3600 * 1000, max_pending=1_000_000)
    started = time.perf_counter()
    clock = 1_796_000_000_000
    for prediction in predictions:
        joiner.add_prediction(prediction, clock)
    for record_id, label, event_ms in labels:
        joined = joiner.add_label(record_id, label, event_ms, clock)
        if joined is not None:
            evaluator.add(joined)
    elapsed = time.perf_counter() - started
    scrape_started = time.perf_counter()
    evaluator.snapshot()
    scrape = time.perf_counter() - scrape_started
    return {"rows_per_s": n / elapsed, "scrape_ms": scrape * 1000, "joined": joiner.counts.joined}


def measure_pending(pending: int) -> dict[str, float]:
    gc.collect()
    rss_before = _rss_mb()
    tracemalloc.start()
    joiner = LabelJoiner(ttl_ms=6 * 3600 * 1000, max_pending=pending)
    probabilities = {"no": 0.3, "yes": 0.7}
    started = time.perf_counter()
    for i in range(pending):
        joiner.add_prediction(
            PredictionFacts(f"pending-{i}", "m", "1", "yes", 0.7, dict(probabilities)), 1_796_000_000_000
        )
    elapsed = time.perf_counter() - started
    _current, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    rss_after = _rss_mb()
    assert joiner.counts.pending_predictions == pending
    return {
        "pending": pending,
        "insert_rows_per_s": pending / elapsed,
        "python_heap_peak_mb": peak / 2**20,
        "rss_growth_mb": rss_after - rss_before,
        "bytes_per_pending": peak / pending,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--pending", type=int, default=1_000_000)
    args = parser.parse_args()
    results = {task: measure_throughput(task, args.rows) for task in ("binary", "multiclass", "regression")}
    for task, values in results.items():
        print(f"{task:<11} {values['rows_per_s']:>10,.0f} rows/s joined+updated; scrape {values['scrape_ms']:.1f} ms")
    memory = measure_pending(args.pending)
    print(
        f"{memory['pending']:,} pending predictions: heap peak {memory['python_heap_peak_mb']:.0f} MB, "
        f"RSS +{memory['rss_growth_mb']:.0f} MB ({memory['bytes_per_pending']:.0f} B each)"
    )
    lines = [
        "# Evaluation sidecar performance",
        "",
        f"Measured by `python -m bench.sidecar --rows {args.rows} --pending {args.pending}` on "
        f"{platform.machine()}, Python {platform.python_version()}, {time.strftime('%Y-%m-%d')}.",
        "In-process: `LabelJoiner` + `Evaluator` with the default windows (last 1000, 5m, 1h); predictions",
        "first, labels later in shuffled order. Kafka reading and Avro decoding are not included here.",
        "",
        "| task | join + update (rows/s) | scrape of all windows (ms) |",
        "| --- | ---: | ---: |",
        *(f"| {t} | {v['rows_per_s']:,.0f} | {v['scrape_ms']:.1f} |" for t, v in results.items()),
        "",
        f"Memory with {memory['pending']:,} unmatched predictions pending (binary, with probability maps):",
        f"Python heap peak {memory['python_heap_peak_mb']:.0f} MB ({memory['bytes_per_pending']:.0f} bytes per pending",
        f"prediction), RSS growth {memory['rss_growth_mb']:.0f} MB; inserts at {memory['insert_rows_per_s']:,.0f} rows/s.",
        "`--max-pending` bounds this: memory is proportional to it, never to the stream's length.",
        "",
    ]
    OUT.write_text("\n".join(lines))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
