"""Evaluation sidecar benchmark: join-and-update throughput and memory with a million pending predictions.

Run: ``python -m bench.sidecar [--rows 200000] [--pending 1000000]`` (``make bench`` runs it too). It
measures, in one process and in the same run:

- join + window update throughput (rows/s) for each task, with predictions arriving first and their
  labels later in shuffled order (the sidecar's steady state), over the default windows (last 1000,
  5 minutes, 1 hour);
- peak memory (RSS growth and Python heap) while 1,000,000 predictions wait for labels that have not
  arrived: the bound that ``--max-pending`` enforces;
- snapshot (scrape) time for each task with full windows;
- end to end (``--end-to-end``, on by default): on the dev broker, ``scorer run`` scores a pre-filled
  topic of feature records (its throughput, measured as ``bench.run`` does), then ``scorer evaluate``
  reads those predictions and one label per prediction (shuffled, from a pre-filled topic) and joins
  them all: its rows/s counts Kafka reading and Avro decoding of both records of every joined row. The
  ratio of the two, from the same run, says whether the sidecar keeps up with the scorer it sits beside.

It writes ``docs/sidecar-performance.md``. Numbers are rates measured here, on this machine, now: compare
them with the scorer's throughput in ``docs/performance.md`` measured the same way.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import tracemalloc
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from scorer.evaluation import Evaluator
from scorer.join import LabelJoiner, PredictionFacts

SIDECAR_ROOTS = {"main": "EvaluationSidecar.run ("}
"""Where py-spy samples of the sidecar's loop start (``EvaluationSidecar.run``)."""

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


BATCH = 2_500
"""Rows per side per batch: half of the sidecar's largest consumed batch (``scorer.sidecar.CONSUME_BATCH``)."""


def measure_throughput(task: str, n: int) -> dict[str, float]:
    """Join and window update as the sidecar does them: a batch per side, what joined to ``add_scored``."""
    predictions, labels = _stream(task, n, seed=1)
    classes = {"binary": ["no", "yes"], "multiclass": ["a", "b", "c", "d"]}.get(task)
    evaluator = Evaluator(task, classes) if task != "regression" else Evaluator("regression")  # type: ignore[arg-type]
    joiner: LabelJoiner[tuple[Evaluator, object]] = LabelJoiner(ttl_ms=6 * 3600 * 1000, max_pending=1_000_000)
    clock = 1_796_000_000_000
    # what the sidecar computes with polars while decoding, before the clock starts
    payloads = [(evaluator, evaluator.score_of(p)) for p in predictions]
    ids = [p.id for p in predictions]
    started = time.perf_counter()
    for start in range(0, n, BATCH):
        joiner.add_predictions(ids[start : start + BATCH], payloads[start : start + BATCH], clock)
    for start in range(0, n, BATCH):
        batch = labels[start : start + BATCH]
        joined = joiner.add_labels([b[0] for b in batch], [b[1] for b in batch], [b[2] for b in batch], clock)
        evaluator.add_scored(joined.labels, [score for _, score in joined.payloads], joined.event_times_ms)
    elapsed = time.perf_counter() - started
    scrape_started = time.perf_counter()
    evaluator.snapshot()
    scrape = time.perf_counter() - scrape_started
    return {"rows_per_s": n / elapsed, "scrape_ms": scrape * 1000, "joined": joiner.counts.joined}


def measure_pending(pending: int) -> dict[str, float]:
    """Memory of ``pending`` waiting predictions, each kept as the sidecar keeps it: ``(evaluator, score)``."""
    evaluator = Evaluator("binary", ["no", "yes"])
    scores = np.random.default_rng(2).random(pending).tolist()
    gc.collect()
    rss_before = _rss_mb()
    tracemalloc.start()
    joiner: LabelJoiner[tuple[Evaluator, object]] = LabelJoiner(ttl_ms=6 * 3600 * 1000, max_pending=pending)
    started = time.perf_counter()
    for start in range(0, pending, BATCH):
        batch = range(start, min(start + BATCH, pending))
        joiner.add_predictions([f"pending-{i}" for i in batch], [(evaluator, scores[i]) for i in batch], 1_796_000_000)
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


def _counters(port: int) -> tuple[float, float]:
    """(records read, rows joined) from the sidecar's /metrics; zeros before it answers."""
    url = f"http://127.0.0.1:{port}/metrics"
    try:
        with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - loopback URL built here
            text = response.read().decode()
    except OSError:
        return 0.0, 0.0
    seen = joined = 0.0
    for line in text.splitlines():
        if line.startswith("scorer_evaluation_seen_total{"):
            seen += float(line.rsplit(" ", 1)[1])
        elif line.startswith('scorer_evaluation_records_total{outcome="joined"}'):
            joined = float(line.rsplit(" ", 1)[1])
    return seen, joined


def _last_busy(pid: int, idle_for_s: float, period_s: float = 0.05) -> tuple[float, float | None]:
    """Wait until ``pid`` has used under 5% of a core for ``idle_for_s``; when (and its CPU time) it last was busy."""
    from bench.harness import cpu_seconds

    last = (time.monotonic(), cpu_seconds(pid))
    while True:
        time.sleep(period_s)
        now, cpu = time.monotonic(), cpu_seconds(pid)
        if cpu is None or last[1] is None:
            return last
        if cpu - last[1] > 0.05 * (now - last[0]) + 0.01:  # busy (one clock tick of slack)
            last = (now, cpu)
        elif now - last[0] >= idle_for_s:
            return last


def measure_end_to_end(records: int, seed: int = 11, py_spy: bool = False) -> dict[str, Any]:
    """``scorer run`` over ``records`` features, then ``scorer evaluate`` over its predictions and labels.

    With ``py_spy`` (and py-spy installed) the sidecar is sampled while it joins, and the result carries
    where its main thread spent its time (``bench.pyspy.summarise``).
    """
    from bench import pyspy
    from bench.harness import cpu_seconds, measure_throughput, read_status_kb
    from bench.workload import build, create_topics
    from scorer import devstack
    from scorer.bundle import load_bundle
    from scorer.config import KafkaSettings
    from scorer.labels import publish_labels

    state = Path(tempfile.mkdtemp(prefix="scorer-bench-sidecar-"))
    stack = devstack.up(state / "stack", broker_port=0, registry_port=0)
    try:
        work = build(stack.bootstrap_servers, stack.registry_url, state, records, seed, "bench.sidecar.features")
        scorer = measure_throughput(
            "scorer",
            "linear",
            records,
            bootstrap=stack.bootstrap_servers,
            registry_url=stack.registry_url,
            input_topic=work.input_topic,
            bundle=work.bundles["linear"],
            state=state,
            tag="sidecar-e2e",
        )
        predictions = "bench.out.sidecar-e2e"
        labels_topic = "bench.sidecar.labels"
        create_topics(stack.bootstrap_servers, [labels_topic])
        classes = list(load_bundle(work.bundles["linear"]).classes or [])
        rng = np.random.default_rng(seed)
        ids = [key.decode() for key in work.keys]
        truth = pd.DataFrame({"id": ids, "label": rng.choice(classes, size=len(ids))}).sample(frac=1, random_state=1)
        settings = KafkaSettings(bootstrap_servers=stack.bootstrap_servers, schema_registry_url=stack.registry_url)
        publish_labels(settings, truth, labels_topic, label_type="string" if isinstance(classes[0], str) else None)

        port = devstack.free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("SCORER_")}
        env.update(
            {
                "SCORER_BOOTSTRAP_SERVERS": stack.bootstrap_servers,
                "SCORER_SCHEMA_REGISTRY_URL": stack.registry_url,
                "SCORER_PREDICTIONS_TOPIC": predictions,
                "SCORER_LABELS_TOPIC": labels_topic,
                "SCORER_GROUP_ID": "bench-sidecar-evaluate",  # not the scorer run's group (bench-<tag>)
                "SCORER_METRICS_PORT": str(port),
                "SCORER_LOG_LEVEL": "WARNING",
            }
        )
        log = (state / "evaluate.log").open("wb")
        process = subprocess.Popen(
            [sys.executable, "-m", "scorer", "evaluate"], env=env, stdout=log, stderr=subprocess.STDOUT
        )
        launched = time.monotonic()
        sampler = pyspy.attach(process.pid, state / "py-spy-evaluate.txt") if py_spy else None
        try:
            # The rate counts from the first record read (not the first join: predictions are read before
            # their labels) to the last join, so it covers reading and decoding both records of every row.
            # Each scrape computes every window under the sidecar's lock (tens of ms with 400,000 rows in a
            # window), so /metrics is asked only until the first record is read and then once the sidecar
            # has gone idle; in between the end is watched through its CPU time, which costs it nothing.
            first: tuple[float, float | None] | None = None
            while first is None and time.monotonic() - launched < 60 and process.poll() is None:
                time.sleep(0.05)
                if _counters(port)[0] > 0:
                    first = (time.monotonic(), cpu_seconds(process.pid))
            joined, ended, cpu_end = 0.0, time.monotonic(), cpu_seconds(process.pid)
            while first is not None and joined < records and process.poll() is None:
                ended, cpu_end = _last_busy(process.pid, idle_for_s=1.0)
                joined = _counters(port)[1]
                if joined < records and time.monotonic() - ended > 60:
                    break  # idle for a minute short of the end: reported below
            peak = read_status_kb(process.pid, "VmHWM")
        finally:
            process.terminate()
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            log.close()
            if sampler is not None:
                sampler.wait(60)  # py-spy writes its samples when the process it samples has exited
        if first is None or joined < records:
            raise RuntimeError(f"scorer evaluate joined {joined:.0f} of {records}; see {state / 'evaluate.log'}")
        rows = joined
        cpu = (cpu_end - first[1]) / rows * 1e6 if cpu_end is not None and first[1] is not None else float("nan")
        sidecar_rate = rows / (ended - first[0])
        profile = pyspy.summarise(state / "py-spy-evaluate.txt", SIDECAR_ROOTS) if sampler is not None else None
        return {
            "profile": profile,
            "records": records,
            "scorer_rec_per_s": scorer.throughput,
            "sidecar_rows_per_s": sidecar_rate,
            "ratio": sidecar_rate / scorer.throughput,
            "sidecar_cpu_us_per_row": cpu,
            "sidecar_peak_rss_mb": peak or float("nan"),
        }
    finally:
        devstack.stop(state / "stack")  # by the PIDs recorded in the state directory: before removing it
        if sys.exc_info()[0] is None:
            shutil.rmtree(state, ignore_errors=True)
        else:
            print(f"the run's files stay in {state} (evaluate.log, the contenders' logs)")


def _end_to_end_runs(args: argparse.Namespace) -> list[dict[str, Any]]:
    """``--repeats`` end-to-end pairs, each on a fresh dev stack with its own seed, printed as they finish."""
    runs = []
    for k in range(args.repeats):
        runs.append(measure_end_to_end(args.rows, seed=11 + k, py_spy=args.py_spy))
        _print_end_to_end(runs[-1])
    return runs


def _print_end_to_end(e2e: dict[str, Any]) -> None:
    print(
        f"end to end: scorer {e2e['scorer_rec_per_s']:,.0f} rec/s, sidecar {e2e['sidecar_rows_per_s']:,.0f} "
        f"joined rows/s ({e2e['ratio']:.2f}x), {e2e['sidecar_cpu_us_per_row']:.1f} CPU us/row"
    )
    profile = e2e.get("profile")
    if profile:
        print(f"py-spy: {profile['samples']} samples of the sidecar's loop; inclusive shares:")
        for name, share in profile["inclusive"]:
            print(f"  {share:6.1%}  {name}")
        print("self shares:")
        for name, share in profile["self"]:
            print(f"  {share:6.1%}  {name}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--pending", type=int, default=1_000_000)
    parser.add_argument("--end-to-end", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--repeats", type=int, default=3, help="end-to-end runs; the median ratio is reported")
    parser.add_argument("--py-spy", action="store_true", help="sample the sidecar end to end (needs py-spy)")
    parser.add_argument("--only-end-to-end", action="store_true", help="only the end-to-end runs; write nothing")
    args = parser.parse_args()
    if args.only_end_to_end:
        _end_to_end_runs(args)
        return
    results = {task: measure_throughput(task, args.rows) for task in ("binary", "multiclass", "regression")}
    for task, values in results.items():
        print(f"{task:<11} {values['rows_per_s']:>10,.0f} rows/s joined+updated; scrape {values['scrape_ms']:.1f} ms")
    memory = measure_pending(args.pending)
    print(
        f"{memory['pending']:,} pending predictions: heap peak {memory['python_heap_peak_mb']:.0f} MB, "
        f"RSS +{memory['rss_growth_mb']:.0f} MB ({memory['bytes_per_pending']:.0f} B each)"
    )
    e2e = None
    if args.end_to_end:  # each run on a fresh dev stack; the median ratio's run is reported, with all ratios
        runs = _end_to_end_runs(args)
        e2e = sorted(runs, key=lambda run: run["ratio"])[len(runs) // 2]
        e2e["all_ratios"] = [run["ratio"] for run in runs]
    lines = [
        "# Evaluation sidecar performance",
        "",
        f"Measured by `python -m bench.sidecar --rows {args.rows} --pending {args.pending}` on "
        f"{platform.machine()}, Python {platform.python_version()}, {time.strftime('%Y-%m-%d')}.",
        "In-process: `LabelJoiner` + `Evaluator` with the default windows (last 1000, 5m, 1h), in batches of",
        f"{BATCH:,} per side as the sidecar hands them over; predictions first, labels later in shuffled order.",
        "Kafka reading and Avro decoding are not included here (the end-to-end run below has them).",
        "",
        "| task | join + update (rows/s) | scrape of all windows (ms) |",
        "| --- | ---: | ---: |",
        *(f"| {t} | {v['rows_per_s']:,.0f} | {v['scrape_ms']:.1f} |" for t, v in results.items()),
        "",
        f"Memory with {memory['pending']:,} unmatched predictions pending (binary; each kept as the sidecar keeps it):",
        f"Python heap peak {memory['python_heap_peak_mb']:.0f} MB ({memory['bytes_per_pending']:.0f} bytes per pending",
        f"prediction), RSS growth {memory['rss_growth_mb']:.0f} MB; inserts at {memory['insert_rows_per_s']:,.0f} rows/s.",
        "`--max-pending` bounds this: memory is proportional to it, never to the stream's length.",
        "",
    ]
    if e2e:
        verdict = "keeps up with" if e2e["ratio"] >= 1 else "does NOT keep up with"
        lines += [
            "## End to end on the dev broker",
            "",
            f"`scorer run` (linear model, defaults) scored {e2e['records']:,} pre-filled feature records at "
            f"{e2e['scorer_rec_per_s']:,.0f} records/s; then `scorer evaluate` read its predictions and one label "
            f"each (shuffled, pre-filled) and joined them at {e2e['sidecar_rows_per_s']:,.0f} rows/s "
            f"({e2e['sidecar_cpu_us_per_row']:.1f} CPU µs per joined row, two records read and decoded per row; "
            f"peak RSS {e2e['sidecar_peak_rss_mb']:.0f} MB): {e2e['ratio']:.2f}x the scorer's rate, so the sidecar "
            f"{verdict} the scorer it sits beside. Same run, same machine, one after the other; the median of "
            f"{len(e2e['all_ratios'])} such pairs (ratios {', '.join(f'{r:.2f}' for r in sorted(e2e['all_ratios']))}).",
            "",
            'What limits it, and what was tried: [bench/analysis.md](../bench/analysis.md), "Evaluation sidecar".',
            "",
        ]
    OUT.write_text("\n".join(lines))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
