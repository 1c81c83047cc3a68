"""The command line: ``python -m sage_mp run | state | bench``.

``run`` executes a job script with flags that override what the script
sets, waits for every job the script submitted, and turns Ctrl-C into a
clean stop with exit code 130. While jobs run it draws a live progress
line on a terminal and writes ``--metrics`` snapshots; when they end it
prints each job's report (see :mod:`sage_mp._progress` and
:mod:`sage_mp._report`). The CLI is the only place in sage_mp that
installs logging handlers.
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import runpy
import sys
from collections.abc import Sequence
from typing import Any

__all__ = ["main"]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m sage_mp",
        description="Run and inspect sage_mp stream-processing jobs.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True

    run = commands.add_parser(
        "run",
        help="run a job script",
        description="Run a job script; flags override what the script sets.",
        # A script's own --work or --log must reach the script, not be
        # read as an abbreviation of --workers or --log-level.
        allow_abbrev=False,
    )
    run.add_argument(
        "script",
        # Optional to argparse only: "run -- job.py" names it after the
        # "--", which main() splits off first; main() insists on it.
        nargs="?",
        help="path of the Python job script to run; arguments that are not "
        "options of `run` (and everything after --) go to the script as "
        "sys.argv[1:]",
    )
    run.add_argument(
        "--workers",
        type=_positive_int,
        help="number of worker processes (key partitions) for every job",
    )
    run.add_argument(
        "--on-error",
        choices=("fail", "skip"),
        help="what to do when a user function raises: stop the job (fail) "
        "or skip the record into a dead-letter file (skip)",
    )
    run.add_argument(
        "--sage-compat",
        action="store_true",
        help="serve SAGE's import paths (sage.kernel.api, sage.common.core, "
        "...) from sage_mp so that a SAGE program runs unchanged; refused "
        "if a real 'sage' package is importable",
    )
    run.add_argument(
        "--checkpoint-dir",
        metavar="DIR",
        help="checkpoint keyed state into DIR; resume from it if it holds "
        "checkpoints of this job",
    )
    run.add_argument(
        "--checkpoint-interval",
        type=_positive_float,
        metavar="SECONDS",
        help="seconds between checkpoints (default 1.0)",
    )
    run.add_argument(
        "--fresh",
        action="store_true",
        help="start from empty state, deleting the checkpoints in the "
        "checkpoint directory instead of resuming",
    )
    run.add_argument(
        "--profile",
        metavar="DIR",
        help="profile the driver and every worker with cProfile, write "
        "one .prof file per process into DIR, and print the top "
        "functions when the script ends",
    )
    run.add_argument(
        "--log-level",
        default="WARNING",
        choices=("DEBUG", "INFO", "WARNING", "ERROR"),
        help="lowest level of log lines to print (default WARNING); with a "
        "checkpoint directory they also go to sage_mp.log inside it",
    )
    run.add_argument(
        "--no-progress",
        action="store_true",
        help="do not draw the live progress line (it is drawn only when "
        "stderr is a terminal)",
    )
    run.add_argument(
        "--metrics",
        metavar="FILE",
        help="write job metrics to FILE as JSON lines: a snapshot every "
        "--metrics-interval seconds and a final one per job (fields are "
        "listed in docs/operations.md)",
    )
    run.add_argument(
        "--metrics-interval",
        type=_positive_float,
        metavar="SECONDS",
        help="seconds between snapshots in the --metrics file (default 1.0)",
    )

    bench = commands.add_parser(
        "bench",
        help="run the benchmark suite against sage_mp's peers",
        description="Run the standard workloads against baselines measured "
        "in the same run and print a Markdown table of ratios.",
    )
    from ._bench import add_arguments

    add_arguments(bench)
    _add_state_parser(commands)
    return parser


def _add_state_parser(commands: Any) -> None:
    state = commands.add_parser(
        "state",
        help="inspect the checkpoints in a checkpoint directory",
        description="Inspect checkpoints; safe while the job is running.",
    )
    actions = state.add_subparsers(dest="action", metavar="ACTION")
    actions.required = True
    listing = actions.add_parser(
        "ls", help="list checkpoints with ids, times, sizes and status"
    )
    listing.add_argument("directory", help="the job's checkpoint directory")
    listing.add_argument("--json", action="store_true", help="print JSON")
    dump = actions.add_parser(
        "dump", help="print the state of a checkpoint, merged across workers"
    )
    dump.add_argument("directory", help="the job's checkpoint directory")
    dump.add_argument(
        "--checkpoint",
        type=int,
        metavar="ID",
        help="checkpoint id (default: the latest committed)",
    )
    dump.add_argument("--operator", metavar="NAME", help="only this operator")
    dump.add_argument(
        "--key", metavar="K", help="only entries of this key (matched by str())"
    )
    dump.add_argument(
        "--json", action="store_true", help="print one JSON object (default)"
    )


def _state(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    import json

    from ._inspect import (
        UnknownOperator,
        dump_state,
        format_listing,
        list_checkpoints,
        to_json,
    )
    from .errors import IncompatibleCheckpoint

    if not os.path.isdir(args.directory):
        parser.error(f"checkpoint directory {args.directory!r} does not exist")
    try:
        if args.action == "ls":
            rows = list_checkpoints(args.directory)
            print(json.dumps(rows, indent=1) if args.json else format_listing(rows))
            return EXIT_OK
        state = dump_state(args.directory, args.checkpoint, args.operator, args.key)
    except (IncompatibleCheckpoint, UnknownOperator) as err:
        print(f"sage_mp: {err.args[0]}", file=sys.stderr)
        return EXIT_FAILED
    if args.key is not None and not any(state.values()):
        print(
            f"sage_mp: no state entry of key {args.key!r} in that checkpoint",
            file=sys.stderr,
        )
    print(json.dumps(to_json(state), indent=1, sort_keys=True))
    return EXIT_OK


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}")
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a number >= 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}")
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {value}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    words = list(sys.argv[1:] if argv is None else argv)
    # Everything after the first "--" goes to the script as it is:
    # argparse alone drops that "--" in some positions and not others.
    passed: list[str] = []
    if "--" in words:
        cut = words.index("--")
        words, passed = words[:cut], words[cut + 1 :]
    args, extra = parser.parse_known_args(words)
    if args.command != "run":
        if extra or passed:
            parser.error(f"unrecognized arguments: {' '.join(extra + passed)}")
    elif args.script is None:
        if not passed:
            parser.error(
                "run needs the path of a job script: python -m sage_mp run "
                "[options] job.py [the script's arguments]"
            )
        args.script = passed.pop(0)
    args.script_args = extra + passed
    if args.command == "run":
        code = _run(parser, args)
        # Interpreter shutdown runs a full garbage collection over every
        # object still alive: with a million records in memory and
        # pages shared with the forked workers, that cost ~0.12 s of a
        # 0.9 s job. The process ends now, so those objects no longer
        # need collecting; frozen, they are freed by reference count
        # alone. Files still flush and close as their objects go; only
        # objects that nothing but a reference cycle keeps are left
        # unfinalized, which Python does not promise at exit either.
        gc.freeze()
        return code
    if args.command == "state":
        return _state(parser, args)
    if args.command == "bench":
        from . import _bench

        return _bench.main(args)
    parser.error(f"unknown command {args.command!r}")  # pragma: no cover
    return EXIT_USAGE


def _run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from . import environment

    script = args.script
    _check_run_args(parser, args)
    overrides = {
        "workers": args.workers,
        "error_policy": args.on_error,
        "checkpoint_dir": args.checkpoint_dir,
        "checkpoint_interval": args.checkpoint_interval,
        "fresh": args.fresh,
    }
    environment.OVERRIDES.update({k: v for k, v in overrides.items() if v})
    sys.argv = [script, *args.script_args]
    sys.path.insert(0, os.path.dirname(os.path.abspath(script)))
    if args.sage_compat:
        # After the script's folder joined sys.path: a 'sage' package
        # there would be imported by the script, so it must refuse too.
        from . import compat

        try:
            compat.install()
        except compat.RealSageInstalled as err:
            environment.OVERRIDES.clear()
            parser.error(str(err))
    if args.profile:
        # Read by the driver and, through fork, by every worker.
        from ._driver import PROFILE_DIR_ENV

        os.environ[PROFILE_DIR_ENV] = os.path.abspath(args.profile)
        # Files of earlier runs stay, but are left out of this report.
        earlier = set(os.listdir(args.profile))
    session = _Session(args)
    try:
        return _execute(script, environment, session)
    finally:
        environment.OVERRIDES.clear()
        session.close()
        if args.profile:
            from ._bench import profile_report

            print(profile_report(args.profile, skip=earlier), file=sys.stderr)


def _execute(script: str, environment: Any, session: _Session) -> int:
    """Run the script and wait for its jobs; print what a person needs."""
    try:
        runpy.run_path(script, run_name="__main__")
        for env in environment.submitted_environments():
            env.wait()
    except KeyboardInterrupt:
        _stop_all(environment)
        session.finish(environment, report=False)
        print("interrupted; jobs stopped", file=sys.stderr)
        return EXIT_INTERRUPTED
    except SystemExit as exit_:
        _stop_all(environment)
        code = exit_.code
        code = code if isinstance(code, int) else (0 if code is None else 1)
        session.finish(environment, report=code == 0)
        return code
    except Exception as err:
        from .errors import SageMPError

        _stop_all(environment)
        session.finish(environment, report=False)
        if isinstance(err, SageMPError):
            # One block: operator, worker, key, record, the user's
            # traceback and a hint, all in the message.
            print(f"sage_mp: {err}", file=sys.stderr)
            return EXIT_FAILED
        raise
    session.finish(environment, report=True)
    if not environment.submitted_environments():
        print(
            f"sage_mp: {script} built no pipeline; a job script must call "
            "submit() on a LocalEnvironment",
            file=sys.stderr,
        )
        return EXIT_USAGE
    return EXIT_OK


def _check_run_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse a bad command line before anything starts."""
    from ._checkpoint import check_directory
    from .errors import IncompatibleCheckpoint

    if not os.path.isfile(args.script):
        parser.error(
            f"job script {args.script!r} does not exist; pass the path of a "
            "Python file that builds and submits a pipeline"
        )
    if args.fresh and not args.checkpoint_dir:
        parser.error(
            "--fresh deletes checkpoints, so it needs --checkpoint-dir DIR "
            "(or drop --fresh)"
        )
    if args.checkpoint_interval and not args.checkpoint_dir:
        parser.error("--checkpoint-interval needs --checkpoint-dir DIR")
    if args.metrics_interval and not args.metrics:
        parser.error("--metrics-interval needs --metrics FILE (or drop it)")
    if args.metrics:
        folder = os.path.dirname(os.path.abspath(args.metrics))
        if os.path.isdir(args.metrics):
            parser.error(f"--metrics {args.metrics!r} is a directory; pass a file path")
        if not os.path.isdir(folder):
            parser.error(
                f"--metrics {args.metrics!r}: folder {folder!r} does not "
                "exist; create it or pick another path"
            )
        if not os.access(folder, os.W_OK):
            parser.error(
                f"--metrics {args.metrics!r}: folder {folder!r} is not "
                "writable; pick another path"
            )
    if args.profile:
        if os.path.exists(args.profile) and not os.path.isdir(args.profile):
            parser.error(
                f"--profile {args.profile!r} exists and is not a directory; "
                "pass a folder for the profiles (it is made if missing)"
            )
        try:
            os.makedirs(args.profile, exist_ok=True)
        except OSError as err:
            parser.error(
                f"--profile {args.profile!r}: cannot make that folder "
                f"({err.strerror}); pick another path"
            )
        if not os.access(args.profile, os.W_OK):
            parser.error(
                f"--profile {args.profile!r}: the folder is not writable; "
                "pick another path"
            )
    if args.checkpoint_dir:
        try:
            check_directory(args.checkpoint_dir)
        except IncompatibleCheckpoint as err:
            parser.error(f"--checkpoint-dir: {err}")


class _Session:
    """What ``run`` adds around a script: logs, live line, metrics, report.

    Installs the CLI's log handlers (stderr, and a log file in each
    checkpoint directory) on the root logger and removes them at the
    end, so that calling :func:`main` twice in one process stays clean.
    """

    def __init__(self, args: argparse.Namespace) -> None:
        from ._logs import CheckpointLogFiles, ConsoleHandler, TagFormatter
        from ._progress import LiveLine, Monitor

        tty = _isatty(sys.stderr)
        self.live = LiveLine(sys.stderr) if tty and not args.no_progress else None
        self.console = ConsoleHandler(sys.stderr, self.live)
        # The CLI prints a failed job's error itself; the environment's
        # log line about it would print the same block twice.
        self.console.addFilter(lambda r: not getattr(r, "sage_job_failed", False))
        self.files = CheckpointLogFiles()
        root = logging.getLogger()
        self._level = root.level
        for handler in (self.console, self.files):
            handler.setFormatter(TagFormatter())
            root.addHandler(handler)
        root.setLevel(args.log_level)
        self.metrics = (
            open(args.metrics, "w", encoding="utf-8") if args.metrics else None
        )
        self.monitor = Monitor(
            self.live, self.metrics, args.metrics_interval or 1.0, self._found
        )
        self.monitor.start()
        self._finished = False

    def _found(self, driver: Any) -> None:
        config = driver.options.checkpoint
        if config is not None:
            self.files.attach(config.directory)

    def finish(self, environment: Any, report: bool) -> None:
        """Write the final metrics; with ``report``, print each job's report."""
        if self._finished:
            return
        self._finished = True
        jobs = []
        for env in environment.submitted_environments():
            driver = getattr(env, "_driver", None)
            if driver is None or not driver.started_at:
                continue
            driver.finished.wait(10.0)
            jobs.append((driver, env.result))
        self.monitor.close(jobs, show=report)
        if report:
            for _, result in jobs:
                if result is not None:
                    print(result.report(), file=sys.stderr)

    def close(self) -> None:
        from . import environment

        self.finish(environment, report=False)
        root = logging.getLogger()
        for handler in (self.console, self.files):
            root.removeHandler(handler)
            handler.close()
        root.setLevel(self._level)
        if self.metrics is not None:
            self.metrics.close()


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def _stop_all(environment: object) -> None:
    from ._driver import live_drivers

    for driver in live_drivers():
        driver.abort()
