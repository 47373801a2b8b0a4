"""The plan: everything ``apply_drop_path`` will do, decided before the model changes.

Where drop path attaches: each branch has an end chain, the module calls that returned its output,
innermost first. A module can carry drop path for a set of branches only if *every* call it made in
the traced pass ends one of those branches, they belong to one unit (one rate fits) and share a batch
dimension and an output index; containers never do. Per branch the architecture's own drop path
slot is chosen if it ends the branch, else the outermost usable module whose branches are not
already covered, so every branch is dropped exactly once per forward. A module also used elsewhere
(HF Swin's ``dropout``, applied to attention windows too) is never chosen.

How: a placeholder (``analysis.slots``) whose whole output is the branch is *replaced*; otherwise the
module is *hooked* (a DropPath child drops the branch tensor in its output). ``filter_fn`` and, with
``skip_dropped``, each branch's entries or reason to mask complete the plan. Everything left out is
listed with the reason.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import NamedTuple

from torch import nn

from .analysis import AnalysedBranch, Analysis, Segments
from .analysis.blocks import CONTAINERS
from .analysis.entries import branch_entries
from .analysis.slots import is_drop_path_slot, is_placeholder
from .errors import NoResidualBranchError
from .integrations import model_name
from .nn.skip import Entry

__all__ = ["FilterFn", "PlannedBranch", "PlannedSite", "LeftOut", "Plan", "Target", "make_plan", "NO_OWN_MODULE"]

FilterFn = Callable[[nn.Module, str], bool]

ROWS_MASK = (
    "the branch's batch dimension holds several rows per sample (attention windows, or frames or tokens folded into "
    "the batch): it is dropped per sample (all of a sample's rows together) by masking; running it on the kept "
    "samples' rows only is not supported"
)
PACKED_MASK = (
    "the branch runs on a packed stream (the rows of several samples in one sequence): it is dropped per sample "
    "(each segment of its block's boundaries) by masking; running it on the kept samples' rows only is not supported"
)
NO_OWN_MODULE = (
    "no module of its own ends this branch (every module that returns it is also used elsewhere), so drop path "
    "cannot be attached exactly"
)


class Target(NamedTuple):
    """What a schedule needs to rate one planned site: where it attaches and its block."""

    path: str
    kind: str  # "replace" (a placeholder is swapped) or "hook"
    block: int
    block_path: str


@dataclass(frozen=True)
class PlannedBranch:
    """One residual branch a site drops."""

    block: int  # number of its unit in the schedule, in execution order across all stages
    branch: int  # position among its unit's branches
    stack: int  # the chain of blocks (one residual stream) it belongs to
    block_path: str
    unit_path: str  # the module numbered in the schedule: the block, or a composite or stack member holding it
    batch_dim: int  # of the module output where drop path acts
    shape: tuple  # of that module output, as traced
    call: int = 0  # which call of the site's module returns this branch (a module shared across depths has several)
    rows_per_sample: int = 1  # entries of the batch dim that belong to one sample (attention windows, patches)
    interleaved: bool = False  # a sample's rows are B apart (row j * B + sample), not consecutive
    entries: tuple[Entry, ...] = ()  # with skip_dropped: where the branch takes in the batch
    mask_reason: str = ""  # with skip_dropped: why it must mask instead of skipping
    segments: Segments | None = None  # a packed branch: its block's call argument holding the samples' boundaries


@dataclass(frozen=True)
class PlannedSite:
    """Where one DropPath goes, how, and the branches it drops."""

    path: str
    module: nn.Module
    kind: str  # "replace" or "hook"
    output_index: tuple  # where in the module's output the branch tensor is (hooks)
    branches: tuple[PlannedBranch, ...]

    @property
    def block(self) -> int:
        return self.branches[0].block

    @property
    def batch_dim(self) -> int:
        return self.branches[0].batch_dim

    @property
    def rows_per_sample(self) -> int:
        return self.branches[0].rows_per_sample

    @property
    def interleaved(self) -> bool:
        return self.branches[0].interleaved

    @property
    def packed(self) -> bool:
        """The batch dim packs the rows of several samples; each call of a block sets their boundaries."""
        return self.branches[0].segments is not None

    @property
    def targets(self) -> tuple[Target, ...]:
        """What a schedule rates: one target per branch."""
        return tuple(Target(self.path, self.kind, br.block, br.block_path) for br in self.branches)


@dataclass(frozen=True)
class LeftOut:
    """A residual branch that was found but is not patched, and why."""

    path: str
    block_path: str
    reason: str


@dataclass(frozen=True)
class Plan:
    sites: tuple[PlannedSite, ...]  # in block order
    left_out: tuple[LeftOut, ...]
    num_blocks: int
    model_name: str
    stacks: tuple[int, ...] = ()  # the stack of each block (a block without branches: that of the block before it)
    not_run: tuple[str, ...] = ()  # repeated blocks the example inputs never ran ("path (n x Class)")

    def without(self, reasons: dict[int, str]) -> Plan:
        """The plan with the sites at these positions left out, each for its reason."""
        gone = tuple(LeftOut(s.path, br.block_path, reasons[i]) for i, s in enumerate(self.sites) if i in reasons for br in s.branches)
        kept = tuple(s for i, s in enumerate(self.sites) if i not in reasons)
        return replace(self, sites=kept, left_out=self.left_out + gone)

    def require_sites(self, model: nn.Module, found: int) -> None:
        """``NoResidualBranchError`` when nothing is left to patch."""
        if self.sites:
            return
        reasons = "; ".join(sorted({s.reason for s in self.left_out})) or "none attachable"
        raise NoResidualBranchError(
            f"found {found} residual branches in {type(model).__name__} but none can carry drop path ({reasons}); "
            f"relax filter_fn or pass example_inputs that exercise other branches."
        )


def _no_branch_error(model: nn.Module, analysis: Analysis) -> NoResidualBranchError:
    unrun = f" ({', '.join(analysis.unrun[:3])} did not run)" if analysis.unrun else ""
    if not analysis.left_out:
        return NoResidualBranchError(
            f"found no residual branch in {type(model).__name__}: drop path needs repeated blocks of the form "
            f"x = x + f(x) with a non-linear f. If the model has them but they did not run on the example "
            f"inputs{unrun}, pass example_inputs= that exercise them."
        )
    by_reason: dict[str, list[str]] = {}  # one line per reason, its branch ends listed once each
    for path, why in analysis.left_out:
        paths = by_reason.setdefault(why, [])
        if path not in paths:
            paths.append(path)
    reasons = "; ".join(
        f"{why} ({', '.join(paths[:3])}{f' and {len(paths) - 3} more' if len(paths) > 3 else ''})"
        for why, paths in by_reason.items()
    )
    more = f" If other blocks did not run on the example inputs{unrun}, pass example_inputs= that exercise them." if unrun else ""
    return NoResidualBranchError(
        f"found {len(analysis.left_out)} residual merges in {type(model).__name__} but no residual branch that "
        f"can carry drop path: {reasons}. Drop path needs repeated blocks of the form x = x + f(x) with a "
        f"non-linear f whose samples it can drop one by one.{more}"
    )


def _choose(analysis: Analysis) -> tuple[list[tuple[nn.Module, str, tuple, list[int]]], list[int]]:
    """(module, path, output index, branch numbers) per attachment, and the branches no module can carry."""
    branches = analysis.branches
    refs: dict[int, list[tuple[int, object]]] = {}  # id(module) -> [(branch number, end)]
    for b, ab in enumerate(branches):
        for end in ab.branch.ends:
            refs.setdefault(id(end.module), []).append((b, end))
    calls = analysis.recording.call_counts

    def usable(module: nn.Module, per_call: bool) -> bool:
        """Every call of ``module`` ends branches of one unit (of one unit in all, unless ``per_call``:
        a module run at several depths then drops a rate per call)."""
        if isinstance(module, CONTAINERS):
            return False
        entries = refs[id(module)]
        if len({end.call for _, end in entries}) != calls.get(id(module), 0):  # type: ignore[attr-defined]
            return False  # called elsewhere too, e.g. on attention windows
        units_per_call: dict[int, set[int]] = {}
        for b, end in entries:
            units_per_call.setdefault(end.call, set()).add(branches[b].unit)  # type: ignore[attr-defined]
        one_unit = len({u for units in units_per_call.values() for u in units}) == 1
        return (
            (one_unit or (per_call and all(len(units) == 1 for units in units_per_call.values())))
            and len({(branches[b].batch_dim, branches[b].rows_per_sample, branches[b].interleaved, branches[b].segments is None) for b, _ in entries}) == 1
            and len({end.output_index for _, end in entries}) == 1  # type: ignore[attr-defined]
        )

    covered: set[int] = set()
    chosen_all = []
    orphans = []
    for b, ab in enumerate(branches):
        if b in covered:
            continue
        ends = ab.branch.ends
        # The architecture's own drop path slot first (``drop_path1`` rather than a ``layer_scale1``
        # Identity on the same tensor), then the outermost module; a module run at several depths
        # (ALBERT's shared layer) only where no module of one depth ends the branch.
        candidates = sorted(reversed(ends), key=lambda e: not is_drop_path_slot(e.module, e.path))
        chosen = None
        for end in (e for per_call in (False, True) for e in candidates if usable(e.module, per_call)):
            group = sorted({i for i, _ in refs[id(end.module)]})
            if any(i in covered for i in group):
                continue
            chosen = (end, group)
            break
        if chosen is None:
            orphans.append(b)
            continue
        end, group = chosen
        covered.update(group)
        chosen_all.append((end.module, end.path, end.output_index, group))
    return chosen_all, orphans


def _call_of(ab: AnalysedBranch, module: nn.Module) -> int:
    """The call of ``module`` that returns this branch."""
    return next((end.call for end in ab.branch.ends if end.module is module), 0)


def make_plan(
    model: nn.Module, analysis: Analysis, *, filter_fn: FilterFn | None = None, skip: bool = False
) -> Plan:
    """Turn an analysis into a plan (see the module docstring). With ``skip``, every planned branch
    gets its entries or the reason it must mask."""
    if not analysis.branches:
        raise _no_branch_error(model, analysis)
    left_out = [LeftOut(path, "", why) for path, why in analysis.left_out]
    chosen, orphans = _choose(analysis)
    for b in orphans:
        ab = analysis.branches[b]
        left_out.append(LeftOut(ab.branch.end_path, ab.branch.block_path, NO_OWN_MODULE))
    index = analysis.index

    def planned(ab: AnalysedBranch, module: nn.Module) -> PlannedBranch:
        br = ab.branch
        pb = PlannedBranch(
            ab.unit, ab.position, ab.stack, br.block_path, index.path(br.unit), ab.batch_dim, ab.shape, _call_of(ab, module),
            ab.rows_per_sample, ab.interleaved, segments=ab.segments,
        )
        if not skip:
            return pb
        if ab.segments is not None:
            return replace(pb, mask_reason=PACKED_MASK)
        if ab.rows_per_sample > 1:
            return replace(pb, mask_reason=ROWS_MASK)
        found = branch_entries(analysis.recording, br, ab.batch_dim, ab.shape, index)
        return replace(pb, entries=found.entries, mask_reason=found.reason)

    sites = []
    for module, path, output_index, group in chosen:
        if filter_fn is not None and not filter_fn(module, path):
            left_out.extend(LeftOut(path, analysis.branches[b].branch.block_path, "filtered out by filter_fn") for b in group)
            continue
        kind = "replace" if is_placeholder(module) and output_index == () and path else "hook"
        sites.append(PlannedSite(path, module, kind, output_index, tuple(planned(analysis.branches[b], module) for b in group)))
    sites.sort(key=lambda s: (s.block, min(br.branch for br in s.branches)))
    return Plan(tuple(sites), tuple(left_out), analysis.num_units, model_name(model), _block_stacks(analysis), analysis.unrun)


def _block_stacks(analysis: Analysis) -> tuple[int, ...]:
    """The stack of every block number; blocks without branches (counted in the ramp, as timm's
    strided EfficientNet blocks) belong to the stack of the block before them (the first: after them)."""
    known = {ab.unit: ab.stack for ab in analysis.branches}
    out: list[int | None] = [known.get(b) for b in range(analysis.num_units)]
    last = next((s for s in out if s is not None), 0)
    for b, stack in enumerate(out):
        if stack is None:
            out[b] = last
        else:
            last = stack
    return tuple(s or 0 for s in out)
