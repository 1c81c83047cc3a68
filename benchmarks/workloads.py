"""The benchmark workloads: their data, their per-record work, their sizes.

Every engine's job script (``sage_job.py``, ``plain_job.py``,
``pool_job.py``, ``bytewax_flow.py``) imports this module, so all of
them process the same records and do the same work per record. It
imports neither sage_mp nor bytewax.

Data is generated in the job's own process from a fixed seed, before
the job's clock starts; each script reports how long that took
(``gen_s``) so the harness can take it out of the whole-job wall time.
"""

from __future__ import annotations

import itertools
import json
import math
import random
import sys
import time
from collections.abc import Iterator
from typing import Any

SEED = 20240501

# Sizes at --size 1. The harness scales them with --size.
LIGHT_EVENTS = 1_000_000
LIGHT_KEYS = 10_000
HEAVY_EVENTS = 200_000
LATENCY_EVENTS = 3_000
LATENCY_DELAY = 0.001
MEMORY_EVENTS = 50_000
MEMORY_PAYLOAD = 1024
BIG_STATE_KEYS = 1_000_000
STARTUP_EVENTS = 100

# Zipf exponent of the skewed workload: the hottest key gets about
# 21% of all events, so one worker owns well over half of the load.
ZIPF_EXPONENT = 1.2

# The memory workload's sink sleeps this long after every
# THROTTLE_EVERY records: about 9,000 records/s per sink instance,
# against a source that produces well over 100,000 records/s.
THROTTLE_SLEEP = 0.001
THROTTLE_EVERY = 10

RESULT_PREFIX = "BENCH_RESULT "
FIRST_RECORD_PREFIX = "BENCH_FIRST_RECORD "


def scaled(count: int, size: float, minimum: int = 10) -> int:
    """``count`` times ``size``, never below ``minimum``."""
    return max(minimum, int(count * size))


def user_keys(count: int, prefix: str = "u") -> list[str]:
    return [f"{prefix}{i}" for i in range(count)]


def session_events(size: float, *, skewed: bool = False) -> list[dict[str, Any]]:
    """The light and skewed workloads' events: ``user_id`` and ``value``."""
    count = scaled(LIGHT_EVENTS, size, 100)
    keys = user_keys(scaled(LIGHT_KEYS, size, 10))
    return _events(keys, count, skewed=skewed)


def heavy_events(size: float) -> list[dict[str, Any]]:
    count = scaled(HEAVY_EVENTS, size, 100)
    keys = user_keys(scaled(LIGHT_KEYS, size, 10))
    return _events(keys, count)


def big_state_events(size: float) -> list[dict[str, Any]]:
    """One event per key, keys in a shuffled order: state ends at N keys."""
    count = scaled(BIG_STATE_KEYS, size, 100)
    keys = user_keys(count, prefix="k")
    random.Random(SEED).shuffle(keys)
    values = random.Random(SEED + 1).choices(range(1, 101), k=count)
    return [{"user_id": k, "value": v} for k, v in zip(keys, values, strict=True)]


def extra_events(count: int) -> list[dict[str, Any]]:
    """Events appended to a resumed job's input, so it has new work."""
    keys = user_keys(count, prefix="extra")
    return [{"user_id": k, "value": 1} for k in keys]


def _events(
    keys: list[str], count: int, *, skewed: bool = False
) -> list[dict[str, Any]]:
    rng = random.Random(SEED)
    weights = None
    if skewed:
        weights = list(
            itertools.accumulate(
                1.0 / (rank + 1) ** ZIPF_EXPONENT for rank in range(len(keys))
            )
        )
    users = rng.choices(keys, cum_weights=weights, k=count)
    values = rng.choices(range(1, 101), k=count)
    return [{"user_id": u, "value": v} for u, v in zip(users, values, strict=True)]


def payload_events(size: float) -> Iterator[dict[str, Any]]:
    """The memory workload's records, made lazily: ~1 KiB each."""
    count = scaled(MEMORY_EVENTS, size, 100)
    keys = user_keys(LIGHT_KEYS)
    rng = random.Random(SEED)
    for i in range(count):
        payload = bytes([i % 256]) * MEMORY_PAYLOAD
        yield {
            "user_id": keys[rng.randrange(len(keys))],
            "value": 1,
            "payload": payload,
        }


def latency_count(size: float) -> int:
    return scaled(LATENCY_EVENTS, size, 50)


# --- per-record work ---------------------------------------------------


def burn(value: int, loops: int) -> int:
    """Pure-Python CPU work; ``loops`` is calibrated to cost ~20 us."""
    acc = value
    for i in range(loops):
        acc = (acc * 31 + i) & 0xFFFFF
    return acc


def calibrate_loops(target_s: float = 20e-6) -> tuple[int, float]:
    """Loop count for ``burn`` costing ``target_s``; also the measured cost.

    Takes the fastest of several trials: the others were disturbed.
    """
    probe = 2000
    best = float("inf")
    for _ in range(25):
        started = time.perf_counter()
        for value in range(20):
            burn(value, probe)
        best = min(best, (time.perf_counter() - started) / 20)
    loops = max(1, round(probe * target_s / best))
    return loops, best * loops / probe


def session_update(state: dict[str, int] | None, value: int) -> dict[str, int]:
    """The SAGE guide's per-user state update, for the non-sage_mp jobs."""
    if state is None:
        state = {"session_count": 0, "total_value": 0}
    state["session_count"] += 1
    state["total_value"] += value
    return state


def throttle(count: int) -> None:
    """The memory workload's slow sink: sleep now and then."""
    if count % THROTTLE_EVERY == 0:
        time.sleep(THROTTLE_SLEEP)


# --- reporting ---------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile (0-100) by nearest rank; 0.0 if empty."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, math.ceil(q / 100 * len(ordered)) - 1))
    return ordered[rank]


def emit_result(result: dict[str, Any]) -> None:
    """Print the one line the harness parses from a job's stdout."""
    sys.stdout.write(RESULT_PREFIX + json.dumps(result) + "\n")
    sys.stdout.flush()


def emit_first_record() -> None:
    """Tell the harness when this process handled its first record."""
    sys.stdout.write(f"{FIRST_RECORD_PREFIX}{time.time()}\n")
    sys.stdout.flush()
