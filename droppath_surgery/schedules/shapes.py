"""Named per-block shapes: the rate of each of ``n`` blocks for a top rate ``rate``.

* ``"linear"``: ``linspace(0, rate, n)`` computed as timm's ``calculate_drop_path_rates`` does (a
  float32 ``torch.linspace``), so the rates equal ``timm.create_model(name, drop_path_rate=rate)``'s;
  also ResNet's, BEiT's, Swin's and ConvNeXt's ``rate * i / (n - 1)`` to float32 rounding.
* ``"uniform"``: ``rate`` everywhere (DeiT III, DINOv2).
* ``"efficientnet"``: ``rate * i / n``, timm's EfficientNet / MobileNet builder and torchvision's
  EfficientNet (the last block stays below ``rate``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

__all__ = ["SHAPES"]


def _linear(rate: float, n: int) -> list[float]:
    return [float(v) for v in torch.linspace(0.0, rate, n, dtype=torch.float32, device="cpu")]


def _uniform(rate: float, n: int) -> list[float]:
    return [rate] * n


def _efficientnet(rate: float, n: int) -> list[float]:
    return [rate * i / n for i in range(n)]


SHAPES: dict[str, Callable[[float, int], list[float]]] = {
    "linear": _linear,
    "uniform": _uniform,
    "efficientnet": _efficientnet,
}
