#!/usr/bin/env python
"""Build Hugging Face types at several layer counts and compare their stacks, sites and rates (the package
``scripts/droppath_coverage``, module ``depth``, does the work; its docstring says what is compared).

    python scripts/depth_check.py                          # every type the sweep patches ok, 2 and 6 layers
    python scripts/depth_check.py --only neomme t5 --layers 2 6 --out /tmp/depth.json
"""

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
for path in (HERE.parent, HERE):  # the checkout's droppath_surgery, then the package next to this file
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from droppath_coverage.depth import main

if __name__ == "__main__":
    sys.exit(main())
