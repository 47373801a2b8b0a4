#!/usr/bin/env python
"""Regenerate ``docs/coverage.md`` (the package ``scripts/droppath_coverage`` does the work; how a row
is judged is in its docstring).

    python scripts/coverage.py                      # full table -> docs/coverage.md (about 6 min, 2 cores)
    python scripts/coverage.py --subset --out -     # the CI subset, printed
    python scripts/coverage.py --only timm:resnet hf:Swin --out -
"""

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
for path in (HERE.parent, HERE):  # the checkout's droppath_surgery, then the package next to this file
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from droppath_coverage.runner import main

if __name__ == "__main__":
    sys.exit(main())
