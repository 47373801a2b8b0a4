"""Packed streams: per-sample drop path for branches whose rows pack several samples together (a vision
tower that runs the patches of all images as one sequence: Qwen2-VL's, GLM-4V's).

Such a block is called with its samples' boundaries, a 1-D integer tensor of cumulative lengths
``[0, n1, n1 + n2, ..., L]`` (``cu_seqlens``) that its attention keeps apart. A packed branch is
dropped per segment of those boundaries (read at run time by a pre-hook on the block) when
- its block's call has such an argument whose last value is the size of one dimension of the branch
  output (the packed dimension; not the last, channel dimension), reached without layout operations;
- every other boundaries tensor the blocks of that stream are called with is strictly finer: attention
  windows inside an image are finer than the image, and dropping per window would drop parts of a
  sample (two different tensors of equal values, windows as large as the example's images, tell nothing);
- a check pass confirms it: with the rows of segment 0 perturbed at the input of every such block, no
  row of another segment of any such branch changes, and rows of segment 0 do.
A branch whose batch dimension, read off the example inputs, is the packed rows of such boundaries
(inputs that start with the packed patches) is a packed branch too. On the meta device there are no
values, so packed branches stay left out.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .. import nested
from ..sketch import changed_only_first
from .blocks import Branch, branch_output_hooks
from .record import Node

__all__ = ["Segments", "find_segments", "packs_rows", "WINDOWED_REASON", "UNCONFIRMED_REASON", "CONFLICTING_REASON"]

WINDOWED_REASON = (
    "the branch runs on a packed stream whose block is called with finer boundaries (attention windows) than "
    "other blocks of the stream (whole samples): dropping per window would drop parts of a sample, and the "
    "samples' boundaries do not reach this block"
)
CONFLICTING_REASON = (
    "the blocks of this packed stream are called with different boundary tensors, none strictly coarser than all "
    "the others, so which segments are the samples is not known (where they are equal in the example, attention "
    "windows as large as its images: pass larger images)"
)
UNCONFIRMED_REASON = (
    "the branch runs on a packed stream and its block is called with segment boundaries, but the check pass "
    "did not confirm them as samples (changing the rows of one segment changed rows of another, or none of its own)"
)

Runner = Callable[..., None]  # run(hooks, args=example args, kwargs=example kwargs): one pass with these hooks on


@dataclass(frozen=True)
class Segments:
    """Where a packed branch finds its samples at run time: a boundaries argument of its block's call."""

    block: nn.Module  # the module whose calls carry the boundaries
    location: tuple  # of the boundaries in that call's ``(args, kwargs)``
    dim: int  # the packed dimension of the branch output


def _boundaries(v: Tensor) -> bool:
    return bool(v[0] == 0) and bool((v[1:] >= v[:-1]).all())


def _candidates(br: Branch) -> list[tuple[Segments, Tensor, Node]]:
    """The block call's boundary arguments that end at the size of one dimension of the branch output,
    with their values and the recorded value each is."""
    if br.merge.layout:
        return []
    call = next((c for c in br.merge.stack if c.module is br.block), None)
    if call is None:
        return []
    nodes = {location: node for location, node, _ in call.args}
    found = []
    for location, v in call.int_values:
        if not _boundaries(v):
            continue
        dims = [d for d, n in enumerate(br.merge.shape) if n == int(v[-1])]
        if len(dims) > 1:  # rows of a token stream are never its last (channel) dimension; the check pass confirms
            dims = [d for d in dims if d != len(br.merge.shape) - 1]
        if len(dims) == 1:
            found.append((Segments(br.block, location, dims[0]), v, nodes[location]))
    return found


def packs_rows(br: Branch, dim: int) -> bool:
    """Is dimension ``dim`` of the branch output, taken as its batch, the packed rows of its block's
    boundaries? (Example inputs that start with the packed patches read their rows as the batch.)"""
    return any(segments.dim == dim for segments, _, _ in _candidates(br))


def _carrier_reasons(found: dict[int, tuple[Segments, Tensor, Node]]) -> dict[int, str]:
    """Why a branch's boundaries cannot be its samples': the blocks of a stream (boundaries of one total
    length) are called with several boundary tensors, and this one is not strictly coarser than every
    other (equal values of two tensors tell nothing either: windows as large as the example's images)."""
    by_length: dict[int, dict[int, frozenset]] = {}  # total length -> recorded value's serial -> boundaries
    for _, v, node in found.values():
        by_length.setdefault(int(v[-1]), {})[node.serial] = frozenset(v.tolist())
    out = {}
    for i, (_, v, node) in found.items():
        tensors = by_length[int(v[-1])]
        if len(tensors) == 1:
            continue
        mine = tensors[node.serial]
        if all(mine < other for serial, other in tensors.items() if serial != node.serial):
            continue
        finer = any(other < mine for other in tensors.values())
        out[i] = WINDOWED_REASON if finer else CONFLICTING_REASON
    return out


def _perturb_rows(obj: Any, dim: int, length: int, stop: int, gen: torch.Generator) -> Any:
    def perturb(t: Tensor) -> Tensor:
        if not t.is_floating_point() or t.ndim <= dim or t.shape[dim] != length:
            return t
        out = t.clone()
        rows = out.narrow(dim, 0, stop)
        rows.add_(torch.randn(rows.shape, generator=gen, dtype=torch.float32).to(rows.device, rows.dtype))
        return out

    return nested.map_tensors(obj, perturb)


def _confirmed(branches: list[Branch], found: dict[int, tuple[Segments, Tensor, Node]], run: Runner) -> set[int]:
    """The branches (indices into ``branches``) whose segments the check pass confirms."""
    gen = torch.Generator().manual_seed(3)
    perturbing: dict[int, tuple[Segments, Tensor]] = {}  # id(block) -> (segments, boundaries)
    for segments, v, _ in found.values():
        perturbing.setdefault(id(segments.block), (segments, v))

    watched = {i: branches[i] for i in found}
    reference: dict[int, Tensor] = {}
    perturbed: dict[int, Tensor] = {}

    def perturb(module: nn.Module, args: tuple, kwargs: dict) -> tuple:
        segments, _ = perturbing[id(module)]
        v = nested.get_at((args, kwargs), segments.location)
        length, stop = int(v[-1]), int(v[1])
        return _perturb_rows((args, kwargs), segments.dim, length, stop, gen)

    blocks = {id(s.block): s.block for s, _ in perturbing.values()}
    try:
        run(branch_output_hooks(watched, reference))
        run([*branch_output_hooks(watched, perturbed), *((b, "pre", perturb) for b in blocks.values())])
    except Exception:  # noqa: BLE001 - a model that does not run with its rows changed: nothing confirmed
        return set()
    return {
        i for i, (segments, v, _) in found.items()
        if i in reference and i in perturbed and changed_only_first(reference[i], perturbed[i], segments.dim, int(v[1]))
    }


def find_segments(branches: list[Branch], run: Runner) -> list[Segments | str]:
    """Per packed branch, where its samples' boundaries are at run time (read off its block's recorded call),
    or why it has none. ``run(hooks)`` runs the model once with ``hooks`` on (``(module, "pre" | "forward", fn)``)."""
    out: list[Segments | str] = ["" for _ in branches]
    found: dict[int, tuple[Segments, Tensor, Node]] = {}
    for i, br in enumerate(branches):
        candidates = _candidates(br)
        if candidates:
            found[i] = candidates[0]
    for i, reason in _carrier_reasons(found).items():
        out[i] = reason
        del found[i]
    for i in [i for i, (_, v, _) in found.items() if v.numel() < 3]:  # one segment: nothing to compare
        out[i] = UNCONFIRMED_REASON
        del found[i]
    confirmed = _confirmed(branches, found, run) if found else set()
    for i, (segments, _, _) in found.items():
        out[i] = segments if i in confirmed else UNCONFIRMED_REASON
    return out
