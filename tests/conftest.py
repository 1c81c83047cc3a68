"""Test-wide fixtures.

Every test is checked for leftover processes: a job, whatever way it
ended, must not leave a worker running.
"""

from __future__ import annotations

import pytest
from helpers import assert_no_new_children, children_pids


@pytest.fixture(autouse=True)
def no_leftover_processes():
    """After each test, every process it started must be gone."""
    before = children_pids()
    yield
    assert_no_new_children(before)
