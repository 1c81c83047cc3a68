"""SAGE's ``BaseRuntimeContext``: the key API without an engine behind it.

sage_mp gives every function a :class:`~sage_mp.context.RuntimeContext`;
this class exists for SAGE code that subclasses the context itself,
typically in tests that drive a function by hand. It keeps the current
key on the instance and knows nothing about workers or records.
"""

from __future__ import annotations

import abc
import logging
from typing import Any

from ..context import RuntimeContext

__all__ = ["BaseRuntimeContext"]


class BaseRuntimeContext(abc.ABC):  # noqa: B024 - an ABC for register(); nothing is abstract
    """Holds the current key; subclass it and, if you like, add ``logger``.

    A subclass that defines nothing, or only a ``logger`` property,
    works on its own: ``get_key()`` is ``None`` until
    ``set_current_key(key)``, and again after ``clear_key()``. Any
    object is accepted as a key, since nothing here routes it.

    sage_mp's own :class:`~sage_mp.context.RuntimeContext` counts as a
    subclass (``isinstance(self.ctx, BaseRuntimeContext)`` is true)
    without sharing this implementation.
    """

    def __init__(self) -> None:
        self._current_packet_key: Any = None

    @property
    def logger(self) -> logging.Logger:
        """A logger named after the class, unless a subclass sets one."""
        chosen = self.__dict__.get("_logger")
        if chosen is not None:
            return chosen  # type: ignore[no-any-return]
        return logging.getLogger(f"sage_mp.user.{type(self).__name__}")

    @logger.setter
    def logger(self, value: logging.Logger) -> None:
        self._logger = value

    def get_key(self) -> Any:
        """Return the current key, or ``None`` when none is set."""
        # A subclass may skip super().__init__(), so the attribute can
        # be missing; that means "no key", not an error.
        return getattr(self, "_current_packet_key", None)

    def set_current_key(self, key: Any) -> None:
        """Make ``key`` the current key."""
        self._current_packet_key = key

    def clear_key(self) -> None:
        """Forget the current key."""
        self._current_packet_key = None


BaseRuntimeContext.register(RuntimeContext)
