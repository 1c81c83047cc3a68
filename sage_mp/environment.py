"""The user-facing API: an environment that builds and runs a pipeline.

``LocalEnvironment`` collects one pipeline (a source and a chain of
operators) through :class:`DataStream` calls, and ``submit()`` runs it
on one machine: the driver in the calling process, one forked worker
process per key partition.
"""

from __future__ import annotations

import logging
import numbers
import os
import threading
from collections.abc import Iterable
from typing import Any

from ._checkpoint import CheckpointConfig
from ._driver import (
    Driver,
    JobResult,
    RunOptions,
    default_dead_letter_path,
    unwritable_file,
    usable_cores,
)
from ._plan import STRATEGIES, OperatorSpec, Plan, build_plan, check_function
from .errors import PipelineError
from .functions import CollectionSource

__all__ = ["DataStream", "JobResult", "LocalEnvironment"]

log = logging.getLogger(__name__)

# Keyword arguments that configure the operator and are never passed
# to the user's function, as in SAGE.
_RESERVED = ("name", "parallelism", "delay", "strategy", "batch_size")

#: Settings that ``python -m sage_mp run`` flags override. The CLI
#: fills this before running a script; environments read it.
OVERRIDES: dict[str, Any] = {}

_SUBMITTED: list[LocalEnvironment] = []
_SUBMITTED_LOCK = threading.Lock()


def submitted_environments() -> list[LocalEnvironment]:
    """Environments whose jobs were submitted in this process."""
    with _SUBMITTED_LOCK:
        return list(_SUBMITTED)


class LocalEnvironment:
    """Builds one pipeline and runs it on this machine.

    Args:
        name: the job's name, used in logs, file names and errors.
        workers: number of worker processes (key partitions); ``None``
            means the number of usable CPU cores.
        config: SAGE's plain-dict configuration. Understood keys:
            ``workers``, ``batch_size``, ``linger``, ``error_policy``.
        batch_size: records per tick, the unit the driver sends.
        linger: seconds a partly filled tick may wait for more records.
        error_policy: ``"fail"`` (default) stops the job when a user
            function raises; ``"skip"`` skips the record, logs it,
            counts it and appends it to ``dead_letter_path``.
        dead_letter_path: JSON-lines file for skipped records; default
            ``<name>.dead-letters.jsonl`` in the working directory.
        checkpoint_dir: directory for checkpoints; enables automatic
            state persistence, recovery from dead workers, and resume.
            Created private (0700) if missing.
        checkpoint_interval: seconds between checkpoints (default 1.0).
        max_restarts: restarts from the last checkpoint after a worker
            dies, before the job fails (default 3).
        keep_checkpoints: committed checkpoints kept (default 3).
        max_checkpoint_failures: checkpoints in a row that may fail (a
            full disk, say) while the job goes on; one more fails the
            job (default 3).
        fresh: start from empty state, deleting the checkpoints in
            ``checkpoint_dir`` instead of resuming from them.

    SAGE's ``config={"fault_tolerance": {"strategy": "checkpoint",
    "checkpoint_interval": ..., "checkpoint_dir": ...}}`` also works.
    """

    def __init__(
        self,
        name: str = "sage_mp_job",
        *,
        workers: int | None = None,
        config: dict[str, Any] | None = None,
        batch_size: int | None = None,
        linger: float | None = None,
        error_policy: str | None = None,
        dead_letter_path: str | None = None,
        checkpoint_dir: str | None = None,
        checkpoint_interval: float | None = None,
        max_restarts: int | None = None,
        keep_checkpoints: int | None = None,
        max_checkpoint_failures: int | None = None,
        fresh: bool | None = None,
        **unknown: Any,
    ) -> None:
        if not isinstance(name, str) or not name.strip():
            raise PipelineError(
                f"LocalEnvironment(name={name!r}): expected a non-empty string "
                "(it names the job in logs, errors and the job's files), such "
                "as 'sessions'"
            )
        if unknown:
            raise PipelineError(
                f"LocalEnvironment({name!r}) got unknown options "
                f"{sorted(unknown)}; expected workers, config, batch_size, "
                "linger, error_policy, dead_letter_path, checkpoint_dir, "
                "checkpoint_interval, max_restarts, keep_checkpoints, "
                "max_checkpoint_failures, fresh"
            )
        config = dict(config or {})
        self.name = name
        self.config = config
        self.workers = _pick(workers, config.get("workers"), None)
        self.batch_size = _pick(batch_size, config.get("batch_size"), 1000)
        self.linger = _pick(linger, config.get("linger"), 0.005)
        self.error_policy = _pick(error_policy, config.get("error_policy"), "fail")
        self.dead_letter_path = dead_letter_path
        tolerance = config.get("fault_tolerance") or {}
        if tolerance and tolerance.get("strategy", "checkpoint") != "checkpoint":
            raise PipelineError(
                f"LocalEnvironment({name!r}): fault_tolerance strategy "
                f"{tolerance.get('strategy')!r} is not supported; use "
                "'checkpoint'"
            )
        self.checkpoint_dir = _pick(checkpoint_dir, tolerance.get("checkpoint_dir"))
        self.checkpoint_interval = _pick(
            checkpoint_interval, tolerance.get("checkpoint_interval"), 1.0
        )
        self.max_restarts = _pick(max_restarts, tolerance.get("max_restarts"), 3)
        self.keep_checkpoints = _pick(keep_checkpoints, 3)
        self.max_checkpoint_failures = _pick(max_checkpoint_failures, 3)
        self.fresh = bool(fresh)
        self._source: OperatorSpec | None = None
        self._operators: list[OperatorSpec] = []
        self._driver: Driver | None = None
        self._thread: threading.Thread | None = None
        self._result: JobResult | None = None
        self._error: BaseException | None = None

    # -- building

    def from_source(
        self, function: Any, *args: Any, delay: float = 0.0, **kwargs: Any
    ) -> DataStream:
        """Start the pipeline at a source, polled in the driver.

        ``function`` is a ``SourceFunction`` subclass, built as
        ``function(*args, **kwargs)``, or a callable of no arguments.
        ``delay`` is the pause in seconds after each poll; 0 polls as
        fast as the pipeline accepts records.
        """
        # TODO: One environment runs one linear pipeline. Branching a
        # stream, union and connect need a stage graph instead of a chain
        # in _plan.py and a merge rule for stages with several inputs.
        if self._source is not None:
            raise PipelineError(
                f"environment {self.name!r} already has a source; one "
                "environment runs one pipeline, so create another "
                "LocalEnvironment for a second source"
            )
        options, kwargs = _split_reserved(kwargs)
        check_function("source", function, f"{self.name}.from_source()", args, kwargs)
        _check_name(options, f"{self.name}.from_source()")
        if not _is_number(delay) or not delay >= 0:
            raise PipelineError(
                f"{self.name}.from_source(): delay must be a number of "
                f"seconds >= 0, got {delay!r}"
            )
        if options.get("parallelism", 1) not in (None, 1):
            log.info(
                "sources run as one instance in the driver; parallelism=%s is ignored",
                options["parallelism"],
            )
        self._source = OperatorSpec(
            "source",
            function,
            args,
            kwargs,
            name=options.get("name", ""),
            delay=float(delay),
        )
        return DataStream(self)

    def from_collection(self, items: Iterable[Any], **options: Any) -> DataStream:
        """Start the pipeline at the items of ``items``; ends when exhausted."""
        if isinstance(items, (str, bytes)) or not isinstance(items, Iterable):
            raise PipelineError(
                f"{self.name}.from_collection(): expected an iterable of "
                f"records, got {type(items).__name__}"
            )
        options.setdefault("name", "collection")
        return self.from_source(CollectionSource, items, **options)

    from_batch = from_collection

    def _append(self, spec: OperatorSpec) -> None:
        if self._driver is not None:
            raise PipelineError(
                f"environment {self.name!r} was already submitted; build "
                "the whole pipeline before submit()"
            )
        self._operators.append(spec)

    # -- running

    def plan(self) -> Plan:
        if self._source is None:
            raise PipelineError(
                f"environment {self.name!r} has no source; start the "
                "pipeline with from_source() or from_collection()"
            )
        return build_plan(self._source, list(self._operators))

    def run_options(self) -> RunOptions:
        # None, not any false value, means "one per usable core": a
        # workers=0 that ran on every core would hide the mistake.
        workers = _pick(OVERRIDES.get("workers"), self.workers)
        if workers is None:
            workers = usable_cores()
        workers = self._check("workers", workers, whole=True, least=1)
        if self.error_policy not in ("fail", "skip"):
            raise PipelineError(
                f"environment {self.name!r}: error_policy must be 'fail' or "
                f"'skip', got {self.error_policy!r}"
            )
        batch_size = self._check("batch_size", self.batch_size, whole=True, least=1)
        linger = self._check("linger", self.linger, whole=False, least=0)
        policy = OVERRIDES.get("error_policy") or self.error_policy
        if policy == "skip":
            self._check_dead_letter_path()
        return RunOptions(
            checkpoint=self._checkpoint_config(),
            workers=int(workers),
            batch_size=int(batch_size),
            linger=linger,
            error_policy=policy,
            dead_letter_path=self.dead_letter_path,
        )

    def _check_dead_letter_path(self) -> None:
        """The file is made at the first skipped record, in the middle
        of the job: find out now whether it can be."""
        path = self.dead_letter_path or default_dead_letter_path(self.name)
        if not isinstance(path, (str, os.PathLike)):
            raise PipelineError(
                f"environment {self.name!r}: dead_letter_path must be a file "
                f"path, got {type(path).__name__} {path!r}"
            )
        problem = unwritable_file(os.fspath(path))
        if problem is not None:
            raise PipelineError(
                f"environment {self.name!r}: the dead-letter file {path!r} "
                f"cannot be used: {problem}; skipped records are appended "
                "there, so pass dead_letter_path= a writable file path"
            )

    def _check(self, label: str, value: Any, *, whole: bool, least: float) -> Any:
        """``value`` as an int (``whole``) or a float, when it is such a
        number of at least ``least``; else a PipelineError naming ``label``."""
        kind = "a whole number" if whole else "a number"
        fits = isinstance(value, numbers.Integral if whole else numbers.Real)
        if fits and not isinstance(value, bool) and value >= least:
            return int(value) if whole else float(value)
        raise PipelineError(
            f"environment {self.name!r}: {label} must be {kind} >= {least:g}, "
            f"got {value!r}; pass it to LocalEnvironment() or in its config, "
            f"or leave it out for the default"
        )

    def _checkpoint_config(self) -> CheckpointConfig | None:
        directory = OVERRIDES.get("checkpoint_dir") or self.checkpoint_dir
        if not directory:
            return None
        interval = _pick(OVERRIDES.get("checkpoint_interval"), self.checkpoint_interval)
        if not _is_number(interval) or not interval > 0:
            raise PipelineError(
                f"environment {self.name!r}: checkpoint_interval must be a "
                f"number of seconds > 0, got {interval!r}"
            )
        for label, value in (
            ("max_restarts", self.max_restarts),
            ("keep_checkpoints", self.keep_checkpoints),
            ("max_checkpoint_failures", self.max_checkpoint_failures),
        ):
            least = 1 if label == "keep_checkpoints" else 0
            self._check(label, value, whole=True, least=least)
        return CheckpointConfig(
            directory=os.fspath(directory),
            interval=float(interval),
            keep=self.keep_checkpoints,
            max_restarts=self.max_restarts,
            max_failures=self.max_checkpoint_failures,
            fresh=bool(OVERRIDES.get("fresh") or self.fresh),
        )

    def submit(self, autostop: bool = False) -> JobResult | None:
        """Run the pipeline.

        With ``autostop=True``, block until the stream ends and return a
        :class:`JobResult`. Otherwise return at once; the job runs in a
        background thread of this process until its stream ends or
        ``stop()``/``close()`` is called, and a script that simply ends
        still waits for it.
        """
        if self._driver is not None:
            raise PipelineError(f"environment {self.name!r} was already submitted")
        driver = Driver(self.name, self.plan(), self.run_options())
        self._driver = driver
        with _SUBMITTED_LOCK:
            _SUBMITTED.append(self)
        driver.start()
        if autostop:
            self._result = driver.run()
            return self._result
        self._thread = threading.Thread(
            target=self._run_in_background, name=f"sage_mp-{self.name}-driver"
        )
        self._thread.start()
        return None

    def _run_in_background(self) -> None:
        assert self._driver is not None
        try:
            self._result = self._driver.run()
        except BaseException as err:  # noqa: BLE001 - re-raised by wait()
            self._error = err
            log.error(
                "job %r failed: %s", self.name, err, extra={"sage_job_failed": True}
            )

    def wait(self, timeout: float | None = None) -> JobResult | None:
        """Wait for a submitted job; return its result or raise its error."""
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                return None
        if self._error is not None:
            error, self._error = self._error, None
            raise error
        return self._result

    def stop(self) -> None:
        """End the stream now; records already read are still processed."""
        if self._driver is not None:
            self._driver.stop()

    def close(self) -> JobResult | None:
        """Stop the job, wait for it to finish cleanly, return its result."""
        self.stop()
        return self.wait()

    @property
    def result(self) -> JobResult | None:
        return self._result

    def is_running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()


class DataStream:
    """A stream of records in a pipeline under construction."""

    def __init__(self, env: LocalEnvironment) -> None:
        self.env = env

    def _then(
        self, kind: str, function: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> DataStream:
        where = f"{self.env.name}.{kind}()"
        options, kwargs = _split_reserved(kwargs)
        check_function(kind, function, where, args, kwargs)
        parallelism = options.get("parallelism")
        if parallelism is not None and (
            not isinstance(parallelism, int)
            or isinstance(parallelism, bool)
            or parallelism < 1
        ):
            raise PipelineError(
                f"{where}: parallelism must be a whole number >= 1, got {parallelism!r}"
            )
        _check_name(options, where)
        strategy = options.get("strategy", "hash")
        if kind == "keyby" and strategy not in STRATEGIES:
            raise PipelineError(
                f"{self.env.name}.keyby(): strategy must be one of "
                f"{', '.join(STRATEGIES)}; got {strategy!r}"
            )
        self.env._append(
            OperatorSpec(
                kind,
                function,
                args,
                kwargs,
                name=options.get("name", ""),
                parallelism=parallelism,
                strategy=strategy,
            )
        )
        return DataStream(self.env)

    def map(self, function: Any, *args: Any, **kwargs: Any) -> DataStream:
        """Transform each record; a ``None`` result drops the record."""
        return self._then("map", function, args, kwargs)

    def filter(self, function: Any, *args: Any, **kwargs: Any) -> DataStream:
        """Keep the records for which the function returns a truthy value."""
        return self._then("filter", function, args, kwargs)

    def flatmap(self, function: Any, *args: Any, **kwargs: Any) -> DataStream:
        """Turn each record into any number of records."""
        return self._then("flatmap", function, args, kwargs)

    flat_map = flatmap

    def keyby(self, function: Any, *args: Any, **kwargs: Any) -> DataStream:
        """Attach a key to each record and route records by it.

        ``strategy="hash"`` (default) sends every key to the one worker
        that owns its key group. ``"round_robin"`` spreads records
        regardless of key, and ``"broadcast"`` sends each to every
        worker; both still attach the key.
        """
        return self._then("keyby", function, args, kwargs)

    key_by = keyby

    def sink(self, function: Any, *args: Any, **kwargs: Any) -> DataStream:
        """End the pipeline at a sink.

        With ``parallelism=1`` (the default) there is one instance, in
        the driver, which sees every record in source order. With
        ``parallelism > 1`` there is one instance per worker.
        """
        return self._then("sink", function, args, kwargs)


def _check_name(options: dict[str, Any], where: str) -> None:
    name = options.get("name", "")
    if not isinstance(name, str):
        raise PipelineError(
            f"{where}: name must be a string (it names the operator in "
            f"logs, counts and errors), got {type(name).__name__} {name!r}"
        )


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _pick(*values: Any) -> Any:
    for value in values:
        if value is not None:
            return value
    return None


def _split_reserved(kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    options = {k: kwargs.pop(k) for k in _RESERVED if k in kwargs}
    return options, kwargs
