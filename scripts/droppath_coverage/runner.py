"""Running the table: one row per timm family, HF case and torchvision model, each built twice (the
model under test without drop path, the native build with it), under a time limit so that one model
failing never stops the table; and the command line (``main``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import sys
import threading
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import torch

from . import __doc__ as PACKAGE_DOC
from .catalog import (
    RATE,
    SUBSET,
    SUBSET_KWARGS,
    TIMM_CONVENTION,
    TIMM_MODEL_OVERRIDES,
    TIMM_MODELS,
    TIMM_SMALL,
    TV_MODELS,
    HFCase,
    TVCase,
    hf_cases,
    pick_timm_models,
    schedule_for,
)
from .judge import Row, judge, judge_skipping, judge_timm_schedule, run_engine
from .oracles import Expected, add_architecture_blocks, expected_from_slots, native_build, off_residual_note
from .render import summary_lines, to_markdown
from .text import join, short

ROOT = Path(__file__).resolve().parents[2]
SWEEP_DIR = ROOT / "docs" / "sweep"  # the sweep's JSON files, embedded in coverage.md
DEFAULT_TIMEOUT_S = 240


class Timeout(BaseException):
    """A row ran past its time limit (a BaseException, so that no ``except Exception`` swallows it)."""


@contextlib.contextmanager
def time_limit(seconds: float | None):
    """Raise ``Timeout`` in the main thread after ``seconds`` (POSIX; no limit elsewhere)."""
    if not seconds or not hasattr(signal, "SIGALRM") or threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_alarm(signum, frame):
        raise Timeout(f"timed out after {seconds:.0f} s")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


# ------------------------------------------------------------------------------------------------
# One row per library
# ------------------------------------------------------------------------------------------------


def timm_accepts_drop_path_rate(name: str, kwargs: dict) -> tuple[bool, str]:
    import timm

    try:
        with torch.device("meta"):
            timm.create_model(name, pretrained=False, drop_path_rate=RATE, **kwargs)
        return True, ""
    except TypeError as exc:
        return False, short(exc)


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
            row.info = join(f"{len(run.report.sites)} branches in {run.report.num_blocks} blocks", row.info)
            judge_skipping(row, model, run, example)
        return row
    slots = native_build(
        lambda: timm.create_model(name, pretrained=False, drop_path_rate=RATE, **kwargs),
        () if example is None else (example,),
    )
    row.native = sum(s.calls for s in slots)
    row.info = join(row.info, off_residual_note(slots))
    if run is None:
        row.rate = "no"
        return row
    expected = expected_from_slots(slots, model)
    judge(row, model, run, expected, check_rates=True, schedule=schedule, convention=convention)
    judge_timm_schedule(row, model, run, example, expected)
    judge_skipping(row, model, run, example)
    return row


def _hf_config(case: HFCase, **extra):
    import transformers

    config_cls = getattr(transformers, case.config)
    model_cls = getattr(transformers, case.cls)
    wanted = model_cls.config_class
    if wanted is not config_cls and "vision_config" in getattr(wanted, "sub_configs", {}):
        # e.g. CLIPForImageClassification takes a CLIPConfig: put the small vision config inside it.
        labels = {k: v for k, v in case.kwargs.items() if k == "num_labels"}
        return wanted(vision_config=config_cls(**case.kwargs, **extra).to_dict(), **labels)
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
    expected = Expected()
    if native:
        slots = native_build(lambda: model_cls(_hf_config(case, drop_path_rate=RATE)), (), example or {})
        row.native = sum(s.calls for s in slots)
        row.info = join(row.info, off_residual_note(slots))
        expected = expected_from_slots(slots, model)
    if not add_architecture_blocks(expected, model, case.block, case.per_block):
        row.reason = join(row.reason, f"no {case.block} module in the model (the expected holders)")
    if run is None:
        row.rate = "no" if native else "n/a"
        return row
    judge(row, model, run, expected, check_rates=native, schedule=schedule, convention=convention)
    judge_skipping(row, model, run, example)
    return row


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
    expected = Expected()
    if native:
        slots = native_build(lambda: builder(weights=None))
        row.native = sum(s.calls for s in slots)
        row.info = join(row.info, off_residual_note(slots))
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
# The table
# ------------------------------------------------------------------------------------------------


def jobs(subset: bool = False, only: list[str] | None = None) -> list[tuple[str, str, Callable[[], Row]]]:
    """(library, family, thunk) for every row of the table (or of the subset)."""
    import timm

    out = []
    families = sorted(set(timm.list_modules()) | set(TIMM_MODELS))
    for f in families:
        out.append(("timm", f, lambda f=f: timm_row(f, subset=subset)))
    for case in hf_cases():
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
        except (Exception, Timeout) as exc:  # noqa: BLE001 - one family never stops the table
            row = Row(library, family, reason=f"could not be checked: {short(exc)}", site="no")
            if log and not isinstance(exc, Timeout):
                traceback.print_exc(file=log)
        rows.append(row)
        if log:
            took = time.perf_counter() - start
            flag = "PARITY" if row.at_parity else ("info" if not row.counted else "FAIL")
            print(f"[{took:6.1f}s] {library}:{family} {row.model} {flag} {row.reason[:160]}", file=log, flush=True)
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=PACKAGE_DOC.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add = parser.add_argument
    add("--out", default=str(ROOT / "docs" / "coverage.md"), help="markdown file to write, '-' for stdout")
    add("--json", help="also write the rows as JSON here")
    add("--subset", action="store_true", help="only the CI subset (a few families per library)")
    add("--only", nargs="+", help="rows to run: a library (timm, hf, torchvision), library:family or family")
    add("--timeout", type=float, default=DEFAULT_TIMEOUT_S, help="seconds per model (default %(default)s)")
    add("--threads", type=int, default=2, help="torch threads (default %(default)s)")
    add("--pick-timm-models", action="store_true", help="print the smallest model of each timm family and exit")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.pick_timm_models:
        print(json.dumps(pick_timm_models(), indent=1))
        return 0
    start = time.perf_counter()
    rows = run_rows(args.subset, args.only, args.timeout, log=sys.stderr)
    elapsed = time.perf_counter() - start
    text = to_markdown(rows, elapsed, args.subset, None if args.subset or args.only else SWEEP_DIR)
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
