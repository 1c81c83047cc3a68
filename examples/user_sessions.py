"""Quick start: a session per user, kept as keyed state on 4 workers.

Run it with either of::

    python examples/user_sessions.py
    python -m sage_mp run --workers 2 examples/user_sessions.py

The job reads 50,000 purchase events of 1,000 users, keys them by user
and keeps each user's session (number of events and total amount) in
an ordinary dict attribute of ``UserSessionFunction``. Each worker
process owns a share of the users, so each user's state lives in one
place and sees that user's events in order.

The sink runs in this process and keeps the last session of each user.
The program prints a few of them, checks every user against a plain
Python loop over the same events, and prints ``OK`` (or exits 1).
"""

import random
import sys

from sage_mp import KeyByFunction, LocalEnvironment, SinkFunction, StatefulFunction


def make_events(count=50_000, users=1_000, seed=2024):
    """The same events on every run: a user and an amount in cents."""
    rng = random.Random(seed)
    return [
        {
            "user_id": f"user-{rng.randrange(users):04d}",
            "cents": rng.randrange(1, 10_000),
        }
        for _ in range(count)
    ]


class UserIdExtractor(KeyByFunction):
    """The key of an event is its user."""

    def execute(self, event):
        return event["user_id"]


class UserSessionFunction(StatefulFunction):
    """Counts each user's events and adds up their amounts."""

    def __init__(self):
        super().__init__()
        self.user_sessions = {}  # user -> {"count", "total_cents"}

    def execute(self, event):
        user_id = self.ctx.get_key()
        session = self.user_sessions.setdefault(user_id, {"count": 0, "total_cents": 0})
        session["count"] += 1
        session["total_cents"] += event["cents"]
        # Returning live state is safe: the engine copies what is emitted.
        return {"user_id": user_id, **session}


class LatestSession(SinkFunction):
    """Keeps the newest session of every user (runs in this process)."""

    latest = {}

    def execute(self, session):
        LatestSession.latest[session["user_id"]] = session


def plain_sessions(events):
    """The same computation in one plain loop, to check the job against."""
    sessions = {}
    for event in events:
        count, total = sessions.get(event["user_id"], (0, 0))
        sessions[event["user_id"]] = (count + 1, total + event["cents"])
    return sessions


def main():
    events = make_events()
    env = LocalEnvironment("user_sessions", workers=4)
    (
        env.from_collection(events)
        .keyby(UserIdExtractor)
        .map(UserSessionFunction)
        .sink(LatestSession)
    )
    result = env.submit(autostop=True)

    print(
        f"{result.records} events, {len(LatestSession.latest)} users, "
        f"{result.workers} workers"
    )
    for user in sorted(LatestSession.latest)[:5]:
        session = LatestSession.latest[user]
        print(
            f"  {user}: {session['count']:3d} events, "
            f"total {session['total_cents'] / 100:9.2f}"
        )

    got = {
        user: (s["count"], s["total_cents"]) for user, s in LatestSession.latest.items()
    }
    if got != plain_sessions(events):
        print("MISMATCH: the job disagrees with the plain computation")
        sys.exit(1)
    print("OK")


if __name__ == "__main__":
    main()
