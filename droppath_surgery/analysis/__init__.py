"""Seeing: one recorded forward pass and the passes that read it.

``record`` (one pass: values, module calls, additions) -> ``merges`` (residual merges) -> ``blocks``
(block branches, their blocks and units, unit numbering) -> ``batch`` (batch dimensions, with the
layout replay and rows folded per sample; ``packed``: the samples' boundaries of packed streams) ->
``stacks`` (blocks linked by one residual stream, and the repeated blocks the pass never ran); ``entries`` (where a branch takes in the batch, for
skip mode) is read by the planner. ``slots`` holds the one drop path slot rule. ``analyse`` runs them
in order and returns plain data; nothing here changes the model.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ..errors import BatchDimError, ExampleInputsError
from ..isolation import rng_restored
from .batch import (
    FOLDED_REASON,
    PACKED_REASON,
    WATCHED_SAMPLE,
    Placement,
    assign_batch_dims,
    candidate_batch_sizes,
    group_folded_rows,
)
from .batch import NOT_PER_SAMPLE as NOT_MAPPED
from .blocks import Branch, ModuleIndex, find_branches, number_units
from .merges import find_merges
from .packed import CONFLICTING_REASON, UNCONFIRMED_REASON, WINDOWED_REASON, Segments, find_segments, packs_rows
from .record import Recording, record
from .stacks import find_stacks, unrun_stacks

__all__ = ["Analysis", "AnalysedBranch", "analyse", "NOT_PER_SAMPLE", "Segments"]

# Why a block branch that was found has no drop path: degraded results, which apply_drop_path warns of.
NOT_PER_SAMPLE = NOT_MAPPED | {FOLDED_REASON, WINDOWED_REASON, CONFLICTING_REASON, UNCONFIRMED_REASON}


@dataclass(frozen=True)
class AnalysedBranch:
    """A block branch with everything the passes found out about it."""

    branch: Branch
    unit: int  # number of its unit in the schedule (execution order)
    position: int  # its position among its unit's branches
    stack: int
    batch_dim: int  # of the module output where drop path goes
    shape: tuple  # of that module output
    rows_per_sample: int = 1  # entries of the batch dim per sample (attention windows, a tower's patches)
    interleaved: bool = False  # a sample's rows are B apart (row j * B + sample), not consecutive
    segments: Segments | None = None  # a packed branch: where its samples' boundaries are at run time


@dataclass(frozen=True)
class Analysis:
    """What one observed forward pass says about a model's residual branches."""

    recording: Recording
    index: ModuleIndex
    branches: tuple[AnalysedBranch, ...]
    num_units: int
    left_out: tuple[tuple[str, str], ...]  # (branch end path, reason)
    input_dim: int | None  # the inputs' batch dimension (None when batch_dim was given)
    args: tuple
    kwargs: dict
    unrun: tuple[str, ...] = ()  # repeated blocks the pass never ran ("path (n x Class)"): no drop path reaches them


def analyse(model: nn.Module, args: tuple, kwargs: dict, *, batch_dim: int | None, inputs_batch_first: bool) -> Analysis:
    """Record ``model(*args, **kwargs)`` and find its residual branches. The caller provides eval
    mode and ``no_grad`` (``isolation.observation``); every recorded pass starts from the same random
    state, so passes compared with each other see the same draws."""

    def probe(a: tuple, k: dict, sketch_sizes: frozenset[int]) -> Recording:
        with rng_restored(model, (a, k)):
            return record(model, a, k, sketch_sizes=sketch_sizes, sketch_sample=WATCHED_SAMPLE)

    try:
        recording = probe(args, kwargs, candidate_batch_sizes(args, kwargs, batch_dim, inputs_batch_first))
    except Exception as exc:
        raise ExampleInputsError(
            f"the model failed to run on the example inputs ({type(exc).__name__}: {exc}); pass "
            f"example_inputs= that the model accepts: a tensor, a tuple of positional arguments, or a "
            f"dict of keyword arguments."
        ) from exc
    index = ModuleIndex.of(model)
    branches, left_out = find_branches(find_merges(recording), index)
    dims = assign_batch_dims(
        branches, recording, probe, args, kwargs, batch_dim=batch_dim, inputs_batch_first=inputs_batch_first
    )
    per_branch: list = list(dims.per_branch)

    def run(hooks: list, a: tuple = args, k: dict = kwargs) -> None:
        handles = [
            m.register_forward_pre_hook(fn, with_kwargs=True) if kind == "pre" else m.register_forward_hook(fn)
            for m, kind, fn in hooks
        ]
        try:
            with rng_restored(model, (a, k)):
                model(*a, **k)
        finally:
            for handle in handles:
                handle.remove()

    if dims.input_dim is not None:  # a batch dimension that folds each sample's frames or tokens in with it
        for i, found in group_folded_rows(branches, per_branch, run, args, kwargs, dims.input_dim).items():
            per_branch[i] = found
    packed = [
        i for i, found in enumerate(per_branch)
        if found == PACKED_REASON or (not isinstance(found, str) and found.rows == 1 and packs_rows(branches[i], found.dim))
    ]
    if packed:
        for i, seg in zip(packed, find_segments([branches[i] for i in packed], run)):
            if isinstance(seg, Segments):
                per_branch[i] = Placement(seg.dim, branches[i].merge.shape, segments=seg)
            else:
                per_branch[i] = seg or PACKED_REASON
    if dims.packed_error and all(isinstance(found, str) for found in per_branch):
        reasons = sorted({found for found in per_branch if found != PACKED_REASON})
        raise BatchDimError(dims.packed_error + "".join(f" Found instead: {reason}." for reason in reasons))
    mapped = []
    for br, found in zip(branches, per_branch):
        if isinstance(found, str):
            left_out.append((br.end_path, found))
        else:
            mapped.append((br, found))
    kept = [br for br, _ in mapped]
    units, positions, num_units = number_units(kept, recording, index) if kept else ([], [], 0)
    stacks = find_stacks(kept, units, recording)
    analysed = tuple(
        AnalysedBranch(br, unit, position, stack, p.dim, p.shape, p.rows, p.interleaved, p.segments)
        for (br, p), unit, position, stack in zip(mapped, units, positions, stacks)
    )
    unrun = tuple(unrun_stacks(model, recording.call_counts))
    return Analysis(recording, index, analysed, num_units, tuple(left_out), dims.input_dim, args, kwargs, unrun)
