"""The judge: the engine's sites against the oracle's expected branches, and the row that records it.

``compare`` matches slots by the tensor they carry and the rest by count per holder, then rates per
slot and per holder; ``run_engine`` patches a model as a user would and checks its eval output;
``judge_timm_schedule`` and ``judge_skipping`` fill the ``schedule="timm"`` and skip columns.
"""

from __future__ import annotations

import collections
import re
import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from droppath_surgery import apply_drop_path, build_example_inputs, remove_drop_path, set_drop_path_rate

from .catalog import CONVENTIONS, RATE, TOL
from .oracles import Expected, eval_forward, observe_outputs
from .text import join, listing, rates_text, short


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
    timm_site: str = "n/a"  # site parity with schedule="timm" (timm rows; it leaves out branches timm has no slot for)
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


def compare(sites, expected: Expected, check_rates: bool, flow: dict | None = None, rate: float = RATE):
    """The engine's sites against the expected branches.

    1. Each call of a slot that the model under test holds as a module claims the site that carries
       it: in one eval forward of the patched model (``flow``: outputs per module path), the site's
       output is the very tensor the slot outputs (Identity and DropPath return their input, so a
       site at the slot, or on the module whose output flows through it, carries it); without
       ``flow``, the site that replaced the slot itself.
    2. Every other site goes to the innermost holder whose module contains it (site path under the
       holder's path); a site in no holder is extra. Each holder must get exactly as many sites as
       it has branches matched by count.
    3. Rates: each claimed site's rate is its slot's native rate, and each holder's sites have the
       native rates of its count-matched branches (sorted), to ``TOL``.

    Returns (site parity, rate parity or None when there is no rate oracle or nothing to compare,
    reasons).
    """
    sites = list(sites)
    used = [False] * len(sites)
    lost, moved, bad = [], [], []
    compared = 0
    for slot in expected.slots:
        outs = (flow or {}).get(slot.path)
        carried = []
        for k in slot.calls:
            target = outs[k] if outs is not None and k < len(outs) else None
            j = next((i for i, s in enumerate(sites) if not used[i] and carries(s, slot.path, target, flow)), None)
            if j is None:
                lost.append(slot.path + (f" (call {k})" if len(slot.calls) > 1 else ""))
                continue
            used[j] = True
            carried.append(sites[j].rate)
            if sites[j].path != slot.path:
                moved.append(f"{sites[j].kind} {sites[j].path} for {slot.path}")
        if carried:
            compared += 1
            if any(abs(r - slot.rate) > TOL for r in carried):
                bad.append(f"{slot.path}: native {slot.rate:.6g}, engine {rates_text(carried)}")
    got: dict[str, list] = collections.defaultdict(list)
    extra = []
    for i, s in enumerate(sites):
        if used[i]:
            continue
        h = expected.innermost_holder(s.path)
        if h is None:
            extra.append(s)
        else:
            got[h].append(s)
    differ = []
    for path, h in expected.holders.items():
        mine = got.get(path, [])
        if len(mine) != h.free:
            want = listing(h.what, 2) if h.what else "none"
            engine = listing([f"{s.kind} {s.path}" for s in mine], 3)
            differ.append(f"{path or '(model)'}: expected {h.free} by count [{want}], engine {len(mine)} [{engine}]")
        if h.rates and mine:
            compared += 1
            want_r, got_r = sorted(h.rates), sorted(s.rate for s in mine)
            if len(want_r) == len(got_r):
                ok = all(abs(x - y) <= TOL for x, y in zip(want_r, got_r))
            else:  # different branch counts: every rate of the holder must agree
                ok = all(abs(x - y) <= TOL for x in want_r for y in got_r)
            if not ok:
                bad.append(f"{path or '(model)'}: native {rates_text(want_r)}, engine {rates_text(got_r)}")
    reasons = []
    if lost or extra or differ:
        n_slots = sum(len(s.calls) for s in expected.slots)
        reasons.append(
            f"engine: {len(sites)} branches; expected {expected.count} ({n_slots} slots matched by tensor, "
            f"{expected.count - n_slots} by count in {sum(1 for h in expected.holders.values() if h.free)} holders)"
        )
        if lost:
            reasons.append(f"slots no engine site carries ({len(lost)}): " + listing(lost))
        if extra:
            reasons.append(f"engine sites in no holder ({len(extra)}): " + listing(
                [f"{s.kind} {s.path} (engine block {s.block_path})" for s in extra]))
        if differ:
            reasons.append(f"holders that differ ({len(differ)}): " + listing(differ, 3, sep="; "))
    if moved:
        carried = listing(sorted(set(moved)), 2)
        reasons.append(f"note: {len(moved)} branches carried by another module on the same tensor: {carried}")
    site_ok = not (lost or extra or differ)
    if not check_rates:
        return site_ok, None, reasons
    if bad:
        reasons.append(f"rates differ at {len(bad)} of {compared} slots and holders: " + listing(bad, 3, sep="; "))
        reasons.append(explain_rates(expected, len({s.block for s in sites}), rate))
    if not compared:  # nothing both sides have: nothing to compare, not a match
        return site_ok, None, reasons
    return site_ok, not bad, reasons


def carries(site, slot_path: str, target: Any, flow: dict | None) -> bool:
    if flow is None or target is None or site.path not in flow:
        return site.kind == "replace" and site.path == slot_path
    return any(_pick(o, tuple(site.output_index)) is target for o in flow[site.path])


def _pick(output: Any, index: tuple) -> Any:
    for i in index:
        try:
            output = output[i]
        except (KeyError, IndexError, TypeError):
            return None
    return output


def explain_rates(expected: Expected, engine_blocks: int, rate: float = RATE) -> str:
    """A one-line description of the native rates per holder (in call order), to tell a convention
    from a count."""
    per_holder: dict[str, list[float]] = {}
    for s in expected.native:
        per_holder.setdefault(s.holder, []).extend([s.rate] * s.calls)
    groups = list(per_holder.values())
    values = [v for g in groups for v in g]
    top = max(values, default=0.0)
    if not values or top <= 0:
        return ""
    if all(abs(v - top) <= TOL or v == 0 for v in values):
        zero = [g for g in groups if max(g) == 0]
        but = f", but 0 in {len(zero)} of its {len(groups)} holders" if zero else ""
        return f"native rates: uniform {top:.6g}{but}"
    if any(len({round(v, 6) for v in g}) > 1 for g in groups):
        return "native rates differ between the slots of one holder"
    for d in range(1, 1000):
        steps = [v * d / rate for v in values]
        if all(abs(k - round(k)) < 1e-3 for k in steps):
            ks = [round(g[0] * d / rate) for g in groups]
            return (
                f"native rates are r*k/{d} with k = {_klist(ks)} over its {len(groups)} holders here "
                f"(its formula counts {d + 1 if max(ks) == d else d} positions); "
                f"the engine numbers {engine_blocks} blocks"
            )
    return "native rates follow no r*k/d pattern"


def _klist(ks: list[int]) -> str:
    if ks == list(range(ks[0], ks[0] + len(ks))):
        return f"{ks[0]}..{ks[-1]}"
    return ",".join(str(k) for k in ks[:12]) + (",..." if len(ks) > 12 else "")


def outputs_equal(a: Any, b: Any) -> bool:
    """Bitwise equality of every tensor in two (nested) model outputs; NaNs equal where both are."""
    ta, tb = list(tensors(a)), list(tensors(b))
    if len(ta) != len(tb):
        return False
    for x, y in zip(ta, tb):
        if x.shape != y.shape or x.dtype != y.dtype:
            return False
        if x.is_meta:
            continue
        if x.is_floating_point() or x.is_complex():
            if not torch.equal(torch.isnan(x), torch.isnan(y)):
                return False
            if not torch.equal(torch.nan_to_num(x), torch.nan_to_num(y)):
                return False
        elif not torch.equal(x, y):
            return False
    return True


def tensors(obj: Any, depth: int = 0):
    if isinstance(obj, Tensor):
        yield obj
    elif depth < 5 and isinstance(obj, (tuple, list)):
        for o in obj:
            yield from tensors(o, depth + 1)
    elif depth < 5 and isinstance(obj, dict):
        for o in obj.values():
            yield from tensors(o, depth + 1)


@dataclass
class EngineRun:
    report: Any
    args: tuple
    kwargs: dict


def run_engine(
    row: Row, model: nn.Module, schedule: str, example_inputs: Any = None, rate: float = RATE
) -> EngineRun | None:
    """Patch ``model`` as a user would, time it, and check the eval output; fills the row's engine
    columns. Returns the report with the inputs used (None on error, with the reason in the row)."""
    if example_inputs is None:
        args, kwargs = build_example_inputs(model)
    else:
        args, kwargs = ((example_inputs,), {}) if isinstance(example_inputs, Tensor) else ((), dict(example_inputs))
    try:
        before = eval_forward(model, args, kwargs)
    except Exception as exc:  # noqa: BLE001 - any failure becomes the row's reason
        row.site = "no"
        row.reason = f"the model does not run on its example inputs {_shapes(args, kwargs)}: {short(exc)}"
        return None
    start = time.perf_counter()
    try:
        report = apply_drop_path(model, rate, schedule=schedule, example_inputs=example_inputs)
    except Exception as exc:  # noqa: BLE001 - any failure becomes the row's reason
        row.patch_s = time.perf_counter() - start
        row.reason = short(exc)
        row.eval_ok = "n/a"
        row.site = "no"
        return None
    row.patch_s = time.perf_counter() - start
    row.branches, row.blocks = len(report.sites), report.num_blocks
    same = outputs_equal(before, eval_forward(model, args, kwargs))
    row.eval_ok = "yes" if (report.verified is True and same) else "no"
    if row.eval_ok == "no":
        check = "passed" if same else "FAILED"
        row.reason = join(
            row.reason, f"eval output: report.verified={report.verified}, independent bitwise check {check}"
        )
    kinds = collections.Counter(s.kind for s in report.sites)
    row.info = ", ".join(f"{n} {k}" for k, n in sorted(kinds.items()))
    if report.skipped:
        row.reason = join(row.reason, f"engine skipped {len(report.skipped)} branches: " + listing(
            [f"{k.path} ({k.reason})" for k in report.skipped], 2, sep="; "))
    return EngineRun(report, args, kwargs)


def _shapes(args: tuple, kwargs: dict) -> str:
    shapes = [tuple(t.shape) for t in (*args, *kwargs.values()) if isinstance(t, Tensor)]
    return ", ".join(str(s) for s in shapes)


def compare_patched(model: nn.Module, run: EngineRun, sites, expected: Expected, check_rates: bool, rate: float = RATE):
    """``compare`` the sites of the patched ``model`` with the expected branches, slot calls matched by
    the tensors one eval forward on the run's inputs carries."""
    paths = {s.path for s in expected.slots} | {s.path for s in sites}
    flow = observe_outputs(model, run.args, run.kwargs, paths)
    return compare(sites, expected, check_rates, flow, rate)


def judge(row: Row, model: nn.Module, run: EngineRun, expected: Expected, *, check_rates: bool,
          schedule: str | None, convention: str, rate: float = RATE) -> None:
    """Fill the row's site / rate columns from the engine's sites and the expected branches."""
    site_ok, rate_ok, reasons = compare_patched(model, run, run.report.sites, expected, check_rates, rate)
    row.site = "yes" if site_ok else "no"
    if check_rates:
        if schedule is None:
            rate_ok = False
            reasons.append(f"no named schedule implements the {convention} convention ({CONVENTIONS[convention][0]})")
        row.rate = "n/a" if rate_ok is None else "yes" if rate_ok else "no"
    row.reason = join(row.reason, *reasons)


def judge_timm_schedule(row: Row, model: nn.Module, run: EngineRun, example: Any, expected: Expected) -> None:
    """Re-patch with ``schedule="timm"`` (rates read off timm's meta build at drop_path_rate=1, scaled;
    branches timm has no slot for left out) and judge sites and rates against the real build at
    ``RATE`` as for the named schedule."""
    try:
        report = apply_drop_path(model, RATE, schedule="timm", example_inputs=example)
    except Exception as exc:  # noqa: BLE001 - any failure becomes the row's reason
        row.timm_site = row.timm_rate = "no"
        row.reason = join(row.reason, f"schedule='timm': {short(exc)}")
        return
    site_ok, ok, reasons = compare_patched(model, run, report.sites, expected, True)
    row.timm_site = "yes" if site_ok else "no"
    row.timm_rate = "n/a" if ok is None else "yes" if ok else "no"
    if not site_ok or ok is False:
        row.reason = join(row.reason, "schedule='timm': " + join(*[r for r in reasons if not r.startswith("note")]))


def judge_skipping(row: Row, model: nn.Module, run: EngineRun, example_inputs: Any = None) -> None:
    """Patch with ``skip_dropped=True`` (``min_skip_rate=0``: every branch that can skip does) and
    record how many branches skip, why the others mask, and whether one training forward and
    backward at rate 0.5 runs (a batch of 2 keeps 1 sample per branch) with a finite loss."""
    try:
        report = apply_drop_path(model, RATE, example_inputs=example_inputs, skip_dropped=True, min_skip_rate=0.0)
    except Exception as exc:  # noqa: BLE001 - any failure becomes the row's reason
        row.skip_note = short(exc)
        return
    row.skipping = sum(s.compute == "skip" for s in report.sites)
    row.skip_sites = len(report.sites)
    # Reasons counted with their numbers (shapes, sizes) blanked, so one cause is one entry.
    why = collections.Counter(
        re.sub(r"\d+", "#", n.split(": ", 2)[-1])[:120] for n in report.notes if n.startswith("masks instead")
    )
    more = f"; ... (+{len(why) - 2} more reasons)" if len(why) > 2 else ""
    row.skip_note = "; ".join(f"{n} x {r}" for r, n in why.most_common(2)) + more
    set_drop_path_rate(model, 0.5, schedule="uniform")
    was = model.training
    try:
        model.train()
        out = model(*run.args, **run.kwargs)
        outputs = [t for t in tensors(out) if t.is_floating_point() and t.requires_grad]
        if not outputs:
            raise RuntimeError("no output tensor requires grad")
        loss = sum(t.float().sum() for t in outputs)
        loss.backward()
        if not torch.isfinite(loss):
            raise RuntimeError(f"loss {loss.item()}")
        row.skip_train = "ok"
    except Exception as exc:  # noqa: BLE001 - any failure becomes the row's reason
        row.skip_train = "FAILED"
        row.skip_note = join(row.skip_note, f"training step: {short(exc)}")
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was)
        remove_drop_path(model)
