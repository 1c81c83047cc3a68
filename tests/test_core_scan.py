"""Collection sources that the workers read themselves.

When a ``keyby`` directly follows a collection that supports slicing
(a list, a tuple, a range), the forked workers already hold it: the
driver sends each tick's bounds, and every worker routes the tick and
keeps its own records. These tests prove that the records really are
routed in the workers, that the results, counts and order are those of
the driver-routed path, and that a record whose key cannot be computed
is reported once, not once per worker.
"""

from __future__ import annotations

import json
import os
import re

import pytest
from helpers import WORKERS, driver_sink, make_events

from sage_mp import (
    KeyByFunction,
    LocalEnvironment,
    StatefulFunction,
    UserFunctionError,
)


class PidKey(KeyByFunction):
    """Keys by user and notes which process computed each key."""

    def __init__(self, directory: str) -> None:
        super().__init__()
        self.directory = directory

    def execute(self, event):
        path = os.path.join(self.directory, f"keys-{os.getpid()}")
        with open(path, "a", encoding="utf-8") as out:
            out.write(f"{event['gseq']}\n")
        return event["user"]


class Numbered(StatefulFunction):
    """Numbers each key's records: the engine's view of per-key order."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: dict[str, int] = {}

    def execute(self, event):
        key = self.ctx.get_key()
        self.seen[key] = self.seen.get(key, 0) + 1
        return (key, event["gseq"], self.seen[key], event["seq"])


def _key_files(directory) -> dict[int, list[int]]:
    found = {}
    for path in directory.glob("keys-*"):
        found[int(path.name.split("-")[1])] = [
            int(line) for line in path.read_text().split()
        ]
    return found


@pytest.mark.parametrize("workers", WORKERS)
@pytest.mark.parametrize("container", [list, tuple, iter])
def test_keys_are_computed_where_the_collection_is_read(workers, container, tmp_path):
    """A sliceable collection is routed by the workers; an iterator is not."""
    events = make_events(2000, users=13)
    sink = driver_sink()
    env = LocalEnvironment("scan-where", workers=workers)
    (
        env.from_collection(container(events))
        .keyby(PidKey, str(tmp_path))
        .map(Numbered)
        .sink(sink)
    )
    result = env.submit(autostop=True)

    assert result.records == len(events)
    computed = _key_files(tmp_path)
    if container is iter:
        # The driver reads an iterator and routes every record itself.
        assert set(computed) == {os.getpid()}
        assert sorted(computed[os.getpid()]) == list(range(len(events)))
    else:
        assert os.getpid() not in computed
        assert len(computed) == workers
        # Every worker computes the key of every record of the stream.
        for gseqs in computed.values():
            assert gseqs == list(range(len(events)))
    assert sorted(r[1] for r in sink.records) == list(range(len(events)))


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
def test_unkeyable_record_is_skipped_once_not_once_per_worker(workers, tmp_path):
    """Every worker meets the bad record; one dead letter is written."""
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
