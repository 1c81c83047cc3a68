"""One LMDB environment of a checkpoint directory, and its layout.

Each worker (and the driver) writes its part of a checkpoint into its
own environment in one write transaction. Three databases:

``keyed``
    Per-key-group blobs of keyed attributes. Key: ``op \\0 attr \\0``
    + group (2 bytes) + checkpoint id (8 bytes, big-endian). Value: a
    *base* (every entry of the group) or a *delta* (the entries of the
    keys processed since the previous checkpoint, and deleted keys).
    A group's state at checkpoint ``c`` is its latest base at or before
    ``c`` plus the later deltas up to ``c``, across all environments,
    in id order.
``plain``
    Whole values of all other attributes. Key: ``op \\0 attr \\0`` +
    checkpoint id. Written at every checkpoint.
``meta``
    One JSON record per checkpoint this environment wrote.

This module knows bytes and ids; what a blob means to a function
belongs to :mod:`sage_mp._checkpoint`.
"""

from __future__ import annotations

import json
import os
import struct
from typing import Any

import lmdb

__all__ = ["Store"]

_GROUP = struct.Struct(">H")
_ID = struct.Struct(">Q")
BASE = b"B"
DELTA = b"D"
# Deltas per group between compactions (a write of the group as a
# base): the bound on how many blobs a restore must apply, traded
# against the cost of rewriting a group. See _compaction_due.
COMPACT_AFTER = 16
_INITIAL_MAP = 64 << 20


def _prefix(op: str, attr: str) -> bytes:
    return op.encode() + b"\0" + attr.encode() + b"\0"


class Store:
    """An LMDB environment holding one worker's (or the driver's) parts."""

    def __init__(self, path: str, readonly: bool = False) -> None:
        self.path = path
        self.readonly = readonly
        if not readonly:
            os.makedirs(path, mode=0o700, exist_ok=True)
        data = os.path.join(path, "data.mdb")
        size = os.path.getsize(data) if os.path.exists(data) else 0
        # Readers take LMDB's reader lock too, so that reading a running
        # job's checkpoints never sees pages its writer is reusing.
        self.env = lmdb.open(
            path,
            map_size=max(_INITIAL_MAP, size),
            max_dbs=4,
            readonly=readonly,
            readahead=False,
            create=not readonly,
        )
        # Without a txn argument, lmdb opens each database in a
        # transaction of its own that it commits, so the handles outlive
        # it; handles opened in a caller's read transaction do not.
        self.keyed = self.env.open_db(b"keyed", create=not readonly)
        self.plain = self.env.open_db(b"plain", create=not readonly)
        self.meta = self.env.open_db(b"meta", create=not readonly)

    def close(self) -> None:
        self.env.close()

    # -- writing

    def write(
        self,
        checkpoint: int,
        keyed: dict[tuple[str, str, int], tuple[bytes, bool]],
        plain: dict[tuple[str, str], bytes],
        meta: dict[str, Any],
        horizon: int,
        merge: Any,
        before_commit: Any = None,
    ) -> int:
        """Write one checkpoint's parts in one transaction; return bytes.

        ``keyed`` maps (op, attr, group) to (blob, is_base). ``merge``
        folds a group's blobs into one base when its compaction is due
        (see :func:`_compaction_due`). Blobs no longer needed by
        checkpoints at or after ``horizon`` are deleted as their groups
        are written.
        """
        while True:
            try:
                return self._write(
                    checkpoint, keyed, plain, meta, horizon, merge, before_commit
                )
            except lmdb.MapFullError:
                # Double the map and retry: a full map must never kill a job.
                self.env.set_mapsize(self.env.info()["map_size"] * 2)

    def _write(
        self,
        checkpoint: int,
        keyed: dict[tuple[str, str, int], tuple[bytes, bool]],
        plain: dict[tuple[str, str], bytes],
        meta: dict[str, Any],
        horizon: int,
        merge: Any,
        before_commit: Any,
    ) -> int:
        written = 0
        ident = _ID.pack(checkpoint)
        # Zero-copy reads: deciding whether to compact needs one byte of
        # each of a group's blobs, and copying whole bases made every
        # checkpoint cost as much as the total state.
        with self.env.begin(write=True, buffers=True) as txn:
            for (op, attr, group), (blob, is_base) in keyed.items():
                head = _prefix(op, attr) + _GROUP.pack(group)
                history = self._history(txn, head)
                deltas = _deltas_since_base(history)
                if not is_base and _compaction_due(group, deltas, checkpoint):
                    blob = merge(self._values(txn, head) + [DELTA + blob])
                    is_base = True
                else:
                    blob = (BASE if is_base else DELTA) + blob
                txn.put(head + ident, blob, db=self.keyed)
                written += len(blob)
                self._collect(txn, head, history, horizon, is_base, checkpoint)
            for (op, attr), blob in plain.items():
                head = _prefix(op, attr)
                txn.put(head + ident, blob, db=self.plain)
                written += len(blob)
                self._collect_plain(txn, head, horizon)
            meta = {**meta, "bytes": written}
            txn.put(b"ckpt:" + ident, json.dumps(meta).encode(), db=self.meta)
            for old in [i for i in _meta_ids(txn, self.meta) if i < horizon]:
                txn.delete(b"ckpt:" + _ID.pack(old), db=self.meta)
            if before_commit is not None:
                before_commit()
        return written

    def _history(self, txn: Any, head: bytes) -> list[tuple[int, bytes]]:
        """(checkpoint id, kind byte) of a group's blobs, oldest first."""
        return [(ident, bytes(value[:1])) for ident, value in self._scan(txn, head)]

    def _values(self, txn: Any, head: bytes) -> list[bytes]:
        """Copies of a group's blobs, oldest first."""
        return [bytes(value) for _, value in self._scan(txn, head)]

    def _scan(self, txn: Any, head: bytes) -> list[tuple[int, Any]]:
        cursor = txn.cursor(db=self.keyed)
        out = []
        if cursor.set_range(head):
            for key, value in cursor:
                key = bytes(key)
                if not key.startswith(head) or len(key) != len(head) + 8:
                    break
                out.append((_ID.unpack(key[-8:])[0], value))
        return out

    def _collect(
        self,
        txn: Any,
        head: bytes,
        history: list[tuple[int, bytes]],
        horizon: int,
        wrote_base: bool,
        checkpoint: int,
    ) -> None:
        # Keep the latest base at or before the horizon and all after it.
        bases = [ident for ident, value in history if value[:1] == BASE]
        if wrote_base and checkpoint <= horizon:
            bases.append(checkpoint)
        keep_from = max((b for b in bases if b <= horizon), default=None)
        if keep_from is None:
            return
        for ident, _ in history:
            if ident < keep_from:
                txn.delete(head + _ID.pack(ident), db=self.keyed)

    def _collect_plain(self, txn: Any, head: bytes, horizon: int) -> None:
        cursor = txn.cursor(db=self.plain)
        stale = []
        if cursor.set_range(head):
            for key, _ in cursor:
                key = bytes(key)
                if not key.startswith(head) or len(key) != len(head) + 8:
                    break
                if _ID.unpack(key[-8:])[0] < horizon:
                    stale.append(key)
        for key in stale:
            txn.delete(key, db=self.plain)

    # -- reading

    def blobs_to_compact(
        self, op: str, attr: str, group: int, checkpoint: int
    ) -> list[bytes] | None:
        """Copies of the group's blobs when writing ``checkpoint`` will
        fold them into a base (see :func:`_compaction_due`), else None.

        A writer that merges them ahead of :meth:`write` passes the
        merged blob as a base, and the write no longer compacts inside
        its one transaction.
        """
        head = _prefix(op, attr) + _GROUP.pack(group)
        with self.env.begin(buffers=True) as txn:
            history = self._history(txn, head)
            if not _compaction_due(group, _deltas_since_base(history), checkpoint):
                return None
            return self._values(txn, head)

    def group_blobs(
        self, op: str, attr: str, group: int, upto: int
    ) -> list[tuple[int, bytes]]:
        """Return the group's blobs with ids <= ``upto``, in id order."""
        head = _prefix(op, attr) + _GROUP.pack(group)
        with self.env.begin() as txn:
            return [(i, bytes(v)) for i, v in self._scan(txn, head) if i <= upto]

    def plain_value(self, op: str, attr: str, checkpoint: int) -> bytes | None:
        with self.env.begin() as txn:
            value = txn.get(_prefix(op, attr) + _ID.pack(checkpoint), db=self.plain)
        return None if value is None else bytes(value)

    def attributes(self, db: str) -> set[tuple[str, str]]:
        """Every (op, attr) with blobs in ``db`` ('keyed' or 'plain')."""
        handle = self.keyed if db == "keyed" else self.plain
        found: set[tuple[str, str]] = set()
        with self.env.begin() as txn:
            cursor = txn.cursor(db=handle)
            if not cursor.first():
                return found
            while True:
                key = cursor.key()
                op, attr, _ = bytes(key).split(b"\0", 2)
                found.add((op.decode(), attr.decode()))
                # Skip to the next attribute: its prefix sorts after ours.
                if not cursor.set_range(op + b"\0" + attr + b"\1"):
                    break
        return found

    def checkpoints(self) -> dict[int, dict[str, Any]]:
        """The meta records of the checkpoints this environment wrote."""
        out = {}
        with self.env.begin() as txn:
            cursor = txn.cursor(db=self.meta)
            for key, value in cursor:
                if key.startswith(b"ckpt:"):
                    out[_ID.unpack(key[5:])[0]] = json.loads(bytes(value))
        return out

    def purge_above(self, checkpoint: int) -> None:
        """Delete everything written by checkpoints after ``checkpoint``.

        Those checkpoints never committed (the job died during them); a
        resumed job reuses nothing of theirs.
        """
        with self.env.begin(write=True) as txn:
            for db in (self.keyed, self.plain):
                stale = [
                    bytes(key)
                    for key in txn.cursor(db=db).iternext(values=False)
                    if _ID.unpack(key[-8:])[0] > checkpoint
                ]
                for key in stale:
                    txn.delete(key, db=db)
            for ident in [i for i in self.checkpoints() if i > checkpoint]:
                txn.delete(b"ckpt:" + _ID.pack(ident), db=self.meta)


def _meta_ids(txn: Any, db: Any) -> list[int]:
    cursor = txn.cursor(db=db)
    keys = [bytes(key) for key in cursor.iternext(values=False)]
    return [_ID.unpack(key[5:])[0] for key in keys if key.startswith(b"ckpt:")]


def _compaction_due(group: int, deltas: int, checkpoint: int) -> bool:
    """Whether this write of ``group`` should fold its blobs into a base.

    Compacting rewrites the whole group. Groups that change at every
    checkpoint would all reach one limit at the same checkpoint, which
    would then rewrite the whole state at once (about a second for a
    million keys). So each group has its turn, one checkpoint in
    ``COMPACT_AFTER``, and compacts at its turn once it has half that
    many deltas, or at any checkpoint once it has twice as many: a
    checkpoint compacts about 1/16 of the changing groups, and a
    restore applies at most ``2 * COMPACT_AFTER + 1`` blobs per group.
    """
    if deltas >= 2 * COMPACT_AFTER:
        return True
    turn = (checkpoint + group) % COMPACT_AFTER == 0
    return turn and deltas >= COMPACT_AFTER // 2


def _deltas_since_base(history: list[tuple[int, bytes]]) -> int:
    count = 0
    for _, value in reversed(history):
        if value[:1] == BASE:
            break
        count += 1
    return count
