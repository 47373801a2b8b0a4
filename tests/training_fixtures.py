"""Shared by tests/test_training_*.py: run them on one CPU thread.

Their models are tiny, so a second thread buys nothing, and on a machine shared with other jobs two
threads per process oversubscribe the cores: measured here, the training tests took 195 s with two
threads and 51 s with one under the same load. Import the fixture into a test module to use it.
"""

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def single_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
