"""The public API: find, apply, re-schedule, report and remove drop path on an existing model.

Every mutating call follows validate -> collect -> mutate -> verify: arguments are checked and the
model is traced before anything changes; any error after the first change undoes it, so the model
is either fully patched or exactly as it was.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from dataclasses import replace

from torch import nn

from . import inputs as _inputs
from .branch_inputs import branch_inputs
from .errors import NoResidualBranchError, NotPatchedError, UnsupportedModelError, VerificationError
from .ops import _check_mode, validate_rate
from .patch import (
    Attachment,
    attach,
    detach,
    patched_modules,
    plan_attachments,
    info_of,
    restore_patches,
    sites_for,
    snapshot_patches,
    target_of,
)
from .report import DropPathReport, Skipped
from .schedules import SCHEDULES, TIMM, Schedule, branch_rates, describe
from .skip import BELOW_MIN_SKIP_RATE, DEFAULT_MIN_SKIP_RATE, KEPT_COUNTS, SkipDropPath, arm, check_exact
from .trace import Trace, trace_residual_branches
from .verify import compare_outputs, compare_state, has_meta_tensors, observation, state_fingerprint

__all__ = [
    "apply_drop_path",
    "find_residual_branches",
    "set_drop_path_rate",
    "remove_drop_path",
    "drop_path_report",
    "is_patched",
    "unwrap_model",
]

FilterFn = Callable[[nn.Module, str], bool]


def _check_model(model: Any) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise UnsupportedModelError(
            f"model must be a torch.nn.Module, got {type(model).__module__}.{type(model).__name__}; "
            f"pass the model object itself (e.g. the result of timm.create_model or from_pretrained)."
        )
    name = type(model).__name__
    if name == "OptimizedModule" and hasattr(model, "_orig_mod"):
        raise UnsupportedModelError(
            "model is wrapped by torch.compile; patch the original model first, then compile it: "
            "apply_drop_path(model, ...); model = torch.compile(model)."
        )
    if name in ("DistributedDataParallel", "DataParallel", "FullyShardedDataParallel") and hasattr(model, "module"):
        raise UnsupportedModelError(
            f"model is wrapped by {name}; patch the inner model before wrapping it (apply_drop_path"
            f"(model, ...) and then {name}(model, ...)), or pass wrapped.module."
        )
    return model


def unwrap_model(model: Any) -> nn.Module:
    """The module inside ``torch.compile`` (``OptimizedModule``), DDP and DataParallel wrappers.

    Changing rates on the inner module is what a wrapped model runs with: no structure changes, only
    buffers written in place. (Attaching drop path itself must happen before wrapping.)
    """
    for _ in range(16):
        if type(model).__name__ == "OptimizedModule" and isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod
        elif type(model).__name__ in ("DistributedDataParallel", "DataParallel") and isinstance(
            getattr(model, "module", None), nn.Module
        ):
            model = model.module
        else:
            break
    return model


def _check_not_compiled(model: nn.Module) -> None:
    """Attaching under compiled code would be silently ignored: torch.compile does not guard on hooks."""
    for path, module in model.named_modules():
        wrapped = type(module).__name__ == "OptimizedModule" and hasattr(module, "_orig_mod")
        if wrapped or getattr(module, "_compiled_call_impl", None) is not None:
            where = f"its submodule {path!r}" if path else "the model"
            how = "torch.compile(...)" if wrapped else ".compile()"
            raise UnsupportedModelError(
                f"{where} is already compiled ({how}); code compiled before patching would keep running "
                f"without the drop path hooks (torch.compile does not guard on module hooks). Apply drop "
                f"path to the model before compiling it (or any part of it), then compile."
            )


def _check_options(rate: Any, schedule: Schedule, filter_fn: Any, mode: str) -> None:
    if isinstance(schedule, str) and (schedule in SCHEDULES or schedule == TIMM):
        validate_rate(rate, "rate")
    if filter_fn is not None and not callable(filter_fn):
        raise TypeError(f"filter_fn must be a callable (module, fqn) -> bool or None, got {type(filter_fn).__name__}.")
    _check_mode(mode)


def _check_skip_options(skip_dropped: Any, kept_count: Any, min_skip_rate: Any, mode: str) -> dict | None:
    if not isinstance(skip_dropped, bool):
        raise TypeError(f"skip_dropped must be True or False, got {skip_dropped!r}.")
    if kept_count not in KEPT_COUNTS:
        raise ValueError(
            f"kept_count must be 'fixed' (static shapes: ceil(B * (1 - p)) samples computed, no host sync) or "
            f"'random' (independent per-sample decisions, data-dependent shapes), got {kept_count!r}."
        )
    validate_rate(min_skip_rate, "min_skip_rate")
    if not skip_dropped:
        return None
    if mode != "row":
        raise ValueError(
            f"skip_dropped=True runs each branch on the kept samples, which needs per-sample decisions; got "
            f"mode={mode!r}. Use mode='row' with skip_dropped=True, or skip_dropped=False with mode='batch'."
        )
    return {"kept_count": kept_count, "min_skip_rate": float(min_skip_rate)}


def _model_name(model: nn.Module) -> str:
    cfg = getattr(model, "pretrained_cfg", None)
    arch = cfg.get("architecture") if isinstance(cfg, dict) else None
    return f"{type(model).__name__} ({arch})" if arch else type(model).__name__


def _trace(model: nn.Module, example_inputs: Any, batch_dim: int | None) -> tuple[Trace, tuple, dict]:
    built = example_inputs is None
    args, kwargs = _inputs.build(model) if built else _inputs.call_args(example_inputs)
    with observation(model, (args, kwargs)):
        trace = trace_residual_branches(model, args, kwargs, batch_dim=batch_dim, inputs_batch_first=built)
    if not trace.branches:
        extra = ""
        if trace.ignored:
            extra = f" ({len(trace.ignored)} residual merges were ignored: " + "; ".join(
                f"{p}: {why}" for p, why in trace.ignored[:3]
            ) + ")"
        raise NoResidualBranchError(
            f"found no residual branch in {type(model).__name__}{extra}: drop path needs repeated blocks "
            f"of the form x = x + f(x) with a non-linear f. If the model has them but they did not run "
            f"on the example inputs, pass example_inputs= that exercise them."
        )
    return trace, args, kwargs


TIMM_HAS_NO_SLOT = (
    "timm builds this block without a drop path slot at any rate, and schedule='timm' patches only where timm "
    "drops; use another schedule to patch it too"
)


def _plan(
    model: nn.Module, trace: Trace, rate: Any, schedule: Schedule, filter_fn: FilterFn | None
) -> tuple[list[Attachment], list[Skipped], list[float]]:
    attachments, skipped = plan_attachments(trace, model)
    skipped = [Skipped(path, "", why) for path, why in trace.ignored] + skipped
    if filter_fn is not None:
        kept = []
        for att in attachments:
            if filter_fn(att.module, att.path):
                kept.append(att)
            else:
                skipped.extend(Skipped(att.path, br.block_path, "filtered out by filter_fn") for br in att.branches)
        attachments = kept
    rates: list[float] = []
    if attachments:
        kept = []
        targets = [target_of(a) for a in attachments]
        for att, r in zip(attachments, branch_rates(model, rate, schedule, trace.num_blocks, targets)):
            if r is None:  # "timm": timm builds no drop path here
                skipped.extend(Skipped(att.path, br.block_path, TIMM_HAS_NO_SLOT) for br in att.branches)
            else:
                kept.append(att)
                rates.append(r)
        attachments = kept
    if not attachments:
        reasons = "; ".join(sorted({s.reason for s in skipped})) or "none attachable"
        raise NoResidualBranchError(
            f"found {len(trace.branches)} residual branches in {type(model).__name__} but none can carry drop "
            f"path ({reasons}); relax filter_fn or pass example_inputs that exercise other branches."
        )
    return attachments, skipped, rates


def _report(model: nn.Module, schedule: Schedule, skipped=(), verified=None, num_blocks=None, sites=None) -> DropPathReport:
    notes: list[str] = []
    if sites is None:
        sites = []
        below: dict[float, int] = {}  # min_skip_rate -> skipping branches masking below it now
        for drop in patched_modules(model):
            info = info_of(drop)
            mine = info.sites
            if isinstance(drop, SkipDropPath) and drop.rate < drop.min_skip_rate:
                mine = [replace(s, compute=BELOW_MIN_SKIP_RATE) if s.compute == "skip" else s for s in mine]
                below[drop.min_skip_rate] = below.get(drop.min_skip_rate, 0) + sum(s.compute != "mask" for s in mine)
            sites.extend(mine)
            notes.extend(info.notes)
            num_blocks, schedule = info.num_blocks, info.schedule
        notes.extend(
            f"{n} branches could skip but mask at their current rate, below min_skip_rate={m:g} (skipping "
            f"costs more than it saves there); they skip once their rate reaches it ({BELOW_MIN_SKIP_RATE!r} "
            "in the compute column)"
            for m, n in below.items() if n
        )
    sites = sorted(sites, key=lambda s: (s.block, s.branch))
    return DropPathReport(
        sites=tuple(sites),
        num_blocks=num_blocks or 0,
        schedule=describe(schedule),
        skipped=tuple(skipped),
        model_name=_model_name(model),
        verified=verified,
        notes=tuple(notes),
    )


def find_residual_branches(
    model: nn.Module,
    example_inputs: Any = None,
    *,
    rate: float = 0.0,
    schedule: Schedule = "linear",
    filter_fn: FilterFn | None = None,
    batch_dim: int | None = None,
) -> DropPathReport:
    """Trace the model and return the residual branches that ``apply_drop_path`` would patch.

    Nothing is changed: no module, flag, hook or RNG state. The report's sites carry the rates
    that ``rate`` and ``schedule`` would give (0 by default).
    """
    model = _check_model(model)
    _check_not_compiled(model)
    _check_options(rate, schedule, filter_fn, "row")
    trace, _, _ = _trace(model, example_inputs, batch_dim)
    attachments, skipped, rates = _plan(model, trace, rate, schedule, filter_fn)
    sites = [s for att, r in zip(attachments, rates) for s in sites_for(att, r)]
    return _report(model, schedule, skipped, None, trace.num_blocks, sites)


def apply_drop_path(
    model: nn.Module,
    rate: float = 0.1,
    *,
    schedule: Schedule = "linear",
    example_inputs: Any = None,
    filter_fn: FilterFn | None = None,
    verify: bool = True,
    batch_dim: int | None = None,
    mode: str = "row",
    scale_by_keep: bool = True,
    skip_dropped: bool = False,
    kept_count: str = "fixed",
    min_skip_rate: float = DEFAULT_MIN_SKIP_RATE,
) -> DropPathReport:
    """Add drop path to every residual branch of ``model``, in place, and return a report.

    Args:
        model: any ``nn.Module`` with residual blocks (timm, Hugging Face, torchvision or your own).
        rate: the drop rate of the deepest block for named schedules (``"linear"``: 0 at the first
            block up to ``rate`` at the last, as timm's ``drop_path_rate``; ``"uniform"``: ``rate``
            everywhere). Not used when ``schedule`` is a list, a mapping or a callable.
        schedule: ``"linear"``, ``"uniform"``, ``"efficientnet"``, ``"timm"`` (on a timm model:
            per branch, ``rate`` times the rate timm's own constructor gives it, so the rates of
            ``timm.create_model(name, drop_path_rate=rate)`` in every family's convention), a list
            with one rate per block, a mapping ``{site path: rate}`` with one rate per branch, or a
            callable ``(block_index, num_blocks) -> rate``.
        example_inputs: a tensor, tuple of arguments or dict of keyword arguments to trace the model
            with. Built automatically for timm, Hugging Face and torchvision models.
        filter_fn: ``filter_fn(module, fqn) -> bool`` chooses which branch ends get drop path;
            ``module`` is the module that would be replaced or hooked, ``fqn`` its path.
        verify: run the model in eval mode after patching and require every output tensor to be
            bitwise equal to the traced output, and ``state_dict`` unchanged; undo and raise
            ``VerificationError`` otherwise.
        batch_dim: the dimension of the residual stream that indexes samples; inferred when None.
        mode: ``"row"`` (per sample) or ``"batch"`` (whole batch).
        scale_by_keep: scale kept samples by ``1 / (1 - rate)``.
        skip_dropped: in training, run each residual branch only on the samples that keep it and
            add its output back for them (scaled as the masked form), so dropped samples cost no
            compute or activation memory. Only where that is exact: a branch with batch statistics,
            one whose code assumes the full batch, or one whose values leave it other than through
            its end masks instead; the report's ``compute`` column and notes say which and why.
        kept_count: with ``skip_dropped``: ``"fixed"`` computes exactly ``ceil(B * (1 - p))``
            samples per branch (static shapes, no host synchronization, compiles with
            ``fullgraph=True``; each sample is still kept with probability exactly ``1 - p``), or
            ``"random"`` (independent per-sample decisions as in masking: data-dependent shapes and
            one host synchronization per branch).
        min_skip_rate: with ``skip_dropped``: a branch whose current rate is below this masks
            instead (the index bookkeeping costs more than the few skipped samples save: on CPU,
            ViT-S at batch 32, skipping was 0.98x at 0.05 and 1.08x-1.23x at 0.1; see
            ``benchmarks/bench_skip.py``). ``0`` skips at every rate.

    Applying to an already patched model replaces the previous drop path (it does not stack).
    The model's train/eval flags, the global RNG state and its hooks are left as they were.
    """
    model = _check_model(model)
    _check_not_compiled(model)
    _check_options(rate, schedule, filter_fn, mode)
    skip = _check_skip_options(skip_dropped, kept_count, min_skip_rate, mode)
    previous = snapshot_patches(model)
    detach(model)
    try:
        state_before = state_fingerprint(model)
        trace, args, kwargs = _trace(model, example_inputs, batch_dim)
        attachments, skipped, rates = _plan(model, trace, rate, schedule, filter_fn)
        drops = attach(
            model,
            attachments,
            rates,
            trace.num_blocks,
            schedule=describe(schedule),
            mode=mode,
            scale_by_keep=scale_by_keep,
            skip=skip,
        )
        if skip is not None:
            try:
                _arm_skipping(model, trace, attachments, drops, args, kwargs, batch_dim)
            except BaseException:
                detach(model)
                raise
        if verify:
            try:
                _verify(model, trace.outputs, state_before, args, kwargs)
            except BaseException:
                detach(model)
                raise
    except BaseException:
        restore_patches(previous)
        raise
    report = _report(model, schedule, skipped, verified=True if verify else None)
    if verify and has_meta_tensors(trace.outputs):
        report.verified = False
        report.notes += ("the model is on the meta device: eval outputs were compared by shape and dtype only",)
    return report


def _arm_skipping(model, trace: Trace, attachments: list[Attachment], drops, args, kwargs, batch_dim) -> None:
    """Set up compute skipping on every attached branch where it is exact; the rest mask."""
    paths = {id(m): name for name, m in model.named_modules()}
    armed = []
    for att, drop in zip(attachments, drops):
        for br in att.branches:
            armed.append(arm(drop, br.batch_dim, att.path, branch_inputs(trace, br, paths)))
    input_dim = trace.input_batch_dim if trace.input_batch_dim is not None else (batch_dim or 0)
    with observation(model, (args, kwargs)):
        check_exact(model, armed, drops, args, kwargs, input_dim)
    by_drop: dict[int, list] = {}
    for a in armed:
        by_drop.setdefault(id(a.state.drop), []).append(a)
    for drop in drops:
        info = info_of(drop)
        mine = by_drop.get(id(drop), [])
        info.sites = [replace(site, compute="skip" if a.state.enabled else "mask") for site, a in zip(info.sites, mine)]
        info.notes = [f"masks instead of skipping: {a.state.path} (block {s.block}): {a.reason}" for s, a in zip(info.sites, mine) if a.reason]


def _verify(model: nn.Module, reference: Any, state_before: dict, args: tuple, kwargs: dict) -> None:
    with observation(model, (args, kwargs)):
        after = model(*args, **kwargs)
    diffs = compare_outputs(reference, after)
    if diffs:
        # The traced pass ran under a TorchFunctionMode, which some code checks to pick another
        # kernel (e.g. nn.TransformerEncoderLayer's fast path). Compare plain runs before judging.
        snapshot = snapshot_patches(model)
        detach(model)
        with observation(model, (args, kwargs)):
            reference = model(*args, **kwargs)
        restore_patches(snapshot)
        diffs = compare_outputs(reference, after)
    diffs += compare_state(state_before, state_fingerprint(model))
    if diffs:
        raise VerificationError(
            "drop path changed the model in eval mode, so it was removed again: " + "; ".join(diffs[:5])
            + ". Please report this model; apply_drop_path(..., filter_fn=...) can leave out the branch at fault."
        )


def is_patched(model: nn.Module) -> bool:
    """True if ``apply_drop_path`` has patched this model (and it has not been removed)."""
    return bool(patched_modules(_check_model(unwrap_model(model))))


def drop_path_report(model: nn.Module) -> DropPathReport:
    """The report of an already patched model: its sites and current rates."""
    model = _check_model(unwrap_model(model))
    drops = patched_modules(model)
    if not drops:
        raise NotPatchedError(f"{type(model).__name__} has no drop path from droppath-surgery; call apply_drop_path first.")
    return _report(model, "")


def set_drop_path_rate(model: nn.Module, rate: float = 0.1, *, schedule: Schedule = "linear") -> None:
    """Re-schedule an already patched model without running it (cheap enough for every step).

    Rates are validated before any is changed; use ``drop_path_report`` to see them. A model wrapped
    by ``torch.compile`` or DDP after patching is unwrapped: only buffers are written, which the
    compiled code reads without recompiling.
    """
    model = _check_model(unwrap_model(model))
    drops = patched_modules(model, ordered=False)
    if not drops:
        raise NotPatchedError(
            f"{type(model).__name__} has no drop path to re-schedule; call apply_drop_path(model, rate) first."
        )
    infos = [info_of(drop) for drop in drops]
    rates = branch_rates(model, rate, schedule, infos[0].num_blocks, [i.sites[0].target for i in infos])
    name = describe(schedule)
    for drop, info, new_rate in zip(drops, infos, rates):
        new_rate = 0.0 if new_rate is None else new_rate  # "timm" on a branch timm has no slot for
        drop.rate = new_rate
        info.sites = [s.with_rate(new_rate) for s in info.sites]
        info.schedule = name


def remove_drop_path(model: nn.Module) -> int:
    """Take drop path out again: the original modules (the same objects) go back and every hook
    this library added is removed. Returns the number of DropPath modules removed; a second call
    removes nothing and returns 0.
    """
    return detach(_check_model(unwrap_model(model)))
