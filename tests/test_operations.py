"""What a person sees while and after running a job from the terminal.

``python -m sage_mp run`` draws a live progress line on a terminal (and
nothing of the kind elsewhere), prints an end-of-run report, writes a
metrics file, forwards worker log lines whole and tagged, and refuses
bad command lines before the job script runs. Terminal runs use a
pseudo-terminal; jobs that must still be running when the test looks
wait on a file the test creates, so no test depends on timing.
"""

from __future__ import annotations

import fcntl
import io
import json
import logging
import os
import re
import select
import struct
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers import run_python, write_script

from sage_mp import LocalEnvironment, MapFunction
from sage_mp._logs import _BATCH, _LINGER, WorkerLogForwarder
from sage_mp._progress import LiveLine, render, render_all

# A source that stops halfway until a gate file exists, so that the job
# is certainly running while the test watches it.
GATED_SOURCE = """
import os, sys, time
from sage_mp import LocalEnvironment, MapFunction, SourceFunction, StopSignal

class Gated(SourceFunction):
    def __init__(self, n, gate):
        super().__init__()
        self.n, self.gate, self.i = n, gate, 0
        self.total = n

    def execute(self):
        if self.i >= self.n:
            return StopSignal("done")
        if self.i >= self.n // 2 and not self._open():
            time.sleep(0.01)
            return None
        self.i += 1
        return self.i

    def _open(self):
        return os.path.exists(self.gate) and os.path.getsize(self.gate) > 0
"""

# 10,000 records; "evens" keeps 5,000; "fragile" raises on 10 of them.
KNOWN_COUNTS_JOB = (
    GATED_SOURCE
    + """
class Fragile(MapFunction):
    def execute(self, n):
        if n % 1000 == 0:
            raise ValueError(f"no thousands: {n}")
        return n

env = LocalEnvironment("known", workers=2, error_policy="skip",
                       dead_letter_path=sys.argv[2])
(env.from_source(Gated, 10_000, sys.argv[1], name="numbers")
    .filter(lambda n: n % 2 == 0, name="evens")
    .keyby(lambda n: n % 10, name="by_digit")
    .map(Fragile, name="fragile")
    .sink(lambda n: None, name="drop"))
env.submit(autostop=True)
"""
)


# --- helpers ------------------------------------------------------------


def run_in_terminal(
    args: list[str],
    cwd: Path,
    when: Callable[[str], bool] | None = None,
    then: Callable[[], None] | None = None,
    timeout: float = 60.0,
) -> tuple[int, str]:
    """Run ``python ARGS`` on a pseudo-terminal; return (exit code, output).

    Once the output so far satisfies ``when``, ``then()`` is called
    (once), which lets a test release a gated job. The terminal is 200
    columns wide, so the live line is not cut short.
    """
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 200, 0, 0))
    proc = subprocess.Popen(
        [sys.executable, *args],
        cwd=cwd,
        stdin=slave,
        stdout=slave,
        stderr=slave,
        close_fds=True,
    )
    os.close(slave)
    chunks: list[bytes] = []
    fired = when is None
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.05)
            if ready:
                try:
                    data = os.read(master, 65536)
                except OSError:  # EIO: the child closed the terminal
                    break
                if not data:
                    break
                chunks.append(data)
            if not fired and when(b"".join(chunks).decode(errors="replace")):
                fired = True
                if then is not None:
                    then()
        proc.wait(timeout=30)
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, b"".join(chunks).decode(errors="replace")


def live_lines(output: str, job: str) -> list[str]:
    """Texts drawn in place: after a carriage return not ending a line."""
    return [
        part.split("\x1b[K")[0]
        for part in re.split(r"\r(?!\n)", output)[1:]
        if part.startswith(job + " ")
    ]


def open_gate(path: Path) -> Callable[[], None]:
    return lambda: path.write_text("go")


def report_row(stderr: str, name: str) -> list[str]:
    """The words of the report's table row for operator or process ``name``."""
    for line in stderr.splitlines():
        words = line.split()
        if words and words[0] == name:
            return words
    raise AssertionError(f"no report row for {name!r} in:\n{stderr}")


# --- the live line ------------------------------------------------------


def test_live_line_is_redrawn_in_place_on_a_terminal(tmp_path):
    """On a TTY the progress line is redrawn with \\r, then the report follows."""
    gate = tmp_path / "gate"
    script = write_script(tmp_path / "job.py", KNOWN_COUNTS_JOB)
    args = ["-m", "sage_mp", "run", str(script), str(gate), str(tmp_path / "d")]

    code, out = run_in_terminal(
        args,
        tmp_path,
        when=lambda text: bool(live_lines(text, "known")),
        then=open_gate(gate),
    )

    assert code == 0, out
    drawn = live_lines(out, "known")
    assert len(drawn) >= 2, out
    assert "\x1b[K" in out
    first, last = drawn[0], drawn[-1]
    # The source says how many records it has: a bar with an ETA.
    assert re.search(r"\[[#.]{20}\] +\d+% ETA", first), first
    assert "100% ETA" in last and "in 10,000 out 10,000" in last, last
    assert "rec/s" in first and "window" in first
    assert re.search(r"w0 (-|\d+%) [\d.]+[KMG]?", first), first
    # The final state stays on its own line; the report comes after it.
    assert out.index(last) < out.index("job 'known' finished")
    assert "\x1b" not in out[out.index("job 'known' finished") :]


TWO_JOBS = (
    GATED_SOURCE
    + """
first = LocalEnvironment("first", workers=2)
first.from_source(Gated, 4_000, sys.argv[1]).keyby(lambda n: n % 3).sink(
    lambda n: None, parallelism=2
)
second = LocalEnvironment("second", workers=2)
second.from_source(Gated, 4_000, sys.argv[1]).keyby(lambda n: n % 5).sink(
    lambda n: None, parallelism=2
)
first.submit()
second.submit()
"""
)


def test_live_line_shows_every_running_job(tmp_path):
    """Two jobs running at once share the live line, each named."""
    gate = tmp_path / "gate"
    script = write_script(tmp_path / "job.py", TWO_JOBS)

    def both(text: str) -> bool:
        return any("second" in line for line in live_lines(text, "first"))

    code, out = run_in_terminal(
        ["-m", "sage_mp", "run", str(script), str(gate)],
        tmp_path,
        when=both,
        then=open_gate(gate),
    )

    assert code == 0, out
    shared = [line for line in live_lines(out, "first") if " || second " in line]
    assert shared, out
    assert re.match(r"first +\d+% [\d,]+ rec/s \|\| second +\d+% ", shared[0])


def test_without_a_terminal_there_is_no_live_line(tmp_path):
    """With stderr not a TTY: no \\r, no escape codes, but the full report."""
    gate = tmp_path / "gate"
    gate.write_text("go")
    script = write_script(tmp_path / "job.py", KNOWN_COUNTS_JOB)

    done = run_python(
        ["-m", "sage_mp", "run", str(script), str(gate), str(tmp_path / "d")],
        cwd=tmp_path,
    )

    assert done.returncode == 0, done.stderr
    assert "\r" not in done.stderr and "\x1b" not in done.stderr
    assert "job 'known' finished: 10,000 records" in done.stderr
    evens = report_row(done.stderr, "evens")
    assert evens[:4] == ["evens", "filter", "10,000", "5,000"]


def test_no_progress_flag_turns_the_line_off_on_a_terminal(tmp_path):
    """--no-progress on a TTY: no redraws, no escape codes, report still printed."""
    gate = tmp_path / "gate"
    gate.write_text("go")
    script = write_script(tmp_path / "job.py", KNOWN_COUNTS_JOB)
    args = ["-m", "sage_mp", "run", "--no-progress", str(script), str(gate)]

    code, out = run_in_terminal([*args, str(tmp_path / "d")], tmp_path)

    assert code == 0, out
    assert not re.search(r"\r(?!\n)", out)
    assert "\x1b" not in out
    assert "job 'known' finished" in out


def test_log_lines_step_around_the_live_line():
    """A log line erases the live line first and redraws it after itself."""
    stream = io.StringIO()
    live = LiveLine(stream)
    live.show("job [....] 10%")

    with live.paused():
        stream.write("a log line\n")
    live.keep()

    assert stream.getvalue().endswith(
        "\r\x1b[K" + "a log line\n" + "\rjob [....] 10%\x1b[K" + "\n"
    )


def test_render_shows_every_part_of_a_snapshot():
    """The line has the bar, ETA, counts, rate, window, checkpoint and workers."""
    snap = {
        "job": "j",
        "total": 1000,
        "progress": 0.5,
        "eta": 65.0,
        "elapsed": 3.0,
        "records_in": 600,
        "records_out": 500,
        "rate": 250.0,
        "backpressure": 0.75,
        "checkpointing": True,
        "last_checkpoint": {"id": 7, "age": 2.2},
        "restarts": 1,
        "skipped": 3,
        "workers": [
            {"worker": 0, "cpu_percent": 97.0, "rss": 40 * 2**20},
            {"worker": 1, "cpu_percent": None, "rss": 2**20},
        ],
    }

    line = render(snap)

    assert line.startswith("j [##########..........]  50% ETA 1:05 | in 600 out 500")
    for part in (
        "250 rec/s",
        "window 75%",
        "ckpt 7 2s ago",
        "restarts 1",
        "skipped 3",
        "w0 97% 40.0M",
        "w1 - 1.0M",
    ):
        assert part in line, (part, line)

    # Several jobs at once share the line; one alone gets it all.
    other = {**snap, "job": "k", "total": 0, "elapsed": 75.0, "rate": 1234.0}
    assert render_all([snap]) == line
    assert render_all([snap, other]) == "j  50% 250 rec/s || k 1:15 1,234 rec/s"


# --- metrics and the report ---------------------------------------------


def test_metrics_file_and_report_match_known_counts(tmp_path):
    """The metrics lines have the documented fields; the numbers are right."""
    metrics = tmp_path / "metrics.jsonl"
    dead = tmp_path / "dead.jsonl"
    script = write_script(tmp_path / "job.py", KNOWN_COUNTS_JOB)
    # The source waits for the first snapshot: at least one periodic line.
    args = [
        "-m",
        "sage_mp",
        "run",
        str(script),
        "--metrics",
        str(metrics),
        "--metrics-interval",
        "0.2",
        str(metrics),
        str(dead),
    ]

    done = run_python(args, cwd=tmp_path)

    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in metrics.read_text().splitlines()]
    fields = {
        "time",
        "job",
        "state",
        "final",
        "elapsed",
        "records_in",
        "records_out",
        "rate",
        "total",
        "progress",
        "eta",
        "ticks_in_flight",
        "window",
        "backpressure",
        "workers",
        "checkpointing",
        "checkpoints",
        "last_checkpoint",
        "restarts",
        "skipped",
    }
    assert len(lines) >= 2
    for line in lines:
        assert fields <= set(line), fields - set(line)
        assert line["job"] == "known" and line["total"] == 10_000
        assert 0 <= line["records_out"] <= line["records_in"] <= 10_000
        assert line["ticks_in_flight"] <= line["window"]
    assert [line["final"] for line in lines] == [False] * (len(lines) - 1) + [True]
    running = lines[0]
    assert running["state"] == "running"
    assert [w["worker"] for w in running["workers"]] == [0, 1]
    assert all(w["pid"] > 0 and w["rss"] > 0 for w in running["workers"])
    final = lines[-1]
    assert final["state"] == "finished"
    assert final["records_in"] == final["records_out"] == 10_000
    assert final["progress"] == 1.0 and final["skipped"] == 10
    result = final["result"]
    assert result["records"] == 10_000 and result["records_out"] == 4_990
    assert result["skipped"] == 10
    assert result["dead_letter_path"] == str(dead)
    counts = {
        name: (op["in"], op["out"], op["skipped"])
        for name, op in result["operators"].items()
    }
    assert counts == {
        "numbers": (10_000, 10_000, 0),
        "evens": (10_000, 5_000, 0),
        "by_digit": (5_000, 5_000, 0),
        "fragile": (5_000, 4_990, 10),
        "drop": (4_990, 0, 0),
    }
    assert result["operator_busy"]["numbers"] is None
    busy = result["operator_busy"]
    assert all(busy[name] >= 0 for name in counts if name != "numbers")
    assert [w["worker"] for w in result["worker_stats"]] == [0, 1]

    err = done.stderr
    source = report_row(err, "numbers")
    assert source[:5] == ["numbers", "source", "10,000", "10,000", "0"]
    assert report_row(err, "fragile")[:5] == ["fragile", "map", "5,000", "4,990", "10"]
    assert report_row(err, "drop")[:5] == ["drop", "sink", "4,990", "0", "0"]
    w0, w1 = report_row(err, "w0"), report_row(err, "w1")
    worker_records = [w["records"] for w in result["worker_stats"]]
    assert [int(w0[1].replace(",", "")), int(w1[1].replace(",", ""))] == worker_records
    assert f"skipped: 10 records; dead letters in {dead}" in err
    assert len(dead.read_text().splitlines()) == 10


def test_submit_returns_the_report_figures(tmp_path):
    """submit(autostop=True) carries busy time, kinds, checkpoints and a report."""

    class Double(MapFunction):
        def execute(self, n):
            return n * 2

    env = LocalEnvironment("figures", workers=2, checkpoint_dir=str(tmp_path / "ck"))
    (
        env.from_collection(range(5000), name="numbers")
        .map(Double, name="double")
        .filter(lambda n: n % 4 == 0, name="quarter")
        .keyby(lambda n: n % 3, name="by_three")
        .sink(lambda n: None, name="drop")
    )
    result = env.submit(autostop=True)

    assert result.operator_kinds == {
        "numbers": "source",
        "double": "map",
        "quarter": "filter",
        "by_three": "keyby",
        "drop": "sink",
    }
    assert list(result.operators) == list(result.operator_kinds)
    assert result.operator_busy["numbers"] is None
    assert all(result.operator_busy[n] >= 0 for n in ("double", "quarter", "drop"))
    assert result.records_out == 2500
    stats = result.checkpoint_stats
    assert stats["count"] == len(result.checkpoints) >= 1
    assert stats["duration_max"] >= stats["duration_median"] > 0
    assert stats["bytes_max"] >= stats["bytes_median"] > 0
    assert result.driver_stats["cpu"] > 0 and result.driver_stats["peak_rss"] > 0
    for worker in result.worker_stats:
        assert worker["records"] > 0 and worker["peak_rss"] > 0
    assert json.loads(json.dumps(result.to_dict()))["records_out"] == 2500
    text = result.report()
    assert "job 'figures' finished: 5,000 records" in text
    assert f"checkpoints: {stats['count']} committed" in text
    assert "restarts: 0" in text


def test_busy_time_goes_to_the_operator_that_works(tmp_path):
    """In one stage, a heavy operator gets more busy time than a trivial one."""

    class Heavy(MapFunction):
        def execute(self, n):
            total = 0
            for i in range(3000):
                total += i
            return n + total

    env = LocalEnvironment("busy", workers=1)
    (
        env.from_collection(range(3000))
        .map(lambda n: n, name="light")
        .map(Heavy, name="heavy")
        .sink(lambda n: None, name="drop", parallelism=2)
    )
    result = env.submit(autostop=True)

    busy = result.operator_busy
    assert busy["heavy"] > 2 * busy["light"], busy


def test_operator_sampler_slows_down_after_its_first_samples():
    """The sampler's schedule: FAST_SAMPLES looks at INTERVAL, then slower."""
    from sage_mp._metrics import OperatorSampler

    sampler = OperatorSampler({})
    waits: list[float] = []

    class Halt:
        def wait(self, timeout: float) -> bool:
            waits.append(timeout)
            return len(waits) > 80

    sampler._halt = Halt()  # type: ignore[assignment]
    sampler._run()

    fast = OperatorSampler.FAST_SAMPLES
    assert OperatorSampler.SLOW_INTERVAL > OperatorSampler.INTERVAL
    assert waits[:fast] == [OperatorSampler.INTERVAL] * fast
    assert waits[fast:] == [OperatorSampler.SLOW_INTERVAL] * (len(waits) - fast)


# --- logs ---------------------------------------------------------------

TALKING_JOB = """
import logging, sys
from sage_mp import LocalEnvironment, MapFunction

module_log = logging.getLogger("talk.module")
PAD = "x" * 300

class Talk(MapFunction):
    def execute(self, n):
        if n < 100:
            self.logger.warning("begin %d %s end %d", n, PAD, n)
        elif n < 200:
            module_log.warning("begin %d %s end %d", n, PAD, n)
        return n

env = LocalEnvironment("talk", workers=3)
(env.from_collection(range(3000))
    .keyby(lambda n: n % 97)
    .map(Talk, name="talker")
    .sink(lambda n: None))
env.submit(autostop=True)
"""

LOG_LINE = re.compile(
    r"^\S+ \S+ WARNING (sage_mp\.user\.talker|talk\.module) "
    r"\[talker (w[0-2])\]: begin (\d+) x{300} end (\d+)$"
)


def test_worker_logs_arrive_whole_and_tagged(tmp_path):
    """200 lines logged by 3 workers: each complete, tagged operator+worker."""
    script = write_script(tmp_path / "job.py", TALKING_JOB)
    checkpoints = tmp_path / "ck"

    done = run_python(
        ["-m", "sage_mp", "run", str(script), "--checkpoint-dir", str(checkpoints)],
        cwd=tmp_path,
    )

    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stderr.splitlines() if "begin" in line]
    matches = [LOG_LINE.match(line) for line in lines]
    assert all(matches), [line for line in lines if not LOG_LINE.match(line)][:3]
    numbers = sorted(int(m.group(3)) for m in matches if m)
    assert numbers == list(range(200))
    assert all(m.group(3) == m.group(4) for m in matches if m)
    assert len({m.group(2) for m in matches if m}) > 1
    # With a checkpoint directory the CLI also writes them to a file.
    logged = (checkpoints / "sage_mp.log").read_text().splitlines()
    assert sorted(line for line in logged if "begin" in line) == sorted(lines)


CHATTY_JOB = """
import logging, os, sys, time
from sage_mp import LocalEnvironment, MapFunction

log = logging.getLogger("chatty")

class Chatty(MapFunction):
    def execute(self, n):
        log.info("record %d", n)
        if n == 2500:
            # A warning must reach the terminal while the worker is
            # still busy: the test creates the gate only once it saw it.
            log.warning("halfway")
            while not os.path.exists(sys.argv[1]):
                time.sleep(0.01)
        return n

env = LocalEnvironment("chatty", workers=2)
env.from_collection(range(5000)).keyby(lambda n: n % 7).map(Chatty).sink(
    lambda n: None, parallelism=2
)
env.submit(autostop=True)
"""

INFO_LINE = re.compile(r"INFO chatty \[Chatty (w[01])\]: record (\d+)$")


def test_worker_logs_travel_in_batches_in_order(tmp_path):
    """Per-record INFO lines all arrive, each worker's in order, and a
    WARNING reaches the terminal while its worker is still busy."""
    script = write_script(tmp_path / "job.py", CHATTY_JOB)
    gate = tmp_path / "gate"
    proc = subprocess.Popen(
        [sys.executable, "-m", "sage_mp", "run", "--log-level", "INFO"]
        + ["--no-progress", str(script), str(gate)],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    seen = []
    # Without the warning the job would wait for the gate for ever.
    watchdog = threading.Timer(60, proc.kill)
    watchdog.start()
    try:
        for line in proc.stderr:
            seen.append(line.rstrip("\n"))
            if "WARNING chatty" in line and "halfway" in line:
                gate.write_text("open")
        code = proc.wait(timeout=60)
    finally:
        watchdog.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    assert gate.exists(), "the warning did not arrive while the worker waited"
    assert code == 0, "\n".join(seen[-20:])
    by_worker: dict[str, list[int]] = {}
    for line in seen:
        match = INFO_LINE.search(line)
        if match:
            by_worker.setdefault(match.group(1), []).append(int(match.group(2)))
    assert sorted(n for numbers in by_worker.values() for n in numbers) == list(
        range(5000)
    )
    assert all(numbers == sorted(numbers) for numbers in by_worker.values())


def test_forwarder_batches_until_a_warning_a_full_batch_or_the_linger():
    """The batching rules, on the forwarder that workers install."""
    sent: list[list[str]] = []
    forwarder = WorkerLogForwarder(
        lambda peer, message: sent.append([r["msg"] for r in message[1]]), 0
    )
    logger = logging.getLogger("sage_mp.test.forwarder")
    logger.addHandler(forwarder)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        logger.info("a")
        logger.info("b")
        assert sent == []
        logger.warning("c")  # sends at once, after what waited
        assert sent == [["a", "b", "c"]]
        for n in range(_BATCH):
            logger.info("%d", n)
        assert sent[1] == [str(n) for n in range(_BATCH)]
        logger.info("d")
        time.sleep(_LINGER * 1.5)
        logger.info("e")  # the first one waited long enough
        assert sent[2] == ["d", "e"]
        logger.info("f")
        forwarder.drain()  # the worker loop's turn
        assert sent[3:] == [["f"]]
    finally:
        logger.removeHandler(forwarder)


# --- errors ---------------------------------------------------------------

FAILING_JOB = """
import sys
from sage_mp import LocalEnvironment, MapFunction

class Picky(MapFunction):
    def execute(self, n):
        if n == 1234:
            raise ValueError("1234 is not allowed")
        return n

env = LocalEnvironment("picky", workers=2)
env.from_collection(range(5000)).keyby(lambda n: n % 7).map(Picky).sink(
    lambda n: None
)
env.submit(autostop=sys.argv[1] == "autostop")
"""


@pytest.mark.parametrize("mode", ["autostop", "background"])
def test_user_error_prints_one_block(mode, tmp_path):
    """A user function's error: one block with where, what and the hint; exit 1."""
    script = write_script(tmp_path / "job.py", FAILING_JOB)
    metrics = tmp_path / "metrics.jsonl"

    done = run_python(
        ["-m", "sage_mp", "run", "--metrics", str(metrics), str(script), mode],
        cwd=tmp_path,
    )

    assert done.returncode == 1
    err = done.stderr
    assert err.startswith("sage_mp: operator 'Picky' raised ValueError")
    assert "worker" in err and "on key 2, record 1234" in err
    assert err.count("Traceback (most recent call last)") == 1
    assert err.count("--- hint:") == 1 and "--on-error skip" in err
    assert 'raise ValueError("1234 is not allowed")' in err
    assert "job 'picky'" not in err  # no report after a failure
    final = json.loads(metrics.read_text().splitlines()[-1])
    assert final["final"] and final["state"] == "failed" and "result" not in final


BAD_COMMAND_LINES = {
    "missing script": (["nope.py"], "does not exist"),
    "fresh without dir": (["--fresh", "JOB"], "--fresh deletes checkpoints"),
    "interval without dir": (
        ["--checkpoint-interval", "2", "JOB"],
        "--checkpoint-interval needs --checkpoint-dir",
    ),
    "metrics interval alone": (
        ["--metrics-interval", "2", "JOB"],
        "--metrics-interval needs --metrics",
    ),
    "metrics folder missing": (
        ["--metrics", "no/such/folder/m.jsonl", "JOB"],
        "does not exist; create it",
    ),
    "metrics is a folder": (["--metrics", ".", "JOB"], "is a directory"),
    "foreign checkpoint dir": (
        ["--checkpoint-dir", "foreign", "JOB"],
        "is not a sage_mp checkpoint directory",
    ),
    "bad workers": (["--workers", "0", "JOB"], "--workers"),
}


@pytest.mark.parametrize("case", sorted(BAD_COMMAND_LINES))
def test_bad_command_line_fails_before_the_script_runs(case, tmp_path):
    """Each bad command line exits 2 with a hint, and the script never runs."""
    args, message = BAD_COMMAND_LINES[case]
    script = write_script(tmp_path / "job.py", "print('the script ran')\n")
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("mine")
    args = [str(script) if arg == "JOB" else arg for arg in args]

    done = run_python(["-m", "sage_mp", "run", *args], cwd=tmp_path)

    assert done.returncode == 2, done.stderr
    assert message in done.stderr
    assert "the script ran" not in done.stdout
    assert "Traceback" not in done.stderr
    assert os.listdir(tmp_path / "foreign") == ["notes.txt"]


def test_script_that_builds_no_pipeline_says_so(tmp_path):
    """A script that submits nothing exits 2 and says what a script must do."""
    script = write_script(tmp_path / "job.py", "print('hello')\n")

    done = run_python(["-m", "sage_mp", "run", str(script)], cwd=tmp_path)

    assert done.returncode == 2
    assert "built no pipeline" in done.stderr and "submit()" in done.stderr
