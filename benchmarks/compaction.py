"""Does compacting the stored state lengthen checkpoint pauses?

Every key of a large state changes between any two checkpoints, so
each checkpoint writes a delta of every key group. Once a group holds
enough deltas, a checkpoint at its turn folds them into a new base,
which rewrites all of the group's entries. This script compares the
checkpoints before any group has compacted (the 2nd to the 9th) with
those after (the 10th on): a ratio near 1.0x means compaction adds
nothing to the pause that a checkpoint puts into the stream.

    python benchmarks/compaction.py                # 400,000 keys
    python benchmarks/compaction.py --keys 1000000 --rounds 8
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from typing import Any

from sage_mp import LocalEnvironment, SinkFunction, StatefulFunction
from sage_mp._store import COMPACT_AFTER

# Checkpoint 1 writes every group's base; a group compacts once it has
# COMPACT_AFTER // 2 deltas, so checkpoints up to this one never do.
LAST_BEFORE = 1 + COMPACT_AFTER // 2


class Counts(StatefulFunction):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.counts: dict[str, int] = {}

    def execute(self, key: str) -> None:
        self.counts[key] = self.counts.get(key, 0) + 1


class Drop(SinkFunction):
    """Never called: Counts returns None. Present to end the pipeline."""

    def execute(self, record: Any) -> None:
        pass


def run(keys: int, rounds: int, interval: float) -> tuple[list[float], float]:
    """Each checkpoint's pause (ms), and the job's seconds."""
    events = [f"k{i}" for i in range(keys)] * rounds
    with tempfile.TemporaryDirectory() as directory:
        env = LocalEnvironment(
            "compaction",
            workers=2,
            checkpoint_dir=directory,
            checkpoint_interval=interval,
        )
        env.from_collection(events).keyby(lambda key: key).map(Counts).sink(
            Drop, parallelism=2
        )
        started = time.perf_counter()
        result = env.submit(autostop=True)
        elapsed = time.perf_counter() - started
    assert result is not None
    return [c["pause"] * 1000 for c in result.checkpoints], elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=400_000, help="keys of state")
    parser.add_argument("--rounds", type=int, default=12, help="events per key")
    parser.add_argument(
        "--interval", type=float, default=0.25, help="seconds between checkpoints"
    )
    args = parser.parse_args()
    if args.keys < 1 or args.rounds < 1 or args.interval <= 0:
        parser.error("--keys and --rounds must be at least 1, --interval above 0")

    pauses, elapsed = run(args.keys, args.rounds, args.interval)
    # The last checkpoint comes at the end of the stream, after a
    # shorter interval than the others: leave it out.
    before = pauses[1:LAST_BEFORE]
    after = pauses[LAST_BEFORE:-1]
    print(f"{args.keys:,} keys, {len(pauses)} checkpoints in {elapsed:.1f} s")
    if len(before) < 2 or len(after) < 2:
        raise SystemExit(
            f"only {len(pauses)} checkpoints: too few to compare pauses before "
            f"and after compaction starts (at checkpoint {LAST_BEFORE + 1}); "
            "give more --rounds or a shorter --interval"
        )
    rows = [
        ("median pause", statistics.median(before), statistics.median(after)),
        ("longest pause", max(before), max(after)),
    ]
    print(f"| per worker | checkpoints 2-{LAST_BEFORE} | compacting | ratio |")
    print("| --- | --- | --- | --- |")
    for label, early, late in rows:
        ratio = late / early if early else float("nan")
        print(f"| {label} | {early:.1f} ms | {late:.1f} ms | {ratio:.2f}x |")


if __name__ == "__main__":
    main()
