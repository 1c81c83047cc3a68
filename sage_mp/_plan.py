"""The logical pipeline and its split into stages.

A pipeline is a source followed by a chain of operators. Operators are
chained into *stages*; a stage ends where records must change worker:
at a ``keyby``, around a single-instance (``parallelism=1``) operator,
and before a single-instance sink, which runs in the driver. Every
worker hosts one instance of each stage, except single-instance stages,
which live on worker 0.

This module decides placement only; it runs nothing.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, cast

from .errors import PipelineError
from .functions import (
    BaseFunction,
    CollectionSource,
    FilterFunction,
    FlatMapFunction,
    KeyByFunction,
    MapFunction,
    SinkFunction,
    SourceFunction,
    StatefulFunction,
    _Wrapped,
    _WrappedSource,
)

__all__ = ["OperatorSpec", "Plan", "Route", "StagePlan", "build_plan"]

KINDS = ("source", "map", "filter", "flatmap", "keyby", "sink")
STRATEGIES = ("hash", "round_robin", "broadcast")
_BASES = {
    "source": SourceFunction,
    "map": MapFunction,
    "filter": FilterFunction,
    "flatmap": FlatMapFunction,
    "keyby": KeyByFunction,
    "sink": SinkFunction,
}
# Function classes an operator takes besides its own kind's.
_ALSO: dict[str, tuple[type, ...]] = {
    "keyby": (MapFunction,),
    "filter": (StatefulFunction,),
    "flatmap": (StatefulFunction,),
    "sink": (StatefulFunction,),
}


@dataclass
class OperatorSpec:
    """One operator as the user declared it."""

    kind: str
    function: Any
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    name: str = ""
    parallelism: int | None = None
    strategy: str = "hash"
    delay: float = 0.0

    def instantiate(self) -> BaseFunction:
        """Build the function instance; call in the process that runs it."""
        fn = self.function
        if inspect.isclass(fn):
            return cast(BaseFunction, fn(*self.args, **self.kwargs))
        if isinstance(fn, BaseFunction):
            return fn
        if self.kind == "source":
            return _WrappedSource(fn)
        return _Wrapped(fn)


@dataclass
class Route:
    """How records leave a stage.

    ``kind`` is one of ``hash``/``round_robin``/``broadcast`` (a keyby,
    which sets a new key), ``rebalance`` (spread, keep the key),
    ``single`` (all to worker 0, keep the key) or ``driver`` (to the
    driver's final stage).
    """

    kind: str
    keyby: OperatorSpec | None = None


@dataclass
class StagePlan:
    index: int
    operators: list[OperatorSpec]
    route: Route | None = None  # None only for the driver's stage
    single: bool = False
    in_driver: bool = False
    #: Stage 0 with no operators of its own (the source is followed
    #: directly by a keyby or a single-instance operator): the driver
    #: runs it, routing each record straight to its owner, because a
    #: hop through a worker would cost more than the routing itself.
    at_head: bool = False
    #: Stage 0 hosted by every worker, each reading every tick of the
    #: source collection and keeping the records it owns: no record,
    #: position or key travels between workers (see _driver.scan_mode).
    reads_all: bool = False

    @property
    def on_workers(self) -> bool:
        return not (self.in_driver or self.at_head)

    @property
    def specs(self) -> list[OperatorSpec]:
        """Every operator whose function this stage runs, keyby last."""
        keyby = self.route.keyby if self.route is not None else None
        return [*self.operators, *([keyby] if keyby is not None else [])]


@dataclass
class Plan:
    source: OperatorSpec
    stages: list[StagePlan]  # worker stages, then the driver's stage

    @property
    def worker_stages(self) -> list[StagePlan]:
        return [stage for stage in self.stages if stage.on_workers]

    @property
    def driver_stage(self) -> StagePlan:
        return self.stages[-1]


def check_function(
    kind: str,
    function: Any,
    where: str,
    args: tuple[Any, ...] = (),
    kwargs: dict[str, Any] | None = None,
) -> None:
    """Refuse anything that is neither a matching class nor a callable,
    a function class made for another kind of operator, and a class
    that ``args`` and ``kwargs`` cannot build."""
    _check_kind(kind, function if inspect.isclass(function) else type(function), where)
    if inspect.isclass(function):
        _check_arguments(kind, function, args, kwargs or {}, where)
    if inspect.isclass(function):
        if not issubclass(function, BaseFunction) and kind != "source":
            # A plain class with execute() is accepted too: duck typing.
            if not callable(getattr(function, "execute", None)):
                raise PipelineError(
                    f"{where}: expected a {_BASES[kind].__name__} subclass or "
                    f"a callable, got class {function.__name__} without an "
                    "execute() method"
                )
        return
    if isinstance(function, BaseFunction) or callable(function):
        return
    raise PipelineError(
        f"{where}: expected a {_BASES[kind].__name__} subclass or a callable, "
        f"got {type(function).__name__} {function!r}"
    )


def _check_kind(kind: str, cls: type, where: str) -> None:
    """A SinkFunction given to map() would swallow every record, a
    MapFunction given to filter() would keep or drop records by the
    truth of its results: refuse a class whose base names another kind.

    Plain ``BaseFunction`` subclasses and classes of no base stay
    welcome anywhere. So do the pairs in ``_ALSO``: the SAGE guide's
    key extractor is a ``MapFunction``, and a ``StatefulFunction`` (a
    map with state) may also filter, flat-map or sink.
    """
    if not issubclass(cls, BaseFunction) or issubclass(cls, _BASES[kind]):
        return
    if issubclass(cls, _ALSO.get(kind, ())):
        return
    for other, base in _BASES.items():
        if issubclass(cls, base):
            method = _method(other)
            raise PipelineError(
                f"{where}: {cls.__name__} is a {base.__name__}, made for "
                f"{method}(); {_method(kind)}() takes a "
                f"{_BASES[kind].__name__} subclass or a callable. Pass "
                f"{cls.__name__} to {method}() or derive it from "
                f"{_BASES[kind].__name__}"
            )


def _check_arguments(
    kind: str, cls: type, args: tuple[Any, ...], kwargs: dict[str, Any], where: str
) -> None:
    """Each process builds its instances from ``args`` and ``kwargs``;
    a mismatch would fail there, once per worker. Find it here."""
    try:
        signature = inspect.signature(cls)
    except (TypeError, ValueError):
        return  # Some classes (written in C, say) have no signature to check.
    try:
        signature.bind(*args, **kwargs)
    except TypeError as err:
        needed = [
            f"{p.name}=..."
            for p in signature.parameters.values()
            if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        ]
        example = ", ".join([cls.__name__, *needed])
        raise PipelineError(
            f"{where}: {cls.__name__}{signature} cannot be built from the "
            f"arguments given ({err}); pass them after the class, as in "
            f".{_method(kind)}({example})"
        ) from None


def _method(kind: str) -> str:
    return "from_source" if kind == "source" else kind


def build_plan(source: OperatorSpec, operators: list[OperatorSpec]) -> Plan:
    """Split the operator chain into stages (see the module docstring)."""
    _name_operators([source, *operators])
    stages: list[StagePlan] = []
    current = StagePlan(0, [])

    def close(route: Route, single: bool = False, in_driver: bool = False) -> None:
        nonlocal current
        current.route = route
        stages.append(current)
        current = StagePlan(len(stages), [], single=single, in_driver=in_driver)

    for position, op in enumerate(operators):
        if current.in_driver:
            raise PipelineError(
                f"operator {op.name!r} follows the sink "
                f"{current.operators[-1].name!r}; a sink must end the pipeline"
            )
        if op.kind == "keyby":
            close(Route(op.strategy, op))
        elif op.kind == "sink" and (op.parallelism or 1) == 1:
            close(Route("driver"), in_driver=True)
            current.operators.append(op)
        elif op.kind == "sink":
            current.operators.append(op)
            if position != len(operators) - 1:
                raise PipelineError(
                    f"operator {operators[position + 1].name!r} follows the "
                    f"sink {op.name!r}; a sink must end the pipeline"
                )
        elif op.parallelism == 1 and not current.single:
            close(Route("single"), single=True)
            current.operators.append(op)
        elif op.parallelism != 1 and current.single:
            close(Route("rebalance"))
            current.operators.append(op)
        else:
            current.operators.append(op)
    if not current.in_driver:
        close(Route("driver"), in_driver=True)
    current.index = len(stages)
    stages.append(current)
    head = stages[0]
    head.at_head = (
        not head.operators and head.route is not None and (head.route.kind != "driver")
    )
    return Plan(source, stages)


def _name_operators(ops: list[OperatorSpec]) -> None:
    seen: dict[str, int] = {}
    for op in ops:
        base = op.name or _default_name(op)
        count = seen.get(base, 0) + 1
        seen[base] = count
        op.name = base if count == 1 else f"{base}#{count}"


def _default_name(op: OperatorSpec) -> str:
    fn = op.function
    if inspect.isclass(fn):
        return fn.__name__
    if fn is CollectionSource:
        return "collection"
    name = getattr(fn, "__name__", None) or type(fn).__name__
    if name == "<lambda>":
        name = f"{op.kind}_lambda"
    return str(name)
