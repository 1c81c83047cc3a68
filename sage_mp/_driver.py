"""The driver: forks the workers, runs the source, and supervises.

The driver owns the job's lifecycle. It polls the source and deals the
records out in numbered ticks (tick ``t`` to worker ``t % N``), keeps
at most ``window`` ticks in flight so that a fast source cannot make
memory grow, runs the single-instance sink as the final stage, and
turns every way a job can end (end of stream, stop, Ctrl-C, a user
error, a dead worker) into workers that are gone and a clear result or
exception. It does no per-record work besides polling the source and
the final stage.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import operator
import os
import re
import resource
import signal
import sys
import threading
import time
from array import array
from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import compress, count, repeat
from typing import Any, cast

import multiprocess

from . import _protocol as P
from ._checkpoint import (
    CheckpointConfig,
    Coordinator,
    RestorePoint,
    StageState,
    WorkerCheckpointing,
    fingerprint,
    lock_directory,
    open_directory,
    plain_values,
    purge_uncommitted,
    sum_counts,
    worker_store,
)
from ._logs import emit_forwarded
from ._metrics import operator_busy
from ._plan import Plan, StagePlan
from ._snapshot import Batch, RecordNotPicklable, freeze_into, thaw
from ._stage import (
    StageFailure,
    StageInstance,
    read_slice,
    short_repr,
    user_traceback,
)
from ._store import Store
from ._transport import DRIVER, PipeSet
from ._worker import WorkerOptions, run_worker
from .errors import (
    CheckpointError,
    FailureReport,
    JobFailed,
    UserFunctionError,
    WorkerDied,
)
from .functions import CollectionSource, StopSignal

__all__ = ["Driver", "JobResult", "RunOptions"]

log = logging.getLogger(__name__)


@dataclass
class RunOptions:
    """Engine settings of one job (see LocalEnvironment for meanings)."""

    workers: int
    batch_size: int = 1000
    linger: float = 0.005
    window: int = 0  # 0: 4 ticks per worker, at least 8
    error_policy: str = "fail"
    dead_letter_path: str | None = None
    checkpoint: CheckpointConfig | None = None

    @property
    def in_flight(self) -> int:
        return self.window or max(8, 4 * self.workers)


@dataclass
class JobResult:
    """What a finished job did. Returned by ``submit(autostop=True)``."""

    name: str
    workers: int
    wall_time: float
    records: int
    operators: dict[str, dict[str, Any]] = field(default_factory=dict)
    worker_stats: list[dict[str, Any]] = field(default_factory=list)
    skipped: int = 0
    dead_letter_path: str | None = None
    stopped: bool = False
    checkpoints: list[dict[str, Any]] = field(default_factory=list)
    restarts: int = 0
    resumed_from: int | None = None
    #: Operator name -> source, map, filter, flatmap, keyby or sink.
    operator_kinds: dict[str, str] = field(default_factory=dict)
    #: Operator name -> busy seconds summed over its instances (None
    #: for the source); what the figure means: :mod:`sage_mp._report`.
    operator_busy: dict[str, float | None] = field(default_factory=dict)
    #: CPU seconds of the driver thread and peak RSS (bytes) of the
    #: driver's whole process.
    driver_stats: dict[str, Any] = field(default_factory=dict)

    @property
    def throughput(self) -> float:
        """Source records per second of wall time."""
        return self.records / self.wall_time if self.wall_time > 0 else 0.0

    @property
    def records_out(self) -> int:
        """Records that reached the pipeline's sinks."""
        from ._report import records_out

        return records_out(self)

    @property
    def checkpoint_stats(self) -> dict[str, Any]:
        """Count, median and max duration (s) and size (bytes) of checkpoints."""
        from ._report import checkpoint_stats

        return checkpoint_stats(self.checkpoints)

    def report(self) -> str:
        """The end-of-run report that ``python -m sage_mp run`` prints."""
        from ._report import format_report

        return format_report(self)

    def to_dict(self) -> dict[str, Any]:
        """Every figure of the result as JSON-ready values."""
        from ._report import result_dict

        return result_dict(self)

    def __str__(self) -> str:
        lines = [
            f"job {self.name!r}: {self.records} records in "
            f"{self.wall_time:.2f} s on {self.workers} workers "
            f"({self.throughput:,.0f} records/s)"
        ]
        for name, counts in self.operators.items():
            lines.append(
                f"  {name:<24} in {counts['in']:>10}  out {counts['out']:>10}"
                + (f"  skipped {counts['skipped']}" if counts.get("skipped") else "")
            )
        if self.skipped:
            lines.append(
                f"  {self.skipped} records skipped; dead letters in "
                f"{self.dead_letter_path}"
            )
        return "\n".join(lines)


_LIVE: set[Driver] = set()
_LIVE_LOCK = threading.Lock()


def live_drivers() -> list[Driver]:
    """The jobs of this process that have not ended, oldest first."""
    with _LIVE_LOCK:
        return sorted(_LIVE, key=lambda driver: driver.started_at)


class Driver:
    """Runs one job. ``start()`` forks; ``run()`` blocks until the end."""

    def __init__(self, name: str, plan: Plan, options: RunOptions) -> None:
        self.name = name
        self.plan = plan
        self.options = options
        self.workers = options.workers
        self._stop = threading.Event()
        self._procs: list[Any] = []
        #: Start of this job's profile file names, when profiled.
        self._profile_prefix: str | None = None
        # Held while worker processes are killed, joined or closed:
        # abort() may run in another thread while the job cleans up.
        self._procs_lock = threading.RLock()
        self.worker_pids: list[int] = []
        self._done: dict[int, dict[str, Any]] = {}
        self._failure: BaseException | None = None
        self._dead_file: Any = None
        #: The descriptor that holds the checkpoint directory's lock.
        self._directory_lock: int | None = None
        self._dead_start = 0  # where this run's letters begin in that file
        self._skipped = 0
        self._records = 0
        self._ticks_sent = 0
        self._source_done = False
        self._next_poll = 0.0
        self.started_at = 0.0
        self.finished = threading.Event()
        self.coordinator: Coordinator | None = None
        self.restore: RestorePoint | None = None
        self.resumed_from: int | None = None
        self.restarts = 0
        self._aborted = False
        # Records per tick for the last ticks in flight, indexed by tick
        # modulo its length: lets a monitor thread count the records
        # still inside the pipeline without a lock (see _metrics).
        self.tick_sizes = [0] * (options.in_flight + 2)
        #: Who reads and routes a sliceable collection: None (the
        #: source sends records), "driver", "dealt" or "every" (see
        #: scan_mode).
        self._scan = scan_mode(plan, self.workers)
        #: Where the collection's None items are, when only the workers
        #: read it (see _send_range); found in start(), before the fork.
        self._nones: Sequence[int] = ()
        if self._scan in ("dealt", "every"):
            every = self._scan == "every"
            self.plan = plan = plan_with_head_on_workers(plan, every)

    # -- lifecycle

    def start(self) -> None:
        """Prepare checkpoints and fork the workers, in the calling thread."""
        self.started_at = time.perf_counter()
        try:
            self._start()
        except BaseException:
            # Nothing may stay behind: forked workers, the checkpoint
            # store, the directory's lock.
            self._kill()
            self._cleanup()
            raise

    def _start(self) -> None:
        config = self.options.checkpoint
        if config is not None:
            self._directory_lock = lock_directory(config.directory, self.name)
            manifest = open_directory(config, fingerprint(self.plan), self.name)
            self.coordinator = Coordinator(config, manifest, self.workers)
            self.restore = self.coordinator.restore_point()
            if self.restore is not None:
                self.resumed_from = self.restore.checkpoint
                log.info(
                    "job %r resumes from checkpoint %s (tick %s, written by "
                    "%s workers)",
                    self.name,
                    self.restore.checkpoint,
                    self.restore.tick,
                    self.restore.workers,
                )
                if self.restore.workers > self.workers:
                    log.warning(
                        "rescaling from %s to %s workers: attributes that are "
                        "not keyed state of workers %s..%s are dropped",
                        self.restore.workers,
                        self.workers,
                        self.workers,
                        self.restore.workers - 1,
                    )
        if self._scan in ("dealt", "every"):
            self._nones = none_positions(self.plan.source.args[0])
        with _LIVE_LOCK:
            _LIVE.add(self)
        self._fork()

    def _fork(self) -> None:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (AttributeError, ValueError):
                pass
        checkpointing = None
        if self.coordinator is not None:
            head_plain = {}
            if self.restore is not None and not self.plan.stages[0].at_head:
                # Stage 0 may have run in the driver when the restored
                # checkpoint was written (see scan_mode).
                store = self.coordinator.store
                head_plain = self._plain_of(store, self.plan.stages[0])
            checkpointing = WorkerCheckpointing(
                self.options.checkpoint.directory,  # type: ignore[union-attr]
                self.restore,
                self.coordinator.horizon,
                *_test_hooks(),
                head_plain=head_plain,
            )
        options = WorkerOptions(
            self.name,
            self.options.error_policy == "skip",
            checkpointing,
            scan=self._scan is not None,
            profile=self._worker_profile(),
        )
        pipes = PipeSet(self.workers)
        context = multiprocess.get_context("fork")
        self._procs = []
        for me in range(self.workers):
            proc = context.Process(
                target=_worker_main,
                args=(pipes, me, self.plan, options),
                name=f"sage_mp-{self.name}-w{me}",
            )
            proc.start()
            self._procs.append(proc)
        self.worker_pids = [proc.pid for proc in self._procs]
        self.endpoint = pipes.endpoint(DRIVER)

    def _worker_profile(self) -> str | None:
        """The profile path pattern for the workers about to be forked."""
        profile_dir = os.environ.get(PROFILE_DIR_ENV)
        if not profile_dir:
            return None
        if self._profile_prefix is None:
            self._profile_prefix = profile_prefix(profile_dir, self.name)
        # Workers forked again after a recovery keep their own files.
        again = f".restart-{self.restarts}" if self.restarts else ""
        return self._profile_prefix + "worker-{me}" + again + ".prof"

    def stop(self) -> None:
        """Ask the job to end its stream now and finish cleanly."""
        self._stop.set()

    def abort(self) -> None:
        """Kill the workers now; the job fails. Safe from any thread."""
        self._aborted = True
        self._stop.set()
        self._kill()

    def run(self) -> JobResult:
        """Drive the job to its end; kill every worker on any failure."""
        if self._profile_prefix is not None:
            return _profiled(self._run_job, self._profile_prefix + "driver.prof")
        return self._run_job()

    def _run_job(self) -> JobResult:
        self._cpu_at_start = time.thread_time()
        try:
            while True:
                try:
                    self._run()
                    break
                except WorkerDied as died:
                    self._recover(died)
        except BaseException as err:
            self._failure = err
            self._kill()
            raise
        finally:
            self._cleanup()
        return self._result()

    def _run(self) -> None:
        self._open()
        while not self._source_done:
            self._service(0)
            self._wait_for_window()
            if self.coordinator is not None and self.coordinator.due():
                self._begin_checkpoint()
            self._pump_tick()
        if self.coordinator is not None:
            # A finite stream ends with a checkpoint, so that a rerun
            # resumes after the last record instead of replaying it.
            while self.coordinator.pending is not None:
                self._service(0.1)
            latest = self.coordinator.manifest.latest()
            if (
                latest is None
                or latest["tick"] != self._ticks_sent
                or latest["workers"] != self.workers
            ):
                self._begin_checkpoint()
        self._end_stream()
        while not (self.final.finished and len(self._done) == self.workers):
            self._service(0.5)
        while self.coordinator is not None and self.coordinator.pending is not None:
            self._service(0.1)
        # The final stage's own messages (dead letters of the driver's
        # sink) wait in the endpoint until the next receive.
        self._service(0)
        self._join()

    def _recover(self, died: WorkerDied) -> None:
        """Restart every worker from the last committed checkpoint."""
        config = self.options.checkpoint
        if self.coordinator is None or config is None or self._aborted:
            raise died
        if self.restarts >= config.max_restarts:
            raise WorkerDied(
                f"{died}\nthe job already restarted {self.restarts} times "
                f"(max_restarts={config.max_restarts}); giving up. The last "
                f"committed checkpoint in {config.directory!r} is intact: "
                "fix the cause and run the job again to resume"
            ) from died
        self.restarts += 1
        self._kill()
        self._release_processes()
        self.endpoint.close()
        self.coordinator.pending = None
        self.restore = self.coordinator.restore_point()
        # The new processes count from zero; the counts at the restored
        # checkpoint stand for the work before it. A checkpoint that an
        # earlier run wrote stands for none of this run's work.
        committed = self.coordinator.committed_counts
        self.coordinator.base_counts = {}
        if committed is not None and self.restore is not None:
            if committed[0] == self.restore.checkpoint:
                self.coordinator.base_counts = committed[1]
        self._drop_replayed_letters(self.restore.tick if self.restore else 0)
        purge_uncommitted(config.directory, self.restore, self.coordinator.store)
        log.warning(
            "%s; restart %s of %s from checkpoint %s",
            died,
            self.restarts,
            config.max_restarts,
            self.restore.checkpoint if self.restore else "(none: from the start)",
        )
        # TODO: The old source is dropped without close(), since close()
        # means "end of stream" to the user's code; a separate hook for
        # "this instance is abandoned" would let sources free resources.
        self._done = {}
        self._source_done = False
        self._next_poll = 0.0
        self._fork()

    def _open(self) -> None:
        plan = self.plan
        from .context import RuntimeContext

        try:
            self.source = plan.source.instantiate()
        except Exception as err:
            raise self._source_error(err, "init") from err
        self.source.ctx = RuntimeContext(plan.source.name, -1, 1, None, self.name)
        skip = self.options.error_policy == "skip"
        hook = self._on_driver_barrier if self.coordinator is not None else None
        self.head: StageInstance | None = None
        if plan.stages[0].at_head:
            self.head = StageInstance(
                plan.stages[0],
                None,
                plan.stages[1],
                DRIVER,
                self.workers,
                self.endpoint.send,
                job_name=self.name,
                skip_errors=skip,
                on_barrier=hook,
            )
            self.head.producer = plan.source.name
        self.final = StageInstance(
            plan.driver_stage,
            plan.stages[-2],
            None,
            DRIVER,
            self.workers,
            self.endpoint.send,
            job_name=self.name,
            skip_errors=skip,
            on_barrier=hook,
        )
        self._source_state = StageState([(plan.source.name, self.source)], False)
        driver_stages = [s for s in (self.head, self.final) if s is not None]
        for stage in driver_stages:
            functions = [(spec.name, fn) for spec, fn in stage.functions]
            stage.tracker = StageState(functions, keyed=False)
        self._ticks_sent = 0
        self._records = 0
        # Records sent before a barrier's or the end's tick, counted from
        # this run's first tick, with the sum of their positions in the
        # collection; what each worker said it kept of them; the last
        # tick whose counts added up (see P.KEPT).
        self._sent_at = 0
        self._sent_before: dict[int, tuple[int, int]] = {}
        self._kept: dict[int, dict[int, tuple[int, int]]] = {}
        self._kept_checked = -1
        if self.restore is not None:
            self._restore_driver(driver_stages)
        self._records_at_open = self._records
        try:
            self.source.open()
        except Exception as err:
            raise self._source_error(err, "open") from err
        try:
            for stage in driver_stages:
                stage.open()
        except StageFailure as failure:
            raise UserFunctionError(failure.report) from None
        self._take = getattr(self.source, "take", None)
        self._delay = plan.source.delay

    def _restore_driver(self, stages: list[StageInstance]) -> None:
        point = self.restore
        assert point is not None and self.coordinator is not None
        store = self.coordinator.store
        self._source_state.restore([store], store, point, range(0))
        # The head may have run on worker 0 when ``point`` was written
        # (see scan_mode); its non-keyed attributes are then there.
        path = os.path.join(self.coordinator.config.directory, worker_store(0))
        head_plain = {}
        if self.head is not None and os.path.isdir(path):
            worker0 = Store(path, True)
            try:
                head_plain = self._plain_of(worker0, self.plan.stages[0])
            finally:
                worker0.close()
        for stage in stages:
            fallback = head_plain if stage is self.head else None
            stage.tracker.restore([store], store, point, range(0), fallback)
            stage.start_at(point.tick, point.checkpoint)
            stage.tracker.dirty = set()
        self._ticks_sent = point.tick
        entry = self.coordinator.manifest.latest() or {}
        self._records = int(entry.get("records", 0))

    def _plain_of(
        self, store: Store, stage: StagePlan
    ) -> dict[str, list[tuple[str, bytes]]]:
        """What ``store`` holds of ``stage``'s non-keyed attributes."""
        assert self.restore is not None
        checkpoint = self.restore.checkpoint
        return {
            spec.name: plain_values(store, spec.name, checkpoint)
            for spec in stage.specs
        }

    # -- checkpoints

    def _begin_checkpoint(self) -> None:
        coordinator = self.coordinator
        assert coordinator is not None
        tick = self._ticks_sent
        checkpoint = coordinator.begin(tick, self._capture(self._source_state))
        coordinator.pending["records"] = self._records  # type: ignore[index]
        self._note_sent(tick)
        if self.head is not None:
            self.head.barrier(checkpoint, tick)
        else:
            for worker in range(self.workers):
                self.endpoint.send(worker, (P.BARRIER, 0, checkpoint, tick))

    def _on_driver_barrier(self, stage: StageInstance, checkpoint: int) -> None:
        assert self.coordinator is not None
        self.coordinator.add_driver_parts(
            checkpoint, self._capture(stage.tracker), stage.counts()
        )

    def _capture(self, state: StageState) -> tuple[Any, Any]:
        try:
            return state.capture()
        except CheckpointError:
            raise
        except Exception as err:  # noqa: BLE001 - named for the user
            raise CheckpointError(f"capturing driver state failed: {err}") from err

    def _maybe_commit(self) -> None:
        coordinator = self.coordinator
        if coordinator is None:
            return
        expected = 2 if self.head is not None else 1
        if not coordinator.ready(expected):
            return
        entry = coordinator.commit()
        if entry is None:
            return
        log.info(
            "checkpoint %s committed: tick %s, %s bytes, %.3f s",
            entry["id"],
            entry["tick"],
            entry["bytes"],
            entry["duration"],
        )
        for worker in range(self.workers):
            if worker not in self._done:
                self.endpoint.send(worker, (P.COMMIT, entry["id"], coordinator.horizon))

    # -- the source

    def _pump_tick(self) -> None:
        """Poll the source for one tick's records, then send the tick."""
        if self._scan == "driver":
            self._send_slice()
            return
        if self._scan in ("dealt", "every"):
            self._send_range()
            return
        batch = Batch()
        size = self.options.batch_size
        deadline = time.monotonic() + self.options.linger
        delay = self._delay
        source = self.source
        while len(batch) < size:
            if self._stop.is_set():
                self._source_done = True
                break
            if delay:
                now = time.monotonic()
                if now < self._next_poll:
                    # Holding records is only worth it if more can join
                    # them before the linger deadline.
                    if len(batch) and (now >= deadline or self._next_poll >= deadline):
                        break
                    wake = (
                        self._next_poll
                        if not len(batch)
                        else min(self._next_poll, deadline)
                    )
                    self._service(max(0.0, wake - now))
                    continue
                self._next_poll = now + delay
            if self._take is not None:
                items = self._take(size - len(batch))
                if not items:
                    self._source_done = True
                    break
                # Collection items are the caller's objects, not live
                # state, so they travel without a per-record copy.
                batch.values += items
                continue
            try:
                # SAGE sources define execute(self) with no argument.
                record = source.execute()  # type: ignore[call-arg]
            except Exception as err:
                raise self._source_error(err, "execute") from err
            if record is None:
                if len(batch):
                    break
                if not delay:
                    self._service(0)
                continue
            if isinstance(record, StopSignal) or record is StopSignal:
                self._source_done = True
                break
            try:
                freeze_into(batch, len(batch), None, record)
            except RecordNotPicklable as err:
                raise self._unpicklable_from_source(err) from None
            if not delay and len(batch) % 64 == 0 and time.monotonic() >= deadline:
                break
        if len(batch):
            self._send_tick(batch)

    def _send_tick(self, batch: Batch) -> None:
        tick = self._ticks_sent
        self.tick_sizes[tick % len(self.tick_sizes)] = len(batch)
        self._records += len(batch)
        if self.head is None:
            message = (P.BATCH, 0, tick, None, None, batch.values, batch.frozen)
            self.endpoint.send(tick % self.workers, message)
        else:
            if batch.frozen:
                thaw(batch.values, batch.frozen)
            try:
                self.head.feed(tick, batch.values)
            except StageFailure as failure:
                raise UserFunctionError(failure.report) from None
        self._ticks_sent = tick + 1

    def _next_range(self) -> tuple[Sequence[Any], int, int] | None:
        """Advance the collection by one tick; None at its end."""
        source = self.source
        assert isinstance(source, CollectionSource)
        items = cast(Sequence[Any], source.items)
        start = source.position
        stop = min(start + self.options.batch_size, len(items))
        if start >= stop or self._stop.is_set():
            self._source_done = True
            return None
        source.position = stop
        return items, start, stop

    def _send_range(self) -> None:
        """Deal the next tick of the collection out as bounds only."""
        taken = self._next_range()
        if taken is None:
            return
        _, start, stop = taken
        records = stop - start
        at = (start + stop - 1) * records // 2
        if self._nones:
            nones = self._nones
            first, end = bisect_left(nones, start), bisect_left(nones, stop)
            records -= end - first
            at -= sum(nones[first:end])
        self._sent_at += at
        tick = self._ticks_sent
        self.tick_sizes[tick % len(self.tick_sizes)] = records
        self._records += records
        message = (P.RANGE, 0, tick, start, stop)
        if self._scan == "every":
            for worker in range(self.workers):
                self.endpoint.send(worker, message)
        else:
            self.endpoint.send(tick % self.workers, message)
        self._ticks_sent = tick + 1

    def _send_slice(self) -> None:
        """Route the next tick of the collection; send keys, not records."""
        assert self.head is not None
        taken = self._next_range()
        if taken is None:
            return
        start = taken[1]
        offsets, values = read_slice(*taken)
        tick = self._ticks_sent
        self.tick_sizes[tick % len(self.tick_sizes)] = len(values)
        self._records += len(values)
        try:
            self.head.feed_slice(tick, start, offsets, values)
        except StageFailure as failure:
            raise UserFunctionError(failure.report) from None
        self._ticks_sent = tick + 1

    def _wait_for_window(self) -> None:
        limit = self.options.in_flight
        while self._ticks_sent - self.final.next_tick >= limit:
            self._service(0.05)

    def _end_stream(self) -> None:
        try:
            self.source.close()
        except Exception as err:
            raise self._source_error(err, "close") from err
        if self.head is not None:
            self.head.end(self._ticks_sent)
            return
        self._note_sent(self._ticks_sent)
        for worker in range(self.workers):
            self.endpoint.send(worker, (P.END, 0, self._ticks_sent))

    def _source_error(self, err: Exception, phase: str) -> UserFunctionError:
        report = FailureReport(
            operator=self.plan.source.name,
            worker=-1,
            key=None,
            record=f"<during {phase}()>",
            error=f"{type(err).__name__}: {err}",
            traceback="".join(user_traceback(err)),
        )
        return UserFunctionError(report)

    def _unpicklable_from_source(self, err: RecordNotPicklable) -> UserFunctionError:
        """A source record that cannot travel: a fault of the source,
        which stops the job under either error policy, as a source's
        own exceptions do."""
        report = FailureReport(
            operator=self.plan.source.name,
            worker=-1,
            key=None,
            record="",
            error=str(err),
            traceback="",
            extra={"unpicklable": short_repr(err.record, 120), "source": True},
        )
        return UserFunctionError(report)

    # -- messages from workers

    def _service(self, timeout: float) -> None:
        for sender, message in self.endpoint.receive(timeout):
            kind = message[0]
            if kind == P.BATCH or kind == P.BARRIER or kind == P.END:
                self.final.deliver(sender, message)
            elif kind == P.KEPT:
                self._count_kept(sender, message[1], message[2], message[3])
            elif kind == P.DEAD:
                self._dead_letter(message[1])
            elif kind == P.DONE:
                self._done[sender] = message[1]
            elif kind == P.LOG:
                emit_forwarded(message[1], sender)
            elif kind == P.ACK and self.coordinator is not None:
                self.coordinator.ack(sender, message[1], message[2])
            elif kind == P.FAILED:
                raise _failure_error(message[1])
            elif kind == P.EOF_KIND and sender != DRIVER:
                if sender not in self._done:
                    raise self._worker_died(sender)
        try:
            self.final.step()
        except StageFailure as failure:
            raise UserFunctionError(failure.report) from None
        self._maybe_commit()

    def _note_sent(self, tick: int) -> None:
        """Remember how many records this run sent before ``tick``, and
        the sum of their positions in the collection."""
        if self._scan == "every":
            sent = self._records - self._records_at_open
            self._sent_before[tick] = (sent, self._sent_at)

    def _count_kept(self, worker: int, tick: int, kept: int, kept_at: int) -> None:
        """Check that the workers kept each record before ``tick`` once.

        When every worker reads every tick of a collection and keeps
        the records it owns (see ``StagePlan.reads_all``), each one runs
        the key extractor on every record: one that answers differently
        in different processes would lose or double records. Each
        worker says how many it kept at every barrier and at the end,
        before it acknowledges the barrier, and the sum of their
        positions in the collection, so such a job fails before it
        commits a checkpoint that covers a record. The count alone
        would miss the case where as many records were doubled as were
        lost (for 100 records on 2 workers, about one check in 20); the
        sum of positions must match too.
        """
        if tick <= self._kept_checked:
            return  # A final checkpoint and the end share their tick.
        entry = self._kept.setdefault(tick, {})
        entry[worker] = (kept, kept_at)
        if len(entry) < self.workers:
            return
        del self._kept[tick]
        self._kept_checked = tick
        expected, expected_at = self._sent_before.pop(tick)
        kept = sum(count for count, _ in entry.values())
        kept_at = sum(at for _, at in entry.values())
        if kept == expected and kept_at == expected_at:
            return
        route = self.plan.stages[0].route
        name = route.keyby.name if route is not None and route.keyby else "keyby"
        what = (
            f"kept {kept} of the {expected} records before tick {tick}"
            if kept != expected
            else f"kept {kept} records before tick {tick}, as many as were "
            "sent, but some of them twice and others not at all"
        )
        raise JobFailed(
            f"key extractor {name!r} is not deterministic: the workers {what}. "
            "With a list, tuple or range source and as many workers as cores (up to "
            f"{EVERY_WORKER_KEYS_UP_TO}), every worker runs the key extractor on "
            "every record and keeps the records whose key it owns, so the "
            "extractor must give the same key for the same record in every "
            "process (no random numbers, clocks, object ids or process ids). "
            f"Make it depend on the record only, or set {SCAN_ROUTING_ENV}="
            "driver to run it once per record, in the driver."
        )

    def _worker_died(self, worker: int) -> WorkerDied:
        proc = self._procs[worker]
        proc.join(timeout=2.0)
        code = proc.exitcode
        how = (
            f"was killed by signal {-code}"
            if code and code < 0
            else f"exited with code {code}"
        )
        hint = (
            ""
            if self.coordinator is not None
            else "; enable checkpoints (checkpoint_dir=...) to recover from "
            "worker failures"
        )
        return WorkerDied(
            f"worker {worker} (pid {proc.pid}) of job {self.name!r} {how} "
            f"before the end of the stream{hint}"
        )

    def _dead_letter(self, letter: dict[str, Any]) -> None:
        self._skipped += 1
        if self._dead_file is None:
            path = self.options.dead_letter_path or default_dead_letter_path(self.name)
            self.options.dead_letter_path = path
            self._dead_file = open(path, "a", encoding="utf-8")
            self._dead_start = self._dead_file.tell()
        self._dead_file.write(json.dumps(letter, default=repr) + "\n")
        self._dead_file.flush()
        log.warning(
            "skipped a record in operator %r (worker %s, key %s): %s",
            letter["operator"],
            letter["worker"],
            letter["key"],
            letter["error"],
        )

    def _drop_replayed_letters(self, tick: int) -> None:
        """Keep only this run's dead letters of ticks before ``tick``.

        A recovery processes the ticks from ``tick`` on again, and
        skips their bad records again; without this, each would be in
        the file twice. Letters arrive out of tick order from several
        workers, so the file's part written by this run is filtered.
        """
        if self._dead_file is None:
            return
        handle = self._dead_file
        handle.flush()
        with open(handle.name, "r+", encoding="utf-8") as rewrite:
            rewrite.seek(self._dead_start)
            kept = [
                line
                for line in rewrite.readlines()
                if json.loads(line).get("tick", -1) < tick
            ]
            rewrite.seek(self._dead_start)
            rewrite.writelines(kept)
            rewrite.truncate()
        self._skipped = len(kept)

    # -- the end

    def _join(self) -> None:
        for proc in self._procs:
            proc.join(timeout=10.0)
        self._kill()

    def _kill(self) -> None:
        with self._procs_lock:
            for proc in self._procs:
                if proc.exitcode is None and proc.pid:
                    try:
                        os.kill(proc.pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
            for proc in self._procs:
                proc.join(timeout=5.0)

    def _release_processes(self) -> None:
        """Close the (ended) worker Process objects.

        Frees the pipes that multiprocess keeps open per child until its
        Process object is collected, which may be never in a program
        that keeps its environments, or in a job that restarts often.
        """
        with self._procs_lock:
            procs, self._procs = self._procs, []
            for proc in procs:
                try:
                    proc.close()
                except ValueError:
                    log.warning("worker pid %s could not be reaped", proc.pid)

    def _cleanup(self) -> None:
        self._release_processes()
        endpoint = getattr(self, "endpoint", None)
        if endpoint is not None:
            endpoint.close()
        if self._dead_file is not None:
            self._dead_file.close()
        if self.coordinator is not None:
            self.coordinator.close()
        if self._directory_lock is not None:
            os.close(self._directory_lock)  # Frees the directory for other jobs.
            self._directory_lock = None
        with _LIVE_LOCK:
            _LIVE.discard(self)
        self.finished.set()

    def _result(self) -> JobResult:
        operators: dict[str, dict[str, Any]] = {}
        operators[self.plan.source.name] = {
            "in": self._records,
            "out": self._records,
            "skipped": 0,
        }
        stats = [self._done[w] for w in sorted(self._done)]
        driver_counts = [self.final.counts()]
        if self.head is not None:
            driver_counts.append(self.head.counts())
        operators.update(
            sum_counts(
                [
                    self.coordinator.base_counts if self.coordinator else {},
                    *(s["operators"] for s in stats),
                    *driver_counts,
                ]
            )
        )
        kinds = {name: kind for kind, name in fingerprint(self.plan)}
        place = {name: position for position, name in enumerate(kinds)}
        operators = {  # in pipeline order, for the report
            name: operators[name]
            for name in sorted(operators, key=lambda n: place.get(n, len(place)))
        }
        driver_stages = [s for s in (self.head, self.final) if s is not None]
        parts = [operator_busy(driver_stages), *(s.get("busy", {}) for s in stats)]
        busy = {
            name: sum(p[name] for p in parts if name in p)
            if any(name in p for p in parts)
            else None
            for name in operators
        }
        return JobResult(
            name=self.name,
            workers=self.workers,
            wall_time=time.perf_counter() - self.started_at,
            records=self._records,
            operators=operators,
            worker_stats=stats,
            skipped=self._skipped,
            dead_letter_path=self.options.dead_letter_path if self._skipped else None,
            stopped=self._stop.is_set(),
            checkpoints=list(self.coordinator.history) if self.coordinator else [],
            restarts=self.restarts,
            resumed_from=self.resumed_from,
            operator_kinds={name: kinds.get(name, "") for name in operators},
            operator_busy=busy,
            driver_stats={
                "cpu": time.thread_time() - self._cpu_at_start,
                "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            },
        )


def _test_hooks() -> tuple[int | None, frozenset[int]]:
    # Fault injection for the test suite, off unless these are set:
    # SAGE_MP_TEST_CRASH_AT_CHECKPOINT=N makes a worker die in the middle
    # of writing checkpoint N; SAGE_MP_TEST_FAIL_CHECKPOINTS=2,3 makes
    # the workers' writes of those checkpoints fail as a full disk would.
    crash = os.environ.get("SAGE_MP_TEST_CRASH_AT_CHECKPOINT")
    fail = os.environ.get("SAGE_MP_TEST_FAIL_CHECKPOINTS", "")
    return (
        int(crash) if crash else None,
        frozenset(int(part) for part in fail.split(",") if part.strip()),
    )


def _failure_error(report: FailureReport) -> JobFailed:
    if report.kind == "user":
        return UserFunctionError(report)
    if report.kind == "checkpoint":
        return CheckpointError(report.error.split(": ", 1)[-1])
    return JobFailed(
        f"worker {report.worker} failed in the engine: {report.error}\n"
        f"{report.traceback}"
    )


def usable_cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


#: Forces who routes a sliceable collection: "driver", "workers" (the
#: worker count picks how), "dealt" or "every" (see :func:`scan_mode`).
#: Unset, :func:`scan_mode` decides by the number of cores.
SCAN_ROUTING_ENV = "SAGE_MP_SCAN_ROUTING"

#: Up to this many workers, every worker keys every tick (``"every"``);
#: with more, each tick is dealt to one worker (``"dealt"``).
EVERY_WORKER_KEYS_UP_TO = 2


def none_positions(items: Sequence[Any]) -> Sequence[int]:
    """The positions of a collection's None items, in order, 8 bytes each.

    None items are not records (see read_slice). Only the workers read
    the collection in "dealt" and "every" scans, yet the driver counts
    each tick's records; one pass before the fork lets it count them
    without touching a record while the workers run. Touching them
    then would cost more than the pass: each reference count it
    changes copies a memory page the workers share, and the driver's
    CPU comes out of theirs (light on 2 workers, 1,000,000 records:
    the pass takes about 25 ms, and the driver's CPU fell from 0.15 s
    to 0.11 s with the pass included).
    """
    if isinstance(items, range):
        return ()
    # Identity, not ==: a record's __eq__ must not decide what is one.
    return array("q", compress(count(), map(operator.is_, items, repeat(None))))


def scan_mode(plan: Plan, workers: int) -> str | None:
    """Who reads and routes the source's records, when workers can.

    ``None`` when the source must send its records (see
    :func:`scans_collection`). Otherwise the records stay out of the
    pipes, and one of these routes them:

    ``"driver"``
        The driver keys each tick and sends every worker the positions
        and keys of its records.
    ``"every"``
        The driver sends every worker the bounds of every tick; each
        worker keys all of the tick's records and keeps its own.
    ``"dealt"``
        The driver deals each tick's bounds to one worker, which keys
        the tick and sends every worker the positions and keys of its
        records.

    The driver is worth its own core when one is left over besides the
    workers; without a spare core it would only take CPU from them, so
    the workers route (on 2 cores with 2 workers, light: driver CPU
    from 0.43 s to ~0.15 s per million records, the job 20% faster).
    Keying every tick in every worker sends nothing between workers,
    so none waits for another's share of a tick, but each extra worker
    adds a key extraction per record to every worker. On 2 workers it
    won (light 0.90 s against 1.06 s, medians of 8 alternating rounds);
    with more workers the extra keying grows with their number while
    each one's own share shrinks, so ticks are dealt instead.
    """
    # TODO: Choose between "every" and "dealt" by what a record costs
    # (keying against the rest of the chain), measured while the job
    # runs, instead of by the worker count alone.
    if not scans_collection(plan):
        return None
    forced = os.environ.get(SCAN_ROUTING_ENV, "")
    if forced in ("driver", "dealt", "every"):
        return forced
    if forced and forced != "workers":
        log.warning(
            "%s=%r is not one of 'driver', 'workers', 'dealt', 'every'; ignored",
            SCAN_ROUTING_ENV,
            forced,
        )
    if forced != "workers" and workers < usable_cores():
        return "driver"
    return "every" if workers <= EVERY_WORKER_KEYS_UP_TO else "dealt"


def plan_with_head_on_workers(plan: Plan, every: bool) -> Plan:
    """``plan`` with its stage 0 hosted by every worker, not the driver.

    With ``every``, each worker's instance reads every tick and keeps
    the records it owns (see ``StagePlan.reads_all``).
    """
    head = dataclasses.replace(plan.stages[0], at_head=False, reads_all=every)
    return dataclasses.replace(plan, stages=[head, *plan.stages[1:]])


def scans_collection(plan: Plan) -> bool:
    """True when the workers can read the source's records themselves.

    That is when the source is a collection that supports slicing and
    a hash ``keyby`` directly follows it: a forked worker holds the same
    collection, so only positions and keys need to travel (P.SLICE).
    """
    spec = plan.source
    head = plan.stages[0]
    return (
        spec.function is CollectionSource
        and not spec.delay
        and len(spec.args) == 1
        and isinstance(spec.args[0], (list, tuple, range))
        and head.at_head
        and head.route is not None
        and head.route.kind == "hash"
        and plan.stages[1].on_workers
        and not plan.stages[1].single
    )


def _worker_main(pipes: PipeSet, me: int, plan: Plan, options: WorkerOptions) -> None:
    endpoint = pipes.endpoint(me)
    # Each round of the worker loop ends in a receive: what the round
    # sent leaves then, one write per peer. Light, 2 workers: 0.61 s
    # instead of 0.67 s (medians of 8 alternating rounds).
    endpoint.write_at_receive = True
    if options.profile is not None:
        path = options.profile.format(me=me)
        code = _profiled(
            lambda: run_worker(plan, me, pipes.workers, endpoint, options), path
        )
    else:
        code = run_worker(plan, me, pipes.workers, endpoint, options)
    sys.exit(code)


#: Set (by ``python -m sage_mp run --profile DIR``) to a folder: the
#: driver and every worker then run under cProfile and write one file
#: each there (see :func:`profile_prefix`).
PROFILE_DIR_ENV = "SAGE_MP_PROFILE_DIR"


def file_stem(job: str) -> str:
    """``job``'s name made fit to start a file name: "a/b" gives "a_b"."""
    stem = re.sub(r"[^A-Za-z0-9_.-]", "_", job)
    return "job" if stem.strip(".") == "" else stem


def unwritable_file(path: str) -> str | None:
    """Why a file cannot be written at ``path``, or None when it can."""
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        return "it is a directory"
    if not os.path.isdir(folder):
        return f"folder {folder!r} does not exist"
    if not os.access(folder, os.W_OK):
        return f"folder {folder!r} is not writable"
    if os.path.exists(path) and not os.access(path, os.W_OK):
        return "the file is not writable"
    return None


def default_dead_letter_path(job: str) -> str:
    """Where a job's skipped records go unless it says otherwise."""
    return f"{file_stem(job)}.dead-letters.jsonl"


def profile_prefix(directory: str, job: str) -> str:
    """Where a job's profiles go: ``DIR/JOB.`` then ``driver.prof`` etc.

    The job's name makes the files of several jobs in one script
    distinct; a second job of the same name gets ``JOB-2.``, and so on.
    The driver's file is created here, so two jobs that start at once
    cannot take the same prefix.
    """
    safe = file_stem(job)
    number = 1
    while True:
        stem = safe if number == 1 else f"{safe}-{number}"
        prefix = os.path.join(directory, stem + ".")
        try:
            os.close(os.open(prefix + "driver.prof", os.O_CREAT | os.O_EXCL))
        except FileExistsError:
            number += 1
            continue
        return prefix


def _profiled(run: Any, path: str) -> Any:
    """Call ``run()`` under cProfile; write the profile to ``path``."""
    import cProfile

    profiler = cProfile.Profile()
    profiler.enable()
    try:
        return run()
    finally:
        profiler.disable()
        profiler.dump_stats(path)
