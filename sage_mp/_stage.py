"""One stage instance: its operator chain and its tick-ordered input.

A stage instance owns the function instances of its operators, runs
each record depth-first through them, and emits one batch per tick to
every instance of the next stage. It reads its input per sender, and
processes tick ``t`` only when every sender of ``t`` has delivered it,
merging their batches back into source order. It never touches a
transport directly: it is handed ``send``.

The same class runs the stages hosted by workers and the driver's
final stage.
"""

from __future__ import annotations

import itertools
import logging
import operator
import os
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

from . import _protocol as P
from ._chain import CHAIN_FILE, compile_chain
from ._partition import key_group, worker_for_group
from ._plan import OperatorSpec, Route, StagePlan
from ._snapshot import Batch, RecordNotPicklable, freeze_into, freeze_whole, thaw
from ._transport import DRIVER, MessageNotPicklable
from .context import CurrentRecord, RuntimeContext
from .errors import FailureReport
from .functions import BaseFunction, FlatMapFunction, _Wrapped

__all__ = ["StageFailure", "StageInstance", "read_slice", "short_repr"]

log = logging.getLogger(__name__)

Send = Callable[[int, tuple[Any, ...]], None]


class StageFailure(Exception):
    """Raised out of a stage when the job must stop; carries the report."""

    def __init__(self, report: FailureReport) -> None:
        super().__init__(report.error)
        self.report = report


class _KeyProblem(Exception):
    """A key extractor returned something that cannot be a key."""


def short_repr(value: Any, limit: int = 200) -> str:
    try:
        text = repr(value)
    except Exception as err:  # noqa: BLE001 - a broken __repr__ must not hide the error
        text = f"<{type(value).__name__} with failing repr: {err!r}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --- operator chain nodes ---------------------------------------------
# Each node calls the user's function and pushes results to the next
# node. Records move depth-first, so a value returned from live state is
# consumed (or frozen, at the tail) before the next record can change it.


class _Node:
    __slots__ = ("name", "fn", "execute", "next", "count")

    def __init__(self, name: str, fn: BaseFunction, nxt: Callable[[Any], None]):
        self.name = name
        self.fn = fn
        self.execute = _direct(fn)
        self.next = nxt
        self.count = 0


class _MapNode(_Node):
    __slots__ = ()

    def push(self, value: Any) -> None:
        self.count += 1
        out = self.execute(value)
        if out is not None:
            self.next(out)


class _FilterNode(_Node):
    __slots__ = ()

    def push(self, value: Any) -> None:
        self.count += 1
        if self.execute(value):
            self.next(value)


class _FlatMapNode(_Node):
    __slots__ = ()

    def push(self, value: Any) -> None:
        self.count += 1
        out = self.execute(value)
        if out is not None:
            for item in out:
                if item is not None:
                    self.next(item)


class _SinkNode(_Node):
    __slots__ = ()

    def push(self, value: Any) -> None:
        self.count += 1
        self.execute(value)


_NODES: dict[str, type[_MapNode | _FilterNode | _FlatMapNode | _SinkNode]] = {
    "map": _MapNode,
    "filter": _FilterNode,
    "flatmap": _FlatMapNode,
    "sink": _SinkNode,
}


class _Emitter:
    """Tail of a stage: routes each record into a per-destination batch.

    One subclass per route kind keeps branches off the per-record path.
    ``freeze`` is false when no map or flatmap precedes the emitter in
    its stage: then every value is an object this process unpickled,
    which no user state can refer to, and copying it would be waste.
    """

    __slots__ = ("name", "batches", "current", "count", "extract", "add", "spread")

    def __init__(
        self,
        route: Route,
        destinations: int,
        current: CurrentRecord,
        extract: Callable[[Any], Any] | None,
        freeze: bool,
    ) -> None:
        self.name = route.keyby.name if route.keyby else "emit"
        self.batches = [Batch() for _ in range(destinations)]
        self.current = current
        self.count = 0
        self.extract = extract
        self.add = freeze_into if freeze else _append
        self.spread = itertools.cycle(range(destinations))

    def key_of(self, value: Any) -> Any:
        if self.extract is None:
            return self.current.key
        key = self.extract(value)
        if key is None:
            raise _KeyProblem(
                f"key extractor {self.name!r} returned None for record "
                f"{short_repr(value)}; every record needs a key (return "
                "a sentinel such as '' or use filter() to drop it)"
            )
        return key

    def push(self, value: Any) -> None:
        self.count += 1
        key = self.key_of(value)
        self.add(self.batches[next(self.spread)], self.current.idx, key, value)


class _HashEmitter(_Emitter):
    __slots__ = ("cache", "workers")

    def __init__(self, *args: Any, workers: int) -> None:
        super().__init__(*args)
        self.cache: dict[Any, int] = {}
        self.workers = workers

    def push(self, value: Any) -> None:
        self.count += 1
        key = self.extract(value)  # type: ignore[misc]
        dest = self.cache.get(key)
        if dest is None:
            dest = self._route(key, value)
        if self.add is _append:
            batch = self.batches[dest]
            batch.idxs.append(self.current.idx)
            batch.keys.append(key)
            batch.values.append(value)
        else:
            freeze_into(self.batches[dest], self.current.idx, key, value)

    def _route(self, key: Any, value: Any) -> int:
        if key is None:
            self.key_of(value)  # raises the explanatory error
        try:
            dest = worker_for_group(key_group(key), self.workers)
        except TypeError as err:
            raise _KeyProblem(
                f"key extractor {self.name!r} returned a key of type "
                f"{type(key).__name__} ({short_repr(key, 60)}): {err}"
            ) from None
        if len(self.cache) >= _ROUTE_CACHE:
            self.cache.clear()
        self.cache[key] = dest
        return dest


class _FirstEmitter(_Emitter):
    """To a single destination (worker 0 or the driver)."""

    __slots__ = ()

    def push(self, value: Any) -> None:
        self.count += 1
        self.add(self.batches[0], self.current.idx, self.key_of(value), value)


class _CountEmitter(_Emitter):
    """To the driver, which has no operators: only progress travels."""

    __slots__ = ()

    def push(self, value: Any) -> None:
        self.count += 1


class _BroadcastEmitter(_Emitter):
    __slots__ = ()

    def push(self, value: Any) -> None:
        self.count += 1
        key = self.key_of(value)
        for batch in self.batches:
            self.add(batch, self.current.idx, key, value)


def _append(batch: Batch, idx: int, key: Any, value: Any) -> None:
    batch.idxs.append(idx)
    batch.keys.append(key)
    batch.values.append(value)


# Keys whose worker is remembered per emitter; the cache is cleared
# when full, so memory stays bounded with unbounded key spaces.
_ROUTE_CACHE = 1 << 20


# --- the stage instance ------------------------------------------------


class StageInstance:
    """One instance of one stage, hosted by a worker or by the driver."""

    def __init__(
        self,
        plan: StagePlan,
        previous: StagePlan | None,
        next_stage: StagePlan | None,
        host: int,
        workers: int,
        send: Send,
        *,
        job_name: str = "",
        skip_errors: bool = False,
        on_barrier: Callable[[StageInstance, int], None] | None = None,
    ) -> None:
        self.plan = plan
        self.index = plan.index
        self.host = host
        self.workers = workers
        self.send = send
        self.skip_errors = skip_errors
        self.on_barrier = on_barrier
        self.current = CurrentRecord()
        self.queues: dict[int, deque[tuple[Any, ...]]] = {}
        self.next_tick = 0
        self.end_tick: int | None = None
        self.ends_from: set[int] = set()
        self.barriers: dict[int, int] = {}  # tick -> checkpoint id
        self.last_barrier = -1
        self.finished = False
        self.skipped: dict[str, int] = {}
        self.busy = 0.0
        self.records_in = 0
        #: The tick being processed: dead letters carry it, so that a
        #: recovery can drop those it will write again.
        self.tick = -1
        #: Set by the checkpointer of a keyed stage: keys processed since
        #: the last checkpoint are added to ``tracker.dirty`` per tick.
        self.tracker: Any = None
        #: The source collection, when this stage 0 instance reads and
        #: routes ranges of it itself (see P.RANGE).
        self.collection: Any = None
        #: Records this run kept as its own, or reported as unkeyable,
        #: when it reads every tick, and the sum of their positions in
        #: the collection (see P.KEPT).
        self.kept = 0
        self.kept_at = 0
        self._mine: dict[Any, bool] = {}
        #: What feeds this stage's records when none of its operators
        #: made them (the source, for the driver's head stage): the
        #: operator an unpicklable record is blamed on.
        self.producer = ""

        self.previous_route = (
            previous.route.kind if previous is not None and previous.route else None
        )
        self._senders_rule(previous)
        self._destinations = self._destinations_of(next_stage)
        parallelism = 1 if plan.single or plan.in_driver else workers
        self.functions: list[tuple[OperatorSpec, BaseFunction]] = []
        for spec in plan.operators:
            self.functions.append((spec, self._make(spec, parallelism, job_name)))
        extract = None
        if plan.route is not None and plan.route.keyby is not None:
            keyfn = self._make(plan.route.keyby, parallelism, job_name)
            self.functions.append((plan.route.keyby, keyfn))
            extract = _direct(keyfn)
        self.emitter: _Emitter | None = None
        tail: Callable[[Any], None] = _discard
        if plan.route is not None:
            self.emitter = self._make_emitter(plan, next_stage, extract)
            tail = self.emitter.push
        # A stage of nothing but a hash keyby whose values need no
        # freezing routes whole ticks at once (see _route_all).
        self._route_only: _HashEmitter | None = None
        if (
            not plan.operators
            and isinstance(self.emitter, _HashEmitter)
            and self.emitter.add is _append
        ):
            self._route_only = self.emitter
        self.nodes: list[_Node] = []
        for spec, fn in reversed(self.functions[: len(plan.operators)]):
            node = _NODES[spec.kind](spec.name, fn, tail)
            if isinstance(fn, FlatMapFunction):
                fn._collector = tail  # type: ignore[attr-defined]
            self.nodes.insert(0, node)
            tail = node.push
        # The nodes serve FlatMapFunction.collect and hold the counts; the
        # compiled loop runs every other record through the chain.
        ends_in_sink = bool(plan.operators) and plan.operators[-1].kind == "sink"
        self._runner = compile_chain(
            [spec.kind for spec in plan.operators],
            [node.execute for node in self.nodes],
            self.nodes,
            None if ends_in_sink or self.emitter is None else self.emitter.push,
        )

    # -- construction helpers

    def _make(self, spec: OperatorSpec, parallelism: int, job: str) -> BaseFunction:
        try:
            fn = spec.instantiate()
        except Exception as err:
            raise StageFailure(self._report(spec.name, err, None, None, "init"))
        index = self.host if self.host != DRIVER else -1
        fn.ctx = RuntimeContext(spec.name, index, parallelism, self.current, job)
        return fn

    def _make_emitter(
        self, plan: StagePlan, next_stage: StagePlan | None, extract: Any
    ) -> _Emitter:
        assert plan.route is not None
        kind = plan.route.kind
        freeze = any(op.kind in ("map", "flatmap") for op in plan.operators)
        args = (plan.route, len(self._destinations), self.current, extract, freeze)
        if kind == "hash":
            return _HashEmitter(*args, workers=self.workers)
        if kind == "driver" and next_stage is not None and not next_stage.operators:
            return _CountEmitter(*args)
        if kind in ("driver", "single"):
            return _FirstEmitter(*args)
        if kind == "broadcast":
            return _BroadcastEmitter(*args)
        return _Emitter(*args)

    def _senders_rule(self, previous: StagePlan | None) -> None:
        self.fifo = previous is None  # stage 0: the driver deals ticks out
        self.round_robin = False
        if previous is None or previous.at_head:
            self.upstream: list[int] = [DRIVER]
        elif previous.reads_all:
            self.upstream = [self.host]
        else:
            self.round_robin = previous.index == 0
            self.upstream = [0] if previous.single else list(range(self.workers))
        for sender in self.upstream:
            self.queues[sender] = deque()

    def _destinations_of(self, next_stage: StagePlan | None) -> list[int]:
        if next_stage is None:
            return []
        if self.plan.reads_all:
            return [self.host]
        if next_stage.in_driver:
            return [DRIVER]
        if next_stage.single:
            return [0]
        return list(range(self.workers))

    @property
    def keyed_input(self) -> bool:
        """True when records arrive here routed by a hash keyby."""
        return self.previous_route == "hash"

    def start_at(self, tick: int, checkpoint: int) -> None:
        """Resume after checkpoint ``checkpoint``, which cut before ``tick``."""
        self.next_tick = tick
        self.last_barrier = checkpoint

    def open(self) -> None:
        """Call ``open()`` on every function, in pipeline order."""
        for spec, fn in self.functions:
            try:
                fn.open()
            except Exception as err:
                raise StageFailure(self._report(spec.name, err, None, None, "open"))

    # -- input

    def deliver(self, sender: int, message: tuple[Any, ...]) -> None:
        self.queues[sender].append(message)

    def step(self) -> bool:
        """Process every tick that is ready; True if anything happened."""
        if self.finished:
            return False
        if self.fifo:
            return self._step_fifo()
        progressed = False
        while not self.finished:
            tick = self.next_tick
            senders = self._senders_of(tick)
            for sender in senders:
                self._take_markers(sender)
            if self._barrier_due(tick):
                progressed = True
                continue
            if self.end_tick is not None and tick >= self.end_tick:
                for sender in self.upstream:
                    self._take_markers(sender)
                if len(self.ends_from) == len(self.upstream):
                    self._finish()
                    return True
                return progressed
            batches = []
            for sender in senders:
                queue = self.queues[sender]
                if not queue or queue[0][0] != P.BATCH:
                    return progressed
                batches.append(queue[0])
            for sender in senders:
                self.queues[sender].popleft()
            self._process(tick, batches)
            progressed = True
        return progressed

    def _step_fifo(self) -> bool:
        queue = self.queues[DRIVER]
        progressed = bool(queue)
        while queue and not self.finished:
            message = queue.popleft()
            kind = message[0]
            if kind == P.BATCH:
                self._process(message[2], [message])
            elif kind == P.RANGE:
                _, _, tick, start, stop = message
                self.feed_slice(tick, start, *read_slice(self.collection, start, stop))
            elif kind == P.BARRIER:
                self._snapshot(message[2], message[3])
            elif kind == P.END:
                self.end_tick = message[2]
                self._finish()
        return progressed

    def _senders_of(self, tick: int) -> list[int]:
        if self.round_robin:
            return [tick % self.workers]
        return self.upstream

    def _take_markers(self, sender: int) -> None:
        queue = self.queues[sender]
        while queue and queue[0][0] != P.BATCH:
            message = queue.popleft()
            if message[0] == P.BARRIER:
                checkpoint, tick = message[2], message[3]
                if checkpoint > self.last_barrier:
                    self.barriers[tick] = checkpoint
            elif message[0] == P.END:
                self.end_tick = message[2]
                self.ends_from.add(sender)

    def _barrier_due(self, tick: int) -> bool:
        checkpoint = self.barriers.pop(tick, None)
        if checkpoint is None:
            return False
        self._snapshot(checkpoint, tick)
        return True

    # -- processing

    def _process(self, tick: int, batches: list[tuple[Any, ...]]) -> None:
        started = time.perf_counter()
        self.tick = tick
        idxs, keys, values = _merge(batches)
        self.records_in += len(values)
        tracker = self.tracker
        if tracker is not None and tracker.keyed:
            if tracker.capturing:
                tracker.freeze_touched(keys)
            tracker.dirty.update(keys)
        if self._route_only is not None:
            self._route_all(idxs, values)
        else:
            self._run_chain(idxs, keys, values)
        self._emit_tick(tick)
        self.busy += time.perf_counter() - started
        self.next_tick = tick + 1

    def _run_chain(self, idxs: Any, keys: Any, values: list[Any]) -> None:
        self._runner(idxs, keys, values, self.current, self._on_error)

    def _route_all(
        self, idxs: Any, values: list[Any], with_values: bool = True
    ) -> None:
        """A stage that is only a hash keyby: route a whole tick at once.

        The driver runs this for every source record when the source
        feeds a keyby directly, so it works in C-level passes (map,
        compress) instead of a Python loop per record. Anything unusual
        (an exception, a None key, a key that cannot be routed) falls
        back to :meth:`_route_each`, which reports it per record.
        Without ``with_values`` the batches get positions and keys only.
        """
        emitter = self._route_only
        assert emitter is not None
        try:
            keys, dests = self._keys_and(values, emitter.cache, emitter._route)
        except Exception:
            self._route_each(idxs, values)
            return
        positions = list(idxs)
        batches = emitter.batches
        if len(batches) == 1:
            batches[0].idxs += positions
            batches[0].keys += keys
            if with_values:
                batches[0].values += values
        else:
            for dest, batch in enumerate(batches):
                mask = list(map(dest.__eq__, dests))
                batch.idxs += itertools.compress(positions, mask)
                batch.keys += itertools.compress(keys, mask)
                if with_values:
                    batch.values += itertools.compress(values, mask)
        emitter.count += len(values)

    def _route_each(self, idxs: Any, values: list[Any]) -> None:
        """Route record by record, reporting each failing record."""
        emitter = self._route_only
        assert emitter is not None
        batches = emitter.batches
        for idx, key, dest, value in self._each_keyed(idxs, values, True):
            batch = batches[dest]
            batch.idxs.append(idx)
            batch.keys.append(key)
            batch.values.append(value)
        emitter.count += len(values)

    def _keys_and(
        self,
        values: list[Any],
        table: dict[Any, Any],
        miss: Callable[[Any, Any], Any],
    ) -> tuple[list[Any], list[Any]]:
        """Each record's key, and what ``table`` holds for that key.

        ``miss(key, record)`` gives what ``table`` lacks (keys not seen
        yet, or a None key, for which it raises). Raises on any record
        that cannot be keyed; the callers then go record by record.
        """
        keys = list(map(self._route_only.extract, values))  # type: ignore[union-attr,arg-type]
        found = list(map(table.get, keys))
        if None in found:
            for position, item in enumerate(found):
                if item is None:
                    found[position] = miss(keys[position], values[position])
        return keys, found

    def _each_keyed(
        self, idxs: Any, values: list[Any], report: bool
    ) -> Iterator[tuple[int, Any, int, Any]]:
        """(idx, key, worker, record) for each record that can be keyed;
        one that cannot is reported when ``report``, and left out."""
        emitter = self._route_only
        assert emitter is not None
        for idx, value in zip(idxs, values, strict=True):
            try:
                key = emitter.extract(value)  # type: ignore[misc]
                dest = emitter.cache.get(key)
                if dest is None:
                    dest = emitter._route(key, value)
            except Exception as err:
                if report:
                    self.current.idx = idx
                    self._on_error(err, None, value)
                continue
            yield idx, key, dest, value

    def feed(self, tick: int, values: list[Any]) -> None:
        """Process one tick handed over in-process (the driver's head)."""
        self._process(tick, [(P.BATCH, self.index, tick, None, None, values, [])])

    def feed_slice(
        self, tick: int, start: int, offsets: Any, values: list[Any]
    ) -> None:
        """Route one tick of a collection that every worker holds.

        ``values`` are the collection's items at ``start + offset`` for
        each of ``offsets``. Each worker is sent the offsets and keys of
        its own records, not the records: it was forked with the same
        collection and reads them itself (see P.SLICE), which spares
        pickling, writing and unpickling every record. An instance that
        reads every tick keeps its own records and hands them to its
        own next stage (see ``StagePlan.reads_all``).
        """
        started = time.perf_counter()
        self.tick = tick
        emitter = self._route_only
        assert emitter is not None
        if self.plan.reads_all:
            before = emitter.count
            idxs, keys, kept, at = self._keep_own(tick, offsets, values)
            counted = emitter.count - before
            self.kept += counted
            self.kept_at += start * counted + at
            self.records_in += len(idxs)
            # To this process's next stage: the records travel as they
            # are, unpickled, with no need to read them again.
            stage = self.index + 1
            self.send(self.host, (P.BATCH, stage, tick, idxs, keys, kept, []))
            self.busy += time.perf_counter() - started
            self.next_tick = tick + 1
            return
        self.records_in += len(values)
        self._route_all(offsets, values, with_values=False)
        stage = self.index + 1
        batches = emitter.batches
        for dest, batch in zip(self._destinations, batches, strict=True):
            self.send(dest, (P.SLICE, stage, tick, start, batch.idxs, batch.keys))
        emitter.batches = [Batch() for _ in batches]
        self.busy += time.perf_counter() - started
        self.next_tick = tick + 1

    def _keep_own(
        self, tick: int, offsets: Any, values: list[Any]
    ) -> tuple[list[int], list[Any], list[Any], int]:
        """The offsets, keys and values of the records of a tick this
        worker owns, and the sum of the offsets it counted.

        Every worker reads every tick (see ``StagePlan.reads_all``), so
        a record whose key cannot be extracted is reported, and counted
        by the emitter, in one of them only: worker ``tick % workers``.
        """
        emitter = self._route_only
        assert emitter is not None
        try:
            keys, mine = self._keys_and(values, self._mine, self._is_mine)
        except Exception:
            return self._keep_own_each(tick, offsets, values)
        idxs = list(itertools.compress(offsets, mine))
        emitter.count += len(idxs)
        kept_keys = list(itertools.compress(keys, mine))
        return idxs, kept_keys, list(itertools.compress(values, mine)), sum(idxs)

    def _is_mine(self, key: Any, value: Any) -> bool:
        """Whether this worker owns ``key``; remembered in ``_mine``."""
        dest = self._route_only._route(key, value)  # type: ignore[union-attr]
        if len(self._mine) >= _ROUTE_CACHE:
            self._mine.clear()
        mine = self._mine[key] = dest == self.host
        return mine

    def _keep_own_each(
        self, tick: int, offsets: Any, values: list[Any]
    ) -> tuple[list[int], list[Any], list[Any], int]:
        """Like :meth:`_keep_own`, record by record, reporting failures."""
        emitter = self._route_only
        assert emitter is not None
        reports = tick % self.workers == self.host
        idxs: list[int] = []
        keys: list[Any] = []
        kept: list[Any] = []
        keyed = keyed_at = 0
        for idx, key, dest, value in self._each_keyed(offsets, values, reports):
            keyed += 1
            keyed_at += idx
            if dest == self.host:
                idxs.append(idx)
                keys.append(key)
                kept.append(value)
        at = sum(idxs)
        emitter.count += len(idxs)
        if reports:  # The records that could not be keyed count here.
            emitter.count += len(values) - keyed
            at += sum(offsets) - keyed_at
        return idxs, keys, kept, at

    def barrier(self, checkpoint: int, tick: int) -> None:
        """Cut checkpoint ``checkpoint`` before ``tick`` (in-process)."""
        self._snapshot(checkpoint, tick)

    def end(self, tick: int) -> None:
        """End the stream after ``tick`` ticks (in-process)."""
        self.end_tick = tick
        self._finish()

    def _emit_tick(self, tick: int) -> None:
        if self.emitter is None:
            return
        stage = self.index + 1
        batches = self.emitter.batches
        self.emitter.batches = [Batch() for _ in batches]
        for dest, batch in zip(self._destinations, batches, strict=True):
            try:
                self.send(dest, (P.BATCH, stage, tick, *batch.parts()))
            except MessageNotPicklable:
                # Records that were not frozen on their way (those of a
                # stage without operators, straight from the source):
                # pickle them one by one, with dill where pickle fails,
                # and report any that neither can pickle.
                batch = self._pickled_one_by_one(batch)
                self.send(dest, (P.BATCH, stage, tick, *batch.parts()))

    def _pickled_one_by_one(self, batch: Batch) -> Batch:
        out = Batch()
        done = set(batch.frozen)
        for position, (idx, key, value) in enumerate(
            zip(batch.idxs, batch.keys, batch.values, strict=True)
        ):
            if position in done:
                out.frozen.append(len(out.values))
                _append(out, idx, key, value)
                continue
            try:
                freeze_whole(out, idx, key, value)
            except RecordNotPicklable as err:
                self.current.idx = idx
                self._on_error(err, key, value)

        return out

    def _forward(self, message: tuple[Any, ...]) -> None:
        for dest in self._destinations:
            self.send(dest, message)

    def _snapshot(self, checkpoint: int, tick: int) -> None:
        if self.plan.reads_all:
            self.send(DRIVER, (P.KEPT, tick, self.kept, self.kept_at))
        self.last_barrier = max(self.last_barrier, checkpoint)
        if self.on_barrier is not None:
            self.on_barrier(self, checkpoint)
        self._forward((P.BARRIER, self.index + 1, checkpoint, tick))

    def _finish(self) -> None:
        if self.tracker is not None and self.tracker.capturing:
            # close() may change state that a capture still has to read.
            self.tracker.work(None)
        self.close_functions()
        self.finished = True
        if self.plan.reads_all:
            self.send(DRIVER, (P.KEPT, self.end_tick, self.kept, self.kept_at))
        self._forward((P.END, self.index + 1, self.end_tick))

    def close_functions(self) -> None:
        """Call ``close()`` on every function, in pipeline order."""
        for spec, fn in self.functions:
            try:
                fn.close()
            except Exception as err:
                raise StageFailure(self._report(spec.name, err, None, None, "close"))

    # -- errors

    def _on_error(
        self, err: Exception, key: Any, value: Any, position: int | None = None
    ) -> None:
        name = self._culprit(err, position)
        report = self._report(name, err, key, value, "user")
        if not self.skip_errors:
            raise StageFailure(report)
        self.skipped[name] = self.skipped.get(name, 0) + 1
        letter = {
            "operator": report.operator,
            "worker": report.worker,
            "key": short_repr(key),
            "record": short_repr(value, 10_000),
            "error": report.error,
            "traceback": report.traceback,
            "time": time.time(),
            "tick": self.tick,
        }
        self.send(DRIVER, (P.DEAD, letter))

    def _culprit(self, err: BaseException, position: int | None) -> str:
        """Name the operator that raised.

        The compiled chain reports the position it was at; a deeper
        node frame (a flatmap's ``collect`` runs the rest of the chain
        through node objects) overrides it.
        """
        if isinstance(err, _KeyProblem) and self.emitter is not None:
            return self.emitter.name
        name = self.emitter.name if self.emitter is not None else "?"
        if isinstance(err, RecordNotPicklable):
            # The record's maker: a filter only passes records on.
            makers = [n for n in self.nodes if not isinstance(n, _FilterNode)]
            return makers[-1].name if makers else self.producer or name
        if position is not None and position < len(self.nodes):
            name = self.nodes[position].name
        tb = err.__traceback__
        while tb is not None:
            owner = tb.tb_frame.f_locals.get("self")
            if isinstance(owner, _Node):
                name = owner.name
            elif isinstance(owner, _Emitter):
                name = owner.name
            tb = tb.tb_next
        return name

    def _report(
        self, name: str, err: BaseException, key: Any, value: Any, phase: str
    ) -> FailureReport:
        error = f"{type(err).__name__}: {err}".rstrip(": ")
        extra = {}
        if isinstance(err, _KeyProblem):
            text = "".join(traceback.format_exception_only(err))
        elif isinstance(err, RecordNotPicklable):
            # Not an exception of the user's code: the engine's own frames
            # would say nothing more than the message.
            error, text = str(err), ""
            extra["unpicklable"] = short_repr(err.record, 120)
        else:
            text = "".join(user_traceback(err))
        record = short_repr(value) if phase == "user" else f"<during {phase}()>"
        return FailureReport(
            operator=name,
            worker=self.host,
            key=key if _plain(key) else short_repr(key),
            record=record,
            error=error,
            traceback=text,
            extra=extra,
        )

    def counts(self) -> dict[str, dict[str, Any]]:
        """Per-operator figures for the end-of-run report."""
        chain: list[Any] = [*self.nodes]
        emitter = self.emitter
        if emitter is not None and emitter.extract is not None:
            chain.append(emitter)
        out: dict[str, dict[str, Any]] = {}
        for position, node in enumerate(chain):
            if emitter is not None and node is emitter:
                after = emitter.count
            elif position + 1 < len(chain):
                after = chain[position + 1].count
            else:
                after = 0 if emitter is None else emitter.count
            out[node.name] = {
                "in": node.count,
                "out": after,
                "skipped": self.skipped.get(node.name, 0),
            }
        return out


def read_slice(items: Any, start: int, stop: int) -> tuple[Any, list[Any]]:
    """The records of a collection's tick: their offsets, and them.

    ``None`` items are not records (a source's "nothing now"), so they
    are skipped, and the offsets say where the others were.
    """
    values = items[start:stop]
    if not isinstance(values, list):
        values = list(values)
    offsets: Any = range(len(values))
    # Identity, not ==: a record's __eq__ (a numpy array's, say) must
    # not decide what is a record.
    if any(map(operator.is_, values, itertools.repeat(None))):
        offsets = [i for i, value in enumerate(values) if value is not None]
        values = [values[i] for i in offsets]
    return offsets, values


def _direct(fn: BaseFunction) -> Callable[..., Any]:
    """The callable to invoke per record, skipping the plain-callable wrapper."""
    return fn.fn if type(fn) is _Wrapped else fn.execute  # type: ignore[attr-defined,no-any-return]


def _discard(value: Any) -> None:
    return None


def _plain(key: Any) -> bool:
    return isinstance(key, (str, int, float, bool, bytes, type(None), tuple))


def _merge(batches: list[tuple[Any, ...]]) -> tuple[Any, Any, list[Any]]:
    """Merge the senders' batches of one tick back into source order."""
    if len(batches) == 1:
        _, _, _, idxs, keys, values, frozen = batches[0]
        if frozen:
            thaw(values, frozen)
        if idxs is None:
            n = len(values)
            return range(n), itertools.repeat(None, n), values
        return idxs, keys, values
    idxs_all: list[int] = []
    keys_all: list[Any] = []
    values_all: list[Any] = []
    ordered = True
    for message in batches:
        _, _, _, idxs, keys, values, frozen = message
        if not values:
            continue
        if frozen:
            thaw(values, frozen)
        if idxs_all and idxs and idxs[0] < idxs_all[-1]:
            ordered = False
        idxs_all += idxs
        keys_all += keys
        values_all += values
    if ordered:
        return idxs_all, keys_all, values_all
    # Stable: records derived from one source record keep sender order.
    order = sorted(range(len(idxs_all)), key=idxs_all.__getitem__)
    return (
        [idxs_all[i] for i in order],
        [keys_all[i] for i in order],
        [values_all[i] for i in order],
    )


_PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep


def user_traceback(err: BaseException) -> list[str]:
    """Format ``err``'s traceback without the engine's own frames."""
    tb = err.__traceback__
    frames = []
    while tb is not None:
        name = tb.tb_frame.f_code.co_filename
        if not name.startswith(_PACKAGE) and name != CHAIN_FILE:
            frames.append(tb)
        tb = tb.tb_next
    if not frames:
        return traceback.format_exception(err)
    summary = traceback.StackSummary.extract(
        (tb.tb_frame, tb.tb_lineno) for tb in frames
    )
    lines = ["Traceback (most recent call last):\n", *summary.format()]
    return lines + traceback.format_exception_only(err)
