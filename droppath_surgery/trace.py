"""Turn one observed forward pass into residual branches: their ends, blocks and batch dimensions.

``record.py`` watches the pass and reports every residual merge with the module calls that
returned the branch (its end chain). Here each branch gets

* a check that it computes something: a branch with no non-linear operation or none that mixes
  channels (a positional convolution ``x + dwconv(x)``, a re-parameterizable conv/batch-norm mixer)
  is ignored, unless it ends in a placeholder the architecture named as a drop path slot
  (PoolFormer's ``pool(x) - x`` mixer ends in ``drop_path1``).
* a *block*: the innermost module running the merge that is an element of a container
  (``Sequential``/``ModuleList``/``ModuleDict``); failing that, the innermost one with a sibling of
  its own class (RegNet's ``s1.b1, s1.b2``, DLA's trees), or of the class of a block found (a stage of
  depth one). When the merge runs in a module that is no such block (``for attn, mlp in self.layers:
  x = x + attn(x); x = x + mlp(x)``), the block is the outermost container element on the way to the
  branch end. A "block" that holds other blocks is a stage, and its residual belongs to the module
  below it on the stack (LeViT's residual downsampler). A projection merge ``shortcut(x) + f(x)``
  counts only when the block runs it itself; a residual run by a part of the block on a value that
  part computed itself (an attention's internal skip, SwiftFormer) is no branch of the block. In a
  model whose blocks name drop path slots (a placeholder called ``drop_path*`` / ``stochastic*``), a
  block class holding none is one the architecture does not drop (GC ViT's ``MbConvBlock`` in its
  stem, downsamplers and global-context feature blocks); with no slot anywhere (timm ResNet, Hugging
  Face BERT) every residual block counts. A residual outside any block (a stem, a pooling head
  such as SigLIP's attention-pool MLP) is not in the block stack and is reported as ignored, as timm
  does.
* a *unit* of the schedule: the block itself, or a repeated composite of different blocks. A
  container of different block classes, every one running a residual branch, inside a container
  all of whose elements repeat that same sequence of classes (DaViT's ``Sequential(SpatialBlock,
  ChannelBlock)`` per layer) is one unit with one rate; its blocks keep their own paths. A stage
  ``Sequential(downsample, Block, ...)`` is no composite (its downsampler has no branch), nor is a
  stage mixing block classes that the other stages do not repeat (MobileNetV5).
* a *block index*: units are numbered in execution order across all stages, counting also the
  modules of the same stack that have no residual branch but are blocks (an EfficientNet block with
  a stride, whose position still counts in timm's rate schedule): of a path of the same shape
  (``blocks.3.1`` and ``blocks.0.0``, digits replaced), with children, no container, and of a block
  class found or holding a drop path slot of its own (timm's ``DepthwiseSeparableConv`` without
  skip). A stage's plain downsampler (StarNet's ``stages.1.0 = ConvBN``) is not counted.
* a *batch dimension*: the dimension whose size equals the example batch size; if that is
  ambiguous, a second, recorded pass with the batch doubled decides it. For a branch that reaches the
  residual through layout operations, that is the batch dimension of the tensor added; the layout
  operations are replayed on a tensor of sample indices laid out like the module output, and the
  module output's batch dimension is the one dimension whose indices arrive exactly as the samples of
  the tensor added. With none (attention windows of several samples: SAM ViT at a size with more
  than one window) the branch is ignored with the reason; the check holds for the traced shapes, so
  a model whose layout depends on the input size must be traced at the size it is trained at. For inputs the user passed,
  whose layout we cannot know, a pass with only sample 0 changed checks that no other sample of any
  branch changes; a sequence-first ``(L, N, D)`` input fails that check for dimension 0 (attention
  spreads the change over the tokens) and passes it for dimension 1.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from .errors import BatchDimError, ExampleInputsError
from .ops import is_drop_path_slot, is_placeholder
from .record import Recorder, flat_args
from .verify import rng_restored

__all__ = ["BranchEnd", "Branch", "Trace", "trace_residual_branches", "CONTAINERS"]

CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)

@dataclass(frozen=True)
class BranchEnd:
    """A module call that returned the branch output, and where in its output the tensor was."""

    module: nn.Module
    path: str
    call: int
    output_index: tuple


@dataclass
class Branch:
    """One residual branch seen in the traced pass."""

    ends: list[BranchEnd]  # innermost module call first
    block: nn.Module
    block_path: str
    unit: nn.Module | None = None  # the module numbered in the schedule: the block or its composite
    block_index: int = -1
    branch: int = 0  # position among the block's branches
    shape: tuple = ()
    batch_dim: int | None = None
    key: tuple = ()  # identifies the same merge in another recorded pass (see _merge_key)
    merge: Any = field(default=None, repr=False, compare=False)  # the recorded Merge (record.py)
    layout: tuple = ()  # layout operations from the module output to the merged tensor (record.LayoutOp)


@dataclass
class Trace:
    """Everything one observed forward pass tells about the model's residual branches."""

    branches: list[Branch]
    num_blocks: int
    calls: dict[int, int]  # id(module) -> number of calls in the pass
    outputs: Any  # the model's outputs on the example inputs (eval mode, no grad)
    ignored: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    recorder: Any = field(default=None, repr=False)  # the Recorder of the traced pass
    input_batch_dim: int | None = None  # the inputs' batch dimension (None when batch_dim= was given)


def map_batch_tensors(obj: Any, dim: int, batch: int, fn: Callable[[Tensor], Tensor]) -> Any:
    """``obj`` (tensors in tuples, lists and dicts) with ``fn`` applied to every tensor that has
    ``batch`` entries along ``dim``; everything else is returned as it is."""
    if isinstance(obj, Tensor):
        if obj.ndim > 0 and -obj.ndim <= dim < obj.ndim and obj.shape[dim] == batch:
            return fn(obj)
        return obj
    if isinstance(obj, tuple):
        return tuple(map_batch_tensors(o, dim, batch, fn) for o in obj)
    if isinstance(obj, list):
        return [map_batch_tensors(o, dim, batch, fn) for o in obj]
    if isinstance(obj, dict):
        return {k: map_batch_tensors(v, dim, batch, fn) for k, v in obj.items()}
    return obj


def _double(obj: Any, batch_dim: int, batch: int) -> Any:
    return map_batch_tensors(obj, batch_dim, batch, lambda t: torch.cat([t, t], dim=batch_dim))


class _Probe:
    """Runs the model under a fresh ``Recorder``, with hooks on every module removed afterwards and
    the random state as it was before."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def run(self, args: tuple, kwargs: dict) -> tuple[Any, Recorder]:
        rec = Recorder()
        handles = []
        try:
            handles = rec.watch(self.model)
            rec.mark_inputs(flat_args(args, kwargs))
            # Every pass from the same random state, so that passes compared with each other (the
            # sample-independence check) see the same draws of a model that is random in eval mode.
            with rng_restored(self.model, (args, kwargs)), rec:
                out = self.model(*args, **kwargs)
        finally:
            for h in handles:
                h.remove()
        return out, rec


def _parent_map(model: nn.Module) -> dict[int, nn.Module | None]:
    parents: dict[int, nn.Module | None] = {id(model): None}
    for module in model.modules():
        for child in module.children():
            parents.setdefault(id(child), module)
    return parents


def _in_container(module: nn.Module, parents: dict) -> bool:
    return isinstance(parents.get(id(module)), CONTAINERS) and not isinstance(module, CONTAINERS)


def _has_twin(module: nn.Module, parents: dict) -> bool:
    """One of several siblings of the same class (RegNet's ``s1.b1, s1.b2``, DLA's trees)."""
    parent = parents.get(id(module))
    if parent is None or isinstance(module, CONTAINERS):
        return False
    return any(child is not module and type(child) is type(module) for child in parent.children())


def _block_on_stack(stack: tuple, parents: dict) -> nn.Module | None:
    """The innermost container element running the merge; failing that, the module running it if
    it has a twin."""
    block = next((c.module for c in reversed(stack) if _in_container(c.module, parents)), None)
    if block is None and stack and _has_twin(stack[-1].module, parents):
        block = stack[-1].module
    return block


def _loop_block(stack: tuple, end_path: str, paths: dict) -> nn.Module | None:
    """For a merge run by a module that is no block (``for f in self.layers: x = x + f(x)``): the
    outermost container element below that module on the way to the branch end."""
    top = paths.get(id(stack[-1].module), "")
    if top and not end_path.startswith(top + "."):
        return None
    module = stack[-1].module
    for part in (end_path[len(top) + 1 :] if top else end_path).split("."):
        child = module._modules.get(part)
        if child is None:
            return None
        if isinstance(module, CONTAINERS):
            return child
        module = child
    return None


def _composite(block: nn.Module, parents: dict, paths: dict, blocks: set, by_shape: dict) -> nn.Module:
    """The unit of the rate schedule that ``block`` belongs to: itself, or a repeated composite.

    A composite is a container of *different* block classes, each running residual branches
    (``blocks``: ids of the blocks found), such that every container at a path of the same shape
    (``by_shape``) holds that same sequence of classes: DaViT's ``stages.*.blocks.*`` =
    ``Sequential(SpatialBlock, ChannelBlock)``, torchvision MaxViT's ``blocks.*.layers.*.layers`` =
    ``(MBconv, window_attention, grid_attention)``, each built as one block of the schedule with one
    rate. A stage ``Sequential(downsample, Block, Block)`` is no composite (its downsample has no
    branch, and stages of other depths differ), nor is a stage that mixes block classes
    (MobileNetV5's ``Sequential(UIR, MobileAttention, UIR, ...)``) unless every stage repeats it.
    """
    parent = parents.get(id(block))
    if not isinstance(parent, CONTAINERS):
        return block
    signature = [type(c) for c in parent.children()]
    if len(set(signature)) < 2 or not all(id(c) in blocks for c in parent.children()):
        return block
    path = paths.get(id(parent))
    if path is None:
        return block
    for other in by_shape[_path_shape(path)]:
        if not isinstance(other, CONTAINERS) or [type(c) for c in other.children()] != signature:
            return block
    return parent


def _nesting_unit(unit: nn.Module, ancestors: list, stack_shapes: set, paths: dict) -> nn.Module:
    """A block nested in a member of the block stack shares that member's rate: the outermost
    strict ancestor at a path of the same shape as a block found (MobileViT's transformer layers in
    ``stages.2.1``, a ``stages.*.*`` block like the bottleneck ``stages.1.1``)."""
    for anc in ancestors:  # outermost first
        if anc is unit:
            break
        path = paths.get(id(anc))
        if path and not isinstance(anc, CONTAINERS) and _path_shape(path) in stack_shapes:
            return anc
    return unit


def _branches_of(rec: Recorder, paths: dict, parents: dict, named: dict, ignored: list) -> list[Branch]:
    found: list[tuple[Any, list[BranchEnd], nn.Module | None]] = []
    for merge in rec.merges:
        ends = [BranchEnd(c.module, paths[id(c.module)], c.index, i) for c, i in merge.end.chain if id(c.module) in paths]
        if not ends:
            continue
        if not merge.computes and not any(is_drop_path_slot(e.module, e.path) for e in ends):
            ignored.append((ends[-1].path, _LINEAR_REASON))
            continue
        block = _block_on_stack(merge.stack, parents)
        if block is None and merge.stack and merge.kind == "residual":
            block = _loop_block(merge.stack, ends[-1].path, paths)
        found.append((merge, ends, block))
    # A block of depth one in its stage has no twin: accept it by the class of the blocks found;
    # failing that, take the innermost module with a twin anywhere on the stack (DLA's trees).
    block_types = {type(b) for _, _, b in found if b is not None}
    for i, (merge, ends, block) in enumerate(found):
        if block is None:
            block = next((c.module for c in reversed(merge.stack) if type(c.module) in block_types), None)
        if block is None:
            block = next((c.module for c in reversed(merge.stack) if _has_twin(c.module, parents)), None)
        found[i] = (merge, ends, block)
    # A "block" that holds other blocks is a stage: a residual run inside it belongs to the module
    # below it on the stack (LeViT's downsampler with its residual MLP), or to none.
    block_paths = {paths.get(id(b), "") for _, _, b in found if b is not None}
    branches = []
    for merge, ends, block in found:
        if block is not None:
            path = paths.get(id(block), "")
            if any(other.startswith(path + ".") for other in block_paths):
                modules = [c.module for c in merge.stack]
                inner = modules[modules.index(block) + 1 :] if block in modules else []
                block = inner[0] if inner and merge.kind == "residual" else None
        # shortcut(x) + f(x) counts only when the block runs it itself (a ResNet block with a
        # projection, a parallel block), not deeper inside (a re-parameterizable multi-branch conv).
        if block is not None and merge.kind == "fork" and merge.stack[-1].module is not block:
            block = None
        if block is None:
            ignored.append((ends[-1].path, "outside the repeated block stack (stem, head, pooling or downsampling)"))
            continue
        # x + f(x) run inside a part of the block, on a value that part computed itself
        # (SwiftFormer's attention: proj(attn * key) + query), is no residual of the block's stream;
        # unless that part is itself of a block class (RepViT's pre_block in its downsampler).
        if (
            merge.kind == "residual"
            and merge.inner_stream
            and any(c.module is block for c in merge.stack[:-1])
            and type(merge.stack[-1].module) not in block_types
        ):
            ignored.append((ends[-1].path, _INNER_REASON))
            continue
        path = paths.get(id(block), "")
        branches.append(
            Branch(
                ends=ends,
                block=block,
                block_path=path,
                shape=tuple(merge.tensor.shape),
                key=_merge_key(merge),
                merge=merge,
                layout=merge.layout,
            )
        )
    # In a model whose blocks name drop path slots, a block class that has none is one the
    # architecture does not drop (GC ViT's MbConvBlock in its stem, downsamplers and global-context
    # feature blocks).
    has_slot = {id(b): _names_drop_path_slot(b) for b in {id(br.block): br.block for br in branches}.values()}
    slotted = {type(br.block) for br in branches if has_slot[id(br.block)]}
    if slotted:
        kept = []
        for br in branches:
            if type(br.block) in slotted or has_slot[id(br.block)]:
                kept.append(br)
            else:
                ignored.append((br.ends[-1].path, _SLOTLESS_REASON))
        branches = kept
    # The unit of the schedule: the block, the repeated composite of different blocks it is in, or
    # the member of the block stack it is nested in.
    blocks = {id(br.block) for br in branches}
    by_shape: dict[str, list] = {}
    for name, m in named.items():
        by_shape.setdefault(_path_shape(name), []).append(m)
    for br in branches:
        br.unit = _composite(br.block, parents, paths, blocks, by_shape)
    stack_shapes = {_path_shape(paths.get(id(br.unit), "")) for br in branches}
    for br in branches:
        ancestors = []
        m = br.unit
        while m is not None:
            ancestors.append(m)
            m = parents.get(id(m))
        br.unit = _nesting_unit(br.unit, list(reversed(ancestors)), stack_shapes, paths)
    return branches



_INNER_REASON = (
    "a residual inside a part of its block, on a value that part computed itself, not on the block's "
    "stream (an attention's internal skip)"
)
_SLOTLESS_REASON = (
    "its block class has no drop path slot while the model's other blocks have one: the architecture "
    "does not drop it (a stem, downsampling or side block)"
)


def _names_drop_path_slot(block: nn.Module) -> bool:
    """The block holds a placeholder named as a drop path / stochastic depth slot (not a dropout)."""
    for name, m in block.named_modules():
        last = name.rsplit(".", 1)[-1].lower()
        named = "drop_path" in last or "droppath" in last or "stochastic" in last
        if name and is_placeholder(m) and (named or "droppath" in type(m).__name__.lower()):
            return True
    return False


_LINEAR_REASON = (
    "the branch is linear or per-channel (a positional or re-parameterizable convolution), not a block "
    "branch; blocks need a non-linear operation and one that mixes channels"
)


def _path_shape(path: str) -> str:
    return re.sub(r"\d+", "*", path)


def _number_blocks(branches: list[Branch], rec: Recorder, paths: dict) -> int:
    """Number the schedule's units in execution order, counting also the blocks of the same stack
    without branches: modules at a path of the same shape, of a block class found or holding a drop
    path slot of their own (timm's strided EfficientNet blocks), not a stage's plain downsampler."""
    shapes = {_path_shape(paths.get(id(br.unit), br.block_path)) for br in branches}
    unit_types = {type(br.unit) for br in branches}
    first_call: dict[int, int] = {}
    for call in rec.calls:
        first_call.setdefault(id(call.module), call.order)
    members = {id(br.unit): br.unit for br in branches}
    for call in rec.calls:
        m = call.module
        path = paths.get(id(m))
        if (
            id(m) not in members
            and path is not None
            and _path_shape(path) in shapes
            and not isinstance(m, CONTAINERS)
            and next(m.children(), None) is not None
            and (type(m) in unit_types or any(is_drop_path_slot(c, n) for n, c in m.named_children()))
        ):
            members[id(m)] = m
    order = {key: i for i, key in enumerate(sorted(members, key=lambda k: first_call.get(k, 1 << 60)))}
    per_block: dict[int, int] = {}
    for br in branches:
        br.block_index = order[id(br.unit)]
        br.branch = per_block.get(id(br.unit), 0)  # position among the branches with this index
        per_block[id(br.unit)] = br.branch + 1
    return len(order)


def trace_residual_branches(
    model: nn.Module,
    args: tuple,
    kwargs: dict,
    *,
    batch_dim: int | None = None,
    inputs_batch_first: bool = False,
) -> Trace:
    """Run one observed forward pass and return the residual branches it contains.

    ``inputs_batch_first`` says the inputs' batch dimension is known to be 0 (inputs built by
    ``droppath_surgery.inputs``); otherwise it is checked. The caller is responsible for eval mode,
    ``torch.no_grad()`` and RNG isolation.
    """
    paths = {id(m): name for name, m in model.named_modules(remove_duplicate=False)}
    for name, m in model.named_modules():  # the first path of a shared module wins
        paths[id(m)] = name
    parents = _parent_map(model)
    probe = _Probe(model)
    try:
        outputs, rec = probe.run(args, kwargs)
    except Exception as exc:
        raise ExampleInputsError(
            f"the model failed to run on the example inputs ({type(exc).__name__}: {exc}); pass "
            f"example_inputs= that the model accepts: a tensor, a tuple of positional arguments, or a "
            f"dict of keyword arguments."
        ) from exc
    ignored: list[tuple[str, str]] = []
    branches = _branches_of(rec, paths, parents, dict(model.named_modules()), ignored)
    num_blocks = _number_blocks(branches, rec, paths)
    input_dim = _assign_batch_dims(branches, probe, args, kwargs, batch_dim, rec, inputs_batch_first)
    unmapped = [br for br in branches if br.batch_dim is None]
    if unmapped:
        for br in unmapped:
            ignored.append((br.ends[-1].path, _UNMAPPED_REASON))
        branches = [br for br in branches if br.batch_dim is not None]
        num_blocks = _number_blocks(branches, rec, paths) if branches else 0
    return Trace(
        branches=branches,
        num_blocks=num_blocks,
        calls=dict(rec.call_counts),
        outputs=outputs,
        ignored=ignored,
        recorder=rec,
        input_batch_dim=input_dim,
    )


_UNMAPPED_REASON = (
    "the branch reaches the residual through layout operations (view, reshape, permute, slicing) that do "
    "not keep whole samples of the module output together (e.g. windows or tokens of several samples), so "
    "dropping at the module would not drop whole samples of the residual"
)


def _sample_ids(shape: tuple, dim: int) -> Tensor:
    """A tensor of ``shape`` whose every element holds its index along ``dim``."""
    view = [1] * len(shape)
    view[dim] = shape[dim]
    return torch.arange(shape[dim]).view(view).expand(shape).contiguous()


def _end_batch_dim(br: Branch, merged_dim: int) -> int | None:
    """The batch dimension of a branch's module output, given that of the merged tensor.

    The layout operations between them are replayed on sample indices: dimension ``d`` of the
    output is the batch when indexing samples along ``d`` and replaying gives, element for element,
    the sample indices of the merged tensor along ``merged_dim``. Then dropping sample ``i`` of the
    output drops exactly sample ``i`` of the branch as added. None when no dimension (or more than
    one) does: the layout mixes samples with tokens or windows.
    """
    if not br.layout:
        return merged_dim
    if merged_dim is None:
        return None
    end_shape = tuple(br.layout[0].in_shape)
    target = _sample_ids(br.shape, merged_dim)
    matches = []
    for d, size in enumerate(end_shape):
        if size != br.shape[merged_dim]:
            continue
        t = _sample_ids(end_shape, d)
        try:
            for op in br.layout:
                t = op(t)
        except Exception:  # an operation that cannot be replayed off its device or dtype
            return None
        if isinstance(t, Tensor) and t.shape == target.shape and torch.equal(t, target):
            matches.append(d)
    if len(matches) != 1:
        return None
    br.shape = end_shape  # from here on the branch is the module output, where drop path goes
    return matches[0]


def _merge_key(merge) -> tuple:
    """The module calls that ended a merge's branch: the same in every pass over the same model."""
    return tuple((id(c.module), c.index) for c, _ in merge.end.chain)


def _merge_tensors(rec: Recorder) -> dict[tuple, Tensor]:
    return {_merge_key(m): m.tensor for m in rec.merges}


def _perturb_first_sample(obj: Any, dim: int, batch: int, gen: torch.Generator) -> Any:
    """A copy of the inputs in which sample 0 (index 0 along ``dim``) differs and the rest are equal."""

    def perturb(t: Tensor) -> Tensor:
        out = t.clone()
        first = out.select(dim, 0)
        if out.is_floating_point():
            noise = torch.randn(first.shape, generator=gen, dtype=torch.float32).to(first.device, first.dtype)
            first.add_(noise)
        elif first.numel() > 1:
            first.copy_(first.flatten().roll(1).view_as(first))
        return out

    return map_batch_tensors(obj, dim, batch, perturb)


def _sample_dims(branches, probe: _Probe, args, kwargs, input_dim: int, batch: int) -> dict[int, int] | None:
    """Batch dimension of each branch, given the inputs' batch dimension; None when undecidable."""
    dims: dict[int, int] = {}
    unresolved = []
    for i, br in enumerate(branches):
        matches = [d for d, n in enumerate(br.shape) if n == batch]
        if len(matches) == 1:
            dims[i] = matches[0]
        else:
            unresolved.append(i)
    if unresolved:
        # Ambiguous sizes: trace again with the batch doubled and see which dimension doubles.
        _, rec2 = probe.run(_double(args, input_dim, batch), _double(kwargs, input_dim, batch))
        doubled = _merge_tensors(rec2)
        for i in unresolved:
            shape = branches[i].shape
            other = doubled.get(branches[i].key)
            if other is None or other.ndim != len(shape):
                return None
            grown = [d for d, (a, b) in enumerate(zip(shape, other.shape)) if b == 2 * a and a > 0]
            same = [d for d in grown if all(x == y for j, (x, y) in enumerate(zip(shape, other.shape)) if j != d)]
            if len(same) != 1:
                return None
            dims[i] = same[0]
    return dims


def _samples_independent(branches, dims, probe: _Probe, args, kwargs, input_dim: int, batch: int, reference) -> bool:
    """True if changing sample 0 of the inputs changes no other sample of any branch.

    That is what makes a dimension the batch: with a sequence-first input read as batch-first,
    attention would carry the change to every "sample" (which are really tokens).
    """
    gen = torch.Generator().manual_seed(1)
    _, rec = probe.run(_perturb_first_sample(args, input_dim, batch, gen), _perturb_first_sample(kwargs, input_dim, batch, gen))
    perturbed = _merge_tensors(rec)
    for i, br in enumerate(branches):
        before, after = reference.get(br.key), perturbed.get(br.key)
        if before is None or after is None or before.shape != after.shape:
            continue
        d = dims[i]
        if before.device.type == "meta":
            return True  # no values on the meta device: nothing to check
        if before.shape[d] > 1 and not torch.equal(before.narrow(d, 1, before.shape[d] - 1), after.narrow(d, 1, after.shape[d] - 1)):
            return False
    return True


def _assign_batch_dims(branches, probe: _Probe, args, kwargs, batch_dim, rec, inputs_batch_first: bool) -> int | None:
    """Set ``batch_dim`` on every branch.

    With ``batch_dim`` given, it is used everywhere. Otherwise the inputs' batch dimension is 0 for
    inputs built here, and 0 or 1 for user inputs, decided by an independence check (sequence-first
    ``(L, N, D)`` inputs then resolve to 1). Each branch's own batch dimension is the one whose size
    is the batch size, or, if that is ambiguous, the one that doubles with the batch. Returns the
    inputs' batch dimension (None when ``batch_dim`` was given).
    """
    if not branches:
        return 0 if inputs_batch_first else None
    if batch_dim is not None:
        for br in branches:
            if not -len(br.shape) <= batch_dim < len(br.shape):
                raise BatchDimError(
                    f"batch_dim={batch_dim} is out of range for the branch ending at {br.ends[-1].path} "
                    f"with shape {br.shape}; pass the dimension that indexes samples."
                )
            br.batch_dim = _end_batch_dim(br, batch_dim % len(br.shape))
        return None
    tensors = [t for t in flat_args(args, kwargs) if t.ndim > 0]
    if not tensors:
        raise BatchDimError(
            "the example inputs hold no tensor with a batch dimension, so the batch dimension of the "
            "residual branches cannot be found; pass batch_dim=."
        )
    reference = _merge_tensors(rec)
    candidates = [0] if inputs_batch_first else [d for d in (0, 1) if d < tensors[0].ndim]
    for input_dim in candidates:
        batch = tensors[0].shape[input_dim]
        dims = _sample_dims(branches, probe, args, kwargs, input_dim, batch)
        if dims is None:
            continue
        if batch > 1 and not inputs_batch_first:
            if not _samples_independent(branches, dims, probe, args, kwargs, input_dim, batch, reference):
                continue
        for i, br in enumerate(branches):
            br.batch_dim = _end_batch_dim(br, dims[i])
        return input_dim
    raise BatchDimError(
        f"cannot tell which dimension of the residual stream indexes samples (tried input dimensions "
        f"{candidates}; example input shape {tuple(tensors[0].shape)}); pass batch_dim= (0 for (N, ...) "
        f"layouts, 1 for sequence-first (L, N, D)), and use an example batch of at least 2 samples."
    )
