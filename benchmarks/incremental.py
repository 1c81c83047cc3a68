"""Does a checkpoint cost what changed, or what exists?

Builds a keyed state of SMALL keys and of LARGE keys (two separate
jobs, each ending with a checkpoint), then resumes each with the same
stream of events over a few hot keys, checkpointing every 0.2 s. If a
checkpoint's pause, duration and size depend only on what changed, the
LARGE/SMALL ratios stay near 1.0x even though the state is 10x bigger.
Resume time (to the first processed record) is reported too; it does
grow with the state, since every entry is read back.

    python benchmarks/incremental.py            # 100k vs 1M keys
    python benchmarks/incremental.py --small 10000 --large 100000
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from typing import Any

from sage_mp import LocalEnvironment, SinkFunction, StatefulFunction


class Counts(StatefulFunction):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.sessions: dict[str, dict[str, int]] = {}

    def execute(self, event: tuple[str, int]) -> None:
        key = self.ctx.get_key()
        entry = self.sessions.get(key)
        if entry is None:
            entry = self.sessions[key] = {"count": 0, "total": 0}
        entry["count"] += 1
        entry["total"] += event[1]


class FirstRecord(SinkFunction):
    """Never called: Counts returns None. Present to end the pipeline."""

    def execute(self, record: Any) -> None:
        pass


def build_events(keys: int) -> list[tuple[str, int]]:
    return [(f"k{i}", 1) for i in range(keys)]


def hot_events(count: int, hot: int) -> list[tuple[str, int]]:
    return [(f"k{i % hot}", 1) for i in range(count)]


def run(directory: str, events: list[tuple[str, int]], interval: float) -> Any:
    env = LocalEnvironment(
        "incremental",
        workers=2,
        checkpoint_dir=directory,
        checkpoint_interval=interval,
    )
    (
        env.from_collection(events)
        .keyby(lambda e: e[0])
        .map(Counts)
        .sink(FirstRecord, parallelism=2)
    )
    started = time.perf_counter()
    result = env.submit(autostop=True)
    return result, time.perf_counter() - started


def measure(keys: int, hot_count: int, hot: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as directory:
        base = build_events(keys)
        run(directory, base, interval=3600.0)
        result, wall = run(directory, base + hot_events(hot_count, hot), 0.2)
        # The last checkpoint is the final one at the end of the stream;
        # the others are the steady-state interval checkpoints.
        steady = result.checkpoints[:-1] or result.checkpoints
        return {
            "checkpoints": len(steady),
            "pause_ms": 1000 * statistics.median(c["pause"] for c in steady),
            "pause_max_ms": 1000 * max(c["pause"] for c in steady),
            "duration_ms": 1000 * statistics.median(c["duration"] for c in steady),
            "kib": statistics.median(c["bytes"] for c in steady) / 1024,
            "resume_run_s": wall,
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=int, default=100_000, help="keys, baseline")
    parser.add_argument("--large", type=int, default=1_000_000, help="keys, compared")
    parser.add_argument("--hot", type=int, default=200, help="keys that change")
    parser.add_argument(
        "--events", type=int, default=1_200_000, help="events over the hot keys"
    )
    args = parser.parse_args()

    small = measure(args.small, args.events, args.hot)
    large = measure(args.large, args.events, args.hot)
    print(
        f"state of {args.small:,} vs {args.large:,} keys; "
        f"{args.events:,} events over {args.hot} hot keys, 2 workers\n"
    )
    print("| figure | small state (baseline) | large state | ratio |")
    print("|---|---|---|---|")
    for name, label in [
        ("pause_ms", "checkpoint pause, median (ms)"),
        ("pause_max_ms", "checkpoint pause, max (ms)"),
        ("duration_ms", "checkpoint duration, median (ms)"),
        ("kib", "checkpoint size, median (KiB)"),
        ("resume_run_s", "resumed run incl. restore (s)"),
    ]:
        ratio = large[name] / small[name] if small[name] else float("nan")
        print(f"| {label} | {small[name]:.2f} | {large[name]:.2f} | {ratio:.2f}x |")
    print(
        f"\ninterval checkpoints measured: {small['checkpoints']} and "
        f"{large['checkpoints']}"
    )


if __name__ == "__main__":
    main()
