"""Trainer callbacks (Hugging Face ``Trainer``, PyTorch Lightning): the public import path of
``droppath_surgery.integrations.callbacks``, where they are defined and built on first access."""

from __future__ import annotations

from typing import Any

__all__ = ["DropPathTrainerCallback", "DropPathLightningCallback"]


def __getattr__(name: str) -> Any:
    from .integrations import callbacks

    return getattr(callbacks, name)
