"""The public functions: find, apply, re-schedule, report and remove drop path on an existing model.

``apply_drop_path`` is the pipeline, one step per line: check the arguments -> analyse one recorded
pass -> plan -> rate the plan -> attach -> check skipping -> verify against the recorded outputs ->
report. Arguments are checked and the model is analysed before anything changes; an error after the
first change undoes it (and puts back a previous patch), so the model is either fully patched or
exactly as it was.
"""

from __future__ import annotations

import warnings
from typing import Any

from torch import nn

from .analysis import NOT_PER_SAMPLE, Analysis, analyse
from .checks import check_batch_dim, check_bool, check_choice, check_mode, validate_rate
from .errors import InvalidArgumentError, NotPatchedError, ScheduleError
from .execute import Options, attach, detach, patched_modules, reattach, set_branch_rates
from .integrations.inputs import build_example_inputs, call_args
from .integrations.native import native_regularizers
from .integrations.wrappers import check_model, check_not_compiled, unwrap_model
from .isolation import observation
from .nn import SkipDropPath
from .nn.skip import DEFAULT_MIN_SKIP_RATE, KEPT_COUNTS
from .plan import FilterFn, Plan, PlannedSite, make_plan
from .report import DropPathReport, build_report, report_of_patch
from .schedules import LeaveOut, Schedule, check_schedule, describe, rate_sites, remembered
from .verify import check_skipping, compare_state, eval_pass, has_meta_tensors, state_fingerprint, verify_eval

__all__ = [
    "apply_drop_path",
    "find_residual_branches",
    "set_drop_path_rate",
    "remove_drop_path",
    "drop_path_report",
    "is_patched",
    "unwrap_model",
]


GRANULARITIES = ("branch", "block")


def _check_common(rate: Any, schedule: Any, filter_fn: Any, batch_dim: Any, per_stack: Any) -> None:
    check_schedule(schedule, rate)
    check_bool(per_stack, "per_stack", "every stack of blocks ramps on its own")
    if filter_fn is not None and not callable(filter_fn):
        raise InvalidArgumentError(
            f"filter_fn must be a callable (module, fqn) -> bool that says which branch ends get drop path, or "
            f"None for all, got {filter_fn!r} of type {type(filter_fn).__name__}."
        )
    if batch_dim is not None:
        check_batch_dim(batch_dim)


def _options(
    mode: Any, scale_by_keep: Any, verify: Any, skip_dropped: Any, kept_count: Any, min_skip_rate: Any, granularity: Any
) -> Options:
    check_mode(mode)
    check_choice(
        granularity, "granularity", GRANULARITIES,
        "'branch': each residual branch decides on its own (timm's drop path); 'block': one decision per sample per "
        "block, shared by its branches (LayerDrop, LayerSkip)",
    )
    check_bool(scale_by_keep, "scale_by_keep", "scale kept samples by 1 / (1 - rate)")
    check_bool(verify, "verify", "prove the eval output bitwise unchanged after patching")
    check_bool(skip_dropped, "skip_dropped", "run each branch only on the samples that keep it")
    check_choice(
        kept_count, "kept_count", KEPT_COUNTS,
        "'fixed': ceil(B * (1 - p)) samples computed, static shapes, no host sync; 'random': independent "
        "per-sample decisions, data-dependent shapes",
    )
    min_skip_rate = validate_rate(min_skip_rate, "min_skip_rate")
    if skip_dropped and mode != "row":
        raise InvalidArgumentError(
            f"skip_dropped=True runs each branch on the kept samples, which needs per-sample decisions; got "
            f"mode={mode!r}. Use mode='row' with skip_dropped=True, or skip_dropped=False with mode='batch'."
        )
    return Options(mode, scale_by_keep, granularity, kept_count if skip_dropped else None, min_skip_rate)


def _analyse(model: nn.Module, example_inputs: Any, batch_dim: int | None) -> Analysis:
    built = example_inputs is None
    args, kwargs = build_example_inputs(model) if built else call_args(example_inputs)
    with observation(model, (args, kwargs)):
        return analyse(model, args, kwargs, batch_dim=batch_dim, inputs_batch_first=built)


def _one_rate_per_block(sites: list[PlannedSite], rates: list[tuple[float, ...]], schedule: Schedule) -> None:
    """With granularity="block" the branches of a block share one decision, so they need one rate."""
    per_block: dict[int, set[float]] = {}
    for site, branch_rates in zip(sites, rates):
        for br, r in zip(site.branches, branch_rates):
            per_block.setdefault(br.block, set()).add(r)
    mixed = {b: sorted(r) for b, r in per_block.items() if len(r) > 1}
    if mixed:
        block, values = next(iter(mixed.items()))
        raise ScheduleError(
            f"granularity='block' drops a block's branches together, so they need one rate, and schedule "
            f"{describe(schedule)!r} gives {len(mixed)} blocks several (block {block}: {values}); use a per-block "
            f"schedule ('linear', 'exp', a list, ...) or granularity='branch'."
        )


def _rate(
    model: nn.Module, plan: Plan, rate: Any, schedule: Schedule, per_stack: bool, found: int
) -> tuple[Plan, list[tuple[float, ...]]]:
    """The plan without the sites the schedule leaves out, and the rates of each remaining site's branches."""
    plan.require_sites(model, found)
    values = rate_sites(model, rate, schedule, plan.stacks, plan.sites, per_stack=per_stack)
    plan = plan.without({i: v.reason for i, v in enumerate(values) if isinstance(v, LeaveOut)})
    plan.require_sites(model, found)
    return plan, [v for v in values if not isinstance(v, LeaveOut)]


def find_residual_branches(
    model: nn.Module,
    example_inputs: Any = None,
    *,
    rate: float = 0.0,
    schedule: Schedule = "linear",
    filter_fn: FilterFn | None = None,
    batch_dim: int | None = None,
    per_stack: bool = True,
) -> DropPathReport:
    """Trace the model and return the residual branches that ``apply_drop_path`` would patch.

    Nothing is changed: no module, flag, hook or RNG state. The report's sites carry the rates
    that ``rate`` and ``schedule`` would give (0 by default). On a patched model the branches are
    found as without the patch (it is taken off for the pass and put back).
    """
    model = check_model(model)
    check_not_compiled(model)
    _check_common(rate, schedule, filter_fn, batch_dim, per_stack)
    previous = detach(model)
    try:
        analysis = _analyse(model, example_inputs, batch_dim)
        plan = make_plan(model, analysis, filter_fn=filter_fn)
        plan, rates = _rate(model, plan, rate, schedule, per_stack, len(analysis.branches))
    finally:
        reattach(model, previous)
    return build_report(
        [(site, r, ["mask"] * len(site.branches)) for site, r in zip(plan.sites, rates)],
        num_blocks=plan.num_blocks,
        schedule=describe(schedule),
        model_name=plan.model_name,
        left_out=plan.left_out,
        notes=_notes(model, plan, rates, rate, schedule),
        not_run=plan.not_run,
    )


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
    per_stack: bool = True,
    granularity: str = "branch",
) -> DropPathReport:
    """Add drop path to every residual branch of ``model``, in place, and return a report.

    Args:
        model: any ``nn.Module`` with residual blocks (timm, Hugging Face, torchvision or your own).
        rate: the drop rate of the deepest block for named schedules (``"linear"``: 0 at the first
            block up to ``rate`` at the last, as timm's ``drop_path_rate``; ``"uniform"``: ``rate``
            everywhere). Not used when ``schedule`` is a list, a mapping or a callable.
        schedule: ``"linear"``, ``"uniform"``, ``"efficientnet"``, LayerSkip's ``"exp"``, torchtune's
            ``"log"``, ``"sin"``, ``"sigmoid"``, ``"timm"`` (on a timm model:
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
        per_stack: a stack is a chain of blocks linked by one residual stream (an encoder and a
            decoder are two, CLIP's towers are two, Swin's stages are one). With ``True`` each stack
            ramps on its own, as each tower would alone: a named schedule or callable sees a block's
            position in its stack; ``False`` keeps one ramp over all blocks. Lists give a rate per
            block either way.
        granularity: ``"branch"`` (timm's drop path: every branch decides per sample on its own) or
            ``"block"`` (one decision per sample per block, shared by its branches: a dropped sample
            skips the whole block, LayerDrop / LayerSkip layer dropout; with ``mode="batch"`` one
            decision for the whole batch per block, Hugging Face's and fairseq's ``layerdrop``). The
            branches of a block then need one rate.

    Applying to an already patched model replaces the previous drop path (it does not stack).
    The model's train/eval flags, the global RNG state and its hooks are left as they were.
    """
    model = check_model(model)
    check_not_compiled(model)
    _check_common(rate, schedule, filter_fn, batch_dim, per_stack)
    options = _options(mode, scale_by_keep, verify, skip_dropped, kept_count, min_skip_rate, granularity)
    previous = detach(model)
    try:
        state_before = state_fingerprint(model)
        analysis = _analyse(model, example_inputs, batch_dim)
        # A model that writes its own state in an eval forward (RWKV rescales its weights on the first
        # one) is judged from the state its unpatched forward left; the note says so.
        probed = state_fingerprint(model)
        self_written = compare_state(state_before, probed)
        plan = make_plan(model, analysis, filter_fn=filter_fn, skip=skip_dropped)
        plan, rates = _rate(model, plan, rate, schedule, per_stack, len(analysis.branches))
        if granularity == "block":
            _one_rate_per_block(list(plan.sites), rates, schedule)
        drops = attach(model, plan, rates, schedule=remembered(schedule), per_stack=per_stack, options=options)
        try:
            skipping = [d for d in drops if isinstance(d, SkipDropPath)] if skip_dropped else []
            # One eval pass: verification judges it, and the exactness check compares with it.
            after = eval_pass(model, analysis.args, analysis.kwargs, skipping) if verify else None
            if after is not None:
                verify_eval(model, analysis.recording.outputs, probed, after)
            if skipping:
                input_dim = analysis.input_dim if analysis.input_dim is not None else (batch_dim or 0)
                check_skipping(model, skipping, analysis.args, analysis.kwargs, input_dim, after)
        except BaseException:
            detach(model)
            raise
    except BaseException:
        reattach(model, previous)
        raise
    notes = _notes(model, plan, rates, rate, schedule)
    if self_written:
        notes.append(
            f"the model wrote its own state during an eval forward before drop path was attached ({'; '.join(self_written)}); "
            f"eval output and state_dict were verified against the state that forward left"
        )
    for note in notes:
        warnings.warn(note, stacklevel=2)
    verified: bool | None = True if verify else None
    if verify and has_meta_tensors(analysis.recording.outputs):
        verified = False
        notes.append("the model is on the meta device: eval outputs were compared by shape and dtype only")
    return report_of_patch(drops, verified=verified, notes=notes)


def _notes(model: nn.Module, plan: Plan, rates: list[tuple[float, ...]], rate: Any, schedule: Schedule) -> list[str]:
    """What the user must know of a patch: a schedule that gives every branch 0, repeated blocks the example
    inputs never ran, and the model's own layer drop or drop path (said in the report, and warned about by
    ``apply_drop_path``)."""
    notes = []
    unrun = plan.not_run
    if unrun:
        shown = ", ".join(unrun[:3]) + (f", ... (+{len(unrun) - 3})" if len(unrun) > 3 else "")
        notes.append(
            f"{len(unrun)} stack{'s' if len(unrun) > 1 else ''} of repeated blocks did not run on the example inputs "
            f"({shown}): any residual branches in them have no drop path; pass example_inputs= that run them (the "
            f"audio, images or other inputs those blocks take) to cover them"
        )
    if isinstance(schedule, str) and rate and all(r == 0 for branch_rates in rates for r in branch_rates):
        stacks = len(set(plan.stacks))
        where = f"{plan.num_blocks} block{'s' if plan.num_blocks != 1 else ''}" + (f" in {stacks} stacks" if stacks > 1 else "")
        notes.append(
            f"schedule {schedule!r} gives every branch rate 0: it ramps from 0 at the first block of each stack, and this "
            f"model has {where}; use schedule='uniform' to drop at rate {rate} everywhere"
        )
    unsampled: dict[str, list[str]] = {}
    for lo in plan.left_out:
        if lo.reason in NOT_PER_SAMPLE:
            unsampled.setdefault(lo.reason, []).append(lo.path)
    for reason, paths in unsampled.items():
        shown = ", ".join(paths[:3]) + (f", ... (+{len(paths) - 3})" if len(paths) > 3 else "")
        notes.append(
            f"{len(paths)} residual branch{'es' if len(paths) > 1 else ''} of blocks left without drop path ({shown}): "
            f"{reason}"
        )
    replaced = [site.module for site in plan.sites if site.kind == "replace"]
    return notes + native_regularizers(model, replaced)


def is_patched(model: nn.Module) -> bool:
    """True if ``apply_drop_path`` has patched this model (and it has not been removed)."""
    return bool(patched_modules(check_model(unwrap_model(model)), ordered=False))


def drop_path_report(model: nn.Module) -> DropPathReport:
    """The report of an already patched model: its sites and current rates."""
    model = check_model(unwrap_model(model))
    drops = patched_modules(model)
    if not drops:
        raise NotPatchedError(f"{type(model).__name__} has no drop path from droppath-surgery; call apply_drop_path first.")
    return report_of_patch(drops)


def set_drop_path_rate(
    model: nn.Module, rate: float = 0.1, *, schedule: Schedule | None = None, per_stack: bool | None = None
) -> None:
    """Re-schedule an already patched model without running it (cheap enough for every step).

    ``schedule=None`` keeps the schedule the model has (the one ``apply_drop_path`` or the last
    ``set_drop_path_rate`` gave it: a ``"uniform"`` model stays uniform); a schedule given here
    becomes the model's. As in ``apply_drop_path``, a list, mapping or callable gives the rates itself
    and ``rate`` is not used with it; ``per_stack=None`` likewise keeps the model's. Rates are validated before any is changed; use
    ``drop_path_report`` to see them. A model wrapped
    by ``torch.compile`` or DDP after patching is unwrapped: only buffers are written, which the
    compiled code reads without recompiling. A site a per-site schedule leaves out (``"timm"`` where
    timm has no slot) gets rate 0.
    """
    model = check_model(unwrap_model(model))
    drops = patched_modules(model, ordered=False)
    if not drops:
        raise NotPatchedError(
            f"{type(model).__name__} has no drop path to re-schedule; call apply_drop_path(model, rate) first."
        )
    record = drops[0].patch
    schedule = record.schedule if schedule is None else remembered(schedule)
    per_stack = record.per_stack if per_stack is None else check_bool(per_stack, "per_stack", "every stack ramps on its own")
    check_schedule(schedule, rate)
    values = rate_sites(model, rate, schedule, record.plan.stacks, [d.patch.site for d in drops], per_stack=per_stack)
    if record.granularity == "block":
        _one_rate_per_block(
            [d.patch.site for d in drops],
            [(0.0,) * len(d.patch.site.branches) if isinstance(v, LeaveOut) else v for d, v in zip(drops, values)],
            schedule,
        )
    for drop, value in zip(drops, values):
        set_branch_rates(drop, [0.0] * len(drop.patch.site.branches) if isinstance(value, LeaveOut) else value)
        drop.patch.schedule = schedule
        drop.patch.per_stack = per_stack


def remove_drop_path(model: nn.Module) -> int:
    """Take drop path out again: the original modules (the same objects) go back and every hook
    this library added is removed. Returns the number of DropPath modules removed (the report's
    ``num_modules``: one module may end several branches); a second call removes nothing and
    returns 0.
    """
    return len(detach(check_model(unwrap_model(model))))
