"""Rates over training time: the schedules' values, their validation, and DropPathScheduler (per-layer
spreading, resuming from state_dict, wrapped models, the rates the model really trains with)."""

import copy
import math

import pytest
import torch
from helpers import TinyTransformer, attached
from scipy.stats import binomtest
from torch import nn
from training_fixtures import single_thread  # noqa: F401  (autouse: one CPU thread)

from droppath_surgery import (
    InvalidRateError,
    NotPatchedError,
    ScheduleError,
    apply_drop_path,
    block_rates,
    drop_path_report,
)
from droppath_surgery.training import (
    Constant,
    Cosine,
    DropPathScheduler,
    Early,
    Late,
    LinearWarmup,
    ProgressiveLayerDrop,
    unwrap_model,
)

X = torch.randn(2, 5, 8)


@pytest.fixture(scope="module")
def _patched():
    m = TinyTransformer(depth=4)
    apply_drop_path(m, 0.1, example_inputs=X)
    return m


@pytest.fixture
def model(_patched):
    return copy.deepcopy(_patched)  # patching once per module keeps these tests fast


def rates(model):
    """Per-block rates as the model holds them (float and float32 buffer must agree)."""
    out = {}
    reported = {(s.block, s.branch): s.rate for s in drop_path_report(model).sites}
    for d in attached(model):
        assert d.keep_prob.item() == pytest.approx(1 - d.rate, abs=1e-7)
        for branch in d.patch.site.branches:
            assert reported[(branch.block, branch.branch)] == d.rate  # the report agrees
            out[branch.block] = d.rate
    return [out[b] for b in sorted(out)]


# --- the schedules ---------------------------------------------------------------------------


def test_constant_warmup_early_late_values():
    assert [Constant(0.2)(t) for t in (0, 5, 10**6)] == [0.2, 0.2, 0.2]
    w = LinearWarmup(0.2, warmup=10)
    assert [w(t) for t in (0, 5, 10, 11, 1000)] == [0.0, 0.1, 0.2, 0.2, 0.2]
    assert LinearWarmup(0.3, warmup=4, start_rate=0.1)(2) == pytest.approx(0.2)
    assert LinearWarmup(0.3, warmup=0)(0) == 0.3
    e = Early(0.1, until=3)
    assert [e(t) for t in range(6)] == [0.1, 0.1, 0.1, 0.0, 0.0, 0.0]
    late = Late(0.1, start=3)
    assert [late(t) for t in range(6)] == [0.0, 0.0, 0.0, 0.1, 0.1, 0.1]


def test_cosine_values_down_and_up():
    c = Cosine(0.4, total=100)
    assert c(0) == pytest.approx(0.4)
    assert c(50) == pytest.approx(0.2)
    assert c(25) == pytest.approx(0.2 * (1 + math.cos(math.pi / 4)))
    assert c(100) == 0.0 and c(10**6) == 0.0
    up = Cosine(0.0, total=10, final_rate=0.3)
    assert up(0) == 0.0 and up(5) == pytest.approx(0.15) and up(10) == pytest.approx(0.3)
    assert all(up(t) <= up(t + 1) for t in range(12))


def test_progressive_layer_drop_matches_its_formula():
    pld = ProgressiveLayerDrop(keep_min=0.5, gamma=0.001)
    for t in (0, 1, 100, 693, 5000):
        keep = (1 - 0.5) * math.exp(-0.001 * t) + 0.5
        assert pld.keep(t) == pytest.approx(keep, rel=1e-12)
        assert pld(t) == pytest.approx(1 - keep, rel=1e-12)
    assert pld(0) == 0.0
    assert pld(10**7) == pytest.approx(0.5)  # decays to 1 - keep_min
    assert ProgressiveLayerDrop(keep_min=0.8, gamma=0.01)(100) == pytest.approx(0.2 * (1 - math.exp(-1)))


@pytest.mark.parametrize(
    "build, error, match",
    [
        (lambda: Constant(1.5), InvalidRateError, r"Constant: rate .*\[0, 1\].*1.5"),
        (lambda: Constant("0.1"), InvalidRateError, "Constant: rate must be a number"),
        (lambda: LinearWarmup(0.1, warmup=-5), ScheduleError, "warmup must be .*>= 0, got -5"),
        (lambda: LinearWarmup(0.1, warmup=10, start_rate=-0.1), InvalidRateError, "start_rate"),
        (lambda: Early(0.1, until=float("inf")), ScheduleError, "until must be a finite"),
        (lambda: Late(float("nan"), start=3), InvalidRateError, "Late: rate"),
        (lambda: Cosine(0.1, total=0), ScheduleError, "total must be > 0"),
        (lambda: ProgressiveLayerDrop(keep_min=1.5), ScheduleError, "keep_min must be a number in \\[0, 1\\].*1.5"),
        (lambda: ProgressiveLayerDrop(gamma=-1), ScheduleError, "gamma"),
    ],
)
def test_bad_schedule_arguments_are_rejected_with_rule_value_and_fix(build, error, match):
    with pytest.raises(error, match=match):
        build()


# --- the scheduler --------------------------------------------------------------------------


def test_scheduler_sets_rate_zero_at_construction_and_steps_over_time(model):
    scheduler = DropPathScheduler(model, LinearWarmup(0.2, warmup=4))
    seen = [rates(model)]
    for _ in range(5):
        scheduler.step()
        seen.append(rates(model))
    for t, per_block in enumerate(seen):
        top = min(t, 4) / 4 * 0.2
        assert per_block == block_rates(top, "linear", 4)  # timm's linear spread of the top rate
    assert scheduler.t == 5 and scheduler.rate == pytest.approx(0.2)
    assert drop_path_report(model).schedule == "linear"


def test_per_layer_uniform_factors_and_callable(model):
    DropPathScheduler(model, Constant(0.3), per_layer="uniform")
    assert rates(model) == [pytest.approx(0.3)] * 4
    DropPathScheduler(model, Constant(0.3), per_layer=[1.0, 0.5, 0.0, 1.0])
    assert rates(model) == pytest.approx([0.3, 0.15, 0.0, 0.3])
    DropPathScheduler(model, 0.2, per_layer=lambda i, n: (i + 1) / n)
    assert rates(model) == pytest.approx([0.05, 0.1, 0.15, 0.2])


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(per_layer=[1.0, 1.0]), ScheduleError, "4 blocks, the list has 2"),
        (dict(per_layer=[1.0, 1.0, 2.0, 1.0]), ScheduleError, r"factors .*\[0, 1\]"),
        (dict(per_layer="cosine"), ScheduleError, "per_layer must be a schedule name .*got 'cosine'"),
        (dict(per_layer=lambda i, n: -1), ScheduleError, "per_layer callable returned an invalid factor"),
        (dict(unit="batch"), ScheduleError, "unit must be 'step'"),
        (dict(schedule="warmup"), ScheduleError, "schedule must be a time schedule"),
        (dict(schedule=lambda t: 2.0), ScheduleError, "time schedule returned an invalid rate"),
    ],
)
def test_scheduler_rejects_bad_arguments_before_changing_rates(model, kwargs, error, match):
    before = rates(model)
    kwargs.setdefault("schedule", Constant(0.3))
    with pytest.raises(error, match=match):
        DropPathScheduler(model, **kwargs)
    assert rates(model) == before


def test_scheduler_needs_a_patched_model():
    with pytest.raises(NotPatchedError, match="call apply_drop_path"):
        DropPathScheduler(TinyTransformer(), Constant(0.1))
    with pytest.raises(NotPatchedError):
        DropPathScheduler("model", Constant(0.1))


def test_resume_from_state_dict_continues_the_schedule(model):
    schedule = Cosine(0.3, total=20)
    a = DropPathScheduler(model, schedule)
    for _ in range(7):
        a.step()
    state = a.state_dict()
    assert state == {"t": 7, "unit": "step", "rate": pytest.approx(schedule(7))}

    other = copy.deepcopy(model)
    b = DropPathScheduler(other, schedule)
    assert rates(other) == block_rates(0.3, "linear", 4)
    b.load_state_dict(state)
    assert rates(other) == rates(model)
    for _ in range(15):
        assert a.step() == b.step()
        assert rates(other) == rates(model)
    assert rates(model) == [0.0] * 4  # the cosine reached 0


def test_load_state_dict_rejects_foreign_state(model):
    s = DropPathScheduler(model, Constant(0.1), unit="epoch")
    with pytest.raises(ScheduleError, match="counted steps and this one counts epochs"):
        s.load_state_dict({"t": 3, "unit": "step"})
    with pytest.raises(ScheduleError, match="with key 't'"):
        s.load_state_dict({"epoch": 3})
    with pytest.raises(ScheduleError, match="int >= 0"):
        s.set_time(-1)


def test_wrapped_models_are_unwrapped(model):
    compiled = torch.compile(model, backend="eager")
    parallel = nn.DataParallel(model)
    assert unwrap_model(compiled) is model and unwrap_model(parallel) is model
    assert unwrap_model(torch.compile(parallel, backend="eager")) is model
    DropPathScheduler(compiled, Constant(0.25), per_layer="uniform")
    assert rates(model) == [0.25] * 4
    DropPathScheduler(parallel, Constant(0.35), per_layer="uniform")
    assert rates(model) == [0.35] * 4


def test_the_model_trains_with_the_scheduled_rates():
    # Early(0.5, until=3): steps 0-2 drop at 0.5 (binomial test, 3 x 512 samples per site, alpha
    # 1e-4), from step 3 on drop path is off: DropPath returns its input itself.
    model = TinyTransformer(depth=2)
    apply_drop_path(model, 0.1, example_inputs=X)
    scheduler = DropPathScheduler(model, Early(0.5, until=3), per_layer="uniform")
    drops = attached(model)
    log = []
    for d in drops:
        d.register_forward_hook(lambda m, a, o: log.append((o is a[0], int((o == 0).flatten(1).all(1).sum()), o.shape[0])))
    model.train()
    per_step = []
    for _ in range(6):
        log.clear()
        model(torch.randn(512, 5, 8))
        per_step.append(list(log))
        scheduler.step()
    for step in per_step[:3]:
        assert all(not identity for identity, _, _ in step)
    dropped = sum(k for step in per_step[:3] for _, k, _ in step)
    n = sum(n for step in per_step[:3] for _, _, n in step)
    assert n == 3 * 4 * 512 and binomtest(dropped, n, 0.5).pvalue > 1e-4
    for step in per_step[3:]:
        assert all(identity and k == 0 for identity, k, _ in step)
