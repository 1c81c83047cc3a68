"""A pytest plugin that turns the SAGE compatibility layer on.

Use it as ``python -m pytest -p sage_mp.compat.pytest_plugin`` to run
a SAGE test suite on sage_mp. It installs the layer in
``pytest_configure``, before any test module is imported, and stops
the session with a usage error if a real SAGE is importable.
"""

from __future__ import annotations

import pytest

from . import RealSageInstalled, install

__all__ = ["pytest_configure", "pytest_report_header"]


def pytest_configure(config: pytest.Config) -> None:
    """Install the layer, or refuse the whole session if it cannot be."""
    try:
        install()
    except RealSageInstalled as err:
        raise pytest.UsageError(str(err)) from err


def pytest_report_header(config: pytest.Config) -> str:
    return "sage_mp.compat: sage.* imports are served by sage_mp"
