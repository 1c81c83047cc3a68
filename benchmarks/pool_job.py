"""The heavy workload with ``multiprocessing.Pool`` for the stateless part.

    python benchmarks/pool_job.py heavy --processes 2 --loops 300

The pool runs ``burn`` over the events in chunks; the parent folds the
per-user state in event order, which is what a user without a
streaming engine would write.
"""

from __future__ import annotations

import argparse
import functools
import multiprocessing
import time
from typing import Any

import workloads as W


def work(loops: int, event: dict[str, Any]) -> tuple[str, int, int]:
    value = event["value"]
    return event["user_id"], value, W.burn(value, loops)


def main() -> None:
    parser = argparse.ArgumentParser(description="The heavy job on a process pool.")
    parser.add_argument("workload", choices=["heavy"], help="only heavy is defined")
    parser.add_argument("--size", type=float, default=1.0, help="scale factor")
    parser.add_argument("--loops", type=int, required=True, help="burn() loops")
    parser.add_argument("--processes", type=int, default=2, help="pool size")
    args = parser.parse_args()

    started = time.perf_counter()
    events = W.heavy_events(args.size)
    gen_s = time.perf_counter() - started

    started = time.perf_counter()
    state: dict[str, dict[str, int]] = {}
    context = multiprocessing.get_context("fork")
    with context.Pool(args.processes) as pool:
        results = pool.imap(functools.partial(work, args.loops), events, chunksize=1000)
        for key, value, _score in results:
            state[key] = W.session_update(state.get(key), value)
    run_s = time.perf_counter() - started
    records = sum(s["session_count"] for s in state.values())
    W.emit_result(
        {"engine": "pool", "gen_s": gen_s, "run_s": run_s, "records": records}
    )


if __name__ == "__main__":
    main()
