"""timm models: placement and rates against timm's own ``drop_path_rate`` (the oracle), eval proof, undo."""

import pytest
import timm
import torch
from helpers import ModelSnapshot, bitwise_equal, eval_output
from timm.layers import DropPath as TimmDropPath
from torch import nn

from droppath_surgery import DropPath, apply_drop_path, find_residual_branches, remove_drop_path, set_drop_path_rate
from droppath_surgery import build_example_inputs as build

# Small variants of each family keep CI fast; the same kwargs build the oracle model.
MODELS = {
    "vit_tiny_patch16_224": dict(img_size=64, depth=4),
    "deit_tiny_patch16_224": dict(img_size=64, depth=4),
    "beit_base_patch16_224": dict(img_size=64, depth=4, embed_dim=64, num_heads=2),
    "eva02_tiny_patch14_224": dict(img_size=56, depth=4),
    "swin_tiny_patch4_window7_224": dict(img_size=112, embed_dim=24, num_heads=(1, 2, 3, 4)),
    "convnext_atto": dict(),
}
EXPECTED_BRANCHES = {
    "vit_tiny_patch16_224": 8,
    "deit_tiny_patch16_224": 8,
    "beit_base_patch16_224": 8,
    "eva02_tiny_patch14_224": 8,
    "swin_tiny_patch4_window7_224": 24,  # 2 + 2 + 6 + 2 blocks, 2 branches each
    "convnext_atto": 12,  # 2 + 2 + 6 + 2 blocks, 1 branch each
}


def timm_slots(model: nn.Module) -> dict[str, float]:
    """Where timm itself puts drop path, with its rate: DropPath modules, and Identity at rate 0."""
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, TimmDropPath):
            out[name] = m.drop_prob
        elif isinstance(m, nn.Identity) and name.rsplit(".", 1)[-1].startswith("drop_path"):
            out[name] = 0.0
    return out


def our_rates(model: nn.Module) -> dict[str, float]:
    return {name: m.rate for name, m in model.named_modules() if isinstance(m, DropPath)}


def assert_rates_equal(ours: dict[str, float], theirs: dict[str, float]) -> None:
    """Same slots, and rates equal to float32 rounding (timm's linspace is float32, ours float64)."""
    assert sorted(ours) == sorted(theirs)
    assert all(abs(ours[k] - theirs[k]) <= 1e-7 * max(1.0, abs(theirs[k])) for k in theirs), (ours, theirs)


@pytest.mark.parametrize("name", list(MODELS))
def test_placement_and_rates_equal_timms_own_drop_path_rate(name):
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, **MODELS[name])
    oracle = timm.create_model(name, pretrained=False, drop_path_rate=0.1, **MODELS[name])
    x = build(model)[0][0]
    before = eval_output(model, x)
    report = apply_drop_path(model, 0.1)
    assert len(report.sites) == EXPECTED_BRANCHES[name]
    assert all(s.kind == "replace" for s in report.sites)
    # Same slots and the per-module rates of timm.create_model(name, drop_path_rate=0.1) (timm computes
    # them with a float32 linspace, ours are exact in float64: equal to float32 rounding).
    assert_rates_equal(our_rates(model), timm_slots(oracle))
    assert bitwise_equal(before, eval_output(model, x))


@pytest.mark.parametrize("name", ["vit_tiny_patch16_224", "swin_tiny_patch4_window7_224", "convnext_atto"])
def test_model_built_with_a_rate_is_rescheduled_and_undo_restores_timms_modules(name):
    model = timm.create_model(name, pretrained=False, drop_path_rate=0.2, **MODELS[name])
    oracle = timm.create_model(name, pretrained=False, drop_path_rate=0.3, **MODELS[name])
    snap = ModelSnapshot(model)
    apply_drop_path(model, 0.3)
    assert_rates_equal(our_rates(model), timm_slots(oracle))
    remove_drop_path(model)
    snap.assert_same()  # the very same timm DropPath objects are back


def test_example_inputs_follow_the_size_the_model_was_built_for():
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=96, depth=2)
    assert model.pretrained_cfg["input_size"] == (3, 224, 224)
    (x,), _ = build(model)
    assert x.shape == (2, 3, 96, 96)
    assert len(find_residual_branches(model).sites) == 4


def test_uniform_schedule_and_batch_dim_on_timm_vit():
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=64, depth=4)
    report = apply_drop_path(model, 0.2, schedule="uniform")
    assert {s.rate for s in report.sites} == {0.2}
    assert {s.batch_dim for s in report.sites} == {0}
    assert [s.path for s in report.sites[:2]] == ["blocks.0.drop_path1", "blocks.0.drop_path2"]


def test_training_step_runs_and_drops(tmp_path):
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=2, num_classes=3)
    apply_drop_path(model, 0.5, schedule="uniform")
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(16, 3, 32, 32), torch.randint(0, 3, (16,))
    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    opt.step()
    assert torch.isfinite(loss)
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_dropout_attention_dropout_and_position_dropout_are_not_sites():
    kwargs = dict(img_size=64, depth=4, drop_rate=0.1, pos_drop_rate=0.1, attn_drop_rate=0.1, proj_drop_rate=0.1)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, **kwargs)
    oracle = timm.create_model("vit_tiny_patch16_224", pretrained=False, drop_path_rate=0.1, **kwargs)
    apply_drop_path(model, 0.1)
    assert_rates_equal(our_rates(model), timm_slots(oracle))
    assert type(model.pos_drop) is nn.Dropout and type(model.blocks[0].attn.attn_drop) is nn.Dropout


def test_model_on_the_meta_device_is_patched_and_checked_by_shape():
    with torch.device("meta"):
        model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=64, depth=4)
    oracle = timm.create_model("vit_tiny_patch16_224", pretrained=False, drop_path_rate=0.1, img_size=64, depth=4)
    report = apply_drop_path(model, 0.1)
    assert_rates_equal(our_rates(model), timm_slots(oracle))
    assert report.verified is False and "meta device" in str(report)


@pytest.mark.parametrize("skip", [False, True], ids=["masked", "skip"])
def test_drop_paths_are_placed_on_the_device_the_branches_run_on(skip):
    """Each DropPath's state lives on its model's device: a rate buffer left on the CPU is copied to
    the GPU at every call, a host synchronization (the first GPU check found it on every CUDA model).
    The meta device stands in for the accelerator here."""
    with torch.device("meta"):
        model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=64, depth=2)
    apply_drop_path(model, 0.1, skip_dropped=skip)
    drops = [m for m in model.modules() if isinstance(m, DropPath)]
    assert len(drops) == 4
    assert {t.device.type for d in drops for t in [*d.buffers(), *d.parameters()]} == {"meta"}
    set_drop_path_rate(model, 0.3)  # rates written in place stay there
    assert {d.keep_prob.device.type for d in drops} == {"meta"}
    out = model.train()(torch.empty(2, 3, 64, 64, device="meta"))
    assert out.device.type == "meta" and out.shape == (2, model.num_classes)


def timm_rates_by_block(oracle: nn.Module, x: torch.Tensor) -> dict[str, float]:
    """Rate of each block where timm applies a DropPath in forward (its parent module is the block).
    Slots that forward never calls (EfficientNet blocks without a skip) are not branches."""
    called = set()
    handles = [
        m.register_forward_hook(lambda mod, a, o, name=name: called.add(name))
        for name, m in oracle.named_modules()
        if isinstance(m, TimmDropPath)
    ]
    eval_output(oracle, x)
    for h in handles:
        h.remove()
    return {name.rsplit(".", 1)[0]: m.drop_prob for name, m in oracle.named_modules() if name in called}


@pytest.mark.parametrize(
    "name, kwargs, schedule, per_block",
    [
        ("resnet18", {}, "linear", 1),  # None slots, in-place x += shortcut, projection shortcuts
        ("resnet26d", {}, "linear", 1),  # avg-pool + conv projection shortcuts (ResNet-D)
        ("regnetx_002", {}, "linear", 1),  # blocks s1.b1 as attributes, no containers; depth-1 stages
        ("efficientnet_b0", {}, "efficientnet", 1),  # r*i/n over all blocks, strided ones included
        ("mobilenetv3_small_050", {}, "efficientnet", 1),
    ],
)
def test_convolutional_families_match_timm_per_block(name, kwargs, schedule, per_block):
    model = timm.create_model(name, pretrained=False, **kwargs)
    oracle = timm.create_model(name, pretrained=False, drop_path_rate=0.2, **kwargs)
    x = build(model)[0][0]
    before = eval_output(model, x)
    report = apply_drop_path(model, 0.2, schedule=schedule)
    theirs = timm_rates_by_block(oracle, x)
    ours = {}
    for s in report.sites:
        ours.setdefault(s.block_path, []).append(s.rate)
    assert all(len(v) == per_block for v in ours.values())
    # every block where timm drops has a branch with the same rate; our other blocks have rate 0
    assert {k: ours[k][0] for k in theirs} == pytest.approx(theirs, abs=1e-6)
    assert all(v == [0.0] for k, v in ours.items() if k not in theirs)
    assert bitwise_equal(before, eval_output(model, x))


def test_resnet_branch_ends_where_timm_puts_drop_path():
    model = timm.create_model("resnet18", pretrained=False)
    report = find_residual_branches(model)
    assert len(report.sites) == 8  # 2 + 2 + 2 + 2 BasicBlocks, three with a projection shortcut
    assert [s.path for s in report.sites[:3]] == ["layer1.0.bn2", "layer1.1.bn2", "layer2.0.bn2"]


def test_poolformer_linear_mixer_with_a_drop_path_slot_is_a_branch():
    # EfficientFormer's token mixer is pool(x) - x: linear, yet timm drops it (it ends in drop_path1).
    model = timm.create_model("efficientformer_l1", pretrained=False)
    oracle = timm.create_model("efficientformer_l1", pretrained=False, drop_path_rate=0.1)
    apply_drop_path(model, 0.1)
    assert_rates_equal(our_rates(model), timm_slots(oracle))


@pytest.mark.parametrize(
    "name, kwargs",
    [
        ("tnt_s_legacy_patch16_224", dict(depth=2)),  # patch[:, 1:] + proj(pixel): no branch back to the stream
        ("rexnet_100", {}),  # x[:, :c] + shortcut: the slice of the block's output is its branch
        ("nextvit_small", dict(depths=(1, 1, 5, 1))),  # x + mhsa(x).transpose(-1, -2).reshape(B, C, H, W)
    ],
)
def test_branches_through_layout_operations_match_timms_slots(name, kwargs):
    model = timm.create_model(name, pretrained=False, **kwargs)
    oracle = timm.create_model(name, pretrained=False, drop_path_rate=0.1, **kwargs)
    x = build(model)[0][0]
    before = eval_output(model, x)
    report = apply_drop_path(model, 0.1)
    assert bitwise_equal(before, eval_output(model, x))
    if name == "rexnet_100":  # no slot in a build without drop path: hooks, compared per block
        theirs = timm_rates_by_block(oracle, x)
        assert {s.block_path: s.rate for s in report.sites} == pytest.approx(theirs, abs=1e-6)
    elif name.startswith("tnt"):
        # timm's one slot per block drops 4 branches: 2 on the patch stream (B, 197, D) and 2 on the pixel stream
        # (B x 196 patches, 16, d), which timm drops per patch. We drop per image: the pixel branches carry one
        # decision for the 196 rows of an image (a check pass shows they are consecutive), so they need hooks of
        # their own, and the slot is not used.
        assert {s.block_path for s in report.sites} == {b.removesuffix(".drop_path") for b in timm_slots(oracle)}
        assert [(s.path.split(".")[-1], s.rows_per_sample) for s in report.sites[:4]] == [
            ("attn_in", 196), ("mlp_in", 196), ("attn_out", 1), ("mlp", 1)
        ]
    else:  # the same slots (NextViT scales its mhsa/mhca rates by 0.75/0.25 within a block: not compared)
        assert set(our_rates(model)) == set(timm_slots(oracle))
