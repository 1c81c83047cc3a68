"""The classes users subclass to write pipeline functions.

Every function class is constructed as ``Cls(*args, **kwargs)`` in the
process that runs the instance (a worker, or the driver for sources and
single-instance sinks), after the job's processes are forked, so
classes defined in ``__main__`` or inside a test function work.

The lifecycle of an instance, all in that one process:

1. ``__init__``: ``self.ctx`` is ``None``; ``self.logger`` works.
2. ``self.ctx`` is set to a :class:`~sage_mp.context.RuntimeContext`.
3. ``open()`` runs once, before the first record.
4. ``execute(...)`` runs once per record (per poll, for sources).
5. ``close()`` runs once at the end of the stream, after the last
   record, unless the job failed.

Every instance attribute is state (see :mod:`sage_mp.state`).
"""

from __future__ import annotations

import copy
import itertools
import logging
from collections.abc import Callable, Iterable
from typing import Any

from .state import state_of

__all__ = [
    "BaseFunction",
    "FilterFunction",
    "FlatMapFunction",
    "KeyByFunction",
    "MapFunction",
    "SinkFunction",
    "SourceFunction",
    "StatefulFunction",
    "StopSignal",
]


class StopSignal:
    """Returned by a source's ``execute()`` to end the stream."""

    def __init__(self, name: str = "stop", *args: Any, **kwargs: Any) -> None:
        self.name = name
        self.reason = name

    def __repr__(self) -> str:
        return f"StopSignal({self.name!r})"


class BaseFunction:
    """Base of all function classes. Subclasses implement ``execute``."""

    #: If non-empty, only these attributes are state.
    __state_include__: list[str] = []
    #: Attributes that are never state.
    __state_exclude__: list[str] = []

    ctx: Any

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.ctx = None

    @property
    def logger(self) -> logging.Logger | logging.LoggerAdapter[logging.Logger]:
        """A logger named after the operator once running, else the class."""
        ctx = self.__dict__.get("ctx")
        if ctx is not None:
            return ctx.logger
        return logging.getLogger(f"sage_mp.user.{type(self).__name__}")

    def open(self) -> None:
        """Called once in the instance's process before its first record."""

    def close(self) -> None:
        """Called once at the end of the stream, after the last record."""

    def execute(self, data: Any) -> Any:
        raise NotImplementedError(
            f"{type(self).__name__} must implement execute(self, data)"
        )

    def get_state(self) -> dict[str, Any]:
        """Return a deep copy of this instance's state, as SAGE does.

        The state is every attribute that :mod:`sage_mp.state` counts:
        all instance attributes except ``ctx``, ``logger``, ``_logger``
        and ``runtime_context``, and except private ``_names`` unless
        ``__state_include__`` lists them; a non-empty
        ``__state_include__`` keeps only what it lists, and
        ``__state_exclude__`` drops more. The copy shares nothing with
        the live attributes, so later records cannot change it.
        """
        state = {}
        for name, value in state_of(self).items():
            try:
                state[name] = copy.deepcopy(value)
            except Exception as err:
                raise TypeError(
                    f"{type(self).__name__}.get_state(): attribute {name!r} "
                    f"({type(value).__name__}) cannot be copied: {err}; list "
                    "it in __state_exclude__ if it is not state"
                ) from err
        return state

    def restore_state(self, state: dict[str, Any]) -> None:
        """Set each ``name: value`` of ``state`` as an attribute.

        Meant for a dict from :meth:`get_state`. Values are deep-copied,
        so one saved state can be restored into several instances.
        Attributes that ``state`` does not name are left as they are.
        """
        if not isinstance(state, dict):
            raise TypeError(
                f"{type(self).__name__}.restore_state() expected the dict "
                f"that get_state() returned, got {type(state).__name__}"
            )
        for name, value in copy.deepcopy(state).items():
            setattr(self, name, value)


class SourceFunction(BaseFunction):
    """Produces records. ``execute()`` is polled repeatedly, in the driver.

    Return a record, ``None`` for "nothing now" (the driver waits
    ``delay`` seconds and polls again), or a :class:`StopSignal` to end
    the stream. A source may set ``total`` to the number of records it
    will produce, for progress reporting.
    """

    def execute(self, data: Any = None) -> Any:  # type: ignore[override]
        raise NotImplementedError(f"{type(self).__name__} must implement execute(self)")


class MapFunction(BaseFunction):
    """One record in, one record out; returning ``None`` drops it."""


class FilterFunction(BaseFunction):
    """Keeps a record when ``execute(record)`` is truthy."""


class FlatMapFunction(BaseFunction):
    """One record in, any number out.

    Return an iterable of records, or call ``self.collect(record)`` for
    each, or both.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)

    def collect(self, record: Any) -> None:
        """Emit ``record`` downstream (only valid inside ``execute``)."""
        collector = self.__dict__.get("_collector")
        if collector is None:
            raise RuntimeError(
                f"{type(self).__name__}.collect() was called outside "
                "execute(); emit records only while processing one"
            )
        collector(record)


class SinkFunction(BaseFunction):
    """Consumes records; the return value of ``execute`` is ignored."""


class KeyByFunction(BaseFunction):
    """Returns the key of a record; the record itself is unchanged."""


class StatefulFunction(MapFunction):
    """A map function whose attributes are keyed state, restored on resume.

    Any function's attributes are state; this class exists so that SAGE
    code reads as it did, and for ``save_state``.
    """

    def save_state(self) -> dict[str, Any]:
        """Return :meth:`get_state`: a deep copy of the state attributes."""
        return self.get_state()


class _Wrapped(BaseFunction):
    """Adapts a plain callable to a function class."""

    # The callable is code, not state; closures keep their own state.
    __state_exclude__ = ["fn"]

    def __init__(self, fn: Callable[..., Any]) -> None:
        super().__init__()
        self.fn = fn

    def execute(self, data: Any = None) -> Any:
        return self.fn(data)


class _WrappedSource(SourceFunction):
    __state_exclude__ = ["fn"]

    def __init__(self, fn: Callable[[], Any]) -> None:
        super().__init__()
        self.fn = fn

    def execute(self, data: Any = None) -> Any:
        return self.fn()


class CollectionSource(SourceFunction):
    """Emits the items of an iterable, then stops.

    ``position`` counts the items read; on resume the iterable is read
    again and that many items are skipped. ``None`` items are skipped,
    since ``None`` is never a record.
    """

    # The items come from the job script again on resume; only the
    # position is state.
    __state_include__ = ["position"]

    def __init__(self, items: Iterable[Any]) -> None:
        super().__init__()
        self.items = items
        self.position = 0
        self._iterator: Any = None
        try:
            self.total: int | None = len(items)  # type: ignore[arg-type]
        except TypeError:
            self.total = None

    def open(self) -> None:
        self._iterator = iter(self.items)
        for _ in range(self.position):
            next(self._iterator, None)

    def execute(self, data: Any = None) -> Any:
        for item in self._iterator:
            self.position += 1
            if item is not None:
                return item
        return StopSignal("collection exhausted")

    def take(self, limit: int) -> list[Any]:
        """Return up to ``limit`` next items; the driver's fast path."""
        items = list(itertools.islice(self._iterator, limit))
        self.position += len(items)
        if None in items:
            items = [item for item in items if item is not None]
        return items
