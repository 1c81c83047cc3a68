"""submit() in both modes, close(), and the JobResult it returns."""

from __future__ import annotations

import json
import os
import threading
import time

import pytest
from helpers import WORKERS, driver_sink, run_python, write_script

from sage_mp import (
    JobResult,
    LocalEnvironment,
    PipelineError,
    SourceFunction,
    StopSignal,
)


class Endless(SourceFunction):
    """Counts up until the test's event is set (or a safety minute ends)."""

    def __init__(self):
        super().__init__()
        self.n = 0
        self.deadline = time.monotonic() + 60

    def execute(self):
        if time.monotonic() > self.deadline:
            return StopSignal("safety deadline")
        self.n += 1
        return {"n": self.n, "user": f"u{self.n % 13}"}


class Gate(SourceFunction):
    """Gives records only after the test opens the gate."""

    gate = threading.Event()

    def __init__(self, count):
        super().__init__()
        self.left = count

    def execute(self):
        if not self.gate.is_set():
            return None
        if not self.left:
            return StopSignal("done")
        self.left -= 1
        return self.left


def wait_for(predicate, timeout=60.0):
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.01)
    return predicate()


@pytest.mark.parametrize("workers", WORKERS)
def test_submit_returns_at_once_and_close_stops_an_infinite_source(workers):
    """submit() returns while an endless job runs; close() ends it cleanly."""
    sink = driver_sink()
    env = LocalEnvironment("endless", workers=workers)
    env.from_source(Endless).keyby(lambda r: r["user"]).map(lambda r: r["n"]).sink(sink)

    assert env.submit() is None
    assert env.is_running()
    assert wait_for(lambda: len(sink.records) >= 2000)
    result = env.close()

    assert not env.is_running()
    assert isinstance(result, JobResult)
    assert result.stopped
    # Every record read before the stop went all the way through.
    assert result.records == len(sink.records)
    assert sink.records == list(range(1, len(sink.records) + 1))
    assert result.records < 10_000_000  # stopped long before the safety end


@pytest.mark.parametrize("workers", WORKERS)
def test_submit_without_autostop_then_wait(workers):
    """A background job whose source ends is joined by wait()."""
    Gate.gate.clear()
    sink = driver_sink()
    env = LocalEnvironment("gate", workers=workers)
    env.from_source(Gate, 500).map(lambda n: n * 2).sink(sink)

    env.submit()
    assert env.is_running()
    assert sink.records == []  # the gate holds the source back
    Gate.gate.set()
    result = env.wait()

    assert result.records == 500
    assert sink.records == [2 * n for n in reversed(range(500))]


ENDING_SCRIPT = """
import json, sys
from sage_mp import LocalEnvironment, SinkFunction, StatefulFunction

OUT = sys.argv[1]

class Count(StatefulFunction):
    def __init__(self):
        super().__init__()
        self.counts = {}

    def execute(self, record):
        key = self.ctx.get_key()
        self.counts[key] = self.counts.get(key, 0) + 1
        return [key, self.counts[key]]

class ToFile(SinkFunction):
    def open(self):
        self.rows = []

    def execute(self, row):
        self.rows.append(row)

    def close(self):
        with open(OUT, "w") as file:
            json.dump(self.rows, file)

env = LocalEnvironment("ends", workers=WORKERS)
(env.from_collection([f"k{i % 7}" for i in range(20000)])
    .keyby(lambda k: k)
    .map(Count)
    .sink(ToFile))
env.submit()
# The script ends here, while the job still runs.
"""


@pytest.mark.parametrize("workers", WORKERS)
def test_script_that_ends_after_submit_still_finishes_its_job(workers, tmp_path):
    """A script calling submit() and then ending still runs the job fully."""
    script = write_script(
        tmp_path / "job.py", ENDING_SCRIPT.replace("WORKERS", str(workers))
    )
    out = tmp_path / "out.json"

    done = run_python([str(script), str(out)], cwd=tmp_path)

    assert done.returncode == 0, done.stderr
    rows = json.loads(out.read_text())
    assert len(rows) == 20000
    assert sorted(map(tuple, rows))[-1] == ("k6", 20000 // 7)
    per_key = {}
    for key, count in rows:
        assert count == per_key.get(key, 0) + 1
        per_key[key] = count


@pytest.mark.parametrize("workers", [1, 2, 4])
def test_autostop_returns_a_job_result(workers):
    """submit(autostop=True) returns counts per operator, time and workers."""
    sink = driver_sink()
    env = LocalEnvironment("result", workers=workers)
    (
        env.from_collection(range(3000), name="numbers")
        .map(lambda n: n + 1, name="plus_one")
        .filter(lambda n: n % 3 == 0, name="thirds")
        .keyby(lambda n: n % 5, name="by_five")
        .flatmap(lambda n: [n, n], name="twice")
        .sink(sink, name="out")
    )
    result = env.submit(autostop=True)

    assert isinstance(result, JobResult)
    assert result.workers == workers
    assert result.records == 3000
    assert result.wall_time > 0
    assert not result.stopped
    assert result.skipped == 0
    assert result.operators == {
        "numbers": {"in": 3000, "out": 3000, "skipped": 0},
        "plus_one": {"in": 3000, "out": 3000, "skipped": 0},
        "thirds": {"in": 3000, "out": 1000, "skipped": 0},
        "by_five": {"in": 1000, "out": 1000, "skipped": 0},
        "twice": {"in": 1000, "out": 2000, "skipped": 0},
        "out": {"in": 2000, "out": 0, "skipped": 0},
    }
    assert len(result.worker_stats) == workers
    assert "3000 records" in str(result)
    assert env.result is result


@pytest.mark.parametrize("workers", WORKERS)
def test_job_result_counts_a_keyby_right_after_the_source(workers):
    """The result lists a keyby that directly follows the source."""
    env = LocalEnvironment("result-head", workers=workers)
    (
        env.from_collection(range(100), name="numbers")
        .keyby(lambda n: n % 5, name="by_five")
        .map(lambda n: n, name="same")
        .sink(driver_sink(), name="out")
    )
    result = env.submit(autostop=True)

    assert result.operators["by_five"] == {"in": 100, "out": 100, "skipped": 0}
    assert result.operators["out"]["in"] == 100


BAD_OPTIONS = [
    ({"workers": 0}, "workers must be a whole number >= 1, got 0"),
    ({"workers": True}, "workers must be a whole number >= 1, got True"),
    ({"workers": 2.0}, "workers must be a whole number >= 1, got 2.0"),
    ({"config": {"workers": -1}}, "workers must be a whole number >= 1, got -1"),
    ({"batch_size": 0}, "batch_size must be a whole number >= 1, got 0"),
    ({"batch_size": 2.5}, "batch_size must be a whole number >= 1, got 2.5"),
    ({"batch_size": "10"}, "batch_size must be a whole number >= 1, got '10'"),
    ({"linger": -0.1}, "linger must be a number >= 0, got -0.1"),
    ({"linger": "soon"}, "linger must be a number >= 0, got 'soon'"),
    ({"checkpoint_interval": 0}, "checkpoint_interval must be a number of seconds > 0"),
    ({"checkpoint_interval": float("nan")}, "seconds > 0, got nan"),
    ({"checkpoint_interval": True}, "seconds > 0, got True"),
    ({"max_restarts": -1}, "max_restarts must be a whole number >= 0, got -1"),
    ({"keep_checkpoints": 0}, "keep_checkpoints must be a whole number >= 1, got 0"),
    ({"max_checkpoint_failures": 1.5}, "must be a whole number >= 0, got 1.5"),
]


@pytest.mark.parametrize(("options", "message"), BAD_OPTIONS)
def test_a_bad_option_stops_submit_before_any_record_moves(options, message, tmp_path):
    """Each bad option is named with what arrived, before anything runs.

    ``workers=0`` used to run on every usable core, as if left out.
    """
    sink = driver_sink()
    env = LocalEnvironment("bad-option", checkpoint_dir=str(tmp_path), **options)
    env.from_collection(range(10)).keyby(lambda n: n % 3).sink(sink)

    with pytest.raises(PipelineError, match="environment 'bad-option'") as raised:
        env.submit(autostop=True)

    assert message in str(raised.value)
    assert sink.records == []
    assert not list(tmp_path.iterdir())  # Not even a checkpoint store.


@pytest.mark.parametrize("name", ["", "  ", None, 5])
def test_a_job_name_that_is_no_name_is_refused(name):
    """The name labels logs, errors and files: it must be a real string."""
    with pytest.raises(PipelineError, match="expected a non-empty string"):
        LocalEnvironment(name)


@pytest.mark.parametrize(("name", "file"), [("a/b", "a_b"), ("..", "job")])
def test_the_default_dead_letter_file_is_named_fit_for_a_file(name, file, tmp_path):
    """A job named "a/b" used to fail at its first dead letter, in the
    middle of the job, looking for a folder "a"."""
    env = LocalEnvironment(name, workers=1, error_policy="skip")
    env.from_collection(range(10)).map(lambda n: 1 / (n - 3)).sink(driver_sink())
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        result = env.submit(autostop=True)
    finally:
        os.chdir(cwd)
    assert result.dead_letter_path == f"{file}.dead-letters.jsonl"
    assert len((tmp_path / result.dead_letter_path).read_text().splitlines()) == 1


@pytest.mark.parametrize("where", ["missing/dead.jsonl", "."])
def test_a_dead_letter_file_that_cannot_be_made_is_refused_at_submit(where, tmp_path):
    """It is made at the first skipped record; a bad path used to stop
    the job there with a bare OSError."""
    sink = driver_sink()
    env = LocalEnvironment(
        "bad-dead-letters",
        workers=1,
        error_policy="skip",
        dead_letter_path=str(tmp_path / where),
    )
    env.from_collection(range(10)).map(lambda n: 1 / (n - 3)).sink(sink)

    with pytest.raises(PipelineError, match="the dead-letter file") as raised:
        env.submit(autostop=True)

    assert "pass dead_letter_path= a writable file path" in str(raised.value)
    assert sink.records == []
