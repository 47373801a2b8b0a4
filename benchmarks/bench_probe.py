"""What patching costs as models grow: memory and time of ``apply_drop_path`` over one eval forward.

For each model, the peak memory that ``apply_drop_path(model, 0.1, example_inputs=...)`` (with
verification) adds over the built model, against what one eval forward under ``torch.no_grad()``
adds on the same input, each measured as the rise of the process's peak resident set (CPU) or of
``torch.cuda.max_memory_allocated``; and the time of the same two, in a separate process (the memory
measurement slows allocation). Every model runs in fresh processes, after one forward and one patch
of a toy model (the package's modules load on first use: imports count for neither side); ``again x``
is a second patch in the same process (the first one grows Python's heap for the recording's
objects, which the allocator keeps). Goals (issue 15): memory at most
1.5x, time at most 2.5x, both linear in depth; a 70B decoder on the meta device patches in seconds.

    python benchmarks/bench_probe.py                  # sizes, 22M to 2B parameters, and depths 12..96
    python benchmarks/bench_probe.py --only vit_b d12 --depths
    python benchmarks/bench_probe.py --meta-70b       # the 70B Llama config on the meta device only
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent

# name -> (builder, kwargs, batch); timm models at their own input size unless img_size is given.
MODELS = {
    "vit_s": ("timm", {"name": "vit_small_patch16_224"}, 8),
    "vit_b": ("timm", {"name": "vit_base_patch16_224"}, 8),
    "vit_l": ("timm", {"name": "vit_large_patch16_224"}, 4),
    "eva02_l_448": ("timm", {"name": "eva02_large_patch14_448"}, 1),
    "deepseek_412m_546": ("timm", {"name": "deepseek_vit_412m"}, 1),
    "vit_g_dinov2_224": ("timm", {"name": "vit_giant_patch14_dinov2", "img_size": 224}, 1),
    "llama_1b": ("llama", {"hidden_size": 2048, "intermediate_size": 5632, "num_hidden_layers": 22, "num_attention_heads": 32,
                           "num_key_value_heads": 4, "vocab_size": 32000}, 1),
    "llama_2b": ("llama", {"hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 30, "num_attention_heads": 32,
                           "num_key_value_heads": 8, "vocab_size": 32000}, 1),
}
DEPTHS = {f"d{n}": ("timm", {"name": "vit_small_patch16_224", "depth": n}, 8) for n in (12, 24, 48, 96)}
LLAMA_70B = {"hidden_size": 8192, "intermediate_size": 28672, "num_hidden_layers": 80, "num_attention_heads": 64,
             "num_key_value_heads": 8, "vocab_size": 128256}


def build(kind: str, spec: dict, batch: int, device: str):
    """The model (eval mode) and its example inputs as (args, kwargs)."""
    torch.manual_seed(0)
    if kind == "timm":
        import timm

        spec = dict(spec)
        model = timm.create_model(spec.pop("name"), pretrained=False, **spec).to(device).eval()
        size = model.pretrained_cfg["input_size"][1:] if "img_size" not in spec else (spec["img_size"],) * 2
        if hasattr(model, "patch_embed") and getattr(model.patch_embed, "img_size", None):
            size = tuple(model.patch_embed.img_size)
        return model, ((torch.randn(batch, 3, *size, device=device),), {})
    import transformers as T

    config = T.LlamaConfig(**spec, use_cache=False, attn_implementation="eager")
    with torch.device(device):
        model = T.LlamaForCausalLM(config).eval()
    ids = torch.randint(0, config.vocab_size, (batch, 256), device=device)
    return model, ((), {"input_ids": ids, "attention_mask": torch.ones_like(ids)})


class Block(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.f = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.GELU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.f(x)


def one(name: str, what: str, device: str) -> dict:
    """Measure one model in this process: ``what`` is "memory" or "time"."""
    from droppath_surgery import apply_drop_path, remove_drop_path

    # The engine's modules load on first use (the package is lazy): load them on a toy model first, so
    # that neither side counts imports.
    toy = torch.nn.Sequential(*[Block() for _ in range(2)])
    apply_drop_path(toy, 0.1, example_inputs=torch.randn(2, 4))
    remove_drop_path(toy)
    kind, spec, batch = {**MODELS, **DEPTHS}[name]
    model, (args, kwargs) = build(kind, spec, batch, device)
    example = kwargs if kwargs else args

    def forward() -> None:
        with torch.no_grad():
            model(*args, **kwargs)

    def apply() -> None:
        apply_drop_path(model, 0.1, example_inputs=example)
        remove_drop_path(model)

    out = {"name": name, "params": sum(p.numel() for p in model.parameters()), "blocks": spec.get("depth") or spec.get("num_hidden_layers")}
    if what == "memory":
        sys.path.insert(0, str(HERE))
        from peak_memory import PeakMemory

        meter = PeakMemory(torch.device(device))  # before any pass: memory of later passes then goes back at once
        forward()  # warm-up: lazy initialisation counts for neither side
        for key, fn in (("forward", forward), ("apply", apply), ("forward2", forward), ("apply2", apply)):
            gc.collect()
            start = meter.start()
            fn()
            out[key + "_rise"] = meter.peak() - start
    else:
        sys.path.insert(0, str(HERE))
        from bench_op import timed

        forward()
        for key, fn in (("forward", forward), ("apply", apply), ("forward2", forward)):
            out[key + "_s"] = timed(fn, device)
    return out


def meta_70b() -> dict:
    import transformers as T

    from droppath_surgery import apply_drop_path

    start = time.perf_counter()
    with torch.device("meta"):
        model = T.LlamaForCausalLM(T.LlamaConfig(**LLAMA_70B, use_cache=False, attn_implementation="eager"))
    built = time.perf_counter() - start
    start = time.perf_counter()
    report = apply_drop_path(model, 0.1)
    return {"params": sum(p.numel() for p in model.parameters()), "build_s": built, "apply_s": time.perf_counter() - start,
            "sites": len(report.sites), "verified": report.verified}


def run_child(name: str, what: str, device: str) -> dict:
    cmd = [sys.executable, __file__, "--child", name, what, "--device", device]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
    if done.returncode or not lines:
        return {"name": name, "error": (done.stderr.strip().splitlines() or ["no output"])[-1]}
    return json.loads(lines[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="*", help=f"model keys: {', '.join([*MODELS, *DEPTHS])}")
    parser.add_argument("--depths", action="store_true", help="only the depth table (ViT-S/16 width, 12 to 96 blocks)")
    parser.add_argument("--meta-70b", action="store_true", help="only the 70B decoder on the meta device")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(one(*args.child, args.device)))
        return
    if not args.depths:
        m = meta_70b()
        print(f"meta device: Llama {m['params'] / 1e9:.1f}B params, built in {m['build_s']:.1f} s, apply_drop_path "
              f"{m['apply_s']:.1f} s, {m['sites']} sites, verified={m['verified']} (shapes only)")
        if args.meta_70b:
            return
    names = args.only or ([*DEPTHS] if args.depths else [*MODELS, *DEPTHS])
    print(f"{args.device}, torch {torch.__version__}, {torch.get_num_threads()} threads; apply = apply_drop_path(model, 0.1, "
          "example_inputs=...) with verification, over one eval forward under no_grad on the same input")
    print(f"{'model':18s} {'params':>8s} {'blocks':>6s} {'fwd MiB':>8s} {'apply MiB':>9s} {'mem x':>6s} {'again x':>7s} "
          f"{'fwd s':>7s} {'apply s':>8s} {'time x':>7s}")
    for name in names:
        mem, tim = run_child(name, "memory", args.device), run_child(name, "time", args.device)
        if "error" in mem or "error" in tim:
            print(f"{name:18s} failed: {mem.get('error') or tim.get('error')}")
            continue
        fwd_rise = min(mem["forward_rise"], mem["forward2_rise"])
        fwd_s = min(tim["forward_s"], tim["forward2_s"])
        print(f"{name:18s} {mem['params'] / 1e6:7.0f}M {mem['blocks'] or '':>6} {fwd_rise / 2**20:8.1f} "
              f"{mem['apply_rise'] / 2**20:9.1f} {mem['apply_rise'] / max(fwd_rise, 1):6.2f} "
              f"{mem['apply2_rise'] / max(fwd_rise, 1):7.2f} {fwd_s:7.2f} "
              f"{tim['apply_s']:8.2f} {tim['apply_s'] / fwd_s:7.2f}", flush=True)


if __name__ == "__main__":
    main()
