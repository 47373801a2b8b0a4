"""Proof that surgery did no harm.

* ``compare_outputs``: bitwise comparison of two nested outputs, describing each difference.
* ``state_fingerprint`` / ``compare_state``: ``state_dict`` keys and, per entry, the tensor's identity,
  storage, shape, dtype and version counter: surgery never writes a tensor, so an unchanged fingerprint
  proves unchanged keys and values without copying weights.
* ``verify_eval``: the patched model in eval mode against the outputs of the recorded pass. The pass
  runs under a pass-through ``TorchFunctionMode``, as the recording did, so both take the same kernels
  (``nn.TransformerEncoderLayer`` takes a fused fast path only when no mode is active).
* ``check_skipping``: with ``skip_dropped=True``, each skipping branch on a fixed subset of a grown
  example batch must give the masked form's output, or it masks, with the reason.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from . import nested
from .analysis.batch import map_batch_tensors
from .analysis.record import version_counter
from .errors import VerificationError
from .isolation import observation, rng_restored
from .nn import SkipDropPath
from .nn.skip import SkipState

__all__ = ["compare_outputs", "has_meta_tensors", "state_fingerprint", "compare_state", "verify_eval", "check_skipping"]


def _bitwise_equal(a: Tensor, b: Tensor) -> bool:
    if a.shape != b.shape or a.dtype != b.dtype or a.device != b.device:
        return False
    if a.device.type == "meta":  # no values to compare: shape and dtype are all there is
        return True
    if a.is_floating_point() or a.is_complex():
        return torch.equal(a.detach().contiguous().view(torch.uint8), b.detach().contiguous().view(torch.uint8))
    return torch.equal(a, b)


def compare_outputs(before: Any, after: Any) -> list[str]:
    """Descriptions of every difference between two outputs; empty when bitwise identical."""
    left = list(nested.leaves(before))
    right = list(nested.leaves(after))
    if [i for i, _ in left] != [i for i, _ in right]:
        return [f"output structure changed: {[nested.describe(i) for i, _ in left]} vs {[nested.describe(i) for i, _ in right]}"]
    diffs = []
    for (index, a), (_, b) in zip(left, right):
        name = nested.describe(index)
        if isinstance(a, Tensor) and isinstance(b, Tensor):
            if not _bitwise_equal(a, b):
                if a.shape != b.shape or a.dtype != b.dtype:
                    diffs.append(f"{name}: {tuple(a.shape)} {a.dtype} became {tuple(b.shape)} {b.dtype}")
                else:
                    differ = (a != b) & ~(a.isnan() & b.isnan()) if a.is_floating_point() else a != b
                    delta = (a.double() - b.double()).abs().nan_to_num(0).max().item()
                    diffs.append(f"{name}: {int(differ.sum())} of {a.numel()} elements differ (max |diff| {delta:.3g})")
        elif isinstance(a, Tensor) or isinstance(b, Tensor):
            diffs.append(f"{name}: {type(a).__name__} became {type(b).__name__}")
        else:
            diffs += _compare_objects(name, a, b)
    return diffs


def _compare_objects(name: str, a: Any, b: Any) -> list[str]:
    """Two non-tensor leaves: equal by ``==``, or, for objects that hold tensors (a decoder's
    ``DynamicCache``), holding bitwise equal tensors at the same attribute paths."""
    try:
        if bool(a == b):
            return []
    except Exception:  # noqa: BLE001 - objects without a usable ==: judged by what they hold
        pass
    held_a, held_b = nested.held_tensors(a), nested.held_tensors(b)
    if type(a) is not type(b) or not (held_a or held_b):
        return [f"{name}: {a!r} became {b!r}"]
    if [p for p, _ in held_a] != [p for p, _ in held_b]:
        return [f"{name}: {type(a).__name__} holds other tensors ({len(held_a)} at {[p for p, _ in held_a][:3]} ... became {len(held_b)})"]
    return [f"{name}{p}: differs" for (p, x), (_, y) in zip(held_a, held_b) if not _bitwise_equal(x, y)]


def has_meta_tensors(obj: Any) -> bool:
    return any(t.device.type == "meta" for t in nested.tensors(obj))


def state_fingerprint(model: nn.Module) -> dict[str, tuple]:
    out: dict[str, tuple] = {}
    for key, t in model.state_dict(keep_vars=True).items():
        if isinstance(t, Tensor):
            out[key] = (id(t), t.data_ptr() if t.device.type != "meta" else 0, tuple(t.shape), t.dtype, version_counter(t))
        else:
            out[key] = (id(t),)
    return out


def compare_state(before: dict[str, tuple], after: dict[str, tuple]) -> list[str]:
    diffs = []
    added = [k for k in after if k not in before]
    missing = [k for k in before if k not in after]
    if added:
        diffs.append(f"state_dict gained keys {added[:5]}{' ...' if len(added) > 5 else ''}")
    if missing:
        diffs.append(f"state_dict lost keys {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    changed = [k for k in before if k in after and before[k] != after[k]]
    if changed:
        diffs.append(f"state_dict tensors replaced or written: {changed[:5]}{' ...' if len(changed) > 5 else ''}")
    return diffs


class _PassThrough(TorchFunctionMode):
    """Runs every operation as it is; only its presence matters (it selects the same kernels as the
    recording's mode did)."""

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        return func(*args, **(kwargs or {}))


def verify_eval(model: nn.Module, reference: Any, state_before: dict[str, tuple], args: tuple, kwargs: dict) -> None:
    """``VerificationError`` unless the patched model's eval output equals ``reference`` bitwise
    and its ``state_dict`` is unchanged."""
    with observation(model, (args, kwargs)), _PassThrough():
        after = model(*args, **kwargs)
    diffs = compare_outputs(reference, after) + compare_state(state_before, state_fingerprint(model))
    if diffs:
        raise VerificationError(
            "drop path changed the model in eval mode, so it was removed again: " + "; ".join(diffs[:5])
            + ". Please report this model; apply_drop_path(..., filter_fn=...) can leave out the branch at fault."
        )


# -- skipping: the run-time exactness check -----------------------------------------------------

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


def check_skipping(model: nn.Module, drops: list[SkipDropPath], args: tuple, kwargs: dict, input_dim: int) -> int:
    """Prove, on a grown example batch, that each skipping branch gives the masked form's output.

    With one fixed kept set for every branch (sample 1 dropped, the last computed sample weighted 0,
    the others 1.5), the model runs once masked and then skipping, in eval mode without grad, every
    pass from the same random state; the first branch end whose output differs beyond float
    tolerance, or the branch that was running when the model raised, is disarmed with the reason, and
    the skipping pass is repeated until it agrees. A difference before any skipping branch ran (a
    model whose passes differ by themselves) disarms them all. Returns the number of passes run.
    """
    states = [s for d in drops for s in d.skip_states]
    if not any(s.enabled for s in states):
        return 0
    tensors = [t for t in nested.tensors((args, kwargs)) if t.ndim > input_dim]
    if not tensors:
        return 0
    batch_in = tensors[0].shape[input_dim]
    args, kwargs = _grow(args, input_dim, batch_in, PROBE_BATCH), _grow(kwargs, input_dim, batch_in, PROBE_BATCH)
    batch = max(PROBE_BATCH, batch_in)
    kept = [i for i in range(batch) if i != 1]
    weights = torch.full((len(kept),), 1.5)
    weights[-1] = 0.0
    forced = (torch.tensor(kept), weights)
    log: list[tuple[Any, Tensor]] = []

    def run(skipping: bool) -> Any:
        log.clear()
        for state in states:
            state.pending = None
            state.forced = forced if skipping and state.enabled else None
        # Every pass from the same random state: random ops of the model's own (ViT-MAE's patch
        # masking runs in eval mode too) then draw the same numbers in each pass.
        with rng_restored(model, (args, kwargs)):
            return model(*args, **kwargs)

    with observation(model, (args, kwargs)), contextlib.ExitStack() as probing:
        for drop in drops:
            probing.enter_context(drop.probing(forced, log))
        try:
            reference_out = run(False)
            reference = list(log)
            passes = 1
            for _ in range(len(states) + 1):
                try:
                    out, error = run(True), None
                except Exception as exc:  # noqa: BLE001 - any failure of the subset run decides the branch
                    out, error = None, exc
                passes += 1
                culprit, why = _culprit(states, log, reference, reference_out, out, error)
                if culprit is None:
                    if error is not None:
                        raise error
                    if why:  # a difference that no skipping branch ran before: the passes themselves differ
                        for state in states:
                            if state.enabled:
                                state.disarm(
                                    f"the model does not repeat its outputs from one pass to the next ({why}), "
                                    "so skipping cannot be shown exact"
                                )
                    return passes
                culprit.disarm(f"running it on a subset of the batch is not exact: {why}")
            return passes
        finally:
            for state in states:
                state.forced = None
                state.pending = None


def _culprit(states: list[SkipState], log: list, reference: list, reference_out: Any, out: Any, error: Any) -> tuple[SkipState | None, str]:
    """The skipping branch to blame for a difference from the masked pass, and what it was."""

    def last_skipping(upto: int) -> SkipState | None:
        for state, _ in reversed(log[:upto]):
            if state is not None and state.enabled:
                return state
        return None

    if error is not None:
        running = next((s for s in states if s.pending is not None), None)
        return running or last_skipping(len(log)), f"{type(error).__name__}: {error}"
    for i, ((state, got), (_, want)) in enumerate(zip(log, reference)):
        ok, diff = _close(want, got)
        if not ok:
            return (state if state is not None else last_skipping(i)), f"its output differs from the masked form (max |diff| {diff:.3g})"
    if len(log) != len(reference):
        return last_skipping(len(log)), "the model ran another sequence of branches"
    for want, got in zip(nested.tensors(reference_out), nested.tensors(out)):
        ok, diff = _close(want, got)
        if not ok:
            return last_skipping(len(log)), f"the model output differs from the masked form (max |diff| {diff:.3g})"
    return None, ""
