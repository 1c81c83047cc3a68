"""Run programs written for SAGE unchanged on sage_mp, when asked to.

After :func:`install`, ``from sage.kernel.api.local_environment import
LocalEnvironment``, ``from sage.common.core.functions import
MapFunction`` and the other SAGE paths listed in docs/sage-compat.md
import sage_mp's own classes. Nothing happens on import of this
package; the layer is turned on in one of three ways:

* ``python -m sage_mp run --sage-compat script.py``;
* ``import sage_mp.compat; sage_mp.compat.install()`` in the program;
* ``python -m pytest -p sage_mp.compat.pytest_plugin``.

How: a meta-path finder (:mod:`sage_mp.compat._finder`) appended to
``sys.meta_path`` builds each ``sage.*`` module from a fixed table on
its first import. Appended last, it never hides a module that another
finder can import.

A real SAGE always wins: if ``sage`` is importable when
:func:`install` is called, it raises :class:`RealSageInstalled` and
installs nothing, so a program never mixes the two frameworks.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import sys

from ..errors import SageMPError
from ._context import BaseRuntimeContext
from ._environment import LocalEnvironment
from ._finder import FINDER, MODULES, served_modules
from ._packet import Packet

__all__ = [
    "SAGE_MODULES",
    "BaseRuntimeContext",
    "LocalEnvironment",
    "Packet",
    "RealSageInstalled",
    "install",
    "is_installed",
    "uninstall",
]


#: The ``sage.*`` modules the layer serves, sorted.
SAGE_MODULES = tuple(sorted(MODULES))


class RealSageInstalled(SageMPError, RuntimeError):
    """``install()`` was refused because a real ``sage`` is importable."""


def is_installed() -> bool:
    """True if ``sage.*`` imports are currently served by sage_mp."""
    return FINDER in sys.meta_path


def install() -> None:
    """Serve the SAGE import paths from sage_mp; safe to call twice.

    Raises:
        RealSageInstalled: a ``sage`` package (the SAGE framework or
            any other) is importable; nothing was installed.
    """
    if is_installed():
        return
    spec = importlib.util.find_spec("sage")
    if spec is not None:
        raise RealSageInstalled(_refusal(spec))
    sys.meta_path.append(FINDER)


def uninstall() -> None:
    """Stop serving ``sage.*`` and forget the modules built so far.

    Objects already imported from them keep working; new ``sage``
    imports fail (or find a real SAGE) from now on.
    """
    while FINDER in sys.meta_path:
        sys.meta_path.remove(FINDER)
    for name in served_modules():
        del sys.modules[name]


def _refusal(spec: importlib.machinery.ModuleSpec) -> str:
    where = spec.origin
    if where in (None, "namespace") and spec.submodule_search_locations:
        where = ", ".join(str(path) for path in spec.submodule_search_locations)
    return (
        f"sage_mp.compat.install() refused: a real 'sage' package is "
        f"importable (from {where}), and sage_mp never shadows it. Run "
        "the program on that SAGE, or remove it from sys.path (or "
        "uninstall it) to run the program on sage_mp."
    )
