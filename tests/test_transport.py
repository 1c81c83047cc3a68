"""The pipe transport between a forked worker and the driver.

A worker's endpoint holds what it sends until its next ``receive()``
or ``flush()``, or until ``hold`` seconds have passed since its last
write to that peer, and then writes each peer's frames at once. These
tests fork a real process over real pipes and hand the steps over with
events, so no step depends on how fast the machine is.
"""

from __future__ import annotations

import threading
import time

import multiprocess

from sage_mp._transport import DRIVER, MessageNotPicklable, PipeSet

COUNT = 200
WAIT = 30.0  # a safety net for a broken transport, not a measurement


def _payload(number):
    return b"x" * (number % 7 * 1000)


def _worker(pipes, sent, go, done, how):
    endpoint = pipes.endpoint(0)
    endpoint.write_at_receive = True
    endpoint.hold = 10 * WAIT if how != "hold" else 0.05
    for number in range(COUNT):
        if how == "hold" and number == COUNT - 1:
            time.sleep(2 * endpoint.hold)  # the last send writes them all
        endpoint.send(DRIVER, ("n", number, _payload(number)))
    sent.set()
    go.wait(WAIT)
    if how == "receive":
        endpoint.receive(0)
    elif how == "flush":
        assert endpoint.flush(WAIT)
    # Whatever a full pipe kept back, then stay until the driver has it.
    assert endpoint.flush(WAIT)
    done.wait(WAIT)
    endpoint.close()


def _run(how):
    """Held: what arrived before the go; then all messages, in order."""
    context = multiprocess.get_context("fork")
    sent, go, done = context.Event(), context.Event(), context.Event()
    pipes = PipeSet(1)
    proc = context.Process(target=_worker, args=(pipes, sent, go, done, how))
    proc.start()
    driver = pipes.endpoint(DRIVER)
    try:
        assert sent.wait(WAIT)
        got = driver.receive(0.2)
        held = list(got)
        go.set()
        while len(got) < COUNT:
            arrived = driver.receive(WAIT)
            assert arrived, f"only {len(got)} of {COUNT} messages arrived"
            got += arrived
    finally:
        done.set()
        driver.close()
        proc.join(WAIT)
        if proc.exitcode is None:
            proc.kill()
    assert all(sender == 0 for sender, _ in got)
    assert [message[1] for _, message in got] == list(range(COUNT))
    assert [message[2] for _, message in got] == [_payload(n) for n in range(COUNT)]
    return held


def test_held_messages_leave_at_the_next_receive_in_order():
    assert _run("receive") == []


def test_flush_sends_held_messages():
    assert _run("flush") == []


def test_messages_leave_without_a_receive_once_the_hold_has_passed():
    held = _run("hold")
    # As many as the pipe took, from the first, before any receive.
    assert held
    assert [message[1] for _, message in held] == list(range(len(held)))


def _sends_a_lock(pipes):
    endpoint = pipes.endpoint(0)
    try:
        endpoint.send(DRIVER, ("bad", threading.Lock()))
        outcome = "sent"
    except MessageNotPicklable as err:
        outcome = str(err)
    endpoint.send(DRIVER, ("good", outcome))
    endpoint.flush(WAIT)
    endpoint.close()


def test_a_message_pickle_cannot_take_is_refused_whole():
    """send() raises MessageNotPicklable and sends nothing of it, so
    the next message arrives intact and alone."""
    pipes = PipeSet(1)
    child = multiprocess.get_context("fork").Process(
        target=_sends_a_lock, args=(pipes,)
    )
    child.start()
    driver = pipes.endpoint(DRIVER)
    got = []
    deadline = time.monotonic() + WAIT
    while not got and time.monotonic() < deadline:
        got = [m for m in driver.receive(0.1) if m[1][0] != "eof"]
    child.join(WAIT)
    driver.close()
    assert got == [(0, ("good", "TypeError: cannot pickle '_thread.lock' object"))]
