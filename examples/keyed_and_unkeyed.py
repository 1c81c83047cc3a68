"""One function for keyed and unkeyed streams (the guide's pattern 4).

Run it with ``python examples/keyed_and_unkeyed.py``.

``FlexibleFunction`` always counts the records its instance saw, and
when the record has a key (``self.ctx.get_key()`` is not ``None``) also
counts per key. The program runs it twice over the same 10,000 clicks:

* keyed by country, on 3 workers: each country's count is exact, and
  the instance counts of the 3 workers add up to the whole stream;
* unkeyed, as a single instance (``parallelism=1``): there is no key,
  and the one instance counts every record.

It prints both results, checks them and prints ``OK`` (or exits 1).
"""

import random
import sys
from collections import Counter

from sage_mp import LocalEnvironment, SinkFunction, StatefulFunction

COUNTRIES = ["de", "fr", "it", "jp", "us", "br", "in"]


def make_clicks(count=10_000, seed=3):
    rng = random.Random(seed)
    return [{"country": rng.choice(COUNTRIES), "n": n} for n in range(count)]


class FlexibleFunction(StatefulFunction):
    """Counts per key when there is one, and per instance always."""

    def __init__(self):
        super().__init__()
        self.keyed_state = {}  # key -> count
        self.total_count = 0  # records this instance saw

    def execute(self, click):
        key = self.ctx.get_key()
        self.total_count += 1
        out = {"instance": self.ctx.parallel_index, "seen": self.total_count}
        if key is not None:
            self.keyed_state[key] = self.keyed_state.get(key, 0) + 1
            out["key"] = key
            out["key_count"] = self.keyed_state[key]
        return out


class Summary(SinkFunction):
    """Keeps the last count per key and per instance."""

    def __init__(self, label):
        super().__init__()
        self.label = label
        self.per_key = {}
        self.per_instance = {}
        self.without_key = 0

    def execute(self, row):
        self.per_instance[row["instance"]] = row["seen"]
        if "key" in row:
            self.per_key[row["key"]] = row["key_count"]
        else:
            self.without_key += 1

    def close(self):
        RESULTS[self.label] = self


RESULTS = {}


def main():
    clicks = make_clicks()

    keyed = LocalEnvironment("keyed", workers=3)
    keyed.from_collection(clicks).keyby(lambda c: c["country"]).map(
        FlexibleFunction
    ).sink(Summary, "keyed")
    keyed.submit(autostop=True)

    unkeyed = LocalEnvironment("unkeyed", workers=3)
    unkeyed.from_collection(clicks).map(FlexibleFunction, parallelism=1).sink(
        Summary, "unkeyed"
    )
    unkeyed.submit(autostop=True)

    k, u = RESULTS["keyed"], RESULTS["unkeyed"]
    print("keyed:   " + ", ".join(f"{c}={k.per_key[c]}" for c in sorted(k.per_key)))
    print(
        f"         {len(k.per_instance)} instances saw "
        f"{sum(k.per_instance.values())} records"
    )
    print(
        f"unkeyed: {u.without_key} records without a key, "
        f"{len(u.per_instance)} instance saw {sum(u.per_instance.values())}"
    )

    ok = (
        k.per_key == dict(Counter(c["country"] for c in clicks))
        and sum(k.per_instance.values()) == len(clicks)
        and k.without_key == 0
        and u.per_key == {}
        and u.without_key == len(clicks)
        and list(u.per_instance.values()) == [len(clicks)]
    )
    if not ok:
        print("MISMATCH: unexpected counts")
        sys.exit(1)
    print("OK")


if __name__ == "__main__":
    main()
