#!/usr/bin/env python
"""Regenerate ``docs/coverage.md``: what droppath-surgery finds on every timm model family, a zoo
of Hugging Face transformers built from small configs, and torchvision models, against where each
library places drop path itself.

    python scripts/coverage.py                      # full table -> docs/coverage.md (about 6 min, 2 cores)
    python scripts/coverage.py --subset --out -     # the CI subset, printed
    python scripts/coverage.py --only timm:resnet hf:Swin --out -

Everything runs on random weights (``pretrained=False``, Hugging Face models from small configs);
nothing is downloaded. One model failing never stops the table: each runs under a time limit and
any exception becomes a row with its reason.

How a row is judged
-------------------
For each model the engine runs exactly as a user would call it: ``apply_drop_path(model, RATE,
schedule=...)`` on the model built *without* drop path (timm ``create_model(name)``), timed (that is
"patch s"). Then:

* **eval unchanged**: ``report.verified`` is True *and* an independent check here: the eval output
  before patching and after it are bitwise equal (same seed before each forward).
* **native branches**: where the library places drop path itself, read off a second build of the
  same model *with* drop path (timm ``create_model(name, drop_path_rate=RATE)``; HF config
  ``drop_path_rate=RATE``; torchvision ``stochastic_depth_prob=RATE``). Its *slots* are the modules
  whose class name contains ``DropPath`` / ``StochasticDepth``, plus every attribute of the same
  name on a module of the same class that holds ``nn.Identity`` or ``None`` instead (the slots of
  blocks whose rate is 0: timm builds ``Identity``, ResNet ``None``). A slot counts once per call in
  one eval forward of that build (``None`` slots are set to a counting ``Identity`` for this), so
  slots that forward never uses (EfficientNet blocks without skip hold one) are not counted, and a
  module used for both branches of a block (HF Dinov2, torchvision Swin) counts twice.
* **site parity**, compared per block. A slot's block is found from the module tree: the innermost
  strict ancestor of the slot that is an element of a ``Sequential``/``ModuleList``/``ModuleDict``
  and not itself a container. That is the rule the engine applies to the call stack of a merge, so
  the two sides name blocks the same way (``blocks.3``, ``layer1.0``, ``stages.2.1`` for LowFormer's
  ``stages.2.1.attn.drop_path``). A block matches when
    - every slot that is a module in the model under test (``Identity``, a DropPath) is a site of
      the engine at exactly that path (``kind == "replace"``), as many times as it is called; and
    - the remaining sites of the block (hooks, and replacements elsewhere) are exactly as many as
      the block's other expected branches: ``None`` slots (ResNet-style blocks, where the engine has
      to hook a module such as ``bn3``; only their number per block can be compared) and, for
      Hugging Face / torchvision, the branches that the architecture has but the library does not
      drop (HF Swin's MLP branch).
  Site parity holds when the engine's blocks are exactly the expected blocks and each matches.
  For models without native drop path (HF ViT, CLIP, BERT, torchvision ResNet / ViT) the expected
  blocks are the modules of the architecture's block class with its number of residual branches
  (``HF_MODELS`` / ``TV_MODELS`` below, read off each library's source).
* **rate parity**: with the named schedule that implements the family's convention
  (``TIMM_CONVENTION`` / the ``convention`` of each HF / torchvision entry, see ``CONVENTIONS``), the
  rates per block equal the native build's slot rates (``drop_prob`` / ``p``; 0 for ``Identity`` /
  ``None``) to 1e-6: sorted per block, and on every block both sides have. Branches the library does
  not drop take the rate of their block's native slots. A convention that no entry of
  ``droppath_surgery.SCHEDULES`` implements (checked by value, n = 1..40) fails rate parity with
  that reason. Models with no native drop path have no rate oracle (``n/a``).

* **site and rate parity with ``schedule="timm"``** (timm rows): the model is patched again with
  ``apply_drop_path(model, RATE, schedule="timm")``, whose rates come from a meta-device build at
  ``drop_path_rate=1`` scaled by ``RATE`` and which leaves out branches timm has no slot for, and
  judged as above against the real build at ``RATE``. This checks how the schedule maps timm's
  slots to the engine's branches and that timm's conventions are linear in the rate; it is not an
  independent derivation of the convention (the schedule reads it from timm).

* **skip** (every row the engine patched): ``apply_drop_path(model, RATE, skip_dropped=True,
  min_skip_rate=0)``: the branches whose compute is skipped for dropped samples out of all, the
  reasons the others mask (from ``report.notes``), and one training forward and backward at rate
  0.5 (uniform) on the example inputs, which must give a finite loss. Informative, not part of parity.

A family is "at parity" when site parity, rate parity (or ``n/a``) and eval unchanged all hold;
"at parity, `timm`" the same with the ``schedule="timm"`` rate parity.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import platform
import re
import signal
import sys
import time
import traceback
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from droppath_surgery import SCHEDULES, apply_drop_path, remove_drop_path, set_drop_path_rate  # noqa: E402
from droppath_surgery import build_example_inputs as build_inputs  # noqa: E402

RATE = 0.1
TOL = 1e-6
DEFAULT_TIMEOUT_S = 240
CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)

# ------------------------------------------------------------------------------------------------
# Rate conventions and the named schedule that implements each
# ------------------------------------------------------------------------------------------------


def _linspace(r: float, n: int) -> list[float]:
    return [r * i / (n - 1) if n > 1 else 0.0 for i in range(n)]


CONVENTIONS: dict[str, tuple[str, Callable[[float, int], list[float]]]] = {
    # name: (formula, rates of n blocks for top rate r)
    "linear": ("r*i/(n-1): linspace(0, r, n); timm calculate_drop_path_rates, timm ResNet, BEiT, Swin, ConvNeXt", _linspace),
    "uniform": ("r for every block: DeiT III, CaiT, MLP-Mixer, DINOv2", lambda r, n: [r] * n),
    "per_n": ("r*i/n: timm's EfficientNet builder, torchvision EfficientNet (last block below r)", lambda r, n: [r * i / n for i in range(n)]),
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
        except Exception:  # a schedule with another signature is simply not this one
            continue
    return None


# ------------------------------------------------------------------------------------------------
# Rows
# ------------------------------------------------------------------------------------------------


@dataclass
class Row:
    library: str
    family: str
    model: str = ""
    branches: int | None = None  # sites the engine found
    blocks: int | None = None
    native: int | None = None  # branches the library drops itself (slot calls); None: no native drop path
    site: str = "n/a"  # yes / no / n/a
    rate: str = "n/a"
    eval_ok: str = "n/a"
    patch_s: float | None = None
    schedule: str = ""
    timm_site: str = "n/a"  # site parity with schedule="timm" (timm rows), which leaves out branches timm has no slot for
    timm_rate: str = "n/a"  # rate parity with schedule="timm" (timm rows): yes / no / n/a
    skipping: int | None = None  # with skip_dropped=True: branches that skip; None: not run or apply failed
    skip_sites: int | None = None  # ... out of this many
    skip_train: str = ""  # "ok" or "FAILED" (the training step); "" not run
    skip_note: str = ""  # why the other branches mask (the report's notes, counted), or the error
    counted: bool = True  # counts towards the library's "at parity" summary
    reason: str = ""  # why a check failed, or what the engine reported
    info: str = ""  # neutral remarks (paths, what was found)

    @property
    def at_parity(self) -> bool:
        return self.site == "yes" and self.rate in ("yes", "n/a") and self.eval_ok == "yes"

    @property
    def skip(self) -> str:
        """The *skip* cell: ``"k/n, train ok"``, ``"apply failed"`` or ``""`` (not run)."""
        if self.skipping is None:
            return "apply failed" if self.skip_note else ""
        return f"{self.skipping}/{self.skip_sites}, train {self.skip_train}"

    @property
    def at_parity_timm(self) -> bool:
        """At parity with ``schedule="timm"`` (timm's per-branch rates) instead of a named schedule."""
        return self.timm_site == "yes" and self.timm_rate == "yes" and self.eval_ok == "yes"


class _Timeout(Exception):
    pass


@contextlib.contextmanager
def time_limit(seconds: float | None):
    """Raise ``_Timeout`` in the main thread after ``seconds`` (POSIX; no limit elsewhere)."""
    import threading

    if not seconds or not hasattr(signal, "SIGALRM") or threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_alarm(signum, frame):
        raise _Timeout(f"timed out after {seconds:.0f} s")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def _short(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(str(exc).split())
    text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ------------------------------------------------------------------------------------------------
# Native slots (the oracle) and block matching
# ------------------------------------------------------------------------------------------------


def is_droppath_like(module: Any) -> bool:
    name = type(module).__name__.lower()
    return "droppath" in name or "stochasticdepth" in name


def _native_rate(module: Any) -> float:
    for attr in ("drop_prob", "p", "drop_rate", "drop_path_rate", "rate"):
        value = getattr(module, attr, None)
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, Tensor) and value.numel() == 1:
            return float(value)
    return float("nan")


def _twin_types(modules: dict[str, nn.Module]) -> set[type]:
    """Classes of modules that have a sibling of their own class (RegNet's ``s3.b1``, ``s3.b2``)."""
    by_parent: dict[str, list[type]] = collections.defaultdict(list)
    for name, m in modules.items():
        if name:
            by_parent[name.rpartition(".")[0]].append(type(m))
    return {t for types in by_parent.values() for t in types if types.count(t) > 1 and not issubclass(t, CONTAINERS)}


def tree_block(path: str, modules: dict[str, nn.Module]) -> str | None:
    """The innermost strict ancestor of ``path`` that is a non-container element of a container;
    in a model without containers, the innermost ancestor of a class that has twins somewhere
    (RegNet's ``s1.b1``, alone in its stage, is a block like ``s3.b1``), as the engine decides."""
    parts = path.split(".")
    for k in range(len(parts) - 1, 0, -1):
        anc, parent = ".".join(parts[:k]), ".".join(parts[: k - 1])
        if isinstance(modules.get(parent), CONTAINERS) and not isinstance(modules.get(anc), CONTAINERS):
            return anc
    twins = _twin_types(modules)
    for k in range(len(parts) - 1, 0, -1):
        anc = ".".join(parts[:k])
        if type(modules.get(anc)) in twins:
            return anc
    return None


def stage_blocks(slots) -> None:
    """A slot's block that holds the blocks of other slots is a stage (LeViT's ``stages.1`` holds its
    residual downsampler and ``stages.1.blocks.*``): the slot belongs to the child of the stage on its
    path (``stages.1.downsample``), as the engine assigns a residual run inside a stage."""
    blocks = {s.block for s in slots if s.block is not None}
    for s in slots:
        if s.block is not None and any(b.startswith(s.block + ".") for b in blocks):
            s.block = ".".join(s.path.split(".")[: s.block.count(".") + 2])


@dataclass
class Slot:
    path: str
    block: str | None
    rate: float
    holds: str  # class name of what the native build holds there (DropPath, Identity, None)
    calls: int = 0  # calls whose output is merged into a residual
    off_residual: int = 0  # calls whose output is never added to another tensor within the block
    order: int = -1  # first call in the forward


_ADDS = {torch.add, Tensor.add, Tensor.add_, Tensor.__add__, Tensor.__iadd__, Tensor.__radd__}


class _MergeWatch(TorchFunctionMode):
    """Sees which slot outputs are added to another tensor while their block runs.

    A slot's output is *marked*; the mark follows it through operations whose other inputs are
    only parameters or numbers (``gamma * drop_path(x)``, ``x[:, :c]``), while the block that
    holds the slot is running. An addition of a marked tensor and another (non-parameter) tensor
    is a residual merge of that slot call. timm applies some drop paths off any residual (ByobNet
    blocks without a shortcut, whose whole output is dropped); those calls are not branches.
    """

    def __init__(self) -> None:
        super().__init__()
        self.marks: dict[int, tuple[Tensor, Any, Any]] = {}  # id(tensor) -> (tensor, call record, block token)
        self.active: set[int] = set()  # tokens of block calls now running

    def mark(self, t: Tensor, record: Any, token: Any) -> None:
        self.marks[id(t)] = (t, record, token)

    def _mark_of(self, t: Tensor):
        entry = self.marks.get(id(t))
        if entry is not None and entry[0] is t and id(entry[2]) in self.active:
            return entry
        return None

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        flat = [a for a in (*args, *kwargs.values()) if isinstance(a, Tensor)]
        for a in (*args, *kwargs.values()):
            if isinstance(a, (tuple, list)):
                flat.extend(x for x in a if isinstance(x, Tensor))
        marked = [(t, self._mark_of(t)) for t in flat]
        marked = [(t, m) for t, m in marked if m is not None]
        out = func(*args, **kwargs)
        if not marked:
            return out
        others = [t for t in flat if all(t is not mt for mt, _ in marked) and not isinstance(t, nn.Parameter)]
        if func in _ADDS and others:
            for _, (_, record, _) in marked:
                record["merged"] = True
        elif not others and len({id(m[1]) for _, m in marked}) == 1:
            _, (_, record, token) = marked[0]
            for o in (out if isinstance(out, (tuple, list)) else (out,)):
                if isinstance(o, Tensor):
                    self.mark(o, record, token)
        return out


def native_slots(model: nn.Module, run: Callable[[nn.Module], Any]) -> list[Slot]:
    """Drop-path slots of a model built with drop path, with their rates and how forward uses them.

    Slots are the drop-path-like modules and every ``nn.Identity`` or ``None`` held under one of
    their attribute names (``drop_path``, ``drop_path1``, ``stochastic_depth``, ...). ``run(model)``
    runs one eval forward; ``None`` slots are set to an ``nn.Identity`` first (the model is a
    throwaway oracle). Only slots whose output is added to a residual stream count
    (``Slot.calls``); the others are returned with ``calls == 0``.
    """
    modules = dict(model.named_modules())
    names = {path.rpartition(".")[2] for path, m in modules.items() if path and is_droppath_like(m)}
    slots: dict[str, Slot] = {}
    for path, m in list(modules.items()):
        for attr in names:
            full = f"{path}.{attr}" if path else attr
            held = m._modules.get(attr) if attr in m._modules else m.__dict__.get(attr, _MISSING)
            if held is None:
                setattr(m, attr, nn.Identity())
                slots[full] = Slot(full, None, 0.0, "None")
            elif isinstance(held, nn.Module) and is_droppath_like(held):
                slots[full] = Slot(full, None, _native_rate(held), type(held).__name__)
            elif isinstance(held, nn.Identity):
                slots[full] = Slot(full, None, 0.0, "Identity")
    modules = dict(model.named_modules())
    for s in slots.values():
        s.block = tree_block(s.path, modules)
    stage_blocks(slots.values())
    watch = _MergeWatch()
    counter = [0]
    records: list[tuple[Slot, dict]] = []
    tokens: dict[str, list] = {}  # scope path -> stack of tokens of its running calls
    handles = []

    def scope_of(slot: Slot) -> str:
        return slot.block if slot.block is not None else slot.path.rpartition(".")[0]

    for scope in {scope_of(s) for s in slots.values()}:
        def enter(mod, args, scope=scope):
            token = object()
            tokens.setdefault(scope, []).append(token)
            watch.active.add(id(token))

        def leave(mod, args, out, scope=scope):
            token = tokens[scope].pop()
            watch.active.discard(id(token))

        handles.append(modules[scope].register_forward_pre_hook(enter))
        handles.append(modules[scope].register_forward_hook(leave))
    for path, slot in slots.items():

        def hook(mod, args, out, slot=slot):
            if slot.order < 0:
                slot.order = counter[0]
                counter[0] += 1
            record = {"merged": False}
            records.append((slot, record))
            stack = tokens.get(scope_of(slot))
            if isinstance(out, Tensor) and stack:
                watch.mark(out, record, stack[-1])

        handles.append(modules[path].register_forward_hook(hook))
    try:
        with watch:
            run(model)
    finally:
        for h in handles:
            h.remove()
    for slot, record in records:
        if record["merged"]:
            slot.calls += 1
        else:
            slot.off_residual += 1
    return sorted((s for s in slots.values() if s.order >= 0), key=lambda s: s.order)


_MISSING = object()


@dataclass
class Expected:
    """What one block should have: slot paths that are modules in the model under test (matched by
    the tensor they carry, one per call), and a number of further branches matched by count."""

    slot_paths: collections.Counter = field(default_factory=collections.Counter)
    free: int = 0
    rates: list[float] = field(default_factory=list)  # one per branch, when known
    order: int = 1 << 30

    @property
    def count(self) -> int:
        return sum(self.slot_paths.values()) + self.free


def expected_from_slots(slots: list[Slot], tested: nn.Module) -> dict[str, Expected]:
    """Blocks from the native build's slots (the calls merged into a residual); a slot is matched
    by the tensor it carries when the model under test holds a module there, by count otherwise
    (``None``)."""
    tested_modules = dict(tested.named_modules())
    out: dict[str, Expected] = {}
    for s in slots:
        if not s.calls:
            continue
        key = s.block if s.block is not None else f"(outside any block) {s.path}"
        exp = out.setdefault(key, Expected())
        exp.order = min(exp.order, s.order)
        if tested_modules.get(s.path) is not None:
            exp.slot_paths[s.path] += s.calls
        else:
            exp.free += s.calls
        exp.rates += [s.rate] * s.calls
    return out


def off_residual_note(slots: list[Slot]) -> str:
    off = [s for s in slots if s.off_residual and not s.calls]
    if not off:
        return ""
    return f"{len(off)} native slots are applied off any residual and not counted (" + _list([s.path for s in off], 3) + ")"


def observe_outputs(model: nn.Module, args: tuple, kwargs: dict, paths) -> dict[str, list]:
    """The outputs of each call of the modules at ``paths`` in one eval forward (kept alive, so
    tensor identity can be compared)."""
    modules = dict(model.named_modules())
    seen: dict[str, list] = {p: [] for p in paths if p in modules}
    handles = [modules[p].register_forward_hook(lambda m, a, o, p=p: seen[p].append(o)) for p in seen]
    try:
        eval_forward(model, args, kwargs)
    finally:
        for h in handles:
            h.remove()
    return seen


def _pick(output: Any, index: tuple) -> Any:
    for i in index:
        try:
            output = output[i]
        except (KeyError, IndexError, TypeError):
            return None
    return output


def compare(sites, expected: dict[str, Expected], check_rates: bool, flow: dict | None = None, rate: float = RATE):
    """Per-block comparison of the engine's sites with the expected blocks.

    A slot call is carried by a site of the same block when, in one eval forward of the patched
    model (``flow``: outputs per module path), the site's output is the very tensor the slot
    outputs (Identity and DropPath return their input, so a site at the slot, or on the module
    whose output flows through it, carries it); without ``flow``, when the site replaced the slot
    itself. The other sites of the block must be exactly as many as its other expected branches.
    Returns (site parity, rate parity or None when there is no rate oracle or no block both sides
    have, reasons).
    """
    ours: dict[str, list] = collections.defaultdict(list)
    for s in sites:
        ours[s.block_path].append(s)
    reasons = []
    missing = [b for b in expected if b not in ours]
    extra = [b for b in ours if b not in expected]
    differ = []
    moved = []
    for b in expected:
        if b not in ours:
            continue
        exp, mine = expected[b], ours[b]
        used = [False] * len(mine)
        lost = []
        for path, count in exp.slot_paths.items():
            outs = (flow or {}).get(path)
            for k in range(count):
                target = outs[k] if outs is not None and k < len(outs) else None
                j = next((i for i, s in enumerate(mine) if not used[i] and _carries(s, path, target, flow)), None)
                if j is None:
                    lost.append(path)
                else:
                    used[j] = True
                    if mine[j].path != path:
                        moved.append(f"{mine[j].kind} {mine[j].path} for {path}")
        rest = used.count(False)
        if lost or rest != exp.free:
            want = [f"{p}" + (f" x{c}" if c > 1 else "") for p, c in sorted(exp.slot_paths.items())]
            if exp.free:
                want.append(f"{exp.free} more")
            got = [f"{s.kind} {s.path}" for s in mine]
            differ.append(f"{b}: expected [{', '.join(want)}], engine [{', '.join(got)}]")
    n_exp = sum(e.count for e in expected.values())
    if missing or extra or differ:
        reasons.append(f"engine: {len(sites)} branches in {len(ours)} blocks; expected {n_exp} in {len(expected)} blocks")
        if missing:
            reasons.append(f"blocks without engine site ({len(missing)}): " + _list(missing))
        if extra:
            reasons.append(f"engine blocks not expected ({len(extra)}): " + _list(extra))
        if differ:
            reasons.append(f"blocks that differ ({len(differ)}): " + _list(differ, 3, sep="; "))
    if moved:
        reasons.append(f"note: {len(moved)} branches carried by another module on the same tensor: " + _list(sorted(set(moved)), 2))
    site_ok = not (missing or extra or differ)
    if not check_rates:
        return site_ok, None, reasons
    bad = []
    compared = 0
    for b in expected:
        if b not in ours or not expected[b].rates:
            continue
        compared += 1
        want = sorted(expected[b].rates)
        got = sorted(s.rate for s in ours[b])
        if len(want) == len(got):
            ok = all(abs(x - y) <= TOL for x, y in zip(want, got))
        else:  # different branch counts: every rate of the block must agree
            ok = all(abs(x - y) <= TOL for x in want for y in got)
        if not ok:
            bad.append(f"{b}: native {_rates(want)}, engine {_rates(got)}")
    if bad:
        common = sum(1 for b in expected if b in ours)
        reasons.append(f"rates differ in {len(bad)} of {common} blocks: " + _list(bad, 3, sep="; "))
        reasons.append(explain_rates(expected, len({s.block for s in sites}), rate))
    if not compared:  # no block both sides have: nothing to compare, not a match
        return site_ok, None, reasons
    return site_ok, not bad, reasons


def _carries(site, slot_path: str, target: Any, flow: dict | None) -> bool:
    if flow is None or target is None or site.path not in flow:
        return site.kind == "replace" and site.path == slot_path
    return any(_pick(o, tuple(site.output_index)) is target for o in flow[site.path])


def explain_rates(expected: dict[str, Expected], engine_blocks: int, rate: float = RATE) -> str:
    """A one-line description of the native per-block rates, to tell a convention from a count."""
    blocks = [e for e in sorted(expected.values(), key=lambda e: e.order) if e.rates]
    values = [v for e in blocks for v in e.rates]
    top = max(values, default=0.0)
    if not values or top <= 0:
        return ""
    if all(abs(v - top) <= TOL or v == 0 for v in values):
        zero = [e for e in blocks if max(e.rates) == 0]
        return f"native rates: uniform {top:.6g}" + (f", but 0 in {len(zero)} of its {len(blocks)} blocks" if zero else "")
    if any(len({round(v, 6) for v in e.rates}) > 1 for e in blocks):
        return "native rates differ between the branches of one block"
    for d in range(1, 1000):
        steps = [v * d / rate for v in values]
        if all(abs(k - round(k)) < 1e-3 for k in steps):
            ks = [round(v * d / rate) for v in (e.rates[0] for e in blocks)]
            return (
                f"native rates are r*k/{d} with k = {_klist(ks)} over its {len(blocks)} blocks here "
                f"(its formula counts {d + 1 if max(ks) == d else d} blocks); the engine numbers {engine_blocks}"
            )
    return "native rates follow no r*k/d pattern"


def _klist(ks: list[int]) -> str:
    if ks == list(range(ks[0], ks[0] + len(ks))):
        return f"{ks[0]}..{ks[-1]}"
    return ",".join(str(k) for k in ks[:12]) + (",..." if len(ks) > 12 else "")


def _rates(values) -> str:
    uniq = sorted(set(round(v, 6) for v in values))
    return "/".join(f"{v:.6g}" for v in uniq)


def _list(items, limit: int = 4, sep: str = ", ") -> str:
    items = list(items)
    text = sep.join(items[:limit])
    return text + (f"{sep}... (+{len(items) - limit})" if len(items) > limit else "")


def outputs_equal(a: Any, b: Any) -> bool:
    """Bitwise equality of every tensor in two (nested) model outputs; NaNs equal where both are."""
    ta, tb = list(_tensors(a)), list(_tensors(b))
    if len(ta) != len(tb):
        return False
    for x, y in zip(ta, tb):
        if x.shape != y.shape or x.dtype != y.dtype:
            return False
        if x.is_meta:
            continue
        if x.is_floating_point() or x.is_complex():
            if not torch.equal(torch.isnan(x), torch.isnan(y)) or not torch.equal(torch.nan_to_num(x), torch.nan_to_num(y)):
                return False
        elif not torch.equal(x, y):
            return False
    return True


def _tensors(obj: Any, depth: int = 0):
    if isinstance(obj, Tensor):
        yield obj
    elif depth < 5 and isinstance(obj, (tuple, list)):
        for o in obj:
            yield from _tensors(o, depth + 1)
    elif depth < 5 and isinstance(obj, dict):
        for o in obj.values():
            yield from _tensors(o, depth + 1)


def eval_forward(model: nn.Module, args: tuple, kwargs: dict) -> Any:
    was = model.training
    model.eval()
    torch.manual_seed(0)
    with torch.no_grad():
        out = model(*args, **kwargs)
    model.train(was)
    return out


@dataclass
class EngineRun:
    report: Any
    args: tuple
    kwargs: dict


def run_engine(row: Row, model: nn.Module, schedule: str, example_inputs: Any = None, rate: float = RATE) -> EngineRun | None:
    """Patch ``model`` as a user would, time it, and check the eval output; fills the row's engine
    columns. Returns the report with the inputs used (None on error, with the reason in the row)."""
    if example_inputs is None:
        args, kwargs = build_inputs(model)
    else:
        args, kwargs = ((example_inputs,), {}) if isinstance(example_inputs, Tensor) else ((), dict(example_inputs))
    try:
        before = eval_forward(model, args, kwargs)
    except Exception as exc:
        row.site = "no"
        row.reason = f"the model does not run on its example inputs {_shapes(args, kwargs)}: {_short(exc)}"
        return None
    start = time.perf_counter()
    try:
        report = apply_drop_path(model, rate, schedule=schedule, example_inputs=example_inputs)
    except _Timeout:
        raise
    except Exception as exc:
        row.patch_s = time.perf_counter() - start
        row.reason = _short(exc)
        row.eval_ok = "n/a"
        row.site = "no"
        return None
    row.patch_s = time.perf_counter() - start
    row.branches, row.blocks = len(report.sites), report.num_blocks
    same = outputs_equal(before, eval_forward(model, args, kwargs))
    row.eval_ok = "yes" if (report.verified is True and same) else "no"
    if row.eval_ok == "no":
        row.reason = _join(row.reason, f"eval output: report.verified={report.verified}, independent bitwise check {'passed' if same else 'FAILED'}")
    kinds = collections.Counter(s.kind for s in report.sites)
    row.info = ", ".join(f"{n} {k}" for k, n in sorted(kinds.items()))
    if report.skipped:
        row.reason = _join(row.reason, f"engine skipped {len(report.skipped)} branches: " + _list(
            [f"{k.path} ({k.reason})" for k in report.skipped], 2, sep="; "))
    return EngineRun(report, args, kwargs)


def _shapes(args: tuple, kwargs: dict) -> str:
    shapes = [tuple(t.shape) for t in (*args, *kwargs.values()) if isinstance(t, Tensor)]
    return ", ".join(str(s) for s in shapes)


def compare_patched(model: nn.Module, run: EngineRun, sites, expected: dict[str, Expected], check_rates: bool,
                    rate: float = RATE):
    """``compare`` the sites of the patched ``model`` with the expected blocks, slot calls matched by
    the tensors one eval forward on the run's inputs carries."""
    paths = {p for e in expected.values() for p in e.slot_paths} | {s.path for s in sites}
    flow = observe_outputs(model, run.args, run.kwargs, paths)
    return compare(sites, expected, check_rates, flow, rate)


def judge(row: Row, model: nn.Module, run: EngineRun, expected: dict[str, "Expected"], *, check_rates: bool,
          schedule: str | None, convention: str, rate: float = RATE) -> None:
    """Fill the row's site / rate columns from the engine's sites and the expected blocks."""
    site_ok, rate_ok, reasons = compare_patched(model, run, run.report.sites, expected, check_rates, rate)
    row.site = "yes" if site_ok else "no"
    if check_rates:
        if schedule is None:
            rate_ok = False
            reasons.append(f"no named schedule implements the {convention} convention ({CONVENTIONS[convention][0]})")
        row.rate = "n/a" if rate_ok is None else "yes" if rate_ok else "no"
    row.reason = _join(row.reason, *reasons)


def _join(*parts: str) -> str:
    return "; ".join(p for p in parts if p)


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
    "cspnext": "cspnext_tiny", "davit": "davit_tiny", "deepseek_vit": "deepseek_vit_412m", "deit": "deit_tiny_patch16_224",
    "densenet": "densenet121", "dla": "dla46x_c", "dpn": "dpn48b", "edgenext": "edgenext_xx_small",
    "efficientformer": "efficientformer_l1", "efficientformer_v2": "efficientformerv2_s0", "efficientnet": "test_efficientnet",
    "efficientvim": "efficientvim_m1", "efficientvit_mit": "efficientvit_b0", "efficientvit_msra": "efficientvit_m0",
    "eva": "vit_tiny_patch16_dinov3_qkvb", "fasternet": "fasternet_t0", "fastvit": "fastvit_t8", "focalnet": "focalnet_tiny_srf",
    "gcvit": "gcvit_xxtiny", "gemma4_vit": "gemma4_vit_167m", "ghostnet": "ghostnet_050", "hardcorenas": "hardcorenas_b",
    "hgnet": "hgnetv2_b0", "hiera": "hiera_tiny_224", "hieradet_sam2": "sam2_hiera_tiny", "hrnet": "hrnet_w18_small",
    "iformer": "iformer_t", "inception_next": "inception_next_atto", "inception_resnet_v2": "inception_resnet_v2",
    "inception_v3": "inception_v3", "inception_v4": "inception_v4", "lcnetv2": "lcnetv2_small", "levit": "levit_128s",
    "lowformer": "lowformer_b0", "mambaout": "test_mambaout", "maxxvit": "test_coatnet", "metaformer": "poolformerv2_s12",
    "mlp_mixer": "gmlp_ti16_224", "mobilenetv3": "mobilenetv3_small_050", "mobilenetv5": "mobilenetv5_base",
    "mobilevit": "mobilevit_xxs", "mvitv2": "mvitv2_tiny", "naflexvit": "naflexvit_base_patch16_parfac_gap",
    "nasnet": "nasnetalarge", "nest": "nest_tiny", "nextvit": "nextvit_small", "nfnet": "test_nfnet", "pit": "pit_ti_224",
    "pnasnet": "pnasnet5large", "pvt_v2": "pvt_v2_b0", "qwen3_vit": "qwen3_vit_88m", "rdnet": "rdnet_tiny",
    "regnet": "regnetx_002", "repghost": "repghostnet_050", "repvit": "repvit_m1", "res2net": "res2next50",
    "resnest": "resnest14d", "resnet": "test_resnet", "resnetv2": "resnetv2_18", "rexnet": "rexnet_100",
    "selecsls": "selecsls42", "senet": "legacy_seresnet18", "sequencer": "sequencer2d_s", "shvit": "shvit_s1",
    "sknet": "skresnet18", "starnet": "starnet_s050", "swiftformer": "swiftformer_xs",
    "swin_transformer": "swin_tiny_patch4_window7_224", "swin_transformer_v2": "swinv2_tiny_window16_256",
    "swin_transformer_v2_cr": "swinv2_cr_tiny_224", "tiny_vit": "tiny_vit_5m_224", "tnt": "tnt_s_legacy_patch16_224",
    "tresnet": "tresnet_m", "twins": "twins_svt_small", "vgg": "vgg11", "visformer": "visformer_tiny",
    "vision_transformer": "test_vit", "vision_transformer_hybrid": "vit_tiny_r_s16_p8_224",
    "vision_transformer_relpos": "test_vit_relpos", "vision_transformer_sam": "samvit_base_patch16_224",
    "vitamin": "vitamin_small_224", "volo": "volo_d1_224", "vovnet": "ese_vovnet19b_slim_dw", "xception": "legacy_xception",
    "xception_aligned": "xception41p", "xcit": "xcit_nano_12_p8_224",
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
# None to let droppath_surgery.inputs build it). The native build gets the same kwargs and input.
TIMM_SMALL: dict[str, tuple[dict, int | None]] = {
    "deepseek_vit": (dict(img_size=112), 112),
    "gemma4_vit": (dict(img_size=96), 96),
    "qwen3_vit": (dict(img_size=96), 96),
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
    "the XCA blocks get the uniform rate; a named schedule cannot tell the second stack. To match, pass a list or `schedule='timm'`.",
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
    "swin_transformer": dict(img_size=112, window_size=7),
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
            except Exception:
                continue
            if best is None or (n, name) < best:
                best = (n, name)
        if best:
            out[family] = best[1]
    return out


def timm_accepts_drop_path_rate(name: str, kwargs: dict) -> tuple[bool, str]:
    import timm

    try:
        with torch.device("meta"):
            timm.create_model(name, pretrained=False, drop_path_rate=RATE, **kwargs)
        return True, ""
    except TypeError as exc:
        return False, _short(exc)


def _runner(args: tuple, kwargs: dict) -> Callable[[nn.Module], Any]:
    """One eval forward on ``args``/``kwargs`` (moved to the meta device for a meta model); with no
    inputs, the ones droppath_surgery.inputs builds for the model."""

    def run(model: nn.Module) -> None:
        if not args and not kwargs:
            a, k = build_inputs(model)
        else:
            meta = any(p.is_meta for p in model.parameters())
            move = (lambda t: t.to("meta") if meta and isinstance(t, Tensor) else t)
            a, k = tuple(move(t) for t in args), {n: move(t) for n, t in kwargs.items()}
        eval_forward(model, a, k)

    return run


def native_build(factory: Callable[[], nn.Module], args: tuple = (), kwargs: dict | None = None) -> list[Slot]:
    """The slots of the native build (with drop path): built and run on the meta device, or for
    real when the meta forward fails."""
    run = _runner(args, kwargs or {})
    try:
        with torch.device("meta"):
            model = factory()
        return native_slots(model, run)
    except _Timeout:
        raise
    except Exception:
        return native_slots(factory(), run)


def timm_row(family: str, subset: bool = False) -> Row:
    import timm

    name = TIMM_MODEL_OVERRIDES.get(family) or TIMM_MODELS.get(family) or pick_timm_models([family]).get(family, "")
    row = Row("timm", family, name)
    kwargs, side = TIMM_SMALL.get(family, ({}, None))
    kwargs = dict(kwargs)
    if subset:
        kwargs.update(SUBSET_KWARGS.get(family, {}))
    if kwargs:
        row.model += "(" + ", ".join(f"{k}={v}" for k, v in kwargs.items()) + ")"
    if family in TIMM_MODEL_OVERRIDES:
        row.info = f"not the smallest model ({TIMM_MODELS.get(family)}), which has no residual block with drop path"
    accepts, _ = timm_accepts_drop_path_rate(name, kwargs)
    row.counted = accepts
    convention = TIMM_CONVENTION.get(family, "linear")
    schedule = schedule_for(convention) if accepts else "linear"
    row.schedule = schedule or f"({convention}: none)"
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, **kwargs)
    example = torch.randn(2, 3, side, side, generator=torch.Generator().manual_seed(0)) if side else None
    run = run_engine(row, model, schedule or "linear", example)
    if side:
        row.model += f" at {side}x{side}"
    if not accepts:
        row.site = row.rate = "n/a"
        if run is not None:
            row.info = _join(f"{len(run.report.sites)} branches in {run.report.num_blocks} blocks", row.info)
            judge_skipping(row, model, run, example)
        return row
    slots = native_build(
        lambda: timm.create_model(name, pretrained=False, drop_path_rate=RATE, **kwargs), () if example is None else (example,)
    )
    row.native = sum(s.calls for s in slots)
    row.info = _join(row.info, off_residual_note(slots))
    if run is None:
        row.rate = "no"
        return row
    expected = expected_from_slots(slots, model)
    judge(row, model, run, expected, check_rates=True, schedule=schedule, convention=convention)
    judge_timm_schedule(row, model, run, example, expected)
    judge_skipping(row, model, run, example)
    return row


def judge_timm_schedule(row: Row, model: nn.Module, run: EngineRun, example: Any, expected: dict[str, Expected]) -> None:
    """Re-patch with ``schedule="timm"`` (rates read off timm's meta build at drop_path_rate=1, scaled;
    branches timm has no slot for left out) and judge sites and rates against the real build at
    ``RATE`` as for the named schedule."""
    try:
        report = apply_drop_path(model, RATE, schedule="timm", example_inputs=example)
    except _Timeout:
        raise
    except Exception as exc:  # noqa: BLE001 - any failure becomes the row's reason
        row.timm_site = row.timm_rate = "no"
        row.reason = _join(row.reason, f"schedule='timm': {_short(exc)}")
        return
    site_ok, ok, reasons = compare_patched(model, run, report.sites, expected, True)
    row.timm_site = "yes" if site_ok else "no"
    row.timm_rate = "n/a" if ok is None else "yes" if ok else "no"
    if not site_ok or ok is False:
        row.reason = _join(row.reason, "schedule='timm': " + _join(*[r for r in reasons if not r.startswith("note")]))


def judge_skipping(row: Row, model: nn.Module, run: EngineRun, example_inputs: Any = None) -> None:
    """Patch with ``skip_dropped=True`` (``min_skip_rate=0``: every branch that can skip does) and
    record how many branches skip, why the others mask, and whether one training forward and
    backward at rate 0.5 runs (a batch of 2 keeps 1 sample per branch) with a finite loss."""
    try:
        report = apply_drop_path(model, RATE, example_inputs=example_inputs, skip_dropped=True, min_skip_rate=0.0)
    except _Timeout:
        raise
    except Exception as exc:  # noqa: BLE001 - any failure becomes the row's reason
        row.skip_note = _short(exc)
        return
    row.skipping = sum(s.compute == "skip" for s in report.sites)
    row.skip_sites = len(report.sites)
    # Reasons counted with their numbers (shapes, sizes) blanked, so one cause is one entry.
    why = collections.Counter(re.sub(r"\d+", "#", n.split(": ", 2)[-1])[:120] for n in report.notes if n.startswith("masks instead"))
    row.skip_note = "; ".join(f"{n} x {r}" for r, n in why.most_common(2)) + (f"; ... (+{len(why) - 2} more reasons)" if len(why) > 2 else "")
    set_drop_path_rate(model, 0.5, schedule="uniform")
    was = model.training
    try:
        model.train()
        out = model(*run.args, **run.kwargs)
        outputs = [t for t in _tensors(out) if t.is_floating_point() and t.requires_grad]
        if not outputs:
            raise RuntimeError("no output tensor requires grad")
        loss = sum(t.float().sum() for t in outputs)
        loss.backward()
        if not torch.isfinite(loss):
            raise RuntimeError(f"loss {loss.item()}")
        row.skip_train = "ok"
    except _Timeout:
        raise
    except Exception as exc:  # noqa: BLE001
        row.skip_train = "FAILED"
        row.skip_note = _join(row.skip_note, f"training step: {_short(exc)}")
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was)
        remove_drop_path(model)


# ------------------------------------------------------------------------------------------------
# Hugging Face transformers
# ------------------------------------------------------------------------------------------------

_VIT = dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=64, image_size=32, patch_size=8)
_TEXT = dict(vocab_size=99, hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=64, max_position_embeddings=40)
_STAGES = dict(depths=[1, 1, 2, 1])
_SWIN = dict(image_size=32, patch_size=2, embed_dim=16, depths=[1, 1, 2, 1], num_heads=[1, 1, 2, 2], window_size=2)
_CONVNEXT = dict(hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 2, 1], image_size=32)


@dataclass
class HFCase:
    label: str  # row name
    cls: str  # transformers class
    config: str  # config class
    kwargs: dict
    block: str  # class of the architecture's blocks
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


def _hf_cases() -> list[HFCase]:
    vit = dict(_VIT)
    dino = {k: v for k, v in _VIT.items() if k != "intermediate_size"} | dict(mlp_ratio=2)
    cases = [
        HFCase("ViT", "ViTModel", "ViTConfig", vit, "ViTLayer", 2),
        HFCase("DeiT", "DeiTModel", "DeiTConfig", vit, "DeiTLayer", 2),
        HFCase("BEiT", "BeitModel", "BeitConfig", vit | dict(use_relative_position_bias=True), "BeitLayer", 2, "linear"),
        HFCase("Data2VecVision", "Data2VecVisionModel", "Data2VecVisionConfig", vit, "Data2VecVisionLayer", 2, "linear"),
        HFCase("Dinov2", "Dinov2Model", "Dinov2Config", dino, "Dinov2Layer", 2, "uniform"),
        HFCase("Dinov2WithRegisters", "Dinov2WithRegistersModel", "Dinov2WithRegistersConfig", dino, "Dinov2WithRegistersLayer", 2, "uniform"),
        HFCase("DINOv3-ViT", "DINOv3ViTModel", "DINOv3ViTConfig", vit, "DINOv3ViTLayer", 2, "uniform"),
        HFCase("ViT-MAE", "ViTMAEModel", "ViTMAEConfig", vit, "ViTMAELayer", 2),
        HFCase("ViT-MSN", "ViTMSNModel", "ViTMSNConfig", vit, "ViTMSNLayer", 2),
        HFCase("I-JEPA", "IJepaModel", "IJepaConfig", vit, "IJepaLayer", 2),
        HFCase("CLIP vision", "CLIPVisionModel", "CLIPVisionConfig", vit, "CLIPEncoderLayer", 2),
        HFCase("CLIP text", "CLIPTextModel", "CLIPTextConfig", _TEXT, "CLIPEncoderLayer", 2),
        HFCase("SigLIP vision", "SiglipVisionModel", "SiglipVisionConfig", vit, "SiglipEncoderLayer", 2),
        HFCase(
            "SigLIP2 vision", "Siglip2VisionModel", "Siglip2VisionConfig",
            {k: v for k, v in vit.items() if k != "image_size"} | dict(num_patches=16), "Siglip2EncoderLayer", 2,
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
            dict(image_size=[64, 64], embed_dim=8, depths=[1, 1, 2, 1], num_heads=[1, 1, 2, 2]), "HieraLayer", 2, "linear",
        ),
        HFCase("FocalNet", "FocalNetModel", "FocalNetConfig", dict(image_size=32, embed_dim=8, hidden_sizes=[16, 32, 64, 64], **_STAGES), "FocalNetLayer", 2, "linear"),
        HFCase(
            "VitDet", "VitDetModel", "VitDetConfig",
            {k: v for k, v in _VIT.items() if k != "intermediate_size"} | dict(pretrain_image_size=32, mlp_ratio=2),
            "VitDetLayer", 2, "linear",
        ),
        HFCase("BERT", "BertModel", "BertConfig", _TEXT, "BertLayer", 2),
        HFCase("RoBERTa", "RobertaModel", "RobertaConfig", _TEXT, "RobertaLayer", 2),
    ]
    heads = {  # the image-classification head of each vision model (the class name transformers would use)
        "ViT": "ViTForImageClassification", "DeiT": "DeiTForImageClassification", "BEiT": "BeitForImageClassification",
        "Data2VecVision": "Data2VecVisionForImageClassification", "Dinov2": "Dinov2ForImageClassification",
        "Dinov2WithRegisters": "Dinov2WithRegistersForImageClassification", "DINOv3-ViT": "DINOv3ViTForImageClassification",
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
            f"{label} (image classification)", cls, c.config, c.kwargs | dict(num_labels=3), c.block, c.per_block,
            c.convention, inputs=c.inputs,
        )
        for label, cls in heads.items()
        for c in [by_label[label]]
    ]


def _hf_config(case: HFCase, **extra):
    import transformers

    config_cls = getattr(transformers, case.config)
    model_cls = getattr(transformers, case.cls)
    wanted = model_cls.config_class
    if wanted is not config_cls and hasattr(wanted, "sub_configs") and "vision_config" in getattr(wanted, "sub_configs", {}):
        # e.g. CLIPForImageClassification takes a CLIPConfig: put the small vision config inside it.
        return wanted(vision_config=config_cls(**case.kwargs, **extra).to_dict(), **{k: v for k, v in case.kwargs.items() if k == "num_labels"})
    return config_cls(**case.kwargs, **extra)


def hf_row(case: HFCase) -> Row:
    import transformers

    row = Row("hf", case.label, case.cls)
    if not hasattr(transformers, case.cls):
        row.counted = False
        row.reason = f"transformers {transformers.__version__} has no {case.cls}"
        row.site = row.rate = row.eval_ok = "n/a"
        return row
    model_cls = getattr(transformers, case.cls)
    native = case.convention is not None
    convention = case.convention or "linear"
    schedule = schedule_for(convention)
    row.schedule = schedule or f"({convention}: none)"
    torch.manual_seed(0)
    model = model_cls(_hf_config(case, **({"drop_path_rate": 0.0} if native else {})))
    example = case.inputs(model) if case.inputs else None
    run = run_engine(row, model, schedule or "linear", example)
    expected: dict[str, Expected] = {}
    if native:
        slots = native_build(lambda: model_cls(_hf_config(case, drop_path_rate=RATE)), (), example or {})
        row.native = sum(s.calls for s in slots)
        row.info = _join(row.info, off_residual_note(slots))
        expected = expected_from_slots(slots, model)
    if not add_architecture_blocks(expected, model, case.block, case.per_block):
        row.reason = _join(row.reason, f"no {case.block} module in the model (the expected blocks)")
    if run is None:
        row.rate = "no" if native else "n/a"
        return row
    judge(row, model, run, expected, check_rates=native, schedule=schedule, convention=convention)
    judge_skipping(row, model, run, example)
    return row


def add_architecture_blocks(expected: dict[str, Expected], model: nn.Module, block_cls: str, per_block: int,
                            keep: Callable[[nn.Module], bool] = lambda m: True) -> int:
    """Expect ``per_block`` branches in every module of class ``block_cls``: those the library drops
    itself (already in ``expected``, matched by tensor) and the rest by count. A branch the library
    does not drop takes the rate of its block's native slots. Returns the number of such blocks."""
    found = 0
    for path, m in model.named_modules():
        if type(m).__name__ != block_cls or not keep(m):
            continue
        found += 1
        exp = expected.setdefault(path, Expected())
        exp.free = max(0, per_block - sum(exp.slot_paths.values()))
        if exp.rates:
            exp.rates += [exp.rates[0]] * (per_block - len(exp.rates))
    return found


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
# MBConv and two PartitionAttentionLayers, each its own block (they share the layer's rate).
TV_MODELS = [
    TVCase("vit_b_16", {"EncoderBlock": 2}, None),
    TVCase("swin_t", {"SwinTransformerBlock": 2}, "linear", 0.2),
    TVCase("swin_v2_t", {"SwinTransformerBlockV2": 2}, "linear", 0.2),
    TVCase("convnext_tiny", {"CNBlock": 1}, "linear", 0.1),
    TVCase("efficientnet_b0", {"MBConv": 1}, "per_n", 0.2, only_residual=True),
    TVCase("maxvit_t", {"MBConv": 1, "PartitionAttentionLayer": 2}, "linear", 0.2),
    TVCase("resnet50", {"Bottleneck": 1}, None),
]


def tv_row(case: TVCase) -> Row:
    import torchvision

    row = Row("torchvision", case.name, case.name)
    builder = getattr(torchvision.models, case.name)
    native = case.convention is not None
    convention = case.convention or "linear"
    schedule = schedule_for(convention)
    row.schedule = schedule or f"({convention}: none)"
    torch.manual_seed(0)
    model = builder(weights=None)
    run = run_engine(row, model, schedule or "linear", rate=case.rate)
    expected: dict[str, Expected] = {}
    if native:
        slots = native_build(lambda: builder(weights=None))
        row.native = sum(s.calls for s in slots)
        row.info = _join(row.info, off_residual_note(slots))
        expected = expected_from_slots(slots, model)
    keep = (lambda m: getattr(m, "use_res_connect", True)) if case.only_residual else (lambda m: True)
    for block_cls, per_block in case.blocks.items():
        add_architecture_blocks(expected, model, block_cls, per_block, keep)
    if run is None:
        row.rate = "no" if native else "n/a"
        return row
    judge(row, model, run, expected, check_rates=native, schedule=schedule, convention=convention, rate=case.rate)
    judge_skipping(row, model, run)
    return row


# ------------------------------------------------------------------------------------------------
# Driver and markdown
# ------------------------------------------------------------------------------------------------


def jobs(subset: bool = False, only: list[str] | None = None) -> list[tuple[str, str, Callable[[], Row]]]:
    """(library, family, thunk) for every row of the table (or of the subset)."""
    import timm

    out = []
    families = sorted(set(timm.list_modules()) | set(TIMM_MODELS))
    for f in families:
        out.append(("timm", f, lambda f=f: timm_row(f, subset=subset)))
    for case in _hf_cases():
        out.append(("hf", case.label, lambda c=case: hf_row(c)))
    for case in TV_MODELS:
        out.append(("torchvision", case.name, lambda c=case: tv_row(c)))
    if subset:
        out = [j for j in out if j[1] in SUBSET[j[0]]]
    if only:
        out = [j for j in out if f"{j[0]}:{j[1]}" in only or j[1] in only or j[0] in only]
    return out


def run_rows(subset: bool = False, only=None, timeout: float | None = DEFAULT_TIMEOUT_S, log=None) -> list[Row]:
    rows = []
    for library, family, thunk in jobs(subset, only):
        start = time.perf_counter()
        try:
            with time_limit(timeout), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                row = thunk()
        except BaseException as exc:  # one family never stops the table
            if isinstance(exc, KeyboardInterrupt):
                raise
            row = Row(library, family, reason=f"could not be checked: {_short(exc)}", site="no")
            if log and not isinstance(exc, _Timeout):
                traceback.print_exc(file=log)
        rows.append(row)
        if log:
            took = time.perf_counter() - start
            flag = "PARITY" if row.at_parity else ("info" if not row.counted else "FAIL")
            print(f"[{took:6.1f}s] {library}:{family} {row.model} {flag} {row.reason[:160]}", file=log, flush=True)
    return rows


def summary_lines(rows: list[Row]) -> list[str]:
    lines = []
    for library in ("timm", "hf", "torchvision"):
        mine = [r for r in rows if r.library == library]
        if not mine:
            continue
        counted = [r for r in mine if r.counted]
        ok = sum(r.at_parity for r in counted)
        if library == "timm":
            line = f"timm: {ok}/{len(counted)} families with drop_path_rate at parity"
            ok_timm = sum(r.at_parity_timm for r in counted)
            rates_timm = sum(r.timm_rate == "yes" for r in counted)
            compared = sum(r.timm_rate in ("yes", "no") for r in counted)
            line += (f" with a named schedule, {ok_timm}/{len(counted)} with `schedule=\"timm\"` "
                     f"(its rates match timm's in {rates_timm} of the {compared} families with blocks to compare)")
            rest = [r for r in mine if not r.counted]
            if rest:
                found = sum(1 for r in rest if r.branches)
                line += f"; {len(rest)} without drop_path_rate: residual branches found in {found}, none in {len(rest) - found}"
        elif library == "hf":
            line = f"hf: {ok}/{len(counted)} models at parity"
            absent = [r for r in mine if not r.counted]
            if absent:
                line += f" ({len(absent)} classes not in this transformers: " + ", ".join(r.model for r in absent) + ")"
        else:
            line = f"torchvision: {ok}/{len(counted)} models at parity"
        lines.append(line)
        ran = [r for r in mine if r.skip]
        if ran:
            some = sum(1 for r in ran if r.skipping)
            every = sum(1 for r in ran if r.skipping is not None and r.skipping == r.skip_sites)
            trained = sum(r.skip_train == "ok" for r in ran)
            lines.append(
                f"{library} with `skip_dropped=True`: branches skip in {some} of {len(ran)} models (all of them in "
                f"{every}), the rest mask; a training step ran in {trained}/{len(ran)}"
            )
    return lines


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    return str(value).replace("|", "\\|")


def to_markdown(rows: list[Row], elapsed: float, subset: bool) -> str:
    import timm
    import torchvision
    import transformers

    out = ["# Coverage", ""]
    out.append(
        "Generated by `python scripts/coverage.py` (do not edit by hand)"
        + (" from the CI subset" if subset else "")
        + f": torch {torch.__version__}, timm {timm.__version__}, transformers {transformers.__version__}, "
        f"torchvision {torchvision.__version__}, Python {platform.python_version()}, "
        f"{torch.get_num_threads()} threads; {elapsed / 60:.1f} min. Drop rate {RATE}, random weights."
    )
    out += ["", "## Summary", ""]
    out += [f"- {line}" for line in summary_lines(rows)]
    patched = sorted((r for r in rows if r.patch_s is not None), key=lambda r: -r.patch_s)[:5]
    if patched:
        out.append("- slowest patches: " + ", ".join(f"{r.library}:{r.family} ({r.model}) {r.patch_s:.1f} s" for r in patched))
    out += [
        "",
        "Columns: *branches* the engine found (blocks), *native* the branches the library drops itself in a",
        "build with drop path (`-`: none), *site* / *rate* parity against that build or the architecture's",
        "blocks, *eval* output bitwise unchanged after `apply_drop_path`, *patch s* its wall time (trace,",
        "attach and verify), *schedule* the named schedule used; for timm, *site, `timm`* and *rate, `timm`*",
        "the same with `schedule=\"timm\"` (each branch gets the rate timm's own constructor gives it, read",
        "off a meta-device build of the architecture, and branches timm has no slot for are left out:",
        "`droppath_surgery/timm_schedule.py`); *skip* how many branches run on the kept samples only with",
        "`skip_dropped=True, min_skip_rate=0` (the others mask, for the reasons listed below) and whether a",
        "training forward and backward at rate 0.5 then runs. How each is judged is in the docstring of",
        "`scripts/coverage.py`.",
    ]
    titles = {
        "timm": "timm (smallest model of each family)",
        "hf": "Hugging Face transformers (small configs)",
        "torchvision": "torchvision (random weights)",
    }
    for library in ("timm", "hf", "torchvision"):
        mine = [r for r in rows if r.library == library]
        if not mine:
            continue
        out += ["", f"## {titles[library]}", ""]
        timm_cols = library == "timm"
        head = ("| family | model | branches (blocks) | native | site | rate | eval | patch s | schedule | at parity |"
                + (" site, `timm` | rate, `timm` | at parity, `timm` |" if timm_cols else "") + " skip |")
        out += [head, "|" + "---|" * (head.count("|") - 1)]
        for r in mine:
            found = "-" if r.branches is None else f"{r.branches} ({r.blocks})"
            parity = ("**yes**" if r.at_parity else "no") if r.counted else "n/a"
            cells = [
                r.family, r.model, found, r.native, r.site, r.rate, r.eval_ok,
                None if r.patch_s is None else f"{r.patch_s:.2f}", r.schedule, parity,
            ]
            if timm_cols:
                cells += [r.timm_site, r.timm_rate, ("**yes**" if r.at_parity_timm else "no") if r.counted else "n/a"]
            cells.append(r.skip or None)
            out.append("| " + " | ".join(_cell(v) for v in cells) + " |")
    failures = [r for r in rows if r.counted and not r.at_parity]
    out += ["", "## Not at parity, with the reason", ""]
    if not failures:
        out.append("None.")
    for r in failures:
        why = WHY_NOT_AT_PARITY.get(f"{r.library}:{r.family}")
        line = f"- **{r.library}:{r.family}** (`{r.model}`): {_join(r.reason, r.info) or 'see the row'}"
        if r.library == "timm" and r.at_parity_timm:
            line += ". **At parity with `schedule='timm'`.**"
        out.append(line + (f"  \n  *Why:* {why}" if why else ""))
    stale = [r for r in rows if r.at_parity and f"{r.library}:{r.family}" in WHY_NOT_AT_PARITY]
    notes = [r for r in rows if r.counted and r.at_parity and (r.reason or "not the smallest" in r.info or "off any" in r.info)]
    if notes or stale:
        out += ["", "## Notes on rows at parity", ""]
        for r in notes:
            out.append(f"- {r.library}:{r.family} (`{r.model}`): {_join(r.reason, r.info)}")
        for r in stale:
            out.append(f"- {r.library}:{r.family}: at parity now; its entry in `WHY_NOT_AT_PARITY` is stale")
    info = [r for r in rows if not r.counted]
    if info:
        out += ["", "## Not compared (no native drop path to compare with, or the class does not exist)", ""]
        for r in info:
            what = f"{r.branches} branches in {r.blocks} blocks ({r.info})" if r.branches else ""
            out.append(f"- {r.library}:{r.family} (`{r.model}`): " + _join(what, r.reason))
    masking = [r for r in rows if r.skip_note]
    if masking:
        out += ["", "## Skipping: branches that mask instead, and why", ""]
        for r in masking:
            out.append(f"- {r.library}:{r.family} (`{r.model}`, {r.skip}): {r.skip_note}")
    out += ["", "## Conventions used for rate parity", ""]
    out.append("| convention | formula | named schedule |")
    out.append("|---|---|---|")
    for name, (formula, _) in CONVENTIONS.items():
        out.append(f"| {name} | {formula} | {schedule_for(name) or '(none in SCHEDULES)'} |")
    special = {f: c for f, c in TIMM_CONVENTION.items()}
    out.append("")
    out.append(
        "timm families use `linear` except: "
        + (", ".join(f"{f}: {c}" for f, c in sorted(special.items())) or "none")
        + ". Hugging Face and torchvision: see `HF_MODELS` / `TV_MODELS` in the script."
    )
    return "\n".join(out) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(ROOT / "docs" / "coverage.md"), help="markdown file to write, '-' for stdout")
    parser.add_argument("--json", help="also write the rows as JSON here")
    parser.add_argument("--subset", action="store_true", help="only the CI subset (a few families per library)")
    parser.add_argument("--only", nargs="+", help="rows to run: a library (timm, hf, torchvision), library:family or family")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, help="seconds per model (default %(default)s)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default %(default)s)")
    parser.add_argument("--pick-timm-models", action="store_true", help="print the smallest model of each timm family and exit")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.pick_timm_models:
        print(json.dumps(pick_timm_models(), indent=1))
        return 0
    start = time.perf_counter()
    rows = run_rows(args.subset, args.only, args.timeout, log=sys.stderr)
    elapsed = time.perf_counter() - start
    text = to_markdown(rows, elapsed, args.subset)
    if args.out == "-":
        print(text)
    else:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
        print(f"wrote {args.out}", file=sys.stderr)
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(r) for r in rows], indent=1))
    for line in summary_lines(rows):
        print(line, file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
