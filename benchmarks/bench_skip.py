"""Masked drop path vs skip_dropped=True: training-step time and peak memory, measured in one run.

    python benchmarks/bench_skip.py                                  # CPU: ViT-S/16, HF ViT, Swin-T
    python benchmarks/bench_skip.py --models vit_small --rates 0.4   # one model, one rate
    python benchmarks/bench_skip.py --device cuda --dtype bfloat16 --models vit_base vit_large --rates 0.4 [--compile]

For each model, two copies with the same weights are patched, one masked and one with
``skip_dropped=True`` (``kept_count="fixed"``, ``min_skip_rate=0``), both with a uniform schedule.
A training step is forward, cross-entropy backward and an AdamW step, on a random batch. Steps of
the two forms are interleaved (``--repeats`` each, after one warm-up each) and the median is
reported, so both see the same machine load.

Columns:
* ``time mask/skip``: median step time of the masked form over the skipping form (> 1: skip is faster);
* ``peak skip/mask``: peak memory during a step, over the memory before it. On CUDA from
  ``torch.cuda.max_memory_allocated``; on CPU from the peak resident set (``VmHWM``, reset through
  ``/proc/self/clear_refs`` before each step) of a child process in which glibc returns blocks
  over 64 KiB to the system at once, so that the peak is the step's own (that slows allocation,
  so the times come from this process, with the default allocator);
* ``saved skip/mask``: bytes of the tensors autograd saves for backward, parameters left out
  (activation memory), exact;
* ``f``: the fraction of the masked step spent in residual branches, estimated from one more pair of
  steps: the skipping form at rate 1 runs each branch on one sample, so
  ``f = (t_mask - t_skip@1) / (t_mask * (1 - 1/B))``;
* ``limit``: the best possible speed-up at rate ``p`` if nothing but branch compute shrinks,
  ``1 / (1 - f p)``.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from peak_memory import PeakMemory

from droppath_surgery import apply_drop_path, set_drop_path_rate


def _hf_vit(img: int) -> nn.Module:
    import transformers as T

    config = T.ViTConfig(
        hidden_size=384, num_hidden_layers=12, num_attention_heads=6, intermediate_size=1536,
        image_size=img, patch_size=16, num_labels=10,
    )
    return T.ViTForImageClassification(config)


def _timm(name: str):
    def build(img: int) -> nn.Module:
        import timm

        return timm.create_model(name, pretrained=False, num_classes=10, img_size=img)

    return build


MODELS = {
    "vit_small": ("timm vit_small_patch16_224", _timm("vit_small_patch16_224")),
    "hf_vit": ("HF ViTForImageClassification (ViT-S dims: 384 wide, 12 layers)", _hf_vit),
    "swin": ("timm swin_tiny_patch4_window7_224", _timm("swin_tiny_patch4_window7_224")),
    "vit_base": ("timm vit_base_patch16_224", _timm("vit_base_patch16_224")),
    "vit_large": ("timm vit_large_patch16_224", _timm("vit_large_patch16_224")),
}


def _logits(out):
    return out.logits if hasattr(out, "logits") else out


class Form:
    def __init__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, args) -> None:
        self.model, self.x, self.y = model, x, y
        self.opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        self.run = torch.compile(model) if args.compile else model
        self.dtype = getattr(torch, args.dtype)
        self.device = x.device

    def step(self, memory: PeakMemory | None = None) -> tuple[float, int, int]:
        saved: dict[int, int] = {}
        params = {p.untyped_storage().data_ptr() for p in self.model.parameters()}

        def pack(t):
            ptr = t.untyped_storage().data_ptr()
            if ptr not in params:  # weights saved for the input gradient are no activations
                saved[ptr] = t.untyped_storage().nbytes()
            return t

        before = memory.start() if memory else 0
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        t0 = time.perf_counter()
        autocast = torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32)
        with autocast, torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = nn.functional.cross_entropy(_logits(self.run(self.x)).float(), self.y)
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        elapsed = time.perf_counter() - t0
        peak = memory.peak() - before if memory else 0
        return elapsed, peak, sum(saved.values())


def _forms(key: str, args, announce: bool) -> dict:
    title, build = MODELS[key]
    device = torch.device(args.device)
    torch.manual_seed(0)
    base = build(args.img).to(device)
    x = torch.randn(args.batch, 3, args.img, args.img, device=device)
    y = torch.randint(0, 10, (args.batch,), device=device)
    forms = {}
    for name, skip in (("mask", False), ("skip", True)):
        model = copy.deepcopy(base)
        t0 = time.perf_counter()
        report = apply_drop_path(
            model, args.rates[0], schedule="uniform", skip_dropped=skip, min_skip_rate=0.0, verify=False
        )
        patch_s = time.perf_counter() - t0
        model.train()
        forms[name] = Form(model, x, y, args)
        if skip and announce:
            skipping = sum(s.compute == "skip" for s in report.sites)
            print(
                f"\n{title}, batch {args.batch}, {args.img}x{args.img}, {args.dtype}, {device}"
                f"{', compiled' if args.compile else ''}: {skipping}/{len(report.sites)} branches skip"
                f" (patch with skip_dropped: {patch_s:.1f} s)"
            )
            for note in report.notes[:3]:
                print("  ", note)
    for form in forms.values():
        form.step()  # warm-up (and compilation)
    return forms


def _set_rate(forms: dict, rate: float) -> None:
    for form in forms.values():
        set_drop_path_rate(form.model, rate, schedule="uniform")


def cpu_peaks(key: str, args) -> dict:
    """In this (child) process: the peak-over-start memory of one step of each form at each rate.
    glibc is told to serve blocks over 64 KiB from mmap and return them at once, so the resident
    set follows the live tensors; that slows allocation, so no time is measured here."""
    memory = PeakMemory(torch.device("cpu"))
    forms = _forms(key, args, announce=False)
    peaks = {}
    for rate in args.rates:
        _set_rate(forms, rate)
        peaks[rate] = [form.step(memory)[1] for form in forms.values()]
    return peaks


def bench_model(key: str, args) -> None:
    forms = _forms(key, args, announce=True)
    device = torch.device(args.device)
    memory = PeakMemory(device) if device.type == "cuda" else None

    def measure(rate: float, repeats: int) -> dict:
        _set_rate(forms, rate)
        times: dict = {n: [] for n in forms}
        peaks: dict = {n: 0 for n in forms}
        saved: dict = {n: 0 for n in forms}
        for _ in range(repeats):
            for n, form in forms.items():
                t, peak, s = form.step(memory)
                times[n].append(t)
                peaks[n] = max(peaks[n], peak)
                saved[n] = s
        return {n: (statistics.median(times[n]), peaks[n], saved[n]) for n in forms}

    # The branch fraction: masked at rate 0 (all computed) vs skipping at rate 1 (one sample each).
    full = measure(0.0, args.repeats)["mask"][0]
    one = measure(1.0, args.repeats)["skip"][0]
    f = (full - one) / (full * (1 - 1 / args.batch))
    print(f"  branch fraction f = {f:.2f} (masked step at rate 0: {full:.3f} s, skipping at rate 1: {one:.3f} s)")
    rows = [(rate, measure(rate, args.repeats)) for rate in args.rates]
    forms.clear()  # free the models before the memory child runs
    if device.type == "cpu":
        child = subprocess.run(
            [sys.executable, __file__, "--memory-child", key, *_passthrough(args)],
            capture_output=True, text=True, check=True,
        )
        peaks = {float(k): v for k, v in json.loads(child.stdout.strip().splitlines()[-1]).items()}
    else:
        peaks = {rate: [r["mask"][1], r["skip"][1]] for rate, r in rows}
    print("  rate  mask s   skip s   time mask/skip  limit 1/(1-fp)  peak skip/mask  saved skip/mask")
    for rate, r in rows:
        (tm, _, sm), (ts, _, ss) = r["mask"], r["skip"]
        pm, ps = peaks[rate]
        print(
            f"  {rate:<4}  {tm:7.3f}  {ts:7.3f}  {tm / ts:14.2f}  {1 / (1 - f * rate):14.2f}  "
            f"{ps / pm if pm else float('nan'):14.2f}  {ss / sm if sm else float('nan'):15.2f}"
        )
    print("  peak MiB (mask, skip) at each rate: " + ", ".join(f"{r}: {m / 2**20:.0f}, {k / 2**20:.0f}" for r, (m, k) in peaks.items()))
    sys.stdout.flush()


def _passthrough(args) -> list[str]:
    out = ["--rates", *map(str, args.rates), "--batch", str(args.batch), "--img", str(args.img)]
    out += ["--dtype", args.dtype, "--threads", str(args.threads)]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["vit_small", "hf_vit", "swin"], choices=sorted(MODELS))
    parser.add_argument("--rates", nargs="+", type=float, default=[0.1, 0.2, 0.4])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--img", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    parser.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_child:
        print(json.dumps(cpu_peaks(args.memory_child, args)))
        return
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    for key in args.models:
        bench_model(key, args)


if __name__ == "__main__":
    main()
