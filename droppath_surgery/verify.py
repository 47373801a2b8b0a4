"""Proof that surgery did no harm.

* ``compare_outputs``: bitwise comparison of two nested outputs, describing each difference.
* ``state_fingerprint`` / ``compare_state``: ``state_dict`` keys and, per entry, the tensor's identity,
  storage, shape, dtype and version counter: surgery never writes a tensor, so an unchanged fingerprint
  proves unchanged keys and values without copying weights.
* ``eval_pass`` / ``verify_eval``: the patched model in eval mode against the outputs of the recorded
  pass. The pass runs under a pass-through ``TorchFunctionMode``, as the recording did, so both take
  the same kernels (``nn.TransformerEncoderLayer`` takes a fused fast path only when no mode is active).
* ``check_skipping``: with ``skip_dropped=True``, each skipping branch on the example batch with one
  sample dropped must give the kept samples of that same eval pass, or it masks, with the reason.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from . import nested
from .analysis.batch import map_batch_tensors
from .analysis.record import version_counter
from .errors import VerificationError
from .isolation import observation
from .nn import SkipDropPath
from .nn.functional import group_rows
from .nn.skip import SkipState
from .sketch import Fingerprint, Projections, agree, sketch, tolerance

__all__ = [
    "compare_outputs", "has_meta_tensors", "state_fingerprint", "compare_state", "EvalPass", "eval_pass", "verify_eval",
    "Sketches", "check_skipping",
]


def _bitwise_equal(a: Tensor, b: Tensor) -> bool:
    if a.shape != b.shape or a.dtype != b.dtype or a.device != b.device:
        return False
    if a.device.type == "meta":  # no values to compare: shape and dtype are all there is
        return True
    if a.is_floating_point() or a.is_complex():
        return torch.equal(a.detach().contiguous().view(torch.uint8), b.detach().contiguous().view(torch.uint8))
    return torch.equal(a, b)


def compare_outputs(before: Any, after: Any) -> list[str]:
    """Descriptions of every difference between two outputs; empty when bitwise identical. ``before``
    may hold ``Fingerprint``s where it held tensors (a recorded pass keeps its outputs that way)."""
    left = list(nested.leaves(before))
    right = list(nested.leaves(after))
    if [i for i, _ in left] != [i for i, _ in right]:
        return [f"output structure changed: {[nested.describe(i) for i, _ in left]} vs {[nested.describe(i) for i, _ in right]}"]
    diffs = []
    for (index, a), (_, b) in zip(left, right):
        name = nested.describe(index)
        if isinstance(a, Fingerprint) and isinstance(b, Tensor):  # a recorded output (``Recording.outputs``)
            if not a.matches(b):
                if a.shape != tuple(b.shape) or a.dtype != b.dtype:
                    diffs.append(f"{name}: {a.shape} {a.dtype} became {tuple(b.shape)} {b.dtype}")
                else:
                    diffs.append(f"{name}: elements differ bitwise from the unpatched pass (its {b.numel()} elements' fingerprint changed)")
        elif isinstance(a, Tensor) and isinstance(b, Tensor):
            if not _bitwise_equal(a, b):
                if a.shape != b.shape or a.dtype != b.dtype:
                    diffs.append(f"{name}: {tuple(a.shape)} {a.dtype} became {tuple(b.shape)} {b.dtype}")
                else:
                    differ = (a != b) & ~(a.isnan() & b.isnan()) if a.is_floating_point() else a != b
                    delta = (a.double() - b.double()).abs().nan_to_num(0).max().item()
                    diffs.append(f"{name}: {int(differ.sum())} of {a.numel()} elements differ (max |diff| {delta:.3g})")
        elif isinstance(a, (Tensor, Fingerprint)) or isinstance(b, Tensor):
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
    """Some tensor (or a recorded output's ``Fingerprint``) in ``obj`` is on the meta device."""
    return any(isinstance(x, (Tensor, Fingerprint)) and x.device.type == "meta" for _, x in nested.leaves(obj))


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


@dataclass
class EvalPass:
    """One eval pass of the patched model (eval mode, no grad, the random state of the recording, the
    recording's kernels): its outputs, and a ``Sketches`` log of every call of the given DropPaths."""

    outputs: Any
    log: Sketches


def eval_pass(model: nn.Module, args: tuple, kwargs: dict, drops: Sequence[SkipDropPath] = ()) -> EvalPass:
    """Run the patched model once in eval mode, sketching the output of every call of ``drops``: the
    pass ``verify_eval`` judges and the exactness check compares with (one pass serves both)."""
    log = Sketches()
    with observation(model, (args, kwargs)), _PassThrough(), contextlib.ExitStack() as probing:
        for drop in drops:
            probing.enter_context(drop.probing(None, log.add))
        outputs = model(*args, **kwargs)
    return EvalPass(outputs, log)


def verify_eval(model: nn.Module, reference: Any, state_before: dict[str, tuple], after: EvalPass) -> None:
    """``VerificationError`` unless the patched model's eval output (``after``, from ``eval_pass``)
    equals ``reference`` bitwise and its ``state_dict`` is unchanged."""
    diffs = compare_outputs(reference, after.outputs) + compare_state(state_before, state_fingerprint(model))
    if diffs:
        raise VerificationError(
            "drop path changed the model in eval mode, so it was removed again: " + "; ".join(diffs[:5])
            + ". Please report this model; apply_drop_path(..., filter_fn=...) can leave out the branch at fault."
        )


# -- skipping: the run-time exactness check -----------------------------------------------------

PROBE_BATCH = 2  # the check needs a dropped sample and a kept one
DROPPED = 1  # the sample the check drops in every skipping branch


def _kept_rows(t: Tensor, dim: int, rows_per_sample: int, interleaved: bool) -> Tensor:
    """``t`` without sample ``DROPPED`` along ``dim`` (its rows as ``nn.functional.group_rows`` finds them)."""
    if t.device.type == "meta" or t.ndim == 0:
        return t
    grouped, samples = group_rows(t, dim % t.ndim, rows_per_sample, interleaved)
    count = grouped.shape[samples]
    if count <= DROPPED:
        return t
    keep = torch.tensor([s for s in range(count) if s != DROPPED], device=t.device)
    return grouped.index_select(samples, keep).flatten(dim % t.ndim, dim % t.ndim + 1)


class Sketches:
    """Per call of the watched DropPaths, in call order: ``(drop, state, shape, dtype, sketch)``, the
    ``sketch.sketch`` of each output along the drop's batch dimension (a few numbers per sample instead
    of the tensor) for the samples the check compares: all but ``DROPPED``. ``add`` is the ``log`` that
    ``SkipDropPath.probing`` calls."""

    def __init__(self, projections: Projections | None = None) -> None:
        self.entries: list[tuple[SkipDropPath, Any, tuple, torch.dtype, Tensor | None]] = []
        self.projections: Projections = projections if projections is not None else {}

    def add(self, drop: SkipDropPath, state: SkipState | None, out: Tensor) -> None:
        rows, interleaved = drop.rows_per_sample, drop.interleaved
        summary = sketch(_kept_rows(out, drop.batch_dim, rows, interleaved), drop.batch_dim, self.projections, rows, interleaved)
        self.entries.append((drop, state, tuple(out.shape), out.dtype, summary))


def _close(a: Tensor, b: Tensor) -> tuple[bool, float]:
    """Two tensors equal within float tolerance (relative to the larger of 1 and ``a``'s largest magnitude)."""
    if a.shape != b.shape:
        return False, float("inf")
    if a.device.type == "meta":
        return True, 0.0
    a64, b64 = a.detach().double(), b.detach().double()
    diff = (a64 - b64).abs().nan_to_num(float("inf")).max().item() if a.numel() else 0.0
    scale = max(1.0, a64.abs().max().item() if a.numel() else 0.0)
    return diff <= tolerance(a.dtype) * scale, diff


def _grow(obj: Any, dim: int, batch: int, target: int) -> Any:
    """The example inputs with at least ``target`` samples: copies of the batch, each rolled along
    its last dimension so that no two samples are equal (a branch that mixes samples then shows)."""
    reps = -(-target // batch)

    def grow(t: Tensor) -> Tensor:
        last = t.ndim - 1
        rolls = [t if i == 0 or last == dim % t.ndim else t.roll(i, dims=last) for i in range(reps)]
        return torch.cat(rolls, dim=dim)

    return map_batch_tensors(obj, dim, batch, grow)


def check_skipping(
    model: nn.Module, drops: list[SkipDropPath], args: tuple, kwargs: dict, input_dim: int, reference: EvalPass | None = None
) -> int:
    """Prove, on the example batch, that each skipping branch gives the masked form's output.

    Sample 1 is dropped in every branch and the others are kept with weight 1, so the kept samples of
    every branch end and of the model output must equal those of ``reference``, the eval pass on the
    same inputs that verification ran (``eval_pass``; run here when there is none, or when the batch
    has a single sample and is grown to ``PROBE_BATCH``): one more pass, in which each skipping branch
    computes all but one sample, in eval mode without grad, from the same random state. Branch ends
    are compared by their ``Sketches``. Where anything differs, the masked form with the same kept
    samples becomes the reference (one more pass: a model that couples samples outside the skipping
    branches carries the dropped sample into the others); the first branch end whose kept samples
    differ from it beyond float tolerance, or the branch that was running when the model raised, is
    disarmed with the reason, and the skipping pass is repeated until it agrees. A difference before
    any skipping branch ran (a model whose passes differ by themselves) disarms them all. Returns the
    number of passes run.
    """
    states = [s for d in drops for s in d.skip_states]
    if not any(s.enabled for s in states):
        return 0
    tensors = [t for t in nested.tensors((args, kwargs)) if t.ndim > input_dim]
    if not tensors:
        return 0
    batch = tensors[0].shape[input_dim]
    passes = 0
    if batch < PROBE_BATCH or reference is None:
        if batch < PROBE_BATCH:
            args, kwargs = _grow(args, input_dim, batch, PROBE_BATCH), _grow(kwargs, input_dim, batch, PROBE_BATCH)
            batch = PROBE_BATCH
        reference = eval_pass(model, args, kwargs, drops)
        passes += 1
    kept = torch.tensor([i for i in range(batch) if i != DROPPED])
    forced = (kept, torch.ones(len(kept)))
    log = Sketches(reference.log.projections)

    def run(into: Sketches, skipping: bool) -> Any:
        into.entries.clear()
        for state in states:
            state.pending = None
            state.forced = forced if skipping and state.enabled else None
        with observation(model, (args, kwargs)), _PassThrough(), contextlib.ExitStack() as probing:
            for drop in drops:
                probing.enter_context(drop.probing(forced, into.add))
            return model(*args, **kwargs)

    masked: EvalPass | None = None
    try:
        for _ in range(len(states) + 1):
            try:
                out, error = run(log, True), None
            except Exception as exc:  # noqa: BLE001 - any failure of the subset run decides the branch
                out, error = None, exc
            passes += 1
            culprit, why = _culprit(states, log, reference, out, error, kept, batch, input_dim)
            if (culprit is not None or why) and error is None and masked is None:
                # A difference from the eval pass may come from the dropped sample itself where the model
                # couples samples outside the skipping branches: judge by the masked form from now on.
                masked_log = Sketches(log.projections)
                masked = reference = EvalPass(run(masked_log, False), masked_log)
                passes += 1
                culprit, why = _culprit(states, log, reference, out, error, kept, batch, input_dim)
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


def _culprit(
    states: list[SkipState], log: Sketches, reference: EvalPass, out: Any, error: Any, kept: Tensor, batch: int, input_dim: int
) -> tuple[SkipState | None, str]:
    """The skipping branch to blame for a difference from the reference on the kept samples, and what it was."""
    entries, wanted = log.entries, reference.log.entries

    def last_skipping(upto: int) -> SkipState | None:
        for _, state, *_ in reversed(entries[:upto]):
            if state is not None and state.enabled:
                return state
        return None

    if error is not None:
        running = next((s for s in states if s.pending is not None), None)
        return running or last_skipping(len(entries)), f"{type(error).__name__}: {error}"
    for i, ((drop, state, shape, dtype, got), (other, _, want_shape, _, want)) in enumerate(zip(entries, wanted)):
        if drop is not other or shape != want_shape:
            ok, diff = False, float("inf")
        else:
            ok, diff = agree(want, got, dtype)  # both of the kept samples only (``Sketches``)
        if not ok:
            return (state if state is not None else last_skipping(i)), f"its output differs from the masked form (max |diff| {diff:.3g})"
    if len(entries) != len(wanted):
        return last_skipping(len(entries)), "the model ran another sequence of branches"
    for want, got in zip(nested.tensors(reference.outputs), nested.tensors(out)):
        d = _output_batch_dim(want, batch, input_dim)
        if d is None:  # no sample dimension to pick the kept samples by (a loss over the batch): not compared
            continue
        if want.shape != got.shape:
            ok, diff = _close(want, got)
        else:
            rows = kept.to(want.device)  # the kept samples' indices live on the CPU, the outputs on the model's device
            ok, diff = _close(want.index_select(d, rows), got.index_select(d, rows))
        if not ok:
            return last_skipping(len(entries)), f"the model output differs from the masked form (max |diff| {diff:.3g})"
    return None, ""


def _output_batch_dim(t: Tensor, batch: int, input_dim: int) -> int | None:
    """The dimension of an output tensor that indexes samples: the inputs' when it has the batch size
    there, else the only one that does; None when there is none or several (such outputs are not compared)."""
    if t.ndim > input_dim and t.shape[input_dim] == batch:
        return input_dim
    dims = [d for d, n in enumerate(t.shape) if n == batch]
    return dims[0] if len(dims) == 1 else None
