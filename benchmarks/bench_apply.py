"""Patch time of apply_drop_path on a timm model over one eval forward of the same example input.

Goals for vit_base_patch16_224: at most 2.5x with verify=True, at most 1.5x with verify=False.
``skip_dropped=True`` adds the apply-time exactness check (one skipping pass on the example batch,
compared with verification's eval pass; goal: at most 3x one eval forward). ``schedule="timm"`` adds reading timm's rates (a meta-device build of the architecture, made
once and cached: the warm-up run pays for it). Then ``set_drop_path_rate`` per call with
``schedule="timm"`` over ``"linear"``. Each figure is the median of several runs, interleaved, in
one process.

    python benchmarks/bench_apply.py [--model vit_base_patch16_224] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import timm
import torch

from droppath_surgery import apply_drop_path, remove_drop_path, set_drop_path_rate
from droppath_surgery import build_example_inputs as build


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="vit_base_patch16_224")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    model = timm.create_model(args.model, pretrained=False)
    inputs, _ = build(model)

    def forward() -> None:
        model.eval()
        with torch.no_grad():
            model(*inputs)

    def apply(verify: bool, skip_dropped: bool = False, schedule: str = "linear"):
        def run() -> None:
            apply_drop_path(model, 0.1, verify=verify, skip_dropped=skip_dropped, schedule=schedule)
            remove_drop_path(model)

        return run

    runs = {
        "eval forward": forward,
        "apply (verify=True)": apply(True),
        "apply (verify=False)": apply(False),
        "apply (skip_dropped)": apply(True, skip_dropped=True),
        "apply (schedule=timm)": apply(True, schedule="timm"),
    }
    for fn in runs.values():
        fn()
    times = {k: [] for k in runs}
    for _ in range(args.repeats):
        for name, fn in runs.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    med = {k: statistics.median(v) for k, v in times.items()}
    base = med["eval forward"]
    print(f"{args.model}, example input {tuple(inputs[0].shape)}, {torch.get_num_threads()} threads")
    for name, t in med.items():
        print(f"  {name:22s} {t * 1e3:8.1f} ms  {t / base:5.2f}x one eval forward")

    # Re-scheduling a patched model, as a time schedule does every step.
    report = apply_drop_path(model, 0.1, verify=False)
    calls = 50
    per_call = {"linear": [], "timm": []}
    set_drop_path_rate(model, 0.2, schedule="timm")  # warm: timm's reading is cached
    for _ in range(args.repeats):
        for schedule, samples in per_call.items():
            start = time.perf_counter()
            for i in range(calls):
                set_drop_path_rate(model, 0.1 + 0.001 * i, schedule=schedule)
            samples.append((time.perf_counter() - start) / calls)
    remove_drop_path(model)
    lin, tim = (statistics.median(per_call[k]) for k in ("linear", "timm"))
    print(f"  set_drop_path_rate ({len(report.sites)} sites): linear {lin * 1e3:.2f} ms, timm {tim * 1e3:.2f} ms "
          f"per call ({tim / lin:.2f}x)")


if __name__ == "__main__":
    main()
