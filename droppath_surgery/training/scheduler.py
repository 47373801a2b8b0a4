"""``DropPathScheduler``: sets a patched model's rates from a time schedule, step by step; resumable.

Rates change by writing each DropPath's float32 ``keep_prob`` buffer in place, so a model under
``torch.compile`` does not recompile when the rate changes; only crossing 0 does, once in each
direction (a rate of exactly 0 takes the identity path).
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Sequence
from typing import Any, Union

from torch import nn

from ..api import set_drop_path_rate
from ..checks import validate_rate
from ..errors import InvalidRateError, NotPatchedError, ScheduleError
from ..execute import patched_modules
from ..integrations.wrappers import unwrap_model
from ..schedules import describe, schedule_names
from .time_schedules import Constant

__all__ = ["DropPathScheduler", "PerLayer", "check_arguments"]

PerLayer = Union[str, Sequence[float], Callable[[int, int], float]]
_UNITS = ("step", "epoch")


def _check_per_layer(per_layer: Any) -> PerLayer | None:
    if per_layer is None:  # the model's own, checked when the scheduler meets the model
        return None
    if isinstance(per_layer, str):
        if per_layer not in schedule_names():
            raise ScheduleError(
                f"per_layer must be a schedule name ({', '.join(schedule_names())}; 'timm': timm's own per-branch "
                f"rates, on a timm model), a list of per-block factors in [0, 1] or a callable (block_index, "
                f"num_blocks) -> factor, got {per_layer!r}."
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
        f"per_layer must be a schedule name, a list of per-block factors or a callable, "
        f"got {type(per_layer).__name__}."
    )


def check_arguments(schedule: Any, per_layer: Any, unit: str) -> tuple[Callable[[float], float], PerLayer | None]:
    """Validate a scheduler's arguments; a number becomes ``Constant(number)``."""
    if isinstance(schedule, numbers.Real) and not isinstance(schedule, bool):
        schedule = Constant(float(schedule))
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
        per_layer: how the top rate is spread over blocks: None (the default) keeps the per-layer
            schedule the model was patched with; any schedule name (``"linear"``, ``"uniform"``,
            ``"efficientnet"``), ``"timm"`` (on a timm model: per branch, the rates timm's constructor
            gives, scaled to the top rate), a list with one factor in [0, 1] per block (block rate =
            top rate * factor), or a callable ``(block_index, num_blocks) -> factor``.
        unit: ``"step"`` (call ``step()`` after every optimizer step) or ``"epoch"`` (after every
            epoch). The callbacks read it; the scheduler only counts calls.

    The rate for ``t = 0`` is set at construction; ``step()`` moves to ``t + 1``. ``state_dict()``
    holds the count, and ``load_state_dict`` sets the rate for it, so a resumed run continues the
    schedule where it stopped.
    """

    def __init__(self, model: Any, schedule: Any, *, per_layer: PerLayer | None = None, unit: str = "step") -> None:
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
        if per_layer is None:  # the per-layer schedule the model was patched with
            per_layer = drops[0].patch.schedule
            if not isinstance(per_layer, str):
                raise ScheduleError(
                    f"the model was patched with {describe(per_layer)} (it gives the rates itself, so a top rate "
                    f"over time has nothing to scale); pass per_layer= a schedule name such as 'linear', or a "
                    f"list of per-block factors in [0, 1]."
                )
        schedule, checked = check_arguments(schedule, per_layer, unit)
        assert checked is not None
        self.model = inner
        self.schedule = schedule
        self.per_layer: PerLayer = checked
        self.unit = unit
        self.num_blocks = drops[0].patch.plan.num_blocks
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
            for branch in drop.patch.site.branches:
                rates[branch.block] = drop.rate_of(branch.call)
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
        return self.rate

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
