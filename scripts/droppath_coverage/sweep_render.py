"""The markdown of ``docs/sweep.md`` from the sweep's JSON files: summary lines, timm per family (N of M
models at parity), Hugging Face per model type (patched with zero arguments or why not), failures and
rows not at parity grouped by cause."""

from __future__ import annotations

import collections
import json
import re
from pathlib import Path

# Causes written by hand after reading the failures: (regex on "stage: error", cause). The first match
# names the group; anything unmatched is grouped by its normalised message.
CAUSES: list[tuple[str, str]] = [
    (r"^forward: the library's default config fails the same way", (
        "the library's default config fails its forward the same way, on the automatic inputs (a transformers "
        "default that does not run, or inputs the builder gets wrong for it): not the sweep's shrinking")),
    (r"^inputs: ExampleInputsError", (
        "needs `example_inputs=`: the model takes inputs the automatic builder does not make (box coordinates, "
        "grids, query embeddings, states, byte/char ids without a vocab); the error names them")),
    (r"^inputs: AttributeError: '\w+Config' object has no attribute '(conv_kernel|max_source_positions)'", (
        "input builder assumed Whisper's / wav2vec2's config fields (fixed: now an `ExampleInputsError` naming "
        "the input)")),
    ((r"image tokens do not match|without a vision_config|high_res_pixel_values|has no attribute '(device|sum)'"
      r"|Number of patches|You have to specify|object has no attribute 'transpose'|must be a \dD tensor|"
      r"invalid combination of arguments - got \(NoneType|'bool' object has no attribute|^forward: .*(not iterable|"
      r"not subscriptable|not callable|has no len|must be provided|cannot be `None`|patch width|index k out of range|"
      r"tuple index out of range|must specify exactly one|language unknown|not enough values to unpack|"
      r"Sizes of tensors must match|object has no attribute 'unsqueeze')"), (
        "multimodal / special inputs: the automatic inputs lack image tokens in `input_ids`, a grid or a second "
        "image, boxes, or an input the model requires")),
    ((r"^forward: .*(size of tensor a|shapes cannot be multiplied|is invalid for input of size|expected input|"
      r"expanded size|must divide|divisible|split_sizes)"), (
        "shape error on the sweep's shrunk config (the model's full config is too big to try on this machine)")),
    (r"^build: .*(natten|requires the \w+ library)", "needs an optional library that is not installed"),
    (r"^build: RuntimeError: the library's default config does not build", (
        "transformers' own default config does not build, unchanged (a field its checkpoints set is left unset, "
        "or the model reads a config attribute the class does not define): not the sweep's shrinking")),
    (r"get_seq_length|matC_old has wrong shape", (
        "hybrid / recurrent models whose 2-layer config has no attention layer fail their own forward with a cache "
        "(each patches and verifies with `use_cache=False`)")),
    ((r"^forward: .*(stride should not be zero|index # is out of bounds|index \d+ is out of bounds)|"
     r"^inputs: RuntimeError: Trying to create tensor with negative"), (
        "does not run at the sweep's size (a sliding window or memory length of the shrunk config)")),
    ((r"^build: .*(prediction_length|StrictDataclass|per_layer_config|KeyError|not subscriptable|empty\(|"
      r"has no attribute|in_channels must be|expanded size|divisible)"), (
        "the sweep could not build a small config (validation of the shrunk config; the default is too big)")),
    (r'^build: .*can only concatenate list \(not "tuple"\)', (
        "transformers bug: the class does not build from its own config class (a tuple `hidden_sizes` default "
        "where its code adds a list; a hub `config.json` holds lists)")),
    (r"^build: ", "the sweep could not build the model"),
    (r"^timeout: ", "ran past the time limit"),
    (r"^apply: NoResidualBranchError", (
        "engine: no residual branch found: the architecture has none (VGG, DenseNet, Inception, SelecSLS, RDNet, "
        "LCNet, VoVNet-19, MobileNetV1), or its residuals are per-channel (ConvMixer)")),
    (r"^apply: VerificationError", "engine: eval output not verified (apply undone)"),
]


# What the sweep found about the engine (read off each library's source; the hardest example of each).
# Rows: (cause, example model, what the library does, what the engine does).
FINDINGS: list[tuple[str, str, str]] = [
    ("packed vision tower", "hf:qwen2_vl, glm4v_vision (also Qwen3-VL, Qwen3.5, GLM-OCR/Image, Cohere Compass, ...)",
     ("the tower runs the patches of all images as one sequence `(P, D)` with no batch dimension, its blocks called "
     "with `cu_seqlens`: 19 towers failed with `BatchDimError` and inside their VLMs were left out with a warning. "
     "Fixed: a block called with boundaries whose last value is the row count gets `DropPath(packed=True)`, "
     "handed each call's boundaries by a pre-hook, one decision per image; a check pass confirms the segments are "
     "independent. Qwen2.5-VL's window blocks (finer boundaries, `cu_window_seqlens`) stay left out with the "
     "reason: dropping per window would drop parts of an image.")),
    ("samples folded into the batch dimension", "hf:videoprism (also timm:tnt_*, OPT's MLP in hf:blip-2)",
     ("a branch whose batch dimension is `B x T` rows (VideoPrism's spatial layers: frames; its temporal layers: "
     "token positions; TNT's pixel stream: patches; OPT's MLP on `(B x L, D)`) was dropped per row, so a sample "
     "lost the branch on some frames or tokens only (timm does this for TNT). Fixed: a check pass shows each "
     "sample's `T` rows are consecutive, and they share one decision; otherwise the branch is left out with the "
     "reason. Sites and parity are unchanged (the oracle judges placement); the decisions are now per sample.")),
    ("samples folded into the batch patch-major", "hf:depth_pro (also seggpt)",
     ("DepthPro's patch encoder runs the patches of all images as one batch patch-major (row `j * B + s`), SegGPT "
     "its prompts and inputs as `2 x B` rows: a sample's rows are `B` apart, not consecutive, so the check above "
     "refused them (DepthPro's 4 branches left out with a warning, 4 of HF's 8 slot calls not carried). Fixed: the "
     "check pass also accepts rows `0, B, 2B, ...` changing alone, and those rows share one decision "
     "(`DropPath(interleaved=True)`); rows in any other order are still left out. DepthPro at parity (8 of 8).")),
    ("a block's first branch on a stream no block made", "hf:neomme (also reformer, DETR decoders, SAM's mask decoder)",
     ("found by `scripts/depth_check.py` (the types at 2 and 6 layers): NeoMME mixes the embeddings into each "
     "layer's input (`l0 * h + l1 * h0`), so each layer's first branch starts from `h0` and the stack rule made "
     "every layer a stack of its own: under `linear` every rate 0, at any depth (11 types had one-block stacks). "
     "Fixed: a block joins the stack of the first of its branches whose stream an earlier block made; sites "
     "unchanged, rates ramp. That mix, and DETR's `h + pos` (position embeddings the stream depends on), were taken "
     "as merges whose branch is the whole previous layer (sites `encoder.layers.k`, the decoders' "
     "`self_attn_layer_norm`): a dropped sample's next layer saw the position embeddings alone in its queries and "
     "keys, and eval verification could not tell. Fixed 2026-12-06: a sum that goes on as no stream (it reaches no "
     "later merge's stream and no output except through branches) while an operand goes on by itself, or whose "
     "stream is a constant, is a side value, not a merge (DETR family, SAM's and EdgeTAM's two-way mask decoders, "
     "NeoMME, Zamba2; DiffusionGemma's `mlp(h) + moe(h)` likewise; HRNet's and nested residual blocks, which return "
     "their sum, stay merges).")),
    ("branch times a mask after its module", "hf:timesfm (also timesfm2_5)",
     ("TimesFM's MLP ends in `outputs * (1 - paddings) + x`: the branch leaves its last module and is multiplied "
     "by a value from the inputs, so the engine found no module end and dropped the merge without a word (one "
     "site per layer, the MLP silently without drop path). Fixed: a product with a live value not computed from "
     "the branch commutes with a per-sample mask, so the module is the site (an adaLN gate `gate(c) * attn(x)` "
     "the same); `a * sigmoid(a)` is not taken. Found once the time series inputs were built.")),
    ("hyper-connections", "hf:deepseek_v4 (also hy_v4, hy_v4_vl_text, glm5_next_text)",
     ("the residual stream is `hc_mult` parallel streams mixed by learned matrices (`h' = comb^T h + post * f(x)`, "
     "`post.unsqueeze(-1) * f.unsqueeze(-2)`): no `x + f(x)`, so `NoResidualBranchError` (4 types; inside HY V4 VL "
     "and GLM-5 Next only the vision tower was patched). Fixed: a product of two broadcast factors ends at the later "
     "module output (the layer's attention or MLP, the broadcast replayed for the batch dimension), a shortcut one "
     "operation from the fork is the stream even where its operand and the branch are pieces of one split, and a "
     "layer's second merge forks from the stream its first merge made. A dropped sample keeps the mixed streams "
     "`comb^T h`; skip mode masks these branches.")),
    ("one stack of mixed layer classes", "hf:olmo_hybrid (also inkling2_text, Jamba and SAM 3 LiteText's text model at depth)",
     ("a hybrid decoder's `layers` holds layers of two classes (linear attention and attention, Mamba and attention, "
     "RepMixer and transformer): the rule for a repeated composite of different blocks (DaViT's pairs) took the whole "
     "stack for one composite, one unit of the schedule, so `linear` gave every branch rate 0, and the sweep, which "
     "silenced warnings, showed only `blocks` 1 for 2 layers. Fixed: a composite repeats (two containers of its "
     "path's shape at least); the sweep now records what `apply_drop_path` warns of and counts it.")),
    ("gated or scaled residual stream", "hf:muse_spark_text (also ergo, zaya)",
     ("the stream itself is rescaled at every merge (`alpha * residual + beta * h`, a learned per-channel residual "
     "gate): no `x + f(x)` on the unchanged stream, so `NoResidualBranchError`. Fixed: a stream scaled by numbers or "
     "parameters is still the stream, and the branch is dropped (a dropped sample keeps `alpha * residual`); a "
     "stream times a value computed from the pass is not taken. Zaya shifts both stream and branch by a bias before "
     "scaling (`(h + b1) * s1 + (x + b2) * s2`) in a helper module: `NoResidualBranchError` until a shift by a constant "
     "counted as a scaling (2026-12-06; 2 sites a layer now).")),
    ("residual on a value its part computed", "hf:grounding-dino (also mm-grounding-dino)",
     ("the fusion layer adds its attention to its own LayerNorm outputs (`v = LN(v); v = v + drop_path(gamma * "
     "attn(v))`) and HF drops that; the engine skipped it as 'a residual inside a part of its block, on a value that "
     "part computed itself' (the rule that keeps attentions' internal skips out), so 4 of HF's 8 slot calls were not "
     "carried. Fixed: such a residual counts when its branch ends in a drop path slot the architecture named (the "
     "exception the rule for forks inside a block already had); both models are at parity now.")),
    ("nested residual inside a branch", "timm:bat_resnext26ts",
     ("the bottleneck's branch holds BAT non-local attention, which ends in its own `y + x` on the conv output; timm "
     "drops only the bottleneck's residual, the engine also finds the inner one (8 sites more than timm's slots).")),
    ("sum of two computed paths inside a branch", "timm:vit_base_patch16_xp_224 (also vit_pwee_patch16_reg1_gap_256)",
     ("timm's ParallelScalingBlock adds `attn_out_proj(a) + mlp_out_proj(m)` (both from one fused projection of "
     "the block input) and then `x + drop_path(ls(sum))`. The engine read the inner sum as a fork merge "
     "(`shortcut(x) + f(x)`, the MLP path being shorter): one site more per block. Fixed: two operands that start "
     "from different outputs of one split (`split`, `chunk`, `unbind`) of a value computed inside the call are parts "
     "of one branch, not a shortcut and a branch; these models are at parity now.")),
    ("blocks timm builds without drop path", "timm:vitamin_base_224, timm:csatv2",
     ("timm keeps them at rate 0 outside its ramp (ViTamin's hybrid stem inside `patch_embed`, CSATv2's transformer "
     "blocks unless `transformer_drop_path=True`); the engine drops their residual branches like any other "
     "(`schedule='timm'` leaves them out). Known from `coverage.md`.")),
    ("per-channel residual branches", "timm:convmixer_768_32 (also HF pp_ocrv5_mobile_rec)",
     ("ConvMixer's only residual is `x + BN(GELU(depthwise conv(x)))`; the engine treats per-channel branches as "
     "positional / re-parameterisable convolutions and finds no block (`NoResidualBranchError`). timm gives ConvMixer "
     "no drop path, so this is no parity failure, but the branch is a real block residual.")),
    ("no residual blocks", "hf:mobilenet_v1, hf:textnet, timm:densenet121",
     "plain or dense (concatenating) networks: `NoResidualBranchError` is the right answer."),
]


def normalise(text: str) -> str:
    text = re.sub(r"'[^']*'|\"[^\"]*\"", "'…'", text)
    text = re.sub(r"\[[^\]]*\]|\([^)]*\)", "(…)", text)
    text = re.sub(r"\d+(\.\d+)?", "#", text)
    return text[:140]


WRONG_INPUTS = ("needs `example_inputs=`: the automatic inputs are built but do not fit the forward, and the "
                "hand-written ones run (Dia's decoder ids per audio channel)")


def cause_of(row: dict) -> str:
    error = row["error"]
    if row["stage"] == "forward" and (row.get("with_inputs") or {}).get("status") == "ok":
        return WRONG_INPUTS
    if row["stage"] == "build" and "no config level builds" in error:
        first = error.split(": ", 2)[-1].split(" | ")[0]  # the tiny level's error
        error = first.split(": ", 1)[-1] if ": " in first else first
    key = f"{row['stage']}: {error}"
    for pattern, cause in CAUSES:
        if re.search(pattern, key):
            return cause
    return f"{row['stage']}: {normalise(error)}"


def parity_cause(row: dict) -> str:
    reason = row["parity_reason"]
    if not row["verified"] and row["site_parity"]:
        return ("sites at parity; eval not verifiable on the meta device (too big to build)" if row["device"] == "meta"
                else "eval output not verified")
    if "patch_embed.backbone" in reason or "csatv2" in row["name"]:
        return ("engine sites where timm builds blocks without drop path (hybrid stems in `patch_embed.backbone`: "
                "ViT-ResNet hybrids, ViTamin; CSATv2's transformer blocks)")
    parts = []
    if "slots no engine site carries" in reason:
        parts.append("native slots the engine does not carry")
    if "engine sites in no holder" in reason:
        parts.append("engine sites outside timm's slot holders")
    if "holders that differ" in reason:
        parts.append("a timm block holds more (or fewer) engine sites than its slots")
    return " + ".join(parts) or normalise(reason) or "unknown"


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value).replace("|", "\\|")


def _examples(rows: list[dict], k: int = 3) -> str:
    names = sorted(rows, key=lambda r: (r.get("params") or 0))
    return ", ".join(f"`{r['name']}`" for r in names[:k]) + (f" (+{len(rows) - k})" if len(rows) > k else "")


def load(out_dir: Path) -> tuple[dict[str, list[dict]], list[dict]]:
    rows = {}
    for library in ("hf", "hf-heads", "timm"):
        path = Path(out_dir) / f"{library}.json"
        rows[library] = json.loads(path.read_text()) if path.exists() else []
    runs_path = Path(out_dir) / "runs.json"
    runs = json.loads(runs_path.read_text()) if runs_path.exists() else []
    return rows, runs


def timm_summary(rows: list[dict]) -> list[str]:
    failed = [r for r in rows if r["status"] != "ok"]
    with_slots = [r for r in rows if r["native"]]
    zero = [r for r in rows if r["native"] == 0]
    ok = [r for r in with_slots if r["site_parity"] and r["verified"]]
    no_rate = [r for r in rows if r["status"] == "ok" and r["native"] is None]
    lines = [
        (f"timm: **{len(ok)}/{len(with_slots)} models at parity** (the models whose `drop_path_rate` build has "
        f"drop path slots on a residual branch: every slot call carried by an engine site, no other site, eval "
        f"output verified bitwise unchanged), of {len(rows)} models swept ({len(failed)} failed to patch or run)"),
    ]
    meta = [r for r in with_slots if r["site_parity"] and r["device"] == "meta"]
    if meta:
        lines.append(f"timm: {len(meta)} more models (above 400M parameters even with fewer blocks) are at site parity "
                     f"on the meta device, where eval output cannot be verified: " + ", ".join(
                         f"`{r['name']}`" for r in meta[:6]) + (" ..." if len(meta) > 6 else ""))
    if zero:
        found = sum(1 for r in zero if r["sites"])
        families = ", ".join(sorted({r["family"] for r in zero}))
        lines.append(f"timm: {len(zero)} models take `drop_path_rate` but timm applies it to no residual branch "
                     f"({families}; ResNeSt drops the block input, which only a downsample shortcut reads): not "
                     f"counted; the engine finds residual branches in {found} of them")
    if no_rate:
        found = sum(1 for r in no_rate if r["sites"])
        lines.append(f"timm: {len(no_rate)} models without `drop_path_rate` patched: residual branches found in "
                     f"{found}, none in {len(no_rate) - found}")
    rated = [r for r in ok if r["rate_parity"] is not None]
    if rated:
        lines.append(f"timm: the default `linear` schedule gives timm's own rates on {sum(r['rate_parity'] for r in rated)}"
                     f" of the {len(rated)} models at parity (the others use another convention: `docs/coverage.md`)")
    return lines


def hf_summary(rows: list[dict]) -> list[str]:
    patched = [r for r in rows if r["status"] == "ok" and r["verified"]]
    with_slots = [r for r in rows if r["native"]]
    ok_slots = [r for r in with_slots if r["site_parity"] and r["verified"]]
    lines = [
        (f"hf: **{len(patched)}/{len(rows)} AutoModel types patched with zero arguments** "
        f"(`apply_drop_path(model, 0.1)`, eval verified) from a shrunk config"),
        (f"hf: {len(ok_slots)}/{len(with_slots)} types whose config has `drop_path_rate` at parity with HF's own "
        f"drop path modules (every slot call on a residual carried by an engine site)"),
    ]
    recorded = [r for r in patched if r.get("not_run") is not None]
    partial = [r for r in recorded if r["not_run"]]
    if recorded:
        lines.append(
            f"hf: {len(partial)} of the {len(recorded)} patched types have stacks of repeated blocks their automatic "
            f"inputs do not run (an audio tower probed on text alone, a second modality left out), and so no drop "
            f"path there: the report's `not_run` and a warning say so"
            + (": " + ", ".join(f"`{r['name']}` ({len(r['not_run'])})" for r in partial) if partial else "")
        )
    for line in (warned_line("hf", rows), unused_line(rows), hand_inputs_line(rows)):
        if line:
            lines.append(line)
    cache = [r for r in rows if "with use_cache=False" in r["note"]]
    if cache:
        fixed = [r for r in cache if "verified True" in r["note"].rpartition("with use_cache=False")[2]]
        which = ": " + ", ".join(f"`{r['name']}`" for r in fixed) if fixed else (
            " (the sweep builds with `use_cache=False` where only that runs, so these fail for other reasons)")
        lines.append(f"hf: of the {len(cache)} failed types whose config has `use_cache=True`, {len(fixed)} patch and "
                     f"verify when it is False{which}")
    return lines


def _needs_inputs(rows: list[dict]) -> list[dict]:
    """The rows whose automatic inputs could not be built (stage 'inputs') or were built wrong for the forward
    (stage 'forward' with a retry recorded), where the sweep recorded the retry with hand-made ones (rows of a
    sweep before that have no ``with_inputs`` key: none is shown for them)."""
    return [r for r in rows if "with_inputs" in r and (r["stage"] == "inputs" or (r["stage"] == "forward" and r["with_inputs"]))]


def _kind(note: str) -> str:
    """A note's first clause, the noun its count ``#`` counts singular and plural alike (``# stack of`` /
    ``# stacks of``, ``# residual branch`` / ``# residual branches``); other words as written."""
    first = re.split(r"[:(;]", note)[0].strip()
    return re.sub(r"(# (?:\w+ )?)(stack|branch|block)(?:es|s)?\b",
                  lambda m: m[1] + m[2] + ("(es)" if m[2] == "branch" else "(s)"), first)


def warned_line(library: str, rows: list[dict]) -> str:
    """How many patched models ``apply_drop_path`` warned of something (its report's notes), by kind (the
    note's first clause); empty where no row records them."""
    patched = [r for r in rows if r["status"] == "ok" and r.get("warned") is not None]
    if not patched:
        return ""
    kinds: dict[str, list[str]] = {}
    for r in patched:
        for note in dict.fromkeys(_kind(n) for n in r["warned"]):
            kinds.setdefault(note, []).append(r["name"])
    warned = sum(1 for r in patched if r["warned"])
    parts = "; ".join(f"{len(names)} x {kind} ({', '.join(f'`{n}`' for n in names[:3])}{' ...' if len(names) > 3 else ''})"
                      for kind, names in sorted(kinds.items(), key=lambda kv: -len(kv[1])))
    return (f"{library}: {warned} of the {len(patched)} patched models got a warning from `apply_drop_path` (a degraded "
            f"or notable result, also in the report's notes)" + (f": {parts}" if parts else ""))


def unused_line(rows: list[dict]) -> str:
    """How many patched types have sites whose DropPath output the model does not use (``oracles.unused_sites``:
    noise added there changes no output), with them; empty where no row records the check."""
    from .sweep import UNUSED_MAX_PATCH_S, UNUSED_MAX_SITES

    checked = [r for r in rows if r["status"] == "ok" and r.get("unused") is not None]
    if not checked:
        return ""
    found = [r for r in checked if r["unused"]]
    listed = ", ".join(f"`{r['name']}` ({len(r['unused'])} of {r['sites']})" for r in found)
    return (f"hf: every site's output used (noise added there changes the model's output; types whose output does not "
            f"change with their inputs either are not counted) in {len(checked) - len(found)} "
            f"of the {len(checked)} types checked (up to {UNUSED_MAX_SITES} sites, patched in {UNUSED_MAX_PATCH_S:.0f} s or less); "
            f"not in {len(found)}" + (f": {listed}" if listed else ""))


def hand_inputs_line(rows: list[dict]) -> str:
    """The summary line of the retries with hand-made ``example_inputs=``; empty where no row records them."""
    need = _needs_inputs(rows)
    if not need:
        return ""
    outcome = [r.get("with_inputs") or {} for r in need]
    ok = [r for r, w in zip(need, outcome) if w.get("status") == "ok" and w.get("verified")]
    skipped = sum(w.get("status") == "skipped" for w in outcome)
    failed = sum(w.get("status") == "failed" or (w.get("status") == "ok" and not w.get("verified")) for w in outcome)
    return (f"hf: {len(ok)} of the {len(need)} types that need `example_inputs=` patch and verify with them "
            f"(inputs written by hand in `scripts/droppath_coverage/hand_inputs.py`, passed as the error says; "
            f"{failed} fail with them, {skipped} skipped as no tensors serve them, {len(need) - len(ok) - failed - skipped} "
            f"without hand inputs); not counted above")


def hand_inputs_table(rows: list[dict], h: str) -> list[str]:
    """The types that need ``example_inputs=``: what was passed and the outcome."""
    need = _needs_inputs(rows)
    if not need:
        return []
    out = ["", f"{h} Hugging Face types that need `example_inputs=`", "",
           ("The types whose automatic inputs cannot be built (their row above: stage `inputs`) or are built but do not "
            "fit the forward (stage `forward`, where hand inputs are written), patched again with "
            "inputs written by hand (`scripts/droppath_coverage/hand_inputs.py`) as "
            "`apply_drop_path(model, 0.1, example_inputs=...)`; *build*: the config level they ran at."), "",
           "| model type | example_inputs | build | status | sites | verified | why not |", "|---|---|---|---|---|---|---|"]
    for r in sorted(need, key=lambda r: r["name"]):
        w = r.get("with_inputs") or {}
        status = w.get("status", "no hand inputs")
        out.append(f"| {r['name']} | {_cell(r.get('example_inputs') or '-')} | {_cell(w.get('build'))} | {status} | "
                   f"{_cell(w.get('sites'))} | {_cell(w.get('verified'))} | {_cell((w.get('error') or '')[:200])} |")
    return out


def heads_summary(heads: list[dict], types: list[dict]) -> list[str]:
    """Task heads: patched with zero arguments, and with as many sites as their AutoModel type's row
    built at the same config level (a head adds no block; a decoder it adds, as MAE's, shows here)."""
    if not heads:
        return []
    base = {r["name"]: r for r in types}
    patched = [r for r in heads if r["status"] == "ok" and r["verified"]]
    same = [r for r in patched if _base_sites(r, base) == r["sites"]]
    compared = [r for r in patched if _base_sites(r, base) is not None]
    more = [r for r in compared if r["sites"] != _base_sites(r, base)]
    line = (f"hf task heads: **{len(patched)}/{len(heads)} head and backbone classes of the coverage table's "
            f"families patched with zero arguments** (eval verified); {len(same)} of the {len(compared)} built at "
            f"their AutoModel type's config level have its sites exactly")
    if more:
        line += " (the others: " + ", ".join(f"`{r['name']}` {r['sites']} vs {_base_sites(r, base)}" for r in more[:4])
        line += (" ..." if len(more) > 4 else "") + ")"
    return [line]


def _base_sites(head: dict, base: dict) -> int | None:
    row = base.get(head["name"].partition("/")[0])
    if row is None or row["status"] != "ok" or row["build"] != head["build"]:
        return None
    return row["sites"]


def render(out_dir: Path) -> str:
    rows, runs = load(out_dir)
    out = ["# Sweep: every timm model and every Hugging Face AutoModel type", ""]
    out.append(provenance(rows, runs))
    return "\n".join(out + sections(rows, level=2)) + "\n"


COVERAGE_HEADING = "## Every model: the sweep"


def coverage_section(out_dir: Path) -> list[str]:
    """The sweep as ``docs/coverage.md`` embeds it (lines, from a blank line before its heading); no lines
    when the sweep has no results."""
    rows, runs = load(out_dir)
    if not any(rows.values()):
        return []
    return ["", COVERAGE_HEADING, "", (
        "The table above judges one model per family; the sweep (`python scripts/sweep.py hf hf-heads timm`, "
        "also rendered alone in [sweep.md](sweep.md)) patches every timm model and every Hugging Face "
        "AutoModel type and task head with `apply_drop_path(model, 0.1)` and nothing else. "
        + provenance(rows, runs))] + sections(rows, level=3)


def refresh_coverage(path: Path, out_dir: Path) -> bool:
    """Replace the sweep section of an existing ``coverage.md`` (up to the next level-2 heading) with the
    one the JSON files in ``out_dir`` give, so the sweep's numbers there never lag behind ``sweep.md``;
    False (nothing written) when the file has no such section."""
    text = path.read_text() if path.exists() else ""
    start = text.find("\n" + COVERAGE_HEADING + "\n")
    if start < 0:
        return False
    end = text.find("\n## ", start + len(COVERAGE_HEADING) + 2)
    before, after = text[:start].rstrip("\n"), (text[end:] if end >= 0 else "")
    path.write_text(before + "\n" + "\n".join(coverage_section(out_dir)) + "\n" + after)
    return True


def provenance(rows: dict[str, list[dict]], runs: list[dict]) -> str:
    wall = sum(r["wall_s"] for r in runs)
    cpu = sum(r["total_s"] or 0 for lib in rows.values() for r in lib)
    seen = [r["versions"] for r in runs if r.get("versions")]
    distinct = [v for i, v in enumerate(seen) if v not in seen[:i]]
    env = "; ".join(
        f"torch {v['torch']}, timm {v['timm']}, transformers {v['transformers']}, Python {v['python']}" for v in distinct
    ) or "library versions not recorded"
    return (
        f"Generated by `python scripts/sweep.py hf hf-heads timm` (do not edit by hand; how each model is built and judged "
        f"is in the docstring of `scripts/droppath_coverage/sweep.py`): {env}; "
        f"1 torch thread per worker. Run time {wall / 60:.1f} min wall in {len(runs)} run{'s' if len(runs) != 1 else ''} "
        f"({cpu / 60:.1f} min summed over models). Drop rate 0.1, random weights; the raw results are in "
        f"`docs/sweep/timm.json`, `docs/sweep/hf.json` and `docs/sweep/hf-heads.json`."
    )


def sections(rows: dict[str, list[dict]], level: int) -> list[str]:
    """Everything below the title: summary, failures by cause, findings, timm per family, Hugging Face
    per model type and task heads; headings at ``level`` (``docs/coverage.md`` embeds them one deeper)."""
    import timm

    h = "#" * level
    out = ["", f"{h} Summary", ""]
    warned = [line for line in (warned_line("hf task heads", rows["hf-heads"]), warned_line("timm", rows["timm"])) if line]
    out += [f"- {line}" for line in hf_summary(rows["hf"]) + heads_summary(rows["hf-heads"], rows["hf"])
            + timm_summary(rows["timm"]) + warned]
    all_rows = rows["hf"] + rows["hf-heads"] + rows["timm"]

    out += ["", f"{h} Failures by cause", "",
            ("Models that could not be built, run on their automatic inputs, or patched (apply raised), grouped by "
            "cause (exception class and first line, numbers and names blanked); examples are the smallest models."),
            "", "| library | cause | models | examples |", "|---|---|---|---|"]
    groups = collections.defaultdict(list)
    for r in all_rows:
        if r["status"] != "ok":
            groups[(r["library"], cause_of(r))].append(r)
    for (library, cause), members in sorted(groups.items(), key=lambda kv: (kv[0][0], -len(kv[1]))):
        out.append(f"| {library} | {_cell(cause)} | {len(members)} | {_examples(members)} |")

    out += ["", f"{h} What the sweep found about the engine", "",
            ("Read off each library's source for the hardest example of each kind. Fixed from the sweep, in the "
             "example-input builder (`droppath_surgery/integrations/inputs.py`, tested in `tests/test_language.py`): "
             "audio configs without Whisper's or wav2vec2's fields (AST, DAC, EnCodec) got an `AttributeError` and "
             "now an `ExampleInputsError` naming the input; video models (VideoMAE, TimeSformer, ViViT, X-CLIP) got "
             "one image and now a clip of `config.num_frames`; Q-Former VLMs (Blip-2) got one image placeholder an "
             "image where their forward scatters `num_query_tokens` queries (so sample 0's queries landed in sample "
             "1: the folded-rows check below refused OPT's MLP for it) and now one per query, InstructBLIP its "
             "`qformer_input_ids`; VideoPrism and V-JEPA 2 a clip for `pixel_values_videos`; wav2vec2-BERT, "
             "Moonshine and PE Audio their audio (`feature_projection_input_dim`, 1 s at 16 kHz where the config "
             "names no rate); time series models (PatchTST, TimesFM, Informer, ...) their `past_values`."),
            "", "| kind | example | what happens |", "|---|---|---|"]
    out += [f"| {kind} | `{example}` | {_cell(text)} |" for kind, example, text in FINDINGS]

    out += ["", f"{h} timm models not at parity, by cause", "", "| cause | models | examples |", "|---|---|---|"]
    groups = collections.defaultdict(list)
    for r in rows["timm"]:
        if r["status"] == "ok" and r["native"] and not (r["site_parity"] and r["verified"]):
            groups[parity_cause(r)].append(r)
    for cause, members in sorted(groups.items(), key=lambda kv: -len(kv[1])):
        out.append(f"| {_cell(cause)} | {len(members)} | {_examples(members)} |")

    out += ["", f"{h} timm per family", "",
            ("*at parity*: N of M models with drop path slots on a residual branch; *no slots*: models without "
            "`drop_path_rate` (or whose drop path is on no residual), with the engine's sites; *failed*: did not "
            "patch or run."), "", "| family | models | at parity | no slots (sites found) | failed | not at parity |",
            "|---|---|---|---|---|---|"]
    families = collections.defaultdict(list)
    module_of = timm.models._registry._model_to_module  # rows that timed out in the worker carry no family
    for r in rows["timm"]:
        families[r["family"] or module_of.get(r["name"], "?")].append(r)
    for family in sorted(families):
        members = families[family]
        slots = [r for r in members if r["native"]]
        ok = [r for r in slots if r["site_parity"] and r["verified"]]
        none = [r for r in members if r["status"] == "ok" and not r["native"]]
        found = sum(1 for r in none if r["sites"])
        failed = [r for r in members if r["status"] != "ok"]
        bad = [r["name"] for r in slots if r not in ok]
        out.append(f"| {family} | {len(members)} | {len(ok)}/{len(slots)} | {len(none)} ({found}) | {len(failed)} | "
                   + ", ".join(bad[:4]) + (f" (+{len(bad) - 4})" if len(bad) > 4 else "") + " |")

    out += ["", f"{h} Hugging Face per model type", "",
            ("*build*: the config level used (`tiny`: 2 layers, width 64, ...; `tiny, consistent`: also the fields "
             "that follow them and unset sizes; `layers only`; `default`; `, use_cache=False` where only that runs); "
             "*sites / "
            "layers*: engine sites and the config's layer count (a decoder layer has two branches); *slots*: HF's "
            "own drop path slot calls on a residual, and how many an engine site carries; *why not*: the error "
            "when apply_drop_path(model, 0.1) did not patch and verify."), "",
            "| model type | class | build | sites | layers | verified | slots (carried) | patch s | why not / notes |",
            "|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows["hf"], key=lambda r: r["name"]):
        out.append(_hf_row(r))
    out += hand_inputs_table(rows["hf"], h)
    if rows["hf-heads"]:
        base = {r["name"]: r for r in rows["hf"]}
        out += ["", f"{h} Hugging Face task heads", "",
                ("Every head and backbone class transformers maps to a model type of the coverage table's families, "
                 "built like that type; *AutoModel sites*: the type's row, where it was built at the same level."), "",
                "| head | build | sites | AutoModel sites | verified | slots (carried) | why not / notes |",
                "|---|---|---|---|---|---|---|"]
        for r in sorted(rows["hf-heads"], key=lambda r: r["name"]):
            slots = "-" if r["native"] is None else f"{r['native']} ({r['carried']})"
            why = r["error"] if r["status"] != "ok" else (r["parity_reason"] if r["native"] else "")
            out.append(f"| {r['name']} | {_cell(r['build'])} | {_cell(r['sites'])} | {_cell(_base_sites(r, base))} | "
                       f"{_cell(r['verified'])} | {slots} | {_cell(why[:200])} |")
    return out


def _hf_row(r: dict) -> str:
    slots = "-" if r["native"] is None else f"{r['native']} ({r['carried']})"
    why = r["error"] if r["status"] != "ok" else ""
    if r["status"] == "ok" and not r["verified"]:
        why = "eval output not verified"
    notes = "; ".join(p for p in (why, r["note"] if "use_cache" in r["note"] else "", r["parity_reason"]
                                  if r["native"] else "") if p)
    return (f"| {r['name']} | {r['cls']} | {_cell(r['build'])} | {_cell(r['sites'])} | {_cell(r['layers'])} | "
            f"{_cell(r['verified'])} | {slots} | {_cell(r['patch_s'])} | {_cell(notes[:300])} |")
