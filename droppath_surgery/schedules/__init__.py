"""Schedules rate a plan: the drop rate of every planned site.

* Named per-block shapes (``shapes.SHAPES``: ``"linear"``, ``"uniform"``, ``"efficientnet"``; ``rate``
  is the top rate), a list with one rate per block, or a callable ``(block_index, num_blocks) ->
  rate``: every branch of a block (a unit of the schedule) gets the block's rate; blocks are numbered
  in execution order across all stages.
* A mapping ``{site path: rate}``: a rate per branch; it must name every site.
* Per-site schedules registered by name (``register_site_schedule``) rate each site from the model
  itself, and may leave a site out with a reason (``LeaveOut``); ``"timm"`` (``timm_rates``: the rate
  timm's own constructor gives each branch) is one.

``rate_targets`` is the one place that turns a schedule into rates, for ``apply_drop_path``,
``find_residual_branches``, ``set_drop_path_rate`` and the training scheduler alike.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple, Union

import torch
from torch import nn

from ..checks import validate_rate
from ..errors import InvalidRateError, ScheduleError
from ..plan import PlannedSite, Target
from .shapes import SHAPES

__all__ = [
    "Schedule",
    "SCHEDULES",
    "LeaveOut",
    "SiteSchedule",
    "register_site_schedule",
    "schedule_names",
    "check_schedule",
    "block_rates",
    "rate_targets",
    "rate_sites",
    "describe",
    "remembered",
]

Schedule = Union[str, Sequence[float], Mapping[str, float], Callable[[int, int], float]]
SCHEDULES = SHAPES  # the named per-block shapes (public name)


class LeaveOut(NamedTuple):
    """A per-site schedule's answer for a site it gives no rate: leave it out, for this reason."""

    reason: str


SiteSchedule = Callable[[nn.Module, float, Sequence[Target]], list[Union[float, LeaveOut]]]
_SITE_SCHEDULES: dict[str, SiteSchedule] = {}


def register_site_schedule(name: str, schedule: SiteSchedule) -> None:
    """Make ``schedule=name`` rate each site with ``schedule(model, rate, targets)``."""
    if name in SCHEDULES:
        raise ValueError(f"{name!r} is already a named per-block schedule")
    _SITE_SCHEDULES[name] = schedule


def schedule_names() -> list[str]:
    """Every schedule that can be given by name."""
    return sorted([*SCHEDULES, *_SITE_SCHEDULES])


def remembered(schedule: Schedule) -> Schedule:
    """The schedule as a patched model keeps it: lists and tensors as tuples, mappings copied, so
    later changes to the caller's object do not change the model's schedule."""
    if isinstance(schedule, torch.Tensor):
        return tuple(schedule.tolist())
    if isinstance(schedule, Mapping):
        return dict(schedule)
    if isinstance(schedule, Sequence) and not isinstance(schedule, str):
        return tuple(schedule)
    return schedule


def describe(schedule: Schedule) -> str:
    """A short human-readable name of a schedule, for reports."""
    if isinstance(schedule, str):
        return schedule
    if isinstance(schedule, Mapping):
        return "per-branch mapping"
    if callable(schedule):
        return f"callable {getattr(schedule, '__name__', type(schedule).__name__)}"
    return "explicit list"


def _unknown(schedule: object, num_blocks: int | None = None) -> ScheduleError:
    blocks = f" ({num_blocks} here)" if num_blocks is not None else ""
    return ScheduleError(
        f"unknown schedule {schedule!r}; pass one of {schedule_names()}, a list with one rate per block{blocks}, "
        f"a mapping of per-branch rates or a callable (block_index, num_blocks) -> rate."
    )


def check_schedule(schedule: object, rate: object) -> None:
    """What can be checked before the model is traced: a known name with a valid top rate, or a list,
    mapping, tensor or callable."""
    if isinstance(schedule, str):
        if schedule not in SCHEDULES and schedule not in _SITE_SCHEDULES:
            raise _unknown(schedule)
        validate_rate(rate, "rate")
    elif not (callable(schedule) or isinstance(schedule, (Mapping, Sequence, torch.Tensor))) or isinstance(
        schedule, (bytes, bytearray)
    ):
        raise ScheduleError(
            f"schedule must be a name ({schedule_names()}), a list of per-block rates, a mapping of per-branch rates "
            f"or a callable (block_index, num_blocks) -> rate, got {type(schedule).__name__}."
        )


def _checked(value: object, what: str) -> float:
    try:
        return validate_rate(value, what)
    except InvalidRateError as exc:
        raise ScheduleError(str(exc)) from None


def block_rates(rate: float | None, schedule: Schedule, num_blocks: int) -> list[float]:
    """The drop rate of each of ``num_blocks`` blocks, validated: ``InvalidRateError`` for a bad
    ``rate``, ``ScheduleError`` for a bad schedule, each saying what to pass instead."""
    if isinstance(schedule, str):
        if schedule not in SCHEDULES:
            raise _unknown(schedule, num_blocks)
        return SCHEDULES[schedule](validate_rate(rate, "rate"), num_blocks)
    if isinstance(schedule, torch.Tensor):
        return block_rates(rate, schedule.tolist(), num_blocks)
    if callable(schedule):
        out = []
        for i in range(num_blocks):
            value = schedule(i, num_blocks)
            try:
                out.append(validate_rate(value, f"schedule({i}, {num_blocks})"))
            except InvalidRateError as exc:
                raise ScheduleError(f"the schedule callable returned an invalid rate: {exc}") from None
        return out
    if isinstance(schedule, Sequence) and not isinstance(schedule, (bytes, bytearray, Mapping)):
        if len(schedule) != num_blocks:
            raise ScheduleError(
                f"a list schedule needs one rate per block: the model has {num_blocks} blocks with "
                f"residual branches, the list has {len(schedule)}; pass a list of length {num_blocks}, "
                f"or a named schedule such as 'linear'."
            )
        return [_checked(value, f"rate of block {i}") for i, value in enumerate(schedule)]
    raise ScheduleError(
        f"schedule must be a name ({schedule_names()}), a list of per-block rates, a mapping of per-branch rates "
        f"or a callable (block_index, num_blocks) -> rate, got {type(schedule).__name__}."
    )


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
    return [_checked(schedule[p], f"rate of {p!r}") for p in paths]


def _per_stack(rate: float | None, schedule: Schedule, stacks: Sequence[int]) -> list[float]:
    """Block rates with every stack ramping on its own: a named shape or callable sees the block's
    position in its stack and the stack's length."""
    out = [0.0] * len(stacks)
    for stack in sorted(set(stacks)):
        blocks = [b for b, s in enumerate(stacks) if s == stack]
        for b, r in zip(blocks, block_rates(rate, schedule, len(blocks))):
            out[b] = r
    return out


def rate_targets(
    model: nn.Module,
    rate: float | None,
    schedule: Schedule,
    stacks: Sequence[int],
    targets: Sequence[Target],
    *,
    per_stack: bool = True,
) -> list[float | LeaveOut]:
    """The drop rate of each target (a branch: where it is dropped, its block), validated: per block
    for names, lists and callables (names and callables ramp over each stack of blocks on its own with
    ``per_stack``, over all blocks otherwise; ``stacks`` holds the stack of each block; a list has a
    rate for every block); per site for mappings and per-site schedules, which may answer ``LeaveOut``."""
    if isinstance(schedule, str) and schedule in _SITE_SCHEDULES:
        return _SITE_SCHEDULES[schedule](model, validate_rate(rate, "rate"), targets)
    if isinstance(schedule, Mapping):
        return list(_mapped_rates(schedule, [t.path for t in targets]))
    listed = isinstance(schedule, (Sequence, torch.Tensor)) and not isinstance(schedule, str)
    if per_stack and not listed and len(set(stacks)) > 1:
        rates = _per_stack(rate, schedule, stacks)
    else:
        rates = block_rates(rate, schedule, len(stacks))
    return [rates[t.block] for t in targets]


def rate_sites(
    model: nn.Module, rate: float | None, schedule: Schedule, stacks: Sequence[int], sites: Sequence[PlannedSite],
    *, per_stack: bool = True,
) -> list[tuple[float, ...] | LeaveOut]:
    """Per planned site, the rate of each of its branches (a module shared across depths has one per
    call), or ``LeaveOut`` when the schedule leaves out all of them; a branch left out among others
    gets 0."""
    values = rate_targets(model, rate, schedule, stacks, [t for site in sites for t in site.targets], per_stack=per_stack)
    out: list[tuple[float, ...] | LeaveOut] = []
    i = 0
    for site in sites:
        mine = values[i : i + len(site.branches)]
        i += len(mine)
        if all(isinstance(v, LeaveOut) for v in mine):
            out.append(mine[0])  # type: ignore[arg-type]
        else:
            out.append(tuple(0.0 if isinstance(v, LeaveOut) else v for v in mine))
    return out


from . import timm_rates as _timm_rates  # noqa: E402,F401  (registers the "timm" per-site schedule)
