"""Exact results of the SAGE guide's keyed patterns, against plain Python.

Each job is computed twice: by sage_mp, and by a plain loop over the
same events. The driver sink (``parallelism=1``) sees every record in
source order, so its output must equal the plain output exactly. The
worker sinks (``parallelism > 1``) write one file each; their records
are compared per key.
"""

from __future__ import annotations

import os

import pytest
from helpers import (
    WORKERS,
    FileSink,
    by_key,
    driver_sink,
    make_events,
    read_parts,
    sink_parallelism,
)

from sage_mp import LocalEnvironment, StatefulFunction
from sage_mp._partition import key_group, worker_for_group

EVENTS = make_events(5000, users=40, seed=11)


# --- the functions under test, written as the guide writes them --------


class UserSessionFunction(StatefulFunction):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.user_sessions = {}

    def execute(self, event):
        user_id = self.ctx.get_key()
        if user_id not in self.user_sessions:
            self.user_sessions[user_id] = {"session_count": 0, "total_value": 0}
        self.user_sessions[user_id]["session_count"] += 1
        self.user_sessions[user_id]["total_value"] += event["value"]
        return self.user_sessions[user_id]


class CounterFunction(StatefulFunction):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.counters = {}

    def execute(self, data):
        key = self.ctx.get_key()
        self.counters[key] = self.counters.get(key, 0) + 1
        return {key: self.counters[key]}


class WindowAggregator(StatefulFunction):
    """Pattern 2, with the window taken from the event's own timestamp."""

    def __init__(self, window_size=50, **kwargs):
        super().__init__(**kwargs)
        self.window_data = {}
        self.window_size = window_size

    def execute(self, event):
        key = self.ctx.get_key()
        window_id = event["ts"] // self.window_size
        windows = self.window_data.setdefault(key, {})
        windows.setdefault(window_id, []).append(event)
        for old in [w for w in windows if w < window_id - 2]:
            del windows[old]
        return {
            "key": key,
            "window": window_id,
            "count": len(windows[window_id]),
            "windows_held": sorted(windows),
        }


class FeatureComputer(StatefulFunction):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.features = {}

    def execute(self, event):
        entity_id = self.ctx.get_key()
        if entity_id not in self.features:
            self.features[entity_id] = {
                "mean": 0.0,
                "count": 0,
                "min": float("inf"),
                "max": float("-inf"),
            }
        value = event["value"]
        f = self.features[entity_id]
        f["count"] += 1
        f["mean"] = (f["mean"] * (f["count"] - 1) + value) / f["count"]
        f["min"] = min(f["min"], value)
        f["max"] = max(f["max"], value)
        return {entity_id: f}


class FlexibleFunction(StatefulFunction):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.keyed_state = {}
        self.global_state = {"total_count": 0}

    def execute(self, data):
        key = self.ctx.get_key()
        self.global_state["total_count"] += 1
        if key is not None:
            state = self.keyed_state.setdefault(key, {"count": 0})
            state["count"] += 1
            return {
                "key": key,
                "key_count": state["count"],
                "global_count": self.global_state["total_count"],
            }
        return {"global_count": self.global_state["total_count"]}


# --- the same jobs in plain Python -------------------------------------


def plain(function_class, events, key_field="user"):
    """Run a function over ``events`` in one process, as the engine should.

    Returns ``(key, output)`` pairs in source order, each output copied
    as it was when returned (the engine's snapshot rule).
    """
    import copy

    class Ctx:
        key = None

        def get_key(self):
            return self.key

    fn = function_class()
    fn.ctx = Ctx()
    out = []
    for event in events:
        fn.ctx.key = event[key_field]
        out.append((event[key_field], copy.deepcopy(fn.execute(event))))
    return out


def run_keyed(function_class, workers, events=EVENTS, key_field="user"):
    """Run ``keyby(field) -> map(function) -> driver sink``; return pairs."""
    sink = driver_sink(with_key=True)
    env = LocalEnvironment("results", workers=workers)
    (
        env.from_collection(events)
        .keyby(lambda e: e[key_field])
        .map(function_class)
        .sink(sink)
    )
    env.submit(autostop=True)
    return sink.records


PATTERNS = [UserSessionFunction, CounterFunction, WindowAggregator, FeatureComputer]


@pytest.mark.parametrize("workers", WORKERS)
@pytest.mark.parametrize("function_class", PATTERNS, ids=lambda c: c.__name__)
def test_keyed_pattern_matches_plain_python_in_driver_sink(function_class, workers):
    """Each keyed guide pattern gives exactly the plain result, in order."""
    got = run_keyed(function_class, workers)

    assert got == plain(function_class, EVENTS)


@pytest.mark.parametrize("workers", WORKERS)
def test_sessions_final_count_and_sum_per_user(workers):
    """The last session record of each user holds its exact count and sum."""
    got = run_keyed(UserSessionFunction, workers)

    last = {key: out for key, out in got}
    expected = {}
    for e in EVENTS:
        count, total = expected.get(e["user"], (0, 0))
        expected[e["user"]] = (count + 1, total + e["value"])
    assert {
        k: (v["session_count"], v["total_value"]) for k, v in last.items()
    } == expected


@pytest.mark.parametrize("workers", WORKERS)
def test_windows_keep_at_most_three_per_key(workers):
    """Window cleanup runs: no key ever holds a window older than id - 2."""
    got = run_keyed(WindowAggregator, workers)

    assert got, "the job produced no records"
    for _, out in got:
        assert min(out["windows_held"]) >= out["window"] - 2
    assert max(len(out["windows_held"]) for _, out in got) == 3


@pytest.mark.parametrize("workers", WORKERS)
def test_features_final_mean_min_max(workers):
    """Running features end at the true mean, min and max of each key."""
    got = run_keyed(FeatureComputer, workers)

    last = {key: out[key] for key, out in got}
    values = by_key((e["user"], e["value"]) for e in EVENTS)
    for user, vals in values.items():
        assert last[user]["count"] == len(vals)
        assert last[user]["min"] == min(vals)
        assert last[user]["max"] == max(vals)
        assert last[user]["mean"] == pytest.approx(sum(vals) / len(vals))


@pytest.mark.parametrize("workers", WORKERS)
def test_flexible_function_on_keyed_stream(workers):
    """Pattern 4 keyed: per-key counts exact, global counts per worker."""
    got = run_keyed(FlexibleFunction, workers)

    # The global count is per instance, so it counts the records of the
    # keys that share the key's worker.
    per_worker: dict[int, int] = {}
    expected = []
    key_counts: dict[str, int] = {}
    for e in EVENTS:
        worker = worker_for_group(key_group(e["user"]), workers)
        per_worker[worker] = per_worker.get(worker, 0) + 1
        key_counts[e["user"]] = key_counts.get(e["user"], 0) + 1
        out = {
            "key": e["user"],
            "key_count": key_counts[e["user"]],
            "global_count": per_worker[worker],
        }
        expected.append((e["user"], out))
    assert got == expected


@pytest.mark.parametrize("workers", WORKERS)
def test_flexible_function_on_unkeyed_single_instance(workers):
    """Pattern 4 unkeyed, one instance: the global count runs 1..n."""
    sink = driver_sink(with_key=True)
    env = LocalEnvironment("unkeyed", workers=workers)
    env.from_collection(EVENTS).map(FlexibleFunction, parallelism=1).sink(sink)
    env.submit(autostop=True)

    expected = [(None, {"global_count": i}) for i in range(1, len(EVENTS) + 1)]
    assert sink.records == expected


@pytest.mark.parametrize("workers", WORKERS)
def test_flexible_function_on_unkeyed_parallel_instances(workers):
    """Pattern 4 unkeyed, one instance per worker: each counts 1..n_i."""
    sink = driver_sink(with_key=True)
    env = LocalEnvironment("unkeyed", workers=workers)
    env.from_collection(EVENTS).map(FlexibleFunction).sink(sink)
    env.submit(autostop=True)

    assert all(key is None for key, _ in sink.records)
    assert all(set(out) == {"global_count"} for _, out in sink.records)
    counts = sorted(out["global_count"] for _, out in sink.records)
    # n_i records in instance i give 1..n_i: count k occurs once per
    # instance that processed at least k records.
    occurrences = [counts.count(k) for k in range(1, counts[-1] + 1)]
    assert occurrences[0] <= workers
    assert occurrences == sorted(occurrences, reverse=True)
    assert len(counts) == len(EVENTS)


@pytest.mark.parametrize("workers", WORKERS)
@pytest.mark.parametrize("function_class", PATTERNS, ids=lambda c: c.__name__)
def test_keyed_pattern_matches_plain_python_in_worker_sinks(
    function_class, workers, tmp_path
):
    """Worker sinks get exactly the plain per-key results, on their workers."""
    env = LocalEnvironment("results-files", workers=workers)
    (
        env.from_collection(EVENTS)
        .keyby(lambda e: e["user"])
        .map(function_class)
        .sink(FileSink, str(tmp_path), parallelism=sink_parallelism(workers))
    )
    env.submit(autostop=True)

    parts = read_parts(tmp_path)
    assert sorted(parts) == list(range(workers))
    got = []
    for index, lines in parts.items():
        for pid, key, record in lines:
            assert pid != os.getpid(), "a worker sink ran in the driver"
            assert worker_for_group(key_group(key), workers) == index
            got.append((key, record))
    expected = plain(function_class, EVENTS)
    # JSON turns int dict keys into str and tuples into lists; the
    # records here only have str keys and lists.
    assert by_key(got) == by_key(expected)
