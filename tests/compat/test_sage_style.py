"""SAGE programs, written the way SAGE's own tests are, run on sage_mp.

Every pipeline here follows SAGE's shape: build it, ``submit()``,
sleep, ``close()``, then read a class-level list of a sink defined in
this module. Function classes are defined inside the tests. Only
``sage.*`` is imported: the compatibility layer (installed by this
folder's conftest, or by ``-p sage_mp.compat.pytest_plugin``) maps it
onto sage_mp. Each result is compared with a plain Python computation
of the same data.
"""

import logging
import math
import random
import threading
import time
from typing import ClassVar

from sage.common.core.functions import MapFunction, SinkFunction, SourceFunction
from sage.common.core.stateful_function import StatefulFunction
from sage.kernel.api.local_environment import LocalEnvironment
from sage.kernel.runtime.communication.packet import Packet, StopSignal
from sage.kernel.runtime.context.base_context import BaseRuntimeContext

SETTLE = 2.0  # seconds a test sleeps between submit() and close()
USERS = ("alice", "bob", "carol", "dave")


def make_events(count=48, seed=3):
    """Events of four users with a value, a timestamp and a mixed key."""
    rng = random.Random(seed)
    events, ts = [], 0
    for i in range(count):
        ts += rng.randrange(0, 40)
        events.append(
            {
                "user_id": rng.choice(USERS),
                "value": rng.randrange(-20, 100),
                "ts": ts,
                # Falsy keys on purpose: they must keep one state each.
                "k": (0, "", "x", 1, "y")[i % 5],
                "i": i,
            }
        )
    return events


class ListSource(SourceFunction):
    """Emits the given events; afterwards ``None`` ("nothing now")."""

    def __init__(self, events, **kwargs):
        super().__init__(**kwargs)
        self.events = events
        self.position = 0

    def execute(self, data=None):
        if self.position >= len(self.events):
            return None
        event = self.events[self.position]
        self.position += 1
        return event


class UserIdExtractor(MapFunction):
    def execute(self, event):
        return event["user_id"]


class FieldKExtractor(MapFunction):
    def execute(self, event):
        return event["k"]


class ResultSink(SinkFunction):
    """Collects every record; read by the test after close()."""

    results: ClassVar[list] = []
    instances: ClassVar[set] = set()

    def execute(self, data):
        ResultSink.instances.add(id(self))
        ResultSink.results.append(data)

    @classmethod
    def clear(cls):
        cls.results = []
        cls.instances = set()


def run_pipeline(build, name):
    """Build with ``build(env)``, then submit, sleep and close."""
    env = LocalEnvironment(name)
    build(env)
    try:
        env.submit()
        time.sleep(SETTLE)
    finally:
        env.close()


class TestKeyedStatePatterns:
    """The usage patterns of SAGE's keyed-state guide."""

    def setup_method(self):
        ResultSink.clear()

    def test_per_user_sessions(self):
        """Each user's session counts and sums only that user's events."""

        class UserSessionFunction(StatefulFunction):
            def __init__(self, **kwargs):
                super().__init__(**kwargs)
                self.user_sessions = {}

            def execute(self, event_data):
                user_id = self.ctx.get_key()
                if user_id not in self.user_sessions:
                    self.user_sessions[user_id] = {
                        "session_count": 0,
                        "total_value": 0,
                    }
                self.user_sessions[user_id]["session_count"] += 1
                self.user_sessions[user_id]["total_value"] += event_data["value"]
                return {"user_id": user_id, **self.user_sessions[user_id]}

        events = make_events()
        run_pipeline(
            lambda env: (
                env.from_source(ListSource, events, delay=0.01)
                .keyby(UserIdExtractor, strategy="hash")
                .map(UserSessionFunction)
                .sink(ResultSink)
            ),
            "sessions",
        )

        expected, sessions = [], {}
        for event in events:
            s = sessions.setdefault(
                event["user_id"], {"session_count": 0, "total_value": 0}
            )
            s["session_count"] += 1
            s["total_value"] += event["value"]
            expected.append({"user_id": event["user_id"], **s})
        assert ResultSink.results == expected
        assert len(ResultSink.instances) == 1

    def test_per_key_counters_keep_falsy_keys(self):
        """Keys 0 and "" each keep one counter, like any other key."""

        class CounterFunction(StatefulFunction):
            def __init__(self, **kwargs):
                super().__init__(**kwargs)
                self.counters = {}

            def execute(self, data):
                key = self.ctx.get_key()
                self.counters[key] = self.counters.get(key, 0) + 1
                return {key: self.counters[key]}

        events = make_events()
        run_pipeline(
            lambda env: (
                env.from_source(ListSource, events, delay=0.01)
                .keyby(FieldKExtractor)
                .map(CounterFunction)
                .sink(ResultSink)
            ),
            "counters",
        )

        counts, expected = {}, []
        for event in events:
            counts[event["k"]] = counts.get(event["k"], 0) + 1
            expected.append({event["k"]: counts[event["k"]]})
        assert ResultSink.results == expected
        assert counts[0] == counts[""] == len(events) // 5 + 1

    def test_time_windows_with_cleanup(self):
        """Windows count per key, and windows older than two are dropped."""

        class WindowAggregator(StatefulFunction):
            # The guide's pattern, on event time instead of the wall
            # clock so that the expected result can be computed.
            def __init__(self, window_size=3600, **kwargs):
                super().__init__(**kwargs)
                self.window_data = {}
                self.window_size = window_size

            def execute(self, event):
                key = self.ctx.get_key()
                window_id = event["ts"] // self.window_size
                if key not in self.window_data:
                    self.window_data[key] = {}
                if window_id not in self.window_data[key]:
                    self.window_data[key][window_id] = []
                self.window_data[key][window_id].append(event)
                old_windows = [w for w in self.window_data[key] if w < window_id - 2]
                for w in old_windows:
                    del self.window_data[key][w]
                return {
                    "key": key,
                    "window": window_id,
                    "count": len(self.window_data[key][window_id]),
                    "kept": sorted(self.window_data[key]),
                }

        events = make_events()
        run_pipeline(
            lambda env: (
                env.from_source(ListSource, events, delay=0.01)
                .keyby(UserIdExtractor)
                .map(WindowAggregator, window_size=100)
                .sink(ResultSink)
            ),
            "windows",
        )

        windows, expected = {}, []
        for event in events:
            user, window_id = event["user_id"], event["ts"] // 100
            mine = windows.setdefault(user, {})
            mine[window_id] = mine.get(window_id, 0) + 1
            for w in [w for w in mine if w < window_id - 2]:
                del mine[w]
            expected.append(
                {
                    "key": user,
                    "window": window_id,
                    "count": mine[window_id],
                    "kept": sorted(mine),
                }
            )
        assert ResultSink.results == expected
        assert any(r["window"] >= 3 for r in ResultSink.results)
        assert all(len(r["kept"]) <= 3 for r in ResultSink.results)

    def test_feature_computation(self):
        """Running mean, min and max per entity match a plain computation."""

        class FeatureComputer(StatefulFunction):
            def __init__(self, **kwargs):
                super().__init__(**kwargs)
                self.features = {}

            def execute(self, event):
                entity_id = self.ctx.get_key()
                if entity_id not in self.features:
                    self.features[entity_id] = {
                        "mean": 0.0,
                        "count": 0,
                        "min": float("inf"),
                        "max": float("-inf"),
                    }
                value = event["value"]
                features = self.features[entity_id]
                features["count"] += 1
                features["mean"] = (
                    features["mean"] * (features["count"] - 1) + value
                ) / features["count"]
                features["min"] = min(features["min"], value)
                features["max"] = max(features["max"], value)
                return {entity_id: features}

        events = make_events()
        run_pipeline(
            lambda env: (
                env.from_source(ListSource, events, delay=0.01)
                .keyby(UserIdExtractor)
                .map(FeatureComputer)
                .sink(ResultSink)
            ),
            "features",
        )

        assert len(ResultSink.results) == len(events)
        seen = {}
        for event, result in zip(events, ResultSink.results, strict=True):
            user = event["user_id"]
            seen.setdefault(user, []).append(event["value"])
            values = seen[user]
            got = result[user]
            assert got["count"] == len(values)
            assert math.isclose(got["mean"], sum(values) / len(values))
            assert (got["min"], got["max"]) == (min(values), max(values))

    def test_flexible_function_keyed(self):
        """On a keyed stream: per-key counts, and one global count."""
        results = self._run_flexible(keyed=True)

        key_counts, expected = {}, []
        for position, event in enumerate(make_events()):
            user = event["user_id"]
            key_counts[user] = key_counts.get(user, 0) + 1
            expected.append(
                {
                    "key": user,
                    "key_count": key_counts[user],
                    "global_count": position + 1,
                }
            )
        assert results == expected

    def test_flexible_function_unkeyed(self):
        """On an unkeyed stream: get_key() is None, only the global count."""
        results = self._run_flexible(keyed=False)

        expected = [{"global_count": n + 1} for n in range(len(make_events()))]
        assert results == expected

    def _run_flexible(self, keyed):
        class FlexibleFunction(StatefulFunction):
            def __init__(self, **kwargs):
                super().__init__(**kwargs)
                self.keyed_state = {}
                self.global_state = {"total_count": 0}

            def execute(self, data):
                key = self.ctx.get_key()
                self.global_state["total_count"] += 1
                if key is not None:
                    if key not in self.keyed_state:
                        self.keyed_state[key] = {"count": 0}
                    self.keyed_state[key]["count"] += 1
                    return {
                        "key": key,
                        "key_count": self.keyed_state[key]["count"],
                        "global_count": self.global_state["total_count"],
                    }
                return {"global_count": self.global_state["total_count"]}

        def build(env):
            stream = env.from_source(ListSource, make_events(), delay=0.01)
            if keyed:
                stream = stream.keyby(UserIdExtractor)
            # One instance, so that the global count sees every record
            # (with the default, each worker keeps its own count).
            stream.map(FlexibleFunction, parallelism=1).sink(ResultSink)

        run_pipeline(build, f"flexible_{keyed}")
        return ResultSink.results


class TestSemanticsSAGEProgramsRelyOn:
    """Behaviour SAGE programs assume without saying so."""

    def setup_method(self):
        ResultSink.clear()

    def test_get_key_matches_each_record(self):
        """get_key() is the record's own key on every record, never a stale one."""

        class KeyCheck(MapFunction):
            def execute(self, event_data):
                return {"observed": self.ctx.get_key(), "expected": event_data["k"]}

        events = make_events()
        run_pipeline(
            lambda env: (
                env.from_source(ListSource, events, delay=0.01)
                .keyby(FieldKExtractor, strategy="hash")
                .map(KeyCheck)
                .sink(ResultSink)
            ),
            "key_check",
        )

        assert len(ResultSink.results) == len(events)
        for result in ResultSink.results:
            assert result["observed"] == result["expected"]
            assert type(result["observed"]) is type(result["expected"])

    def test_unkeyed_stream_default_parallelism(self):
        """Without keyby, get_key() is None in every instance."""

        class KeyProbe(MapFunction):
            def execute(self, data):
                return {"key": self.ctx.get_key(), "i": data["i"]}

        events = make_events()
        run_pipeline(
            lambda env: (
                env.from_source(ListSource, events, delay=0.01)
                .map(KeyProbe)
                .sink(ResultSink)
            ),
            "unkeyed",
        )

        assert ResultSink.results == [{"key": None, "i": e["i"]} for e in events]

    def test_function_contract(self, caplog):
        """ctx is None in __init__, reserved kwargs stay out, logger works."""
        caplog.set_level(logging.INFO, logger="sage_mp")

        class LoggingSource(ListSource):
            def execute(self, data=None):
                event = super().execute(data)
                if event is not None:
                    self.logger.info("emitting event %s", event["i"])
                return event

        class Scale(MapFunction):
            def __init__(self, factor, **kwargs):
                super().__init__(**kwargs)
                self.factor = factor
                self.ctx_was_none = self.ctx is None
                self.extra_kwargs = sorted(kwargs)
                self.logger.info("Scale built with factor %s", factor)

            def execute(self, data):
                self.logger.info("scaling %s", data["i"])
                return {
                    "scaled": data["value"] * self.factor,
                    "ctx_was_none": self.ctx_was_none,
                    "extra_kwargs": self.extra_kwargs,
                    "has_ctx": self.ctx is not None,
                }

        events = make_events(count=10)
        run_pipeline(
            lambda env: (
                env.from_source(LoggingSource, events, delay=0.01)
                .map(Scale, factor=3, name="scale", parallelism=2, tag="t")
                .sink(ResultSink)
            ),
            "contract",
        )

        assert [r["scaled"] for r in ResultSink.results] == [
            e["value"] * 3 for e in events
        ]
        for result in ResultSink.results:
            assert result["ctx_was_none"] and result["has_ctx"]
            assert result["extra_kwargs"] == ["tag"]
        messages = [record.getMessage() for record in caplog.records]
        assert "emitting event 9" in messages

    def test_submit_returns_at_once_and_stop_signal_ends(self):
        """submit() does not block; StopSignal ends the stream, unpolled after."""

        class GatedSource(SourceFunction):
            gate: ClassVar[threading.Event] = threading.Event()
            polls_after_stop: ClassVar[list] = []
            gave_up: ClassVar[list] = []

            def __init__(self, **kwargs):
                super().__init__(**kwargs)
                self.sent = 0
                self.stopped = False
                self.deadline = time.monotonic() + 10

            def execute(self, data=None):
                if self.stopped:
                    GatedSource.polls_after_stop.append(self.sent)
                if not GatedSource.gate.is_set():
                    if time.monotonic() > self.deadline:
                        # submit() blocked: give up so the test fails.
                        GatedSource.gave_up.append(True)
                        self.stopped = True
                        return StopSignal("the gate never opened")
                    return None
                if self.sent == 5:
                    self.stopped = True
                    return StopSignal("five sent")
                self.sent += 1
                return {"n": self.sent}

        env = LocalEnvironment("gated")
        env.from_source(GatedSource, delay=0.01).sink(ResultSink)
        try:
            env.submit()
            GatedSource.gate.set()
            time.sleep(SETTLE)
            arrived_before_close = list(ResultSink.results)
        finally:
            env.close()

        assert GatedSource.gave_up == []
        assert arrived_before_close == [{"n": n} for n in range(1, 6)]
        assert GatedSource.polls_after_stop == []

    def test_autostop_with_a_list_passed_to_the_sink(self):
        """submit(autostop=True) blocks; a list given to the sink is filled."""

        class ResultCollectorSink(SinkFunction):
            def __init__(self, results, **kwargs):
                super().__init__(**kwargs)
                self.results = results

            def execute(self, data):
                self.results.append(data)

        results = []
        env = LocalEnvironment("autostop")
        env.from_batch([1, 2, 3, 4]).map(lambda x: x * x).sink(
            ResultCollectorSink, results=results
        )
        env.submit(autostop=True)

        assert results == [1, 4, 9, 16]


class TestStatePersistence:
    """The guide's "automatic persistence", with checkpoints enabled."""

    def setup_method(self):
        ResultSink.clear()

    def test_state_restored_when_the_job_restarts(self, tmp_path):
        """A second run resumes the source and every per-user count."""

        class ResumableSource(ListSource):
            # The events come from the program again; only the
            # position is state, as the guide's __state_include__ shows.
            __state_include__: ClassVar[list] = ["position"]

            def execute(self, data=None):
                event = super().execute(data)
                return StopSignal("all sent") if event is None else event

        class CountPerUser(StatefulFunction):
            def __init__(self, **kwargs):
                super().__init__(**kwargs)
                self.counts = {}

            def execute(self, event):
                user = self.ctx.get_key()
                self.counts[user] = self.counts.get(user, 0) + 1
                return (user, self.counts[user])

        config = {
            "fault_tolerance": {
                "strategy": "checkpoint",
                "checkpoint_dir": str(tmp_path / "checkpoints"),
                "checkpoint_interval": 0.2,
            }
        }
        events = make_events()
        for run in (events[:30], events):
            env = LocalEnvironment("persisted", config=config)
            (
                env.from_source(ResumableSource, run, delay=0.005)
                .keyby(UserIdExtractor)
                .map(CountPerUser)
                .sink(ResultSink)
            )
            try:
                env.submit()
                time.sleep(SETTLE)
            finally:
                env.close()

        counts, expected = {}, []
        for event in events:
            counts[event["user_id"]] = counts.get(event["user_id"], 0) + 1
            expected.append((event["user_id"], counts[event["user_id"]]))
        assert ResultSink.results == expected


class TestSAGEObjects:
    """SAGE classes used directly, without a pipeline."""

    def test_base_runtime_context_stand_alone(self):
        """A subclass that only defines logger sets, gets and clears keys."""

        class TestContext(BaseRuntimeContext):
            @property
            def logger(self):
                return logging.getLogger("test")

        ctx = TestContext()
        assert ctx._current_packet_key is None
        assert ctx.get_key() is None
        for key in ("user_1", 12345, 0, "", {"user": "alice"}):
            ctx.set_current_key(key)
            assert ctx.get_key() == key
        ctx.clear_key()
        assert ctx.get_key() is None
        assert ctx.logger.name == "test"

    def test_context_subclass_skipping_super_init(self):
        """get_key() is None even if a subclass never calls super().__init__()."""

        class BareContext(BaseRuntimeContext):
            def __init__(self):
                self.name = "bare"

        ctx = BareContext()
        assert ctx.get_key() is None
        ctx.set_current_key("k")
        assert ctx.get_key() == "k"
        ctx.logger.info("a context logger works without configuration")

    def test_stateful_function_by_hand(self):
        """execute() with a hand-made context; save/restore as SAGE documents."""

        class Ctx(BaseRuntimeContext):
            pass

        class Sessions(StatefulFunction):
            __state_exclude__: ClassVar[list] = ["temp_cache"]

            def __init__(self, **kwargs):
                super().__init__(**kwargs)
                self.user_data = {}
                self.temp_cache = {}
                self._private = 1

            def execute(self, event):
                user = self.ctx.get_key()
                self.user_data[user] = self.user_data.get(user, 0) + event["value"]
                self.temp_cache[user] = event
                return self.user_data[user]

        fn = Sessions()
        fn.ctx = Ctx()
        for user, value in (("alice", 3), ("bob", 4), ("alice", 5)):
            fn.ctx.set_current_key(user)
            fn.execute({"value": value})
        saved = fn.save_state()
        assert saved == {"user_data": {"alice": 8, "bob": 4}}
        assert fn.get_state() == saved

        fn.ctx.set_current_key("alice")
        fn.execute({"value": 100})
        assert saved["user_data"]["alice"] == 8  # a copy, not the live dict
        fn.restore_state(saved)
        assert fn.user_data == {"alice": 8, "bob": 4}
        fn.execute({"value": 1})
        assert saved["user_data"]["alice"] == 8

    def test_packet(self):
        """A Packet carries a payload and a key; key changes make new packets."""
        packet = Packet({"v": 1})
        assert not packet.is_keyed() and packet.key is None
        keyed = packet.update_key("alice", "hash")
        assert keyed.is_keyed() and keyed.partition_key == "alice"
        assert keyed.partition_strategy == "hash"
        assert packet.partition_key is None
        moved = keyed.inherit_partition_info({"v": 2})
        assert (moved.payload, moved.key) == ({"v": 2}, "alice")
        assert keyed.copy() == keyed
        assert keyed.copy().timestamp == keyed.timestamp
