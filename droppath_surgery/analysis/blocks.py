"""Residual merges -> branches of blocks: which merges are block branches, their block, their unit of
the rate schedule, and the units' numbering (``find_branches``, ``number_units``).

A branch must compute something (a positional convolution ``x + dwconv(x)`` does not, unless it ends
in a drop path slot) and belong to a block of the repeated stack: the innermost container element
running the merge, or one of several sibling modules of one class; residuals of stems, heads and a
block's internal parts are left out with the reason. Units are blocks or the repeated composites and
stack members that hold them, numbered in execution order as timm counts them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from .. import nested
from .merges import Merge
from .record import Recording
from .slots import holds_drop_path_slot, is_drop_path_slot

__all__ = ["CONTAINERS", "ModuleIndex", "BranchEnd", "Branch", "find_branches", "number_units", "branch_output_hooks"]

CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)

LINEAR_REASON = (
    "the branch is linear or per-channel (a positional or re-parameterizable convolution), not a block "
    "branch; blocks need a non-linear operation and one that mixes channels"
)
OUTSIDE_REASON = "outside the repeated block stack (stem, head, pooling or downsampling)"
INNER_REASON = (
    "a residual inside a part of its block, on a value that part computed itself, not on the block's "
    "stream (an attention's internal skip)"
)
SLOTLESS_REASON = (
    "its block class has no drop path slot while the model's other blocks have one: the architecture "
    "does not drop it (a stem, downsampling or side block)"
)


def path_shape(path: str) -> str:
    return re.sub(r"\d+", "*", path)


@dataclass
class ModuleIndex:
    """Paths and parents of a model's modules (the first path of a shared module wins)."""

    root: nn.Module
    paths: dict[int, str] = field(default_factory=dict)
    parents: dict[int, nn.Module | None] = field(default_factory=dict)
    named: dict[str, nn.Module] = field(default_factory=dict)

    @classmethod
    def of(cls, model: nn.Module) -> "ModuleIndex":
        index = cls(model)
        for name, m in model.named_modules(remove_duplicate=False):
            index.paths.setdefault(id(m), name)
        index.named = dict(model.named_modules())
        index.parents[id(model)] = None
        for module in model.modules():
            for child in module.children():
                index.parents.setdefault(id(child), module)
        return index

    def path(self, module: nn.Module, default: str = "") -> str:
        return self.paths.get(id(module), default)

    def in_container(self, module: nn.Module) -> bool:
        return isinstance(self.parents.get(id(module)), CONTAINERS) and not isinstance(module, CONTAINERS)

    def has_twin(self, module: nn.Module) -> bool:
        """One of several siblings of the same class (RegNet's ``s1.b1, s1.b2``, DLA's trees)."""
        parent = self.parents.get(id(module))
        if parent is None or isinstance(module, CONTAINERS):
            return False
        return any(child is not module and type(child) is type(module) for child in parent.children())

    def ancestors(self, module: nn.Module) -> list[nn.Module]:
        """``module`` and its ancestors, outermost first."""
        out = []
        m: nn.Module | None = module
        while m is not None:
            out.append(m)
            m = self.parents.get(id(m))
        return list(reversed(out))


@dataclass(frozen=True)
class BranchEnd:
    """A module call that returned the branch output, and where in its output the tensor was."""

    module: nn.Module
    path: str
    call: int
    output_index: tuple


@dataclass(frozen=True)
class Branch:
    """One residual branch of a block."""

    merge: Merge
    ends: tuple[BranchEnd, ...]  # innermost module call first
    block: nn.Module
    block_path: str
    unit: nn.Module  # the module numbered in the schedule: the block, its composite, or the stack member holding it

    @property
    def end_path(self) -> str:
        return self.ends[-1].path

    @property
    def unit_call(self) -> tuple[int, int]:
        """Which call of which unit module ran the merge: a module run at several depths (ALBERT's
        shared layer) is a unit per call."""
        for call in self.merge.stack:
            if call.module is self.unit:
                return id(self.unit), call.index
        return id(self.unit), 0


def branch_output_hooks(branches: dict[int, Branch], store: dict[int, Any]) -> list[tuple[nn.Module, str, Any]]:
    """Forward hooks ``(module, "forward", fn)`` that keep in ``store[i]`` a copy of branch ``i``'s output in a
    pass: what the call of its innermost end module that returned it in the recorded pass returns."""
    hooks = []
    for i, br in branches.items():
        end = br.ends[0]
        calls = [0]

        def keep(module: nn.Module, args: Any, output: Any, i: int = i, end: BranchEnd = end, calls: list = calls) -> None:
            if calls[0] == end.call:
                store[i] = nested.get_at(output, end.output_index).detach().clone()
            calls[0] += 1

        hooks.append((end.module, "forward", keep))
    return hooks


def _block_on_stack(stack: tuple, index: ModuleIndex) -> nn.Module | None:
    """The innermost container element running the merge; failing that, the module running it if
    it has a twin."""
    block = next((c.module for c in reversed(stack) if index.in_container(c.module)), None)
    if block is None and stack and index.has_twin(stack[-1].module):
        block = stack[-1].module
    return block


def _loop_block(stack: tuple, end_path: str, index: ModuleIndex) -> nn.Module | None:
    """For a merge run by a module that is no block (``for f in self.layers: x = x + f(x)``): the
    outermost container element below that module on the way to the branch end."""
    top = index.path(stack[-1].module)
    if top and not end_path.startswith(top + "."):
        return None
    module = stack[-1].module
    for part in (end_path[len(top) + 1 :] if top else end_path).split("."):
        child = dict(module.named_children()).get(part)
        if child is None:
            return None
        if isinstance(module, CONTAINERS):
            return child
        module = child
    return None


def _composite(block: nn.Module, index: ModuleIndex, blocks: set[int], by_shape: dict[str, list]) -> nn.Module:
    """The unit ``block`` belongs to: itself, or a repeated composite of *different* block classes
    each running residual branches, such that every container at a path of the same shape holds that
    same sequence of classes. A stage ``Sequential(downsample, Block, Block)`` is no composite (its
    downsample has no branch), nor is a stage mixing block classes that the other stages do not
    repeat (MobileNetV5), nor the one stack of a model (a hybrid decoder's ``layers``: linear attention and
    attention layers, SAM 3 LiteText's RepMixer and transformer layers): a composite repeats, so at least two
    containers have its path's shape."""
    parent = index.parents.get(id(block))
    if not isinstance(parent, CONTAINERS):
        return block
    signature = [type(c) for c in parent.children()]
    if len(set(signature)) < 2 or not all(id(c) in blocks for c in parent.children()):
        return block
    path = index.paths.get(id(parent))
    if path is None:
        return block
    same_shape = by_shape[path_shape(path)]
    if len(same_shape) < 2:
        return block
    for other in same_shape:
        if not isinstance(other, CONTAINERS) or [type(c) for c in other.children()] != signature:
            return block
    return parent


def _nesting_unit(unit: nn.Module, stack_shapes: set[str], index: ModuleIndex) -> nn.Module:
    """A block nested in a member of the block stack shares that member's rate: the outermost
    strict ancestor at a path of the same shape as a unit found."""
    for anc in index.ancestors(unit):  # outermost first
        if anc is unit:
            break
        path = index.paths.get(id(anc))
        if path and not isinstance(anc, CONTAINERS) and path_shape(path) in stack_shapes:
            return anc
    return unit


def _slots_before_scaling(merge: Merge, index: ModuleIndex) -> list[BranchEnd]:
    """Drop path slots whose output the branch end only scales per sample alike (timm's PoolFormer v1:
    ``x + layer_scale1(drop_path1(mixer(norm1(x))))``): the architecture's own slots for the branch,
    innermost first."""
    out: list[BranchEnd] = []
    node = merge.end.scaled_from
    while node is not None:
        slots = [
            BranchEnd(c.module, index.paths[id(c.module)], c.index, i)
            for c, i in node.chain
            if id(c.module) in index.paths and is_drop_path_slot(c.module, index.paths[id(c.module)])
        ]
        out = slots + out
        node = node.scaled_from
    return out


def find_branches(merges: list[Merge], index: ModuleIndex) -> tuple[list[Branch], list[tuple[str, str]]]:
    """The block branches among ``merges`` with their blocks and units, and (path, reason) for every
    merge left out."""
    left_out: list[tuple[str, str]] = []
    found: list[tuple[Merge, list[BranchEnd], Any]] = []
    for merge in merges:
        # Not a call that runs the addition too: it returns the branch after adding it (EdgeTAM's two-way block
        # returns its cross-attention's output beside the keys that output was added to), too late to drop it.
        ends = [
            BranchEnd(c.module, index.paths[id(c.module)], c.index, i)
            for c, i in merge.end.chain
            if id(c.module) in index.paths and c not in merge.stack
        ]
        if not ends:
            continue
        ends = _slots_before_scaling(merge, index) + ends
        if not merge.computes and not any(is_drop_path_slot(e.module, e.path) for e in ends):
            left_out.append((ends[-1].path, LINEAR_REASON))
            continue
        block = _block_on_stack(merge.stack, index)
        if block is None and merge.stack and merge.kind == "residual":
            block = _loop_block(merge.stack, ends[-1].path, index)
        found.append((merge, ends, block))
    # A block of depth one in its stage has no twin: accept it by the class of the blocks found;
    # failing that, take the innermost module with a twin anywhere on the stack (DLA's trees).
    block_types = {type(b) for _, _, b in found if b is not None}
    for i, (merge, ends, block) in enumerate(found):
        if block is None:
            block = next((c.module for c in reversed(merge.stack) if type(c.module) in block_types), None)
        if block is None:
            block = next((c.module for c in reversed(merge.stack) if index.has_twin(c.module)), None)
        found[i] = (merge, ends, block)
    merge_results = {m.serial + 1 for m, _, _ in found}  # the values residual merges make
    # A "block" that holds other blocks is a stage: a residual run inside it belongs to the module
    # below it on the stack (LeViT's downsampler with its residual MLP), or to none.
    block_paths = {index.path(b) for _, _, b in found if b is not None}
    kept: list[tuple[Merge, list[BranchEnd], nn.Module]] = []
    for merge, ends, block in found:
        if block is not None:
            path = index.path(block)
            if any(other.startswith(path + ".") for other in block_paths):
                modules = [c.module for c in merge.stack]
                inner = modules[modules.index(block) + 1 :] if block in modules else []
                block = inner[0] if inner and merge.kind == "residual" else None
        # shortcut(x) + f(x) counts only when the block runs it itself (a ResNet block with a
        # projection, a parallel block), not deeper inside (a re-parameterizable multi-branch conv),
        # unless the branch ends in a drop path slot (MaxViT's MbConv part with a strided shortcut).
        if (
            block is not None
            and merge.kind == "fork"
            and merge.stack[-1].module is not block
            and not any(is_drop_path_slot(e.module, e.path) for e in ends)
        ):
            block = None
        if block is None:
            left_out.append((ends[-1].path, OUTSIDE_REASON))
            continue
        # x + f(x) run inside a part of the block, on a value that part computed itself, is no
        # residual of the block's stream (SwiftFormer's attention: proj(attn * key) + query); unless
        # that part is itself of a block class (RepViT's pre_block in its downsampler), or the value
        # is the result of a residual merge: the stream carried on (MaxViT's attention part,
        # x = x + attn(x); x = x + mlp(x)), or the branch ends in a drop path slot the architecture
        # named (Grounding DINO's fusion layer: v = LN(v); v = v + drop_path(gamma * attn(v))).
        if (
            merge.kind == "residual"
            and merge.inner_stream
            and any(c.module is block for c in merge.stack[:-1])
            and type(merge.stack[-1].module) not in block_types
            and merge.start.serial not in merge_results
            and not any(is_drop_path_slot(e.module, e.path) for e in ends)
        ):
            left_out.append((ends[-1].path, INNER_REASON))
            continue
        kept.append((merge, ends, block))
    # In a model whose blocks name drop path slots, a block class that has none is one the
    # architecture does not drop.
    slotted_blocks = {id(b): holds_drop_path_slot(b) for _, _, b in kept}
    slotted_types = {type(b) for _, _, b in kept if slotted_blocks[id(b)]}
    if slotted_types:
        rest = []
        for merge, ends, block in kept:
            if type(block) in slotted_types or slotted_blocks[id(block)]:
                rest.append((merge, ends, block))
            else:
                left_out.append((ends[-1].path, SLOTLESS_REASON))
        kept = rest
    # The unit of the schedule: the block, the repeated composite it is in, or the stack member
    # it is nested in.
    blocks = {id(b) for _, _, b in kept}
    by_shape: dict[str, list] = {}
    for name, m in index.named.items():
        by_shape.setdefault(path_shape(name), []).append(m)
    units = [_composite(block, index, blocks, by_shape) for _, _, block in kept]
    stack_shapes = {path_shape(index.path(u)) for u in units}
    branches = [
        Branch(merge, tuple(ends), block, index.path(block), _nesting_unit(unit, stack_shapes, index))
        for (merge, ends, block), unit in zip(kept, units)
    ]
    return branches, left_out


def number_units(branches: list[Branch], recording: Recording, index: ModuleIndex) -> tuple[list[int], list[int], int]:
    """The unit index and the position within the unit of each branch, and the number of units.

    Units are numbered in execution order, counting also the modules of the same stack without
    branches: at a path of the same shape, with children, no container, and of a unit class found or
    holding a drop path slot of its own (timm's strided EfficientNet blocks); a stage's plain
    downsampler (StarNet's ``stages.1.0 = ConvBN``) is not counted. Each call of a unit module run at
    several depths is a unit of its own (ALBERT's one layer run 12 times: 12 units).
    """
    shapes = {path_shape(index.path(br.unit, br.block_path)) for br in branches}
    unit_types = {type(br.unit) for br in branches}
    call_order: dict[tuple[int, int], int] = {}
    for call in recording.calls:
        call_order.setdefault((id(call.module), call.index), call.order)
    members = dict.fromkeys(br.unit_call for br in branches)  # insertion order breaks ties of uncalled units
    units = {id(br.unit) for br in branches}
    for call in recording.calls:
        m = call.module
        path = index.paths.get(id(m))
        if (
            id(m) not in units
            and call.index == 0
            and path is not None
            and path_shape(path) in shapes
            and not isinstance(m, CONTAINERS)
            and next(m.children(), None) is not None
            and (type(m) in unit_types or any(is_drop_path_slot(c, n) for n, c in m.named_children()))
        ):
            members[(id(m), 0)] = None
    order = {key: i for i, key in enumerate(sorted(members, key=lambda k: call_order.get(k, 1 << 60)))}
    numbers, positions = [], []
    per_unit: dict[tuple[int, int], int] = {}
    for br in branches:
        numbers.append(order[br.unit_call])
        positions.append(per_unit.get(br.unit_call, 0))
        per_unit[br.unit_call] = positions[-1] + 1
    return numbers, positions, len(order)
