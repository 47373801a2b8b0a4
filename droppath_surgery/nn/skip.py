"""Dropped samples cost nothing: the op parts of ``skip_dropped=True``.

A branch that may skip has *entries* (module calls where it takes in the batch, found by
``analysis.entries``). A ``SkipEntry`` pre-hook on the first draws the kept samples and every entry
takes those rows of its full-batch arguments; the branch runs on ``k`` samples, and at its end the
``SkipDropPath`` scales the ``k`` outputs like the masked form (``1 / keep``, stochastically rounded
in bf16/fp16) and scatters them into a zero tensor of the full batch, which the model adds to its
stream as before. ``SkipState`` carries one branch's draw from its first entry to its end.

Which samples are kept (``kept_count``): ``"fixed"`` computes ``k`` samples, a uniformly random set
in a uniformly random order (``topk`` of uniform numbers). With ``m = floor(B (1 - p))``, the first
``m`` of them are kept, the next one with probability ``B (1 - p) - m``, any after it weighted 0
(``kept_positions``), so every sample is kept with probability exactly ``1 - p`` for any
``k >= ceil(B (1 - p))``. Eager code computes the least count, ``ceil(B (1 - p))`` (at least 1).
Compiled code computes ``ceil(B g / KEPT_GRID)`` in integer arithmetic, ``g / KEPT_GRID`` being
``1 - p`` rounded up on a grid, which a symbolic batch size takes: a frame that dynamo made dynamic
in the batch runs every batch size with one graph (tiny timm ViT, batch sizes 4, 4, 6, 8, 8, 12, 5:
2 frames, as unpatched). ``g`` is an int that compiled code guards on and that a rate change moves only
when it must (``SkipDropPath.kept_for``). Shapes depend only on ``B`` and ``g``: no host sync,
``fullgraph=True`` compiles. ``"random"``: independent decisions as in masking, one host sync
(``nonzero``) per branch.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from .. import nested
from ..checks import validate_rate
from ..errors import SkipError
from .drop_path import DropPath
from .functional import draw_uniform, group_rows, unbiased_scale

__all__ = [
    "BELOW_MIN_SKIP_RATE",
    "DEFAULT_MIN_SKIP_RATE",
    "KEPT_COUNTS",
    "EntryArg",
    "Entry",
    "SkipDropPath",
    "SkipEntry",
    "SkipState",
    "take_rows",
    "kept_mask",
    "scatter_rows",
]

KEPT_COUNTS = ("fixed", "random")
DEFAULT_MIN_SKIP_RATE = 0.1
BELOW_MIN_SKIP_RATE = "mask<min"  # a report's compute value: could skip, masks at its current rate


@dataclass(frozen=True)
class EntryArg:
    """A full-batch tensor argument of an entry call: where it is in ``(args, kwargs)`` (a
    ``nested`` index: ``(0, i, ...)`` for positional, ``(1, name, ...)`` for keyword arguments) and
    its batch dimension."""

    location: tuple
    batch_dim: int


@dataclass(frozen=True)
class Entry:
    """A module call where a branch takes in full-batch tensors; ``seen`` holds (location, shape) of
    every tensor argument of the traced call, with the batch or not."""

    module: nn.Module
    path: str
    args: tuple[EntryArg, ...]
    seen: tuple[tuple[tuple, tuple], ...] = ()


def take_rows(t: Tensor, idx: Tensor, dim: int) -> Tensor:
    """``t.index_select(dim, idx)``, by advanced indexing: on CPU ``index_select``'s backward
    (``index_add``) is several times slower than indexing's (``index_put`` with accumulation)."""
    return t[(slice(None),) * dim + (idx,)]


def kept_mask(x: Tensor, dim: int, idx: Tensor, weights: Tensor) -> Tensor:
    """The multiplier of the masked form of a kept set: ``weights`` at rows ``idx`` of ``x``'s dim ``dim``,
    0 elsewhere, shaped to broadcast against ``x``."""
    mask = torch.zeros(x.shape[dim], dtype=x.dtype, device=x.device)
    mask = mask.index_put((idx.to(x.device),), weights.to(device=x.device, dtype=x.dtype))
    shape = [1] * x.ndim
    shape[dim] = x.shape[dim]
    return mask.view(shape)


def scatter_rows(src: Tensor, idx: Tensor, dim: int, batch: int) -> Tensor:
    """A zero tensor of ``batch`` rows along ``dim`` holding ``src``'s rows at ``idx`` (distinct);
    ``index_put`` rather than ``index_add``, which is slow on CPU (see ``take_rows``)."""
    moved = src.movedim(dim, 0)
    # In place on a fresh zero tensor (no grad of its own): the out-of-place form would copy it.
    out = moved.new_zeros((batch, *moved.shape[1:])).index_put_((idx,), moved)
    return out.movedim(0, dim)


def draw_kept(drop: SkipDropPath, batch: int, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """The samples a branch computes, ``(idx, v, kept)``: their indices, the uniform numbers that
    round each one's scale, and whether each is kept (see the module docstring)."""
    if drop.kept_count == "fixed":
        k = drop.kept_for(batch)
        u = draw_uniform([2 * batch + 1], torch.float32, device, drop.sync_group)
        # The k samples with the largest uniform numbers, in decreasing order: a uniformly random
        # set in a uniformly random order (sorting by index would make the conditionally kept
        # sample the one of highest index, and bias it).
        idx = torch.topk(u[:batch], k).indices
        v = u[batch : batch + k]
        kept = kept_positions(k, batch, drop.keep_prob.to(device), u[2 * batch])
    else:
        u = draw_uniform([2 * batch], torch.float32, device, drop.sync_group)
        idx = (u[:batch] < drop.keep_prob.to(device)).nonzero().flatten()  # host synchronization
        v = u[batch:][: max(1, idx.numel())]
        kept = torch.full((max(1, idx.numel()),), idx.numel() > 0, device=device)
        if idx.numel() == 0:  # every sample dropped: run one, weighted 0 (empty batches break models)
            idx = torch.zeros(1, dtype=torch.long, device=device)
    return idx, v, kept


def kept_positions(k: int, batch: int, keep: Tensor, u: Tensor) -> Tensor:
    """Which of ``k`` computed samples, in uniformly random order, are kept, for ``k >= ceil(B keep)``:
    with ``m = floor(B keep)``, the first ``m``, the next one if ``u < B keep - m``, none after it.
    Each of the ``B`` samples is then kept with probability ``(m + (B keep - m)) / B = keep``. From
    tensors only (no host sync); ``k`` and ``batch`` may be symbolic under torch.compile."""
    expected = keep * batch  # float32, as the masked form's u < keep
    whole = torch.floor(expected)
    pos = torch.arange(k, device=keep.device)
    return (pos < whole) | ((pos == whole) & (u < expected - whole))


class SkipState:
    """One branch's skip set-up and its kept samples, from its first entry to its end.

    ``entries`` come from the plan; ``arm`` registers their pre-hooks (keeping the handles) and
    ``disarm`` removes them, after which the branch masks; ``reason`` says why.
    """

    def __init__(
        self, drop: SkipDropPath, batch_dim: int, path: str, entries: tuple[Entry, ...], reason: str = "",
        warned: set[str] | None = None,
    ) -> None:
        self.drop = drop
        self.warned = warned if warned is not None else set()  # warnings given, shared by a model's branches
        self.batch_dim = batch_dim
        self.path = path
        self.entries = tuple(entries)
        self.reason = reason
        self.enabled = not reason
        self.handles: list[RemovableHandle] = []
        self.pending: tuple | None = None  # (idx, weights or None, rounding uniforms, kept, batch)
        self.forced: tuple | None = None  # (idx, weights): a fixed kept set, for the exactness check
        self.decision: Any = None  # granularity="block": the block's shared BlockDecision

    def arm(self) -> None:
        """Register the entry pre-hooks (once); a state with a reason to mask registers nothing."""
        if not self.enabled or self.handles:
            return
        drawer = next(e for e in self.entries if e.args)
        for entry in self.entries:
            hook = SkipEntry(self, entry, draws=entry is drawer)
            self.handles.append(entry.module.register_forward_pre_hook(hook, with_kwargs=True))

    def unhook(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []
        self.pending = None

    def disarm(self, reason: str) -> None:
        """Mask from now on, for ``reason``: the entry hooks go."""
        self.unhook()
        self.enabled = False
        self.reason = reason

    def active(self) -> bool:
        if self.forced is not None:
            return True
        drop = self.drop
        return self.enabled and drop.training and drop.skipping

    def draw(self, batch: int, device: torch.device) -> None:
        if self.forced is not None:
            idx, weights = self.forced
            self.pending = (idx.to(device), weights.to(device), None, None, batch)
            return
        found = self.decision.kept(self.drop, batch, device) if self.decision is not None else draw_kept(self.drop, batch, device)
        idx, v, kept = found
        self.pending = (idx, None, v, kept, batch)

    def weights(self, v: Tensor, kept: Tensor, dtype: torch.dtype) -> Tensor:
        """The multiplier of each computed sample (``SkipDropPath.branch_weights``)."""
        return self.drop.branch_weights(v, kept, dtype)

    def finish(self, y: Tensor) -> Tensor:
        """The branch output of the kept samples, scaled and scattered into the full batch."""
        idx, weights, v, kept, batch = self.pending  # type: ignore[misc]
        dim = self.batch_dim if self.batch_dim >= 0 else self.batch_dim + y.ndim
        k = idx.shape[0]
        if y.shape[dim] != k:  # raised with the draw still pending: the exactness check blames this branch
            raise SkipError(
                f"the branch ending at {self.path} returned {y.shape[dim]} samples on dim {dim} but ran on {k}; "
                f"its code does not follow the traced pass. Apply drop path without skip_dropped=True."
            )
        self.pending = None
        if weights is None:
            weights = self.weights(v, kept, y.dtype)
        shape = [1] * y.ndim
        shape[dim] = k
        return scatter_rows(y * weights.to(y.dtype).view(shape), idx, dim, batch)


class SkipEntry:
    """Forward pre-hook on a module where a branch takes in the batch: subsets those arguments.

    The branch's first entry draws the kept samples. A tensor argument that held no batch in the
    traced call (a padding mask, position ids or keyword arguments a training loop adds, rotary tables
    that were ``(1, L, D)`` and are now per sample) is subset too when its batch dimension is clear: a
    dimension of the batch's size that was of size 1 (or absent) in the traced call, the branch's own
    batch dimension or else the only one. When it is not, the drawing entry lets the branch mask for
    this call (with one warning); a later entry, where the subset is already taken, raises ``SkipError``.
    """

    def __init__(self, state: SkipState, entry: Entry, draws: bool) -> None:
        self.state = state
        self.entry = entry
        self.args = entry.args
        self.draws = draws
        self.known = {a.location for a in entry.args}
        self.traced = dict(entry.seen)

    def _unseen(self, call: tuple, batch: int) -> tuple[list[tuple[tuple, int]], str]:
        """Where to subset tensor arguments that held no batch in the traced call, or why it cannot be done."""
        own = self.args[0].batch_dim if self.args else 0
        out = []
        for index, t in nested.leaves(call):
            if not isinstance(t, Tensor) or index in self.known:
                continue
            before = self.traced.get(index)
            dims = [
                d for d, n in enumerate(t.shape)
                if n == batch and (before is None or (len(before) == t.ndim and before[d] == 1))
            ]
            if not dims:
                continue
            if own in dims:
                out.append((index, own))
            elif len(dims) == 1:
                out.append((index, dims[0]))
            else:
                where = nested.describe(index[1:], "kwargs" if index[0] == 1 else "args")
                return [], f"{where} of shape {tuple(t.shape)}, not in the traced call, has the batch size in several dimensions"
        return out, ""

    def _warn(self, key: str, message: str) -> None:
        """One warning per kind and argument for all the branches of a model."""
        if key not in self.state.warned and not torch.compiler.is_compiling():
            self.state.warned.add(key)
            warnings.warn(f"skip_dropped: {message} (first at {self.entry.path}, in the branch ending at {self.state.path})", stacklevel=3)

    def __call__(self, module: nn.Module, args: tuple, kwargs: dict) -> Any:
        state = self.state
        if not state.active():
            return None
        call = (args, kwargs)
        if self.draws:
            found = ((nested.get_at(call, a.location), a.batch_dim) for a in self.args)
            first = next(((t, d) for t, d in found if isinstance(t, Tensor) and t.ndim > d), None)
            if first is None:
                return None
            batch = first[0].shape[first[1]]
            unseen, why = self._unseen(call, batch)
            if why:
                self._warn("mask:" + why, f"{why}, so the branch masks for this call instead of skipping")
                return None
            state.draw(batch, first[0].device)
        if state.pending is None:
            return None
        idx, batch = state.pending[0], state.pending[-1]
        if not self.draws:
            unseen, why = self._unseen(call, batch)
            if why:
                state.pending = None
                raise SkipError(
                    f"the branch ending at {state.path} runs on the kept samples, and {self.entry.path} got {why}, so "
                    f"it cannot be subset; apply drop path with example_inputs= that have this argument, or without "
                    f"skip_dropped=True."
                )
        if unseen:
            names = ", ".join(nested.describe(i[1:], "kwargs" if i[0] == 1 else "args") for i, _ in unseen)
            self._warn(
                "subset:" + names,
                f"{names} held no batch in the traced call and now do: they are subset with the kept samples, which "
                f"the apply-time exactness check did not cover; pass example_inputs= with them to check it",
            )
        for location, dim in [*((a.location, a.batch_dim) for a in self.args), *unseen]:
            def subset(t: Tensor, dim: int = dim) -> Tensor:
                if t.ndim > dim and t.shape[dim] == batch:
                    return take_rows(t, idx.to(t.device), dim)
                return t

            call = nested.replace_at(call, location, subset)
        return call

    def __repr__(self) -> str:
        return f"SkipEntry({self.state.path!r}, args={[a.location for a in self.args]}, draws={self.draws})"


# Under torch.compile the kept count is ``ceil(B g / KEPT_GRID)`` in integer arithmetic, which takes a
# symbolic batch size: one graph serves every batch size of a dynamic frame. ``g / KEPT_GRID`` is the
# keep probability rounded up on a grid that holds rates of three decimals, binary fractions down to
# 1/1024, thirds, ninths and sevenths exactly (8,064,000 = 2**10 * 3**2 * 5**3 * 7).
KEPT_GRID = 8_064_000
# How far above the keep probability the grid may stay after a rate change, where it no longer gives the
# least count at some batch size seen: at most ``B / 32 + 1`` samples computed in vain, and about one
# recompile per 1/32 of rate where many batch sizes are seen (one per count change with a few).
GRID_SLACK = 1 / 32
# A new grid is set as high as the counts at the batch sizes seen allow, up to this fraction above the
# keep probability, so that a slightly lower rate next needs no new grid (nor recompile).
GRID_HEADROOM = 1 / 8


def _grid_at(rate: float) -> int:
    """The least ``g >= 1`` with ``g / KEPT_GRID >= 1 - rate``, so that ``ceil(B g / KEPT_GRID)`` is at
    least ``ceil(B (1 - rate))`` for every batch size ``B`` (less a tolerance for the float rate, smaller
    than ``_count_at``'s up to batch sizes of about 8,000)."""
    return max(1, math.ceil((1.0 - rate) * KEPT_GRID - 1e-6))


def _grid_count(batch: int, grid: int) -> int:
    """``ceil(batch * grid / KEPT_GRID)`` for an int or a SymInt ``batch`` (between 1 and ``batch``)."""
    return (batch * grid + KEPT_GRID - 1) // KEPT_GRID


class SkipDropPath(DropPath):
    """A DropPath at the end of branches that may run on the kept samples only.

    While one of its branches is running on a subset (its entries drew kept samples), the forward
    scatters the subset's output into the full batch; otherwise it is a masked ``DropPath``.
    """

    kept_count: str
    min_skip_rate: float
    skip_states: list[SkipState]
    _skipping: bool

    def __init__(
        self, rate: float = 0.0, *, kept_count: str = "fixed", min_skip_rate: float = DEFAULT_MIN_SKIP_RATE, **kwargs: Any
    ) -> None:
        super().__init__(rate, **kwargs)
        self.kept_count = kept_count
        self.min_skip_rate = validate_rate(min_skip_rate, "min_skip_rate")
        self.skip_states: list[SkipState] = []
        self._batches: set[int] = set()  # batch sizes a branch was drawn for (see ``_seen``)
        self._last_batch: int | None = None  # set by compiled code, folded into ``_batches`` on a rate change
        self._grid = _grid_at(self._rate)  # the kept count under torch.compile (see ``kept_for``)
        self._counts_version = 0  # bumped at every change of ``_grid``
        self._forced_mask: tuple | None = None  # set inside ``probing`` only
        self._probe_log: Callable[[SkipDropPath, SkipState | None, Tensor], None] | None = None  # inside ``probing`` only
        self._update_skipping()

    @DropPath.rate.setter  # type: ignore[attr-defined]
    def rate(self, value: float) -> None:
        DropPath.rate.fset(self, value)  # type: ignore[attr-defined]
        self._update_skipping()
        self._update_grid()

    def _seen(self) -> set[int]:
        if self._last_batch is not None:
            self._batches.add(self._last_batch)
            object.__setattr__(self, "_last_batch", None)
        return self._batches

    def _update_grid(self) -> None:
        """After a rate change: keep ``_grid`` while it is valid (at least the new keep probability, on
        the grid) and either counts as few samples as the least valid grid at every batch size seen,
        or exceeds it by at most ``GRID_SLACK``. Else bump ``_counts_version`` (compiled code recompiles
        once) and take the largest grid that still gives the least counts at the batch sizes seen
        (the least grid before any is seen), at most ``GRID_HEADROOM`` above the least: room for the
        rate to fall a little without a new grid while the seen counts stay."""
        least = _grid_at(self._rate)
        grid = self._grid
        seen = self._seen()
        if grid >= least and (
            grid - least <= GRID_SLACK * KEPT_GRID
            or (seen and all(_grid_count(b, grid) == _grid_count(b, least) for b in seen))
        ):
            return
        top = min(KEPT_GRID, least + int(least * GRID_HEADROOM)) if seen else least
        for b in seen:  # ceil(b g / KEPT_GRID) stays at the least count while g <= count * KEPT_GRID / b
            top = min(top, _grid_count(b, least) * KEPT_GRID // b)
        object.__setattr__(self, "_grid", top)
        object.__setattr__(self, "_counts_version", self._counts_version + 1)

    def __setstate__(self, state: dict) -> None:
        # Pickled before the kept counts were versioned or gridded: start afresh (counts are recomputed on use).
        state.pop("_kept_counts", None)
        state.setdefault("_batches", set())
        state.setdefault("_last_batch", None)
        state.setdefault("_grid", _grid_at(state["_rate"]))
        state.setdefault("_counts_version", 0)
        super().__setstate__(state)

    @property
    def skipping(self) -> bool:
        """Branches that can skip do so at the current rate (it is above 0 and ``min_skip_rate``)."""
        return self._skipping

    def compute(self, state: SkipState) -> str:
        """What the report's compute column says for one branch: ``"skip"``, ``"mask"``, or
        ``"mask<min"`` (it can skip, but masks until its rate reaches ``min_skip_rate``)."""
        if not state.enabled:
            return "mask"
        return BELOW_MIN_SKIP_RATE if self._rate < self.min_skip_rate else "skip"

    def branch_weights(self, v: Tensor, kept: Tensor, dtype: torch.dtype) -> Tensor:
        """The multiplier of each computed sample: ``1 / keep`` (unbiased in ``dtype``) where the draw
        kept it (``kept``), else 0."""
        work = torch.float64 if dtype == torch.float64 else torch.float32
        if self.scale_by_keep:
            w = unbiased_scale(self.keep_prob.to(device=v.device, dtype=work), v.to(work), dtype)
        else:
            w = torch.ones(v.shape, dtype=work, device=v.device)
        return torch.where(kept, w, torch.zeros((), dtype=work, device=v.device))

    @staticmethod
    def _count_at(batch: int, rate: float) -> int:
        return min(batch, max(1, math.ceil(batch * (1.0 - rate) - 1e-9)))

    def _count(self, batch: int) -> int:
        return self._count_at(batch, self._rate)

    def kept_for(self, batch: int) -> int:
        """How many samples a branch computes with ``kept_count="fixed"``.

        Eager: ``ceil(B * (1 - p))``, at least 1. Compiled: ``ceil(B * g / KEPT_GRID)`` in integer
        arithmetic, where ``g / KEPT_GRID`` is the keep probability rounded up on a grid; the batch size
        may be symbolic, so a frame that dynamo made dynamic in the batch runs every batch size with
        one graph. A count above ``ceil(B * (1 - p))`` stays exact (``kept_positions``); it only costs
        compute. ``g`` is an int attribute that compiled code guards on (with ``_counts_version``),
        and a rate change moves it only when it must (``_update_grid``): when the new keep
        probability is above it, or when it is more than ``GRID_SLACK`` above and a smaller ``g``
        would compute fewer samples at a batch size seen so far (eager draws, and the last batch of
        compiled code before each rate change). So: no recompile on the second step, none for rate
        changes that keep the counts of the batch sizes seen (reading the float rate would recompile
        on every change), at most one for each new count.
        """
        if not torch.compiler.is_compiling():
            self._batches.add(batch)
            return self._count(batch)
        # A side effect that dynamo replays after the graph, also with a symbolic batch size (no graph
        # break): the rate setter folds it into the batch sizes seen.
        object.__setattr__(self, "_last_batch", batch)
        # Never true; reading the version makes compiled code guard on it, so that every change of the
        # grid compiles once, also back to an earlier one (as every change of a count did before).
        if self._counts_version < 0:
            raise AssertionError(self._counts_version)
        return _grid_count(batch, self._grid)

    def _update_skipping(self) -> None:
        # A plain bool attribute: torch.compile guards on it, so crossing min_skip_rate recompiles once.
        skipping = self._active and self._rate >= self.min_skip_rate and self.mode == "row"
        object.__setattr__(self, "_skipping", skipping)

    @contextlib.contextmanager
    def probing(self, forced: tuple | None, log: Callable[[SkipDropPath, SkipState | None, Tensor], None]) -> Iterator[None]:
        """For the exactness check: mask with the fixed kept set ``forced`` (also in eval mode; None:
        as usual) and call ``log(self, state or None, output)`` at every call."""
        self._forced_mask, self._probe_log = forced, log
        try:
            yield
        finally:
            self._forced_mask = self._probe_log = None

    def forward(self, x: Tensor) -> Tensor:
        used = next((s for s in self.skip_states if s.pending is not None), None)
        if used is not None:
            out = used.finish(x)
        elif self._forced_mask is not None:
            out = self._masked_forced(x)
        else:
            out = super().forward(x)
        if self._probe_log is not None:
            self._probe_log(self, used, out)
        return out

    def _masked_forced(self, x: Tensor) -> Tensor:
        """The masked form with the exactness check's fixed kept set (in eval mode)."""
        idx, weights = self._forced_mask  # type: ignore[misc]
        dim = self.batch_dim if self.batch_dim >= 0 else self.batch_dim + x.ndim
        if self.rows_per_sample > 1:  # a sample's rows (windows, patches) share its multiplier
            grouped, samples = group_rows(x, dim, self.rows_per_sample, self.interleaved)
            return (grouped * kept_mask(grouped, samples, idx, weights)).flatten(dim, dim + 1)
        return x * kept_mask(x, dim, idx, weights)

    def extra_repr(self) -> str:
        skipping = sum(s.enabled for s in self.skip_states)
        extra = f", skip {skipping}/{len(self.skip_states)} branches, kept_count={self.kept_count!r}"
        if self.min_skip_rate != DEFAULT_MIN_SKIP_RATE:
            extra += f", min_skip_rate={self.min_skip_rate}"
        return super().extra_repr() + extra
