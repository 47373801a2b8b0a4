"""Automatic example inputs of Hugging Face audio and video models beyond the plain encoders: a text model's
audio, stacked spectrogram frames, one-channel spectrogram images, codecs that take a waveform and features,
codebook-stacked token ids, padded video frames, and an error naming an unset video token. Tiny configs,
nothing downloaded."""

from __future__ import annotations

import pytest
import torch
import transformers as T
from helpers import patched_and_verified as _patch
from training_fixtures import single_thread  # noqa: F401  (autouse: tiny models run faster on one thread)

from droppath_surgery import ExampleInputsError, apply_drop_path, build_example_inputs, is_patched

SMALL = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)


def _stacks(report) -> set[str]:
    return {s.path.split(".")[0] for s in report.sites}


def test_a_text_model_that_needs_its_audio_gets_one_audio_frame_per_token():
    # Voxtral Realtime adds one audio embedding to each text token: its forward refuses text alone, and the
    # audio must be as many frames as the text has tokens times audio_length_per_tok.
    config = T.VoxtralRealtimeConfig(
        audio_config=dict(SMALL, num_mel_bins=16, head_dim=8, num_key_value_heads=4, max_position_embeddings=128,
                          sliding_window=64),
        text_config=dict(SMALL, vocab_size=99, num_key_value_heads=2, head_dim=8, max_position_embeddings=128,
                         sliding_window=64),
    )
    model = T.VoxtralRealtimeModel(config)
    _, kwargs = build_example_inputs(model)
    ids, features = kwargs["input_ids"], kwargs["input_features"]
    assert features.shape == (2, 16, ids.shape[1] * config.audio_length_per_tok)
    report = _patch(model)
    assert {"audio_tower", "language_model"} <= _stacks(report)


def test_a_speech_text_model_gets_one_audio_token_per_audio_feature_and_its_tower_runs():
    # Voxtral's audio is optional, but only text with audio tokens runs its audio tower: as many as its
    # get_audio_features returns per sample.
    config = T.VoxtralConfig(
        audio_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                          num_key_value_heads=4, head_dim=8, num_mel_bins=16, max_source_positions=16),
        text_config=dict(SMALL, vocab_size=99, num_key_value_heads=2, head_dim=8),
        audio_token_id=98,
    )
    model = T.VoxtralForConditionalGeneration(config)
    _, kwargs = build_example_inputs(model)
    with torch.no_grad():
        features = model.get_audio_features(kwargs["input_features"]).pooler_output
    assert ((kwargs["input_ids"] == 98).sum(1) == features.shape[0] // 2).all()
    report = _patch(model)
    assert any(s.path.startswith("model.audio_tower.layers") or s.path.startswith("audio_tower.layers")
               for s in report.sites)
    assert report.not_run == ()


def test_a_speech_text_model_without_get_audio_features_counts_its_tokens_on_its_audio_tower():
    # Qwen2-Audio has no get_audio_features: its audio tower (the submodule whose main input is input_features)
    # gives the count, one audio token per frame it returns, and the tower then runs.
    config = T.Qwen2AudioConfig(
        audio_config=dict(d_model=32, encoder_layers=2, encoder_attention_heads=4, encoder_ffn_dim=64,
                          num_mel_bins=16, max_source_positions=16),
        text_config=dict(SMALL, model_type="qwen2", vocab_size=99, num_key_value_heads=2),
        audio_token_index=98,
    )
    model = T.Qwen2AudioForConditionalGeneration(config)
    _, kwargs = build_example_inputs(model)
    with torch.no_grad():
        frames = model.model.audio_tower(kwargs["input_features"]).last_hidden_state.shape[1]
    assert ((kwargs["input_ids"] == 98).sum(1) == frames).all()
    report = _patch(model)
    assert any(".audio_tower.layers." in f".{s.path}" for s in report.sites) and report.not_run == ()


def test_a_get_audio_features_that_needs_the_text_falls_back_to_the_audio_tower():
    # Music Flamingo's get_audio_features also takes input_ids (for its rotary time stamps), which no audio
    # layout holds: the count comes from its audio tower.
    config = T.MusicFlamingoConfig(
        audio_config=dict(model_type="musicflamingo_encoder", hidden_size=32, intermediate_size=64,
                          num_hidden_layers=1, num_attention_heads=4, num_mel_bins=16, max_source_positions=16),
        text_config=dict(SMALL, model_type="qwen2", vocab_size=99, num_key_value_heads=2),
        audio_token_id=98,
    )
    model = T.MusicFlamingoForConditionalGeneration(config)
    _, kwargs = build_example_inputs(model)
    assert "input_features" in kwargs and bool((kwargs["input_ids"] == 98).any())
    report = _patch(model)
    assert any(".audio_tower.layers." in f".{s.path}" for s in report.sites) and report.not_run == ()


def test_a_speech_text_model_whose_audio_features_need_the_raw_audio_mask_gets_one():
    # MOSS Transcribe-Diarize's get_audio_features requires padding_mask, the raw audio's valid samples of one
    # audio_chunk_size window a sample: with it the audio tokens are counted and the audio tower runs.
    config = T.MossTranscribeDiarizeConfig(
        audio_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                          num_mel_bins=16, max_source_positions=16),
        text_config=dict(SMALL, vocab_size=99, num_key_value_heads=2, head_dim=8),
        audio_token_id=98, audio_chunk_size=640,
    )
    model = T.MossTranscribeDiarizeForConditionalGeneration(config)
    _, kwargs = build_example_inputs(model)
    assert kwargs["padding_mask"].shape == (2, 640)
    assert ((kwargs["input_ids"] == 98).sum(1) == 16 // config.audio_merge_size).all()
    report = _patch(model)
    assert any(".audio_tower.layers." in f".{s.path}" for s in report.sites) and report.not_run == ()


def test_a_mel_spectrogram_named_audio_mel_gets_an_all_valid_padding_mask():
    # Gemma 3n's audio encoder takes audio_mel (B, T, input_feat_size) and audio_mel_mask, True at padding.
    config = T.Gemma3nAudioConfig(input_feat_size=16, hidden_size=32, conf_num_attention_heads=4,
                                  conf_num_hidden_layers=2, sscp_conv_channel_size=[8, 4])
    model = T.Gemma3nAudioEncoder(config)
    _, kwargs = build_example_inputs(model)
    assert kwargs["audio_mel"].shape == (2, 64, 16)
    assert kwargs["audio_mel_mask"].shape == (2, 64) and not kwargs["audio_mel_mask"].any()
    report = _patch(model)
    assert len(report.sites) > 0 and report.not_run == ()


def test_a_text_model_that_requires_a_waveform_gets_one():
    # PE Audio takes input_values beside its text (1 s at 16 kHz, as its encoder alone), as (B, 1, T).
    config = T.PeAudioConfig(
        text_config=dict(model_type="modernbert", vocab_size=99, hidden_size=32, intermediate_size=64, pad_token_id=0,
                         bos_token_id=1, eos_token_id=2, cls_token_id=1, sep_token_id=2,
                         num_hidden_layers=1, num_attention_heads=4),
        audio_config=dict(SMALL, num_key_value_heads=4, head_dim=8, num_hidden_layers=1,
                          dac_config=dict(encoder_hidden_size=8, decoder_hidden_size=8, downsampling_ratios=[2, 4],
                                          upsampling_ratios=[4, 2], hidden_size=16, n_codebooks=2, codebook_dim=4,
                                          codebook_size=16)),
    )
    model = T.PeAudioModel(config)
    _, kwargs = build_example_inputs(model)
    assert kwargs["input_values"].shape == (2, 1, 16_000)
    _patch(model)


def test_stacked_low_frame_rate_features_are_mel_bins_times_the_stack():
    config = T.FunAsrNanoEncoderConfig(**dict(SMALL, num_hidden_layers=3), num_mel_bins=8, num_stacked_frames=7,
                                       num_timestamp_prediction_layers=1)
    model = T.FunAsrNanoEncoder(config)
    _, kwargs = build_example_inputs(model)
    assert kwargs["input_features"].shape[-1] == 56
    _patch(model)


def _clap(audio_width: int):
    """A tiny CLAP; its audio tower's output width is patch_embeds_hidden_size x 2**(stages - 1) = 32."""
    return T.ClapModel(T.ClapConfig(
        text_config=dict(vocab_size=99, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=4, projection_dim=16),
        audio_config=dict(num_mel_bins=16, spec_size=32, patch_size=4, patch_stride=[4, 4], window_size=4,
                          depths=[1, 1], num_attention_heads=[2, 4], patch_embeds_hidden_size=16,
                          hidden_size=audio_width, projection_dim=16),
        projection_dim=16,
    ))


def test_a_spectrogram_image_gets_one_channel():
    # CLAP's audio tower reads (B, 1, T, mel), a spectrogram as a one-channel image.
    model = _clap(audio_width=32)
    _, kwargs = build_example_inputs(model)
    assert kwargs["input_features"].shape[:2] == (2, 1) and kwargs["input_features"].shape[-1] == 16
    report = _patch(model)
    assert "audio_model" in _stacks(report)


def test_where_no_layout_runs_the_one_that_got_furthest_is_given_and_its_error_said():
    # A CLAP audio config whose hidden_size is not patch_embeds_hidden_size x 2**(stages - 1) (the tower's output
    # width): no layout runs. (B, T, mel) fails at the tower's first layer; (B, 1, T, mel) runs the whole tower and
    # fails at the projection, which is the config's fault and the error to report, with that layout.
    model = _clap(audio_width=24)
    _, kwargs = build_example_inputs(model)
    assert kwargs["input_features"].shape[:2] == (2, 1)
    with pytest.raises(RuntimeError, match="mat1 and mat2"):
        with torch.no_grad():
            model(**kwargs)


def test_a_codec_that_requires_features_beside_its_waveform_gets_both():
    # NeuCodec: a waveform for its acoustic encoder and features of its semantic encoder's width. Its default
    # config is built on the meta device: the inputs come from the config alone.
    with torch.device("meta"):
        model = T.NeuCodecModel(T.NeuCodecConfig())
    _, kwargs = build_example_inputs(model)
    features = model.config.semantic_model_config.feature_projection_input_dim
    assert kwargs["input_values"].shape[0] == 2 and features in kwargs["input_features"].shape


def test_codebook_stacked_token_ids_get_a_column_per_codebook():
    # Kyutai speech-to-text: each step holds a text token and one code of each of its codebooks.
    config = T.KyutaiSpeechToTextConfig(
        vocab_size=99, codebook_vocab_size=17, num_codebooks=3, hidden_size=32, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, head_dim=8, ffn_dim=64, audio_pad_token_id=99 + 3 * 17,
        codec_config=dict(hidden_size=16, num_filters=4, num_hidden_layers=1, num_attention_heads=2,
                          num_key_value_heads=2, head_dim=8, intermediate_size=32, codebook_dim=8,
                          codebook_size=16, num_quantizers=2, upsampling_ratios=[4, 2]),
    )
    model = T.KyutaiSpeechToTextModel(config)
    _, kwargs = build_example_inputs(model)
    ids = kwargs["input_ids"]
    assert ids.shape == (2, 12, 4) and int(ids[..., 1:].max()) < 17
    _patch(model)


def test_a_decoder_of_one_id_row_per_codebook_gets_embeddings_of_its_width():
    # MusicGen's decoder takes (B * codebooks, L) ids, one row per codebook, that the engine would read as B * codebooks
    # samples; (B, L) ids do not run ("shape [-1, 4, 12] is invalid"): its inputs_embeds, (B, L, width), do.
    config = T.MusicgenDecoderConfig(vocab_size=33, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                     ffn_dim=64, num_codebooks=4, max_position_embeddings=64)
    model = T.MusicgenModel(config)
    _, kwargs = build_example_inputs(model)
    assert "input_ids" not in kwargs and kwargs["inputs_embeds"].shape == (2, 12, 32)
    assert len(_patch(model).sites) == 4  # self-attention and MLP of each layer


def test_a_visual_prompt_model_gets_frames_of_its_padded_size():
    # TVP pads its frames with a visual prompt of max_img_size: frames of image_size would not fit it.
    with torch.device("meta"):
        model = T.TvpModel(T.TvpConfig())
    _, kwargs = build_example_inputs(model)
    assert kwargs["pixel_values"].shape[-2:] == (448, 448)


def test_a_video_model_whose_video_token_is_unset_gets_an_error_naming_it():
    config = T.InstructBlipVideoConfig(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                           image_size=32, patch_size=8),
        qformer_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                            encoder_hidden_size=32, vocab_size=99),
        text_config=dict(model_type="opt", vocab_size=99, hidden_size=32, ffn_dim=64, num_hidden_layers=1,
                         num_attention_heads=4, word_embed_proj_dim=32),
        num_query_tokens=4,
    )
    model = T.InstructBlipVideoModel(config)
    with pytest.raises(ExampleInputsError, match=r"video_token_id is None.*example_inputs= alone cannot serve.*set config.video_token_id"):
        apply_drop_path(model, 0.1)
    assert not is_patched(model)


def test_features_get_the_width_the_first_layer_takes_where_the_code_stacks_more_than_the_config_says():
    # Granite Speech 5 delta-expands its mel frames and stacks them in pairs (4 x num_mel_bins) in its
    # feature extractor: its config does not say so, its input projection does.
    config = T.GraniteSpeech5EncoderConfig(**SMALL, vocab_size=33, num_mel_bins=8, context_size=16,
                                           max_position_embeddings=32, subsample_layers=[0])
    model = T.GraniteSpeech5Encoder(config)
    _, kwargs = build_example_inputs(model)
    assert kwargs["input_features"].shape[-1] == 32
    _patch(model)


def test_a_multilingual_model_without_a_default_language_gets_its_first():
    # X-MOD's forward refuses tokens without lang_ids where its config sets no default_language.
    config = T.XmodConfig(**SMALL, vocab_size=99, languages=["en_XX", "de_DE"])
    model = T.XmodModel(config)
    _, kwargs = build_example_inputs(model)
    assert kwargs["lang_ids"].tolist() == [0, 0]
    _patch(model)


def test_region_features_and_their_boxes_are_built_where_the_config_sizes_them():
    # LXMERT: visual_feats of visual_feat_dim and boxes (x1, y1, x2, y2) within [0, 1].
    config = T.LxmertConfig(vocab_size=99, hidden_size=32, intermediate_size=64, num_attention_heads=4, l_layers=1,
                            x_layers=1, r_layers=1, visual_feat_dim=16)
    model = T.LxmertModel(config)
    _, kwargs = build_example_inputs(model)
    boxes = kwargs["visual_pos"]
    assert kwargs["visual_feats"].shape == (2, 4, 16) and boxes.shape == (2, 4, 4)
    assert bool((boxes[..., 0] <= boxes[..., 2]).all() and (boxes[..., 1] <= boxes[..., 3]).all())
    assert bool((boxes >= 0).all() and (boxes <= 1).all())
    _patch(model)


def test_a_model_that_scales_normalized_boxes_gets_a_box_per_token():
    # BROS refuses tokens without bbox: boxes (x1, y1, x2, y2) within [0, 1], scaled by its bbox_scale.
    config = T.BrosConfig(**SMALL, vocab_size=99, dim_bbox_sinusoid_emb_2d=32, dim_bbox_sinusoid_emb_1d=4,
                          dim_bbox_projection=8)
    model = T.BrosModel(config)
    _, kwargs = build_example_inputs(model)
    boxes = kwargs["bbox"]
    assert boxes.shape == (*kwargs["input_ids"].shape, 4) and bool((boxes >= 0).all() and (boxes <= 1).all())
    _patch(model)


def test_a_codec_decoder_alone_gets_continuous_latents_of_its_width():
    # Mimi's decoder takes latents (B, hidden_size, frames), as MimiModel.decode computes them.
    config = T.MimiDecoderConfig(hidden_size=32, upsample_groups=32, num_hidden_layers=1, intermediate_size=64,
                                 num_attention_heads=4, num_key_value_heads=4, head_dim=8, num_filters=4,
                                 upsampling_ratios=[4, 2])
    model = T.MimiDecoderModel(config)
    _, kwargs = build_example_inputs(model)
    assert kwargs["latents"].shape == (2, 32, 4)
    report = _patch(model)
    assert len(report.sites) > 0 and report.not_run == ()


def test_a_codec_encoder_or_decoder_whose_forward_names_hidden_states_gets_a_waveform_or_latents():
    # VibeVoice's acoustic tokenizer halves: main_input_name input_values, but the forward takes hidden_states,
    # a waveform (B, channels, T) for the encoder, latents (B, hidden_size, frames) for the decoder.
    small = dict(hidden_size=16, num_filters=4, downsampling_ratios=[2, 4], depths=[1, 1, 1])
    encoder = T.VibeVoiceAcousticTokenizerEncoderModel(T.VibeVoiceAcousticTokenizerEncoderConfig(**small))
    _, kwargs = build_example_inputs(encoder)
    assert kwargs["hidden_states"].shape == (2, 1, 4 * 8)
    report = _patch(encoder)
    assert len(report.sites) > 0 and report.not_run == ()
    decoder = T.VibeVoiceAcousticTokenizerDecoderModel(T.VibeVoiceAcousticTokenizerDecoderConfig(**small))
    _, kwargs = build_example_inputs(decoder)
    assert kwargs["hidden_states"].shape == (2, 16, 4)
    report = _patch(decoder)
    assert len(report.sites) > 0 and report.not_run == ()


def test_a_codec_gets_a_feature_frame_per_hop_of_its_waveform():
    # XCodec2 concatenates its semantic encoder's frames (from input_features) with its acoustic encoder's (from
    # the waveform, one a hop): the features get as many frames as the waveform has hops.
    config = T.Xcodec2Config(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=4,
        head_dim=8, encoder_hidden_size=8, downsampling_ratios=[2, 4], quantization_dim=64,
        semantic_model_config=dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64,
                                   output_hidden_size=32, feature_projection_input_dim=16),
    )
    model = T.Xcodec2Model(config)
    _, kwargs = build_example_inputs(model)
    assert kwargs["input_values"].shape == (2, 1, 4 * 8) and kwargs["input_features"].shape == (2, 4, 16)
    report = _patch(model)
    assert {"acoustic_encoder", "semantic_encoder"} <= _stacks(report) and report.not_run == ()


def _speecht5_config():
    return T.SpeechT5Config(
        vocab_size=40, hidden_size=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
        decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, conv_dim=(16, 16), conv_stride=(5, 2),
        conv_kernel=(10, 3), num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2, num_mel_bins=16,
        speech_decoder_prenet_units=32, speech_decoder_postnet_units=32, speech_decoder_postnet_layers=2,
        speaker_embedding_dim=8,
    )


def test_a_speech_encoder_decoder_without_prenets_gets_embeddings_and_decoder_frames_of_its_width():
    # SpeechT5Model is built without the prenets: its input_values are the encoder's embeddings (B, T, hidden)
    # (a waveform reaches a LayerNorm of hidden_size), and its decoder needs decoder_input_values of that width.
    model = T.SpeechT5Model(_speecht5_config())
    _, kwargs = build_example_inputs(model)
    assert kwargs["input_values"].shape == (2, 4, 32) and kwargs["decoder_input_values"].shape == (2, 6, 32)
    report = _patch(model)
    assert {"encoder", "decoder"} <= _stacks(report) and report.not_run == ()


def test_a_speech_decoder_with_its_spectrogram_prenet_gets_frames_of_mel_bins_beside_the_waveform():
    # SpeechT5ForSpeechToSpeech: a waveform for its speech encoder, mel frames for its speech decoder's prenet
    # (without decoder_input_values the decoder prenet reads None).
    model = T.SpeechT5ForSpeechToSpeech(_speecht5_config())
    _, kwargs = build_example_inputs(model)
    assert kwargs["input_values"].dim() == 2 and kwargs["decoder_input_values"].shape == (2, 6, 16)
    report = _patch(model)
    assert report.sites and report.not_run == ()


def test_ids_of_a_model_without_a_vocabulary_are_below_its_smallest_embedding():
    # CANINE hashes code points (no vocab_size, no input embedding); its smallest table, token types, has 16 rows.
    model = T.CanineModel(T.CanineConfig(**SMALL, num_hash_buckets=64, num_hash_functions=4,
                                         max_position_embeddings=64, type_vocab_size=16))
    _, kwargs = build_example_inputs(model)
    assert kwargs["input_ids"].shape == (2, 12) and 0 <= int(kwargs["input_ids"].min())
    assert int(kwargs["input_ids"].max()) < 16 == min(m.num_embeddings for m in model.modules()
                                                      if isinstance(m, torch.nn.Embedding))
    assert len(_patch(model).sites) == 8


def test_decoder_ids_are_per_channel_where_the_decoder_config_counts_channels_and_plain_ids_do_not_run():
    # Dia's decoder embeds a code of each of its num_channels channels per position, (B, L, C).
    decoder = T.DiaDecoderConfig(**SMALL, num_key_value_heads=2, head_dim=8, cross_num_attention_heads=4,
                                 cross_head_dim=8, cross_num_key_value_heads=4, cross_hidden_size=32, num_channels=3,
                                 vocab_size=40, eos_token_id=36, bos_token_id=38, pad_token_id=1)
    encoder = T.DiaEncoderConfig(**SMALL, num_key_value_heads=4, head_dim=8, vocab_size=30)
    model = T.DiaModel(T.DiaConfig(encoder_config=encoder, decoder_config=decoder, delay_pattern=[0, 1, 2]))
    _, kwargs = build_example_inputs(model)
    assert kwargs["input_ids"].shape == (2, 12) and kwargs["decoder_input_ids"].shape == (2, 6, 3)
    assert int(kwargs["decoder_input_ids"].max()) < 30  # ids every vocabulary holds
    assert len(_patch(model).sites) == 10  # encoder 2 x 2, decoder 2 x 3 (with cross-attention)
