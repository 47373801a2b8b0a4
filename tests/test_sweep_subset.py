"""The sweep (scripts/droppath_coverage/sweep.py): its config shrinking and failure grouping, and the CI
subset: the hardest model per cause that the sweep found and that now passes, run exactly as the sweep
runs it (``apply_drop_path(model, 0.1)`` and nothing else), at parity with the library's own drop path
slots where it has them and with its eval output verified bitwise unchanged."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

from droppath_coverage import sweep, sweep_render
from training_fixtures import single_thread  # noqa: F401  (autouse: one torch thread, as the sweep)


def test_shrink_overrides_shrink_layers_widths_and_sub_configs_and_keep_one_layer_of_each_kind():
    transformers = pytest.importorskip("transformers")
    llama = sweep.shrink_overrides(transformers.LlamaConfig(), sweep._TINY)
    assert llama["num_hidden_layers"] == 2 and llama["hidden_size"] == 64 and llama["num_key_value_heads"] <= 4
    assert transformers.LlamaConfig(**llama).num_hidden_layers == 2
    types = ["sliding_attention"] * 5 + ["full_attention"]
    gemma = sweep.shrink_overrides(transformers.Gemma3TextConfig(num_hidden_layers=6, layer_types=types), sweep._TINY)
    assert gemma["layer_types"] == ["sliding_attention", "full_attention"] and gemma["num_hidden_layers"] == 2
    clip = sweep.shrink_overrides(transformers.CLIPConfig(), sweep._TINY)
    assert clip["text_config"]["num_hidden_layers"] == clip["vision_config"]["num_hidden_layers"] == 2
    assert sweep.shrink_overrides(transformers.SwinConfig(), sweep._TINY)["num_heads"] == [1, 1, 1, 1]


def test_failures_are_grouped_by_cause_with_numbers_and_names_blanked():
    row = {"stage": "forward", "error": "RuntimeError: shape '[2, 27, 13, 128]' is invalid for input of size 93312"}
    assert sweep_render.cause_of(row).startswith("shape error on the sweep's shrunk config")
    other = {"stage": "apply", "error": "ValueError: something new in layers.3 (12 of 40)"}
    assert sweep_render.cause_of(other) == "apply: ValueError: something new in layers.# (…)"
    backbone = {"stage": "build", "error": 'RuntimeError: no config level builds: tiny: TypeError: can only '
                'concatenate list (not "tuple") to list | default: TypeError: can only concatenate list'}
    assert sweep_render.cause_of(backbone).startswith("transformers bug: the class does not build")


def test_coverage_md_gets_the_sweep_section_of_the_committed_results_and_nothing_else(tmp_path):
    committed = (ROOT / "docs" / "coverage.md").read_text()
    start = committed.index(sweep_render.COVERAGE_HEADING)
    stale = tmp_path / "coverage.md"  # the same file with an out-of-date sweep section
    stale.write_text(committed[:start] + sweep_render.COVERAGE_HEADING + "\n\nold numbers\n\n## Conventions used for"
                     + committed.split("## Conventions used for", 1)[1])
    assert sweep_render.refresh_coverage(stale, ROOT / "docs" / "sweep")
    assert stale.read_text() == committed  # what coverage.py wrote, byte for byte; the table above untouched
    plain = tmp_path / "plain.md"
    plain.write_text("# Coverage\n\nno sweep here\n")
    assert not sweep_render.refresh_coverage(plain, ROOT / "docs" / "sweep")
    assert plain.read_text() == "# Coverage\n\nno sweep here\n"


def test_results_are_saved_sorted_and_loaded_for_resuming(tmp_path):
    path = tmp_path / "timm.json"
    sweep.save(path, {"b": {"name": "b"}, "a": {"name": "a"}})
    assert list(sweep.load(path)) == ["a", "b"]


@pytest.mark.parametrize(("library", "name"), [(lib, n) for lib, names in sweep.CI_SUBSET.items() for n in names])
def test_the_hardest_model_of_each_cause_patches_at_parity(library, name):
    pytest.importorskip("timm" if library == "timm" else "transformers")
    res = sweep.sweep_timm(name) if library == "timm" else sweep.sweep_hf(name, library)
    assert res.status == "ok", f"{res.stage}: {res.error}"
    assert res.verified is True
    assert res.sites, "no residual branch found"
    if res.native:  # the library has drop path slots on residual branches here: every one is carried
        assert res.site_parity, res.parity_reason
    if library == "hf" and res.layers and name in sweep.CI_DECODERS:
        assert res.sites == 2 * res.layers  # attention and MLP branch of every decoder layer
    if name in sweep.CI_SITES:  # the exact count where a lost (or a wrong) branch would not change the status
        assert res.sites == sweep.CI_SITES[name], res.skipped


def test_the_consistent_level_shrinks_dependent_fields_together():
    transformers = pytest.importorskip("transformers")
    # Jamba: attention every 8th layer from the 4th; 2 plain layers would have none (its forward fails with a cache)
    jamba = sweep.shrink_overrides(transformers.JambaConfig(), sweep._TINY, consistent=True)
    config = transformers.JambaConfig(**jamba)
    assert "attention" in config.layers_block_type and config.num_hidden_layers == 2
    # Bailing hybrid: one layer of each kind of both per-layer lists; latent attention's q/k head = nope + rope
    bailing = sweep.shrink_overrides(transformers.BailingHybridConfig(), sweep._TINY, consistent=True)
    assert set(bailing["layer_types"]) == {"linear_attention", "full_attention"}
    assert set(bailing["mlp_layer_types"]) == {"dense", "sparse"}
    assert len(bailing["layer_types"]) == len(bailing["mlp_layer_types"]) == bailing["num_hidden_layers"]
    assert bailing["qk_head_dim"] == bailing["qk_nope_head_dim"] + bailing["qk_rope_head_dim"]
    # DeepSeek-V3: the rotary head dim follows qk_rope_head_dim; GLM-4V-MoE: mrope sections sum to half its rotary dims
    v3 = sweep.shrink_overrides(transformers.DeepseekV3Config(), sweep._TINY, consistent=True)
    assert v3["head_dim"] == v3["qk_rope_head_dim"]
    glm = sweep.shrink_overrides(transformers.Glm4vMoeTextConfig(), sweep._TINY, consistent=True)
    assert sum(glm["rope_parameters"]["mrope_section"]) == 16 // 2 // 2  # head 16, partial rotary 0.5
    # Qwen3-VL: the vision tower's out_hidden_size is the text width, though the default's 3584 names no width
    qwen3 = sweep.shrink_overrides(transformers.Qwen3VLConfig(), sweep._TINY, consistent=True)
    assert qwen3["vision_config"]["out_hidden_size"] == qwen3["text_config"]["hidden_size"] == 64
    # LLaVA's default image token 32000 is past its default 32000-token vocabulary: every level covers it
    for consistent in (False, True):
        llava = sweep.shrink_overrides(transformers.LlavaConfig(), sweep._TINY, consistent=consistent)
        assert llava["text_config"]["vocab_size"] == 32001
    assert "vocab_size" not in sweep.shrink_overrides(transformers.LlamaConfig(), sweep._TINY, consistent=True)
    # Blip-2 leaves its image token unset: the consistent level gives it one past the text vocabulary, and room
    blip2 = sweep.shrink_overrides(transformers.Blip2Config(), sweep._TINY, consistent=True)
    assert blip2["image_token_index"] == blip2["text_config"]["vocab_size"] - 1 == transformers.OPTConfig().vocab_size
    # Idefics3: 224 px of 32 px patches is 7 a side, which its pixel shuffle by 2 cannot fold: 8 a side
    idefics3 = sweep.shrink_overrides(transformers.Idefics3Config(), sweep._TINY, consistent=True)["vision_config"]
    assert (idefics3["image_size"], idefics3["patch_size"]) == (256, 32)
    # HunYuan leaves head_dim unset and reads it: the consistent level sets it; the model builds and runs
    import torch

    hunyuan = transformers.HunYuanDenseV1Config(**sweep.shrink_overrides(
        transformers.HunYuanDenseV1Config(), sweep._TINY, consistent=True) | {"vocab_size": 128})
    assert hunyuan.head_dim == 16
    model = transformers.HunYuanDenseV1Model(hunyuan).eval()
    with torch.no_grad():
        assert model(torch.arange(8).view(1, 8)).last_hidden_state.shape == (1, 8, 64)


def test_a_default_config_that_does_not_build_or_run_is_told_apart_from_the_shrinks_failures():
    transformers = pytest.importorskip("transformers")
    # Qwen4-Exp's default text config leaves its indexer's token_budget and compress_ratio None (its checkpoints set
    # them; no config repair knows their values): no level builds, the default neither
    with pytest.raises(RuntimeError, match=f"^{sweep.DEFAULT_DOES_NOT_BUILD}: TypeError") as info:
        sweep.hf_build("qwen4_exp_text")
    row = {"stage": "build", "error": sweep.first_line(info.value, 600)}
    assert sweep_render.cause_of(row).startswith("transformers' own default config does not build")
    ran = {"stage": "forward", "error": f"{sweep.DEFAULT_DOES_NOT_RUN}: RuntimeError: shape '[2, 4]' is invalid"}
    assert sweep_render.cause_of(ran).startswith("the library's default config fails its forward the same way")
    assert sweep._same_error(ValueError("weight [64, 384]"), ValueError("weight [256, 384]"))
    assert not sweep._same_error(ValueError("weight [64, 384]"), TypeError("weight [64, 384]"))
    # a class the auto mapping names but transformers does not export comes from its config's modeling module
    config_cls, model_cls = sweep.hf_classes("voxtral_realtime_text")
    assert model_cls.__name__ == "VoxtralRealtimeTextModel" and not hasattr(transformers, model_cls.__name__)
    assert model_cls.__module__ == config_cls.__module__.replace(".configuration_", ".modeling_")


def test_a_backbones_out_features_stay_within_its_shrunk_stages():
    transformers = pytest.importorskip("transformers")
    # DepthPro passes its Dinov2 backbones as dicts that keep out_features=['stage12'] of the default 12 layers
    depth_pro = sweep.shrink_overrides(transformers.DepthProConfig(), sweep._TINY)
    image = depth_pro["image_model_config"]
    assert (image["num_hidden_layers"], image["out_features"], image["out_indices"]) == (2, ["stage2"], [2])
    assert transformers.DepthProConfig(**depth_pro).image_model_config.out_features == ["stage2"]
    # LW-DETR's ViT names four feature stages: the shrunk stack keeps four layers, its last four stages
    lw = sweep.shrink_overrides(transformers.LwDetrConfig(), sweep._LAYERS_ONLY)["backbone_config"]
    assert (lw["num_hidden_layers"], lw["out_indices"]) == (4, [1, 2, 3, 4])
    assert lw["out_features"] == ["stage1", "stage2", "stage3", "stage4"]
    # a backbone built from its own class computes its stages; Swin's stages are its depths, which do not shrink
    assert "out_features" not in sweep.shrink_overrides(transformers.Dinov2Config(), sweep._TINY)
    swin = sweep.shrink_overrides(transformers.Mask2FormerConfig(), sweep._TINY)["backbone_config"]
    assert (swin["num_layers"], swin["out_indices"]) == (2, [1, 2])  # the plain level's first entries, as before


def test_the_consistent_level_keeps_a_codecs_depthwise_groups_and_its_residual_layers():
    transformers = pytest.importorskip("transformers")
    import torch

    # Mimi (CSM's codec): upsample_groups is its width (a depthwise convolution); num_residual_layers=1 counts
    # the residual units of each conv block, not layers of the stack: it stays 1 (scaled, it was 0)
    mimi = sweep.shrink_overrides(transformers.MimiConfig(), sweep._TINY, consistent=True)
    assert mimi["upsample_groups"] == mimi["hidden_size"] == 64 and mimi.get("num_residual_layers", 1) == 1
    csm = sweep.shrink_overrides(transformers.CsmConfig(), sweep._TINY, consistent=True)
    assert csm["codec_config"]["upsample_groups"] == csm["codec_config"]["hidden_size"] == 64
    with torch.device("meta"):
        transformers.CsmForConditionalGeneration(transformers.CsmConfig(**csm))  # in_channels were not divisible
    # counts of some of the stack's layers still scale (Gemma 3n's KV-sharing layers)
    gemma = sweep.shrink_overrides(transformers.Gemma3nTextConfig(), sweep._TINY, consistent=True)
    assert gemma["num_kv_shared_layers"] < transformers.Gemma3nTextConfig().num_kv_shared_layers


def test_vision_feature_layers_past_the_shrunk_tower_keep_their_distance_from_its_last_layer():
    transformers = pytest.importorskip("transformers")
    # Molmo2's adapter reads the outputs of layers 24 and 18 of its 25-layer vision tower
    molmo2 = sweep.shrink_overrides(transformers.Molmo2Config(), sweep._TINY, consistent=True)
    assert molmo2["vision_config"]["num_hidden_layers"] == 2
    assert molmo2["adapter_config"]["vision_feature_layer"] == [1, 0]
    transformers.Molmo2Config(**molmo2)  # the validator: they must index the tower's layers
    # LLaVA's -2 counts from the end: unchanged
    assert "vision_feature_layer" not in sweep.shrink_overrides(transformers.LlavaConfig(), sweep._TINY)


def test_the_consistent_level_keeps_a_width_named_hidden_size_something_in_step():
    transformers = pytest.importorskip("transformers")
    # BLT's local encoder and decoder name the global transformer's width hidden_size_global
    blt = sweep.shrink_overrides(transformers.BltConfig(), sweep._TINY, consistent=True)
    assert blt["global_config"]["hidden_size"] == 64
    assert blt["encoder_config"]["hidden_size_global"] == blt["decoder_config"]["hidden_size_global"] == 64


def test_the_consistent_level_keeps_a_bottleneck_that_is_a_fraction_of_the_width():
    transformers = pytest.importorskip("transformers")
    # Fun-ASR-Nano's adaptor: intermediate_size 256 of a width of 1024, which its validator requires
    fun = sweep.shrink_overrides(transformers.FunAsrNanoConfig(), sweep._TINY, consistent=True)
    assert fun["adaptor_config"]["intermediate_size"] == fun["text_config"]["hidden_size"] // 4 == 16
    transformers.FunAsrNanoConfig(**fun)
    # a wider MLP (Llama) and a bottleneck that is no fraction of the width (Qwen2.5-VL's tower) keep the table's
    assert sweep.shrink_overrides(transformers.LlamaConfig(), sweep._TINY, consistent=True)["intermediate_size"] == 128
    qwen = sweep.shrink_overrides(transformers.Qwen2_5_VLConfig(), sweep._TINY, consistent=True)
    assert qwen["vision_config"]["intermediate_size"] == 128


def test_an_attention_indexer_gets_no_more_heads_than_a_key_head_has_queries():
    transformers = pytest.importorskip("transformers")
    import torch

    # Kolibri 1.1's indexer has 12 heads, at most the 2 query heads per key head of the tiny config
    kolibri = sweep.shrink_overrides(transformers.Kolibri1_1Config(), sweep._TINY)
    config = transformers.Kolibri1_1Config(**kolibri)  # the validator refused index_num_heads=12
    assert config.index_num_heads <= config.num_attention_heads // config.num_key_value_heads
    with torch.device("meta"):
        transformers.Kolibri1_1Model(config)


def test_layer_index_lists_past_a_shrunk_stack_keep_their_count_within_it():
    transformers = pytest.importorskip("transformers")
    import torch

    # VipLLaVA's projector reads five vision layers (-2, -5, -8, -11, 6) of 24: within the 2 kept, still five
    vip = sweep.shrink_overrides(transformers.VipLlavaConfig(), sweep._TINY, consistent=True)
    assert vip["vision_feature_layer"] == [-2, -2, -2, -2, 0]
    config = transformers.VipLlavaConfig(**vip)
    size = config.vision_config.image_size
    with torch.no_grad():
        transformers.VipLlavaModel(config).eval().get_image_features(torch.zeros(1, 3, size, size))
    # Mllama's vision tower stacks the states of five layers of 32 with its last: 6 x its width
    mllama = sweep.shrink_overrides(transformers.MllamaConfig(), sweep._TINY, consistent=True)["vision_config"]
    assert mllama["intermediate_layers_indices"] == [0, 0, 0, 0, 0]
    assert mllama["vision_output_dim"] == 6 * mllama["hidden_size"]
    vision = transformers.MllamaVisionModel(transformers.MllamaVisionConfig(**mllama)).eval()
    tiles, size = vision.config.max_num_tiles, vision.config.image_size
    with torch.no_grad():
        states = vision(torch.zeros(1, 1, tiles, 3, size, size), aspect_ratio_ids=torch.ones(1, 1, dtype=torch.long),
                        aspect_ratio_mask=torch.ones(1, 1, tiles, dtype=torch.long)).last_hidden_state
    assert states.shape[-1] == vision.config.vision_output_dim
    # SAM's global attention layers (2, 5, 8, 11 of 12) in DeepSeek-VL hybrid's high-res tower: the last of 2
    hybrid = sweep.shrink_overrides(transformers.DeepseekVLHybridConfig(), sweep._TINY, consistent=True)
    assert hybrid["high_res_vision_config"]["global_attn_indexes"] == [0, 0, 0, 1]
    # the plain levels keep them: SAM runs at layers only, where a global layer would attend over 64 x 64 patches
    plain = sweep.shrink_overrides(transformers.SamConfig(), sweep._LAYERS_ONLY)["vision_config"]
    assert plain["global_attn_indexes"] == [2, 5, 8, 11]
    # a backbone's out_indices are _fit_out_features' (not these), and lists that fit stay
    assert "vision_feature_layer" not in sweep.shrink_overrides(transformers.LlavaConfig(), sweep._TINY)


def test_a_pixel_shuffle_factor_keeps_dividing_the_shrunk_patch_grid():
    transformers = pytest.importorskip("transformers")
    # ModernVBERT's pixel_shuffle_factor 4 of its vision config's grid, Granite Docling's tower's own scale_factor 4:
    # 224 px in 16 px patches (14 a side) grows to 256 (16 a side)
    modern = sweep.shrink_overrides(transformers.ModernVBertConfig(), sweep._TINY, consistent=True)
    assert modern["vision_config"]["image_size"] == 256
    tower = sweep.shrink_overrides(transformers.GraniteDoclingVisionConfig(), sweep._TINY, consistent=True)
    assert tower["image_size"] == 256
    granite = sweep.shrink_overrides(transformers.GraniteDoclingConfig(), sweep._TINY, consistent=True)
    assert granite["vision_config"]["image_size"] == 256
    # Idefics3's top-level scale_factor 2 divides the grid already: _fit_image_tokens' rule, unchanged
    idefics3 = sweep.shrink_overrides(transformers.Idefics3Config(), sweep._TINY, consistent=True)["vision_config"]
    assert idefics3["image_size"] % (idefics3["patch_size"] * 2) == 0


def test_the_consistent_level_keeps_a_projection_into_another_part_at_that_parts_width():
    transformers = pytest.importorskip("transformers")
    # Florence-2's vision projection_dim (1024) is its text model's d_model: both 64 once shrunk
    florence = sweep.shrink_overrides(transformers.Florence2Config(), sweep._TINY, consistent=True)
    assert florence["vision_config"]["projection_dim"] == florence["text_config"]["d_model"] == 64
    # the plain level keeps it
    assert sweep.shrink_overrides(transformers.Florence2Config(), sweep._TINY)["vision_config"]["projection_dim"] == 1024


def test_the_consistent_level_keeps_the_width_of_merged_patches_a_multiple_of_the_towers():
    transformers = pytest.importorskip("transformers")
    # Muse Spark's out_hidden_size 6144 is its vision width 1536 x 2 x 2 merged patches, which its projector reads
    muse = sweep.shrink_overrides(transformers.MuseSparkConfig(), sweep._TINY, consistent=True)
    assert muse["out_hidden_size"] == 4 * muse["vision_config"]["hidden_size"] == 256
    assert "out_hidden_size" not in sweep.shrink_overrides(transformers.MuseSparkConfig(), sweep._TINY)


def test_the_consistent_level_keeps_a_channel_list_ending_at_a_sibling_towers_width():
    transformers = pytest.importorskip("transformers")
    # Unlimited OCR's SAM encoder downsamples to [512, 1024] channels, 1024 the CLIP-like encoder's width beside it
    ocr = sweep.shrink_overrides(transformers.UnlimitedOcrConfig(), sweep._TINY, consistent=True)["vision_config"]
    assert ocr["sam_config"]["downsample_channels"] == [512, ocr["encoder_config"]["hidden_size"]] == [512, 64]


# Read off Hugging Face's layer code (not the engine's rules): every encoder layer adds its self-attention and its
# MLP (fc2) back to the stream, every decoder layer its self-attention, cross-attention and MLP. The queries' and
# keys' h + pos is no residual: before, the whole previous layer (or its norm) was taken for a branch of pos. DETR
# and Table Transformer start their decoder from zeros and a parameter, so the first self-attention computes a
# constant, nothing from the inputs: no branch.
DETR_BRANCHES = {
    "detr": ["encoder.layers.{0,1}.{self_attn,mlp}", "decoder.layers.0.{encoder_attn,mlp}",
             "decoder.layers.1.{self_attn,encoder_attn,mlp}"],
    "table-transformer": ["encoder.layers.{0,1}.{self_attn,fc2}", "decoder.layers.0.{encoder_attn,fc2}",
                          "decoder.layers.1.{self_attn,encoder_attn,fc2}"],
    "rt_detr": ["encoder.aifi.0.layers.0.{self_attn,mlp}", "decoder.layers.{0,1}.{self_attn,encoder_attn,mlp}"],
}


def _expand(pattern: str) -> list[str]:
    """``a.{0,1}.{b,c}`` -> ``a.0.b``, ``a.0.c``, ``a.1.b``, ``a.1.c``."""
    if "{" not in pattern:
        return [pattern]
    head, rest = pattern.split("{", 1)
    options, tail = rest.split("}", 1)
    return [path for option in options.split(",") for path in _expand(head + option + tail)]


@pytest.mark.parametrize("name", list(DETR_BRANCHES))
def test_detr_style_layers_get_their_own_residual_branches_and_no_position_sum(name):
    pytest.importorskip("transformers")
    from helpers import idle_sites

    from droppath_surgery import apply_drop_path, build_example_inputs

    config, model_cls, _, _, _ = sweep.hf_build(name)
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    model = model_cls(config)
    args, kwargs = build_example_inputs(model)
    report = apply_drop_path(model, 0.1)  # on the automatic inputs, as the sweep runs it
    transformer = [s.path for s in report.sites if s.path.startswith(("encoder.layers", "encoder.aifi", "decoder"))]
    assert sorted(transformer) == sorted(p for pattern in DETR_BRANCHES[name] for p in _expand(pattern))
    assert report.verified is True and idle_sites(model, *args, **kwargs) == []  # each site, dropped, changes the output


def test_the_unused_site_line_counts_the_checked_types_and_names_the_others():
    rows = [{"name": "a", "status": "ok", "sites": 3, "unused": []},
            {"name": "b", "status": "ok", "sites": 5, "unused": ["layers.0.surgery_drop_path"]},
            {"name": "c", "status": "ok", "sites": 2},  # a sweep before the check: not counted
            {"name": "d", "status": "failed", "sites": None, "unused": None}]
    line = sweep_render.unused_line(rows)
    assert "in 1 of the 2 types checked" in line and line.endswith("not in 1: `b` (1 of 5)")
    assert sweep_render.unused_line(rows[2:]) == ""
