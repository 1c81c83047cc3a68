"""Reading checkpoints offline: ``python -m sage_mp state ls | dump``.

Opens every LMDB environment of a checkpoint directory read-only.
LMDB readers never block its writer, so inspecting a running job's
directory does not disturb the job. This module only reads.
"""

from __future__ import annotations

import datetime
import math
import os
from typing import Any

from ._checkpoint import (
    apply_blobs,
    check_safe,
    loads,
    open_stores,
    read_manifest,
)
from ._partition import KEY_GROUPS
from .errors import IncompatibleCheckpoint

__all__ = ["dump_state", "list_checkpoints"]


def list_checkpoints(directory: str) -> list[dict[str, Any]]:
    """Committed and incomplete checkpoints, oldest first."""
    manifest = read_manifest(directory)
    rows = {
        int(entry["id"]): {**entry, "status": "committed"}
        for entry in manifest.checkpoints
    }
    newest = max(rows, default=0)
    for store in open_stores(directory):
        try:
            for ident, meta in store.checkpoints().items():
                if ident > newest and ident not in rows:
                    rows[ident] = {
                        "id": ident,
                        "status": "incomplete",
                        "bytes": 0,
                        "workers": None,
                    }
                if rows.get(ident, {}).get("status") == "incomplete":
                    rows[ident]["bytes"] += meta.get("bytes", 0)
        finally:
            store.close()
    return [rows[ident] for ident in sorted(rows)]


def format_listing(rows: list[dict[str, Any]]) -> str:
    lines = [
        f"{'id':>6}  {'status':<10}  {'time (UTC)':<19}  {'workers':>7}  "
        f"{'records':>10}  {'bytes':>12}  {'duration':>9}"
    ]
    for row in rows:
        when = row.get("time")
        stamp = (
            datetime.datetime.fromtimestamp(when, datetime.timezone.utc).strftime(
                "%Y-%m-%d %H:%M:%S"
            )
            if when
            else "-"
        )
        duration = row.get("duration")
        lines.append(
            f"{row['id']:>6}  {row['status']:<10}  {stamp:<19}  "
            f"{row.get('workers') or '-':>7}  {row.get('records', '-'):>10}  "
            f"{row.get('bytes', 0):>12,}  "
            f"{f'{duration:.3f} s' if duration is not None else '-':>9}"
        )
    return "\n".join(lines)


def dump_state(
    directory: str,
    checkpoint: int | None = None,
    operator: str | None = None,
    key: str | None = None,
) -> dict[str, dict[str, Any]]:
    """The state of a committed checkpoint, merged across workers.

    Returns ``{operator: {attribute: value}}``. Keyed attributes are
    merged into one dict; other attributes held by several workers
    become ``{"worker-N": value}``. ``key`` keeps only the entries of
    that key (compared with the keys themselves and with their str()).
    """
    check_safe(directory)
    manifest = read_manifest(directory)
    committed = {int(entry["id"]): entry for entry in manifest.checkpoints}
    if not committed:
        raise IncompatibleCheckpoint(f"{directory!r} holds no committed checkpoint yet")
    target = max(committed) if checkpoint is None else checkpoint
    if target not in committed:
        raise IncompatibleCheckpoint(
            f"checkpoint {target} is not a committed checkpoint in "
            f"{directory!r}; committed: {sorted(committed)}"
        )
    stores = open_stores(directory)
    try:
        return _collect(stores, target, operator, key)
    finally:
        for store in stores:
            store.close()


class UnknownOperator(LookupError):
    """``dump_state`` was asked for an operator that has no state there."""


def _collect(
    stores: list[Any], target: int, operator: str | None, key: str | None
) -> dict[str, dict[str, Any]]:
    if operator is not None:
        known = {
            op
            for store in stores
            for kind in ("plain", "keyed")
            for op, _ in store.attributes(kind)
        }
        if operator not in known:
            raise UnknownOperator(
                f"no operator named {operator!r} has state in that checkpoint; "
                f"operators with state: {', '.join(sorted(known)) or 'none'}"
            )
    state: dict[str, dict[str, Any]] = {}
    for store in stores:
        label = os.path.basename(store.path)
        for op, attr in sorted(store.attributes("plain")):
            if operator is not None and op != operator:
                continue
            data = store.plain_value(op, attr, target)
            if data is None:
                continue
            state.setdefault(op, {}).setdefault(attr, {})[label] = _load(data)
    for op_attrs in state.values():
        for attr, per_worker in op_attrs.items():
            if len(per_worker) == 1:
                op_attrs[attr] = next(iter(per_worker.values()))
    keyed: set[tuple[str, str]] = set()
    for store in stores:
        keyed |= store.attributes("keyed")
    for op, attr in sorted(keyed):
        if operator is not None and op != operator:
            continue
        merged: dict[Any, Any] = {}
        for group in range(KEY_GROUPS):
            blobs: list[tuple[int, bytes]] = []
            for store in stores:
                blobs += store.group_blobs(op, attr, group, target)
            if blobs:
                blobs.sort(key=lambda item: item[0])
                merged.update(apply_blobs([blob for _, blob in blobs]))
        state.setdefault(op, {})[attr] = merged
    if key is not None:
        state = _only_key(state, key)
    return state


def _load(data: bytes) -> Any:
    try:
        return loads(data)
    except Exception as err:  # noqa: BLE001 - show what cannot be loaded
        return f"<cannot load here: {type(err).__name__}: {err}>"


def _only_key(state: dict[str, dict[str, Any]], key: str) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for op, attrs in state.items():
        for attr, value in attrs.items():
            if not isinstance(value, dict):
                continue
            hits = {k: v for k, v in value.items() if k == key or str(k) == key}
            if hits:
                out.setdefault(op, {})[attr] = hits
    return out


def to_json(value: Any) -> Any:
    """Make ``value`` JSON-ready; anything JSON cannot hold becomes repr."""
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, dict):
        return {
            (k if isinstance(k, str) else repr(k)): to_json(v) for k, v in value.items()
        }
    if isinstance(value, (list, tuple)):
        return [to_json(item) for item in value]
    return repr(value)
