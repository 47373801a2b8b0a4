"""Batch dimensions: which dimension of each branch output indexes samples.

The inputs' batch dimension is 0 for inputs built by ``integrations.inputs``; for inputs a user
passes it is 0 or 1: the one that fits the traced shapes (each branch's batch dimension is the one
whose size is the batch size; where that is ambiguous a second pass with the batch doubled shows
which dimension grows). Where both fit, a small pass with only sample 0 changed decides: no other
sample of any branch may change (a sequence-first ``(L, N, D)`` input read as batch-first fails that,
since attention spreads the change over the tokens). On the meta device there are no values to
compare: where both fit, ``BatchDimError`` asks for ``batch_dim=``.

A branch that reaches its merge through layout operations is dropped at the module output: the
layout is replayed on a tensor of sample indices, and the output's batch dimension is the one
dimension whose indices arrive exactly as the samples of the tensor added. With none (attention
windows of several samples) the branch cannot be dropped per sample and is left out. So is a branch
whose stream has no dimension of the batch size at all (a *packed* stream: Qwen2-VL's vision tower runs
the patches of every image as one sequence): ``packed`` then looks for its samples' boundaries. Where
the inputs are the user's and other branches have a batch dimension, the sample-independence pass must
confirm it (on the meta device it cannot, and ``BatchDimError`` asks for ``batch_dim=``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import Tensor

from .. import nested
from ..checks import check_batch_dim
from ..errors import BatchDimError
from ..sketch import agree, changed_only_first
from .blocks import Branch, branch_output_hooks
from .merges import find_merges
from .record import Recording

__all__ = [
    "BatchDims", "Placement", "assign_batch_dims", "candidate_batch_sizes", "group_folded_rows", "map_batch_tensors", "FOLDED_REASON", "NOT_PER_SAMPLE", "PACKED_REASON",
    "UNMAPPED_REASON", "WATCHED_SAMPLE",
]

UNMAPPED_REASON = (
    "the branch reaches the residual through layout operations (view, reshape, permute, slicing) that do "
    "not keep whole samples of the module output together (e.g. windows or tokens of several samples), so "
    "dropping at the module would not drop whole samples of the residual"
)

PACKED_REASON = (
    "no dimension of the branch's stream has the batch size: the stream packs or folds the samples together "
    "(e.g. a vision tower that runs the patches of all images as one sequence), and its block is not called "
    "with the samples' boundaries (cu_seqlens), so the branch cannot be dropped per sample"
)
FOLDED_REASON = (
    "the branch's batch dimension folds each sample's frames or tokens in with it (B x T rows), and a check pass "
    "did not confirm that each sample's rows are consecutive or B apart, so no decision per sample can be placed"
)
PACKED = -1  # the batch dimension of a packed branch
# Why a block branch that was found has no drop path: degraded results, which apply_drop_path warns of.
NOT_PER_SAMPLE = frozenset({UNMAPPED_REASON, PACKED_REASON})

SAMPLES_COMPARED = 2  # the sample-independence check changes sample 0 and watches sample WATCHED_SAMPLE
WATCHED_SAMPLE = 1
Prober = Callable[[tuple, dict, frozenset[int]], Recording]  # (args, kwargs, sketch sizes) -> a recorded pass


def candidate_batch_sizes(args: tuple, kwargs: dict, batch_dim: int | None, inputs_batch_first: bool) -> frozenset[int]:
    """The sizes the inputs' batch dimension may have, where the sample-independence check will compare
    the passes' branch values (``record``'s ``sketch_sizes``); empty when no check will run."""
    if batch_dim is not None or inputs_batch_first:
        return frozenset()
    tensors = [t for t in nested.tensors((args, kwargs)) if t.ndim > 0]
    return frozenset(tensors[0].shape[d] for d in (0, 1) if d < tensors[0].ndim) if tensors else frozenset()


class Placement(NamedTuple):
    """Where a branch's samples are in the module output that drop path goes on."""

    dim: int  # the batch dimension
    shape: tuple  # of that output, as traced
    rows: int = 1  # entries of ``dim`` per sample (attention windows, a video's frames, a tower's patches)
    interleaved: bool = False  # a sample's rows are B apart (row j * B + sample), not consecutive
    segments: Any = None  # a packed stream: where the block's call holds its samples' boundaries (``packed.Segments``)


@dataclass(frozen=True)
class BatchDims:
    """Per branch, the ``Placement`` of its samples in the module output where drop path goes, or the
    reason no dimension holds whole samples; and the inputs' batch dimension (None when ``batch_dim``
    was given)."""

    per_branch: tuple[Placement | str, ...]
    input_dim: int | None
    packed_error: str = ""  # every branch is packed: the error unless some find their samples' boundaries


def map_batch_tensors(obj: Any, dim: int, batch: int, fn: Callable[[Tensor], Tensor]) -> Any:
    """``obj`` with ``fn`` applied to every tensor that has ``batch`` entries along ``dim``."""

    def apply(t: Tensor) -> Tensor:
        return fn(t) if t.ndim > 0 and -t.ndim <= dim < t.ndim and t.shape[dim] == batch else t

    return nested.map_tensors(obj, apply)


def _sample_ids(shape: tuple, dim: int) -> Tensor:
    """A tensor of ``shape`` whose every element holds its index along ``dim``."""
    view = [1] * len(shape)
    view[dim] = shape[dim]
    return torch.arange(shape[dim]).view(view).expand(shape).contiguous()


def _at_end(br: Branch, merged_dim: int) -> Placement | None:
    """The batch dimension and shape of a branch's module output, given the merged tensor's, and how
    many consecutive entries of that dimension belong to one sample (attention windows of a sample:
    SAM ViT's and MaxViT's partitions put ``g`` windows per sample there, and each sample's windows
    share its decision). None when no dimension holds whole samples."""
    shape = br.merge.shape
    layout = br.merge.layout
    if not layout:
        return Placement(merged_dim, shape)
    end_shape = tuple(layout[0].in_shape)
    batch = shape[merged_dim]
    target = _sample_ids(shape, merged_dim)
    matches = []
    for d, size in enumerate(end_shape):
        if size % batch:
            continue
        rows = size // batch
        t = torch.div(_sample_ids(end_shape, d), rows, rounding_mode="floor")  # sample of each entry along d
        try:
            for op in layout:
                t = op(t)
        except Exception:  # noqa: BLE001 - an operation that cannot be replayed off its device or dtype
            return None
        if isinstance(t, Tensor) and t.shape == target.shape and torch.equal(t, target):
            matches.append(Placement(d, end_shape, rows))
    exact = [m for m in matches if m.rows == 1]
    if len(exact) == 1:
        return exact[0]
    return matches[0] if len(matches) == 1 else None


def _ends_at(br: Branch, merged_dim: int) -> Placement | str:
    found = _at_end(br, merged_dim)
    return UNMAPPED_REASON if found is None else found


def _merged(recording: Recording) -> dict[tuple, tuple[tuple, tuple | None]]:
    """Merge key -> (shape, the branch operand's (dtype, sketches by dimension), or None) of every
    merge of a recorded pass."""
    out = {}
    for m in find_merges(recording):
        sketches = recording.additions[m.addition].sketches
        out[m.key] = (m.shape, sketches[m.operand] if sketches else None)
    return out


def _dims_by_size(
    branches: list[Branch], probe: Prober, args: tuple, kwargs: dict, input_dim: int, batch: int
) -> tuple[list[int], bool] | None:
    """Batch dimension of each branch's merged tensor, given the inputs' (``PACKED`` for a branch with no
    dimension of the batch size that the doubled pass does not resolve either), and whether the shapes
    alone did not decide (the doubled pass was needed, or a branch is packed); None when undecidable or
    when no branch has a batch dimension."""
    dims: list[int | None] = []
    for br in branches:
        matches = [d for d, n in enumerate(br.merge.shape) if n == batch]
        dims.append(matches[0] if len(matches) == 1 else None)
    if all(d is not None for d in dims) and all(d == input_dim for d in dims):
        return dims, False  # type: ignore[return-value]
    # Ambiguous or missing sizes, or a branch whose only dimension of the batch size is not the inputs' (a
    # video model's temporal layers run (B x tokens, T, D): with T = B, T fits by size): record again with
    # the batch doubled and see which dimension doubles.
    double = lambda t: torch.cat([t, t], dim=input_dim)  # noqa: E731
    try:
        doubled = _merged(probe(map_batch_tensors(args, input_dim, batch, double), map_batch_tensors(kwargs, input_dim, batch, double), frozenset()))
    except Exception:  # noqa: BLE001 - a model that cannot take the doubled batch (packed images in a VLM)
        doubled = {}
    for i, br in enumerate(branches):
        shape = br.merge.shape
        other = doubled.get(br.merge.key)
        same = []
        if other is not None and len(other[0]) == len(shape):
            grown = [d for d, (a, b) in enumerate(zip(shape, other[0])) if b == 2 * a and a > 0]
            same = [d for d in grown if all(x == y for j, (x, y) in enumerate(zip(shape, other[0])) if j != d)]
        if dims[i] is not None:
            if other is not None and dims[i] not in same:  # the batch size by chance: it did not grow with the batch
                dims[i] = same[0] if len(same) == 1 else PACKED  # the one that did (rows of each sample: checked later)
            continue
        if len(same) == 1:
            dims[i] = same[0]
        elif batch in shape:  # several dimensions of the batch size, and the doubled pass does not tell
            return None
        else:
            dims[i] = PACKED
    if all(d == PACKED for d in dims):
        return None
    return dims, True  # type: ignore[return-value]


def _perturb_first_sample(obj: Any, dim: int, batch: int, gen: torch.Generator, ints: bool = True) -> Any:
    """A copy of the inputs in which sample 0 (index 0 along ``dim``) differs and the rest are equal (its
    integer tensors too, rolled, unless not ``ints``: sizes and grids then stay valid)."""

    def perturb(t: Tensor) -> Tensor:
        if not ints and not t.is_floating_point():
            return t
        out = t.clone()
        first = out.select(dim, 0)
        if out.is_floating_point():
            noise = torch.randn(first.shape, generator=gen, dtype=torch.float32).to(first.device, first.dtype)
            first.add_(noise)
        elif first.numel() > 1:
            first.copy_(first.flatten().roll(1).view_as(first))
        return out

    return map_batch_tensors(obj, dim, batch, perturb)


def _samples_independent(
    branches: list[Branch], dims: list[int], reference: Recording, probe: Prober, args: tuple, kwargs: dict, input_dim: int, batch: int
) -> bool:
    """True if changing sample 0 of the inputs changes sample ``WATCHED_SAMPLE`` (1) of no branch: the first
    ``SAMPLES_COMPARED`` samples, sample 0 changed, run once more (a small pass), and sample 1 of
    each branch must agree with the full batch's (``sketch.agree``: within float tolerance, as the
    batch size may change the summation order)."""
    gen = torch.Generator().manual_seed(1)
    first = lambda t: t.narrow(input_dim, 0, SAMPLES_COMPARED)  # noqa: E731
    if batch > SAMPLES_COMPARED:
        args, kwargs = map_batch_tensors(args, input_dim, batch, first), map_batch_tensors(kwargs, input_dim, batch, first)
    small = min(batch, SAMPLES_COMPARED)
    perturbed = (_perturb_first_sample(args, input_dim, small, gen), _perturb_first_sample(kwargs, input_dim, small, gen))
    try:
        after = _merged(probe(*perturbed, frozenset({small})))
    except Exception:  # noqa: BLE001 - inputs cut to two samples that the model cannot run: not shown independent
        return False
    before = _merged(reference)
    for br, d in zip(branches, dims):
        a, b = before.get(br.merge.key, (None, None))[1], after.get(br.merge.key, (None, None))[1]
        if a is None or b is None or d not in a[1] or d not in b[1] or a[1][d] is None or b[1][d] is None:
            continue
        if not agree(a[1][d], b[1][d], a[0])[0]:
            return False
    return True


def assign_batch_dims(
    branches: list[Branch],
    recording: Recording,
    probe: Prober,
    args: tuple,
    kwargs: dict,
    *,
    batch_dim: int | None,
    inputs_batch_first: bool,
) -> BatchDims:
    """The batch dimension of every branch (see the module docstring). ``recording`` is the main
    pass; it must keep values when the inputs are the user's and ``batch_dim`` is None."""
    if not branches:
        return BatchDims((), 0 if inputs_batch_first else None)
    if batch_dim is not None:
        for br in branches:
            check_batch_dim(batch_dim, len(br.merge.shape), f"the branch ending at {br.end_path} with shape {br.merge.shape}")
        return BatchDims(tuple(_ends_at(br, batch_dim % len(br.merge.shape)) for br in branches), None)
    tensors = [t for t in nested.tensors((args, kwargs)) if t.ndim > 0]
    if not tensors:
        raise BatchDimError(
            "the example inputs hold no tensor with a batch dimension, so the batch dimension of the "
            "residual branches cannot be found; pass batch_dim=."
        )
    meta = tensors[0].device.type == "meta"
    candidates = [0] if inputs_batch_first else [d for d in (0, 1) if d < tensors[0].ndim]
    fitting: list[tuple[int, list[int]]] = []
    unconfirmed: list[int] = []  # dimensions the shapes fit that the sample-independence check rejected
    unsure = False  # the shapes alone did not decide
    for input_dim in candidates:
        sized = _dims_by_size(branches, probe, args, kwargs, input_dim, tensors[0].shape[input_dim])
        if sized is not None:
            fitting.append((input_dim, sized[0]))
            unsure |= sized[1]
    packed = any(PACKED in dims for _, dims in fitting)
    if (len(fitting) > 1 or (unsure and not inputs_batch_first)) and not meta:
        # Several dimensions fit the traced shapes, or one fits only with the doubled pass or for some
        # branches (patches of a packed stream grow with a doubled input too): the samples are along
        # the first one whose samples the model keeps apart (a batch of 1 has nothing to compare and is
        # taken as it is). Inputs built for the model (``inputs_batch_first``) hold the batch first.
        batch = lambda d: tensors[0].shape[d]  # noqa: E731
        independent = (
            (d, dims) for d, dims in fitting
            if batch(d) <= 1 or _samples_independent(branches, dims, recording, probe, args, kwargs, d, batch(d))
        )
        unconfirmed = [d for d, _ in fitting]
        fitting = [found] if (found := next(independent, None)) else []
    if fitting and packed and meta and not inputs_batch_first:
        raise BatchDimError(
            f"on the meta device there are no values to tell whether dimension {fitting[0][0]} of the example input "
            f"of shape {tuple(tensors[0].shape)} indexes samples: some residual branches have no dimension of that "
            f"size (a packed stream); pass batch_dim= (0 for (N, ...) layouts, 1 for sequence-first (L, N, D))."
        )
    if len(fitting) > 1:
        raise BatchDimError(
            f"on the meta device there are no values to tell which dimension of the inputs indexes samples, and "
            f"both dimensions {[d for d, _ in fitting]} of the example input of shape {tuple(tensors[0].shape)} fit "
            f"the traced shapes; pass batch_dim= (0 for (N, ...) layouts, 1 for sequence-first (L, N, D))."
        )
    if fitting:
        input_dim, dims = fitting[0]
        return BatchDims(tuple(PACKED_REASON if d == PACKED else _ends_at(br, d) for br, d in zip(branches, dims)), input_dim)
    sizes = {tensors[0].shape[d] for d in candidates}
    if all(n not in sizes for br in branches for n in br.merge.shape):
        # Every branch is packed: ``analysis.packed`` may still find each sample's rows at run time.
        return BatchDims((PACKED_REASON,) * len(branches), None, packed_error=(
            f"no residual branch has a dimension of the batch size ({', '.join(map(str, sorted(sizes)))}: input "
            f"dimensions {candidates} of the example input of shape {tuple(tensors[0].shape)}): the residual stream "
            f"packs the samples together (e.g. a vision tower that runs the patches of all images as one sequence), "
            f"and no block is called with the samples' boundaries (a 1-D integer tensor of cumulative lengths, as "
            f"cu_seqlens) that a check pass confirms{' (the meta device has no values to check)' if meta else ''}, so "
            f"no branch can be dropped per sample. Patch the model on a real device, patch the model that holds it "
            f"(a vision-language model drops its text blocks), or pass example_inputs= whose first tensor has the batch."
        ))
    why = ""
    if unconfirmed:
        why = (
            f" Input dimensions {unconfirmed} fit the traced shapes, but a check pass on the first "
            f"{SAMPLES_COMPARED} samples with sample 0 changed also changed sample {WATCHED_SAMPLE} of some branch "
            f"(samples mixed, or a stream whose length depends on the values, as a duration predictor's)."
        )
    raise BatchDimError(
        f"cannot tell which dimension of the residual stream indexes samples (tried input dimensions "
        f"{candidates}; example input shape {tuple(tensors[0].shape)}).{why} Pass batch_dim= (0 for (N, ...) "
        f"layouts, 1 for sequence-first (L, N, D)), and use an example batch of at least 2 samples."
    )


def group_folded_rows(
    branches: list[Branch], per_branch: list, run: Callable[..., None], args: tuple, kwargs: dict, input_dim: int
) -> dict[int, Placement | str]:
    """Branches whose batch dimension grew with the batch but holds ``k`` rows per sample (a video model's
    spatial layers run ``B x T`` frames, its temporal layers ``B x N`` token positions; DepthPro's patch encoder
    runs ``patches x B`` rows patch-major, SegGPT its prompts and inputs as ``2 x B``): a check pass shows where
    each sample's rows are (sample 0 of the inputs changed: rows ``[0, k)`` change and no other row does, or
    rows ``0, B, 2B, ...`` - interleaved). Returns, per such branch, its ``Placement`` (one decision for ``k``
    rows) or ``FOLDED_REASON`` (also on the meta device, where there are no values to check)."""
    tensors = [t for t in nested.tensors((args, kwargs)) if t.ndim > input_dim]
    if not tensors:
        return {}
    batch = tensors[0].shape[input_dim]
    folded: dict[int, int] = {}
    for i, found in enumerate(per_branch):
        if isinstance(found, str) or found.rows != 1 or branches[i].merge.layout:
            continue
        size = found.shape[found.dim]
        if size != batch and batch > 0:
            folded[i] = size // batch if size % batch == 0 else 0
    if not folded:
        return {}
    out: dict[int, Placement | str] = {i: FOLDED_REASON for i in folded}
    checked = {i: k for i, k in folded.items() if k > 1}
    if batch < 2 or not checked or tensors[0].device.type == "meta":
        return out
    watched = {i: branches[i] for i in checked}
    reference: dict[int, Tensor] = {}
    perturbed: dict[int, Tensor] = {}
    try:
        run(branch_output_hooks(watched, reference))
    except Exception:  # noqa: BLE001 - a model that does not run twice alike: nothing confirmed
        return out
    # Sample 0 changed, integer inputs too (token ids), else its floats only (a rolled image size or grid may
    # be one the model cannot take: LLaVA-NeXT's image_sizes).
    for ints in (True, False):
        gen = torch.Generator().manual_seed(2)
        changed = (_perturb_first_sample(args, input_dim, batch, gen, ints), _perturb_first_sample(kwargs, input_dim, batch, gen, ints))
        perturbed.clear()
        try:
            run(branch_output_hooks(watched, perturbed), *changed)
            break
        except Exception:  # noqa: BLE001, S112 - the inputs changed that way do not run: the next way is tried
            continue
    for i, k in checked.items():
        dim, shape = per_branch[i].dim, per_branch[i].shape
        if i in reference and i in perturbed:
            out[i] = next(
                (Placement(dim, shape, k, interleaved) for interleaved in (False, True)
                 if changed_only_first(reference[i], perturbed[i], dim, k, interleaved)),
                FOLDED_REASON,
            )
    return out
