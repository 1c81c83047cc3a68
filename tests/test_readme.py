"""The README's pipeline example runs as written."""

from __future__ import annotations

import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_readme_pipeline_runs(tmp_path):
    """The first Python block of the README runs and prints every record."""
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as handle:
        block = re.search(r"```python\n(.*?)```", handle.read(), re.S)
    assert block, "the README should show a Python example"
    script = tmp_path / "readme_example.py"
    script.write_text(block.group(1))
    out = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    printed = [line for line in out.stdout.splitlines() if line.startswith("{")]
    assert len(printed) == 9
    assert "{'count': 3, 'total': 15}" in printed  # u2: 2 + 5 + 8
    assert "job 'sessions'" in out.stdout
    assert (tmp_path / "ckpt" / "MANIFEST.json").exists()
