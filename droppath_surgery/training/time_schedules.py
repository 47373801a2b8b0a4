"""Time schedules: the top drop rate at step (or epoch) ``t``.

Each is a small frozen, picklable object, ``schedule(t) -> top rate``; any callable ``t -> rate``
works as well:

* ``Constant(rate)``;
* ``LinearWarmup(rate, warmup, start_rate=0.0)``: ``start_rate`` at ``t = 0`` up to ``rate`` at
  ``t = warmup``, then ``rate``;
* ``Early(rate, until)``: ``rate`` for ``t < until``, then 0 ("early dropout", Liu et al. 2023,
  *Dropout Reduces Underfitting*);
* ``Late(rate, start)``: 0 for ``t < start``, then ``rate`` (their "late" stochastic depth);
* ``Cosine(rate, total, final_rate=0.0)``: half a cosine from ``rate`` at ``t = 0`` to
  ``final_rate`` at ``t = total``, then ``final_rate``;
* ``ProgressiveLayerDrop(keep_min=0.5, gamma=0.001)``: DeepSpeed's progressive layer dropping, the
  keep probability ``(1 - keep_min) * exp(-gamma * t) + keep_min`` falling from 1 towards ``keep_min``.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any

from ..checks import validate_rate
from ..errors import InvalidRateError, ScheduleError

__all__ = ["TimeSchedule", "Constant", "LinearWarmup", "Early", "Late", "Cosine", "ProgressiveLayerDrop", "check_time"]


def check_time(value: Any, what: str, schedule: str) -> float:
    """A non-negative finite number of steps or epochs."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value < 0:
        raise ScheduleError(
            f"{schedule}: {what} must be a finite number of steps (or epochs) >= 0, got {value!r}; "
            f"pass e.g. {what}=1000."
        )
    return float(value)


def _rate(value: Any, what: str, schedule: str) -> float:
    try:
        return validate_rate(value, what)
    except InvalidRateError as exc:
        raise InvalidRateError(f"{schedule}: {exc}") from None


class TimeSchedule:
    """Base of the built-in time schedules: ``schedule(t)`` is the top drop rate at step/epoch ``t``."""

    def __call__(self, t: float) -> float:  # pragma: no cover - abstract
        raise NotImplementedError


@dataclass(frozen=True)
class Constant(TimeSchedule):
    """The same top rate at every step."""

    rate: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "rate", _rate(self.rate, "rate", "Constant"))

    def __call__(self, t: float) -> float:
        return self.rate


@dataclass(frozen=True)
class LinearWarmup(TimeSchedule):
    """``start_rate`` at ``t = 0`` rising linearly to ``rate`` at ``t = warmup``, then ``rate``."""

    rate: float
    warmup: float
    start_rate: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "rate", _rate(self.rate, "rate", "LinearWarmup"))
        object.__setattr__(self, "start_rate", _rate(self.start_rate, "start_rate", "LinearWarmup"))
        object.__setattr__(self, "warmup", check_time(self.warmup, "warmup", "LinearWarmup"))

    def __call__(self, t: float) -> float:
        if self.warmup == 0 or t >= self.warmup:
            return self.rate
        return self.start_rate + (self.rate - self.start_rate) * max(t, 0) / self.warmup


@dataclass(frozen=True)
class Early(TimeSchedule):
    """``rate`` for ``t < until``, then 0: early dropout / early stochastic depth (Liu et al. 2023)."""

    rate: float
    until: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "rate", _rate(self.rate, "rate", "Early"))
        object.__setattr__(self, "until", check_time(self.until, "until", "Early"))

    def __call__(self, t: float) -> float:
        return self.rate if t < self.until else 0.0


@dataclass(frozen=True)
class Late(TimeSchedule):
    """0 for ``t < start``, then ``rate``: late stochastic depth (Liu et al. 2023)."""

    rate: float
    start: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "rate", _rate(self.rate, "rate", "Late"))
        object.__setattr__(self, "start", check_time(self.start, "start", "Late"))

    def __call__(self, t: float) -> float:
        return self.rate if t >= self.start else 0.0


@dataclass(frozen=True)
class Cosine(TimeSchedule):
    """Half a cosine from ``rate`` at ``t = 0`` to ``final_rate`` at ``t = total``, then ``final_rate``."""

    rate: float
    total: float
    final_rate: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "rate", _rate(self.rate, "rate", "Cosine"))
        object.__setattr__(self, "final_rate", _rate(self.final_rate, "final_rate", "Cosine"))
        total = check_time(self.total, "total", "Cosine")
        if total == 0:
            raise ScheduleError("Cosine: total must be > 0 steps (the length of the cosine), got 0; pass e.g. total=10000.")
        object.__setattr__(self, "total", total)

    def __call__(self, t: float) -> float:
        if t >= self.total:
            return self.final_rate
        progress = max(t, 0) / self.total
        return self.final_rate + (self.rate - self.final_rate) * 0.5 * (1.0 + math.cos(math.pi * progress))


@dataclass(frozen=True)
class ProgressiveLayerDrop(TimeSchedule):
    """Progressive layer dropping: ``keep(t) = (1 - keep_min) * exp(-gamma * t) + keep_min``; rate ``1 - keep(t)``.

    DeepSpeed's defaults are ``keep_min = 0.5`` (its ``theta``) and ``gamma = 0.001``.
    """

    keep_min: float = 0.5
    gamma: float = 0.001

    def __post_init__(self) -> None:
        keep = self.keep_min
        if isinstance(keep, bool) or not isinstance(keep, numbers.Real) or not 0.0 <= float(keep) <= 1.0:
            raise ScheduleError(
                f"ProgressiveLayerDrop: keep_min must be a number in [0, 1] (the keep probability it "
                f"decays to), got {keep!r}; DeepSpeed uses 0.5."
            )
        object.__setattr__(self, "keep_min", float(keep))
        object.__setattr__(self, "gamma", check_time(self.gamma, "gamma", "ProgressiveLayerDrop"))

    def keep(self, t: float) -> float:
        return (1.0 - self.keep_min) * math.exp(-self.gamma * max(t, 0)) + self.keep_min

    def __call__(self, t: float) -> float:
        return min(1.0, max(0.0, 1.0 - self.keep(t)))
