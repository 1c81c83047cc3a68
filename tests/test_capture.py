"""What a checkpoint captures when a function deletes other keys' entries.

The guide's LRU pattern (``del self.state[next(iter(self.state))]``)
deletes an entry of a key other than the one being processed. These
tests drive a real :class:`StageState` through a barrier, change the
dict as records processed after the barrier would, write the capture
to a real LMDB store and restore it into a fresh function: the
restored dict must be the one at the barrier.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from sage_mp import StatefulFunction
from sage_mp import _checkpoint as checkpoints
from sage_mp._checkpoint import (
    RestorePoint,
    StageState,
    WorkerCheckpointer,
    WorkerCheckpointing,
    merge_blobs,
)
from sage_mp._partition import KEY_GROUPS
from sage_mp._store import BASE, COMPACT_AFTER, Store


class Holder(StatefulFunction):
    def __init__(self) -> None:
        super().__init__()
        self.state: dict[str, int] = {}


@pytest.fixture
def store(tmp_path):
    """A worker's real LMDB store, closed after the test."""
    opened = Store(str(tmp_path / "worker-0"))
    yield opened
    opened.close()


def fifty_keys() -> tuple[Holder, StageState]:
    """A function whose dict holds k0..k49, each processed once."""
    fn = Holder()
    tracker = StageState([("op", fn)], True)
    for i in range(50):
        process(tracker, fn, f"k{i}", lambda s, i=i: s.__setitem__(f"k{i}", i))
    return fn, tracker


def checkpoint(tracker: StageState, store: Store, ident: int, after_barrier=None):
    """Cut checkpoint ``ident``; ``after_barrier(tracker)`` runs records
    after the barrier, before the capture has finished; then write it."""
    tracker.begin()
    if after_barrier is not None:
        after_barrier(tracker)
    tracker.work(None)
    keyed, plain = tracker.collect()
    store.write(ident, keyed, plain, {"id": ident}, 1, merge_blobs)


def restored(store: Store, ident: int) -> dict[str, int]:
    fresh = Holder()
    tracker = StageState([("op", fresh)], True)
    tracker.restore([store], store, RestorePoint(ident, 0, 1), range(KEY_GROUPS))
    return fresh.state


def process(tracker: StageState, fn: Holder, key: str, change) -> None:
    """What the engine does around one record of ``key``."""
    if tracker.capturing:
        tracker.freeze_touched([key])
    tracker.dirty.add(key)
    change(fn.state)


def evict_and_add(key: str, victim: str):
    def change(state: dict[str, int]) -> None:
        state[key] = state.get(key, 0) + 1
        del state[victim]

    return change


def test_an_eviction_after_the_barrier_is_not_in_the_base(store):
    fn, tracker = fifty_keys()
    at_barrier = dict(fn.state)

    checkpoint(
        tracker,
        store,
        1,
        lambda t: process(t, fn, "new", evict_and_add("new", "k7")),
    )

    assert restored(store, 1) == at_barrier


def test_a_function_that_evicts_other_keys_is_then_captured_exactly(store, caplog):
    """The first checkpoint after an eviction notices it (the sizes do
    not add up) and from then on the attribute is captured whole, from
    a copy taken at the barrier: exact whatever happens after it."""
    fn, tracker = fifty_keys()
    checkpoint(tracker, store, 1)
    # Before the next barrier: k3 changes, k4's record evicts k9.
    process(tracker, fn, "k3", lambda s: s.__setitem__("k3", 300))
    process(tracker, fn, "k4", evict_and_add("k4", "k9"))
    checkpoint(tracker, store, 2)
    assert restored(store, 2) == fn.state
    assert "adds or deletes entries of keys other than" in caplog.text

    # Before the third barrier k5 changes; after it, before the
    # capture is done, records evict k5 (changed, not captured yet)
    # and k11 (unchanged).
    process(tracker, fn, "k5", lambda s: s.__setitem__("k5", 500))
    at_barrier = dict(fn.state)

    def after(t: StageState) -> None:
        process(t, fn, "x", evict_and_add("x", "k5"))
        process(t, fn, "y", evict_and_add("y", "k11"))

    checkpoint(tracker, store, 3, after)
    assert restored(store, 3) == at_barrier

    # Keys deleted since: the next checkpoint has them gone.
    for key in [k for k in fn.state if k not in ("x", "y")]:
        del fn.state[key]
    checkpoint(tracker, store, 4)
    assert restored(store, 4) == fn.state == {"x": 1, "y": 1}


def test_restored_dicts_keep_their_order(store):
    """An attribute captured whole (an LRU, evicting by ``next(iter(d))``)
    comes back in its dict's order from every checkpoint after the one
    that noticed the evictions."""
    fn = Holder()
    tracker = StageState([("op", fn)], True)
    names = [f"u{n}" for n in (17, 3, 99, 42, 8, 61, 5, 230, 14, 77) * 30]
    for i, key in enumerate(names):
        process(tracker, fn, key, lambda s, k=key, i=i: s.__setitem__(k, i))
    checkpoint(tracker, store, 1)
    assert restored(store, 1) == fn.state

    def lru_add(key: str, value: int):
        def change(state: dict[str, int]) -> None:
            state[key] = value
            if len(state) > 6:
                del state[next(iter(state))]

        return change

    for ident, batch in enumerate((range(10, 40), range(40, 90), range(90, 95)), 2):
        for n in batch:
            key = f"v{n % 13}"
            process(tracker, fn, key, lru_add(key, n))
        checkpoint(tracker, store, ident)
        back = restored(store, ident)
        assert back == fn.state, ident
        if ident > 2:  # the checkpoint that noticed the evictions was a delta
            assert list(back) == list(fn.state), ident


class OneStage:
    """The parts of a worker's stage instance that its checkpointer
    reads: one keyed operator ``op`` running ``fn``."""

    index = 0
    keyed_input = True

    def __init__(self, fn: Holder) -> None:
        self.functions = [(SimpleNamespace(name="op"), fn)]
        self.tracker: StageState | None = None

    def counts(self) -> dict[str, dict[str, int]]:
        return {}


def test_groups_are_compacted_in_slices_before_the_write(tmp_path, monkeypatch):
    """Due groups merge in capture slices, none in the write; the store stays exact."""
    merged_in_write = []

    def counting_merge(blobs):
        merged_in_write.append(len(blobs))
        return merge_blobs(blobs)

    monkeypatch.setattr(checkpoints, "merge_blobs", counting_merge)
    fn = Holder()
    stage = OneStage(fn)
    worker = WorkerCheckpointer(WorkerCheckpointing(str(tmp_path), None, 0), 0, 1)
    acks = []
    worker.attach({0: stage}, lambda dest, message: acks.append(message))
    keys = [f"k{n}" for n in range(400)]
    try:
        for ident in range(1, 3 * COMPACT_AFTER + 1):
            for key in keys:
                process(
                    stage.tracker, fn, key, lambda s, k=key, v=ident: s.update({k: v})
                )
            worker.on_barrier(stage, ident)
            while worker.busy():
                worker.work(0.001)
            worker.on_commit(ident, ident)
        back = restored(worker.store, 3 * COMPACT_AFTER)
        blobs = [
            worker.store.group_blobs("op", "state", group, 3 * COMPACT_AFTER)
            for group in range(KEY_GROUPS)
        ]
    finally:
        worker.close()

    assert [message[1] for message in acks] == list(range(1, 3 * COMPACT_AFTER + 1))
    assert all("error" not in message[2] for message in acks)
    assert merged_in_write == []
    assert back == fn.state == dict.fromkeys(keys, 3 * COMPACT_AFTER)
    held = [group for group in blobs if group]
    assert held and max(len(group) for group in held) <= 2 * COMPACT_AFTER + 1
    # Bases written after the first checkpoint are compactions.
    assert any(
        ident > 1 and blob[:1] == BASE for group in held for ident, blob in group
    )
