"""``scorer dev up|status|down`` as a developer runs them: real processes, loopback addresses, clean stops.

Each test runs the CLI as subprocesses (``python -m scorer``), so the stack outlives the ``up`` process
exactly as it does in a shell, and always stops what it started: ``down``, then SIGKILL by PID.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient

pytestmark = pytest.mark.integration

Run = Callable[..., subprocess.CompletedProcess[str]]
BROKER_LINE = re.compile(r"^broker\s+(127\.0\.0\.1):(\d+)\s+\(pid (\d+)\)$", re.MULTILINE)
REGISTRY_LINE = re.compile(r"^registry\s+(http://127\.0\.0\.1:(\d+))\s+\(pid (\d+)\)$", re.MULTILINE)
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback never goes through a proxy


@dataclass(frozen=True)
class Printed:
    """What ``scorer dev up`` printed."""

    bootstrap: str
    broker_port: int
    broker_pid: int
    registry_url: str
    registry_port: int
    registry_pid: int


def cli(cwd: Path, env: dict[str, str], *flags: str) -> Run:
    """``run("up")`` runs ``scorer dev up FLAGS`` in ``cwd`` with exactly ``env`` (no inherited SCORER_*)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("SCORER_")}

    def run(action: str, *args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "scorer", "dev", action, *flags, *args]
        return subprocess.run(
            command, cwd=cwd, env={**base, **env}, capture_output=True, text=True, timeout=60, check=False
        )

    return run


def alive(pid: int) -> bool:
    """Whether ``pid`` still runs; exited but not yet reaped by its parent (init, here) counts as stopped."""
    try:
        os.kill(pid, 0)
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (ProcessLookupError, FileNotFoundError):
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


@contextlib.contextmanager
def stopped_afterwards(run: Run, state_dir: Path) -> Iterator[list[int]]:
    """Whatever happens in the block: ``scorer dev down``, then SIGKILL any PID still alive.

    The PIDs are those in the state directory, and those the block adds to the list it gets.
    """
    pids: list[int] = []
    try:
        yield pids
    finally:
        state = state_dir / "state.json"
        if state.is_file():
            recorded = json.loads(state.read_text())
            pids += [recorded["broker_pid"], recorded["registry_pid"]]
        run("down")
        for pid in pids:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


def parse_up(result: subprocess.CompletedProcess[str]) -> Printed:
    assert result.returncode == 0, result.stderr
    broker, registry = BROKER_LINE.search(result.stdout), REGISTRY_LINE.search(result.stdout)
    assert broker and registry, f"up did not print the broker and registry addresses:\n{result.stdout}"
    return Printed(
        bootstrap=f"{broker[1]}:{broker[2]}",
        broker_port=int(broker[2]),
        broker_pid=int(broker[3]),
        registry_url=registry[1],
        registry_port=int(registry[2]),
        registry_pid=int(registry[3]),
    )


def broker_addresses(bootstrap: str) -> set[str]:
    """The brokers a Kafka client finds through ``bootstrap`` (a real metadata request)."""
    metadata = AdminClient({"bootstrap.servers": bootstrap, "log_level": 2}).list_topics(timeout=10)
    return {f"{b.host}:{b.port}" for b in metadata.brokers.values()}


def check_up_status_down(run: Run, state_dir: Path, pids: list[int]) -> Printed:
    """``up`` prints working loopback addresses; ``status`` reports them; ``down`` stops both processes."""
    printed = parse_up(run("up"))
    pids += [printed.broker_pid, printed.registry_pid]
    recorded = json.loads((state_dir / "state.json").read_text())
    assert (recorded["broker_pid"], recorded["registry_pid"]) == (printed.broker_pid, printed.registry_pid)
    assert alive(printed.broker_pid) and alive(printed.registry_pid)

    assert broker_addresses(printed.bootstrap) == {printed.bootstrap}
    with _DIRECT.open(printed.registry_url + "/subjects", timeout=5) as response:
        assert (response.status, json.loads(response.read())) == (200, [])

    status = run("status")
    assert status.returncode == 0, status.stdout + status.stderr
    assert f"running: broker {printed.bootstrap} (pid {printed.broker_pid})" in status.stdout
    assert f"registry {printed.registry_url} (pid {printed.registry_pid})" in status.stdout

    down = run("down")
    assert (down.returncode, down.stdout.strip()) == (0, "stopped"), down.stderr
    assert not alive(printed.broker_pid), "down left the broker running"
    assert not alive(printed.registry_pid), "down left the registry running"
    assert not (state_dir / "state.json").exists()

    after = run("status")
    assert (after.returncode, after.stdout.strip()) == (1, f"not running ({state_dir})")
    return printed


def test_up_status_down_with_state_dir_flag(tmp_path: Path) -> None:
    state_dir, cwd = tmp_path / "state", tmp_path / "cwd"
    cwd.mkdir()
    run = cli(cwd, {}, "--state-dir", str(state_dir))
    with stopped_afterwards(run, state_dir) as pids:
        # port 0: whatever is free, so that a developer's stack on 9092/8081 is never touched
        check_up_status_down(lambda action: run(action, "--broker-port", "0", "--registry-port", "0"), state_dir, pids)
    assert (state_dir / "broker.log").is_file() and (state_dir / "registry.log").is_file()
    assert not (cwd / ".scorer").exists(), "the flag was ignored: the stack went to the default directory"


def test_up_status_down_with_state_dir_from_the_environment(tmp_path: Path) -> None:
    state_dir, cwd = tmp_path / "from-env", tmp_path / "cwd"
    cwd.mkdir()
    with socket.socket() as closed:  # a proxy address where nothing listens
        closed.bind(("127.0.0.1", 0))
        dead_proxy = f"http://127.0.0.1:{closed.getsockname()[1]}"
    # a developer's shell with a proxy set: the readiness probe of the loopback registry must not use it
    env = {"SCORER_STATE_DIR": str(state_dir), "http_proxy": dead_proxy, "HTTP_PROXY": dead_proxy, "no_proxy": ""}
    run = cli(cwd, env)
    with stopped_afterwards(run, state_dir) as pids:
        check_up_status_down(lambda action: run(action, "--broker-port", "0", "--registry-port", "0"), state_dir, pids)
    assert (state_dir / "broker.log").is_file()
    assert not (cwd / ".scorer").exists(), "SCORER_STATE_DIR was ignored: the stack went to the default directory"


def free_loopback_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.parametrize("taken", ["broker", "registry"])
def test_a_taken_preferred_port_falls_back_to_a_free_one(tmp_path: Path, taken: str) -> None:
    """The taken preferred port is replaced by a free one, printed; the other preferred port is used as is."""
    state_dir = tmp_path / "state"
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        busy, free = holder.getsockname()[1], free_loopback_port()
        ports = {"broker": busy, "registry": free} if taken == "broker" else {"broker": free, "registry": busy}
        run = cli(tmp_path, {}, "--state-dir", str(state_dir))
        flags = ("--broker-port", str(ports["broker"]), "--registry-port", str(ports["registry"]))
        with stopped_afterwards(run, state_dir) as pids:
            printed = check_up_status_down(lambda action: run(action, *flags), state_dir, pids)
    used = {"broker": printed.broker_port, "registry": printed.registry_port}
    other = "registry" if taken == "broker" else "broker"
    assert used[taken] != busy, f"the {taken} was given a port that something else holds"
    assert used[other] == free, f"the {other}'s free preferred port was not used"


def test_status_and_down_treat_an_exited_unreaped_process_as_stopped(tmp_path: Path) -> None:
    """A crashed broker whose parent never reaps it (PID 1 in many containers) is stopped, not running.

    A middle process forks a child that exits at once and never waits for it: the child stays a zombie
    that is not ours to reap, like a stack process after ``up`` exited. ``down`` must not wait for it forever.
    """
    fork = "import os, time\npid = os.fork()\nif pid == 0:\n    os._exit(0)\nprint(pid, flush=True)\ntime.sleep(60)\n"
    with subprocess.Popen([sys.executable, "-c", fork], stdout=subprocess.PIPE, text=True) as middle:
        try:
            assert middle.stdout is not None
            zombie = int(middle.stdout.readline())
            deadline = time.monotonic() + 10
            while Path(f"/proc/{zombie}/stat").read_text().rpartition(")")[2].split()[0] != "Z":
                assert time.monotonic() < deadline, "the forked child did not exit"
                time.sleep(0.01)
            state_dir = tmp_path / "state"
            state_dir.mkdir()
            addresses = {"bootstrap_servers": "127.0.0.1:1", "registry_url": "http://127.0.0.1:1"}
            state = {**addresses, "broker_pid": zombie, "registry_pid": zombie, "state_dir": str(state_dir)}
            (state_dir / "state.json").write_text(json.dumps(state))
            run = cli(tmp_path, {}, "--state-dir", str(state_dir))
            status = run("status")
            assert (status.returncode, status.stdout.strip()) == (1, f"not running ({state_dir})")
            down = run("down")  # the timeout of ``cli`` turns a hang into a failure
            assert (down.returncode, down.stdout.strip()) == (0, "stopped")
            assert not (state_dir / "state.json").exists()
        finally:
            middle.kill()  # the zombie goes to init, which reaps it
