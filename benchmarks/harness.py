"""The benchmark harness: plans, launches and measures every run.

``python -m sage_mp bench`` and ``python benchmarks/run.py`` end up in
:func:`run_suite`. Each measured run is a fresh process (or two, for
Bytewax across processes) started the way a user starts it: ``python -m
sage_mp run``, ``python -m bytewax.run``, ``python script.py``. This
module launches them, samples their memory from outside, and collects
the one ``BENCH_RESULT`` line each prints; ``report`` turns that into
ratios, targets, a table, JSON, a chart and a history line.

Timing: a run's *job time* is the wall time from launching its
process(es) to their exit, minus the time the job spent generating its
input data (which it reports). It includes interpreter start-up,
imports, forking and teardown, the same for every engine. The
*in-process time* is what the job measured around its own run.

Runs are interleaved (every engine once, then every engine again) so
that a slow spell of the machine hits all engines alike.
"""

from __future__ import annotations

import argparse
import compileall
import datetime
import importlib.metadata
import inspect
import json
import os
import platform
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import history
import report
import workloads as W

import sage_mp
from sage_mp import LocalEnvironment

BYTEWAX_VERSION = "0.21.1"
# Records appended to a resumed job's input so that it has new work
# after its restored position.
RESUME_EXTRA = 1000
NOT_AVAILABLE = "not available: needs checkpoints"


def run_suite(args: argparse.Namespace, suite: Path) -> int:
    """Run, print the table, write the outputs; return an exit code."""
    bench = Bench(args, suite)
    _compile_bytecode()
    # A kill(1) must not orphan the job being measured: it runs in its
    # own process group, which only the interrupt path below kills.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        bench.run()
    except KeyboardInterrupt:
        print("interrupted; benchmark runs stopped", file=sys.stderr)
        return 130
    result = bench.summary()
    print(report.render_markdown(result))
    write_outputs(args, suite, result)
    return 0


def write_outputs(
    args: argparse.Namespace, suite: Path, result: dict[str, Any]
) -> None:
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.json}", file=sys.stderr)
    if args.chart:
        report.draw_chart(result, args.chart)
        print(f"wrote {args.chart}", file=sys.stderr)
    if args.record:
        path = suite / "history.jsonl"
        entry = report.history_entry(result)
        # A last line left without its newline (an edit by hand) must
        # not swallow this one.
        cut = path.exists() and path.stat().st_size and not _ends_with_newline(path)
        with path.open("a", encoding="utf-8") as out:
            out.write(("\n" if cut else "") + json.dumps(entry) + "\n")
        print(f"appended to {path}", file=sys.stderr)
        print(_against_history(path, entry), file=sys.stderr)


def _ends_with_newline(path: Path) -> bool:
    with path.open("rb") as data:
        data.seek(-1, os.SEEK_END)
        return data.read(1) == b"\n"


def _against_history(path: Path, entry: dict[str, Any]) -> str:
    """This run set against the recorded runs before it."""
    try:
        runs, _ = history.load(path)
    except history.HistoryError as err:
        return str(err)
    mine = history.parse_entry(entry)
    earlier = [r for r in runs if (r.machine, r.size) == (mine.machine, mine.size)]
    return history.verdict(earlier[:-1], mine)


# --- machine and peers ----------------------------------------------------


def machine_info() -> dict[str, Any]:
    """CPU model (from lscpu), usable cores, Python and OS."""
    model = platform.processor() or platform.machine()
    try:
        out = subprocess.run(
            ["lscpu"], capture_output=True, text=True, check=False
        ).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return {
        "cpu_model": model,
        "cores": cores,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def bytewax_version() -> str | None:
    try:
        return importlib.metadata.version("bytewax")
    except importlib.metadata.PackageNotFoundError:
        return None


def checkpoints_supported() -> bool:
    """Whether ``LocalEnvironment`` accepts ``checkpoint_dir`` yet."""
    return "checkpoint_dir" in inspect.signature(LocalEnvironment).parameters


def _free_ports(count: int) -> list[int]:
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


# --- one measured launch ------------------------------------------------


@dataclass
class Launch:
    """What one launch of one or more processes produced."""

    wall_s: float
    results: list[dict[str, Any]]
    peak_rss: dict[str, int]
    launched_at: float
    first_record_at: float | None = None
    error: str | None = None
    #: CPU cores that processes outside this launch kept busy, on
    #: average, while it ran: above ~0.3 on 2 cores the run was shared.
    other_cores: float = 0.0

    @property
    def gen_s(self) -> float:
        return max((r.get("gen_s", 0.0) for r in self.results), default=0.0)

    @property
    def job_s(self) -> float:
        return self.wall_s - self.gen_s

    @property
    def run_s(self) -> float:
        return max((r.get("run_s", 0.0) for r in self.results), default=0.0)

    @property
    def records(self) -> int:
        # Bytewax processes report what their own sink saw; add them up.
        return sum(int(r.get("records", 0)) for r in self.results)


class RssSampler(threading.Thread):
    """Samples the peak RSS of each process of a launch, from outside.

    Runs in the harness, polling the launched processes and their
    children, so the measured jobs carry no extra code.
    """

    def __init__(self, pids: list[int], interval: float = 0.05) -> None:
        super().__init__(name="rss-sampler", daemon=True)
        self.pids = pids
        self.interval = interval
        self.peaks: dict[str, int] = {}
        self._labels: dict[int, str] = {}
        self._halt = threading.Event()

    def run(self) -> None:
        import psutil

        roots = {}
        for index, pid in enumerate(self.pids):
            try:
                roots[pid] = psutil.Process(pid)
            except psutil.NoSuchProcess:
                continue
            self._labels[pid] = "driver" if len(self.pids) == 1 else f"p{index}"
        known: dict[int, Any] = dict(roots)
        rounds = 0
        while not self._halt.is_set():
            if rounds % 4 == 0:
                self._find_children(roots, known)
            for pid, proc in list(known.items()):
                try:
                    rss = proc.memory_info().rss
                except psutil.Error:
                    continue
                label = self._labels[pid]
                self.peaks[label] = max(self.peaks.get(label, 0), rss)
            rounds += 1
            self._halt.wait(self.interval)

    def _find_children(self, roots: dict[int, Any], known: dict[int, Any]) -> None:
        import psutil

        for root_pid, root in roots.items():
            try:
                children = sorted(root.children(recursive=True), key=lambda p: p.pid)
            except psutil.Error:
                continue
            for child in children:
                if child.pid in known:
                    continue
                known[child.pid] = child
                prefix = "" if len(roots) == 1 else f"{self._labels[root_pid]}."
                taken = self._labels.values()
                count = sum(1 for name in taken if name.startswith(prefix + "w"))
                self._labels[child.pid] = f"{prefix}w{count}"

    def stop(self) -> dict[str, int]:
        self._halt.set()
        self.join()
        return self.peaks


def launch(
    commands: list[list[str]],
    *,
    cwd: Path,
    env: dict[str, str],
    timeout: float,
    prefixes: tuple[str, str],
    sample_interval: float = 0.05,
) -> Launch:
    """Start ``commands`` together, wait for all of them, measure them.

    ``prefixes`` are the markers of the result line and of the
    first-record line in the jobs' output.
    """
    launched_at = time.time()
    cpu_before = cpu_marks()
    started = time.perf_counter()
    procs = [
        subprocess.Popen(
            command,
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            # Own process group: a timeout or Ctrl-C kills the job and
            # the workers it forked, and nothing else.
            start_new_session=True,
        )
        for command in commands
    ]
    sampler = RssSampler([p.pid for p in procs], sample_interval)
    sampler.start()
    outputs, ended = _wait_all(procs, timeout)
    wall_s = ended - started
    peaks = sampler.stop()
    result = _parse(procs, outputs, wall_s, peaks, launched_at, prefixes)
    result.other_cores = other_cores(cpu_before, cpu_marks(), wall_s)
    return result


def cpu_marks() -> tuple[float, float]:
    """CPU seconds used so far by the whole machine, and by us.

    "Us" is this process plus every child it has reaped, which includes
    the workers a job forked and reaped itself.
    """
    import psutil

    times = psutil.cpu_times()
    machine = sum(
        getattr(times, name, 0.0)
        for name in ("user", "nice", "system", "irq", "softirq", "steal")
    )
    own = resource.getrusage(resource.RUSAGE_SELF)
    reaped = resource.getrusage(resource.RUSAGE_CHILDREN)
    ours = own.ru_utime + own.ru_stime + reaped.ru_utime + reaped.ru_stime
    return machine, ours


def other_cores(
    before: tuple[float, float], after: tuple[float, float], wall: float
) -> float:
    """Average cores busy with work that was not ours between two marks."""
    machine = after[0] - before[0]
    ours = after[1] - before[1]
    return max(0.0, machine - ours) / wall if wall > 0 else 0.0


def wait_until_quiet(limit: float, cores: float = 0.3, window: float = 1.0) -> float:
    """Wait up to ``limit`` s for other processes to use < ``cores``.

    Returns the other processes' load in the last window. Only this
    harness's own sleeping thread runs meanwhile, so all load seen is
    someone else's.
    """
    deadline = time.monotonic() + limit
    while True:
        before = cpu_marks()
        time.sleep(window)
        load = other_cores(before, cpu_marks(), window)
        if load < cores or time.monotonic() >= deadline:
            return load


def _wait_all(
    procs: list[subprocess.Popen[str]], timeout: float
) -> tuple[list[tuple[str, str]], float]:
    """Drain every process's output; return it and when the last ended."""
    outputs: list[tuple[str, str]] = [("", "")] * len(procs)
    ended = [0.0] * len(procs)

    def drain(index: int) -> None:
        outputs[index] = procs[index].communicate()
        ended[index] = time.perf_counter()

    threads = [
        threading.Thread(target=drain, args=(i,), daemon=True)
        for i in range(len(procs))
    ]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + timeout
    try:
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
            if thread.is_alive():
                raise TimeoutError
    except (TimeoutError, KeyboardInterrupt) as err:
        _kill_groups(procs)
        for thread in threads:
            thread.join(5.0)
        if isinstance(err, KeyboardInterrupt):
            raise
        outputs = [
            (out, err_text + f"\nkilled after {timeout:.0f} s")
            for out, err_text in outputs
        ]
    return outputs, max(ended)


def _kill_groups(procs: list[subprocess.Popen[str]]) -> None:
    for proc in procs:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def _parse(
    procs: list[subprocess.Popen[str]],
    outputs: list[tuple[str, str]],
    wall_s: float,
    peaks: dict[str, int],
    launched_at: float,
    prefixes: tuple[str, str],
) -> Launch:
    result_prefix, first_prefix = prefixes
    results: list[dict[str, Any]] = []
    firsts: list[float] = []
    errors = []
    for proc, (stdout, stderr) in zip(procs, outputs, strict=True):
        found = False
        for line in stdout.splitlines():
            if line.startswith(result_prefix):
                results.append(json.loads(line[len(result_prefix) :]))
                found = True
            elif line.startswith(first_prefix):
                firsts.append(float(line[len(first_prefix) :]))
        if proc.returncode != 0 or not found:
            tail = "\n".join((stderr or stdout).strip().splitlines()[-5:])
            errors.append(f"exit code {proc.returncode}: {tail or 'no output'}")
    return Launch(
        wall_s=wall_s,
        results=results,
        peak_rss=peaks,
        launched_at=launched_at,
        first_record_at=min(firsts) if firsts else None,
        error="; ".join(errors) or None,
    )


# --- what the suite runs --------------------------------------------------


@dataclass
class Variant:
    """One engine configuration measured in one workload."""

    label: str
    engine: str  # sage_mp | plain | pool | bytewax
    workers: int | None = None
    job: str = ""  # the workload name the job script gets
    checkpoint: bool = False
    report_first: bool = False
    baseline: bool = False
    launches: list[Launch] = field(default_factory=list)
    resumes: list[Launch] = field(default_factory=list)


@dataclass
class Workload:
    """One workload's variants; ``ratio_kind`` says how to compare them."""

    name: str
    description: str
    ratio_kind: str  # speedup | p99 | rss | wall
    variants: list[Variant]
    unavailable: str | None = None

    @property
    def baseline(self) -> Variant | None:
        return next((v for v in self.variants if v.baseline), None)


DESCRIPTIONS = {
    "light": "per-user session count and sum (SAGE guide shape), "
    "{light:,} events, {keys:,} keys",
    "heavy": "light plus ~{burn_us:.0f} us of pure-Python work per event "
    "in a stateless map after keyby, {heavy:,} events",
    "skewed": "light with Zipf(1.2) keys: the hottest key has ~21% of events",
    "latency": "source with delay=0.001, {latency:,} events; time from "
    "source to a driver-side sink",
    "memory": "~1 KiB records from a source >10x faster than its sink "
    "(sink sleeps 1 ms per 10 records), {memory:,} records; peak RSS",
    "startup": "a trivial job ({startup} records) run as a new process; wall time",
    "checkpointed": "light with checkpoint_interval=1.0, then resumed",
    "big-state": "{big:,} keys of state, checkpoint_interval=1.0, then resumed",
}


def plan_workload(
    name: str, workers: list[int], bytewax: bool, checkpoints: bool
) -> Workload:
    """Which variants a workload measures, and which one is the baseline."""
    most = max(workers)
    sage = [Variant(f"sage_mp {w}w", "sage_mp", w, name) for w in workers]
    peers = (
        [Variant(f"bytewax {p}p", "bytewax", p, name) for p in (1, 2)]
        if bytewax
        else []
    )
    plain = Variant("plain loop", "plain", None, name, baseline=True)
    # The same loop split over independent processes, no engine: the
    # most any engine could reach on this machine's cores.
    ceiling = Variant(f"plain loop x{most} (ceiling)", "plain", most, name)
    if name == "light":
        return Workload(name, "", "speedup", [plain, ceiling, *sage, *peers])
    if name == "skewed":
        return Workload(name, "", "speedup", [plain, *sage, *peers])
    if name == "heavy":
        pool = Variant(f"Pool {most}p", "pool", most, name)
        return Workload(name, "", "speedup", [plain, ceiling, pool, *sage, *peers])
    if name == "latency":
        if peers:
            peers[0].baseline = True
        elif sage:
            sage[0].baseline = True
        return Workload(name, "", "p99", [*sage, *peers[:1]])
    if name == "memory":
        return Workload(
            name, "", "rss", [plain, Variant(f"sage_mp {most}w", "sage_mp", most, name)]
        )
    if name == "startup":
        trivial = Variant("sage_mp (default workers)", "sage_mp", None, name)
        return Workload(name, "", "wall", [plain, trivial, *peers[:1]])
    job = "light" if name == "checkpointed" else name
    fresh = Variant(
        f"sage_mp {most}w no checkpoints", "sage_mp", most, job, baseline=True
    )
    saved = Variant(
        f"sage_mp {most}w checkpoints", "sage_mp", most, job, checkpoint=True
    )
    fresh.report_first = saved.report_first = True
    workload = Workload(name, "", "speedup", [fresh, saved])
    if not checkpoints:
        workload.unavailable = NOT_AVAILABLE
    return workload


class Bench:
    """One invocation of the suite: plans, runs and summarizes."""

    def __init__(self, args: argparse.Namespace, suite: Path) -> None:
        self.args = args
        self.suite = suite
        self.prefixes = (W.RESULT_PREFIX, W.FIRST_RECORD_PREFIX)
        version = None if args.no_bytewax else bytewax_version()
        self.notes: list[str] = []
        if version is not None and version != BYTEWAX_VERSION:
            self.notes.append(
                f"Bytewax {version} is installed; the flows are written for "
                f"{BYTEWAX_VERSION}, so its runs were skipped"
            )
            version = None
        self.bytewax = version
        self.checkpoints = checkpoints_supported()
        self.loops = 0
        self.burn_s = 0.0
        self.workloads: list[Workload] = []
        self.started = datetime.datetime.now(datetime.timezone.utc)

    # -- running

    def run(self) -> None:
        if "heavy" in self.args.only:
            if self.args.settle:
                wait_until_quiet(self.args.settle)
            self.loops, self.burn_s = W.calibrate_loops()
            _progress(
                f"heavy: {self.loops} loops of burn() cost {self.burn_s * 1e6:.1f} us"
            )
        for name in self.args.only:
            workload = plan_workload(
                name, self.args.workers, self.bytewax is not None, self.checkpoints
            )
            workload.description = DESCRIPTIONS[name].format(**self._sizes())
            self.workloads.append(workload)
            if workload.unavailable:
                print(f"{name}: {workload.unavailable}")
                continue
            for rep in range(self.args.repeat):
                for variant in workload.variants:
                    self._run_once(workload, variant, rep)

    def _sizes(self) -> dict[str, Any]:
        w, size = W, self.args.size
        return {
            "light": w.scaled(w.LIGHT_EVENTS, size, 100),
            "keys": w.scaled(w.LIGHT_KEYS, size, 10),
            "heavy": w.scaled(w.HEAVY_EVENTS, size, 100),
            "latency": w.latency_count(size),
            "memory": w.scaled(w.MEMORY_EVENTS, size, 100),
            "big": w.scaled(w.BIG_STATE_KEYS, size, 100),
            "startup": w.STARTUP_EVENTS,
            "burn_us": self.burn_s * 1e6 or 20,
        }

    def _run_once(self, workload: Workload, variant: Variant, rep: int) -> None:
        where = f"[{workload.name}] {variant.label} run {rep + 1}/{self.args.repeat}"
        if not variant.checkpoint:
            result = self._launch(variant)
            variant.launches.append(result)
            _progress(f"{where}: {_launch_text(result)}")
            return
        directory = tempfile.mkdtemp(prefix="sage_mp-bench-")
        try:
            result = self._launch(variant, directory)
            variant.launches.append(result)
            _progress(f"{where}: {_launch_text(result)}")
            if result.error is None:
                resumed = self._launch(variant, directory, extra=RESUME_EXTRA)
                variant.resumes.append(resumed)
                _progress(f"{where} resumed: {_launch_text(resumed)}")
        finally:
            shutil.rmtree(directory, ignore_errors=True)

    def _launch(
        self, variant: Variant, checkpoint_dir: str | None = None, extra: int = 0
    ) -> Launch:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            part for part in (str(self.suite), env.get("PYTHONPATH", "")) if part
        )
        env.pop("SAGE_MP_PROFILE_DIR", None)
        commands = self._commands(variant, checkpoint_dir, extra)
        if self.args.settle:
            load = wait_until_quiet(self.args.settle)
            if load >= 0.3:
                _progress(f"other processes still use {load:.1f} cores; running anyway")
        interval = 0.02 if variant.job == "memory" else 0.1
        return launch(
            commands,
            cwd=self.suite,
            env=env,
            timeout=self.args.timeout,
            prefixes=self.prefixes,
            sample_interval=interval,
        )

    def _commands(
        self, variant: Variant, checkpoint_dir: str | None, extra: int
    ) -> list[list[str]]:
        """The command line(s) of one run, as a user would type them."""
        common = [
            variant.job,
            "--size",
            repr(self.args.size),
            "--loops",
            str(self.loops),
        ]
        if variant.engine == "plain":
            script = [sys.executable, str(self.suite / "plain_job.py"), *common]
            count = variant.workers or 1
            if count == 1:
                return [script]
            return [[*script, "--shard", f"{i}/{count}"] for i in range(count)]
        if variant.engine == "pool":
            script = str(self.suite / "pool_job.py")
            return [
                [sys.executable, script, *common, "--processes", str(variant.workers)]
            ]
        if variant.engine == "bytewax":
            return self._bytewax_commands(variant)
        workers = ["--workers", str(variant.workers)] if variant.workers else []
        script = str(self.suite / "sage_job.py")
        # After "--" every word is the script's own, even those that
        # `run` also takes: the script needs the worker count for its
        # sink's parallelism, and sets up checkpoints as a user would.
        command = [sys.executable, "-m", "sage_mp", "run", *workers, script, "--"]
        command += [*common, *workers]
        if checkpoint_dir:
            command += ["--checkpoint-dir", checkpoint_dir]
        if extra:
            command += ["--extra", str(extra)]
        if variant.report_first:
            command.append("--report-first")
        return [command]

    def _bytewax_commands(self, variant: Variant) -> list[list[str]]:
        flow = f"bytewax_flow:build({variant.job!r}, {self.args.size!r}, {self.loops})"
        base = [sys.executable, "-m", "bytewax.run", flow]
        processes = variant.workers or 1
        if processes == 1:
            return [base]
        addresses = ";".join(f"127.0.0.1:{port}" for port in _free_ports(processes))
        return [[*base, "-i", str(i), "-a", addresses] for i in range(processes)]

    # -- summarizing

    def summary(self) -> dict[str, Any]:
        """Everything measured, summarized, as one JSON-ready dict."""
        workloads = [report.summarize_workload(w) for w in self.workloads]
        return {
            "meta": {
                "date": self.started.isoformat(timespec="seconds"),
                "machine": machine_info(),
                "sage_mp": _sage_mp_version(),
                "bytewax": self.bytewax,
                "checkpoints": self.checkpoints,
                "size": self.args.size,
                "repeat": self.args.repeat,
                "workers": self.args.workers,
                "heavy_loops": self.loops,
                "heavy_burn_us": round(self.burn_s * 1e6, 2),
                "notes": self.notes,
            },
            "workloads": workloads,
            "targets": report.evaluate_targets(workloads, self.args.workers),
        }


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _compile_bytecode() -> None:
    """Write sage_mp's bytecode cache before any run is measured.

    An installed wheel has it from install time, as Bytewax does here;
    an editable install under PYTHONDONTWRITEBYTECODE would otherwise
    compile every module again in every measured run.
    """
    compileall.compile_dir(
        str(Path(sage_mp.__file__).resolve().parent), quiet=1, workers=1
    )


def _sage_mp_version() -> str:
    """The version, the commit if the package is a git checkout, and where."""
    where = Path(sage_mp.__file__).resolve().parent
    commit = subprocess.run(
        ["git", "-C", str(where), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    dirty = ""
    if commit:
        status = subprocess.run(
            ["git", "-C", str(where), "status", "--porcelain", "--", "."],
            capture_output=True,
            text=True,
            check=False,
        ).stdout
        dirty = "+changes" if status.strip() else ""
    version = (
        f"{sage_mp.__version__} ({commit}{dirty})" if commit else sage_mp.__version__
    )
    return f"{version} from {where}"


def _progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _launch_text(result: Launch) -> str:
    if result.error:
        return f"FAILED ({result.error})"
    text = f"job {result.job_s:.2f} s, in-process {result.run_s:.2f} s"
    if result.other_cores >= report.BUSY_CORES:
        text += f" (other processes used {result.other_cores:.1f} cores)"
    return text
