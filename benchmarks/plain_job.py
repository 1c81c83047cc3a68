"""The baseline: each workload as a plain single-process Python loop.

    python benchmarks/plain_job.py light

It does the same per-record work as the engines, with no engine: the
figure every engine is compared against.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import workloads as W


def sessions(events: list[dict[str, Any]], loops: int = 0) -> dict[str, dict[str, int]]:
    state: dict[str, dict[str, int]] = {}
    update = W.session_update
    burn = W.burn
    for event in events:
        value = event["value"]
        if loops:
            burn(value, loops)
        key = event["user_id"]
        state[key] = update(state.get(key), value)
    return state


def memory(size: float) -> int:
    state: dict[str, dict[str, int]] = {}
    count = 0
    for event in W.payload_events(size):
        key = event["user_id"]
        state[key] = W.session_update(state.get(key), event["value"])
        count += 1
        W.throttle(count)
    return count


def startup() -> int:
    seen = [x * 2 for x in range(W.STARTUP_EVENTS)]
    return len(seen)


def main() -> None:
    parser = argparse.ArgumentParser(description="One plain-loop benchmark job.")
    parser.add_argument("workload", help="which workload to run")
    parser.add_argument("--size", type=float, default=1.0, help="scale factor")
    parser.add_argument("--loops", type=int, default=0, help="heavy: burn() loops")
    parser.add_argument(
        "--shard",
        default="0/1",
        metavar="I/N",
        help="process only every N-th event from the I-th: N such processes "
        "run side by side measure the machine's parallel ceiling",
    )
    args = parser.parse_args()
    index, count = (int(part) for part in args.shard.split("/"))

    started = time.perf_counter()
    if args.workload == "heavy":
        events = W.heavy_events(args.size)
    elif args.workload in ("light", "skewed"):
        events = W.session_events(args.size, skewed=args.workload == "skewed")
    else:
        events = []
    events = events[index::count]
    gen_s = time.perf_counter() - started

    started = time.perf_counter()
    if args.workload == "memory":
        records = memory(args.size)
    elif args.workload == "startup":
        records = startup()
    else:
        loops = args.loops if args.workload == "heavy" else 0
        state = sessions(events, loops)
        records = sum(s["session_count"] for s in state.values())
    run_s = time.perf_counter() - started
    W.emit_result(
        {"engine": "plain", "gen_s": gen_s, "run_s": run_s, "records": records}
    )


if __name__ == "__main__":
    main()
