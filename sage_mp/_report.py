"""The end-of-run report: a finished job's figures as text and as JSON.

Everything here reads a :class:`~sage_mp._driver.JobResult`; nothing
runs while the job does. What the figures mean:

* per operator: ``in`` records it was handed, ``out`` records it
  passed on, ``skipped`` records whose function raised under the skip
  policy, ``busy`` seconds of processing summed over its instances:
  its stage's busy time (measured per tick) split between the
  operators chained in that stage by stack sampling (see
  :class:`sage_mp._metrics.OperatorSampler`). The source has no busy
  figure: it is polled between ticks, outside any stage.
* per worker: ``records`` taken in by its stages (a record counts once
  per stage it passes), CPU seconds (user + system) and peak RSS of
  the worker process.
* the driver: CPU seconds of the thread that ran the job, and peak
  RSS of the whole driver process (the user's process).
* checkpoints committed by this run: count, median and max of the
  duration (barrier to commit) and of the size written.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

__all__ = ["checkpoint_stats", "format_report", "records_out", "result_dict"]


def records_out(result: Any) -> int:
    """Records that reached the sinks (or left the last operator)."""
    kinds = result.operator_kinds
    sinks = [op for name, op in result.operators.items() if kinds.get(name) == "sink"]
    if sinks:
        return sum(int(op["in"]) for op in sinks)
    operators = list(result.operators.values())
    return int(operators[-1]["out"]) if operators else 0


def checkpoint_stats(checkpoints: list[dict[str, Any]]) -> dict[str, Any]:
    """Count, median and max duration (s) and size (bytes)."""
    import statistics  # Not at the top: every job's report loads this module.

    durations = [float(entry["duration"]) for entry in checkpoints]
    sizes = [int(entry["bytes"]) for entry in checkpoints]
    return {
        "count": len(checkpoints),
        "duration_median": statistics.median(durations) if durations else None,
        "duration_max": max(durations, default=None),
        "bytes_median": statistics.median(sizes) if sizes else None,
        "bytes_max": max(sizes, default=None),
        "last_id": checkpoints[-1]["id"] if checkpoints else None,
    }


def result_dict(result: Any) -> dict[str, Any]:
    """The result's fields plus the derived figures, JSON-ready."""
    data = dataclasses.asdict(result)
    data["throughput"] = result.throughput
    data["records_out"] = records_out(result)
    data["checkpoint_stats"] = checkpoint_stats(result.checkpoints)
    for stats in data["worker_stats"]:
        # JSON object keys are strings; say so instead of letting
        # json.dumps convert stage indexes silently.
        stats["stage_busy"] = {str(k): v for k, v in stats["stage_busy"].items()}

    return data


def format_report(result: Any) -> str:
    """The report ``python -m sage_mp run`` prints when a job ends."""
    state = "stopped" if result.stopped else "finished"
    lines = [
        f"job {result.name!r} {state}: {result.records:,} records in "
        f"{result.wall_time:.2f} s on {result.workers} workers "
        f"({result.throughput:,.0f} records/s)",
        *_operator_table(result),
        *_process_table(result.worker_stats, result.driver_stats),
        *_checkpoint_lines(result),
    ]
    if result.skipped:
        where = result.dead_letter_path
        lines.append(
            f"  skipped: {result.skipped:,} {_plural(result.skipped, 'record')}; "
            f"dead letters in {os.path.abspath(where) if where else '(none)'}"
        )

    return "\n".join(lines)


def _operator_table(result: Any) -> list[str]:
    operators = result.operators
    width = max([len("operator"), *map(len, operators)])
    rows = [
        f"  {'operator':<{width}}  {'kind':<7} {'in':>12} {'out':>12} "
        f"{'skipped':>8} {'busy s':>8}"
    ]
    for name, op in operators.items():
        busy = result.operator_busy.get(name)
        kind = result.operator_kinds.get(name, "")
        rows.append(
            f"  {name:<{width}}  {kind:<7} {op['in']:>12,} "
            f"{op['out']:>12,} {op.get('skipped', 0):>8,} "
            f"{'-' if busy is None else f'{busy:.2f}':>8}"
        )

    return rows


def _process_table(workers: list[dict[str, Any]], driver: dict[str, Any]) -> list[str]:
    rows = [f"  {'process':<8} {'records':>12} {'cpu s':>8} {'peak rss':>10}"]
    for stats in workers:
        rows.append(
            f"  {'w' + str(stats['worker']):<8} {stats['records']:>12,} "
            f"{stats['cpu']:>8.2f} {size(stats['peak_rss']):>10}"
        )
    if driver:
        rows.append(
            f"  {'driver':<8} {'-':>12} {driver['cpu']:>8.2f} "
            f"{size(driver['peak_rss']):>10}"
        )

    return rows


def _checkpoint_lines(result: Any) -> list[str]:
    lines = []
    stats = checkpoint_stats(result.checkpoints)
    if stats["count"]:
        lines.append(
            f"  checkpoints: {stats['count']} committed, last id "
            f"{stats['last_id']}; duration median {stats['duration_median']:.3f} s, "
            f"max {stats['duration_max']:.3f} s; size median "
            f"{size(stats['bytes_median'])}, max {size(stats['bytes_max'])}"
        )
    if stats["count"] or result.restarts or result.resumed_from is not None:
        resumed = (
            f"; resumed from checkpoint {result.resumed_from}"
            if result.resumed_from is not None
            else ""
        )
        lines.append(f"  restarts: {result.restarts}{resumed}")
    if result.restarts:
        lines.append(
            "  (operator and process figures cover the run since the last restart)"
        )

    return lines


def _plural(count: int, noun: str) -> str:
    return noun if count == 1 else noun + "s"


def size(count: float | None) -> str:
    """A byte count for people: ``512 B``, ``40.1 KiB``, ``1.2 GiB``."""
    if count is None:
        return "-"
    value = float(count)
    for unit in ("B", "KiB", "MiB"):
        if value < 1024:
            return f"{value:.0f} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"
