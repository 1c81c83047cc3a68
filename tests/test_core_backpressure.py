"""Backpressure: a fast source cannot make the driver's memory grow.

The source makes 200k records of about 2 KB each, 400 MB in all, faster
than a slow sink takes them. If the engine buffered what the sink has
not consumed yet, the driver would grow by hundreds of megabytes; with
a bounded window of ticks in flight it stays nearly flat.

Each job runs in a fresh interpreter, so that memory freed by earlier
tests cannot hide growth. Measured on the 2-core machine: with the
window, the driver grows by 5-35 MB; with the window disabled (a huge
``in_flight``), by about 145 MB with the driver sink and 260 MB with
worker sinks, hence the 100 MB limit.
"""

from __future__ import annotations

import json
import sys

import pytest
from helpers import run_python, write_script

LIMIT_MB = 100

JOB = """
import json, sys, threading, time
import psutil
from sage_mp import LocalEnvironment, SinkFunction, SourceFunction, StopSignal

WORKERS = int(sys.argv[1])
WHERE = sys.argv[2]
RECORDS = 200_000


class FastSource(SourceFunction):
    # Builds each record on the fly, so only what is buffered is held.
    def __init__(self):
        super().__init__()
        self.n = 0

    def execute(self):
        if self.n == RECORDS:
            return StopSignal("done")
        self.n += 1
        return (self.n % 97, f"{self.n:09d}" + "x" * 2000)


class SlowSink(SinkFunction):
    # Takes its time, and samples its process's memory as it goes.
    samples = []

    def __init__(self):
        super().__init__()
        self.count = 0
        self.process = psutil.Process()

    def execute(self, record):
        self.count += 1
        if self.count % 150 == 0:
            time.sleep(0.001)
        if self.count % 5000 == 0:
            SlowSink.samples.append(self.process.memory_info().rss)


def sample_driver(samples, done):
    # For worker sinks: the driver's memory, sampled from a thread.
    process = psutil.Process()
    while not done.is_set():
        samples.append(process.memory_info().rss)
        done.wait(0.01)


env = LocalEnvironment("backpressure", workers=WORKERS)
stream = env.from_source(FastSource).keyby(lambda r: r[0])
if WHERE == "driver":
    stream.sink(SlowSink)
else:
    stream.sink(SlowSink, parallelism=max(2, WORKERS))
baseline = psutil.Process().memory_info().rss
samples, done = [], threading.Event()
sampler = threading.Thread(target=sample_driver, args=(samples, done))
if WHERE == "workers":
    sampler.start()
result = env.submit(autostop=True)
done.set()
if WHERE == "workers":
    sampler.join()
else:
    samples = SlowSink.samples
print(json.dumps({"records": result.records, "baseline": baseline,
                  "samples": samples}))
"""


@pytest.mark.parametrize("workers", [1, 3])
@pytest.mark.parametrize("where", ["driver", "workers"])
def test_driver_memory_stays_bounded_with_a_slow_sink(where, workers, tmp_path):
    """The driver grows by < 100 MB while 400 MB of records pass."""
    script = write_script(tmp_path / "job.py", JOB)

    done = run_python([str(script), str(workers), where], cwd=tmp_path)

    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.splitlines()[-1])
    assert report["records"] == 200_000
    if where == "driver":
        assert len(report["samples"]) == 200_000 // 5000
    growth_mb = (max(report["samples"]) - report["baseline"]) / 2**20
    print(
        f"{where} sink, {workers} workers: driver grew {growth_mb:.0f} MB",
        file=sys.stderr,
    )
    assert growth_mb < LIMIT_MB
