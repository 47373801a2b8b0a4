"""The sweep: every model ``timm.list_models()`` returns and every model type transformers' ``AutoModel``
builds, patched with ``apply_drop_path(model, RATE)`` and nothing else, judged against the library's own
drop path slots (the oracle of ``oracles``) where it has them.

    python scripts/sweep.py hf hf-heads timm        # all, resuming docs/sweep/{hf,hf-heads,timm}.json
    python scripts/sweep.py timm --only resnet18 vit_tiny_patch16_224 --out-dir /tmp/sweep
    python scripts/sweep.py --render                # docs/sweep.md (and coverage.md's sweep section) from the JSON

Each model runs in a worker process (``--workers``, torch threads 1) under a time limit; a worker that
hangs or dies (out of memory) is killed and replaced, and the model gets that as its reason. Results
are written to ``docs/sweep/<library>.json`` as they arrive, so an interrupted sweep resumes where it
stopped (models already in the file are skipped; ``--retry-failed`` runs the failed ones again).

Sizes. timm models are built with ``pretrained=False`` at the smallest of 96, 128, 160, 224 px that they
run at (on the meta device), set through ``img_size``, the pretrained config's ``input_size``
(``pretrained_cfg_overlay``, what sizes a fully convolutional model's example input) or both, else their
default; models above ``BIG_PARAMS`` parameters are also tried with ``depth=4`` (or fewer ``depths``);
models still above ``HUGE_PARAMS`` run on the meta device (sites and parity, eval not verifiable).
Hugging Face model types are built from their config class shrunk by ``shrink_overrides`` (2 layers,
hidden size 64, 4 heads, ...; sub-configs too), then with the fields that must follow those kept consistent (``consistent=True``: one layer of each kind,
rotary sections, latent attention dims, widths other parts name, bottlenecks at their fraction of the width,
layer index lists within the shrunk stacks, pixel shuffle factors dividing the patch grid; unset sizes set), then less shrunk
(layers only) and unchanged, the first that builds and runs on its automatic inputs (with
``use_cache=False`` where only that runs: hybrids whose layers hold no attention). Where the unchanged
default config does not build, or fails its forward the same way as the shrunk ones, the error says so
(transformers' cause or the inputs', not the shrink's). Where a level's config leaves out what its model needs,
the config is repaired by general rules and each repair is said in the build text (``tiny; repaired: ...``): the
sub-config the model class is declared for (MusicGen's decoder), a timm backbone's features that the config's channel
lists and feature sizes describe, a field the model reads that the config does not define (taken from where the
config tree defines it, else HF's default) or leaves None where a mapping is read, a table that ids overflow.

Task heads (``hf-heads``): every head and backbone class that transformers maps to a model type of the
coverage table's Hugging Face families (``head_names``), built and judged like its AutoModel type; the
summary compares its sites with that type's AutoModel row (a head adds no block).

Parity. timm: the judge of the coverage table with the default schedule (site parity: every slot call
of the native build ``drop_path_rate=RATE`` that is added to a residual is carried by an engine site,
``None`` slots matched by count per holder, and no engine site outside the holders); a model is at
parity when its sites are and its eval output is verified bitwise unchanged (rates with the default
linear schedule are recorded, not required: the families with another convention are in
``coverage.md``). Hugging Face: where the config has ``drop_path_rate``, every native slot call on a
residual is carried by an engine site (the engine also drops branches HF does not, such as Swin's MLP:
those are counted, not failures).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import math
import os
import re
import select
import signal
import subprocess
import sys
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .runner import Timeout, time_limit

ROOT = Path(__file__).resolve().parents[2]
OUT_DIR = ROOT / "docs" / "sweep"
RATE = 0.1
LIBRARIES = ("hf", "hf-heads", "timm")  # hf-heads: the task heads of the coverage table's HF families
TIMEOUT_S = 300  # per model, in the worker (PE Video and Apertus 1.5 take 190-230 s on 2 cores)
GRACE_S = 45  # then the driver kills the worker
IMG_SIZES = (96, 128, 160, 224)
BIG_PARAMS = 25e6  # above this, fewer blocks (building is mostly random initialisation)
HUGE_PARAMS = 400e6
HF_MAX_PARAMS = 80e6  # the levels above tiny: bigger real builds cost minutes on a shared machine
# The unused-site oracle runs one forward per site: not above this many sites, nor where patching took longer.
UNUSED_MAX_SITES, UNUSED_MAX_PATCH_S = 64, 20.0
HF_MAX_TINY_PARAMS = 400e6  # tiny configs: mostly embeddings of big vocabularies, cheap to run
MEMORY_LIMIT_GB = 9.0  # address space per worker

# The CI subset (tests/test_sweep_subset.py): per cause the sweep found, the hardest model that now
# passes, run as the sweep runs it. Decoders also need both branches of every layer (2 sites per layer).
CI_SUBSET = {
    # MaxViT: the attention parts' MLP residuals and each stage's first MBConv (issue 14); SAM ViT: windowed
    # attention branches, dropped per sample through the window layout.
    # PoolFormer v1: a token mixer that computes only through its group norm, with timm's slot before the
    # layer scale (the engine's rule and the oracle both missed it). ViT-22B's parallel scaling block: its
    # attention and MLP outputs, pieces of one fused projection, summed inside the branch (was read as a fork).
    "timm": ["maxvit_pico_rw_256", "samvit_base_patch16", "poolformer_s12", "vit_pwee_patch16_reg1_gap_256"],
    # GPT-NeoX: both branches of every decoder layer (issue 14); Swin: HF's slots carried, and the MLP
    # branches HF does not drop found as well; Qwen2.5-VL: the text blocks patched (a packed vision tower
    # once failed the whole model with BatchDimError), and the tower's full-attention blocks dropped per image.
    # GLM-4V's vision tower alone: packed patches of all images, dropped per image through the cu_seqlens its
    # blocks are called with; Qwen2.5-VL's: the same, with its window blocks (finer boundaries) left out.
    # HiggsAudio: its MLP residuals on the text rows, h[~m] += mlp(norm(h[~m])), two gathers of the same rows
    # (a rule for ViT-22B's split pieces first took them for pieces of one branch and lost them).
    # Grounding DINO: HF's slots on its fusion layer's residual, on that layer's own LayerNorm output.
    # TimesFM: its MLP residual is multiplied by the padding mask after its last module (was silently missed).
    # Muse Spark's text model: its residual gate scales the stream by a per-channel parameter (alpha * x + beta * f(x)).
    # DeepSeek V4: hyper-connections, comb^T h + post * f(x), both merges of every layer (NoResidualBranchError before).
    # SpeechT5: an encoder-decoder whose encoder, built without its prenet, takes embeddings as input_values and
    # whose decoder takes mel frames. SAM 2: a Hiera tower whose stage widths the consistent shrink keeps in step.
    # SegGPT: prompt images and masks built like the image, and its prompt and input rows folded 2 x B (a sample's
    # rows B apart), dropped per sample (refused as folded rows before), at parity with HF's slots.
    # EdgeTAM: its two-way block returns its cross-attention's output after adding it (was hooked there, dropping
    # nothing). DiffusionGemma: mlp(h) + moe(h) is one branch (was a shortcut and a branch). GraniteMoeHybrid: MoE
    # and shared MLP summed, then scaled, then added (no site before). Zaya: a residual helper that shifts and
    # scales both operands (NoResidualBranchError before). MusicGen: ids one row per codebook; embeddings instead.
    "hf": [
        "gpt_neox", "swin", "qwen2_5_vl", "higgs_audio_v2", "grounding-dino", "glm4v_vision", "qwen2_5_vl_vision",
        "timesfm", "muse_spark_text", "deepseek_v4", "speecht5", "sam2", "seggpt", "edgetam", "diffusion_gemma",
        "granitemoehybrid", "zaya", "musicgen",
    ],
    # a head whose inputs are (B, choices, L)
    "hf-heads": ["bert/BertForMultipleChoice"],
}
CI_DECODERS = ["gpt_neox", "higgs_audio_v2", "timesfm", "muse_spark_text", "deepseek_v4"]
# Sites with packed towers: Qwen2.5-VL 4 text (2 layers x 2) + 8 vision (4 full-attention blocks x 2), its tower
# alone 8, GLM-4V's tower 2 in each of its 24 blocks; SegGPT 2 layers x 2, none left out as folded rows.
CI_SITES = {"qwen2_5_vl": 12, "qwen2_5_vl_vision": 8, "glm4v_vision": 48, "seggpt": 4, "edgetam": 23, "diffusion_gemma": 8,
            "granitemoehybrid": 6, "zaya": 4, "musicgen": 4}


@dataclass
class Result:
    library: str
    name: str
    family: str = ""  # timm: module that registers it; hf: model type
    cls: str = ""
    build: str = ""  # the kwargs / config level it was built with
    device: str = "cpu"  # "meta" for models too big to run for real
    params: int | None = None
    status: str = "ok"  # ok / failed (build, inputs, apply, judge, timeout, crash)
    stage: str = ""  # where it failed
    error: str = ""  # exception class: first line
    sites: int | None = None
    blocks: int | None = None
    layers: int | None = None  # hf: the config's layer count (text model), to read sites per layer
    verified: bool | None = None  # report.verified and an independent bitwise eval check
    native: int | None = None  # slot calls on a residual in the library's own build; None: no drop path there
    site_parity: bool | None = None  # None: no library slots to compare with
    rate_parity: bool | None = None  # default schedule against the native rates (timm)
    carried: int | None = None  # hf: native slot calls that an engine site carries
    parity_reason: str = ""
    skipped: list[str] = field(default_factory=list)  # the engine's skipped branches, reasons counted
    not_run: list[str] | None = None  # stacks of repeated blocks the automatic inputs never ran (report.not_run)
    note: str = ""  # hf: outcome of a retry with use_cache=False, fallbacks tried, ...
    # What apply_drop_path warned of (the report's notes: unrun stacks, branches left without drop path, a
    # schedule giving every branch 0, the model's own layer drop), numbers blanked; None: not recorded.
    warned: list[str] | None = None
    # hf: the sites whose DropPath output the model does not use (oracles.unused_sites: noise added there changes no
    # output tensor); None: not checked, or the output does not change with the inputs either (nothing can show).
    unused: list[str] | None = None
    # hf, after a stage-'inputs' failure (or 'forward', where hand inputs are written): the hand-made inputs passed
    # as example_inputs= (hand_inputs.py), described, and the outcome with them ({status, sites, verified, not_run, error}; status "skipped" with
    # the reason where no inputs can serve). The fields above keep the zero-argument outcome.
    example_inputs: str = ""
    with_inputs: dict | None = None
    patch_s: float | None = None
    total_s: float | None = None

    @property
    def at_parity(self) -> bool:
        return bool(self.site_parity) and self.verified is True


def first_line(exc: BaseException, limit: int = 240) -> str:
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    text = lines[0] if lines else ""
    if text.endswith(":") and len(lines) > 1:  # "Class validation error for validator 'x':" says nothing yet
        text += " " + lines[1]
    text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _count(model) -> int:
    return sum(p.numel() for p in model.parameters())


def _blanked(text: str) -> str:
    """``text`` with its numbers as ``#``: messages of one kind alike, whatever the counts and indices."""
    return re.sub(r"\d+", "#", text)


def _skipped(report) -> list[str]:
    why = collections.Counter(_blanked(k.reason)[:140] for k in report.skipped)
    return [f"{n} x {r}" for r, n in why.most_common(4)]


# ------------------------------------------------------------------------------------------------
# Patching and judging one model
# ------------------------------------------------------------------------------------------------


def _as_call(example_inputs) -> tuple[tuple, dict]:
    """``example_inputs`` (a tensor, a tuple of arguments or a dict of keywords) as ``(args, kwargs)``."""
    if isinstance(example_inputs, dict):
        return (), dict(example_inputs)
    return (tuple(example_inputs), {}) if isinstance(example_inputs, (tuple, list)) else ((example_inputs,), {})


def patch(res: Result, model, example_inputs=None):
    """``apply_drop_path(model, RATE)`` with an independent bitwise check of the eval output; fills the
    engine fields. Returns (report, args, kwargs), or None with the reason in ``res``."""
    from droppath_surgery import apply_drop_path, build_example_inputs

    from .oracles import eval_forward

    try:
        args, kwargs = build_example_inputs(model) if example_inputs is None else _as_call(example_inputs)
    except Exception as exc:  # noqa: BLE001 - any failure becomes the model's reason
        res.status, res.stage, res.error = "failed", "inputs", first_line(exc)
        return None
    start = time.perf_counter()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            report = apply_drop_path(model, RATE, example_inputs=example_inputs)
    except Exception as exc:  # noqa: BLE001
        res.patch_s = time.perf_counter() - start
        res.status, res.stage, res.error = "failed", "apply", first_line(exc)
        try:  # a model that does not run on its inputs at all fails at "forward", not at the engine
            eval_forward(model, args, kwargs)
        except Exception as fwd:  # noqa: BLE001
            res.stage, res.error = "forward", first_line(fwd)
        return None
    res.patch_s = time.perf_counter() - start
    res.sites, res.blocks = len(report.sites), report.num_blocks
    res.skipped = _skipped(report)
    res.not_run = list(report.not_run)
    res.warned = [_blanked(n)[:160] for n in report.notes]
    res.verified = report.verified is True  # every output bitwise equal in eval (the coverage table re-checks it)
    return report, args, kwargs


# -- timm -------------------------------------------------------------------------------------------


def _timm_meta(name: str, kwargs: dict, forward: bool):
    """The model built on the meta device (and run once on its example inputs with ``forward``)."""
    import timm
    import torch

    from droppath_surgery import build_example_inputs

    with torch.device("meta"):
        model = timm.create_model(name, pretrained=False, **kwargs)
    if forward:
        args, kw = build_example_inputs(model)
        model.eval()
        with torch.no_grad():
            model(*args, **kw)
        model.example_side = max(args[0].shape[-2:]) if args and args[0].ndim == 4 else None
    return model


def timm_build_kwargs(name: str) -> tuple[dict, int, bool, str]:
    """(kwargs, parameter count, runs on meta only, note): the smallest image size the model accepts
    and runs at, ``depth=4`` for big ones, meta for huge ones."""
    model = _timm_meta(name, {}, forward=False)
    params = _count(model)
    cfg = getattr(model, "pretrained_cfg", None) or {}
    side = max(cfg.get("input_size", (3, 224, 224))[1:])
    channels = cfg.get("input_size", (3, 224, 224))[0]
    kwargs: dict = {}
    for size in IMG_SIZES:
        if size >= side:
            break
        # a model built for the size (img_size=), told its input size through its pretrained config too
        # where its example inputs do not follow img_size (what build_example_inputs reads: Gemma 4's
        # ViT took img_size and kept 768 px inputs), else a fully convolutional one told only that,
        # as a fine-tuning user would
        overlay = {"pretrained_cfg_overlay": {"input_size": (channels, size, size)}}
        for sized in ({"img_size": size}, {"img_size": size} | overlay, overlay):
            try:
                model = _timm_meta(name, sized, forward=True)
            except Exception:  # noqa: BLE001, S112 - a size the model does not take is simply not used
                continue
            if model.example_side == size:
                kwargs = sized
                break
        if kwargs:
            break
    note = ""
    if params > BIG_PARAMS:
        for fewer in ({"depth": 4}, {"depths": (2, 2, 2, 2)}, {"depths": (2, 2, 2)}):
            try:
                smaller = _count(_timm_meta(name, kwargs | fewer, forward=True))
            except Exception:  # noqa: BLE001, S112 - an argument the model does not take
                continue
            if smaller < params:
                kwargs, params = kwargs | fewer, smaller
                break
        else:
            note = "no depth= or depths= to shrink it"
    return kwargs, params, params > HUGE_PARAMS, note


def build_text(kwargs: dict) -> str:
    """The build arguments as the sweep's table shows them (an input size set through the pretrained
    config as ``input_size=96``)."""
    parts = []
    for k, v in kwargs.items():
        if k == "pretrained_cfg_overlay":
            parts.append(f"input_size={v['input_size'][-1]}")
        else:
            parts.append(f"{k}={v}")
    return ", ".join(parts)


def sweep_timm(name: str) -> Result:
    import timm
    import torch

    from .judge import EngineRun, compare_patched
    from .oracles import expected_from_slots, native_build, off_residual_note

    res = Result("timm", name)
    with contextlib.suppress(Exception):
        res.family = timm.models._registry._model_to_module.get(name, "")  # type: ignore[attr-defined]
    try:
        kwargs, res.params, huge, res.note = timm_build_kwargs(name)
    except Exception as exc:  # noqa: BLE001
        res.status, res.stage, res.error = "failed", "build", first_line(exc)
        return res
    res.build = build_text(kwargs)
    torch.manual_seed(0)
    try:
        if huge:
            res.device = "meta"
            with torch.device("meta"):
                model = timm.create_model(name, pretrained=False, **kwargs)
        else:
            model = timm.create_model(name, pretrained=False, **kwargs)
        res.cls = type(model).__name__
    except Exception as exc:  # noqa: BLE001
        res.status, res.stage, res.error = "failed", "build", first_line(exc)
        return res
    done = patch(res, model)
    sized = {"img_size", "pretrained_cfg_overlay"}
    if done is None and res.stage == "forward" and sized & set(kwargs) and res.device != "meta":
        # ran on the meta device at this size but not for real (MViTv2's relative positions): its default size
        kwargs = {k: v for k, v in kwargs.items() if k not in sized}
        res.note = "; ".join(p for p in (res.note, f"at {res.build}: {res.error}") if p)
        res.build = build_text(kwargs)
        res.status, res.stage, res.error = "ok", "", ""
        torch.manual_seed(0)
        model = timm.create_model(name, pretrained=False, **kwargs)
        done = patch(res, model)
    if res.device == "meta":
        res.verified = None
    try:
        with torch.device("meta"):
            timm.create_model(name, pretrained=False, drop_path_rate=RATE, **kwargs)
        has_rate = True
    except TypeError:
        has_rate = False
    if not has_rate:
        res.parity_reason = "no drop_path_rate: no library slots"
        return res
    if done is None:
        return res
    report, args, kw = done
    try:
        slots = native_build(lambda: timm.create_model(name, pretrained=False, drop_path_rate=RATE, **kwargs), args, kw)
        res.native = sum(s.calls for s in slots)
        expected = expected_from_slots(slots, model)
        site_ok, rate_ok, reasons = compare_patched(model, EngineRun(report, args, kw), report.sites, expected, True)
        res.site_parity, res.rate_parity = site_ok, rate_ok
        off = off_residual_note(slots)
        res.parity_reason = "; ".join(r for r in reasons if not r.startswith("note") and not r.startswith("rates")
                                      and not r.startswith("native rates"))[:600]
        if off:
            res.parity_reason = "; ".join(p for p in (res.parity_reason, off) if p)
    except Exception as exc:  # noqa: BLE001
        res.stage, res.error = "judge", first_line(exc)
        res.status = "failed"
    return res


# -- Hugging Face ---------------------------------------------------------------------------------

_TINY = {
    # layer counts
    "num_hidden_layers": 2, "num_layers": 2, "encoder_layers": 2, "decoder_layers": 2,
    "num_encoder_layers": 2, "num_decoder_layers": 2, "n_layer": 2, "n_layers": 2,
    # widths
    "hidden_size": 64, "d_model": 64, "n_embd": 64, "embed_dim": 64, "dim": 64,
    "num_attention_heads": 4, "encoder_attention_heads": 4, "decoder_attention_heads": 4, "n_head": 4,
    "num_heads": 4, "head_dim": 16, "num_key_value_heads": 2,
    "intermediate_size": 128, "encoder_ffn_dim": 128, "decoder_ffn_dim": 128, "ffn_dim": 128, "n_inner": 128,
    # mixture of experts
    "num_experts": 4, "num_local_experts": 4, "n_routed_experts": 4, "num_experts_per_tok": 2,
    "num_experts_per_token": 2, "num_expert_group": 1,
    "moe_intermediate_size": 64, "shared_expert_intermediate_size": 64, "n_group": 1, "topk_group": 1,
    # latent / partial rotary attention (DeepSeek, GPT-J, CodeGen)
    "qk_rope_head_dim": 8, "qk_nope_head_dim": 8, "v_head_dim": 16, "kv_lora_rank": 32, "q_lora_rank": 32,
    "rotary_dim": 8, "hidden_size_per_layer_input": 16,
    "index_num_heads": 2,  # an attention indexer's heads: at most the query heads of a key head (Kolibri's)
    # images (EfficientNet's default config is at 600 px), video clips (V-JEPA 2's 64 frames)
    "image_size": 224, "frames_per_clip": 8,
}
_LAYERS_ONLY = {k: v for k, v in _TINY.items() if k in (
    "num_hidden_layers", "num_layers", "encoder_layers", "decoder_layers", "num_encoder_layers",
    "num_decoder_layers", "n_layer", "n_layers")}


# Sizes a config leaves unset (None) that its model needs: the "tiny, consistent" level fills them
# (HunYuan's and Ministral's head_dim, ESM's vocab_size, the time series models' prediction_length, ...).
_UNSET = {"vocab_size": 1000, "prediction_length": 4, "num_experts": 4, "num_experts_per_tok": 2, "top_k_experts": 2,
          "moe_intermediate_size": 64, "intermediate_size": 128, "pad_token_id": 1,
          "n_shared_experts": 1}  # dots1's: its shared experts' width is moe_intermediate_size x n_shared_experts
# Width keys whose shrinking other fields follow: a sub-config's ``out_hidden_size`` / ``text_hidden_size`` /
# ``audio_hidden_size`` naming the width of another part, or the same config's ``codebook_dim``.
_WIDTHS = ("hidden_size", "d_model", "n_embd", "embed_dim", "dim")
_NOT_A_WIDTH = re.compile(r"vocab|image|patch|position|window|chunk|batch|kernel|sampl|length|bucket|scale|num_|"
                          r"max_|min_|_rate|stride|seq|frame|rank|label|token|_id$|ids$")


def _is_size(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def shrink_overrides(config, table: dict, mha: bool = False, depth: int = 0, consistent: bool = False,
                     layers: int | None = None) -> dict:
    """Constructor keyword arguments that shrink ``config`` (a default instance): each key of ``table``
    the config has as a number above the table's value, ``depths`` lists to ones, sub-configs
    recursively (passed as dicts, built by the parent), and the fields that must stay consistent with them
    (head_dim, rotary sections, per-layer lists, widths other parts name, a backbone sub-config's out features,
    the vision layers a projector reads). ``mha``: key/value heads = heads.
    ``consistent``: also the fields that must follow the shrunk ones (layer index lists, projections, output
    dims, merged widths and channel lists of the shrunk widths, pixel shuffle factors; the "tiny, consistent"
    level: without it,
    the plain first level, the sizes most types were first swept at), and sizes the config leaves unset
    (None) get the table's value (or ``_UNSET``'s). ``layers``: the layer counts' value instead of the table's
    (the depth check builds each type at several depths)."""
    values = config.to_dict()
    out: dict[str, Any] = {}
    # a config wrapping a timm model by name (TimmWrapperConfig, Gemma 3n's vision tower): timm builds it at its own
    # width, which the config's hidden_size only reports (FastVLM's fastvit_mci3: 3072)
    timm = isinstance(values.get("architecture"), str) and "model_args" in values
    for key, small in table.items():
        small = layers if layers is not None and key in _LAYERS_ONLY else small
        value = values.get(key)
        if _is_size(value) and value > small and not (timm and key in _WIDTHS):
            out[key] = small
    if consistent:
        _fill_unset(values, out, table)
        if "backbone" in values and values["backbone"] is None and values.get("backbone_config") is None:
            # a backbone named by a timm model and left unset (TimmBackboneConfig's): a small one, built untrained
            out["backbone"] = "resnet18"
            if "use_pretrained_backbone" in values:
                out["use_pretrained_backbone"] = False
    if mha and "num_key_value_heads" in out:
        out["num_key_value_heads"] = out.get("num_attention_heads", values.get("num_attention_heads"))
    if "num_attention_heads" in out and "head_dim" in values and values["head_dim"] and "head_dim" not in out:
        out["head_dim"] = 16
    if consistent:
        if "head_dim" in out and values.get("head_dim") and values["head_dim"] == values.get("qk_rope_head_dim") \
                and "qk_rope_head_dim" in out:
            out["head_dim"] = out["qk_rope_head_dim"]  # latent attention's rotary head dim (DeepSeek-V3, Youtu)
        if not mha and values.get("num_key_value_heads") and values["num_key_value_heads"] == values.get(
                "num_attention_heads") and "num_attention_heads" in out:
            out["num_key_value_heads"] = out["num_attention_heads"]  # multi-head attention stays so (DeepSeek-V2)
    if "num_key_value_heads" in values and values["num_key_value_heads"] and "num_attention_heads" in out \
            and "num_key_value_heads" not in out and values["num_key_value_heads"] > out["num_attention_heads"]:
        out["num_key_value_heads"] = out["num_attention_heads"]
    if table is _TINY:
        heads = values.get("num_heads")
        if isinstance(heads, (list, tuple)) and heads and all(isinstance(h, int) for h in heads):
            out["num_heads"] = [1] * len(heads)  # every stage width stays divisible
        depths = values.get("depths")
        if isinstance(depths, (list, tuple)) and depths and all(isinstance(d, int) for d in depths):
            out["depths"] = [min(d, 1) if d else d for d in depths]
        (_shrink_mrope if consistent else _shrink_mrope_plain)(config, values, out)
    layers_key = next((k for k in _LAYERS_ONLY if _is_size(values.get(k)) and k in out), None)
    if layers_key is not None and depth > 0:  # a config built from its class computes its stages itself
        _fit_out_features(values, out, layers_key)
    if consistent:
        if layers_key is not None:
            _shrink_per_layer(values, out, layers_key)
        if _is_size(values.get("qk_head_dim")) and {"qk_nope_head_dim", "qk_rope_head_dim"} & set(out):
            # latent attention's q/k head = its part without rotary + its rotary part
            out["qk_head_dim"] = (out.get("qk_nope_head_dim", values.get("qk_nope_head_dim")) or 0) + (
                out.get("qk_rope_head_dim", values.get("qk_rope_head_dim")) or 0)
    elif layers_key is not None:
        _shrink_per_layer_plain(values, out, layers_key)
    if {"expand", "head_dim", "num_heads"} <= set(values) and "hidden_size" in out and isinstance(values["expand"], int):
        out["num_heads"] = out["hidden_size"] * values["expand"] // out.get("head_dim", values["head_dim"] or 16)
    types = values.get("layer_types")
    if not consistent and isinstance(types, list) and types and "num_hidden_layers" in out:
        # one layer of each kind (hybrid models need their attention layers), at least the table's count
        kinds = list(dict.fromkeys(types))
        kinds += [types[-1]] * (out["num_hidden_layers"] - len(kinds))
        out["layer_types"], out["num_hidden_layers"] = kinds, len(kinds)
    if depth < 3:
        for name in getattr(config, "sub_configs", {}) or {}:
            sub = getattr(config, name, None)
            if sub is not None and hasattr(sub, "to_dict"):
                inner = shrink_overrides(sub, table, mha, depth + 1, consistent, layers)
                if inner:
                    out[name] = sub.to_dict() | inner
    if consistent:
        _fit_image_tokens(values, out)
        width = next((k for k in _WIDTHS if _is_size(values.get(k)) and k in out), None)
        inner = values.get("intermediate_size")
        if width and _is_size(inner) and 0 < inner < values[width] and values[width] % inner == 0 \
                and out[width] % (values[width] // inner) == 0:
            # a bottleneck that is a fraction of the width stays that fraction (Fun-ASR-Nano's adaptor: a quarter)
            out["intermediate_size"] = out[width] // (values[width] // inner)
        _follow_width_multiples(values, out)
        _shrink_layer_configs(values, out)
        _follow_stage_widths(config, values, out)
        _fit_doubling_stages(values, out)
        _fit_shuffled_projector(values, out)
        _fit_rotary_heads(values, out)
        _fit_pixel_shuffle(values, out)
        _follow_patch_grid(values, out)
        if depth == 0 and table is _TINY:
            _follow_widths(config, out)
            _follow_projection_widths(config, out)
            _follow_merged_widths(config, out)
            _follow_summed_widths(config, out)
            _follow_input_widths(config, out)
            _fit_scaled_patches(config, out)
            _follow_channel_lists(config, out)
            _follow_feature_sizes(config, out)
            _follow_named_widths(config, out)
            _follow_pos_feats(config, out)
    if depth == 0:
        if table is _TINY:  # at the plain level too: it decides whether a tower's output reaches the text model
            _follow_output_dims(config, out)
        _cover_image_tokens(config, out, consistent)
        _fit_vision_feature_layers(config, out)
        if consistent:  # the plain levels keep them (SAM's at layers only: a global layer over 64 x 64 patches)
            _fit_default_mrope(config, out)
            _fit_layer_index_lists(config, out)
    return out


def _fit_vision_feature_layers(config, out: dict) -> None:
    """``vision_feature_layer`` (the vision tower's layers whose outputs a projector reads; in the config or a
    sub-config such as an adapter's; one index, a list or a tuple) past the shrunk tower, fitted by
    ``_fit_layer_indices``."""
    vision = getattr(config, "vision_config", None)
    over = out.get("vision_config") or {}
    key = next((k for k in _LAYERS_ONLY if _is_size(getattr(vision, k, None)) and _is_size(over.get(k))), None)
    if key is None:
        return
    subs = getattr(config, "sub_configs", {}) or {}
    for holder, name in [(config, None)] + [(getattr(config, n, None), n) for n in subs]:
        value = getattr(holder, "vision_feature_layer", None) if holder is not None else None
        fitted = _fit_layer_indices(value, getattr(vision, key), over[key])
        if fitted is not None:
            target = out if name is None else out.setdefault(name, holder.to_dict())
            target["vision_feature_layer"] = fitted


def _fit_layer_indices(value: Any, old: int, new: int) -> int | list[int] | None:
    """Layer indices (one, or a list or tuple: fitted as a list) into a stack shrunk from ``old`` to ``new`` layers,
    None where all fit already (``-new <= i < new``) or ``value`` is no index: as many entries as before (a
    projector reads that many), each the same distance from the last layer where the stack still has it, else its
    first (or, counted from the end, its first layer's output)."""
    many = isinstance(value, (list, tuple))
    indices = list(value) if many else [value]
    if not (indices and all(_is_size(i) for i in indices)) or all(-new <= i < new for i in indices):
        return None
    fitted = [max(0, new - (old - i)) if i >= 0 else max(i, -new) for i in indices]
    return fitted if many else fitted[0]


def _shrunk_width(values: dict, out: dict) -> str | None:
    """The config's own width key (``_WIDTHS``) that the overrides ``out`` shrank; None where none did."""
    return next((k for k in _WIDTHS if _is_size(values.get(k)) and _is_size(out.get(k)) and out[k] < values[k]), None)


def _shrunk_widths(config: Any, out: dict) -> dict[int, tuple[str, int]]:
    """Old width -> (sub-config, new width) of each sub-config (passed as a dict in ``out``) whose width shrank;
    the first sub-config of each old width."""
    widths: dict[int, tuple[str, int]] = {}
    for name in getattr(config, "sub_configs", {}) or {}:
        sub, over = getattr(config, name, None), out.get(name)
        if sub is None or not hasattr(sub, "to_dict") or not isinstance(over, dict):
            continue
        key = next((k for k in _WIDTHS if _is_size(getattr(sub, k, None)) and _is_size(over.get(k))), None)
        if key and over[key] < getattr(sub, key):
            widths.setdefault(getattr(sub, key), (name, over[key]))
    return widths


def _follow_projection_widths(config: Any, out: dict) -> None:
    """A sub-config's ``projection_dim`` equal to the old width of another sub-config (not its own) follows that
    width where the width shrank (Florence-2's vision projection into its text model's d_model)."""
    subs: dict[str, Any] = {n: getattr(config, n, None) for n in getattr(config, "sub_configs", {}) or {}}
    subs = {n: s for n, s in subs.items() if s is not None and hasattr(s, "to_dict") and isinstance(out.get(n), dict)}
    widths = _shrunk_widths(config, out)
    for name, sub in subs.items():
        value = getattr(sub, "projection_dim", None)
        own = next((getattr(sub, k) for k in _WIDTHS if _is_size(getattr(sub, k, None))), None)
        if _is_size(value) and value in widths and widths[value][0] != name and value != own \
                and out[name].get("projection_dim", value) == value:
            out[name]["projection_dim"] = widths[value][1]


def _follow_output_dims(config: Any, out: dict) -> None:
    """A sub-config's ``output_dim`` / ``projection_dim`` at least its own old width (not a bottleneck: the width of
    what it feeds) follows the shrunk width of the text sub-config, where the text sub-config has no such field of
    its own (then it is a space both project into: CLAP's, CLVP's). Qwen3-ASR's audio tower, 1024 wide, outputs
    3584 into a text model of 2048; Janus' vision and VQ aligners."""
    subs = getattr(config, "sub_configs", {}) or {}
    text = getattr(config, "text_config", None)
    if "text_config" not in subs or text is None or not hasattr(text, "to_dict") \
            or not isinstance(out.get("text_config"), dict):
        return
    key = next((k for k in _WIDTHS if _is_size(getattr(text, k, None)) and _is_size(out["text_config"].get(k))), None)
    if key is None or out["text_config"][key] >= getattr(text, key):
        return
    width = out["text_config"][key]
    for name in subs:
        sub, over = getattr(config, name, None), out.get(name)
        if name == "text_config" or sub is None or not hasattr(sub, "to_dict") or not isinstance(over, dict):
            continue
        own = next((getattr(sub, k) for k in _WIDTHS if _is_size(getattr(sub, k, None))), None)
        for dim_key in ("output_dim", "projection_dim"):
            value = getattr(sub, dim_key, None)
            if _is_size(value) and _is_size(own) and value >= own and over.get(dim_key, value) == value \
                    and dim_key not in text.to_dict():
                over[dim_key] = width


def _follow_merged_widths(config: Any, out: dict) -> None:
    """A config's own ``out_hidden_size`` / ``merged_hidden_size`` (the width of merged patches) that is a
    multiple of exactly one shrunk sub-config's old width, and equal to none, stays that multiple of its new
    width (Muse Spark's: its vision width x 2 x 2 merged patches, which its projector reads)."""
    widths = {old: new for old, (_, new) in _shrunk_widths(config, out).items()}
    for key, value in config.to_dict().items():
        if not re.fullmatch(r"(out|output|merged)_hidden_size", key) or key in out or key in _TINY or not _is_size(value) or value in widths:
            continue
        bases = [w for w in widths if value % w == 0 and 2 <= value // w <= 16]
        if len(bases) == 1:
            out[key] = value // bases[0] * widths[bases[0]]


def _follow_summed_widths(config: Any, out: dict) -> None:
    """A config's own ``*_dim`` / ``*_size`` that is its own old width plus the old width of one of its sub-configs
    (the two side by side), both shrunk, stays their sum (XCodec2's and NeuCodec's ``quantization_dim``: the
    acoustic width + the semantic model's, 1024 + 1024)."""
    values = config.to_dict()
    own = _shrunk_width(values, out)
    widths = {old: new for old, (_, new) in _shrunk_widths(config, out).items()}
    if own is None or not widths:
        return
    for key, value in values.items():
        if not re.search(r"_(dim|size)$", key) or key in out or key in _TINY or not _is_size(value) \
                or _NOT_A_WIDTH.search(key) or value - values[own] not in widths:
            continue
        out[key] = out[own] + widths[value - values[own]]


def _follow_input_widths(config: Any, out: dict) -> None:
    """A config's own ``*_in_dim`` / ``*_input_dim`` equal to the old width of a sub-config that shrank (and not
    to its own width) takes that sub-config's states: it follows the new width (OmDet-Turbo's
    ``text_projection_in_dim``, its text encoder's 512)."""
    values = config.to_dict()
    widths = _shrunk_widths(config, out)
    own = {values[k] for k in _WIDTHS if _is_size(values.get(k))}
    for key, value in values.items():
        if re.search(r"_(in|input)_dim$", key) and key not in out and _is_size(value) and value in widths \
                and value not in own:
            out[key] = widths[value][1]


def _follow_channel_lists(config: Any, out: dict, depth: int = 0) -> None:
    """A sub-config's ``*_channels`` (one, or a list: its last entry) or ``*_dim`` equal to the old width of a
    sibling sub-config (not its own) that shrank: it follows it (a SAM encoder's downsampling convolutions into the
    CLIP-like encoder beside it, Unlimited OCR's [512, 1024]; GLM-Image's VQ ``latent_channels``, the vision
    tower's states it quantizes; SAM-HQ's mask decoder ``vit_dim``, dots3's adapters' ``adapter_out_dim`` into
    the text model). At any depth of sub-configs passed as dicts."""
    subs: dict[str, Any] = {n: getattr(config, n, None) for n in getattr(config, "sub_configs", {}) or {}} \
        if depth < 3 else {}
    subs = {n: s for n, s in subs.items() if s is not None and hasattr(s, "to_dict") and isinstance(out.get(n), dict)}
    widths = _shrunk_widths(config, out) if depth < 3 else {}
    for name, sub in subs.items():
        own = next((getattr(sub, k) for k in _WIDTHS if _is_size(getattr(sub, k, None))), None)
        for key, value in sub.to_dict().items():
            many = isinstance(value, list)
            last = value[-1] if many and value and all(_is_size(c) for c in value) else value
            named = key.endswith("_channels") or (not many and key.endswith("_dim") and not _NOT_A_WIDTH.search(key))
            if named and _is_size(last) and last in widths and widths[last][0] != name \
                    and last != own and out[name].get(key, value) == value:
                out[name][key] = value[:-1] + [widths[last][1]] if many else widths[last][1]
        _follow_channel_lists(sub, out[name], depth + 1)


def _follow_width_multiples(values: dict, out: dict) -> None:
    """A config's ``*_output_dim`` / ``*_input_dim`` that is an exact multiple of its own width, which shrank,
    stays that multiple of the new width (Mllama's vision output: the last layer's and its five intermediate
    layers' states side by side, 6 x 1280)."""
    width = _shrunk_width(values, out)
    if width is None:
        return
    for key, value in values.items():
        if re.search(r"_(output|input)_dim$", key) and key not in out and _is_size(value) and value > values[width] \
                and value % values[width] == 0:
            out[key] = value // values[width] * out[width]


def _follow_stage_widths(config: Any, values: dict, out: dict) -> None:
    """A config's own list of stage widths (``*dim*`` / ``*hidden_size*``, increasing) that starts at its width, which
    shrank, scales with it (SAM 2's Hiera ``embed_dim_per_stage`` [96, 192, 384, 768], its first stage the
    ``hidden_size``); and a config's list of widths (``*channel*`` / ``*dim*``) that are all a sub-config's old stage
    widths (in any order) takes the new ones
    (SAM 2's vision ``backbone_channel_list`` [768, 384, 192, 96], the Hiera stages' widths it reads)."""
    width = _shrunk_width(values, out)
    if width is not None:
        old, new = values[width], out[width]
        for key, value in values.items():
            if key in out or not re.search(r"dim|hidden_size", key) or not isinstance(value, list) or len(value) < 2 \
                    or not all(_is_size(v) for v in value) or value[0] != old \
                    or any(b <= a for a, b in zip(value, value[1:])) or any(v * new % old for v in value):
                continue
            out[key] = [v * new // old for v in value]
    for name in getattr(config, "sub_configs", {}) or {}:
        sub, over = getattr(config, name, None), out.get(name)
        if sub is None or not hasattr(sub, "to_dict") or not isinstance(over, dict):
            continue
        stages: dict[int, int] = {}
        for key, value in sub.to_dict().items():
            if re.search(r"dim|hidden_size", key) and isinstance(value, list) and isinstance(over.get(key), list) \
                    and len(over[key]) == len(value) and over[key] != value and all(_is_size(v) for v in value + over[key]):
                stages.update(zip(value, over[key]))
        for key, value in values.items():
            if key not in out and isinstance(value, list) and len(value) >= 2 and not _NOT_A_WIDTH.search(key) \
                    and re.search(r"channel|dim|hidden_size", key) \
                    and all(_is_size(v) and v in stages for v in value):
                out[key] = [stages[v] for v in value]


def _fit_doubling_stages(values: dict, out: dict) -> None:
    """A config whose width, which shrank, is its patch embedding's width doubled at each stage after the first
    (Swin-style stages: ``width == *embed*_size x 2 ** (len(depths) - 1)``; CLAP's audio tower, 96 x 2 ** 3 = 768)
    keeps that: the embedding width becomes the new width halved once per later stage of the shrunk ``depths``."""
    width = _shrunk_width(values, out)
    depths, new_depths = values.get("depths"), out.get("depths", values.get("depths"))
    if width is None or not isinstance(depths, list) or not depths or not isinstance(new_depths, list) or not new_depths:
        return
    for key, value in values.items():
        if key in out or key in _TINY or "embed" not in key or not _is_size(value) or not value \
                or values[width] != value * 2 ** (len(depths) - 1):
            continue
        factor = 2 ** (len(new_depths) - 1)
        if out[width] % factor == 0:
            out[key] = out[width] // factor


def _fit_shuffled_projector(values: dict, out: dict) -> None:
    """A tower whose projector MLP reads its patches pixel-shuffled by a ``pixel_shuffle_ratio`` (below 1: channels
    grow by 1 / ratio ** 2) from ``intermediate_size`` wide inputs to ``projector_input_dim`` and on to
    ``projector_output_dim`` (Llama 4's vision tower): that input is the shrunk width / ratio ** 2, and the tower's
    ``vision_output_dim`` the projector's output. Transformers' default Llama 4 config has neither (a 768 width
    shuffled to 3072 beside an intermediate_size of 5632; vision_output_dim 7680 beside 4096)."""
    ratio = values.get("pixel_shuffle_ratio")
    width = _shrunk_width(values, out)
    if not (isinstance(ratio, float) and 0 < ratio < 1 and width and _is_size(values.get("projector_input_dim"))
            and _is_size(values.get("intermediate_size"))):
        return
    channels = out[width] / ratio**2
    if channels == int(channels):
        out["intermediate_size"] = int(channels)
    if _is_size(values.get("vision_output_dim")) and _is_size(values.get("projector_output_dim")):
        out["vision_output_dim"] = out.get("projector_output_dim", values["projector_output_dim"])


def _fit_rotary_heads(values: dict, out: dict) -> None:
    """A config that rotates the first dims of each head (``use_rotary_embedding``) without naming how many (no
    ``head_dim`` / ``rotary_dim``): its default rotates ``projection_dim // (2 x heads)`` dims (CLVP's 32, a floor
    its model keeps however narrow the heads), so the shrunk heads stay at least that wide (fewer heads)."""
    heads, width = out.get("num_attention_heads"), next((k for k in _WIDTHS if _is_size(out.get(k))), None)
    if not (values.get("use_rotary_embedding") is True and _is_size(heads) and width and "head_dim" not in values
            and "rotary_dim" not in values and _is_size(values.get("projection_dim"))
            and _is_size(values.get("num_attention_heads")) and values["num_attention_heads"]):
        return
    rotary = values["projection_dim"] // (2 * values["num_attention_heads"])
    if rotary and out[width] // heads < rotary <= out[width] and out[width] % rotary == 0:
        out["num_attention_heads"] = out[width] // rotary


def _follow_feature_sizes(config: Any, out: dict) -> None:
    """A (sub-)config's ``*feature_sizes`` (the [height, width] grids of its feature maps, each the image side over
    a stride) follows the image, where the configs' ``image_size`` shrank one way (SAM 2's
    ``backbone_feature_sizes`` [[256, 256], [128, 128], [64, 64]] of its 1024-pixel images, the prompt encoder's
    image shrunk to 224: [[56, 56], [28, 28], [14, 14]])."""
    nodes = [(cfg.to_dict(), over) for cfg, over in _config_nodes(config, out)]
    images = {(v["image_size"], o["image_size"]) for v, o in nodes
              if _is_size(v.get("image_size")) and _is_size(o.get("image_size")) and o["image_size"] < v["image_size"]}
    if len(images) != 1:
        return
    old, new = next(iter(images))
    for values, over in nodes:
        for key, value in values.items():
            if not key.endswith("feature_sizes") or key in over and over[key] != value or not isinstance(value, list):
                continue
            sides = [v for pair in value for v in (pair if isinstance(pair, (list, tuple)) else [pair])]
            if sides and all(_is_size(v) and v and old % v == 0 and new % (old // v) == 0 for v in sides):
                over[key] = [[new // (old // v) for v in pair] if isinstance(pair, (list, tuple)) else new // (old // pair)
                             for pair in value]


def _follow_named_widths(config: Any, out: dict) -> None:
    """A sub-config's ``<part>_hidden_size`` names the width of its sibling ``<part>_config``: where that width
    shrank, it is the new width, whatever it was before (Molmo2's adapter ``text_hidden_size`` 3584, its projection
    into the text model, whose default width is 4096)."""
    subs = {n: getattr(config, n, None) for n in getattr(config, "sub_configs", {}) or {}}
    widths = {}
    for name, sub in subs.items():
        over = out.get(name)
        key = next((k for k in _WIDTHS if _is_size(getattr(sub, k, None))), None) if sub is not None else None
        if key and isinstance(over, dict) and _is_size(over.get(key)) and over[key] < getattr(sub, key):
            widths[name.removesuffix("_config")] = over[key]
    for name, sub in subs.items():
        if sub is None or not hasattr(sub, "to_dict"):
            continue
        values = sub.to_dict()  # not an alias of another field (LLaVA-OneVision-1.5's, of out_hidden_size)
        for part, width in widths.items():
            key = f"{part}_hidden_size"
            if part != name.removesuffix("_config") and _is_size(values.get(key)) \
                    and (out.get(name) or {}).get(key, values[key]) != width:
                out[name] = out.get(name) or sub.to_dict()
                out[name][key] = width


def _follow_pos_feats(config: Any, out: dict) -> None:
    """A (sub-)config's ``*pos_feats`` (random Fourier features: the embedding is twice as wide, sine and cosine)
    that is half of one of its own sizes which shrank stays half of it (SAM's vision ``num_pos_feats`` 128, its
    positional embedding added to the ``output_channels`` 256 -> 64 wide image embedding: 32). At any depth of
    sub-configs passed as dicts."""
    for cfg, over in _config_nodes(config, out):
        values = cfg.to_dict()
        halves = {values[k] // 2: v // 2 for k, v in over.items() if _is_size(v) and _is_size(values.get(k))
                  and v < values[k] and values[k] % 2 == 0 and v % 2 == 0}
        for key, value in values.items():
            if key.endswith("pos_feats") and _is_size(value) and value in halves and over.get(key, value) == value:
                over[key] = halves[value]


def _config_nodes(config: Any, out: dict, depth: int = 0) -> Iterator[tuple[Any, dict]]:
    """``(config, its overrides)`` for the config and, three levels deep at most, each of its sub-configs whose
    overrides are a dict in ``out``: the nodes the rules that hold at any depth visit."""
    yield config, out
    for name in (getattr(config, "sub_configs", {}) or {}) if depth < 3 else ():
        sub = getattr(config, name, None)
        if sub is not None and hasattr(sub, "to_dict") and isinstance(out.get(name), dict):
            yield from _config_nodes(sub, out[name], depth + 1)


def _follow_patch_grid(values: dict, out: dict) -> None:
    """A config's ``*_embedding_size`` / ``*_grid_size`` that is its old patch grid's side (``image_size //
    patch_size``) follows the shrunk image's (SAM's prompt encoder: ``image_embedding_size`` 1024 // 16 = 64)."""
    image, patch = values.get("image_size"), values.get("patch_size")
    if not (_is_size(image) and _is_size(patch) and patch and _is_size(out.get("image_size"))):
        return
    side, new = image // patch, out["image_size"] // out.get("patch_size", patch)
    for key, value in values.items():
        if re.search(r"(embedding|grid)_size$", key) and key not in out and value == side and new != side:
            out[key] = new


def _fit_pixel_shuffle(values: dict, out: dict) -> None:
    """A pixel shuffle of the patch grid by a ``pixel_shuffle_factor`` (ModernVBERT's, of its vision config's grid)
    or by a vision config's own ``scale_factor`` (Granite Docling's tower): patches per side a multiple of it,
    the image grown to the next such size (the top-level ``scale_factor`` with a vision config is
    ``_fit_image_tokens``'). Factors that divide the grid, and configs without one, stay."""
    own = {"image_size", "patch_size"} <= set(values)
    factor: Any = values.get("pixel_shuffle_factor", values.get("scale_factor") if own else None)
    grid = (out | values) if own else out.get("vision_config", values.get("vision_config"))
    if not (_is_size(factor) and factor > 1 and isinstance(grid, dict) and _is_size(grid.get("image_size"))
            and _is_size(grid.get("patch_size")) and grid["patch_size"]):
        return
    image, patch = out.get("image_size", grid["image_size"]) if own else grid["image_size"], grid["patch_size"]
    side = image // patch
    if side % factor == 0:
        return
    size = patch * factor * -(-side // factor)
    if own:
        out["image_size"] = size
    else:
        out["vision_config"] = dict(grid, image_size=size)


def _fit_scaled_patches(config: Any, out: dict) -> None:
    """A config that cuts an image scaled by each of ``scaled_images_ratios`` into ``patch_size`` patches, which
    sub-configs of that ``image_size`` take whole (DepthPro: 384-pixel patches of images 1536 wide at most): the
    patch, and those sub-configs' image size, shrink to what the smallest scale of the example image
    (``_TINY``'s image size) holds, in whole patches of the sub-configs' own ``patch_size`` (224 x 0.25 -> 56)."""
    values = config.to_dict()
    ratios, patch = values.get("scaled_images_ratios"), values.get("patch_size")
    if not (isinstance(ratios, (list, tuple)) and ratios and all(isinstance(r, (int, float)) and r > 0 for r in ratios)
            and _is_size(patch)) or "patch_size" in out:
        return
    takers = {}
    for name in getattr(config, "sub_configs", {}) or {}:
        sub = getattr(config, name, None)
        if sub is not None and getattr(sub, "image_size", None) == patch and _is_size(getattr(sub, "patch_size", None)):
            takers[name] = sub
    if not takers:
        return
    step = max(sub.patch_size for sub in takers.values())
    size = max(step, int(_TINY["image_size"] * min(ratios)) // step * step)
    if size >= patch:
        return
    out["patch_size"] = size
    for name, sub in takers.items():
        out[name] = (out.get(name) or sub.to_dict()) | {"image_size": size}


_INDEX_LIST = re.compile(r"_(indexes|indices)$")
_SUB_INDEX_LIST = re.compile(r"(layer|hook)_(ids|indexes|indices)$")  # a config's own, into its sub-configs' stacks


def _fit_layer_index_lists(config: Any, out: dict) -> None:
    """Lists of layer indices that point past a shrunk stack: a sub-config's ``*_indexes`` / ``*_indices`` into
    its own layers (SAM's ``global_attn_indexes``, Mllama's ``intermediate_layers_indices``; not a backbone's
    ``out_indices``), fitted by ``_fit_layer_indices``; lists whose entries all fit stay."""
    def walk(cfg: Any, over: dict, depth: int) -> None:
        for name in (getattr(cfg, "sub_configs", {}) or {}) if depth < 3 else ():
            sub, inner = getattr(cfg, name, None), over.get(name)
            if sub is None or not hasattr(sub, "to_dict") or not isinstance(inner, dict):
                continue
            values = sub.to_dict()
            key = next((k for k in _LAYERS_ONLY if _is_size(values.get(k)) and _is_size(inner.get(k))), None)
            if key is not None and inner[key] < values[key]:
                for field, value in values.items():
                    if _INDEX_LIST.search(field) and field != "out_indices" and isinstance(value, (list, tuple)) \
                            and inner.get(field, value) == value:
                        fitted = _fit_layer_indices(value, values[key], inner[key])
                        if fitted is not None:
                            inner[field] = fitted
            walk(sub, inner, depth + 1)

    walk(config, out, 0)
    # the config's own lists into the stacks of its sub-configs, where it has no stack of its own and they all
    # shrank alike (DepthPro's ``intermediate_hook_ids`` [11, 5] into its 12-layer image and patch encoders)
    values = config.to_dict()
    if any(_is_size(values.get(k)) for k in _LAYERS_ONLY):
        return
    stacks = set()
    for name in getattr(config, "sub_configs", {}) or {}:
        sub, inner = getattr(config, name, None), out.get(name)
        key = next((k for k in _LAYERS_ONLY if _is_size(getattr(sub, k, None))), None) if sub is not None else None
        if key is not None:
            stacks.add((getattr(sub, key), (inner if isinstance(inner, dict) else {}).get(key, getattr(sub, key))))
    if len(stacks) != 1 or next(iter(stacks))[1] >= next(iter(stacks))[0]:
        return
    old, new = next(iter(stacks))
    for key, value in values.items():
        if _SUB_INDEX_LIST.search(key) and key not in out and isinstance(value, (list, tuple)):
            fitted = _fit_layer_indices(value, old, new)
            if fitted is not None:
                out[key] = fitted


def _fit_out_features(values: dict, out: dict, layers_key: str) -> None:
    """A backbone's ``out_indices`` / ``out_features`` that name layers past the shrunk stack (a sub-config passed
    as a dict keeps them: Dinov2's ``stage12``, a detector's four feature layers): as many as it named, the last
    layers of the stack, which keeps at least that many. Not stages of ``depths`` (Swin's: they do not shrink)."""
    indices, names = values.get("out_indices"), values.get("stage_names")
    stages = ["stem"] + [f"stage{i}" for i in range(1, values[layers_key] + 1)]  # transformers' backbone stage names
    if not (isinstance(indices, list) and indices and all(_is_size(i) for i in indices) and names == stages
            and "depths" not in values and max(indices) > out[layers_key]):
        return
    layers = out[layers_key] = max(out[layers_key], len(indices))
    out["out_indices"] = list(range(layers - len(indices) + 1, layers + 1))
    out["stage_names"] = stages[: layers + 1]
    out["out_features"] = [stages[i] for i in out["out_indices"]]


_MEDIA_TOKEN = re.compile(r"(image|video)_token_(id|index)")


def _cover_image_tokens(config, out: dict, consistent: bool) -> None:
    """A vocabulary that holds the config's image (and video) token ids: transformers' default configs of
    LLaVA, Idefics, SmolVLM, Janus, ... name an image token past the default text vocabulary (their checkpoints
    resize it), so the engine's input builder says they cannot take images as configured. At every level: only
    configs the builder refuses change. The consistent level also gives an image token id the config leaves
    None one of its own, past the vocabulary (Blip-2, MiniCPM-V: their checkpoints set it; without it the
    builder refuses them, and MiniCPM-V's forward would skip its vision tower)."""
    values = config.to_dict()
    text = getattr(config, "text_config", None)
    unset = next((k for k in ("image_token_id", "image_token_index") if k in values), None)
    if consistent and unset and values[unset] is None and unset not in out:
        vocab = getattr(text if text is not None else config, "vocab_size", None)
        if _is_size(vocab):
            out[unset] = vocab
    ids = [v for k, v in (values | out).items() if _is_size(v) and _MEDIA_TOKEN.fullmatch(k)]
    if not ids:
        return
    need = max(ids) + 1
    for holder, over in ((config, out), (text, out.get("text_config"))):
        vocab = getattr(holder, "vocab_size", None) if holder is not None else None
        if not _is_size(vocab) or (over or {}).get("vocab_size", vocab) >= need:
            continue
        if over is None:
            over = out["text_config"] = text.to_dict()
        over["vocab_size"] = need


def _fill_unset(values: dict, out: dict, table: dict) -> None:
    """Sizes and per-layer lists the config leaves unset (None) that its model needs."""
    for key, small in (_UNSET | {k: v for k, v in table.items() if k in _UNSET or k in _TINY}).items():
        if key in values and values[key] is None and key not in ("head_dim", "num_key_value_heads"):
            out[key] = small
    layers = next((out.get(k, values[k]) for k in _LAYERS_ONLY if _is_size(values.get(k))), None)
    if layers:  # per-layer lists the config leaves unset (its model indexes them): HF's kind names
        for key, kinds in (("layer_types", ["full_attention"]), ("mlp_layer_types", ["dense", "sparse"])):
            if key in values and values[key] is None:
                out[key] = (kinds * layers)[:layers]
        for key, value in values.items():
            if value is None and _LAYER_INDEX_LIST.search(key):
                out[key] = [layers - 1]  # Bamba's attention layers: the last one
    if "sliding_window" in values and values["sliding_window"] is None and any(
            "sliding" in k and k != "sliding_window" and _is_size(v) for k, v in values.items()):
        # a config with sizes of its own for sliding-window attention that leaves the window unset (Step 3.5's
        # num_sliding_attention_heads; Step3p7's model builds the sliding mask whatever its layer types)
        out["sliding_window"] = 512
    kinds = out.get("layer_types", values.get("layer_types"))
    if values.get("rope_parameters") == {} and isinstance(kinds, list) and kinds:
        # per-layer-type rotary parameters left empty (Cohere Compass, whose model reads them per type)
        out["rope_parameters"] = {k: {"rope_type": "default", "rope_theta": 10000.0} for k in dict.fromkeys(kinds)}
    heads = out.get("num_attention_heads", values.get("num_attention_heads"))
    width = out.get("hidden_size", values.get("hidden_size"))
    if "head_dim" in values and values["head_dim"] is None and _is_size(heads) and _is_size(width) and heads:
        out["head_dim"] = width // heads  # the models that read config.head_dim without a fallback (HunYuan)
    if "num_key_value_heads" in values and values["num_key_value_heads"] is None and _is_size(heads):
        out["num_key_value_heads"] = heads


def _fit_image_tokens(values: dict, out: dict) -> None:
    """Image tokens pooled from the patch grid (Gemma 3's default: 256 tokens from 14 x 14 patches, stride 0):
    tokens per side a divisor of patches per side."""
    vision = out.get("vision_config", values.get("vision_config"))
    tokens = values.get("mm_tokens_per_image")
    if _is_size(tokens) and isinstance(vision, dict) and _is_size(vision.get("image_size")) \
            and _is_size(vision.get("patch_size")) and vision["patch_size"]:
        side, per_side = vision["image_size"] // vision["patch_size"], math.isqrt(tokens)
        if side and per_side and side % per_side:
            per_side = max(d for d in range(1, min(side, per_side) + 1) if side % d == 0)
            out["mm_tokens_per_image"] = per_side * per_side
    # LLaVA-NeXT's "anyres" resolutions are multiples of the tower's image size: they shrink with it
    pinpoints = values.get("image_grid_pinpoints")
    before = (values.get("vision_config") or {}).get("image_size")
    after = vision.get("image_size") if isinstance(vision, dict) else None
    if isinstance(pinpoints, list) and pinpoints and _is_size(before) and _is_size(after) and after != before:
        out["image_grid_pinpoints"] = [[h * after // before, w * after // before] for h, w in pinpoints]
    # A pixel shuffle of the patch grid (Idefics3's and SmolVLM's scale_factor): patches per side a multiple of it
    scale = values.get("scale_factor")
    if _is_size(scale) and scale > 1 and isinstance(vision, dict) and _is_size(vision.get("image_size")) \
            and _is_size(vision.get("patch_size")) and vision["patch_size"]:
        side = vision["image_size"] // vision["patch_size"]
        if side % scale:
            out["vision_config"] = dict(vision, image_size=vision["patch_size"] * scale * -(-side // scale))


def _shrink_layer_configs(values: dict, out: dict) -> None:
    """A {layer index: {field: value}} map of per-layer settings (Dots 3 Note's ``per_layer_config``: its
    sliding-window layers' 64 heads, 1024-wide latent and 192-wide head part beside the config's own): each field
    the config itself shrank takes the config's new value, so the layers stay consistent with the shrunk ones."""
    for key, value in (values | out).items():
        if not (isinstance(value, dict) and value and all(str(k).isdigit() for k in value)
                and all(isinstance(v, dict) for v in value.values())):
            continue
        fitted = {i: {k: out[k] if _is_size(v) and _is_size(values.get(k)) and _is_size(out.get(k))
                      and out[k] < values[k] else v for k, v in entry.items()} for i, entry in value.items()}
        if fitted != value:
            out[key] = fitted


def _shrink_mrope_plain(config, values: dict, out: dict) -> None:
    """The plain level's rotary sections: rescaled (rounded) to half the new head dim, where it shrank."""
    rope = values.get("rope_parameters") or values.get("rope_scaling")
    if isinstance(rope, dict) and isinstance(rope.get("mrope_section"), list) and "head_dim" in out:
        sec = rope["mrope_section"]
        half = out["head_dim"] // 2
        new = [max(1, round(s * half / sum(sec))) for s in sec]
        new[0] += half - sum(new)
        key = "rope_parameters" if values.get("rope_parameters") else "rope_scaling"
        out[key] = dict(rope, mrope_section=new)


def _shrink_per_layer_plain(values: dict, out: dict, layers_key: str) -> None:
    """The plain level's per-layer fields: lists of one entry per layer and {layer index: ...} maps cut to
    the first layers (``layer_types`` is kept one of each kind by the caller)."""
    layers, new = values[layers_key], out[layers_key]
    if layers <= new:
        return
    for key, value in values.items():
        if key in out or key == "layer_types":
            continue
        if isinstance(value, list) and len(value) == layers:
            out[key] = value[:new]
        elif isinstance(value, dict) and value and all(str(k).isdigit() for k in value):
            out[key] = {k: v for k, v in value.items() if int(k) < new}


_LAYER_INDEX_LIST = re.compile(r"(layer_ids|layer_indices|layers_idx|_idxs)$")


def _layer_groups(per_layer: dict, counts: dict, layers: int) -> tuple[int, list]:
    """(p, the kinds list) where a per-layer list of kinds has one kind in every p-th entry and nowhere else and the
    parts of the stack (``counts``, two or more) are all multiples of p: the layers come in groups of p (Dory's layer_types
    serialize each layer as an attention entry and an ``mlp`` entry, and its config halves every count it is
    given); (1, []) where none does."""
    for key, value in per_layer.items():
        if not (all(isinstance(x, str) for x in value) and ("type" in key or "kind" in key)):
            continue
        for p in range(2, layers // 2 + 1):
            if layers % p or any(c % p for c in counts.values()):
                continue
            for r in range(p):
                column = set(value[r::p])
                if len(column) == 1 and not column & {x for i, x in enumerate(value) if i % p != r}:
                    return p, value
    return 1, []


def _shrink_per_layer(values: dict, out: dict, layers_key: str) -> None:
    """The layers kept when ``layers_key`` shrinks, and every per-layer field made to match: one layer of each
    kind of every per-layer list of kinds (``layer_types``, ``mlp_layer_types``, Zamba's ``layers_block_type``;
    hybrid models need their attention layers), padded with the first others up to the table's count; lists of
    one entry per layer and {layer index: ...} maps take the kept layers' entries, lists of layer indices
    (``hybrid_layer_ids``) their new positions; ``*_period`` / ``*_offset`` pairs (Jamba's attention every 8th
    layer from the 4th) and repeating patterns of kinds shorter than the stack (RecurrentGemma's
    ``block_types``) keep each kind within the new count."""
    layers, new = values[layers_key], out[layers_key]
    per_layer = {k: v for k, v in values.items() if k not in out and isinstance(v, list) and len(v) == layers}
    per_layer |= {k: v for k, v in out.items() if k != layers_key and isinstance(v, list) and len(v) == layers}
    indices = {k: v for k, v in values.items() if k not in per_layer and _LAYER_INDEX_LIST.search(k)
               and isinstance(v, list) and v and all(_is_size(i) and 0 <= i < layers for i in v)}
    if layers <= new:
        return
    keep: list[int] = []
    for key, value in per_layer.items():
        if all(isinstance(x, str) for x in value) and ("type" in key or "kind" in key):
            firsts = {}
            for i, kind in enumerate(value):
                firsts.setdefault(kind, i)
            keep += firsts.values()
    keep += [v[0] for v in indices.values()]
    keep = sorted(set(keep))
    keep += [i for i in range(layers) if i not in keep][: max(0, new - len(keep))]
    keep.sort()
    counts = {k: v for k, v in values.items() if k not in out and k not in _LAYERS_ONLY and _is_size(v)
              and re.fullmatch(r"(num|n)_\w+_layers", k) and 0 < v <= layers}
    parts = sum(counts.values()) == layers
    group, kinds = _layer_groups(per_layer, counts, layers) if parts and len(counts) > 1 else (1, [])
    if group > 1:  # parts that are whole groups of layers (Dory's (attention, mlp) pairs): whole groups kept
        firsts = {}
        for g in range(layers // group):
            firsts.setdefault(tuple(kinds[g * group:(g + 1) * group]), g)
        groups = sorted(firsts.values())
        groups += [g for g in range(layers // group) if g not in groups][
            : max(0, len(counts) - len(groups), -(-new // group) - len(groups))]
        keep = sorted(i for g in groups for i in range(g * group, (g + 1) * group))
    out[layers_key] = len(keep)
    if parts and len(counts) * group <= len(keep):  # parts of the stack (Dory's input,
        share = dict.fromkeys(counts, group)  # recurrent and output layers): one each, the rest to the biggest
        share[max(counts, key=counts.get)] += len(keep) - group * len(counts)
        out.update(share)
    else:  # counts of some of the layers (Gemma 3n's KV-sharing layers): scaled; a count of 1 stays (Mimi's per block)
        out.update({k: v * len(keep) // layers for k, v in counts.items() if v > 1})
    for key, value in per_layer.items():
        out[key] = [value[i] for i in keep]
    for key, value in indices.items():
        out[key] = [keep.index(i) for i in value if i in keep]
    for key, value in values.items():
        if key in out:
            continue
        if isinstance(value, dict) and value and all(str(k).isdigit() for k in value) and "label" not in key:
            pos = {i: n for n, i in enumerate(keep)}
            kept = {pos[int(k)]: v for k, v in value.items() if int(k) in pos}
            out[key] = {(str(k) if isinstance(next(iter(value)), str) else k): v for k, v in kept.items()}
        elif key.endswith("_period") and _is_size(value) and value > len(keep):
            offset = key[: -len("_period")] + "_offset"
            out[key] = len(keep)
            if _is_size(values.get(offset)):
                out[offset] = values[offset] % len(keep)
        elif (isinstance(value, (list, tuple)) and len(keep) < len(value) < layers and "type" in key
              and all(isinstance(x, str) for x in value)):
            last = max({kind: i for i, kind in reversed(list(enumerate(value)))}.values())
            if last >= len(keep):  # a pattern repeated over the stack: every kind within the new count
                out[layers_key] = last + 1
                for k in per_layer:
                    out[k] = (list(out[k]) + [values[k][i] for i in range(layers) if i not in keep])[: last + 1]


def _fit_default_mrope(config: Any, out: dict) -> None:
    """A config that marks where vision starts in its tokens (``vision_start_token_id``: Qwen2-VL-style 3D rotary
    positions) whose text config's rotary parameters name no ``mrope_section``, leaving it to the model's default
    (PaddleOCR-VL's ``[16, 24, 24]``, for its default head dim of 128): the text config gets sections for its
    shrunk head dim (``_shrink_mrope``'s). Models that do not read them ignore the key (transformers warns)."""
    text, over = getattr(config, "text_config", None), out.get("text_config")
    if "vision_start_token_id" not in config.to_dict() or text is None or not hasattr(text, "to_dict") \
            or not isinstance(over, dict):
        return
    rope = over.get("rope_parameters") or over.get("rope_scaling")
    if not isinstance(rope, dict) or "rope_type" not in rope or rope.get("mrope_section"):
        return
    values = text.to_dict()
    changed = {k: v for k, v in over.items() if values.get(k) != v}
    _shrink_mrope(text, values, changed, default_sections=True)
    for key in ("rope_parameters", "rope_scaling"):
        if key in changed:
            over[key] = changed[key]


def _shrink_mrope(config, values: dict, out: dict, default_sections: bool = False) -> None:
    """Multimodal rotary sections (time, height, width) summing to half the rotary dims of the shrunk heads:
    ``qk_rope_head_dim`` where the attention has one (latent attention), else the head dim. Configs that take
    ``mrope_section`` but leave it to the model's default (Qwen2-VL's, GLM-4V's ``[16, 24, 24]``) get one, as do
    those the caller knows to have such a default (``default_sections``)."""
    rope = values.get("rope_parameters") or values.get("rope_scaling")
    if not isinstance(rope, dict):
        return
    sec = rope.get("mrope_section")
    if not sec and (default_sections or "mrope_section" in (getattr(config, "ignore_keys_at_rope_validation", None)
                                                            or ())):
        sec = [1, 1, 1]  # the model's default sections are for its default head dim: time, height, width
    if not (isinstance(sec, list) and sec):
        return
    if _is_size(values.get("qk_rope_head_dim")):
        dim = out.get("qk_rope_head_dim", values["qk_rope_head_dim"])
    elif "head_dim" in out:
        dim = out["head_dim"]
    elif values.get("head_dim") or not ({"hidden_size", "num_attention_heads"} & set(out)):
        return  # heads unchanged: the sections still fit
    else:
        dim = out.get("hidden_size", values.get("hidden_size")) // out.get(
            "num_attention_heads", values.get("num_attention_heads"))
    factor = rope.get("partial_rotary_factor", values.get("partial_rotary_factor"))
    if isinstance(factor, float) and 0 < factor < 1:  # GLM-4V-MoE rotates half of each head
        dim = int(dim * factor)
    half = dim // 2
    if sum(sec) == half and sec == rope.get("mrope_section"):
        return
    if sec != rope.get("mrope_section") and half >= len(sec):
        # the model's own default is unknown: as even as possible, the remainder on the leading parts, so that two
        # parts of its default that must be equal stay so where they lead (Ernie 4.5 VL's [22, 22, 20]: height and
        # width first, [3, 3, 2] for a head of 16, not [4, 2, 2]; Qwen2-VL's [16, 24, 24] takes any split)
        new = [half // len(sec) + (i < half % len(sec)) for i in range(len(sec))]
    else:
        new = [max(1, (s * half) // sum(sec)) for s in sec]
        new[0] += half - sum(new)
    key = "rope_parameters" if values.get("rope_parameters") else "rope_scaling"
    out[key] = dict(rope, mrope_section=new)


def _follow_widths(config, out: dict) -> None:
    """Fields that name the width of a part that was shrunk follow it: any ``*hidden_size`` or
    ``hidden_size_*`` equal to the old width of some (sub-)config (a vision config's ``out_hidden_size`` = the
    text width, an adapter's ``audio_hidden_size``, BLT's ``hidden_size_global``), and size fields of the same
    config equal to its own old width (``codebook_dim``; a depthwise convolution's ``upsample_groups``)."""
    nodes = []  # (config, its values, its overrides, a callable that hangs the overrides in the tree)

    def walk(cfg, over, hang, depth=0):
        nodes.append((cfg, cfg.to_dict(), over, hang))
        for name in (getattr(cfg, "sub_configs", {}) or {}) if depth < 3 else ():
            sub = getattr(cfg, name, None)
            if sub is None or not hasattr(sub, "to_dict"):
                continue
            if name in over:
                walk(sub, over[name], lambda: None, depth + 1)
            else:
                mine = {}

                def hang_sub(over=over, name=name, sub=sub, mine=mine, hang=hang):
                    if name not in over:
                        over[name] = mine
                        hang()
                    for key, value in sub.to_dict().items():
                        mine.setdefault(key, value)

                walk(sub, mine, hang_sub, depth + 1)

    walk(config, out, lambda: None)
    changed = {}  # old width -> new width
    for _, values, over, _ in nodes:
        for key in _WIDTHS:
            if key in over and _is_size(values.get(key)) and over[key] != values[key]:
                changed.setdefault(values[key], over[key])
    for _, values, over, hang in nodes:
        own = {values[k]: over[k] for k in _WIDTHS if k in over and _is_size(values.get(k)) and over[k] != values[k]}
        changes = {}
        for key, value in values.items():
            if key.endswith("_groups") and over.get(key, value) == value and _is_size(value) and value in own:
                changes[key] = own[value]  # groups of a depthwise convolution over the width (``upsample_groups``)
            if (key in over and over[key] != value) or key in _TINY or not _is_size(value) or _NOT_A_WIDTH.search(key):
                continue
            if (key.endswith("hidden_size") or key.startswith("hidden_size_")) and value in changed:
                changes[key] = changed[value]
            elif (key.endswith("_dim") or key.endswith("_size")) and value in own:
                changes[key] = own[value]
        if changes:
            over.update(changes)
            hang()
    # A vision tower's ``out_hidden_size`` feeds the text model: it is the text width even where the
    # default config names no width with it (Qwen3-VL's 3584 beside a text width of 4096; GLM-OCR).
    text = out.get("text_config", {}).get("hidden_size")
    for name in getattr(config, "sub_configs", {}) or {}:
        sub = getattr(config, name, None)
        if name != "text_config" and _is_size(text) and sub is not None and _is_size(getattr(sub, "out_hidden_size", None)):
            if out.get(name, {}).get("out_hidden_size") in (None, sub.out_hidden_size):
                out[name] = out.get(name) or sub.to_dict()
                out[name]["out_hidden_size"] = text


def hf_classes(model_type: str):
    """(config class, model class) of an AutoModel type, or of ``type/Class`` (a task head). A class the auto
    mapping names that transformers does not export is taken from its config's modeling module."""
    import importlib

    import transformers
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING
    from transformers.models.auto.modeling_auto import MODEL_MAPPING_NAMES

    model_type, _, head = model_type.partition("/")
    names = MODEL_MAPPING_NAMES[model_type] if not head else head
    name = names[0] if isinstance(names, (tuple, list)) else names
    config_cls = CONFIG_MAPPING[model_type]
    if hasattr(transformers, name):
        return config_cls, getattr(transformers, name)
    modeling = config_cls.__module__.replace(".configuration_", ".modeling_")
    try:
        return config_cls, getattr(importlib.import_module(modeling), name)
    except (ImportError, AttributeError) as exc:
        raise AttributeError(f"transformers exports no {name} (the auto mapping's class for {model_type}), "
                             f"nor does {modeling}") from exc


def head_names() -> list[str]:
    """``type/Class`` for every task head (and backbone) that transformers' auto mappings give a model
    type of the coverage table's Hugging Face families (``catalog.hf_cases``; a ``clip_vision_model``
    family brings in ``clip``), the AutoModel class itself left out (the ``hf`` sweep has it)."""
    import transformers
    from transformers.models.auto import modeling_auto

    from .catalog import hf_cases

    types = set()
    for case in hf_cases():
        model_type = getattr(transformers, case.config).model_type
        types.add(model_type)
        types |= {model_type.removesuffix(s) for s in ("_vision_model", "_text_model") if model_type.endswith(s)}
    mappings = [v for k, v in sorted(vars(modeling_auto).items())
                if k.startswith("MODEL_") and k.endswith("_MAPPING_NAMES") and k != "MODEL_MAPPING_NAMES"]
    base = modeling_auto.MODEL_MAPPING_NAMES
    out = set()
    for mapping in mappings:
        for model_type in types & set(mapping):
            names = mapping[model_type]
            for name in names if isinstance(names, (tuple, list)) else [names]:
                own = base.get(model_type)
                if name not in (own if isinstance(own, (tuple, list)) else [own]) and hasattr(transformers, name):
                    out.add(f"{model_type}/{name}")
    return sorted(out)


def _text_layers(config) -> int | None:
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    for key in ("num_hidden_layers", "num_layers", "n_layer", "encoder_layers"):
        value = getattr(text, key, None)
        if isinstance(value, int):
            return value
    return None


def _set_everywhere(config, key: str, value, depth: int = 0) -> bool:
    """Set ``key`` on the config and every sub-config that has it (a list: each entry); True when any had it."""
    found = False
    if key in config.to_dict():
        old = getattr(config, key)
        try:
            setattr(config, key, [value] * len(old) if isinstance(old, (list, tuple)) else value)
            found = True
        except Exception:  # noqa: BLE001, S110 - typed otherwise (LeViT's int drop_path_rate): not a rate here
            pass
    if depth < 3:
        for name in getattr(config, "sub_configs", {}) or {}:
            sub = getattr(config, name, None)
            if sub is not None and hasattr(sub, "to_dict"):
                found = _set_everywhere(sub, key, value, depth + 1) or found
    return found


def _same_error(a: BaseException, b: BaseException) -> bool:
    """The same failure at two config levels: the same message with the numbers (sizes) blanked."""
    return _blanked(first_line(a)) == _blanked(first_line(b))


# -- Config repairs: what a config leaves out that its model needs, found from the failure and recorded ---------------
# Each repair is a rule on what the config and the error say (never on the model type), applied to the config in
# place and said in the result's build text ("tiny; repaired: ..."), so the docs show what was changed.

_MISSING_ATTRIBUTE = re.compile(r"^'(\w+)' object has no attribute '(\w+)'")
# Where no config of the tree defines a field the model reads: HF's documented default for it, as another field of
# the same config (key/value heads: "defaults to num_attention_heads"), or a constant (dropout probabilities: 0,
# the default of every config that defines one, and what eval mode runs anyway).
_SAME_CONFIG_DEFAULTS = {"num_key_value_heads": "num_attention_heads"}
_CONSTANT_DEFAULTS = ((re.compile(r"(^|_)dropout(_rate|_prob|_p)?$"), 0.0),)


def _config_tree(config: Any, path: str = "", depth: int = 0) -> Iterator[tuple[str, Any]]:
    """``(path, config)`` for the config (path ``""``) and its sub-configs, three levels deep at most."""
    yield path, config
    for name in (getattr(config, "sub_configs", {}) or {}) if depth < 3 else ():
        sub = getattr(config, name, None)
        if sub is not None and hasattr(sub, "to_dict"):
            yield from _config_tree(sub, f"{path}.{name}" if path else name, depth + 1)


def _named(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _own_sub_config(config: Any, model_cls: Any, repairs: list[str]) -> Any:
    """The sub-config of ``config`` that ``model_cls`` is declared for, where its ``config_class`` is not the mapped
    config's class but that of one of its sub-configs (the auto mapping pairs a composite config with a model of
    one part: MusicGen's ``MusicgenModel`` is its decoder, declared for ``MusicgenDecoderConfig``); else
    ``config``. Recorded in ``repairs``."""
    declared = getattr(model_cls, "config_class", None)
    if not isinstance(declared, type) or isinstance(config, declared):
        return config
    for path, sub in _config_tree(config):
        if path and type(sub) is declared:
            repairs.append(f"built from {path} ({declared.__name__}, the model's config_class)")
            return sub
    return config


def _repair_missing_attribute(config: Any, exc: BaseException) -> str | None:
    """The model reads ``cfg.X`` where ``cfg`` (the config or a sub-config, named by class in the AttributeError)
    does not define X: X is set on every such config that lacks it from where the config tree defines it (its
    parents nearest first, then the others; a field of that name, or the key X of a dict field such as
    ``rope_parameters``), else from HF's default for X (``_SAME_CONFIG_DEFAULTS``, ``_CONSTANT_DEFAULTS``).
    Returns the repair as said in the build text; None where the error is not that or no source is known."""
    match = _MISSING_ATTRIBUTE.match(str(exc)) if isinstance(exc, AttributeError) else None
    if match is None:
        return None
    owner, key = match.groups()
    nodes = list(_config_tree(config))
    said = []
    for path, cfg in nodes:
        if type(cfg).__name__ != owner or key in cfg.to_dict():
            continue
        parents = [(p, c) for p, c in reversed(nodes) if p != path and (p == "" or path.startswith(p + "."))]
        order = [(path, cfg)] + parents + [(p, c) for p, c in nodes if p != path and (p, c) not in parents]
        source = value = None
        for p, c in order[1:]:  # a field of that name elsewhere in the tree
            values = c.to_dict()
            if key in values and values[key] is not None:
                source, value = _named(p, key), values[key]
                break
        if source is None:  # a key of a dict field (transformers 5 keeps rope_theta in rope_parameters)
            for p, c in order:
                for field_name, field_value in c.to_dict().items():
                    if isinstance(field_value, dict) and field_value.get(key) is not None \
                            and not isinstance(field_value[key], dict):
                        source, value = f"{_named(p, field_name)}[{key!r}]", field_value[key]
                        break
                if source is not None:
                    break
        if source is None and key in _SAME_CONFIG_DEFAULTS and getattr(cfg, _SAME_CONFIG_DEFAULTS[key], None) is not None:
            source = f"{_named(path, _SAME_CONFIG_DEFAULTS[key])}, HF's default for it"
            value = getattr(cfg, _SAME_CONFIG_DEFAULTS[key])
        if source is None:
            value = next((v for pattern, v in _CONSTANT_DEFAULTS if pattern.search(key)), None)
            source = "HF's default for it" if value is not None else None
        if source is None:
            return None
        setattr(cfg, key, value)
        said.append(f"{_named(path, key)} (read by the model, not defined by {owner}) = {value!r} from {source}")
    return "; ".join(said) or None


_NONE_MAPPING = re.compile(r"^'NoneType' object has no attribute '(get|items|keys|values)'")


def _repair_unset_mapping(config: Any, exc: BaseException) -> str | None:
    """The model reads a config field left None as a mapping (``vocab_map.get(...)``: a field its checkpoints set):
    the field named on the failing line of the traceback, innermost first, whose value is None on a config of the
    tree, is set to an empty dict. None where the error is not that or no such field is found."""
    if not (isinstance(exc, AttributeError) and _NONE_MAPPING.match(str(exc))):
        return None
    import linecache

    nodes = {id(cfg): path for path, cfg in _config_tree(config)}
    frames = []
    tb = exc.__traceback__
    while tb is not None:
        frames.append(tb)
        tb = tb.tb_next
    for tb in reversed(frames):
        line = linecache.getline(tb.tb_frame.f_code.co_filename, tb.tb_lineno)
        for chain in re.findall(r"\b[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)+", line):
            *names, key = chain.split(".")
            obj = tb.tb_frame.f_locals.get(names[0])
            for name in names[1:]:
                obj = getattr(obj, name, None)
            if id(obj) in nodes and key in obj.to_dict() and getattr(obj, key, 0) is None:
                setattr(obj, key, {})
                return f"{_named(nodes[id(obj)], key)} None -> {{}} (the model reads it as a mapping)"
    return None


def _timm_features(cfg: Any, out_indices: Any = None) -> tuple[str, list[int], list[int], list[int]] | None:
    """(architecture, out indices, feature channels, feature strides) of the timm backbone a TimmWrapper-style config
    names (``architecture`` + ``model_args`` with ``features_only``; ``out_indices``: these instead of its own,
    ``()``: all the backbone has), built on the meta device; None for other configs."""
    values = cfg.to_dict()
    args = values.get("model_args")
    if not (isinstance(values.get("architecture"), str) and isinstance(args, dict) and args.get("features_only")):
        return None
    import timm
    import torch

    args = {k: v for k, v in args.items() if k != "out_indices" or out_indices is None}
    if out_indices:
        args["out_indices"] = out_indices
    with torch.device("meta"):
        info = timm.create_model(values["architecture"], pretrained=False, **args).feature_info
    return values["architecture"], list(info.out_indices), list(info.channels()), list(info.reduction())


def _follow_timm_backbone(config: Any, repairs: list[str]) -> None:
    """A config whose sub-config names a timm backbone (``_timm_features``) and whose own lists describe other
    features (EdgeTAM's default names resnet50, features at strides 2 to 16, beside RepViT's channels [384, 192,
    96, 48] at strides 4 to 32): where its ``*feature_sizes`` (grids, highest resolution first) give the strides of
    the first features at the config tree's image size, the backbone's ``out_indices`` are those of its features at
    these strides, doubling on for the features that have no grid; its ``*channel_list`` (as long as the features)
    takes their channels in its own order (deepest first or last). Recorded in ``repairs``."""
    nodes = list(_config_tree(config))
    images = {getattr(c, "image_size") for _, c in nodes if _is_size(getattr(c, "image_size", None))}
    for path, cfg in nodes:
        values = cfg.to_dict()
        lists = {k: v for k, v in values.items() if k.endswith("channel_list") and isinstance(v, list) and len(v) > 1
                 and all(_is_size(c) for c in v)}
        if not lists:
            continue
        for name in getattr(cfg, "sub_configs", {}) or {}:
            sub = getattr(cfg, name, None)
            found = _timm_features(sub) if sub is not None and hasattr(sub, "to_dict") else None
            if not found:
                continue
            arch, indices, channels, strides = found
            grids = next((v for k, v in values.items() if k.endswith("feature_sizes") and isinstance(v, list) and v
                          and all(isinstance(g, (list, tuple)) and len(g) == 2 and _is_size(g[0]) and g[0] for g in v)),
                         None)
            image = next(iter(images)) if len(images) == 1 else None
            if grids and image and all(image % g[0] == 0 for g in grids):
                wanted = [image // g[0] for g in grids]
                while len(wanted) < len(channels):
                    wanted.append(wanted[-1] * 2)
                _, every, _, every_stride = _timm_features(sub, ()) or (arch, [], [], [])
                picked = [next((i for i, r in zip(every, every_stride) if r == w), None) for w in wanted]
                if None not in picked and picked != indices:
                    args = dict(sub.model_args, out_indices=picked)
                    repairs.append(f"{_named(path, name)}.model_args out_indices {indices} -> {picked} (the features of "
                                   f"its timm backbone {arch} at the strides {wanted} its feature sizes imply)")
                    sub.model_args = args
                    arch, indices, channels, strides = _timm_features(sub) or found
            for key, value in lists.items():
                new = sorted(channels, reverse=value[0] > value[-1])
                if len(value) == len(channels) and value != new:
                    repairs.append(f"{_named(path, key)} {value} -> {new} (the feature channels of its timm backbone "
                                   f"{arch})")
                    setattr(cfg, key, new)
            break


def _build_repairing(model_cls: Any, config: Any, repairs: list[str], tries: int = 8):
    """``model_cls(config)``, the config repaired and the build retried where it reads a field the config does not
    define (``_repair_missing_attribute``) or reads one left None as a mapping (``_repair_unset_mapping``)."""
    for _ in range(tries):
        try:
            return model_cls(config)
        except AttributeError as exc:
            fix = _repair_missing_attribute(config, exc) or _repair_unset_mapping(config, exc)
            if fix is None:
                raise
            repairs.append(fix)
    return model_cls(config)


def repaired_config(config: Any, model_cls: Any) -> tuple[Any, list[str], int]:
    """``config`` with the repairs its model needs to build (``_own_sub_config``, ``_follow_timm_backbone``, and
    those ``_build_repairing`` finds on the meta device), the repairs as said in the build text, and the
    parameter count of the model it builds."""
    import torch

    repairs: list[str] = []
    config = _own_sub_config(config, model_cls, repairs)
    _follow_timm_backbone(config, repairs)
    with torch.device("meta"):
        params = _count(_build_repairing(model_cls, config, repairs))
    return config, repairs, params


def _repair_table_overflow(model: Any, config: Any, args: tuple, kwargs: dict, exc: BaseException) -> str | None:
    """After an IndexError in the forward: the embedding table that ids past its end reach (a vocabulary or position
    table: CLVP's speech encoder takes the ids its decoder predicts, over a vocabulary 32 times its own), found by
    running the forward again with a check before each ``nn.Embedding``; the field of the config that built it
    (the nearest module above it with a config of the tree) equal to the table's size, named like one
    (vocab / position) where several are, grows to the smallest value of that field in the config tree that holds
    the ids (the vocabulary of the part that produced them), else to the largest id + 1. None where no table
    overflows."""
    import torch

    from .oracles import eval_forward

    if not isinstance(exc, IndexError):
        return None
    seen: list[tuple[str, int, int]] = []

    class Overflow(Exception):
        pass

    def check(name):
        def hook(module, inputs):
            ids = inputs[0] if inputs else None
            if torch.is_tensor(ids) and ids.numel() and not ids.is_floating_point() \
                    and int(ids.max()) >= module.num_embeddings:
                seen.append((name, module.num_embeddings, int(ids.max())))
                raise Overflow
        return hook

    handles = [m.register_forward_pre_hook(check(n)) for n, m in model.named_modules()
               if isinstance(m, torch.nn.Embedding)]
    try:
        eval_forward(model, args, kwargs)
    except Exception:  # noqa: BLE001, S110 - the overflow, or the error again: ``seen`` says which
        pass
    finally:
        for handle in handles:
            handle.remove()
    if not seen:
        return None
    name, size, top = seen[0]
    nodes = list(_config_tree(config))
    parts = name.split(".")
    for i in range(len(parts) - 1, -1, -1):
        owner = model.get_submodule(".".join(parts[:i])) if i else model
        cfg = getattr(owner, "config", None)
        node = next(((p, c) for p, c in nodes if c is cfg), None) or next(
            ((p, c) for p, c in nodes if cfg is not None and type(c) is type(cfg) and c.to_dict() == cfg.to_dict()), None)
        if node is None:
            continue
        path, cfg = node
        keys = [k for k, v in cfg.to_dict().items() if _is_size(v) and v == size]
        if len(keys) > 1:
            keys = [k for k in keys if re.search(r"vocab|position", k)]
        if len(keys) != 1:
            return None
        key = keys[0]
        wider = sorted((c.to_dict()[key], p) for p, c in nodes if _is_size(c.to_dict().get(key)) and c.to_dict()[key] > top)
        new, source = wider[0] if wider else (top + 1, "")
        setattr(cfg, key, new)
        return (f"{_named(path, key)} {size} -> {new} (ids up to {top} reach {name}, a table of {size}"
                + (f"; {_named(source, key)}'s size, the smallest in the config that holds them)" if wider else ")"))
    return None


DEFAULT_DOES_NOT_BUILD = "the library's default config does not build"
DEFAULT_DOES_NOT_RUN = "the library's default config fails the same way on the automatic inputs"


def _said(level: str, repairs: list[str]) -> str:
    """The build text of a config level and the repairs made to it."""
    return "; ".join([level] + [f"repaired: {r}" for r in repairs])


def _without_cache(config: Any, built: list) -> bool:
    """Does the eval forward of ``built`` ([model, args, kwargs]) run with ``use_cache=False``, where its config has
    a cache on? Left False where it does, put back where it does not."""
    from .oracles import eval_forward

    if getattr(config, "use_cache", None) is not True:
        return False
    config.use_cache = False
    try:
        eval_forward(*built)
        return True
    except Exception:  # noqa: BLE001 - not the cache
        config.use_cache = True
        return False


def _forward_repairing(model_cls: Any, config: Any, built: list, repairs: list[str], tries: int = 3) -> bool:
    """The eval forward of ``built`` ([model, args, kwargs]); where it fails on something a config repair fixes (a
    table that ids overflow, ``_repair_table_overflow``; a field the forward reads that the config does not define
    or left None, as at the build), the config is repaired, the model rebuilt (seed 0) with fresh automatic inputs
    into ``built``, and the forward tried again. Without its cache first (``_without_cache``: a field the forward
    reads only for its cache, BLT's ``num_hidden_layers``, is no field to invent), and again on the repaired model
    where no further repair applies (hybrids whose stack has no attention layer fail their own forward with a
    cache: Granite 4 hybrid's default is all Mamba). Returns whether it runs only without its cache; raises the
    forward's error where nothing makes it run."""
    import torch

    from droppath_surgery import build_example_inputs

    from .oracles import eval_forward

    for attempt in range(tries + 1):
        try:
            eval_forward(*built)
            return False
        except Exception as exc:  # noqa: BLE001 - repaired where a rule applies, else raised
            if attempt == 0 and _without_cache(config, built):
                return True
            fix = None if attempt == tries else (
                _repair_table_overflow(built[0], config, built[1], built[2], exc)
                or _repair_missing_attribute(config, exc) or _repair_unset_mapping(config, exc))
            if fix is None:
                if attempt and _without_cache(config, built):  # the repaired model, without its cache
                    return True
                raise
            repairs.append(fix)
        torch.manual_seed(0)
        built[0] = model_cls(config)
        built[1], built[2] = build_example_inputs(built[0])
    raise AssertionError("unreachable: the last attempt returns or raises")


def hf_build(model_type: str, layers: int | None = None):
    """(config, model class, level, params, notes): the smallest config level that builds and runs on its
    automatic inputs; a level where the input builder fails is used as it is (that is a finding, not a
    reason to grow the model), except the plain tiny one, whose shrink may have broken a field the inputs
    need (the consistent level is tried, and the tiny level's failure kept if that does not run either);
    where no level runs, the first that builds; where none builds and the unchanged default config does not
    either, the error starts with ``DEFAULT_DOES_NOT_BUILD`` (transformers' cause, not the shrink's).
    Each level's config is repaired where its model needs what the config leaves out (the sub-config the model is
    declared for, backbone channels, fields the model reads that the config does not define or leaves None, tables
    that ids overflow: ``repaired_config``, ``_forward_repairing``); the level's text says each repair.
    ``layers``: the shrunk levels' layer count instead of the table's 2 (the depth check)."""
    import torch

    from droppath_surgery import build_example_inputs

    config_cls, model_cls = hf_classes(model_type)
    default = config_cls()
    levels = [
        ("tiny", lambda: config_cls(**shrink_overrides(default, _TINY, layers=layers))),
        ("tiny, consistent", lambda: config_cls(**shrink_overrides(default, _TINY, consistent=True, layers=layers))),
        ("tiny, kv heads = heads", lambda: config_cls(**shrink_overrides(default, _TINY, mha=True, layers=layers))),
        ("layers only", lambda: config_cls(**shrink_overrides(default, _LAYERS_ONLY, layers=layers))),
        ("default", config_cls),
    ]
    errors = []
    ran_nowhere = None  # the first level that built but did not run on its automatic inputs
    refused = None  # the tiny level, when the input builder refused it
    unbuildable = None  # the default config's own error: no shrink is to blame
    default_error = None  # the default config's forward error on its automatic inputs
    for level, make in levels:
        try:
            config, repairs, params = repaired_config(make(), model_cls)
        except Exception as exc:  # noqa: BLE001 - the next level is tried
            errors.append(f"{level}: {first_line(exc, 160)}")
            if level == "default":
                unbuildable = first_line(exc, 240)
            continue
        if params > (HF_MAX_TINY_PARAMS if level.startswith("tiny") else HF_MAX_PARAMS):
            errors.append(f"{level}: {params / 1e6:.0f}M parameters")
            continue
        try:
            torch.manual_seed(0)
            model = model_cls(config)
        except Exception as exc:  # noqa: BLE001
            errors.append(f"{level}: {first_line(exc, 160)}")
            continue
        try:
            args, kwargs = build_example_inputs(model)
        except Exception as exc:  # noqa: BLE001 - the input builder's failure is a finding: patch() records it
            if level == "tiny":  # unless it is the shrink's: the consistent level may keep the fields the inputs need
                errors.append(f"{level}: {first_line(exc, 160)}")
                refused = refused or (config, _said(level, repairs), params)
                continue
            if refused is not None:
                config, level, params = refused
                return config, model_cls, level, params, errors
            return config, model_cls, _said(level, repairs), params, errors
        built = [model, args, kwargs]
        try:
            ran = f"{level}, use_cache=False" if _forward_repairing(model_cls, config, built, repairs) else level
            return config, model_cls, _said(ran, repairs), _count(built[0]), errors
        except Exception as exc:  # noqa: BLE001 - the next level is tried
            errors.append(f"{level}: {first_line(exc, 160)}")
            if level == "default":  # and failed: unless it runs without a cache, not the shrink's doing
                default_error = exc
            if ran_nowhere is None or level == "tiny, consistent":  # the consistent one's error over tiny's
                ran_nowhere = (config, _said(level, repairs), _count(built[0]), exc)
    if ran_nowhere is not None:  # built, but ran at no level: patch() records the forward's error
        config, level, params, exc = ran_nowhere
        if default_error and _same_error(default_error, exc):  # not the shrink's doing
            errors.append(DEFAULT_DOES_NOT_RUN)
        return config, model_cls, level, params, errors
    if refused is not None:  # no level the input builder takes: patch() records its error at the tiny level
        config, level, params = refused
        return config, model_cls, level, params, errors
    if unbuildable is not None:  # transformers' own default config (a field its checkpoints set left unset)
        raise RuntimeError(f"{DEFAULT_DOES_NOT_BUILD}: {unbuildable} (smaller levels: "
                           + " | ".join(e for e in errors if not e.startswith("default: ")) + ")")
    raise RuntimeError("no config level builds: " + " | ".join(errors))


def _retry_with_hand_inputs(res: Result, library: str, model_type: str, config, model_cls) -> None:
    """What the error tells a user to do, after a zero-argument failure at stage 'inputs' (or 'forward', where
    the automatic inputs are built but wrong for the forward and hand inputs are written: Dia's decoder ids per
    channel): the type's hand-made inputs (hand_inputs.py) as example_inputs=, on a fresh model of this config
    and, where they do not run on it, of the consistent tiny config (the sweep keeps the plain tiny one when no
    level makes automatic inputs). The outcome goes into ``res.with_inputs``; the zero-argument fields stay."""
    import torch

    from . import hand_inputs

    written = model_type in hand_inputs.SKIPPED or model_type in hand_inputs.BUILDERS
    if not (res.stage == "inputs" or (res.stage == "forward" and written)):
        return
    if model_type in hand_inputs.SKIPPED:
        res.with_inputs = {"status": "skipped", "error": hand_inputs.SKIPPED[model_type]}
        return
    if model_type not in hand_inputs.BUILDERS:
        return
    configs = [(res.build, config)]
    if res.build.partition(";")[0] == "tiny":
        configs.append(("tiny, consistent", lambda: repaired_config(config.__class__(
            **shrink_overrides(config.__class__(), _TINY, consistent=True)), model_cls)[0]))
    errors = []  # each level's failure, said together where none patches
    for level, make in configs:
        retry = Result(library, model_type)
        try:
            torch.manual_seed(0)
            cfg = make() if callable(make) else make
            model = model_cls(cfg)
            inputs = hand_inputs.BUILDERS[model_type](cfg, model)
            res.example_inputs = hand_inputs.describe(inputs, hand_inputs.NOTES.get(model_type, ""))
            patch(retry, model, example_inputs=inputs)
        except Timeout as exc:  # the row's time ran out in the retry: the zero-argument record is kept
            retry.status, retry.stage, retry.error = "failed", "timeout", str(exc)
        except Exception as exc:  # noqa: BLE001 - the hand inputs' own failure is the outcome
            retry.status, retry.stage, retry.error = "failed", "inputs", first_line(exc)
        if retry.stage:
            errors.append(f"{level}: {retry.stage}: {retry.error}")
        res.with_inputs = {"status": retry.status, "build": level, "sites": retry.sites,
                           "verified": retry.verified, "not_run": retry.not_run,
                           "error": "" if not retry.stage else f"{retry.stage}: {retry.error}"
                           if len(errors) == 1 else " | ".join(errors),
                           "patch_s": None if retry.patch_s is None else round(retry.patch_s, 3)}
        if retry.stage not in ("inputs", "forward"):  # patched, or the engine's own failure
            break


def sweep_hf(model_type: str, library: str = "hf") -> Result:
    import torch

    from .judge import carries
    from .oracles import expected_from_slots, native_slots, observe_outputs, runner, unused_sites

    res = Result(library, model_type, family=model_type.partition("/")[0])
    try:
        res.cls = hf_classes(model_type)[1].__name__
        config, model_cls, res.build, res.params, tried = hf_build(model_type)
    except Exception as exc:  # noqa: BLE001
        res.status, res.stage, res.error = "failed", "build", first_line(exc, 600)
        return res
    res.layers = _text_layers(config)
    import transformers

    notes = [] if hasattr(transformers, model_cls.__name__) else [
        f"transformers does not export {model_cls.__name__}: built from {model_cls.__module__}"]
    res.note = "; ".join(notes + (["tried: " + " | ".join(tried)] if tried else []))
    torch.manual_seed(0)
    model = model_cls(config)
    done = patch(res, model)
    if done is None and getattr(config, "use_cache", None) is True:
        config.use_cache = False
        retry = Result(library, model_type)
        torch.manual_seed(0)
        again = patch(retry, model_cls(config))
        outcome = (f"{retry.sites} sites, verified {retry.verified}" if again is not None
                   else f"{retry.error}")
        res.note = "; ".join(p for p in (res.note, f"with use_cache=False: {outcome}") if p)
    if done is None:
        _retry_with_hand_inputs(res, library, model_type, config, model_cls)
        if res.stage == "forward" and DEFAULT_DOES_NOT_RUN in tried:  # not the shrink's doing
            res.error = f"{DEFAULT_DOES_NOT_RUN}: {res.error}"
        return res
    report, args, kw = done
    if res.verified and len(report.sites) <= UNUSED_MAX_SITES and (res.patch_s or 0) <= UNUSED_MAX_PATCH_S:
        res.unused = unused_sites(model, args, kw)
    try:
        native_cfg = config.__class__.from_dict(config.to_dict())
        if not _set_everywhere(native_cfg, "drop_path_rate", RATE):
            res.parity_reason = "no drop_path_rate in the config: no library slots"
            return res
        torch.manual_seed(0)
        slots = native_slots(model_cls(native_cfg), runner(args, kw))
        res.native = sum(s.calls for s in slots)
        expected = expected_from_slots(slots, model)
        flow = observe_outputs(model, args, kw, {s.path for s in expected.slots} | {s.path for s in report.sites})
        used = [False] * len(report.sites)
        lost = []
        carried = 0
        for slot in expected.slots:
            outs = flow.get(slot.path)
            for k in slot.calls:
                target = outs[k] if outs is not None and k < len(outs) else None
                j = next((i for i, s in enumerate(report.sites)
                          if not used[i] and carries(s, slot.path, target, flow)), None)
                if j is None:
                    lost.append(slot.path)
                else:
                    used[j] = True
                    carried += 1
        free = sum(h.free for h in expected.holders.values())  # None slots: HF has none; counted as carried
        res.carried = carried + min(free, len(report.sites) - carried)
        res.site_parity = not lost and res.carried >= res.native
        extra = len(report.sites) - res.carried
        parts = []
        if lost:
            parts.append(f"slots no engine site carries ({len(lost)}): " + ", ".join(lost[:3]))
        if extra > 0:
            parts.append(f"{extra} engine sites where HF has no drop path")
        res.parity_reason = "; ".join(parts)
    except Exception as exc:  # noqa: BLE001
        res.stage, res.error = "judge", first_line(exc)
        res.status = "failed"
    return res


# ------------------------------------------------------------------------------------------------
# Worker and driver
# ------------------------------------------------------------------------------------------------


def serve(answer: Callable[[str], dict]) -> int:
    """A worker process's loop: one torch thread, a memory limit, warnings silenced and anything the models
    print sent to stderr; each stdin line is answered with ``answer(line)`` as one JSON line on the real stdout."""
    import gc
    import resource

    import torch

    with contextlib.suppress(ValueError, OSError):
        limit = int(MEMORY_LIMIT_GB * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    torch.set_num_threads(1)
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # anything the models print goes to stderr
    sys.stdout = sys.stderr
    warnings.simplefilter("ignore")
    for line in sys.stdin:
        proto.write(json.dumps(answer(line)) + "\n")
        gc.collect()
    return 0


def worker(timeout: float) -> int:
    """Read ``library name`` lines from stdin, answer one JSON ``Result`` each on the real stdout."""

    def answer(line: str) -> dict:
        library, name = line.split()
        start = time.perf_counter()
        try:
            with time_limit(timeout):
                res = sweep_timm(name) if library == "timm" else sweep_hf(name, library)
        except Timeout as exc:
            res = Result(library, name, status="failed", stage="timeout", error=str(exc))
        except MemoryError as exc:
            res = Result(library, name, status="failed", stage="memory", error=first_line(exc))
        except Exception as exc:  # noqa: BLE001
            traceback.print_exc()
            res = Result(library, name, status="failed", stage="sweep", error=first_line(exc))
        res.total_s = round(time.perf_counter() - start, 2)
        if res.patch_s is not None:
            res.patch_s = round(res.patch_s, 3)
        if res.status == "ok" and res.stage:
            res.status = "failed"
        return asdict(res)

    return serve(answer)


def all_names(library: str) -> list[str]:
    if library == "timm":  # round robin over the families, so that a partial sweep sees every family
        import itertools

        import timm

        by_family = [timm.list_models(module=m) for m in sorted(timm.list_modules())]
        names = [n for group in itertools.zip_longest(*by_family) for n in group if n]
        return names + sorted(set(timm.list_models()) - set(names))
    if library == "hf-heads":
        return head_names()
    from transformers.models.auto.modeling_auto import MODEL_MAPPING_NAMES

    return sorted(MODEL_MAPPING_NAMES)


def load(path: Path) -> dict[str, dict]:
    if path.exists():
        return {r["name"]: r for r in json.loads(path.read_text())}
    return {}


def save(path: Path, results: dict[str, dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps([results[k] for k in sorted(results)], indent=0) + "\n")
    tmp.replace(path)


class Worker:
    """A worker process (``scripts/<script> --worker <args>``, its ``serve`` loop): each job is sent as one line, and
    answered with one JSON line."""

    def __init__(self, script: str, args: list[str], log) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(ROOT / "scripts" / script), "--worker", *args],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True, bufsize=1,
            env=os.environ | {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"},
        )
        self.job: Any = None
        self.since = 0.0

    def send(self, job: Any, line: str) -> None:
        self.job, self.since = job, time.monotonic()
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def kill(self) -> None:
        with contextlib.suppress(Exception):
            self.proc.kill()
            self.proc.wait(5)


def drive(queue: list, new_worker: Callable[[], Worker], workers: int, timeout: float, line: Callable[[Any], str],
          lost: Callable[[Any, str, float], dict], arrived: Callable[[Any, dict], None],
          checkpoint: Callable[[], None]) -> None:
    """Run the jobs of ``queue`` in a pool of ``workers`` worker processes: each job is sent as ``line(job)``, its
    answer handed to ``arrived(job, record)``; a worker that dies or hangs past ``timeout + GRACE_S`` is killed and
    replaced, and its job answered by ``lost(job, why, seconds)``. ``checkpoint()`` every 20 s and at the end."""
    pool = [new_worker() for _ in range(min(workers, len(queue)) or 1)]
    last_save = time.monotonic()
    try:
        while queue or any(w.job is not None for w in pool):
            for w in pool:
                if w.job is None and queue:
                    job = queue.pop(0)
                    w.send(job, line(job))
            ready, _, _ = select.select([w.proc.stdout for w in pool if w.job is not None], [], [], 5)
            now = time.monotonic()
            for i, w in enumerate(pool):
                if w.job is None:
                    continue
                job, record = w.job, None
                if w.proc.stdout in ready:
                    assert w.proc.stdout is not None
                    text = w.proc.stdout.readline()
                    if text:
                        record = json.loads(text)
                if record is None and (w.proc.poll() is not None or now - w.since > timeout + GRACE_S):
                    died = w.proc.poll() is not None
                    w.kill()
                    why = (f"worker died (exit {w.proc.returncode}; out of memory?)" if died
                           else f"hung past {timeout + GRACE_S:.0f} s, worker killed")
                    record = lost(job, why, round(now - w.since, 1))
                    pool[i] = new_worker()
                if record is None:
                    continue
                w.job = None
                arrived(job, record)
            if time.monotonic() - last_save > 20:
                checkpoint()
                last_save = time.monotonic()
    finally:
        checkpoint()
        for w in pool:
            w.kill()


def versions() -> dict[str, str]:
    """The libraries a run swept with: the rendered pages name these, not whatever is installed when
    they are rendered (a newer transformers from the package index must not change the committed page)."""
    import platform

    import timm
    import torch
    import transformers

    return {"torch": torch.__version__, "timm": timm.__version__, "transformers": transformers.__version__,
            "python": platform.python_version()}


def run(libraries: list[str], workers: int, timeout: float, out_dir: Path, only=None, retry_failed=False,
        limit: int | None = None, log=sys.stderr) -> None:
    started = time.time()
    queue: list[tuple[str, str]] = []
    stores = {}
    for library in libraries:
        path = out_dir / f"{library}.json"
        stores[library] = load(path)
        names = only or all_names(library)
        if only:
            names = [n for n in names if n in all_names(library)]
        done = {n for n, r in stores[library].items() if not (retry_failed and r["status"] != "ok")}
        queue += [(library, n) for n in names if n not in done]
    if limit:
        queue = queue[:limit]
    print(f"sweep: {len(queue)} models to run", file=log, flush=True)

    def on_term(signum, frame):
        raise KeyboardInterrupt  # saves the results and ends the workers (SIGINT is ignored in background jobs)

    signal.signal(signal.SIGTERM, on_term)
    errlog = open(out_dir / "worker.log", "a")  # noqa: SIM115 - kept open for the workers' lifetime
    n = 0

    def lost(job: tuple[str, str], why: str, seconds: float) -> dict:
        return asdict(Result(*job, status="failed", stage="crash" if why.startswith("worker died") else "timeout",
                             error=why, total_s=seconds))

    def arrived(job: tuple[str, str], record: dict) -> None:
        nonlocal n
        library, name = job
        stores[library][name] = record
        n += 1
        flag = "PARITY" if record.get("site_parity") and record.get("verified") else record["status"]
        print(f"[{n:5d} {record.get('total_s', 0):6.1f}s] {library}:{name} {flag} sites={record['sites']} "
              f"native={record['native']} {record['error'][:120]} {record['parity_reason'][:120]}",
              file=log, flush=True)

    def checkpoint() -> None:
        for library in libraries:
            save(out_dir / f"{library}.json", stores[library])

    try:
        drive(queue, lambda: Worker("sweep.py", ["--timeout", str(timeout)], errlog), workers, timeout,
              " ".join, lost, arrived, checkpoint)
    finally:
        errlog.close()
        runs_path = out_dir / "runs.json"
        runs = json.loads(runs_path.read_text()) if runs_path.exists() else []
        runs.append({"libraries": libraries, "models": n, "workers": workers,
                     "wall_s": round(time.time() - started, 1), "ended": time.strftime("%Y-%m-%d %H:%M"),
                     "versions": versions()})
        runs_path.write_text(json.dumps(runs, indent=1) + "\n")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("libraries", nargs="*", help="what to sweep, in this order: " + ", ".join(LIBRARIES))
    add("--only", nargs="+", help="these model names / model types only")
    add("--workers", type=int, default=2)
    add("--timeout", type=float, default=TIMEOUT_S, help="seconds per model (default %(default)s)")
    add("--out-dir", default=str(OUT_DIR))
    add("--markdown", help="markdown file to write ('-' for stdout); default: docs/sweep.md for the committed "
        "results (the default --out-dir), else sweep.md in --out-dir")
    add("--retry-failed", action="store_true")
    add("--limit", type=int, help="run at most this many models")
    add("--render", action="store_true", help="only write the markdown from the JSON files")
    add("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker(args.timeout)
    if any(lib not in LIBRARIES for lib in args.libraries):
        parser.error("libraries are " + ", ".join(LIBRARIES))
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if not args.render:
        start = time.time()
        run(args.libraries, args.workers, args.timeout, out_dir, args.only, args.retry_failed, args.limit)
        print(f"sweep took {(time.time() - start) / 60:.1f} min", file=sys.stderr)
    from .sweep_render import refresh_coverage, render

    text = render(out_dir)
    if args.markdown is None:  # a run into another folder never overwrites the committed docs
        args.markdown = str(ROOT / "docs" / "sweep.md" if out_dir.resolve() == OUT_DIR.resolve() else out_dir / "sweep.md")
    if args.markdown == "-":
        print(text)
    else:
        Path(args.markdown).write_text(text)
    if out_dir.resolve() == OUT_DIR.resolve():  # the committed results: coverage.md embeds them too
        refresh_coverage(ROOT / "docs" / "coverage.md", out_dir)
    return 0
