"""What ``python -m sage_mp run`` shows and records while jobs run.

:class:`Monitor` is a daemon thread in the driver's process. A few
times a second it finds the running jobs, takes a snapshot of each
(:class:`~sage_mp._metrics.JobWatch`), redraws the live progress line
of the newest one on a terminal (:class:`LiveLine`), and, every
``--metrics-interval`` seconds, appends one JSON line per job to the
``--metrics`` file. It only reads counters: the driver thread never
waits for it, and an error in it never stops a job.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TextIO

from ._metrics import JobWatch
from ._report import size

__all__ = ["LiveLine", "Monitor", "render", "render_all"]

log = logging.getLogger(__name__)

# Redraws per second of the live line: fast enough to look live, slow
# enough that a terminal over ssh does not lag behind.
REFRESH = 0.25
_BAR = 20


class LiveLine:
    """One line at the bottom of a terminal, redrawn in place.

    Used only when the stream is a TTY. Writes are serialized with
    ``lock``, which log handlers share through :meth:`paused`, so a log
    line never lands in the middle of the progress line.
    """

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.lock = threading.RLock()
        self.text = ""

    def show(self, text: str) -> None:
        # A line wider than the terminal wraps, and "\r" would then
        # redraw only its last row: cut it to fit.
        width = max(20, self._columns() - 1)
        with self.lock:
            self.text = text[:width]
            self._write("\r" + self.text + "\x1b[K")

    def erase(self) -> None:
        with self.lock:
            if self.text:
                self.text = ""
                self._write("\r\x1b[K")

    def keep(self) -> None:
        """End the line where it is; later output starts below it."""
        with self.lock:
            if self.text:
                self.text = ""
                self._write("\n")

    @contextmanager
    def paused(self) -> Iterator[None]:
        """Erase the line for other output, then draw it again."""
        with self.lock:
            text = self.text
            self.erase()
            try:
                yield
            finally:
                if text:
                    self.show(text)

    def _columns(self) -> int:
        try:
            columns = os.get_terminal_size(self.stream.fileno()).columns
        except (AttributeError, OSError, ValueError):
            columns = 0
        return columns or shutil.get_terminal_size((120, 24)).columns

    def _write(self, data: str) -> None:
        try:
            self.stream.write(data)
            self.stream.flush()
        except (OSError, ValueError):
            pass  # The terminal went away; the job goes on.


class Monitor:
    """Samples running jobs on a thread of its own (module docstring)."""

    def __init__(
        self,
        live: LiveLine | None = None,
        metrics: TextIO | None = None,
        metrics_interval: float = 1.0,
        on_job: Any = None,
    ) -> None:
        self.live = live
        self.metrics = metrics
        self.metrics_interval = metrics_interval
        #: Called once with each driver the monitor finds.
        self.on_job = on_job
        self.watches: dict[int, JobWatch] = {}
        self._halt = threading.Event()
        self._next_metrics = time.monotonic() + metrics_interval
        self._thread = threading.Thread(
            target=self._run, name="sage_mp-monitor", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        period = REFRESH
        if self.metrics is not None:
            period = min(period, self.metrics_interval)
        while not self._halt.wait(period):
            try:
                self.poll()
            except Exception:  # noqa: BLE001 - a display must not stop a job
                log.debug("monitor failed to sample", exc_info=True)

    def poll(self) -> None:
        """Find jobs, redraw the live line, write metrics when due."""
        from ._driver import live_drivers

        for driver in live_drivers():
            self.watch(driver)
        # Oldest first: live_drivers() lists jobs by start, so watches
        # are added in that order.
        running = [w for w in self.watches.values() if not w.driver.finished.is_set()]
        now = time.monotonic()
        metrics_due = self.metrics is not None and now >= self._next_metrics
        if metrics_due:
            # Keep to the interval's grid unless a whole step was missed.
            self._next_metrics = max(
                self._next_metrics + self.metrics_interval,
                now + self.metrics_interval / 2,
            )
        shown: list[dict[str, Any]] = []
        for watch in running:
            if self.live is None and not metrics_due:
                continue
            snap = watch.snapshot()
            shown.append(snap)
            if metrics_due:
                self._write(snap)
        if self.live is not None:
            if shown:
                self.live.show(render_all(shown))
            else:
                self.live.erase()

    def watch(self, driver: Any) -> JobWatch:
        watch = self.watches.get(id(driver))
        if watch is None:
            watch = self.watches[id(driver)] = JobWatch(driver)
            if self.on_job is not None:
                self.on_job(driver)
        return watch

    def close(self, finished: list[tuple[Any, Any]], show: bool) -> None:
        """Stop sampling; write each job's final line.

        ``finished`` pairs every driver with its JobResult (``None`` if
        the job failed). With ``show``, the last job's final state
        stays on the live line; otherwise the line is erased.
        """
        self._halt.set()
        if self._thread.is_alive():
            self._thread.join(5.0)
        last = None
        for driver, result in finished:
            snap = self.watch(driver).snapshot(final=True, result=result)
            self._write(snap)
            last = snap
        if self.live is None:
            return
        if show and last is not None and last["state"] != "failed":
            if last.get("result"):
                last["rate"] = last["result"]["throughput"]
            self.live.show(render(last))
            self.live.keep()
        else:
            self.live.erase()

    def _write(self, snap: dict[str, Any]) -> None:
        if self.metrics is None:
            return
        self.metrics.write(json.dumps(snap, default=repr) + "\n")
        self.metrics.flush()


def render(snap: dict[str, Any]) -> str:
    """The live progress line of one snapshot (see _metrics for fields)."""
    if snap["total"]:
        progress = snap["progress"] or 0.0
        filled = int(progress * _BAR)
        head = (
            f"[{'#' * filled}{'.' * (_BAR - filled)}] {progress * 100:3.0f}% "
            f"ETA {_clock(snap['eta'])}"
        )
    else:
        head = _clock(snap["elapsed"])
    parts = [
        f"{snap['job']} {head}",
        f"in {snap['records_in']:,} out {snap['records_out']:,}",
        f"{snap['rate']:,.0f} rec/s",
        f"window {snap['backpressure'] * 100:.0f}%",
    ]
    if snap["checkpointing"]:
        last = snap["last_checkpoint"]
        parts.append(f"ckpt {last['id']} {last['age']:.0f}s ago" if last else "ckpt -")
        parts.append(f"restarts {snap['restarts']}")
    if snap["skipped"]:
        parts.append(f"skipped {snap['skipped']:,}")
    workers = [_worker(row) for row in snap["workers"] if row["rss"] is not None]
    if workers:
        parts.append(" ".join(workers))

    return " | ".join(parts)


def render_all(snaps: list[dict[str, Any]]) -> str:
    """The live line for every running job: one job in full, or each
    job's name, progress and rate side by side."""
    if len(snaps) == 1:
        return render(snaps[0])
    return " || ".join(f"{s['job']} {_head(s)} {s['rate']:,.0f} rec/s" for s in snaps)


def _head(snap: dict[str, Any]) -> str:
    if snap["total"]:
        return f"{(snap['progress'] or 0.0) * 100:3.0f}%"
    return _clock(snap["elapsed"])


def _worker(row: dict[str, Any]) -> str:
    percent = row["cpu_percent"]
    cpu = "-" if percent is None else f"{percent:.0f}%"
    rss = size(row["rss"]).replace("iB", "").replace(" ", "")
    return f"w{row['worker']} {cpu} {rss}"


def _clock(seconds: float | None) -> str:
    if seconds is None:
        return "--:--"
    whole = int(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"
