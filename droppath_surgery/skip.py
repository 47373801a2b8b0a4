"""Dropped samples cost nothing: run each residual branch only on the samples that keep it.

A masked drop path computes the whole branch and then multiplies the dropped samples by zero. With
``apply_drop_path(..., skip_dropped=True)`` each branch that allows it runs on the kept samples
only (as DINOv2 does inside its own blocks, here for any traced model):

* the branch's first *entry* (``branch_inputs.py``: a module call where the branch takes in the
  batch) draws the kept samples; every entry takes those rows of its full-batch arguments;
* the branch runs on ``k`` samples;
* at the branch end, ``SkipDropPath`` scales the ``k`` outputs like the masked form (``1 / keep``,
  stochastically rounded in bf16/fp16) and scatters them into a zero tensor of the full batch
  (``index_put``), which the model then adds to the residual stream as before.

Given the same kept samples, the result and the gradients equal the masked form's (to float
rounding: a smaller batch may take other kernels). Eval mode runs no hook code that changes
anything, so eval output stays bitwise unchanged.

Which samples are kept (``kept_count``):

* ``"fixed"`` (default): exactly ``k = ceil(B * (1 - p))`` samples are computed, chosen uniformly
  at random (``topk`` of uniform numbers, on the device). When ``B * (1 - p)`` is not whole, the
  last of them is then kept only with probability ``1 - (k - B * (1 - p))``, so every sample is kept
  with probability exactly ``1 - p`` and the estimator is unbiased. Shapes depend only on ``B`` and
  the rate: no host synchronization, ``torch.compile(fullgraph=True)`` and CUDA graphs work. The
  joint distribution differs from independent masks: the number of kept samples is ``k`` or
  ``k - 1`` instead of binomial, so samples are slightly negatively correlated (never all dropped,
  never all kept unless ``p = 0``).
* ``"random"``: independent decisions per sample, exactly the masked form's distribution; the
  number kept is data dependent, which costs one host synchronization per branch (``nonzero``) and
  gives dynamic shapes.

Where skipping would not be exact the branch is masked instead, and the report says why: the
static reasons of ``branch_inputs.py``, and a run-time check (``check_exact``) that runs every
skippable branch on a fixed subset of a grown example batch and compares with the masked form.
Below ``min_skip_rate`` (default 0.1, from ``benchmarks/bench_skip.py``: no gain below it on a
ViT-S at batch 32) a branch masks (the index bookkeeping costs more than the few skipped samples
save); switching happens when the rate changes, e.g. through ``set_drop_path_rate``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .branch_inputs import BranchInputs, EntryArg
from .ops import DropPath, _broadcast_from_first_rank, unbiased_scale, validate_rate
from .trace import map_batch_tensors
from .verify import _flatten, rng_restored

__all__ = ["BELOW_MIN_SKIP_RATE", "DEFAULT_MIN_SKIP_RATE", "KEPT_COUNTS", "SkipDropPath", "SkipEntry", "SkipState", "arm", "check_exact", "disarm"]

KEPT_COUNTS = ("fixed", "random")
DEFAULT_MIN_SKIP_RATE = 0.1
BELOW_MIN_SKIP_RATE = "mask<min"  # a report's compute value: could skip, masks at its current rate


class SkipError(RuntimeError):
    """A skipping branch reached its end with another number of samples than it drew."""


class SkipState:
    """One branch's kept samples, from its first entry to its end (a plain object, traceable)."""

    def __init__(self, drop: SkipDropPath, batch_dim: int, path: str) -> None:
        self.drop = drop
        self.batch_dim = batch_dim
        self.path = path
        self.enabled = True
        self.pending: tuple | None = None  # (idx, weights or None, rounding uniforms, last kept, batch)
        self.forced: tuple | None = None  # (idx, weights) for check_exact

    def active(self) -> bool:
        if self.forced is not None:
            return True
        drop = self.drop
        return self.enabled and drop.training and drop._skipping

    def draw(self, batch: int, device: torch.device) -> None:
        if self.forced is not None:
            idx, weights = self.forced
            self.pending = (idx.to(device), weights.to(device), None, None, batch)
            return
        drop = self.drop
        keep = drop.keep_prob.to(device)
        if drop.kept_count == "fixed":
            k = drop.kept_for(batch)
            u = torch.rand(2 * batch + 1, device=device)
            if drop.sync_group is not None:
                u = _broadcast_from_first_rank(u, drop.sync_group)
            # The k samples with the largest uniform numbers, in decreasing order: a uniformly random
            # set, whose last member is a uniformly random one of them (sorting by index would make
            # the conditionally kept sample the highest index, and bias it).
            idx = torch.topk(u[:batch], k).indices
            v = u[batch : batch + k]
            # P(keep the last computed sample) = 1 - (k - B keep): each sample kept w.p. keep.
            last = u[2 * batch] >= (k - batch * keep)
        else:
            u = torch.rand(2 * batch, device=device)
            if drop.sync_group is not None:
                u = _broadcast_from_first_rank(u, drop.sync_group)
            idx = (u[:batch] < keep).nonzero().flatten()  # host synchronization
            v = u[batch:][: max(1, idx.numel())]
            last = torch.tensor(idx.numel() > 0, device=device)
            if idx.numel() == 0:  # every sample dropped: run one, weighted 0 (empty batches break models)
                idx = torch.zeros(1, dtype=torch.long, device=device)
        self.pending = (idx, None, v, last, batch)

    def weights(self, v: Tensor, last: Tensor, dtype: torch.dtype) -> Tensor:
        """The multiplier of each computed sample: ``1 / keep`` (unbiased in ``dtype``), and 0 for the
        last one when the draw left it out."""
        drop = self.drop
        work = torch.float64 if dtype == torch.float64 else torch.float32
        if drop.scale_by_keep:
            w = unbiased_scale(drop.keep_prob.to(device=v.device, dtype=work), v.to(work), dtype)
        else:
            w = torch.ones(v.shape, dtype=work, device=v.device)
        is_last = torch.arange(v.shape[0], device=v.device) == v.shape[0] - 1
        return torch.where(is_last & ~last, torch.zeros((), dtype=work, device=v.device), w)

    def finish(self, y: Tensor) -> Tensor:
        """The branch output of the kept samples, scaled and scattered into the full batch."""
        idx, weights, v, last, batch = self.pending  # type: ignore[misc]
        dim = self.batch_dim if self.batch_dim >= 0 else self.batch_dim + y.ndim
        k = idx.shape[0]
        if y.shape[dim] != k:  # raised with the draw still pending: check_exact blames this branch
            raise SkipError(
                f"the branch ending at {self.path} returned {y.shape[dim]} samples on dim {dim} but ran on {k}; "
                f"its code does not follow the traced pass. Apply drop path without skip_dropped=True."
            )
        self.pending = None
        if weights is None:
            weights = self.weights(v, last, y.dtype)
        shape = [1] * y.ndim
        shape[dim] = k
        return scatter_rows(y * weights.to(y.dtype).view(shape), idx, dim, batch)


def take_rows(t: Tensor, idx: Tensor, dim: int) -> Tensor:
    """``t.index_select(dim, idx)``, by advanced indexing: on CPU ``index_select``'s backward
    (``index_add``) is several times slower than indexing's (``index_put`` with accumulation)."""
    return t[(slice(None),) * dim + (idx,)]


def scatter_rows(src: Tensor, idx: Tensor, dim: int, batch: int) -> Tensor:
    """A zero tensor of ``batch`` rows along ``dim`` holding ``src``'s rows at ``idx`` (distinct);
    ``index_put`` rather than ``index_add``, which is slow on CPU (see ``take_rows``)."""
    moved = src.movedim(dim, 0)
    # In place on a fresh zero tensor (no grad of its own): the out-of-place form would copy it.
    out = moved.new_zeros((batch, *moved.shape[1:])).index_put_((idx,), moved)
    return out.movedim(0, dim)


class SkipDropPath(DropPath):
    """A DropPath at the end of branches that may run on the kept samples only.

    While one of its branches is running on a subset (its entries drew kept samples), the forward
    scatters the subset's output into the full batch; otherwise it is a masked ``DropPath``.
    """

    def __init__(self, rate: float = 0.0, *, kept_count: str = "fixed", min_skip_rate: float = DEFAULT_MIN_SKIP_RATE, **kwargs: Any) -> None:
        super().__init__(rate, **kwargs)
        self.kept_count = kept_count
        self.min_skip_rate = validate_rate(min_skip_rate, "min_skip_rate")
        self.skip_states: list[SkipState] = []
        self._kept_counts: dict[int, int] = {}  # batch size -> samples computed (kept_count="fixed")
        self._forced_mask: tuple | None = None  # set by check_exact only
        self._probe_log: list | None = None  # set by check_exact only
        self._update_skipping()

    @DropPath.rate.setter  # type: ignore[attr-defined]
    def rate(self, value: float) -> None:
        DropPath.rate.fset(self, value)  # type: ignore[attr-defined]
        self._update_skipping()
        for batch in self._kept_counts:
            self._kept_counts[batch] = self._count(batch)

    def _count(self, batch: int) -> int:
        return min(batch, max(1, math.ceil(batch * (1.0 - self._rate) - 1e-9)))

    def kept_for(self, batch: int) -> int:
        """How many samples a branch computes with ``kept_count="fixed"``: ``ceil(B * (1 - p))``, at
        least 1. Kept per batch size in a dict that rate changes update, so compiled code reads an
        int that changes only when the count does: a rate change that keeps the count recompiles
        nothing (reading the float rate would recompile on every change)."""
        k = self._kept_counts.get(batch)
        if k is None:
            k = self._kept_counts[batch] = self._count(batch)
        return k

    def _update_skipping(self) -> None:
        # A plain bool attribute: torch.compile guards on it, so crossing min_skip_rate recompiles once.
        skipping = self._active and self._rate >= self.min_skip_rate and self.mode == "row"
        object.__setattr__(self, "_skipping", skipping)

    def forward(self, x: Tensor) -> Tensor:
        used = next((s for s in self.skip_states if s.pending is not None), None)
        if used is not None:
            out = used.finish(x)
        elif self._forced_mask is not None:
            out = self._masked_forced(x)
        else:
            out = super().forward(x)
        if self._probe_log is not None:
            self._probe_log.append((used, out))
        return out

    def _masked_forced(self, x: Tensor) -> Tensor:
        """The masked form with check_exact's fixed kept set (in eval mode)."""
        idx, weights = self._forced_mask  # type: ignore[misc]
        dim = self.batch_dim if self.batch_dim >= 0 else self.batch_dim + x.ndim
        mask = torch.zeros(x.shape[dim], dtype=x.dtype, device=x.device)
        mask = mask.index_put((idx.to(x.device),), weights.to(device=x.device, dtype=x.dtype))
        shape = [1] * x.ndim
        shape[dim] = x.shape[dim]
        return x * mask.view(shape)

    def extra_repr(self) -> str:
        skipping = sum(s.enabled for s in self.skip_states)
        extra = f", skip {skipping}/{len(self.skip_states)} branches, kept_count={self.kept_count!r}"
        if self.min_skip_rate != DEFAULT_MIN_SKIP_RATE:
            extra += f", min_skip_rate={self.min_skip_rate}"
        return super().extra_repr() + extra


def _get(args: tuple, kwargs: dict, location: tuple) -> Any:
    key = location[0]
    value = (args[key] if key < len(args) else None) if isinstance(key, int) else kwargs.get(key)
    if len(location) > 1 and isinstance(value, (tuple, list)):
        value = value[location[1]]
    return value


def _put(args: list, kwargs: dict, location: tuple, value: Any) -> None:
    key = location[0]
    container: Any = args if isinstance(key, int) else kwargs
    if len(location) == 1:
        container[key] = value
        return
    inner = container[key]
    items = list(inner)
    items[location[1]] = value
    container[key] = type(inner)(items) if isinstance(inner, list) or not hasattr(inner, "_fields") else type(inner)(*items)


class SkipEntry:
    """Forward pre-hook on a module where a branch takes in the batch: subsets those arguments.

    The branch's first entry draws the kept samples. Recognised by type, so ``remove_drop_path``
    finds it without a handle.
    """

    def __init__(self, state: SkipState, args: tuple[EntryArg, ...], draws: bool) -> None:
        self.state = state
        self.args = tuple(args)
        self.draws = draws

    def __call__(self, module: nn.Module, args: tuple, kwargs: dict) -> Any:
        state = self.state
        if not state.active():
            return None
        if self.draws:
            found = ((_get(args, kwargs, a.location), a.batch_dim) for a in self.args)
            first = next(((t, d) for t, d in found if isinstance(t, Tensor) and t.ndim > d), None)
            if first is None:
                return None
            state.draw(first[0].shape[first[1]], first[0].device)
        if state.pending is None:
            return None
        idx, batch = state.pending[0], state.pending[-1]
        new_args, new_kwargs = list(args), dict(kwargs)
        for a in self.args:
            t = _get(args, kwargs, a.location)
            if isinstance(t, Tensor) and t.ndim > a.batch_dim and t.shape[a.batch_dim] == batch:
                _put(new_args, new_kwargs, a.location, take_rows(t, idx.to(t.device), a.batch_dim))
        return tuple(new_args), new_kwargs

    def __repr__(self) -> str:
        return f"SkipEntry({self.state.path!r}, args={[a.location for a in self.args]}, draws={self.draws})"


@dataclass
class Armed:
    """The skip set-up of one branch: its state and the entry hooks (module, hook key)."""

    state: SkipState
    hooks: list[tuple[nn.Module, int]]
    reason: str = ""  # why it masks instead (empty while it skips)


def arm(drop: SkipDropPath, batch_dim: int, path: str, plan: BranchInputs) -> Armed:
    """Set up skipping for one branch ending at ``drop`` (or record why it masks)."""
    state = SkipState(drop, batch_dim, path)
    drop.skip_states.append(state)
    if plan.reason:
        state.enabled = False
        return Armed(state, [], plan.reason)
    hooks = []
    for i, entry in enumerate(plan.entries):
        hook = SkipEntry(state, entry.args, draws=i == 0)
        handle = entry.module.register_forward_pre_hook(hook, with_kwargs=True)
        hooks.append((entry.module, handle.id))
    return Armed(state, hooks)


def disarm(armed: Armed, reason: str) -> None:
    """Make one branch mask instead of skip: its entry hooks go, its state is disabled."""
    armed.state.enabled = False
    armed.state.pending = None
    armed.reason = reason
    for module, key in armed.hooks:
        _pop_pre_hook(module, key)
    armed.hooks = []


def _pop_pre_hook(module: nn.Module, key: int) -> None:
    module._forward_pre_hooks.pop(key, None)
    module._forward_pre_hooks_with_kwargs.pop(key, None)


def remove_entries(root: nn.Module) -> int:
    """Remove every SkipEntry hook under ``root``; returns the count."""
    removed = 0
    for module in root.modules():
        for key, hook in list(module._forward_pre_hooks.items()):
            if isinstance(hook, SkipEntry):
                _pop_pre_hook(module, key)
                removed += 1
    return removed


# -- the run-time exactness check --------------------------------------------------------------

PROBE_BATCH = 4


def _grow(obj: Any, dim: int, batch: int, target: int) -> Any:
    """The example inputs with at least ``target`` samples: copies of the batch, each rolled along
    its last dimension so that no two samples are equal (a branch that mixes samples then shows)."""
    reps = -(-target // batch)

    def grow(t: Tensor) -> Tensor:
        last = t.ndim - 1
        rolls = [t if i == 0 or last == dim % t.ndim else t.roll(i, dims=last) for i in range(reps)]
        return torch.cat(rolls, dim=dim)

    return map_batch_tensors(obj, dim, batch, grow)


def _close(a: Tensor, b: Tensor) -> tuple[bool, float]:
    if a.shape != b.shape:
        return False, float("inf")
    if a.device.type == "meta":
        return True, 0.0
    a64, b64 = a.detach().double(), b.detach().double()
    diff = (a64 - b64).abs().nan_to_num(float("inf")).max().item() if a.numel() else 0.0
    scale = max(1.0, a64.abs().max().item() if a.numel() else 0.0)
    tol = (1e-4 if a.dtype in (torch.float32, torch.float64) else 3e-2) * scale
    return diff <= tol, diff


def check_exact(
    model: nn.Module, armed: list[Armed], drops: list[SkipDropPath], args: tuple, kwargs: dict, input_dim: int
) -> int:
    """Prove, on a grown example batch, that each skipping branch gives the masked form's output.

    Runs under the caller's ``observation`` (eval mode, no grad, RNG restored). With one fixed kept
    set for every branch (sample 1 dropped, the last computed sample weighted 0, the others 1.5),
    the model runs once masked and then skipping, every pass from the same random state; the first
    branch end whose output differs beyond float tolerance, or the branch that was running when the
    model raised, is disarmed with the reason, and the skipping pass is repeated until it agrees.
    A difference before any skipping branch ran (a model whose passes differ by themselves) disarms
    them all. Returns the number of passes run.
    """
    if not any(a.state.enabled for a in armed):
        return 0
    tensors = [t for t in _flatten((args, kwargs)) if t.ndim > input_dim]
    if not tensors:
        return 0
    batch_in = tensors[0].shape[input_dim]
    args, kwargs = _grow(args, input_dim, batch_in, PROBE_BATCH), _grow(kwargs, input_dim, batch_in, PROBE_BATCH)
    batch = max(PROBE_BATCH, batch_in)
    kept = [i for i in range(batch) if i != 1]
    weights = torch.full((len(kept),), 1.5)
    weights[-1] = 0.0
    forced = (torch.tensor(kept), weights)
    of_state = {id(a.state): a for a in armed}
    log: list[tuple[Any, Tensor]] = []

    def run(skipping: bool) -> Any:
        log.clear()
        for drop in drops:
            drop._forced_mask = forced
            drop._probe_log = log
            for state in drop.skip_states:
                state.pending = None
                state.forced = forced if skipping and state.enabled else None
        # Every pass from the same random state: random ops of the model's own (ViT-MAE's patch
        # masking runs in eval mode too) then draw the same numbers in each pass.
        with rng_restored(model, (args, kwargs)):
            return model(*args, **kwargs)

    try:
        reference_out = run(False)
        reference = list(log)
        passes = 1
        for _ in range(len(armed) + 1):
            try:
                out, error = run(True), None
            except Exception as exc:  # noqa: BLE001 - any failure of the subset run decides the branch
                out, error = None, exc
            passes += 1
            culprit, why = _culprit(log, reference, reference_out, out, error, of_state)
            if culprit is None:
                if error is not None:
                    raise error
                if why:  # a difference that no skipping branch ran before: the passes themselves differ
                    for a in armed:
                        if a.state.enabled:
                            disarm(a, f"the model does not repeat its outputs from one pass to the next ({why}), "
                                   "so skipping cannot be shown exact")
                return passes
            disarm(culprit, f"running it on a subset of the batch is not exact: {why}")
        return passes
    finally:
        for drop in drops:
            drop._forced_mask = None
            drop._probe_log = None
            for state in drop.skip_states:
                state.forced = None
                state.pending = None


def _culprit(log, reference, reference_out, out, error, of_state) -> tuple[Armed | None, str]:
    """The skipping branch to blame for a difference from the masked pass, and what it was."""

    def last_skipping(upto: int) -> Armed | None:
        for state, _ in reversed(log[:upto]):
            if state is not None and state.enabled:
                return of_state.get(id(state))
        return None

    if error is not None:
        running = next((a for a in of_state.values() if a.state.pending is not None), None)
        return running or last_skipping(len(log)), f"{type(error).__name__}: {error}"
    for i, ((state, got), (_, want)) in enumerate(zip(log, reference)):
        ok, diff = _close(want, got)
        if not ok:
            blame = of_state.get(id(state)) if state is not None else last_skipping(i)
            return blame, f"its output differs from the masked form (max |diff| {diff:.3g})"
    if len(log) != len(reference):
        return last_skipping(len(log)), "the model ran another sequence of branches"
    for want, got in zip(_flatten(reference_out), _flatten(out)):
        ok, diff = _close(want, got)
        if not ok:
            return last_skipping(len(log)), f"the model output differs from the masked form (max |diff| {diff:.3g})"
    return None, ""
