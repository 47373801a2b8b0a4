"""Layer drop on a Llama-style decoder: skipping dropped samples vs masking them vs no drop path.

    python benchmarks/bench_layer_drop.py                       # 12 layers, hidden 512, seq 256, batch 16
    python benchmarks/bench_layer_drop.py --rates 0.5 --repeats 5
    python benchmarks/bench_layer_drop.py --smoke               # a tiny config, a few seconds
    python benchmarks/bench_layer_drop.py --device cuda          # bf16 autocast on a GPU (--dtype auto)

A ``transformers.LlamaForCausalLM`` is built from a config with random weights (byte vocabulary,
nothing downloaded). Three copies with the same weights are trained side by side:

* ``none``: no drop path;
* ``mask``: ``apply_drop_path(model, p, schedule="exp", granularity="block")``: one keep decision
  per sample per decoder layer shared by its attention and MLP branches (LayerSkip / LayerDrop
  layer dropout); every layer still runs on the whole batch and the dropped samples are zeroed;
* ``skip``: the same with ``skip_dropped=True, min_skip_rate=0``: each layer runs only on
  ``ceil(B (1 - p_i))`` samples (``kept_count="fixed"``); a dropped sample passes the layer unchanged.

``schedule="exp"`` is LayerSkip's per-layer rate ``p * (2^(i/(n-1)) - 1)``: 0 at the first layer,
``p`` at the last, so the mean rate over layers is about ``0.44 p``. A training step is a forward with
``labels`` (the model's own shifted cross-entropy), ``loss.backward()`` and an optimizer step
(AdamW), under autocast in ``--dtype``. Steps of the three forms are interleaved (one warm-up step
each, then ``--repeats`` rounds of none, mask, skip) and the median per form is reported, so all
three see the same machine load; ratios are taken within one run.

Columns:

* ``mean p``: the mean of the per-layer rates (from ``drop_path_report``, one rate per layer);
* ``limit``: ``1 / (1 - mean p)``, the speed-up of skipping over no drop path if all of the step's
  time (or memory) were in the decoder layers and a layer's cost fell in proportion to the samples
  it computes. Two things keep a real step below it, and the table shows both:
  ``count limit`` = ``n B / sum_i ceil(B (1 - p_i))`` is the same limit for the whole samples the
  fixed count really computes (at batch 16 the rounding up costs a few percent), and ``f`` (with
  ``--fraction``) is the layers' measured share of the step, giving ``1 / (1 - f mean p)``;
* ``none/skip``: the measured speed-up; ``of limit``: ``none/skip`` over ``limit`` (the issue's goal:
  at least 0.85, and skipping never slower than masking: ``skip/mask <= 1``);
* peak memory: the rise of peak memory during one step over the memory before it. On CUDA from
  ``torch.cuda.max_memory_allocated``; on CPU from the peak resident set (``VmHWM``, reset through
  ``/proc/self/clear_refs`` before the step) of a child process per form, in which glibc serves
  blocks over 64 KiB from mmap and returns them at once, so that the resident set follows the live
  tensors (as in ``bench_skip.py``; that slows allocation, so no time is measured there). The peak
  includes the gradients and the optimizer's transients, which no form saves on, so its ratio stays
  above the activation-only ``1 - mean p``.

On CPU the default dtype is float32: bfloat16 autocast runs every matmul through a bf16 kernel,
which a CPU without AVX512-BF16 / AMX executes several times slower than float32 (measured on this
project's AVX2 machine: 5 vs 34 GFLOP/s for a 4096x512 @ 512x1376 product), so a bf16 step there
takes minutes. ``--dtype bfloat16`` forces it. On CUDA the default is bfloat16.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from peak_memory import PeakMemory

from droppath_surgery import apply_drop_path, drop_path_report, set_drop_path_rate

FORMS = ("none", "mask", "skip")
SMOKE = {"layers": 4, "hidden": 64, "intermediate": 128, "heads": 4, "kv_heads": 2, "seq": 32, "batch": 8, "repeats": 2}


def build_model(args) -> torch.nn.Module:
    import transformers as T

    config = T.LlamaConfig(
        vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.intermediate,
        num_hidden_layers=args.layers, num_attention_heads=args.heads, num_key_value_heads=args.kv_heads,
        max_position_embeddings=max(args.seq, 64), use_cache=False,
    )
    torch.manual_seed(0)
    return T.LlamaForCausalLM(config)


def patch(model: torch.nn.Module, form: str, rate: float) -> float:
    """Patch ``model`` in place for ``form``; returns the seconds it took."""
    t0 = time.perf_counter()
    if form != "none":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the engine's notes are printed from the report instead
            apply_drop_path(
                model, rate, schedule="exp", granularity="block", skip_dropped=form == "skip", min_skip_rate=0.0,
                verify=False,  # the bitwise eval check is the tests' business; here only the step counts
            )
    return time.perf_counter() - t0


def layer_rates(model: torch.nn.Module) -> list[float]:
    """One rate per decoder layer, read back from the patched model."""
    return [r for _, r in sorted(drop_path_report(model).block_rates.items())]


def set_rate(forms: dict, rate: float) -> None:
    for name, form in forms.items():
        if name != "none":
            set_drop_path_rate(form.model, rate, schedule="exp")


class Form:
    """One model copy with its optimizer and a fixed random batch of byte tokens."""

    def __init__(self, model: torch.nn.Module, ids: torch.Tensor, args) -> None:
        self.model = model.train()
        self.ids = ids
        self.opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        self.dtype = dtype_of(args)
        self.device = ids.device

    def step(self, memory: PeakMemory | None = None) -> tuple[float, int]:
        before = memory.start() if memory else 0
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        t0 = time.perf_counter()
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32):
            loss = self.model(input_ids=self.ids, labels=self.ids).loss
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        elapsed = time.perf_counter() - t0
        if not math.isfinite(loss.item()):
            raise RuntimeError(f"non-finite loss {loss.item()}")
        return elapsed, (memory.peak() - before) if memory else 0


def dtype_of(args) -> torch.dtype:
    if args.dtype == "auto":
        return torch.bfloat16 if torch.device(args.device).type == "cuda" else torch.float32
    return getattr(torch, args.dtype)


def make_forms(args, names=FORMS) -> dict:
    device = torch.device(args.device)
    base = build_model(args).to(device)
    torch.manual_seed(1)
    ids = torch.randint(0, args.vocab, (args.batch, args.seq), device=device)
    forms = {}
    for name in names:
        model = copy.deepcopy(base)
        seconds = patch(model, name, args.rates[0])
        forms[name] = Form(model, ids, args)
        forms[name].patch_s = seconds
    for form in forms.values():
        form.step()  # warm-up: allocator, optimizer state
    return forms


def memory_child(name: str, args) -> dict:
    """In a child process: the peak rise of one step of one form at each rate (MiB is read by the parent)."""
    memory = PeakMemory(torch.device(args.device))
    forms = make_forms(args, names=(name,))
    peaks = {}
    for rate in args.rates:
        set_rate(forms, rate)
        if name == "none" and peaks:  # no drop path: the rate changes nothing
            peaks[rate] = next(iter(peaks.values()))
            continue
        forms[name].step()  # one step at the new rate before measuring
        peaks[rate] = forms[name].step(memory)[1]
    return peaks


def measure(forms: dict, repeats: int) -> dict:
    """Median step time per form over ``repeats`` interleaved rounds, and the largest peak (CUDA)."""
    memory = PeakMemory(next(iter(forms.values())).device) if next(iter(forms.values())).device.type == "cuda" else None
    times: dict = {n: [] for n in forms}
    peaks: dict = {n: 0 for n in forms}
    for _ in range(repeats):
        for n, form in forms.items():
            t, peak = form.step(memory)
            times[n].append(t)
            peaks[n] = max(peaks[n], peak)
    return {n: (statistics.median(times[n]), peaks[n], times[n]) for n in forms}


def layer_fraction(forms: dict, args) -> tuple[float, float, float]:
    """The decoder layers' share ``f`` of a step: the skipping form at rate 1 runs every layer on one
    sample, so ``f = (t_none - t_skip@1) / (t_none * (1 - 1/B))``."""
    skip = forms["skip"].model
    set_drop_path_rate(skip, 1.0, schedule="uniform")
    forms["skip"].step()  # warm-up at the new counts
    r = measure({"none": forms["none"], "skip": forms["skip"]}, args.repeats)
    set_drop_path_rate(skip, args.rates[0], schedule="exp")  # back to the benchmark's schedule
    full, one = r["none"][0], r["skip"][0]
    return (full - one) / (full * (1 - 1 / args.batch)), full, one


def count_limit(rates: list[float], batch: int) -> float:
    computed = [min(batch, max(1, math.ceil(batch * (1 - p) - 1e-9))) if p > 0 else batch for p in rates]
    return len(rates) * batch / sum(computed)


def run(args) -> dict:
    device = torch.device(args.device)
    dtype = dtype_of(args)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, device {device}, autocast {dtype}")
    print(
        f"LlamaForCausalLM: {args.layers} layers, hidden {args.hidden}, intermediate {args.intermediate}, "
        f"heads {args.heads}/{args.kv_heads} kv, vocab {args.vocab}, batch {args.batch} x seq {args.seq}; "
        f"granularity='block', schedule='exp', AdamW; median of {args.repeats} interleaved steps per form"
    )
    forms = make_forms(args)
    params = sum(p.numel() for p in forms["none"].model.parameters())
    report = drop_path_report(forms["skip"].model)
    skipping = sum(s.compute == "skip" for s in report.sites)
    print(
        f"{params / 1e6:.1f} M parameters; skip form: {skipping}/{len(report.sites)} branches skip, "
        f"{report.num_blocks} blocks (patch: mask {forms['mask'].patch_s:.1f} s, skip {forms['skip'].patch_s:.1f} s)"
    )
    for note in report.notes[:3]:
        print("  note:", note)
    f = None
    if args.fraction:
        f, full, one = layer_fraction(forms, args)
        print(f"layer fraction f = {f:.3f} (no drop path: {full:.3f} s, every layer on 1 sample: {one:.3f} s)")
    rows = []
    for rate in args.rates:
        set_rate(forms, rate)
        for name in ("mask", "skip"):
            forms[name].step()  # one step at the new rate (new counts) before timing
        per_layer = layer_rates(forms["skip"].model)
        assert per_layer == layer_rates(forms["mask"].model)
        timed = measure(forms, args.repeats)
        rows.append({
            "rate": rate, "layer_rates": per_layer, "mean": statistics.fmean(per_layer),
            "count_limit": count_limit(per_layer, args.batch),
            "times": {n: timed[n][0] for n in FORMS}, "all_times": {n: timed[n][2] for n in FORMS},
            "peaks": {n: timed[n][1] for n in FORMS},
        })
    forms.clear()  # free the models before the memory children run
    if device.type == "cpu" and not args.no_memory:
        for name in FORMS:
            child = subprocess.run(
                [sys.executable, __file__, "--memory-child", name, *passthrough(args)],
                check=False, capture_output=True, text=True,
            )
            if child.returncode:
                raise RuntimeError(f"memory child for {name!r} failed:\n{child.stderr[-3000:]}")
            peaks = {float(k): v for k, v in json.loads(child.stdout.strip().splitlines()[-1]).items()}
            for row in rows:
                row["peaks"][name] = peaks[row["rate"]]
    print_table(rows, f, args)
    return {"rows": rows, "f": f, "skip_sites": [s.compute for s in report.sites], "num_blocks": report.num_blocks}


def print_table(rows: list[dict], f: float | None, args) -> None:
    print("\nper-layer rates (top p: first .. last): " + "; ".join(
        f"{r['rate']}: {r['layer_rates'][0]:.3f} .. {r['layer_rates'][-1]:.3f}" for r in rows))
    fcol = "  1/(1-f p)" if f is not None else ""
    print("\ntime per training step")
    print(f"top p  mean p   none s   mask s   skip s  mask/none  skip/none  skip/mask  none/skip   limit  count limit{fcol}  of limit")
    for r in rows:
        t = r["times"]
        limit = 1 / (1 - r["mean"])
        fl = f"  {1 / (1 - f * r['mean']):10.3f}" if f is not None else ""
        print(
            f"{r['rate']:<5}  {r['mean']:6.4f}  {t['none']:7.3f}  {t['mask']:7.3f}  {t['skip']:7.3f}  "
            f"{t['mask'] / t['none']:9.3f}  {t['skip'] / t['none']:9.3f}  {t['skip'] / t['mask']:9.3f}  "
            f"{t['none'] / t['skip']:9.3f}  {limit:6.3f}  {r['count_limit']:11.3f}{fl}  {t['none'] / t['skip'] / limit:8.3f}"
        )
    if any(r["peaks"]["none"] for r in rows):
        print("\npeak memory of a step (rise over the memory before it)")
        print("top p  none MiB  mask MiB  skip MiB  mask/none  skip/none  skip/mask  none/skip   limit  of limit")
        for r in rows:
            m = r["peaks"]
            limit = 1 / (1 - r["mean"])
            print(
                f"{r['rate']:<5}  {m['none'] / 2**20:8.0f}  {m['mask'] / 2**20:8.0f}  {m['skip'] / 2**20:8.0f}  "
                f"{m['mask'] / m['none']:9.3f}  {m['skip'] / m['none']:9.3f}  {m['skip'] / m['mask']:9.3f}  "
                f"{m['none'] / m['skip']:9.3f}  {limit:6.3f}  {m['none'] / m['skip'] / limit:8.3f}"
            )
    print("\ngoal (time): none/skip >= 0.85 x limit, and skip/mask <= 1")
    for r in rows:
        t = r["times"]
        frac = t["none"] / t["skip"] * (1 - r["mean"])
        print(f"  top p {r['rate']}: {frac:.3f} of the limit, skip/mask {t['skip'] / t['mask']:.3f}: "
              f"{'met' if frac >= 0.85 and t['skip'] <= t['mask'] else 'NOT met'}")
    print("  step times (s), in order: " + "; ".join(
        f"{r['rate']}: " + ", ".join(f"{n} " + "/".join(f"{x:.2f}" for x in r["all_times"][n]) for n in FORMS) for r in rows))
    sys.stdout.flush()


def passthrough(args) -> list[str]:
    out = ["--rates", *map(str, args.rates)]
    for key in ("layers", "hidden", "intermediate", "heads", "kv_heads", "seq", "batch", "vocab", "threads"):
        out += [f"--{key.replace('_', '-')}", str(getattr(args, key))]
    return out + ["--dtype", args.dtype, "--device", args.device]


def parse(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--intermediate", type=int, default=1376)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--kv-heads", type=int, default=8)
    parser.add_argument("--vocab", type=int, default=256, help="256: bytes")
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--rates", nargs="+", type=float, default=[0.2, 0.5], help="top (last-layer) rates")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved timed steps per form and rate")
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                        help="autocast dtype; auto: bfloat16 on CUDA, float32 on CPU (see the docstring)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    parser.add_argument("--fraction", action=argparse.BooleanOptionalAction, default=True,
                        help="measure the layers' share f of a step (one more set of interleaved steps)")
    parser.add_argument("--no-memory", action="store_true", help="CPU: skip the peak-memory child processes")
    parser.add_argument("--smoke", action="store_true", help="a tiny config that runs in seconds (checks, not figures)")
    parser.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.smoke:
        for key, value in SMOKE.items():
            setattr(args, key, value)
    return args


def main(argv=None) -> dict | None:
    args = parse(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_child:
        print(json.dumps(memory_child(args.memory_child, args)))
        return None
    return run(args)


if __name__ == "__main__":
    main()
