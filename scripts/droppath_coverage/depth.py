"""The depth check: do the engine's stacks and its per-layer schedule hold when a model has more layers?

The sweep builds every Hugging Face type with 2 layers, where some rules cannot go wrong: grouping blocks
into stacks (a rule that sees each layer as a stack of its own gives every block rate 0 under the linear
schedule, and at 2 layers that looks like the first block of a ramp), sites that appear only between
layers. Here each type is built by the sweep's own config shrinking (``sweep.hf_build``) at several layer
counts (``layers``: every layer count the shrink sets, sub-configs' too), patched with
``apply_drop_path(model, RATE)`` (linear), and compared:

- per depth: the layers the config got, sites, blocks, stacks and each stack's blocks and block rates;
- problems (exit status 1): a depth that does not build or patch; every rate 0; a stack of several blocks
  whose rates are all zero, whose last block is not at ``RATE`` or whose rates fall (the linear schedule
  ramps each stack from 0 to the rate); more stacks at more layers (layers seen as stacks of their own);
- changes with depth, for a reader to judge: the number of stacks differs; a stack's sites per block
  differ (a site between layers, a block kind only the deeper stack has, a fixed part such as a projector
  in a stack that grows); a stack that keeps its blocks but not its sites; more stacks of one block;
- notes: a depth where the config got fewer layers than asked (its default has fewer), the same model at
  every depth (the layer counts the shrink sets do not reach its stacks: LXMERT's ``l_layers``).

    python scripts/depth_check.py                      # every type the sweep patches ok, 2 and 6 layers
    python scripts/depth_check.py --only neomme t5 --layers 2 4 8
"""

from __future__ import annotations

import itertools
import json
import sys
import time
import traceback
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .runner import Timeout, time_limit
from .sweep import RATE, Worker, drive, first_line, load, save, serve

ROOT = Path(__file__).resolve().parents[2]
SWEEP_JSON = ROOT / "docs" / "sweep" / "hf.json"
LAYERS = (2, 6)
TIMEOUT_S = 240  # per type, all its depths together
TOL = 1e-9


@dataclass
class Depth:
    """One type built at one layer count."""

    asked: int
    layers: int | None = None  # the config's text layer count, as the sweep reads it
    build: str = ""
    sites: int = 0
    blocks: int = 0
    verified: bool | None = None
    stacks: list[list[float]] = field(default_factory=list)  # per stack: its blocks' rates, in block order
    stack_sites: list[int] = field(default_factory=list)  # per stack: its sites
    stack_blocks: list[list[int]] = field(default_factory=list)  # per stack: its blocks with sites
    error: str = ""


@dataclass
class TypeCheck:
    name: str
    depths: list[Depth] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # wrong at some depth
    changes: list[str] = field(default_factory=list)  # structure that changes with depth, for a reader to judge
    notes: list[str] = field(default_factory=list)  # depths the shrink did not reach
    total_s: float = 0.0
    error: str = ""


def summarize(report: Any) -> tuple[list[list[float]], list[int], list[list[int]]]:
    """Per stack (in order of their number): the block rates (a block's highest) in block order, the sites,
    and the blocks with sites."""
    rates: dict[int, dict[int, float]] = {}
    sites: dict[int, int] = {}
    for s in report.sites:
        per_block = rates.setdefault(s.stack, {})
        per_block[s.block] = max(s.rate, per_block.get(s.block, s.rate))
        sites[s.stack] = sites.get(s.stack, 0) + 1
    keys = sorted(rates)
    return ([[r for _, r in sorted(rates[k].items())] for k in keys], [sites[k] for k in keys],
            [sorted(rates[k]) for k in keys])


def _ends_with_siteless(d: Depth, k: int) -> bool:
    """Whether stack ``k`` ends in blocks without sites (counted by the schedule, as timm counts a MobileNet's
    blocks without skip: its last block with sites is below the rate): blocks follow its last block with sites
    before the next stack's first, or the model's last block."""
    if not d.stack_blocks:
        return False
    last = d.stack_blocks[k][-1]
    later = [b for j, blocks in enumerate(d.stack_blocks) if j != k for b in blocks if b > last]
    return (min(later) if later else d.blocks) > last + 1


def probe(model_type: str, layers: int) -> Depth:
    """Build ``model_type`` as the sweep does, at ``layers``, patch it and read its stacks."""
    import torch

    from droppath_surgery import apply_drop_path

    from .sweep import _text_layers, hf_build

    out = Depth(layers)
    try:
        config, model_cls, out.build, _, _ = hf_build(model_type, layers=layers)
        out.layers = _text_layers(config)
        torch.manual_seed(0)
        model = model_cls(config)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            report = apply_drop_path(model, RATE)
    except Exception as exc:  # noqa: BLE001 - the failure is this depth's outcome
        out.error = first_line(exc)
        return out
    out.sites, out.blocks, out.verified = len(report.sites), report.num_blocks, report.verified
    out.stacks, out.stack_sites, out.stack_blocks = summarize(report)
    return out


def _fmt(rates: Sequence[float]) -> str:
    return "[" + " ".join(f"{r:.3g}" for r in rates) + "]"


def judge(check: TypeCheck, rate: float = RATE) -> None:
    """Fill ``problems``, ``changes`` and ``notes`` from the depths (see the module doc)."""
    check.problems, check.changes, check.notes = [], [], []
    ran = [d for d in check.depths if not d.error]
    for d in check.depths:
        if d.error:
            check.problems.append(f"{d.asked} layers: {d.error}")
    for d in ran:
        if d.layers is not None and d.layers < d.asked:
            check.notes.append(f"asked {d.asked} layers, the config has {d.layers}")
        if d.blocks >= 2 and d.stacks and all(r <= TOL for rates in d.stacks for r in rates):
            check.problems.append(f"{d.asked} layers: every rate is 0 ({d.blocks} blocks, {len(d.stacks)} stacks)")
            continue
        for k, rates in enumerate(d.stacks):
            if len(rates) >= 2 and all(r <= TOL for r in rates):
                check.problems.append(f"{d.asked} layers: stack {k} of {len(rates)} blocks has all-zero rates")
            elif len(rates) >= 2 and abs(rates[-1] - rate) > 1e-6 and not _ends_with_siteless(d, k):
                check.problems.append(f"{d.asked} layers: stack {k} ends at {rates[-1]:.4g}, not {rate}: {_fmt(rates)}")
            elif len(rates) >= 2 and any(b < a - TOL for a, b in itertools.pairwise(rates)):
                check.problems.append(f"{d.asked} layers: stack {k} does not ramp: {_fmt(rates)}")
    if len(ran) >= 2 and len({(d.sites, d.blocks, d.layers, len(d.stacks)) for d in ran}) == 1:
        check.notes.append(f"the same model at every depth ({ran[0].layers} layers as the sweep reads them): "
                           "the layer counts the shrink sets do not reach its stacks")
        return
    for low, d in itertools.pairwise(ran):
        if len(d.stacks) > len(low.stacks) and (d.layers or 0) > (low.layers or 0):
            check.problems.append(f"stacks multiply with the layers: {len(low.stacks)} at {low.asked} layers, "
                                  f"{len(d.stacks)} at {d.asked}")
            continue
        if len(d.stacks) != len(low.stacks):
            check.changes.append(f"stacks {len(low.stacks)} at {low.asked} layers -> {len(d.stacks)} at {d.asked}")
            continue
        for k, (a, b) in enumerate(zip(low.stacks, d.stacks, strict=True)):
            sa, sb = low.stack_sites[k], d.stack_sites[k]
            if len(a) == len(b):
                if sa != sb:
                    check.changes.append(f"stack {k}: {len(a)} blocks at every depth, sites {sa} -> {sb}")
                continue
            if abs(sa / len(a) - sb / len(b)) > TOL:
                check.changes.append(f"stack {k}: {sa} sites / {len(a)} blocks at {low.asked} layers -> "
                                     f"{sb} / {len(b)} at {d.asked}")
        singles = sum(1 for rates in d.stacks if len(rates) == 1)
        if singles > sum(1 for rates in low.stacks if len(rates) == 1):
            check.changes.append(f"{d.asked} layers: {singles} stacks of one block (rate 0)")


def check_type(model_type: str, layers: Sequence[int] = LAYERS) -> TypeCheck:
    check = TypeCheck(model_type, [probe(model_type, n) for n in layers])
    judge(check)
    return check


def sweep_ok_types(path: Path = SWEEP_JSON, max_s: float | None = None) -> list[str]:
    """The HF types the sweep patches ok (its zero-argument run), quickest first; ``max_s``: leave out those
    whose sweep row took longer (the biggest)."""
    rows = [r for r in json.loads(path.read_text()) if r["status"] == "ok"]
    rows = [r for r in rows if max_s is None or (r.get("total_s") or 0) <= max_s]
    return [r["name"] for r in sorted(rows, key=lambda r: (r.get("total_s") or 0, r["name"]))]


# -- worker pool ---------------------------------------------------------------------------------


def worker(layers: Sequence[int], timeout: float) -> int:
    """Read type names from stdin, answer one JSON ``TypeCheck`` a line on the real stdout."""

    def answer(line: str) -> dict:
        name = line.strip()
        start = time.perf_counter()
        try:
            with time_limit(timeout):
                check = check_type(name, layers)
        except Timeout as exc:
            check = TypeCheck(name, error=f"timeout: {exc}")
        except Exception as exc:  # noqa: BLE001
            traceback.print_exc()
            check = TypeCheck(name, error=first_line(exc))
        check.total_s = round(time.perf_counter() - start, 2)
        return asdict(check)

    return serve(answer)


def run(names: Sequence[str], layers: Sequence[int], workers: int, timeout: float, out: Path,
        log: Any = sys.stderr) -> dict[str, dict]:
    """Check ``names`` in a pool of worker processes, each type under ``timeout`` (a worker that hangs or dies is
    replaced); results go to ``out`` as they arrive, and types already there are not run again."""
    results = load(out)
    queue = [n for n in names if n not in results]
    print(f"depth check: {len(queue)} types to run ({len(names) - len(queue)} already in {out})", file=log, flush=True)
    errlog = open(out.with_suffix(".log"), "a")  # noqa: SIM115 - kept open for the workers' lifetime
    n = 0

    def arrived(name: str, record: dict) -> None:
        nonlocal n
        results[record["name"]] = record
        n += 1
        flag = "PROBLEM" if record["problems"] or record["error"] else "changes" if record["changes"] else "ok"
        print(f"[{n:4d} {record['total_s']:6.1f}s] {record['name']} {flag} "
              + "; ".join(record["problems"] + record["changes"])[:200] + record["error"][:200],
              file=log, flush=True)

    args = ["--timeout", str(timeout), "--layers", *map(str, layers)]
    try:
        drive(queue, lambda: Worker("depth_check.py", args, errlog), workers, timeout, str,
              lambda name, why, seconds: asdict(TypeCheck(name, total_s=seconds, error=why)), arrived,
              lambda: save(out, results))
    finally:
        errlog.close()
    return results


# -- the table -----------------------------------------------------------------------------------


def _stacks_text(d: dict) -> str:
    if d["error"]:
        return "error"
    return "+".join(str(len(s)) for s in d["stacks"]) or "0"


def rejudge(record: dict) -> dict:
    """A stored record judged again by this version's ``judge`` (the table is made from stored runs)."""
    check = TypeCheck(record["name"], [Depth(**d) for d in record["depths"]], total_s=record.get("total_s", 0.0),
                      error=record.get("error", ""))
    judge(check)
    return asdict(check)


def table(results: Sequence[dict], every: bool = False) -> str:
    """Markdown: a table of the types with problems or changes with depth (``every``: all types), then the
    types whose depth the shrink did not reach."""
    rows = [r for r in results if every or r["problems"] or r["changes"] or r["error"]]
    depths = next(([d["asked"] for d in r["depths"]] for r in results if r["depths"]), [])
    head = ["type"] + [f"{n} layers: layers / sites / blocks per stack" for n in depths] + ["problems", "changes"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in sorted(rows, key=lambda r: (not (r["problems"] or r["error"]), r["name"])):
        cells = [f"`{r['name']}`"]
        for d in r["depths"]:
            cells.append(f"{d['layers']} / {d['sites']} / {_stacks_text(d)}")
        cells += [""] * (len(head) - 2 - len(cells))
        cells.append("; ".join(r["problems"] + ([r["error"]] if r["error"] else [])).replace("|", "\\|"))
        cells.append("; ".join(r["changes"]).replace("|", "\\|"))
        lines.append("| " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n" if rows else "No type's stacks, sites or rates change with depth.\n"
    same = sorted(r["name"] for r in results if any(n.startswith("the same model") for n in r.get("notes", [])))
    if same:
        text += (f"\nThe same model at every depth ({len(same)}: the layer counts the shrink sets do not reach "
                 "their stacks): " + ", ".join(f"`{n}`" for n in same) + ".\n")
    return text


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--only", nargs="+", help="these HF model types (default: every type the sweep patches ok)")
    add("--layers", nargs="+", type=int, default=list(LAYERS), help="layer counts (default %(default)s)")
    add("--max-sweep-s", type=float, default=None,
        help="leave out the types whose sweep row took longer than this (the biggest)")
    add("--workers", type=int, default=2)
    add("--timeout", type=float, default=TIMEOUT_S, help="seconds per type, all depths (default %(default)s)")
    add("--out", default="/tmp/depth-check.json", help="results JSON (resumed; default %(default)s)")
    add("--render", action="store_true", help="only print the table of the results already in --out")
    add("--all-rows", action="store_true", help="table every type, not only those that change")
    add("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    layers = sorted(set(args.layers))
    if args.worker:
        return worker(layers, args.timeout)
    out = Path(args.out)
    if args.render:
        results = load(out)
        names = args.only or sorted(results)
    else:
        names = args.only or sweep_ok_types(max_s=args.max_sweep_s)
        out.parent.mkdir(parents=True, exist_ok=True)  # the workers' log goes beside it
        start = time.time()
        results = run(names, layers, args.workers, args.timeout, out)
        print(f"depth check took {(time.time() - start) / 60:.1f} min", file=sys.stderr)
    chosen = [rejudge(results[n]) for n in names if n in results]
    print(table(chosen, args.all_rows))
    bad = sum(1 for r in chosen if r["problems"] or r["error"])
    changed = sum(1 for r in chosen if r["changes"] and not (r["problems"] or r["error"]))
    print(f"{len(chosen)} types: {bad} with problems, {changed} more whose structure changes with depth")
    return 1 if bad else 0
