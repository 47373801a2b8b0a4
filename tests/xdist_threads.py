"""pytest plugin (``-p xdist_threads`` in pyproject.toml): under pytest-xdist each worker process
uses one torch thread, so ``-n auto`` runs one test per core instead of two threads per test on
every core (oversubscribed: the training tests measured 4x slower that way on a shared machine)."""

import os


def pytest_configure(config) -> None:
    if os.environ.get("PYTEST_XDIST_WORKER"):
        os.environ["OMP_NUM_THREADS"] = "1"
        import torch

        torch.set_num_threads(1)
