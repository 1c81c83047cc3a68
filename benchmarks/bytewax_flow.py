"""The benchmark workloads as Bytewax 0.21 dataflows, for comparison.

    python -m bytewax.run "bytewax_flow:build('light', 1.0, 0)"

Add ``-i 0 -a "127.0.0.1:P0;127.0.0.1:P1"`` (and a second process with
``-i 1``) for two processes. Every process generates the same data, as
Bytewax's ``TestingSource`` requires, and prints one ``BENCH_RESULT``
line when it exits: its data-generation time, the time from the
dataflow being built to the end of the run, and what its sink saw.

The heavy workload's CPU work runs in a ``map_value`` right after
``key_on``, as in the sage_mp job.
"""

from __future__ import annotations

import atexit
import time
from datetime import datetime, timedelta, timezone
from typing import Any

import bytewax.operators as op
import workloads as W
from bytewax.dataflow import Dataflow
from bytewax.inputs import DynamicSource, StatelessSourcePartition
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from bytewax.testing import TestingSource

_REPORT: dict[str, Any] = {"engine": "bytewax", "records": 0}
_LATENCIES: list[float] = []


class _CountPartition(StatelessSinkPartition[Any]):
    def write_batch(self, items: list[Any]) -> None:
        _REPORT["records"] += len(items)


class CountingSink(DynamicSink[Any]):
    """A cheap sink: counts what reaches it in this process."""

    def build(
        self, step_id: str, worker_index: int, worker_count: int
    ) -> _CountPartition:
        return _CountPartition()


class _LatencyPartition(StatelessSinkPartition[Any]):
    def write_batch(self, items: list[Any]) -> None:
        now = time.perf_counter()
        _LATENCIES.extend(now - item[1]["t0"] for item in items)
        _REPORT["records"] += len(items)


class LatencySink(DynamicSink[Any]):
    def build(
        self, step_id: str, worker_index: int, worker_count: int
    ) -> _LatencyPartition:
        return _LatencyPartition()


class _TimedPartition(StatelessSourcePartition[Any]):
    def __init__(self, count: int) -> None:
        self.remaining = count
        self.keys = W.user_keys(W.LIGHT_KEYS)
        self.wake = datetime.now(timezone.utc)

    def next_batch(self) -> list[Any]:
        if self.remaining == 0:
            raise StopIteration()
        self.remaining -= 1
        self.wake = datetime.now(timezone.utc) + timedelta(seconds=W.LATENCY_DELAY)
        key = self.keys[self.remaining % len(self.keys)]
        return [{"user_id": key, "value": 1, "t0": time.perf_counter()}]

    def next_awake(self) -> datetime:
        return self.wake


class TimedSource(DynamicSource[Any]):
    """One event per ``LATENCY_DELAY`` seconds, stamped when made."""

    def __init__(self, count: int) -> None:
        self.count = count

    def build(
        self, step_id: str, worker_index: int, worker_count: int
    ) -> _TimedPartition:
        return _TimedPartition(self.count if worker_index == 0 else 0)


def _update(state: dict[str, int] | None, event: dict[str, Any]) -> tuple[Any, Any]:
    state = W.session_update(state, event["value"])
    return state, state


def _update_timed(
    state: dict[str, int] | None, event: dict[str, Any]
) -> tuple[Any, Any]:
    state = W.session_update(state, event["value"])
    return state, {**state, "t0": event["t0"]}


def build(workload: str, size: float = 1.0, loops: int = 0) -> Dataflow:
    """Generate the data and the dataflow; report at exit."""
    started = time.perf_counter()
    flow = Dataflow(f"bench_{workload}")
    if workload == "latency":
        stream = op.input("events", flow, TimedSource(W.latency_count(size)))
        keyed = op.key_on("user_id", stream, lambda e: e["user_id"])
        op.output(
            "sink", op.stateful_map("sessions", keyed, _update_timed), LatencySink()
        )
    elif workload == "startup":
        stream = op.input("items", flow, TestingSource(range(W.STARTUP_EVENTS)))
        op.output("sink", op.map("double", stream, lambda x: x * 2), CountingSink())
    else:
        _session_flow(flow, workload, size, loops)
    _REPORT["gen_s"] = time.perf_counter() - started
    ready = time.perf_counter()
    atexit.register(_report, ready)
    return flow


def _session_flow(flow: Dataflow, workload: str, size: float, loops: int) -> None:
    if workload == "heavy":
        events = W.heavy_events(size)
    elif workload in ("light", "skewed"):
        events = W.session_events(size, skewed=workload == "skewed")
    else:
        raise ValueError(f"bytewax_flow has no workload {workload!r}")
    # Batches of 1000, the same batch size sage_mp's driver uses; the
    # default of one record per batch would make Bytewax look slower.
    stream = op.input("events", flow, TestingSource(events, batch_size=1000))
    keyed = op.key_on("user_id", stream, lambda e: e["user_id"])
    if workload == "heavy":
        keyed = op.map_value(
            "work",
            keyed,
            lambda e: {"value": e["value"], "score": W.burn(e["value"], loops)},
        )
    op.output("sink", op.stateful_map("sessions", keyed, _update), CountingSink())


def _report(ready: float) -> None:
    _REPORT["run_s"] = time.perf_counter() - ready
    if _LATENCIES:
        _REPORT["latency_ms"] = {
            "p50": W.percentile(_LATENCIES, 50) * 1e3,
            "p99": W.percentile(_LATENCIES, 99) * 1e3,
            "max": max(_LATENCIES) * 1e3,
            "count": len(_LATENCIES),
        }
    W.emit_result(_REPORT)
