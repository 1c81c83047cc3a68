"""The table of SAGE module names, and the import finder that serves it.

:data:`MODULES` maps every ``sage.*`` name the layer answers to the
objects that module holds. :class:`SageFinder` is a meta-path finder:
placed at the *end* of ``sys.meta_path``, it is asked only about names
no other finder could import, and it builds each module on first
import from the table. Nothing here decides whether the finder may be
installed; :mod:`sage_mp.compat` does.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import sys
import types
from collections.abc import Callable
from typing import Any

from .. import functions as fn
from ._context import BaseRuntimeContext
from ._environment import LocalEnvironment
from ._packet import Packet

__all__ = ["FINDER", "MODULES", "SageFinder", "served_modules"]

_FUNCTIONS: dict[str, Any] = {
    "BaseFunction": fn.BaseFunction,
    "FilterFunction": fn.FilterFunction,
    "FlatMapFunction": fn.FlatMapFunction,
    "KeyByFunction": fn.KeyByFunction,
    "MapFunction": fn.MapFunction,
    "SinkFunction": fn.SinkFunction,
    "SourceFunction": fn.SourceFunction,
}
_STATEFUL = {"StatefulFunction": fn.StatefulFunction}
_STOP = {"StopSignal": fn.StopSignal}
_ENV = {"LocalEnvironment": LocalEnvironment}
_CONTEXT = {"BaseRuntimeContext": BaseRuntimeContext}

# One submodule per function class, as SAGE lays them out.
_PER_CLASS = {
    "base_function": "BaseFunction",
    "filter_function": "FilterFunction",
    "flatmap_function": "FlatMapFunction",
    "keyby_function": "KeyByFunction",
    "map_function": "MapFunction",
    "sink_function": "SinkFunction",
    "source_function": "SourceFunction",
}

#: Every module the layer serves, and what it holds. A name that is a
#: prefix of another (``sage``, ``sage.kernel``, ...) is a package.
MODULES: dict[str, dict[str, Any]] = {
    "sage": {},
    "sage.kernel": {},
    "sage.kernel.api": {**_ENV},
    "sage.kernel.api.local_environment": {**_ENV},
    "sage.kernel.runtime": {},
    "sage.kernel.runtime.communication": {},
    "sage.kernel.runtime.communication.packet": {"Packet": Packet, **_STOP},
    "sage.kernel.runtime.context": {**_CONTEXT},
    "sage.kernel.runtime.context.base_context": {**_CONTEXT},
    "sage.common": {},
    "sage.common.core": {**_FUNCTIONS, **_STATEFUL, **_STOP},
    "sage.common.core.functions": {**_FUNCTIONS, **_STATEFUL},
    **{
        f"sage.common.core.functions.{module}": {name: _FUNCTIONS[name]}
        for module, name in _PER_CLASS.items()
    },
    "sage.common.core.stateful_function": {**_STATEFUL},
    "sage.common.core.signals": {**_STOP},
    "sage.runtime": {**_ENV, **_STOP, "Packet": Packet, **_CONTEXT},
    "sage.foundation": {**_FUNCTIONS, **_STATEFUL, **_STOP},
}

# SAGE names that programs import and this layer deliberately lacks.
# Asking for one raises ImportError with a pointer to the docs instead
# of Python's bare "cannot import name".
_NOT_PROVIDED = frozenset(
    {
        "BaseCoMapFunction",
        "BaseJoinFunction",
        "BaseService",
        "BatchFunction",
        "Collector",
        "FutureFunction",
        "LambdaMapFunction",
        "RemoteEnvironment",
        "wrap_lambda",
    }
)

_PACKAGES = frozenset(
    name for name in MODULES if any(other.startswith(name + ".") for other in MODULES)
)


class SageFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds and builds the modules of :data:`MODULES`."""

    def find_spec(
        self,
        fullname: str,
        path: Any = None,
        target: types.ModuleType | None = None,
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in MODULES:
            return None
        return importlib.util.spec_from_loader(
            fullname,
            self,
            origin="sage_mp.compat",
            is_package=fullname in _PACKAGES,
        )

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> None:
        return None  # the default module object is what we want

    def exec_module(self, module: types.ModuleType) -> None:
        exports = MODULES[module.__name__]
        module.__dict__.update(exports)
        module.__all__ = sorted(exports)  # type: ignore[attr-defined]
        module.__doc__ = (
            f"{module.__name__}, served by sage_mp's SAGE compatibility "
            "layer (see docs/sage-compat.md)."
        )
        #: Lets programs and tests tell this module from a real SAGE one.
        module.__sage_mp_compat__ = True  # type: ignore[attr-defined]
        module.__getattr__ = _missing_name(module.__name__)  # type: ignore[method-assign]


def _missing_name(module: str) -> Callable[[str], Any]:
    def __getattr__(name: str) -> Any:
        message = (
            f"{module}.{name} is not provided by sage_mp's SAGE "
            "compatibility layer, which maps LocalEnvironment, the "
            "function classes, StatefulFunction, StopSignal, Packet and "
            "BaseRuntimeContext; see docs/sage-compat.md"
        )
        if name in _NOT_PROVIDED:
            raise ImportError(message, name=module)
        raise AttributeError(message)

    return __getattr__


def served_modules() -> list[str]:
    """Names of the modules in ``sys.modules`` that this layer built."""
    return [
        name
        for name, module in list(sys.modules.items())
        if getattr(getattr(module, "__spec__", None), "loader", None) is FINDER
    ]


#: The one finder instance; installing means putting it on sys.meta_path.
FINDER = SageFinder()
