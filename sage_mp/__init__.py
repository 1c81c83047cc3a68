"""sage_mp: keyed, stateful stream processing on a multiprocess runtime.

Build a pipeline on a :class:`LocalEnvironment`, key it with ``keyby``,
keep per-key state in ordinary attributes of your functions, and
``submit()``. See the README for the concepts and the quick start.
"""

from .context import RuntimeContext
from .environment import DataStream, JobResult, LocalEnvironment
from .errors import (
    CheckpointError,
    IncompatibleCheckpoint,
    JobFailed,
    PipelineError,
    SageMPError,
    UserFunctionError,
    WorkerDied,
)
from .functions import (
    BaseFunction,
    FilterFunction,
    FlatMapFunction,
    KeyByFunction,
    MapFunction,
    SinkFunction,
    SourceFunction,
    StatefulFunction,
    StopSignal,
)

__all__ = [
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

__version__ = "0.1.0"
