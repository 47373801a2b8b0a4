"""Named per-block shapes: the rate of each of ``n`` blocks for a top rate ``rate``.

* ``"linear"``: ``rate * i / (n - 1)``, timm's ``linspace(0, rate, n)`` (and ResNet's, BEiT's, Swin's,
  ConvNeXt's), in float64: the last block gets exactly the ``rate`` asked for, and every rate equals
  ``timm.create_model(name, drop_path_rate=rate)``'s to float32 rounding (timm's float32 linspace).
* ``"uniform"``: ``rate`` everywhere (DeiT III, DINOv2).
* ``"efficientnet"``: ``rate * i / n``, timm's EfficientNet / MobileNet builder and torchvision's
  EfficientNet (the last block stays below ``rate``).
"""

from __future__ import annotations

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


SHAPES: dict[str, Callable[[float, int], list[float]]] = {
    "linear": _linear,
    "uniform": _uniform,
    "efficientnet": _efficientnet,
}
