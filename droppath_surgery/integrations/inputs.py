"""Example inputs: the only module that knows timm's, Hugging Face's and torchvision's config fields.

``call_args`` turns what a user passes as ``example_inputs`` into ``(args, kwargs)``.
``build_example_inputs`` makes inputs for the models it recognises (vision, text, vision-language, audio,
speech-text, video, time series, models taking hidden states) from their config fields and forward signatures, with a private generator,
on the model's device and dtype. What it builds for which model, and in which order it tries layouts, is in
``docs/example-inputs.md``; anything else gets an ``ExampleInputsError`` naming the argument to pass.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.modules.module import register_module_forward_pre_hook

from ..errors import ExampleInputsError
from ..isolation import observation

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
CHOICES = 2  # candidate texts per sample of a multiple-choice head
PADDED = 3  # pad positions of the second sample: masks are exercised as in training


def _is_causal(model: nn.Module) -> bool:
    """A decoder: some attention in it says it is causal."""
    return any(getattr(m, "is_causal", False) is True for m in model.modules())


def _vocab_size(model: nn.Module, cfg: Any) -> int | None:
    """How many token ids ``cfg``'s text takes: its ``vocab_size``; where it has none (a composite whose text
    model's config is nested: PI0's PaliGemma), the rows of the embedding the model's ``get_input_embeddings``
    returns, else the smallest ``vocab_size`` of its nested configs, at any depth: ids that every one of its
    vocabularies holds (Dia's encoder takes 256, its decoder 1028); where none has one (CANINE hashes code
    points), the rows of the model's smallest ``nn.Embedding``: ids below them index every embedding."""
    vocab = getattr(cfg, "vocab_size", None)
    if vocab:
        return int(vocab)
    embeddings: Any = getattr(model, "get_input_embeddings", None)
    if cfg is getattr(model, "config", None) and callable(embeddings):  # the model's own text, not a sub-model's
        try:
            rows = getattr(embeddings(), "num_embeddings", None)
        except Exception:  # noqa: BLE001 - no input embedding (NotImplementedError): the nested configs are read
            rows = None
        if isinstance(rows, int) and rows > 0:
            return rows
    queue, seen, sizes = list(_sub_configs(cfg)), {id(cfg)}, []
    while queue:
        sub = queue.pop(0)
        if id(sub) in seen:
            continue
        seen.add(id(sub))
        vocab = getattr(sub, "vocab_size", None)
        if isinstance(vocab, int) and not isinstance(vocab, bool) and vocab > 0:
            sizes.append(vocab)
        queue.extend(_sub_configs(sub))
    if not sizes and cfg is getattr(model, "config", None):  # ids it hashes or offsets, no vocabulary (CANINE's
        rows = [m.num_embeddings for m in model.modules() if isinstance(m, nn.Embedding)]  # code points): ids
        return min(rows, default=None)  # every one of its embeddings holds
    return min(sizes, default=None)


def _tokens(model: nn.Module, cfg: Any, device: torch.device, gen: torch.Generator, length: int = TEXT_LENGTH) -> Tensor:
    vocab = _vocab_size(model, cfg)
    if not vocab:
        raise ExampleInputsError(
            f"{type(model).__name__}: neither its config nor its nested configs have a vocab_size, and it has no "
            f"input embedding to read one off; pass example_inputs=."
        )
    limit = getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None) or length
    limit = limit if limit > 0 else length  # XLNet's -1: no limit
    return torch.randint(0, vocab, (EXAMPLE_BATCH, min(length, limit)), generator=gen).to(device)


def _text_masks(ids: Tensor, params: Any, text: Any, left: bool) -> dict[str, Tensor]:
    """What the forward takes beside ``ids``: a padded ``attention_mask`` (``_padding_mask``) and, where the text
    config has two or more token types, ``token_type_ids`` of two segments (as in sentence-pair tasks)."""
    out = {}
    if "attention_mask" in params:
        out["attention_mask"] = _padding_mask(ids, left=left)
    if "token_type_ids" in params and (getattr(text, "type_vocab_size", 0) or 0) >= 2:
        types = torch.zeros_like(ids)
        types[:, ids.shape[1] // 2 :] = 1
        out["token_type_ids"] = types
    return out


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


def _field(config: Any, *names: str) -> Any:
    """The first of ``names`` the config sets."""
    return next((v for v in (getattr(config, n, None) for n in names) if v is not None), None)


def _required(params: Any) -> list[str]:
    return [
        n for n, p in params.items()
        if p.default is inspect.Parameter.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    ]


GRID_SIDE = 2  # patch grid of an example image, in units of the spatial merge (4 x 4 patches for a 2 x 2 merge)
GRID_IMAGES = 2  # images per sample in packed patches: the grid has as many rows, and so is not read as batched


def _patch_rows(vision: Any, device: torch.device, dtype: torch.dtype, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """Qwen2-VL-style flattened patches: one row of ``channels x temporal_patch_size x patch_size**2`` values
    per patch, every image's patches concatenated (no batch dimension), and the ``(t, h, w)`` grid of each
    image. One frame per image, a grid of ``GRID_SIDE x spatial_merge_size`` patches a side (at least two
    attention windows of ``window_size`` pixels, Qwen2.5-VL's: windows as large as the image would leave the
    engine unable to tell them from the images), ``GRID_IMAGES`` images per sample. Where the attention
    windows are the position table, ``pos_emb_height x pos_emb_width`` patches (``layer_types`` naming window
    attention, MuseSpark's), the image is as wide as two windows and keeps its height (``_table_windows``)."""
    merge = _field(vision, "spatial_merge_size", "merge_size") or 1
    temporal = _field(vision, "temporal_patch_size", "patch_temporal") or 1
    channels = _field(vision, "in_channels", "num_channels", "in_chans") or 3
    side = GRID_SIDE * merge
    window = _field(vision, "window_size") or 0
    if isinstance(window, int) and window >= vision.patch_size:
        side = max(side, -(-2 * (window // vision.patch_size) // merge) * merge)
    wide = max(side, -(-2 * _table_windows(vision) // merge) * merge)
    grid = torch.tensor([[1, side, wide]] * (EXAMPLE_BATCH * GRID_IMAGES), dtype=torch.long)
    rows = torch.randn(len(grid) * side * wide, channels * temporal * vision.patch_size**2, generator=gen)
    return rows.to(device, dtype), grid.to(device)


def _table_windows(vision: Any) -> int:
    """The width in patches of an attention window that is the position table (``pos_emb_width``, where the
    config's ``layer_types`` name window attention and it sets no ``window_size``: MuseSpark); 0 otherwise."""
    width = _field(vision, "pos_emb_width")
    kinds = _field(vision, "layer_types") or ()
    windowed = any("window" in str(kind) for kind in kinds)
    if not windowed or not isinstance(width, int) or _field(vision, "window_size") is not None:
        return 0
    return width


def _pixel_candidates(model: nn.Module, vision: Any, params: Any, device: torch.device, dtype: torch.dtype,
                      gen: torch.Generator) -> list[dict[str, Tensor]]:
    """Image inputs, in the layouts the model may take (the first its ``get_image_features`` accepts is used)."""
    grid_key = next((k for k in ("image_grid_thw", "grid_thw") if k in params), None)
    patch_key = "pixel_values" if "pixel_values" in params else "hidden_states"
    if grid_key is not None and getattr(vision, "patch_size", None):  # Qwen2-VL: flattened patches and their grid
        rows, grid = _patch_rows(vision, device, dtype, gen)
        extra = {}
        merge = _field(vision, "spatial_merge_size", "merge_size") or 1
        for key in ("image_merge_sizes", "merge_sizes"):  # the merge of each image passed in (VideoLLaMA 3)
            if key in params:
                extra[key] = torch.full((len(grid),), merge, dtype=torch.long, device=device)
        out = [{patch_key: rows, grid_key: grid, **extra}]
        p = vision.patch_size
        if rows.shape[1] % (p * p) == 0:  # or unflattened (patches, C, p, p), optionally batched (Kimi, PaddleOCR-VL)
            square = rows.view(rows.shape[0], -1, p, p)
            out += [{patch_key: square, grid_key: grid, **extra}, {patch_key: square[None], grid_key: grid, **extra}]
        out += _merged_patches(vision, rows, grid, patch_key, grid_key, extra)
        return out
    positions = _position_id_patches(vision, params, device, dtype, gen) or _navit_patches(vision, params, device,
                                                                                           dtype, gen)
    if positions:
        return positions
    pooled = _pooled_crops(vision, params, device, dtype, gen)
    if pooled:
        return pooled
    if "spatial_shapes" in params:  # NaFlex: patches of a 4 x 4 grid, the second image 3 x 4 and padded
        side, p, c = 4, vision.patch_size, vision.num_channels
        pixels = torch.randn(EXAMPLE_BATCH, side * side, c * p * p, generator=gen).to(device, dtype)
        mask = torch.ones(EXAMPLE_BATCH, side * side, dtype=torch.long)
        mask[1, (side - 1) * side :] = 0
        shapes = torch.tensor([[side, side], [side - 1, side]][:EXAMPLE_BATCH])
        return [{"pixel_values": pixels, "pixel_attention_mask": mask.to(device), "spatial_shapes": shapes.to(device)}]
    size = _image_size(model.config, vision)
    image = _image(EXAMPLE_BATCH, getattr(vision, "num_channels", 3), size, device, dtype, gen)
    frames = getattr(vision, "num_frames", None)
    if isinstance(frames, int) and frames > 0:  # video (VideoMAE, TimeSformer, ViViT, X-CLIP): (B, T, C, H, W)
        padded = _field(vision, "max_img_size")  # frames padded to the size of a visual prompt's frame (TVP)
        if isinstance(padded, int) and padded > 0:
            image = _image(EXAMPLE_BATCH, image.shape[1], (padded, padded), device, dtype, gen)
        return [{"pixel_values": torch.stack([image] * frames, dim=1)}]
    tiled = _tiled_images(vision, params, image)
    if tiled:
        return tiled
    pinpoints = getattr(model.config, "image_grid_pinpoints", None)
    if pinpoints and "image_sizes" in params:  # LLaVA-NeXT "anyres": an image of the first pinpoint's size, as
        high, wide = pinpoints[0]  # its crops of the tower's size plus the whole image resized, (B, crops, C, H, W)
        crops = 1 + -(-high // size[0]) * -(-wide // size[1])
        tiles = torch.stack([_image(EXAMPLE_BATCH, image.shape[1], size, device, dtype, gen) for _ in range(crops)], 1)
        return [{"pixel_values": tiles, "image_sizes": torch.tensor([[high, wide]] * EXAMPLE_BATCH, device=device)}]
    # (B, C, H, W), else one image per sample (B, images, C, H, W) (Idefics 2/3, SmolVLM); each also with the
    # size of every image where the forward takes it (Mistral 3)
    sizes: list[dict[str, Tensor]] = [{}]
    if "image_sizes" in params:
        sizes.append({"image_sizes": torch.tensor([list(size)] * EXAMPLE_BATCH, device=device)})
    out = [{"pixel_values": pixels, **extra} for pixels in (image, image.unsqueeze(1)) for extra in sizes]
    out = _with_tile_masks(model, out) + _flat_patches(vision, image) + [_image_pair(image)]
    second = _second_images(model.config, params, device, dtype, gen)
    return _with_prompt_images([{**layout, **second} for layout in out], params, gen)


def _indexed_patches(vision: Any, device: torch.device, dtype: torch.dtype, gen: torch.Generator) -> dict[str, Tensor]:
    """Pix2Struct-style ``flattened_patches`` where the vision config gives their width (``patch_embed_hidden_size``):
    ``(B, N, 2 + width)``, each row the patch's row and column, counted from 1 (0 is padding, as the processor
    writes them), in a grid of ``GRID_SIDE**2`` patches a side, then its values (Kosmos-2.5); {} otherwise."""
    width = _field(vision, "patch_embed_hidden_size")
    if not isinstance(width, int) or width < 1:
        return {}
    side = GRID_SIDE * GRID_SIDE
    rows, cols = torch.meshgrid(torch.arange(1, side + 1), torch.arange(1, side + 1), indexing="ij")
    where = torch.stack([rows.flatten(), cols.flatten()], -1).to(torch.float32).expand(EXAMPLE_BATCH, -1, -1)
    values = torch.randn(EXAMPLE_BATCH, side * side, width, generator=gen)
    return {"flattened_patches": torch.cat([where, values], -1).to(device, dtype)}


def _image_pair(image: Tensor) -> dict[str, Tensor]:
    """``image`` and its mirror image as a pair a sample, ``(B, 2, C, H, W)``, for models matching the points of
    two images (LightGlue, EfficientLoFTR): the same content, flipped left to right, so that points match."""
    return {"pixel_values": torch.stack([image, image.flip(-1)], dim=1)}


def _image_size(config: Any, vision: Any) -> tuple[int, int]:
    """``image_size`` (224 if unset); but where a projector takes only some patch counts
    (``projector_patch_to_query_dict``, Aria's), the square image of ``patch_size`` patches giving the smallest;
    and where the image is scaled down by ``scaled_images_ratios`` and cut into ``patch_size`` patches (DepthPro),
    at least ``patch_size / min(ratios)`` a side, so that the smallest scaled image holds a patch."""
    counts = _field(config, "projector_patch_to_query_dict")
    p = _field(vision, "patch_size")
    if isinstance(counts, dict) and counts and isinstance(p, int):
        fewest = min(int(n) for n in counts)
        side = math.isqrt(fewest)
        if side * side == fewest:
            return side * p, side * p
    high, wide = _pair(getattr(vision, "image_size", 224))
    ratios = _field(config, "scaled_images_ratios")
    if ratios and isinstance(p, int) and min(ratios) > 0:
        least = math.ceil(p / min(ratios))
        high, wide = max(high, least), max(wide, least)
    return high, wide


def _tiled_images(vision: Any, params: Any, image: Tensor) -> list[dict[str, Tensor]]:
    """Tiled images for a forward taking ``aspect_ratio_ids`` (Mllama): one image a sample, of the config's first
    ``supported_aspect_ratios`` (id 1; 0 is padding), padded to ``max_num_tiles`` tiles, ``(B, 1, tiles, C, H, W)``,
    with its ``aspect_ratio_mask`` ``(B, 1, tiles)`` (1 = a tile of the image); [] otherwise. The text's
    ``cross_attention_mask`` follows once the text is built (``_text_image_masks``)."""
    tiles, ratios = _field(vision, "max_num_tiles"), _field(vision, "supported_aspect_ratios")
    if "aspect_ratio_ids" not in params or not isinstance(tiles, int) or not ratios:
        return []
    used = int(torch.tensor(ratios[0]).prod())
    pixels = torch.zeros(EXAMPLE_BATCH, 1, tiles, *image.shape[1:], device=image.device, dtype=image.dtype)
    pixels[:, 0, :used] = image[:, None]
    mask = torch.zeros(EXAMPLE_BATCH, 1, tiles, dtype=torch.long, device=image.device)
    mask[..., :used] = 1
    ids = torch.ones(EXAMPLE_BATCH, 1, dtype=torch.long, device=image.device)
    out = {"pixel_values": pixels, "aspect_ratio_ids": ids}
    if "aspect_ratio_mask" in params:
        out["aspect_ratio_mask"] = mask
    return [out]


def _with_query_positions(config: Any, params: Any, ids: Tensor, image: dict[str, Tensor]) -> tuple[Tensor, dict]:
    """For a forward that puts its image's ``latent_query_num`` query features at the text positions an
    ``image_embeds_position_mask`` marks (Kosmos-2, no image token): ``ids`` with as many more tokens after the
    first ``PADDED + 1`` of each sample (their ids, replaced by the features, are random text) and that mask
    ``(B, L)``; ``ids`` unchanged and {} otherwise (or without pixels)."""
    queries = _field(config, "latent_query_num")
    if "image_embeds_position_mask" not in params or not isinstance(queries, int) or queries < 1 or not image:
        return ids, {}
    cut = min(PADDED + 1, ids.shape[1])
    filler = ids[:, :1].expand(-1, queries)  # the sample's first token again (any text id)
    ids = torch.cat([ids[:, :cut], filler, ids[:, cut:]], dim=1)
    mask = torch.zeros_like(ids)
    mask[:, cut : cut + queries] = 1
    return ids, {"image_embeds_position_mask": mask}


def _text_image_masks(layout: dict[str, Tensor], ids: Tensor, params: Any) -> dict[str, Tensor]:
    """Every text token attending to every image of its sample, for a forward that cross-attends from the text
    to the images: ``cross_attention_mask`` ``(B, L, images, tiles)`` where the images came with an
    ``aspect_ratio_mask`` (Mllama: the image's tiles, not the padding), ``image_attention_mask`` ``(B, L,
    images)`` for ``(B, images, C, H, W)`` images (Idefics); {} otherwise."""
    tiles, pixels = layout.get("aspect_ratio_mask"), layout.get("pixel_values")
    if "cross_attention_mask" in params and tiles is not None:
        return {"cross_attention_mask": tiles[:, None].expand(-1, ids.shape[1], -1, -1).contiguous()}
    if "image_attention_mask" in params and pixels is not None and pixels.dim() == 5:
        return {"image_attention_mask": torch.ones(*ids.shape, pixels.shape[1], dtype=torch.long, device=ids.device)}
    return {}


def _second_images(config: Any, params: Any, device: torch.device, dtype: torch.dtype,
                   gen: torch.Generator) -> dict[str, Tensor]:
    """The image again for a second tower: ``<name>_pixel_values`` where the forward takes them and the config
    has ``<name>_vision_config``, at that config's ``image_size`` (DeepSeek-VL hybrid's high-resolution SAM)."""
    out = {}
    for key in params:
        tower = getattr(config, key.removesuffix("pixel_values") + "vision_config", None) if key.endswith(
            "_pixel_values") else None
        if tower is not None and _field(tower, "image_size") is not None:
            channels = _field(tower, "num_channels", "in_channels") or 3
            out[key] = _image(EXAMPLE_BATCH, channels, _pair(tower.image_size), device, dtype, gen)
    return out


def _with_prompt_images(layouts: list[dict[str, Tensor]], params: Any, gen: torch.Generator) -> list[dict[str, Tensor]]:
    """``layouts`` with the visual prompts a forward requires beside its image (``<prefix>_pixel_values`` that no
    ``<prefix>_vision_config`` sizes: in-context segmentation, SegGPT), each an image of the layout's
    ``pixel_values``' shape, and its ``<prefix>_masks`` where the forward takes them, likewise; then, for
    ``(B, C, H, W)`` images, the image and its prompts each half as tall (a model that stacks the prompt above
    the image, whose ``image_size`` is the pair's). Unchanged where the forward requires no prompt."""
    required = _required(params)
    prefixes = [k.removesuffix("pixel_values") for k in required
                if k.endswith("_pixel_values") and not any(k in layout for layout in layouts)]
    if not prefixes:
        return layouts

    def prompted(layout: dict[str, Tensor], pixels: Tensor) -> dict[str, Tensor]:
        out = {**layout, "pixel_values": pixels}
        for prefix in prefixes:
            for key in (prefix + "pixel_values", prefix + "masks"):
                if key in params:
                    out[key] = torch.randn(pixels.shape, generator=gen).to(pixels.device, pixels.dtype)
        return out

    same = [prompted(layout, layout["pixel_values"]) for layout in layouts if "pixel_values" in layout]
    halves = [prompted(layout, layout["pixel_values"][:, :, : layout["pixel_values"].shape[2] // 2].contiguous())
              for layout in layouts if layout.get("pixel_values") is not None and layout["pixel_values"].dim() == 4]
    return same + halves


def _with_tile_masks(model: nn.Module, layouts: list[dict[str, Tensor]]) -> list[dict[str, Tensor]]:
    """``layouts`` with an all-valid ``pixel_attention_mask`` where ``get_image_features`` requires one: for a
    ``(B, tiles, C, H, W)`` image, one flag per tile ``(B, tiles)`` (Granite Docling) or one per pixel
    ``(B, tiles, H, W)`` (Idefics 3's layout); unchanged elsewhere."""
    fn = _image_features(model)
    if fn is None or "pixel_attention_mask" not in _required(inspect.signature(fn).parameters):
        return layouts
    out = []
    for layout in layouts:
        pixels = layout["pixel_values"]
        if pixels.dim() == 5:
            for shape in (pixels.shape[:2], (*pixels.shape[:2], *pixels.shape[-2:])):
                out.append({**layout, "pixel_attention_mask": torch.ones(shape, dtype=torch.bool, device=pixels.device)})
        else:
            out.append(layout)
    return out


def _merged_patches(vision: Any, rows: Tensor, grid: Tensor, patch_key: str, grid_key: str,
                    extra: dict) -> list[dict[str, Tensor]]:
    """Patches in units of the spatial merge: one ``(merge x patch)``-square, channels-last block per merged
    token, ``(tokens, m*p, m*p, C)``, with the grid counted in merged tokens (Inkling 2); [] for a temporal
    patch (its blocks would have no axis to hold the frames). The values are ``rows``'."""
    merge = _field(vision, "spatial_merge_size", "merge_size") or 1
    if merge < 2 or (_field(vision, "temporal_patch_size", "patch_temporal") or 1) != 1:
        return []
    side = merge * vision.patch_size
    merged = grid // torch.tensor([1, merge, merge], device=grid.device)
    blocks = rows.reshape(int(merged.prod(-1).sum()), side, side, -1)
    return [{patch_key: blocks, grid_key: merged, **extra}]


def _position_id_patches(vision: Any, params: Any, device: torch.device, dtype: torch.dtype,
                         gen: torch.Generator) -> list[dict[str, Tensor]]:
    """Patches with their ``(x, y)`` positions (a forward taking ``pixel_position_ids`` / ``image_position_ids``,
    Gemma 4): ``(B, N, C x patch_size**2)`` rows of a square grid of ``GRID_SIDE x pooling_kernel_size``
    patches a side (the pooling averages whole kernels), and the positions ``(B, N, 2)``; [] otherwise."""
    key = next((k for k in ("pixel_position_ids", "image_position_ids") if k in params), None)
    p = _field(vision, "patch_size")
    if key is None or not isinstance(p, int):
        return []
    side = GRID_SIDE * (_field(vision, "pooling_kernel_size") or 1)
    channels = _field(vision, "num_channels", "in_channels") or 3
    pixels = torch.randn(EXAMPLE_BATCH, side * side, channels * p * p, generator=gen).to(device, dtype)
    rows, cols = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    xy = torch.stack([cols.flatten(), rows.flatten()], -1).expand(EXAMPLE_BATCH, -1, -1).contiguous()
    return [{"pixel_values": pixels, key: xy.to(device)}]


POOL_SIDE = 2  # patches a side that one image token pools, for a forward that takes the pooling (Molmo2)


def _pooled_crops(vision: Any, params: Any, device: torch.device, dtype: torch.dtype,
                  gen: torch.Generator) -> list[dict[str, Tensor]]:
    """Crops of flattened patches whose image tokens each pool a few patches, for a forward taking
    ``image_token_pooling`` and ``image_grids`` (Molmo2): one crop an image, one image a sample, ``(B, 1, N, C x
    p**2)`` with ``N = num_position_embeddings`` (a square grid: the tower adds one position a patch); each
    token pooling a ``POOL_SIDE``-square of the crop's patches (indices within the image, -1 past its edge),
    ``(tokens, POOL_SIDE**2)``; each image's grid of tokens ``(h, w, 0, 0)`` (no second, high-resolution grid)
    and ``image_num_crops``; [] otherwise."""
    count, p = _field(vision, "num_position_embeddings"), _field(vision, "patch_size")
    if not {"image_token_pooling", "image_grids"} <= set(params) or not isinstance(count, int) or not isinstance(p, int):
        return []
    side = math.isqrt(count)
    if side * side != count:
        return []
    channels = _field(vision, "num_channels", "in_channels") or 3
    pixels = torch.randn(EXAMPLE_BATCH, 1, count, channels * p * p, generator=gen).to(device, dtype)
    tokens = -(-side // POOL_SIDE)
    at = torch.arange(tokens * POOL_SIDE)
    rows = (at.view(tokens, 1, POOL_SIDE, 1)).expand(tokens, tokens, POOL_SIDE, POOL_SIDE)
    cols = (at.view(1, tokens, 1, POOL_SIDE)).expand(tokens, tokens, POOL_SIDE, POOL_SIDE)
    index = torch.where((rows < side) & (cols < side), rows * side + cols, -1).reshape(tokens * tokens, -1)
    one = torch.ones(EXAMPLE_BATCH, dtype=torch.long)
    return [{
        "pixel_values": pixels,
        "image_token_pooling": index.repeat(EXAMPLE_BATCH, 1).to(device),
        "image_grids": torch.tensor([[tokens, tokens, 0, 0]] * EXAMPLE_BATCH, device=device),
        **({"image_num_crops": one.to(device)} if "image_num_crops" in params else {}),
    }]


def _navit_patches(vision: Any, params: Any, device: torch.device, dtype: torch.dtype,
                   gen: torch.Generator) -> list[dict[str, Tensor]]:
    """NaViT-packed images for a forward taking ``target_sizes`` (MiniCPM-V's tower): every image's patches in one
    row of patches, ``(1, C, p, N x p)``, and each image's ``(h, w)`` in patches, ``GRID_SIDE x
    window_kernel_size`` a side (its merges take whole windows), ``GRID_IMAGES`` images a sample; [] otherwise."""
    p = _field(vision, "patch_size")
    if "target_sizes" not in params or not isinstance(p, int):
        return []
    kernel = _field(vision, "window_kernel_size") or (1, 1)
    side = GRID_SIDE * max(_pair(kernel))
    sizes = torch.tensor([[side, side]] * (EXAMPLE_BATCH * GRID_IMAGES), dtype=torch.long)
    channels = _field(vision, "num_channels", "in_channels") or 3
    pixels = torch.randn(1, channels, p, len(sizes) * side * side * p, generator=gen).to(device, dtype)
    return [{"pixel_values": pixels, "target_sizes": sizes.to(device)}]


def _flat_patches(vision: Any, image: Tensor) -> list[dict[str, Tensor]]:
    """``image`` as flattened patches, every sample's packed, ``(B x N, C x patch_size**2)``, then
    ``(B, N, C x patch_size**2)`` (Fuyu, NeoMME: a linear patch embedding; packed first, as NeoMME's
    get_image_features takes either but its forward only the packed), tried after the images; [] without a
    patch size (the image cropped to whole patches). With a ``temporal_patch_size``, also the still image's
    channels-last cubes, ``(B x N, T, p, p, C)`` (Inkling's tower)."""
    p = _field(vision, "patch_size")
    if not isinstance(p, int) or not 0 < p <= min(image.shape[-2:]):
        return []
    rows = nn.functional.unfold(image, p, stride=p).transpose(1, 2).contiguous()  # (B, N, C p p)
    out = [{"pixel_values": rows.flatten(0, 1)}, {"pixel_values": rows}]
    temporal = _field(vision, "temporal_patch_size", "patch_temporal")
    if isinstance(temporal, int) and temporal > 0:  # channels-last cubes of the still image, (B N, T, p, p, C)
        cubes = rows.flatten(0, 1).view(-1, image.shape[1], p, p).permute(0, 2, 3, 1)
        out.append({"pixel_values": cubes[:, None].expand(-1, temporal, -1, -1, -1).contiguous()})
    return out


def _video_candidates(config: Any, device: torch.device, dtype: torch.dtype, gen: torch.Generator,
                      timm_size: tuple[int, int] | None = None) -> list[dict[str, Tensor]]:
    """A clip for a video model's ``pixel_values_videos``: ``num_frames`` (``frames_per_clip``) frames of
    ``image_size`` (``crop_size``), as ``(B, T, C, H, W)`` or ``(B, C, T, H, W)``; where the config sets neither
    and the frames go to a timm tower (``timm_size``, its ``patch_embed.img_size``: PE Video), ``VIDEO_FRAMES``
    frames of that size; [] when the config says too little."""
    video = _field(config, "vision_config", "video_config")
    video = video if _field(video, "num_frames", "frames_per_clip") is not None else config
    frames = _field(video, "num_frames", "frames_per_clip")
    size = _field(video, "image_size", "crop_size")
    if frames is None and size is None and timm_size is not None:
        frames, size = VIDEO_FRAMES, timm_size
    if not isinstance(frames, int) or frames < 1 or size is None:
        return []
    channels = _field(video, "num_channels", "in_channels", "in_chans") or 3
    clip = torch.randn(EXAMPLE_BATCH, frames, channels, *_pair(size), generator=gen).to(device, dtype)
    return [{"pixel_values_videos": clip}, {"pixel_values_videos": clip.transpose(1, 2).contiguous()}]


def _timm_tower_size(model: nn.Module) -> tuple[int, int] | None:
    """The image size of the first timm model inside a Hugging Face one (its ``patch_embed.img_size``: a
    ``TimmWrapper`` tower, whose config names only the architecture); None without one."""
    for m in model.modules():
        size = getattr(getattr(m, "patch_embed", None), "img_size", None)
        if type(m).__module__.startswith("timm.") and size:
            return _pair(size)
    return None


def _series_candidates(config: Any, params: Any, device: torch.device, dtype: torch.dtype,
                       gen: torch.Generator) -> list[dict[str, Tensor]]:
    """A time series for ``past_values``: ``context_length`` (else ``prediction_length``) steps plus the longest
    lag, of ``num_input_channels`` (``input_size``) channels, as ``(B, T, C)`` or, for one ``input_size``, ``(B, T)``;
    with all-observed ``past_observed_mask``, ``num_time_features`` time features, TimesFM's padding and frequency
    where the forward takes them. [] when the config says too little."""
    context = _field(config, "context_length", "prediction_length")
    if not isinstance(context, int) or context < 1:
        return []
    lags = _field(config, "lags_sequence") or [0]
    steps = context + max(lags)
    channels = _field(config, "num_input_channels", "input_size") or 1
    series = torch.randn(EXAMPLE_BATCH, steps, channels, generator=gen).to(device, dtype)
    layouts = [series]
    if channels == 1:  # a univariate series: (B, T) where the config counts an input_size (TST, Informer), else (B, T, 1)
        layouts = [series[..., 0], series] if _field(config, "num_input_channels") is None else [series, series[..., 0]]
    out = []
    for values in layouts:
        extra: dict[str, Tensor] = {}
        if "past_observed_mask" in params:
            extra["past_observed_mask"] = torch.ones_like(values)
        if "past_time_features" in params:
            features = _field(config, "num_time_features") or 0
            extra["past_time_features"] = torch.zeros(EXAMPLE_BATCH, steps, features, device=device, dtype=dtype)
        if "past_values_padding" in params:
            extra["past_values_padding"] = torch.zeros(EXAMPLE_BATCH, steps, device=device, dtype=dtype)
        if "freq" in params:
            extra["freq"] = torch.zeros(EXAMPLE_BATCH, 1, dtype=torch.long, device=device)
        out.append({"past_values": values, **extra})
    return out


_IMAGE_TOKEN = ("image_token_id", "image_token_index")
_AUDIO_TOKEN = ("audio_token_id", "audio_token_index")
_IMAGE_START = ("vision_start_token_id", "image_start_token_id", "boi_token_id", "boi_token_index")
_IMAGE_END = ("vision_end_token_id", "image_end_token_id", "eoi_token_id", "eoi_token_index")


def _special_tokens(*configs: Any) -> list[int]:
    """The ids a config reserves (``*_token_id``, ``*_token_index``): random text avoids them."""
    ids = set()
    for cfg in configs:
        for key in dir(cfg):
            if key.endswith(("_token_id", "_token_index")) and not key.startswith("_"):
                value = getattr(cfg, key, None)
                if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
                    ids.add(value)
    return sorted(ids)


def _image_features(model: nn.Module) -> Any:
    """The model's ``get_image_features``, else its encoder's (T5Gemma 2: the images go to the encoder of an
    encoder-decoder); None if neither has one."""
    fn = getattr(model, "get_image_features", None)
    encoder: Any = getattr(model, "get_encoder", None)
    if fn is None and callable(encoder):
        try:
            fn = getattr(encoder(), "get_image_features", None)
        except Exception:  # noqa: BLE001 - no encoder to ask
            fn = None
    return fn


def _count_features(fn: Any, media: dict[str, Tensor]) -> list[int]:
    """Media tokens of each sample: the feature vectors ``fn`` (the model's ``get_image_features`` /
    ``get_audio_features``) returns for its image or audio (so the count includes whatever the projector
    pools, pixel-shuffles or adds); all of them where ``fn`` names none (``(*args, **kwargs)``: a wrapper passing
    them on). Raises what the model raises."""
    accepted = inspect.signature(fn).parameters
    kw = {(k if k in accepted else k.removeprefix("image_")): v for k, v in media.items()
          if k in accepted or k.removeprefix("image_") in accepted}
    if not kw and any(p.kind is p.VAR_KEYWORD for p in accepted.values()):
        kw = dict(media)
    with torch.no_grad():
        out = fn(**kw)
    if not isinstance(out, Tensor) and hasattr(out, "pooler_output"):
        out = out.pooler_output if out.pooler_output is not None else out.last_hidden_state
    if isinstance(out, Tensor) and out.dim() == 3 and out.shape[0] == EXAMPLE_BATCH:  # (B, tokens, D)
        return [out.shape[1]] * EXAMPLE_BATCH
    tensors = [t for t in _flatten(out) if isinstance(t, Tensor) and t.dim() > 0 and t.shape[-1]]
    rows = [t.numel() // t.shape[-1] for t in tensors]
    if len(rows) == EXAMPLE_BATCH:  # one entry per image
        return rows
    if not rows or sum(rows) % EXAMPLE_BATCH:
        raise ValueError(f"{len(rows)} feature tensors with {sum(rows)} rows for {EXAMPLE_BATCH} samples")
    return [sum(rows) // EXAMPLE_BATCH] * EXAMPLE_BATCH  # every image's features in one (tokens, D)


_GRIDS = ("image_grid_thw", "grid_thw", "target_sizes")  # one row per image of packed patches


def _batch_readable(layout: dict[str, Tensor]) -> bool:
    """The engine can read the batch off the layout without text before it: packed patches come with their
    images' grid (put first), else the pixels have one entry per sample. Packed patches alone (``(B x N, ...)``,
    the layouts for a VLM's text to place) would pass for a batch of patches."""
    pixels = layout.get("pixel_values")
    return any(k in layout for k in _GRIDS) or pixels is None or pixels.shape[0] == EXAMPLE_BATCH


def _no_vision_tower(config: Any) -> bool:
    """The config names a vision sub-config and leaves it unset: the model was built without its vision tower."""
    return hasattr(config, "vision_config") and config.vision_config is None


def _flatten(value: Any) -> list:
    if isinstance(value, (list, tuple)):
        return [x for v in value for x in _flatten(v)]
    return [value]


def _with_media_tokens(ids: Tensor, counts: list[int], images: int, token: int, start: int | None,
                       end: int | None) -> Tensor:
    """``ids`` with ``counts[i]`` image (or audio) tokens in sample ``i``, ``images`` runs of them (each between the
    start and end markers if the model has them, else after a text token) after its first ``PADDED + 1`` text
    tokens, where no sample is padded on either side; samples with fewer image tokens keep more text, so
    that every row has the same length."""
    rows = []
    cut = min(PADDED + 1, ids.shape[1])
    for row, count in zip(ids, counts):
        block = []
        for i in range(images):
            before = [start] if start is not None else ([] if i == 0 else [int(row[0])])
            block += before + [token] * (count // images) + ([end] if end is not None else [])
        text = row[: ids.shape[1] - (count - min(counts)) - (images - 1) * (start is None)]
        rows.append(torch.cat([text[:cut], torch.tensor(block, dtype=ids.dtype, device=ids.device), text[cut:]]))
    return torch.stack(rows)


AUDIO_FRAMES = 64  # spectrogram frames of an example clip (8 after the usual 8x subsampling)
AUDIO_HOPS = 4  # codec frames of an example waveform
SPEECH_RATE = 16_000  # samples a second of a waveform whose config names no rate (Moonshine): the usual speech rate
_FEATURE_MASKS = ("input_features_mask", "feature_attention_mask")  # 1 = a valid frame


_AUDIO_INPUTS = ("input_features", "input_values")  # a speech model's main input, or a text model's audio
_MEL = ("num_mel_bins", "input_feat_size", "input_feat_per_channel", "feature_projection_input_dim", "feature_size")


def _sub_configs(config: Any) -> list[Any]:
    """The config's nested configs (``*_config`` attributes that are configs themselves)."""
    subs = (getattr(config, k, None) for k in dir(config) if k.endswith("_config") and not k.startswith("_"))
    return [c for c in subs if hasattr(c, "to_dict")]


def _deep_field(config: Any, *names: str) -> Any:
    """The first of ``names`` the config sets, else the first one of its nested configs sets (the features'
    width of a codec's semantic encoder in its ``semantic_model_config``)."""
    value = _field(config, *names)
    return value if value is not None else next(
        (v for v in (_field(sub, *names) for sub in _sub_configs(config)) if v is not None), None)


def _audio_key(params: Any, main: str) -> str | None:
    """The audio argument to build: the main input of a speech model, else the audio a text model's forward
    takes alongside its ``input_ids`` (CLAP, CLVP, Voxtral Realtime)."""
    if main in _AUDIO_INPUTS:
        return main
    if main == "input_ids" and main in params:
        return next((k for k in _AUDIO_INPUTS if k in params), None)
    return None


def _audio_tower(model: nn.Module, key: str) -> Any:
    """The model's audio tower as a function of keyword arguments: the first submodule whose ``main_input_name``
    is the audio argument ``key``, called with its forward's signature, returning its ``last_hidden_state``
    (its frames, not a pooled vector); None if no submodule takes ``key``."""
    tower = next((m for name, m in model.named_modules() if name and getattr(m, "main_input_name", None) == key), None)
    if tower is None:
        return None

    def frames(**kwargs: Any) -> Any:
        out = tower(**kwargs)
        hidden = getattr(out, "last_hidden_state", None)
        return hidden if isinstance(hidden, Tensor) else out

    frames.__signature__ = inspect.signature(tower.forward)  # type: ignore[attr-defined]
    return frames


def _count_audio_tokens(model: nn.Module, params: Any, main: str,
                        media: list[dict[str, Tensor]]) -> tuple[list[int] | None, dict[str, Tensor]]:
    """Audio tokens of each sample of a speech-text model and the audio layout they were counted on: the
    feature vectors its ``get_audio_features`` returns (given the inputs it names, then, where it takes
    ``**kwargs``, all of them: a head's wrapper naming fewer than the model's), else (missing, or failing on
    every layout: Qwen2-Audio, Music Flamingo) the frames its audio tower returns; each counter on every layout
    with its audio. ``(None, {})`` where nothing counts."""
    key = _audio_key(params, main)
    if key is None:
        return None, {}
    layouts = [m for m in media if key in m]
    get_audio = getattr(model, "get_audio_features", None)
    counters: list[Callable[..., Any]] = []
    if callable(get_audio):
        counters.append(get_audio)
        if any(p.kind is p.VAR_KEYWORD for p in inspect.signature(get_audio).parameters.values()):
            counters.append(lambda **kwargs: get_audio(**kwargs))  # every input, the unnamed ones through its **kwargs
    counters += [f for f in (_audio_tower(model, key),) if f is not None]
    for fn in counters:
        for layout in layouts:
            try:
                return _count_features(fn, layout), layout
            except Exception:  # noqa: BLE001, S112 - not this counter or layout: the next one is tried
                continue
    return None, {}


def _audio_candidates(config: Any, params: Any, main: str, device: torch.device, dtype: torch.dtype,
                      gen: torch.Generator) -> list[dict[str, Tensor]]:
    """Audio inputs in the layouts the config allows (the forward picks one: see ``_first_running``); [] when
    the config says too little. A forward that requires both raw audio and features (a codec with a semantic
    encoder: NeuCodec, XCodec2) gets both, each in every layout."""
    key = _audio_key(params, main)
    audio = _field(config, "audio_config", "encoder_config", "asr_config") or config
    if main == "audio_mel" and main in params:
        return _mel_candidates(audio, params, device, dtype, gen)
    if main == "latents" and main in params:  # a codec's decoder alone
        return _latent_candidates(audio, main, device, dtype, gen)
    if main == "input_values" and main not in params and "hidden_states" in _required(params):
        # a codec's encoder or decoder alone whose forward names its input hidden_states (VibeVoice's): a
        # waveform (an encoder's), then latents (a decoder's), the first the forward runs on
        waves = [{"hidden_states": w["input_values"]} for w in _wave_candidates(audio, device, dtype, gen)]
        return waves + _latent_candidates(audio, "hidden_states", device, dtype, gen)
    if key == "input_features":
        return _feature_candidates(config, audio, params, key != main, device, dtype, gen)
    if key != "input_values":
        return []
    waves = _wave_candidates(audio, device, dtype, gen)
    if "input_features" in _required(params):  # features of a frame per hop of the waveform (a codec's)
        hops = AUDIO_HOPS if _codec_hop(audio) and not _has(audio, "conv_kernel", "conv_stride") else None
        features = _feature_candidates(config, audio, params, False, device, dtype, gen, frames=hops)
        return [{**w, **f} for w in waves for f in features]
    # then embeddings of the encoder's width (channels last): an encoder built without the prenet that turns the
    # waveform into them (SpeechT5Model's); tried only where no waveform runs
    width = _field(audio, "hidden_size")
    if not isinstance(width, int) or width <= 0:
        return waves
    return waves + [{key: torch.randn(EXAMPLE_BATCH, AUDIO_HOPS, width, generator=gen).to(device, dtype)}]


def _decoder_values(config: Any, params: Any, device: torch.device, dtype: torch.dtype,
                    gen: torch.Generator) -> list[dict[str, Tensor]]:
    """``decoder_input_values`` of an encoder-decoder whose forward takes them (a speech decoder: SpeechT5's),
    ``TEXT_LENGTH // 2`` frames ``(B, T, width)`` of each width among the config's mel bins (a decoder with its
    spectrogram prenet) and ``hidden_size`` (one without), the first the forward runs on; [] otherwise."""
    if not getattr(config, "is_encoder_decoder", False) or "decoder_input_values" not in params:
        return []
    widths = dict.fromkeys(w for w in (_field(config, *_MEL), _field(config, "hidden_size"))
                           if isinstance(w, int) and w > 0)
    return [{"decoder_input_values": torch.randn(EXAMPLE_BATCH, TEXT_LENGTH // 2, w, generator=gen).to(device, dtype)}
            for w in widths]


def _mel_candidates(audio: Any, params: Any, device: torch.device, dtype: torch.dtype,
                    gen: torch.Generator) -> list[dict[str, Tensor]]:
    """``audio_mel`` (Gemma 3n's audio encoder): ``AUDIO_FRAMES`` frames of the config's mel bins, ``(B, T, mel)``,
    with an all-False ``audio_mel_mask`` ``(B, T)`` (True marks padding); [] when the config names no mel bins."""
    mel = _deep_field(audio, *_MEL)
    if not mel:
        return []
    out = {"audio_mel": torch.randn(EXAMPLE_BATCH, AUDIO_FRAMES, mel, generator=gen).to(device, dtype)}
    if "audio_mel_mask" in params:
        out["audio_mel_mask"] = torch.zeros(EXAMPLE_BATCH, AUDIO_FRAMES, dtype=torch.bool, device=device)
    return [out]


def _feature_candidates(config: Any, audio: Any, params: Any, beside_text: bool, device: torch.device,
                        dtype: torch.dtype, gen: torch.Generator, frames: int | None = None) -> list[dict[str, Tensor]]:
    """``input_features``: a spectrogram of the config's mel bins (times ``num_stacked_frames``, low-frame-rate
    features: Fun-ASR), in the layouts the forward may take; [] when the config names no mel bins."""
    mel = _deep_field(audio, *_MEL)
    if not mel:
        return []
    mel *= _deep_field(audio, "num_stacked_frames") or 1
    # Whisper-style encoders take exactly 2 x their positions; chunked ones (Qwen3-ASR) whole windows; a text
    # model adding an audio frame to each token (Voxtral Realtime) audio_length_per_tok frames a token
    whisper = _field(audio, "max_source_positions") if _has(audio, "num_mel_bins") else None
    per_token = _field(config, "audio_length_per_tok") if beside_text else None
    if per_token and not frames:
        frames = TEXT_LENGTH * per_token
    elif not frames:  # (given: as many as the codec's waveform beside them has hops)
        frames = 2 * whisper if whisper else 2 * (_field(audio, "n_window") or AUDIO_FRAMES // 2)
    spectrogram = torch.randn(EXAMPLE_BATCH, frames, mel, generator=gen).to(device, dtype)
    # Whisper-style: (B, mel, T); others (B, T, mel), (B, mel, T) or one-channel (B, 1, T, mel) (CLAP), whichever
    # the forward runs on
    channels_first = spectrogram.transpose(1, 2).contiguous()
    layouts = [channels_first] if whisper and not per_token else [spectrogram, channels_first, spectrogram[:, None]]
    masks = {k: torch.ones(EXAMPLE_BATCH, frames, dtype=torch.long, device=device) for k in _FEATURE_MASKS if k in params}
    chunk = _field(config, "audio_chunk_size") or _field(audio, "audio_chunk_size")
    if "padding_mask" in params and isinstance(chunk, int) and chunk > 0:  # the raw audio's valid samples, one
        masks["padding_mask"] = torch.ones(EXAMPLE_BATCH, chunk, dtype=torch.long, device=device)  # window a sample
    return [{"input_features": x, **masks} for x in layouts]


def _codec_hop(audio: Any) -> int | None:
    """A codec's samples a frame: ``hop_length`` / ``frame_size``, else the product of its stages' strides."""
    ratios = _field(audio, "downsampling_ratios", "upsampling_ratios", "patch_sizes")  # strides of its stages
    return _field(audio, "hop_length", "frame_size") or (int(torch.tensor(ratios).prod()) if ratios else None)


def _wave_candidates(audio: Any, device: torch.device, dtype: torch.dtype, gen: torch.Generator) -> list[dict[str, Tensor]]:
    """``input_values``: a spectrogram ``(B, max_length, mel)`` where the config has both (AST), else raw audio
    as ``(B, T)`` or ``(B, channels, T)``."""
    mel = _field(audio, *_MEL)
    length = _field(audio, "max_length")
    if mel and length:  # a spectrogram named input_values (AST): (B, T, mel)
        return [{"input_values": torch.randn(EXAMPLE_BATCH, length, mel, generator=gen).to(device, dtype)}]
    if _has(audio, "conv_kernel", "conv_stride"):  # wav2vec2, HuBERT: raw audio
        samples = _audio_samples(audio)
    else:  # codecs: a few frames of their hop (or 1 s at their sampling rate, else at SPEECH_RATE)
        hop = _codec_hop(audio)
        rate = _field(audio, "sampling_rate") or SPEECH_RATE
        samples = AUDIO_HOPS * hop if hop else rate
    wave = torch.randn(EXAMPLE_BATCH, samples, generator=gen).to(device, dtype)
    channels = _field(audio, "audio_channels", "channels") or 1
    multi = wave.unsqueeze(1).expand(-1, channels, -1).contiguous()
    return [{"input_values": wave}, {"input_values": multi}] if channels == 1 else [{"input_values": multi}]


_LATENT_WIDTHS = ("hidden_size", "latent_dim", "vae_dim")  # the channels of a codec's continuous latents


def _latent_candidates(audio: Any, key: str, device: torch.device, dtype: torch.dtype,
                       gen: torch.Generator) -> list[dict[str, Tensor]]:
    """Continuous latents of a codec's decoder, ``AUDIO_HOPS`` frames: for each width among the config's
    ``_LATENT_WIDTHS``, channels first ``(B, width, T)`` then channels last ``(B, T, width)``; [] without one."""
    widths = dict.fromkeys(w for w in (_field(audio, n) for n in _LATENT_WIDTHS) if isinstance(w, int) and w > 0)
    out = []
    for width in widths:
        latents = torch.randn(EXAMPLE_BATCH, width, AUDIO_HOPS, generator=gen).to(device, dtype)
        out += [{key: latents}, {key: latents.transpose(1, 2).contiguous()}]
    return out


_VIDEO_TOKEN = ("video_token_id", "video_token_index")


VIDEO_FRAMES = 2  # frames of an example clip beside the images, where the config counts none


def _clip_beside_images(model: nn.Module, config: Any, vision: Any, params: Any,
                        image: dict[str, Tensor]) -> tuple[dict[str, Tensor], list[int]]:
    """A clip beside a VLM's images, where its forward takes ``pixel_values_videos``, its config sets a video token
    and it has a ``get_video_features`` (a video tower of its own goes unrun otherwise: Video-LLaVA's): the
    example image (a plain ``(B, C, H, W)`` layout) as ``num_frames`` (else ``VIDEO_FRAMES``) frames,
    ``(B, T, C, H, W)``, and the video tokens of each sample, counted as the image tokens on its
    ``get_video_features``; ({}, []) where it does not count (the images alone, as before)."""
    fn: Any = getattr(model, "get_video_features", None)
    pixels = image.get("pixel_values")
    if ("pixel_values_videos" not in params or _field(config, *_VIDEO_TOKEN) is None or not callable(fn)
            or set(image) != {"pixel_values"} or pixels is None or pixels.dim() != 4):
        return {}, []
    frames = _field(vision, "num_frames") or _field(config, "num_frames") or VIDEO_FRAMES
    clip = {"pixel_values_videos": pixels[:, None].expand(-1, frames, -1, -1, -1).contiguous()}
    try:
        return clip, _count_features(fn, clip)
    except Exception:  # noqa: BLE001 - not a clip it takes: the images alone
        return {}, []


def _check_video_token(model: nn.Module, config: Any, modalities: Any, image_token: Any, frames_in_text: bool) -> None:
    """A video-language model whose config leaves its video token unset (and has no image token): no text can
    hold its frames, so ``ExampleInputsError`` names the field rather than a forward that cannot find them."""
    unset = next((n for n in _VIDEO_TOKEN if hasattr(config, n) and getattr(config, n) is None), None)
    if frames_in_text and "video" in modalities and image_token is None and unset is not None:
        raise ExampleInputsError(
            f"{type(model).__name__}: its config's {unset} is None, so no text can hold its video frames (the "
            f"forward looks for that token, so example_inputs= alone cannot serve either); set config.{unset} to "
            f"your checkpoint's video token (its processor's)."
        )


VISUAL_REGIONS = 4  # detected regions of an example image, for models that take region features


def _boxes(count: int, device: torch.device, dtype: torch.dtype, gen: torch.Generator) -> Tensor:
    """``count`` boxes a sample, ``(B, count, 4)`` as ``(x1, y1, x2, y2)`` within [0, 1], ``x1 <= x2``, ``y1 <= y2``."""
    corners = torch.rand(EXAMPLE_BATCH, count, 2, 2, generator=gen).sort(dim=2).values  # 2 points (x, y)
    return corners.reshape(EXAMPLE_BATCH, count, 4).to(device, dtype)


def _beside_text(config: Any, params: Any, ids: Tensor, device: torch.device, dtype: torch.dtype,
                 gen: torch.Generator) -> dict[str, Tensor]:
    """What a text model's forward needs beside its tokens, where its config sizes it: ``VISUAL_REGIONS``
    region features of ``visual_feat_dim`` with their boxes (``visual_pos_dim`` = 4: corners within [0, 1])
    (LXMERT); a box within [0, 1] per token where the config scales normalized boxes (``bbox_scale``: BROS) or the
    forward also takes the image patches' boxes (``visual_bbox``: UDOP places each patch by the boxes of the text);
    every sample in the first of the config's ``languages`` where it sets no default (X-MOD's adapters)."""
    out: dict[str, Tensor] = {}
    feat, pos = _field(config, "visual_feat_dim"), _field(config, "visual_pos_dim")
    if "visual_feats" in params and "visual_pos" in params and isinstance(feat, int) and pos == 4:
        out["visual_feats"] = torch.randn(EXAMPLE_BATCH, VISUAL_REGIONS, feat, generator=gen).to(device, dtype)
        out["visual_pos"] = _boxes(VISUAL_REGIONS, device, dtype, gen)
    if "bbox" in params and (_field(config, "bbox_scale") is not None or "visual_bbox" in params) and ids.dim() == 2:
        out["bbox"] = _boxes(ids.shape[1], device, dtype, gen)
    if "lang_ids" in params and _field(config, "languages") and _field(config, "default_language") is None:
        out["lang_ids"] = torch.zeros(EXAMPLE_BATCH, dtype=torch.long, device=device)
    return out


def _decoder_channels(config: Any) -> int | None:
    """The channels of audio codes an encoder-decoder's decoder takes per position, where its decoder config
    counts them (``num_channels`` / ``num_codebooks`` of ``decoder_config`` / ``decoder``: Dia's); else None (a
    vision config's ``num_channels`` is the image's)."""
    decoder = _field(config, "decoder_config", "decoder")
    channels = _field(decoder, "num_channels", "num_codebooks") if hasattr(decoder, "to_dict") else None
    return channels if isinstance(channels, int) and not isinstance(channels, bool) and channels > 1 else None


def _codebook_ids(config: Any, ids: Tensor, gen: torch.Generator) -> Tensor | None:
    """Token ids with a column of audio codes for each of ``num_codebooks`` codebooks (each code within
    ``codebook_vocab_size``) after the text column, ``(B, L, 1 + codebooks)``, where the config has both (an
    audio-token language model: Kyutai speech-to-text); else None."""
    books, size = _field(config, "num_codebooks"), _field(config, "codebook_vocab_size")
    if not isinstance(books, int) or not isinstance(size, int) or books < 1 or size < 1:
        return None
    codes = torch.randint(0, size, (*ids.shape, books), generator=gen).to(ids.device, ids.dtype)
    return torch.cat([ids[..., None], codes], dim=-1)


def _codebook_embeds(config: Any, ids: Tensor, device: torch.device, dtype: torch.dtype, gen: torch.Generator) -> Tensor | None:
    """Embeddings ``(B, L, width)`` in place of ids, where the config counts ``num_codebooks`` without a
    ``codebook_vocab_size``: a decoder of audio codes that takes ``(B * codebooks, L)`` ids, one row per codebook
    (MusicGen's), which the engine would read as B * codebooks samples; else None."""
    books, width = _field(config, "num_codebooks"), _deep_field(config, *_WIDTH)
    if not isinstance(books, int) or books < 2 or _field(config, "codebook_vocab_size") is not None:
        return None
    if not isinstance(width, int) or width < 1:
        return None
    return torch.randn(*ids.shape, width, generator=gen).to(device, dtype)


_WIDTH = ("hidden_size", "d_model", "n_embd", "embed_dim")  # a model's width: of the hidden states it takes
_CROSS_WIDTH = ("encoder_hidden_size", "cross_attention_hidden_size")  # what its cross-attention attends to
CONTEXT_LENGTH = 2 * TEXT_LENGTH  # positions of example encoder (context) hidden states: not the queries' length


def _is_hidden(name: str) -> bool:
    """An argument that takes hidden states (a float tensor of some width) rather than ids or pixels."""
    return name in ("inputs", "inputs_embeds", "hidden_states") or name.endswith(("_embeds", "_hidden_states"))


def _is_context(name: str) -> bool:
    """Hidden states the model cross-attends to (an encoder's, a target model's context), not its own stream."""
    return _is_hidden(name) and (name.startswith("encoder_") or "context" in name)


def _hidden_inputs(model: nn.Module, config: Any, params: Any, required: list[str], main: str, built: dict,
                   device: torch.device, dtype: torch.dtype, gen: torch.Generator) -> dict[str, Tensor]:
    """Hidden states for a forward that takes them, where nothing else was built for it (beside ids or pixels,
    the error names them: the prefix they follow may need more than the builder makes): every such argument it
    requires (``inputs``, ``inputs_embeds``, ``hidden_states``, ``*_embeds``, ``*_hidden_states``: a Q-Former's
    queries, Perceiver's ``inputs``, a draft model's noise embeddings) and its main input, ``(B, TEXT_LENGTH,
    width)`` of the config's width (``hidden_size`` / ``d_model`` / ...), and, once one is built, the hidden states
    it cross-attends to (``encoder_hidden_states``, ``*context*_hidden_states``), ``(B, CONTEXT_LENGTH, width)`` of
    the config's ``encoder_hidden_size`` / ``cross_attention_hidden_size`` where it says, else of the model's
    width; each then at the width the first layer reading it takes (``_fit_hidden_widths``: a context that is
    several of the target model's layers concatenated, a key projection of another width). {} where none."""
    wanted = [n for n in dict.fromkeys([*required, main]) if n in params and _is_hidden(n)]
    if not wanted or built:  # beside ids or pixels (PI0's action embeddings after its image and text prefix): named
        return {}
    width = _deep_field(config, *_WIDTH)
    if not isinstance(width, int) or width < 1:
        return {}
    optional = [n for n in params if n not in wanted and _is_context(n)]
    out = {}
    for name in wanted + optional:
        context = _is_context(name)
        size = (_field(config, *_CROSS_WIDTH) if context else None) or width
        length = CONTEXT_LENGTH if context else TEXT_LENGTH
        out[name] = torch.randn(EXAMPLE_BATCH, length, size, generator=gen).to(device, dtype)
    return _fit_hidden_widths(model, out, set(optional))


_CHANNEL_NORMS = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.modules.instancenorm._InstanceNorm)


def _reader_width(module: nn.Module) -> int | None:
    """The last-dimension width a layer reads: a ``Linear``'s ``in_features``, a layer norm's normalized size,
    a leaf module's 1-D ``weight`` (an RMS norm of the model's own); None for anything else."""
    if isinstance(module, nn.Linear):
        return module.in_features
    if isinstance(module, (nn.LayerNorm, nn.RMSNorm)) and module.normalized_shape:
        return int(module.normalized_shape[-1])
    weight = getattr(module, "weight", None)
    if (isinstance(weight, nn.Parameter) and weight.dim() == 1 and not isinstance(module, _CHANNEL_NORMS)
            and next(module.children(), None) is None):
        return weight.numel()
    return None


def _fit_hidden_widths(model: nn.Module, kwargs: dict[str, Tensor], optional: set[str]) -> dict[str, Tensor]:
    """``kwargs`` (the model's every input), each at the width the first layer reading it as it is
    (``_reader_width``) takes: found by forwards (``_runs``) stopped at the first layer that reads one at another
    width, rebuilt at that width, until none does. An optional one that no layer reads (no cross-attention) is
    left out."""
    out = dict(kwargs)
    readers: dict[str, int] = {}
    for _ in range(len(out) + 1):
        readers = {}

        def probe(module: nn.Module, args: tuple) -> None:
            x = args[0] if args and isinstance(args[0], Tensor) else None
            for name, value in out.items():
                if x is None or name in readers or not (x is value or (
                        x.shape == value.shape and x.data_ptr() == value.data_ptr())):
                    continue
                need = _reader_width(module)
                if need is not None:
                    readers[name] = need
                    if need != value.shape[-1]:
                        raise _Reached

        _runs(model, out, probe)  # stopped by _Reached, or the forward's own error (the engine says it)
        wrong = {n: w for n, w in readers.items() if w != out[n].shape[-1]}
        if not wrong:
            break
        gen = torch.Generator().manual_seed(len(readers))
        for name, need in wrong.items():
            x = out[name]
            out[name] = torch.randn(*x.shape[:-1], need, generator=gen).to(x.device, x.dtype)
    return {n: x for n, x in out.items() if n in readers or n not in optional}


class _Reached(Exception):
    """Raised by the probe of ``_refit_features`` at the first layer that reads the features."""


def _refit_features(model: nn.Module, kwargs: dict, candidates: list[dict]) -> list[dict]:
    """Each ``input_features`` layout again at the width the first layer reading it takes, where that differs
    from the config's mel bins (a ``Linear``'s ``in_features`` on the last dimension, a ``Conv1d``'s
    ``in_channels`` on the second): features the model's code stacks or expands beyond what its config
    says (Granite Speech 5: deltas, then frames in pairs). Found by a forward stopped at that layer (``_runs``)."""
    out = []
    for candidate in candidates:
        x = candidate.get("input_features")
        if not isinstance(x, Tensor) or x.dim() != 3:
            continue
        reached: list[nn.Module] = []

        def probe(module: nn.Module, args: tuple, x: Tensor = x) -> None:
            if isinstance(module, (nn.Linear, nn.Conv1d)) and args and isinstance(args[0], Tensor) and args[0].shape == x.shape:
                reached.append(module)
                raise _Reached

        _runs(model, {**kwargs, **candidate}, probe)  # stopped by _Reached, or failed before any layer
        layer = reached[0] if reached else None
        gen = torch.Generator().manual_seed(0)
        if isinstance(layer, nn.Linear) and layer.in_features != x.shape[-1]:
            refit = torch.randn(*x.shape[:-1], layer.in_features, generator=gen)
        elif isinstance(layer, nn.Conv1d) and layer.in_channels != x.shape[1]:
            refit = torch.randn(x.shape[0], layer.in_channels, x.shape[2], generator=gen)
        else:
            continue
        out.append({**candidate, "input_features": refit.to(x.device, x.dtype)})
    return out


def _runs(model: nn.Module, kwargs: dict, hook: Callable[[nn.Module, tuple], None] | None = None) -> bool:
    """Does the model's forward run on ``kwargs``, with ``hook`` (which may raise to stop it) a forward pre-hook of
    every module? In ``isolation.observation``: eval mode, no gradient, the random state and train flags put back."""
    handle = register_module_forward_pre_hook(hook) if hook is not None else None
    try:
        with observation(model, kwargs):
            model(**kwargs)
        return True
    except Exception:  # noqa: BLE001 - the forward's error, or the hook's stop: the caller reads what the hook saw
        return False
    finally:
        if handle is not None:
            handle.remove()


def _failure_depth(model: nn.Module, kwargs: dict) -> int | None:
    """None where the model's forward runs on ``kwargs`` (``_runs``), else how many module calls it began before
    it failed: how far into the model those inputs got."""
    calls = 0

    def count(module: nn.Module, args: tuple) -> None:
        nonlocal calls
        calls += 1

    return None if _runs(model, kwargs, count) else calls


def _first_running(model: nn.Module, kwargs: dict, candidates: list[dict], fallback: int = 0,
                   refit: bool = False) -> dict:
    """``kwargs`` with the first candidate the model runs on (eval mode, no gradient, the global RNG
    restored), else (with ``refit``) the first of ``_refit_features``'s, else with the candidate from
    ``candidates[fallback:]`` whose forward got furthest (the most module calls before it failed; the first of
    equals): its error is then the forward's, the one a layout of the right shape meets further on (a config
    whose sizes disagree), not the first layout's refusal at the model's first layer."""
    if len(candidates) > 1 or refit:
        depths: dict[int, int] = {}
        for i, candidate in enumerate(candidates):
            depth = _failure_depth(model, {**kwargs, **candidate})
            if depth is None:
                return {**kwargs, **candidate}
            depths[i] = depth
        for candidate in _refit_features(model, kwargs, candidates) if refit else []:  # only where none runs
            if _runs(model, {**kwargs, **candidate}):
                return {**kwargs, **candidate}
        fallback = max(range(fallback, len(candidates)), key=lambda i: (depths.get(i, -1), -i), default=fallback)
    return {**kwargs, **candidates[fallback]}


def _main_input(model: nn.Module, params: Any) -> str:
    """The model's ``main_input_name`` (the first of a list of them that its forward takes: OneFormer names
    ``pixel_values`` and ``task_inputs``, the others are built as the arguments they are); but where that is
    not an argument of its forward and the forward takes ``input_ids``, ``input_ids`` (a text tower inheriting
    its model's ``pixel_values``: SAM 3 LiteText's)."""
    main = getattr(model, "main_input_name", "pixel_values")
    if isinstance(main, (list, tuple)):
        main = next((name for name in main if name in params), main[0] if main else "pixel_values")
    if main not in params and "input_ids" in params:
        return "input_ids"
    return main


def _hf_inputs(model: nn.Module, device: torch.device, dtype: torch.dtype, gen: torch.Generator) -> dict:
    """The inputs the model's forward takes, from its config: images (or NaFlex patches with their mask
    and shapes, or Qwen2-VL flattened patches with their grid), token ids with a padded attention mask (left
    padding for decoders) and token types, image placeholder tokens for vision-language models, decoder
    inputs for encoder-decoders, mel features or raw audio for speech models."""
    config: Any = model.config
    params = inspect.signature(model.forward).parameters
    required = _required(params)
    # the vision sub-config: the model's, else its encoder's (T5Gemma 2), else the config itself
    vision = getattr(config, "vision_config", None) or getattr(getattr(config, "encoder", None), "vision_config", None) \
        or config
    text = getattr(config, "text_config", None) or config
    main = _main_input(model, params)
    modalities = getattr(model, "input_modalities", ()) or ()
    kwargs: dict[str, Tensor] = {}

    image_token = _field(config, *_IMAGE_TOKEN)
    takes_ids = "input_ids" in params
    wants_image = "pixel_values" in params and (
        main == "pixel_values" or takes_ids or "pixel_values" in required or "image" in modalities
    )
    if not wants_image and {"hidden_states", "grid_thw"} <= set(required):  # a Qwen2-VL vision tower
        wants_image = True
    image_tokens = None
    candidates: list[dict[str, Tensor]] = []
    image: dict[str, Tensor] = {}
    if wants_image:
        candidates = _pixel_candidates(model, vision, params, device, dtype, gen)
        image = candidates[0]
        unset = next((n for n in _IMAGE_TOKEN if hasattr(config, n)), None) if image_token is None else None
        features = _image_features(model)
        if takes_ids and unset is not None and features is not None:  # Blip-2's default config
            raise ExampleInputsError(
                f"{type(model).__name__}: its config's {unset} is None, so no text can hold its images (the forward "
                f"looks for that token); set config.{unset} to your checkpoint's image token (its processor's), or "
                f"pass example_inputs= with 'pixel_values' and 'input_ids'."
            )
        embeddings: Any = model.get_input_embeddings  # an HF PreTrainedModel's
        embed = embeddings() if takes_ids and image_token is not None else None
        rows = getattr(embed, "num_embeddings", None)
        if rows is not None and image_token >= rows:  # a default config whose vocabulary was never resized
            raise ExampleInputsError(
                f"{type(model).__name__}: its image token id {image_token} is outside its {rows}-token embedding, so "
                f"it cannot take images as configured; resize the embedding (model.resize_token_embeddings) or pass "
                f"example_inputs= with 'pixel_values' and 'input_ids'."
            )
        if "images_per_sample" in params:  # GLM-Image: its grids also hold each sample's image to generate
            raise ExampleInputsError(
                f"{type(model).__name__} takes 'images_per_sample' counting images its pixel_values do not hold (the "
                f"grids of the images to generate, in 'image_grid_thw'), which no config field gives; pass "
                f"example_inputs= with 'input_ids', 'pixel_values', 'image_grid_thw' and 'images_per_sample' (its "
                f"processor's)."
            )
        queries = _field(config, "num_query_tokens")
        if takes_ids and image_token is not None and isinstance(queries, int) and queries > 0:
            image_tokens = [queries] * EXAMPLE_BATCH  # a Q-Former's queries take the image's places (Blip-2)
        elif takes_ids and image_token is not None and features is not None:
            # a VLM: as many placeholders as the projector emits, in the first layout the model takes
            failures = []
            for layout in candidates:
                try:
                    image_tokens = _count_features(features, layout)
                    image = layout
                    break
                except Exception as exc:  # noqa: BLE001 - not this layout: the next one is tried
                    failures.append(f"{type(exc).__name__}: {exc}".splitlines()[0][:120])
            else:
                if _no_vision_tower(config):  # built without one (Gemma 4's default config): text alone
                    image, wants_image = {}, False
                    candidates = []
                else:
                    raise ExampleInputsError(
                        f"{type(model).__name__}: cannot tell how many image tokens (id {image_token}) it takes per "
                        f"image: its get_image_features fails on the example images ({'; '.join(failures)}); pass "
                        f"example_inputs= with 'pixel_values' and 'input_ids' holding one image token per image "
                        f"feature."
                    )
        kwargs.update(image)
    if not image and "flattened_patches" in params:  # Pix2Struct-style patches (Kosmos-2.5)
        image = _indexed_patches(vision, device, dtype, gen)
        kwargs.update(image)
    _check_video_token(model, config, modalities, image_token, takes_ids and "pixel_values" in kwargs)
    media = _audio_candidates(config, params, main, device, dtype, gen)  # the layouts the forward may take
    if media and main in _AUDIO_INPUTS and "pixel_values_videos" in params:
        # an audio-video encoder (PE Audio-Video's): its audio alone, then with each clip layout, the first it runs on
        clips = _video_candidates(config, device, dtype, gen, _timm_tower_size(model))
        media = media + [{**m, **c} for m in media for c in clips]
    if not media and "pixel_values_videos" in params and (main == "pixel_values_videos" or "pixel_values_videos" in required):
        media = _video_candidates(config, device, dtype, gen, _timm_tower_size(model))
    if not media and "past_values" in required:
        media = _series_candidates(config, params, device, dtype, gen)
    fallback = 0
    if media and main not in _AUDIO_INPUTS and not set(media[0]) & set(required):
        # a text model's optional audio: its text alone first (as before: its audio would need placeholder
        # tokens), the audio where the forward does not run without it; the audio's error if neither runs
        media, fallback = [{}, *media], 1
    decoders = _decoder_values(config, params, device, dtype, gen)
    if decoders:  # each layout with each width of decoder frames (its candidate fallback the same with the first)
        media, fallback = [{**m, **d} for m in media or [{}] for d in decoders], fallback * len(decoders)
    audio_token, audio_tokens = _field(config, *_AUDIO_TOKEN), None
    audio: dict[str, Tensor] = {}
    if media and main == "input_ids" and image_tokens is None and audio_token is not None:
        # a speech-text model: as many audio tokens as its get_audio_features returns, in the first layout it
        # takes, else as many as its audio tower returns; where none counts, as before (its audio tower then
        # unrun, which the engine reports)
        audio_tokens, audio = _count_audio_tokens(model, params, main, media)
    if media:
        kwargs.update(audio or media[0])
    if takes_ids and (main == "input_ids" or "pixel_values" in kwargs or "pixel_values_videos" in kwargs):
        counts = image_tokens or audio_tokens
        spread = max(counts) - min(counts) if counts else 0  # text that evens out the rows
        ids = plain = _tokens(model, text, device, gen, length=TEXT_LENGTH + spread)
        if counts is not None:
            subs = [text, vision, *(_sub_configs(config) if audio_tokens else [])]  # (an audio config's ids too)
            special = torch.tensor(_special_tokens(config, *subs), dtype=ids.dtype, device=ids.device)
            clash = torch.isin(ids, special)
            if clash.any():  # random text that hits a reserved id: the first id that is not reserved
                free = next(i for i in range(int(_vocab_size(model, text) or 0)) if i not in set(special.tolist()))
                ids = ids.masked_fill(clash, free)
            plain = ids
        if image_tokens is not None:
            start, end = _field(config, *_IMAGE_START), _field(config, *_IMAGE_END)
            images = len(next((v for k, v in image.items() if k.endswith("grid_thw")), [None] * EXAMPLE_BATCH))
            ids = _with_media_tokens(ids, image_tokens, images // EXAMPLE_BATCH, image_token, start, end)
            clip, clip_tokens = _clip_beside_images(model, config, vision, params, image)
            if clip:  # a run of video tokens before the images' (its own tower: Video-LLaVA)
                ids = _with_media_tokens(ids, clip_tokens, 1, _field(config, *_VIDEO_TOKEN), None, None)
                kwargs.update(clip)
            if "mm_token_type_ids" in params:  # text 0, image 1 (M-RoPE positions)
                kwargs["mm_token_type_ids"] = (ids == image_token).to(torch.int)
        elif audio_tokens is not None:  # one run of audio tokens
            ids = _with_media_tokens(plain, audio_tokens, 1, audio_token, None, None)
        ids, queries = _with_query_positions(config, params, ids, image)
        kwargs.update(queries)
        kwargs["input_ids"] = ids
        image = {**image, **_text_image_masks(image, ids, params)}  # (each layout its own, for the trial below)
        kwargs.update(image)
        candidates = [{**c, **_text_image_masks(c, ids, params)} for c in candidates]
        left = _is_causal(model) and not getattr(config, "is_encoder_decoder", False)
        kwargs.update(_text_masks(ids, params, text, left))
        if audio_tokens is not None:  # text + audio first, else as before: the text alone, then with its audio
            alone = {"input_ids": plain, **_text_masks(plain, params, text, left)}
            with_tokens = {**audio, **{k: kwargs[k] for k in alone}}
            media, fallback = [with_tokens, *({**alone, **m} for m in media)], fallback + 1
    if "input_ids" in kwargs:
        kwargs.update(_beside_text(config, params, kwargs["input_ids"], device, dtype, gen))
    qformer = getattr(config, "qformer_config", None)
    if "qformer_input_ids" in params and qformer is not None and "pixel_values" in kwargs:  # InstructBLIP's instruction
        kwargs["qformer_input_ids"] = _tokens(model, qformer, device, gen, length=TEXT_LENGTH // 2)
        if "qformer_attention_mask" in params:
            kwargs["qformer_attention_mask"] = torch.ones_like(kwargs["qformer_input_ids"])
    if getattr(config, "is_encoder_decoder", False) and "decoder_input_ids" in params:
        decoder = _tokens(model, text, device, gen, length=TEXT_LENGTH // 2)
        kwargs["decoder_input_ids"] = decoder
        if "decoder_attention_mask" in params:
            kwargs["decoder_attention_mask"] = _padding_mask(decoder, left=False)
        channels = _decoder_channels(config)
        if channels:  # (B, L) as before, else a code of each channel per position, (B, L, C): the first that runs
            rest = {k: v for k, v in kwargs.items() if k != "decoder_input_ids"}
            vocab = _vocab_size(model, text) or 1  # (as the (B, L) ids: it built those)
            per_channel = torch.randint(0, vocab, (*decoder.shape, channels), generator=gen)
            kwargs = _first_running(model, rest, [{"decoder_input_ids": decoder},
                                                  {"decoder_input_ids": per_channel.to(decoder.device)}])
    if wants_image and image_tokens is None and len(candidates) > 1 and not media:  # no feature count chose one
        trial = candidates[:1] + [c for c in candidates[1:] if _batch_readable(c)]
        kwargs = _first_running(model, {k: v for k, v in kwargs.items() if k not in image}, trial)
    stacked = _codebook_ids(text, kwargs["input_ids"], gen) if not media and "input_ids" in kwargs else None
    if stacked is not None:  # text alone first (as before), else with a column per codebook
        media, fallback = [{}, {"input_ids": stacked}], 1
    elif not media and "input_ids" in kwargs and "inputs_embeds" in params:
        embeds = _codebook_embeds(text, kwargs["input_ids"], device, dtype, gen)
        if embeds is not None:  # the ids as built (their error if neither runs), else embeddings
            media, fallback = [{"input_ids": kwargs["input_ids"]}, {"inputs_embeds": embeds}], 0
    refit = main == "input_features" and bool(media)  # where no layout runs: at the width its first layer takes
    if len(media) > 1 or refit:
        kwargs = _first_running(model, {k: v for k, v in kwargs.items() if k not in media[0]}, media, fallback, refit)
    kwargs.update(_hidden_inputs(model, config, params, required, main, kwargs, device, dtype, gen))
    missing = [n for n in required if n not in kwargs]
    embedded = main == "input_ids" and "inputs_embeds" in kwargs  # the ids' embeddings built in their place
    if main in params and main not in kwargs and main not in missing and not embedded:
        # the main input left out: the forward may run without it (Moonshine's decoder alone), on part of the model
        missing.append(main)
    if not kwargs or missing:
        need = missing or [main]
        raise ExampleInputsError(
            f"{type(model).__name__} takes {', '.join(repr(n) for n in need)}, for which no example can be built "
            f"automatically; pass example_inputs= (a dict of keyword arguments, e.g. {{'{need[0]}': tensor, ...}})."
        )
    if type(model).__name__.endswith("ForMultipleChoice"):  # (B, choices, L): each sample's candidate texts
        kwargs = {k: v[:, None].expand(-1, CHOICES, *v.shape[1:]).contiguous() if v.ndim == 2 else v for k, v in kwargs.items()}
    grid = next((k for k in _GRIDS if k in kwargs), None)
    first = "input_ids" if "input_ids" in kwargs else grid
    if first is not None:  # the engine reads the batch off the first tensor: never off packed patches
        kwargs = {first: kwargs.pop(first), **kwargs}  # (a vision tower alone: one grid row per image)
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
