"""The compatibility layer itself: mapping, switches, refusal, extras.

These tests may import sage_mp. The ones that change what is
installed, or need a fake SAGE on ``sys.path``, run in a subprocess so
that the test session keeps its own layer.
"""

from __future__ import annotations

import importlib
import logging
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import ClassVar

import pytest

import sage_mp
from sage_mp import compat
from sage_mp.context import RuntimeContext

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "tutorials" / "l3-kernel" / "keyed_state_example.py"

SAGE_SCRIPT = """
import time
from sage.common.core.functions import MapFunction, SinkFunction, SourceFunction
from sage.common.core.stateful_function import StatefulFunction
from sage.kernel.api.local_environment import LocalEnvironment

class Source(SourceFunction):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.n = 0
    def execute(self, data=None):
        if self.n == 9:
            return None
        self.n += 1
        return {"user": "ab"[self.n % 2], "value": self.n}

class UserOf(MapFunction):
    def execute(self, event):
        return event["user"]

class Total(StatefulFunction):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.totals = {}
    def execute(self, event):
        key = self.ctx.get_key()
        self.totals[key] = self.totals.get(key, 0) + event["value"]
        return (key, self.totals[key])

class Sink(SinkFunction):
    results = []
    def execute(self, data):
        Sink.results.append(data)

env = LocalEnvironment("cli_job")
env.from_source(Source, delay=0.01).keyby(UserOf).map(Total).sink(Sink)
env.submit()
time.sleep(1.0)
env.close()
print("final", dict(Sink.results))
"""


def run_python(*args: str, cwd: Path | None = None, env: dict | None = None):
    """Run a Python subprocess; return it with text output."""
    return subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=120,
        check=False,
    )


@pytest.fixture
def fake_sage(tmp_path: Path) -> Path:
    """A folder holding a package named 'sage', standing for a real SAGE."""
    package = tmp_path / "site" / "sage"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("REAL = True\n")
    return package.parent


def with_pythonpath(extra: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(extra), env.get("PYTHONPATH")])
    )
    return env


# --- the mapping -------------------------------------------------------


def test_every_listed_module_imports_with_its_objects():
    """Each served module imports and holds exactly the objects of the table."""
    from sage_mp.compat._finder import MODULES

    for name in compat.SAGE_MODULES:
        module = importlib.import_module(name)
        assert module.__sage_mp_compat__ is True
        for attribute, value in MODULES[name].items():
            assert getattr(module, attribute) is value, (name, attribute)


def test_old_and_new_names_are_the_same_objects():
    """sage.runtime/sage.foundation and the older paths give one set of classes."""
    import sage.common.core.functions.flatmap_function as flatmap_module
    from sage import foundation, runtime
    from sage.common.core import functions
    from sage.common.core.signals import StopSignal
    from sage.kernel.api import LocalEnvironment

    assert foundation.MapFunction is functions.MapFunction is sage_mp.MapFunction
    assert flatmap_module.FlatMapFunction is sage_mp.FlatMapFunction
    assert foundation.StatefulFunction is sage_mp.StatefulFunction
    assert runtime.LocalEnvironment is LocalEnvironment is compat.LocalEnvironment
    assert issubclass(LocalEnvironment, sage_mp.LocalEnvironment)
    assert runtime.StopSignal is StopSignal is sage_mp.StopSignal


def test_missing_sage_name_points_to_the_docs():
    """Importing a SAGE class the layer lacks says so and names the docs."""
    with pytest.raises(ImportError, match="docs/sage-compat.md"):
        from sage.foundation import BatchFunction  # noqa: F401
    with pytest.raises(ImportError):
        from sage.foundation import NoSuchName  # noqa: F401


def test_install_is_idempotent():
    """A second install() leaves exactly one finder on sys.meta_path."""
    compat.install()
    compat.install()
    assert compat.is_installed()
    assert sys.meta_path.count(compat._finder.FINDER) == 1


def test_uninstall_forgets_the_modules():
    """After uninstall(), sage.* no longer imports; install() brings it back."""
    code = """
        import sage_mp.compat as compat
        compat.install()
        import sage.kernel.api
        compat.uninstall()
        try:
            import sage.kernel.api
        except ImportError:
            print("gone")
        compat.install()
        from sage.foundation import MapFunction
        print("back", MapFunction.__module__)
    """
    proc = run_python("-c", textwrap.dedent(code))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["gone", "back", "sage_mp.functions"]


# --- refusing a real SAGE ----------------------------------------------


def test_install_refuses_when_a_real_sage_is_importable(fake_sage: Path):
    """install() raises, installs nothing, and the real package stays importable."""
    code = """
        import sys
        import sage_mp.compat as compat
        try:
            compat.install()
        except compat.RealSageInstalled as err:
            print("refused:", err)
        print("installed:", compat.is_installed())
        import sage
        print("real:", sage.REAL)
    """
    proc = run_python("-c", textwrap.dedent(code), env=with_pythonpath(fake_sage))
    assert proc.returncode == 0, proc.stderr
    assert "refused:" in proc.stdout
    assert str(fake_sage / "sage") in proc.stdout
    assert "installed: False" in proc.stdout
    assert "real: True" in proc.stdout


def test_install_refuses_a_namespace_sage(tmp_path: Path):
    """A 'sage' namespace package (no __init__.py) counts as a real SAGE."""
    (tmp_path / "sage").mkdir()
    code = """
        import sage_mp.compat as compat
        try:
            compat.install()
        except compat.RealSageInstalled as err:
            print("refused:", err)
    """
    proc = run_python("-c", textwrap.dedent(code), env=with_pythonpath(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert f"from {tmp_path / 'sage'}" in proc.stdout


# --- the three switches ------------------------------------------------


def test_cli_flag_runs_a_sage_script(tmp_path: Path):
    """`run --sage-compat` runs an unchanged SAGE script; without it, it fails."""
    script = tmp_path / "job.py"
    script.write_text(SAGE_SCRIPT)

    proc = run_python("-m", "sage_mp", "run", "--sage-compat", str(script))
    assert proc.returncode == 0, proc.stderr
    assert "final {'b': 25, 'a': 20}" in proc.stdout

    plain = run_python("-m", "sage_mp", "run", str(script))
    assert plain.returncode != 0
    assert "No module named 'sage'" in plain.stderr


def test_cli_flag_refused_next_to_a_real_sage(tmp_path: Path):
    """A 'sage' package beside the script makes the flag fail before the job."""
    (tmp_path / "sage").mkdir()
    (tmp_path / "sage" / "__init__.py").write_text("")
    script = tmp_path / "job.py"
    script.write_text(SAGE_SCRIPT)

    proc = run_python("-m", "sage_mp", "run", "--sage-compat", str(script))
    assert proc.returncode == 2
    assert "refused" in proc.stderr
    assert "final" not in proc.stdout


PLUGIN_TEST = """
from sage.common.core.functions import SinkFunction
from sage.kernel.api.local_environment import LocalEnvironment

class Sink(SinkFunction):
    results = []
    def execute(self, data):
        Sink.results.append(data)

def test_collection():
    env = LocalEnvironment("plugin_job")
    env.from_collection([1, 2, 3]).map(lambda x: x * 10).sink(Sink)
    env.submit(autostop=True)
    assert Sink.results == [10, 20, 30]
"""


def test_pytest_plugin_installs_the_layer(tmp_path: Path):
    """-p sage_mp.compat.pytest_plugin lets a SAGE test module import and pass."""
    (tmp_path / "test_plugin_job.py").write_text(PLUGIN_TEST)
    args = ["-m", "pytest", "-q", "-p", "no:cacheprovider"]

    proc = run_python(
        *args, "-p", "sage_mp.compat.pytest_plugin", str(tmp_path), cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 passed" in proc.stdout

    without = run_python(*args, str(tmp_path), cwd=tmp_path)
    assert without.returncode != 0


def test_pytest_plugin_refuses_next_to_a_real_sage(tmp_path: Path, fake_sage: Path):
    """With a real SAGE importable, the plugin stops the session with a usage error."""
    (tmp_path / "test_plugin_job.py").write_text(PLUGIN_TEST)
    proc = run_python(
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "-p",
        "sage_mp.compat.pytest_plugin",
        str(tmp_path / "test_plugin_job.py"),
        cwd=tmp_path,
        env=with_pythonpath(fake_sage),
    )
    assert proc.returncode == pytest.ExitCode.USAGE_ERROR
    assert "refused" in proc.stderr


def test_example_runs_and_checks_itself():
    """The guide's example exits 0 and reports agreement with plain Python."""
    proc = run_python(str(EXAMPLE), cwd=REPO)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "matches a plain Python computation: yes" in proc.stdout
    assert "alice" in proc.stdout and "windows kept" in proc.stdout


# --- the environment, in one worker and in several ----------------------


@pytest.mark.parametrize("workers", [1, 3])
def test_compat_environment_takes_sage_arguments(workers: int, caplog):
    """Positional config is honoured and a scheduler is ignored with a warning."""
    from sage.kernel.api.local_environment import LocalEnvironment

    class Sink(sage_mp.SinkFunction):
        results: ClassVar[list] = []

        def execute(self, data):
            Sink.results.append(data)

    class Count(sage_mp.StatefulFunction):
        def __init__(self):
            super().__init__()
            self.counts = {}

        def execute(self, value):
            key = self.ctx.get_key()
            self.counts[key] = self.counts.get(key, 0) + 1
            return (key, self.counts[key], self.ctx.parallelism)

    caplog.set_level(logging.WARNING)
    env = LocalEnvironment("compat_env", {"workers": workers}, scheduler="fifo")
    assert "scheduler 'fifo' is ignored" in caplog.text
    records = [i % 4 for i in range(40)]
    env.from_collection(records).keyby(lambda v: v).map(Count).sink(Sink)
    result = env.submit(autostop=True)

    assert result.workers == workers
    expected, seen = [], {}
    for key in records:
        seen[key] = seen.get(key, 0) + 1
        expected.append((key, seen[key], workers))
    assert Sink.results == expected


def test_set_console_log_level_sets_the_sage_mp_logger():
    """set_console_log_level() sets sage_mp's logger level and checks its input."""
    logger = logging.getLogger("sage_mp")
    before = logger.level
    env = compat.LocalEnvironment("levels")
    try:
        env.set_console_log_level("debug")
        assert logger.level == logging.DEBUG
        with pytest.raises(sage_mp.PipelineError, match="DEBUG, INFO"):
            env.set_console_log_level("LOUD")
    finally:
        logger.setLevel(before)


# --- BaseRuntimeContext and the state methods --------------------------


def test_engine_context_counts_as_base_runtime_context():
    """isinstance(self.ctx, BaseRuntimeContext) holds for sage_mp's context."""
    assert isinstance(RuntimeContext("op", 0, 1), compat.BaseRuntimeContext)


def test_base_runtime_context_logger_can_be_assigned():
    """A subclass may assign self.logger instead of defining a property."""

    class Ctx(compat.BaseRuntimeContext):
        def __init__(self):
            super().__init__()
            self.logger = logging.getLogger("assigned")

    assert Ctx().logger.name == "assigned"
    assert compat.BaseRuntimeContext().logger.name.endswith("BaseRuntimeContext")


class _Stateful(sage_mp.StatefulFunction):
    __state_include__: ClassVar[list] = ["counts", "_index"]

    def __init__(self):
        super().__init__()
        self.counts = {"a": [1]}
        self._index = {"a": 0}
        self.other = "not listed"


def test_get_state_follows_the_state_rules_and_copies():
    """get_state() keeps the included names, private ones too, as deep copies."""
    fn = _Stateful()
    state = fn.get_state()
    assert state == {"counts": {"a": [1]}, "_index": {"a": 0}}
    state["counts"]["a"].append(2)
    assert fn.counts == {"a": [1]}
    assert fn.save_state() == {"counts": {"a": [1]}, "_index": {"a": 0}}


def test_restore_state_sets_copies_of_the_attributes():
    """restore_state() sets each attribute; one dict can restore two instances."""
    saved = {"counts": {"b": [7]}, "_index": {"b": 3}}
    first, second = _Stateful(), _Stateful()
    first.restore_state(saved)
    second.restore_state(saved)
    first.counts["b"].append(8)
    assert second.counts == {"b": [7]} and saved["counts"] == {"b": [7]}
    assert first._index == {"b": 3} and first.other == "not listed"


def test_state_methods_explain_bad_input():
    """An uncopyable attribute and a non-dict state get messages naming them."""

    class WithLock(sage_mp.MapFunction):
        def __init__(self):
            super().__init__()
            self.lock = threading.Lock()

    with pytest.raises(TypeError, match="'lock'.*__state_exclude__"):
        WithLock().get_state()
    with pytest.raises(TypeError, match="expected the dict"):
        _Stateful().restore_state([("counts", {})])
