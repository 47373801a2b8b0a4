"""Stacks: chains of blocks linked by one residual stream.

A block joins the stack of the latest block whose output its stream was computed from (Swin's stages
are one stack through their downsamplers); a block whose stream comes from no earlier block starts a
new one (an encoder-decoder's decoder, CLIP's text tower after its vision tower). One forward sweep
over the recorded values labels each with the latest block output it descends from.
"""

from __future__ import annotations

from .blocks import Branch
from .record import Recording

__all__ = ["find_stacks"]


def find_stacks(branches: list[Branch], units: list[int], recording: Recording) -> list[int]:
    """The stack of each branch (0, 1, ... in order of their first block)."""
    output_of: dict[int, int] = {}  # serial of a merge's result -> its unit
    first: dict[int, Branch] = {}  # unit -> its earliest branch
    for br, unit in zip(branches, units):
        output_of[br.merge.serial + 1] = unit
        if unit not in first or br.merge.serial < first[unit].merge.serial:
            first[unit] = br
    latest: dict[int, int] = {}  # serial of a value -> the latest unit whose output it descends from
    for node in recording.nodes:
        found = output_of.get(node.serial)
        if found is None:
            feeding = [latest[p.serial] for p in node.parents if p.serial in latest]
            found = max(feeding) if feeding else None
        if found is not None:
            latest[node.serial] = found
    stack_of: dict[int, int] = {}
    for unit in sorted(first):
        before = latest.get(first[unit].merge.start.serial)
        stack_of[unit] = stack_of[before] if before is not None and before in stack_of else len(set(stack_of.values()))
    return [stack_of[unit] for unit in units]
