"""DropPath forward+backward against a bare ``x * mask`` multiply and timm's DropPath.

Prints ratios measured in one run (interleaved, median of many repeats), so machine noise
affects all three alike. Goal: ours / bare <= 1.05 and ours <= timm.

    python benchmarks/bench_op.py [--shape 64 197 768] [--device cpu|cuda] [--dtype float32|bfloat16]

On CUDA it also runs forward and backward under torch.cuda.set_sync_debug_mode("error"), which
raises on any host-device synchronization.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from droppath_surgery import DropPath


def timed(fn, device: str) -> float:
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shape", type=int, nargs="+", default=[64, 197, 768])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--repeats", type=int, default=60)
    parser.add_argument("--rate", type=float, default=0.1)
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype)
    device = args.device
    x = torch.randn(*args.shape, device=device, dtype=dtype, requires_grad=True)
    grad = torch.randn_like(x)
    mask = (torch.rand(args.shape[0], *[1] * (len(args.shape) - 1), device=device) > args.rate).to(dtype) / (1 - args.rate)
    ours = DropPath(args.rate).train().to(device)
    candidates = {"bare x * mask": lambda: (x * mask).backward(grad), "droppath-surgery": lambda: ours(x).backward(grad)}
    try:
        from timm.layers import DropPath as TimmDropPath

        theirs = TimmDropPath(args.rate).train()
        candidates["timm DropPath"] = lambda: theirs(x).backward(grad)
    except ImportError:
        pass
    times: dict[str, list[float]] = {k: [] for k in candidates}
    for _ in range(5):  # warm-up
        for fn in candidates.values():
            fn()
    for _ in range(args.repeats):
        for name, fn in candidates.items():
            x.grad = None
            times[name].append(timed(fn, device))
    med = {k: statistics.median(v) for k, v in times.items()}
    base = med["bare x * mask"]
    print(f"DropPath forward+backward, shape {tuple(args.shape)} {args.dtype} on {device}, rate {args.rate}")
    for name, t in med.items():
        print(f"  {name:18s} {t * 1e3:8.3f} ms  {t / base:5.3f}x bare")
    if "timm DropPath" in med:
        print(f"  ours / timm: {med['droppath-surgery'] / med['timm DropPath']:.3f}x")
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            ours(x).backward(grad)
            print("  no host synchronization in forward and backward (sync debug mode 'error')")
        finally:
            torch.cuda.set_sync_debug_mode(0)


if __name__ == "__main__":
    main()
