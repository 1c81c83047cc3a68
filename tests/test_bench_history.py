"""``python -m sage_mp bench --history``: recorded runs, regressions marked.

The history file is written by ``--record``; these tests write lines in
that format by hand (and one through ``report.history_entry``) so that
every figure is known in advance.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
HEAVY = "heavy: sage_mp 2w vs plain loop"
P99 = "latency p99"


@pytest.fixture
def history(monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import history

    return history


def entry(
    minute: int,
    heavy: float,
    p99: float = 4.0,
    machine: str = "Test CPU, 2 cores",
    size: float = 1.0,
    commit: str = "abc1234",
) -> dict[str, Any]:
    """One line as ``--record`` writes it, figures in the measured text only."""
    return {
        "date": f"2026-12-04T10:{minute:02d}:00+00:00",
        "machine": machine,
        "sage_mp": f"0.1.0 ({commit}) from /somewhere/sage_mp",
        "bytewax": None,
        "size": size,
        "repeat": 3,
        "rows": [
            {"workload": "heavy", "engine": "plain loop", "job_s": 4.0, "ratio": 1.0},
            {
                "workload": "heavy",
                "engine": "plain loop x2 (ceiling)",
                "job_s": 2.0,
                "ratio": 2.0,
            },
            {"workload": "heavy", "engine": "sage_mp 1w", "job_s": 4.2, "ratio": 0.95},
            {
                "workload": "heavy",
                "engine": "sage_mp 2w",
                "job_s": 4.0 / heavy,
                "ratio": heavy,
            },
        ],
        "targets": {
            HEAVY: [
                f"{heavy:.2f}x (in-process {heavy:.2f}x)",
                "PASS" if heavy >= 1.7 else "MISS",
            ],
            P99: [f"p99 {p99:.1f} ms (sage_mp 2w)", "PASS"],
            "memory: peak RSS per process": ["needs memory", "not run"],
        },
    }


def one_run_summary() -> dict[str, Any]:
    """What the harness hands ``report.history_entry``, cut down to one
    heavy target with a ratio just under its goal."""
    row = {"label": "x", "ok": True, "job_s": 1.0, "throughput": 1.0, "ratio": 1.0}
    return {
        "meta": {
            "date": "2026-12-04T10:00:00+00:00",
            "machine": {"cpu_model": "Test CPU", "cores": 2},
            "sage_mp": "0.1.0 (abc1234) from /x",
            "bytewax": None,
            "size": 1.0,
            "repeat": 1,
        },
        "workloads": [{"name": "heavy", "variants": [row]}],
        "targets": [
            {
                "target": HEAVY,
                "goal": ">= 1.7x",
                "measured": "1.69x (in-process 1.70x)",
                "value": 1.697,
                "result": "MISS",
            },
            {
                "target": P99,
                "goal": "< 50 ms",
                "measured": "needs latency",
                "value": None,
                "result": "not run",
            },
        ],
    }


def write(path: Path, entries: list[Any]) -> Path:
    path.write_text("".join(json.dumps(e) + "\n" for e in entries))
    return path


def table_rows(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("| 2026")]


def test_a_figure_well_below_its_recent_median_is_marked(
    tmp_path: Path, history: Any
) -> None:
    """heavy falls from ~1.8x to 1.5x (-17%): marked, and the verdict
    names it. p99 rising is worse (its goal is an upper bound); p99
    falling is not."""
    figures = [1.8, 1.78, 1.82, 1.8, 1.79]
    steady = [entry(m, heavy, p99=4.0) for m, heavy in enumerate(figures)]
    path = write(tmp_path / "h.jsonl", [*steady, entry(9, 1.5, p99=6.0)])
    runs, warnings = history.load(path)
    assert warnings == []
    text = history.render(runs)

    last = table_rows(text)[-1].split(" | ")
    assert "1.50x MISS ▼17%" in last
    assert "6.0 ms ▼50%" in last
    assert "abc1234" in last
    assert all("▼" not in row for row in table_rows(text)[:-1])
    assert (
        "3 figures are more than 10% worse than the median of the runs before "
        "it: heavy: sage_mp 2w vs plain loop 1.50x against a median of 1.80x "
        "over 5 runs" in text
    )
    assert "latency p99 6.0 ms against a median of 4.0 ms" in text
    # The ceiling share is its own column: 1.5 of a ceiling of 2.0.
    assert last[-1].startswith("75% ▼")

    better = write(tmp_path / "b.jsonl", [*steady, entry(9, 1.81, p99=2.0)])
    text = history.render(history.load(better)[0])
    assert not any("▼" in row for row in table_rows(text))
    assert "no figure is more than 10% worse than its median over the 5 runs" in text


def test_only_runs_of_the_same_machine_and_size_are_compared(
    tmp_path: Path, history: Any
) -> None:
    """A slower host or a smaller size gets a table of its own, never a mark."""
    path = write(
        tmp_path / "h.jsonl",
        [
            entry(0, 1.8),
            entry(1, 1.8),
            entry(2, 1.2, machine="Other CPU, 2 cores"),
            entry(3, 1.2, size=0.1),
            entry(4, 1.79),
        ],
    )
    text = history.render(history.load(path)[0])
    assert "### Test CPU, 2 cores, size 1" in text
    assert "### Other CPU, 2 cores, size 1" in text
    assert "### Test CPU, 2 cores, size 0.1" in text
    assert not any("▼" in row for row in table_rows(text))
    assert text.count("nothing earlier on this machine at this size") == 2


def test_a_recorded_line_keeps_the_exact_figure_and_goal(
    tmp_path: Path, history: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A ratio of 1.697 is kept as 1.697 and shown cut, as in the
    targets table: "1.69x MISS", never "1.70x"."""
    import report

    summary = one_run_summary()
    line = report.history_entry(summary)
    assert line["values"] == {HEAVY: 1.697}
    assert line["goals"][HEAVY] == ">= 1.7x"
    run = history.parse_entry(json.loads(json.dumps(line)))
    assert run.figures == {HEAVY: (1.697, "MISS")}
    text = history.render([run])
    assert "| heavy 2w vs plain (>= 1.7x) |" in text
    assert "1.69x MISS" in text


def test_the_cli_skips_bad_lines_and_says_which_and_why(tmp_path: Path) -> None:
    """Each unreadable line is a warning with its line number; the rest show."""
    path = write(
        tmp_path / "h.jsonl",
        [entry(0, 1.8), entry(1, 1.75)],
    )
    with path.open("a") as out:
        out.write("{not json\n")
        out.write("[1, 2]\n")
        out.write(json.dumps({"date": "2026-12-04", "machine": "x", "size": 1}) + "\n")
        out.write(json.dumps({**entry(3, 1.8), "goals": ["1.7x"]}) + "\n")
        out.write("\n")
        out.write(json.dumps(entry(2, 1.4)) + "\n")
    done = subprocess.run(
        [sys.executable, "-m", "sage_mp", "bench", "--history", str(path)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    errors = done.stderr.splitlines()
    assert len(errors) == 4, done.stderr
    assert f"{path}:3: skipped: expected one JSON object" in errors[0]
    assert "'{not json'" in errors[0]
    assert f"{path}:4: skipped" in errors[1]
    assert "a JSON list, not an object" in errors[1]
    assert f"{path}:5: skipped" in errors[2] and "no 'targets'" in errors[2]
    assert f"{path}:6: skipped" in errors[3] and "'goals' is a JSON list" in errors[3]
    assert all("fix or delete that line" in e for e in errors)
    assert len(table_rows(done.stdout)) == 3
    assert "2 figures are more than 10% worse" in done.stdout


def test_the_cli_says_where_it_looked_when_there_is_no_history(tmp_path: Path) -> None:
    """A missing file is an error naming it; an empty one says how to record."""
    missing = tmp_path / "none.jsonl"
    done = subprocess.run(
        [sys.executable, "-m", "sage_mp", "bench", "--history", str(missing)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert f"no history file at {missing}" in done.stderr
    assert "--record" in done.stderr

    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    done = subprocess.run(
        [sys.executable, "-m", "sage_mp", "bench", "--history", str(empty)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("no recorded runs yet;")


def test_recording_a_run_prints_how_it_compares(tmp_path: Path, history: Any) -> None:
    """What ``--record`` prints after appending: this run against the
    runs recorded before it on the same machine and size."""
    import harness

    path = write(tmp_path / "h.jsonl", [entry(m, 1.8) for m in range(4)])
    newest = entry(5, 1.5)
    with path.open("a") as out:
        out.write(json.dumps(newest) + "\n")
    said = harness._against_history(path, newest)
    assert said.startswith("Newest run, 2026-12-04 10:05 (abc1234): 2 figures are")
    assert "over 4 runs" in said

    lone = tmp_path / "lone.jsonl"
    write(lone, [newest])
    assert "nothing earlier" in harness._against_history(lone, newest)


def test_record_appends_a_whole_line_after_one_left_unfinished(
    tmp_path: Path, history: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """A history file whose last line lost its newline (edited by hand)
    still gets the new run on a line of its own, and --record says how
    the run compares."""
    import argparse

    import harness

    path = tmp_path / "history.jsonl"
    path.write_text(json.dumps(entry(0, 2.0)) + "\n" + json.dumps(entry(1, 2.0)))
    args = argparse.Namespace(json=None, chart=None, record=True)
    harness.write_outputs(args, tmp_path, one_run_summary())

    runs, warnings = history.load(path)
    assert warnings == []
    assert [r.engine for r in runs] == ["abc1234"] * 3
    assert runs[-1].figures["heavy: sage_mp 2w vs plain loop"] == (1.697, "MISS")
    said = capsys.readouterr().err
    assert "Newest run, 2026-12-04 10:00 (abc1234): 1 figure is" in said
    assert "1.69x against a median of 2.00x over 2 runs" in said
