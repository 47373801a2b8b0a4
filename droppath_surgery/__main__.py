"""``python -m droppath_surgery inspect ...``: the same as the ``droppath-surgery`` command."""

import sys

from .cli import main

sys.exit(main())
