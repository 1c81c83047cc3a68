"""Time windows per key, in event time, with cleanup of old windows.

Run it with ``python examples/windows.py``.

Sensors report readings with their own timestamps. ``WindowCounter``
groups each sensor's readings into 60-second windows of event time (the
timestamp in the record, not the clock, so every run gives the same
answer) and forgets windows more than two windows older than the
newest, so its state stays small however long the stream runs.

The sink keeps the last count of every (sensor, window). The program
prints the windows of one sensor, checks all of them against a plain
computation, checks that no sensor ever held more than three windows,
and prints ``OK`` (or exits 1).
"""

import random
import sys

from sage_mp import LocalEnvironment, SinkFunction, StatefulFunction

WINDOW = 60  # seconds of event time
KEEP = 3  # windows kept per sensor: the newest and the two before it


def make_readings(count=20_000, sensors=25, seed=11):
    """Readings with a rising timestamp (seconds) and a sensor id."""
    rng = random.Random(seed)
    readings, ts = [], 0
    for _ in range(count):
        ts += rng.randrange(0, 3)
        readings.append({"sensor": f"s{rng.randrange(sensors):02d}", "ts": ts})
    return readings


class WindowCounter(StatefulFunction):
    """Counts readings per sensor and window; drops old windows."""

    def __init__(self, window=WINDOW):
        super().__init__()
        self.window = window
        self.windows = {}  # sensor -> {window id: count}

    def execute(self, reading):
        sensor = self.ctx.get_key()
        window_id = reading["ts"] // self.window
        counts = self.windows.setdefault(sensor, {})
        counts[window_id] = counts.get(window_id, 0) + 1
        for old in [w for w in counts if w < window_id - (KEEP - 1)]:
            del counts[old]
        return {
            "sensor": sensor,
            "window": window_id,
            "count": counts[window_id],
            "held": len(counts),
        }


class WindowTable(SinkFunction):
    """Keeps the latest count of each (sensor, window)."""

    counts = {}
    most_held = 0

    def execute(self, row):
        WindowTable.counts[(row["sensor"], row["window"])] = row["count"]
        WindowTable.most_held = max(WindowTable.most_held, row["held"])


def plain_windows(readings):
    counts = {}
    for reading in readings:
        key = (reading["sensor"], reading["ts"] // WINDOW)
        counts[key] = counts.get(key, 0) + 1
    return counts


def main():
    readings = make_readings()
    env = LocalEnvironment("windows", workers=3)
    (
        env.from_collection(readings)
        .keyby(lambda reading: reading["sensor"])
        .map(WindowCounter)
        .sink(WindowTable)
    )
    env.submit(autostop=True)

    windows = sorted(w for s, w in WindowTable.counts if s == "s00")
    print(f"sensor s00: {len(windows)} windows of {WINDOW} s")
    for window in windows[:4]:
        start, count = window * WINDOW, WindowTable.counts[("s00", window)]
        print(f"  [{start:5d}, {start + WINDOW:5d}) {count:3d} readings")
    print(f"most windows held by one sensor at once: {WindowTable.most_held}")

    if WindowTable.counts != plain_windows(readings) or WindowTable.most_held > KEEP:
        print("MISMATCH: the job disagrees with the plain computation")
        sys.exit(1)
    print("OK")


if __name__ == "__main__":
    main()
