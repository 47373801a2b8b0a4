"""One GPU check of droppath-surgery: the op, skip mode, compile, CUDA graphs, layer drop and the whole
pipeline on the device, in one table.

Run on one H100 / H200 (under 8 minutes: sections are time-boxed, those that would start past
``--budget-s`` = 420 s are skipped, and one running past it + 20 s is interrupted):

    python benchmarks/gpu_check.py --out gpu_check.md

Its first run on an H200 (2026-12-04) found skip mode failing on every CUDA model (the exactness check
indexed CUDA outputs with CPU indices); the figures of the run after the fix are in the README. The CPU smoke run
(``--device cpu --smoke``: tiny models, 2 timed steps, one torch thread, float32, compile sections
with backend ``eager``) is run by ``tests/test_gpu_check.py`` and checks only that every section runs end to
end and the table is well formed; its figures mean nothing.

What it measures (every ratio within one run, forms interleaved step by step, medians of the steps;
a training step is forward, backward and an AdamW step under bf16 autocast on CUDA, ``--dtype``):

1. **The op**: ``DropPath`` forward+backward on a (64, 197, 1024) tensor in bf16 and fp32, against a
   bare ``x * mask`` (a precomputed mask) and timm's ``timm.layers.DropPath``; each run once more
   under ``torch.cuda.set_sync_debug_mode("error")``, which raises on any host-device
   synchronization ("no host sync": yes / no; n/a on CPU).
2. **Skip mode** on ``vit_large_patch16_224`` (random weights), batch 64, p = 0.4 with
   ``schedule="uniform"`` (DINOv2's ViT-L setting), ``skip_dropped=True, min_skip_rate=0`` vs masked
   (``skip_dropped=False``) vs no drop path: step time, peak memory (``torch.cuda.max_memory_allocated``
   during a step over the memory allocated before it) and bytes autograd saves for backward.
   Anchor: DINOv2's subset trick, as measured in a timm PR: 8.81 s -> 5.40 s per step, 1.63x, ViT-L/14.
3. **Compiled**: the same model patched first, then ``torch.compile(model)`` (inductor): compiled skip
   over compiled masked, compiled masked over eager masked, and recompiles during the timed steps.
4. **CUDA graphs**: ``torch.compile(model, mode="reduce-overhead")`` on a masked
   ``vit_base_patch16_224`` (linear schedule) with ``set_drop_path_rate`` giving a new top rate before
   every step: step time against eager with the same rate changes, recompiles and CUDA graph
   re-recordings during the timed steps (expected 0 after warm-up); and ``DropPath`` alone under
   reduce-overhead: the dropped fraction follows rate changes and masks differ from replay to replay.
5. **Layer drop** on a Llama-style decoder (``transformers.LlamaForCausalLM`` from a config: 12 layers,
   hidden 1024, byte vocabulary, seq 512, batch 16) with ``granularity="block", schedule="exp"``, top
   rate 0.5: skip vs masked vs none, and the speed-up limit ``1 / (1 - mean p)`` with "of limit".
6. **The whole pipeline on the device**: ``apply_drop_path(model, 0.1)`` as a user calls it
   (verification on), masked and with ``skip_dropped=True``, on timm models at their own size and
   Hugging Face types from the sweep's shrunk configs (packed vision towers, a bf16 Llama among them),
   built on the device: sites, verified, eval output bitwise equal to the unpatched model's, one
   training step (finite, under the host-sync check), undo exact; patch time over one eval forward.

Counting: "recompiles" is the growth of ``torch._dynamo.utils.counters["stats"]["unique_graphs"]``
(one per graph dynamo compiles) during a form's timed steps; "cudagraph re-records" counts calls of
``torch._inductor.cudagraph_trees.CUDAGraphTreeManager.record_function`` during them.

Sections run in the order 1, 2, 5, 6, 3, 4 (the compile-heavy ones last, so that a slow compile
costs only them); the table lists them in order. Each section stops timing once past its share of
the budget; one that starts after ``--budget-s`` is skipped with a note, and a SIGALRM at
``--budget-s`` + 20 s interrupts the one running, so the table is always written. Exit status 1 if a
section failed or §6 has a FAILED row (the row says why; the traceback goes to stderr).

    python benchmarks/gpu_check.py --sections 1 2       # some sections only
    python benchmarks/gpu_check.py --smoke              # on the GPU: tiny models, every code path (inductor compiles)
    python benchmarks/gpu_check.py --device cpu --smoke --out /tmp/t.md   # what the test runs (about 30 s)
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import math
import signal
import statistics
import sys
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import torch
import torch._dynamo
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from droppath_surgery import DropPath, apply_drop_path, drop_path_report, set_drop_path_rate

GRACE_S = 20  # past --budget-s, the running section is interrupted
ANCHOR = "anchor: DINOv2's subset trick (timm PR): 8.81 s -> 5.40 s per step, 1.63x, ViT-L/14"

TINY_VIT = {"img_size": 32, "patch_size": 8, "depth": 2}
FULL: dict[str, Any] = {
    "op_shape": (64, 197, 1024), "op_rate": 0.1, "op_repeats": 60,
    "vit": "vit_large_patch16_224", "vit_kwargs": {}, "vit_batch": 64, "vit_rate": 0.4, "repeats": 10,
    "ro_vit": "vit_base_patch16_224", "ro_kwargs": {}, "ro_batch": 64, "ro_rates": (0.1, 0.5), "ro_repeats": 12,
    "llama": {"layers": 12, "hidden": 1024, "intermediate": 2816, "heads": 16, "kv_heads": 16, "vocab": 256,
              "seq": 512, "batch": 16},
    "llama_rate": 0.5,
    # §6: timm models at their own size, Hugging Face types from the sweep's shrunk configs ("hf:type"),
    # "@bf16": the model cast to bfloat16 before patching, as LLM fine-tuning loads it
    "pipeline": [
        "timm:vit_base_patch16_224", "timm:swin_tiny_patch4_window7_224", "timm:maxvit_pico_rw_256",
        "timm:samvit_base_patch16", "timm:convnext_tiny", "timm:efficientnet_b0",
        "hf:bert", "hf:llama", "hf:llama@bf16", "hf:gpt_neox", "hf:swin", "hf:timesfm", "hf:qwen2_5_vl_vision",
        "hf:glm4v_vision", "hf:qwen2_5_vl",
    ],
    # share of --budget-s each section may spend timing (compiles are not interruptible, only timing stops)
    "share": {1: 0.06, 2: 0.15, 3: 0.4, 4: 0.2, 5: 0.14, 6: 0.2},
}
SMOKE: dict[str, Any] = {
    **FULL,
    "op_shape": (8, 17, 32), "op_repeats": 3,
    "vit": "vit_tiny_patch16_224", "vit_kwargs": TINY_VIT, "vit_batch": 4, "repeats": 2,
    "ro_vit": "vit_tiny_patch16_224", "ro_kwargs": TINY_VIT, "ro_batch": 4, "ro_repeats": 2,
    "llama": {"layers": 2, "hidden": 64, "intermediate": 128, "heads": 4, "kv_heads": 2, "vocab": 256, "seq": 16,
              "batch": 4},
    "pipeline": ["timm:vit_tiny_patch16_224", "hf:gpt_neox"],
}

COLUMNS = [
    "§", "row", "A", "B", "A ms", "B ms", "A/B time", "B/A speed-up", "A/B peak mem", "A/B saved act",
    "limit", "of limit", "recompiles", "cudagraph re-records", "no host sync", "note",
]
SECTION_TITLES = {
    1: "DropPath op", 2: "skip mode, eager", 3: "skip mode, compiled", 4: "CUDA graphs (reduce-overhead)",
    5: "layer drop, Llama decoder", 6: "the whole pipeline on the device",
}
RUN_ORDER = (1, 2, 5, 6, 3, 4)
LEGEND = (
    "A/B time: median step time of A over B (< 1: A faster); B/A speed-up: its inverse; peak mem: rise of "
    "`torch.cuda.max_memory_allocated` during a step over the memory before it ('-' on CPU); saved act: bytes "
    "autograd saves for backward, parameters left out; limit / of limit: §5's 1/(1 - mean p) and the speed-up "
    "over it; recompiles: growth of `torch._dynamo.utils.counters['stats']['unique_graphs']` during A's timed "
    "steps; cudagraph re-records: `CUDAGraphTreeManager.record_function` calls during them; no host sync: A's "
    "forward+backward under `torch.cuda.set_sync_debug_mode('error')` (§6: a training-mode forward+backward; n/a on CPU)."
)


class BudgetExceeded(BaseException):
    """Raised by SIGALRM when a section runs past --budget-s + GRACE_S. A BaseException, as
    KeyboardInterrupt is: torch.compile wraps an Exception raised inside a compile as a compiler failure."""


# --------------------------------------------------------------------------------------------- table


def _num(x: float | None, digits: int = 3) -> str:
    if x is None:
        return "-"
    return f"{x:.{digits}f}" if math.isfinite(x) else str(x)  # 'nan' / 'inf' shows, and fails the test


def _ms(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    ms = seconds * 1e3
    return f"{ms:.1f}" if ms >= 100 else f"{ms:.3f}" if ms < 1 else f"{ms:.2f}"


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or not b:
        return None
    return a / b


@dataclass
class Row:
    section: int
    row: str
    a: str
    b: str = "-"
    a_s: float | None = None
    b_s: float | None = None
    peak: float | None = None  # A/B
    saved: float | None = None  # A/B
    limit: float | None = None
    recompiles: int | str = "-"
    rerecords: int | str = "-"
    sync: str = "-"
    note: str = ""

    def cells(self) -> list[str]:
        time_ratio = _ratio(self.a_s, self.b_s)
        speedup = _ratio(self.b_s, self.a_s)
        of_limit = _ratio(speedup, self.limit) if self.limit else None
        note = self.note.replace("|", "/").replace("\n", " ")
        return [
            str(self.section), self.row, self.a, self.b, _ms(self.a_s), _ms(self.b_s), _num(time_ratio),
            _num(speedup), _num(self.peak), _num(self.saved), _num(self.limit), _num(of_limit),
            str(self.recompiles), str(self.rerecords), self.sync, note,
        ]


def render(rows: list[Row], header: str, footer: list[str]) -> str:
    lines = [header, "", "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in sorted(rows, key=lambda r: r.section):  # stable: within a section, rows keep their order
        lines.append("| " + " | ".join(row.cells()) + " |")
    return "\n".join(lines + [""] + footer) + "\n"


# --------------------------------------------------------------------------------------- measuring


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def unique_graphs() -> int:
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def cudagraph_skips() -> int:
    from torch._dynamo.utils import counters

    return int(counters["inductor"]["cudagraph_skips"])


def graph_breaks() -> int:
    from torch._dynamo.utils import counters

    return int(sum(counters["graph_break"].values()))


@contextlib.contextmanager
def sync_debug_error(device: torch.device) -> Iterator[None]:
    torch.cuda.synchronize(device)
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode(0)


HOST_SYNCS: list[str] = []  # what each 'no' raised, for the notes under the table


def no_host_sync(fn: Callable[[], Any], device: torch.device, label: str) -> str:
    """'yes' if ``fn`` runs under ``set_sync_debug_mode("error")`` without raising, 'no' if it raises
    for a synchronization (the message goes to ``HOST_SYNCS``), 'n/a' on CPU."""
    if device.type != "cuda":
        return "n/a"
    try:
        with sync_debug_error(device):
            fn()
        sync(device)
        return "yes"
    except RuntimeError as exc:
        if "synchroniz" not in str(exc).lower():
            raise
        first = str(exc).strip().splitlines()[0]
        print(f"  host sync in {label}: {first}", file=sys.stderr)
        HOST_SYNCS.append(f"{label}: host sync: {first[:200]}")
        return "no"


class RecordCounter:
    """Counts CUDA graph recordings (cudagraph trees' ``record_function``) while installed."""

    def __init__(self, active: bool) -> None:
        self.active = active
        self.count = 0
        self._cls: Any = None
        self._orig: Any = None

    def __enter__(self) -> Self:
        if not self.active:
            return self
        try:
            from torch._inductor.cudagraph_trees import CUDAGraphTreeManager
        except ImportError:
            return self
        self._cls, self._orig = CUDAGraphTreeManager, CUDAGraphTreeManager.record_function
        orig, counter = self._orig, self

        def record_function(manager: Any, *args: Any, **kwargs: Any) -> Any:
            counter.count += 1
            return orig(manager, *args, **kwargs)

        CUDAGraphTreeManager.record_function = record_function  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: object) -> None:
        if self._cls is not None:
            self._cls.record_function = self._orig


class Form:
    """One model copy with its optimizer: ``step`` is a timed training step, ``probe`` a forward and
    backward (no optimizer step) under the sync check, counting bytes saved for backward."""

    def __init__(
        self, name: str, model: nn.Module, loss_fn: Callable[[Any], torch.Tensor], device: torch.device,
        dtype: torch.dtype, run: Any = None, before: Callable[[], None] | None = None,
    ) -> None:
        self.name, self.model, self.loss_fn, self.device, self.dtype = name, model.train(), loss_fn, device, dtype
        self.run = run if run is not None else model
        self.before = before  # called at the start of every step and probe (inside the timing)
        self.opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        self.times: list[float] = []
        self.peak = 0
        self.recompiles = 0
        self.rerecords = 0

    def _loss(self) -> torch.Tensor:
        if self.before is not None:
            self.before()
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32):
            return self.loss_fn(self.run)

    def step(self, timed: bool = True, records: RecordCounter | None = None) -> float:
        cuda = self.device.type == "cuda"
        before = 0
        if cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            before = torch.cuda.memory_allocated(self.device)
        graphs, recorded = unique_graphs(), records.count if records else 0
        t0 = time.perf_counter()
        loss = self._loss()
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        sync(self.device)
        elapsed = time.perf_counter() - t0
        if not math.isfinite(loss.item()):
            raise RuntimeError(f"{self.name}: non-finite loss {loss.item()}")
        if timed:
            self.times.append(elapsed)
            self.recompiles += unique_graphs() - graphs
            self.rerecords += (records.count - recorded) if records else 0
            if cuda:
                self.peak = max(self.peak, torch.cuda.max_memory_allocated(self.device) - before)
        return elapsed

    def probe(self, count_saved: bool = True) -> tuple[str, int | None]:
        """('yes' / 'no' / 'n/a' for no host sync in forward+backward, bytes saved for backward)."""
        params = {p.untyped_storage().data_ptr() for p in self.model.parameters()}
        saved: dict[int, int] = {}

        def pack(t: torch.Tensor) -> torch.Tensor:
            ptr = t.untyped_storage().data_ptr()
            if ptr not in params:  # weights saved for the input gradient are no activations
                saved[ptr] = t.untyped_storage().nbytes()
            return t

        def fwd_bwd(hooks: bool) -> None:
            ctx = torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t) if hooks else contextlib.nullcontext()
            with ctx:
                loss = self._loss()
            loss.backward()
            self.opt.zero_grad(set_to_none=True)

        status = no_host_sync(lambda: fwd_bwd(False), self.device, self.name)
        if not count_saved:
            return status, None
        fwd_bwd(True)
        return status, sum(saved.values())

    @property
    def median(self) -> float | None:
        return statistics.median(self.times) if self.times else None


def interleave(forms: list[Form], repeats: int, deadline: float, records: RecordCounter | None = None) -> str:
    """``repeats`` rounds of one timed step per form (at least one round); '' or a note if cut short."""
    for i in range(repeats):
        for form in forms:
            form.step(records=records)
        if time.perf_counter() > deadline and i + 1 < repeats:
            return f"timing cut to {i + 1} of {repeats} rounds by the section budget"
    return ""


def warm(forms: list[Form], steps: int) -> dict[str, float]:
    """Untimed steps (allocator, optimizer state, compilation); seconds per form."""
    out = {}
    for form in forms:
        t0 = time.perf_counter()
        for _ in range(steps):
            form.step(timed=False)
        out[form.name] = time.perf_counter() - t0
    return out


def patch(model: nn.Module, rate: float, **kwargs: Any) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # notes are in the report
        return apply_drop_path(model, rate, verify=False, **kwargs)


# ---------------------------------------------------------------------------------------- sections


@dataclass
class Ctx:
    device: torch.device
    dtype: torch.dtype
    cfg: dict[str, Any]
    backend: str
    deadline: float  # when this section must stop timing
    notes: list[str] = field(default_factory=list)


def _fwd_bwd(op: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, grad: torch.Tensor) -> Callable[[], None]:
    return lambda: op(x).backward(grad)


def section_op(ctx: Ctx) -> list[Row]:
    from timm.layers import DropPath as TimmDropPath

    cfg, device = ctx.cfg, ctx.device
    shape, rate = tuple(cfg["op_shape"]), cfg["op_rate"]
    rows = []
    for dtype in (torch.bfloat16, torch.float32):
        x = torch.randn(*shape, device=device, dtype=dtype, requires_grad=True)
        grad = torch.randn_like(x)
        mask = (torch.rand(shape[0], *[1] * (len(shape) - 1), device=device) > rate).to(dtype) / (1 - rate)
        ours, theirs = DropPath(rate).train().to(device), TimmDropPath(rate).train()
        fns = {
            "bare": _fwd_bwd(lambda t, m=mask: t * m, x, grad),
            "ours": _fwd_bwd(ours, x, grad),
            "timm": _fwd_bwd(theirs, x, grad),
        }
        times: dict[str, list[float]] = {k: [] for k in fns}
        inner = 10 if device.type == "cuda" else 1  # calls per timed sample: a sync costs about one small kernel
        for _ in range(3):
            for fn in fns.values():
                fn()
        for i in range(cfg["op_repeats"]):
            for k, fn in fns.items():
                sync(device)
                t0 = time.perf_counter()
                for _ in range(inner):
                    x.grad = None  # a fresh gradient each call: no accumulation kernel
                    fn()
                sync(device)
                times[k].append((time.perf_counter() - t0) / inner)
            if time.perf_counter() > ctx.deadline:
                ctx.notes.append(f"op {dtype}: {i + 1} of {cfg['op_repeats']} repeats (section budget)")
                break
        med = {k: statistics.median(v) for k, v in times.items()}
        synced = {k: no_host_sync(fns[k], device, f"{k} op {dtype}") for k in ("ours", "timm")}
        name = f"op {str(dtype).removeprefix('torch.')} {'x'.join(map(str, shape))}"
        what = f"fwd+bwd, rate {rate}, median of {len(times['bare'])} samples of {inner} call(s)"
        rows += [
            Row(1, name, "DropPath", "bare x * mask", med["ours"], med["bare"], sync=synced["ours"], note=what),
            Row(1, name, "timm DropPath", "bare x * mask", med["timm"], med["bare"], sync=synced["timm"]),
            Row(1, name, "DropPath", "timm DropPath", med["ours"], med["timm"], sync=synced["ours"]),
        ]
    return rows


def _timm_vit(name: str, kwargs: dict, device: torch.device) -> nn.Module:
    import timm

    torch.manual_seed(0)
    return timm.create_model(name, pretrained=False, **kwargs).to(device)


def _vit_loss(model: nn.Module, batch: int, device: torch.device) -> Callable[[Any], torch.Tensor]:
    size = model.patch_embed.img_size
    x = torch.randn(batch, 3, *size, device=device)
    y = torch.randint(0, model.num_classes, (batch,), device=device)
    return lambda run: nn.functional.cross_entropy(run(x).float(), y)


def _vit_forms(ctx: Ctx, names: tuple[str, ...]) -> tuple[dict[str, nn.Module], Any, str]:
    """Copies of one randomly initialised ViT: 'none', 'mask' (masked) and / or 'skip'."""
    cfg = ctx.cfg
    base = _timm_vit(cfg["vit"], cfg["vit_kwargs"], ctx.device)
    models, report = {}, None
    for name in names:
        model = copy.deepcopy(base)
        if name != "none":
            r = patch(model, cfg["vit_rate"], schedule="uniform", skip_dropped=name == "skip", min_skip_rate=0.0)
            if name == "skip":
                report = r
        models[name] = model
    del base
    skipping = f"{sum(s.compute == 'skip' for s in report.sites)}/{len(report.sites)} branches skip" if report else ""
    return models, _vit_loss(models[names[0]], cfg["vit_batch"], ctx.device), skipping


def _vit_title(ctx: Ctx) -> str:
    cfg = ctx.cfg
    return f"{cfg['vit'].removeprefix('vit_').removesuffix('_224')} b{cfg['vit_batch']} p{cfg['vit_rate']}"


def section_skip(ctx: Ctx) -> list[Row]:
    cfg = ctx.cfg
    models, loss, skipping = _vit_forms(ctx, ("none", "mask", "skip"))
    forms = {n: Form(n, m, loss, ctx.device, ctx.dtype) for n, m in models.items()}
    warm(list(forms.values()), 1)
    cut = interleave(list(forms.values()), cfg["repeats"], ctx.deadline)
    probes = {n: f.probe() for n, f in forms.items()}
    none, mask, skip = forms["none"], forms["mask"], forms["skip"]
    cuda = ctx.device.type == "cuda"

    def row(a: Form, b: Form, label_a: str, label_b: str, note: str = "") -> Row:
        return Row(
            2, f"{_vit_title(ctx)} eager", label_a, label_b, a.median, b.median,
            peak=_ratio(a.peak, b.peak) if cuda else None, saved=_ratio(probes[a.name][1], probes[b.name][1]),
            sync=probes[a.name][0], note=note,
        )

    setting = f"uniform schedule, min_skip_rate=0, {skipping}, median of {len(skip.times)} steps"
    rows = [
        row(skip, mask, "skip", "masked", f"{setting}; {ANCHOR}" + (f"; {cut}" if cut else "")),
        row(skip, none, "skip", "none"),
        row(mask, none, "masked", "none"),
    ]
    if cuda:
        ctx.notes.append(
            "§2 peak MiB per step (none, masked, skip): "
            + ", ".join(f"{forms[n].peak / 2**20:.0f}" for n in ("none", "mask", "skip"))
        )
    return rows


def section_compiled(ctx: Ctx) -> list[Row]:
    cfg = ctx.cfg
    models, loss, skipping = _vit_forms(ctx, ("mask", "skip"))
    eager = copy.deepcopy(models["mask"])
    forms = {
        "skip": Form("compiled skip", models["skip"], loss, ctx.device, ctx.dtype,
                     run=torch.compile(models["skip"], backend=ctx.backend)),
        "mask": Form("compiled masked", models["mask"], loss, ctx.device, ctx.dtype,
                     run=torch.compile(models["mask"], backend=ctx.backend)),
        "eager": Form("eager masked", eager, loss, ctx.device, ctx.dtype),
    }
    compiled = {}
    for name, form in forms.items():
        graphs, breaks = unique_graphs(), graph_breaks()
        seconds = warm([form], 3)[form.name]  # the first step compiles; the next ones were still slow on CPU
        compiled[name] = (unique_graphs() - graphs, graph_breaks() - breaks, seconds)
    cut = interleave(list(forms.values()), cfg["repeats"], ctx.deadline)
    probes = {n: f.probe(count_saved=False)[0] for n, f in forms.items()}
    cuda = ctx.device.type == "cuda"
    skip, mask, eager_form = forms["skip"], forms["mask"], forms["eager"]

    def warmup(name: str) -> str:
        graphs, breaks, seconds = compiled[name]
        return f"{name}: {graphs} graph(s), {breaks} graph break(s), warm-up (compile) {seconds:.1f} s"

    title = f"{_vit_title(ctx)} compiled ({ctx.backend})"
    rows = [
        Row(3, title, "compiled skip", "compiled masked", skip.median, mask.median,
            peak=_ratio(skip.peak, mask.peak) if cuda else None, recompiles=skip.recompiles, sync=probes["skip"],
            note=f"{skipping}; {warmup('skip')}; median of {len(skip.times)} steps" + (f"; {cut}" if cut else "")),
        Row(3, title, "compiled masked", "eager masked", mask.median, eager_form.median,
            peak=_ratio(mask.peak, eager_form.peak) if cuda else None, recompiles=mask.recompiles,
            sync=probes["mask"], note=warmup("mask")),
    ]
    return rows


def section_cudagraphs(ctx: Ctx) -> list[Row]:
    cfg, device = ctx.cfg, ctx.device
    graphs_mode = device.type == "cuda" and ctx.backend == "inductor"

    def compile_(module: nn.Module) -> Any:
        if graphs_mode:
            return torch.compile(module, mode="reduce-overhead")
        return torch.compile(module, backend=ctx.backend)

    mode = "reduce-overhead" if graphs_mode else f"backend {ctx.backend}, no CUDA graphs on {device.type}"
    rows = []
    skips_before = cudagraph_skips()
    with RecordCounter(graphs_mode) as records:
        rerecords: Callable[[int], int | str] = (lambda n: n) if graphs_mode else (lambda n: "n/a")

        # DropPath alone: the rate written between replays is the rate the graph drops at, and every
        # replay draws a new mask.
        op = DropPath(0.5).train().to(device)
        run = compile_(op)
        x = torch.ones(4096, 8, device=device)

        def call(rate: float) -> torch.Tensor:
            op.rate = rate
            torch.compiler.cudagraph_mark_step_begin()
            return run(x).clone()

        for _ in range(3):  # warm-up, compile, record
            call(0.5)
        graphs, recorded = unique_graphs(), records.count
        fractions = {}
        for rate in (0.1, 0.5, 0.9):
            y = call(rate)
            fractions[rate] = (y[:, 0] == 0).float().mean().item()
        first, second = call(0.5)[:, 0] == 0, call(0.5)[:, 0] == 0
        new_masks = not torch.equal(first, second)
        follows = all(abs(f - r) < 0.05 for r, f in fractions.items())
        op_sync = no_host_sync(lambda: call(0.3), device, "DropPath alone")
        rows.append(Row(
            4, f"DropPath alone, {mode}", "DropPath 4096x8", recompiles=unique_graphs() - graphs,
            rerecords=rerecords(records.count - recorded), sync=op_sync,
            note="dropped fraction at rate " + ", ".join(f"{r}: {f:.3f}" for r, f in fractions.items())
            + f" ({'follows the rate' if follows else 'DOES NOT follow the rate'}); "
            + f"masks differ between replays: {'yes' if new_masks else 'NO'}",
        ))

        # A masked ViT, a new top rate before every step.
        base = _timm_vit(cfg["ro_vit"], cfg["ro_kwargs"], device)
        patch(base, cfg["ro_rates"][1], schedule="linear")
        eager_model = copy.deepcopy(base)
        loss = _vit_loss(base, cfg["ro_batch"], device)
        low, high = cfg["ro_rates"]

        def changer(model: nn.Module) -> Callable[[], None]:
            rates = iter(low + (high - low) * ((i * 0.618) % 1.0) for i in range(10**6))  # the same for both

            def before() -> None:
                torch.compiler.cudagraph_mark_step_begin()
                set_drop_path_rate(model, next(rates))
            return before

        graphed = Form("graphed", base, loss, device, ctx.dtype, run=compile_(base), before=changer(base))
        eager = Form("eager", eager_model, loss, device, ctx.dtype, before=changer(eager_model))
        graphs, recorded = unique_graphs(), records.count
        seconds = warm([graphed], 4)["graphed"]  # compile and warm-up run, record (fwd and bwd), replays
        warm_graphs, warm_records = unique_graphs() - graphs, records.count - recorded
        warm([eager], 1)
        cut = interleave([graphed, eager], cfg["ro_repeats"], ctx.deadline, records)
        probe = graphed.probe(count_saved=False)[0]
        title = f"{cfg['ro_vit'].removeprefix('vit_').removesuffix('_224')} b{cfg['ro_batch']} masked, {mode}"
        rows.append(Row(
            4, title, "compiled, rate changes", "eager, rate changes", graphed.median, eager.median,
            peak=_ratio(graphed.peak, eager.peak) if device.type == "cuda" else None,
            recompiles=graphed.recompiles, rerecords=rerecords(graphed.rerecords), sync=probe,
            note=f"linear schedule, top rate drawn in [{low}, {high}] before every step; warm-up: {warm_graphs} "
            f"graph(s), {warm_records if graphs_mode else 'n/a'} recording(s), {seconds:.1f} s; "
            f"median of {len(graphed.times)} steps" + (f"; {cut}" if cut else ""),
        ))
    skips = cudagraph_skips() - skips_before
    if skips:
        ctx.notes.append(f"§4: inductor skipped CUDA graphs {skips} time(s) (counters['inductor']['cudagraph_skips']; "
                         "the reason is in the log above)")
    return rows


def _llama(cfg: dict[str, Any], device: torch.device) -> nn.Module:
    import transformers as T

    c = cfg["llama"]
    config = T.LlamaConfig(
        vocab_size=c["vocab"], hidden_size=c["hidden"], intermediate_size=c["intermediate"],
        num_hidden_layers=c["layers"], num_attention_heads=c["heads"], num_key_value_heads=c["kv_heads"],
        max_position_embeddings=max(c["seq"], 64), use_cache=False,
    )
    torch.manual_seed(0)
    return T.LlamaForCausalLM(config).to(device)


def section_layer_drop(ctx: Ctx) -> list[Row]:
    cfg, device = ctx.cfg, ctx.device
    c, rate = cfg["llama"], cfg["llama_rate"]
    base = _llama(cfg, device)
    ids = torch.randint(0, c["vocab"], (c["batch"], c["seq"]), device=device)
    forms: dict[str, Form] = {}
    skipping = ""
    for name in ("none", "mask", "skip"):
        model = copy.deepcopy(base)
        if name != "none":
            report = patch(model, rate, schedule="exp", granularity="block", skip_dropped=name == "skip",
                           min_skip_rate=0.0)
            if name == "skip":
                skipping = f"{sum(s.compute == 'skip' for s in report.sites)}/{len(report.sites)} branches skip"
        forms[name] = Form(name, model, lambda run: run(input_ids=ids, labels=ids).loss, device, ctx.dtype)
    del base
    layer_rates = [r for _, r in sorted(drop_path_report(forms["skip"].model).block_rates.items())]
    mean = statistics.fmean(layer_rates)
    warm(list(forms.values()), 1)
    cut = interleave(list(forms.values()), cfg["repeats"], ctx.deadline)
    probes = {n: f.probe() for n, f in forms.items()}
    cuda = device.type == "cuda"
    title = f"Llama {c['layers']}L h{c['hidden']} b{c['batch']}x{c['seq']} top p{rate}"

    def row(a: str, b: str, label_a: str, label_b: str, limit: float | None = None, note: str = "") -> Row:
        fa, fb = forms[a], forms[b]
        return Row(5, title, label_a, label_b, fa.median, fb.median,
                   peak=_ratio(fa.peak, fb.peak) if cuda else None, saved=_ratio(probes[a][1], probes[b][1]),
                   limit=limit, sync=probes[a][0], note=note)

    return [
        row("skip", "mask", "skip", "masked",
            note=f"granularity='block', schedule='exp', min_skip_rate=0, {skipping}, median of "
            f"{len(forms['skip'].times)} steps" + (f"; {cut}" if cut else "")),
        row("skip", "none", "skip", "none", limit=1 / (1 - mean),
            note=f"limit = 1/(1 - mean p), mean p {mean:.4f} over {len(layer_rates)} layers "
            f"({layer_rates[0]:.3f} .. {layer_rates[-1]:.3f}); vocab {c['vocab']}"),
        row("mask", "none", "masked", "none"),
    ]


# §6: apply_drop_path as a user calls it (verification on), on models built on the device


def _outputs(obj: Any) -> list[torch.Tensor]:
    """The tensors of a model output (a tensor, a tuple / list / dict or a ModelOutput), in order."""
    from droppath_surgery.nested import tensors

    return list(tensors(obj))


def _coverage() -> Any:
    """The coverage package of ``scripts/`` (the sweep's config shrinking and its bitwise output oracle)."""
    scripts = str(Path(__file__).resolve().parents[1] / "scripts")
    if scripts not in sys.path:
        sys.path.insert(0, scripts)
    import droppath_coverage.judge
    import droppath_coverage.sweep

    return droppath_coverage


def _build(spec: str, device: torch.device) -> tuple[nn.Module, str]:
    """A model of ``spec`` ("timm:name" at its own size, "hf:type" from the sweep's shrunk config,
    "@bf16" cast to bfloat16) on ``device`` in eval mode, and the size it was built at."""
    name, _, cast = spec.partition("@")
    library, _, ident = name.partition(":")
    torch.manual_seed(0)
    if library == "timm":
        import timm

        model, built = timm.create_model(ident, pretrained=False), "default size"
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            config, model_cls, built, _, _ = _coverage().sweep.hf_build(ident)
            torch.manual_seed(0)
            model = model_cls(config)
    model = model.to(device).eval()
    if cast == "bf16":
        model = model.to(torch.bfloat16)
    return model, built


def _train_step(model: nn.Module, args: tuple, kwargs: dict) -> torch.Tensor:
    """One forward and backward in training mode on the example inputs; the loss (the mean of the float
    outputs), detached: reading it is left to the caller, outside the host-sync check. The model's
    buffers (batch norm's running statistics) are as they were afterwards, so that undo is judged against
    the model as it was."""
    buffers = {name: b.clone() for name, b in model.named_buffers()}
    model.train()
    try:  # eval mode, no gradients and the buffers again also when the host-sync check raises inside
        out = model(*args, **kwargs)
        loss = sum(t.float().mean() for t in _outputs(out) if t.is_floating_point() and t.requires_grad)
        if not isinstance(loss, torch.Tensor):
            raise RuntimeError("no output with a gradient")
        loss.backward()
        return loss.detach()
    finally:
        model.zero_grad(set_to_none=True)
        model.eval()
        with torch.no_grad():
            for name, b in model.named_buffers():
                b.copy_(buffers[name])


def _pipeline_rows(spec: str, ctx: Ctx) -> list[Row]:
    from droppath_surgery import build_example_inputs, remove_drop_path

    device = ctx.device
    same = _coverage().judge.outputs_equal  # the sweep's bitwise oracle of model outputs (NaNs equal where both are)
    base, built = _build(spec, device)
    args, kwargs = build_example_inputs(base)
    with torch.no_grad():
        reference = base(*args, **kwargs)
        again = base(*args, **kwargs)
    repeats = same(reference, again)  # on a GPU some kernels need not repeat bit for bit
    sync(device)
    t0 = time.perf_counter()
    with torch.no_grad():
        base(*args, **kwargs)
    sync(device)
    forward_s = time.perf_counter() - t0
    pristine = {k: v.clone() for k, v in base.state_dict().items()}
    unpatched_sync = no_host_sync(lambda: _train_step(base, args, kwargs), device, f"{spec} unpatched")
    label = f"{spec} ({built})"
    rows = []
    for skip in (False, True):
        model = copy.deepcopy(base) if not skip else base
        sync(device)
        t0 = time.perf_counter()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            report = apply_drop_path(model, 0.1, skip_dropped=skip, min_skip_rate=0.0)
        sync(device)
        patch_s = time.perf_counter() - t0
        with torch.no_grad():
            after = model(*args, **kwargs)
        equal = same(reference, after)
        finite = math.isfinite(_train_step(model, args, kwargs).item())
        host = no_host_sync(lambda m=model: _train_step(m, args, kwargs), device, f"{spec} {'skip' if skip else 'masked'}")
        removed = remove_drop_path(model)
        with torch.no_grad():
            undone = model(*args, **kwargs)
        state = model.state_dict()
        exact = (state.keys() == pristine.keys() and all(torch.equal(state[k], v) for k, v in pristine.items())
                 and same(reference, undone))
        sites = len(report.sites)
        facts = [f"{sites} sites", f"verified {report.verified}", f"eval bitwise equal {'yes' if equal else 'NO'}",
                 f"undo exact {'yes' if exact else 'NO'} ({removed} modules)", f"train step finite {'yes' if finite else 'NO'}"]
        if skip:
            facts.insert(1, f"{sum(s.compute == 'skip' for s in report.sites)}/{sites} branches skip")
        if host == "no" and unpatched_sync == "no":
            facts.append("the unpatched model's training step syncs too")
        if not repeats:
            facts.append("the unpatched model's two eval passes differ (eval equality judged against the first)")
        if caught:
            facts.append(f"{len(caught)} warning(s): {str(caught[0].message).splitlines()[0][:160]}")
        problem = not (sites and report.verified and equal and exact and finite)
        note = ("FAILED: " if problem else "") + ", ".join(facts)
        rows.append(Row(6, label, "patch, skip" if skip else "patch, masked", "eval forward", patch_s, forward_s,
                        sync=host, note=note))
    return rows


def _missing(spec: str) -> str:
    """Why ``spec`` cannot be built with the libraries installed here ('' when it can): a model type
    or name newer than the installed transformers / timm is a note, not a failure."""
    library, _, ident = spec.partition("@")[0].partition(":")
    if library == "hf":
        import transformers
        from transformers.models.auto.modeling_auto import MODEL_MAPPING_NAMES

        if ident not in MODEL_MAPPING_NAMES:
            return f"not run: transformers {transformers.__version__} has no model type {ident!r}"
        return ""
    import timm

    return "" if timm.is_model(ident) else f"not run: timm {timm.__version__} has no model {ident!r}"


def section_pipeline(ctx: Ctx) -> list[Row]:
    """Each model patched with ``apply_drop_path(model, 0.1)`` (masked) and, on another copy, with
    ``skip_dropped=True, min_skip_rate=0``, verification on: sites, verified, eval output bitwise equal
    to the unpatched model's, one training step (finite, under the host-sync check), undo exact
    (state dict and eval output). A model that fails gets a FAILED row and the next one runs."""
    rows: list[Row] = []
    specs = list(ctx.cfg["pipeline"])
    for i, spec in enumerate(specs):
        if time.perf_counter() > ctx.deadline:
            ctx.notes.append(f"§6: {len(specs) - i} of {len(specs)} models not run (section budget): {', '.join(specs[i:])}")
            break
        print(f"  §6 {spec}", file=sys.stderr, flush=True)
        missing = _missing(spec)
        if missing:
            rows.append(Row(6, spec, "-", note=missing))
            continue
        try:
            rows += _pipeline_rows(spec, ctx)
        except Exception as exc:  # noqa: BLE001 - the row says what failed; the next model runs
            traceback.print_exc()
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            rows.append(Row(6, spec, "-", note=f"FAILED: {type(exc).__name__}: {first[:300]}"))
        gc.collect()
        if ctx.device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


SECTIONS: dict[int, Callable[[Ctx], list[Row]]] = {
    1: section_op, 2: section_skip, 3: section_compiled, 4: section_cudagraphs, 5: section_layer_drop,
    6: section_pipeline,
}


# -------------------------------------------------------------------------------------------- main


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cuda", "cpu"])
    parser.add_argument("--smoke", action="store_true", help="tiny models and shapes, 1-2 steps: checks, not figures")
    parser.add_argument("--out", default="gpu_check.md", help="where to write the markdown table")
    parser.add_argument("--budget-s", type=float, default=420.0, help="total seconds; later sections are skipped")
    parser.add_argument("--sections", type=int, nargs="+", default=list(SECTIONS), choices=sorted(SECTIONS))
    parser.add_argument("--dtype", default="auto", choices=["auto", "bfloat16", "float32"],
                        help="autocast dtype of the training steps (auto: bfloat16 on CUDA, float32 on CPU, where "
                        "bf16 kernels without AMX are several times slower)")
    parser.add_argument("--compile-backend", default=None,
                        help="torch.compile backend for sections 3-4 (default: inductor on CUDA, eager on CPU)")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads (default: torch's; 1 with --smoke on CPU, as a shared machine runs faster so)")
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds per model section (default 10, smoke 2)")
    return parser.parse_args(argv)


def _version() -> str:
    import droppath_surgery

    return str(droppath_surgery.__version__)


def _on_alarm(signum: int, frame: Any) -> None:
    raise BudgetExceeded(f"interrupted: past --budget-s + {GRACE_S} s")


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("gpu_check: --device cuda but torch.cuda.is_available() is False", file=sys.stderr)
        return 2
    threads = args.threads or (1 if args.smoke and device.type == "cpu" else None)
    if threads:
        torch.set_num_threads(threads)
    use_alarm = hasattr(signal, "SIGALRM")
    previous = signal.signal(signal.SIGALRM, _on_alarm) if use_alarm else None
    try:
        return run(args, device, use_alarm)
    finally:
        if use_alarm:
            signal.alarm(0)
            signal.signal(signal.SIGALRM, previous)


def run(args: argparse.Namespace, device: torch.device, use_alarm: bool) -> int:
    cfg = dict(SMOKE if args.smoke else FULL)
    if args.repeats:
        cfg["repeats"] = cfg["ro_repeats"] = args.repeats
    dtype_name = args.dtype if args.dtype != "auto" else "bfloat16" if device.type == "cuda" else "float32"
    dtype = getattr(torch, dtype_name)
    backend = args.compile_backend or ("inductor" if device.type == "cuda" else "eager")
    start = time.perf_counter()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} thread(s))"
    header = (
        f"gpu_check: droppath-surgery {_version()}, torch {torch.__version__}, device {name} ({device.type}), "
        f"dtype {dtype_name}{' autocast' if dtype != torch.float32 else ''} (op rows: bfloat16 and float32), "
        f"compile backend {backend}{', SMOKE (tiny models, figures mean nothing)' if args.smoke else ''}"
    )
    print(header, file=sys.stderr)
    rows: list[Row] = []
    footer: list[str] = []
    timings: list[str] = []
    failed = False
    for section in [s for s in RUN_ORDER if s in args.sections]:
        title = SECTION_TITLES[section]
        elapsed = time.perf_counter() - start
        if elapsed >= args.budget_s:
            rows.append(Row(section, title, "-", note=f"skipped: {elapsed:.0f} s elapsed, past --budget-s {args.budget_s:.0f}"))
            timings.append(f"§{section} skipped")
            print(f"[gpu_check] §{section} {title}: skipped (budget)", file=sys.stderr)
            continue
        deadline = min(time.perf_counter() + cfg["share"][section] * args.budget_s, start + args.budget_s)
        ctx = Ctx(device, dtype, cfg, backend, deadline)
        t0 = time.perf_counter()
        print(f"[gpu_check] §{section} {title} ...", file=sys.stderr, flush=True)
        try:
            if use_alarm:
                signal.alarm(max(1, math.ceil(start + args.budget_s + GRACE_S - time.perf_counter())))
            torch.manual_seed(0)
            got = SECTIONS[section](ctx)
            rows += got
            failed = failed or any(r.note.startswith("FAILED") for r in got)  # §6 goes on past a failing model
        except BudgetExceeded as exc:
            rows.append(Row(section, title, "-", note=str(exc)))
        except Exception as exc:  # noqa: BLE001  (the table is written anyway; the row says what failed)
            failed = True
            traceback.print_exc()
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            rows.append(Row(section, title, "-", note=f"FAILED: {type(exc).__name__}: {first[:300]}"))
        finally:
            if use_alarm:
                signal.alarm(0)
        seconds = time.perf_counter() - t0
        timings.append(f"§{section} {seconds:.1f} s")
        print(f"[gpu_check] §{section} {title}: {seconds:.1f} s (total {time.perf_counter() - start:.1f} s of "
              f"{args.budget_s:.0f})", file=sys.stderr, flush=True)
        footer += [f"- {n}" for n in ctx.notes] + [f"- §{section} {n}" for n in HOST_SYNCS]
        HOST_SYNCS.clear()
        torch._dynamo.reset()
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    footer = [
        LEGEND,
        *footer,
        (f"- elapsed: {', '.join(timings)}; total {time.perf_counter() - start:.1f} s (budget {args.budget_s:.0f} s, "
         "counted from the start of main, after the imports)"),
    ]
    table = render(rows, header, footer)
    print(table)
    Path(args.out).write_text(table)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
