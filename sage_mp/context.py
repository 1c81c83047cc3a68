"""The runtime context that every function instance gets as ``self.ctx``."""

from __future__ import annotations

import logging
from typing import Any

__all__ = ["RuntimeContext"]


class CurrentRecord:
    """The record a stage is processing: shared by its contexts."""

    __slots__ = ("key", "idx")

    def __init__(self) -> None:
        self.key: Any = None
        self.idx = 0


class RuntimeContext:
    """Where a function instance runs, and the key of the current record.

    Injected as ``self.ctx`` after the function is constructed, in the
    process that runs the instance. ``get_key()`` returns the key that
    the nearest upstream ``keyby`` attached to the record being
    processed, or ``None`` for unkeyed records and outside ``execute``.
    """

    def __init__(
        self,
        name: str,
        parallel_index: int,
        parallelism: int,
        current: CurrentRecord | None = None,
        job_name: str = "",
    ) -> None:
        self.name = name
        self.parallel_index = parallel_index
        self.parallelism = parallelism
        self.job_name = job_name
        self._current = current if current is not None else CurrentRecord()
        where = "driver" if parallel_index < 0 else f"w{parallel_index}"
        self.logger = logging.LoggerAdapter(
            logging.getLogger(f"sage_mp.user.{name}"),
            {"sage_operator": name, "sage_worker": where},
        )

    def get_key(self) -> Any:
        """Return the current record's key, or ``None`` if it has none."""
        return self._current.key

    def set_current_key(self, key: Any) -> None:
        """Set the current key (called by operators, not by users)."""
        self._current.key = key

    def clear_key(self) -> None:
        """Forget the current key (called by operators, not by users)."""
        self._current.key = None

    def __repr__(self) -> str:
        return (
            f"RuntimeContext(name={self.name!r}, "
            f"parallel_index={self.parallel_index}, "
            f"parallelism={self.parallelism})"
        )
