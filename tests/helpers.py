"""Shared helpers for the tests: data, sinks, plain computations, processes.

Sinks come in two kinds, matching the engine's two places to run one:

* :func:`driver_sink` makes a ``parallelism=1`` sink class. It runs in
  the driver, which is the test process, so its class-level ``records``
  list is readable after the job.
* :class:`FileSink` runs one instance per worker (``parallelism > 1``)
  and writes JSON lines to one file per instance; :func:`read_parts`
  reads them back.

Each test builds its own sink class, so no list leaks between tests.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import psutil

from sage_mp import SinkFunction

REPO = Path(__file__).resolve().parent.parent

#: Worker counts every core behaviour is proven with: one and several.
WORKERS = (1, 3)


# --- data ------------------------------------------------------------


def make_events(
    n: int = 5000, users: int = 50, seed: int = 7, start_ts: int = 0
) -> list[dict[str, Any]]:
    """Events with a user, an int value, a rising timestamp and seqs.

    ``seq`` counts the user's events so far (1, 2, ...), ``gseq`` is
    the event's position in the whole stream, and ``region`` and
    ``device`` are two more fields to re-key by.
    """
    rng = random.Random(seed)
    seqs: dict[str, int] = {}
    events = []
    ts = start_ts
    for i in range(n):
        user = f"u{rng.randrange(users)}"
        seqs[user] = seqs.get(user, 0) + 1
        ts += rng.randrange(0, 5)
        events.append(
            {
                "user": user,
                "value": rng.randrange(-50, 1000),
                "ts": ts,
                "seq": seqs[user],
                "gseq": i,
                "region": f"r{rng.randrange(7)}",
                "device": rng.randrange(11),
            }
        )
    return events


def number_per_key(events: list[dict[str, Any]], field: str) -> None:
    """Add ``seq_<field>``: the record's position among its ``field`` peers."""
    seen: dict[Any, int] = {}
    for event in events:
        value = event[field]
        seen[value] = seen.get(value, 0) + 1
        event[f"seq_{field}"] = seen[value]


# --- sinks -----------------------------------------------------------


def driver_sink(with_key: bool = False) -> type[SinkFunction]:
    """Return a fresh ``parallelism=1`` sink class collecting records.

    The instance runs in the driver (this process), so the class-level
    ``records`` list is visible to the test after the job. With
    ``with_key`` it collects ``(ctx.get_key(), record)`` pairs.
    """

    class Collect(SinkFunction):
        records: list[Any] = []
        instances: list[Any] = []

        def __init__(self) -> None:
            super().__init__()
            type(self).instances.append(self)

        def execute(self, record: Any) -> None:
            if with_key:
                type(self).records.append((self.ctx.get_key(), record))
            else:
                type(self).records.append(record)

    Collect.records = []
    Collect.instances = []
    return Collect


class FileSink(SinkFunction):
    """Writes every record as a JSON line to ``part-<index>.jsonl``.

    Each line is ``[pid, key, record]``, so a test can prove where the
    instance ran and which key the record carried.
    """

    def __init__(self, directory: str) -> None:
        super().__init__()
        self.directory = directory
        self.file: Any = None

    def open(self) -> None:
        index = self.ctx.parallel_index
        path = os.path.join(self.directory, f"part-{index}.jsonl")
        self.file = open(path, "w", encoding="utf-8")

    def execute(self, record: Any) -> None:
        line = [os.getpid(), self.ctx.get_key(), record]
        self.file.write(json.dumps(line) + "\n")

    def close(self) -> None:
        self.file.close()


def read_parts(directory: Path) -> dict[int, list[list[Any]]]:
    """Read :class:`FileSink` output: ``{parallel_index: [[pid, key, rec]]}``."""
    parts = {}
    for path in sorted(directory.glob("part-*.jsonl")):
        index = int(path.stem.split("-", 1)[1])
        with path.open(encoding="utf-8") as file:
            parts[index] = [json.loads(line) for line in file]
    return parts


def sink_parallelism(workers: int) -> int:
    """A sink parallelism that puts the sink on the workers, never the driver."""
    return max(2, workers)


# --- plain computations ------------------------------------------------


def by_key(pairs: Iterable[tuple[Any, Any]]) -> dict[Any, list[Any]]:
    """Group ``(key, value)`` pairs into ``{key: [values in order]}``."""
    grouped: dict[Any, list[Any]] = {}
    for key, value in pairs:
        grouped.setdefault(key, []).append(value)
    return grouped


def assert_strictly_increasing(values: list[Any], what: str) -> None:
    """Fail with the first place where ``values`` does not increase."""
    for position, (a, b) in enumerate(zip(values, values[1:], strict=False)):
        assert a < b, f"{what}: {a!r} then {b!r} at position {position}"


# --- processes ---------------------------------------------------------


def children_pids() -> set[int]:
    """Pids of the live descendants of this test process."""
    me = psutil.Process()
    alive = set()
    for child in me.children(recursive=True):
        try:
            if child.status() != psutil.STATUS_ZOMBIE:
                alive.add(child.pid)
        except psutil.NoSuchProcess:
            pass
    return alive


def wait_gone(pids: Iterable[int], timeout: float = 10.0) -> set[int]:
    """Wait until none of ``pids`` runs; return those that still do."""
    deadline = time.monotonic() + timeout
    left = set(pids)
    while left and time.monotonic() < deadline:
        left = {pid for pid in left if _running(pid)}
        if left:
            time.sleep(0.05)
    return left


def _running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def assert_no_new_children(before: set[int]) -> None:
    """Fail if processes started since ``before`` are still running."""
    left = wait_gone(children_pids() - before)
    assert not left, f"processes left behind: {sorted(left)}"


def write_script(path: Path, body: str) -> Path:
    """Write a dedented job script to ``path`` and return the path."""
    path.write_text(textwrap.dedent(body), encoding="utf-8")
    return path


def run_python(
    args: list[str], cwd: Path, timeout: float = 120, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``python ARGS`` to its end and capture its output as text."""
    return subprocess.run(
        [sys.executable, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )
