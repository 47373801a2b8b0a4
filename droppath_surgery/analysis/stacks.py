"""Stacks: chains of blocks linked by one residual stream.

A block joins the stack of the latest block whose output its stream was computed from (Swin's stages
are one stack through their downsamplers); a block none of whose branches starts from a stream that
comes from an earlier block starts a new one (an encoder-decoder's decoder, CLIP's text tower after its
vision tower). Every branch of the block is asked, the first that ran first: a block's first branch may
start from a stream that no block made while its next ones carry on the previous block's (NeoMME's layer
first mixes ``l0 * h + l1 * h0`` with the embeddings ``h0`` as the stream and the previous layer's output
``h`` as the branch, then adds its attention to ``h``: asking the first branch only made every layer a stack
of one block, at rate 0 under a linear schedule; so did Reformer's reversible layers, the DETR decoders'
``h + query_pos`` and SAM's two-way mask decoder, whose token branch runs before its image branch). Where
several branches come from earlier blocks (LXMERT's cross-modality layers, on its language and its vision
stream), the first that ran decides. One forward sweep over the recorded values labels each with the latest
block output it descends from.

``unrun_stacks`` names the repeated blocks the pass never ran (an audio tower probed on text alone): they
may hold residual branches that no drop path reaches, which the caller must be told.
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import nn

from .blocks import Branch
from .record import Recording

__all__ = ["find_stacks", "unrun_stacks"]

MIN_REPEATS = 2  # blocks of one class in a container: a stack


def _is_block(module: nn.Module) -> bool:
    """A module with two or more parts that hold parameters (a layer, not a lone Linear or norm)."""
    return sum(1 for m in module.children() if any(True for _ in m.parameters())) >= 2


def unrun_stacks(model: nn.Module, call_counts: Mapping[int, int]) -> list[str]:
    """The containers of ``MIN_REPEATS`` or more blocks of one class none of which ran in the pass, outermost
    only, each as ``"path (n x Class)"``."""
    found: dict[str, list[nn.Module]] = {}  # path -> its blocks
    for path, container in model.named_modules():
        if not isinstance(container, (nn.ModuleList, nn.Sequential)) or any(path.startswith(f + ".") for f in found):
            continue
        children = list(container.children())
        kinds = {type(c) for c in children}
        if len(children) < MIN_REPEATS or len(kinds) != 1 or not all(_is_block(c) for c in children):
            continue
        if not any(call_counts.get(id(m), 0) for c in children for m in c.modules()):
            found[path] = children
    return [f"{path} ({len(blocks)} x {type(blocks[0]).__name__})" for path, blocks in found.items()]


def find_stacks(branches: list[Branch], units: list[int], recording: Recording) -> list[int]:
    """The stack of each branch (0, 1, ... in order of their first block)."""
    output_of: dict[int, int] = {}  # serial of a merge's result -> its unit
    of_unit: dict[int, list[Branch]] = {}  # unit -> its branches
    for br, unit in zip(branches, units):
        output_of[br.merge.serial + 1] = unit
        of_unit.setdefault(unit, []).append(br)
    latest: dict[int, int] = {}  # serial of a value -> the latest unit whose output it descends from
    for node in recording.nodes:
        found = output_of.get(node.serial)
        if found is None:
            feeding = [latest[p.serial] for p in node.parents if p.serial in latest]
            found = max(feeding) if feeding else None
        if found is not None:
            latest[node.serial] = found
    stack_of: dict[int, int] = {}
    for unit in sorted(of_unit):
        # the first branch (in the order they ran) whose stream comes from an earlier block decides
        starts = (latest.get(br.merge.start.serial) for br in sorted(of_unit[unit], key=lambda b: b.merge.serial))
        before = next((u for u in starts if u is not None and u in stack_of), None)
        stack_of[unit] = stack_of[before] if before is not None else len(set(stack_of.values()))
    return [stack_of[unit] for unit in units]
