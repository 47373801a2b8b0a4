import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
# The coverage and sweep scripts' package (droppath_coverage), appended: scripts/sweep.py and scripts/coverage.py
# must not shadow the package or the coverage library.
SCRIPTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts")
if SCRIPTS not in sys.path:
    sys.path.append(SCRIPTS)
torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
