"""User errors: the default fail policy and the skip policy.

Under ``fail`` the job stops with a :class:`UserFunctionError` that says
where and on what the user's function raised, and leaves no worker
behind. Under ``skip`` the job goes on, counts the skipped records and
writes each to a dead-letter file.
"""

from __future__ import annotations

import json

import pytest
from helpers import WORKERS, children_pids, driver_sink, wait_gone

from sage_mp import (
    JobFailed,
    LocalEnvironment,
    MapFunction,
    SinkFunction,
    SourceFunction,
    StatefulFunction,
    StopSignal,
    UserFunctionError,
)

RECORDS = [{"user": f"u{i % 11}", "i": i, "pad": "x" * (i % 5)} for i in range(3000)]


class Boom(StatefulFunction):
    def __init__(self, bad_i):
        super().__init__()
        self.bad_i = bad_i
        self.seen = {}

    def execute(self, record):
        key = self.ctx.get_key()
        self.seen[key] = self.seen.get(key, 0) + 1
        if record["i"] == self.bad_i:
            explode_here(record)
        return record


def explode_here(record):
    raise KeyError(f"no such thing in record {record['i']}")


@pytest.mark.parametrize("workers", WORKERS)
def test_fail_policy_error_names_operator_worker_key_and_record(workers):
    """The error names the operator, worker, key, record and user traceback."""
    before = children_pids()
    env = LocalEnvironment("fails", workers=workers)
    (
        env.from_collection(RECORDS)
        .keyby(lambda r: r["user"])
        .map(Boom, 1234, name="booming")
        .sink(driver_sink())
    )

    with pytest.raises(UserFunctionError) as caught:
        env.submit(autostop=True)

    err = caught.value
    bad = RECORDS[1234]
    assert isinstance(err, JobFailed)
    assert err.operator == "booming"
    assert err.worker in range(workers)
    assert err.key == bad["user"]
    assert "'i': 1234" in err.record
    assert len(err.record) <= 200
    message = str(err)
    assert "booming" in message
    assert f"worker {err.worker}" in message
    assert repr(bad["user"]) in message
    assert "KeyError" in message
    assert "no such thing in record 1234" in message
    # The user's traceback, from the worker, is part of the message.
    assert "explode_here" in message
    assert "Traceback" in message
    assert "error_policy='skip'" in message
    assert not wait_gone(children_pids() - before)


@pytest.mark.parametrize("workers", WORKERS)
def test_long_records_are_shortened_in_the_error(workers):
    """A huge record appears as a short repr, not in full."""
    records = [{"i": 0, "blob": "y" * 100_000}]
    env = LocalEnvironment("long-record", workers=workers)
    env.from_collection(records).map(lambda r: 1 / 0).sink(driver_sink())

    with pytest.raises(UserFunctionError) as caught:
        env.submit(autostop=True)

    assert caught.value.key is None
    assert "ZeroDivisionError" in str(caught.value)
    assert len(caught.value.record) <= 200
    assert len(str(caught.value)) < 5000


class BadSink(SinkFunction):
    def execute(self, record):
        if record["i"] == 77:
            raise ValueError("the sink refuses 77")


@pytest.mark.parametrize("workers", WORKERS)
def test_error_in_driver_sink_names_the_driver(workers):
    """An error in the driver's sink says it happened in the driver."""
    env = LocalEnvironment("sink-fails", workers=workers)
    env.from_collection(RECORDS).keyby(lambda r: r["user"]).sink(BadSink)

    with pytest.raises(UserFunctionError) as caught:
        env.submit(autostop=True)

    assert caught.value.operator == "BadSink"
    assert caught.value.key == RECORDS[77]["user"]
    assert "the driver" in str(caught.value)
    assert "the sink refuses 77" in str(caught.value)


class BadSource(SourceFunction):
    def __init__(self):
        super().__init__()
        self.n = 0

    def execute(self):
        self.n += 1
        if self.n == 50:
            raise OSError("the feed went away")
        return self.n


@pytest.mark.parametrize("workers", WORKERS)
def test_error_in_source_names_the_source(workers):
    """A source that raises fails the job naming the source."""
    env = LocalEnvironment("source-fails", workers=workers)
    env.from_source(BadSource).map(lambda n: n).sink(driver_sink())

    with pytest.raises(UserFunctionError) as caught:
        env.submit(autostop=True)

    assert caught.value.operator == "BadSource"
    assert "the feed went away" in str(caught.value)


class OpenFails(MapFunction):
    def open(self):
        raise RuntimeError("cannot connect")

    def execute(self, record):
        return record


@pytest.mark.parametrize("workers", WORKERS)
def test_error_in_open_fails_the_job(workers):
    """An open() that raises fails the job, naming the operator."""
    env = LocalEnvironment("open-fails", workers=workers)
    env.from_collection(RECORDS).map(OpenFails).sink(driver_sink())

    with pytest.raises(UserFunctionError) as caught:
        env.submit(autostop=True)

    assert caught.value.operator == "OpenFails"
    assert "cannot connect" in str(caught.value)


@pytest.mark.parametrize("workers", WORKERS)
def test_failed_job_leaves_no_worker_processes(workers):
    """After a user error every worker process is gone."""
    before = children_pids()
    env = LocalEnvironment("no-leftovers", workers=workers)
    env.from_collection(RECORDS).keyby(lambda r: r["user"]).map(Boom, 10).sink(
        driver_sink()
    )

    with pytest.raises(UserFunctionError):
        env.submit(autostop=True)

    assert not wait_gone(children_pids() - before)


# --- skip policy -----------------------------------------------------------


class SkipSome(MapFunction):
    def execute(self, record):
        if record["i"] % 100 == 7:
            raise ValueError(f"odd record {record['i']}")
        return record


@pytest.mark.parametrize("workers", WORKERS)
def test_skip_policy_completes_and_writes_dead_letters(workers, tmp_path):
    """Under skip the job ends; each skipped record is one JSON line."""
    dead = tmp_path / "dead.jsonl"
    sink = driver_sink()
    env = LocalEnvironment(
        "skips", workers=workers, error_policy="skip", dead_letter_path=str(dead)
    )
    (
        env.from_collection(RECORDS)
        .keyby(lambda r: r["user"])
        .map(SkipSome, name="skipper")
        .sink(sink)
    )
    result = env.submit(autostop=True)

    bad = [r for r in RECORDS if r["i"] % 100 == 7]
    assert sink.records == [r for r in RECORDS if r["i"] % 100 != 7]
    assert result.skipped == len(bad) == 30
    assert result.operators["skipper"]["skipped"] == len(bad)
    assert result.dead_letter_path == str(dead)
    letters = [json.loads(line) for line in dead.read_text().splitlines()]
    assert len(letters) == len(bad)
    by_i = {}
    for letter in letters:
        assert letter["operator"] == "skipper"
        assert "ValueError" in letter["error"]
        by_i[int(letter["error"].rsplit(" ", 1)[1])] = letter
    assert sorted(by_i) == [r["i"] for r in bad]
    for record in bad:
        letter = by_i[record["i"]]
        assert record["user"] in letter["key"]
        assert f"'i': {record['i']}" in letter["record"]


@pytest.mark.parametrize("workers", WORKERS)
def test_skip_policy_in_driver_sink_and_keyby(workers, tmp_path):
    """Skips happen in the driver sink and in a keyby too, and are counted."""
    dead = tmp_path / "dead.jsonl"
    env = LocalEnvironment(
        "skips-2", workers=workers, error_policy="skip", dead_letter_path=str(dead)
    )
    (
        env.from_collection(RECORDS[:500])
        .map(lambda r: r)
        .keyby(lambda r: r["user"] if r["i"] % 50 else None, name="picky_key")
        .sink(BadSink, name="bad_sink")
    )
    result = env.submit(autostop=True)

    assert result.operators["picky_key"]["skipped"] == 10
    assert result.operators["bad_sink"]["skipped"] == 1
    assert result.skipped == 11
    letters = [json.loads(line) for line in dead.read_text().splitlines()]
    assert sorted(letter["operator"] for letter in letters) == (
        ["bad_sink"] + ["picky_key"] * 10
    )


class AlwaysFails(SinkFunction):
    def execute(self, record):
        raise ValueError("refused")


@pytest.mark.parametrize("workers", WORKERS)
def test_every_driver_sink_skip_reaches_result_and_dead_letters(workers, tmp_path):
    """Skips in the driver's sink are all counted, even in the last tick."""
    # The loss this guards against depends on when the stream's end
    # arrives, so one run proves little; twelve short runs catch it.
    for attempt in range(12):
        dead = tmp_path / f"dead-{attempt}.jsonl"
        env = LocalEnvironment(
            "driver-skips",
            workers=workers,
            error_policy="skip",
            dead_letter_path=str(dead),
        )
        env.from_collection(range(100)).keyby(lambda n: n % 7).sink(AlwaysFails)
        result = env.submit(autostop=True)

        assert result.operators["AlwaysFails"]["skipped"] == 100
        assert result.skipped == 100, f"run {attempt}"
        assert len(dead.read_text().splitlines()) == 100


@pytest.mark.parametrize("workers", WORKERS)
def test_stopsignal_after_errors_still_closes_cleanly(workers, tmp_path):
    """A job with skipped records ends with its sink closed."""

    class Numbers(SourceFunction):
        def __init__(self):
            super().__init__()
            self.n = 0

        def execute(self):
            self.n += 1
            return StopSignal("done") if self.n > 200 else self.n

    class Closing(SinkFunction):
        closed = False

        def execute(self, n):
            pass

        def close(self):
            type(self).closed = True

    env = LocalEnvironment(
        "skip-close",
        workers=workers,
        error_policy="skip",
        dead_letter_path=str(tmp_path / "dead.jsonl"),
    )
    env.from_source(Numbers).map(lambda n: 1 // (n % 10)).sink(Closing)
    result = env.submit(autostop=True)

    assert result.skipped == 20
    assert Closing.closed
