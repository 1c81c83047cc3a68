"""A checkpointed job used by the checkpoint tests, as a script or module.

Run as a script (``python -m sage_mp run tests/ckpt_job.py N_EVENTS``)
it processes the first N_EVENTS of a fixed event list; each run with
the same checkpoint directory resumes where the previous one ended.
"""

from __future__ import annotations

import random
import sys

from sage_mp import LocalEnvironment, SinkFunction, StatefulFunction

KEYS = 1500


def events(count: int, seed: int = 7) -> list[dict]:
    rng = random.Random(seed)
    return [
        {"user": f"u{rng.randrange(KEYS)}", "value": rng.randrange(100), "seq": i}
        for i in range(count)
    ]


def expected(evs: list[dict]) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for event in evs:
        entry = out.setdefault(event["user"], {"count": 0, "total": 0})
        entry["count"] += 1
        entry["total"] += event["value"]
    return out


class Sessions(StatefulFunction):
    """Per-user count and sum, plus a per-worker record counter."""

    def __init__(self, spin: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.sessions = {}
        self.records = 0
        self.spin = spin

    def execute(self, event):
        user = self.ctx.get_key()
        entry = self.sessions.get(user)
        if entry is None:
            entry = self.sessions[user] = {"count": 0, "total": 0}
        entry["count"] += 1
        entry["total"] += event["value"]
        self.records += 1
        for _ in range(self.spin):
            pass
        return (user, entry["count"], entry["total"])


class LastSeen(SinkFunction):
    """Keeps the latest output per user (outputs may repeat on recovery)."""

    latest: dict = {}

    def execute(self, record):
        LastSeen.latest[record[0]] = {"count": record[1], "total": record[2]}


def build(env: LocalEnvironment, evs: list[dict], spin: int = 0) -> None:
    (
        env.from_collection(evs)
        .keyby(lambda e: e["user"], name="by_user")
        .map(Sessions, spin=spin)
        .sink(LastSeen)
    )


if __name__ == "__main__":
    count = int(sys.argv[1])
    spin = int(sys.argv[2]) if len(sys.argv) > 2 else 0
    env = LocalEnvironment("ckpt_job", workers=2, checkpoint_interval=0.05)
    build(env, events(count), spin)
    env.submit(autostop=True)
