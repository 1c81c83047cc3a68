"""How protocol messages move between the driver and the workers.

The worker loop and the driver see only :class:`Endpoint`: ``send`` a
message to a peer without ever blocking, and ``receive`` whatever has
arrived. :class:`PipeEndpoint` implements it with non-blocking OS pipes
and length-prefixed pickle frames; another runner (Ray, say) implements
the same four methods over its own queues. Nothing in this module knows
what a message means.
"""

from __future__ import annotations

import errno
import fcntl
import os
import pickle
import select
import struct
import time
from collections import deque
from typing import Any, Protocol

__all__ = [
    "DRIVER",
    "EOF",
    "Endpoint",
    "MessageNotPicklable",
    "PipeEndpoint",
    "PipeSet",
]

#: Peer id of the driver; workers are 0..N-1.
DRIVER = -1
#: Message delivered by ``receive`` when a peer's channel has closed.
EOF = ("eof",)

_HEADER = struct.Struct("<Q")
_READ_CHUNK = 1 << 20
# 1 MiB pipes (the Linux maximum for unprivileged users) let a whole
# batch of about 20 KiB-60 KiB move in one write; the default 64 KiB
# pipe forced several wake-ups per batch.
_PIPE_SIZE = 1 << 20

# With ``write_at_receive``, a frame still leaves at once when this
# many seconds have passed since the last write to its peer: a long
# round of work (slow ticks, a user function that blocks) delays what
# it sends by one tick at most.
_HOLD = 0.002


class MessageNotPicklable(Exception):
    """``send`` could not serialize a message; nothing of it was sent."""


class Endpoint(Protocol):
    """One process's view of its channels. Must never block in ``send``.

    ``send`` raises :class:`MessageNotPicklable` when the message cannot
    be serialized for another process, and then sends nothing of it.
    """

    me: int

    def send(self, peer: int, message: tuple[Any, ...]) -> None: ...

    def receive(self, timeout: float | None) -> list[tuple[int, tuple[Any, ...]]]:
        """Return arrived messages, waiting up to ``timeout`` for one."""
        ...

    def flush(self, timeout: float | None) -> bool:
        """Deliver pending output; True when nothing is left pending."""
        ...

    def close(self) -> None: ...


class _Writer:
    __slots__ = ("fd", "queue", "offset", "broken", "since")

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.queue: deque[bytes] = deque()
        self.offset = 0
        self.broken = False
        #: When this writer last wrote, or was made (see _HOLD).
        self.since = time.monotonic()

    def write_some(self) -> None:
        queue = self.queue
        if queue:
            self.since = time.monotonic()
        if len(queue) > 1 and not self.offset:
            # One write for every waiting frame: one wake-up of the reader.
            joined = b"".join(queue)
            queue.clear()
            queue.append(joined)
        while queue:
            data = queue[0]
            try:
                written = os.write(self.fd, memoryview(data)[self.offset :])
            except BlockingIOError:
                return
            except (BrokenPipeError, OSError):
                self.broken = True
                queue.clear()
                return
            self.offset += written
            if self.offset == len(data):
                queue.popleft()
                self.offset = 0


class _Reader:
    __slots__ = ("fd", "buffer", "closed")

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.buffer = bytearray()
        self.closed = False

    def read_frames(self, out: list[bytes]) -> None:
        while True:
            try:
                chunk = os.read(self.fd, _READ_CHUNK)
            except BlockingIOError:
                break
            except OSError as err:
                if err.errno != errno.EINTR:
                    self.closed = True
                    break
                continue
            if not chunk:
                self.closed = True
                break
            self.buffer += chunk
            if len(chunk) < _READ_CHUNK:
                break
        self._split(out)

    def _split(self, out: list[bytes]) -> None:
        buffer = self.buffer
        view = memoryview(buffer)
        start = 0
        while len(buffer) - start >= _HEADER.size:
            (size,) = _HEADER.unpack_from(buffer, start)
            end = start + _HEADER.size + size
            if end > len(buffer):
                break
            out.append(bytes(view[start + _HEADER.size : end]))
            start = end
        view.release()
        if start:
            del buffer[:start]


def _nonblocking(fd: int) -> None:
    os.set_blocking(fd, False)


class PipeEndpoint:
    """Endpoint over OS pipes: one pipe per direction per pair of peers."""

    def __init__(self, me: int, readers: dict[int, int], writers: dict[int, int]):
        self.me = me
        self._readers = {peer: _Reader(fd) for peer, fd in readers.items()}
        self._writers = {peer: _Writer(fd) for peer, fd in writers.items()}
        self._local: list[tuple[int, tuple[Any, ...]]] = []
        self._eof_reported: set[int] = set()
        #: Hold what is sent until the next receive() or flush(), which
        #: writes each peer's frames at once, or until ``hold`` seconds
        #: have passed since the last write to that peer. A worker sets
        #: it: its loop receives after every round of work, and a reader
        #: woken once per round instead of once per message costs far
        #: less.
        self.write_at_receive = False
        self.hold = _HOLD
        for fd in (*readers.values(), *writers.values()):
            _nonblocking(fd)

    def send(self, peer: int, message: tuple[Any, ...]) -> None:
        if peer == self.me:
            self._local.append((peer, message))
            return
        writer = self._writers[peer]
        if writer.broken:
            return
        try:
            frame = pickle.dumps(message, 5)
        except Exception as err:
            raise MessageNotPicklable(f"{type(err).__name__}: {err}") from err
        queue = writer.queue
        queue.append(_HEADER.pack(len(frame)) + frame)
        if not self.write_at_receive:
            if len(queue) == 1:
                writer.write_some()
            return
        if time.monotonic() - writer.since >= self.hold:
            writer.write_some()

    def receive(self, timeout: float | None) -> list[tuple[int, tuple[Any, ...]]]:
        got = self._collect()
        if got or timeout == 0:
            return got
        self._wait(timeout)
        return self._collect()

    def flush(self, timeout: float | None) -> bool:
        for writer in self._writers.values():
            writer.write_some()
        while any(w.queue for w in self._writers.values()):
            if not self._wait(timeout, reading=False):
                return False
            for writer in self._writers.values():
                writer.write_some()
        return True

    def close(self) -> None:
        fds = [r.fd for r in self._readers.values()]
        for fd in fds + [w.fd for w in self._writers.values()]:
            try:
                os.close(fd)
            except OSError:
                pass
        self._readers.clear()
        self._writers.clear()

    def _collect(self) -> list[tuple[int, tuple[Any, ...]]]:
        for writer in self._writers.values():
            if writer.queue:
                writer.write_some()
        got, self._local = self._local, []
        frames: list[bytes] = []
        loads = pickle.loads
        for peer, reader in self._readers.items():
            if reader.closed:
                continue
            reader.read_frames(frames)
            if frames:
                got.extend((peer, loads(frame)) for frame in frames)
                frames.clear()
        for peer, reader in self._readers.items():
            if reader.closed and peer not in self._eof_reported:
                self._eof_reported.add(peer)
                got.append((peer, EOF))
        for peer, writer in self._writers.items():
            if writer.broken and peer not in self._eof_reported:
                self._eof_reported.add(peer)
                got.append((peer, EOF))
        return got

    def _wait(self, timeout: float | None, reading: bool = True) -> bool:
        rlist = (
            [r.fd for r in self._readers.values() if not r.closed] if reading else []
        )
        wlist = [w.fd for w in self._writers.values() if w.queue]
        if not rlist and not wlist:
            return False
        try:
            ready = select.select(rlist, wlist, [], timeout)
        except InterruptedError:
            return True
        return any(ready[:2])


# TODO: Only the local pipe transport exists. A Ray runner needs an
# Endpoint over Ray queues or actor calls and a driver that starts
# actors instead of forking; the worker loop and stages need no change.
class PipeSet:
    """All pipes of a job, made by the driver before it forks workers."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        peers = [DRIVER, *range(workers)]
        # (sender, receiver) -> (read fd, write fd); no pipe to oneself.
        self.pipes = {(a, b): _make_pipe() for a in peers for b in peers if a != b}

    def endpoint(self, me: int) -> PipeEndpoint:
        """Keep ``me``'s ends, close every other end in this process."""
        readers, writers = {}, {}
        for (a, b), (rfd, wfd) in self.pipes.items():
            if b == me:
                readers[a] = rfd
            else:
                os.close(rfd)
            if a == me:
                writers[b] = wfd
            else:
                os.close(wfd)
        return PipeEndpoint(me, readers, writers)


def _make_pipe() -> tuple[int, int]:
    rfd, wfd = os.pipe()
    try:
        fcntl.fcntl(wfd, fcntl.F_SETPIPE_SZ, _PIPE_SIZE)
    except OSError:
        pass  # A smaller pipe only costs more wake-ups.
    return rfd, wfd
