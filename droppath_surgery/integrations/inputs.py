"""Example inputs: the only module that knows timm's, Hugging Face's and torchvision's config fields.

``call_args`` turns what a user passes as ``example_inputs`` into ``(args, kwargs)``. ``build`` makes
inputs for models it recognises, with a private generator (the global RNG is not touched), on the
model's device and in its floating dtype:

* timm: ``pretrained_cfg['input_size']``, with the spatial size the model was actually built for
  (``patch_embed.img_size``, so ``create_model(name, img_size=384)`` is probed at 384) and its
  ``in_chans`` (else the channels of its first convolution);
* Hugging Face: ``config.image_size`` and ``config.num_channels`` for vision models
  (``pixel_values``; a clip of ``config.num_frames`` images for video models), ``input_ids`` within
  ``config.vocab_size`` for text models, both for two-tower models such as ``CLIPModel``;
* torchvision classification models: 224 x 224 (299 for Inception v3, ``image_size`` for ViT).

Anything else needs ``example_inputs=``.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import ExampleInputsError

__all__ = ["call_args", "build_example_inputs", "EXAMPLE_BATCH"]

EXAMPLE_BATCH = 2


def call_args(example_inputs: Any) -> tuple[tuple, dict]:
    """``example_inputs`` as ``(args, kwargs)``: a tensor, a tuple/list of arguments, or a dict of keywords."""
    if isinstance(example_inputs, Tensor):
        return (example_inputs,), {}
    if isinstance(example_inputs, dict):
        return (), dict(example_inputs)
    if isinstance(example_inputs, (tuple, list)):
        return tuple(example_inputs), {}
    raise ExampleInputsError(
        f"example_inputs must be a tensor, a tuple of positional arguments or a dict of keyword "
        f"arguments, got {type(example_inputs).__name__}."
    )


def _placement(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    for t in (*model.parameters(), *model.buffers()):
        if t.is_floating_point():
            return t.device, t.dtype
    return torch.device("cpu"), torch.float32


def _library(model: nn.Module) -> str:
    module = type(model).__module__
    if module.startswith("timm."):
        return "timm"
    if module.startswith("transformers."):
        return "transformers"
    if module.startswith("torchvision.models"):
        return "torchvision"
    return ""


def _pair(size: Any) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    size = tuple(int(s) for s in size)
    return (size[0], size[0]) if len(size) == 1 else (size[-2], size[-1])


def _first_conv_channels(model: nn.Module) -> int | None:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            return m.in_channels
    return None


def _image(batch: int, channels: int, size: tuple[int, int], device: torch.device, dtype: torch.dtype, gen: torch.Generator) -> Tensor:
    return torch.randn(batch, channels, *size, generator=gen).to(device=device, dtype=dtype)


def _timm_inputs(model: nn.Module, device: torch.device, dtype: torch.dtype, gen: torch.Generator) -> dict:
    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None) or {}
    channels, height, width = cfg.get("input_size", (3, 224, 224))
    patch_embed = getattr(model, "patch_embed", None)
    img_size = getattr(patch_embed, "img_size", None)
    if img_size is not None:
        height, width = _pair(img_size)
    in_chans = getattr(model, "in_chans", None)  # timm models keep it; a first conv may follow a space-to-depth stem
    channels = in_chans if isinstance(in_chans, int) and in_chans > 0 else (_first_conv_channels(model) or channels)
    return {"args": (_image(EXAMPLE_BATCH, channels, (height, width), device, dtype, gen),)}


TEXT_LENGTH = 12  # tokens per example sequence
PADDED = 3  # pad positions of the second sample: masks are exercised as in training


def _is_causal(model: nn.Module) -> bool:
    """A decoder: some attention in it says it is causal."""
    return any(getattr(m, "is_causal", False) is True for m in model.modules())


def _tokens(model: nn.Module, cfg: Any, device: torch.device, gen: torch.Generator, length: int = TEXT_LENGTH) -> Tensor:
    vocab = getattr(cfg, "vocab_size", None)
    if not vocab:
        raise ExampleInputsError(f"{type(model).__name__}: its config has no vocab_size; pass example_inputs=.")
    limit = getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None) or length
    return torch.randint(0, vocab, (EXAMPLE_BATCH, min(length, limit)), generator=gen).to(device)


def _padding_mask(ids: Tensor, left: bool) -> Tensor:
    """Sample 0 full, the last ``PADDED`` positions of sample 1 padded (its first ones with ``left``)."""
    mask = torch.ones_like(ids)
    pad = min(PADDED, ids.shape[1] - 1)
    if pad > 0:
        mask[1, :pad] = 0 if left else 1
        mask[1, -pad:] = 1 if left else 0
    return mask


def _audio_samples(cfg: Any, frames: int = 16) -> int:
    """Raw audio samples that the convolutional feature encoder turns into ``frames`` frames."""
    length = frames
    for kernel, stride in reversed(list(zip(cfg.conv_kernel, cfg.conv_stride))):
        length = (length - 1) * stride + kernel
    return length


def _has(config: Any, *names: str) -> bool:
    """The config has every field (other audio models lay their inputs out differently: they are named
    in an ``ExampleInputsError`` rather than guessed)."""
    return all(getattr(config, n, None) is not None for n in names)


def _hf_inputs(model: nn.Module, device: torch.device, dtype: torch.dtype, gen: torch.Generator) -> dict:
    """The inputs the model's forward takes, from its config: images (or NaFlex patches with their mask
    and shapes), token ids with a padded attention mask (left padding for decoders) and token types,
    decoder inputs for encoder-decoders, mel features or raw audio for speech models."""
    config: Any = model.config
    params = inspect.signature(model.forward).parameters
    vision = getattr(config, "vision_config", None) or config
    text = getattr(config, "text_config", None) or config
    main = getattr(model, "main_input_name", "pixel_values")
    kwargs: dict[str, Tensor] = {}

    if "pixel_values" in params and (main == "pixel_values" or "input_ids" in params):
        if "spatial_shapes" in params:  # NaFlex: patches of a 4 x 4 grid, the second image 3 x 4 and padded
            side, p, c = 4, vision.patch_size, vision.num_channels
            kwargs["pixel_values"] = torch.randn(EXAMPLE_BATCH, side * side, c * p * p, generator=gen).to(device, dtype)
            mask = torch.ones(EXAMPLE_BATCH, side * side, dtype=torch.long)
            mask[1, (side - 1) * side :] = 0
            kwargs["pixel_attention_mask"] = mask.to(device)
            kwargs["spatial_shapes"] = torch.tensor([[side, side], [side - 1, side]][:EXAMPLE_BATCH]).to(device)
        else:
            size = _pair(getattr(vision, "image_size", 224))
            image = _image(EXAMPLE_BATCH, getattr(vision, "num_channels", 3), size, device, dtype, gen)
            frames = getattr(vision, "num_frames", None)
            if isinstance(frames, int) and frames > 0:  # video (VideoMAE, TimeSformer, ViViT, X-CLIP): (B, T, C, H, W)
                image = torch.stack([image] * frames, dim=1)
            kwargs["pixel_values"] = image
    if main == "input_features" and _has(config, "max_source_positions", "num_mel_bins"):
        # Whisper: (B, mel bins, 2 * max_source_positions)
        frames = 2 * config.max_source_positions
        kwargs["input_features"] = torch.randn(EXAMPLE_BATCH, config.num_mel_bins, frames, generator=gen).to(device, dtype)
    elif main == "input_values" and _has(config, "conv_kernel", "conv_stride"):  # wav2vec2, HuBERT: raw audio
        kwargs["input_values"] = torch.randn(EXAMPLE_BATCH, _audio_samples(config), generator=gen).to(device, dtype)
    if "input_ids" in params and (main == "input_ids" or "pixel_values" in kwargs):
        ids = _tokens(model, text, device, gen)
        kwargs["input_ids"] = ids
        seq2seq = getattr(config, "is_encoder_decoder", False)
        if "attention_mask" in params:
            kwargs["attention_mask"] = _padding_mask(ids, left=_is_causal(model) and not seq2seq)
        if "token_type_ids" in params and (getattr(text, "type_vocab_size", 0) or 0) >= 2:
            types = torch.zeros_like(ids)
            types[:, ids.shape[1] // 2 :] = 1  # two segments, as in sentence-pair tasks
            kwargs["token_type_ids"] = types
    if getattr(config, "is_encoder_decoder", False) and "decoder_input_ids" in params:
        decoder = _tokens(model, text, device, gen, length=TEXT_LENGTH // 2)
        kwargs["decoder_input_ids"] = decoder
        if "decoder_attention_mask" in params:
            kwargs["decoder_attention_mask"] = _padding_mask(decoder, left=False)
    missing = [
        n for n, p in params.items()
        if p.default is inspect.Parameter.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) and n not in kwargs
    ]
    if not kwargs or missing:
        need = missing or [main]
        raise ExampleInputsError(
            f"{type(model).__name__} takes {', '.join(repr(n) for n in need)}, for which no example can be built "
            f"automatically; pass example_inputs= (a dict of keyword arguments, e.g. {{'{need[0]}': tensor, ...}})."
        )
    return {"kwargs": kwargs}


def _torchvision_inputs(model: nn.Module, device: torch.device, dtype: torch.dtype, gen: torch.Generator) -> dict:
    name = type(model).__name__
    size = 299 if name == "Inception3" else getattr(model, "image_size", 224)
    return {"args": (_image(EXAMPLE_BATCH, 3, _pair(size), device, dtype, gen),)}


_BUILDERS = {"timm": _timm_inputs, "transformers": _hf_inputs, "torchvision": _torchvision_inputs}


def build_example_inputs(model: nn.Module) -> tuple[tuple, dict]:
    """``(args, kwargs)`` to probe a timm, Hugging Face or torchvision model with (``apply_drop_path``
    builds them when no ``example_inputs`` are given), or ``ExampleInputsError``."""
    library = _library(model)
    if library not in _BUILDERS:
        raise ExampleInputsError(
            f"cannot build example inputs for {type(model).__module__}.{type(model).__name__}: only "
            f"timm, Hugging Face transformers and torchvision models are recognised. Pass "
            f"example_inputs= with a batch the model accepts, e.g. apply_drop_path(model, 0.1, "
            f"example_inputs=torch.randn(2, 3, 224, 224))."
        )
    device, dtype = _placement(model)
    gen = torch.Generator().manual_seed(0)
    built = _BUILDERS[library](model, device, dtype, gen)
    return built.get("args", ()), built.get("kwargs", {})
