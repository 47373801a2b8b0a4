"""The coverage table (scripts/coverage.py): its matching rules on small hand-made models, and the CI
subset, which fails if the engine loses parity on the families where it has it."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from droppath_surgery import SCHEDULES, apply_drop_path
from droppath_surgery.report import Site

ROOT = Path(__file__).resolve().parents[1]


def _load_script():
    spec = importlib.util.spec_from_file_location("droppath_coverage_script", ROOT / "scripts" / "coverage.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


cov = _load_script()


# -- hand-made models with timm's conventions: None slots, unused slots, Identity at rate 0 -----------


class DropPathStandIn(nn.Module):
    """A module named like timm's DropPath (the oracle finds slots by class name)."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.drop_prob = p

    def forward(self, x):
        return x


class ResBlock(nn.Module):
    """ResNet-style: ``drop_path`` is None at rate 0; the branch ends in ``bn``."""

    def __init__(self, rate: float, skip: bool = True) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.drop_path = DropPathStandIn(rate) if rate > 0 else None
        self.skip = skip

    def forward(self, x):
        y = self.bn(self.conv(torch.relu(x)))  # a non-linear branch (linear ones are not block branches)
        if not self.skip:
            return y
        if self.drop_path is not None:
            y = self.drop_path(y)
        return torch.relu(x + y)


class PreNormBlock(nn.Module):
    """ViT-style: ``drop_path1``/``drop_path2`` are Identity at rate 0."""

    def __init__(self, rate: float) -> None:
        super().__init__()
        self.f = nn.Linear(4, 4)
        self.g = nn.Linear(4, 4)
        self.drop_path1 = DropPathStandIn(rate) if rate > 0 else nn.Identity()
        self.drop_path2 = DropPathStandIn(rate) if rate > 0 else nn.Identity()

    def forward(self, x):
        x = x + self.drop_path1(self.f(x))
        return x + self.drop_path2(self.g(x))


class NoShortcutBlock(nn.Module):
    """ByobNet-style: drop path is applied, but this block has no shortcut to add it to."""

    def __init__(self, rate: float) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.drop_path = DropPathStandIn(rate) if rate > 0 else nn.Identity()

    def forward(self, x):
        return torch.relu(self.drop_path(self.conv(x)))


class ToyResNet(nn.Module):
    def __init__(self, rate: float = 0.0) -> None:
        super().__init__()
        n = 4
        rates = [rate * i / (n - 1) for i in range(n)]
        # Block 2 has no skip: its slot exists but forward never uses it, as in EfficientNet.
        self.layers = nn.Sequential(*[ResBlock(r, skip=(i != 2)) for i, r in enumerate(rates)], NoShortcutBlock(rate))

    def forward(self, x):
        return self.layers(x)


class ToyViT(nn.Module):
    def __init__(self, rate: float = 0.0) -> None:
        super().__init__()
        rates = [float(v) for v in torch.linspace(0, rate, 3)]
        self.blocks = nn.ModuleList([PreNormBlock(r) for r in rates])

    def forward(self, x):
        for b in self.blocks:
            x = b(x)
        return x


def _slots(model, x):
    return cov.native_slots(model, lambda m: cov.eval_forward(m, (x,), {}))


def test_native_slots_count_none_slots_and_skip_unused_and_off_residual_ones():
    x = torch.randn(2, 4, 6, 6)
    slots = _slots(ToyResNet(0.3), x)
    assert [(s.path, s.block, s.holds, s.calls, s.off_residual) for s in slots] == [
        ("layers.0.drop_path", "layers.0", "None", 1, 0),  # rate 0: None, found by its attribute name
        ("layers.1.drop_path", "layers.1", "DropPathStandIn", 1, 0),
        # layers.2 holds a slot that forward never calls: not listed
        ("layers.3.drop_path", "layers.3", "DropPathStandIn", 1, 0),
        ("layers.4.drop_path", "layers.4", "DropPathStandIn", 0, 1),  # called, but added to nothing
    ]
    assert [s.rate for s in slots] == pytest.approx([0.0, 0.1, 0.3, 0.3])
    assert "layers.4.drop_path" in cov.off_residual_note(slots)
    assert list(cov.expected_from_slots(slots, ToyResNet())) == ["layers.0", "layers.1", "layers.3"]


def test_merges_are_followed_through_scaling_and_slicing_but_not_out_of_the_block():
    class Scaled(nn.Module):  # x + gamma * drop_path(f(x)), with gamma a parameter; then x[:, :2] += drop_path(...)
        def __init__(self, rate):
            super().__init__()
            self.f = nn.Linear(4, 4)
            self.gamma = nn.Parameter(torch.ones(4))
            self.drop_path = DropPathStandIn(rate)
            self.drop_path2 = DropPathStandIn(rate)

        def forward(self, x):
            x = x + self.gamma * self.drop_path(self.f(x))
            y = self.drop_path2(self.f(x)).clone()
            y[:, :2] += x[:, :2]
            return y

    class Leaky(nn.Module):  # the drop path output leaves the block before it is added to anything
        def __init__(self, rate):
            super().__init__()
            self.f = nn.Linear(4, 4)
            self.drop_path = DropPathStandIn(rate)

        def forward(self, x):
            return self.drop_path(self.f(x))

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = nn.ModuleList([Scaled(0.1), Leaky(0.1)])

        def forward(self, x):
            x = self.blocks[0](x)
            return x + self.blocks[1](x)  # added, but outside the block that holds the slot

    slots = _slots(Net(), torch.randn(2, 3, 4))
    assert {s.path: (s.calls, s.off_residual) for s in slots} == {
        "blocks.0.drop_path": (1, 0), "blocks.0.drop_path2": (1, 0), "blocks.1.drop_path": (0, 1)
    }


def test_hook_sites_match_none_slots_per_block_and_rates_per_branch():
    x = torch.randn(2, 4, 6, 6)
    model = ToyResNet()
    report = apply_drop_path(model, 0.3, example_inputs=x)
    assert {s.kind for s in report.sites} == {"hook"}
    expected = cov.expected_from_slots(_slots(ToyResNet(0.3), x), model)
    assert {b: (e.free, sum(e.slot_paths.values())) for b, e in expected.items()} == {
        "layers.0": (1, 0), "layers.1": (1, 0), "layers.3": (1, 0)
    }
    site_ok, rate_ok, reasons = cov.compare(report.sites, expected, check_rates=True, rate=0.3)
    # The engine numbers all 5 blocks of the stack (skip-less ones too) and spreads 0..0.3 over them;
    # the toy's own formula counts 4 blocks (it leaves out its last, shortcut-less block).
    assert site_ok and rate_ok is False
    assert "layers.1: native 0.1, engine 0.075" in " ".join(reasons)
    assert "native rates are r*k/3 with k = 0,1,3" in " ".join(reasons)
    assert report.num_blocks == 5
    report = apply_drop_path(model, 0.3, schedule=[0.0, 0.1, 0.0, 0.3, 0.0], example_inputs=x)
    assert cov.compare(report.sites, expected, check_rates=True) == (True, True, [])


def test_replace_sites_must_be_at_the_slot_path():
    x = torch.randn(2, 5, 4)
    model = ToyViT()
    report = apply_drop_path(model, 0.1, example_inputs=x)
    expected = cov.expected_from_slots(_slots(ToyViT(0.1), x), model)
    assert expected["blocks.1"].slot_paths == {"blocks.1.drop_path1": 1, "blocks.1.drop_path2": 1}
    assert cov.compare(report.sites, expected, check_rates=True) == (True, True, [])

    def site(path, block_path="blocks.0", kind="replace", rate=0.0):
        return Site(path=path, block=0, rate=rate, kind=kind, batch_dim=0, block_path=block_path, branch=0, replaced="Identity")

    sites = list(report.sites)
    # The same number of branches, but one at another module (a hook on g: the other branch's tensor).
    moved = [site("blocks.0.g", kind="hook")] + sites[1:]
    ok, _, reasons = cov.compare(moved, expected, check_rates=False)
    assert not ok and "blocks.0: expected [blocks.0.drop_path1, blocks.0.drop_path2]" in " ".join(reasons)
    # With the tensors of one forward, a site on the module whose output flows through the slot
    # carries the same branch (f's output is what drop_path1, an Identity, returns), g's does not.
    flow = cov.observe_outputs(model, (x,), {}, ["blocks.0.drop_path1", "blocks.0.drop_path2", "blocks.0.f", "blocks.0.g"])
    ok, _, reasons = cov.compare([site("blocks.0.f", kind="hook")] + sites[1:], expected, False, flow)
    assert ok and "hook blocks.0.f for blocks.0.drop_path1" in " ".join(reasons)
    assert not cov.compare(moved, expected, False, flow)[0]
    # A block missing, and a branch in a block that should have none.
    ok, _, reasons = cov.compare(sites[2:] + [site("head.x", block_path="head")], expected, check_rates=False)
    assert not ok
    assert "blocks without engine site (1): blocks.0" in " ".join(reasons)
    assert "engine blocks not expected (1): head" in " ".join(reasons)
    # A wrong rate.
    wrong = sites[:-1] + [Site(**{**sites[-1].__dict__, "rate": 0.2})]
    ok, rate_ok, reasons = cov.compare(wrong, expected, check_rates=True)
    assert ok and rate_ok is False and "blocks.2: native 0.1, engine 0.1/0.2" in " ".join(reasons)


def test_tree_block_is_the_innermost_container_element():
    model = nn.Sequential(nn.Sequential(nn.Linear(2, 2)), ToyViT())
    modules = dict(model.named_modules())
    assert cov.tree_block("1.blocks.2.drop_path1", modules) == "1.blocks.2"
    assert cov.tree_block("0.0", modules) is None  # 0.0 itself is the element; its ancestors are containers
    assert cov.tree_block("1.blocks.0.f", modules) == "1.blocks.0"


def test_a_slot_of_a_stage_that_holds_blocks_belongs_to_the_stage_child_on_its_path():
    # LeViT: stages.1 = Stage(downsample=Downsample(... drop_path), blocks=Sequential(Block, ...)).
    Slot = cov.Slot
    slots = [
        Slot("stages.1.downsample.drop_path", "stages.1", 0.1, "DropPath"),
        Slot("stages.1.blocks.0.drop_path1", "stages.1.blocks.0", 0.1, "DropPath"),
        Slot("stages.2.blocks.0.drop_path1", "stages.2.blocks.0", 0.1, "DropPath"),
    ]
    cov.stage_blocks(slots)
    assert [s.block for s in slots] == ["stages.1.downsample", "stages.1.blocks.0", "stages.2.blocks.0"]


def test_schedules_are_found_by_value(monkeypatch):
    assert cov.schedule_for("linear") == "linear"
    assert cov.schedule_for("uniform") == "uniform"
    per_n = [name for name in SCHEDULES if cov.schedule_for("per_n") == name]
    monkeypatch.setitem(SCHEDULES, "zz_test_last_below_rate", lambda r, n: [r * i / n for i in range(n)])
    assert cov.schedule_for("per_n") == (per_n[0] if per_n else "zz_test_last_below_rate")
    monkeypatch.setitem(SCHEDULES, "zz_test_broken", lambda r: [r])  # another signature: ignored
    assert cov.schedule_for("linear") == "linear"


def test_outputs_equal_is_bitwise():
    a = {"x": torch.tensor([1.0, float("nan")]), "y": (torch.ones(2),)}
    assert cov.outputs_equal(a, {"x": torch.tensor([1.0, float("nan")]), "y": (torch.ones(2),)})
    assert not cov.outputs_equal(a, {"x": torch.tensor([1.0 + 1e-7, float("nan")]), "y": (torch.ones(2),)})
    assert not cov.outputs_equal(a, {"x": torch.tensor([1.0, 0.0]), "y": (torch.ones(2),)})


# -- the CI subset -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def subset_rows():
    torch.manual_seed(0)
    return cov.run_rows(subset=True, timeout=300)


def test_subset_has_a_transformer_a_hierarchical_and_a_convolutional_family_per_library(subset_rows):
    got = {(r.library, r.family) for r in subset_rows}
    assert got == {(lib, fam) for lib, fams in cov.SUBSET.items() for fam in fams}


@pytest.mark.parametrize("library, family", [(lib, f) for lib, fams in cov.EXPECTED_AT_PARITY.items() for f in fams])
def test_engine_keeps_parity(subset_rows, library, family):
    row = next(r for r in subset_rows if (r.library, r.family) == (library, family))
    assert row.counted
    has_native = row.native is not None  # HF ViT has no drop path of its own: no rate oracle
    assert (row.site, row.rate, row.eval_ok) == ("yes", "yes" if has_native else "n/a", "yes"), row.reason
    assert row.at_parity and row.branches and row.patch_s is not None
    assert row.native == row.branches or not has_native or library == "hf"  # HF Swin drops only one branch per block


def test_timm_schedule_matches_timm_on_every_timm_row_of_the_subset(subset_rows):
    timm_rows = [r for r in subset_rows if r.library == "timm"]
    assert [r.family for r in timm_rows if r.timm_rate != "yes"] == []
    assert [r.family for r in timm_rows if not r.at_parity_timm] == []


@pytest.mark.parametrize("family", cov.EXPECTED_AT_PARITY_WITH_TIMM_SCHEDULE)
def test_conventions_no_named_schedule_expresses_are_at_parity_with_the_timm_schedule(subset_rows, family):
    row = next(r for r in subset_rows if (r.library, r.family) == ("timm", family))
    assert (row.site, row.rate, row.timm_rate, row.eval_ok) == ("yes", "no", "yes", "yes"), row.reason
    assert row.at_parity_timm and not row.at_parity


def test_skip_dropped_applies_and_trains_on_every_subset_model(subset_rows):
    patched = [r for r in subset_rows if r.branches]
    assert patched and [f"{r.library}:{r.family}: {r.skip} {r.skip_note}" for r in patched if not r.skip.endswith("train ok")] == []
    skips = {(r.library, r.family): tuple(int(v) for v in r.skip.split(",")[0].split("/")) for r in patched}
    for key in [("timm", "vision_transformer"), ("timm", "swin_transformer"), ("hf", "ViT"), ("torchvision", "swin_t")]:
        k, n = skips[key]
        assert k == n > 0, key  # transformer blocks: every branch skips
    resnet = next(r for r in subset_rows if (r.library, r.family) == ("timm", "resnet"))
    assert resnet.skip.startswith("0/") and "batch statistics" in resnet.skip_note  # BatchNorm branches mask


def test_rows_not_at_parity_say_why_and_the_markdown_lists_them(subset_rows):
    failing = [r for r in subset_rows if r.counted and not r.at_parity]
    assert all(r.reason for r in failing)
    text = cov.to_markdown(subset_rows, 1.0, subset=True)
    for line in cov.summary_lines(subset_rows):
        assert f"- {line}" in text
    timm_ok = sum(r.at_parity for r in subset_rows if r.library == "timm" and r.counted)
    assert f"timm: {timm_ok}/{sum(r.counted for r in subset_rows if r.library == 'timm')} families" in text
    for r in subset_rows:
        assert f"| {r.family} | {r.model} |" in text
    for r in failing:
        assert f"**{r.library}:{r.family}**" in text


def test_timm_example_inputs_use_in_chans_not_a_stem_conv():
    # TResNet's first conv follows a space-to-depth stem (48 input channels for a 3-channel image).
    import timm
    from droppath_surgery import build_example_inputs as build

    with torch.device("meta"):
        tresnet = timm.create_model("tresnet_m", pretrained=False)
        gray = timm.create_model("resnet18", pretrained=False, in_chans=1)
    assert next(m for m in tresnet.modules() if isinstance(m, nn.Conv2d)).in_channels == 48
    assert build(tresnet)[0][0].shape == (2, 3, 224, 224)
    assert build(gray)[0][0].shape == (2, 1, 224, 224)


def test_why_is_shown_next_to_the_measured_reason_and_stale_entries_are_listed(monkeypatch):
    rows = [
        cov.Row("timm", "fam_a", model="a", branches=2, blocks=1, native=2, site="no", rate="yes", eval_ok="yes", reason="engine: 2 branches"),
        cov.Row("timm", "fam_b", model="b", branches=2, blocks=1, native=2, site="yes", rate="yes", eval_ok="yes"),
    ]
    monkeypatch.setitem(cov.WHY_NOT_AT_PARITY, "timm:fam_a", "timm does A")
    monkeypatch.setitem(cov.WHY_NOT_AT_PARITY, "timm:fam_b", "timm does B")
    text = cov.to_markdown(rows, 1.0, False)
    failing = text.split("## Not at parity, with the reason")[1].split("##")[0]
    assert "**timm:fam_a** (`a`): engine: 2 branches" in failing and "*Why:* timm does A" in failing
    assert "fam_b" not in failing  # an explanation never makes or hides a failure
    assert "timm:fam_b: at parity now; its entry in `WHY_NOT_AT_PARITY` is stale" in text


def test_every_explanation_names_a_known_family():
    families = {f"timm:{f}" for f in cov.TIMM_MODELS} | {f"torchvision:{c.name}" for c in cov.TV_MODELS}
    assert set(cov.WHY_NOT_AT_PARITY) <= families
