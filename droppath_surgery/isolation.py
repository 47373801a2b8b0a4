"""Probing without side effects: eval mode, no grad, and the random state and train flags put back.

``observation`` is the context every probe and check runs in; ``rng_restored`` alone makes passes run
one after another draw the same random numbers (a model that is random in eval mode, ViT-MAE's patch
masking, repeats itself from pass to pass).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from . import nested

__all__ = ["observation", "rng_restored"]


def _cuda_devices(model: nn.Module, inputs: Any) -> list[int]:
    tensors = [*model.parameters(), *model.buffers(), *nested.tensors(inputs)]
    return sorted({t.device.index or 0 for t in tensors if t.is_cuda})


def rng_restored(model: nn.Module, inputs: Any = None) -> contextlib.AbstractContextManager:
    """The global random state (CPU and the CUDA devices of ``model`` and ``inputs``) saved and
    restored on exit."""
    return torch.random.fork_rng(devices=_cuda_devices(model, inputs))


@contextlib.contextmanager
def observation(model: nn.Module, inputs: Any = None) -> Iterator[None]:
    """Eval mode, no grad, RNG state saved and restored, every module's train flag restored exactly."""
    flags = [(m, m.training) for m in model.modules()]
    try:
        with rng_restored(model, inputs), torch.no_grad():
            model.eval()
            yield
    finally:
        for module, flag in flags:
            module.training = flag
