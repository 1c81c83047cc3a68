"""Turn the SAGE compatibility layer on for the tests in this folder.

``pytest_plugins`` may only be set in the rootdir conftest, so the
layer is installed here, at import time, before pytest imports the
test modules (which import ``sage.*`` at their top). Running with
``-p sage_mp.compat.pytest_plugin`` as well is harmless: installing is
idempotent. If a real SAGE is importable the layer refuses, and the
SAGE-style tests are not collected rather than run against that SAGE.
"""

from __future__ import annotations

import sage_mp.compat

collect_ignore: list[str] = []

try:
    sage_mp.compat.install()
except sage_mp.compat.RealSageInstalled:
    collect_ignore.append("test_sage_style.py")
