"""Smoke tests of the benchmark suite and of ``run --profile``.

They run the suite at a tiny size and check the shape of what it
prints and writes, never the figures: timing is not a test's business.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest

from sage_mp import _bench

ROOT = Path(__file__).resolve().parent.parent


def run_cli(
    *args: str, cwd: Path = ROOT, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    return run_python("-m", "sage_mp", *args, cwd=cwd, timeout=timeout)


def run_python(
    *args: str, cwd: Path = ROOT, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_bench_prints_table_and_writes_json(tmp_path: Path) -> None:
    """A tiny run prints the results and targets tables and valid JSON."""
    out = tmp_path / "bench.json"
    done = run_cli(
        "bench",
        "--size",
        "0.002",
        "--repeat",
        "1",
        "--only",
        "light,latency",
        "--no-bytewax",
        "--json",
        str(out),
    )
    assert done.returncode == 0, done.stderr

    table = done.stdout
    assert "| workload | engine | job s |" in table
    for label in (
        "plain loop (baseline)",
        "plain loop x2 (ceiling)",
        "sage_mp 1w",
        "sage_mp 2w",
    ):
        assert f"| light | {label} |" in table
    assert "### Targets" in table
    assert "| latency p99 | < 50 ms |" in table

    report = json.loads(out.read_text())
    assert set(report) == {"meta", "workloads", "targets"}
    assert report["meta"]["bytewax"] is None
    assert [w["name"] for w in report["workloads"]] == ["light", "latency"]
    light = report["workloads"][0]
    assert light["baseline"] == "plain loop"
    for row in light["variants"]:
        assert row["ok"], row["errors"]
        assert row["records"] == light["variants"][0]["records"]
        assert row["job_min_s"] <= row["job_s"] <= row["job_max_s"]
        assert row["ratio"] is not None
        # One peak per process: the ceiling row runs two plain loops.
        expected = {"p0", "p1"} if "ceiling" in row["label"] else {"driver"}
        assert expected <= set(row["peak_rss"])
    latency = report["workloads"][1]["variants"]
    assert all(set(row["latency_ms"]) == {"p50", "p99", "max"} for row in latency)
    verdicts = {t["target"]: t["result"] for t in report["targets"]}
    assert verdicts["latency p99"] in ("PASS", "MISS")
    assert verdicts["memory: peak RSS per process"] == "not run"


def test_bench_refuses_an_unknown_workload() -> None:
    """A misspelt --only fails before running anything, listing the choices."""
    done = run_cli("bench", "--only", "lihgt")
    assert done.returncode == 2
    assert "unknown workload(s) lihgt" in done.stderr
    assert "light, heavy" in done.stderr


@pytest.mark.parametrize("flag", ["--json", "--chart"])
def test_bench_refuses_an_output_path_it_could_not_write(flag, tmp_path):
    """Checked before the runs: writing comes after all of them, and
    used to fail there with a traceback, the figures unsaved."""
    for path, says in (
        (
            tmp_path / "missing" / "out",
            f"folder {str(tmp_path / 'missing')!r} does not",
        ),
        (tmp_path, "it is a directory"),
    ):
        done = run_cli("bench", flag, str(path), "--only", "startup")
        assert done.returncode == 2
        assert f"{flag} {str(path)!r}: {says}" in done.stderr
        assert "pick another path (nothing was run)" in done.stderr
        assert "| workload |" not in done.stdout


def test_bench_chart_without_matplotlib_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """--chart without matplotlib stops with an install hint, running nothing."""
    real_find_spec = _bench.importlib.util.find_spec

    def find_spec(name: str, *args: object) -> object:
        return None if name == "matplotlib" else real_find_spec(name, *args)

    monkeypatch.setattr(_bench.importlib.util, "find_spec", find_spec)
    parser = argparse.ArgumentParser()
    _bench.add_arguments(parser)
    code = _bench.main(parser.parse_args(["--chart", "out.png"]))
    assert code == 2
    assert "pip install 'sage_mp[bench]'" in capsys.readouterr().err


PROFILED_JOBS = """
from sage_mp import LocalEnvironment

for name in {names!r}:
    env = LocalEnvironment(name, workers=2)
    (env.from_collection(range(2000))
        .keyby(lambda x: x % 7)
        .map(lambda x: x + 1)
        .sink(lambda x: None, parallelism=2))
    env.submit(autostop=True)
"""


def test_run_profile_writes_one_file_per_process(tmp_path: Path) -> None:
    """run --profile leaves one file per process and prints the report."""
    script = tmp_path / "job.py"
    script.write_text(PROFILED_JOBS.format(names=["profiled"]))
    profiles = tmp_path / "prof"
    done = run_cli("run", "--profile", str(profiles), str(script), cwd=tmp_path)
    assert done.returncode == 0, done.stderr

    names = sorted(p.name for p in profiles.glob("*.prof"))
    assert names == [
        "profiled.driver.prof",
        "profiled.worker-0.prof",
        "profiled.worker-1.prof",
    ]
    assert "== merged (3 processes)" in done.stderr
    assert "own s" in done.stderr


def test_run_profile_keeps_every_job_and_reports_only_this_run(
    tmp_path: Path,
) -> None:
    """Several jobs, one name twice, a second run: no profile is lost.

    The report of a run covers the files that run wrote, not the ones
    an earlier run left in the same folder.
    """
    script = tmp_path / "job.py"
    script.write_text(PROFILED_JOBS.format(names=["a/b", "a/b", "other"]))
    profiles = tmp_path / "prof"
    first = run_cli("run", "--profile", str(profiles), str(script), cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    stems = sorted({p.name.split(".")[0] for p in profiles.glob("*.prof")})
    assert stems == ["a_b", "a_b-2", "other"]
    assert len(list(profiles.glob("*.prof"))) == 9
    assert "== merged (9 processes)" in first.stderr

    script.write_text(PROFILED_JOBS.format(names=["other"]))
    second = run_cli("run", "--profile", str(profiles), str(script), cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    assert (profiles / "other-2.worker-1.prof").stat().st_size > 0
    assert "== merged (3 processes)" in second.stderr
    assert "== other-2.driver.prof" in second.stderr
    assert "== other.driver.prof" not in second.stderr


def test_a_target_ratio_just_under_its_goal_never_prints_as_the_goal(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """1.697x misses a goal of 1.7x; printed rounded it read "1.70x MISS"."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import report

    def row(label: str, job_s: float) -> dict[str, object]:
        return {"label": label, "ok": True, "job_s": job_s, "run_s": job_s}

    heavy = {
        "name": "heavy",
        "variants": [
            row("plain loop", 1.697),
            row("plain loop x2 (ceiling)", 0.9),
            row("sage_mp 1w", 1.81),
            row("sage_mp 2w", 1.0),
        ],
    }
    targets = {t["target"]: t for t in report.evaluate_targets([heavy], [1, 2])}

    vs_plain = targets["heavy: sage_mp 2w vs plain loop"]
    assert vs_plain["result"] == "MISS"
    assert vs_plain["measured"].startswith("1.69x (in-process 1.69x;")
    vs_one = targets["heavy: sage_mp 2w vs sage_mp 1w"]
    assert vs_one["result"] == "PASS"
    assert vs_one["measured"].startswith("1.81x ")


@pytest.mark.parametrize("script", ["compaction.py", "incremental.py"])
def test_checkpoint_cost_scripts_print_their_ratios(script: str) -> None:
    """The checkpoint-cost scripts run at a tiny size and print ratios."""
    sizes = {
        "compaction.py": ["--keys", "2000", "--rounds", "400", "--interval", "0.01"],
        "incremental.py": ["--small", "1000", "--large", "10000", "--events", "50000"],
    }
    done = run_python(str(ROOT / "benchmarks" / script), *sizes[script])

    assert done.returncode == 0, done.stderr
    assert "x |" in done.stdout, done.stdout
