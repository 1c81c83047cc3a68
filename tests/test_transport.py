"""The pipe transport between a forked worker and the driver.

A worker's endpoint holds what it sends until its next ``receive()``
or ``flush()``, then writes each peer's frames at once. These tests
fork a real process over real pipes and hand the steps over with
events, so no step depends on how fast the machine is.
"""

from __future__ import annotations

import multiprocess

from sage_mp._transport import DRIVER, PipeSet

COUNT = 200
WAIT = 30.0  # a safety net for a broken transport, not a measurement


def _worker(pipes, sent, go, how):
    endpoint = pipes.endpoint(0)
    endpoint.write_at_receive = True
    for number in range(COUNT):
        endpoint.send(DRIVER, ("n", number, b"x" * (number % 7) * 1000))
    sent.set()
    go.wait(WAIT)
    if how == "receive":
        endpoint.receive(0)
    else:
        assert endpoint.flush(WAIT)
    # Stay alive until the driver has read everything.
    endpoint.receive(WAIT)
    endpoint.close()


def _run(how):
    context = multiprocess.get_context("fork")
    sent, go = context.Event(), context.Event()
    pipes = PipeSet(1)
    proc = context.Process(target=_worker, args=(pipes, sent, go, how))
    proc.start()
    driver = pipes.endpoint(DRIVER)
    try:
        assert sent.wait(WAIT)
        held = driver.receive(0.2)
        go.set()
        got = []
        while len(got) < COUNT:
            arrived = driver.receive(WAIT)
            assert arrived, f"only {len(got)} of {COUNT} messages arrived"
            got += arrived
    finally:
        driver.close()
        proc.join(WAIT)
        if proc.exitcode is None:
            proc.kill()
    return held, got


def test_held_messages_leave_at_the_next_receive_in_order():
    held, got = _run("receive")
    assert held == []
    assert [message[1] for _, message in got] == list(range(COUNT))
    assert all(sender == 0 for sender, _ in got)
    assert [len(message[2]) for _, message in got] == [
        number % 7 * 1000 for number in range(COUNT)
    ]


def test_flush_sends_held_messages():
    held, got = _run("flush")
    assert held == []
    assert [message[1] for _, message in got] == list(range(COUNT))
