"""Per-block drop rates: named schedules, explicit lists and callables, all validated.

All residual branches of a block share the block's rate (a block here is a unit of the schedule:
see ``trace.py``; DaViT's spatial/channel pair is one). Blocks are numbered 0..n-1 in the order the
forward pass runs them, across all stages.

Named schedules (``rate`` is the rate of the deepest block):

* ``"linear"``: timm's and BEiT's/Swin's/ConvNeXt's convention, ``linspace(0, rate, n)``: the first
  block gets 0, the last gets ``rate``. Computed exactly as timm's ``calculate_drop_path_rates``
  (a float32 ``torch.linspace``), so the per-module rates are identical to
  ``timm.create_model(name, drop_path_rate=rate)``.
* ``"uniform"``: every block gets ``rate`` (DeiT III, DINOv2).
* ``"efficientnet"``: ``rate * i / n``, the convention of timm's EfficientNet / MobileNet builder
  and torchvision's EfficientNet: the first block gets 0 and the last stays below ``rate``. Blocks
  without a residual branch (a strided block) still count in ``n`` and in ``i``, as there.

ResNet's ``rate * i / (n - 1)`` (timm ResNet, torchvision Swin/ConvNeXt, HF Swin) is ``"linear"``
(equal to float32 rounding, below 1e-7).

Conventions that depend on *which* block or branch it is rather than on the block's index (timm
keeps CaiT's and XCiT's class-attention blocks at rate 0, VOLO's outlookers at 0 while counting
them, NextViT scales the rate per branch) are not functions of ``(rate, n)``. For them:

* ``"timm"``: on a timm model, each branch gets ``rate`` times the rate timm's own constructor
  gives it at ``drop_path_rate=1`` (read off a meta-device build; see ``timm_schedule.py``): the
  rates of ``timm.create_model(name, drop_path_rate=rate)``, every family's convention included.
* a mapping ``{site path: rate}`` gives each branch its own rate, keyed by the ``path`` of the
  report's sites (``find_residual_branches(model).sites``); every site needs one.

An explicit list gives one rate per block; a callable ``f(block_index, num_blocks) -> rate`` is
called once per block. Lists, mappings and callables give the rates themselves, so the ``rate``
argument is not used with them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Union

import torch

from .errors import InvalidRateError, ScheduleError
from .ops import validate_rate
from .report import Target
from .timm_schedule import timm_rates

__all__ = ["Schedule", "SCHEDULES", "TIMM", "block_rates", "branch_rates"]

Schedule = Union[str, Sequence[float], Mapping[str, float], Callable[[int, int], float]]

TIMM = "timm"  # the model-dependent named schedule: per branch, the rate timm's constructor gives


def _linear(rate: float, n: int) -> list[float]:
    return [float(v) for v in torch.linspace(0.0, rate, n, dtype=torch.float32, device="cpu")]


def _uniform(rate: float, n: int) -> list[float]:
    return [rate] * n


def _efficientnet(rate: float, n: int) -> list[float]:
    return [rate * i / n for i in range(n)]


SCHEDULES: dict[str, Callable[[float, int], list[float]]] = {
    "linear": _linear,
    "uniform": _uniform,
    "efficientnet": _efficientnet,
}


def describe(schedule: Schedule) -> str:
    """A short human-readable name of a schedule, for reports."""
    if isinstance(schedule, str):
        return schedule
    if isinstance(schedule, Mapping):
        return "per-branch mapping"
    if callable(schedule):
        return f"callable {getattr(schedule, '__name__', type(schedule).__name__)}"
    return "explicit list"


def block_rates(rate: float | None, schedule: Schedule, num_blocks: int) -> list[float]:
    """The drop rate of each of ``num_blocks`` blocks, validated.

    Raises ``InvalidRateError`` for a bad ``rate`` and ``ScheduleError`` for a bad schedule; each
    message says what to pass instead.
    """
    if isinstance(schedule, str):
        if schedule not in SCHEDULES:
            raise ScheduleError(
                f"unknown schedule {schedule!r}; pass one of {sorted(SCHEDULES)} (or {TIMM!r} when patching a "
                f"timm model), a list with one rate per block ({num_blocks} here), a mapping of per-branch "
                f"rates or a callable (block_index, num_blocks) -> rate."
            )
        top = validate_rate(rate, "rate")
        rates = SCHEDULES[schedule](top, num_blocks)
    elif callable(schedule):
        rates = []
        for i in range(num_blocks):
            value = schedule(i, num_blocks)
            try:
                rates.append(validate_rate(value, f"schedule({i}, {num_blocks})"))
            except InvalidRateError as exc:
                raise ScheduleError(f"the schedule callable returned an invalid rate: {exc}") from None
        return rates
    elif isinstance(schedule, Sequence) and not isinstance(schedule, (bytes, bytearray)):
        if len(schedule) != num_blocks:
            raise ScheduleError(
                f"a list schedule needs one rate per block: the model has {num_blocks} blocks with "
                f"residual branches, the list has {len(schedule)}; pass a list of length {num_blocks}, "
                f"or a named schedule such as 'linear'."
            )
        rates = schedule
    elif isinstance(schedule, torch.Tensor):
        return block_rates(rate, schedule.tolist(), num_blocks)
    else:
        raise ScheduleError(
            f"schedule must be a name ({sorted(SCHEDULES)} or {TIMM!r}), a list of per-block rates, a mapping "
            f"of per-branch rates or a callable (block_index, num_blocks) -> rate, got {type(schedule).__name__}."
        )
    out = []
    for i, value in enumerate(rates):
        try:
            out.append(validate_rate(value, f"rate of block {i}"))
        except InvalidRateError as exc:
            raise ScheduleError(str(exc)) from None
    return out


def _mapped_rates(schedule: Mapping, paths: Sequence[str]) -> list[float]:
    missing = [p for p in paths if p not in schedule]
    unknown = [k for k in schedule if k not in set(paths)]
    if missing or unknown:
        parts = []
        if missing:
            parts.append(f"{len(missing)} sites have no rate: {', '.join(map(repr, missing[:4]))}{' ...' if len(missing) > 4 else ''}")
        if unknown:
            parts.append(f"{len(unknown)} keys are not sites: {', '.join(map(repr, unknown[:4]))}{' ...' if len(unknown) > 4 else ''}")
        raise ScheduleError(
            f"a mapping schedule needs exactly one rate per branch: {'; '.join(parts)}; key it by the paths of "
            f"the report's sites (find_residual_branches(model).sites[i].path)."
        )
    out = []
    for p in paths:
        try:
            out.append(validate_rate(schedule[p], f"rate of {p!r}"))
        except InvalidRateError as exc:
            raise ScheduleError(str(exc)) from None
    return out


def branch_rates(
    model, rate: float | None, schedule: Schedule, num_blocks: int, targets: Sequence[Target]
) -> list[float | None]:
    """The drop rate of each target (one per DropPath: where it is attached, its block), validated:
    per block for names, lists and callables; per branch for ``"timm"`` and mappings. None only
    from ``"timm"``, for a branch timm builds no drop path slot for.
    """
    if isinstance(schedule, str) and schedule == TIMM:
        return timm_rates(model, validate_rate(rate, "rate"), targets)
    if isinstance(schedule, Mapping):
        return _mapped_rates(schedule, [t.path for t in targets])
    rates = block_rates(rate, schedule, num_blocks)
    return [rates[t.block] for t in targets]
