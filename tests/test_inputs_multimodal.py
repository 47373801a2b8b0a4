"""Automatic example inputs of Hugging Face multimodal and audio models: image placeholder tokens as many as
the projector emits, Qwen2-VL flattened patches with their grid, Idefics-style (B, images, C, H, W) images,
spectrograms and waveforms in the layout the config and the forward allow, and an error naming the input
where the config says too little. Tiny configs, nothing downloaded."""

from __future__ import annotations

import warnings

import pytest
import torch
import transformers as T
from helpers import patched_and_verified as _patch
from training_fixtures import single_thread  # noqa: F401  (autouse: tiny models run faster on one thread)

from droppath_surgery import ExampleInputsError, apply_drop_path, build_example_inputs, is_patched

TEXT = dict(
    vocab_size=99,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    intermediate_size=64,
    max_position_embeddings=256,
)
VISION = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)
IMAGE_TOKEN = 98


def _image_tokens(kwargs) -> list[int]:
    return (kwargs["input_ids"] == IMAGE_TOKEN).sum(1).tolist()


def test_a_vlm_gets_one_placeholder_per_projected_image_feature():
    # LLaVA: 32 x 32 images, 8 x 8 patches, the CLS feature dropped ("default" strategy): 16 features an image.
    config = T.LlavaConfig(
        vision_config=T.CLIPVisionConfig(**VISION, image_size=32, patch_size=8, projection_dim=32),
        text_config=T.LlamaConfig(**TEXT),
        image_token_index=IMAGE_TOKEN,
        vision_feature_layer=-1,
    )
    model = T.LlavaModel(config)
    _, kwargs = build_example_inputs(model)
    assert kwargs["pixel_values"].shape == (2, 3, 32, 32)
    assert _image_tokens(kwargs) == [16, 16]
    assert kwargs["attention_mask"].shape == kwargs["input_ids"].shape
    _patch(model)


def test_random_text_never_collides_with_the_image_token():
    config = T.LlavaConfig(
        vision_config=T.CLIPVisionConfig(**VISION, image_size=32, patch_size=8),
        text_config=T.LlamaConfig(**dict(TEXT, vocab_size=4)),
        image_token_index=3,
        vision_feature_layer=-1,
    )
    _, kwargs = build_example_inputs(T.LlavaModel(config))  # 3 of 4 ids free: random text would hit id 3
    assert (kwargs["input_ids"] == 3).sum(1).tolist() == [16, 16]


def _qwen2_vl():
    text = dict(TEXT, hidden_size=64, rope_parameters={"rope_type": "default", "mrope_section": [2, 3, 3]})
    vision = dict(
        depth=2, embed_dim=32, hidden_size=64, num_heads=2, patch_size=4, spatial_merge_size=2, temporal_patch_size=2
    )
    config = T.Qwen2VLConfig(
        text_config=text,
        vision_config=vision,
        image_token_id=IMAGE_TOKEN,
        video_token_id=97,
        vision_start_token_id=95,
        vision_end_token_id=96,
    )
    return T.Qwen2VLModel(config)


def test_qwen2_vl_gets_flattened_patches_their_grid_and_token_types():
    model = _qwen2_vl().eval()
    args, kwargs = build_example_inputs(model)
    # two images a sample (a grid of 4 rows is not read as batched), a 4 x 4 grid of patches an image (2 x the
    # 2 x 2 merge), one row of 3 x 2 x 4 x 4 values a patch
    assert kwargs["pixel_values"].shape == (4 * 16, 3 * 2 * 4 * 4)
    assert kwargs["image_grid_thw"].tolist() == [[1, 4, 4]] * 4
    assert _image_tokens(kwargs) == [8, 8]  # 16 patches merged 2 x 2, twice
    assert torch.equal(kwargs["mm_token_type_ids"], (kwargs["input_ids"] == IMAGE_TOKEN).int())
    assert ((kwargs["input_ids"] == 95).sum(1) == 2).all() and ((kwargs["input_ids"] == 96).sum(1) == 2).all()
    assert next(iter(kwargs)) == "input_ids"  # the engine reads the batch off the first input
    with torch.no_grad():
        assert model(*args, **kwargs).last_hidden_state.shape == (*kwargs["input_ids"].shape, 64)


def test_qwen2_vl_drops_its_text_blocks_and_its_packed_vision_tower_per_image():
    # The vision tower runs the patches of all images as one sequence (no batch dimension); its blocks are
    # called with cu_seqlens, which its attention keeps apart: each image's rows share one decision.
    model = _qwen2_vl()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing is left out, so nothing is warned
        report = apply_drop_path(model, 0.1)
    assert report.verified is True and report.skipped == ()
    assert [s.path.split(".")[0] for s in report.sites] == ["visual"] * 4 + ["language_model"] * 4
    assert [s.packed for s in report.sites] == [True] * 4 + [False] * 4


def test_a_packed_vision_tower_alone_is_dropped_per_image():
    model = _qwen2_vl().visual
    args, kwargs = build_example_inputs(model)
    assert next(iter(kwargs)) == "grid_thw"  # one row per image: the batch, never the packed patches
    report = apply_drop_path(model, 0.5, schedule="uniform")
    assert len(report.sites) == 4 and all(s.packed for s in report.sites)
    model.train()
    grid = torch.tensor([[1, 4, 4], [1, 8, 4], [1, 4, 8], [1, 4, 4]])  # sizes it was not traced with
    rows = grid.prod(-1)
    patches = torch.randn(int(rows.sum()), kwargs["hidden_states"].shape[1])
    seen = []
    handle = model.blocks[0].attn.surgery_drop_path.register_forward_hook(lambda m, a, out: seen.append((a[0], out)))
    with torch.no_grad():
        for _ in range(40):
            model(hidden_states=patches, grid_thw=grid)
    handle.remove()
    dropped = []
    for x, out in seen:
        for image in torch.split(torch.arange(len(x)), rows.tolist()):
            zero = bool((out[image] == 0).all())
            assert zero or torch.allclose(out[image], 2 * x[image]), "the rows of one image got different decisions"
            dropped.append(zero)
    assert 40 < sum(dropped) < 120  # 160 image draws at rate 0.5: mean 80, sd 6.3


def test_qwen2_5_vl_window_blocks_are_left_out_and_its_full_attention_blocks_dropped_per_image():
    # Window blocks are called with window boundaries, finer than the images' (full-attention blocks):
    # dropping per window would drop parts of an image, and the images' boundaries never reach them.
    config = T.Qwen2_5_VLVisionConfig(
        depth=4, hidden_size=32, out_hidden_size=32, intermediate_size=64, num_heads=2, patch_size=4,
        spatial_merge_size=2, temporal_patch_size=2, window_size=16, fullatt_block_indexes=[3],
    )
    model = T.Qwen2_5_VisionTransformerPretrainedModel(config)
    _, kwargs = build_example_inputs(model)
    assert kwargs["grid_thw"].tolist() == [[1, 8, 8]] * 4  # two 4-patch windows a side, not one window an image
    with pytest.warns(UserWarning, match=r"6 residual branches .*finer boundaries \(attention windows\)"):
        report = apply_drop_path(model, 0.1)
    assert [(s.block_path, s.packed) for s in report.sites] == [("blocks.3", True)] * 2
    assert len(report.skipped) == 6 and all(s.path.startswith(("blocks.0.", "blocks.1.", "blocks.2.")) for s in report.skipped)


def test_a_tower_whose_windows_are_its_position_table_gets_images_two_windows_wide():
    # MuseSpark: windows of pos_emb_height x pos_emb_width patches (no window_size); images one window wide
    # would make the window blocks' boundaries equal to the images', so no block would tell the samples apart.
    config = T.MuseSparkVisionConfig(
        patch_size=4, pos_emb_height=4, pos_emb_width=4, hidden_size=32, num_attention_heads=2, num_hidden_layers=2,
        intermediate_size=64, layer_types=["window_attention", "full_attention"],
    )
    model = T.MuseSparkVisionModel(config)
    _, kwargs = build_example_inputs(model)
    assert kwargs["grid_thw"].tolist() == [[1, 4, 8]] * 4  # 4 patches high (2 merges), two 4-patch windows wide
    with pytest.warns(UserWarning, match=r"2 residual branches .*finer boundaries \(attention windows\)"):
        report = apply_drop_path(model, 0.1)
    assert [(s.block_path, s.packed) for s in report.sites] == [("layers.1", True)] * 2
    assert report.verified is True


def test_a_video_model_gets_a_clip_of_its_frames_in_the_layout_it_runs_on():
    # VideoPrism takes pixel_values_videos (B, T, C, H, W): num_frames frames of image_size, factorized
    # spatial then temporal encoders, both patched.
    config = T.VideoPrismVisionConfig(
        image_size=36, num_frames=3, tubelet_size=[1, 18, 18], hidden_size=32, num_attention_heads=2,
        intermediate_size=64, num_spatial_layers=2, num_temporal_layers=1, num_auxiliary_layers=1,
    )
    model = T.VideoPrismVisionModel(config)
    _, kwargs = build_example_inputs(model)
    assert list(kwargs) == ["pixel_values_videos"] and kwargs["pixel_values_videos"].shape == (2, 3, 3, 36, 36)
    report = apply_drop_path(model, 0.1)
    assert report.verified is True and len(report.sites) == 6  # 2 spatial + 1 temporal layers, 2 branches each
    # The spatial layers run (B x frames) rows, the temporal ones (B x token positions): each sample's rows are
    # consecutive (a check pass shows it), and share one decision: never one frame or one position alone.
    assert [s.rows_per_sample for s in report.sites] == [3, 3, 3, 3, 4, 4]
    apply_drop_path(model, 0.5, schedule="uniform")  # rescheduled: every branch at 0.5
    model.train()
    clip = kwargs["pixel_values_videos"].repeat(16, 1, 1, 1, 1)  # 32 videos
    seen = []
    drop = report.sites[4].path
    model.get_submodule(drop).register_forward_hook(lambda m, a, out: seen.append((a[0], out)))
    with torch.no_grad():
        model(pixel_values_videos=clip)
    x, out = seen[0]
    dropped = (out == 0).flatten(1).all(1).view(32, 4)
    assert (dropped.all(1) | (~dropped).all(1)).all()  # all 4 positions of a video together
    assert 0 < int(dropped.all(1).sum()) < 32  # 32 draws at 0.5: all-equal has probability 2 ** -31


def test_a_qwen2_vl_style_vision_tower_gets_patches_and_grid_it_runs_on():
    # One packed sequence, no batch dimension: the inputs give the grid first, and cu_seqlens split the images.
    config = T.Glm4vVisionConfig(
        depth=2,
        hidden_size=32,
        out_hidden_size=32,
        intermediate_size=64,
        num_heads=2,
        image_size=16,
        patch_size=4,
        spatial_merge_size=2,
        temporal_patch_size=2,
    )
    model = T.Glm4vVisionModel(config).eval()
    args, kwargs = build_example_inputs(model)
    assert list(kwargs) == ["grid_thw", "hidden_states"]
    assert kwargs["hidden_states"].shape == (4 * 16, 3 * 2 * 4 * 4)
    with torch.no_grad():
        out = model(*args, **kwargs)
    assert out.pooler_output.shape == (4 * 4, 32)


def test_idefics_style_models_get_several_images_per_sample_dimension():
    # Idefics2 takes (B, images, C, H, W); its perceiver resampler emits 4 latents an image.
    config = T.Idefics2Config(
        vision_config=dict(VISION, image_size=32, patch_size=8),
        perceiver_config=dict(
            hidden_size=32,
            resampler_n_latents=4,
            resampler_depth=1,
            resampler_n_heads=2,
            resampler_head_dim=8,
            num_key_value_heads=1,
        ),
        text_config=dict(TEXT, model_type="mistral"),
        image_token_id=IMAGE_TOKEN,
    )
    model = T.Idefics2Model(config)
    _, kwargs = build_example_inputs(model)
    assert kwargs["pixel_values"].shape == (2, 1, 3, 32, 32)
    assert _image_tokens(kwargs) == [4, 4]
    _patch(model)


@pytest.mark.parametrize("layout", ["frames first", "mel first"])
def test_spectrogram_encoders_get_the_layout_their_forward_runs_on(layout):
    if layout == "frames first":  # Parakeet: (B, T, mel), subsampled 8x by convolutions
        model = T.ParakeetEncoder(
            T.ParakeetEncoderConfig(
                hidden_size=32,
                num_hidden_layers=2,
                num_attention_heads=4,
                intermediate_size=64,
                num_mel_bins=16,
                subsampling_conv_channels=8,
            )
        )
        expected = (2, 64, 16)
    else:  # Voxtral Realtime: (B, mel, T), convolutions over the mel bins as channels
        model = T.VoxtralRealtimeEncoder(
            T.VoxtralRealtimeEncoderConfig(
                hidden_size=32,
                num_hidden_layers=2,
                num_attention_heads=4,
                num_key_value_heads=4,
                head_dim=8,
                intermediate_size=64,
                num_mel_bins=16,
            )
        )
        expected = (2, 16, 64)
    _, kwargs = build_example_inputs(model)
    assert kwargs["input_features"].shape == expected
    _patch(model)


def test_codecs_get_a_waveform_of_a_few_hops():
    config = T.EncodecConfig(
        num_filters=4,
        hidden_size=16,
        codebook_size=16,
        num_lstm_layers=1,
        upsampling_ratios=[4, 2],
        num_residual_layers=1,
    )
    model = T.EncodecModel(config)
    _, kwargs = build_example_inputs(model)
    assert kwargs["input_values"].shape == (2, 1, 4 * 8)  # (B, audio channels, 4 hops of 4 x 2 samples)
    _patch(model)


def test_a_waveform_is_a_few_frames_of_its_stages_strides():
    # Muse Spark's audio encoder patches the waveform by 16, then its stages by 6, 5 and 4 (`patch_sizes`): its
    # forward refuses a length that is no multiple of them (1 s at 16 kHz is not).
    config = T.MuseSparkAudioConfig(hidden_sizes=[16, 16, 16, 16], depths=[1, 1, 1, 1], out_hidden_size=16)
    model = T.MuseSparkAudioModel(config)
    _, kwargs = build_example_inputs(model)
    assert kwargs["input_values"].shape[-1] == 4 * 16 * 6 * 5 * 4
    _patch(model)


def test_a_waveform_whose_config_names_no_rate_is_one_second_of_speech():
    # PE Audio's encoder takes a waveform but its config has no hop, frame size or sampling rate: 16 kHz.
    model = T.PeAudioEncoder(
        T.PeAudioEncoderConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=4,
            head_dim=8,
        )
    )
    _, kwargs = build_example_inputs(model)
    assert kwargs["input_values"].shape[-1] == 16_000
    _patch(model)


def test_a_model_whose_input_no_rule_builds_gets_an_error_naming_it():
    model = T.DecisionTransformerModel(T.DecisionTransformerConfig(state_dim=3, act_dim=2, hidden_size=32, n_layer=1, n_head=2))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ExampleInputsError, match=r"takes 'states'.*pass example_inputs="):
        build_example_inputs(model)
    with pytest.raises(ExampleInputsError, match=r"takes 'states'.*pass example_inputs="):
        apply_drop_path(model, 0.1)
    assert not is_patched(model)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def _moonshine():
    return T.MoonshineModel(T.MoonshineConfig(
        vocab_size=99, hidden_size=32, intermediate_size=64, encoder_num_hidden_layers=1, decoder_num_hidden_layers=1,
        encoder_num_attention_heads=4, decoder_num_attention_heads=4,
    ))


def test_a_main_input_the_forward_does_not_require_is_still_built():
    # Moonshine's forward takes input_values=None and runs its decoder alone without them: inputs without the
    # audio would patch the decoder only, silently leaving the encoder out. Its config sizes no waveform: 1 s
    # at 16 kHz, and both stacks are patched.
    model = _moonshine()
    _, kwargs = build_example_inputs(model)
    assert kwargs["input_values"].shape == (2, 16_000) and "decoder_input_ids" in kwargs
    report = _patch(model)
    assert {s.path.split(".")[0] for s in report.sites} == {"encoder", "decoder"}


def test_a_main_input_the_forward_does_not_require_is_named_where_it_cannot_be_built(monkeypatch):
    # As if no audio rule sized Moonshine's waveform: the decoder alone would run, so the error names the input.
    import droppath_surgery.integrations.inputs as inputs

    model = _moonshine()
    monkeypatch.setattr(inputs, "_audio_candidates", lambda *a, **k: [])
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ExampleInputsError, match=r"MoonshineModel takes 'input_values'.*pass example_inputs="):
        apply_drop_path(model, 0.1)
    assert not is_patched(model)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def _q_former_parts() -> dict:
    """A tiny vision tower, Q-Former and OPT decoder: the sub-configs of Blip-2 and InstructBLIP."""
    return dict(
        vision_config=dict(VISION, intermediate_size=64, image_size=32, patch_size=8, num_hidden_layers=1),
        qformer_config=dict(VISION, num_hidden_layers=1, encoder_hidden_size=32, vocab_size=99),
        text_config=dict(model_type="opt", vocab_size=99, hidden_size=32, ffn_dim=64, num_hidden_layers=1,
                         num_attention_heads=4, word_embed_proj_dim=32),
    )


def test_instructblip_gets_its_q_former_instruction_and_a_placeholder_per_query():
    config = T.InstructBlipConfig(
        **_q_former_parts(),
        num_query_tokens=4, image_token_index=IMAGE_TOKEN,
    )
    model = T.InstructBlipModel(config)
    _, kwargs = build_example_inputs(model)
    assert kwargs["qformer_input_ids"].shape[0] == 2 and int(kwargs["qformer_input_ids"].max()) < 99
    assert _image_tokens(kwargs) == [4, 4]
    _patch(model)


def test_a_vlm_whose_config_has_no_image_token_gets_an_error_naming_the_field_and_the_fix_works():
    # Blip-2's default config leaves image_token_id None; its forward compares input_ids with it and fails deep
    # inside (a bool has no unsqueeze). The error names the field; setting it as told makes the model patchable.
    config = T.Blip2Config(
        **_q_former_parts(),
        num_query_tokens=4,
    )
    model = T.Blip2Model(config)
    with pytest.raises(ExampleInputsError, match=r"image_token_id is None.*set config.image_token_id"):
        apply_drop_path(model, 0.1)
    assert not is_patched(model)
    model.config.image_token_id = IMAGE_TOKEN
    _, kwargs = build_example_inputs(model)
    # One placeholder per Q-Former query: its forward scatters the 4 queries of each image over the placeholders of
    # the whole batch, so fewer would hand sample 0's queries to sample 1 (its get_image_features returns the
    # vision tower's features, whose count says nothing here).
    assert _image_tokens(kwargs) == [4, 4]
    report = _patch(model)
    # OPT runs its MLP on (B x L, D) rows: each sample's L consecutive rows share one decision.
    fc2 = [s for s in report.sites if s.path.endswith("fc2")]
    assert len(fc2) == 1 and fc2[0].rows_per_sample == kwargs["input_ids"].shape[1] and report.skipped == ()


def test_a_config_without_a_position_limit_gets_text_of_the_usual_length():
    # XLNet's max_position_embeddings is -1 (relative positions, no limit): it is no length.
    model = T.XLNetModel(T.XLNetConfig(vocab_size=99, d_model=32, n_layer=2, n_head=4, d_inner=64))
    _, kwargs = build_example_inputs(model)
    assert kwargs["input_ids"].shape == (2, 12)
    _patch(model)


def test_a_vlm_whose_image_features_fail_gets_an_error_naming_pixel_values_and_input_ids():
    # Idefics3 pixel-shuffles its 3 x 3 patch grid by 2: no layout of the example image works.
    config = T.Idefics3Config(
        vision_config=dict(VISION, image_size=24, patch_size=8),
        scale_factor=2,
        text_config=dict(TEXT, model_type="llama"),
        image_token_id=IMAGE_TOKEN,
    )
    with pytest.raises(ExampleInputsError, match="'pixel_values' and 'input_ids'.*image token"):
        build_example_inputs(T.Idefics3Model(config))


def test_a_vlm_whose_image_token_is_outside_its_vocabulary_gets_an_error_saying_so():
    # LLaVA's default config: image_token_index 32000, a 32000-token vocabulary (checkpoints resize it).
    config = T.LlavaConfig(
        vision_config=T.CLIPVisionConfig(**VISION, image_size=32, patch_size=8),
        text_config=T.LlamaConfig(**TEXT),
        image_token_index=99,
    )
    with pytest.raises(ExampleInputsError, match="image token id 99 is outside its 99-token embedding"):
        build_example_inputs(T.LlavaModel(config))


def test_time_series_models_get_a_series_of_their_context_with_masks_and_time_features():
    # PatchTST: (B, context, channels). Time Series Transformer: context plus the longest lag, all observed,
    # with its time features; its encoder and decoder are both patched.
    patchtst = T.PatchTSTModel(T.PatchTSTConfig(
        num_input_channels=2, context_length=16, patch_length=4, patch_stride=4, d_model=32, num_attention_heads=2,
        num_hidden_layers=2, ffn_dim=64,
    ))
    _, kwargs = build_example_inputs(patchtst)
    assert kwargs["past_values"].shape == (2, 16, 2)
    assert len(_patch(patchtst).sites) == 4
    tst = T.TimeSeriesTransformerModel(T.TimeSeriesTransformerConfig(
        prediction_length=4, context_length=8, lags_sequence=[1, 2, 3], num_time_features=2, d_model=32,
        encoder_layers=1, decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=2,
        encoder_ffn_dim=64, decoder_ffn_dim=64,
    ))
    _, kwargs = build_example_inputs(tst)
    assert kwargs["past_values"].shape == (2, 11) and kwargs["past_time_features"].shape == (2, 11, 2)
    assert torch.equal(kwargs["past_observed_mask"], torch.ones(2, 11))
    assert {s.path.split(".")[0] for s in _patch(tst).sites} == {"encoder", "decoder"}


def test_llava_next_crops_folded_into_the_tower_batch_are_dropped_per_sample():
    # Each image is 1 + 2 crops run through the vision tower as one batch of B x 3: each sample's 3 rows share a
    # decision. The check pass that shows it cannot roll sample 0's image_sizes (another size takes another number
    # of crops and image tokens), so it changes the sample's pixels only.
    config = T.LlavaNextConfig(
        vision_config=dict(model_type="clip_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=2, image_size=28, patch_size=14),
        text_config=dict(TEXT),
        image_grid_pinpoints=[[28, 56], [56, 28]],
        image_token_index=IMAGE_TOKEN,
    )
    model = T.LlavaNextModel(config)
    _, kwargs = build_example_inputs(model)
    assert kwargs["pixel_values"].shape[:2] == (2, 3) and kwargs["image_sizes"].tolist() == [[28, 56]] * 2
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing left out
        report = apply_drop_path(model, 0.1)
    tower = [s for s in report.sites if s.path.startswith("vision_tower")]
    assert len(tower) == 4 and all(s.rows_per_sample == 3 for s in tower)


TOWER = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)


def test_a_temporal_patch_named_patch_temporal_widens_the_flattened_rows():
    # Muse Spark's tower names its temporal patch size patch_temporal: rows of 3 x 2 x 14**2, not 3 x 14**2.
    config = T.MuseSparkVisionConfig(**TOWER, patch_temporal=2, merge_size=2)
    model = T.MuseSparkVisionModel(config).eval()
    args, kwargs = build_example_inputs(model)
    assert kwargs["pixel_values"].shape[1] == 3 * 2 * 14 * 14
    with torch.no_grad():
        model(*args, **kwargs)


def test_a_vision_tower_alone_gets_the_first_patch_layout_it_runs_on():
    # Kimi K2.5's tower embeds (patches, C, p, p) with a convolution: the flattened rows are tried, then these.
    config = T.Kimi_K25VisionConfig(**TOWER, patch_size=14, merge_kernel_size=[2, 2])
    model = T.Kimi_K25VisionModel(config)
    _, kwargs = build_example_inputs(model)
    assert kwargs["pixel_values"].shape[1:] == (3, 14, 14)
    _patch(model)


def test_a_tower_taking_merge_sizes_gets_the_merge_of_each_image():
    config = T.VideoLlama3VisionConfig(**TOWER, patch_size=4)
    model = T.VideoLlama3VisionModel(config)
    _, kwargs = build_example_inputs(model)
    assert kwargs["merge_sizes"].tolist() == [1] * len(kwargs["grid_thw"])
    _patch(model)


def test_a_tower_taking_merged_channels_last_blocks_gets_them_with_a_grid_of_merged_tokens():
    # Inkling 2: pixel_values (tokens, m*p, m*p, C), image_grid_thw counted in merged tokens.
    config = T.Inkling2VisionConfig(**TOWER, patch_size=4, spatial_merge_size=2, posemb_grid_size=4)
    model = T.Inkling2VisionModel(config)
    _, kwargs = build_example_inputs(model)
    grid = kwargs["image_grid_thw"]
    assert kwargs["pixel_values"].shape == (int(grid.prod(-1).sum()), 8, 8, 3)
    _patch(model)


def test_a_tower_taking_patch_positions_gets_a_grid_of_whole_pooling_kernels():
    # Gemma 4's tower: (B, N, 3 p**2) patches and their (x, y), pooled 3 x 3: a 6 x 6 grid, 4 features an image.
    config = T.Gemma4VisionConfig(**TOWER, num_key_value_heads=4, head_dim=8, patch_size=4, pooling_kernel_size=3)
    model = T.Gemma4VisionModel(config)
    _, kwargs = build_example_inputs(model)
    assert kwargs["pixel_values"].shape == (2, 36, 3 * 4 * 4)
    assert kwargs["pixel_position_ids"].shape == (2, 36, 2)
    assert kwargs["pixel_position_ids"][0, 7].tolist() == [1, 1]  # (x, y) of the second row's second patch
    _patch(model)


def test_a_vlm_built_without_its_vision_tower_is_probed_on_text():
    # Gemma 4's default config has vision_config None: no vision tower, its get_image_features cannot run.
    config = T.Gemma4Config(text_config=dict(TEXT, head_dim=8, global_head_dim=8, hidden_size_per_layer_input=8,
                                             vocab_size_per_layer_input=99), vision_config=None, audio_config=None,
                            image_token_id=IMAGE_TOKEN)
    model = T.Gemma4Model(config)
    _, kwargs = build_example_inputs(model)
    assert "pixel_values" not in kwargs and "input_ids" in kwargs
    _patch(model)


def test_a_vlm_with_a_linear_patch_embedding_gets_flattened_patches():
    # Fuyu embeds (patches, C x p**2) rows with a linear layer: 32 x 32 images of 8 x 8 patches, 16 an image.
    config = T.FuyuConfig(text_config=dict(TEXT, model_type="persimmon"), image_size=32, patch_size=8,
                          hidden_size=32, image_token_id=IMAGE_TOKEN, vocab_size=99)
    model = T.FuyuModel(config)
    _, kwargs = build_example_inputs(model)
    assert kwargs["pixel_values"].shape == (2 * 16, 3 * 8 * 8)
    assert _image_tokens(kwargs) == [16, 16]
    _patch(model)


def test_a_second_tower_gets_its_own_pixel_values_at_its_config_size():
    # DeepSeek-VL hybrid: high_res_pixel_values for its high_res_vision_config (SAM) at 64 px, SigLIP's at 32.
    config = T.DeepseekVLHybridConfig(
        vision_config=dict(VISION, model_type="siglip_vision_model", image_size=32, patch_size=8),
        high_res_vision_config=dict(model_type="sam_vision_model", hidden_size=32, output_channels=16,
                                    num_hidden_layers=2, num_attention_heads=4, image_size=64, patch_size=8,
                                    window_size=2, global_attn_indexes=[1], mlp_dim=64),
        text_config=dict(TEXT, model_type="llama"),
        image_token_id=IMAGE_TOKEN,
    )
    model = T.DeepseekVLHybridModel(config)
    _, kwargs = build_example_inputs(model)
    assert kwargs["pixel_values"].shape == (2, 3, 32, 32)
    assert kwargs["high_res_pixel_values"].shape == (2, 3, 64, 64)
    assert _image_tokens(kwargs) == [16, 16]
    _patch(model)


def test_image_features_that_require_a_tile_mask_get_one_flag_per_tile():
    # Granite Docling's get_image_features requires pixel_attention_mask (B, tiles): 4 x 4 patches shuffled 2 x 2.
    config = T.GraniteDoclingConfig(
        vision_config=dict(VISION, image_size=32, patch_size=8, scale_factor=2, out_hidden_size=32,
                           deepstack_visual_indexes=[0, 1]),
        text_config=dict(TEXT, pad_token_id=0, bos_token_id=0, eos_token_id=0),
        image_token_id=IMAGE_TOKEN,
        pad_token_id=0,
    )
    model = T.GraniteDoclingModel(config)
    _, kwargs = build_example_inputs(model)
    assert kwargs["pixel_values"].shape == (2, 1, 3, 32, 32)
    assert kwargs["pixel_attention_mask"].tolist() == [[True], [True]]
    assert _image_tokens(kwargs) == [4, 4]
    _patch(model)


def test_tiled_images_get_their_aspect_ratio_and_the_text_a_mask_of_their_tiles():
    # Mllama: (B, images, max_num_tiles, C, H, W), aspect_ratio_ids 1 (the first supported ratio: one tile of two),
    # aspect_ratio_mask of the tiles, and the text's cross_attention_mask (B, L, images, tiles).
    config = T.MllamaConfig(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_global_layers=1,
                           attention_heads=4, image_size=16, patch_size=8, max_num_tiles=2,
                           supported_aspect_ratios=[[1, 1], [1, 2]], intermediate_layers_indices=[0],
                           vision_output_dim=64),
        text_config=dict(TEXT, cross_attention_layers=[1], pad_token_id=0, bos_token_id=1, eos_token_id=2),
        image_token_index=IMAGE_TOKEN,
    )
    model = T.MllamaModel(config)
    _, kwargs = build_example_inputs(model)
    assert kwargs["pixel_values"].shape == (2, 1, 2, 3, 16, 16)
    assert kwargs["aspect_ratio_ids"].tolist() == [[1], [1]]
    assert kwargs["aspect_ratio_mask"].tolist() == [[[1, 0]], [[1, 0]]]
    assert kwargs["cross_attention_mask"].shape == (2, kwargs["input_ids"].shape[1], 1, 2)
    _patch(model)


def test_images_the_text_cross_attends_to_get_an_image_attention_mask():
    # Idefics (1): (B, images, C, H, W) and every text token attending to its sample's image, (B, L, images).
    config = T.IdeficsConfig(
        **TEXT,
        vision_config=dict(embed_dim=32, image_size=16, patch_size=8, num_hidden_layers=2, num_attention_heads=4,
                           intermediate_size=64),
        perceiver_config=dict(use_resampler=False),
        cross_layer_interval=1,
        pad_token_id=0, bos_token_id=1, eos_token_id=2,
    )
    model = T.IdeficsModel(config)
    _, kwargs = build_example_inputs(model)
    assert kwargs["pixel_values"].shape == (2, 1, 3, 16, 16)
    assert kwargs["image_attention_mask"].shape == (2, kwargs["input_ids"].shape[1], 1)
    _patch(model)


def test_an_encoder_decoder_vlm_counts_its_image_tokens_on_its_encoder():
    # T5Gemma 2: get_image_features and the vision config are its encoder's; 16 patches pooled to 4 tokens an image.
    gemma = dict(TEXT, head_dim=8, layer_types=["sliding_attention", "full_attention"], sliding_window=8,
                 pad_token_id=0, bos_token_id=1, eos_token_id=2)
    config = T.T5Gemma2Config(
        encoder=dict(text_config=gemma, vision_config=dict(VISION, image_size=32, patch_size=8), mm_tokens_per_image=4,
                     boi_token_index=95, eoi_token_index=96, image_token_index=IMAGE_TOKEN - 1),
        decoder=gemma,
        image_token_index=IMAGE_TOKEN - 1,
        eoi_token_index=96,
        vocab_size=99,
    )
    model = T.T5Gemma2Model(config)
    _, kwargs = build_example_inputs(model)
    assert kwargs["pixel_values"].shape == (2, 3, 32, 32)
    assert (kwargs["input_ids"] == IMAGE_TOKEN - 1).sum(1).tolist() == [4, 4]
    _patch(model)


def test_a_projector_taking_only_some_patch_counts_gets_an_image_of_the_smallest():
    # Aria's projector maps 16 patches to 4 queries and no other count: a 32 px image of 8 px patches, not 64 px.
    config = T.AriaConfig(
        vision_config=dict(VISION, image_size=64, patch_size=8, model_type="idefics3_vision"),
        text_config=dict(TEXT, moe_num_experts=2, moe_topk=1, moe_num_shared_experts=1, moe_intermediate_size=16,
                         pad_token_id=0, bos_token_id=1, eos_token_id=2),
        projector_patch_to_query_dict={16: 4},
        image_token_id=IMAGE_TOKEN,
    )
    model = T.AriaModel(config)
    _, kwargs = build_example_inputs(model)
    assert kwargs["pixel_values"].shape == (2, 3, 32, 32)
    assert _image_tokens(kwargs) == [4, 4]
    _patch(model)


def test_an_image_scaled_down_before_it_is_cut_into_patches_is_large_enough_for_one_patch_at_the_smallest_scale():
    # DepthPro: 16-pixel patches of the image scaled by 1/16 need a 256-pixel image (224 holds none).
    tower = dict(model_type="dinov2", image_size=16, patch_size=8, hidden_size=32, num_hidden_layers=2,
                 num_attention_heads=2, intermediate_size=64)
    config = T.DepthProConfig(
        patch_size=16, image_model_config=tower, patch_model_config=tower, fov_model_config=tower,
        scaled_images_ratios=[0.0625, 1], scaled_images_overlap_ratios=[0.0, 0.0], scaled_images_feature_dims=[16, 16],
        intermediate_hook_ids=[1, 0], intermediate_feature_dims=[16, 16], fusion_hidden_size=16,
    )
    model = T.DepthProModel(config).eval()
    _, kwargs = build_example_inputs(model)
    assert kwargs["pixel_values"].shape == (2, 3, 256, 256)
    with torch.no_grad():
        out = model(**kwargs)
    assert out.last_hidden_state.shape[0] == 2


def test_image_queries_placed_by_a_position_mask_get_text_positions_marked_for_each_query():
    # Kosmos-2: no image token; the forward writes latent_query_num query features where
    # image_embeds_position_mask is 1 (and fails without the mask).
    config = T.Kosmos2Config(
        text_config=dict(vocab_size=99, embed_dim=32, layers=2, attention_heads=4, ffn_dim=64, max_position_embeddings=64),
        vision_config=dict(**VISION, image_size=32, patch_size=8),
        latent_query_num=4,
    )
    model = T.Kosmos2Model(config)
    _, kwargs = build_example_inputs(model)
    mask = kwargs["image_embeds_position_mask"]
    assert mask.shape == kwargs["input_ids"].shape == (2, 16)  # 12 text tokens and 4 queries
    assert mask.tolist() == [[0] * 4 + [1] * 4 + [0] * 8] * 2  # after the left padding of sample 1 (3 tokens)
    report = apply_drop_path(model, 0.1)
    assert report.verified is True
    assert [s.block_path.split(".")[0] for s in report.sites] == ["vision_model"] * 4 + ["text_model"] * 4


def test_a_keypoint_matcher_gets_a_pair_of_images_the_second_mirroring_the_first():
    # LightGlue: the forward takes (B, 2, C, H, W) and fails on every single-image layout.
    config = T.LightGlueConfig(
        keypoint_detector_config=dict(model_type="superpoint", encoder_hidden_sizes=[8, 8, 16, 16],
                                      decoder_hidden_size=32, descriptor_decoder_dim=32, max_keypoints=32),
        descriptor_dim=32, num_hidden_layers=2, num_attention_heads=2,
    )
    config.image_size = 64  # (no such field: 224 otherwise) a small image keeps the test quick
    model = T.LightGlueForKeypointMatching(config)
    _, kwargs = build_example_inputs(model)
    pair = kwargs["pixel_values"]
    assert pair.shape == (2, 2, 3, 64, 64)
    assert torch.equal(pair[:, 1], pair[:, 0].flip(-1))
    report = apply_drop_path(model, 0.1)
    assert report.verified is True
    assert [s.block_path for s in report.sites] == ["transformer_layers.0"] * 2 + ["transformer_layers.1"] * 2


def test_a_model_placing_image_patches_by_the_texts_boxes_gets_a_box_per_token():
    # UDOP: its forward takes visual_bbox and places each image patch by the text's bbox (None fails).
    config = T.UdopConfig(vocab_size=99, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4, image_size=32,
                          patch_size=8, max_2d_position_embeddings=64, relative_attention_num_buckets=8)
    model = T.UdopModel(config)
    _, kwargs = build_example_inputs(model)
    box = kwargs["bbox"]
    assert box.shape == (*kwargs["input_ids"].shape, 4)
    assert 0 <= box.min() and box.max() <= 1 and bool((box[..., :2] <= box[..., 2:]).all())
    report = apply_drop_path(model, 0.1)
    assert report.verified is True and len(report.sites) == 10  # 2 encoder blocks x 2 layers, 2 decoder x 3


def test_a_text_tower_inheriting_pixel_values_as_its_main_input_gets_text():
    # SAM 3 LiteText's text model keeps its base class's main_input_name, pixel_values, which its forward does
    # not take: it is probed on input_ids.
    from transformers.models.sam3_lite_text import configuration_sam3_lite_text as C
    from transformers.models.sam3_lite_text import modeling_sam3_lite_text as M

    config = C.Sam3LiteTextTextConfig(vocab_size=99, hidden_size=32, intermediate_size=64, projection_dim=32,
                                      num_hidden_layers=4, num_attention_heads=4)
    model = M.Sam3LiteTextTextModel(config)
    assert model.main_input_name == "pixel_values"
    _, kwargs = build_example_inputs(model)
    assert set(kwargs) == {"input_ids", "attention_mask"} and kwargs["input_ids"].shape == (2, 12)
    report = apply_drop_path(model, 0.1, schedule="uniform")
    assert report.verified is True
    # repmixer blocks first and last (their token mixer a per-channel convolution, left out), attention blocks between
    assert [s.block_path for s in report.sites] == ["layers.0", "layers.1", "layers.1", "layers.2", "layers.2", "layers.3"]


def test_pix2struct_style_patches_get_their_row_and_column_and_their_queries_text_positions():
    # Kosmos-2.5: flattened_patches (B, N, 2 + p*p*C), no pixel_values; its latent_query_num image features go
    # where image_embeds_position_mask marks. Without the patches its vision tower is never run.
    config = T.Kosmos2_5Config(
        text_config=dict(vocab_size=99, embed_dim=32, layers=2, attention_heads=4, ffn_dim=64, max_position_embeddings=64),
        vision_config=dict(hidden_size=32, patch_embed_hidden_size=48, intermediate_size=64, head_dim=8,
                           num_hidden_layers=2, num_attention_heads=4, max_num_patches=64),
        latent_query_num=4,
    )
    model = T.Kosmos2_5Model(config)
    _, kwargs = build_example_inputs(model)
    patches = kwargs["flattened_patches"]
    assert patches.shape == (2, 16, 2 + 48)  # a 4 x 4 grid
    assert patches[0, :5, :2].tolist() == [[1, 1], [1, 2], [1, 3], [1, 4], [2, 1]]  # (row, col) from 1: 0 pads
    assert kwargs["image_embeds_position_mask"].sum(1).tolist() == [4, 4]
    report = apply_drop_path(model, 0.1)
    assert report.verified is True
    assert [s.block_path.split(".")[0] for s in report.sites] == ["vision_model"] * 4 + ["text_model"] * 4


def test_image_tokens_pooling_patches_get_their_pooling_indices_and_grids():
    # Molmo2: crops of 5 x 5 patches, each image token pooling a 2 x 2 square of them (-1 past the edge): 3 x 3
    # tokens an image. Its get_image_features requires the pooling, grids and crop counts.
    config = T.Molmo2Config(
        text_config=dict(vocab_size=99, additional_vocab_size=8, hidden_size=32, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, intermediate_size=64, head_dim=8),
        vision_config=dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                           intermediate_size=64, patch_size=4, num_position_embeddings=25, head_dim=8, image_size=[20, 20]),
        adapter_config=dict(hidden_size=32, text_hidden_size=32, num_attention_heads=4, num_key_value_heads=4,
                            head_dim=8, intermediate_size=64, vision_feature_layer=[-1]),
        image_token_id=IMAGE_TOKEN, image_start_token_id=95, low_res_image_start_token_id=94, image_end_token_id=96,
        frame_start_token_id=93, frame_end_token_id=92,
    )
    model = T.Molmo2Model(config)
    _, kwargs = build_example_inputs(model)
    assert kwargs["pixel_values"].shape == (2, 1, 25, 48)  # an image a sample, one crop of 25 patches of 4 x 4 x 3
    assert kwargs["image_grids"].tolist() == [[3, 3, 0, 0]] * 2 and kwargs["image_num_crops"].tolist() == [1, 1]
    pooling = kwargs["image_token_pooling"]
    assert pooling.shape == (18, 4) and pooling[:3].tolist() == [[0, 1, 5, 6], [2, 3, 7, 8], [4, -1, 9, -1]]
    assert _image_tokens(kwargs) == [9, 9]
    report = apply_drop_path(model, 0.1)
    assert report.verified is True
    assert [s.block_path.split(".")[0] for s in report.sites] == ["vision_tower"] * 4 + ["language_model"] * 4


def test_a_vlm_with_a_video_tower_of_its_own_gets_a_clip_and_its_video_tokens_beside_the_images():
    # Video-LLaVA: images and videos go to separate CLIP towers; without a clip its video tower is never run.
    config = T.VideoLlavaConfig(
        vision_config=T.CLIPVisionConfig(**VISION, image_size=32, patch_size=8),
        text_config=T.LlamaConfig(**TEXT),
        image_token_index=IMAGE_TOKEN,
        video_token_index=97,
        vision_feature_layer=-1,
    )
    model = T.VideoLlavaModel(config)
    _, kwargs = build_example_inputs(model)
    assert kwargs["pixel_values_videos"].shape == (2, 2, 3, 32, 32)  # VIDEO_FRAMES frames of the example image
    assert _image_tokens(kwargs) == [16, 16]  # the CLS feature dropped
    assert (kwargs["input_ids"] == 97).sum(1).tolist() == [34, 34]  # 2 frames x (16 patches + CLS)
    report = apply_drop_path(model, 0.1)
    assert report.verified is True
    towers = [s.block_path.split(".")[0] for s in report.sites]
    assert towers == ["image_tower"] * 4 + ["video_tower"] * 4 + ["language_model"] * 4


def test_a_video_encoder_on_a_timm_tower_gets_a_clip_of_the_towers_image_size():
    # PE Video: its config counts no frames and names only the timm architecture of its frame tower; the clip
    # is VIDEO_FRAMES frames of that tower's patch_embed.img_size (timm's test_vit: 160).
    from transformers.models.pe_video import configuration_pe_video as C
    from transformers.models.pe_video import modeling_pe_video as M

    config = C.PeVideoEncoderConfig(
        vision_config=dict(model_type="timm_wrapper", architecture="test_vit", num_classes=32, do_pooling=True),
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        head_dim=8,
    )
    model = M.PeVideoEncoder(config)
    _, kwargs = build_example_inputs(model)
    assert kwargs["pixel_values_videos"].shape == (2, 2, 3, 160, 160)
    report = apply_drop_path(model, 0.1)
    assert report.verified is True
    assert {s.block_path.rsplit(".", 1)[0] for s in report.sites} == {"embedder.vision_model.timm_model.blocks"}


def test_an_audio_video_encoder_gets_a_clip_beside_its_waveform():
    # PE Audio-Video's encoder: main input input_values, but its forward also runs its video encoder, which reads
    # pixel_values_videos (optional in the signature, None -> AttributeError): the waveform alone does not run.
    small = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=4, head_dim=8)
    config = T.PeAudioVideoEncoderConfig(
        audio_config=dict(model_type="pe_audio_encoder", **small),
        video_config=dict(model_type="pe_video_encoder", **small, vision_config=dict(
            model_type="timm_wrapper", architecture="test_vit", num_classes=32, do_pooling=True)),
        **small,
    )
    model = T.PeAudioVideoEncoder(config)
    _, kwargs = build_example_inputs(model)
    assert kwargs["input_values"].shape == (2, 1, 16_000)
    assert kwargs["pixel_values_videos"].shape == (2, 2, 3, 160, 160)
    report = apply_drop_path(model, 0.1)
    assert report.verified is True and report.sites and report.not_run == ()


def test_a_navit_packed_tower_gets_one_row_of_every_images_patches_and_their_sizes():
    # MiniCPM-V's tower: (1, C, p, N x p) and each image's (h, w) in patches, 4 x 4 (its 2 x 2 windows merge).
    config = T.MiniCPMOcrVisionConfig(**TOWER, image_size=16, patch_size=4, insert_layer_id=0, window_kernel_size=(2, 2))
    model = T.MiniCPMOcrVisionModel(config)
    _, kwargs = build_example_inputs(model)
    assert list(kwargs) == ["target_sizes", "pixel_values"]
    assert kwargs["target_sizes"].tolist() == [[4, 4]] * 4
    assert kwargs["pixel_values"].shape == (1, 3, 4, 4 * 16 * 4)
    _patch(model)


def test_a_vlm_whose_tower_embeds_spatio_temporal_patch_cubes_gets_the_image_as_channels_last_cubes():
    # Inkling's tower embeds (patches, temporal_patch_size, p, p, C) cubes: a 32 px image, 16 patches of 8 px.
    config = T.InklingConfig(
        text_config=dict(TEXT, head_dim=8, swa_num_attention_heads=4, swa_num_key_value_heads=2, swa_head_dim=8,
                         sliding_window_size=8, d_rel=8, rel_extent=16, layer_types=["hybrid_sliding", "hybrid"],
                         moe_intermediate_size=16, n_routed_experts=2, num_experts_per_tok=1, n_shared_experts=1,
                         pad_token_id=0, bos_token_id=1, eos_token_id=2),
        vision_config=dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, patch_size=8,
                           temporal_patch_size=2, text_hidden_size=32, image_size=32),
        audio_config=dict(text_hidden_size=32, n_mel_bins=8, mel_vocab_size=16),
        image_token_id=IMAGE_TOKEN, audio_token_id=97, image_bos_token_id=96, audio_bos_token_id=95,
    )
    model = T.InklingModel(config)
    _, kwargs = build_example_inputs(model)
    assert kwargs["pixel_values"].shape == (2 * 16, 2, 8, 8, 3)
    assert _image_tokens(kwargs) == [16, 16]
    _patch(model)


def test_a_tower_alone_is_not_given_packed_patches_whose_rows_would_pass_for_samples():
    # Inkling's tower alone runs on the cubes too, but their first dimension counts patches, not samples.
    config = T.InklingVisionConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, patch_size=8,
                                   temporal_patch_size=2, text_hidden_size=32, image_size=32)
    _, kwargs = build_example_inputs(T.InklingVisionModel(config))
    assert kwargs["pixel_values"].shape == (2, 3, 32, 32)


def test_a_vlm_counting_images_it_is_not_given_gets_an_error_naming_them():
    # GLM-Image's images_per_sample counts the grids of the images to generate too: no config field gives them.
    config = T.GlmImageConfig(
        vision_config=dict(hidden_size=32, depth=1, num_heads=4, intermediate_size=64, patch_size=4, image_size=16,
                           spatial_merge_size=1, out_hidden_size=32),
        text_config=dict(TEXT, num_hidden_layers=1, vision_vocab_size=64, pad_token_id=0, bos_token_id=1,
                         eos_token_id=2),
        vq_config=dict(embed_dim=8, num_embeddings=64, latent_channels=8, in_channels=3, base_channels=8,
                       channel_multiplier=[1], num_res_blocks=1),
        image_token_id=IMAGE_TOKEN,
    )
    with pytest.raises(ExampleInputsError, match="'images_per_sample'.*example_inputs="):
        build_example_inputs(T.GlmImageModel(config))


# -- a vocabulary held by a nested config ----------------------------------------------------------------


def test_a_robot_policy_gets_text_from_its_nested_vlm_vocabulary_and_an_error_naming_its_actions():
    # PI0's config has no vocab_size (its PaliGemma's text config and its action expert's do): the builder reads
    # the rows of the model's input embedding and gets past the text, to the action embeddings no config gives.
    small = dict(TEXT, num_hidden_layers=1, num_key_value_heads=1, head_dim=8, model_type="gemma")
    config = T.PI0Config(
        vlm_config=dict(model_type="paligemma", text_config=small, image_token_id=98,
                        vision_config=dict(model_type="siglip_vision_model", hidden_size=32, intermediate_size=64,
                                           num_hidden_layers=1, num_attention_heads=4, image_size=16, patch_size=8)),
        dit_config=small, chunk_size=4, max_action_dim=6, max_state_dim=6,
    )
    assert getattr(config, "vocab_size", None) is None
    with pytest.raises(ExampleInputsError, match="takes 'action_embeds'.*example_inputs="):
        build_example_inputs(T.PI0Model(config))


def test_an_encoder_decoder_without_an_input_embedding_gets_ids_every_nested_vocabulary_holds():
    # Dia: no vocab_size of its own, no get_input_embeddings; its encoder takes 256 ids, its decoder 1028.
    layers = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2, head_dim=16,
                  intermediate_size=64)
    config = T.DiaConfig(encoder_config=layers, decoder_config=dict(
        layers, cross_hidden_size=32, cross_num_attention_heads=2, cross_num_key_value_heads=2, cross_head_dim=16))
    _, kwargs = build_example_inputs(T.DiaModel(config))
    assert kwargs["input_ids"].shape == (2, 12)
    assert 0 <= int(kwargs["input_ids"].min()) and int(kwargs["input_ids"].max()) < config.encoder_config.vocab_size


def test_a_text_to_speech_pair_gets_phonemes_of_its_acoustic_models_vocabulary_and_is_patched():
    # FastSpeech2Conformer with HiFi-GAN: the vocabulary is its model_config's, the vocoder has none.
    model_config = T.FastSpeech2ConformerConfig(
        vocab_size=40, hidden_size=32, encoder_layers=1, decoder_layers=1, encoder_num_attention_heads=2,
        decoder_num_attention_heads=2, encoder_linear_units=64, decoder_linear_units=64, num_mel_bins=8,
        speech_decoder_postnet_layers=1, speech_decoder_postnet_units=16)
    vocoder_config = T.FastSpeech2ConformerHifiGanConfig(
        model_in_dim=8, upsample_initial_channel=16, upsample_rates=[2], upsample_kernel_sizes=[4],
        resblock_kernel_sizes=[3], resblock_dilation_sizes=[[1]])
    model = T.FastSpeech2ConformerWithHifiGan(T.FastSpeech2ConformerWithHifiGanConfig(
        model_config=model_config.to_dict(), vocoder_config=vocoder_config.to_dict()))
    _, kwargs = build_example_inputs(model)
    assert int(kwargs["input_ids"].max()) < 40
    _patch(model)


def test_a_config_without_a_vocab_size_reads_the_rows_of_the_models_input_embedding():
    config = T.BertConfig(**dict(TEXT, num_key_value_heads=None), type_vocab_size=2)
    model = T.BertModel(config)
    model.config.vocab_size = 0  # unset (its field takes ints only): the embedding's 99 rows say how many ids it takes
    _, kwargs = build_example_inputs(model)
    assert int(kwargs["input_ids"].max()) < 99 and kwargs["input_ids"].shape == (2, 12)
    _patch(model)


def test_a_qformer_alone_gets_queries_of_its_width_and_image_features_of_its_encoder_width():
    # Blip2QFormerModel requires query_embeds (hidden states, no ids); its cross-attention (every second layer,
    # layer 0) reads encoder_hidden_states of encoder_hidden_size: without them that branch would not run.
    model = T.Blip2QFormerModel(T.Blip2QFormerConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, encoder_hidden_size=48))
    _, kwargs = build_example_inputs(model)
    assert set(kwargs) == {"query_embeds", "encoder_hidden_states"}
    assert kwargs["query_embeds"].shape == (2, 12, 32) and kwargs["encoder_hidden_states"].shape == (2, 24, 48)
    assert len(_patch(model).sites) == 5  # 2 self-attention, 2 feed-forward, 1 cross-attention


@pytest.mark.parametrize("build", [
    # Perceiver without a preprocessor: inputs of d_model (24), not of its latents (32)
    lambda: (T.PerceiverModel(T.PerceiverConfig(
        num_latents=8, d_latents=32, d_model=24, num_blocks=1, num_self_attends_per_block=2,
        num_self_attention_heads=4, num_cross_attention_heads=4)), "inputs", 24, 6),
    # a word-timestamp head over an ASR encoder's frames: inputs_embeds of hidden_size
    lambda: (T.AutoModel.from_config(T.AutoConfig.for_model(
        "nemotron3_5_transcribe_word_timestamp", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2)), "inputs_embeds", 32, 4),
], ids=["perceiver", "inputs_embeds"])
def test_a_model_whose_input_is_hidden_states_gets_them_at_its_width(build):
    model, key, width, sites = build()
    _, kwargs = build_example_inputs(model)
    assert list(kwargs) == [key] and kwargs[key].shape == (2, 12, width) and kwargs[key].is_floating_point()
    assert len(_patch(model).sites) == sites


def test_a_context_of_concatenated_layers_gets_the_width_its_projection_reads():
    # MuseGlimmer's draft: noise embeddings of hidden_size, and the target model's hidden states of its 3
    # target_layer_ids concatenated (3 x 32), which no config field states: read off the Linear they go into.
    config = T.MuseGlimmerAssistantConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                          num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                                          target_layer_ids=[0, 1, 2])
    model = T.MuseGlimmerAssistantModel(config)
    _, kwargs = build_example_inputs(model)
    assert kwargs["noise_embeds"].shape == (2, 12, 32) and kwargs["context_hidden_states"].shape == (2, 24, 96)
    assert len(_patch(model).sites) == 4


class _Stack(torch.nn.Module):
    """Two residual MLP blocks over inputs_embeds (hidden_size 8), with or without a cross branch that reads
    optional encoder_hidden_states of 20 features, a width its config does not state."""

    __module__ = "transformers.models.custom"  # built as a transformers model would be (config, forward)
    main_input_name = "inputs_embeds"

    def __init__(self, cross: bool):
        super().__init__()
        self.config = T.PretrainedConfig(hidden_size=8)
        self.blocks = torch.nn.ModuleList(torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.GELU()) for _ in range(2))
        self.cross = torch.nn.Linear(20, 8) if cross else None

    def forward(self, inputs_embeds, encoder_hidden_states=None):
        x = inputs_embeds
        for block in self.blocks:
            x = x + block(x)
        if self.cross is not None and encoder_hidden_states is not None:
            x = x + self.cross(encoder_hidden_states).mean(1, keepdim=True)
        return x


def test_cross_attended_states_get_the_width_their_first_layer_reads_and_are_left_out_where_none_does():
    model = _Stack(cross=True)
    _, kwargs = build_example_inputs(model)
    assert kwargs["inputs_embeds"].shape == (2, 12, 8) and kwargs["encoder_hidden_states"].shape == (2, 24, 20)
    _patch(model)
    model = _Stack(cross=False)
    _, kwargs = build_example_inputs(model)
    assert list(kwargs) == ["inputs_embeds"]
    _patch(model)


def test_a_visual_prompt_and_its_mask_are_images_like_the_image_stacked_to_the_configs_size():
    # SegGPT stacks the prompt above the image: image_size (64, 32) is the pair's, each image 32 x 32.
    model = T.SegGptModel(T.SegGptConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, mlp_dim=64, image_size=[64, 32], patch_size=8,
        pretrain_image_size=32, decoder_hidden_size=32, intermediate_hidden_state_indices=[1], merge_index=0))
    _, kwargs = build_example_inputs(model)
    assert set(kwargs) == {"pixel_values", "prompt_pixel_values", "prompt_masks"}
    assert all(v.shape == (2, 3, 32, 32) for v in kwargs.values())
    assert not torch.equal(kwargs["prompt_pixel_values"], kwargs["pixel_values"])
    _patch(model)


def test_a_list_of_main_input_names_takes_the_first_the_forward_has_and_names_what_is_missing():
    # OneFormer names main_input_name = ["pixel_values", "task_inputs"]: the builder crashed on the list
    # (TypeError: unhashable type) instead of building the first and naming the argument it cannot build.
    config = T.BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32)
    model = T.BertModel(config).eval()
    model.main_input_name = ["input_ids", "task_inputs"]
    plain = model.forward
    model.forward = lambda input_ids, task_inputs, attention_mask=None: plain(input_ids=input_ids, attention_mask=attention_mask)
    with pytest.raises(ExampleInputsError, match="takes 'task_inputs'"):
        build_example_inputs(model)
    model = T.BertModel(config).eval()
    model.main_input_name = ["pixel_values", "input_ids"]  # the first is no argument of its forward
    _, built = build_example_inputs(model)
    assert built["input_ids"].dtype == torch.int64 and built["input_ids"].ndim == 2
