"""Job metrics: snapshots of a running job, and busy time per operator.

Two halves, one per kind of process:

* In the driver's process, :class:`JobWatch` turns a running
  :class:`~sage_mp._driver.Driver` into snapshot dicts. It reads the
  counters that the driver thread updates once per tick (plain ints,
  read without locks: a snapshot may mix values one tick apart) and the
  worker processes' CPU and memory through psutil. The live progress
  line, the ``--metrics`` file and the final line all come from these
  snapshots. It runs on a thread of its own and never makes the driver
  thread wait.
* In a worker, :class:`OperatorSampler` splits each stage's measured
  busy time between the operators chained in that stage.

Nothing in this module runs per record.

Snapshot fields (one JSON object per line of the ``--metrics`` file):

``time``            Unix time of the snapshot.
``job``             The job's name.
``state``           ``running``, ``finished``, ``stopped`` or ``failed``.
``final``           ``true`` only on the job's last line.
``elapsed``         Seconds since the job started.
``records_in``      Source records read, including those read before
                    the checkpoint a resumed job started from.
``records_out``     Source records that have left the pipeline: every
                    record derived from them has passed the last
                    stage. ``records_in - records_out`` are inside.
``rate``            ``records_out`` per second over the last 5 s.
``total``           Records the source will produce, if it says so
                    (``total`` attribute), else ``null``.
``progress``        ``records_out / total`` (0..1), or ``null``.
``eta``             Seconds left at the current rate, or ``null``.
``ticks_in_flight`` Ticks sent by the source and not yet through the
                    pipeline; at most ``window``.
``window``          The most ticks allowed in flight (backpressure).
``backpressure``    ``ticks_in_flight / window``: near 1 means the
                    source waits for the pipeline.
``workers``         Per worker: ``worker``, ``pid``, ``cpu_percent``
                    (since the previous snapshot; 100 is one core;
                    ``null`` on the first), ``cpu`` (CPU seconds so
                    far) and ``rss`` (bytes); ``null`` once the worker
                    process has exited.
``checkpointing``   Whether the job takes checkpoints.
``checkpoints``     Checkpoints committed by this run.
``last_checkpoint`` ``id``, ``tick``, ``bytes``, ``duration`` (s) and
                    ``age`` (s since it committed) of the newest
                    committed checkpoint, or ``null``.
``restarts``        Restarts from a checkpoint after a worker died.
``skipped``         Records skipped under the skip policy.
``result``          Final line of a job that did not fail only: the
                    :meth:`JobResult.to_dict` figures (per operator,
                    per worker, checkpoint summary, throughput).
"""

from __future__ import annotations

import functools
import sys
import threading
import time
from collections import deque
from typing import Any

from . import _stage

__all__ = ["JobWatch", "OperatorSampler", "operator_busy", "running_operator"]

# Rates are measured over this many seconds: long enough to smooth
# tick-sized steps, short enough to follow a source that slows down.
_RATE_SPAN = 5.0


class JobWatch:
    """Reads one driver's counters from another thread."""

    def __init__(self, driver: Any) -> None:
        self.driver = driver
        self._procs: dict[int, Any] = {}
        self._marks: deque[tuple[float, int]] = deque()
        self._out = 0

    def snapshot(self, final: bool = False, result: Any = None) -> dict[str, Any]:
        """Return the job's figures now; ``result`` is its JobResult, if any."""
        driver = self.driver
        now = time.monotonic()
        elapsed = time.perf_counter() - driver.started_at
        records_in, records_out, in_flight = self._progress()
        rate = self._rate(now, records_out, elapsed)
        total = getattr(getattr(driver, "source", None), "total", None)
        if not isinstance(total, int) or total <= 0:
            total = None
        window = driver.options.in_flight
        snap: dict[str, Any] = {
            "time": time.time(),
            "job": driver.name,
            "state": _job_state(driver),
            "final": final,
            "elapsed": elapsed,
            "records_in": records_in,
            "records_out": records_out,
            "rate": rate,
            "total": total,
            "progress": min(1.0, records_out / total) if total else None,
            "eta": _eta(total, records_out, rate),
            "ticks_in_flight": in_flight,
            "window": window,
            "backpressure": min(1.0, in_flight / window),
            "workers": self._workers(),
            "restarts": driver.restarts,
            "skipped": driver._skipped,
            "checkpointing": driver.coordinator is not None,
            **_checkpoints(driver),
        }
        if result is not None and snap["state"] != "failed":
            snap["result"] = result.to_dict()

        return snap

    def _progress(self) -> tuple[int, int, int]:
        driver = self.driver
        sent = driver._ticks_sent
        records = driver._records
        final = getattr(driver, "final", None)
        done = sent if final is None else final.next_tick
        sizes = driver.tick_sizes
        in_flight = max(0, sent - done)
        if in_flight >= len(sizes):
            # Read in the middle of a restart: the counters belong to
            # two runs. Keep the last good figure.
            return records, min(self._out, records), 0
        inside = sum(sizes[tick % len(sizes)] for tick in range(done, sent))
        out = max(0, records - inside)
        if final is not None and final.finished:
            out = records
        self._out = out
        return records, out, in_flight

    def _rate(self, now: float, out: int, elapsed: float) -> float:
        marks = self._marks
        marks.append((now, out))
        while len(marks) > 2 and now - marks[1][0] >= _RATE_SPAN:
            marks.popleft()
        then, before = marks[0]
        if now - then < 0.2:
            # No earlier snapshot yet: the average since the start.
            return out / elapsed if elapsed > 0.2 else 0.0
        return max(0.0, (out - before) / (now - then))

    def _workers(self) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        if self.driver.finished.is_set():
            # The job is over and its workers are reaped: nothing to
            # sample, and importing psutil would only add to its time.
            for index, pid in enumerate(self.driver.worker_pids):
                row = {"worker": index, "pid": pid}
                rows.append({**row, "cpu_percent": None, "cpu": None, "rss": None})
            return rows
        import psutil

        for index, pid in enumerate(list(self.driver.worker_pids)):
            row = {"worker": index, "pid": pid}
            handle = self._procs.get(pid)
            try:
                first = handle is None
                if handle is None:
                    handle = self._procs[pid] = psutil.Process(pid)
                with handle.oneshot():
                    # psutil measures from the previous call: the first
                    # one has nothing to compare with.
                    percent = handle.cpu_percent(None)
                    row["cpu_percent"] = None if first else percent
                    times = handle.cpu_times()
                    row["cpu"] = times.user + times.system
                    row["rss"] = handle.memory_info().rss
            except (psutil.Error, ValueError, TypeError):
                # The worker is gone (finished, killed, restarting).
                row.update(cpu_percent=None, cpu=None, rss=None)
            rows.append(row)

        return rows


def _job_state(driver: Any) -> str:
    if not driver.finished.is_set():
        return "running"
    if driver._failure is not None:
        return "failed"
    return "stopped" if driver._stop.is_set() else "finished"


def _eta(total: int | None, done: int, rate: float) -> float | None:
    if not total or rate <= 0:
        return None
    return max(0.0, (total - done) / rate)


def _checkpoints(driver: Any) -> dict[str, Any]:
    coordinator = driver.coordinator
    history = list(coordinator.history) if coordinator is not None else []
    last = None
    if history:
        entry = history[-1]
        committed = entry["time"] + entry["duration"]
        last = {
            "id": entry["id"],
            "tick": entry["tick"],
            "bytes": entry["bytes"],
            "duration": entry["duration"],
            "age": max(0.0, time.time() - committed),
        }
    return {"checkpoints": len(history), "last_checkpoint": last}


# --- in a worker: busy time per operator ----------------------------------


class OperatorSampler:
    """Splits each stage's busy time between its operators.

    A stage instance measures its busy time per tick (two clock reads a
    tick). The operators chained in the stage share that time one
    record after another, and timing each call would cost two clock
    reads per record per operator. Instead, while the worker processes
    a stage, a daemon thread looks at the worker thread's stack now and
    then (see below) and notes which operator is running
    (:func:`running_operator`).
    An operator's busy time is then its stage's busy time times its
    share of the samples. Work of the stage that belongs to no operator
    (merging input, pickling output) is spread in the same proportions.

    Stages with a single operator need no sampling, and no thread is
    started when every stage of the worker is one. Each sample costs a
    GIL switch, and on a machine whose cores the workers fill, the
    thread's wake-ups take CPU from them: sampling every 10 ms all the
    time made a 2-worker heavy benchmark job 2% slower (8 alternating
    rounds). So the first ``FAST_SAMPLES`` samples, enough to split a
    short job's time, come every ``INTERVAL``; later ones every
    ``SLOW_INTERVAL``, which still gives a long job thousands.
    """

    INTERVAL = 0.01
    FAST_SAMPLES = 50
    SLOW_INTERVAL = 0.05

    def __init__(self, stages: dict[int, Any]) -> None:
        #: The stage the worker is stepping; set by the worker loop.
        self.stage: Any = None
        self._stages = stages
        self._places = {
            index: {name: place for place, name in enumerate(_targets(stage))}
            for index, stage in stages.items()
        }
        self._samples = {index: [0] * len(p) for index, p in self._places.items()}
        self._ident = threading.get_ident()
        self._halt = threading.Event()
        self._thread: threading.Thread | None = None
        if any(len(places) > 1 for places in self._places.values()):
            self._thread = threading.Thread(
                target=self._run, name="sage_mp-operator-sampler", daemon=True
            )

    def start(self) -> None:
        if self._thread is not None:
            self._thread.start()

    def stop(self) -> None:
        self._halt.set()
        if self._thread is not None and self._thread.is_alive():
            self._thread.join(1.0)

    def _run(self) -> None:
        taken = 0
        interval = self.INTERVAL
        while not self._halt.wait(interval):
            self._sample()
            taken += 1
            if taken == self.FAST_SAMPLES:
                interval = self.SLOW_INTERVAL

    def _sample(self) -> None:
        stage = self.stage
        if stage is None:
            return
        places = self._places.get(stage.index)
        if places is None or len(places) < 2:
            return
        # Reading another thread's frame locals is safe under the GIL;
        # the frames read here are the engine's own, without cells.
        name = running_operator(sys._current_frames().get(self._ident))
        place = places.get(name) if name is not None else None
        if place is not None:
            self._samples[stage.index][place] += 1

    def busy(self) -> dict[str, float]:
        """Busy seconds per operator of this worker (see the class doc)."""
        return operator_busy(list(self._stages.values()), self._samples)


def operator_busy(
    stages: list[Any], samples: dict[int, list[int]] | None = None
) -> dict[str, float]:
    """Split each stage's busy time between its operators by ``samples``.

    A stage without samples for its operators (one operator, or a run
    too short to sample) splits by the records each operator took in.
    """
    out: dict[str, float] = {}
    for stage in stages:
        targets = _targets(stage)
        if not targets:
            continue
        weights = (samples or {}).get(stage.index) or [0]
        if len(targets) == 1:
            weights = [1]
        elif sum(weights) == 0:
            counts = stage.counts()
            weights = [counts.get(name, {}).get("in", 0) for name in targets]
        if sum(weights) == 0:
            weights = [1] * len(targets)
        whole = sum(weights)
        for name, weight in zip(targets, weights, strict=True):
            out[name] = out.get(name, 0.0) + stage.busy * weight / whole

    return out


# The file name _chain.compile_chain gives the loops it compiles; the
# loop keeps the position of the operator it is calling in ``at`` and
# the operators' node objects in its globals as ``_node<position>``.
_CHAIN_FILE = "<sage_mp chain>"


@functools.cache
def _push_codes() -> tuple[frozenset[Any], frozenset[Any]]:
    """Code objects of the operator nodes' and of the tails' ``push``."""
    operators = frozenset(cls.push.__code__ for cls in _stage._NODES.values())
    tails: list[Any] = [_stage._Emitter, *_subclasses(_stage._Emitter)]
    return operators, frozenset(cls.push.__code__ for cls in tails)


def running_operator(frame: Any) -> str | None:
    """Name of the operator that the stack from ``frame`` is running.

    The innermost engine frame decides: a node's ``push`` (a flatmap's
    ``collect`` runs the rest of the chain through node objects), a
    tail's ``push`` (a keyby's key extractor; other tails only route
    records, which is the engine's work) or a compiled chain loop.
    ``None`` outside any operator.
    """
    operators, tails = _push_codes()
    while frame is not None:
        code = frame.f_code
        if code in operators:
            return _name_of(frame.f_locals.get("self"))
        if code in tails:
            return _keyby_name(frame.f_locals.get("self"))
        if code.co_filename == _CHAIN_FILE:
            at = frame.f_locals.get("at")
            node = frame.f_globals.get(f"_node{at}")
            if node is not None:
                return _name_of(node)
            tail = frame.f_globals.get("_tail")
            return _keyby_name(getattr(tail, "__self__", None))
        frame = frame.f_back
    return None


def _name_of(owner: Any) -> str | None:
    name = getattr(owner, "name", None)
    return name if isinstance(name, str) else None


def _keyby_name(emitter: Any) -> str | None:
    return _name_of(emitter) if getattr(emitter, "extract", None) else None


def _targets(stage: Any) -> list[str]:
    """Names of a stage's operators in chain order, as counts() has them."""
    names = [node.name for node in stage.nodes]
    emitter = stage.emitter
    if emitter is not None and emitter.extract is not None:
        names.append(emitter.name)
    return names


def _subclasses(cls: Any) -> list[Any]:
    found: list[Any] = []
    for sub in cls.__subclasses__():
        found += [sub, *_subclasses(sub)]
    return found
