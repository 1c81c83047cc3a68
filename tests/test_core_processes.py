"""No process outlives its job: after the end, a user error, or Ctrl-C.

The CLI runs in a subprocess of its own session, so that its process
group can be sent SIGINT the way a terminal sends Ctrl-C. Its children
(the workers) are listed before the signal and must all be gone after.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psutil
import pytest
from helpers import WORKERS, children_pids, driver_sink, wait_gone, write_script

from sage_mp import LocalEnvironment, UserFunctionError

JOB = """
import sys, time
from sage_mp import LocalEnvironment, SinkFunction, SourceFunction, StopSignal

PROGRESS = sys.argv[1]
MODE = sys.argv[2]

class Endless(SourceFunction):
    def __init__(self):
        super().__init__()
        self.n = 0
        self.deadline = time.monotonic() + 120  # safety net only

    def execute(self):
        if time.monotonic() > self.deadline:
            return StopSignal("safety deadline")
        self.n += 1
        if MODE == "fail" and self.n == 5000:
            return {"user": "bad", "n": -1}
        if MODE == "end" and self.n > 20000:
            return StopSignal("done")
        return {"user": f"u{self.n % 17}", "n": self.n}

def check(record):
    if record["n"] < 0:
        raise ValueError("negative n")
    return record

class Progress(SinkFunction):
    def __init__(self):
        super().__init__()
        self.count = 0

    def execute(self, record):
        self.count += 1
        if self.count % 1000 == 0:
            with open(PROGRESS, "w") as file:
                file.write(str(self.count))

env = LocalEnvironment("endless", workers=WORKERS)
(env.from_source(Endless)
    .keyby(lambda r: r["user"])
    .map(check, name="check")
    .sink(Progress))
env.submit()
"""


def start_cli(tmp_path, workers, mode):
    script = write_script(tmp_path / "job.py", JOB.replace("WORKERS", str(workers)))
    progress = tmp_path / "progress.txt"
    proc = subprocess.Popen(
        [sys.executable, "-m", "sage_mp", "run", str(script), str(progress), mode],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    return proc, progress


def wait_for_workers(proc, workers, progress, timeout=60.0):
    """Wait until the CLI has its workers and records flow; list them."""
    cli = psutil.Process(proc.pid)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        children = cli.children(recursive=True)
        if len(children) >= workers and progress.exists():
            return {child.pid for child in children}
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    out, err = proc.communicate(timeout=30)
    pytest.fail(f"the job did not start its workers: {err}")


@pytest.mark.parametrize("workers", WORKERS)
@pytest.mark.parametrize("target", ["process-group", "cli-only"])
def test_ctrl_c_exits_130_and_leaves_no_process(workers, target, tmp_path):
    """SIGINT stops the CLI with exit code 130 and kills every worker."""
    proc, progress = start_cli(tmp_path, workers, "endless")
    try:
        children = wait_for_workers(proc, workers, progress)
        time.sleep(1.5)
        if target == "process-group":
            os.killpg(proc.pid, signal.SIGINT)
        else:
            proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    assert proc.returncode == 130, err
    assert "interrupted" in err
    assert "Traceback" not in err
    assert not wait_gone(children), "workers survived Ctrl-C"


def children_until_exit(proc):
    """Collect every descendant pid of ``proc`` until it exits; its stderr."""
    try:
        cli = psutil.Process(proc.pid)
        seen = set()
        while proc.poll() is None:
            try:
                seen |= {c.pid for c in cli.children(recursive=True)}
            except psutil.NoSuchProcess:
                break
            time.sleep(0.02)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return seen, err


@pytest.mark.parametrize("workers", WORKERS)
def test_cli_job_that_ends_leaves_no_process(workers, tmp_path):
    """A job run by the CLI that ends by itself exits 0 with no leftovers."""
    proc, progress = start_cli(tmp_path, workers, "end")
    seen, err = children_until_exit(proc)

    assert proc.returncode == 0, err
    assert progress.read_text() == "20000"
    assert not wait_gone(seen)


@pytest.mark.parametrize("workers", WORKERS)
def test_cli_job_with_user_error_fails_and_leaves_no_process(workers, tmp_path):
    """A user error makes the CLI exit 1 with the error, workers gone."""
    proc, progress = start_cli(tmp_path, workers, "fail")
    seen, err = children_until_exit(proc)

    assert proc.returncode == 1, err
    assert "check" in err and "negative n" in err
    assert not wait_gone(seen)


@pytest.mark.parametrize("workers", WORKERS)
def test_in_process_jobs_leave_no_process(workers):
    """A normal end and a user error, in this process, leave no worker."""
    before = children_pids()
    env = LocalEnvironment("ok", workers=workers)
    env.from_collection(range(5000)).keyby(lambda n: n % 9).sink(driver_sink())
    env.submit(autostop=True)
    assert not wait_gone(children_pids() - before)

    env = LocalEnvironment("fails", workers=workers)
    env.from_collection(range(5000)).keyby(lambda n: n % 9).map(
        lambda n: 1 // (n - 4000)
    ).sink(driver_sink())
    with pytest.raises(UserFunctionError):
        env.submit(autostop=True)
    assert not wait_gone(children_pids() - before)


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_many_jobs_in_one_process_leave_no_open_file():
    """Jobs run one after another do not leak pipes, ok or failed.

    The environments stay referenced, as in a notebook or a test suite,
    so nothing is freed by the garbage collector.
    """
    kept = []
    before = _open_fds()
    for round_ in range(4):
        env = LocalEnvironment(f"ok-{round_}", workers=3)
        env.from_collection(range(2000)).keyby(lambda n: n % 9).sink(driver_sink())
        env.submit(autostop=True)
        kept.append(env)
        env = LocalEnvironment(f"fails-{round_}", workers=3)
        env.from_collection(range(2000)).keyby(lambda n: n % 9).map(
            lambda n: 1 // (n - 1500)
        ).sink(driver_sink())
        with pytest.raises(UserFunctionError):
            env.submit(autostop=True)
        kept.append(env)
    assert _open_fds() == before
