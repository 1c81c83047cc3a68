"""The benchmark workloads as sage_mp jobs, run the way users run jobs.

    python -m sage_mp run --workers 2 benchmarks/sage_job.py -- light --workers 2

The harness (``python -m sage_mp bench``) starts this script once per
measured run and reads the ``BENCH_RESULT`` line it prints. The
functions follow the SAGE keyed-state guide's shapes.

Where the heavy workload's CPU work runs: in a stateless map placed
right after the ``keyby`` (so it runs in the workers, chained into the
same stage as the stateful map). Keeping it out of the stateful
function lets the ``multiprocessing.Pool`` baseline run exactly the
same function as the stateless part.
"""

from __future__ import annotations

import argparse
import inspect
import time
from typing import Any, ClassVar

import workloads as W

from sage_mp import (
    KeyByFunction,
    LocalEnvironment,
    MapFunction,
    SinkFunction,
    SourceFunction,
    StatefulFunction,
    StopSignal,
)

# --- the functions -----------------------------------------------------


class UserIdExtractor(KeyByFunction):
    def execute(self, event: dict[str, Any]) -> str:
        return event["user_id"]


class UserSessionFunction(StatefulFunction):
    """Per user: how many events, and the sum of their values."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.user_sessions: dict[str, dict[str, int]] = {}

    def execute(self, event: dict[str, Any]) -> dict[str, int]:
        user_id = self.ctx.get_key()
        session = self.user_sessions.get(user_id)
        if session is None:
            session = self.user_sessions[user_id] = {
                "session_count": 0,
                "total_value": 0,
            }
        session["session_count"] += 1
        session["total_value"] += event["value"]
        return session


class LatencySessionFunction(UserSessionFunction):
    """Like its parent, but the output carries the source's timestamp."""

    def execute(self, event: dict[str, Any]) -> dict[str, Any]:
        session = super().execute(event)
        return {**session, "t0": event["t0"]}


class Work(MapFunction):
    """The heavy workload's ~20 us of pure-Python CPU work per event."""

    def __init__(self, loops: int) -> None:
        super().__init__()
        self.loops = loops

    def execute(self, event: dict[str, Any]) -> dict[str, Any]:
        return {"value": event["value"], "score": W.burn(event["value"], self.loops)}


class CountSink(SinkFunction):
    """A cheap sink: counts; optionally reports its first record's time."""

    def __init__(self, report_first: bool = False) -> None:
        super().__init__()
        self.count = 0
        # Private, so not state: a resumed job reports its own first
        # record although ``count`` comes back from the checkpoint.
        self._report_first = report_first

    def execute(self, record: Any) -> None:
        if self._report_first:
            self._report_first = False
            W.emit_first_record()
        self.count += 1


class ThrottledSink(SinkFunction):
    """The memory workload's slow sink."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def execute(self, record: Any) -> None:
        self.count += 1
        W.throttle(self.count)


class LatencySink(SinkFunction):
    """Runs in the driver (parallelism 1): same clock as the source."""

    latencies: ClassVar[list[float]] = []

    def execute(self, record: dict[str, Any]) -> None:
        LatencySink.latencies.append(time.perf_counter() - record["t0"])


class CollectSink(SinkFunction):
    seen: ClassVar[list[Any]] = []

    def execute(self, record: Any) -> None:
        CollectSink.seen.append(record)


class TimedSource(SourceFunction):
    """Events stamped with the time the source made them."""

    def __init__(self, count: int) -> None:
        super().__init__()
        self.remaining = count
        self.keys = W.user_keys(W.LIGHT_KEYS)

    def execute(self, data: Any = None) -> Any:
        if self.remaining == 0:
            return StopSignal("done")
        self.remaining -= 1
        key = self.keys[self.remaining % len(self.keys)]
        return {"user_id": key, "value": 1, "t0": time.perf_counter()}


class PayloadSource(SourceFunction):
    """Makes ~1 KiB records as fast as the pipeline takes them."""

    def __init__(self, size: float) -> None:
        super().__init__()
        self.events = W.payload_events(size)

    def execute(self, data: Any = None) -> Any:
        return next(self.events, StopSignal("done"))


# --- the pipelines -----------------------------------------------------


def worker_sink_parallelism(workers: int) -> int:
    # parallelism=1 puts a sink in the driver; any value above 1 means
    # one instance per worker, which is what a 1-worker run needs too.
    return max(2, workers)


def checkpoint_options(args: argparse.Namespace) -> dict[str, Any]:
    if not args.checkpoint_dir:
        return {}
    if "checkpoint_dir" not in inspect.signature(LocalEnvironment).parameters:
        raise SystemExit("not available: needs checkpoints")
    return {"checkpoint_dir": args.checkpoint_dir, "checkpoint_interval": 1.0}


def build(args: argparse.Namespace) -> tuple[LocalEnvironment, float, Any]:
    """Make the data and the pipeline; return the env, gen time, a probe."""
    started = time.perf_counter()
    env = LocalEnvironment(
        f"bench-{args.workload}", workers=args.workers, **checkpoint_options(args)
    )
    workload = args.workload
    probe = None
    if workload in ("light", "skewed", "heavy", "checkpointed", "big-state"):
        events = _events(args)
        gen_s = time.perf_counter() - started
        stream = env.from_collection(events).keyby(UserIdExtractor)
        if workload == "heavy":
            stream = stream.map(Work, args.loops)
        stream.map(UserSessionFunction).sink(
            CountSink,
            args.report_first,
            parallelism=worker_sink_parallelism(env.workers or 2),
            name="count",
        )
        probe = len(events)
    elif workload == "latency":
        gen_s = 0.0
        probe = W.latency_count(args.size)
        (
            env.from_source(TimedSource, probe, delay=W.LATENCY_DELAY)
            .keyby(UserIdExtractor)
            .map(LatencySessionFunction)
            .sink(LatencySink)
        )
    elif workload == "memory":
        gen_s = 0.0
        (
            env.from_source(PayloadSource, args.size)
            .keyby(UserIdExtractor)
            .map(UserSessionFunction)
            .sink(ThrottledSink, parallelism=worker_sink_parallelism(env.workers or 2))
        )
    elif workload == "startup":
        gen_s = 0.0
        env.from_collection(range(W.STARTUP_EVENTS)).map(lambda x: x * 2).sink(
            CollectSink
        )
    else:
        raise SystemExit(f"unknown workload {workload!r}")
    return env, gen_s, probe


def _events(args: argparse.Namespace) -> list[dict[str, Any]]:
    if args.workload == "heavy":
        events = W.heavy_events(args.size)
    elif args.workload == "big-state":
        events = W.big_state_events(args.size)
    else:
        events = W.session_events(args.size, skewed=args.workload == "skewed")
    return events + W.extra_events(args.extra) if args.extra else events


def cpu_split(result: Any, driver_cpu: float) -> dict[str, Any]:
    """CPU seconds per process, unprofiled: driver, then each worker.

    A worker's ``busy`` is the time its stages spent processing ticks;
    the rest of its CPU went to reading, unpickling and its loop.
    """
    split: dict[str, Any] = {"driver": round(driver_cpu, 3)}
    for stats in getattr(result, "worker_stats", []):
        busy = sum(stats.get("stage_busy", {}).values())
        split[f"w{stats['worker']}"] = {
            "cpu": round(stats.get("cpu", 0.0), 3),
            "busy": round(busy, 3),
        }
    return split


def summarize(
    args: argparse.Namespace, result: Any, gen_s: float, run_s: float
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "engine": "sage_mp",
        "gen_s": gen_s,
        "run_s": run_s,
        "records": result.records,
        # What this run's sinks saw; ``records`` of a resumed job also
        # counts the records its checkpoint had already covered.
        "processed": result.operators.get("count", {}).get("in"),
        "resumed_from": getattr(result, "resumed_from", None),
        "workers": result.workers,
        "operators": result.operators,
    }
    if args.workload == "latency":
        lat = LatencySink.latencies
        out["latency_ms"] = {
            "p50": W.percentile(lat, 50) * 1e3,
            "p99": W.percentile(lat, 99) * 1e3,
            "max": max(lat, default=0.0) * 1e3,
            "count": len(lat),
        }
    checkpoints = getattr(result, "checkpoints", None)
    if checkpoints is not None:
        out["checkpoints"] = [dict(c) for c in checkpoints]
    return out


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="One sage_mp benchmark job.")
    parser.add_argument("workload", help="which workload to run")
    parser.add_argument("--size", type=float, default=1.0, help="scale factor")
    parser.add_argument("--workers", type=int, default=None, help="worker processes")
    parser.add_argument("--loops", type=int, default=0, help="heavy: burn() loops")
    parser.add_argument("--checkpoint-dir", default=None, help="enable checkpoints")
    parser.add_argument("--extra", type=int, default=0, help="append new events")
    parser.add_argument(
        "--report-first", action="store_true", help="print the first record's time"
    )
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    env, gen_s, _ = build(args)
    cpu_before = time.process_time()
    started = time.perf_counter()
    result = env.submit(autostop=True)
    run_s = time.perf_counter() - started
    out = summarize(args, result, gen_s, run_s)
    out["cpu_s"] = cpu_split(result, time.process_time() - cpu_before)
    W.emit_result(out)


if __name__ == "__main__":
    main()
