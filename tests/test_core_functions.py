"""The function lifecycle and the operators' contracts.

open() and close() run in the process that runs the instance, around
its records; ``self.ctx`` appears after ``__init__``; the key is gone
outside ``execute``; flatmap, filter and map follow their rules; plain
callables work in every place a function class does.
"""

from __future__ import annotations

import json
import logging
import os
import time

import pytest
from helpers import WORKERS, driver_sink

from sage_mp import (
    BaseFunction,
    FilterFunction,
    FlatMapFunction,
    KeyByFunction,
    LocalEnvironment,
    MapFunction,
    PipelineError,
    RuntimeContext,
    SinkFunction,
    SourceFunction,
    StatefulFunction,
    StopSignal,
)

RECORDS = [{"user": f"u{i % 9}", "i": i} for i in range(1200)]


class Lifecycle(MapFunction):
    """Reports where open/execute/close ran, and what ctx looked like."""

    def __init__(self, directory):
        super().__init__()
        self.directory = directory
        self.ctx_in_init = self.ctx
        self.init_pid = os.getpid()
        self.open_pid = None
        self.key_in_open = "unset"
        self.records = 0

    def open(self):
        self.open_pid = os.getpid()
        self.key_in_open = self.ctx.get_key()

    def execute(self, record):
        self.records += 1
        ctx = self.ctx
        return {
            "i": record["i"],
            "ctx_in_init": self.ctx_in_init,
            "init_pid": self.init_pid,
            "open_pid": self.open_pid,
            "pid": os.getpid(),
            "key_in_open": self.key_in_open,
            "name": ctx.name,
            "index": ctx.parallel_index,
            "parallelism": ctx.parallelism,
            "is_context": isinstance(ctx, RuntimeContext),
            "logger": ctx.logger.logger.name,
        }

    def close(self):
        path = os.path.join(self.directory, f"closed-{self.ctx.parallel_index}.json")
        with open(path, "w", encoding="utf-8") as file:
            json.dump(
                {
                    "pid": os.getpid(),
                    "records": self.records,
                    "key": self.ctx.get_key(),
                },
                file,
            )


@pytest.mark.parametrize("workers", WORKERS)
def test_worker_lifecycle_runs_in_the_instances_process(workers, tmp_path):
    """__init__, open, execute and close of a map run in its worker, in order."""
    sink = driver_sink()
    env = LocalEnvironment("lifecycle", workers=workers)
    (
        env.from_collection(RECORDS)
        .keyby(lambda r: r["user"])
        .map(Lifecycle, str(tmp_path), name="life")
        .sink(sink)
    )
    env.submit(autostop=True)

    assert len(sink.records) == len(RECORDS)
    pids = set()
    for out in sink.records:
        assert out["ctx_in_init"] is None
        assert out["init_pid"] == out["open_pid"] == out["pid"] != os.getpid()
        assert out["key_in_open"] is None
        assert out["name"] == "life"
        assert out["index"] in range(workers)
        assert out["parallelism"] == workers
        assert out["is_context"]
        assert out["logger"].endswith("life")
        pids.add(out["pid"])
    closed = [json.loads(p.read_text()) for p in tmp_path.glob("closed-*.json")]
    assert len(closed) == workers
    assert {c["pid"] for c in closed} >= pids
    # close() ran after every record of its instance.
    assert sum(c["records"] for c in closed) == len(RECORDS)
    assert all(c["key"] is None for c in closed)


class DriverLifecycle(SinkFunction):
    instance = None

    def __init__(self):
        super().__init__()
        type(self).instance = self
        self.ctx_in_init = self.ctx
        self.events = []
        self.logger.info("sink built")

    def open(self):
        self.events.append(("open", os.getpid(), self.ctx.get_key()))

    def execute(self, record):
        if len(self.events) == 1:
            self.logger.info("first record %s", record["i"])
        self.events.append(("execute", os.getpid(), self.ctx.get_key()))

    def close(self):
        self.events.append(("close", os.getpid(), self.ctx.get_key()))


@pytest.mark.parametrize("workers", WORKERS)
def test_driver_sink_lifecycle_and_logger(workers, caplog):
    """The driver sink opens, runs and closes here; its logger works."""
    caplog.set_level(logging.INFO, logger="sage_mp.user")
    env = LocalEnvironment("driver-life", workers=workers)
    env.from_collection(RECORDS).keyby(lambda r: r["user"]).sink(
        DriverLifecycle, name="out"
    )
    env.submit(autostop=True)

    sink = DriverLifecycle.instance
    assert sink.ctx_in_init is None
    kinds = [kind for kind, _, _ in sink.events]
    assert kinds == ["open"] + ["execute"] * len(RECORDS) + ["close"]
    assert {pid for _, pid, _ in sink.events} == {os.getpid()}
    assert sink.events[0][2] is None and sink.events[-1][2] is None
    assert [key for _, _, key in sink.events[1:-1]] == [r["user"] for r in RECORDS]
    assert sink.ctx.name == "out"
    assert sink.ctx.parallelism == 1
    assert sink.ctx.get_key() is None
    messages = [(r.name, r.getMessage()) for r in caplog.records]
    assert ("sage_mp.user.DriverLifecycle", "sink built") in messages
    assert ("sage_mp.user.out", "first record 0") in messages


class LogsEverywhere(MapFunction):
    def __init__(self):
        super().__init__()
        self.logger.warning("built %s", type(self).__name__)
        self.init_logger = self.logger.name

    def execute(self, record):
        self.logger.info("record %s", record["i"])
        return (self.init_logger, self.logger.logger.name)


@pytest.mark.parametrize("workers", WORKERS)
def test_worker_logger_works_in_init_and_execute(workers):
    """self.logger can be used in __init__ and execute in a worker."""
    sink = driver_sink()
    env = LocalEnvironment("logs", workers=workers)
    env.from_collection(RECORDS[:50]).map(LogsEverywhere, name="logmap").sink(sink)
    env.submit(autostop=True)

    assert sink.records == [("sage_mp.user.LogsEverywhere", "sage_mp.user.logmap")] * 50


class FailsOnSome(MapFunction):
    """Raises on every tenth record; remembers the key in close()."""

    def __init__(self, directory):
        super().__init__()
        self.directory = directory

    def execute(self, record):
        if record["i"] % 10 == 9:
            raise ValueError(f"bad record {record['i']}")
        return record

    def close(self):
        path = os.path.join(self.directory, f"key-{self.ctx.parallel_index}.json")
        with open(path, "w", encoding="utf-8") as file:
            json.dump({"key": self.ctx.get_key()}, file)


class RaisingSink(SinkFunction):
    instance = None

    def __init__(self):
        super().__init__()
        type(self).instance = self
        self.keys_in_execute = []

    def execute(self, record):
        self.keys_in_execute.append(self.ctx.get_key())
        raise RuntimeError("sink always fails")


@pytest.mark.parametrize("workers", WORKERS)
def test_key_is_cleared_after_execute_even_when_it_raised(workers, tmp_path):
    """After records that raised (skip policy) get_key() is None again."""
    records = RECORDS[:99] + [{"user": "last", "i": 9}]  # the last one raises
    env = LocalEnvironment(
        "clear-key",
        workers=workers,
        error_policy="skip",
        dead_letter_path=str(tmp_path / "dead.jsonl"),
    )
    (
        env.from_collection(records)
        .keyby(lambda r: r["user"])
        .map(FailsOnSome, str(tmp_path))
        .sink(RaisingSink)
    )
    result = env.submit(autostop=True)

    sink = RaisingSink.instance
    assert len(sink.keys_in_execute) == 90
    assert all(key is not None for key in sink.keys_in_execute)
    assert sink.ctx.get_key() is None
    keys = [json.loads(p.read_text()) for p in tmp_path.glob("key-*.json")]
    assert keys == [{"key": None}] * workers
    assert result.operators["FailsOnSome"]["skipped"] == 10
    assert result.operators["RaisingSink"]["skipped"] == 90


class Splitter(FlatMapFunction):
    """Emits through collect() and through the returned iterable."""

    def execute(self, record):
        self.collect(("collected", record))
        return [("returned", record), None, ("returned-again", record)]


@pytest.mark.parametrize("workers", WORKERS)
def test_flatmap_collect_and_return_both_emit(workers):
    """collect() outputs come first, then the iterable's; None items drop."""
    sink = driver_sink()
    env = LocalEnvironment("flatmap", workers=workers)
    env.from_collection(range(100)).flatmap(Splitter).sink(sink)
    env.submit(autostop=True)

    expected = []
    for i in range(100):
        expected += [("collected", i), ("returned", i), ("returned-again", i)]
    assert sink.records == expected


@pytest.mark.parametrize("workers", WORKERS)
def test_flatmap_returning_generator_or_none(workers):
    """A flatmap may return a generator, or None for no output."""

    class Repeat(FlatMapFunction):
        def execute(self, n):
            if n % 2:
                return None
            return (n for _ in range(n % 5))

    sink = driver_sink()
    env = LocalEnvironment("flatmap-gen", workers=workers)
    env.from_collection(range(50)).flatmap(Repeat).sink(sink)
    env.submit(autostop=True)

    assert sink.records == [n for n in range(50) if n % 2 == 0 for _ in range(n % 5)]


class Truthiness(FilterFunction):
    def execute(self, record):
        return record["verdict"]


VERDICTS = [0, 1, "", "x", [], [0], None, {}, {"a": 1}, False, True, 0.0, 2.5]


@pytest.mark.parametrize("workers", WORKERS)
def test_filter_keeps_records_with_truthy_verdicts(workers):
    """A filter keeps exactly the records whose result is truthy."""
    records = [{"n": n, "verdict": v} for n, v in enumerate(VERDICTS * 20)]
    sink = driver_sink()
    env = LocalEnvironment("filter", workers=workers)
    env.from_collection(records).filter(Truthiness).sink(sink)
    env.submit(autostop=True)

    assert sink.records == [r for r in records if r["verdict"]]


class DropOdd(MapFunction):
    def execute(self, n):
        return None if n % 2 else {"n": n}


@pytest.mark.parametrize("workers", WORKERS)
def test_map_returning_none_drops_the_record(workers):
    """A map that returns None drops the record; falsy results pass."""
    sink = driver_sink()
    env = LocalEnvironment("map-none", workers=workers)
    (
        env.from_collection(range(300))
        .map(DropOdd)
        .map(lambda r: 0 if r["n"] % 4 == 0 else "")
        .sink(sink)
    )
    result = env.submit(autostop=True)

    assert sink.records == [0 if n % 4 == 0 else "" for n in range(0, 300, 2)]
    assert result.operators["DropOdd"] == {"in": 300, "out": 150, "skipped": 0}


@pytest.mark.parametrize("workers", WORKERS)
def test_plain_callables_everywhere(workers):
    """Lambdas work as source, keyby, map, filter, flatmap and sink."""
    numbers = iter(range(400))
    seen = []
    env = LocalEnvironment("lambdas", workers=workers)
    (
        env.from_source(lambda: next(numbers, None))
        .filter(lambda n: n % 3 != 0)
        .keyby(lambda n: n % 7)
        .map(lambda n: n * 10)
        .flatmap(lambda n: [n, n + 1])
        .sink(lambda x: seen.append(x))
    )
    env.submit()
    # The lambda source never stops by itself (None means "nothing now").
    deadline = time.monotonic() + 60
    while len(seen) < 2 * sum(1 for n in range(400) if n % 3) and (
        time.monotonic() < deadline
    ):
        time.sleep(0.01)
    env.close()

    expected = [x for n in range(400) if n % 3 for x in (n * 10, n * 10 + 1)]
    assert seen == expected


@pytest.mark.parametrize("workers", WORKERS)
def test_plain_callables_with_a_collection(workers):
    """A lambda-only pipeline over a collection gives the plain result."""
    seen = []
    env = LocalEnvironment("lambdas-collection", workers=workers)
    (
        env.from_collection(range(1000))
        .keyby(lambda n: n % 10)
        .map(lambda n: (n % 10, n * n))
        .filter(lambda pair: pair[1] % 2 == 0)
        .flatmap(lambda pair: [pair] * 2)
        .sink(seen.append)
    )
    env.submit(autostop=True)

    expected = [(n % 10, n * n) for n in range(1000) if n * n % 2 == 0]
    assert seen == [p for p in expected for _ in range(2)]


class AMap(MapFunction):
    def execute(self, record):
        return record


class AFilter(FilterFunction):
    def execute(self, record):
        return True


class AFlatMap(FlatMapFunction):
    def execute(self, record):
        return [record]


class AKey(KeyByFunction):
    def execute(self, record):
        return record % 3


class ASink(SinkFunction):
    def execute(self, record):
        pass


class ASource(SourceFunction):
    def execute(self):
        return StopSignal("done")


class Seen(StatefulFunction):
    """A stateful filter: lets each key through once."""

    def __init__(self):
        super().__init__()
        self.seen = set()

    def execute(self, record):
        key = self.ctx.get_key()
        first = key not in self.seen
        self.seen.add(key)
        return first


class MapKey(MapFunction):
    def execute(self, record):
        return record


class Plain(BaseFunction):
    def execute(self, record):
        return record


@pytest.mark.parametrize(
    ("method", "cls", "message"),
    [
        ("map", ASink, "ASink is a SinkFunction, made for sink(); map() takes"),
        ("sink", AMap, "AMap is a MapFunction, made for map(); sink() takes"),
        ("keyby", ASink, "ASink is a SinkFunction, made for sink(); keyby() takes"),
        ("filter", AMap, "AMap is a MapFunction, made for map(); filter()"),
        ("flatmap", AFilter, "AFilter is a FilterFunction, made for filter()"),
        ("map", AFlatMap, "AFlatMap is a FlatMapFunction, made for flatmap()"),
        ("map", AKey, "AKey is a KeyByFunction, made for keyby()"),
        ("from_source", AMap, "made for map(); from_source() takes a SourceFunction"),
        ("map", ASource, "ASource is a SourceFunction, made for from_source()"),
    ],
)
def test_a_function_class_made_for_another_operator_is_refused(method, cls, message):
    """A sink class given to map() used to run and swallow every record."""
    env = LocalEnvironment("wrong-kind", workers=1)
    if method == "from_source":
        target = env
    else:
        target = env.from_collection(range(6))
    with pytest.raises(PipelineError, match="wrong-kind") as raised:
        getattr(target, method)(cls)
    assert message in str(raised.value)
    assert f"Pass {cls.__name__} to" in str(raised.value)


@pytest.mark.parametrize("workers", WORKERS)
def test_stateful_and_plain_functions_fit_more_than_map(workers):
    """A StatefulFunction may filter (here: once per key), a plain
    BaseFunction subclass works as a map, and a MapFunction extracts
    keys, as in the SAGE guide."""
    sink = driver_sink()
    env = LocalEnvironment("stateful-filter", workers=workers)
    stream = env.from_collection(range(12)).keyby(AKey).filter(Seen)
    stream.map(Plain).keyby(MapKey).sink(sink)
    env.submit(autostop=True)
    assert sorted(sink.records) == [0, 1, 2]


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (
            lambda env: env.from_collection(range(3)).map(AMap, name=3),
            "name must be a string",
        ),
        (
            lambda env: env.from_collection(range(3)).sink(ASink, parallelism=True),
            "parallelism must be a whole number >= 1, got True",
        ),
        (
            lambda env: env.from_source(ASource, delay=float("nan")),
            "delay must be a number of seconds >= 0, got nan",
        ),
    ],
)
def test_operator_options_of_the_wrong_type_are_refused(build, message):
    """name=3 used to fail later with a TypeError; a bool passed as a count."""
    env = LocalEnvironment("bad-op-option", workers=1)
    with pytest.raises(PipelineError, match="bad-op-option") as raised:
        build(env)
    assert message in str(raised.value)
