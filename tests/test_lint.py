"""The package type-checks with mypy and passes ruff, as CI requires."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize(
    "tool",
    [
        ["mypy", "sage_mp"],
        ["ruff", "check", "sage_mp"],
    ],
    ids=["mypy", "ruff"],
)
def test_package_is_clean(tool):
    """mypy and ruff report nothing on the sage_mp package."""
    out = subprocess.run(
        [sys.executable, "-m", *tool], cwd=ROOT, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stdout + out.stderr
