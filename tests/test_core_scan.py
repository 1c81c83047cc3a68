"""Collection sources whose records the workers read themselves.

When a ``keyby`` directly follows a collection that supports slicing
(a list, a tuple, a range), the forked workers already hold it, so
records stay out of the pipes. Either the driver routes each tick and
sends every worker the positions and keys of its records, or it deals
out tick bounds and each worker routes the ticks it is dealt. Every
test here runs both ways, forced with ``SAGE_MP_SCAN_ROUTING``: the
workers really process the collection's own objects, and results,
counts, order and error reports are those of the path that sends the
records.
"""

from __future__ import annotations

import collections
import json
import os
import re

import pytest
from helpers import WORKERS, driver_sink, make_events

from sage_mp import (
    JobFailed,
    KeyByFunction,
    LocalEnvironment,
    MapFunction,
    StatefulFunction,
    UserFunctionError,
)
from sage_mp._driver import SCAN_ROUTING_ENV, scan_mode
from sage_mp._partition import key_group, worker_for_group


@pytest.fixture(params=["driver", "dealt", "every"], autouse=True)
def routing(request, monkeypatch):
    """Who routes the collection's ticks in this test (see scan_mode)."""
    monkeypatch.setenv(SCAN_ROUTING_ENV, request.param)
    return request.param


class Identity(MapFunction):
    """Passes on the ``id()`` of the object it was given, and its pid."""

    def execute(self, event):
        return (os.getpid(), id(event), event["gseq"])


class Numbered(StatefulFunction):
    """Numbers each key's records: the engine's view of per-key order."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: dict[str, int] = {}

    def execute(self, event):
        key = self.ctx.get_key()
        self.seen[key] = self.seen.get(key, 0) + 1
        return (key, event["gseq"], self.seen[key], event["seq"])


@pytest.mark.parametrize("workers", WORKERS)
@pytest.mark.parametrize("container", [list, tuple, iter])
def test_workers_process_the_collections_own_objects(workers, container):
    """A sliceable collection's records are not copied to the workers.

    A worker is a fork of this process, so a record it reads from the
    collection it inherited has the same ``id()`` as here; a record
    that came through a pipe is a new object, at an address no live
    inherited object can have.
    """
    events = make_events(2000, users=13)
    ids = {id(event) for event in events}
    sink = driver_sink()
    env = LocalEnvironment("scan-ids", workers=workers)
    env.from_collection(container(events)).keyby(lambda e: e["user"]).map(
        Identity
    ).sink(sink)
    result = env.submit(autostop=True)

    assert result.records == len(events)
    assert sorted(r[2] for r in sink.records) == list(range(len(events)))
    assert os.getpid() not in {r[0] for r in sink.records}
    seen = {r[1] for r in sink.records}
    if container is iter:
        assert not seen & ids
    else:
        assert seen == ids


@pytest.mark.parametrize("workers", WORKERS)
def test_scanned_stream_keeps_per_key_order_and_counts(workers):
    """Per-key numbering equals the source's; None items are skipped."""
    events = make_events(5000, users=37)
    with_holes: list = []
    for position, event in enumerate(events):
        with_holes.append(event)
        if position % 97 == 0:
            with_holes.append(None)
    sink = driver_sink()
    env = LocalEnvironment("scan-order", workers=workers, batch_size=64)
    env.from_collection(with_holes).keyby(lambda e: e["user"], name="by_user").map(
        Numbered
    ).sink(sink)
    result = env.submit(autostop=True)

    assert result.records == len(events)
    assert result.operators["by_user"]["in"] == len(events)
    assert result.operators["by_user"]["out"] == len(events)
    assert sorted(r[1] for r in sink.records) == list(range(len(events)))
    for key, gseq, engine_seq, source_seq in sink.records:
        assert engine_seq == source_seq, (key, gseq)


def test_range_collection_is_scanned():
    sink = driver_sink(with_key=True)
    env = LocalEnvironment("scan-range", workers=3, batch_size=100)
    env.from_collection(range(1, 1001)).keyby(lambda n: n % 7).sink(sink)
    result = env.submit(autostop=True)

    assert result.records == 1000
    assert sorted(sink.records) == sorted((n % 7, n) for n in range(1, 1001))


def _picky(event):
    if event["gseq"] % 250 == 3:
        raise ValueError(f"cannot key record {event['gseq']}")
    return event["user"]


@pytest.mark.parametrize("workers", WORKERS)
def test_unkeyable_record_is_skipped_and_written_once(workers, tmp_path):
    events = make_events(2000, users=9)
    bad = [e["gseq"] for e in events if e["gseq"] % 250 == 3]
    dead = tmp_path / "dead.jsonl"
    sink = driver_sink()
    env = LocalEnvironment(
        "scan-skip", workers=workers, error_policy="skip", dead_letter_path=str(dead)
    )
    env.from_collection(events).keyby(_picky, name="picky").map(Numbered).sink(sink)
    result = env.submit(autostop=True)

    letters = [json.loads(line) for line in dead.read_text().splitlines()]
    gseqs = [int(re.search(r"'gseq': (\d+)", x["record"])[1]) for x in letters]
    assert sorted(gseqs) == bad
    assert all(letter["operator"] == "picky" for letter in letters)
    assert result.skipped == len(bad)
    assert result.operators["picky"]["skipped"] == len(bad)
    assert result.operators["picky"]["in"] == len(events)
    assert sorted(r[1] for r in sink.records) == sorted(
        e["gseq"] for e in events if e["gseq"] not in bad
    )


@pytest.mark.parametrize("workers", WORKERS)
def test_unkeyable_record_fails_the_job_with_its_details(workers):
    events = make_events(600, users=9)
    env = LocalEnvironment("scan-fail", workers=workers)
    env.from_collection(events).keyby(_picky, name="picky").map(Numbered).sink(
        driver_sink()
    )
    with pytest.raises(UserFunctionError) as caught:
        env.submit(autostop=True)

    text = str(caught.value)
    assert "picky" in text
    assert "cannot key record 3" in text
    assert "'gseq': 3" in text


class PidFileKey:
    """A key extractor that notes, per record, which process keyed it."""

    def __init__(self, path):
        self.path = path

    def __call__(self, event):
        with open(self.path, "a") as handle:
            handle.write(f"{os.getpid()}\n")
        return event["user"]


@pytest.mark.parametrize("workers", [1, 2])
def test_routing_runs_where_it_was_forced(workers, routing, tmp_path):
    """The key extractor runs in the driver, in the worker dealt a tick,
    or in every worker on every record."""
    events = make_events(4000, users=11)
    pids = tmp_path / "pids.txt"
    sink = driver_sink()
    env = LocalEnvironment("scan-where", workers=workers, batch_size=100)
    env.from_collection(events).keyby(PidFileKey(str(pids))).map(Numbered).sink(sink)
    result = env.submit(autostop=True)

    keyed_in = [int(line) for line in pids.read_text().split()]
    assert result.records == len(events)
    assert result.operators["PidFileKey"]["in"] == len(events)
    per_process = collections.Counter(keyed_in)
    if routing == "driver":
        assert per_process == {os.getpid(): len(events)}
    elif routing == "dealt":
        # Each record is keyed once, by the worker its tick was dealt to.
        assert os.getpid() not in per_process
        assert len(per_process) == workers
        assert sum(per_process.values()) == len(events)
    else:
        # Every worker keys every record and keeps the ones it owns.
        assert os.getpid() not in per_process
        assert sorted(per_process.values()) == [len(events)] * workers
    for key, gseq, engine_seq, source_seq in sink.records:
        assert engine_seq == source_seq, (key, gseq)


def test_default_routing_follows_the_spare_cores(monkeypatch):
    """Unforced, the workers route when no core is left for the driver."""
    from sage_mp import _driver

    monkeypatch.delenv(SCAN_ROUTING_ENV)
    env = LocalEnvironment("scan-default")
    env.from_collection([1, 2, 3]).keyby(lambda n: n).sink(driver_sink())
    plan = env.plan()
    monkeypatch.setattr(_driver, "usable_cores", lambda: 4)
    assert scan_mode(plan, 3) == "driver"
    assert scan_mode(plan, 4) == "dealt"
    monkeypatch.setattr(_driver, "usable_cores", lambda: 2)
    assert scan_mode(plan, 1) == "driver"
    assert scan_mode(plan, 2) == "every"
    assert scan_mode(plan, 3) == "dealt"
    # Forced to the workers, the worker count still picks how.
    monkeypatch.setenv(SCAN_ROUTING_ENV, "workers")
    assert scan_mode(plan, 1) == "every"
    assert scan_mode(plan, 2) == "every"
    assert scan_mode(plan, 3) == "dealt"


def test_unknown_routing_value_is_ignored_with_a_warning(monkeypatch, caplog):
    """A misspelt override warns, names the choices, and changes nothing."""
    from sage_mp import _driver

    monkeypatch.setenv(SCAN_ROUTING_ENV, "worker")
    monkeypatch.setattr(_driver, "usable_cores", lambda: 2)
    env = LocalEnvironment("scan-bad-env")
    env.from_collection([1, 2, 3]).keyby(lambda n: n).sink(driver_sink())
    with caplog.at_level("WARNING", logger="sage_mp._driver"):
        assert scan_mode(env.plan(), 1) == "driver"
    assert "'driver', 'workers'" in caplog.text
    assert "'worker'" in caplog.text


def test_a_source_that_sends_records_is_not_scanned(monkeypatch):
    """Iterators, paced sources and operators before the keyby are not."""
    env = LocalEnvironment("scan-not")
    env.from_collection(iter([1, 2])).keyby(lambda n: n).sink(driver_sink())
    assert scan_mode(env.plan(), 2) is None
    env = LocalEnvironment("scan-not-2")
    env.from_collection([1, 2]).map(lambda n: n).keyby(lambda n: n).sink(driver_sink())
    assert scan_mode(env.plan(), 2) is None


def _per_process_key(event):
    return f"{event['user']}@{os.getpid()}"


def _run_with_extractor(tmp_path, extractor, name, events):
    """Run an every-worker-keys job with checkpoints that must fail;
    return the error's text and the ticks of the committed checkpoints."""
    directory = tmp_path / "ckpt"
    env = LocalEnvironment(
        f"scan-{name}",
        workers=2,
        batch_size=100,
        checkpoint_dir=str(directory),
        checkpoint_interval=0.01,
    )
    env.from_collection(events).keyby(extractor, name=name).map(Numbered).sink(
        driver_sink()
    )
    with pytest.raises(JobFailed) as caught:
        env.submit(autostop=True)
    manifest = json.loads((directory / "MANIFEST.json").read_text())
    return str(caught.value), [entry["tick"] for entry in manifest["checkpoints"]]


def test_key_extractor_that_differs_by_process_fails_before_a_checkpoint(
    routing, tmp_path
):
    """Workers that disagree on a record's key fail the job, not its data."""
    if routing != "every":
        pytest.skip("each record is keyed once: nothing can disagree")
    events = make_events(20_000, users=50)
    text, ticks = _run_with_extractor(tmp_path, _per_process_key, "by_pid", events)

    assert "key extractor 'by_pid' is not deterministic" in text
    assert f"{SCAN_ROUTING_ENV}=driver" in text
    # Not one committed checkpoint covers a record.
    assert ticks in ([], [0])


def _owned_by(worker: int, workers: int = 2) -> str:
    return next(
        key
        for key in (f"k{n}" for n in range(1000))
        if worker_for_group(key_group(key), workers) == worker
    )


#: A key that worker 0 owns and one that worker 1 owns, on 2 workers.
_OWNED = (_owned_by(0), _owned_by(1))


class _DoublesAsManyAsItLoses(KeyByFunction):
    """Agrees across processes on half the records. Of the rest, each
    worker claims one quarter for itself and hands the other quarter
    to its peer: those are kept twice and never, equally many."""

    def execute(self, event):
        me = self.ctx.parallel_index
        which = event["gseq"] % 4
        if which < 2:
            return _OWNED[which]
        return _OWNED[me if which == 2 else 1 - me]


def test_key_extractor_that_doubles_as_many_records_as_it_loses_fails(
    routing, tmp_path
):
    """Counts that add up do not hide records kept twice and never."""
    if routing != "every":
        pytest.skip("each record is keyed once: nothing can disagree")
    events = make_events(4_000, users=50)
    text, ticks = _run_with_extractor(
        tmp_path, _DoublesAsManyAsItLoses, "by_half", events
    )

    assert "key extractor 'by_half' is not deterministic" in text
    assert "as many as were sent, but some of them twice and others not" in text
    assert ticks in ([], [0])
