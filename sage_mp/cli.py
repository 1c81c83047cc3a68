"""The command line: ``python -m sage_mp run | state | bench``.

``run`` executes a job script with flags that override what the script
sets, waits for every job the script submitted, and turns Ctrl-C into a
clean stop with exit code 130. The CLI is the only place in sage_mp
that installs logging handlers.
"""

from __future__ import annotations

import argparse
import logging
import os
import runpy
import sys
from collections.abc import Sequence

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
    )
    run.add_argument("script", help="path of the Python job script to run")
    run.add_argument(
        "script_args",
        nargs=argparse.REMAINDER,
        help="arguments passed to the script as sys.argv[1:]",
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
        "--log-level",
        default="WARNING",
        choices=("DEBUG", "INFO", "WARNING", "ERROR"),
        help="lowest level of log lines to print (default WARNING)",
    )
    return parser


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}")
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a number >= 1, got {value}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "run":
        return _run(parser, args)
    parser.error(f"unknown command {args.command!r}")  # pragma: no cover
    return EXIT_USAGE


def _run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from . import environment

    script = args.script
    if not os.path.isfile(script):
        parser.error(
            f"job script {script!r} does not exist; pass the path of a "
            "Python file that builds and submits a pipeline"
        )
    logging.basicConfig(
        level=args.log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    overrides = {"workers": args.workers, "error_policy": args.on_error}
    environment.OVERRIDES.update({k: v for k, v in overrides.items() if v})
    sys.argv = [script, *args.script_args]
    sys.path.insert(0, os.path.dirname(os.path.abspath(script)))
    try:
        runpy.run_path(script, run_name="__main__")
        for env in environment.submitted_environments():
            env.wait()
    except KeyboardInterrupt:
        _stop_all(environment)
        print("interrupted; jobs stopped", file=sys.stderr)
        return EXIT_INTERRUPTED
    except SystemExit as exit_:
        _stop_all(environment)
        code = exit_.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    except Exception as err:
        from .errors import SageMPError

        _stop_all(environment)
        if isinstance(err, SageMPError):
            print(f"sage_mp: {err}", file=sys.stderr)
            return EXIT_FAILED
        raise
    finally:
        environment.OVERRIDES.clear()
    if not environment.submitted_environments():
        print(
            f"sage_mp: {script} built no pipeline; a job script must call "
            "submit() on a LocalEnvironment",
            file=sys.stderr,
        )
        return EXIT_USAGE
    return EXIT_OK


def _stop_all(environment: object) -> None:
    from ._driver import live_drivers

    for driver in live_drivers():
        driver.abort()
