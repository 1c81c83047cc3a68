"""Per-key order, several keyby stages, and keys travelling with records.

Every event carries, for each field it can be keyed by, its position
among the events sharing that field's value (``seq_user``,
``seq_region``, ``seq_device``). Whatever the stages in between, the
records of one key must arrive in that order.
"""

from __future__ import annotations

import pytest
from helpers import (
    WORKERS,
    FileSink,
    assert_strictly_increasing,
    by_key,
    driver_sink,
    make_events,
    number_per_key,
    read_parts,
    sink_parallelism,
)

from sage_mp import FlatMapFunction, LocalEnvironment, MapFunction, UserFunctionError

FIELDS = ("user", "region", "device")
EVENTS = make_events(6000, users=60, seed=3)
for _field in FIELDS:
    number_per_key(EVENTS, _field)


class OrderCheck(MapFunction):
    """Raises inside the worker as soon as its key's order breaks."""

    def __init__(self, field):
        super().__init__()
        self.field = field
        self.last = {}

    def execute(self, event):
        key = self.ctx.get_key()
        assert key == event[self.field], (key, event)
        seq = event[f"seq_{self.field}"]
        previous = self.last.get(key, 0)
        if seq <= previous:
            raise AssertionError(f"key {key!r}: seq {seq} after {previous}")
        self.last[key] = seq
        return event


def keyed_chain(stream, fields):
    """Key by each field in turn, checking order after every keyby."""
    for field in fields:
        stream = stream.keyby(lambda e, f=field: e[f]).map(OrderCheck, field)
    return stream


def assert_order_per_key(records, fields=FIELDS):
    for field in fields:
        groups = by_key((r[field], r[f"seq_{field}"]) for r in records)
        for key, seqs in groups.items():
            assert_strictly_increasing(seqs, f"{field}={key!r}")


@pytest.mark.parametrize("workers", WORKERS)
@pytest.mark.parametrize("stages", [1, 2, 3])
def test_order_per_key_through_keyby_stages(stages, workers):
    """Each key's records stay in order through 1, 2 and 3 keyby stages."""
    sink = driver_sink()
    env = LocalEnvironment("order", workers=workers)
    keyed_chain(env.from_collection(EVENTS), FIELDS[:stages]).sink(sink)
    env.submit(autostop=True)

    assert len(sink.records) == len(EVENTS)
    assert_order_per_key(sink.records)
    assert [r["gseq"] for r in sink.records] == list(range(len(EVENTS)))


@pytest.mark.parametrize("workers", WORKERS)
@pytest.mark.parametrize("stages", [1, 2, 3])
def test_order_per_key_in_worker_sinks(stages, workers, tmp_path):
    """A worker sink sees its keys' records in order after re-keying."""
    env = LocalEnvironment("order-files", workers=workers)
    stream = keyed_chain(env.from_collection(EVENTS), FIELDS[:stages])
    stream.sink(FileSink, str(tmp_path), parallelism=sink_parallelism(workers))
    env.submit(autostop=True)

    field = FIELDS[stages - 1]
    lines = [line for part in read_parts(tmp_path).values() for line in part]
    assert len(lines) == len(EVENTS)
    for part in read_parts(tmp_path).values():
        groups = by_key((key, record[f"seq_{field}"]) for _, key, record in part)
        for key, seqs in groups.items():
            assert_strictly_increasing(seqs, f"{field}={key!r}")


@pytest.mark.parametrize("workers", WORKERS)
def test_order_per_key_through_round_robin_keyby(workers):
    """Records spread round-robin still reach the driver sink in key order."""
    sink = driver_sink(with_key=True)
    env = LocalEnvironment("order-rr", workers=workers)
    (
        env.from_collection(EVENTS)
        .keyby(lambda e: e["user"], strategy="round_robin")
        .map(lambda e: e)
        .keyby(lambda e: e["region"])
        .map(OrderCheck, "region")
        .sink(sink)
    )
    env.submit(autostop=True)

    assert [k for k, _ in sink.records] == [e["region"] for e in EVENTS]
    assert_order_per_key([r for _, r in sink.records])


class Explode(FlatMapFunction):
    """Turns an event into ``device % 3 + 1`` copies numbered in ``field``."""

    def __init__(self, field):
        super().__init__()
        self.field = field

    def execute(self, event):
        for part in range(event["device"] % 3 + 1):
            yield {**event, self.field: part}


@pytest.mark.parametrize("workers", WORKERS)
def test_order_per_key_through_flatmap(workers):
    """A flatmap's outputs keep their key's order, parts included."""
    sink = driver_sink(with_key=True)
    env = LocalEnvironment("order-flat", workers=workers)
    (
        env.from_collection(EVENTS)
        .keyby(lambda e: e["user"])
        .flatmap(Explode, "p1")
        .keyby(lambda e: e["region"])
        .flatmap(Explode, "p2")
        .sink(sink)
    )
    env.submit(autostop=True)

    expected = sum((e["device"] % 3 + 1) ** 2 for e in EVENTS)
    assert len(sink.records) == expected
    regions = by_key((k, (r["seq_region"], r["p1"], r["p2"])) for k, r in sink.records)
    for key, seqs in regions.items():
        assert_strictly_increasing(seqs, f"region={key!r}")
    users = by_key(
        (r["user"], (r["seq_user"], r["p1"], r["p2"])) for _, r in sink.records
    )
    for key, seqs in users.items():
        assert_strictly_increasing(seqs, f"user={key!r}")


@pytest.mark.parametrize("workers", WORKERS)
def test_order_check_can_fail(workers):
    """OrderCheck really fails a job whose records arrive out of order."""
    shuffled = list(reversed(EVENTS[:200]))
    env = LocalEnvironment("order-broken", workers=workers)
    keyed_chain(env.from_collection(shuffled), ["user"]).sink(driver_sink())

    with pytest.raises(UserFunctionError, match="OrderCheck"):
        env.submit(autostop=True)


# --- keys through stages -----------------------------------------------


class KeyProbe(MapFunction):
    """Records which key this operator saw for the record."""

    def __init__(self, label):
        super().__init__()
        self.label = label

    def execute(self, record):
        return {**record, f"key_at_{self.label}": self.ctx.get_key()}


@pytest.mark.parametrize("workers", WORKERS)
def test_no_keyby_pipeline_has_no_key(workers):
    """Without keyby, map/filter/flatmap and the sink see get_key() None."""
    sink = driver_sink(with_key=True)
    env = LocalEnvironment("no-keyby", workers=workers)
    (
        env.from_collection(EVENTS)
        .map(KeyProbe, "map")
        .filter(lambda r: r["key_at_map"] is None and r["value"] % 2 == 0)
        .flatmap(lambda r: [r, r])
        .map(KeyProbe, "after")
        .sink(sink)
    )
    env.submit(autostop=True)

    evens = [e for e in EVENTS if e["value"] % 2 == 0]
    assert len(sink.records) == 2 * len(evens)
    for key, record in sink.records:
        assert key is None
        assert record["key_at_map"] is None and record["key_at_after"] is None


@pytest.mark.parametrize("workers", WORKERS)
def test_key_stays_with_records_after_keyby(workers):
    """Every operator after a keyby, and the sink, sees the record's key."""
    sink = driver_sink(with_key=True)
    env = LocalEnvironment("key-stays", workers=workers)
    (
        env.from_collection(EVENTS)
        .keyby(lambda e: e["user"])
        .map(KeyProbe, "m1")
        .filter(lambda r: r["value"] % 3 != 0)
        .flatmap(lambda r: [r])
        .map(KeyProbe, "m2")
        .sink(sink)
    )
    env.submit(autostop=True)

    kept = [e for e in EVENTS if e["value"] % 3 != 0]
    assert len(sink.records) == len(kept)
    for key, record in sink.records:
        assert key == record["user"] == record["key_at_m1"] == record["key_at_m2"]


@pytest.mark.parametrize("workers", WORKERS)
def test_each_keyby_replaces_the_key(workers):
    """After three keyby stages each operator sees the latest key only."""
    sink = driver_sink(with_key=True)
    env = LocalEnvironment("rekey", workers=workers)
    (
        env.from_collection(EVENTS)
        .keyby(lambda e: e["user"])
        .map(KeyProbe, "user")
        .keyby(lambda e: e["region"])
        .map(KeyProbe, "region")
        .keyby(lambda e: (e["device"], e["region"]))
        .map(KeyProbe, "pair")
        .sink(sink)
    )
    env.submit(autostop=True)

    assert len(sink.records) == len(EVENTS)
    for key, r in sink.records:
        assert r["key_at_user"] == r["user"]
        assert r["key_at_region"] == r["region"]
        assert r["key_at_pair"] == (r["device"], r["region"])
        assert key == (r["device"], r["region"])
