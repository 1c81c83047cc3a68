"""The LMDB store of one process: compaction of key-group blobs.

These tests write real LMDB environments through :class:`Store`, with
the blob format and merge function the checkpointer uses.
"""

from __future__ import annotations

from sage_mp._checkpoint import apply_blobs, dumps, merge_blobs
from sage_mp._store import BASE, COMPACT_AFTER, Store

GROUPS = range(64)
CHECKPOINTS = 40


def delta(group: int, value: int) -> bytes:
    """A group's blob: its one key now holds ``value``."""
    return dumps(([dumps({f"k{group}": value})], []))


def test_groups_compact_in_turns_not_all_at_once(tmp_path):
    """Groups changing at every checkpoint never compact together.

    Each checkpoint rewrites at most 1/COMPACT_AFTER of the groups as
    bases, every group is compacted at its turn, no group ever
    needs more than 2 * COMPACT_AFTER + 1 blobs, and every group's
    entries read back exactly.
    """
    store = Store(str(tmp_path / "worker-0"))
    bases_per_checkpoint = []
    try:
        for checkpoint in range(1, CHECKPOINTS + 1):
            keyed = {
                ("op", "attr", g): (delta(g, checkpoint), checkpoint == 1)
                for g in GROUPS
            }
            store.write(
                checkpoint, keyed, {}, {"id": checkpoint}, checkpoint, merge_blobs
            )
            latest = [
                store.group_blobs("op", "attr", g, checkpoint)[-1] for g in GROUPS
            ]
            assert all(ident == checkpoint for ident, _ in latest)
            bases_per_checkpoint.append(sum(b[:1] == BASE for _, b in latest))

        for g in GROUPS:
            blobs = store.group_blobs("op", "attr", g, CHECKPOINTS)
            assert len(blobs) <= 2 * COMPACT_AFTER + 1
            assert apply_blobs([blob for _, blob in blobs]) == {f"k{g}": CHECKPOINTS}
    finally:
        store.close()

    assert bases_per_checkpoint[0] == len(GROUPS)
    assert max(bases_per_checkpoint[1:]) <= len(GROUPS) // COMPACT_AFTER
    assert sum(bases_per_checkpoint[1:]) >= len(GROUPS)
