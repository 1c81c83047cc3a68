"""Checkpoints, recovery, resume and rescale, with real processes.

Workers and drivers are really killed with SIGKILL; every exactness
check compares with a plain Python computation of the same events.
"""

from __future__ import annotations

import ast
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time

import psutil
import pytest

from sage_mp import (
    CheckpointError,
    IncompatibleCheckpoint,
    KeyByFunction,
    LocalEnvironment,
    MapFunction,
    SinkFunction,
    SourceFunction,
    StopSignal,
    WorkerDied,
)
from sage_mp._driver import SCAN_ROUTING_ENV
from sage_mp._inspect import dump_state, list_checkpoints

sys.path.insert(0, os.path.dirname(__file__))
import ckpt_job  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def run_job(directory, evs, workers, spin=0, **options):
    ckpt_job.LastSeen.latest = {}
    env = LocalEnvironment(
        "ckpt_job",
        workers=workers,
        checkpoint_dir=str(directory),
        checkpoint_interval=options.pop("interval", 0.05),
        **options,
    )
    ckpt_job.build(env, evs, spin)
    return env.submit(autostop=True)


def saved_sessions(directory):
    return dump_state(str(directory), operator="Sessions")["Sessions"]["sessions"]


def kill_workers_repeatedly(directory, times, rng, every=2):
    """Kill a random worker after every ``every`` new committed checkpoints.

    Tied to the job's progress rather than the clock, so a loaded
    machine changes nothing but the duration. Setting the returned
    thread's ``done`` event (when the job is over) ends it early.
    """
    done = threading.Event()
    manifest = os.path.join(str(directory), "MANIFEST.json")

    def committed():
        try:
            with open(manifest) as handle:
                return json.load(handle)["checkpoints"][-1]["id"]
        except (OSError, ValueError, IndexError, KeyError):
            return 0

    def loop():
        me = psutil.Process()
        deadline = time.monotonic() + 120
        for _ in range(times):
            target = committed() + every
            while committed() < target and time.monotonic() < deadline:
                if done.wait(0.01):
                    return
            children = me.children()
            if not children:
                return
            os.kill(rng.choice(children).pid, signal.SIGKILL)

    thread = threading.Thread(target=loop, daemon=True)
    thread.done = done  # type: ignore[attr-defined]
    thread.start()
    return thread


@pytest.mark.parametrize(
    "workers,routing",
    [(1, "driver"), (3, "driver"), (3, "dealt"), (2, "every"), (3, "every")],
)
def test_killed_workers_leave_state_exactly_once(
    tmp_path, monkeypatch, workers, routing
):
    """kill -9 of random workers, three times: per-key state is exact.

    With every way of routing the collection: by the driver, by the
    worker each tick is dealt to, and by every worker; on the workers,
    stage 0 takes part in every checkpoint.
    """
    monkeypatch.setenv(SCAN_ROUTING_ENV, routing)
    evs = ckpt_job.events(200_000)
    killer = kill_workers_repeatedly(tmp_path / "ck", 3, random.Random(workers))
    result = run_job(tmp_path / "ck", evs, workers, spin=300, max_restarts=10)
    killer.done.set()
    killer.join()

    assert result.restarts >= 1
    assert result.records == len(evs)
    assert saved_sessions(tmp_path / "ck") == ckpt_job.expected(evs)
    assert ckpt_job.LastSeen.latest == ckpt_job.expected(evs)
    # Counts go on from the restored checkpoint: every operator saw
    # every record once, although workers redid the work after it.
    for name in ("by_user", "Sessions", "LastSeen"):
        assert result.operators[name]["in"] == len(evs), name
    assert result.operators["Sessions"]["out"] == len(evs)


class RejectEveryHundredth(MapFunction):
    """Raises for every event whose sequence number ends in 00."""

    def execute(self, event):
        if event["seq"] % 100 == 0:
            raise ValueError(f"bad event {event['seq']}")
        return event


@pytest.mark.parametrize("routing", ["driver", "dealt", "every"])
def test_killed_workers_leave_each_dead_letter_once(tmp_path, monkeypatch, routing):
    """With the skip policy, records replayed after a kill -9 are not
    written to the dead-letter file twice, and the counts agree."""
    monkeypatch.setenv(SCAN_ROUTING_ENV, routing)
    evs = ckpt_job.events(200_000)
    dead = tmp_path / "dead.jsonl"
    dead.write_text('{"from": "an earlier run", "tick": 0}\n')
    killer = kill_workers_repeatedly(tmp_path / "ck", 3, random.Random(3))
    ckpt_job.LastSeen.latest = {}
    env = LocalEnvironment(
        "ckpt_dead",
        workers=3,
        checkpoint_dir=str(tmp_path / "ck"),
        checkpoint_interval=0.05,
        max_restarts=10,
        error_policy="skip",
        dead_letter_path=str(dead),
    )
    (
        env.from_collection(evs)
        .keyby(lambda e: e["user"], name="by_user")
        .map(RejectEveryHundredth, name="reject")
        .map(ckpt_job.Sessions, spin=300)
        .sink(ckpt_job.LastSeen)
    )
    result = env.submit(autostop=True)
    killer.done.set()
    killer.join()

    assert result.restarts >= 1
    bad = len(evs) // 100
    lines = [json.loads(line) for line in dead.read_text().splitlines()]
    assert lines[0] == {"from": "an earlier run", "tick": 0}
    seqs = sorted(ast.literal_eval(line["record"])["seq"] for line in lines[1:])
    assert seqs == list(range(0, len(evs), 100))
    assert result.skipped == bad
    assert result.operators["reject"]["skipped"] == bad
    assert result.operators["Sessions"]["in"] == len(evs) - bad
    good = [e for e in evs if e["seq"] % 100]
    assert saved_sessions(tmp_path / "ck") == ckpt_job.expected(good)


def test_final_checkpoint_covers_every_record(tmp_path):
    """A finite job ends with a checkpoint whose source position is the end."""
    evs = ckpt_job.events(5_000)
    result = run_job(tmp_path / "ck", evs, 2, interval=30.0)

    assert result.checkpoints[-1]["records"] == len(evs)
    state = dump_state(str(tmp_path / "ck"), operator="collection")
    assert state["collection"]["position"] == len(evs)


def test_resume_processes_only_new_records(tmp_path):
    """A rerun resumes after the last checkpoint and reads no record twice."""
    evs = ckpt_job.events(20_000)
    run_job(tmp_path / "ck", evs[:8_000], 2)
    result = run_job(tmp_path / "ck", evs, 2)

    assert result.resumed_from is not None
    assert result.operators["Sessions"]["in"] == 12_000
    assert saved_sessions(tmp_path / "ck") == ckpt_job.expected(evs)


def test_killed_driver_resumes_exactly(tmp_path):
    """kill -9 of the driver mid-run, then a rerun: exact, no orphans."""
    directory = tmp_path / "ck"
    command = [
        sys.executable,
        "-m",
        "sage_mp",
        "run",
        os.path.join(HERE, "ckpt_job.py"),
        "--checkpoint-dir",
        str(directory),
        "200000",
        "1000",
    ]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if (directory / "MANIFEST.json").exists():
            manifest = json.loads((directory / "MANIFEST.json").read_text())
            if len(manifest["checkpoints"]) >= 2:
                break
        time.sleep(0.01)
    children = psutil.Process(proc.pid).children(recursive=True)
    assert children, "the job should have running workers"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    gone, alive = psutil.wait_procs(children, timeout=10)
    assert not alive, "workers must not outlive a killed driver"
    first = json.loads((directory / "MANIFEST.json").read_text())["checkpoints"]
    assert first[-1]["records"] < 200_000

    rerun = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    assert saved_sessions(directory) == ckpt_job.expected(ckpt_job.events(200_000))


def test_crash_during_checkpoint_write(tmp_path, monkeypatch):
    """A worker dying inside a checkpoint's write transaction loses nothing."""
    monkeypatch.setenv("SAGE_MP_TEST_CRASH_AT_CHECKPOINT", "3")
    evs = ckpt_job.events(100_000)
    result = run_job(tmp_path / "ck", evs, 2, spin=300, interval=0.02)

    assert result.restarts == 1
    assert 3 not in [c["id"] for c in result.checkpoints]
    assert saved_sessions(tmp_path / "ck") == ckpt_job.expected(evs)


def test_failed_checkpoints_are_survived(tmp_path, monkeypatch, caplog):
    """Failed checkpoint writes are reported; the job goes on and is exact."""
    monkeypatch.setenv("SAGE_MP_TEST_FAIL_CHECKPOINTS", "2,3")
    evs = ckpt_job.events(60_000)
    result = run_job(tmp_path / "ck", evs, 2, spin=300, interval=0.02)

    ids = [c["id"] for c in result.checkpoints]
    assert 2 not in ids and 3 not in ids and ids
    assert "checkpoint 2 failed" in caplog.text
    assert saved_sessions(tmp_path / "ck") == ckpt_job.expected(evs)


def test_too_many_failed_checkpoints_fail_the_job(tmp_path, monkeypatch):
    """More consecutive failures than allowed stop the job with a clear error."""
    monkeypatch.setenv(
        "SAGE_MP_TEST_FAIL_CHECKPOINTS", ",".join(map(str, range(1, 99)))
    )
    with pytest.raises(CheckpointError, match="in a row failed"):
        run_job(
            tmp_path / "ck",
            ckpt_job.events(60_000),
            2,
            spin=300,
            interval=0.01,
            max_checkpoint_failures=2,
        )


@pytest.mark.parametrize("before,after", [(4, 2), (2, 3), (1, 4)])
def test_rescale_keeps_per_key_entries(tmp_path, before, after):
    """Resuming with another worker count moves keyed state exactly."""
    evs = ckpt_job.events(30_000)
    run_job(tmp_path / "ck", evs[:15_000], before)
    saved = saved_sessions(tmp_path / "ck")
    assert saved == ckpt_job.expected(evs[:15_000])

    result = run_job(tmp_path / "ck", evs[:15_000], after)
    assert result.operators["Sessions"]["in"] == 0
    assert result.checkpoints[-1]["workers"] == after
    assert saved_sessions(tmp_path / "ck") == saved

    run_job(tmp_path / "ck", evs, after)
    assert saved_sessions(tmp_path / "ck") == ckpt_job.expected(evs)


def test_rescale_down_deletes_stores_no_checkpoint_needs(tmp_path):
    """Removed workers' stores go once every kept checkpoint is newer."""
    directory = tmp_path / "ck"
    evs = ckpt_job.events(40_000)
    run_job(directory, evs[:10_000], 4, interval=30.0)
    stores = sorted(p.name for p in directory.iterdir() if p.name.startswith("worker"))
    assert stores == ["worker-0", "worker-1", "worker-2", "worker-3"]

    # Each run ends with its one checkpoint; three are kept.
    for upto in (15_000, 20_000):
        run_job(directory, evs[:upto], 2, interval=30.0)
        assert (directory / "worker-3").is_dir()  # an older one still needs it
    run_job(directory, evs[:25_000], 2, interval=30.0)
    assert [c["workers"] for c in list_checkpoints(str(directory))] == [2, 2, 2]
    stores = sorted(p.name for p in directory.iterdir() if p.name.startswith("worker"))
    assert stores == ["worker-0", "worker-1"]
    assert saved_sessions(directory) == ckpt_job.expected(evs[:25_000])

    run_job(directory, evs, 4)
    assert saved_sessions(directory) == ckpt_job.expected(evs)


def test_rescale_maps_unkeyed_attributes_by_worker_index(tmp_path):
    """Non-keyed attributes go to the worker with the same index."""
    evs = ckpt_job.events(10_000)
    run_job(tmp_path / "ck", evs, 3)
    per_worker = dump_state(str(tmp_path / "ck"))["Sessions"]["records"]
    assert sum(per_worker.values()) == len(evs)

    run_job(tmp_path / "ck", evs, 2)
    after = dump_state(str(tmp_path / "ck"))["Sessions"]["records"]
    assert after == {k: per_worker[k] for k in ("worker-0", "worker-1")}


class CountingKey(KeyByFunction):
    """A key extractor with state of its own: the records it keyed."""

    def __init__(self) -> None:
        super().__init__()
        self.keyed = 0

    def execute(self, event):
        self.keyed += 1
        return event["user"]


def run_counting_key(directory, evs, workers, routing, monkeypatch):
    monkeypatch.setenv(SCAN_ROUTING_ENV, routing)
    env = LocalEnvironment(
        "counting_key", workers=workers, checkpoint_dir=str(directory)
    )
    env.from_collection(evs).keyby(CountingKey, name="by_user").map(
        ckpt_job.Sessions
    ).sink(Drop)
    return env.submit(autostop=True)


@pytest.mark.parametrize("routing", ["dealt", "every"])
def test_resume_moves_stage_zero_between_driver_and_workers(
    tmp_path, monkeypatch, routing
):
    """A keyby's own attributes survive a switch of who routes.

    Stage 0 runs in the driver or in every worker depending on the
    worker count; its non-keyed attributes pass between the driver and
    worker 0, as they would between workers of the same index, and each
    worker's instance sees every record.
    """
    evs = ckpt_job.events(9_000)
    ck = tmp_path / "ck"
    run_counting_key(ck, evs[:3_000], 2, "driver", monkeypatch)
    # One process holds the attribute: dump_state shows its value alone.
    assert dump_state(str(ck))["by_user"]["keyed"] == 3_000

    run_counting_key(ck, evs[:6_000], 2, routing, monkeypatch)
    keyed = dump_state(str(ck))["by_user"]["keyed"]
    if routing == "every":
        # Each worker keys every record it reads, so each counted the
        # 3,000 new ones; worker 0 went on from the driver's count.
        assert keyed == {"worker-0": 6_000, "worker-1": 3_000}
    else:
        # Each record is keyed once, by the worker its tick was dealt to.
        assert set(keyed) == {"worker-0", "worker-1"}
        assert sum(keyed.values()) == 6_000
        assert keyed["worker-0"] > 3_000

    run_counting_key(ck, evs, 2, "driver", monkeypatch)
    after = dump_state(str(ck))["by_user"]["keyed"]
    assert after == keyed["worker-0"] + 3_000
    assert saved_sessions(ck) == ckpt_job.expected(evs)


class Rules(MapFunction):
    __state_exclude__ = ["scratch"]

    def __init__(self):
        super().__init__()
        self.kept = {}
        self.scratch = {}
        self._private = 1
        self.lock = None

    def execute(self, value):
        self.kept[self.ctx.get_key()] = value
        self.scratch[value] = value
        return value


class OnlyListed(MapFunction):
    __state_include__ = ["_chosen"]

    def __init__(self):
        super().__init__()
        self._chosen = 0
        self.visible = 0

    def execute(self, value):
        self._chosen += 1
        self.visible += 1
        return value


class Drop(SinkFunction):
    def execute(self, value):
        pass


def test_include_and_exclude_rules(tmp_path):
    """ctx/private/excluded attributes are not state; included ones are."""
    env = LocalEnvironment("rules", workers=2, checkpoint_dir=str(tmp_path / "ck"))
    (
        env.from_collection(range(100))
        .keyby(lambda v: v % 5)
        .map(Rules)
        .map(OnlyListed)
        .sink(Drop)
    )
    env.submit(autostop=True)
    state = dump_state(str(tmp_path / "ck"))

    assert set(state["Rules"]) == {"kept", "lock"}
    assert state["Rules"]["kept"][4] == 99
    assert set(state["OnlyListed"]) == {"_chosen"}


class Unpicklable(MapFunction):
    def __init__(self):
        super().__init__()
        self.handle = (n for n in range(3))

    def execute(self, value):
        return value


def test_unserializable_attribute_fails_with_advice(tmp_path):
    """An attribute that cannot be saved names itself and __state_exclude__."""
    env = LocalEnvironment("bad", workers=2, checkpoint_dir=str(tmp_path / "ck"))
    env.from_collection(range(100)).keyby(lambda v: v).map(Unpicklable).sink(Drop)
    with pytest.raises(CheckpointError) as caught:
        env.submit(autostop=True)
    message = str(caught.value)
    assert "'handle'" in message and "'Unpicklable'" in message
    assert "__state_exclude__" in message


def test_another_pipeline_is_refused(tmp_path):
    """A directory written by another pipeline is refused, not overwritten."""
    run_job(tmp_path / "ck", ckpt_job.events(1_000), 1)
    before = (tmp_path / "ck" / "MANIFEST.json").read_text()
    env = LocalEnvironment("other", workers=1, checkpoint_dir=str(tmp_path / "ck"))
    env.from_collection(range(10)).map(lambda v: v).sink(Drop)
    with pytest.raises(IncompatibleCheckpoint, match="another pipeline"):
        env.submit(autostop=True)
    assert (tmp_path / "ck" / "MANIFEST.json").read_text() == before


@pytest.mark.parametrize(
    "field,value,message",
    [("format", 99, "checkpoint format"), ("key_groups", 128, "key groups")],
)
def test_unreadable_or_changed_format_is_refused(tmp_path, field, value, message):
    """A changed format version or key-group count is refused with a reason."""
    run_job(tmp_path / "ck", ckpt_job.events(1_000), 1)
    path = tmp_path / "ck" / "MANIFEST.json"
    manifest = json.loads(path.read_text())
    manifest[field] = value
    path.write_text(json.dumps(manifest))
    with pytest.raises(IncompatibleCheckpoint, match=message):
        run_job(tmp_path / "ck", ckpt_job.events(1_000), 1)


def test_foreign_directory_is_refused(tmp_path):
    """A non-empty directory without a manifest is never written into."""
    directory = tmp_path / "mine"
    directory.mkdir(mode=0o700)
    (directory / "notes.txt").write_text("keep me")
    with pytest.raises(IncompatibleCheckpoint, match="not a sage_mp checkpoint"):
        run_job(directory, ckpt_job.events(100), 1)
    assert os.listdir(directory) == ["notes.txt"]


def test_directory_writable_by_others_is_refused(tmp_path):
    """Restoring unpickles data, so a world-writable directory is refused."""
    run_job(tmp_path / "ck", ckpt_job.events(1_000), 1)
    os.chmod(tmp_path / "ck", 0o777)
    with pytest.raises(IncompatibleCheckpoint, match="chmod 700"):
        run_job(tmp_path / "ck", ckpt_job.events(1_000), 1)


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to chown")
def test_directory_of_another_user_is_refused(tmp_path):
    """A checkpoint directory owned by someone else is refused."""
    run_job(tmp_path / "ck", ckpt_job.events(1_000), 1)
    os.chown(tmp_path / "ck", 65534, 65534)
    with pytest.raises(IncompatibleCheckpoint, match="owned by uid 65534"):
        run_job(tmp_path / "ck", ckpt_job.events(1_000), 1)


def test_new_directory_is_private(tmp_path):
    """The engine creates checkpoint directories with mode 0700."""
    run_job(tmp_path / "ck", ckpt_job.events(100), 1)
    assert (os.stat(tmp_path / "ck").st_mode & 0o777) == 0o700


def test_fresh_starts_from_empty_state(tmp_path):
    """fresh=True discards the old checkpoints instead of resuming."""
    evs = ckpt_job.events(4_000)
    run_job(tmp_path / "ck", evs, 2)
    result = run_job(tmp_path / "ck", evs[:1_000], 2, fresh=True)
    assert result.resumed_from is None
    assert saved_sessions(tmp_path / "ck") == ckpt_job.expected(evs[:1_000])


def test_restart_budget_is_enforced(tmp_path):
    """After max_restarts recoveries the job fails and says why."""
    evs = ckpt_job.events(200_000)
    killer = kill_workers_repeatedly(tmp_path / "ck", 3, random.Random(1), every=1)
    try:
        with pytest.raises(WorkerDied, match="max_restarts=1"):
            run_job(tmp_path / "ck", evs, 2, spin=300, max_restarts=1)
    finally:
        # A killer left behind would kill workers of later tests.
        killer.done.set()
        killer.join()


def test_old_checkpoints_are_collected(tmp_path):
    """Only keep_checkpoints committed checkpoints stay listed."""
    result = run_job(
        tmp_path / "ck",
        ckpt_job.events(50_000),
        2,
        spin=300,
        interval=0.01,
        keep_checkpoints=2,
    )
    assert len(result.checkpoints) > 3
    committed = [
        r for r in list_checkpoints(str(tmp_path / "ck")) if r["status"] == "committed"
    ]
    assert [r["id"] for r in committed] == [c["id"] for c in result.checkpoints[-2:]]


def test_map_grows_instead_of_failing(tmp_path, monkeypatch):
    """A store whose LMDB map is full grows it; the job does not fail."""
    import sage_mp._store as store

    monkeypatch.setattr(store, "_INITIAL_MAP", 256 * 1024)
    evs = ckpt_job.events(20_000)
    big = [dict(e, pad="x" * 200) for e in evs]
    run_job(tmp_path / "ck", big, 2)
    assert saved_sessions(tmp_path / "ck") == ckpt_job.expected(evs)


def test_state_cli_ls_and_dump(tmp_path):
    """`state ls` lists committed checkpoints; `state dump` prints merged JSON."""
    evs = ckpt_job.events(5_000)
    run_job(tmp_path / "ck", evs, 3)
    base = [sys.executable, "-m", "sage_mp", "state"]

    listing = subprocess.run(
        base + ["ls", str(tmp_path / "ck")], capture_output=True, text=True, check=True
    )
    assert "committed" in listing.stdout and "workers" in listing.stdout

    dump = subprocess.run(
        base + ["dump", str(tmp_path / "ck"), "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    state = json.loads(dump.stdout)
    assert state["Sessions"]["sessions"] == ckpt_job.expected(evs)
    assert sum(state["Sessions"]["records"].values()) == len(evs)

    one = subprocess.run(
        base
        + [
            "dump",
            str(tmp_path / "ck"),
            "--key",
            "u7",
            "--operator",
            "Sessions",
            "--json",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(one.stdout) == {
        "Sessions": {"sessions": {"u7": ckpt_job.expected(evs)["u7"]}}
    }

    # A misspelt operator is an error naming the ones there are; a key
    # with no entry prints nothing, and says so.
    typo = subprocess.run(
        base + ["dump", str(tmp_path / "ck"), "--operator", "Session"],
        capture_output=True,
        text=True,
    )
    assert typo.returncode == 1
    assert "no operator named 'Session' has state in that checkpoint" in typo.stderr
    assert "operators with state: Sessions, " in typo.stderr
    none = subprocess.run(
        base + ["dump", str(tmp_path / "ck"), "--key", "nobody"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(none.stdout) == {}
    assert "no state entry of key 'nobody'" in none.stderr


def test_state_cli_refuses_a_non_checkpoint_directory(tmp_path):
    """`state ls` on an ordinary directory fails with a clear message."""
    out = subprocess.run(
        [sys.executable, "-m", "sage_mp", "state", "ls", str(tmp_path)],
        capture_output=True,
        text=True,
    )
    assert out.returncode != 0
    assert "not a sage_mp checkpoint directory" in out.stderr


def test_reading_a_running_job_does_not_disturb_it(tmp_path):
    """`state dump` from another process while checkpoints are written."""
    evs = ckpt_job.events(120_000)
    directory = tmp_path / "ck"
    running = threading.Event()
    running.set()
    during = []

    def read_while_running():
        command = [
            sys.executable,
            "-m",
            "sage_mp",
            "state",
            "dump",
            str(directory),
            "--operator",
            "Sessions",
        ]
        while running.is_set():
            out = subprocess.run(command, capture_output=True, text=True)
            if out.returncode == 0 and running.is_set():
                during.append(len(json.loads(out.stdout)["Sessions"]["sessions"]))

    reader = threading.Thread(target=read_while_running)
    reader.start()
    try:
        run_job(directory, evs, 2, spin=300)
    finally:
        running.clear()
        reader.join()
    assert during, "no dump finished while the job was running"
    assert saved_sessions(directory) == ckpt_job.expected(evs)


def test_cli_flags_override_the_script(tmp_path):
    """--checkpoint-dir and --fresh on the command line take effect."""
    script = os.path.join(HERE, "ckpt_job.py")
    directory = tmp_path / "ck"
    base = [
        sys.executable,
        "-m",
        "sage_mp",
        "run",
        script,
        "--checkpoint-dir",
        str(directory),
        "--checkpoint-interval",
        "0.5",
    ]
    subprocess.run(base + ["3000"], check=True, capture_output=True)
    subprocess.run(base + ["--fresh", "1000"], check=True, capture_output=True)
    assert saved_sessions(directory) == ckpt_job.expected(ckpt_job.events(1000))


class Evicting(MapFunction):
    """Counts per key and deletes the entry of the key 40 below."""

    def __init__(self):
        super().__init__()
        self.counts = {}

    def execute(self, value):
        key = self.ctx.get_key()
        self.counts[key] = self.counts.get(key, 0) + 1
        self.counts.pop(key - 40, None)
        return value


def evicting_expected(evs):
    counts = {}
    for key in evs:
        counts[key] = counts.get(key, 0) + 1
        counts.pop(key - 40, None)
    return counts


def test_entries_deleted_for_other_keys_survive_resume(tmp_path):
    """Deleting another key's entry (an eviction) is saved; resume is exact."""
    rng = random.Random(3)
    evs = [rng.randrange(i // 50, i // 50 + 60) for i in range(30_000)]

    def run(part, workers):
        env = LocalEnvironment(
            "evict",
            workers=workers,
            batch_size=100,
            checkpoint_dir=str(tmp_path / "ck"),
            checkpoint_interval=0.01,
        )
        env.from_collection(part).keyby(lambda k: k).map(Evicting).sink(Drop)
        env.submit(autostop=True)

    # One worker: evicting another key is only well defined when both
    # keys live in the same instance.
    run(evs[:12_000], 1)
    run(evs[:21_000], 1)
    run(evs, 1)
    saved = dump_state(str(tmp_path / "ck"), operator="Evicting")
    assert saved["Evicting"]["counts"] == evicting_expected(evs)


class Held(SourceFunction):
    """Gives a record, then nothing until the test's event is set."""

    release = threading.Event()

    def __init__(self):
        super().__init__()
        self.sent = 0

    def execute(self):
        if self.sent == 0:
            self.sent = 1
            return {"user": "u1", "value": 1}
        if not self.release.is_set():
            return None
        return StopSignal("released")


def test_a_directory_in_use_by_a_running_job_is_refused(tmp_path):
    """Two jobs in one directory would commit over each other's
    checkpoints; the second used to run anyway."""
    directory = str(tmp_path / "ck")
    Held.release.clear()
    first = LocalEnvironment("first", workers=1, checkpoint_dir=directory)
    first.from_source(Held).keyby(lambda r: r["user"]).sink(Drop, parallelism=2)
    first.submit()
    try:
        second = LocalEnvironment("second", workers=1, checkpoint_dir=directory)
        second.from_source(Held).keyby(lambda r: r["user"]).sink(Drop, parallelism=2)
        with pytest.raises(IncompatibleCheckpoint) as refused:
            second.submit(autostop=True)
        message = str(refused.value)
        assert f"is in use by another running job (job 'first', pid {os.getpid()})" in (
            message
        )
        assert "give this job a checkpoint_dir of its own" in message
    finally:
        Held.release.set()
        first.wait()

    # Once the first job has ended, the directory is free again.
    third = LocalEnvironment("first", workers=1, checkpoint_dir=directory)
    third.from_source(Held).keyby(lambda r: r["user"]).sink(Drop, parallelism=2)
    assert third.submit(autostop=True).resumed_from is not None
