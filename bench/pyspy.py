"""Optional: sample a running scorer with py-spy (if it is installed) and summarise where its main thread is.

py-spy is not a dependency; ``python -m bench.run --py-spy`` uses it when ``py-spy`` is next to the
interpreter or on PATH. The raw collapsed stacks are kept in the state directory for flame graphs.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

_LINE = re.compile(r":\d+\)$")


def executable() -> str | None:
    local = Path(sys.executable).parent / "py-spy"
    return str(local) if local.is_file() else shutil.which("py-spy")


def attach(pid: int, out: Path, rate: int = 250) -> subprocess.Popen[bytes] | None:
    """Start ``py-spy record`` on ``pid`` (raw collapsed stacks to ``out``); None if py-spy is missing."""
    binary = executable()
    if binary is None:
        return None
    log = out.with_suffix(".log").open("ab")
    return subprocess.Popen(
        [binary, "record", "--pid", str(pid), "--rate", str(rate), "--format", "raw", "--output", str(out)],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )


ROOTS = {"main": "ScoringPipeline.run (", "worker": "_WorkItem.run ("}
"""Where the scoring loop's samples start: the main loop, and the model's worker thread (when there is one)."""


def summarise(raw: Path, roots: dict[str, str] | None = None, top: int = 15) -> dict[str, Any]:
    """Where the scoring loop spends its on-CPU samples: only stacks under one of ``roots`` (start-up excluded).

    Returns the sample count per root (thread), the inclusive share per function below the roots (file and
    function, no line numbers; each function counted once per stack), and the self share of the busiest leaf
    functions, both as shares of all those samples. py-spy leaves out idle samples by default, so time
    blocked in ``consume``/``flush`` or waiting for the worker is not in the shares.
    """
    roots = roots or ROOTS
    inclusive: Counter[str] = Counter()
    leaf: Counter[str] = Counter()
    per_root: Counter[str] = Counter()
    total = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not count_text.isdigit():
            continue
        frames = [_LINE.sub(")", f.strip()) for f in stack.split(";")]
        found = next(((i, name) for i, f in enumerate(frames) for name, r in roots.items() if f.startswith(r)), None)
        if found is None:
            continue
        below, root = found
        count = int(count_text)
        total += count
        per_root[root] += count
        for name in dict.fromkeys(frames[below + 1 :]):
            inclusive[name] += count
        leaf[frames[-1]] += count
    if not total:
        return {"samples": 0, "threads": {}, "inclusive": [], "self": []}
    return {
        "samples": total,
        "threads": dict(per_root),
        "inclusive": [(name, n / total) for name, n in inclusive.most_common(top)],
        "self": [(name, n / total) for name, n in leaf.most_common(top)],
    }
