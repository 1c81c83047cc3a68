"""Sources: polling, ``None`` and ``StopSignal``, delay, collections, kwargs."""

from __future__ import annotations

import time

import pytest
from helpers import WORKERS, driver_sink

from sage_mp import (
    FilterFunction,
    FlatMapFunction,
    KeyByFunction,
    LocalEnvironment,
    MapFunction,
    PipelineError,
    SinkFunction,
    SourceFunction,
    StopSignal,
)


class Hesitant(SourceFunction):
    """Says "nothing now" on most polls, then gives records, then stops."""

    polls = 0

    def __init__(self, count, stop_with_class=False):
        super().__init__()
        self.count = count
        self.stop_with_class = stop_with_class
        self.poll = 0
        self.sent = 0

    def execute(self):
        self.poll += 1
        type(self).polls = self.poll
        if self.poll <= 5 or self.poll % 3:
            return None
        if self.sent == self.count:
            return StopSignal if self.stop_with_class else StopSignal("done")
        self.sent += 1
        return {"n": self.sent}


@pytest.mark.parametrize("workers", WORKERS)
@pytest.mark.parametrize("stop_with_class", [False, True])
def test_source_none_means_nothing_now(workers, stop_with_class):
    """None polls produce no record; records follow; StopSignal ends it."""
    sink = driver_sink()
    env = LocalEnvironment("hesitant", workers=workers)
    env.from_source(Hesitant, 50, stop_with_class=stop_with_class).keyby(
        lambda r: r["n"] % 4
    ).sink(sink)
    result = env.submit(autostop=True)

    assert sink.records == [{"n": n} for n in range(1, 51)]
    assert result.records == 50
    assert Hesitant.polls > 150  # it really was polled through the Nones


class Ticker(SourceFunction):
    def __init__(self, count):
        super().__init__()
        self.left = count

    def execute(self):
        if not self.left:
            return StopSignal("done")
        self.left -= 1
        return self.left


@pytest.mark.parametrize("workers", WORKERS)
def test_source_delay_is_honoured(workers):
    """delay=0.01 on a 20-record source makes the job take about 0.2 s."""
    sink = driver_sink()
    env = LocalEnvironment("delay", workers=workers)
    env.from_source(Ticker, 20, delay=0.01).map(lambda n: n).sink(sink)
    started = time.monotonic()
    env.submit(autostop=True)
    elapsed = time.monotonic() - started

    assert sorted(sink.records) == list(range(20))
    # A lower bound only: the delay between 20 polls must not be skipped.
    assert elapsed >= 0.18


@pytest.mark.parametrize("workers", WORKERS)
@pytest.mark.parametrize("method", ["from_collection", "from_batch"])
def test_collection_sources_emit_every_item_in_order(workers, method):
    """from_collection and from_batch emit a list's items in order."""
    sink = driver_sink()
    env = LocalEnvironment("collection", workers=workers)
    items = [{"i": i} for i in range(2500)]
    getattr(env, method)(items).keyby(lambda r: r["i"] % 5).sink(sink)
    result = env.submit(autostop=True)

    assert sink.records == items
    assert result.records == len(items)


@pytest.mark.parametrize("workers", WORKERS)
def test_collection_from_generator_skips_none_items(workers):
    """A generator works as a collection; None items are not records."""
    sink = driver_sink()
    env = LocalEnvironment("generator", workers=workers)
    items = (None if i % 10 == 0 else i for i in range(1000))
    env.from_collection(items).map(lambda i: i * 2).sink(sink)
    env.submit(autostop=True)

    assert sink.records == [2 * i for i in range(1000) if i % 10]


def test_collection_refuses_a_string():
    """from_collection("abc") is a mistake, reported before running."""
    env = LocalEnvironment("bad-collection", workers=1)

    with pytest.raises(PipelineError, match="iterable"):
        env.from_collection("abc")


def test_lambda_source():
    """A plain callable of no arguments is a source; StopSignal ends it."""
    numbers = iter(range(30))
    sink = driver_sink()
    env = LocalEnvironment("lambda-source", workers=2)
    env.from_source(lambda: next(numbers, StopSignal("end"))).sink(sink)
    env.submit(autostop=True)

    assert sink.records == list(range(30))


# --- constructor arguments ---------------------------------------------------

RESERVED = {"name", "parallelism", "delay", "strategy", "batch_size"}


class ArgSource(SourceFunction):
    seen: dict = {}

    def __init__(self, *args, **kwargs):
        super().__init__()
        type(self).seen = {"args": args, "kwargs": kwargs}
        self.left = kwargs.get("count", 3)

    def execute(self):
        if not self.left:
            return StopSignal("done")
        self.left -= 1
        return {"left": self.left}


@pytest.mark.parametrize("workers", WORKERS)
def test_source_gets_its_args_but_not_reserved_kwargs(workers):
    """from_source passes *args/**kwargs to the class, minus reserved ones."""
    env = LocalEnvironment("source-args", workers=workers)
    env.from_source(
        ArgSource, "a", 2, count=5, label="x", name="src", parallelism=1, delay=0
    ).sink(driver_sink())
    result = env.submit(autostop=True)

    assert ArgSource.seen == {"args": ("a", 2), "kwargs": {"count": 5, "label": "x"}}
    assert "src" in result.operators
    assert result.records == 5


def _report(self, args, kwargs):
    return {
        "class": type(self).__name__,
        "args": list(args),
        "kwargs": sorted(kwargs),
        "ctx_name": self.ctx.name,
    }


class ArgMap(MapFunction):
    def __init__(self, *args, **kwargs):
        super().__init__()
        self.got = (args, kwargs)

    def execute(self, record):
        return {**record, "map": _report(self, *self.got)}


class ArgFilter(FilterFunction):
    def __init__(self, *args, **kwargs):
        super().__init__()
        self.got = (args, kwargs)

    def execute(self, record):
        record["filter"] = _report(self, *self.got)
        return True


class ArgFlatMap(FlatMapFunction):
    def __init__(self, *args, **kwargs):
        super().__init__()
        self.got = (args, kwargs)

    def execute(self, record):
        return [{**record, "flatmap": _report(self, *self.got)}]


class ArgKey(KeyByFunction):
    def __init__(self, *args, **kwargs):
        super().__init__()
        self.got = (args, kwargs)

    def execute(self, record):
        args, kwargs = self.got
        return (tuple(args), tuple(sorted(kwargs)), self.ctx.name)


class ArgSink(SinkFunction):
    seen: list = []

    def __init__(self, *args, **kwargs):
        super().__init__()
        type(self).seen.append((args, kwargs))
        self.got = (args, kwargs)
        self.records = []

    def execute(self, record):
        type(self).seen.append((self.ctx.get_key(), record, self.ctx.name))


@pytest.mark.parametrize("workers", WORKERS)
def test_operators_get_their_args_but_not_reserved_kwargs(workers):
    """map/filter/flatmap/keyby/sink get *args/**kwargs minus reserved ones."""
    ArgSink.seen = []
    reserved = {"parallelism": workers, "delay": 0, "batch_size": 10}
    env = LocalEnvironment("op-args", workers=workers)
    (
        env.from_collection([{"i": i} for i in range(20)])
        .keyby(ArgKey, 1, tag="k", name="the_key", strategy="hash", **reserved)
        .map(ArgMap, 2, tag="m", name="the_map", strategy="hash", **reserved)
        .filter(ArgFilter, 3, tag="f", name="the_filter", **reserved)
        .flatmap(ArgFlatMap, 4, tag="fm", name="the_flatmap", **reserved)
        .sink(ArgSink, 5, tag="s", name="the_sink", parallelism=1, delay=0)
    )
    env.submit(autostop=True)

    assert ArgSink.seen[0] == ((5,), {"tag": "s"})
    rows = ArgSink.seen[1:]
    assert len(rows) == 20
    for key, record, sink_name in rows:
        assert key == ((1,), ("tag",), "the_key")
        assert record["map"] == {
            "class": "ArgMap",
            "args": [2],
            "kwargs": ["tag"],
            "ctx_name": "the_map",
        }
        assert record["filter"]["args"] == [3]
        assert record["filter"]["kwargs"] == ["tag"]
        assert record["filter"]["ctx_name"] == "the_filter"
        assert record["flatmap"]["args"] == [4]
        assert record["flatmap"]["kwargs"] == ["tag"]
        assert record["flatmap"]["ctx_name"] == "the_flatmap"
        assert sink_name == "the_sink"
    for _, record, _ in rows:
        for part in ("map", "filter", "flatmap"):
            assert not RESERVED & set(record[part]["kwargs"])
