"""Example inputs: the only module that knows timm's, Hugging Face's and torchvision's config fields.

``call_args`` turns what a user passes as ``example_inputs`` into ``(args, kwargs)``. ``build`` makes
inputs for models it recognises, with a private generator (the global RNG is not touched), on the
model's device and in its floating dtype:

* timm: ``pretrained_cfg['input_size']``, with the spatial size the model was actually built for
  (``patch_embed.img_size``, so ``create_model(name, img_size=384)`` is probed at 384) and its
  ``in_chans`` (else the channels of its first convolution);
* Hugging Face: ``config.image_size`` and ``config.num_channels`` for vision models
  (``pixel_values``), ``input_ids`` within ``config.vocab_size`` for text models, both for
  two-tower models such as ``CLIPModel``;
* torchvision classification models: 224 x 224 (299 for Inception v3, ``image_size`` for ViT).

Anything else needs ``example_inputs=``.
"""

from __future__ import annotations

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


def _hf_inputs(model: nn.Module, device: torch.device, dtype: torch.dtype, gen: torch.Generator) -> dict:
    config = model.config
    vision = getattr(config, "vision_config", None)
    text = getattr(config, "text_config", None)
    main = getattr(model, "main_input_name", "pixel_values")
    kwargs: dict[str, Tensor] = {}

    def pixels(cfg: Any) -> Tensor:
        size = _pair(getattr(cfg, "image_size", 224))
        return _image(EXAMPLE_BATCH, getattr(cfg, "num_channels", 3), size, device, dtype, gen)

    def tokens(cfg: Any) -> Tensor:
        vocab = getattr(cfg, "vocab_size", None)
        if not vocab:
            raise ExampleInputsError(f"{type(model).__name__}: its config has no vocab_size; pass example_inputs=.")
        length = min(16, getattr(cfg, "max_position_embeddings", 16) or 16)
        return torch.randint(0, vocab, (EXAMPLE_BATCH, length), generator=gen).to(device)

    if vision is not None and text is not None:
        kwargs["pixel_values"] = pixels(vision)
        kwargs["input_ids"] = tokens(text)
    elif main == "pixel_values":
        kwargs["pixel_values"] = pixels(config)
    elif main == "input_ids":
        kwargs["input_ids"] = tokens(config)
    else:
        raise ExampleInputsError(
            f"{type(model).__name__} takes {main!r}, for which no example can be built automatically; "
            f"pass example_inputs= (for example a dict {{'{main}': tensor}})."
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
