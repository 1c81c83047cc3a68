"""Freeze records at the moment they are emitted.

A stateful function may return a live object from its state, as the
SAGE guide's functions do (``return self.user_sessions[user_id]``).
Batches are serialized later, after more records have changed that
object, so every record that crosses a stage boundary is frozen when it
is emitted. This module owns that rule and nothing else.
"""

from __future__ import annotations

import pickle
from typing import Any

__all__ = ["Batch", "freeze_into", "thaw"]

# Values of these types cannot change after emission, so they travel
# as they are. Everything else is copied (flat containers of these) or
# pickled on the spot.
_IMMUTABLE = frozenset(
    {str, int, float, bool, bytes, complex, type(None), range, frozenset}
)
_PROTOCOL = 5


class Batch:
    """Records bound for one destination: parallel lists.

    ``frozen`` lists positions whose value holds pickled bytes; the
    receiver unpickles them with :func:`thaw`.
    """

    __slots__ = ("idxs", "keys", "values", "frozen")

    def __init__(self) -> None:
        self.idxs: list[int] = []
        self.keys: list[Any] = []
        self.values: list[Any] = []
        self.frozen: list[int] = []

    def __len__(self) -> int:
        return len(self.values)

    def parts(self) -> tuple[list[int], list[Any], list[Any], list[int]]:
        return self.idxs, self.keys, self.values, self.frozen


def freeze_into(batch: Batch, idx: int, key: Any, value: Any) -> None:
    """Append ``value`` to ``batch`` as it is now."""
    kind = type(value)
    if kind in _IMMUTABLE:
        pass
    elif kind is dict:
        copy = value.copy()
        if _IMMUTABLE.issuperset(map(type, copy.values())):
            value = copy
        else:
            value = _pickled(batch, value)
    elif kind is tuple:
        if not _IMMUTABLE.issuperset(map(type, value)):
            value = _pickled(batch, value)
    elif kind is list:
        copy = value.copy()
        if _IMMUTABLE.issuperset(map(type, copy)):
            value = copy
        else:
            value = _pickled(batch, value)
    else:
        value = _pickled(batch, value)
    batch.idxs.append(idx)
    batch.keys.append(key)
    batch.values.append(value)


def freeze_whole(batch: Batch, idx: int, key: Any, value: Any) -> None:
    """Append ``value`` to ``batch`` pickled, whatever its type; raises,
    appending nothing, when neither pickle nor dill can pickle it."""
    data = _pickle(value)
    batch.frozen.append(len(batch.values))
    batch.idxs.append(idx)
    batch.keys.append(key)
    batch.values.append(data)


def _pickled(batch: Batch, value: Any) -> bytes:
    data = _pickle(value)  # May raise: then ``frozen`` stays as it was.
    batch.frozen.append(len(batch.values))
    return data


class RecordNotPicklable(Exception):
    """A record must leave its process, and neither pickle nor dill can
    pickle it. ``record`` is that record."""

    def __init__(self, record: Any, cause: BaseException) -> None:
        super().__init__(
            f"cannot leave its process: {type(cause).__name__}: {cause}. A "
            "record that goes to another worker or to the driver must be "
            "picklable (by pickle or dill): return plain data (dicts, lists, "
            "strings, numbers) instead of generators, open files or sockets"
        )
        self.record = record


def _pickle(value: Any) -> bytes:
    try:
        return pickle.dumps(value, _PROTOCOL)
    except Exception:
        # Lambdas, local classes and the like: dill handles them, at a
        # cost that only these records pay.
        import dill

        try:
            return b"D" + dill.dumps(value)
        except Exception as err:
            raise RecordNotPicklable(value, err) from err


def thaw(values: list[Any], frozen: list[int]) -> list[Any]:
    """Undo the pickling that :func:`freeze_into` did, in place."""
    for pos in frozen:
        data = values[pos]
        if data[:1] == b"D":
            import dill

            values[pos] = dill.loads(data[1:])
        else:
            values[pos] = pickle.loads(data)
    return values
