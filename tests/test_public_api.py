"""The public surface of sage_mp is exactly what this file lists.

Adding or removing a public name is a decision: change the list here
in the same change, on purpose.
"""

from __future__ import annotations

import sage_mp

PUBLIC = [
    "BaseFunction",
    "CheckpointError",
    "DataStream",
    "FilterFunction",
    "FlatMapFunction",
    "IncompatibleCheckpoint",
    "JobFailed",
    "JobResult",
    "KeyByFunction",
    "LocalEnvironment",
    "MapFunction",
    "PipelineError",
    "RuntimeContext",
    "SageMPError",
    "SinkFunction",
    "SourceFunction",
    "StatefulFunction",
    "StopSignal",
    "UserFunctionError",
    "WorkerDied",
]


def test_all_is_pinned():
    """sage_mp.__all__ is exactly the pinned list, sorted."""
    assert sage_mp.__all__ == PUBLIC


def test_every_public_name_exists():
    """Every name in __all__ is importable from sage_mp."""
    for name in sage_mp.__all__:
        assert getattr(sage_mp, name) is not None, name


def test_star_import_gives_exactly_the_public_names():
    """``from sage_mp import *`` brings the public names and no others."""
    namespace: dict[str, object] = {}
    exec("from sage_mp import *", namespace)

    assert sorted(k for k in namespace if k != "__builtins__") == PUBLIC


def test_error_tree_is_split_by_fault():
    """Every error is a SageMPError; job failures share JobFailed."""
    errors = sage_mp
    for name in ("UserFunctionError", "WorkerDied", "CheckpointError"):
        assert issubclass(getattr(errors, name), errors.JobFailed)
    for name in ("PipelineError", "JobFailed", "IncompatibleCheckpoint"):
        assert issubclass(getattr(errors, name), errors.SageMPError)
    assert issubclass(errors.PipelineError, ValueError)


def test_function_classes_share_the_base():
    """Every function class users subclass derives from BaseFunction."""
    for name in (
        "FilterFunction",
        "FlatMapFunction",
        "KeyByFunction",
        "MapFunction",
        "SinkFunction",
        "SourceFunction",
        "StatefulFunction",
    ):
        assert issubclass(getattr(sage_mp, name), sage_mp.BaseFunction), name
