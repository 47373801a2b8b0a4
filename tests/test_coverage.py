"""The coverage table (scripts/droppath_coverage): its matching rules on small hand-made models, and the
CI subset, which fails if the engine loses parity on the families where it has it."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from droppath_surgery import SCHEDULES, Site, apply_drop_path, build_example_inputs

ROOT = Path(__file__).resolve().parents[1]

from droppath_coverage import catalog, judge, oracles, render, runner

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


class ToyLowFormer(nn.Module):
    """LowFormer-style: each block of the stack (``stages.i``, no residual of its own) holds two
    ``ResBlock``s, ``attn`` and ``local``, each holding its own ``drop_path`` (None at rate 0) and
    adding its own residual. timm places the slot at ``stages.i.attn.drop_path``: its holder is
    ``stages.i.attn``, not the stack's element ``stages.i``."""

    class Block(nn.Module):
        def __init__(self, rate: float) -> None:
            super().__init__()
            self.attn = ResBlock(rate)
            self.local = ResBlock(rate)

        def forward(self, x):
            return self.local(self.attn(x))

    def __init__(self, rate: float = 0.0) -> None:
        super().__init__()
        self.stages = nn.ModuleList([self.Block(r) for r in (rate / 2, rate)])

    def forward(self, x):
        for s in self.stages:
            x = s(x)
        return x


def _slots(model, x):
    return oracles.native_slots(model, lambda m: oracles.eval_forward(m, (x,), {}))


def _site(path, kind="hook", rate=0.0, block_path="", block=0):
    return Site(
        path=path, block=block, rate=rate, kind=kind, batch_dim=0, block_path=block_path, branch=0, replaced="X"
    )


def test_native_slots_count_none_slots_and_skip_unused_and_off_residual_ones():
    x = torch.randn(2, 4, 6, 6)
    slots = _slots(ToyResNet(0.3), x)
    assert [(s.path, s.holder, s.holds, s.calls, s.off_residual) for s in slots] == [
        ("layers.0.drop_path", "layers.0", "None", 1, 0),  # rate 0: None, found by its attribute name
        ("layers.1.drop_path", "layers.1", "DropPathStandIn", 1, 0),
        # layers.2 holds a slot that forward never calls: not listed
        ("layers.3.drop_path", "layers.3", "DropPathStandIn", 1, 0),
        ("layers.4.drop_path", "layers.4", "DropPathStandIn", 0, 1),  # called, but added to nothing
    ]
    assert [s.rate for s in slots] == pytest.approx([0.0, 0.1, 0.3, 0.3])
    assert "layers.4.drop_path" in oracles.off_residual_note(slots)
    expected = oracles.expected_from_slots(slots, ToyResNet())
    assert expected.slots == []  # the model under test holds None at every slot: all matched by count
    assert {h.path: (h.free, h.rates) for h in expected.holders.values()} == {
        "layers.0": (1, [0.0]), "layers.1": (1, [pytest.approx(0.1)]), "layers.3": (1, [pytest.approx(0.3)])
    }


def test_merges_are_followed_through_scaling_and_slicing_but_not_out_of_the_holder():
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

    class Leaky(nn.Module):  # the drop path output leaves its holder before it is added to anything
        def __init__(self, rate):
            super().__init__()
            self.f = nn.Linear(4, 4)
            self.drop_path = DropPathStandIn(rate)

        def forward(self, x):
            return self.drop_path(self.f(x))

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = nn.ModuleList([Scaled(0.1), nn.Sequential(Leaky(0.1))])

        def forward(self, x):
            x = self.blocks[0](x)
            return x + self.blocks[1](x)  # added, but outside the module that holds the slot

    slots = _slots(Net(), torch.randn(2, 3, 4))
    assert {s.path: (s.calls, s.off_residual) for s in slots} == {
        "blocks.0.drop_path": (1, 0), "blocks.0.drop_path2": (1, 0), "blocks.1.0.drop_path": (0, 1)
    }


def test_merges_are_followed_through_scalings_by_constants_but_not_through_other_operations_on_buffers():
    class ScaleView(nn.Module):  # timm's PoolFormer v1: x + scale.view(1, -1, 1, 1) * drop_path(f(x))
        def __init__(self, rate):
            super().__init__()
            self.f = nn.Conv2d(4, 4, 1)
            self.scale = nn.Parameter(torch.ones(4))
            self.drop_path = DropPathStandIn(rate)

        def forward(self, x):
            return x + self.drop_path(self.f(x)) * self.scale.view(1, -1, 1, 1)

    class DroppedShortcut(nn.Module):  # timm's ResNeSt: the dropped input feeds the shortcut's batch norm
        def __init__(self, rate):
            super().__init__()
            self.f = nn.Conv2d(4, 4, 1)
            self.down = nn.BatchNorm2d(4)
            self.drop_path = DropPathStandIn(rate)

        def forward(self, x):
            return self.f(x) + self.down(self.drop_path(x))

    class UnusedDrop(nn.Module):  # timm's ResNeSt without downsample: ``x = drop_path(x)`` after ``shortcut = x``
        def __init__(self, rate):
            super().__init__()
            self.f = nn.Conv2d(4, 4, 1)
            self.drop_path = DropPathStandIn(rate)  # returns its input object in eval, as timm's does

        def forward(self, x):
            shortcut = x
            out = self.f(x)
            x = self.drop_path(x)  # noqa: F841 - the dropped tensor is never used
            return out + shortcut

    model = nn.Sequential(ScaleView(0.1), DroppedShortcut(0.1), UnusedDrop(0.1))
    slots = _slots(model, torch.randn(2, 4, 3, 3))
    assert {s.path: (s.calls, s.off_residual) for s in slots} == {
        "0.drop_path": (1, 0), "1.drop_path": (0, 1), "2.drop_path": (0, 1)
    }


def test_a_slot_called_twice_is_two_branches_and_each_call_is_matched():
    class Twice(nn.Module):  # HF Dinov2 / torchvision Swin: one drop path module for both branches
        def __init__(self, rate):
            super().__init__()
            self.f = nn.Sequential(nn.Linear(4, 4), nn.ReLU())
            self.g = nn.Sequential(nn.Linear(4, 4), nn.ReLU())
            self.drop_path = DropPathStandIn(rate) if rate else nn.Identity()

        def forward(self, x):
            x = x + self.drop_path(self.f(x))
            return x + self.drop_path(self.g(x))

    x = torch.randn(2, 3, 4)
    slots = _slots(nn.Sequential(Twice(0.1)), x)
    assert [(s.path, s.merged) for s in slots] == [("0.drop_path", [0, 1])]
    model = nn.Sequential(Twice(0.0))
    expected = oracles.expected_from_slots(slots, model)
    assert expected.count == 2
    flow = oracles.observe_outputs(model, (x,), {}, ["0.drop_path", "0.f", "0.g"])
    # One site on each branch's tensor: both calls carried. Two sites on the first: the second is lost.
    both = [_site("0.f", rate=0.1), _site("0.g", rate=0.1)]
    assert judge.compare(both, expected, True, flow)[:2] == (True, True)
    ok, _, reasons = judge.compare([_site("0.f", rate=0.1), _site("0.f", rate=0.1)], expected, True, flow)
    assert not ok and "slots no engine site carries (1): 0.drop_path (call 1)" in " ".join(reasons)


def test_hook_sites_match_none_slots_per_holder_and_rates_per_branch():
    x = torch.randn(2, 4, 6, 6)
    model = ToyResNet()
    report = apply_drop_path(model, 0.3, example_inputs=x)
    assert {s.kind for s in report.sites} == {"hook"}
    expected = oracles.expected_from_slots(_slots(ToyResNet(0.3), x), model)
    site_ok, rate_ok, reasons = judge.compare(report.sites, expected, check_rates=True, rate=0.3)
    # The engine numbers all 5 blocks of the stack (skip-less ones too) and spreads 0..0.3 over them;
    # the toy's own formula counts 4 blocks (it leaves out its last, shortcut-less block).
    assert site_ok and rate_ok is False
    assert "layers.1: native 0.1, engine 0.075" in " ".join(reasons)
    assert "native rates are r*k/3 with k = 0,1,3" in " ".join(reasons)
    assert report.num_blocks == 5
    report = apply_drop_path(model, 0.3, schedule=[0.0, 0.1, 0.0, 0.3, 0.0], example_inputs=x)
    assert judge.compare(report.sites, expected, check_rates=True) == (True, True, [])
    # A site outside every holder is extra, and the holder it was meant for misses one.
    sites = [s for s in report.sites if not s.path.startswith("layers.3.")] + [_site("layers.4.conv", rate=0.3)]
    ok, _, reasons = judge.compare(sites, expected, check_rates=False)
    text = " ".join(reasons)
    assert not ok and "engine sites in no holder (1): hook layers.4.conv" in text
    assert "layers.3: expected 1 by count [layers.3.drop_path (None here)], engine 0 []" in text


def test_slots_held_by_a_sub_module_of_a_block_are_matched_within_that_module():
    # Grouping by the stack's elements (stages.0 with 2 branches) would accept the engine putting both
    # of a block's branches into attn; grouping by holder does not.
    x = torch.randn(2, 4, 6, 6)
    model = ToyLowFormer()
    expected = oracles.expected_from_slots(_slots(ToyLowFormer(0.2), x), model)
    assert {p: h.free for p, h in expected.holders.items()} == {
        "stages.0.attn": 1, "stages.0.local": 1, "stages.1.attn": 1, "stages.1.local": 1
    }
    report = apply_drop_path(model, 0.2, schedule=[0.1, 0.2], example_inputs=x)
    assert sorted(s.path for s in report.sites) == [f"stages.{i}.{m}.bn" for i in (0, 1) for m in ("attn", "local")]
    assert judge.compare(report.sites, expected, check_rates=True) == (True, True, [])
    wrong = [_site("stages.0.attn.bn", rate=0.1), _site("stages.0.attn.conv", rate=0.1)] + [
        s for s in report.sites if s.path.startswith("stages.1.")
    ]
    ok, _, reasons = judge.compare(wrong, expected, check_rates=False)
    text = " ".join(reasons)
    assert not ok
    assert "stages.0.attn: expected 1 by count" in text
    assert "engine 2 [hook stages.0.attn.bn, hook stages.0.attn.conv]" in text
    assert "stages.0.local: expected 1 by count" in text and "engine 0 []" in text


def test_the_innermost_holder_claims_a_site_and_the_engine_block_paths_are_not_used():
    # A block that holds a None slot and a sub-module that holds another: the site under the
    # sub-module is its branch, not the block's.
    class Outer(nn.Module):
        def __init__(self, rate):
            super().__init__()
            self.inner = ResBlock(rate)
            self.proj = nn.Conv2d(4, 4, 1)
            self.drop_path = DropPathStandIn(rate) if rate else None

        def forward(self, x):
            x = self.inner(x)
            y = self.proj(torch.relu(x))
            return x + (y if self.drop_path is None else self.drop_path(y))

    x = torch.randn(2, 4, 6, 6)
    expected = oracles.expected_from_slots(_slots(nn.Sequential(Outer(0.1)), x), nn.Sequential(Outer(0.0)))
    assert {p: h.free for p, h in expected.holders.items()} == {"0.inner": 1, "0": 1}
    good = [_site("0.inner.bn", rate=0.1, block_path="0"), _site("0.proj", rate=0.1, block_path="0")]
    assert judge.compare(good, expected, True) == (True, True, [])
    # The engine's own grouping (block_path, block) can be anything: the oracle does not read it.
    scrambled = [_site(s.path, rate=s.rate, block_path="elsewhere", block=7 + i) for i, s in enumerate(good)]
    assert judge.compare(scrambled, expected, True) == (True, True, [])
    ok, _, reasons = judge.compare([_site("0.inner.bn"), _site("0.inner.conv")], expected, False)
    text = " ".join(reasons)
    assert not ok and "0.inner: expected 1 by count" in text and "; 0: expected 1 by count" in text
    # A hook on the holder itself drops the holder's output: a branch of the module around it.
    ok, _, reasons = judge.compare([_site("0.inner"), _site("0.proj")], expected, False)
    assert not ok and "0.inner: expected 1 by count [0.inner.drop_path (None here)], engine 0 []" in " ".join(reasons)


def test_replace_sites_must_carry_the_slot():
    x = torch.randn(2, 5, 4)
    model = ToyViT()
    report = apply_drop_path(model, 0.1, example_inputs=x)
    expected = oracles.expected_from_slots(_slots(ToyViT(0.1), x), model)
    assert [(s.path, s.calls) for s in expected.slots if s.path.startswith("blocks.1.")] == [
        ("blocks.1.drop_path1", [0]), ("blocks.1.drop_path2", [0])
    ]
    assert {h.free for h in expected.holders.values()} == {0}
    assert judge.compare(report.sites, expected, check_rates=True) == (True, True, [])

    sites = list(report.sites)
    # The same number of branches, but one at another module (a hook on g: the other branch's tensor).
    moved = [_site("blocks.0.g")] + sites[1:]
    ok, _, reasons = judge.compare(moved, expected, check_rates=False)
    text = " ".join(reasons)
    assert not ok and "slots no engine site carries (1): blocks.0.drop_path1" in text
    assert "blocks.0: expected 0 by count [none], engine 1 [hook blocks.0.g]" in text
    # With the tensors of one forward, a site on the module whose output flows through the slot
    # carries the same branch (f's output is what drop_path1, an Identity, returns), g's does not.
    paths = ["blocks.0.drop_path1", "blocks.0.drop_path2", "blocks.0.f", "blocks.0.g"]
    flow = oracles.observe_outputs(model, (x,), {}, paths)
    ok, _, reasons = judge.compare([_site("blocks.0.f")] + sites[1:], expected, False, flow)
    assert ok and "hook blocks.0.f for blocks.0.drop_path1" in " ".join(reasons)
    assert not judge.compare(moved, expected, False, flow)[0]
    # Branches missing, and a branch outside every holder.
    ok, _, reasons = judge.compare(sites[2:] + [_site("head.x", kind="replace")], expected, check_rates=False)
    text = " ".join(reasons)
    assert not ok
    assert "slots no engine site carries (2): blocks.0.drop_path1, blocks.0.drop_path2" in text
    assert "engine sites in no holder (1): replace head.x" in text
    # A wrong rate.
    wrong = sites[:-1] + [Site(**{**sites[-1].__dict__, "rate": 0.2})]
    ok, rate_ok, reasons = judge.compare(wrong, expected, check_rates=True)
    assert ok and rate_ok is False and "blocks.2.drop_path2: native 0.1, engine 0.2" in " ".join(reasons)


def test_architecture_branches_the_library_does_not_drop_are_matched_by_count_at_the_slot_rate():
    class SwinLike(nn.Module):  # HF Swin: drop path on the attention branch only, none on the MLP branch
        def __init__(self, rate):
            super().__init__()
            self.attn = nn.Sequential(nn.Linear(4, 4), nn.ReLU())
            self.mlp = nn.Sequential(nn.Linear(4, 4), nn.ReLU())
            self.drop_path = DropPathStandIn(rate) if rate else nn.Identity()

        def forward(self, x):
            x = x + self.drop_path(self.attn(x))
            return x + self.mlp(x)

    x = torch.randn(2, 3, 4)
    model = nn.Sequential(SwinLike(0.0), SwinLike(0.0))
    expected = oracles.expected_from_slots(_slots(nn.Sequential(SwinLike(0.05), SwinLike(0.1)), x), model)
    assert oracles.add_architecture_blocks(expected, model, "SwinLike", 2) == 2
    assert {p: (h.free, h.rates) for p, h in expected.holders.items()} == {"0": (1, [0.05]), "1": (1, [0.1])}
    report = apply_drop_path(model, 0.1, schedule=[0.05, 0.1], example_inputs=x)
    assert len(report.sites) == 4
    assert judge.compare(report.sites, expected, check_rates=True) == (True, True, [])
    report = apply_drop_path(model, 0.1, schedule=[0.1, 0.1], example_inputs=x)
    _, rate_ok, reasons = judge.compare(report.sites, expected, check_rates=True)
    assert rate_ok is False and "0.drop_path: native 0.05, engine 0.1" in " ".join(reasons)
    assert "; 0: native 0.05, engine 0.1" in " ".join(reasons)  # the MLP branch takes its holder's slot rate
    plain = oracles.Expected()  # no native drop path (HF ViT): counts only, no rate oracle
    oracles.add_architecture_blocks(plain, model, "SwinLike", 3)
    ok, rate_ok, reasons = judge.compare(report.sites, plain, check_rates=True)
    assert not ok and rate_ok is None and "0: expected 3 by count" in " ".join(reasons)


def test_schedules_are_found_by_value(monkeypatch):
    assert catalog.schedule_for("linear") == "linear"
    assert catalog.schedule_for("uniform") == "uniform"
    per_n = [name for name in SCHEDULES if catalog.schedule_for("per_n") == name]
    monkeypatch.setitem(SCHEDULES, "zz_test_last_below_rate", lambda r, n: [r * i / n for i in range(n)])
    assert catalog.schedule_for("per_n") == (per_n[0] if per_n else "zz_test_last_below_rate")
    monkeypatch.setitem(SCHEDULES, "zz_test_broken", lambda r: [r])  # another signature: ignored
    assert catalog.schedule_for("linear") == "linear"


def test_outputs_equal_is_bitwise():
    a = {"x": torch.tensor([1.0, float("nan")]), "y": (torch.ones(2),)}
    assert judge.outputs_equal(a, {"x": torch.tensor([1.0, float("nan")]), "y": (torch.ones(2),)})
    assert not judge.outputs_equal(a, {"x": torch.tensor([1.0 + 1e-7, float("nan")]), "y": (torch.ones(2),)})
    assert not judge.outputs_equal(a, {"x": torch.tensor([1.0, 0.0]), "y": (torch.ones(2),)})


def test_the_oracle_imports_only_public_names_of_droppath_surgery():
    import ast

    import droppath_surgery

    imported = set()
    for path in sorted((ROOT / "scripts" / "droppath_coverage").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                assert not any(a.name.startswith("droppath_surgery") for a in node.names), path
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("droppath_surgery"):
                assert node.module == "droppath_surgery", (path, node.module)
                imported |= {a.name for a in node.names}
    assert imported and imported <= set(droppath_surgery.__all__)


# -- the CI subset -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def subset_rows():
    torch.manual_seed(0)
    return runner.run_rows(subset=True, timeout=300)


def test_subset_has_a_transformer_a_hierarchical_and_a_convolutional_family_per_library(subset_rows):
    got = {(r.library, r.family) for r in subset_rows}
    assert got == {(lib, fam) for lib, fams in catalog.SUBSET.items() for fam in fams}


@pytest.mark.parametrize(
    "library, family", [(lib, f) for lib, fams in catalog.EXPECTED_AT_PARITY.items() for f in fams]
)
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


@pytest.mark.parametrize("family", catalog.EXPECTED_AT_PARITY_WITH_TIMM_SCHEDULE)
def test_conventions_no_named_schedule_expresses_are_at_parity_with_the_timm_schedule(subset_rows, family):
    row = next(r for r in subset_rows if (r.library, r.family) == ("timm", family))
    assert (row.site, row.rate, row.timm_rate, row.eval_ok) == ("yes", "no", "yes", "yes"), row.reason
    assert row.at_parity_timm and not row.at_parity


def test_skip_dropped_applies_and_trains_on_every_subset_model(subset_rows):
    patched = [r for r in subset_rows if r.branches]
    assert patched
    assert [f"{r.library}:{r.family}: {r.skip} {r.skip_note}" for r in patched if not r.skip.endswith("train ok")] == []
    skips = {(r.library, r.family): tuple(int(v) for v in r.skip.split(",")[0].split("/")) for r in patched}
    for key in [("timm", "vision_transformer"), ("timm", "swin_transformer"), ("hf", "ViT"), ("torchvision", "swin_t")]:
        k, n = skips[key]
        assert k == n > 0, key  # transformer blocks: every branch skips
    resnet = next(r for r in subset_rows if (r.library, r.family) == ("timm", "resnet"))
    assert resnet.skip.startswith("0/") and "batch statistics" in resnet.skip_note  # BatchNorm branches mask


def test_rows_not_at_parity_say_why_and_the_markdown_lists_them(subset_rows):
    failing = [r for r in subset_rows if r.counted and not r.at_parity]
    assert all(r.reason for r in failing)
    text = render.to_markdown(subset_rows, 1.0, subset=True)
    for line in render.summary_lines(subset_rows):
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

    with torch.device("meta"):
        tresnet = timm.create_model("tresnet_m", pretrained=False)
        gray = timm.create_model("resnet18", pretrained=False, in_chans=1)
    assert next(m for m in tresnet.modules() if isinstance(m, nn.Conv2d)).in_channels == 48
    assert build_example_inputs(tresnet)[0][0].shape == (2, 3, 224, 224)
    assert build_example_inputs(gray)[0][0].shape == (2, 1, 224, 224)


def test_why_is_shown_next_to_the_measured_reason_and_stale_entries_are_listed(monkeypatch):
    rows = [
        judge.Row(
            "timm", "fam_a", model="a", branches=2, blocks=1, native=2, site="no", rate="yes", eval_ok="yes",
            reason="engine: 2 branches",
        ),
        judge.Row("timm", "fam_b", model="b", branches=2, blocks=1, native=2, site="yes", rate="yes", eval_ok="yes"),
    ]
    monkeypatch.setitem(catalog.WHY_NOT_AT_PARITY, "timm:fam_a", "timm does A")
    monkeypatch.setitem(catalog.WHY_NOT_AT_PARITY, "timm:fam_b", "timm does B")
    text = render.to_markdown(rows, 1.0, False)
    failing = text.split("## Not at parity, with the reason")[1].split("##")[0]
    assert "**timm:fam_a** (`a`): engine: 2 branches" in failing and "*Why:* timm does A" in failing
    assert "fam_b" not in failing  # an explanation never makes or hides a failure
    assert "timm:fam_b: at parity now; its entry in `WHY_NOT_AT_PARITY` is stale" in text


def test_every_explanation_names_a_known_family():
    families = {f"timm:{f}" for f in catalog.TIMM_MODELS} | {f"torchvision:{c.name}" for c in catalog.TV_MODELS}
    assert set(catalog.WHY_NOT_AT_PARITY) <= families


def test_the_entry_point_runs_the_package(tmp_path, monkeypatch, capsys):
    import runpy

    out = tmp_path / "rows.json"
    monkeypatch.setattr(sys, "path", list(sys.path))  # the script puts scripts/ first; undone after the test
    argv = ["--only", "timm:no_such_family", "--out", "-", "--json", str(out)]
    monkeypatch.setattr(sys, "argv", ["coverage.py", *argv, "--threads", str(torch.get_num_threads())])
    with pytest.raises(SystemExit) as exit_:
        runpy.run_path(str(ROOT / "scripts" / "coverage.py"), run_name="__main__")
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith("# Coverage") and "## Conventions used for rate parity" in text
    assert out.read_text().strip() == "[]"
