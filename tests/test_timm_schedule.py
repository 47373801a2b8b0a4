"""schedule="timm" (per branch, the rate timm's own constructor gives) and per-branch mappings.

The oracle is timm's real build with ``drop_path_rate=r`` (not the meta build the schedule reads),
plus the conventions written out from timm's source for the families no named schedule matches.
"""

from __future__ import annotations

import pytest
import timm
import torch
from helpers import ModelSnapshot, bitwise_equal, eval_output
from timm.layers import DropPath as TimmDropPath
from torch import nn

from droppath_surgery import (
    DropPath,
    DropPathScheduler,
    ScheduleError,
    apply_drop_path,
    drop_path_report,
    find_residual_branches,
    is_patched,
    set_drop_path_rate,
)
from droppath_surgery import build_example_inputs as build

TOL = 1e-6  # timm's float32 linspace at r against r * (its linspace at 1)


def timm_rates(model: nn.Module) -> dict[str, float]:
    """timm's rate at each of its drop path slots: DropPath modules, Identity slots at 0."""
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, TimmDropPath):
            out[name] = m.drop_prob
        elif isinstance(m, nn.Identity) and "drop_path" in name.rsplit(".", 1)[-1]:
            out[name] = 0.0
    return out


def our_rates(model: nn.Module) -> dict[str, float]:
    return {name: m.rate for name, m in model.named_modules() if isinstance(m, DropPath)}


def assert_rates_close(got: dict[str, float], want: dict[str, float]) -> None:
    assert got.keys() == want.keys()
    bad = {k: (got[k], want[k]) for k in got if abs(got[k] - want[k]) > TOL}
    assert not bad, bad


@pytest.mark.parametrize("rate", [0.1, 0.35])
def test_cait_class_attention_blocks_stay_at_zero_as_in_timm(rate):
    # timm (cait.py): dpr = [drop_path_rate] * depth for `blocks`; `blocks_token_only` get drop_path=0.
    model = timm.create_model("cait_xxs24_224", pretrained=False)
    x = build(model)[0][0]
    before = eval_output(model, x)
    report = apply_drop_path(model, rate, schedule="timm")
    assert report.schedule == "timm" and report.verified and len(report.sites) == 52  # class blocks kept, at 0
    rates = our_rates(model)
    assert {r for p, r in rates.items() if p.startswith("blocks.")} == {rate}
    assert {r for p, r in rates.items() if p.startswith("blocks_token_only.")} == {0.0}
    assert_rates_close(rates, timm_rates(timm.create_model("cait_xxs24_224", pretrained=False, drop_path_rate=rate)))
    assert bitwise_equal(before, eval_output(model, x))


def test_nextvit_branches_of_one_block_get_timms_different_rates():
    # timm (nextvit.py, NextTransformerBlock): mhsa r * 0.75, mhca r * 0.25, mlp r, per block.
    model = timm.create_model("nextvit_small", pretrained=False)
    report = apply_drop_path(model, 0.1, schedule="timm")
    oracle = timm_rates(timm.create_model("nextvit_small", pretrained=False, drop_path_rate=0.1))
    rates = our_rates(model)
    assert_rates_close(rates, oracle)
    block = "stages.3.blocks.2"
    mlp = rates[f"{block}.mlp_drop_path"]
    assert mlp > 0
    assert rates[f"{block}.mhsa_drop_path"] == pytest.approx(0.75 * mlp, abs=TOL)
    assert rates[f"{block}.mhca_drop_path"] == pytest.approx(0.25 * mlp, abs=TOL)
    by_block = {}
    for s in report.sites:
        by_block.setdefault(s.block, set()).add(s.rate)
    assert any(len(v) == 3 for v in by_block.values())  # per-branch, not per-block
    assert report.block_rates[max(by_block)] == pytest.approx(0.1)  # a block's highest branch


def test_resnet_hooked_branches_get_the_rate_of_their_blocks_none_slot():
    # ResNet's drop_path is None at rate 0: the engine hooks bn2 and takes the block's slot's rate.
    model = timm.create_model("resnet18", pretrained=False)
    report = apply_drop_path(model, 0.2, schedule="timm")
    assert {s.kind for s in report.sites} == {"hook"}
    oracle = timm.create_model("resnet18", pretrained=False, drop_path_rate=0.2)
    want = {}
    for name, m in oracle.named_modules():
        slot = getattr(m, "drop_path", "absent")
        if slot != "absent" and name.startswith("layer"):
            want[name] = slot.drop_prob if isinstance(slot, TimmDropPath) else 0.0
    got = {s.block_path: s.rate for s in report.sites}
    assert got.keys() == want.keys()
    assert all(abs(got[b] - want[b]) <= TOL for b in got), (got, want)
    assert got["layer1.0"] == 0.0 and got["layer4.1"] == pytest.approx(0.2)


def test_a_branch_end_that_is_no_timm_slot_takes_its_blocks_rate():
    # RexNet: the engine hooks conv_pwl (its BatchNormAct2d's `drop` Identity is a dropout placeholder,
    # no drop path slot); timm's slot for the block is `drop_path`, None at rate 0.
    model = timm.create_model("rexnet_100", pretrained=False)
    report = apply_drop_path(model, 0.1, schedule="timm")
    assert all(s.path.endswith("conv_pwl") and s.kind == "hook" for s in report.sites)
    oracle = timm.create_model("rexnet_100", pretrained=False, drop_path_rate=0.1)
    want = {p.rsplit(".", 1)[0]: r for p, r in timm_rates(oracle).items()}
    got = {s.block_path: s.rate for s in report.sites}
    assert all(abs(got[b] - want[b]) <= TOL for b in got), (got, want)
    assert len({round(r, 9) for r in got.values()}) == len(got)  # a ramp, not one rate


def test_residual_blocks_timm_builds_without_drop_path_are_left_out_and_reported():
    # ViTamin's hybrid stem (MbConv blocks inside patch_embed) has residuals with a `drop_path`
    # Identity at any rate, outside timm's ramp; a named schedule patches them (the engine finds them).
    model = timm.create_model("vitamin_small_224", pretrained=False)
    assert len(find_residual_branches(model).sites) == 34
    report = apply_drop_path(model, 0.1, schedule="timm")
    stem = {f"patch_embed.backbone.stages.{i}.{j}.drop_path" for i, n in ((0, 2), (1, 4)) for j in range(n)}
    assert {s.path for s in report.skipped if s.reason.startswith("timm builds this block without a drop path slot")} == stem
    assert len(report.sites) == 28 and not any(s.path in stem for s in report.sites)
    oracle = timm.create_model("vitamin_small_224", pretrained=False, drop_path_rate=0.1)
    want = {k: v for k, v in timm_rates(oracle).items() if k.startswith("blocks.")}
    assert_rates_close(our_rates(model), want)


def test_set_drop_path_rate_and_the_scheduler_follow_timm_at_every_rate():
    model = timm.create_model("volo_d1_224", pretrained=False)
    apply_drop_path(model, 0.1, schedule="timm")
    set_drop_path_rate(model, 0.3, schedule="timm")
    assert drop_path_report(model).schedule == "timm"
    assert_rates_close(our_rates(model), timm_rates(timm.create_model("volo_d1_224", pretrained=False, drop_path_rate=0.3)))
    scheduler = DropPathScheduler(model, lambda t: 0.05 * t, per_layer="timm")
    scheduler.step()
    scheduler.step()
    assert_rates_close(our_rates(model), timm_rates(timm.create_model("volo_d1_224", pretrained=False, drop_path_rate=0.1)))


def test_a_timm_model_inside_a_wrapper_and_the_wrappers_own_blocks():
    class Head(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Sequential(nn.Conv2d(512, 64, 1), nn.GELU(), nn.Conv2d(64, 512, 1))

        def forward(self, x):
            return x + self.fc(x)

    class Wrapper(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.backbone = timm.create_model("resnet10t", pretrained=False)
            self.heads = nn.ModuleList([Head(), Head()])

        def forward(self, x):
            x = self.backbone.forward_features(x)
            for h in self.heads:
                x = h(x)
            return x

    model = Wrapper()
    x = torch.randn(2, 3, 64, 64)
    snap = ModelSnapshot(model)
    with pytest.raises(ScheduleError, match=r"only to branches inside timm models \('backbone'\); 2 are outside: heads.0.fc.2"):
        apply_drop_path(model, 0.1, schedule="timm", example_inputs=x)
    snap.assert_same()
    report = apply_drop_path(model, 0.3, schedule="timm", example_inputs=x, filter_fn=lambda m, fqn: fqn.startswith("backbone."))
    oracle = timm.create_model("resnet10t", pretrained=False, drop_path_rate=0.3)
    want = {f"backbone.{n}": m.drop_path.drop_prob if m.drop_path is not None else 0.0
            for n, m in oracle.named_modules() if hasattr(m, "drop_path") and n.startswith("layer")}
    got = {s.block_path: s.rate for s in report.sites}
    assert got.keys() == want.keys() and all(abs(got[b] - want[b]) <= TOL for b in got), (got, want)
    assert got["backbone.layer4.0"] == pytest.approx(0.3)


def test_a_peft_wrapped_timm_model_and_a_features_only_one():
    peft = pytest.importorskip("peft")
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=64)
    wrapped = peft.get_peft_model(model, peft.LoraConfig(target_modules=["qkv"], r=4))
    # PeftModel forwards attribute lookups (pretrained_cfg too) to the timm model inside it; the
    # paths must still be read from the timm model, at base_model.model.
    apply_drop_path(wrapped, 0.1, schedule="timm", example_inputs=torch.randn(2, 3, 64, 64))
    oracle = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=64, drop_path_rate=0.1)
    assert_rates_close(our_rates(wrapped), {f"base_model.model.{k}": v for k, v in timm_rates(oracle).items()})
    features = timm.create_model("resnet18", pretrained=False, features_only=True)
    report = apply_drop_path(features, 0.1, schedule="timm", example_inputs=torch.randn(2, 3, 64, 64))
    assert [round(s.rate, 6) for s in report.sites] == [round(0.1 * i / 7, 6) for i in range(8)]


def test_a_model_that_is_not_timm_or_built_differently_is_refused_and_left_as_it_was():
    with pytest.raises(ScheduleError, match="not a timm model.*schedule='linear'"):
        find_residual_branches(ResidualMLP(), torch.randn(2, 4), schedule="timm")
    dla = timm.create_model("dla46x_c", pretrained=False)  # residual branches, but no drop_path_rate in timm
    with pytest.raises(ScheduleError, match="timm's 'dla46x_c' takes no drop_path_rate.*schedule='linear'"):
        apply_drop_path(dla, 0.1, schedule="timm")
    assert not is_patched(dla)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, depth=4, img_size=64)
    apply_drop_path(model, 0.1)  # an earlier patch must survive the failed one
    before = our_rates(model)
    with pytest.raises(ScheduleError, match=r"built differently \(Block: 4 here, 12 in timm's build.*depth"):
        apply_drop_path(model, 0.2, schedule="timm")
    assert is_patched(model) and our_rates(model) == before
    with pytest.raises(ScheduleError, match="built differently"):
        set_drop_path_rate(model, 0.2, schedule="timm")
    assert our_rates(model) == before


class ResidualMLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([Residual(), Residual(), Residual()])

    def forward(self, x):
        for b in self.blocks:
            x = b(x)
        return x


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.f = nn.Sequential(nn.Linear(4, 8), nn.GELU(), nn.Linear(8, 4))
        self.g = nn.Sequential(nn.Linear(4, 8), nn.GELU(), nn.Linear(8, 4))

    def forward(self, x):
        x = x + self.f(x)
        return x + self.g(x)


def test_a_mapping_gives_each_branch_its_own_rate():
    model = ResidualMLP()
    x = torch.randn(3, 4)
    paths = [s.path for s in find_residual_branches(model, x).sites]
    assert paths == [f"blocks.{i}.{b}.2" for i in range(3) for b in "fg"]
    mapping = {p: 0.05 * k for k, p in enumerate(paths)}
    before = eval_output(model, x)
    report = apply_drop_path(model, schedule=mapping, example_inputs=x)
    assert {s.path: s.rate for s in report.sites} == mapping
    assert report.schedule == "per-branch mapping" and report.verified
    assert bitwise_equal(before, eval_output(model, x))
    set_drop_path_rate(model, schedule={p: 0.5 for p in paths})
    assert {s.rate for s in drop_path_report(model).sites} == {0.5}


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda m: m.pop("blocks.1.g.2"), r"1 sites have no rate: 'blocks.1.g.2'.*sites\[i\].path"),
        (lambda m: m.update({"blocks.1.g": 0.1}), r"1 keys are not sites: 'blocks.1.g'"),
        (lambda m: m.update({"blocks.0.f.2": 1.5}), r"rate of 'blocks.0.f.2'.*1.5"),
    ],
)
def test_a_bad_mapping_says_which_site_and_leaves_the_model_as_it_was(change, message):
    model = ResidualMLP()
    x = torch.randn(3, 4)
    mapping = {s.path: 0.1 for s in find_residual_branches(model, x).sites}
    change(mapping)
    snap = ModelSnapshot(model)
    with pytest.raises(ScheduleError, match=message):
        apply_drop_path(model, schedule=mapping, example_inputs=x)
    snap.assert_same()
    assert not is_patched(model)
