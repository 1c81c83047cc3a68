"""Keyed state the SAGE way: per-user sessions and event-time windows.

The program is written against SAGE's import paths and runs on sage_mp
through its compatibility layer, which it turns on itself in its first
lines. Run it with::

    python examples/tutorials/l3-kernel/keyed_state_example.py

Two pipelines read the same 60 events of three users. The first keeps
a session per user (event count and total value), the second counts
each user's events per 60-second window of event time and forgets
windows older than the last three. Both print their final state per
user, checked against a plain Python computation of the same data; the
program exits 1 if they disagree.
"""

import random
import sys
import time
from typing import ClassVar

import sage_mp.compat

# Must run before the first sage.* import; refused (with a message) if
# a real SAGE is installed, because sage_mp never shadows it.
sage_mp.compat.install()

from sage.common.core.functions import (  # noqa: E402
    MapFunction,
    SinkFunction,
    SourceFunction,
)
from sage.common.core.stateful_function import StatefulFunction  # noqa: E402
from sage.kernel.api.local_environment import LocalEnvironment  # noqa: E402
from sage.kernel.runtime.communication.packet import StopSignal  # noqa: E402

USERS = ("alice", "bob", "carol")
WINDOW_SIZE = 60  # seconds of event time
WINDOWS_KEPT = 3


def make_events(count=60, seed=42):
    """The same events on every run: a user, a value and a timestamp."""
    rng = random.Random(seed)
    events, ts = [], 0
    for _ in range(count):
        ts += rng.randrange(0, 20)
        events.append(
            {"user_id": rng.choice(USERS), "value": rng.randrange(1, 100), "ts": ts}
        )
    return events


class EventSource(SourceFunction):
    """Emits the given events one per poll, then ends the stream."""

    def __init__(self, events, **kwargs):
        super().__init__(**kwargs)
        self.events = events
        self.position = 0

    def execute(self, data=None):
        if self.position >= len(self.events):
            return StopSignal("all events sent")
        event = self.events[self.position]
        self.position += 1
        return event


class UserIdExtractor(MapFunction):
    def execute(self, event):
        return event["user_id"]


class UserSessionFunction(StatefulFunction):
    """Pattern 1 of the guide: one session per user."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.user_sessions = {}

    def execute(self, event):
        user_id = self.ctx.get_key()
        session = self.user_sessions.setdefault(
            user_id, {"session_count": 0, "total_value": 0}
        )
        session["session_count"] += 1
        session["total_value"] += event["value"]
        return {"user_id": user_id, **session}


class WindowAggregator(StatefulFunction):
    """Pattern 2 of the guide, on event time so that runs repeat exactly."""

    def __init__(self, window_size=3600, **kwargs):
        super().__init__(**kwargs)
        self.window_size = window_size
        self.window_data = {}  # {user: {window_id: [values]}}

    def execute(self, event):
        user_id = self.ctx.get_key()
        window_id = event["ts"] // self.window_size
        windows = self.window_data.setdefault(user_id, {})
        windows.setdefault(window_id, []).append(event["value"])
        for old in [w for w in windows if w <= window_id - WINDOWS_KEPT]:
            del windows[old]
        return {
            "user_id": user_id,
            "window": window_id,
            "count": len(windows[window_id]),
            "sum": sum(windows[window_id]),
            "windows_kept": len(windows),
        }


class SessionSink(SinkFunction):
    results: ClassVar[list] = []

    def execute(self, data):
        SessionSink.results.append(data)


class WindowSink(SinkFunction):
    results: ClassVar[list] = []

    def execute(self, data):
        WindowSink.results.append(data)


def run(events, function, sink, **kwargs):
    """Build, submit, wait and close one pipeline, as SAGE programs do."""
    env = LocalEnvironment(f"keyed_state_{function.__name__}")
    (
        env.from_source(EventSource, events, delay=0.005)
        .keyby(UserIdExtractor, strategy="hash")
        .map(function, **kwargs)
        .sink(sink)
    )
    env.submit()
    time.sleep(1.0)
    env.close()


def last_per_user(results):
    return {result["user_id"]: result for result in results}


def expected_sessions(events):
    sessions = {}
    for event in events:
        session = sessions.setdefault(
            event["user_id"], {"session_count": 0, "total_value": 0}
        )
        session["session_count"] += 1
        session["total_value"] += event["value"]
    return sessions


def expected_windows(events):
    windows = {}
    last = {}
    for event in events:
        window_id = event["ts"] // WINDOW_SIZE
        user_windows = windows.setdefault(event["user_id"], {})
        user_windows.setdefault(window_id, []).append(event["value"])
        for old in [w for w in user_windows if w <= window_id - WINDOWS_KEPT]:
            del user_windows[old]
        last[event["user_id"]] = (window_id, list(user_windows[window_id]))
    return last, {user: len(kept) for user, kept in windows.items()}


def report(sessions, windows, events):
    print(f"per-user sessions ({len(events)} events):")
    for user, s in sorted(sessions.items()):
        print(
            f"  {user:<6} {s['session_count']:>3} events, "
            f"total value {s['total_value']}"
        )
    print(f"last {WINDOW_SIZE} s window per user:")
    for user, w in sorted(windows.items()):
        start = w["window"] * WINDOW_SIZE
        print(
            f"  {user:<6} [{start}, {start + WINDOW_SIZE}) s: {w['count']} "
            f"events, sum {w['sum']}; {w['windows_kept']} windows kept"
        )


def matches(sessions, windows, events):
    """True if the pipelines' final state equals the plain computation."""
    want_windows, want_kept = expected_windows(events)
    got_sessions = {
        user: {"session_count": s["session_count"], "total_value": s["total_value"]}
        for user, s in sessions.items()
    }
    got_windows = {
        user: (w["window"], w["count"], w["sum"]) for user, w in windows.items()
    }
    want = {
        user: (window_id, len(values), sum(values))
        for user, (window_id, values) in want_windows.items()
    }
    kept = {user: w["windows_kept"] for user, w in windows.items()}
    return (
        got_sessions == expected_sessions(events)
        and got_windows == want
        and kept == want_kept
    )


def main():
    events = make_events()
    run(events, UserSessionFunction, SessionSink)
    run(events, WindowAggregator, WindowSink, window_size=WINDOW_SIZE)

    sessions = last_per_user(SessionSink.results)
    windows = last_per_user(WindowSink.results)
    report(sessions, windows, events)
    ok = len(SessionSink.results) == len(WindowSink.results) == len(events)
    ok = ok and matches(sessions, windows, events)
    print("matches a plain Python computation:", "yes" if ok else "NO")

    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
