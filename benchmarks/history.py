"""The recorded benchmark runs side by side, with regressions marked.

    python -m sage_mp bench --history            # benchmarks/history.jsonl
    python -m sage_mp bench --history runs.jsonl

``--record`` appends one line per run to ``history.jsonl`` (see
``report.history_entry``). This module reads those lines back and
prints one Markdown table per machine and size: a row per run, oldest
first, and a column per target. Figures from different machines, or
from different sizes, are never compared with each other.

A figure is marked when it is worse than the median of the same target
over the ``WINDOW`` runs before it (same machine, same size) by more
than ``TOLERANCE``. A median, not the previous run alone, because one
slow spell of a shared machine should neither raise a mark nor hide
the next one; a mark is a regression only if the next run repeats it.
After each table a line says whether the newest run has any such
mark, and ``--record`` prints the same check for the run it has just
recorded.
"""

from __future__ import annotations

import json
import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import report

#: How many earlier runs (same machine, same size) a figure is set against.
WINDOW = 5
#: How much worse than their median a figure may be before it is marked.
TOLERANCE = 0.10
#: Rows shown per table; older runs stay in the file.
SHOWN = 20

#: Not a target: heavy's speed-up over the plain loop as a share of the
#: ceiling row's. It has no goal; higher is better.
SHARE = "heavy: share of the ceiling"

# A figure as the targets table prints it: a number and its unit.
_FIGURE = re.compile(r"(\d+(?:\.\d+)?)\s*(x|ms|MB|s)\b")
_COMMIT = re.compile(r"\(([0-9a-f]{7,40})\)")
_WORKERS = re.compile(r"^sage_mp (\d+)w$")


class HistoryError(Exception):
    """The history file cannot be read at all."""


@dataclass
class Run:
    """One recorded run: where and when, and each target's figure."""

    date: str
    machine: str
    size: float
    engine: str
    #: target -> (value, verdict: PASS, MISS or "")
    figures: dict[str, tuple[float, str]] = field(default_factory=dict)
    #: target -> goal, such as ">= 1.7x" or "< 50 ms"
    goals: dict[str, str] = field(default_factory=dict)
    #: target -> column heading
    shorts: dict[str, str] = field(default_factory=dict)


@dataclass
class Mark:
    """A figure worse than the median of the runs before it."""

    target: str
    value: float
    median: float
    runs: int

    @property
    def change(self) -> float:
        return self.value / self.median - 1.0


def load(path: Path) -> tuple[list[Run], list[str]]:
    """The runs in ``path``, and one warning per line that was skipped."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise HistoryError(
            f"no history file at {path}: record runs with `python -m sage_mp "
            "bench --record` first, or pass the file to read: --history FILE"
        ) from None
    except (OSError, UnicodeDecodeError) as err:
        raise HistoryError(f"cannot read the history file {path}: {err}") from None
    runs, warnings = [], []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            runs.append(parse_entry(json.loads(line)))
        except (ValueError, TypeError, KeyError) as err:
            shown = line if len(line) <= 80 else line[:77] + "..."
            warnings.append(
                f"{path}:{number}: skipped: expected one JSON object as "
                f"`--record` writes it (date, machine, size, targets), got "
                f"{shown!r} ({_reason(err)}); fix or delete that line"
            )
    return runs, warnings


def _reason(err: Exception) -> str:
    if isinstance(err, KeyError):
        return f"no {err.args[0]!r}"
    return str(err)


def parse_entry(entry: Any) -> Run:
    """A ``history.jsonl`` line as a :class:`Run`; raises on bad input."""
    if not isinstance(entry, dict):
        raise TypeError(f"a JSON {_json_kind(entry)}, not an object")
    targets = entry["targets"]
    goals = entry.get("goals", {})
    values = entry.get("values", {})
    rows = entry.get("rows", [])
    for key, found, kind in (
        ("targets", targets, dict),
        ("goals", goals, dict),
        ("values", values, dict),
        ("rows", rows, list),
    ):
        if not isinstance(found, kind):
            raise TypeError(f"{key!r} is a JSON {_json_kind(found)}")
    if not all(isinstance(row, dict) for row in rows):
        raise TypeError("'rows' holds something other than objects")
    run = Run(
        date=str(entry["date"]),
        machine=str(entry["machine"]),
        size=float(entry["size"]),
        engine=_engine(str(entry.get("sage_mp", ""))),
    )
    known = _known_targets(rows)
    for name, recorded in targets.items():
        if not isinstance(recorded, list) or len(recorded) < 2:
            raise TypeError(f"target {name!r} is not [measured, result]")
        measured, verdict = str(recorded[0]), str(recorded[1])
        value = values.get(name)
        if value is None:
            found = _FIGURE.search(measured)
            value = float(found.group(1)) if found else None
        if value is None or verdict not in ("PASS", "MISS"):
            continue  # Not run in this invocation.
        run.figures[name] = (float(value), verdict)
        target = known.get(name)
        run.goals[name] = str(goals.get(name) or (target.goal if target else ""))
        run.shorts[name] = target.short if target else name
    share = _ceiling_share(rows)
    if share is not None:
        run.figures[SHARE] = (share, "")
        run.goals[SHARE] = ""
        run.shorts[SHARE] = "heavy share of ceiling"
    return run


def _json_kind(value: Any) -> str:
    kinds = {dict: "object", list: "list", str: "string", bool: "boolean"}
    if value is None:
        return "null"
    return kinds.get(type(value), "number")


def _engine(text: str) -> str:
    """The engine's commit from "0.1.0 (abc1234) from /path", or its version."""
    found = _COMMIT.search(text)
    if found:
        return found.group(1)[:7]
    return text.split(" ", 1)[0] or "?"


def _worker_counts(rows: list[dict[str, Any]]) -> list[int]:
    return sorted(
        {
            int(found.group(1))
            for row in rows
            if (found := _WORKERS.match(str(row.get("engine", ""))))
        }
    )


def _known_targets(rows: list[dict[str, Any]]) -> dict[str, report.Target]:
    """The suite's targets by name, for the worker counts of ``rows``:
    their column headings, and goals for lines recorded before goals
    were kept."""
    counts = _worker_counts(rows) or [1, 2]
    return {t.name: t for t in report.build_targets(max(counts), min(counts))}


def _ceiling_share(rows: list[dict[str, Any]]) -> float | None:
    """How much of the machine's ceiling row heavy reached, 0-1.

    The ceiling row moves with the host; this share says how the
    engine did in the machine's conditions of that run.
    """
    heavy = {
        r.get("engine"): r.get("ratio") for r in rows if r.get("workload") == "heavy"
    }
    counts = _worker_counts([r for r in rows if r.get("workload") == "heavy"])
    if not counts:
        return None
    mine = heavy.get(f"sage_mp {max(counts)}w")
    ceiling = heavy.get(f"plain loop x{max(counts)} (ceiling)")
    if not mine or not ceiling:
        return None
    return float(mine) / float(ceiling)


def lower_is_better(goal: str) -> bool:
    return goal.lstrip().startswith("<")


def marks(earlier: list[Run], run: Run) -> list[Mark]:
    """The figures of ``run`` worse than the median of the same target
    over the last ``WINDOW`` of ``earlier`` that have it."""
    found = []
    for target, (value, _) in run.figures.items():
        before = [r.figures[target][0] for r in earlier if target in r.figures]
        before = before[-WINDOW:]
        if not before:
            continue
        median = statistics.median(before)
        if median <= 0:
            continue
        if lower_is_better(run.goals.get(target, "")):
            worse = value > median * (1 + TOLERANCE)
        else:
            worse = value < median * (1 - TOLERANCE)
        if worse:
            found.append(Mark(target, value, median, len(before)))
    return found


def groups(runs: list[Run]) -> dict[tuple[str, float], list[Run]]:
    """Runs by (machine, size), each list in recorded order."""
    grouped: dict[tuple[str, float], list[Run]] = {}
    for run in runs:
        grouped.setdefault((run.machine, run.size), []).append(run)
    return grouped


def render(runs: list[Run]) -> str:
    """Every (machine, size) group as a table, with a verdict line."""
    if not runs:
        return "no recorded runs yet; `python -m sage_mp bench --record` records one"
    parts = [
        f"Each figure is marked ▼ when it is more than {TOLERANCE:.0%} worse than "
        f"the median of the same target over the {WINDOW} runs before it on the "
        "same machine at the same size; MISS means it missed its goal."
    ]
    for (machine, size), group in groups(runs).items():
        parts.append(_table(machine, size, group))
    return "\n\n".join(parts)


def _table(machine: str, size: float, group: list[Run]) -> str:
    targets: list[str] = []
    head = ["date (UTC)", "engine"]
    for run in group:
        for target in run.figures:
            if target not in targets:
                targets.append(target)
    targets.sort(key=lambda t: t == SHARE)  # The share last, after the goals.
    for target in targets:
        run = next(r for r in reversed(group) if target in r.figures)
        goal = run.goals.get(target, "")
        short = run.shorts.get(target, target)
        head.append(f"{short} ({goal})" if goal else short)
    lines = [
        f"### {machine}, size {size:g}",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    shown_from = max(0, len(group) - SHOWN)
    for index in range(shown_from, len(group)):
        run = group[index]
        flagged = {m.target: m for m in marks(group[:index], run)}
        cells = [run.date[:16].replace("T", " "), run.engine]
        for target in targets:
            cells.append(_cell(run, target, flagged.get(target)))
        lines.append("| " + " | ".join(cells) + " |")
    if shown_from:
        lines.append(f"\n{shown_from} earlier runs are not shown.")
    lines += ["", verdict(group[:-1], group[-1])]
    return "\n".join(lines)


def _cell(run: Run, target: str, mark: Mark | None) -> str:
    if target not in run.figures:
        return ""
    value, result = run.figures[target]
    text = _figure(value, run.goals.get(target, ""), target)
    if result == "MISS":
        text += " MISS"
    if mark is not None:
        text += f" ▼{abs(mark.change):.0%}"
    return text


def _figure(value: float, goal: str, target: str) -> str:
    if target == SHARE:
        return f"{value:.0%}"
    unit = goal.split()[-1] if goal else ""
    if unit.endswith("x"):
        return report._x(value)
    if unit == "s":
        return f"{value:.2f} s"
    if unit:
        return f"{value:.1f} {unit}"
    return f"{value:g}"


def verdict(earlier: list[Run], run: Run) -> str:
    """One line on ``run`` against the runs before it (same machine and size)."""
    when = f"{run.date[:16].replace('T', ' ')} ({run.engine})"
    if not earlier:
        return (
            f"Newest run, {when}: nothing earlier on this machine at this size "
            "to compare with."
        )
    found = marks(earlier, run)
    if not found:
        count = min(WINDOW, len(earlier))
        before = "the run" if count == 1 else f"the {count} runs"
        return (
            f"Newest run, {when}: no figure is more than {TOLERANCE:.0%} worse "
            f"than its median over {before} before it."
        )
    worse = "; ".join(
        f"{m.target} {_figure(m.value, run.goals.get(m.target, ''), m.target)} "
        "against a median of "
        f"{_figure(m.median, run.goals.get(m.target, ''), m.target)} "
        f"over {m.runs} runs"
        for m in found
    )
    count = "1 figure is" if len(found) == 1 else f"{len(found)} figures are"
    return (
        f"Newest run, {when}: {count} more than {TOLERANCE:.0%} worse than the "
        f"median of the runs before it: {worse}. Run again to tell a "
        "regression from a slow spell of the host."
    )
