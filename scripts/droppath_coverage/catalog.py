"""What the table covers, and each library's conventions: the timm families and the model picked for
each, HF and torchvision cases with their block classes, each family's rate convention, the
explanations of rows not at parity, and the CI subset, read off each library's source. The only code:
``schedule_for`` (the named schedule that gives a convention) and ``pick_timm_models``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from droppath_surgery import SCHEDULES

RATE = 0.1
TOL = 1e-6

# ------------------------------------------------------------------------------------------------
# Rate conventions and the named schedule that implements each
# ------------------------------------------------------------------------------------------------


def _linspace(r: float, n: int) -> list[float]:
    return [r * i / (n - 1) if n > 1 else 0.0 for i in range(n)]


CONVENTIONS: dict[str, tuple[str, Callable[[float, int], list[float]]]] = {
    # name: (formula, rates of n blocks for top rate r)
    "linear": (
        "r*i/(n-1): linspace(0, r, n); timm calculate_drop_path_rates, timm ResNet, BEiT, Swin, ConvNeXt", _linspace
    ),
    "uniform": ("r for every block: DeiT III, CaiT, MLP-Mixer, DINOv2", lambda r, n: [r] * n),
    "per_n": (
        "r*i/n: timm's EfficientNet builder, torchvision EfficientNet (last block below r)",
        lambda r, n: [r * i / n for i in range(n)],
    ),
}


def schedule_for(convention: str) -> str | None:
    """The name of the entry of ``SCHEDULES`` that gives ``convention``'s rates, or None.

    Found by value (n = 1..40 blocks at r = 0.1 and 0.37), so it does not depend on what the
    schedule is called; the convention's own name is preferred when it matches.
    """
    formula = CONVENTIONS[convention][1]
    names = sorted(SCHEDULES, key=lambda n: (n != convention, n))
    for name in names:
        try:
            if all(
                len(got := list(SCHEDULES[name](r, n))) == n
                and all(abs(float(a) - b) <= TOL for a, b in zip(got, formula(r, n)))
                for r in (0.1, 0.37)
                for n in range(1, 41)
            ):
                return name
        except Exception:  # noqa: BLE001, S112 - a schedule with another signature is simply not this one
            continue
    return None


# ------------------------------------------------------------------------------------------------
# timm
# ------------------------------------------------------------------------------------------------

# The smallest registered model of each timm 1.0.31 model family (module under timm/models that
# registers models), by parameter count on the meta device. Regenerate with --pick-timm-models
# after a timm upgrade; families missing here are picked at run time.
TIMM_MODELS = {
    "beit": "beit_base_patch16_224", "byoanet": "halonet_h1", "byobnet": "test_byobnet", "cait": "cait_xxs24_224",
    "coat": "coat_tiny", "convit": "convit_tiny", "convmixer": "convmixer_768_32", "convnext": "test_convnext",
    "cpubone": "cpubone_nano", "crossvit": "crossvit_tiny_240", "csatv2": "csatv2", "cspnet": "cs3darknet_focus_s",
    "cspnext": "cspnext_tiny", "davit": "davit_tiny", "deepseek_vit": "deepseek_vit_412m",
    "deit": "deit_tiny_patch16_224", "densenet": "densenet121", "dla": "dla46x_c", "dpn": "dpn48b",
    "edgenext": "edgenext_xx_small", "efficientformer": "efficientformer_l1",
    "efficientformer_v2": "efficientformerv2_s0", "efficientnet": "test_efficientnet",
    "efficientvim": "efficientvim_m1", "efficientvit_mit": "efficientvit_b0", "efficientvit_msra": "efficientvit_m0",
    "eva": "vit_tiny_patch16_dinov3_qkvb", "fasternet": "fasternet_t0", "fastvit": "fastvit_t8",
    "focalnet": "focalnet_tiny_srf", "gcvit": "gcvit_xxtiny", "gemma4_vit": "gemma4_vit_167m",
    "ghostnet": "ghostnet_050", "hardcorenas": "hardcorenas_b", "hgnet": "hgnetv2_b0", "hiera": "hiera_tiny_224",
    "hieradet_sam2": "sam2_hiera_tiny", "hrnet": "hrnet_w18_small", "iformer": "iformer_t",
    "inception_next": "inception_next_atto", "inception_resnet_v2": "inception_resnet_v2",
    "inception_v3": "inception_v3", "inception_v4": "inception_v4", "lcnetv2": "lcnetv2_small", "levit": "levit_128s",
    "lowformer": "lowformer_b0", "mambaout": "test_mambaout", "maxxvit": "test_coatnet",
    "metaformer": "poolformerv2_s12", "mlp_mixer": "gmlp_ti16_224", "mobilenetv3": "mobilenetv3_small_050",
    "mobilenetv5": "mobilenetv5_base", "mobilevit": "mobilevit_xxs", "mvitv2": "mvitv2_tiny",
    "naflexvit": "naflexvit_base_patch16_parfac_gap", "nasnet": "nasnetalarge", "nest": "nest_tiny",
    "nextvit": "nextvit_small", "nfnet": "test_nfnet", "pit": "pit_ti_224", "pnasnet": "pnasnet5large",
    "pvt_v2": "pvt_v2_b0", "qwen3_vit": "qwen3_vit_88m", "rdnet": "rdnet_tiny", "regnet": "regnetx_002",
    "repghost": "repghostnet_050", "repvit": "repvit_m1", "res2net": "res2next50", "resnest": "resnest14d",
    "resnet": "test_resnet", "resnetv2": "resnetv2_18", "rexnet": "rexnet_100", "selecsls": "selecsls42",
    "senet": "legacy_seresnet18", "sequencer": "sequencer2d_s", "shvit": "shvit_s1", "sknet": "skresnet18",
    "starnet": "starnet_s050", "swiftformer": "swiftformer_xs", "swin_transformer": "swin_tiny_patch4_window7_224",
    "swin_transformer_v2": "swinv2_tiny_window16_256", "swin_transformer_v2_cr": "swinv2_cr_tiny_224",
    "tiny_vit": "tiny_vit_5m_224", "tnt": "tnt_s_legacy_patch16_224", "tresnet": "tresnet_m",
    "twins": "twins_svt_small", "vgg": "vgg11", "visformer": "visformer_tiny", "vision_transformer": "test_vit",
    "vision_transformer_hybrid": "vit_tiny_r_s16_p8_224", "vision_transformer_relpos": "test_vit_relpos",
    "vision_transformer_sam": "samvit_base_patch16_224", "vitamin": "vitamin_small_224", "volo": "volo_d1_224",
    "vovnet": "ese_vovnet19b_slim_dw", "xception": "legacy_xception", "xception_aligned": "xception41p",
    "xcit": "xcit_nano_12_p8_224",
}

# Families whose smallest model cannot show anything, and the model used instead.
TIMM_MODEL_OVERRIDES = {
    # test_efficientnet, _gn, _ln, _evos (0.36M) have no block with a skip connection.
    "efficientnet": "mobilenetv2_035",
    # ese_vovnet19b_slim_dw .. vovnet39a have no residual OSA block (timm still applies their
    # drop path, to the whole block output); eca_vovnet39b is the smallest with residual blocks.
    "vovnet": "eca_vovnet39b",
}

# Smaller inputs for the slowest models, which run at any size (their default sizes are 384-896):
# family -> (creation kwargs, side of the square example input passed to apply_drop_path, or
# None to let droppath_surgery.build_example_inputs build it). The native build gets the same kwargs and input.
TIMM_SMALL: dict[str, tuple[dict, int | None]] = {
    "deepseek_vit": ({"img_size": 112}, 112),
    "gemma4_vit": ({"img_size": 96}, 96),
    "qwen3_vit": ({"img_size": 96}, 96),
    "naflexvit": ({}, 96),
    "mobilenetv5": ({}, 128),
    "nasnet": ({}, 128),
    "pnasnet": ({}, 128),
}

# Each family's own drop-path rate convention (see CONVENTIONS), read off timm's source;
# "linear" (timm's calculate_drop_path_rates, ResNet's r*i/(n-1)) unless listed.
TIMM_CONVENTION: dict[str, str] = {
    "cait": "uniform",  # dpr = [drop_path_rate for i in range(depth)]
    "coat": "uniform",
    "levit": "uniform",
    "mlp_mixer": "uniform",
    "sequencer": "uniform",
    "xcit": "uniform",
    "efficientnet": "per_n",  # _efficientnet_builder: drop_path_rate * block_idx / block_count
    "hardcorenas": "per_n",
    "mobilenetv3": "per_n",
    "mobilenetv5": "per_n",
}

# Why a family is not at parity, read off the library's source: shown next to the measured reason
# in "Not at parity" (it explains, it never changes a verdict). An entry for a row at parity is
# listed as stale in the notes.
WHY_NOT_AT_PARITY: dict[str, str] = {
    "timm:cait": "timm builds the class-attention blocks (`blocks_token_only`) without drop path (rate 0) "
    "while the self-attention blocks get the uniform rate; a named schedule sees only (rate, number of blocks) "
    "and cannot tell the second stack. To match, pass a list (`[r] * 24 + [0, 0]`) or `schedule='timm'`.",
    "timm:xcit": "timm builds the class-attention blocks (`cls_attn_blocks`) without drop path (rate 0) while "
    "the XCA blocks get the uniform rate; a named schedule cannot tell the second stack. To match, pass a list or "
    "`schedule='timm'`.",
    "timm:volo": "timm passes no rate to the outlooker blocks of stage 1 (rate 0) yet counts them in its ramp "
    "`r * i / (sum(layers) - 1)`, and builds the post (class-attention) blocks at rate 0: not a schedule over "
    "the blocks. To match, pass a list or `schedule='timm'`.",
    "timm:cpubone": "each attention block (`stages.k.i`, no residual of its own) holds three residual "
    "sub-blocks (`total.0.0`, `total.0.1`, `total.1`) that timm gives the block's one rate; no block of the "
    "`stages.*.*` stack has a residual, so nothing shows that they form one unit. timm's ramp also counts the "
    "strided blocks of stages 0-1 but not the downsamplers of stages 2-3.",
    "timm:crossvit": "MultiScaleBlock runs two parallel stacks of transformer blocks: timm gives block i of each "
    "stack the same rate `dpr[i]` and the fusion blocks the last one, and advances its ramp by max(stack depths) + "
    "fusion depth per MultiScaleBlock: an indexing no schedule over the blocks expresses.",
    "timm:csatv2": "timm leaves its transformer blocks without drop path unless `transformer_drop_path=True` "
    "(default False): rate 0, and not counted in its ramp. The engine finds their residual branches and counts them; "
    "`schedule='timm'` leaves them out (no slot of timm's drop path names there).",
    "timm:cspnext": "timm's ramp covers `stage_depths[:-1]`: the last stage's block (no identity shortcut) is "
    "left out, while the engine counts a branchless block of the same class in the stack, as timm's EfficientNet "
    "builder counts its strided blocks.",
    "timm:iformer": "timm reserves a ramp position for each RepCPE positional convolution (a residual it builds "
    "with a drop path slot at rate 0, the engine takes it because of that slot) and rates the SHMA/FFN blocks "
    "after it by their own positions; the engine gives RepCPE the rate of its position.",
    "timm:lowformer": "timm's ramp counts the strided blocks of stages 1-2 (ResidualBlock without shortcut) but "
    "not the identical strided downsample blocks that open stages 3-4: the same structure, so no general rule "
    "tells them apart.",
    "timm:nextvit": "NextTransformerBlock scales its rate within the block (mhsa r*0.75, mhca r*0.25, mlp r): "
    "per-branch rates; the engine gives every branch of a block the block's rate. Sites match.",
    "timm:rdnet": "RDNet's blocks concatenate (dense connections) rather than add: no x + f(x). timm drops each "
    "dense block's output before the concatenation, which is no residual branch.",
    "timm:resnest": "timm's ResNestBottleneck applies its drop path to the block input `x` (`x = "
    "self.drop_path(x)` after `bn3`, feeding only the downsample shortcut), not to the residual branch `out`: "
    "its slots are off any residual, so there is nothing to match, and in blocks without a downsample the "
    "dropped `x` is never used (timm's drop path does nothing there). The engine drops the residual branch "
    "of every block it finds, as drop path is meant to.",
    "timm:vitamin": "the hybrid stem inside `patch_embed` (`patch_embed.backbone.stages`) holds MbConv blocks "
    "with drop path slots built at rate 0 and outside timm's ramp; they look like the transformer blocks (blocks "
    "with slots), so the engine counts them; `schedule='timm'` leaves them out (their `drop_path` is not one of "
    "the names timm gives a DropPath in this model).",
    "timm:swiftformer": "SwiftFormerEncoder builds its LocalRepresentation branch without a rate (its drop "
    "path slot stays at 0) while the attention and MLP branches of the same block get the block's rate: "
    "per-branch rates within one block; the engine gives every branch of a block the block's rate. Sites match.",
}

# The subset that CI runs (tests/test_coverage.py): a transformer, a hierarchical and a
# convolutional family per library, two timm conventions only schedule="timm" matches, and where
# the engine is expected to be at parity.
SUBSET = {
    "timm": ["vision_transformer", "swin_transformer", "convnext", "resnet", "starnet", "levit", "mobilevit", "rexnet",
             "cait", "nextvit"],
    "hf": ["ViT", "BEiT", "Swin", "ConvNext"],
    "torchvision": ["convnext_tiny", "swin_t"],
}
EXPECTED_AT_PARITY = {
    # starnet: a stage's downsampler is no block; levit: a residual downsampler in a stage;
    # mobilevit: transformer layers nested in a block share its rate; rexnet: x[:, :c] + shortcut.
    "timm": ["vision_transformer", "swin_transformer", "convnext", "resnet", "starnet", "levit", "mobilevit", "rexnet"],
    "hf": ["ViT", "BEiT", "Swin", "ConvNext"],
    "torchvision": ["convnext_tiny", "swin_t"],
}
# At parity only with schedule="timm": CaiT's class-attention blocks at rate 0 (a second stack),
# NextViT's per-branch rates (0.75 / 0.25 / 1 within a block); no named schedule expresses either.
EXPECTED_AT_PARITY_WITH_TIMM_SCHEDULE = ["cait", "nextvit"]
SUBSET_KWARGS = {  # CI subset only: a smaller input where the model allows it
    "swin_transformer": {"img_size": 112, "window_size": 7},
    "cait": {"img_size": 112},
}


def pick_timm_models(families=None) -> dict[str, str]:
    """The smallest registered model of each family, by parameter count on the meta device."""
    import timm

    out = {}
    for family in families or timm.list_modules():
        best = None
        for name in timm.list_models(module=family):
            try:
                with torch.device("meta"):
                    m = timm.create_model(name, pretrained=False)
                n = sum(p.numel() for p in m.parameters())
            except Exception:  # noqa: BLE001, S112 - a model that does not build is not a candidate
                continue
            if best is None or (n, name) < best:
                best = (n, name)
        if best:
            out[family] = best[1]
    return out


# ------------------------------------------------------------------------------------------------
# Hugging Face transformers
# ------------------------------------------------------------------------------------------------

_LAYERS = {"hidden_size": 32, "num_hidden_layers": 3, "num_attention_heads": 2, "intermediate_size": 64}
_VIT = _LAYERS | {"image_size": 32, "patch_size": 8}
_TEXT = _LAYERS | {"vocab_size": 99, "max_position_embeddings": 40}
_STAGES = {"depths": [1, 1, 2, 1]}
_SWIN = {"image_size": 32, "patch_size": 2, "embed_dim": 16, "num_heads": [1, 1, 2, 2], "window_size": 2} | _STAGES
_CONVNEXT = {"hidden_sizes": [8, 16, 24, 32], "depths": [1, 1, 2, 1], "image_size": 32}


@dataclass
class HFCase:
    label: str  # row name
    cls: str  # transformers class
    config: str  # config class
    kwargs: dict
    block: str  # class of the architecture's blocks: each is a holder of per_block branches
    per_block: int  # residual branches per block, as the architecture defines them
    convention: str | None = None  # native drop-path rate convention; None: no native drop path
    config_factory: str | None = None  # for two-tower configs: build with from_..._config-like kwargs
    inputs: Callable[[nn.Module], Any] | None = None


def _siglip2_inputs(model: nn.Module) -> dict:
    cfg = getattr(model.config, "vision_config", None) or model.config
    p, c = cfg.patch_size, cfg.num_channels
    side = 4  # a 4 x 4 grid of patches
    gen = torch.Generator().manual_seed(0)
    return {
        "pixel_values": torch.randn(2, side * side, c * p * p, generator=gen),
        "pixel_attention_mask": torch.ones(2, side * side, dtype=torch.long),
        "spatial_shapes": torch.tensor([[side, side]] * 2),
    }


def hf_cases() -> list[HFCase]:
    vit = dict(_VIT)
    dino = {k: v for k, v in _VIT.items() if k != "intermediate_size"} | {"mlp_ratio": 2}
    cases = [
        HFCase("ViT", "ViTModel", "ViTConfig", vit, "ViTLayer", 2),
        HFCase("DeiT", "DeiTModel", "DeiTConfig", vit, "DeiTLayer", 2),
        HFCase("BEiT", "BeitModel", "BeitConfig", vit | {"use_relative_position_bias": True}, "BeitLayer", 2, "linear"),
        HFCase(
            "Data2VecVision", "Data2VecVisionModel", "Data2VecVisionConfig", vit, "Data2VecVisionLayer", 2, "linear"
        ),
        HFCase("Dinov2", "Dinov2Model", "Dinov2Config", dino, "Dinov2Layer", 2, "uniform"),
        HFCase(
            "Dinov2WithRegisters", "Dinov2WithRegistersModel", "Dinov2WithRegistersConfig", dino,
            "Dinov2WithRegistersLayer", 2, "uniform",
        ),
        HFCase("DINOv3-ViT", "DINOv3ViTModel", "DINOv3ViTConfig", vit, "DINOv3ViTLayer", 2, "uniform"),
        HFCase("ViT-MAE", "ViTMAEModel", "ViTMAEConfig", vit, "ViTMAELayer", 2),
        HFCase("ViT-MSN", "ViTMSNModel", "ViTMSNConfig", vit, "ViTMSNLayer", 2),
        HFCase("I-JEPA", "IJepaModel", "IJepaConfig", vit, "IJepaLayer", 2),
        HFCase("CLIP vision", "CLIPVisionModel", "CLIPVisionConfig", vit, "CLIPEncoderLayer", 2),
        HFCase("CLIP text", "CLIPTextModel", "CLIPTextConfig", _TEXT, "CLIPEncoderLayer", 2),
        HFCase("SigLIP vision", "SiglipVisionModel", "SiglipVisionConfig", vit, "SiglipEncoderLayer", 2),
        HFCase(
            "SigLIP2 vision", "Siglip2VisionModel", "Siglip2VisionConfig",
            {k: v for k, v in vit.items() if k != "image_size"} | {"num_patches": 16}, "Siglip2EncoderLayer", 2,
            inputs=_siglip2_inputs,
        ),
        HFCase("AIMv2 vision", "Aimv2VisionModel", "Aimv2VisionConfig", vit, "Aimv2EncoderLayer", 2),
        HFCase("Swin", "SwinModel", "SwinConfig", _SWIN, "SwinLayer", 2, "linear"),
        HFCase("Swinv2", "Swinv2Model", "Swinv2Config", _SWIN, "Swinv2Layer", 2, "linear"),
        HFCase("ConvNext", "ConvNextModel", "ConvNextConfig", _CONVNEXT, "ConvNextLayer", 1, "linear"),
        HFCase("ConvNextV2", "ConvNextV2Model", "ConvNextV2Config", _CONVNEXT, "ConvNextV2Layer", 1, "linear"),
        HFCase(
            "PvtV2", "PvtV2Model", "PvtV2Config",
            dict(image_size=64, hidden_sizes=[8, 16, 24, 32], num_attention_heads=[1, 1, 2, 2], **_STAGES),
            "PvtV2BlockLayer", 2, "linear",
        ),
        HFCase(
            "Hiera", "HieraModel", "HieraConfig",
            {"image_size": [64, 64], "embed_dim": 8, "num_heads": [1, 1, 2, 2]} | _STAGES, "HieraLayer", 2, "linear",
        ),
        HFCase(
            "FocalNet", "FocalNetModel", "FocalNetConfig",
            {"image_size": 32, "embed_dim": 8, "hidden_sizes": [16, 32, 64, 64]} | _STAGES,
            "FocalNetLayer", 2, "linear",
        ),
        HFCase(
            "VitDet", "VitDetModel", "VitDetConfig",
            {k: v for k, v in _VIT.items() if k != "intermediate_size"} | {"pretrain_image_size": 32, "mlp_ratio": 2},
            "VitDetLayer", 2, "linear",
        ),
        HFCase("BERT", "BertModel", "BertConfig", _TEXT, "BertLayer", 2),
        HFCase("RoBERTa", "RobertaModel", "RobertaConfig", _TEXT, "RobertaLayer", 2),
    ]
    heads = {  # the image-classification head of each vision model (the class name transformers would use)
        "ViT": "ViTForImageClassification", "DeiT": "DeiTForImageClassification", "BEiT": "BeitForImageClassification",
        "Data2VecVision": "Data2VecVisionForImageClassification", "Dinov2": "Dinov2ForImageClassification",
        "Dinov2WithRegisters": "Dinov2WithRegistersForImageClassification",
        "DINOv3-ViT": "DINOv3ViTForImageClassification",
        "ViT-MAE": "ViTMAEForImageClassification", "ViT-MSN": "ViTMSNForImageClassification",
        "I-JEPA": "IJepaForImageClassification", "CLIP vision": "CLIPForImageClassification",
        "SigLIP vision": "SiglipForImageClassification", "SigLIP2 vision": "Siglip2ForImageClassification",
        "AIMv2 vision": "Aimv2ForImageClassification", "Swin": "SwinForImageClassification",
        "Swinv2": "Swinv2ForImageClassification", "ConvNext": "ConvNextForImageClassification",
        "ConvNextV2": "ConvNextV2ForImageClassification", "PvtV2": "PvtV2ForImageClassification",
        "Hiera": "HieraForImageClassification", "FocalNet": "FocalNetForImageClassification",
        "VitDet": "VitDetForImageClassification",
    }
    by_label = {c.label: c for c in cases}
    return cases + [
        HFCase(
            f"{label} (image classification)", cls, c.config, c.kwargs | {"num_labels": 3}, c.block, c.per_block,
            c.convention, inputs=c.inputs,
        )
        for label, cls in heads.items()
        for c in [by_label[label]]
    ]



# ------------------------------------------------------------------------------------------------
# torchvision
# ------------------------------------------------------------------------------------------------


@dataclass
class TVCase:
    name: str
    blocks: dict[str, int]  # block class -> residual branches per block
    convention: str | None  # None: no StochasticDepth
    rate: float = RATE  # the builder's own stochastic_depth_prob (swin_t and maxvit_t fix theirs)
    only_residual: bool = False  # blocks of these classes without a residual (stride / channel change) are not expected


# torchvision models are built as a user gets them (``weights=None``, the builder's own
# stochastic_depth_prob), so the native slots are in the model under test and the engine replaces
# them; rates are compared at the builder's top rate. MaxViT's MaxVitLayer is a Sequential of an
# MBConv and two PartitionAttentionLayers, each holding its own ``stochastic_depth``.
TV_MODELS = [
    TVCase("vit_b_16", {"EncoderBlock": 2}, None),
    TVCase("swin_t", {"SwinTransformerBlock": 2}, "linear", 0.2),
    TVCase("swin_v2_t", {"SwinTransformerBlockV2": 2}, "linear", 0.2),
    TVCase("convnext_tiny", {"CNBlock": 1}, "linear", 0.1),
    TVCase("efficientnet_b0", {"MBConv": 1}, "per_n", 0.2, only_residual=True),
    TVCase("maxvit_t", {"MBConv": 1, "PartitionAttentionLayer": 2}, "linear", 0.2),
    TVCase("resnet50", {"Bottleneck": 1}, None),
]


