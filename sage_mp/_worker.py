"""The worker process: hosts one instance of each stage and runs them.

A worker reads whatever has arrived, hands each message to the stage
instance it is for, lets every stage process the ticks that are ready
(latest stage first, so downstream drains before upstream fills), and
sleeps in the transport when nothing can move. It never blocks on
sending, which is what keeps the all-to-all mesh free of deadlocks.

It must not assume its transport is a pipe: it sees only an
:class:`~sage_mp._transport.Endpoint`.
"""

from __future__ import annotations

import os
import resource
import signal
import traceback
from typing import Any

from . import _protocol as P
from ._checkpoint import WorkerCheckpointer, WorkerCheckpointing
from ._logs import WorkerLogForwarder, install_worker_logging
from ._metrics import OperatorSampler
from ._plan import Plan
from ._stage import StageFailure, StageInstance
from ._transport import DRIVER, Endpoint
from .errors import CheckpointError, FailureReport

__all__ = ["WorkerOptions", "run_worker"]


class WorkerOptions:
    """What a worker needs to know besides the plan."""

    def __init__(
        self,
        job_name: str,
        skip_errors: bool,
        checkpointing: WorkerCheckpointing | None = None,
        scan: bool = False,
        profile: str | None = None,
    ) -> None:
        self.job_name = job_name
        self.skip_errors = skip_errors
        self.checkpointing = checkpointing
        #: Slices or ranges of the source collection travel instead of
        #: its records; the worker reads them itself (P.SLICE, P.RANGE).
        self.scan = scan
        #: Where to write this worker's profile, with ``{me}`` for its
        #: index; None: not profiled (see ``Driver._worker_profile``).
        self.profile = profile


def host_stages(
    plan: Plan,
    me: int,
    workers: int,
    endpoint: Endpoint,
    options: WorkerOptions,
    on_barrier: Any = None,
) -> dict[int, StageInstance]:
    """Build this worker's stage instances (functions are constructed)."""
    stages = {}
    for stage in plan.worker_stages:
        if stage.single and me != 0:
            continue
        previous = plan.stages[stage.index - 1] if stage.index else None
        stages[stage.index] = StageInstance(
            stage,
            previous,
            plan.stages[stage.index + 1],
            me,
            workers,
            endpoint.send,
            job_name=options.job_name,
            skip_errors=options.skip_errors,
            on_barrier=on_barrier,
        )
    return stages


def fetch_slice(message: tuple[Any, ...], items: Any) -> tuple[Any, ...]:
    """Turn a slice message into the batch it stands for (see P.SLICE)."""
    _, stage, tick, start, offsets, keys = message
    values = list(map(items.__getitem__, map(start.__add__, offsets)))
    return (P.BATCH, stage, tick, offsets, keys, values, [])


def run_worker(
    plan: Plan, me: int, workers: int, endpoint: Endpoint, options: WorkerOptions
) -> int:
    """Run worker ``me`` to the end of the stream; return an exit code."""
    # Ctrl-C reaches the whole process group; the driver decides what
    # happens to workers, so they ignore it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    parent = os.getppid()
    # Log lines travel to the driver, which prints each one whole.
    forwarder = install_worker_logging(
        endpoint.send, me, push=lambda: endpoint.flush(0)
    )
    sampler = OperatorSampler({})
    checkpointer = None
    last: tuple[Any, ...] | None = None
    try:
        if options.checkpointing is not None:
            checkpointer = WorkerCheckpointer(options.checkpointing, me, workers)
        hook = checkpointer.on_barrier if checkpointer is not None else None
        stages = host_stages(plan, me, workers, endpoint, options, hook)
        if checkpointer is not None:
            checkpointer.attach(stages, endpoint.send)
        # The collection whose records travel as slices or ranges of
        # it (see P.SLICE and P.RANGE).
        items = plan.source.args[0] if options.scan else None
        if 0 in stages:
            stages[0].collection = items
        for stage in stages.values():
            stage.open()
        sampler = OperatorSampler(stages)
        sampler.start()
        code = _loop(stages, endpoint, parent, checkpointer, sampler, forwarder, items)
        sampler.stop()
        if code == 0:
            last = (P.DONE, {**_stats(me, stages), "busy": sampler.busy()})
    except StageFailure as failure:
        last = (P.FAILED, failure.report)
        code = 1
    except CheckpointError as err:
        last = (P.FAILED, _engine_report(me, err, "checkpoint"))
        code = 1
    except Exception as err:  # noqa: BLE001 - report, then exit non-zero
        last = (P.FAILED, _engine_report(me, err, "engine"))
        code = 1
    sampler.stop()
    # Log records go first: the driver stops reading at the last word.
    forwarder.drain()
    if last is not None:
        endpoint.send(DRIVER, last)
    forwarder.close()
    endpoint.flush(timeout=30.0)
    endpoint.close()
    if checkpointer is not None:
        checkpointer.close()
    return code


def _engine_report(me: int, err: Exception, kind: str) -> FailureReport:
    return FailureReport(
        operator="<engine>",
        worker=me,
        key=None,
        record="",
        error=f"{type(err).__name__}: {err}",
        traceback="".join(traceback.format_exception(err)),
        kind=kind,
    )


# Longest piece of checkpoint capture work between two ticks, in
# seconds: the pause a checkpoint adds to the stream at a time.
_CAPTURE_SLICE = 0.005


def _loop(
    stages: dict[int, StageInstance],
    endpoint: Endpoint,
    parent: int,
    checkpointer: WorkerCheckpointer | None,
    sampler: OperatorSampler,
    forwarder: WorkerLogForwarder,
    items: Any = None,
) -> int:
    # Upstream stages step first, so what this worker routes or maps
    # for its peers leaves before it turns to its own long work on the
    # next stage: a peer then waits less for its share of a tick. With
    # heavy records on 2 workers the workers' idle share fell from ~7%
    # to ~5.5% of the run (12 alternating runs each way).
    ordered = sorted(stages.values(), key=lambda s: s.index)
    idle = False
    while True:
        messages = endpoint.receive(1.0 if idle else 0)
        for sender, message in messages:
            if message[0] == P.EOF_KIND:
                if sender == DRIVER:
                    return 2  # The driver is gone; nobody wants our output.
                continue  # A peer finished; a crash is the driver's call.
            if message[0] == P.COMMIT:
                if checkpointer is not None:
                    checkpointer.on_commit(message[1], message[2])
                continue
            if message[0] == P.SLICE:
                message = fetch_slice(message, items)
            stages[message[1]].deliver(sender, message)
        progressed = False
        for stage in ordered:
            sampler.stage = stage
            progressed = stage.step() or progressed
        sampler.stage = None
        if forwarder.pending:
            forwarder.drain()
        if checkpointer is not None and checkpointer.busy():
            # Capture work runs between ticks in short slices; while it
            # lasts the loop polls instead of sleeping, so an idle worker
            # finishes it quickly and a busy one is never held up long.
            checkpointer.work(_CAPTURE_SLICE)
            progressed = True
        if all(stage.finished for stage in ordered):
            if checkpointer is not None:
                checkpointer.finish(_CAPTURE_SLICE)
            return 0
        idle = not messages and not progressed
        if idle and os.getppid() != parent:
            return 2


def _stats(me: int, stages: dict[int, StageInstance]) -> dict[str, Any]:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    operators: dict[str, Any] = {}
    for stage in stages.values():
        operators.update(stage.counts())
    return {
        "worker": me,
        "operators": operators,
        "records": sum(stage.records_in for stage in stages.values()),
        "stage_busy": {stage.index: stage.busy for stage in stages.values()},
        "cpu": usage.ru_utime + usage.ru_stime,
        "peak_rss": usage.ru_maxrss * 1024,
    }
