"""Key routing: stable key groups, contiguous ranges, and bad keys.

The pinned values below are the routing of this version. Changing any
of them strands every checkpoint written before, so a failure here
means a routing change that needs a migration, not a new pin.
"""

from __future__ import annotations

import datetime
import json
import os
import subprocess
import sys
import uuid

import pytest
from helpers import WORKERS, driver_sink

from sage_mp import KeyByFunction, LocalEnvironment, StatefulFunction, UserFunctionError
from sage_mp._partition import (
    KEY_GROUPS,
    canonical_key,
    groups_of_worker,
    key_group,
    worker_for_group,
)

PINNED_GROUPS = [
    ("user-1", 113),
    ("alice", 184),
    ("", 87),
    ("ü", 204),
    ("u42", 224),
    ("user-1000", 84),
    (0, 121),
    (1, 130),
    (-7, 10),
    (2**70, 44),
    (1.5, 14),
    (2.0, 103),
    (b"raw", 14),
    (("a", 1), 120),
    (True, 130),
    (False, 121),
    (datetime.date(2024, 1, 2), 35),
    (uuid.UUID(int=5), 34),
    (frozenset({"a", "b"}), 55),
]


def test_key_groups_count_is_pinned():
    """There are 256 key groups; changing it would move every key."""
    assert KEY_GROUPS == 256


@pytest.mark.parametrize(("key", "group"), PINNED_GROUPS, ids=repr)
def test_key_group_is_pinned(key, group):
    """Each sample key lands in the key group it always has."""
    assert key_group(key) == group


@pytest.mark.parametrize(
    ("group", "workers", "worker"),
    [
        (0, 1, 0),
        (255, 1, 0),
        (100, 2, 0),
        (128, 2, 1),
        (100, 3, 1),
        (85, 3, 0),
        (86, 3, 1),
        (170, 3, 1),
        (171, 3, 2),
        (255, 4, 3),
        (63, 4, 0),
        (64, 4, 1),
    ],
)
def test_worker_for_group_is_pinned(group, workers, worker):
    """Key groups map to the same worker for a given worker count."""
    assert worker_for_group(group, workers) == worker


def test_equal_keys_route_alike():
    """Keys equal as dict keys (1, 1.0, True) share one key group."""
    assert canonical_key(1) == canonical_key(1.0) == canonical_key(True)
    assert canonical_key(0) == canonical_key(False) == canonical_key(0.0)
    assert canonical_key("") != canonical_key(0)
    assert canonical_key("1") != canonical_key(1)
    assert canonical_key(("a", 1)) != canonical_key(("a", "1"))


GROUPS_SCRIPT = """
import json, sys
from sage_mp._partition import key_group
keys = [f"user-{i}" for i in range(60)] + list(range(20)) + [
    ("t", i) for i in range(10)] + [f"{i}.5" for i in range(10)]
print(json.dumps([key_group(k) for k in keys]))
print(hash("user-1"))
"""


def _groups_with_seed(seed: str) -> tuple[list[int], int]:
    env = {**os.environ, "PYTHONHASHSEED": seed}
    out = subprocess.run(
        [sys.executable, "-c", GROUPS_SCRIPT],
        capture_output=True,
        text=True,
        env=env,
        check=True,
        timeout=60,
    ).stdout.splitlines()
    return json.loads(out[0]), int(out[1])


def test_key_groups_do_not_depend_on_pythonhashseed():
    """100 keys get the same groups under two different hash seeds."""
    groups_a, hash_a = _groups_with_seed("1")
    groups_b, hash_b = _groups_with_seed("2")

    # The seeds really differ: Python's own hash() of a str changed.
    assert hash_a != hash_b
    assert len(groups_a) == 100
    assert groups_a == groups_b
    assert groups_a[:60] == [key_group(f"user-{i}") for i in range(60)]


@pytest.mark.parametrize("workers", [1, 2, 3, 4, 5, 7, 8, 64, 256])
def test_each_worker_owns_a_contiguous_range(workers):
    """Workers own contiguous, disjoint ranges covering all groups in order."""
    ranges = [groups_of_worker(w, workers) for w in range(workers)]

    assert ranges[0].start == 0
    assert ranges[-1].stop == KEY_GROUPS
    for before, after in zip(ranges, ranges[1:], strict=False):
        assert before.stop == after.start
    sizes = [len(r) for r in ranges]
    assert max(sizes) - min(sizes) <= 1
    for worker, groups in enumerate(ranges):
        assert all(worker_for_group(g, workers) == worker for g in groups)


class WhereAmI(StatefulFunction):
    def execute(self, record):
        return (self.ctx.get_key(), self.ctx.parallel_index)


@pytest.mark.parametrize("workers", [1, 2, 3, 4])
def test_keys_run_on_the_worker_owning_their_group(workers):
    """Every key is processed by the worker whose range holds its group."""
    sink = driver_sink()
    env = LocalEnvironment("placement", workers=workers)
    keys = [f"user-{i}" for i in range(200)]
    env.from_collection(keys).keyby(lambda k: k).map(WhereAmI).sink(sink)
    env.submit(autostop=True)

    assert len(sink.records) == len(keys)
    for key, worker in sink.records:
        assert key_group(key) in groups_of_worker(worker, workers)
    if workers > 1:
        assert len({worker for _, worker in sink.records}) == workers


# --- falsy keys ----------------------------------------------------------


class CountPerKey(StatefulFunction):
    def __init__(self):
        super().__init__()
        self.counts = {}

    def execute(self, record):
        key = self.ctx.get_key()
        self.counts[key] = self.counts.get(key, 0) + 1
        return (record, self.counts[key])


FALSY = [0, "", False, "x", 1, 0, False, "", "", 0, "x", False] * 50


@pytest.mark.parametrize("workers", WORKERS)
def test_falsy_keys_are_real_keys_with_unsplit_state(workers):
    """0/False share one key, "" is its own; each counts 1..n unsplit."""
    sink = driver_sink(with_key=True)
    env = LocalEnvironment("falsy", workers=workers)
    records = [{"k": k, "i": i} for i, k in enumerate(FALSY)]
    env.from_collection(records).keyby(lambda r: r["k"]).map(CountPerKey).sink(sink)
    env.submit(autostop=True)

    assert [key for key, _ in sink.records] == FALSY
    assert all(type(key) is type(r["k"]) for key, (r, _) in sink.records)
    zero = [n for key, (_, n) in sink.records if key in (0, False) and key != ""]
    empty = [n for key, (_, n) in sink.records if key == ""]
    ones = [n for key, (_, n) in sink.records if key == 1]
    # FALSY.count(0) counts the False items too, as a dict would.
    assert zero == list(range(1, FALSY.count(0) + 1))
    assert empty == list(range(1, FALSY.count("") + 1))
    assert ones == list(range(1, FALSY.count(1) + 1))


# --- bad keys --------------------------------------------------------------


class UserIdExtractor(KeyByFunction):
    def execute(self, record):
        return record.get("user")


@pytest.mark.parametrize("workers", WORKERS)
@pytest.mark.parametrize("after_map", [False, True], ids=["at-source", "after-map"])
def test_none_key_is_an_error_naming_the_keyby(workers, after_map):
    """A key extractor returning None fails the job, naming the keyby."""
    records = [{"user": "a"}, {"user": "b"}, {"other": 1}, {"user": "c"}]
    env = LocalEnvironment("none-key", workers=workers)
    stream = env.from_collection(records)
    if after_map:
        stream = stream.map(lambda r: r)
    stream.keyby(UserIdExtractor).sink(driver_sink())

    with pytest.raises(UserFunctionError) as caught:
        env.submit(autostop=True)

    assert caught.value.operator == "UserIdExtractor"
    assert "UserIdExtractor" in str(caught.value)
    assert "None" in str(caught.value)
    assert "'other': 1" in caught.value.record


@pytest.mark.parametrize("workers", WORKERS)
@pytest.mark.parametrize(
    ("bad", "type_name"), [(["a", 1], "list"), ({"a": 1}, "dict"), ({1, 2}, "set")]
)
@pytest.mark.parametrize("after_map", [False, True], ids=["at-source", "after-map"])
def test_unroutable_key_names_operator_and_type(workers, bad, type_name, after_map):
    """A list, dict or set key fails, naming the keyby and the key's type."""
    records = [{"k": "fine"}, {"k": bad}]
    env = LocalEnvironment("bad-key", workers=workers)
    stream = env.from_collection(records)
    if after_map:
        stream = stream.map(lambda r: r)
    stream.keyby(lambda r: r["k"], name="by_k").sink(driver_sink())

    with pytest.raises(UserFunctionError) as caught:
        env.submit(autostop=True)

    message = str(caught.value)
    assert caught.value.operator == "by_k"
    assert "by_k" in message
    assert type_name in message


@pytest.mark.parametrize("bad", [["a"], {"a": 1}, {1}, object()], ids=repr)
def test_canonical_key_refuses_unroutable_types(bad):
    """canonical_key raises TypeError naming the type and what to use."""
    with pytest.raises(TypeError, match=type(bad).__name__):
        canonical_key(bad)
