"""Named per-block shapes: the rate of each of ``n`` blocks for a top rate ``rate``.

* ``"linear"``: ``rate * i / (n - 1)``, timm's ``linspace(0, rate, n)`` (and ResNet's, BEiT's, Swin's,
  ConvNeXt's), in float64: the last block gets exactly the ``rate`` asked for, and every rate equals
  ``timm.create_model(name, drop_path_rate=rate)``'s to float32 rounding (timm's float32 linspace).
* ``"uniform"``: ``rate`` everywhere (DeiT III, DINOv2).
* ``"efficientnet"``: ``rate * i / n``, timm's EfficientNet / MobileNet builder and torchvision's
  EfficientNet (the last block stays below ``rate``).
* LayerSkip's / torchtune's layer-dropout scales, ``rate`` times a shape of ``t = i / (n - 1)`` that is
  0 at the first block and 1 at the last (a single block gets ``rate``): ``"exp"`` ``2^t - 1``,
  ``"log"`` ``log(i + 1) / log(n)``, ``"sin"`` ``sin(pi t / 2)``, ``"sigmoid"`` the logistic
  ``1 / (1 + e^(-10 (t - 1/2)))`` stretched to run from exactly 0 to 1 (torchtune's stays 0.007 off).
"""

from __future__ import annotations

import math
from collections.abc import Callable

__all__ = ["SHAPES"]


def _clean(x: float) -> float:
    """``x`` to 15 significant digits: ``0.1``, not ``0.09999999999999999``."""
    return float(f"{x:.15g}")


def _linear(rate: float, n: int) -> list[float]:
    return [_clean(rate * (i / (n - 1))) for i in range(n)] if n > 1 else [0.0] * n  # exact at both ends


def _uniform(rate: float, n: int) -> list[float]:
    return [rate] * n


def _efficientnet(rate: float, n: int) -> list[float]:
    return [_clean(rate * i / n) for i in range(n)]


def _scaled(shape: Callable[[float], float]) -> Callable[[float, int], list[float]]:
    """``rate * shape(i / (n - 1))`` for a shape from 0 at 0 to 1 at 1; one block gets ``rate``."""

    def rates(rate: float, n: int) -> list[float]:
        if n == 1:
            return [rate]
        return [_clean(rate * min(1.0, max(0.0, shape(i / (n - 1))))) for i in range(n)]

    return rates


def _log(rate: float, n: int) -> list[float]:
    return [rate] if n == 1 else [_clean(rate * math.log(i + 1) / math.log(n)) for i in range(n)]


def _logistic(t: float) -> float:
    return 1.0 / (1.0 + math.exp(-10.0 * (t - 0.5)))


SHAPES: dict[str, Callable[[float, int], list[float]]] = {
    "linear": _linear,
    "uniform": _uniform,
    "efficientnet": _efficientnet,
    "exp": _scaled(lambda t: 2.0**t - 1.0),
    "log": _log,
    "sin": _scaled(lambda t: math.sin(0.5 * math.pi * t)),
    "sigmoid": _scaled(lambda t: (_logistic(t) - _logistic(0.0)) / (_logistic(1.0) - _logistic(0.0))),
}

