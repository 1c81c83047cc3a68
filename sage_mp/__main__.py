"""``python -m sage_mp``: see :mod:`sage_mp.cli`."""

from .cli import main

raise SystemExit(main())
