"""Compiled vs eager training step of a patched ViT, and recompiles over many rate changes.

Prints figures measured in one run (interleaved repeats, medians), so machine noise affects both
sides alike:

* step time of ``torch.compile(model)`` (inductor) over eager, for a model patched with
  ``apply_drop_path`` (forward, backward, AdamW step);
* with ``--baseline``: the compiled patched model over the compiled unpatched one (the cost of drop
  path under compile);
* with ``--skip``: the compiled model patched with ``skip_dropped=True`` over the compiled masked one;
* how many times dynamo compiled while ``set_drop_path_rate`` changed the rate ``--rate-changes``
  times, one training step each (goal: 0 recompiles after the first compile);
* with ``--batch-sizes 4,4,6,8,8,12,5``: instead of the above, the frames dynamo compiles for one
  training step at each of these batch sizes, unpatched, masked and ``skip_dropped=True``, with
  ``dynamic=None`` and ``dynamic=True`` (goal: patched no more than unpatched).

    python benchmarks/bench_compile.py                        # CPU: vit_small_patch16_224, fp32
    python benchmarks/bench_compile.py --device cuda --model vit_base_patch16_224 --dtype bfloat16 --baseline
    python benchmarks/bench_compile.py --model vit_tiny_patch16_224 --batch-sizes 4,4,6,8,8,12,5 --backend aot_eager

On CUDA the compiled steps also run under ``torch.cuda.set_sync_debug_mode("error")``, which raises
on any host-device synchronization.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import statistics
import time

import torch
import torch._dynamo
from bench_op import timed  # the script's folder is on sys.path
from torch._dynamo.testing import CompileCounterWithBackend

from droppath_surgery import apply_drop_path, set_drop_path_rate


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def make_step(model, optimizer, x, y, dtype):
    autocast = torch.autocast(x.device.type, dtype=dtype) if dtype != torch.float32 else contextlib.nullcontext()

    def step():
        with autocast:
            loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def frames_over_batch_sizes(base, sizes: list[int], rate: float, backend: str, device: str) -> None:
    """Print the frames dynamo compiles for a training step at each of ``sizes``, per variant."""
    variants = {"unpatched": {}, "masked": {"skip_dropped": False}, "skip": {"skip_dropped": True}}
    size = base.patch_embed.img_size
    for dynamic in (None, True):
        counts = {}
        for name, options in variants.items():
            model = copy.deepcopy(base)
            if name != "unpatched":
                apply_drop_path(model, rate, schedule="uniform", **options)
            model.train()
            torch._dynamo.reset()
            counter = CompileCounterWithBackend(backend)
            compiled = torch.compile(model, backend=counter, dynamic=dynamic)
            start = time.perf_counter()
            for b in sizes:
                compiled(torch.randn(b, 3, *size, device=device)).sum().backward()
            sync(device)
            counts[name] = counter.frame_count
            print(f"  dynamic={dynamic!s:5s} {name:10s} frames compiled {counter.frame_count:3d} ({time.perf_counter() - start:.1f} s)")
        torch._dynamo.reset()
        verdict = "no more" if counts["skip"] <= counts["unpatched"] else "MORE"
        print(f"dynamic={dynamic}: skip {counts['skip']} frames vs unpatched {counts['unpatched']} ({verdict} than unpatched)")


def main() -> None:
    import timm

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="vit_small_patch16_224")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="autocast dtype")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--rate", type=float, default=0.1)
    parser.add_argument("--repeats", type=int, default=8)
    parser.add_argument("--rate-changes", type=int, default=100)
    parser.add_argument("--baseline", action="store_true", help="also time the compiled unpatched model")
    parser.add_argument("--skip", action="store_true", help="also time the model compiled with skip_dropped=True")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--batch-sizes", default=None, help="comma-separated batch sizes: count frames compiled "
                        "over them (unpatched, masked, skip_dropped=True) instead of timing")
    parser.add_argument("--backend", default="inductor", help="torch.compile backend for --batch-sizes")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device, dtype = args.device, getattr(torch, args.dtype)
    torch.manual_seed(0)

    base = timm.create_model(args.model, pretrained=False).to(device)
    if args.batch_sizes:
        sizes = [int(b) for b in args.batch_sizes.split(",")]
        print(f"{args.model}: frames compiled over batch sizes {sizes}, rate {args.rate} (uniform), backend "
              f"{args.backend}, {device}, torch {torch.__version__}")
        frames_over_batch_sizes(base, sizes, args.rate, args.backend, device)
        return
    patched = copy.deepcopy(base)
    report = apply_drop_path(patched, args.rate)
    print(f"{args.model}: {len(report.sites)} drop path sites, top rate {args.rate}, batch {args.batch}, "
          f"{device}, autocast {args.dtype}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    size = patched.patch_embed.img_size
    x = torch.randn(args.batch, 3, *size, device=device)
    y = torch.randint(0, patched.num_classes, (args.batch,), device=device)

    eager_model = copy.deepcopy(patched).train()
    counter = CompileCounterWithBackend("inductor")
    compiled_model = torch.compile(copy.deepcopy(patched), backend=counter).train()
    candidates = {
        "eager (patched)": make_step(eager_model, torch.optim.AdamW(eager_model.parameters()), x, y, dtype),
        "compiled (patched)": make_step(compiled_model, torch.optim.AdamW(compiled_model.parameters()), x, y, dtype),
    }
    if args.skip:
        skipping = copy.deepcopy(base)
        apply_drop_path(skipping, args.rate, skip_dropped=True)
        skip_compiled = torch.compile(skipping).train()
        candidates["compiled (skip)"] = make_step(skip_compiled, torch.optim.AdamW(skip_compiled.parameters()), x, y, dtype)
    if args.baseline:
        plain = torch.compile(copy.deepcopy(base)).train()
        candidates["compiled (no drop path)"] = make_step(plain, torch.optim.AdamW(plain.parameters()), x, y, dtype)

    for name, fn in candidates.items():
        start = time.perf_counter()
        fn(), fn()  # warm-up, compile
        sync(device)
        print(f"  warm-up {name}: {time.perf_counter() - start:.1f} s")
    if device == "cuda":
        torch.cuda.set_sync_debug_mode("error")
        try:
            for name, fn in candidates.items():
                if name.startswith("compiled"):
                    fn()
            sync(device)
            print("  no host synchronization in compiled training steps (sync debug mode 'error')")
        finally:
            torch.cuda.set_sync_debug_mode(0)

    times: dict[str, list[float]] = {k: [] for k in candidates}
    for _ in range(args.repeats):
        for name, fn in candidates.items():
            times[name].append(timed(fn, device))
    med = {k: statistics.median(v) for k, v in times.items()}
    for name, t in med.items():
        print(f"  {name:26s} median {t * 1000:9.1f} ms over {args.repeats}")
    print(f"compiled / eager step time (patched): {med['compiled (patched)'] / med['eager (patched)']:.3f}x "
          f"(speed-up {med['eager (patched)'] / med['compiled (patched)']:.2f}x)")
    if args.skip:
        print(f"compiled skip_dropped=True / compiled masked step time: "
              f"{med['compiled (skip)'] / med['compiled (patched)']:.3f}x")
    if args.baseline:
        print(f"compiled patched / compiled without drop path: "
              f"{med['compiled (patched)'] / med['compiled (no drop path)']:.3f}x")

    frames_before = counter.frame_count
    rates = torch.linspace(0.01, 0.5, args.rate_changes).tolist()
    start = time.perf_counter()
    step = candidates["compiled (patched)"]
    for rate in rates:
        set_drop_path_rate(compiled_model._orig_mod, rate)
        step()
    sync(device)
    print(f"recompiles over {len(rates)} rate changes (one training step each): "
          f"{counter.frame_count - frames_before} (graphs compiled in total: {counter.frame_count}; "
          f"{time.perf_counter() - start:.1f} s)")


if __name__ == "__main__":
    main()
