"""``python -m convert``: see :mod:`convert.cli`."""

from convert.cli import main

raise SystemExit(main())
