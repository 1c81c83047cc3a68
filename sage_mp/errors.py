"""Exceptions raised by sage_mp, split by whose fault they are.

::

    SageMPError                  anything sage_mp raises on purpose
    ├── PipelineError            the pipeline or its options are wrong
    │                            (ValueError too); nothing has run
    ├── JobFailed                a running job stopped
    │   ├── UserFunctionError    a user function raised on a record
    │   ├── WorkerDied           a worker process vanished (and the
    │   │                        restart budget, if any, is spent)
    │   └── CheckpointError      a checkpoint could not be written
    └── IncompatibleCheckpoint   a checkpoint directory does not fit
                                 this job, or is unsafe to restore

``UserFunctionError`` carries the operator, worker, key and a short
repr of the record, and the user's traceback as text, because the
original exception lived in another process.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "CheckpointError",
    "FailureReport",
    "IncompatibleCheckpoint",
    "JobFailed",
    "PipelineError",
    "SageMPError",
    "UserFunctionError",
    "WorkerDied",
]


class SageMPError(Exception):
    """Base class of every error sage_mp raises on purpose."""


class PipelineError(SageMPError, ValueError):
    """The pipeline or an option is wrong; raised before anything runs."""


class IncompatibleCheckpoint(SageMPError):
    """A checkpoint directory does not fit this job or is unsafe to use."""


class JobFailed(SageMPError):
    """A running job stopped before its end."""


class WorkerDied(JobFailed):
    """A worker process exited without being asked to."""


class CheckpointError(JobFailed):
    """Checkpoints kept failing, or state could not be serialized."""


@dataclass
class FailureReport:
    """What a worker knows about a failure; travels to the driver."""

    operator: str
    worker: int
    key: Any
    record: str
    error: str
    traceback: str
    kind: str = "user"
    extra: dict[str, Any] = field(default_factory=dict)


class UserFunctionError(JobFailed):
    """A user function raised while processing a record."""

    def __init__(self, report: FailureReport) -> None:
        self.report = report
        self.operator = report.operator
        self.worker = report.worker
        self.key = report.key
        self.record = report.record
        super().__init__(self._message())

    def _message(self) -> str:
        r = self.report
        where = "the driver" if r.worker < 0 else f"worker {r.worker}"
        hint = (
            "--- hint: pass error_policy='skip' to LocalEnvironment (or "
            "--on-error skip) to skip such records into a dead-letter file"
        )
        if "unpicklable" in r.extra:
            made = (
                f"operator {r.operator!r} returned {r.extra['unpicklable']} in {where}"
            )
            if r.key is not None:
                made += f" on key {r.key!r}"
            if r.record:
                made += f" for record {r.record}"
            # A source's faults stop the job under either policy.
            return f"{made}, and it {r.error}" + (
                "" if r.extra.get("source") else f"\n{hint}"
            )
        phase = re.fullmatch(r"<during (\w+)\(\)>", r.record)
        if phase:
            # Building, opening or closing a function: no record is at
            # fault, and skipping records would not help.
            return (
                f"operator {r.operator!r} raised {r.error} in {where} during "
                f"{phase.group(1)}()\n"
                f"--- traceback from {where} ---\n{r.traceback.rstrip()}"
            )
        return (
            f"operator {r.operator!r} raised {r.error} in {where} "
            f"on key {r.key!r}, record {r.record}\n"
            f"--- traceback from {where} ---\n{r.traceback.rstrip()}\n{hint}"
        )
