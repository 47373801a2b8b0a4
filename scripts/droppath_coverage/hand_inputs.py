"""Example inputs written by hand for the Hugging Face model types whose automatic inputs cannot be built
(the sweep's stage 'inputs': ``build_example_inputs`` raises, and ``ExampleInputsError`` names the argument
to pass). The sweep retries those with ``apply_drop_path(model, 0.1, example_inputs=BUILDERS[type](config,
model))``, as the error tells a user to, and records the outcome beside the zero-argument one.

This is test data, like a user's own inputs: keyed on the model type, sized from the (shrunk) config the
sweep built. ``SKIPPED`` names the types no example inputs can serve, with the reason. A type whose automatic
inputs now build and run has no entry (the retry would not run): Q-Former, Perceiver, MuseGlimmer's draft and
Nemotron's word-timestamp head (hidden states), CANINE (ids below its smallest embedding), Dia (decoder ids
per channel), SegGPT (visual prompts).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

BATCH = 2  # the engine drops per sample: two samples at least

Builder = Callable[[Any, Any], dict]
BUILDERS: dict[str, Builder] = {}
NOTES: dict[str, str] = {}  # what a builder sets on the config besides the inputs (said in the sweep's record)

SKIPPED: dict[str, str] = {
    "bark": "BarkModel has no forward (its sub-models generate in turn: semantic, coarse, fine, codec)",
    "glm_image_vqmodel": "GlmImageVQVAE has no forward (it only encodes images to codes)",
    "edgetam_video": "takes an inference_session (a video tracking state object), not tensors",
    "sam2_video": "takes an inference_session (a video tracking state object), not tensors",
    "sam3_tracker_video": "takes an inference_session (a video tracking state object), not tensors",
    "sam3_video": "takes an inference_session (a video tracking state object), not tensors",
}


def hand(*model_types: str, note: str = "") -> Callable[[Builder], Builder]:
    def register(fn: Builder) -> Builder:
        for model_type in model_types:
            BUILDERS[model_type] = fn
            if note:
                NOTES[model_type] = note
        return fn

    return register


def describe(inputs: dict, note: str = "") -> str:
    """``name (shape) dtype`` of each tensor, ``name=value`` of anything else; then the note."""
    parts = []
    for name, value in inputs.items():
        if isinstance(value, torch.Tensor):
            dtype = str(value.dtype).removeprefix("torch.")
            parts.append(f"{name} {tuple(value.shape)} {dtype}".replace(",)", ")"))
        else:
            parts.append(f"{name}={value!r}"[:60])
    return ", ".join(parts) + (f"; {note}" if note else "")


def _gen() -> torch.Generator:
    return torch.Generator().manual_seed(0)


def _randn(*shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=_gen())


def _ids(high: int, *shape: int, low: int = 0) -> torch.Tensor:
    return torch.randint(low, high, shape, generator=_gen())


def _mask(*shape: int) -> torch.Tensor:
    return torch.ones(*shape, dtype=torch.long)


# -- state sequences ---------------------------------------------------------------------------------


@hand("decision_transformer")
def decision_transformer(config, model) -> dict:
    steps = 6
    return {"states": _randn(BATCH, steps, config.state_dim), "actions": _randn(BATCH, steps, config.act_dim),
            "rewards": _randn(BATCH, steps, 1), "returns_to_go": _randn(BATCH, steps, 1),
            "timesteps": _ids(config.max_ep_len, BATCH, steps), "attention_mask": _mask(BATCH, steps)}


# -- token ids ---------------------------------------------------------------------------------------


@hand("fastspeech2_conformer_with_hifigan")
def phonemes(config, model) -> dict:
    text = config.model_config
    return {"input_ids": _ids(text.vocab_size, BATCH, 12, low=1)}


@hand("sam3_lite_text_text_model")
def text_ids(config, model) -> dict:
    return {"input_ids": _ids(config.vocab_size, BATCH, 12), "attention_mask": _mask(BATCH, 12)}


# -- robot policies (PaliGemma prefix + action expert) ------------------------------------------------


@hand("pi0")
def robot_policy(config, model) -> dict:
    """One camera image, its image tokens followed by a short prompt, and the action chunk's embeddings."""
    vlm = config.vlm_config
    vision = vlm.vision_config
    per_image = (vision.image_size // vision.patch_size) ** 2
    text = 6
    input_ids = torch.cat([torch.full((BATCH, per_image), vlm.image_token_id),
                           _ids(1000, BATCH, text, low=3)], dim=1)
    return {"action_embeds": _randn(BATCH, config.chunk_size, config.dit_config.hidden_size),
            "input_ids": input_ids, "attention_mask": _mask(BATCH, per_image + text),
            "pixel_values": _randn(BATCH, 1, vision.num_channels, vision.image_size, vision.image_size),
            "pixel_attention_mask": torch.ones(BATCH, 1, dtype=torch.bool)}


@hand("pi05")
def robot_policy_timed(config, model) -> dict:
    """As PI0, and the denoising timestep's embedding that modulates every norm of the action expert."""
    return robot_policy(config, model) | {"timestep_embeds": _randn(BATCH, config.dit_config.hidden_size)}


# -- video ----------------------------------------------------------------------------------------


@hand("instructblipvideo", note="config.video_token_id set to the text model's last id")
def instructblip_video(config, model) -> dict:
    """Four frames; the text holds ``num_query_tokens`` video tokens per frame. The default config has no
    video token (a checkpoint's processor adds one): the last id of the text vocabulary stands in."""
    frames = 4
    text = config.text_config
    model.config.video_token_id = text.vocab_size - 1
    vision = config.vision_config
    video = [model.config.video_token_id] * (config.num_query_tokens * frames)
    prompt = _ids(100, BATCH, 5, low=3)
    input_ids = torch.cat([torch.tensor(video).expand(BATCH, -1), prompt], dim=1)
    return {"pixel_values": _randn(BATCH, frames, 3, vision.image_size, vision.image_size),
            "qformer_input_ids": _ids(100, BATCH, 6, low=3), "qformer_attention_mask": _mask(BATCH, 6),
            "input_ids": input_ids, "attention_mask": _mask(*input_ids.shape)}


# -- images with prompts or tasks -----------------------------------------------------------------------


@hand("oneformer")
def oneformer(config, model) -> dict:
    """An image and its task prompt's token ids (``task_seq_len`` of them)."""
    side = config.backbone_config.image_size
    return {"pixel_values": _randn(BATCH, 3, side, side),
            "task_inputs": _ids(config.text_encoder_vocab_size, BATCH, config.task_seq_len)}


# -- audio ----------------------------------------------------------------------------------------


@hand("gemma3n_audio")
def gemma3n_audio(config, model) -> dict:
    frames = 64
    return {"audio_mel": _randn(BATCH, frames, config.input_feat_size),
            "audio_mel_mask": torch.zeros(BATCH, frames, dtype=torch.bool)}


@hand("gemma4_audio")
def gemma4_audio(config, model) -> dict:
    """Mel frames: two stride-2 convolutions leave a quarter of the bins, and the projection after them reads
    ``subsampling_conv_channels[0] // 4`` bins per channel, so as many bins as that first channel count
    (128, Gemma 4's feature extractor's)."""
    frames = 64
    bins = config.subsampling_conv_channels[0]
    return {"input_features": _randn(BATCH, frames, bins), "attention_mask": torch.ones(BATCH, frames, dtype=torch.bool)}


@hand("mimi_decoder")
def mimi_latents(config, model) -> dict:
    """Continuous latents ``(batch, hidden_size, frames)``, what the encoder half gives."""
    return {"latents": _randn(BATCH, config.hidden_size, 6)}


@hand("pocket_tts_audio_tokenizer_decoder")
def pocket_latents(config, model) -> dict:
    """The decoder's upsampling reads ``hidden_size`` channels (``latent_dim`` is the encoder's projection)."""
    return {"latents": _randn(BATCH, config.hidden_size, 6)}


@hand("vibevoice_acoustic_tokenizer_decoder")
def vibevoice_latents(config, model) -> dict:
    """Latents ``(batch, hidden_size, frames)``."""
    return {"hidden_states": _randn(BATCH, config.hidden_size, 6)}


@hand("vibevoice_acoustic_tokenizer_encoder")
def vibevoice_audio(config, model) -> dict:
    """A waveform ``(batch, channels, samples)``, 3200 samples: one latent frame per product of the
    downsampling ratios."""
    return {"hidden_states": _randn(BATCH, config.channels, 2 * math.prod(config.downsampling_ratios))}


@hand("omdet-turbo")
def open_vocabulary_detection(config, model) -> dict:
    """An image, the class names to detect (two per image, one row each) and each image's task prompt;
    ``classes_structure`` counts each image's classes."""
    text = config.text_config
    classes, length = 2, 6
    return {"pixel_values": _randn(BATCH, 3, config.image_size, config.image_size),
            "classes_input_ids": _ids(text.vocab_size, BATCH * classes, length),
            "classes_attention_mask": _mask(BATCH * classes, length),
            "tasks_input_ids": _ids(text.vocab_size, BATCH, length), "tasks_attention_mask": _mask(BATCH, length),
            "classes_structure": torch.full((BATCH,), classes)}
