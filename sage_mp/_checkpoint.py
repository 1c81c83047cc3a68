"""Checkpoints: what is captured, how it is restored, and when it commits.

A checkpoint ``c`` cuts the stream before tick ``t``. The driver
captures its source's state and sends barrier ``(c, t)``; every stage
instance captures its functions' state when it has processed exactly
the ticks before ``t`` (see :mod:`sage_mp._stage`), and each process
writes its parts to its own LMDB environment in one transaction and
acknowledges. A worker first pickles the entries, and merges the key
groups whose compaction is due, in short slices between ticks, so that
its write, one step of its loop, only stores blobs already made. The
checkpoint commits when the driver has every acknowledgement and has
written its own parts: it appends ``c`` to ``MANIFEST.json`` with an
atomic rename. A checkpoint that is not in the manifest never
happened.

What is stored (rules for which attributes are state: :mod:`state`):

* In a stage fed by a hash ``keyby``, a dict attribute that holds
  entries of the keys processed there is *keyed*: its entries are
  stored per key group, and each checkpoint writes only the entries of
  keys processed since the previous one (plus deletions). This keeps a
  checkpoint's cost proportional to the keys it touched, and lets a
  restore with another worker count give each key group to its new
  owner. A keyed attribute whose function adds or deletes entries of
  keys it is not processing (an LRU eviction) is noticed by its size
  and from then on written whole at every checkpoint, from a copy
  taken at the barrier, with its dict's order.
* Every other attribute is stored whole at every checkpoint, and on
  restore goes to the worker with the same index (new workers beyond
  the old count start from their constructor's values; values of
  workers beyond the new count are dropped, with a warning).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import pickle
import shutil
import stat
import time
from dataclasses import dataclass, field
from typing import Any

from ._partition import KEY_GROUPS, groups_of_worker, key_group
from ._store import BASE, DELTA, Store
from .errors import CheckpointError, IncompatibleCheckpoint
from .state import state_of

__all__ = [
    "CheckpointConfig",
    "Coordinator",
    "Manifest",
    "RestorePoint",
    "StageState",
]

log = logging.getLogger(__name__)

FORMAT = 1
MANIFEST = "MANIFEST.json"
#: Held (flock) by the running job that uses the directory.
LOCK = "LOCK"
DRIVER_STORE = "driver"


def worker_store(index: int) -> str:
    return f"worker-{index}"


@dataclass
class CheckpointConfig:
    """Checkpoint settings of a job (see LocalEnvironment)."""

    directory: str
    interval: float = 1.0
    keep: int = 3
    max_restarts: int = 3
    max_failures: int = 3
    fresh: bool = False


@dataclass(frozen=True)
class RestorePoint:
    """The committed checkpoint a run starts from."""

    checkpoint: int
    tick: int
    workers: int


# --- serialization -------------------------------------------------------


class _Unserializable(Exception):
    pass


def dumps(value: Any) -> bytes:
    """Pickle ``value``; fall back to dill (lambdas, local classes)."""
    try:
        return b"p" + pickle.dumps(value, 5)
    except Exception as first:
        import dill

        try:
            return b"d" + dill.dumps(value)
        except Exception:
            raise _Unserializable(f"{type(first).__name__}: {first}") from first


def loads(data: bytes) -> Any:
    if data[:1] == b"d":
        import dill

        return dill.loads(data[1:])
    return pickle.loads(data[1:])


def _explain(op: str, attr: str, value: Any, err: Exception) -> CheckpointError:
    return CheckpointError(
        f"cannot checkpoint attribute {attr!r} of operator {op!r}: its value "
        f"({type(value).__name__}) cannot be serialized ({err}). Make it "
        f"serializable, or add {attr!r} to the class's __state_exclude__ "
        "list if it is not state (a connection, a cache, a lock)"
    )


def merge_blobs(blobs: list[bytes]) -> bytes:
    """Fold a group's blobs (base, deltas) into one base blob."""
    return BASE + _merged(blobs)


def _merged(blobs: list[bytes]) -> bytes:
    """:func:`merge_blobs` without the leading kind byte."""
    entries, order = apply_blobs_in_order(blobs)
    places = [dumps(order)] if order else []
    return dumps(([dumps(entries)], [], places))


def apply_blobs(blobs: list[bytes]) -> dict[Any, Any]:
    """The entries of a group after applying ``blobs`` in order."""
    return apply_blobs_in_order(blobs)[0]


def apply_blobs_in_order(blobs: list[bytes]) -> tuple[dict[Any, Any], dict[Any, int]]:
    """The entries of a group after applying ``blobs``, and their places.

    A blob holds ``(parts, deletions, places)``: pickled dicts of
    entries, deleted keys, and pickled dicts of each key's place in its
    dict's order when a base captured it (see ``StageState.work``); a
    blob written before places existed has two items. One blob never
    names a key both in parts and in deletions.
    """
    start = max((i for i, b in enumerate(blobs) if b[:1] == BASE), default=0)
    entries: dict[Any, Any] = {}
    order: dict[Any, int] = {}
    for blob in blobs[start:]:
        parts, deletions, *places = loads(blob[1:])
        for key in deletions:
            entries.pop(key, None)
            order.pop(key, None)
        for part in parts:
            entries.update(loads(part))
        for part in places[0] if places else ():
            order.update(loads(part))
    return entries, order


# --- per stage instance: capture and restore -----------------------------

# Keys frozen per slice of deferred capture work: small enough that a
# slice stays a few milliseconds, large enough to pickle efficiently.
_CHUNK = 2048


class _SlotCapture:
    """A keyed attribute's part of the checkpoint being captured."""

    __slots__ = (
        "op",
        "attr",
        "value",
        "base",
        "size",
        "stored_before",
        "added",
        "removed",
        "parts",
        "deleted",
        "source",
        "places",
    )

    def __init__(self, op: str, attr: str, value: dict[Any, Any], base: bool):
        self.op = op
        self.attr = attr
        self.value = value
        self.base = base
        self.size = len(value)  # at the barrier
        self.stored_before = 0
        self.added = 0
        self.removed = 0
        self.parts: dict[int, list[bytes]] = {}
        self.deleted: dict[int, list[Any]] = {}
        #: Where entries are read when frozen: the live dict, or for a
        #: base its copy taken at the barrier, so that an entry another
        #: key's record deletes or replaces meanwhile is captured as it
        #: was (an LRU eviction, say).
        self.source = value
        #: Per key group: pickled dicts of each captured key's place in
        #: the dict's order (bases only, see StageState._place).
        self.places: dict[int, list[bytes]] = {}


class _Unit:
    """Slots whose entries are frozen together, key by key.

    ``pending`` holds the keys not frozen yet: a set, or a dict whose
    keys they are. A base takes a copy of the attribute's dict for it,
    because copying a dict costs a fifth of building a set of its keys
    (7 ms against 34 ms for 325,000 keys), and that copy is the pause.
    """

    __slots__ = ("slots", "keys", "cursor", "pending", "ordered")

    def __init__(
        self,
        slots: list[_SlotCapture],
        keys: list[Any],
        pending: set[Any] | dict[Any, Any],
        ordered: bool = False,
    ):
        self.slots = slots
        self.keys = keys  # the order in which to freeze
        self.cursor = 0
        self.pending = pending
        #: ``keys`` are in the dict's order, which the capture records.
        self.ordered = ordered

    def hits(self, keys: Any) -> set[Any]:
        """Which of ``keys`` are still pending."""
        pending = self.pending
        if isinstance(pending, set):
            return pending.intersection(keys)
        return pending.keys() & keys

    def done(self, keys: list[Any]) -> None:
        """``keys`` are frozen."""
        pending = self.pending
        if isinstance(pending, set):
            pending.difference_update(keys)
            return
        for key in keys:
            pending.pop(key, None)


_MISSING = object()


class StageState:
    """Captures and restores the state of one stage instance's functions.

    Capturing a keyed attribute is copy-on-write by key. At the barrier
    (:meth:`begin`) non-keyed attributes are pickled and the set of
    keys processed since the last checkpoint is put aside, in O(1). The
    entries of those keys are then pickled in slices between ticks
    (:meth:`work`), except that an entry whose key is about to be
    processed again is pickled first (:meth:`freeze_touched`). A record
    only changes its own key's entry, so every entry, and whether it
    exists, is read as it was at the barrier while the worker goes on
    processing: the pause no longer grows with the number of changed
    keys.

    Entries of *other* keys that a function adds or deletes (an LRU
    eviction, say) are found when the capture finishes, by comparing
    sizes; such an addition or deletion made after the barrier but
    before the capture finished is saved with this checkpoint.
    """

    def __init__(self, functions: list[tuple[str, Any]], keyed: bool) -> None:
        self.functions = functions  # (operator name, function instance)
        self.keyed = keyed
        self.dirty: set[Any] = set()
        # (op, attr) of keyed attributes -> {key whose entry the
        # checkpoints hold: its key group}.
        # TODO: Each of these dicts copies itself whole when it grows
        # past two thirds of its table, inside the capture slice that
        # adds the key that tips it: about 60 ms at 350,000 keys in a
        # worker and 130 ms at 700,000. Spreading the keys over 256
        # small dicts bounded that pause but made every capture about a
        # third slower, so the index still waits for a cheaper layout.
        self.stored: dict[tuple[str, str], dict[Any, int]] = {}
        # After a restore with another worker count, the base blobs of
        # our groups sit in other workers' stores; the next capture
        # writes a base for every group we own, so that our own store is
        # complete and compaction never folds deltas without their base.
        self.rebase: range | None = None
        #: Keyed attributes captured whole at every checkpoint: their
        #: function changes entries of keys it is not processing.
        self.whole: set[tuple[str, str]] = set()
        self.capturing = False
        self._units: list[_Unit] = []
        self._slots: list[_SlotCapture] = []
        self._plain: dict[tuple[str, str], bytes] = {}

    def capture(
        self,
    ) -> tuple[
        dict[tuple[str, str, int], tuple[bytes, bool]], dict[tuple[str, str], bytes]
    ]:
        """Serialize the whole state now (no deferred work)."""
        self.begin()
        self.work(None)
        return self.collect()

    def begin(self) -> None:
        """At the barrier: pickle non-keyed attributes, set keys aside."""
        dirty, self.dirty = self.dirty, set()
        rebase, self.rebase = self.rebase, None
        self._plain, self._slots, self._units = {}, [], []
        deltas: list[_SlotCapture] = []
        for op, fn in self.functions:
            for attr, value in state_of(fn).items():
                slot = (op, attr)
                if (
                    self.keyed
                    and isinstance(value, dict)
                    and (slot in self.stored or any(k in value for k in dirty))
                ):
                    base = (
                        slot not in self.stored
                        or rebase is not None
                        or slot in self.whole
                    )
                    stored = self.stored.setdefault(slot, {})
                    cap = _SlotCapture(op, attr, value, base)
                    cap.stored_before = len(stored)
                    self._slots.append(cap)
                    if base:
                        # A base holds every entry: O(state), but only the
                        # first time or after a rescale or failed write.
                        for group in rebase or ():
                            cap.parts[group] = []
                        if slot in self.whole:
                            # A group whose keys are all gone must get
                            # an empty base, or its old entries return.
                            for known in set(stored.values()):
                                cap.parts.setdefault(known, [])
                        stored.clear()
                        snapshot = value.copy()
                        cap.source = snapshot
                        keys = list(snapshot)
                        # Only attributes captured whole record their
                        # order: it costs a quarter more bytes and half
                        # again the restore time, and functions that keep
                        # to the one rule do not evict by dict order.
                        ordered = slot in self.whole
                        self._units.append(_Unit([cap], keys, snapshot, ordered))
                    else:
                        deltas.append(cap)
                    continue
                try:
                    self._plain[slot] = dumps(value)
                except _Unserializable as err:
                    raise _explain(op, attr, value, err) from None
        if deltas:
            self._units.append(_Unit(deltas, list(dirty), dirty))
        self.capturing = True

    def freeze_touched(self, keys: Any) -> None:
        """Pickle the pending entries of ``keys`` before they are processed."""
        for unit in self._units:
            if unit.pending:
                hits = unit.hits(keys)
                if hits:
                    self._freeze(unit, list(hits))

    def work(self, until: float | None) -> bool:
        """Freeze pending entries until ``until`` (perf_counter); True if done."""
        for unit in self._units:
            while unit.cursor < len(unit.keys):
                first = unit.cursor
                chunk = unit.keys[first : first + _CHUNK]
                unit.cursor += len(chunk)
                todo = [key for key in chunk if key in unit.pending]
                if todo:
                    self._freeze(unit, todo)
                if unit.ordered:
                    self._place(unit, chunk, first)
                if until is not None and time.perf_counter() >= until:
                    return not self.pending()
        return True

    def pending(self) -> bool:
        return any(unit.cursor < len(unit.keys) for unit in self._units)

    def _place(self, unit: _Unit, chunk: list[Any], first: int) -> None:
        """Record where the keys of ``chunk`` stand in their dict's order.

        A base walks its keys in the order of the dict at the barrier;
        entries frozen earlier (just before their key was processed)
        get their place here too. A restore puts the entries back in
        this order, which the guide's LRU eviction (``next(iter(d))``)
        relies on. Only attributes captured whole record it.
        """
        for cap in unit.slots:
            stored = self.stored[(cap.op, cap.attr)]
            buckets: dict[int, dict[Any, int]] = {}
            for place, key in enumerate(chunk, first):
                group = stored.get(key)
                if group is not None:
                    buckets.setdefault(group, {})[key] = place
            # Pickled now, in the slice, so that collecting stays short.
            for group, places in buckets.items():
                cap.places.setdefault(group, []).append(dumps(places))

    def _freeze(self, unit: _Unit, keys: list[Any]) -> None:
        for cap in unit.slots:
            stored = self.stored[(cap.op, cap.attr)]
            source = cap.source
            buckets: dict[int, dict[Any, Any]] = {}
            for key in keys:
                entry = source.get(key, _MISSING)
                if entry is not _MISSING:
                    group = stored.get(key)
                    if group is None:
                        cap.added += 1
                        group = stored[key] = _group(cap.op, cap.attr, key)
                    buckets.setdefault(group, {})[key] = entry
                else:
                    group = stored.pop(key, None)
                    if group is not None:
                        cap.removed += 1
                        cap.deleted.setdefault(group, []).append(key)
            for group, entries in buckets.items():
                try:
                    cap.parts.setdefault(group, []).append(dumps(entries))
                except _Unserializable as err:
                    raise _explain(cap.op, cap.attr, entries, err) from None
        unit.done(keys)

    def _reconcile(self, cap: _SlotCapture) -> None:
        # Sizes disagree: a function added or deleted entries of keys it
        # was not processing. Compare key sets, leaving out the keys
        # processed since the barrier (they belong to the next capture).
        # TODO: Entries that other keys' records changed after the
        # barrier can still land in this one checkpoint; keeping the
        # barrier's key set for every delta would make it exact, at a
        # cost in every pause. From now on the attribute is captured
        # whole, from a copy taken at each barrier, which is exact.
        slot = (cap.op, cap.attr)
        if slot not in self.whole:
            self.whole.add(slot)
            log.warning(
                "operator %r adds or deletes entries of keys other than the one "
                "it processes (attribute %r); its checkpoints now write the "
                "attribute whole",
                cap.op,
                cap.attr,
            )
        stored = self.stored[(cap.op, cap.attr)]
        keys = cap.value.keys()
        later = self.dirty
        extra = [k for k in keys - stored.keys() if k not in later]
        gone = [k for k in stored.keys() - keys if k not in later]
        if extra:
            unit = _Unit([cap], extra, set(extra))
            self._freeze(unit, extra)
        for key in gone:
            cap.deleted.setdefault(stored.pop(key), []).append(key)

    def collect(
        self,
    ) -> tuple[
        dict[tuple[str, str, int], tuple[bytes, bool]], dict[tuple[str, str], bytes]
    ]:
        """The captured blobs, once :meth:`work` has finished."""
        keyed: dict[tuple[str, str, int], tuple[bytes, bool]] = {}
        for cap in self._slots:
            if not cap.base and cap.size != cap.stored_before + cap.added - cap.removed:
                self._reconcile(cap)
            for group in cap.parts.keys() | cap.deleted.keys():
                blob = dumps(
                    (
                        cap.parts.get(group, []),
                        cap.deleted.get(group, []),
                        cap.places.get(group, []),
                    )
                )
                keyed[(cap.op, cap.attr, group)] = (blob, cap.base)
        plain = self._plain
        self._plain, self._slots, self._units = {}, [], []
        self.capturing = False
        return keyed, plain

    def restore(
        self,
        stores: list[Store],
        own: Store | None,
        point: RestorePoint,
        groups: range,
        fallback: dict[str, list[tuple[str, bytes]]] | None = None,
    ) -> None:
        """Load the state of ``point`` into the functions (before open()).

        Non-keyed attributes come from ``own``; an operator that has
        none there at ``point`` takes them from ``fallback`` (operator
        -> its attributes, see :func:`plain_values`), read from the
        store of the process that hosted it when ``point`` was written:
        stage 0 of a collection moves between the driver and worker 0
        when a job resumes with another worker count (see
        :func:`sage_mp._driver.scan_mode`).
        """
        keyed_slots: set[tuple[str, str]] = set()
        for store in stores:
            keyed_slots |= store.attributes("keyed")
        for op, fn in self.functions:
            for slot in sorted(s for s in keyed_slots if s[0] == op):
                if self.keyed:
                    self._restore_keyed(fn, slot, stores, point, groups)
            values = plain_values(own, op, point.checkpoint)
            if not values and fallback:
                values = fallback.get(op, [])
            for attr, data in values:
                setattr(fn, attr, loads(data))

    def _restore_keyed(
        self,
        fn: Any,
        slot: tuple[str, str],
        stores: list[Store],
        point: RestorePoint,
        groups: range,
    ) -> None:
        op, attr = slot
        target = getattr(fn, attr, None)
        if not isinstance(target, dict):
            target = {}
            setattr(fn, attr, target)
        stored = self.stored.setdefault(slot, {})
        found: dict[Any, Any] = {}
        order: dict[Any, int] = {}
        for group in groups:
            blobs: list[tuple[int, bytes]] = []
            for store in stores:
                blobs += store.group_blobs(op, attr, group, point.checkpoint)
            if not blobs:
                continue
            blobs.sort(key=lambda item: item[0])
            entries, places = apply_blobs_in_order([blob for _, blob in blobs])
            found.update(entries)
            order.update(places)
            stored.update(dict.fromkeys(entries, group))
        # Keys with a place (attributes captured whole) come back in the
        # order their dict had; the others follow in key-group order.
        # Places of different workers' bases (after a rescale) interleave,
        # as those keys never shared a dict.
        # TODO: Other attributes come back in key-group order; recording
        # every base's order costs ~25% more bytes and ~60% more restore
        # time at 1,000,000 keys, so it waits for a cheaper encoding.
        placed = sorted(order.keys() & found.keys(), key=order.__getitem__)
        target.update(zip(placed, map(found.__getitem__, placed), strict=True))
        target.update(found)


def plain_values(
    store: Store | None, op: str, checkpoint: int
) -> list[tuple[str, bytes]]:
    """``op``'s non-keyed attributes in ``store`` at ``checkpoint``."""
    if store is None:
        return []
    found = []
    for _, attr in sorted(s for s in store.attributes("plain") if s[0] == op):
        data = store.plain_value(op, attr, checkpoint)
        if data is not None:
            found.append((attr, data))
    return found


def _group(op: str, attr: str, key: Any) -> int:
    try:
        return key_group(key)
    except TypeError as err:
        raise CheckpointError(
            f"cannot checkpoint attribute {attr!r} of operator {op!r}: it "
            f"holds an entry whose key {key!r} cannot be routed ({err})"
        ) from None


def owned_groups(host: int, workers: int, single: bool) -> range:
    if host < 0 or single:
        return range(KEY_GROUPS)
    return groups_of_worker(host, workers)


# --- the directory and its manifest --------------------------------------


class Manifest:
    """``MANIFEST.json``: the job's identity and its committed checkpoints."""

    def __init__(self, directory: str, data: dict[str, Any]) -> None:
        self.directory = directory
        self.data = data

    @property
    def checkpoints(self) -> list[dict[str, Any]]:
        return self.data["checkpoints"]  # type: ignore[no-any-return]

    def latest(self) -> dict[str, Any] | None:
        return self.checkpoints[-1] if self.checkpoints else None

    def commit(self, entry: dict[str, Any], keep: int) -> int:
        """Record ``entry`` as committed; return the oldest id kept."""
        self.checkpoints.append(entry)
        del self.checkpoints[:-keep]
        self.save()
        return int(self.checkpoints[0]["id"])

    def save(self) -> None:
        path = os.path.join(self.directory, MANIFEST)
        temp = path + ".tmp"
        with open(temp, "w", encoding="utf-8") as handle:
            json.dump(self.data, handle, indent=1)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
        fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def read_manifest(directory: str) -> Manifest:
    """Load the manifest of an existing checkpoint directory."""
    path = os.path.join(directory, MANIFEST)
    if not os.path.isfile(path):
        raise IncompatibleCheckpoint(
            f"{directory!r} is not a sage_mp checkpoint directory: it has no {MANIFEST}"
        )
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except (OSError, ValueError) as err:
        raise IncompatibleCheckpoint(
            f"cannot read {path!r} ({err}); the checkpoint directory is "
            "damaged. Move it away and start with an empty directory"
        ) from None
    if data.get("format") != FORMAT:
        raise IncompatibleCheckpoint(
            f"{directory!r} was written in checkpoint format "
            f"{data.get('format')!r}; this sage_mp reads format {FORMAT}. "
            "Resume it with the sage_mp version that wrote it, or start "
            "fresh (--fresh)"
        )
    return Manifest(directory, data)


def check_safe(directory: str) -> None:
    """Refuse a directory another user owns or others may write.

    Restoring unpickles what is in it, so whoever can write there could
    run code in this job.
    """
    info = os.stat(directory)
    problems = []
    if info.st_uid != os.getuid():
        problems.append(f"it is owned by uid {info.st_uid}, not by you ({os.getuid()})")
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        problems.append(
            f"its permissions ({stat.filemode(info.st_mode)}) let other users write"
        )
    if problems:
        raise IncompatibleCheckpoint(
            f"refusing to use checkpoint directory {directory!r}: "
            + " and ".join(problems)
            + ". Restoring unpickles its contents, so it must be private: "
            f"run `chmod 700 {directory}` if you trust its contents"
        )


def check_directory(directory: str) -> None:
    """Refuse a path that cannot hold this job's checkpoints.

    Creates and changes nothing, so the CLI calls it before a job
    script runs; a path that does not exist yet passes.
    """
    if not os.path.exists(directory):
        return
    if not os.path.isdir(directory):
        raise IncompatibleCheckpoint(
            f"checkpoint directory {directory!r} exists and is not a directory"
        )
    check_safe(directory)
    has_manifest = os.path.isfile(os.path.join(directory, MANIFEST))
    if not has_manifest and set(os.listdir(directory)) - {LOCK}:
        raise IncompatibleCheckpoint(
            f"{directory!r} is not empty and holds no {MANIFEST}: it is not a "
            "sage_mp checkpoint directory, and sage_mp will not write into "
            "it. Pick an empty or new directory"
        )


def lock_directory(directory: str, job: str) -> int:
    """Make sure no other running job uses ``directory``, and keep it so.

    Two jobs checkpointing into one directory would commit over each
    other's checkpoints. The lock is an ``flock`` on ``LOCK`` inside
    it, held through the returned descriptor until that is closed or
    the process ends, however it ends: no stale lock outlives a killed
    job. Makes the directory when it is missing.
    """
    if not os.path.exists(directory):
        os.makedirs(directory, mode=0o700)
    check_directory(directory)
    fd = os.open(os.path.join(directory, LOCK), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip()
        os.close(fd)
        raise IncompatibleCheckpoint(
            f"checkpoint directory {directory!r} is in use by another running "
            f"job ({holder or 'its holder did not say which'}); wait for it to "
            "end, or give this job a checkpoint_dir of its own"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"job {job!r}, pid {os.getpid()}\n".encode(), 0)

    return fd


def open_directory(
    config: CheckpointConfig, fingerprint: list[list[str]], job: str
) -> Manifest:
    """Wipe the directory (fresh) or check its manifest; return that.

    Comes after :func:`lock_directory`, which makes the directory and
    checks that it is a checkpoint directory.
    """
    directory = config.directory
    has_manifest = os.path.isfile(os.path.join(directory, MANIFEST))
    if has_manifest and config.fresh:
        _wipe(directory)
        has_manifest = False
    if not has_manifest:
        manifest = Manifest(
            directory,
            {
                "format": FORMAT,
                "job": job,
                "key_groups": KEY_GROUPS,
                "fingerprint": fingerprint,
                "created": time.time(),
                "checkpoints": [],
            },
        )
        manifest.save()
        return manifest
    manifest = read_manifest(directory)
    _check_fits(manifest, fingerprint, directory)
    return manifest


def _wipe(directory: str) -> None:
    for name in os.listdir(directory):
        path = os.path.join(directory, name)
        if name == DRIVER_STORE or name.startswith("worker-"):
            shutil.rmtree(path)
        elif name in (MANIFEST, MANIFEST + ".tmp"):
            os.remove(path)


def _check_fits(manifest: Manifest, fingerprint: list[list[str]], where: str) -> None:
    data = manifest.data
    if data.get("key_groups") != KEY_GROUPS:
        raise IncompatibleCheckpoint(
            f"{where!r} was written with {data.get('key_groups')} key groups; "
            f"this sage_mp uses {KEY_GROUPS}, so keys would land in the wrong "
            "groups. Start fresh (--fresh) or use another directory"
        )
    old = [tuple(op) for op in data.get("fingerprint", [])]
    new = [tuple(op) for op in fingerprint]
    if old != new:
        raise IncompatibleCheckpoint(
            f"{where!r} holds checkpoints of another pipeline.\n"
            f"  saved:   {_describe(old)}\n  this job: {_describe(new)}\n"
            "Resume with the pipeline that wrote it, point checkpoint_dir "
            "elsewhere, or start fresh (--fresh / fresh=True)"
        )


def _describe(ops: list[tuple[str, ...]]) -> str:
    return " -> ".join(f"{kind}({name})" for kind, name, *_ in ops) or "(nothing)"


def worker_stores(directory: str) -> list[tuple[int, str]]:
    """(index, folder name) of every worker store there, by index."""
    names = [n for n in os.listdir(directory) if n.startswith("worker-")]
    return sorted((int(n.split("-")[1]), n) for n in names)


def open_stores(directory: str, readonly: bool = True) -> list[Store]:
    """Open every store in the directory (workers in index order, driver last)."""
    names = [name for _, name in worker_stores(directory)]
    if os.path.isdir(os.path.join(directory, DRIVER_STORE)):
        names.append(DRIVER_STORE)
    return [Store(os.path.join(directory, name), readonly) for name in names]


# --- the driver's side: when to cut, when to commit ----------------------


class Coordinator:
    """Starts checkpoints, gathers acknowledgements, commits them."""

    def __init__(self, config: CheckpointConfig, manifest: Manifest, workers: int):
        self.config = config
        self.manifest = manifest
        self.workers = workers
        latest = manifest.latest()
        self.horizon = int(manifest.checkpoints[0]["id"]) if manifest.checkpoints else 0
        self.next_id = self._next_id(latest)
        purge_uncommitted(config.directory, self.restore_point())
        self.store = Store(os.path.join(config.directory, DRIVER_STORE))
        self.pending: dict[str, Any] | None = None
        self.last_started = time.monotonic()
        self.failures = 0
        self.history: list[dict[str, Any]] = []
        #: (id, per-operator counts) of the newest checkpoint committed
        #: by this run: what every operator had done at its barrier.
        self.committed_counts: tuple[int, dict[str, dict[str, int]]] | None = None
        #: Counts at the checkpoint the last recovery went back to; the
        #: processes started since then count from zero on top of them.
        self.base_counts: dict[str, dict[str, int]] = {}

    def _next_id(self, latest: dict[str, Any] | None) -> int:
        # Ids are never reused: a checkpoint that died half-written may
        # have left blobs under its id in some stores.
        highest = int(latest["id"]) if latest else 0
        for store in open_stores(self.config.directory):
            try:
                highest = max([highest, *store.checkpoints()])
            finally:
                store.close()
        return highest + 1

    def restore_point(self) -> RestorePoint | None:
        latest = self.manifest.latest()
        if latest is None:
            return None
        return RestorePoint(
            int(latest["id"]), int(latest["tick"]), int(latest["workers"])
        )

    def due(self) -> bool:
        return (
            self.pending is None
            and time.monotonic() - self.last_started >= self.config.interval
        )

    def begin(self, tick: int, driver_parts: tuple[Any, Any]) -> int:
        checkpoint = self.next_id
        self.next_id += 1
        self.last_started = time.monotonic()
        self.pending = {
            "id": checkpoint,
            "tick": tick,
            "started": time.time(),
            "t0": time.perf_counter(),
            "acks": {},
            "keyed": dict(driver_parts[0]),
            "plain": dict(driver_parts[1]),
            "driver_stages": 0,
            "driver_counts": [],
            "pause": 0.0,
        }
        return checkpoint

    def add_driver_parts(
        self,
        checkpoint: int,
        parts: tuple[Any, Any],
        counts: dict[str, dict[str, int]],
    ) -> None:
        pending = self.pending
        if pending is None or pending["id"] != checkpoint:
            return
        pending["keyed"].update(parts[0])
        pending["plain"].update(parts[1])
        pending["driver_stages"] += 1
        pending["driver_counts"].append(counts)

    def ack(self, worker: int, checkpoint: int, info: dict[str, Any]) -> None:
        pending = self.pending
        if pending is None or pending["id"] != checkpoint:
            return
        pending["acks"][worker] = info

    def ready(self, driver_stages: int) -> bool:
        pending = self.pending
        return (
            pending is not None
            and len(pending["acks"]) == self.workers
            and pending["driver_stages"] >= driver_stages
        )

    def commit(self) -> dict[str, Any] | None:
        """Write the driver's parts, then the manifest; None on failure."""
        pending = self.pending
        assert pending is not None
        self.pending = None
        errors = [a["error"] for a in pending["acks"].values() if a.get("error")]
        if not errors:
            try:
                driver_bytes = self.store.write(
                    pending["id"],
                    pending["keyed"],
                    pending["plain"],
                    {"id": pending["id"], "tick": pending["tick"]},
                    self.horizon,
                    merge_blobs,
                )
            except Exception as err:  # noqa: BLE001 - a failed write is reported
                errors.append(f"driver: {type(err).__name__}: {err}")
        if errors:
            self._failed(pending["id"], errors)
            return None
        self.failures = 0
        acks = pending["acks"].values()
        entry = {
            "id": pending["id"],
            "tick": pending["tick"],
            "time": pending["started"],
            "workers": self.workers,
            "bytes": driver_bytes + sum(a["bytes"] for a in acks),
            "duration": time.perf_counter() - pending["t0"],
            "pause": max([a["pause"] for a in acks], default=0.0),
            "records": pending.get("records", 0),
        }
        self.horizon = self.manifest.commit(entry, self.config.keep)
        self.history.append(entry)
        self._drop_unneeded_stores()
        counts = [a.get("counts", {}) for a in acks] + pending["driver_counts"]
        self.committed_counts = (pending["id"], sum_counts([self.base_counts, *counts]))
        return entry

    def _drop_unneeded_stores(self) -> None:
        """Delete the stores of workers that no kept checkpoint had.

        After a rescale down, the removed workers' stores still hold
        the groups they owned, until every kept checkpoint was written
        by the smaller job. Each of those starts with a base of every
        group in the remaining stores (see ``StageState.rebase``), so
        no restore reads the others any more.
        """
        kept = self.manifest.checkpoints
        needed = max((int(entry["workers"]) for entry in kept), default=self.workers)
        directory = self.config.directory
        for index, name in worker_stores(directory):
            if index >= needed:
                shutil.rmtree(os.path.join(directory, name), ignore_errors=True)
                log.info("deleted %s: no kept checkpoint needs it", name)

    def _failed(self, checkpoint: int, errors: list[str]) -> None:
        """Count a failed checkpoint; raise when too many failed in a row."""
        self.failures += 1
        log.warning("checkpoint %s failed: %s", checkpoint, "; ".join(errors))
        if self.failures > self.config.max_failures:
            raise CheckpointError(
                f"{self.failures} checkpoints in a row failed; the last: "
                + "; ".join(errors)
                + f". The last good checkpoint in {self.config.directory!r} is "
                f"still intact. Free disk space or fix the directory, then "
                "resume the job"
            )
        return None

    def close(self) -> None:
        self.store.close()


def sum_counts(
    entries: list[dict[str, dict[str, int]]],
) -> dict[str, dict[str, int]]:
    """Per-operator ``in``/``out``/``skipped`` counts, summed."""
    total: dict[str, dict[str, int]] = {}
    for entry in entries:
        for name, counts in entry.items():
            into = total.setdefault(name, {"in": 0, "out": 0, "skipped": 0})
            for field_name in ("in", "out", "skipped"):
                into[field_name] += counts[field_name]
    return total


def fingerprint(plan: Any) -> list[list[str]]:
    """What identifies a pipeline for resuming: operator kinds and names."""
    ops = [plan.source]
    for stage in plan.stages:
        ops += stage.operators
        if stage.route is not None and stage.route.keyby is not None:
            ops.append(stage.route.keyby)
    return [[op.kind, op.name] for op in ops]


# --- a worker's side -----------------------------------------------------


@dataclass(frozen=True)
class WorkerCheckpointing:
    """What a forked worker needs to take part in checkpoints."""

    directory: str
    restore: RestorePoint | None
    horizon: int
    crash_at: int | None = None  # test hook: die while writing this id
    fail: frozenset[int] = frozenset()  # test hook: these writes fail
    #: Worker 0's fallback for its stage 0's non-keyed attributes: what
    #: the driver's store holds of them at ``restore`` (see
    #: StageState.restore). Read by the driver, because a forked worker
    #: cannot open an LMDB environment that its parent has open.
    head_plain: dict[str, list[tuple[str, bytes]]] = field(default_factory=dict)


class WorkerCheckpointer:
    """Captures a worker's stage instances at barriers, writes, acks.

    Lives in the worker process; its LMDB environment is opened there,
    never inherited across the fork.
    """

    def __init__(self, settings: WorkerCheckpointing, me: int, workers: int) -> None:
        self.settings = settings
        self.me = me
        self.workers = workers
        self.horizon = settings.horizon
        self.store = Store(os.path.join(settings.directory, worker_store(me)))
        self.stages: dict[int, Any] = {}
        self.capturing: int | None = None  # checkpoint being captured
        self.began: set[int] = set()  # stages that passed its barrier
        self.pause = 0.0  # longest single step of the current checkpoint
        self.send: Any = None
        #: Per-operator counts of the stages at the current barrier.
        self.counts: dict[str, dict[str, int]] = {}
        #: Once every stage is captured: the checkpoint's keyed and
        #: plain blobs, and the keyed blobs still to look at for
        #: compaction before the write.
        self.captured: tuple[dict[Any, Any], dict[Any, Any]] | None = None
        self.to_compact: list[tuple[str, str, int]] = []

    def attach(self, stages: dict[int, Any], send: Any) -> None:
        """Track ``stages``; restore them first when resuming."""
        self.stages = stages
        self.send = send
        for stage in stages.values():
            functions = [(spec.name, fn) for spec, fn in stage.functions]
            stage.tracker = StageState(functions, keyed=stage.keyed_input)
        point = self.settings.restore
        if point is not None:
            self._restore(point)

    def _restore(self, point: RestorePoint) -> None:
        others = [
            Store(os.path.join(self.settings.directory, worker_store(i)), True)
            for i in range(point.workers)
            if i != self.me
            and os.path.isdir(os.path.join(self.settings.directory, worker_store(i)))
        ]
        try:
            stores = [self.store, *others]
            own = self.store if self.me < point.workers else None
            for stage in self.stages.values():
                groups = owned_groups(self.me, self.workers, stage.plan.single)
                # Our stage 0 may have run in the driver when ``point``
                # was written: the driver read its attributes for us.
                first = self.me == 0 and stage.index == 0
                fallback = self.settings.head_plain if first else None
                stage.tracker.restore(stores, own, point, groups, fallback)
                if point.workers != self.workers and stage.tracker.keyed:
                    stage.tracker.rebase = groups
                stage.start_at(point.tick, point.checkpoint)
        finally:
            for store in others:
                store.close()

    def on_barrier(self, stage: Any, checkpoint: int) -> None:
        """A stage passed the barrier: start capturing it (see StageState)."""
        started = time.perf_counter()
        stage.tracker.begin()
        if not self.began:
            self.counts = {}
        # What the stage has done up to the barrier: after a recovery to
        # this checkpoint, the job's counts go on from these.
        self.counts.update(stage.counts())
        self.capturing = checkpoint
        self.began.add(stage.index)
        self._paused(started)

    def busy(self) -> bool:
        """True while a checkpoint is being captured or awaits writing."""
        return self.capturing is not None

    def work(self, budget: float | None) -> None:
        """Do up to ``budget`` seconds of capture work (None: all of
        it); write when done.

        The worker loop calls this between ticks, and polls instead of
        sleeping while it lasts, so the capture never pauses the stream
        for long and never waits while the worker idles.
        """
        checkpoint = self.capturing
        if checkpoint is None:
            return
        started = time.perf_counter()
        until = None if budget is None else started + budget
        if self.captured is None and not self._capture(until):
            self._paused(started)
            return
        if not self._compact(checkpoint, until):
            self._paused(started)
            return
        assert self.captured is not None
        keyed, plain = self.captured
        self.captured = None
        self.capturing = None
        self.began = set()
        self._write(checkpoint, keyed, plain, started)

    def finish(self, budget: float) -> None:
        """At the end of the stream: finish the checkpoint that every
        stage has begun, in steps of ``budget`` seconds, so that its
        pause is measured step by step like any other checkpoint's."""
        while self.capturing is not None and len(self.began) == len(self.stages):
            self.work(budget)

    def _capture(self, until: float | None) -> bool:
        """Capture until ``until``; True once every stage is captured."""
        for index in sorted(self.began):
            if not self.stages[index].tracker.work(until):
                return False
        if len(self.began) < len(self.stages):
            return False
        keyed: dict[Any, Any] = {}
        plain: dict[Any, Any] = {}
        for index in sorted(self.began):
            stage_keyed, stage_plain = self.stages[index].tracker.collect()
            keyed.update(stage_keyed)
            plain.update(stage_plain)
        self.captured = keyed, plain
        self.to_compact = [slot for slot, (_, base) in keyed.items() if not base]
        return True

    def _compact(self, checkpoint: int, until: float | None) -> bool:
        """Merge the groups whose compaction is due, until ``until``;
        True once none is left.

        Compacting a group rewrites all of its entries. Done inside the
        write, it would make the write's one step, and so the stream's
        pause, grow with the state.
        """
        assert self.captured is not None
        keyed = self.captured[0]
        while self.to_compact:
            if until is not None and time.perf_counter() >= until:
                return False
            slot = self.to_compact.pop()
            blob = keyed[slot][0]
            try:
                blobs = self.store.blobs_to_compact(*slot, checkpoint)
                if blobs is not None:
                    keyed[slot] = (_merged([*blobs, DELTA + blob]), True)
            except Exception:  # noqa: BLE001 - the write reports it
                # The write compacts what is left here itself, and
                # reports whatever fails there to the driver.
                continue
        return True

    def _paused(self, started: float) -> None:
        self.pause = max(self.pause, time.perf_counter() - started)

    def _write(
        self,
        checkpoint: int,
        keyed: dict[Any, Any],
        plain: dict[Any, Any],
        step: float,
    ) -> None:
        """Write and acknowledge; ``step`` is when this loop step began."""
        started = time.perf_counter()
        info: dict[str, Any] = {"counts": self.counts}
        crash = None
        if self.settings.crash_at == checkpoint:
            crash = _crash_now
        try:
            if checkpoint in self.settings.fail:
                raise OSError(28, "No space left on device (test hook)")
            info["bytes"] = self.store.write(
                checkpoint,
                keyed,
                plain,
                {"id": checkpoint, "worker": self.me},
                self.horizon,
                merge_blobs,
                crash,
            )
        except Exception as err:  # noqa: BLE001 - the driver decides
            info["error"] = f"worker {self.me}: {type(err).__name__}: {err}"
            info["bytes"] = 0
            # The captured deltas are lost with the transaction, and the
            # keys they covered are no longer marked as processed: the
            # next checkpoint writes our groups whole instead.
            for stage in self.stages.values():
                if stage.tracker.keyed:
                    stage.tracker.rebase = owned_groups(
                        self.me, self.workers, stage.plan.single
                    )
        info["write"] = time.perf_counter() - started
        self._paused(step)
        info["pause"], self.pause = self.pause, 0.0
        self.send(-1, ("ack", checkpoint, info))

    def on_commit(self, checkpoint: int, horizon: int) -> None:
        self.horizon = horizon

    def close(self) -> None:
        self.store.close()


def _crash_now() -> None:
    # Test hook: die the way kill -9 would, in the middle of a write
    # transaction that has put every blob but not committed.
    os._exit(9)


def purge_uncommitted(
    directory: str, point: RestorePoint | None, driver: Store | None = None
) -> None:
    """Delete blobs of checkpoints after ``point`` from every store.

    Such checkpoints died before committing. Their blobs would
    otherwise be mistaken for later checkpoints' data once ids pass
    them.
    """
    upto = point.checkpoint if point is not None else 0
    stores = [Store(os.path.join(directory, n)) for _, n in worker_stores(directory)]
    if driver is None and os.path.isdir(os.path.join(directory, DRIVER_STORE)):
        stores.append(Store(os.path.join(directory, DRIVER_STORE)))
    for store in stores:
        try:
            if any(ident > upto for ident in store.checkpoints()):
                store.purge_above(upto)
        finally:
            store.close()
    if driver is not None and any(i > upto for i in driver.checkpoints()):
        driver.purge_above(upto)
