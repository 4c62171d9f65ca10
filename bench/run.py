"""``make bench``: scorer against the naive and the batched loop on the dev broker, then docs/performance.md.

Phases (each logged with its elapsed time):

1. start the dev stack (``scorer.devstack``) on free loopback ports;
2. train both models, encode the stream, fill the 3-partition input topic;
3. in-memory cost per stage for each approach (``bench.stages``);
4. throughput: every contender x model x run over the same input topic (naive on a prefix);
5. latency at fixed input rates: 1,000/s and 50% of the scorer's median throughput, for every contender that
   can sustain the rate; for scorer also 25% and 75%, and a max-batch-size sweep at 50% (linear model);
6. memory against stream length: scorer over a 1,000,000-record topic (skipped with ``--quick``);
7. write docs/performance.md, the two plots, and results.json in the state directory.

Everything started here is stopped by PID at the end, also on failure or Ctrl-C.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import io
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import harness, pyspy, report, stages, workload
from scorer import devstack
from scorer.config import DEFAULT_MAX_BATCH_SIZE

REPO = Path(__file__).resolve().parents[1]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 20,000 records, 1 run, short latency runs")
    parser.add_argument("--records", type=int, help="records in the input topic (default 200,000; quick 20,000)")
    parser.add_argument("--runs", type=int, help="throughput runs per contender and model (default 3; quick 1)")
    parser.add_argument(
        "--naive-records", type=int, help="prefix the naive loop is timed on (default 2,000; quick 300)"
    )
    parser.add_argument(
        "--naive-seconds", type=float, help="stop a naive run this long after its first output (default 45; quick 10)"
    )
    parser.add_argument(
        "--latency-seconds", type=float, help="length of each fixed-rate run in s (default 20; quick 5)"
    )
    parser.add_argument(
        "--sweep", type=str, help="max batch sizes for the scorer sweep (default 100,500,1000,5000,20000; quick 1000)"
    )
    parser.add_argument(
        "--memory-records", type=int, help="records of the memory run (default 1,000,000; quick 0 = skip)"
    )
    parser.add_argument("--models", default=",".join(workload.MODELS), help="comma-separated: linear,gb")
    parser.add_argument("--seed", type=int, default=4)
    parser.add_argument(
        "--quiet-wait",
        type=float,
        help="before each measurement, wait up to this many seconds for other processes to go quiet "
        "(default 3; quick 1): the machine may be shared",
    )
    parser.add_argument(
        "--py-spy",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="profile one extra scorer run per model with py-spy (default: when py-spy is installed, not with --quick)",
    )
    parser.add_argument("--state-dir", type=Path, help="logs, bundles and results.json (default: a new temp dir)")
    parser.add_argument(
        "--out",
        type=Path,
        help="the report (plots beside it); default docs/performance.md, with --quick <state dir>/performance.md",
    )
    parser.add_argument(
        "--compare",
        type=Path,
        action="append",
        default=[],
        metavar="RESULTS_JSON",
        help="an earlier run's results.json to compare with in the report (repeatable); "
        "default: every file in bench/baselines/ (--compare /dev/null: none)",
    )
    parser.add_argument(
        "--scorer-ref",
        help="measure scorer as committed at this git ref (e.g. HEAD) instead of the working tree: "
        "its scorer/ and schemas/ are extracted into the state directory and put first on the path",
    )
    args = parser.parse_args(argv)
    quick = args.quick
    defaults = {
        "records": 20_000 if quick else 200_000,
        "runs": 1 if quick else 3,
        "naive_records": 300 if quick else 2_000,
        "naive_seconds": 10.0 if quick else 45.0,
        "latency_seconds": 5.0 if quick else 20.0,
        "sweep": "1000" if quick else "100,500,1000,5000,20000",
        "memory_records": 0 if quick else 1_000_000,
        "quiet_wait": 1.0 if quick else 3.0,
    }
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    base = Path(os.environ.get("BENCH_CWD", Path.cwd()))  # --scorer-ref re-runs this in the snapshot directory
    args.compare = [base / path for path in args.compare]
    args.sweep_sizes = [int(s) for s in str(args.sweep).split(",") if s.strip()]
    args.model_list = [m for m in args.models.split(",") if m]
    args.profile_records = min(args.records, 5_000 if quick else 20_000)
    args.naive_profile_records = 50 if quick else 200
    args.profile_repeats = 1 if quick else 3
    return args


SNAPSHOT_ENV = "BENCH_SCORER_SNAPSHOT"


def reexec_on_snapshot(ref: str, argv: list[str], state: Path, out: Path) -> None:
    """Extract ``ref``'s scorer/ and schemas/ and run this command again with them first on the path."""
    commit = subprocess.run(
        ["git", "rev-parse", "--short", f"{ref}^{{commit}}"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.strip()
    target = state / f"scorer-{commit}"
    archive = subprocess.run(["git", "archive", commit, "scorer", "schemas"], cwd=REPO, capture_output=True, check=True)
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(target, filter="data")
    env = {
        **os.environ,
        SNAPSHOT_ENV: f"{ref} = {commit}",
        "PYTHONPATH": os.pathsep.join([str(target), str(REPO)]),
        "BENCH_CWD": str(Path.cwd()),
    }
    print(f"measuring scorer as committed at {ref} ({commit}), extracted to {target}", flush=True)
    os.chdir(target)  # python -m puts the working directory first on sys.path: the snapshot, not the repo
    command = [sys.executable, "-m", "bench.run", *argv, "--state-dir", str(state), "--out", str(out)]
    os.execve(sys.executable, command, env)  # noqa: S606 - our own interpreter and module


class Clock:
    def __init__(self) -> None:
        self.started = time.monotonic()

    def log(self, text: str) -> None:
        elapsed = time.monotonic() - self.started
        print(f"[{int(elapsed // 60):02d}:{elapsed % 60:04.1f}] {text}", flush=True)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    state = (args.state_dir or Path(tempfile.mkdtemp(prefix="scorer-bench-"))).resolve()
    state.mkdir(parents=True, exist_ok=True)
    if args.out is None:  # a smoke run must not overwrite the committed figures
        args.out = state / "performance.md" if args.quick else REPO / "docs" / "performance.md"
    if args.scorer_ref and not os.environ.get(SNAPSHOT_ENV):
        reexec_on_snapshot(args.scorer_ref, argv, state, args.out.resolve())
    clock = Clock()
    clock.log(f"state, logs and results in {state}")
    results: dict[str, Any] = {
        "started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "config": {
            k: getattr(args, k)
            for k in (
                "quick",
                "records",
                "runs",
                "naive_records",
                "naive_seconds",
                "latency_seconds",
                "sweep_sizes",
                "memory_records",
                "model_list",
                "seed",
                "profile_records",
                "naive_profile_records",
                "profile_repeats",
                "quiet_wait",
            )
        },
        "environment": {**report.environment(REPO), "scorer_code": scorer_code()},
        "throughput": [],
        "latency": [],
        "latency_skipped": [],
    }
    stack_dir = state / "stack"
    stack = devstack.up(stack_dir, broker_port=0, registry_port=0)
    try:
        clock.log(
            f"dev stack: broker {stack.bootstrap_servers} (pid {stack.broker_pid}), registry {stack.registry_url}"
        )
        run_suite(args, stack, state, results, clock)
    finally:
        devstack.stop(stack_dir)
        clock.log("dev stack stopped")
    results["duration_s"] = time.monotonic() - clock.started
    (state / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    report.add_comparisons(results, args.compare or report.baselines(), log=clock.log)
    report.write(results, args.out)
    clock.log(f"wrote {args.out} and its plots; raw results in {state / 'results.json'}")
    return 0


def scorer_code() -> str:
    import scorer

    where = Path(scorer.__file__).resolve().parent
    snapshot = os.environ.get(SNAPSHOT_ENV)
    if snapshot:
        return f"git {snapshot} (snapshot in {where.parent})"
    return "working tree" + (f" ({where})" if where.parent != REPO else "")


def run_suite(
    args: argparse.Namespace, stack: devstack.DevStack, state: Path, results: dict[str, Any], clock: Clock
) -> None:
    bootstrap, registry = stack.bootstrap_servers, stack.registry_url
    input_topic = "bench.features"
    started = time.monotonic()
    load = workload.build(bootstrap, registry, state, args.records, args.seed, input_topic)
    bundles = {m: load.bundles[m] for m in args.model_list}
    clock.log(
        f"workload: 2 models trained, {args.records:,} records produced to {input_topic} in {time.monotonic() - started:.1f} s"
    )

    clock.log("in-memory stage profile")
    harness.wait_for_quiet(args.quiet_wait)
    background = harness.BackgroundLoad()
    results["stages"] = stages.profile_all(
        load.values,
        bundles,
        load.schema_text,
        load.schema_id,
        args.profile_records,
        args.naive_profile_records,
        args.profile_repeats,
        log=clock.log,
    )
    results["stages_background_cores"] = background.stop()

    common = {"bootstrap": bootstrap, "registry_url": registry, "state": state}
    for run in range(args.runs):
        for model, bundle in bundles.items():
            for kind in harness.CONTENDERS:
                target = min(args.naive_records, args.records) if kind == "naive" else args.records
                tag = f"tp-{kind}-{model}-{run}"
                harness.wait_for_quiet(args.quiet_wait)
                result = harness.measure_throughput(
                    kind,
                    model,
                    target,
                    input_topic=input_topic,
                    bundle=bundle,
                    tag=tag,
                    max_seconds=args.naive_seconds if kind == "naive" else None,
                    **common,
                )
                results["throughput"].append(dataclasses.asdict(result))
                clock.log(
                    f"throughput {kind:<8} {model:<6} run {run + 1}/{args.runs}: {result.throughput:,.0f} rec/s "
                    f"({result.outputs:,} outputs, {result.duplicates} duplicates, peak RSS {result.peak_rss_mb or 0:.0f} MB, "
                    f"first output {result.startup_s or 0:.1f} s after start, "
                    f"CPU {result.cpu_us_per_record or 0:.1f} µs/record, other load {result.background_cores or 0:.2f} cores)"
                )

    medians = {
        (model, kind): statistics.median(
            r["throughput"] for r in results["throughput"] if r["model"] == model and r["contender"] == kind
        )
        for model in bundles
        for kind in harness.CONTENDERS
    }

    if args.py_spy or (args.py_spy is None and not args.quick and pyspy.executable() is not None):
        results["py_spy"] = profile_scorer(args, bundles, input_topic, state, common, clock)

    def latency(kind: str, model: str, label: str, rate: float, scorer_env: dict[str, str] | None = None) -> None:
        sustainable = medians[(model, kind)]
        if sustainable < rate * 1.1:
            reason = f"max {sustainable:,.0f}/s < rate"
            results["latency_skipped"].append({"contender": kind, "model": model, "label": label, "reason": reason})
            clock.log(f"latency   {kind:<8} {model:<6} {label:>6}: skipped, {reason} {rate:,.0f}/s")
            return
        size = (scorer_env or {}).get("SCORER_MAX_BATCH_SIZE", "")
        tag = f"lat-{kind}-{model}-{label.replace('/', '').replace('%', 'pct')}{'-b' + size if size else ''}"
        harness.wait_for_quiet(args.quiet_wait)
        run = harness.measure_latency(
            kind,
            model,
            rate,
            args.latency_seconds,
            schema_text=load.schema_text,
            values=load.values,
            bundle=bundles[model],
            tag=tag,
            scorer_env=scorer_env,
            **common,
        )
        results["latency"].append({**dataclasses.asdict(run), "label": label})
        batch = f" batch {run.max_batch_size}" if run.max_batch_size else ""
        clock.log(
            f"latency   {kind:<8} {model:<6} {label:>6}{batch}: {run.achieved_rate:,.0f}/s, p50 {run.p50_ms:.0f} "
            f"p95 {run.p95_ms:.0f} p99 {run.p99_ms:.0f} max {run.max_ms:.0f} ms, other load {run.background_cores or 0:.2f} cores"
        )

    for model in list(bundles)[:1] if args.quick else bundles:  # quick: the first model only
        half = medians[(model, "scorer")] * 0.5
        for kind in harness.CONTENDERS:
            latency(kind, model, "1000/s", 1000.0)
            latency(kind, model, "50%", half)
    if not args.quick:
        for model in bundles:
            for share in (0.25, 0.75):
                latency("scorer", model, f"{share:.0%}", medians[(model, "scorer")] * share)
    if "linear" in bundles:
        half = medians[("linear", "scorer")] * 0.5
        for size in args.sweep_sizes:
            if size != DEFAULT_MAX_BATCH_SIZE:
                latency("scorer", "linear", "sweep", half, {"SCORER_MAX_BATCH_SIZE": str(size)})

    if args.memory_records and "linear" in bundles:
        topic = "bench.features-long"
        workload.register(registry, f"{topic}-value", load.schema_text)
        workload.create_topics(bootstrap, [topic])
        seconds = workload.produce_all(bootstrap, topic, load.values, load.keys, count=args.memory_records)
        clock.log(f"memory run: {args.memory_records:,} records produced to {topic} in {seconds:.1f} s")
        harness.wait_for_quiet(args.quiet_wait)
        run = harness.measure_throughput(
            "scorer",
            "linear",
            args.memory_records,
            input_topic=topic,
            bundle=bundles["linear"],
            tag="mem-scorer-linear",
            **common,
        )
        results["memory"] = dataclasses.asdict(run)
        clock.log(
            f"memory run: peak RSS {run.peak_rss_mb or 0:.0f} MB, {run.throughput:,.0f} rec/s, {run.duplicates} duplicates"
        )


def profile_scorer(
    args: argparse.Namespace,
    bundles: dict[str, Path],
    input_topic: str,
    state: Path,
    common: dict[str, Any],
    clock: Clock,
) -> dict[str, Any]:
    """One extra scorer throughput run per model with py-spy attached; not counted in the table."""
    if pyspy.executable() is None:
        clock.log("py-spy not found: skipping the profile (pip install py-spy into the venv)")
        return {}
    summaries = {}
    for model, bundle in bundles.items():
        raw = state / f"py-spy-scorer-{model}.txt"
        attached: list[Any] = []

        def on_start(contender: harness.Contender, raw: Path = raw, attached: list[Any] = attached) -> None:
            attached.append(pyspy.attach(contender.pid, raw))

        harness.measure_throughput(
            "scorer",
            model,
            args.records,
            input_topic=input_topic,
            bundle=bundle,
            tag=f"pyspy-scorer-{model}",
            on_start=on_start,
            **common,
        )
        for process in attached:
            if process is not None:
                process.wait(60)
        if raw.is_file():
            summaries[model] = pyspy.summarise(raw)
            clock.log(f"py-spy profile of scorer ({model}) in {raw}")
    return summaries


if __name__ == "__main__":
    sys.exit(main())
