"""Stable routing of keys: key -> canonical bytes -> key group -> worker.

This module owns the one function that decides where a key lives. It
must never depend on Python's ``hash()``, which changes with
``PYTHONHASHSEED``, and its results are pinned by tests: changing them
would strand every checkpoint ever written.
"""

from __future__ import annotations

import datetime
import enum
import struct
import uuid
import zlib
from typing import Any

__all__ = [
    "KEY_GROUPS",
    "canonical_key",
    "groups_of_worker",
    "key_group",
    "worker_for_group",
]

#: Fixed number of key groups. Keys hash into groups, and each worker
#: owns a contiguous range of groups, so rescaling moves whole groups.
#: 256 allows up to 256 workers and keeps each group small.
KEY_GROUPS = 256

_ATOMIC_TAGS = {str: b"s", bytes: b"b"}


def canonical_key(key: Any) -> bytes:
    """Encode ``key`` so that equal keys give equal bytes in any process.

    Numbers that compare equal encode equally (``1``, ``1.0`` and
    ``True`` are one key, as they are one key of a dict).
    """
    kind = type(key)
    if kind is str:
        return b"s" + key.encode("utf-8", "surrogatepass")
    if kind is int or kind is bool:
        return b"i" + str(int(key)).encode()
    if kind is float:
        if key.is_integer():
            return b"i" + str(int(key)).encode()
        return b"f" + struct.pack("<d", key)
    if kind is bytes:
        return b"b" + key
    if kind is tuple:
        parts = [canonical_key(part) for part in key]
        return b"t" + b"".join(struct.pack("<I", len(p)) + p for p in parts)
    return _canonical_other(key)


def _canonical_other(key: Any) -> bytes:
    if key is None:
        return b"n"
    if isinstance(key, enum.Enum):
        name = f"{type(key).__module__}.{type(key).__qualname__}.{key.name}"
        return b"e" + name.encode()
    # Subclasses of the atomic types route like their base value.
    if isinstance(key, int):
        return canonical_key(int(key))
    if isinstance(key, float):
        return canonical_key(float(key))
    if isinstance(key, str):
        return canonical_key(str(key))
    if isinstance(key, bytes):
        return canonical_key(bytes(key))
    if isinstance(key, tuple):
        return canonical_key(tuple(key))
    if isinstance(key, (datetime.datetime, datetime.date, datetime.time)):
        return b"d" + key.isoformat().encode()
    if isinstance(key, uuid.UUID):
        return b"u" + key.bytes
    if isinstance(key, frozenset):
        parts = sorted(canonical_key(part) for part in key)
        return b"z" + b"".join(struct.pack("<I", len(p)) + p for p in parts)
    raise TypeError(
        f"a key of type {type(key).__name__} cannot be routed; expected "
        "str, int, float, bytes, bool, a tuple of these, a date/time, a "
        "UUID, an Enum or a frozenset (convert a list to a tuple, and a "
        "dict to a tuple of its items)"
    )


def _mix(h: int) -> int:
    # crc32 alone is linear in its input, so similar keys share low bits;
    # the murmur3 finaliser spreads them before the modulo.
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & 0xFFFFFFFF
    return h ^ (h >> 16)


def key_group(key: Any) -> int:
    """Return the key group (0 to KEY_GROUPS-1) that owns ``key``."""
    return _mix(zlib.crc32(canonical_key(key))) % KEY_GROUPS


def worker_for_group(group: int, workers: int) -> int:
    """Return the worker that owns ``group`` when there are ``workers``."""
    return group * workers // KEY_GROUPS


def groups_of_worker(worker: int, workers: int) -> range:
    """Return the contiguous range of key groups that ``worker`` owns."""
    first = -(-worker * KEY_GROUPS // workers)
    last = -(-(worker + 1) * KEY_GROUPS // workers)
    return range(first, last)
