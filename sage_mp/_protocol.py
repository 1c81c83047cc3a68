"""The driver/worker protocol: a small set of messages, transport-free.

Every message is a plain tuple whose first item names its kind. Data
flows in *ticks*: the driver cuts the source's records into numbered
batches (tick 0, 1, 2, ...), and every stage processes ticks in order,
so per-key source order survives any routing.

Data plane, sent along the pipeline (driver -> stage 0 -> stage 1 ...
-> the driver's final stage):

``("batch", stage, tick, idxs, keys, values, frozen)``
    The records of ``tick`` that the sender routes to the receiver's
    instance of ``stage``. Every sender sends exactly one (maybe empty)
    batch per tick it processes to every instance of the next stage.
    ``idxs`` are the records' positions in the source's tick, used to
    merge batches from several senders back into source order.
``("slice", stage, tick, start, offsets, keys)``
    A batch whose records stay behind: sent instead of ``batch`` when
    the source is a collection that the receiver holds too (a forked
    worker inherits it). The records are the collection's items at
    ``start + offset``; ``offsets`` also serve as their ``idxs``.
``("range", stage, tick, start, stop)``
    The records of ``tick`` are the source collection's items
    ``start`` to ``stop`` (``None`` items skipped). Sent by the driver
    to stage 0 on the workers when they route a collection themselves
    (see ``_driver.scan_mode``): either to every worker, and each reads
    the records from its own copy, keys them, and passes the ones it
    owns to its own next stage as a ``slice``; or to one worker, which
    keys them and sends every worker, itself included, a ``slice``.
``("barrier", stage, checkpoint_id, tick)``
    Checkpoint ``checkpoint_id`` cuts the stream before ``tick``. Sent
    after the sender's last batch before ``tick``.
``("end", stage, tick)``
    The sender sends nothing more; the stream has ``tick`` ticks.

Control plane, driver -> worker:

``("commit", checkpoint_id, horizon)``
    ``checkpoint_id`` committed; blobs that only checkpoints before
    ``horizon`` need may be deleted.

Control plane, worker -> driver:

``("ack", checkpoint_id, info)``
    The worker's snapshot for ``checkpoint_id`` is durable.
``("failed", report)``
    The worker stops because of ``report`` (a :class:`FailureReport`).
``("kept", tick, count, positions)``
    Sent by a stage 0 instance that reads every ``range``, at each
    barrier and at the end: how many of this run's records before
    ``tick`` it kept as its own, plus the unkeyable ones it reported
    (a tick's key errors are reported by worker ``tick % workers``
    only), and the sum of those records' positions in the collection.
    The driver checks that the workers' counts and sums add up to the
    records it sent.
``("dead", letter)``
    A record was skipped under the skip policy (a dict, see errors).
``("done", stats)``
    The worker finished every stage and is about to exit.
``("log", [record_dict, ...])``
    Log records from a worker, in order, to be emitted by the driver.

A transport adds one message of its own, ``("eof",)``, when a peer's
channel closes (see :mod:`sage_mp._transport`).
"""

BATCH = "batch"
SLICE = "slice"
RANGE = "range"
BARRIER = "barrier"
END = "end"
ACK = "ack"
FAILED = "failed"
DEAD = "dead"
KEPT = "kept"
DONE = "done"
LOG = "log"
EOF_KIND = "eof"
COMMIT = "commit"
