"""Changing the model: attach the DropPaths a plan asks for, and take them off again.

Each DropPath attached carries its undo record in ``drop.patch`` (a ``PatchRecord``, the way
``torch.nn.utils.parametrize`` keeps the original on the module): the planned site, the module it
replaced and every registration of it, or the module it hooks and the hook's handle. Skip entry hooks
are kept, with their handles, in the DropPath's ``skip_states``; the pre-hooks that hand a packed
branch's DropPath its samples' boundaries at each call of its block in the record's
``segment_handles``. ``detach`` reads only these records (hooks go through their handles) and returns
them, so ``reattach`` can put the very same objects back if a later step fails. Attaching is atomic:
an error undoes what was done.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from . import nested
from .errors import UnsupportedModelError
from .nn import DropPath, SkipDropPath
from .nn.block import BlockDecision
from .nn.skip import SkipState
from .plan import Plan, PlannedSite

__all__ = [
    "CHILD_NAME", "PatchRecord", "DropBranchOutput", "SegmentsFromCall", "ResetCalls", "attach", "detach", "reattach", "patched_modules",
    "set_branch_rates", "Options",
]

CHILD_NAME = "surgery_drop_path"


@dataclass(frozen=True)
class Options:
    """How the DropPaths behave (the op's settings), and the skip settings (None: masked only)."""

    mode: str = "row"
    scale_by_keep: bool = True
    granularity: str = "branch"  # "block": one decision per sample per block, shared by its branches
    kept_count: str | None = None  # set: SkipDropPath with this kept count
    min_skip_rate: float = 0.0


@dataclass
class PatchRecord:
    """What one attached DropPath changed, enough to undo it exactly and to report it."""

    plan: Plan  # the plan it was attached by (block count, model name, branches left out)
    site: PlannedSite
    schedule: Any  # the schedule that rated it last: a name, a tuple of block rates, a mapping or a callable
    per_stack: bool = True  # whether that schedule ramped over each stack of blocks on its own
    granularity: str = "branch"  # "block": the branches of a block share one decision (and need one rate)
    registrations: list[tuple[nn.Module, str]] = field(default_factory=list)  # (parent, name) replaced
    handle: RemovableHandle | None = None  # the output hook of a "hook" site
    reset_handle: RemovableHandle | None = None  # a pre-hook on the model restarting the count of calls
    segment_handles: list[RemovableHandle] = field(default_factory=list)  # packed: pre-hooks on the blocks

    @property
    def original(self) -> nn.Module:
        """The module that was replaced, or that is hooked."""
        return self.site.module


class ResetCalls:
    """Forward pre-hook on the model: each forward pass, a DropPath with a rate per call counts its
    calls from 0, and block decisions are drawn afresh."""

    def __init__(self, drop: DropPath) -> None:
        self.drop = drop

    def __call__(self, module: nn.Module, args: Any) -> None:
        self.drop.reset_calls()


class SegmentsFromCall:
    """Forward pre-hook on a block of a packed stream: hands the DropPath its samples' boundaries, the
    block call's argument at ``location``."""

    def __init__(self, drop: DropPath, location: tuple) -> None:
        self.drop = drop
        self.location = tuple(location)

    def __call__(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        self.drop.segments = nested.get_at((args, kwargs), self.location)

    def __repr__(self) -> str:
        return f"SegmentsFromCall(location={self.location!r})"


class DropBranchOutput:
    """Forward hook: drops the branch tensor in a module's output with the module's DropPath child."""

    def __init__(self, output_index: tuple) -> None:
        self.output_index = tuple(output_index)

    def __call__(self, module: nn.Module, args: Any, output: Any) -> Any:
        drop = getattr(module, CHILD_NAME)
        return nested.replace_at(output, self.output_index, drop)

    def __repr__(self) -> str:
        return f"DropBranchOutput(output_index={self.output_index!r})"


def _registrations(root: nn.Module) -> dict[int, list[tuple[nn.Module, str]]]:
    """id(module) -> (parent, attribute name) of every place it is registered under ``root`` (a module
    registered under two names of one parent has both)."""
    by_path = dict(root.named_modules(remove_duplicate=False))
    out: dict[int, list[tuple[nn.Module, str]]] = {}
    for path, module in by_path.items():
        if path:
            parent_path, _, name = path.rpartition(".")
            entry = (by_path[parent_path], name)
            places = out.setdefault(id(module), [])
            if not any(p is entry[0] and n == name for p, n in places):
                places.append(entry)
    return out


def _new_drop(site: PlannedSite, rate: float, options: Options, warned: set[str]) -> DropPath:
    common: dict[str, Any] = dict(
        batch_dim=site.batch_dim, mode=options.mode, scale_by_keep=options.scale_by_keep, rows_per_sample=site.rows_per_sample,
        interleaved=site.interleaved,
    )
    if site.packed:  # dropped per segment by masking, in skip mode too (the plan says so)
        return DropPath(rate, packed=True, **common)
    if options.kept_count is None:
        return DropPath(rate, **common)
    drop = SkipDropPath(rate, kept_count=options.kept_count, min_skip_rate=options.min_skip_rate, **common)
    for br in site.branches:
        drop.skip_states.append(SkipState(drop, br.batch_dim, site.path, br.entries, br.mask_reason, warned))
    return drop


def _device_of(root: nn.Module, site: PlannedSite) -> torch.device | None:
    """Where the site's branch runs: the device of the first parameter or buffer of the site's module,
    else of its block, else of the model (None for a model with neither). The DropPath goes there, so
    that its rate buffer is read where the branch output is, with no copy from the host at each call."""
    block_path = site.branches[0].block_path
    block = root.get_submodule(block_path) if block_path else root
    for module in (site.module, block, root):
        for t in itertools.chain(module.parameters(), module.buffers()):
            return t.device
    return None


def _install(root: nn.Module, drop: DropPath) -> None:
    """Put an attached DropPath (whose record is filled) into the model."""
    record: PatchRecord = drop.patch
    site = record.site
    if len({br.block for br in site.branches}) > 1 or drop.decisions is not None:  # counts or decisions per pass
        record.reset_handle = root.register_forward_pre_hook(ResetCalls(drop))
    if site.kind == "replace":
        for parent, name in record.registrations:
            setattr(parent, name, drop)
    else:
        site.module.add_module(CHILD_NAME, drop)
        record.handle = site.module.register_forward_hook(DropBranchOutput(site.output_index))
    carriers = {(id(br.segments.block), br.segments.location): br.segments for br in site.branches if br.segments}
    for segments in carriers.values():
        hook = SegmentsFromCall(drop, segments.location)
        record.segment_handles.append(segments.block.register_forward_pre_hook(hook, with_kwargs=True))
    if isinstance(drop, SkipDropPath):
        for state in drop.skip_states:
            state.arm()


def _uninstall(drop: DropPath) -> None:
    record: PatchRecord = drop.patch
    if record.reset_handle is not None:
        record.reset_handle.remove()
        record.reset_handle = None
    if isinstance(drop, SkipDropPath):
        for state in drop.skip_states:
            state.unhook()
    for handle in record.segment_handles:
        handle.remove()
    record.segment_handles.clear()
    drop.segments = None
    if record.site.kind == "replace":
        for parent, name in record.registrations:
            setattr(parent, name, record.site.module)
    else:
        if record.handle is not None:
            record.handle.remove()
            record.handle = None
        delattr(record.site.module, CHILD_NAME)


def set_branch_rates(drop: DropPath, rates: Sequence[float]) -> None:
    """Give the branches of an attached DropPath their rates (in the order of its site's branches):
    one rate, or one per call of a module shared across depths."""
    site = drop.patch.site
    per_call = [0.0] * (max(br.call for br in site.branches) + 1)
    for br, rate in zip(site.branches, rates, strict=True):
        per_call[br.call] = rate
    if len({br.block for br in site.branches}) > 1:
        drop.set_call_rates(per_call)
    else:
        drop.rate = max(rates)


def attach(
    root: nn.Module, plan: Plan, rates: Sequence[Sequence[float]], *, schedule: Any, per_stack: bool, options: Options
) -> list[DropPath]:
    """Attach a DropPath for every planned site with the branch rates at the same position in
    ``rates`` and return them in plan order; on any error, undo what was done and re-raise."""
    drops: list[DropPath] = []
    registrations = _registrations(root) if any(site.kind == "replace" for site in plan.sites) else {}
    warned: set[str] = set()  # skip-mode warnings, given once per model
    decisions: dict[int, BlockDecision] = {}  # granularity="block": block number -> its shared decision
    try:
        for site, rate in zip(plan.sites, rates, strict=True):
            drop = _new_drop(site, 0.0, options, warned)
            device = _device_of(root, site)
            if device is not None:
                drop.to(device)
            if options.granularity == "block":
                by_call = {br.call: decisions.setdefault(br.block, BlockDecision(br.block)) for br in site.branches}
                drop.decisions = tuple(by_call[c] for c in sorted(by_call))
                for br, state in zip(site.branches, getattr(drop, "skip_states", [])):
                    state.decision = decisions[br.block]
            drop.train(site.module.training)
            drop.patch = PatchRecord(plan, site, schedule, per_stack, options.granularity)
            set_branch_rates(drop, rate)
            if site.kind == "replace":
                drop.patch.registrations = list(registrations.get(id(site.module), []))
            elif hasattr(site.module, CHILD_NAME):
                raise UnsupportedModelError(
                    f"{site.path} already has an attribute {CHILD_NAME!r}, where drop path would be "
                    f"attached; rename that attribute, or leave this branch out with filter_fn."
                )
            _install(root, drop)
            drops.append(drop)
    except BaseException:
        for drop in reversed(drops):
            _uninstall(drop)
        raise
    return drops


def patched_modules(root: nn.Module, *, ordered: bool = True) -> list[DropPath]:
    """Every DropPath attached by ``apply_drop_path``, each once (in block order when ``ordered``)."""
    found = [m for m in root.modules() if isinstance(m, DropPath) and isinstance(m.patch, PatchRecord)]
    if ordered:
        found.sort(key=lambda d: min((br.block, br.branch) for br in d.patch.site.branches))
    return found


def detach(root: nn.Module) -> list[DropPath]:
    """Take off every DropPath attached to ``root`` (the original modules go back, every hook goes
    through its handle) and return them, records kept, for ``reattach``."""
    drops = patched_modules(root)
    for drop in drops:
        _uninstall(drop)
    return drops


def reattach(root: nn.Module, drops: list[DropPath]) -> None:
    """Put back DropPaths returned by ``detach`` (the same objects, rates and skip settings)."""
    for drop in drops:
        _install(root, drop)
