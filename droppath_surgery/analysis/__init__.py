"""Seeing: one recorded forward pass and the passes that read it.

``record`` (one pass: values, module calls, additions) -> ``merges`` (residual merges) -> ``blocks``
(block branches, their blocks and units, unit numbering) -> ``batch`` (batch dimensions, with the
layout replay) -> ``stacks`` (blocks linked by one residual stream); ``entries`` (where a branch takes
in the batch, for skip mode) is read by the planner. ``slots`` holds the one drop path slot rule.
``analyse`` runs them in order and returns plain data; nothing here changes the model.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ..errors import ExampleInputsError
from ..isolation import rng_restored
from .batch import NOT_PER_SAMPLE, WATCHED_SAMPLE, assign_batch_dims, candidate_batch_sizes
from .blocks import Branch, ModuleIndex, find_branches, number_units
from .merges import find_merges
from .record import Recording, record
from .stacks import find_stacks

__all__ = ["Analysis", "AnalysedBranch", "analyse", "NOT_PER_SAMPLE"]


@dataclass(frozen=True)
class AnalysedBranch:
    """A block branch with everything the passes found out about it."""

    branch: Branch
    unit: int  # number of its unit in the schedule (execution order)
    position: int  # its position among its unit's branches
    stack: int
    batch_dim: int  # of the module output where drop path goes
    shape: tuple  # of that module output
    rows_per_sample: int = 1  # consecutive entries of the batch dim per sample (attention windows)


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
    mapped = []
    for br, found in zip(branches, dims.per_branch):
        if isinstance(found, str):
            left_out.append((br.end_path, found))
        else:
            mapped.append((br, found))
    kept = [br for br, _ in mapped]
    units, positions, num_units = number_units(kept, recording, index) if kept else ([], [], 0)
    stacks = find_stacks(kept, units, recording)
    analysed = tuple(
        AnalysedBranch(br, unit, position, stack, dim, shape, rows)
        for (br, (dim, shape, rows)), unit, position, stack in zip(mapped, units, positions, stacks)
    )
    return Analysis(recording, index, analysed, num_units, tuple(left_out), dims.input_dim, args, kwargs)
