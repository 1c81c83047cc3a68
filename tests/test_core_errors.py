"""User errors: the default fail policy and the skip policy.

Under ``fail`` the job stops with a :class:`UserFunctionError` that says
where and on what the user's function raised, and leaves no worker
behind. Under ``skip`` the job goes on, counts the skipped records and
writes each to a dead-letter file.
"""

from __future__ import annotations

import json
import re
import threading

import pytest
from helpers import WORKERS, children_pids, driver_sink, wait_gone

from sage_mp import (
    JobFailed,
    LocalEnvironment,
    MapFunction,
    PipelineError,
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
    message = str(caught.value)
    assert "raised RuntimeError: cannot connect in worker " in message
    assert " during open()\n" in message
    # No record is at fault, so skipping records is no advice here.
    assert "error_policy" not in message
    assert "sage_mp/" not in message  # The user's frames only.
    assert "in open\n" in message


class NoConfig(SourceFunction):
    def __init__(self):
        super().__init__()
        raise FileNotFoundError("settings.toml")

    def execute(self):
        return StopSignal("never")


def test_a_source_that_cannot_be_built_names_itself():
    """Its __init__ runs in the driver; it used to escape as a bare
    FileNotFoundError with the engine's frames."""
    env = LocalEnvironment("source-init", workers=1)
    env.from_source(NoConfig).sink(driver_sink())

    with pytest.raises(UserFunctionError) as caught:
        env.submit(autostop=True)

    message = str(caught.value)
    assert caught.value.operator == "NoConfig"
    assert "raised FileNotFoundError: settings.toml in the driver during init()" in (
        message
    )
    assert "sage_mp/" not in message
    assert "in __init__\n" in message


class Needs(MapFunction):
    def __init__(self, loops, *, scale=1):
        super().__init__()
        self.loops = loops * scale

    def execute(self, record):
        return record


@pytest.mark.parametrize(
    ("build", "says"),
    [
        (
            lambda s: s.map(Needs),
            "b.map(): Needs(loops, *, scale=1) cannot be built from the arguments "
            "given (missing a required argument: 'loops'); pass them after the "
            "class, as in .map(Needs, loops=...)",
        ),
        (lambda s: s.map(Needs, 1, 2), "too many positional arguments"),
        (lambda s: s.keyby(Needs, 1, size=3), "as in .keyby(Needs, loops=...)"),
    ],
)
def test_arguments_that_cannot_build_a_function_are_refused_at_once(build, says):
    """Each worker builds its own instance; a mismatch used to fail
    there, once per worker, with advice to skip records."""
    env = LocalEnvironment("b", workers=1)
    stream = env.from_collection(range(3))
    with pytest.raises(PipelineError) as caught:
        build(stream)
    assert says in str(caught.value)


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


def generator_for(i):
    """A record neither pickle nor dill can pickle."""
    return {"i": i, "rows": (n for n in range(i))}


class Locks(SourceFunction):
    """Records that pickle cannot pickle but dill can (a lock each)."""

    def __init__(self, count, bad_at=None):
        super().__init__()
        self.left = count
        self.bad_at = bad_at

    def execute(self):
        if not self.left:
            return StopSignal("done")
        self.left -= 1
        if self.left == self.bad_at:
            return generator_for(self.left)
        return {"i": self.left, "lock": threading.Lock()}


class Count(SinkFunction):
    def __init__(self):
        super().__init__()
        self.locks = 0

    def execute(self, record):
        self.locks += isinstance(record["lock"], type(threading.Lock()))


@pytest.mark.parametrize("workers", WORKERS)
def test_source_records_that_only_dill_can_pickle_reach_the_workers(workers):
    """They used to stop the job with pickle's TypeError and a traceback."""
    env = LocalEnvironment("dill-records", workers=workers)
    env.from_source(Locks, 200).keyby(lambda r: r["i"] % 7).sink(
        Count, parallelism=2, name="count"
    )
    result = env.submit(autostop=True)
    assert result.operators["count"]["in"] == 200


@pytest.mark.parametrize("workers", WORKERS)
def test_a_record_no_pickler_can_take_names_its_maker(workers):
    """From a source, and from a map whose output goes to the driver."""
    env = LocalEnvironment("unpicklable-source", workers=workers)
    env.from_source(Locks, 50, bad_at=20, name="locks").keyby(
        lambda r: r["i"] % 7
    ).sink(Count, parallelism=2)
    with pytest.raises(UserFunctionError) as raised:
        env.submit(autostop=True)
    message = str(raised.value)
    assert raised.value.operator == "locks"
    assert "returned {'i': 20, 'rows': <generator object" in message
    assert "} in the driver, and it cannot leave its process" in message
    assert "error_policy" not in message  # A source's faults always stop the job.
    assert "cannot leave its process: TypeError: cannot pickle 'generator'" in message
    assert "must be picklable (by pickle or dill)" in message

    env = LocalEnvironment("unpicklable-map", workers=workers)
    (
        env.from_collection(range(40))
        .keyby(lambda i: i % 3)
        .map(generator_for, name="rows")
        .filter(lambda r: True)
        .sink(driver_sink())
    )
    with pytest.raises(UserFunctionError) as raised:
        env.submit(autostop=True)
    assert raised.value.operator == "rows"  # The map, not the filter after it.
    message = str(raised.value)
    assert re.search(
        r" on key \d for record \d+, and it cannot leave its process", message
    )
    assert "cannot pickle 'generator'" in message
    assert "error_policy='skip'" in message


@pytest.mark.parametrize("workers", WORKERS)
def test_skipping_a_record_no_pickler_can_take_keeps_the_rest_whole(workers, tmp_path):
    """The batch it was in used to keep a stale mark for it, and the
    driver then failed with "unhashable type: 'slice'" on the next
    record."""
    sink = driver_sink()
    dead = tmp_path / "dead.jsonl"
    env = LocalEnvironment(
        "unpicklable-skip",
        workers=workers,
        error_policy="skip",
        dead_letter_path=str(dead),
    )
    (
        env.from_collection(range(40))
        .keyby(lambda i: i % 3)
        .map(lambda i: generator_for(i) if i % 10 == 3 else {"i": i}, name="rows")
        .sink(sink)
    )
    result = env.submit(autostop=True)

    assert sorted(r["i"] for r in sink.records) == [i for i in range(40) if i % 10 != 3]
    letters = [json.loads(line) for line in dead.read_text().splitlines()]
    assert sorted(letter["record"] for letter in letters) == ["13", "23", "3", "33"]
    assert {letter["operator"] for letter in letters} == {"rows"}
    assert result.operators["rows"]["skipped"] == 4
