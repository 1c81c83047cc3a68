"""The runnable examples run, check themselves and print OK."""

from __future__ import annotations

import pytest
from helpers import REPO, run_python

EXAMPLES = [
    "user_sessions.py",
    "counters.py",
    "windows.py",
    "features.py",
    "keyed_and_unkeyed.py",
]


def test_every_example_is_listed():
    """Each top-level example file is run by this test module."""
    found = sorted(p.name for p in (REPO / "examples").glob("*.py"))
    assert found == sorted(EXAMPLES)


@pytest.mark.parametrize("name", EXAMPLES)
def test_example_runs_and_prints_ok(name, tmp_path):
    """``python examples/NAME.py`` exits 0 and its last line is OK."""
    done = run_python([str(REPO / "examples" / name)], cwd=tmp_path)

    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines[-1] == "OK"
    assert len(lines) > 1, "the example printed no result"


@pytest.mark.parametrize("name", EXAMPLES)
def test_example_output_is_deterministic(name, tmp_path):
    """Two runs of an example print the same result."""
    first = run_python([str(REPO / "examples" / name)], cwd=tmp_path)
    second = run_python([str(REPO / "examples" / name)], cwd=tmp_path)

    assert first.stdout == second.stdout


def test_quick_start_runs_under_the_cli_with_other_workers(tmp_path):
    """The quick-start example also runs via the CLI with --workers 2."""
    script = str(REPO / "examples" / "user_sessions.py")

    done = run_python(["-m", "sage_mp", "run", "--workers", "2", script], cwd=tmp_path)

    assert done.returncode == 0, done.stderr
    assert "2 workers" in done.stdout
    assert done.stdout.splitlines()[-1] == "OK"
