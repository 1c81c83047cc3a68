"""Emitted values are snapshots of live state, as it was when returned.

The guide's functions return objects that live on in their state
(``return self.state[key]``). Records are serialized later, after the
same object has changed again, so the engine must copy each value at
the moment it is emitted: a key's counts must read 1, 2, 3, not 3, 3, 3.
"""

from __future__ import annotations

import pytest
from helpers import WORKERS, FileSink, by_key, driver_sink, read_parts, sink_parallelism

from sage_mp import FlatMapFunction, LocalEnvironment, StatefulFunction

KEYS = [f"k{i}" for i in range(7)]
RECORDS = [{"key": KEYS[i % 7], "other": i % 5, "i": i} for i in range(3000)]
PER_KEY = {k: sum(1 for r in RECORDS if r["key"] == k) for k in KEYS}


class Counter:
    """A plain user object kept in state; travels by pickling."""

    def __init__(self):
        self.count = 0


def bump_flat(state):
    state["count"] += 1


def bump_nested(state):
    state["inner"]["count"] += 1
    state["history"].append(state["inner"]["count"])


def bump_object(state):
    state.count += 1


SHAPES = {
    # shape: (new state, update, count seen in the emitted value)
    "flat-dict": (lambda: {"count": 0}, bump_flat, lambda v: v["count"]),
    "nested-dict": (
        lambda: {"inner": {"count": 0}, "history": []},
        bump_nested,
        lambda v: v["inner"]["count"],
    ),
    "list": (lambda: [0], lambda s: s.__setitem__(0, s[0] + 1), lambda v: v[0]),
    "object": (Counter, bump_object, lambda v: v.count),
}


class LiveState(StatefulFunction):
    """Returns the live state object of the current key."""

    def __init__(self, shape):
        super().__init__()
        self.shape = shape
        self.state = {}

    def execute(self, record):
        new, update, _ = SHAPES[self.shape]
        key = self.ctx.get_key()
        if key not in self.state:
            self.state[key] = new()
        update(self.state[key])
        return self.state[key]


def counts_of(shape, values):
    read = SHAPES[shape][2]
    return [read(v) for v in values]


@pytest.mark.parametrize("workers", WORKERS)
@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_driver_sink_sees_values_as_returned(shape, workers):
    """The driver sink sees 1, 2, 3... per key, never the final value."""
    sink = driver_sink(with_key=True)
    env = LocalEnvironment("snap", workers=workers)
    env.from_collection(RECORDS).keyby(lambda r: r["key"]).map(LiveState, shape).sink(
        sink
    )
    env.submit(autostop=True)

    for key, values in by_key(sink.records).items():
        assert counts_of(shape, values) == list(range(1, PER_KEY[key] + 1)), key


@pytest.mark.parametrize("workers", WORKERS)
@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_later_stage_after_another_keyby_sees_values_as_returned(shape, workers):
    """After re-keying, a later map still sees each value as returned."""
    sink = driver_sink()
    env = LocalEnvironment("snap-rekey", workers=workers)
    (
        env.from_collection(RECORDS)
        .keyby(lambda r: r["key"])
        .map(LiveState, shape)
        .keyby(lambda v: 0)
        .map(lambda v: SHAPES[shape][2](v))
        .sink(sink)
    )
    env.submit(autostop=True)

    # Re-keyed to one key, the records keep source order, so the counts
    # of each key are interleaved as the keys are in RECORDS.
    expected = []
    seen = dict.fromkeys(KEYS, 0)
    for r in RECORDS:
        seen[r["key"]] += 1
        expected.append(seen[r["key"]])
    assert sink.records == expected


@pytest.mark.parametrize("workers", WORKERS)
def test_worker_sink_after_another_keyby_sees_values_as_returned(workers, tmp_path):
    """A worker sink in a later keyed stage sees the counts 1, 2, 3..."""
    env = LocalEnvironment("snap-files", workers=workers)
    (
        env.from_collection(RECORDS)
        .keyby(lambda r: r["key"])
        .map(LiveState, "nested-dict")
        .keyby(lambda v: v["inner"]["count"] % 4)
        .sink(FileSink, str(tmp_path), parallelism=sink_parallelism(workers))
    )
    env.submit(autostop=True)

    values = [rec for part in read_parts(tmp_path).values() for _, _, rec in part]
    got = sorted(v["inner"]["count"] for v in values)
    expected = sorted(c for k in KEYS for c in range(1, PER_KEY[k] + 1))
    assert got == expected
    for v in values:
        assert v["history"] == list(range(1, v["inner"]["count"] + 1))


class CollectLive(FlatMapFunction):
    """Emits the live state twice, once by collect() and once by return."""

    def __init__(self):
        super().__init__()
        self.state = {}

    def execute(self, record):
        key = self.ctx.get_key()
        state = self.state.setdefault(key, {"count": 0})
        state["count"] += 1
        self.collect(state)
        state["count"] += 1
        return [state]


@pytest.mark.parametrize("workers", WORKERS)
def test_flatmap_collect_snapshots_each_emission(workers):
    """collect() copies the value at the call, before later changes."""
    sink = driver_sink(with_key=True)
    env = LocalEnvironment("snap-collect", workers=workers)
    env.from_collection(RECORDS).keyby(lambda r: r["key"]).flatmap(CollectLive).sink(
        sink
    )
    env.submit(autostop=True)

    for key, values in by_key(sink.records).items():
        counts = [v["count"] for v in values]
        assert counts == list(range(1, 2 * PER_KEY[key] + 1)), key


@pytest.mark.parametrize("workers", WORKERS)
def test_values_returned_inside_one_stage_are_seen_before_changes(workers):
    """In one stage, the next operator sees a value before it changes."""
    sink = driver_sink()
    env = LocalEnvironment("snap-chain", workers=workers)
    (
        env.from_collection(RECORDS)
        .keyby(lambda r: r["key"])
        .map(LiveState, "flat-dict")
        .map(lambda v: ("count", v["count"]))
        .sink(sink)
    )
    env.submit(autostop=True)

    per_key = dict.fromkeys(KEYS, 0)
    expected = []
    for r in RECORDS:
        per_key[r["key"]] += 1
        expected.append(("count", per_key[r["key"]]))
    assert sink.records == expected
