"""Running features per entity: count, mean, min and max, on 3 workers.

Run it with ``python examples/features.py``.

Trip durations arrive for 300 drivers. ``FeatureComputer`` keeps, per
driver, the running count, mean, minimum and maximum, as in the SAGE
guide's feature pattern, and emits the features after every trip. The
sink keeps the latest features of each driver. The program prints a
few drivers, checks all of them against a plain computation and prints
``OK`` (or exits 1).
"""

import math
import random
import sys

from sage_mp import LocalEnvironment, SinkFunction, StatefulFunction


def make_trips(count=30_000, drivers=300, seed=5):
    """Trips: a driver id and a duration in minutes."""
    rng = random.Random(seed)
    return [
        {"driver": f"d{rng.randrange(drivers):03d}", "minutes": rng.randrange(3, 90)}
        for _ in range(count)
    ]


class FeatureComputer(StatefulFunction):
    """Keeps running features of each driver's trip durations."""

    def __init__(self):
        super().__init__()
        self.features = {}  # driver -> {"count", "mean", "min", "max"}

    def execute(self, trip):
        driver = self.ctx.get_key()
        f = self.features.setdefault(
            driver, {"count": 0, "mean": 0.0, "min": math.inf, "max": -math.inf}
        )
        value = trip["minutes"]
        f["count"] += 1
        f["mean"] += (value - f["mean"]) / f["count"]
        f["min"] = min(f["min"], value)
        f["max"] = max(f["max"], value)
        return (driver, f)


class LatestFeatures(SinkFunction):
    """Keeps the newest features of every driver."""

    latest = {}

    def execute(self, driver_features):
        driver, features = driver_features
        LatestFeatures.latest[driver] = features


def plain_features(trips):
    durations = {}
    for trip in trips:
        durations.setdefault(trip["driver"], []).append(trip["minutes"])
    return {
        driver: (len(v), sum(v) / len(v), min(v), max(v))
        for driver, v in durations.items()
    }


def main():
    trips = make_trips()
    env = LocalEnvironment("features", workers=3)
    (
        env.from_collection(trips)
        .keyby(lambda trip: trip["driver"])
        .map(FeatureComputer)
        .sink(LatestFeatures)
    )
    env.submit(autostop=True)

    for driver in sorted(LatestFeatures.latest)[:4]:
        f = LatestFeatures.latest[driver]
        print(
            f"{driver}: {f['count']:3d} trips, mean {f['mean']:5.1f} min, "
            f"min {f['min']}, max {f['max']}"
        )

    expected = plain_features(trips)
    ok = set(expected) == set(LatestFeatures.latest)
    for driver, (count, mean, low, high) in expected.items():
        f = LatestFeatures.latest.get(driver)
        ok = (
            ok
            and f is not None
            and (f["count"], f["min"], f["max"]) == (count, low, high)
        )
        ok = ok and math.isclose(f["mean"], mean, rel_tol=1e-9)
    if not ok:
        print("MISMATCH: the job disagrees with the plain computation")
        sys.exit(1)
    print("OK")


if __name__ == "__main__":
    main()
