"""The entry point of ``python -m sage_mp bench``, and profile reports.

The benchmark suite itself (the harness, the workloads and one job
script per engine) lives in the source checkout's ``benchmarks/``
folder, not in the package: it is development tooling, and it runs
every measured job in a fresh process anyway. This module declares the
suite's flags (so that ``python -m sage_mp bench --help`` works
anywhere), finds the folder, and hands over to its ``harness`` module.

It also renders the cProfile files that ``python -m sage_mp run
--profile DIR`` writes, one per process, as per-process and merged
tables of the functions that cost the most time.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import pstats
import sys
from collections.abc import Collection
from pathlib import Path

from ._driver import unwritable_file
from .cli import _positive_float, _positive_int

__all__ = ["WORKLOADS", "add_arguments", "find_suite", "main", "profile_report"]

#: The workloads, in the order the suite runs them.
WORKLOADS = (
    "light",
    "heavy",
    "skewed",
    "latency",
    "memory",
    "startup",
    "checkpointed",
    "big-state",
)


# --- command line -------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the suite's flags; shared by the CLI and benchmarks/run.py."""
    parser.add_argument(
        "--repeat",
        type=_positive_int,
        default=3,
        help="measured runs of every engine per workload; the table shows "
        "the median and the min-max (default 3)",
    )
    parser.add_argument(
        "--size",
        type=_positive_float,
        default=1.0,
        help="scale every workload's record count by this factor "
        "(default 1.0: 1,000,000 events for light; 0.01 for a quick look)",
    )
    parser.add_argument(
        "--only",
        type=_workload_list,
        default=list(WORKLOADS),
        metavar="LIST",
        help=f"comma-separated workloads to run, from: {', '.join(WORKLOADS)} "
        "(default all)",
    )
    parser.add_argument(
        "--workers",
        type=_worker_list,
        default=[1, 2],
        metavar="LIST",
        help="comma-separated sage_mp worker counts to measure (default 1,2)",
    )
    parser.add_argument(
        "--no-bytewax",
        action="store_true",
        help="skip the Bytewax runs even when Bytewax is installed",
    )
    parser.add_argument(
        "--json",
        metavar="FILE",
        help="also write every measurement and summary to FILE as JSON",
    )
    parser.add_argument(
        "--chart",
        metavar="FILE",
        help="also draw the ratios against each baseline as a PNG chart "
        "(needs matplotlib: pip install 'sage_mp[bench]')",
    )
    parser.add_argument(
        "--record",
        action="store_true",
        help="append this run's summary to history.jsonl in the suite folder",
    )
    parser.add_argument(
        "--history",
        nargs="?",
        const="",
        metavar="FILE",
        help="run nothing; print the runs recorded in history.jsonl (or FILE) "
        "as one table per machine and size, marking every figure more than "
        "10%% worse than the median of the 5 runs before it",
    )
    parser.add_argument(
        "--suite",
        metavar="DIR",
        help="folder holding the workload job scripts (default: the "
        "benchmarks/ folder of the source checkout)",
    )
    parser.add_argument(
        "--settle",
        type=_positive_float,
        metavar="SECONDS",
        help="before each run, wait up to SECONDS for other processes to "
        "stop using the CPU (default: do not wait); every run reports how "
        "much CPU other processes used meanwhile either way",
    )
    parser.add_argument(
        "--timeout",
        type=_positive_float,
        default=900.0,
        help="seconds one run may take before it is killed (default 900)",
    )


def _workload_list(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in WORKLOADS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown workload(s) {', '.join(unknown) or repr(text)}; "
            f"choose from {', '.join(WORKLOADS)}"
        )
    return names


def _worker_list(text: str) -> list[int]:
    try:
        counts = sorted({_positive_int(part) for part in text.split(",")})
    except argparse.ArgumentTypeError as err:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated worker counts such as 1,2: {err}"
        ) from None
    return counts


def main(args: argparse.Namespace) -> int:
    """Run the suite as ``args`` says; return the process exit code."""
    suite = find_suite(args.suite)
    if suite is None:
        print(
            "sage_mp bench: cannot find the benchmark suite (a folder with "
            "harness.py, workloads.py and sage_job.py); run from a source "
            "checkout or pass --suite DIR",
            file=sys.stderr,
        )
        return 2
    # The outputs are written after every run, when a bad path would
    # waste them all.
    for flag, path in (("--json", args.json), ("--chart", args.chart)):
        problem = unwritable_file(path) if path else None
        if problem:
            print(
                f"sage_mp bench: {flag} {path!r}: {problem}; pick another path "
                "(nothing was run)",
                file=sys.stderr,
            )
            return 2
    if args.chart and importlib.util.find_spec("matplotlib") is None:
        print(
            "sage_mp bench: --chart needs matplotlib, which is not installed; "
            "install it with: pip install 'sage_mp[bench]' (or drop --chart)",
            file=sys.stderr,
        )
        return 2
    # The suite's modules import one another by name, as its job
    # scripts do when they run from that folder.
    sys.path.insert(0, str(suite))
    if args.history is not None:
        return _show_history(Path(args.history or suite / "history.jsonl"))
    harness = importlib.import_module("harness")
    return int(harness.run_suite(args, suite))


def _show_history(path: Path) -> int:
    history = importlib.import_module("history")
    try:
        runs, warnings = history.load(path)
    except history.HistoryError as err:
        print(f"sage_mp bench: {err}", file=sys.stderr)
        return 2
    for warning in warnings:
        print(f"sage_mp bench: {warning}", file=sys.stderr)
    print(history.render(runs))
    return 0


def find_suite(explicit: str | None) -> Path | None:
    """The benchmarks folder: explicit, next to the package, or in cwd."""
    here = Path(__file__).resolve().parent.parent / "benchmarks"
    candidates = [Path(explicit)] if explicit else [here, Path.cwd() / "benchmarks"]
    for candidate in candidates:
        if all((candidate / name).is_file() for name in _SUITE_FILES):
            return candidate.resolve()
    return None


_SUITE_FILES = ("harness.py", "workloads.py", "sage_job.py")


# --- profiles ---------------------------------------------------------------


def profile_report(directory: str, top: int = 15, skip: Collection[str] = ()) -> str:
    """Where the time went, per process and merged, from ``directory``.

    Reads every ``*.prof`` file there (one per process, as written by
    ``python -m sage_mp run --profile DIR``) whose name is not in
    ``skip``. For each process: its own time split into categories
    (the engine's modules, pickle, OS calls, ...) and its ``top``
    functions by own time; then the same for all processes merged.
    """
    # A job that failed before its driver ran leaves an empty file.
    files = sorted(
        p
        for p in Path(directory).glob("*.prof")
        if p.name not in skip and p.stat().st_size > 0
    )
    if not files:
        return f"no new .prof files in {directory}"
    lines = []
    merged = pstats.Stats(str(files[0]))
    for path in files[1:]:
        merged.add(str(path))
    for name, stats in [
        *((p.name, pstats.Stats(str(p))) for p in files),
        (f"merged ({len(files)} processes)", merged),
    ]:
        lines += ["", *_process_lines(name, stats, top)]
    return "\n".join(lines).lstrip("\n")


def _process_lines(name: str, stats: pstats.Stats, top: int) -> list[str]:
    total = stats.total_tt  # type: ignore[attr-defined]
    split = ", ".join(
        f"{category} {seconds:.2f} s ({seconds / (total or 1) * 100:.0f}%)"
        for category, seconds in profile_categories(stats)
        if seconds >= 0.01 * total
    )
    return [
        f"== {name}: {total:.2f} s of own time",
        f"  {split}",
        *_top_lines(stats, top),
    ]


def profile_categories(stats: pstats.Stats) -> list[tuple[str, float]]:
    """Own time summed by category, largest first."""
    sums: dict[str, float] = {}
    for (filename, _, function), entry in stats.stats.items():  # type: ignore[attr-defined]
        category = _category(filename, function)
        sums[category] = sums.get(category, 0.0) + entry[2]
    return sorted(sums.items(), key=lambda item: item[1], reverse=True)


def _category(filename: str, function: str) -> str:
    if filename == "~":
        if "pickle" in function or "dill" in function:
            return "pickle"
        # Time blocked in select/poll/sleep is idle time, not work.
        if "select" in function or "poll" in function or "time.sleep" in function:
            return "waiting"
        if "posix." in function:
            return "os read/write"
        return "builtins"
    if filename.startswith("<sage_mp"):
        return "engine " + filename.strip("<>").split()[-1]  # generated code
    path = Path(filename)
    if path.parent.name == "sage_mp":
        return f"engine {path.stem}"
    if "site-packages" in path.parts or "lib" in path.parts[:6]:
        return "library"
    return "user code"


def _top_lines(stats: pstats.Stats, top: int) -> list[str]:
    entries = stats.stats  # type: ignore[attr-defined]
    total = stats.total_tt or 1.0  # type: ignore[attr-defined]
    ranked = sorted(entries.items(), key=lambda item: item[1][2], reverse=True)[:top]
    lines = [f"  {'own s':>7} {'own %':>6} {'cum s':>7} {'calls':>10}  function"]
    for (filename, line, name), (_, calls, own, cumulative, _) in ranked:
        lines.append(
            f"  {own:7.3f} {own / total * 100:5.1f}% {cumulative:7.3f} {calls:10d}  "
            f"{_where(filename, line, name)}"
        )
    return lines


def _where(filename: str, line: int, name: str) -> str:
    if filename == "~":
        return name
    parts = Path(filename).parts
    return f"{'/'.join(parts[-2:])}:{line}({name})"
