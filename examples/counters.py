"""Per-key counters: how many times each page was viewed, on 3 workers.

Run it with ``python examples/counters.py``.

A stream of 30,000 page views is keyed by page. ``PageViewCounter``
keeps one counter per page in a dict attribute and emits the running
count with every view, like the SAGE guide's counter pattern. The sink
keeps the highest count per page; the program prints the five most
viewed pages, checks every page against ``collections.Counter`` and
prints ``OK`` (or exits 1).
"""

import random
import sys
from collections import Counter

from sage_mp import LocalEnvironment, SinkFunction, StatefulFunction

PAGES = ["/", "/search", "/cart", "/checkout", "/help"] + [
    f"/item/{n}" for n in range(200)
]


def make_views(count=30_000, seed=7):
    """Page views, skewed towards a few popular pages."""
    rng = random.Random(seed)
    weights = [50, 30, 10, 5, 2] + [1] * 200
    return [{"page": page} for page in rng.choices(PAGES, weights, k=count)]


class PageViewCounter(StatefulFunction):
    """Counts the views of each page."""

    def __init__(self):
        super().__init__()
        self.counters = {}  # page -> views so far

    def execute(self, view):
        page = self.ctx.get_key()
        self.counters[page] = self.counters.get(page, 0) + 1
        return (page, self.counters[page])


class HighestCount(SinkFunction):
    """Keeps each page's latest, and so highest, running count."""

    counts = {}

    def execute(self, page_count):
        page, count = page_count
        HighestCount.counts[page] = count


def main():
    views = make_views()
    env = LocalEnvironment("counters", workers=3)
    (
        env.from_collection(views)
        .keyby(lambda view: view["page"])
        .map(PageViewCounter)
        .sink(HighestCount)
    )
    env.submit(autostop=True)

    top = sorted(HighestCount.counts.items(), key=lambda item: (-item[1], item[0]))
    for page, count in top[:5]:
        print(f"{page:<12} {count:6d} views")

    expected = Counter(view["page"] for view in views)
    if HighestCount.counts != dict(expected):
        print("MISMATCH: the job disagrees with collections.Counter")
        sys.exit(1)
    print("OK")


if __name__ == "__main__":
    main()
