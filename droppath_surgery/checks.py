"""Argument checks shared by the op, the engine and the training helpers: one rule per argument.

Each returns the normalized value or raises a ``DropPathError`` subclass whose message states the
rule, the value and the fix. They run before anything changes, so a bad argument never leaves a
model half patched.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

from .errors import BatchDimError, InvalidArgumentError, InvalidRateError

__all__ = ["validate_rate", "check_mode", "check_bool", "check_choice", "check_batch_dim", "MODES"]

MODES = ("row", "batch")


def validate_rate(rate: object, what: str = "rate") -> float:
    """Return ``rate`` as a float, or raise ``InvalidRateError`` if it is not finite and in [0, 1]."""
    if isinstance(rate, bool) or not isinstance(rate, numbers.Real):
        raise InvalidRateError(
            f"{what} must be a number in [0, 1] (the probability of dropping a sample's branch), "
            f"got {rate!r} of type {type(rate).__name__}; pass a float such as 0.1."
        )
    value = float(rate)
    if not math.isfinite(value) or not 0.0 <= value <= 1.0:
        raise InvalidRateError(
            f"{what} must be a finite number in [0, 1] (the probability of dropping a sample's "
            f"branch), got {value!r}; typical fine-tuning rates are 0.1 to 0.5."
        )
    return value


def check_choice(value: Any, what: str, choices: Sequence[str], meaning: str) -> str:
    """``value`` if it is one of ``choices``; ``meaning`` explains them in the error."""
    if not isinstance(value, str) or value not in choices:
        raise InvalidArgumentError(
            f"{what} must be one of {', '.join(repr(c) for c in choices)} ({meaning}), got {value!r}."
        )
    return value


def check_mode(mode: Any) -> str:
    return check_choice(mode, "mode", MODES, "'row' drops per sample, 'batch' drops the whole batch")


def check_bool(value: Any, what: str, meaning: str) -> bool:
    """``value`` if it is True or False: a truthy string such as ``"no"`` is a mistake, not a flag."""
    if not isinstance(value, bool):
        raise InvalidArgumentError(f"{what} must be True or False ({meaning}), got {value!r}; pass {what}=True or False.")
    return value


def check_batch_dim(batch_dim: Any, ndim: int | None = None, where: str = "") -> int:
    """An int that indexes a dimension (of a tensor with ``ndim`` dimensions, when given)."""
    if isinstance(batch_dim, bool) or not isinstance(batch_dim, numbers.Integral):
        raise BatchDimError(
            f"batch_dim must be an int, the dimension that indexes samples, got {batch_dim!r} of type "
            f"{type(batch_dim).__name__}; pass e.g. batch_dim=0 for (N, ...) layouts or 1 for (L, N, D)."
        )
    batch_dim = int(batch_dim)
    if ndim is not None and not -ndim <= batch_dim < ndim:
        raise BatchDimError(
            f"batch_dim={batch_dim} is out of range for {where or 'a tensor'} with {ndim} dimensions; pass "
            f"the dimension that indexes samples (0 for (N, ...) layouts, 1 for (L, N, D))."
        )
    return batch_dim
