"""Running contenders and measuring them the same way: start a process, read its output topic, stop it.

Counts always come from reading the output topic (never from watermarks: the dev broker's high watermark
counts record batches, not records). Throughput is taken between the first and the last output record's
CreateTime; latency is output CreateTime minus input CreateTime, matched by key. Peak RSS is the
process's ``VmHWM`` read from /proc just before it is stopped.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

from bench.contenders.common import GROUP_TIMEOUTS
from scorer.config import DEFAULT_MAX_BATCH_SIZE
from scorer.devstack import terminate

REPO = Path(__file__).resolve().parents[1]
CONTENDERS = ("naive", "batched", "scorer")
FAIR_CONSUMER = {"fetch.wait.max.ms": "10"}
"""scorer's own default, given to the hand-written contenders too: the dev broker does not answer a waiting
fetch when data arrives, so librdkafka's default (500 ms) would measure the broker, not the loop."""
QUIET = {"log_level": 2}


@dataclass
class Contender:
    """One running contender process."""

    kind: str
    process: subprocess.Popen[bytes]
    log: Path
    started: float

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def peak_rss_mb(self) -> float | None:
        return read_status_kb(self.pid, "VmHWM")

    def stop(self) -> int | None:
        if self.process.poll() is None:
            terminate(self.pid, timeout_s=30)
        try:
            return self.process.wait(10)
        except subprocess.TimeoutExpired:
            return None

    def tail(self, chars: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of ``pid`` (all its threads, librdkafka's included), or None if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


OWN_PIDS: list[int] = []
"""Long-lived processes of the benchmark besides the contender (broker, registry); set by ``bench.run``."""


def _busy_seconds() -> float:
    """CPU seconds the whole machine has been busy (all cores), from /proc/stat."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:8]]
    user, nice, system, _idle, _iowait, irq, softirq = (fields + [0] * 7)[:7]
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


class BackgroundLoad:
    """CPU used by processes that are not part of the benchmark (other users of the machine), in cores.

    Machine-wide busy time minus the CPU of the benchmark's own processes (harness, broker, registry, and
    the contenders given to ``stop``), over the wall time between ``__init__`` and ``stop``.
    """

    def __init__(self, pids: list[int] | None = None) -> None:
        self.pids = [os.getpid(), *OWN_PIDS, *(pids or [])]
        self.started = time.monotonic()
        self.busy = _busy_seconds()
        self.own = self._own()

    def _own(self, extra: list[int] | None = None) -> dict[int, float]:
        return {pid: cpu_seconds(pid) or 0.0 for pid in [*self.pids, *(extra or [])]}

    def stop(self, extra_pids: list[int] | None = None) -> float:
        own = self._own(extra_pids)
        wall = max(1e-3, time.monotonic() - self.started)
        ours = sum(own[pid] - self.own.get(pid, 0.0) for pid in own)
        return max(0.0, (_busy_seconds() - self.busy - ours) / wall)


def wait_for_quiet(max_wait_s: float, threshold_cores: float = 0.3, sample_s: float = 1.0) -> float:
    """Wait (at most ``max_wait_s``) for a second in which other processes use < ``threshold_cores``.

    Returns the background load of the last sample, in cores. A shared machine cannot be made quiet;
    this only avoids starting a measurement in the middle of someone else's burst.
    """
    deadline = time.monotonic() + max_wait_s
    while True:
        probe = BackgroundLoad()
        time.sleep(sample_s)
        load = probe.stop()
        if load < threshold_cores or time.monotonic() >= deadline:
            return load


def read_status_kb(pid: int, key: str) -> float | None:
    """A ``/proc/PID/status`` memory line (``VmHWM``, ``VmRSS``) in MB, or None if the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def start_contender(
    kind: str,
    *,
    bootstrap: str,
    registry_url: str,
    input_topic: str,
    output_topic: str,
    bundle: Path,
    group: str,
    log: Path,
    scorer_env: dict[str, str] | None = None,
) -> Contender:
    """Start ``kind`` as its own process. The scorer runs with its defaults (plus ``scorer_env``)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCORER_")}
    if kind == "scorer":
        env.update(
            {
                "SCORER_BOOTSTRAP_SERVERS": bootstrap,
                "SCORER_SCHEMA_REGISTRY_URL": registry_url,
                "SCORER_INPUT_TOPIC": input_topic,
                "SCORER_OUTPUT_TOPIC": output_topic,
                "SCORER_MODEL": str(bundle),
                "SCORER_GROUP_ID": group,
                "SCORER_METRICS_PORT": "0",
                "SCORER_CREATE_TOPICS": "true",
                "SCORER_LOG_LEVEL": "WARNING",
                "SCORER_KAFKA_SESSION_TIMEOUT_MS": GROUP_TIMEOUTS["session.timeout.ms"],
                "SCORER_KAFKA_HEARTBEAT_INTERVAL_MS": GROUP_TIMEOUTS["heartbeat.interval.ms"],
                **(scorer_env or {}),
            }
        )
        command = [sys.executable, "-m", "scorer", "run"]
    elif kind in ("naive", "batched"):
        command = [sys.executable, "-m", f"bench.contenders.{kind}"]
        command += ["--bootstrap", bootstrap, "--registry", registry_url, "--input", input_topic]
        command += ["--output", output_topic, "--model", str(bundle), "--group", group]
        for key, value in FAIR_CONSUMER.items():
            command += ["--consumer-config", f"{key}={value}"]
    else:
        raise ValueError(f"unknown contender {kind!r}")
    # the harness's own working directory and path: with --scorer-ref that is the scorer snapshot
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(paths if str(REPO) in paths else [*paths, str(REPO)])
    with log.open("ab") as out:
        process = subprocess.Popen(
            command, env=env, cwd=Path.cwd(), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
    return Contender(kind, process, log, time.monotonic())


class OutputReader:
    """Reads a topic from the beginning with ``assign`` (no group join), keeping keys and CreateTimes."""

    def __init__(self, bootstrap: str, topic: str, partitions: int = 3) -> None:
        self.consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": f"bench-reader-{uuid.uuid4().hex[:8]}",
                "enable.auto.commit": False,
                "fetch.wait.max.ms": 100,
                **QUIET,
            }
        )
        self.consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)])
        self.count = 0
        self.keys: dict[bytes, int] = {}
        self.first_ts: int | None = None
        self.last_ts: int | None = None
        self.first_seen: float | None = None

    def read(self, timeout_s: float = 0.2) -> int:
        """One read; returns how many records it got."""
        got = 0
        for message in self.consumer.consume(num_messages=20000, timeout=timeout_s):
            if message.error() is not None:
                continue
            got += 1
            _kind, ts = message.timestamp()
            self.keys[message.key()] = ts
            self.first_ts = ts if self.first_ts is None else min(self.first_ts, ts)
            self.last_ts = ts if self.last_ts is None else max(self.last_ts, ts)
        if got and self.first_seen is None:
            self.first_seen = time.monotonic()
        self.count += got
        return got

    @property
    def unique(self) -> int:
        return len(self.keys)

    def until(
        self,
        target: int,
        alive: Callable[[], bool],
        stall_s: float = 60.0,
        on_first: Callable[[int], None] | None = None,
        max_after_first_s: float | None = None,
    ) -> None:
        """Read until ``target`` distinct keys arrived; raise if the producer died or stalled.

        ``on_first(count)`` is called once, right after the first read that returned records. With
        ``max_after_first_s``, reading also stops that long after the first output (a slow contender's rate
        is measured on fewer records).
        """
        last_progress = time.monotonic()
        while self.unique < target:
            if max_after_first_s is not None and self.first_seen is not None:
                if time.monotonic() - self.first_seen >= max_after_first_s:
                    return
            if self.read():
                last_progress = time.monotonic()
                if on_first is not None:
                    on_first(self.unique)
                    on_first = None
            elif not alive():
                raise RuntimeError(f"the contender exited after {self.unique} of {target} outputs")
            elif time.monotonic() - last_progress > stall_s:
                raise RuntimeError(f"no output for {stall_s:.0f} s after {self.unique} of {target} outputs")

    def close(self) -> None:
        self.consumer.close()


@dataclass
class ThroughputRun:
    contender: str
    model: str
    records: int
    outputs: int
    duplicates: int
    seconds: float
    throughput: float
    peak_rss_mb: float | None
    startup_s: float | None
    wall_s: float
    cpu_us_per_record: float | None = None
    background_cores: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def measure_throughput(
    kind: str,
    model: str,
    target: int,
    *,
    bootstrap: str,
    registry_url: str,
    input_topic: str,
    bundle: Path,
    state: Path,
    tag: str,
    scorer_env: dict[str, str] | None = None,
    on_start: Callable[[Contender], None] | None = None,
    on_first_output: Callable[[], None] | None = None,
    max_seconds: float | None = None,
) -> ThroughputRun:
    """Run ``kind`` over an already-filled input topic until ``target`` outputs were read back.

    ``max_seconds`` (after the first output) bounds the run for a slow contender: the rate is then
    measured on the records that came out in that time. ``on_first_output`` is called once, when the first
    output has been read. The result's ``extra`` holds the CreateTimes (ms) of the first and last outputs.
    """
    from bench.workload import create_topics

    output = f"bench.out.{tag}"
    create_topics(bootstrap, [output, f"{input_topic}.dlq"] if kind == "scorer" else [output])
    reader = OutputReader(bootstrap, output)
    started = time.monotonic()
    contender = start_contender(
        kind,
        bootstrap=bootstrap,
        registry_url=registry_url,
        input_topic=input_topic,
        output_topic=output,
        bundle=bundle,
        group=f"bench-{tag}",
        log=state / f"{tag}.log",
        scorer_env=scorer_env,
    )
    if on_start is not None:
        on_start(contender)
    background = BackgroundLoad([contender.pid])
    first: list[tuple[int, float | None]] = []

    def at_first_output(n: int) -> None:
        first.append((n, cpu_seconds(contender.pid)))
        if on_first_output is not None:
            on_first_output()

    try:
        reader.until(
            target,
            contender.alive,
            on_first=at_first_output,
            max_after_first_s=max_seconds,
        )
        peak = contender.peak_rss_mb()
        cpu_end = cpu_seconds(contender.pid)
        other = background.stop()
    except RuntimeError as exc:
        raise RuntimeError(f"{kind} ({model}): {exc}\n--- log tail ---\n{contender.tail()}") from exc
    finally:
        contender.stop()
        reader.close()
    assert reader.first_ts is not None and reader.last_ts is not None
    seconds = max(1e-3, (reader.last_ts - reader.first_ts) / 1000)
    cpu_per_record = None
    if first and first[0][1] is not None and cpu_end is not None and reader.unique > first[0][0]:
        cpu_per_record = (cpu_end - first[0][1]) / (reader.unique - first[0][0]) * 1e6
    return ThroughputRun(
        contender=kind,
        model=model,
        records=reader.unique,
        outputs=reader.count,
        duplicates=reader.count - reader.unique,
        seconds=seconds,
        throughput=(reader.unique - 1) / seconds,
        peak_rss_mb=peak,
        startup_s=(reader.first_seen - contender.started) if reader.first_seen else None,
        wall_s=time.monotonic() - started,
        cpu_us_per_record=cpu_per_record,
        background_cores=other,
        extra={"first_output_ms": reader.first_ts, "last_output_ms": reader.last_ts},
    )


@dataclass
class LatencyRun:
    contender: str
    model: str
    target_rate: float
    achieved_rate: float
    seconds: float
    records: int
    outputs: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    max_batch_size: int | None = None
    peak_rss_mb: float | None = None
    background_cores: float | None = None
    backlog_growth_ms: float | None = None
    """Median latency of the last tenth of the records minus that of the first tenth: clearly positive when
    the contender could not keep up with the rate and a backlog built up during the run."""


def paced_produce(
    producer: Producer, topic: str, values: list[bytes], rate: float, seconds: float
) -> tuple[np.ndarray, float]:
    """Produce at ``rate`` records/s for ``seconds``; keys ``b"k<n>"``. Returns input timestamps (ms) and the duration."""
    total = int(rate * seconds)
    stamps = np.zeros(total, dtype=np.int64)
    n_values = len(values)
    produce = producer.produce
    started = time.perf_counter()
    sent = 0
    while sent < total:
        due = min(total, int((time.perf_counter() - started) * rate) + 1)
        while sent < due:
            ts = int(time.time() * 1000)
            while True:
                try:
                    produce(topic, value=values[sent % n_values], key=b"k%d" % sent, timestamp=ts)
                    break
                except BufferError:
                    producer.poll(0.01)
            stamps[sent] = ts
            sent += 1
        producer.poll(0)
        ahead = started + sent / rate - time.perf_counter()
        if ahead > 0:
            time.sleep(min(ahead, 0.002))
    duration = time.perf_counter() - started
    producer.flush(60)
    return stamps, duration


def measure_latency(
    kind: str,
    model: str,
    rate: float,
    seconds: float,
    *,
    bootstrap: str,
    registry_url: str,
    schema_text: str,
    values: list[bytes],
    bundle: Path,
    state: Path,
    tag: str,
    scorer_env: dict[str, str] | None = None,
) -> LatencyRun:
    """Start ``kind`` on a fresh topic, wait until it scores, then feed it at ``rate`` and match outputs by key."""
    from bench.workload import create_topics, register

    input_topic, output = f"bench.lat-in.{tag}", f"bench.lat-out.{tag}"
    create_topics(bootstrap, [input_topic, output, f"{input_topic}.dlq"])
    register(registry_url, f"{input_topic}-value", schema_text)
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 1, **QUIET})
    contender = start_contender(
        kind,
        bootstrap=bootstrap,
        registry_url=registry_url,
        input_topic=input_topic,
        output_topic=output,
        bundle=bundle,
        group=f"bench-{tag}",
        log=state / f"{tag}.log",
        scorer_env=scorer_env,
    )
    reader = OutputReader(bootstrap, output)
    try:
        for partition in range(3):  # warm-up: one record per partition, scored before the clock starts
            producer.produce(input_topic, value=values[partition], key=b"warm-%d" % partition, partition=partition)
        producer.flush(10)
        reader.until(3, contender.alive, stall_s=90)
        background = BackgroundLoad([contender.pid])
        stamps, duration = paced_produce(producer, input_topic, values, rate, seconds)
        other = background.stop()
        reader.until(3 + len(stamps), contender.alive, stall_s=60)
        peak = contender.peak_rss_mb()
    except RuntimeError as exc:
        raise RuntimeError(f"{kind} ({model}) at {rate:.0f}/s: {exc}\n--- log tail ---\n{contender.tail()}") from exc
    finally:
        contender.stop()
        reader.close()
    out_ts = np.array([reader.keys[b"k%d" % n] for n in range(len(stamps))], dtype=np.int64)
    latency = np.maximum(out_ts - stamps, 0)
    p50, p95, p99 = np.percentile(latency, [50, 95, 99])
    tenth = max(1, len(latency) // 10)
    growth = float(np.median(latency[-tenth:]) - np.median(latency[:tenth]))
    return LatencyRun(
        contender=kind,
        model=model,
        target_rate=rate,
        achieved_rate=len(stamps) / duration,
        seconds=duration,
        records=len(stamps),
        outputs=reader.count - 3,
        p50_ms=float(p50),
        p95_ms=float(p95),
        p99_ms=float(p99),
        max_ms=float(latency.max()),
        max_batch_size=int((scorer_env or {}).get("SCORER_MAX_BATCH_SIZE", DEFAULT_MAX_BATCH_SIZE))
        if kind == "scorer"
        else None,
        peak_rss_mb=peak,
        background_cores=other,
        backlog_growth_ms=growth,
    )
