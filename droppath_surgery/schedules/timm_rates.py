"""The ``"timm"`` per-site schedule: each branch gets the rate timm's own constructor gives it.

timm's conventions are not all functions of (rate, number of blocks): CaiT and XCiT keep their
class-attention blocks at 0, VOLO counts outlookers in the ramp at 0, NextViT scales the rate per
branch. So the architecture (``pretrained_cfg["architecture"]``) is built again at
``drop_path_rate=1`` on the meta device (cached) and read; every convention is linear in the rate,
so ``rate`` times that reading is timm's build at ``rate``. ``timm_rates`` says how branches map to
timm's slots.
"""

from __future__ import annotations

import collections
import functools
import warnings
from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
from torch import nn

from ..analysis.slots import is_drop_path_like
from ..errors import ScheduleError
from ..plan import Target
from . import LeaveOut, register_site_schedule

__all__ = ["timm_rates", "NO_TIMM_SLOT"]

NO_TIMM_SLOT = (
    "timm builds this block without a drop path slot at any rate, and schedule='timm' patches only where timm "
    "drops; use another schedule to patch it too"
)


class _Reading(NamedTuple):
    slots: dict[str, float]  # slot path -> rate at drop_path_rate=1 (0 for Identity / None)
    holders: dict[str, int]  # class name of a module holding a slot -> how many the build has


def _architecture(module: nn.Module) -> str | None:
    # Its own attribute, as timm's build sets it: wrappers that forward attribute lookups to the
    # model inside (PEFT's PeftModel / LoraModel) do not count, or paths would get the wrong prefix.
    cfg = vars(module).get("pretrained_cfg")
    arch = cfg.get("architecture") if isinstance(cfg, dict) else getattr(cfg, "architecture", None)
    return arch if isinstance(arch, str) and arch else None


def _timm_roots(model: nn.Module) -> dict[str, str]:
    """Path prefix -> architecture of the outermost timm models in ``model`` ("" for the model)."""
    arch = _architecture(model)
    if arch is not None:
        return {"": arch}
    roots: dict[str, str] = {}
    for path, module in model.named_modules(remove_duplicate=False):
        if any(path.startswith(p + ".") for p in roots):
            continue  # inside a timm model already found
        arch = _architecture(module)
        if arch is not None:
            roots[path] = arch
    return roots


_MISSING = object()


def _slot_rate(held: Any) -> float | None:
    """timm's rate at a drop path slot, or None if what is held there is not one."""
    if held is None or isinstance(held, nn.Identity):
        return 0.0
    if is_drop_path_like(held):
        value = getattr(held, "drop_prob", None)
        return float(value) if isinstance(value, (int, float)) else None
    return None


@functools.lru_cache(maxsize=32)
def _read(arch: str) -> _Reading:
    try:
        import timm
    except ImportError:
        raise ScheduleError("schedule='timm' reads timm's own rates and needs timm installed (pip install timm).") from None
    errors = []
    for device in ("meta", "cpu"):  # meta first: no memory; a real build where a constructor needs data
        try:
            # Weight init of a real build draws random numbers: the caller's RNG state must not move.
            with warnings.catch_warnings(), torch.random.fork_rng(devices=[]), torch.device(device):
                warnings.simplefilter("ignore")
                ref = timm.create_model(arch, pretrained=False, drop_path_rate=1.0)
            break
        except TypeError as exc:
            if "drop_path_rate" in str(exc):  # the family has no drop path: nothing to read, on any device
                raise ScheduleError(
                    f"schedule='timm' reads the rates timm's drop_path_rate gives, and timm's {arch!r} takes no "
                    f"drop_path_rate (timm has no drop path for it); use schedule='linear' or another named "
                    f"schedule, a list of per-block rates or a mapping of per-branch rates."
                ) from None
            errors.append(f"{device}: {type(exc).__name__}: {exc}")
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(f"{device}: {type(exc).__name__}: {exc}")
    else:
        raise ScheduleError(
            f"schedule='timm' rebuilds {arch!r} with drop_path_rate=1 to read timm's rates, and that failed "
            f"({'; '.join(errors)[:300]}); use a named schedule ('linear') or pass the rates as a list or mapping."
        )
    # A slot is any attribute under a name timm gives a DropPath in this build: the DropPath ones, and
    # those timm builds as Identity or None at rate 0 (first blocks, CaiT's class-attention blocks).
    names = {path.rpartition(".")[2] for path, module in ref.named_modules() if is_drop_path_like(module)}
    slots: dict[str, float] = {}
    holders: collections.Counter = collections.Counter()
    for path, module in ref.named_modules():
        held_any = False
        children = dict(module.named_children())
        for name in names:
            held = children[name] if name in children else vars(module).get(name, _MISSING)
            rate = _slot_rate(held)
            if rate is not None:
                slots[f"{path}.{name}" if path else name] = rate
                held_any = True
        if held_any:
            holders[type(module).__name__] += 1
    return _Reading(slots, dict(holders))


def _holder_counts(model: nn.Module, names: set[str]) -> dict[str, int]:
    counts: collections.Counter = collections.Counter()
    for module in model.modules():
        if type(module).__name__ in names:
            counts[type(module).__name__] += 1
    return dict(counts)


def timm_rates(model: nn.Module, rate: float, targets: Sequence[Target]) -> list[float | LeaveOut]:
    """``rate`` times timm's rate at each target; ``LeaveOut`` where timm has no slot for it.

    * a target replacing an architecture slot (``blocks.3.drop_path1``) takes that slot's rate: the
      ``drop_prob`` of timm's DropPath there, or 0 where timm builds ``Identity``;
    * any other target (a ResNet-style block whose slot is ``None`` at rate 0, so a module such as
      ``bn3`` is hooked) takes the rate of the slots inside its block that no target at a slot claims;
    * a target with no timm slot at it or in its block (a residual block timm builds without drop
      path at any rate: ViTamin's hybrid stem, CSATv2's transformer blocks) is left out.

    The modules holding timm's slots must be as many as in the rebuild (else the model was built with
    other arguments, such as ``depth``), and every target must lie inside a timm model (a wrapper's own
    blocks have no timm rate): ``ScheduleError`` otherwise.
    ScheduleError where the model is not a timm model or is built differently from its architecture."""
    roots = _timm_roots(model)
    if not roots:
        raise ScheduleError(
            f"schedule='timm' reads the rates timm's own constructor gives, and {type(model).__name__} is not a "
            f"timm model (no pretrained_cfg['architecture'] on it or inside it); use schedule='linear' (timm's "
            f"default ramp), 'uniform', a list of per-block rates or a mapping of per-branch rates."
        )
    readings = {}
    for prefix, arch in roots.items():
        reading = _read(arch)
        inner = model.get_submodule(prefix) if prefix else model
        here = _holder_counts(inner, set(reading.holders))
        if here != reading.holders:
            diff = ", ".join(f"{n}: {here.get(n, 0)} here, {c} in timm's build" for n, c in sorted(reading.holders.items())
                             if here.get(n, 0) != c)
            raise ScheduleError(
                f"schedule='timm' reads timm's rates from a fresh build of {arch!r}, but "
                f"{'this model' if not prefix else repr(prefix)} is built differently ({diff}: created with other "
                f"arguments, such as depth?); create it with timm.create_model({arch!r}, drop_path_rate=...) to "
                f"get timm's rates, or use schedule='linear' or a list of per-block rates."
            )
        readings[prefix] = reading

    def root_of(path: str) -> str | None:
        for prefix in sorted(roots, key=len, reverse=True):
            if not prefix or path == prefix or path.startswith(prefix + "."):
                return prefix
        return None

    def relative(path: str, prefix: str) -> str:
        return path[len(prefix) + 1:] if prefix else path

    outside = [t.path for t in targets if root_of(t.path) is None]
    if outside:
        raise ScheduleError(
            f"schedule='timm' gives rates only to branches inside timm models ({', '.join(repr(p) for p in roots)}); "
            f"{len(outside)} are outside: {', '.join(outside[:4])}{' ...' if len(outside) > 4 else ''}. Leave them "
            f"out with filter_fn, or pass a mapping of per-branch rates."
        )
    def at_slot(t: Target) -> bool:
        return t.kind == "replace" and relative(t.path, prefix_of[t.path]) in readings[prefix_of[t.path]].slots

    prefix_of = {t.path: root_of(t.path) or "" for t in targets}  # every target has a root (checked above)
    claimed = {t.path for t in targets if at_slot(t)}
    out: list[float | LeaveOut] = []
    for t in targets:
        prefix = prefix_of[t.path]
        reading = readings[prefix]
        unit: float | None
        if at_slot(t):
            unit = reading.slots[relative(t.path, prefix)]
        else:
            block = relative(t.block_path, prefix)
            units = {
                v for p, v in reading.slots.items()
                if p.startswith(block + ".") and (f"{prefix}.{p}" if prefix else p) not in claimed
            }
            if len(units) > 1:
                raise ScheduleError(
                    f"schedule='timm': the branch ending at {t.path!r} has no slot of its own, and its block "
                    f"{t.block_path!r} holds timm slots with different rates ({sorted(units)}), so which is its rate "
                    f"is ambiguous; pass a mapping of per-branch rates (see find_residual_branches(model).sites)."
                )
            unit = units.pop() if units else None
        out.append(LeaveOut(NO_TIMM_SLOT) if unit is None else rate * unit)
    return out


register_site_schedule("timm", timm_rates)
