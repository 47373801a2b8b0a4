#!/usr/bin/env python
"""Sweep every timm model and every Hugging Face AutoModel type (the package ``scripts/droppath_coverage``,
module ``sweep``, does the work; its docstring says how).

    python scripts/sweep.py hf hf-heads timm # resumes docs/sweep/*.json, writes docs/sweep.md
    python scripts/sweep.py --render         # docs/sweep.md and coverage.md's sweep section from the JSON
"""

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
for path in (HERE.parent, HERE):  # the checkout's droppath_surgery, then the package next to this file
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from droppath_coverage.sweep import main

if __name__ == "__main__":
    sys.exit(main())
