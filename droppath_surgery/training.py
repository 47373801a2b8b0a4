"""Drop rates over training time, a resumable scheduler, and mask sync across ranks.

The per-layer schedule (``"linear"``: 0 at the first block up to the top rate at the last) says how
the rate is spread over depth; a *time schedule* says what the top rate is at step (or epoch) ``t``:

    from droppath_surgery import apply_drop_path
    from droppath_surgery.training import DropPathScheduler, LinearWarmup

    apply_drop_path(model, 0.1)
    scheduler = DropPathScheduler(model, LinearWarmup(0.1, warmup=1000))
    for batch in loader:
        loss = ...; loss.backward(); optimizer.step(); optimizer.zero_grad()
        scheduler.step()                      # rate for the next step, written in place

Time schedules (each a small picklable object, ``schedule(t) -> top rate``; any callable
``t -> rate`` works too):

* ``Constant(rate)``;
* ``LinearWarmup(rate, warmup, start_rate=0.0)``: ``start_rate`` at ``t = 0`` up to ``rate`` at
  ``t = warmup``, then ``rate``;
* ``Early(rate, until)``: ``rate`` for ``t < until``, then 0 ("early dropout", Liu et al. 2023,
  *Dropout Reduces Underfitting*, which turns drop path on for the first iterations only);
* ``Late(rate, start)``: 0 for ``t < start``, then ``rate`` (their "late" stochastic depth);
* ``Cosine(rate, total, final_rate=0.0)``: half a cosine from ``rate`` at ``t = 0`` to
  ``final_rate`` at ``t = total``, then ``final_rate`` (``rate < final_rate`` rises instead);
* ``ProgressiveLayerDrop(keep_min=0.5, gamma=0.001)``: progressive layer dropping (Zhang and He
  2020, DeepSpeed): the keep probability ``keep(t) = (1 - keep_min) * exp(-gamma * t) + keep_min``
  falls from 1 towards ``keep_min``, so the top rate is ``1 - keep(t)``.

Rates change by writing each DropPath's float32 ``keep_prob`` buffer in place, so a model under
``torch.compile`` does not recompile when the rate changes; only crossing 0 does, once in each
direction (a rate of exactly 0 takes the identity path). ``Early``, ``Late`` and warmups from 0
cross it once.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Union

from torch import nn

from .errors import DistributedError, InvalidRateError, NotPatchedError, ScheduleError
from .ops import validate_rate
from .patch import info_of, patched_modules
from .schedules import TIMM
from .surgery import set_drop_path_rate, unwrap_model

__all__ = [
    "TimeSchedule",
    "Constant",
    "LinearWarmup",
    "Early",
    "Late",
    "Cosine",
    "ProgressiveLayerDrop",
    "DropPathScheduler",
    "unwrap_model",
    "sync_drop_path_masks",
]

PerLayer = Union[str, Sequence[float], Callable[[int, int], float]]
_UNITS = ("step", "epoch")


def _time(value: Any, what: str, schedule: str) -> float:
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
        object.__setattr__(self, "warmup", _time(self.warmup, "warmup", "LinearWarmup"))

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
        object.__setattr__(self, "until", _time(self.until, "until", "Early"))

    def __call__(self, t: float) -> float:
        return self.rate if t < self.until else 0.0


@dataclass(frozen=True)
class Late(TimeSchedule):
    """0 for ``t < start``, then ``rate``: late stochastic depth (Liu et al. 2023)."""

    rate: float
    start: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "rate", _rate(self.rate, "rate", "Late"))
        object.__setattr__(self, "start", _time(self.start, "start", "Late"))

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
        total = _time(self.total, "total", "Cosine")
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
        object.__setattr__(self, "gamma", _time(self.gamma, "gamma", "ProgressiveLayerDrop"))

    def keep(self, t: float) -> float:
        return (1.0 - self.keep_min) * math.exp(-self.gamma * max(t, 0)) + self.keep_min

    def __call__(self, t: float) -> float:
        return min(1.0, max(0.0, 1.0 - self.keep(t)))


def _check_per_layer(per_layer: Any) -> PerLayer:
    if isinstance(per_layer, str):
        if per_layer not in ("linear", "uniform", TIMM):
            raise ScheduleError(
                f"per_layer must be 'linear', 'uniform', 'timm' (timm's own per-branch rates, on a timm model), "
                f"a list of per-block factors in [0, 1] or a callable (block_index, num_blocks) -> factor, got {per_layer!r}."
            )
        return per_layer
    if callable(per_layer):
        return per_layer
    if isinstance(per_layer, Sequence) and not isinstance(per_layer, (bytes, bytearray)):
        factors = []
        for i, f in enumerate(per_layer):
            try:
                factors.append(validate_rate(f, f"per_layer[{i}]"))
            except InvalidRateError as exc:
                raise ScheduleError(f"per_layer factors multiply the top rate and must be in [0, 1]: {exc}") from None
        return factors
    raise ScheduleError(
        f"per_layer must be 'linear', 'uniform', a list of per-block factors or a callable, "
        f"got {type(per_layer).__name__}."
    )


def check_arguments(schedule: Any, per_layer: Any, unit: str) -> tuple[Callable[[float], float], PerLayer]:
    """Validate a scheduler's arguments; a number becomes ``Constant(number)``."""
    if isinstance(schedule, numbers.Real) and not isinstance(schedule, bool):
        schedule = Constant(schedule)
    if not callable(schedule):
        raise ScheduleError(
            f"schedule must be a time schedule such as LinearWarmup(0.1, warmup=1000) or a callable "
            f"t -> rate, got {type(schedule).__name__}."
        )
    if unit not in _UNITS:
        raise ScheduleError(f"unit must be 'step' (per optimizer step) or 'epoch', got {unit!r}.")
    return schedule, _check_per_layer(per_layer)


class DropPathScheduler:
    """Sets the drop rate of a patched model from a time schedule; resumable.

    Args:
        model: a model patched by ``apply_drop_path`` (a ``torch.compile`` or DDP wrapper of it is
            unwrapped).
        schedule: a time schedule (``Constant``, ``LinearWarmup``, ``Early``, ``Late``, ``Cosine``,
            ``ProgressiveLayerDrop``), any callable ``t -> top rate``, or a number (constant).
        per_layer: how the top rate is spread over blocks: ``"linear"`` (timm's, the default),
            ``"uniform"``, ``"timm"`` (on a timm model: per branch, the rates timm's constructor
            gives, scaled to the top rate), a list with one factor in [0, 1] per block (block rate =
            top rate * factor), or a callable ``(block_index, num_blocks) -> factor``.
        unit: ``"step"`` (call ``step()`` after every optimizer step) or ``"epoch"`` (after every
            epoch). The callbacks read it; the scheduler only counts calls.

    The rate for ``t = 0`` is set at construction; ``step()`` moves to ``t + 1``. ``state_dict()``
    holds the count, and ``load_state_dict`` sets the rate for it, so a resumed run continues the
    schedule where it stopped.
    """

    def __init__(self, model: Any, schedule: Any, *, per_layer: PerLayer = "linear", unit: str = "step") -> None:
        inner = unwrap_model(model)
        if not isinstance(inner, nn.Module):
            raise NotPatchedError(
                f"DropPathScheduler needs a model patched by apply_drop_path, got {type(model).__name__}."
            )
        drops = patched_modules(inner)
        if not drops:
            raise NotPatchedError(
                f"{type(inner).__name__} has no drop path to schedule; call apply_drop_path(model, rate) "
                f"before creating the DropPathScheduler."
            )
        schedule, per_layer = check_arguments(schedule, per_layer, unit)
        self.model = inner
        self.schedule = schedule
        self.per_layer = per_layer
        self.unit = unit
        self.num_blocks = info_of(drops[0]).num_blocks
        if not isinstance(self.per_layer, str):
            factors = self.per_layer
            if callable(factors):
                factors = [self._factor(factors, i) for i in range(self.num_blocks)]
            if len(factors) != self.num_blocks:
                raise ScheduleError(
                    f"per_layer needs one factor per block: the model has {self.num_blocks} blocks, the "
                    f"list has {len(factors)}; pass a list of length {self.num_blocks} or 'linear'."
                )
            self._factors: list[float] | None = list(factors)
        else:
            self._factors = None
        self.t = 0
        self.rate: float | None = None
        self._apply()

    def _factor(self, fn: Callable[[int, int], float], i: int) -> float:
        try:
            return validate_rate(fn(i, self.num_blocks), f"per_layer({i}, {self.num_blocks})")
        except InvalidRateError as exc:
            raise ScheduleError(f"the per_layer callable returned an invalid factor: {exc}") from None

    def rate_at(self, t: float) -> float:
        """The top rate the schedule gives at ``t``, validated."""
        value = self.schedule(t)
        try:
            return validate_rate(value, f"schedule({t})")
        except InvalidRateError as exc:
            raise ScheduleError(f"the time schedule returned an invalid rate: {exc}") from None

    def block_rates(self) -> list[float]:
        """The current rate of each block (after the per-layer schedule)."""
        rates = [0.0] * self.num_blocks
        for drop in patched_modules(self.model):
            for site in info_of(drop).sites:
                rates[site.block] = drop.rate
        return rates

    def _apply(self, force: bool = False) -> None:
        rate = self.rate_at(self.t)
        if rate == self.rate and not force:
            return
        if self._factors is None:
            set_drop_path_rate(self.model, rate, schedule=self.per_layer)
        else:
            set_drop_path_rate(self.model, schedule=[rate * f for f in self._factors])
        self.rate = rate

    def step(self) -> float:
        """Advance by one step (or epoch) and set its rate; returns the new top rate."""
        self.t += 1
        self._apply()
        return self.rate  # type: ignore[return-value]

    def set_time(self, t: int) -> float:
        """Jump to step (or epoch) ``t`` (e.g. a trainer's global step) and set its rate."""
        if isinstance(t, bool) or not isinstance(t, numbers.Integral) or t < 0:
            raise ScheduleError(f"t must be a step or epoch count, an int >= 0, got {t!r}.")
        self.t = int(t)
        self._apply()
        return self.rate  # type: ignore[return-value]

    def state_dict(self) -> dict[str, Any]:
        """What a resumed run needs: the step (or epoch) count. The rate is kept for reference."""
        return {"t": self.t, "unit": self.unit, "rate": self.rate}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a saved count; the rate is recomputed from this scheduler's schedule."""
        if not isinstance(state, dict) or "t" not in state:
            raise ScheduleError(
                f"load_state_dict needs the dict returned by DropPathScheduler.state_dict() (with key 't'), "
                f"got {state!r:.80}."
            )
        if state.get("unit", self.unit) != self.unit:
            raise ScheduleError(
                f"the saved scheduler counted {state['unit']}s and this one counts {self.unit}s; create "
                f"it with unit={state['unit']!r} to resume."
            )
        self.set_time(state["t"])
        self._apply(force=True)

    def __repr__(self) -> str:
        return f"DropPathScheduler(t={self.t} {self.unit}s, rate={self.rate}, schedule={self.schedule!r})"


def sync_drop_path_masks(model: Any, group: Any = None, *, enabled: bool = True) -> int:
    """Make every rank of a process group use the same drop path masks (those of its first rank).

    By default each rank draws its own masks from its own global RNG (independent masks when ranks
    are seeded differently). With sync on, each DropPath call draws as usual and then broadcasts
    its ``N`` uniform numbers from the group's first rank: one small collective per call, traceable
    by ``torch.compile``, no host synchronization on NCCL. Gradient checkpointing recomputes the same
    masks (the draw is repeated from the restored RNG and broadcast again).

    Every rank must run the same DropPath calls in the same order with the same batch size (DDP
    and FSDP training does). A dedicated group (``torch.distributed.new_group()``) keeps these
    broadcasts apart from DDP's gradient all-reduces. Returns the number of DropPath modules set.

    Args:
        model: a patched model, or a DDP / ``torch.compile`` wrapper of one.
        group: a ``torch.distributed`` process group; the default group when None.
        enabled: False turns sync off again (each rank draws its own masks).
    """
    inner = unwrap_model(model)
    drops = patched_modules(inner) if isinstance(inner, nn.Module) else []
    if not drops:
        raise NotPatchedError(
            f"{type(inner).__name__} has no drop path whose masks could be synced; call apply_drop_path first."
        )
    name = None
    if enabled:
        import torch.distributed as dist

        if not dist.is_available() or not dist.is_initialized():
            raise DistributedError(
                "sync_drop_path_masks needs an initialized torch.distributed process group (masks are "
                "broadcast from the first rank); call torch.distributed.init_process_group(...) first, "
                "or leave masks per rank."
            )
        pg = group if group is not None else dist.group.WORLD
        name = getattr(pg, "group_name", None)
        if not isinstance(name, str):
            raise DistributedError(
                f"group must be a torch.distributed ProcessGroup (or None for the default group), got "
                f"{type(group).__name__}."
            )
    for drop in drops:
        drop.sync_group = name
    return len(drops)
