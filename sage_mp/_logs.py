"""Log records across processes, and the handlers the CLI installs.

Worker processes do not write log lines themselves. The engine
installs a :class:`WorkerLogForwarder` in each forked worker (and only
there): it turns every record into a plain dict and sends it to the
driver as a ``("log", record_dict)`` message, tagged with the worker
and, for ``self.logger`` calls, the operator. The driver re-emits it
through its own logging (:func:`emit_forwarded`), so a record is
handled once, by the handlers of the user's process, as one whole
message, however many workers log at once.

Records carry two extra attributes for formatters:
``sage_operator`` (the operator's name, for ``self.logger`` calls)
and ``sage_worker`` (``w0``, ``w1``, ... or ``driver``).

The handler classes at the end are for ``python -m sage_mp run``;
library code never installs them in the user's process.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any, TextIO

from . import _protocol as P
from ._checkpoint import MANIFEST
from ._metrics import running_operator
from ._transport import DRIVER

__all__ = [
    "LOG_FILE",
    "CheckpointLogFiles",
    "ConsoleHandler",
    "TagFormatter",
    "WorkerLogForwarder",
    "emit_forwarded",
    "install_worker_logging",
]

#: The log file the CLI writes inside a checkpoint directory.
LOG_FILE = "sage_mp.log"
#: The CLI's line format; ``sage_tag`` is added by :class:`TagFormatter`.
FORMAT = "%(asctime)s %(levelname)s %(name)s%(sage_tag)s: %(message)s"

# Attributes of a LogRecord that travel; everything else (exc_info
# with its traceback objects, args that may not pickle) is rendered to
# text in the worker first.
_FIELDS = tuple(
    """name levelno levelname created msecs relativeCreated pathname
    filename module lineno funcName process processName thread threadName
    stack_info sage_operator""".split()
)

Send = Callable[[int, tuple[Any, ...]], None]


# --- in a worker ------------------------------------------------------------


# Records below WARNING wait to travel together: up to this many, or
# for this many seconds after the first of them, or until the worker
# loop's next turn, whichever comes first. One message then carries
# them all, instead of one pickle and one pipe write per line.
_BATCH = 256
_LINGER = 0.05


class WorkerLogForwarder(logging.Handler):
    """Sends a worker's log records to the driver; never blocks.

    Records wait in ``pending`` and travel in batches (see ``_BATCH``);
    a WARNING or worse sends at once, with what waited before it, so
    lines keep their order. The endpoint is not thread-safe, so only
    the worker thread sends: records logged by other threads wait until
    the worker loop calls :meth:`drain` (once per iteration). ``push``
    makes what was sent leave the process now, for an endpoint that
    holds its output until the loop's next turn: a batch that leaves
    from inside a user function (a WARNING, a full batch, the linger)
    must not wait for that function to return.
    """

    def __init__(
        self, send: Send, worker: int, push: Callable[[], Any] | None = None
    ) -> None:
        super().__init__()
        self.send = send
        self.push = push
        self.worker = worker
        self.pending: deque[dict[str, Any]] = deque()
        self.closed = False
        self._owner = threading.get_ident()
        self._since = 0.0  # when the oldest pending record was logged

    def emit(self, record: logging.LogRecord) -> None:
        try:
            data = self._to_dict(record)
        except Exception:  # noqa: BLE001 - a bad format string, say
            self.handleError(record)
            return
        if self.closed:
            # The channel to the driver is gone: write the line here.
            sys.stderr.write(f"{data['levelname']} {data['name']}: {data['msg']}\n")
            return
        if not self.pending:
            self._since = time.monotonic()
        self.pending.append(data)
        if threading.get_ident() != self._owner:
            return
        if (
            record.levelno >= logging.WARNING
            or len(self.pending) >= _BATCH
            or time.monotonic() - self._since >= _LINGER
        ):
            self.drain()
            if self.push is not None:
                self.push()

    def drain(self) -> None:
        """Send every pending record in one message (worker thread only)."""
        if self.closed or not self.pending:
            return
        batch = []
        pending = self.pending
        while pending:
            batch.append(pending.popleft())
        self.send(DRIVER, (P.LOG, batch))

    def close(self) -> None:
        self.closed = True
        super().close()

    def _to_dict(self, record: logging.LogRecord) -> dict[str, Any]:
        data = {name: getattr(record, name, None) for name in _FIELDS}
        data["msg"] = record.getMessage()
        text = record.exc_text
        if record.exc_info and not text:
            text = logging.Formatter().formatException(record.exc_info)
        data["exc_text"] = text
        data["sage_worker"] = getattr(record, "sage_worker", None) or f"w{self.worker}"
        if not data["sage_operator"] and threading.get_ident() == self._owner:
            # A module-level logger in a user function: name the operator.
            data["sage_operator"] = running_operator(sys._getframe())
        return data


def install_worker_logging(
    send: Send, worker: int, push: Callable[[], Any] | None = None
) -> WorkerLogForwarder:
    """Route every log record of this worker process to the driver.

    Called by the engine in a freshly forked worker, never in the
    user's process. Handlers inherited from the driver through the fork
    are removed wherever a record would also reach the forwarder, or
    the driver would print each line twice.
    """
    forwarder = WorkerLogForwarder(send, worker, push)
    root = logging.getLogger()
    loggers = [
        logger
        for logger in logging.Logger.manager.loggerDict.values()
        if isinstance(logger, logging.Logger) and logger.propagate
    ]
    for logger in [root, *loggers]:
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
    root.addHandler(forwarder)

    return forwarder


# --- in the driver ------------------------------------------------------------


def emit_forwarded(batch: list[dict[str, Any]], sender: int) -> None:
    """Re-emit records a worker forwarded, through the driver's logging.

    The worker already applied its levels (inherited from this process
    at the fork), so each record goes straight to the handlers.
    """
    for data in batch:
        record = logging.makeLogRecord(data)
        if not getattr(record, "sage_worker", None):
            record.sage_worker = f"w{sender}"
        logging.getLogger(record.name).handle(record)


# --- handlers for the CLI ---------------------------------------------------


def tag_of(record: logging.LogRecord) -> str:
    """``" [operator w1]"`` for records of a function or a worker, else ``""``."""
    parts = [
        getattr(record, "sage_operator", None),
        getattr(record, "sage_worker", None),
    ]
    words = [str(part) for part in parts if part]
    return f" [{' '.join(words)}]" if words else ""


class TagFormatter(logging.Formatter):
    """Formats with :data:`FORMAT`: the operator and worker tag included."""

    def __init__(self) -> None:
        super().__init__(FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        record.sage_tag = tag_of(record)
        return super().format(record)


class ConsoleHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A stream handler that steps around the live progress line.

    ``live`` is an object whose ``paused()`` context manager erases
    the progress line and draws it again after the log line.
    """

    def __init__(self, stream: TextIO, live: Any = None) -> None:
        super().__init__(stream)
        self.live = live

    def emit(self, record: logging.LogRecord) -> None:
        pause: AbstractContextManager[Any] = (
            self.live.paused() if self.live is not None else nullcontext()
        )
        with pause:
            super().emit(record)


class CheckpointLogFiles(logging.Handler):
    """Writes log lines to :data:`LOG_FILE` in each checkpoint directory.

    The directory of a job is known only once the job starts (a script
    may set it), and sage_mp refuses a non-empty directory that holds
    no manifest yet, so the file cannot be created up front. Lines are
    kept in a bounded buffer until :meth:`attach` names a directory
    that the job has set up; the buffer is then written first.
    """

    def __init__(self, buffered: int = 10_000) -> None:
        super().__init__()
        self.files: dict[str, TextIO] = {}
        self.buffer: deque[str] = deque(maxlen=buffered)

    def attach(self, directory: str) -> None:
        """Start writing into ``directory`` (which must already be set up)."""
        key = os.path.realpath(directory)
        self.acquire()
        try:
            # Only a directory that sage_mp set up: a file put into any
            # other one would make it refuse the directory later.
            if key in self.files or not os.path.isfile(
                os.path.join(directory, MANIFEST)
            ):
                return
            # Private like the directory: log lines may quote records.
            flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND
            fd = os.open(os.path.join(directory, LOG_FILE), flags, 0o600)
            handle = open(fd, "a", encoding="utf-8")
            handle.writelines(self.buffer)
            handle.flush()
            self.files[key] = handle
        finally:
            self.release()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record) + "\n"
        except Exception:  # noqa: BLE001
            self.handleError(record)
            return
        self.buffer.append(line)
        for handle in self.files.values():
            handle.write(line)
            handle.flush()

    def close(self) -> None:
        self.acquire()
        try:
            for handle in self.files.values():
                handle.close()
            self.files.clear()
        finally:
            self.release()
        super().close()
