"""Hugging Face models built from small configs: sites, native-rate parity, Swin windows, eval proof, undo."""

import pytest
import torch
import transformers as T
from helpers import ModelSnapshot, bitwise_equal, eval_output, hook_count, idle_sites
from torch import nn

from droppath_surgery import DropPath, apply_drop_path, find_residual_branches, remove_drop_path
from droppath_surgery import build_example_inputs as build

LAYERS = 3
VIT_LIKE = dict(
    hidden_size=32, num_hidden_layers=LAYERS, num_attention_heads=2, intermediate_size=64, image_size=32, patch_size=8
)
SWIN = dict(image_size=32, patch_size=2, embed_dim=16, depths=[2, 2], num_heads=[2, 2], window_size=4)


def factories():
    return {
        "vit": lambda **kw: T.ViTModel(T.ViTConfig(**VIT_LIKE, **kw)),
        "vit_cls": lambda **kw: T.ViTForImageClassification(T.ViTConfig(**VIT_LIKE, num_labels=4, **kw)),
        "deit": lambda **kw: T.DeiTModel(T.DeiTConfig(**VIT_LIKE, **kw)),
        "beit": lambda **kw: T.BeitModel(T.BeitConfig(**VIT_LIKE, use_relative_position_bias=True, **kw)),
        "dinov2": lambda **kw: T.Dinov2Model(T.Dinov2Config(**VIT_LIKE, **kw)),
        "clip_vision": lambda **kw: T.CLIPVisionModel(T.CLIPVisionConfig(**VIT_LIKE, **kw)),
        "siglip_vision": lambda **kw: T.SiglipVisionModel(T.SiglipVisionConfig(**VIT_LIKE, **kw)),
        "swin": lambda **kw: T.SwinModel(T.SwinConfig(**SWIN, **kw)),
        "convnext": lambda **kw: T.ConvNextModel(
            T.ConvNextConfig(hidden_sizes=[8, 16], depths=[2, 2], num_stages=2, image_size=32, **kw)
        ),
    }


FACTORIES = factories()
EXPECTED = {  # (branches, blocks)
    "vit": (6, 3),
    "vit_cls": (6, 3),
    "deit": (6, 3),
    "beit": (6, 3),
    "dinov2": (6, 3),
    "clip_vision": (6, 3),
    "siglip_vision": (6, 3),
    "swin": (8, 4),
    "convnext": (4, 4),
}


@pytest.mark.parametrize("name", list(FACTORIES))
def test_sites_eval_proof_and_exact_undo(name):
    torch.manual_seed(0)
    model = FACTORIES[name]()
    args, kwargs = build(model)
    before = eval_output(model, *args, **kwargs)
    snap = ModelSnapshot(model)
    report = apply_drop_path(model, 0.1)
    branches, blocks = EXPECTED[name]
    assert (len(report.sites), report.num_blocks) == (branches, blocks)
    per_block = [sum(s.block == b for s in report.sites) for b in range(blocks)]
    assert per_block == [branches // blocks] * blocks
    assert {s.batch_dim for s in report.sites} == {0}
    assert bitwise_equal(before, eval_output(model, *args, **kwargs))
    assert idle_sites(model, *args, **kwargs) == []  # each site, dropped, changes the output
    remove_drop_path(model)
    snap.assert_same()
    assert bitwise_equal(before, eval_output(model, *args, **kwargs))


def test_vit_one_dropout_for_both_branches_becomes_one_droppath_per_block():
    model = FACTORIES["vit"]()
    report = apply_drop_path(model, 0.2)
    assert [s.path for s in report.sites[:2]] == ["layers.0.dropout", "layers.0.dropout"]
    assert all(isinstance(layer.dropout, DropPath) for layer in model.layers)
    # Each call of the shared module draws its own mask: both branches are dropped independently.
    calls = []
    model.layers[1].dropout.register_forward_hook(lambda m, a, o: calls.append(o))
    model.train()
    model(torch.randn(4, 3, 32, 32))
    assert len(calls) == 2


def test_vit_with_hidden_dropout_keeps_its_dropout():
    model = FACTORIES["vit"](hidden_dropout_prob=0.1)
    report = apply_drop_path(model, 0.2)
    assert all(s.kind == "hook" for s in report.sites)
    assert all(type(layer.dropout) is nn.Dropout for layer in model.layers)


@pytest.mark.parametrize("name", ["clip_vision", "siglip_vision"])
def test_branches_without_a_module_at_the_end_are_hooked(name):
    model = FACTORIES[name]()
    report = apply_drop_path(model, 0.1)
    assert [(s.path, s.output_index) for s in report.sites[:2]] == [
        ("encoder.layers.0.self_attn", (0,)),
        ("encoder.layers.0.mlp", ()),
    ]


def test_siglip_pooling_head_is_not_a_site():
    model = FACTORIES["siglip_vision"]()
    report = find_residual_branches(model)
    assert not any("head" in s.path for s in report.sites)


def test_swin_attention_windows_are_never_dropped():
    model = FACTORIES["swin"]()
    report = apply_drop_path(model, 0.5, schedule="uniform")
    assert [s.path for s in report.sites[:2]] == [
        "encoder.layers.0.blocks.0.drop_path",
        "encoder.layers.0.blocks.0.mlp",
    ]
    # The shared dropout (applied to windows inside the attention branch) is untouched.
    for stage in model.encoder.layers:
        for block in stage.blocks:
            assert type(block.dropout) is nn.Dropout and not block.dropout._forward_hooks
    seen = []
    for m in model.modules():
        if isinstance(m, DropPath):
            m.register_forward_hook(lambda mod, a, o: seen.append(a[0].shape[0]))
    batch = 3
    model.train()
    model(torch.randn(batch, 3, 32, 32))
    assert len(seen) == 8 and set(seen) == {batch}  # whole samples, never batch x windows


def _native_slots(model) -> dict[str, float]:
    """Where HF itself puts drop path when built with drop_path_rate: its DropPath modules, and
    the Identity it builds in the same slot where the rate is 0."""
    return {
        name: getattr(m, "drop_prob", 0.0)
        for name, m in model.named_modules()
        if name.endswith("drop_path") and (isinstance(m, nn.Identity) or type(m).__name__.endswith("DropPath"))
    }


@pytest.mark.parametrize(
    "name, schedule",
    [("beit", "linear"), ("dinov2", "uniform"), ("swin", "linear"), ("convnext", "linear")],
)
def test_rates_match_hugging_faces_own_drop_path_rate(name, schedule):
    native = _native_slots(FACTORIES[name](drop_path_rate=0.1))
    assert any(rate > 0 for rate in native.values())
    model = FACTORIES[name]()
    apply_drop_path(model, 0.1, schedule=schedule)
    ours = {n: m.rate for n, m in model.named_modules() if isinstance(m, DropPath)}
    assert set(native) <= set(ours)
    assert {k: ours[k] for k in native} == pytest.approx(native, abs=1e-6)
    if name == "swin":  # HF Swin drops only the attention branch; we also cover the MLP branch
        assert len(ours) == 2 * len(native)


def test_text_model_gets_input_ids():
    model = T.BertModel(T.BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64))
    (_, kwargs) = build(model)
    assert kwargs["input_ids"].dtype == torch.long
    report = apply_drop_path(model, 0.1)
    assert len(report.sites) == 4 and report.num_blocks == 2


def test_a_multiple_choice_head_gets_its_candidate_texts_and_the_encoder_blocks():
    config = T.BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    model = T.BertForMultipleChoice(config)
    (_, kwargs) = build(model)
    assert kwargs["input_ids"].shape == (2, 2, 12)  # (B, choices, L); flat (B, L) ids fail its forward
    assert kwargs["attention_mask"].shape == kwargs["token_type_ids"].shape == (2, 2, 12)
    report = apply_drop_path(model, 0.1)
    assert report.verified is True
    assert len(report.sites) == 4 and report.num_blocks == 2


def test_no_hooks_left_by_probing_hf_model():
    model = FACTORIES["clip_vision"]()
    hooks = hook_count(model)
    find_residual_branches(model)
    assert hook_count(model) == hooks


def test_embedding_and_attention_dropout_are_not_sites():
    model = FACTORIES["vit"](hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1)
    report = apply_drop_path(model, 0.1)
    assert {s.path for s in report.sites} == {f"layers.{i}.dropout" for i in range(LAYERS)}
    assert type(model.embeddings.dropout) is nn.Dropout and not model.embeddings.dropout._forward_hooks
