"""Which attributes of a function are its state.

Every function's instance attributes are state, so that users write no
save or load code. The rules, applied to ``vars(fn)``:

* all instance attributes are state;
* except ``ctx``, ``logger``, ``_logger`` and ``runtime_context``;
* except private ``_names``, unless listed in ``__state_include__``;
* a non-empty ``__state_include__`` means only the attributes it lists;
* ``__state_exclude__`` adds to the exclusions.

This module decides *which* attributes; serializing and storing them
belongs to the checkpoint code.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ALWAYS_EXCLUDED", "state_attribute_names", "state_of"]

ALWAYS_EXCLUDED = frozenset({"ctx", "logger", "_logger", "runtime_context"})


def _listed(fn: Any, name: str) -> list[str]:
    value = getattr(type(fn), name, None) or []
    if isinstance(value, str):
        return [value]
    return list(value)


def state_attribute_names(fn: Any) -> list[str]:
    """Return the names of ``fn``'s attributes that are state, sorted."""
    include = _listed(fn, "__state_include__")
    exclude = set(_listed(fn, "__state_exclude__")) | ALWAYS_EXCLUDED
    names = vars(fn).keys()
    if include:
        chosen = [name for name in include if name in vars(fn)]
    else:
        chosen = [name for name in names if not name.startswith("_")]
    return sorted(name for name in chosen if name not in exclude)


def state_of(fn: Any) -> dict[str, Any]:
    """Return ``{name: value}`` of ``fn``'s state attributes (live objects)."""
    attributes = vars(fn)
    return {name: attributes[name] for name in state_attribute_names(fn)}
