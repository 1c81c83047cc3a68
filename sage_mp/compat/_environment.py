"""SAGE's ``LocalEnvironment`` signature on top of sage_mp's environment.

SAGE constructs an environment as ``LocalEnvironment(name, config,
scheduler)``, with ``config`` allowed as a positional argument; sage_mp
takes its options by keyword only. This subclass accepts both and
adds SAGE's ``set_console_log_level``, and changes nothing else.
"""

from __future__ import annotations

import logging
from typing import Any

from .. import environment
from ..errors import PipelineError

__all__ = ["LocalEnvironment"]

log = logging.getLogger(__name__)

_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


class LocalEnvironment(environment.LocalEnvironment):
    """sage_mp's :class:`~sage_mp.LocalEnvironment`, built the SAGE way.

    Args:
        name: the job's name.
        config: SAGE's plain-dict configuration; sage_mp reads the keys
            ``workers``, ``batch_size``, ``linger`` and
            ``error_policy`` and ignores the others.
        scheduler: accepted for SAGE code and ignored: sage_mp places
            operators itself (see docs/sage-compat.md).
        **options: sage_mp's own keyword options, such as ``workers``.
    """

    def __init__(
        self,
        name: str = "localenvironment",
        config: dict[str, Any] | None = None,
        scheduler: Any = None,
        **options: Any,
    ) -> None:
        if scheduler is not None:
            log.warning(
                "LocalEnvironment(%r): the scheduler %r is ignored; sage_mp "
                "places one instance of each operator per worker",
                name,
                scheduler,
            )
        super().__init__(name, config=config, **options)

    def set_console_log_level(self, level: str) -> None:
        """Set the lowest level of sage_mp's and your functions' log lines.

        This sets the level of the ``sage_mp`` logger, which includes
        the ``sage_mp.user.*`` loggers behind ``self.logger``. As a
        library, sage_mp installs no handler: ``python -m sage_mp run``
        does (``--log-level``), and a program run directly calls
        ``logging.basicConfig()`` to see INFO and DEBUG lines.
        """
        name = str(level).upper()
        if name not in _LEVELS:
            raise PipelineError(
                f"{self.name}.set_console_log_level(): expected one of "
                f"{', '.join(_LEVELS)}, got {level!r}"
            )
        logging.getLogger("sage_mp").setLevel(name)
