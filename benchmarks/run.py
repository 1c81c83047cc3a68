"""Run the benchmark suite: the same as ``python -m sage_mp bench``.

    python benchmarks/run.py --size 0.1 --only light,heavy --json out.json

See benchmarks/README.md for the workloads and how to read the table.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sage_mp import _bench


def main() -> int:
    parser = argparse.ArgumentParser(
        prog="python benchmarks/run.py",
        description="Run the standard workloads against baselines measured "
        "in the same run and print a Markdown table of ratios.",
    )
    _bench.add_arguments(parser)
    args = parser.parse_args()
    if args.suite is None:
        args.suite = str(Path(__file__).resolve().parent)
    return _bench.main(args)


if __name__ == "__main__":
    sys.exit(main())
