"""The ``python -m sage_mp run`` command: overrides and kind failures."""

from __future__ import annotations

import json
import re

import pytest
from helpers import run_python, write_script

PARALLELISM_JOB = """
import json, os, sys
from sage_mp import LocalEnvironment, MapFunction

OUT = sys.argv[1]

class Report(MapFunction):
    def open(self):
        path = os.path.join(OUT, f"instance-{self.ctx.parallel_index}.json")
        with open(path, "w") as file:
            json.dump({"parallelism": self.ctx.parallelism}, file)

    def execute(self, record):
        return record

env = LocalEnvironment("cli-job", workers=SCRIPT_WORKERS)
env.from_collection(range(1000)).keyby(lambda n: n % 10).map(Report).sink(
    lambda n: None
)
result = env.submit(autostop=True)
with open(os.path.join(OUT, "result.json"), "w") as file:
    json.dump({"workers": result.workers}, file)
"""


def run_args(script, flag, out, flag_first):
    flags = ["--workers", str(flag)]
    if flag_first:
        return ["-m", "sage_mp", "run", *flags, str(script), str(out)]
    return ["-m", "sage_mp", "run", str(script), *flags, str(out)]


@pytest.mark.parametrize(
    "flag_first", [True, False], ids=["run-flags-job", "run-job-flags"]
)
@pytest.mark.parametrize(("script_workers", "flag"), [(1, 3), (3, 1), (2, 4)])
def test_workers_flag_overrides_the_script(script_workers, flag, flag_first, tmp_path):
    """--workers N, before or after the script path, wins over the script's."""
    script = write_script(
        tmp_path / "job.py",
        PARALLELISM_JOB.replace("SCRIPT_WORKERS", str(script_workers)),
    )

    done = run_python(run_args(script, flag, tmp_path, flag_first), cwd=tmp_path)

    assert done.returncode == 0, done.stderr
    reports = [
        json.loads(p.read_text()) for p in sorted(tmp_path.glob("instance-*.json"))
    ]
    assert reports == [{"parallelism": flag}] * flag
    assert json.loads((tmp_path / "result.json").read_text()) == {"workers": flag}


def test_without_flag_the_script_decides(tmp_path):
    """Without --workers, the script's own workers= is used."""
    script = write_script(
        tmp_path / "job.py", PARALLELISM_JOB.replace("SCRIPT_WORKERS", "2")
    )

    done = run_python(
        ["-m", "sage_mp", "run", str(script), str(tmp_path)], cwd=tmp_path
    )

    assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / "result.json").read_text()) == {"workers": 2}


SKIP_JOB = """
import sys
from sage_mp import LocalEnvironment

env = LocalEnvironment("cli-skip", workers=2, dead_letter_path=sys.argv[1])
env.from_collection(range(100)).map(lambda n: 1 // (n % 10)).sink(lambda n: None)
result = env.submit(autostop=True)
print("skipped", result.skipped)
"""


def test_on_error_flag_overrides_the_policy(tmp_path):
    """--on-error skip turns a failing job into one that skips records."""
    script = write_script(tmp_path / "job.py", SKIP_JOB)
    dead = tmp_path / "dead.jsonl"

    failing = run_python(["-m", "sage_mp", "run", str(script), str(dead)], cwd=tmp_path)
    skipping = run_python(
        ["-m", "sage_mp", "run", "--on-error", "skip", str(script), str(dead)],
        cwd=tmp_path,
    )

    assert failing.returncode == 1
    assert "ZeroDivisionError" in failing.stderr
    assert skipping.returncode == 0, skipping.stderr
    assert "skipped 10" in skipping.stdout
    assert len(dead.read_text().splitlines()) == 10


def test_missing_script_is_a_clear_error(tmp_path):
    """A script path that does not exist fails with a message naming it."""
    done = run_python(["-m", "sage_mp", "run", str(tmp_path / "nope.py")], cwd=tmp_path)

    assert done.returncode != 0
    assert "nope.py" in done.stderr
    assert "does not exist" in done.stderr
    assert "Traceback" not in done.stderr


def test_script_without_pipeline_fails_with_a_message(tmp_path):
    """A script that submits no job exits non-zero and says so."""
    script = write_script(tmp_path / "empty.py", "x = 1 + 1\nprint('hello')\n")

    done = run_python(["-m", "sage_mp", "run", str(script)], cwd=tmp_path)

    assert done.returncode != 0
    assert "hello" in done.stdout
    assert "built no pipeline" in done.stderr


@pytest.mark.parametrize(
    ("words", "expected"),
    [
        (["SCRIPT", "a", "b c"], ["a", "b c"]),
        # Not abbreviations of --workers or --log-level: the script's own.
        (["SCRIPT", "--work", "3", "--log", "x"], ["--work", "3", "--log", "x"]),
        # After the first "--" everything is the script's, even run's flags
        # and a second "--".
        (["SCRIPT", "a", "--", "--workers", "3"], ["a", "--workers", "3"]),
        (["SCRIPT", "--", "a", "--", "b"], ["a", "--", "b"]),
        (["--", "SCRIPT", "a", "--workers", "3"], ["a", "--workers", "3"]),
    ],
)
def test_script_arguments_reach_the_script(words, expected, tmp_path):
    """Arguments that are not run's own become the script's sys.argv[1:]."""
    script = write_script(
        tmp_path / "args.py",
        """
        import sys
        from sage_mp import LocalEnvironment
        print("argv", sys.argv[1:])
        env = LocalEnvironment("args", workers=1)
        env.from_collection([1]).sink(lambda n: None)
        print("workers", env.submit(autostop=True).workers)
        """,
    )
    words = [str(script) if word == "SCRIPT" else word for word in words]

    done = run_python(["-m", "sage_mp", "run", *words], cwd=tmp_path)

    assert done.returncode == 0, done.stderr
    assert f"argv {expected!r}" in done.stdout
    assert "workers 1" in done.stdout


def test_run_without_a_script_says_what_it_needs(tmp_path):
    done = run_python(["-m", "sage_mp", "run", "--workers", "2"], cwd=tmp_path)

    assert done.returncode == 2
    assert "run needs the path of a job script" in done.stderr


@pytest.mark.parametrize("bad", ["0", "-2", "many"])
def test_bad_workers_value_is_refused_before_running(bad, tmp_path):
    """--workers must be a whole number >= 1; the script does not run."""
    script = write_script(tmp_path / "job.py", "print('ran')\n")

    done = run_python(
        ["-m", "sage_mp", "run", "--workers", bad, str(script)], cwd=tmp_path
    )

    assert done.returncode == 2
    assert "ran" not in done.stdout
    assert "--workers" in done.stderr


def test_a_profile_path_that_is_a_file_is_refused_before_running(tmp_path):
    """It used to end the run with a FileExistsError traceback."""
    script = write_script(tmp_path / "job.py", "print('ran')\n")
    taken = tmp_path / "profiles"
    taken.write_text("not a folder")

    for path, says in (
        (taken, "exists and is not a directory; pass a folder"),
        (taken / "inner", "cannot make that folder (Not a directory)"),
    ):
        done = run_python(
            ["-m", "sage_mp", "run", "--profile", str(path), str(script)],
            cwd=tmp_path,
        )
        assert done.returncode == 2
        assert "ran" not in done.stdout
        assert f"--profile {str(path)!r}" in done.stderr
        assert says in done.stderr
        assert "Traceback" not in done.stderr
    assert taken.read_text() == "not a folder"


def test_run_help_documents_every_flag(tmp_path):
    """Every flag of ``run`` has a help text."""
    done = run_python(["-m", "sage_mp", "run", "--help"], cwd=tmp_path)

    assert done.returncode == 0
    options = done.stdout.split("options:", 1)[1]
    # argparse prints each flag, then its help on the same or next line.
    entries = re.split(r"\n  (?=-)", options)
    flags = [entry for entry in entries if entry.lstrip().startswith("--")]
    assert {"--workers", "--on-error", "--log-level"} <= {
        entry.split()[0] for entry in flags
    }
    for entry in flags:
        words = entry.split()
        assert len(words) > 3, f"flag without help text: {entry!r}"
