"""The sweep's config shrinking (scripts/droppath_coverage/sweep.py, ``shrink_overrides``) on transformers' own
default configs: the fields that must follow the shrunk widths and stacks do, and the built configs take them."""

from __future__ import annotations

import pytest
from droppath_coverage import sweep

transformers = pytest.importorskip("transformers")


@pytest.mark.parametrize("consistent", [False, True])
def test_a_towers_output_dim_wider_than_itself_follows_the_shrunk_text_width(consistent):
    asr = sweep.shrink_overrides(transformers.Qwen3ASRConfig(), sweep._TINY, consistent=consistent)
    assert asr["text_config"]["hidden_size"] == 64
    assert asr["audio_config"]["d_model"] == 64 and asr["audio_config"]["output_dim"] == 64  # was 3584
    janus = sweep.shrink_overrides(transformers.JanusConfig(), sweep._TINY, consistent=consistent)
    assert janus["vision_config"]["projection_dim"] == janus["text_config"]["hidden_size"] == 64  # was 2048
    # a space both sides project into (the text config has the field too) is not the text width's
    clap = transformers.ClapConfig()
    shrunk = sweep.shrink_overrides(clap, sweep._TINY, consistent=consistent)
    assert shrunk["audio_config"].get("projection_dim", 512) == shrunk["text_config"].get("projection_dim", 512)


def test_vision_feature_layers_are_fitted_into_the_shrunk_tower_alike_at_every_level():
    # VipLLaVA reads five layers, a tuple with negative indices past a 2-layer tower: one formula at every level
    levels = [sweep.shrink_overrides(transformers.VipLlavaConfig(), table, consistent=consistent)
              for table, consistent in ((sweep._TINY, False), (sweep._TINY, True), (sweep._LAYERS_ONLY, False))]
    for shrunk in levels:
        assert shrunk["vision_config"]["num_hidden_layers"] == 2
        assert shrunk["vision_feature_layer"] == [-2, -2, -2, -2, 0]  # was the default's (-2, -5, -8, -11, 6)
    assert sweep._fit_layer_indices(20, old=24, new=2) == 0 and sweep._fit_layer_indices(-1, 24, 2) is None
    assert sweep._fit_layer_indices([3, 23], old=24, new=4) == [0, 3]


def test_the_consistent_level_gives_shared_experts_left_unset_one():
    # dots1's default leaves n_shared_experts None; its shared MLP is moe_intermediate_size x n_shared_experts wide
    assert "n_shared_experts" not in sweep.shrink_overrides(transformers.Dots1Config(), sweep._TINY)
    dots = transformers.Dots1Config(**sweep.shrink_overrides(transformers.Dots1Config(), sweep._TINY, consistent=True))
    assert dots.n_shared_experts == 1 and dots.moe_intermediate_size == 64
    assert sweep.shrink_overrides(transformers.DeepseekV2Config(), sweep._TINY, consistent=True).get(
        "n_shared_experts", 2) == 2  # a count the config sets stays


def test_the_consistent_level_names_a_small_timm_backbone_where_the_config_leaves_it_unset():
    assert "backbone" not in sweep.shrink_overrides(transformers.TimmBackboneConfig(), sweep._TINY)
    timm = sweep.shrink_overrides(transformers.TimmBackboneConfig(), sweep._TINY, consistent=True)
    assert timm["backbone"] == "resnet18"
    assert transformers.TimmBackboneConfig(**timm).backbone == "resnet18"
    detr = sweep.shrink_overrides(transformers.DetrConfig(), sweep._TINY, consistent=True)
    assert "backbone" not in detr and "backbone" not in detr.get("backbone_config", {})  # its resnet50 stays


def test_the_consistent_level_keeps_a_width_that_is_two_widths_side_by_side_their_sum():
    # NeuCodec / XCodec2 quantize the acoustic and the semantic states side by side: 1024 + 1024 = 2048
    for config_cls in (transformers.NeuCodecConfig, transformers.Xcodec2Config):
        shrunk = sweep.shrink_overrides(config_cls(), sweep._TINY, consistent=True)
        assert shrunk["quantization_dim"] == shrunk["hidden_size"] + shrunk["semantic_model_config"]["hidden_size"]
        assert config_cls(**shrunk).quantization_dim == 128
    # a position count that happens to be such a sum is no width (Phi-4-multimodal's 3072 + 1024)
    phi4 = sweep.shrink_overrides(transformers.Phi4MultimodalConfig(), sweep._TINY, consistent=True)
    assert "original_max_position_embeddings" not in phi4


def test_a_sub_configs_channels_equal_to_a_siblings_shrunk_width_follow_it():
    # GLM-Image quantizes its vision tower's states: the VQ model's latent_channels are the vision width (1536)
    glm = sweep.shrink_overrides(transformers.GlmImageConfig(), sweep._TINY, consistent=True)
    assert glm["vq_config"]["latent_channels"] == glm["vision_config"]["hidden_size"] == 64
    # SAM's vision neck outputs the width its prompt encoder and mask decoder work in (256)
    sam = sweep.shrink_overrides(transformers.SamConfig(), sweep._TINY, consistent=True)
    assert sam["vision_config"]["output_channels"] == sam["mask_decoder_config"]["hidden_size"] == 64
    assert sam["vision_config"]["num_channels"] == 3  # the image's own channels stay


def test_a_configs_input_dim_equal_to_a_shrunk_sub_configs_width_follows_it():
    # OmDet-Turbo projects its text encoder's states (512 wide) with a text_projection_in_dim x out_dim matrix
    omdet = sweep.shrink_overrides(transformers.OmDetTurboConfig(), sweep._TINY, consistent=True)
    assert omdet["text_projection_in_dim"] == omdet["text_config"]["hidden_size"] == 64
    assert "text_projection_out_dim" not in omdet  # what it projects into is not the text width


def test_depth_pros_hook_ids_and_patches_fit_its_shrunk_encoders_and_the_example_image():
    # DepthPro hooks layers 11 and 5 of its 12-layer encoders and cuts 384-pixel patches (which its patch encoder
    # takes whole) out of the image scaled by 0.25, 0.5 and 1: a 224-pixel image needs patches of at most 56
    shrunk = sweep.shrink_overrides(transformers.DepthProConfig(), sweep._TINY, consistent=True)
    assert shrunk["patch_model_config"]["num_hidden_layers"] == 2
    assert shrunk["intermediate_hook_ids"] == [1, 0]
    assert shrunk["patch_size"] == shrunk["patch_model_config"]["image_size"] == 56
    assert shrunk["patch_size"] % shrunk["patch_model_config"]["patch_size"] == 0
    config = transformers.DepthProConfig(**shrunk)
    assert min(config.scaled_images_ratios) * 224 >= config.patch_size
    plain = sweep.shrink_overrides(transformers.DepthProConfig(), sweep._TINY)
    assert "patch_size" not in plain and "intermediate_hook_ids" not in plain  # the plain level as it was


@pytest.mark.parametrize("consistent", [False, True])
def test_a_timm_tower_named_by_architecture_keeps_the_width_timm_builds_it_at(consistent):
    # FastVLM's vision tower is timm's fastvit_mci3, 3072 wide whatever its config's hidden_size says
    fast = sweep.shrink_overrides(transformers.FastVlmConfig(), sweep._TINY, consistent=consistent)
    assert fast.get("vision_config", {}).get("hidden_size", 3072) == 3072
    assert fast["text_config"]["hidden_size"] == 64
    gemma = sweep.shrink_overrides(transformers.Gemma3nVisionConfig(), sweep._TINY, consistent=consistent)
    assert "hidden_size" not in gemma  # mobilenetv5_300m_enc's 2048
    assert sweep.shrink_overrides(transformers.CLIPVisionConfig(), sweep._TINY)["hidden_size"] == 64


def test_sams_consistent_level_keeps_its_decoder_and_prompt_encoder_in_step_with_the_vision_tower():
    sam_hq = sweep.shrink_overrides(transformers.SamHQConfig(), sweep._TINY, consistent=True)
    # the HQ decoder reads the vision tower's states (768 wide): vit_dim follows its width
    assert sam_hq["mask_decoder_config"]["vit_dim"] == sam_hq["vision_config"]["hidden_size"] == 64
    # the prompt encoder's image embedding is the patch grid: 1024 // 16 = 64, 224 // 16 = 14
    prompt = sam_hq["prompt_encoder_config"]
    assert prompt["image_embedding_size"] == prompt["image_size"] // prompt["patch_size"] == 14
    # dots3's adapters feed the text model (5120 wide)
    dots3 = sweep.shrink_overrides(transformers.Dots3NoteConfig(), sweep._TINY, consistent=True)
    assert dots3["vision_config"]["adapter_out_dim"] == dots3["text_config"]["hidden_size"] == 64


def test_stage_widths_and_feature_grids_follow_the_shrunk_width_and_image():
    # SAM 2: the Hiera stages start at its hidden_size, the vision config lists them (reversed) and the feature
    # grids of a 1024-pixel image; shrunk to 64 wide and 224 pixels, they follow, and the model builds on them
    shrunk = sweep.shrink_overrides(transformers.Sam2Config(), sweep._TINY, consistent=True)
    vision = shrunk["vision_config"]
    assert vision["backbone_config"]["hidden_size"] == 64
    assert vision["backbone_config"]["embed_dim_per_stage"] == [64, 128, 256, 512]  # was [96, 192, 384, 768]
    assert vision["backbone_channel_list"] == [512, 256, 128, 64]
    assert vision["backbone_feature_sizes"] == [[56, 56], [28, 28], [14, 14]]  # was [[256, 256], [128, 128], ...]
    config = transformers.Sam2Config(**shrunk)
    assert config.vision_config.backbone_config.embed_dim_per_stage[0] == config.vision_config.backbone_config.hidden_size


def test_a_width_named_after_a_sibling_config_is_that_configs_new_width():
    # Molmo2's adapter projects into the text model: text_hidden_size 3584 (the default text width is 4096)
    config = transformers.Molmo2Config()
    shrunk = sweep.shrink_overrides(config, sweep._TINY, consistent=True)
    assert shrunk["text_config"]["hidden_size"] == 64
    assert shrunk["adapter_config"]["text_hidden_size"] == 64  # was 3584
    assert transformers.Molmo2Config(**shrunk).adapter_config.text_hidden_size == 64
    # an alias of another field is left to that field (LLaVA-OneVision-1.5's text_hidden_size = out_hidden_size)
    ov_config = transformers.AutoConfig.for_model("llava_onevision1_5")
    ov = sweep.shrink_overrides(ov_config, sweep._TINY, consistent=True)
    assert "text_hidden_size" not in ov["vision_config"] and ov["vision_config"]["out_hidden_size"] == 64


def test_a_text_config_with_vision_start_tokens_gets_rotary_sections_for_its_shrunk_heads():
    # PaddleOCR-VL's model defaults to sections [16, 24, 24] (head dim 128) where its config names none
    config = transformers.AutoConfig.for_model("paddleocr_vl")
    assert "mrope_section" not in config.text_config.rope_parameters
    shrunk = sweep.shrink_overrides(config, sweep._TINY, consistent=True)
    text = shrunk["text_config"]
    assert text["head_dim"] == 16 and sum(text["rope_parameters"]["mrope_section"]) == 8
    assert transformers.AutoConfig.for_model("paddleocr_vl", **shrunk).text_config.rope_parameters[
        "mrope_section"] == text["rope_parameters"]["mrope_section"]
    # a config that names no vision start token is left to its own sections
    llava = sweep.shrink_overrides(transformers.LlavaConfig(), sweep._TINY, consistent=True)
    assert "mrope_section" not in str(llava)


def test_a_config_sized_for_sliding_window_attention_gets_a_window_it_leaves_unset():
    # Step3p7's text config (Step 3.5) has num_sliding_attention_heads but sliding_window None; its model builds
    # the sliding-window mask whatever its layer types, and transformers refuses a mask without a window
    config = transformers.AutoConfig.for_model("step3p7")
    assert config.text_config.sliding_window is None
    assert sweep.shrink_overrides(config, sweep._TINY)["text_config"]["sliding_window"] is None  # the plain level
    shrunk = sweep.shrink_overrides(config, sweep._TINY, consistent=True)
    assert transformers.AutoConfig.for_model("step3p7", **shrunk).text_config.sliding_window == 512
    # None means no window where the config names no other sliding-window size (Mistral, Qwen2)
    for cls in (transformers.MistralConfig, transformers.Qwen2Config):
        assert "sliding_window" not in sweep.shrink_overrides(cls(), sweep._TINY, consistent=True)


def test_fourier_position_features_stay_half_of_the_shrunk_embedding_they_are_added_to():
    # SAM's positional embedding is 2 x num_pos_feats wide, added to the output_channels wide image embedding
    for cls in (transformers.SamConfig, transformers.SamHQConfig):
        config = cls()
        assert 2 * config.vision_config.num_pos_feats == config.vision_config.output_channels
        shrunk = sweep.shrink_overrides(config, sweep._TINY, consistent=True)["vision_config"]
        assert shrunk["output_channels"] == 64 and shrunk["num_pos_feats"] == 32  # was 128
        assert sweep.shrink_overrides(config, sweep._LAYERS_ONLY).get("vision_config", {}).get(
            "num_pos_feats", 128) == 128  # widths unchanged: the features too


def test_per_layer_settings_take_the_sizes_the_config_shrank():
    # Dots 3 Note's sliding-window layers have their own heads, latent and head part in per_layer_config; its
    # validators want them consistent (kv heads = heads, head_dim = nope + rope part) with the shrunk config
    config = transformers.AutoConfig.for_model("dots3_note")
    shrunk = sweep.shrink_overrides(config, sweep._TINY, consistent=True)
    text = shrunk["text_config"]
    assert text["layer_types"].count("sliding_attention") == 1
    (entry,) = text["per_layer_config"].values()
    assert entry["num_attention_heads"] == entry["num_key_value_heads"] == text["num_attention_heads"] == 4  # was 64
    assert entry["qk_nope_head_dim"] == text["qk_nope_head_dim"] == 8 and entry["kv_lora_rank"] == 32
    built = transformers.AutoConfig.for_model("dots3_note", **shrunk)  # its validators pass
    assert built.text_config.per_layer_config[2].num_attention_heads == 4


def test_swin_style_stages_keep_the_width_their_doubling_patch_embedding_reaches():
    # CLAP's audio tower: 96-wide patches doubled at each of 4 stages = its 768 width; the shrink keeps 2 stages
    import torch

    clap = transformers.ClapConfig()
    shrunk = sweep.shrink_overrides(clap, sweep._TINY, consistent=True)
    audio = shrunk["audio_config"]
    assert audio["hidden_size"] == 64 and len(audio["depths"]) == 2
    assert audio["patch_embeds_hidden_size"] == 32  # was 96: 96 x 2 = 192 wide at the end, not 64
    config = transformers.ClapConfig(**shrunk)
    torch.manual_seed(0)
    model = transformers.ClapModel(config).eval()
    with torch.no_grad():
        embeds = model.get_audio_features(input_features=torch.randn(1, 1, 256, 64))
    embeds = getattr(embeds, "pooler_output", embeds)
    assert embeds.shape[-1] == config.projection_dim


def test_a_pixel_shuffling_projector_reads_the_shuffled_width_and_outputs_the_towers_output_dim():
    # Llama 4's vision tower: its 64-wide patches shuffled by 0.5 are 256 wide (the projector MLP's input) and the
    # projector's 4096 output is what the multimodal projector reads (transformers' default: 5632 and 7680)
    import torch

    shrunk = sweep.shrink_overrides(transformers.Llama4Config(), sweep._TINY, consistent=True)
    vision = shrunk["vision_config"]
    assert vision["hidden_size"] == 64 and vision["intermediate_size"] == 256
    assert vision["vision_output_dim"] == vision["projector_output_dim"] == 4096
    config = transformers.Llama4Config(**shrunk)
    from transformers.models.llama4 import modeling_llama4

    torch.manual_seed(0)
    tower = modeling_llama4.Llama4VisionModel(config.vision_config).eval()
    projector = modeling_llama4.Llama4MultiModalProjector(config).eval()
    side = config.vision_config.image_size
    with torch.no_grad():
        features = tower(torch.randn(1, 3, side, side)).last_hidden_state
        tokens = projector(features)
    assert tokens.shape[-1] == config.text_config.hidden_size


def test_heads_stay_as_wide_as_the_rotary_dims_a_config_does_not_name():
    # CLVP's encoders rotate max(projection_dim // (2 x heads), 32) dims of each head: 32 in the default config;
    # 64 wide with 4 heads of 16 the rotary embedding does not fit them
    import torch

    shrunk = sweep.shrink_overrides(transformers.ClvpConfig(), sweep._TINY, consistent=True)
    for name in ("text_config", "speech_config"):
        assert shrunk[name]["hidden_size"] == 64 and shrunk[name]["num_attention_heads"] == 2  # heads of 32
    assert shrunk["decoder_config"]["num_attention_heads"] == 4  # no rotary there: as before
    config = transformers.ClvpConfig(**shrunk)
    from transformers.models.clvp import modeling_clvp

    torch.manual_seed(0)
    encoder = modeling_clvp.ClvpEncoder(config.text_config).eval()
    with torch.no_grad():
        embeds = encoder(input_ids=torch.randint(0, config.text_config.vocab_size, (1, 12)))[0]
    assert embeds.shape == (1, config.text_config.projection_dim)


def test_rotary_sections_left_to_the_models_default_are_split_evenly_leading_parts_first():
    # Ernie 4.5 VL's model defaults to [22, 22, 20] (height, width, time) and stacks the height and width parts:
    # for the shrunk head of 16 they must stay equal, [3, 3, 2] (the [4, 2, 2] of a [2, 1, 1] guess does not stack)
    import torch

    shrunk = sweep.shrink_overrides(transformers.AutoConfig.for_model("ernie4_5_vl_moe"), sweep._TINY, consistent=True)
    text = shrunk["text_config"]
    assert text["rope_parameters"]["mrope_section"] == [3, 3, 2]
    config = transformers.AutoConfig.for_model("ernie4_5_vl_moe", **shrunk).text_config
    from transformers.models.ernie4_5_vl_moe import modeling_ernie4_5_vl_moe as ernie

    rotary = ernie.Ernie4_5_VLMoeTextRotaryEmbedding(config)
    x = torch.randn(2, 5, config.hidden_size)
    cos, sin = rotary(x, torch.arange(5).expand(3, 2, 5))
    assert cos.shape[-1] == 16
    # sections named in the config are rescaled as before (Qwen2-VL's own [16, 24, 24] -> [2, 3, 3] for 16)
    qwen = transformers.Qwen2VLConfig()
    qwen.text_config.rope_parameters = dict(qwen.text_config.rope_parameters, mrope_section=[16, 24, 24])
    own = sweep.shrink_overrides(qwen, sweep._TINY, consistent=True)["text_config"]["rope_parameters"]
    assert own["mrope_section"] == [2, 3, 3]


# -- Config repairs (what a config leaves out that its model needs), each said in the build text -----------------


def test_a_field_the_model_reads_and_the_config_lacks_is_taken_from_where_the_config_tree_defines_it():
    # Moonshine Streaming's decoder reads config.num_key_value_heads, which only its encoder sub-config defines
    moon = transformers.MoonshineStreamingConfig(**sweep.shrink_overrides(
        transformers.MoonshineStreamingConfig(), sweep._TINY, consistent=True))
    error = AttributeError("'MoonshineStreamingConfig' object has no attribute 'num_key_value_heads'")
    said = sweep._repair_missing_attribute(moon, error)
    assert moon.num_key_value_heads == moon.encoder_config.num_key_value_heads
    assert said.startswith("num_key_value_heads (read by the model") and "from encoder_config.num_key_value_heads" in said
    # DBRX's attention reads attn_config.rope_theta, which transformers 5 keeps in the parent's rope_parameters
    dbrx = transformers.DbrxConfig()
    said = sweep._repair_missing_attribute(dbrx, AttributeError(
        "'DbrxAttentionConfig' object has no attribute 'rope_theta'"))
    assert dbrx.attn_config.rope_theta == dbrx.rope_parameters["rope_theta"] and "rope_parameters['rope_theta']" in said
    assert "rope_theta" in dbrx.to_dict()["attn_config"]  # kept when the sweep copies the config (from_dict)
    # nothing defines T5Gemma 2's text dropout_rate: HF's default, 0
    t5 = transformers.T5Gemma2EncoderConfig()
    said = sweep._repair_missing_attribute(t5, AttributeError(
        "'T5Gemma2TextConfig' object has no attribute 'dropout_rate'"))
    assert t5.text_config.dropout_rate == 0.0 and "HF's default" in said
    # a field with no source, or another error, is not repaired: the error stands
    assert sweep._repair_missing_attribute(t5, AttributeError(
        "'T5Gemma2TextConfig' object has no attribute 'no_such_size'")) is None
    assert sweep._repair_missing_attribute(t5, AttributeError("'NoneType' object has no attribute 'get'")) is None


def test_the_build_repairs_the_config_until_the_model_builds_and_says_each_repair():
    import torch
    from transformers.models.moonshine_streaming import modeling_moonshine_streaming as moonshine

    config = transformers.MoonshineStreamingConfig(**sweep.shrink_overrides(
        transformers.MoonshineStreamingConfig(), sweep._TINY, consistent=True))
    with pytest.raises(AttributeError):
        moonshine.MoonshineStreamingModel(config)
    config, repairs, _ = sweep.repaired_config(config, moonshine.MoonshineStreamingModel)
    assert len(repairs) == 1 and "num_key_value_heads" in repairs[0]
    with torch.device("meta"):
        moonshine.MoonshineStreamingModel(config)  # builds now
    assert sweep._said("tiny, consistent", repairs) == f"tiny, consistent; repaired: {repairs[0]}"
    assert sweep._said("tiny", []) == "tiny"


def test_a_mapping_field_left_none_that_the_model_reads_becomes_empty():
    # Chameleon's model reads vocabulary_map.get("<image>"): a field its checkpoints set, None in the default config
    from transformers.models.chameleon import modeling_chameleon

    config = transformers.ChameleonConfig(**sweep.shrink_overrides(transformers.ChameleonConfig(), sweep._TINY))
    assert config.vocabulary_map is None
    config, repairs, _ = sweep.repaired_config(config, modeling_chameleon.ChameleonModel)
    assert config.vocabulary_map == {} and repairs == ["vocabulary_map None -> {} (the model reads it as a mapping)"]


def test_a_model_declared_for_one_sub_config_of_its_mapped_config_is_built_from_that_sub_config():
    from transformers.models.musicgen import modeling_musicgen

    music = transformers.MusicgenConfig()
    repairs: list[str] = []
    built = sweep._own_sub_config(music, modeling_musicgen.MusicgenModel, repairs)
    assert built is music.decoder and repairs == ["built from decoder (MusicgenDecoderConfig, the model's config_class)"]
    bert = transformers.BertConfig()  # the usual case: its own config
    assert sweep._own_sub_config(bert, transformers.BertModel, repairs) is bert and len(repairs) == 1


def test_a_timm_backbones_out_indices_and_channel_list_follow_its_features():
    # EdgeTAM's default backbone is timm's resnet50 (strides 2-16 at out_indices 0-3) beside RepViT's channel list;
    # its feature sizes (56, 28, 14 of a 224-pixel image) ask for strides 4, 8, 16 (and 32 for the fourth)
    edge = transformers.EdgeTamConfig(**sweep.shrink_overrides(transformers.EdgeTamConfig(), sweep._TINY, consistent=True))
    repairs: list[str] = []
    sweep._follow_timm_backbone(edge, repairs)
    vision = edge.vision_config
    assert vision.backbone_config.model_args["out_indices"] == [1, 2, 3, 4]
    assert vision.backbone_channel_list == [2048, 1024, 512, 256]  # deepest first, as the config lists them
    assert len(repairs) == 2 and "resnet50" in repairs[0]
    # the vision model alone has no image size: only its channels follow the backbone's features as configured
    alone = transformers.EdgeTamVisionConfig()
    sweep._follow_timm_backbone(alone, repairs)
    assert alone.backbone_channel_list == [1024, 512, 256, 64] and alone.backbone_config.model_args["out_indices"] == [0, 1, 2, 3]
    sam2 = transformers.Sam2Config()  # no timm backbone: untouched
    before = sam2.to_dict()
    sweep._follow_timm_backbone(sam2, repairs)
    assert sam2.to_dict() == before and len(repairs) == 3


def test_a_table_that_ids_overflow_in_the_forward_grows_to_the_vocabulary_that_produced_them():
    # CLVP's speech encoder (a vocabulary of 256) takes the ids its decoder predicts over 8194
    import torch
    from transformers.models.clvp import modeling_clvp

    from droppath_surgery import build_example_inputs

    config = transformers.ClvpConfig(**sweep.shrink_overrides(transformers.ClvpConfig(), sweep._TINY, consistent=True))
    torch.manual_seed(0)
    model = modeling_clvp.ClvpModelForConditionalGeneration(config)
    built, repairs = [model, *build_example_inputs(model)], []
    sweep._forward_repairing(type(model), config, built, repairs)
    assert config.speech_config.vocab_size == config.decoder_config.vocab_size == 8194
    assert len(repairs) == 1 and repairs[0].startswith("speech_config.vocab_size 256 -> 8194 (ids up to")
    assert built[0] is not model  # rebuilt on the repaired config


def test_parts_of_a_stack_whose_layers_come_in_groups_keep_whole_groups():
    # Dory's layer_types list an attention entry and an "mlp" entry per layer (its config halves every count given);
    # its input, recurrent and output parts must sum to the layers: three parts of one (attention, mlp) pair each
    dory = transformers.DoryConfig(**sweep.shrink_overrides(transformers.DoryConfig(), sweep._TINY, consistent=True))
    assert dory.num_hidden_layers == 3 and dory.n_input_layers == dory.n_recurrent_layers == dory.n_output_layers == 1
    assert dory.layer_types == ["sliding_attention", "sliding_attention", "full_attention"]
    pairs = ["attention", "mlp"] * 4
    assert sweep._layer_groups({"layer_types": pairs}, {"n_input_layers": 4, "n_output_layers": 4}, 8) == (2, pairs)
    assert sweep._layer_groups({"layer_types": pairs}, {"n_input_layers": 3, "n_output_layers": 5}, 8) == (1, [])
    # one count of all the layers (Gemma 4's KV-shared layers) with a full layer every 6th: not parts, no groups
    gemma = sweep.shrink_overrides(transformers.AutoConfig.for_model("gemma4_unified_assistant"), sweep._TINY, consistent=True)
    assert gemma["text_config"]["num_hidden_layers"] == 2


def test_a_forward_that_runs_without_its_cache_is_not_repaired_first():
    # BLT reads config.num_hidden_layers only to make its cache: the missing-field repair took a value from its
    # patcher's config, and the model then failed further in and was left at a level that ran out of memory.
    # Without the cache it runs as it is: that comes before any repair.
    import types

    import torch

    class NeedsCacheField(torch.nn.Module):
        def __init__(self, config):
            super().__init__()
            self.config, self.lin = config, torch.nn.Linear(4, 4)

        def forward(self, x):
            if self.config.use_cache:
                return self.lin(x) * self.config.num_hidden_layers  # the field the config lacks
            return self.lin(x)

    config = types.SimpleNamespace(use_cache=True)
    repairs: list[str] = []
    built = [NeedsCacheField(config), (torch.randn(2, 4),), {}]
    assert sweep._forward_repairing(NeedsCacheField, config, built, repairs)
    assert config.use_cache is False and repairs == []  # no field invented
    config = types.SimpleNamespace(use_cache=True, num_hidden_layers=2)
    assert not sweep._forward_repairing(NeedsCacheField, config, [NeedsCacheField(config), (torch.randn(2, 4),), {}], [])
    assert config.use_cache is True  # a forward that runs with its cache keeps it
    broken = types.SimpleNamespace(use_cache=True)
    model = NeedsCacheField(broken)
    model.lin = torch.nn.Linear(3, 4)  # fails either way: not the cache, use_cache restored
    assert not sweep._without_cache(broken, [model, (torch.randn(2, 4),), {}]) and broken.use_cache is True
    with pytest.raises(RuntimeError):
        sweep._forward_repairing(NeedsCacheField, broken, [model, (torch.randn(2, 4),), {}], [])
    assert broken.use_cache is True
