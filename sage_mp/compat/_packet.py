"""SAGE's ``Packet``: a record with its partition key, for user code only.

sage_mp never wraps records in packets: a function receives the bare
record and reads the key with ``self.ctx.get_key()``. The class exists
so that SAGE code which builds or inspects packets (mostly tests and
type hints) imports and behaves as before.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

__all__ = ["Packet"]


@dataclasses.dataclass
class Packet:
    """A payload and where it is routed: its key and the key strategy.

    ``timestamp`` is the creation time in nanoseconds; it is ignored
    when packets are compared. The methods that change the key or the
    payload return a new packet and leave this one as it is.
    """

    payload: Any
    input_index: int = 0
    partition_key: Any = None
    partition_strategy: str | None = None
    timestamp: int = dataclasses.field(default_factory=time.time_ns, compare=False)

    @property
    def key(self) -> Any:
        """The partition key; ``None`` for an unkeyed packet."""
        return self.partition_key

    def is_keyed(self) -> bool:
        """True if the packet carries a key."""
        return self.partition_key is not None

    def update_key(self, key: Any, strategy: str | None = None) -> Packet:
        """Return a new packet with ``key`` (and ``strategy``, if given)."""
        return Packet(
            self.payload,
            self.input_index,
            key,
            strategy or self.partition_strategy,
        )

    def inherit_partition_info(self, payload: Any) -> Packet:
        """Return a new packet with ``payload`` and this packet's key."""
        return Packet(
            payload, self.input_index, self.partition_key, self.partition_strategy
        )

    def copy(self) -> Packet:
        """Return a shallow copy that keeps the original timestamp."""
        return dataclasses.replace(self)
