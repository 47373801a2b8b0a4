"""The markdown of ``docs/sweep.md`` from the sweep's JSON files: summary lines, timm per family (N of M
models at parity), Hugging Face per model type (patched with zero arguments or why not), failures and
rows not at parity grouped by cause."""

from __future__ import annotations

import collections
import json
import platform
import re
from pathlib import Path

# Causes written by hand after reading the failures: (regex on "stage: error", cause). The first match
# names the group; anything unmatched is grouped by its normalised message.
CAUSES: list[tuple[str, str]] = [
    (r"^inputs: ExampleInputsError", (
        "needs `example_inputs=`: the model takes inputs the automatic builder does not make (box coordinates, "
        "grids, query embeddings, states, byte/char ids without a vocab); the error names them")),
    (r"^inputs: AttributeError: '\w+Config' object has no attribute '(conv_kernel|max_source_positions)'", (
        "input builder assumed Whisper's / wav2vec2's config fields (fixed: now an `ExampleInputsError` naming "
        "the input)")),
    ((r"image tokens do not match|without a vision_config|high_res_pixel_values|has no attribute '(device|sum)'"
      r"|Number of patches|You have to specify|object has no attribute 'transpose'|must be a \dD tensor|"
      r"invalid combination of arguments - got \(NoneType|'bool' object has no attribute"), (
        "multimodal / special inputs: the automatic inputs lack image tokens in `input_ids`, a grid or a second "
        "image, boxes, or an input the model requires")),
    ((r"^forward: .*(size of tensor a|shapes cannot be multiplied|is invalid for input of size|expected input|"
      r"expanded size|must divide|divisible|split_sizes)"), (
        "shape error on the sweep's shrunk config (the model's full config is too big to try on this machine)")),
    (r"^build: .*(natten|requires the \w+ library)", "needs an optional library that is not installed"),
    ((r"^build: .*(prediction_length|StrictDataclass|per_layer_config|KeyError|not subscriptable|empty\(|"
      r"has no attribute|in_channels must be|expanded size|divisible)"), (
        "the sweep could not build a small config (validation of the shrunk config; the default is too big)")),
    (r"^build: ", "the sweep could not build the model"),
    (r"^timeout: ", "ran past the time limit"),
    (r"^apply: NoResidualBranchError", "engine: found no residual branch"),
    (r"^apply: VerificationError", "engine: eval output not verified (apply undone)"),
]


def normalise(text: str) -> str:
    text = re.sub(r"'[^']*'|\"[^\"]*\"", "'…'", text)
    text = re.sub(r"\[[^\]]*\]|\([^)]*\)", "(…)", text)
    text = re.sub(r"\d+(\.\d+)?", "#", text)
    return text[:140]


def cause_of(row: dict) -> str:
    error = row["error"]
    if row["stage"] == "build" and "no config level builds and runs" in error:
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
        return "eval output not verified" + (" (meta device)" if row["device"] == "meta" else "")
    parts = []
    if "slots no engine site carries" in reason:
        parts.append("native slots the engine does not carry")
    if "engine sites in no holder" in reason:
        parts.append("engine sites outside timm's slot holders")
    if "holders that differ" in reason:
        parts.append("holders with another count (None slots)")
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
    for library in ("hf", "timm"):
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
    if zero:
        z_ok = sum(1 for r in zero if r["site_parity"])
        lines.append(f"timm: {len(zero)} models take `drop_path_rate` but apply it to no residual branch; the engine "
                     f"agrees (no site outside timm's holders) on {z_ok}")
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
    cache = [r for r in rows if "with use_cache=False" in r["note"]]
    if cache:
        fixed = sum(1 for r in cache if "with use_cache=False: " in r["note"] and "verified True" in r["note"])
        lines.append(f"hf: {len(cache)} types failed with the default config and were retried with `use_cache=False`:"
                     f" {fixed} then patch and verify")
    return lines


def render(out_dir: Path) -> str:
    import timm
    import torch
    import transformers

    rows, runs = load(out_dir)
    wall = sum(r["wall_s"] for r in runs)
    cpu = sum(r["total_s"] or 0 for lib in rows.values() for r in lib)
    out = ["# Sweep: every timm model and every Hugging Face AutoModel type", ""]
    out.append(
        f"Generated by `python scripts/sweep.py hf timm` (do not edit by hand; how each model is built and judged "
        f"is in the docstring of `scripts/droppath_coverage/sweep.py`): torch {torch.__version__}, timm "
        f"{timm.__version__}, transformers {transformers.__version__}, Python {platform.python_version()}; "
        f"1 torch thread per worker. Run time {wall / 60:.1f} min wall in {len(runs)} sessions "
        f"({cpu / 60:.1f} min summed over models). Drop rate 0.1, random weights; the raw results are in "
        f"`docs/sweep/timm.json` and `docs/sweep/hf.json`."
    )
    out += ["", "## Summary", ""]
    out += [f"- {line}" for line in hf_summary(rows["hf"]) + timm_summary(rows["timm"])]
    all_rows = rows["hf"] + rows["timm"]

    out += ["", "## Failures by cause", "",
            ("Models that could not be built, run on their automatic inputs, or patched (apply raised), grouped by "
            "cause (exception class and first line, numbers and names blanked); examples are the smallest models."),
            "", "| library | cause | models | examples |", "|---|---|---|---|"]
    groups = collections.defaultdict(list)
    for r in all_rows:
        if r["status"] != "ok":
            groups[(r["library"], cause_of(r))].append(r)
    for (library, cause), members in sorted(groups.items(), key=lambda kv: (kv[0][0], -len(kv[1]))):
        out.append(f"| {library} | {_cell(cause)} | {len(members)} | {_examples(members)} |")

    out += ["", "## timm models not at parity, by cause", "", "| cause | models | examples |", "|---|---|---|"]
    groups = collections.defaultdict(list)
    for r in rows["timm"]:
        if r["status"] == "ok" and r["native"] and not (r["site_parity"] and r["verified"]):
            groups[parity_cause(r)].append(r)
    for cause, members in sorted(groups.items(), key=lambda kv: -len(kv[1])):
        out.append(f"| {_cell(cause)} | {len(members)} | {_examples(members)} |")

    out += ["", "## timm per family", "",
            ("*at parity*: N of M models with drop path slots on a residual branch; *no slots*: models without "
            "`drop_path_rate` (or whose drop path is on no residual), with the engine's sites; *failed*: did not "
            "patch or run."), "", "| family | models | at parity | no slots (sites found) | failed | not at parity |",
            "|---|---|---|---|---|---|"]
    families = collections.defaultdict(list)
    for r in rows["timm"]:
        families[r["family"]].append(r)
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

    out += ["", "## Hugging Face per model type", "",
            ("*build*: the config level used (`tiny`: 2 layers, width 64, ...; `layers only`; `default`); *sites / "
            "layers*: engine sites and the config's layer count (a decoder layer has two branches); *slots*: HF's "
            "own drop path slot calls on a residual, and how many an engine site carries; *why not*: the error "
            "when apply_drop_path(model, 0.1) did not patch and verify."), "",
            "| model type | class | build | sites | layers | verified | slots (carried) | patch s | why not / notes |",
            "|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows["hf"], key=lambda r: r["name"]):
        slots = "-" if r["native"] is None else f"{r['native']} ({r['carried']})"
        why = r["error"] if r["status"] != "ok" else ""
        if r["status"] == "ok" and not r["verified"]:
            why = "eval output not verified"
        notes = "; ".join(p for p in (why, r["note"] if "use_cache" in r["note"] else "", r["parity_reason"]
                                      if r["native"] else "") if p)
        out.append(f"| {r['name']} | {r['cls']} | {_cell(r['build'])} | {_cell(r['sites'])} | {_cell(r['layers'])} | "
                   f"{_cell(r['verified'])} | {slots} | {_cell(r['patch_s'])} | {_cell(notes[:300])} |")
    return "\n".join(out) + "\n"
