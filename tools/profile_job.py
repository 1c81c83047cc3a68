"""Profile a sage_mp job: the driver and every worker, with cProfile.

    python tools/profile_job.py job.py [--workers N] [--out DIR] [-- ARGS]
    python tools/profile_job.py --workload light --workers 2 --size 0.3

Runs the job through ``python -m sage_mp run --profile DIR``, which
writes one ``.prof`` file per process into DIR (``JOB.driver.prof``,
``JOB.worker-0.prof``, ..., named after the job), and prints, per
process and merged, where the own time went by category and the top
functions. ``--workload`` runs one of the benchmark workloads
(benchmarks/sage_job.py).

cProfile slows pure-Python code down by roughly 1.5-2x, and the
per-record functions most of all, so read the shares, not the seconds.
Open a file further with ``python -m pstats DIR/JOB.worker-0.prof``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

from sage_mp._bench import WORKLOADS

ROOT = Path(__file__).resolve().parent.parent


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python tools/profile_job.py",
        description="Profile the driver and every worker of a sage_mp job.",
    )
    parser.add_argument(
        "script", nargs="?", help="the job script to profile (or use --workload)"
    )
    parser.add_argument(
        "--workload",
        choices=[w for w in WORKLOADS if w not in ("checkpointed", "big-state")],
        help="profile a benchmark workload instead of a script",
    )
    parser.add_argument(
        "--size",
        type=float,
        default=0.3,
        help="with --workload: scale factor of its record count (default 0.3)",
    )
    parser.add_argument(
        "--loops",
        type=int,
        default=0,
        help="with --workload heavy: burn() loops per event (default: "
        "calibrated to ~20 us)",
    )
    parser.add_argument(
        "--workers", type=int, help="worker processes (default: usable cores)"
    )
    parser.add_argument(
        "--out", help="folder for the .prof files (default: a new temp folder)"
    )
    parser.add_argument(
        "script_args",
        nargs=argparse.REMAINDER,
        help="after --: arguments passed to the job script",
    )
    args = parser.parse_args(argv)
    if bool(args.script) == bool(args.workload):
        parser.error("give either a job script or --workload NAME, not both")
    if args.script_args[:1] == ["--"]:
        args.script_args = args.script_args[1:]
    return args


def job_command(args: argparse.Namespace, out: str) -> list[str]:
    """``python -m sage_mp run --profile OUT ...`` for the chosen job."""
    command = [sys.executable, "-m", "sage_mp", "run", "--profile", out]
    workers = ["--workers", str(args.workers)] if args.workers else []
    command += workers
    if args.script:
        return [*command, args.script, "--", *args.script_args]
    loops = args.loops
    if args.workload == "heavy" and not loops:
        sys.path.insert(0, str(ROOT / "benchmarks"))
        import workloads

        loops = workloads.calibrate_loops()[0]
    script = str(ROOT / "benchmarks" / "sage_job.py")
    job = [args.workload, "--size", str(args.size), "--loops", str(loops)]
    return [*command, script, "--", *job, *workers]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    out = args.out or tempfile.mkdtemp(prefix="sage_mp-profile-")
    Path(out).mkdir(parents=True, exist_ok=True)
    for old in Path(out).glob("*.prof"):
        old.unlink()  # A stale worker file would be merged in.
    # The CLI prints the report (sage_mp._bench.profile_report) on
    # stderr when the job ends.
    done = subprocess.run(job_command(args, out), check=False)
    names = ", ".join(sorted(p.name for p in Path(out).glob("*.prof")))
    print(f"\nprofiles in {out}: {names}; open one with: python -m pstats FILE")
    return done.returncode


if __name__ == "__main__":
    sys.exit(main())
