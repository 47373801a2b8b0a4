"""Worker processes for tests/test_training_distributed.py (gloo on CPU, started by the test itself).

``launch`` starts ``world`` processes running ``worker`` and returns rank 0's results: one dict per
scenario. Everything a scenario checks is computed inside the workers (parameters gathered across
ranks, masks recorded by forward hooks, a single-process reference run) and returned as plain
values, so the test process only asserts.
"""

from __future__ import annotations

import datetime
import os
import tempfile
import time
import traceback

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

STEPS = 3
BATCH = 8


def tiny_vit() -> nn.Module:
    import timm

    torch.manual_seed(0)  # the same initial weights on every rank and in the reference
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=2, num_classes=4)


def batches(rank: int, same_data: bool) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Data from a private generator: the global RNG (which draws the masks) is not touched."""
    g = torch.Generator().manual_seed(1000 if same_data else 1000 + rank)
    return [(torch.randn(BATCH, 3, 32, 32, generator=g), torch.randint(0, 4, (BATCH,), generator=g)) for _ in range(STEPS)]


def record_masks(model: nn.Module) -> list[torch.Tensor]:
    from helpers import attached

    masks: list[torch.Tensor] = []
    for d in attached(model):
        d.register_forward_hook(lambda m, args, out: masks.append((out == 0).flatten(1).all(1)))
    return masks


def train(model: nn.Module, data, params=None) -> list[float]:
    optimizer = torch.optim.SGD(params if params is not None else model.parameters(), lr=0.1)
    model.train()
    losses = []
    for x, y in data:
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    return losses


def flat_params(model: nn.Module) -> torch.Tensor:
    out = []
    for p in model.parameters():
        p = p.full_tensor() if hasattr(p, "full_tensor") else p
        out.append(p.detach().reshape(-1))
    return torch.cat(out)


def same_on_all_ranks(t: torch.Tensor) -> bool:
    gathered = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, t.contiguous())
    return all(torch.equal(gathered[0], g) for g in gathered[1:])


def reference(rate: float, data, seed: int, skip_dropped: bool = False) -> torch.Tensor:
    """Single process: the same model, data and global seed as rank 0."""
    from droppath_surgery import apply_drop_path

    model = tiny_vit()
    apply_drop_path(model, rate, schedule="uniform", skip_dropped=skip_dropped)
    torch.manual_seed(seed)
    train(model, data)
    return flat_params(model)


def scenario_ddp(rank: int, sync: bool, checkpointing: bool, patch_after_wrap: bool, skip_dropped: bool = False) -> dict:
    from torch.nn.parallel import DistributedDataParallel as DDP

    from droppath_surgery import UnsupportedModelError, apply_drop_path
    from droppath_surgery.training import sync_drop_path_masks

    result: dict = {}
    rate = 0.5
    model = tiny_vit()
    if patch_after_wrap:
        ddp = DDP(model)
        try:
            apply_drop_path(ddp, rate, schedule="uniform")
        except UnsupportedModelError as exc:
            result["wrapper_error"] = str(exc)
        apply_drop_path(ddp.module, rate, schedule="uniform")
    else:
        report = apply_drop_path(model, rate, schedule="uniform", skip_dropped=skip_dropped)
        result["skipping_sites"] = sum(s.compute == "skip" for s in report.sites)
        ddp = DDP(model)
    if checkpointing:
        model.set_grad_checkpointing()
    if sync:
        result["synced_modules"] = sync_drop_path_masks(ddp)
    masks = record_masks(model)
    data = batches(rank, same_data=sync)
    torch.manual_seed(100 + rank)  # ranks seeded differently: their own masks by default
    result["losses"] = train(ddp, data)
    params = flat_params(model)
    result["params_same_on_all_ranks"] = same_on_all_ranks(params)
    stacked = torch.stack(masks).to(torch.uint8)
    result["num_masks"] = stacked.shape[0]
    result["drop_fraction"] = stacked.float().mean().item()
    result["masks_same_on_all_ranks"] = same_on_all_ranks(stacked)
    if sync and rank == 0:
        # Same data everywhere and rank 0's masks everywhere: DDP's averaged gradient is rank 0's,
        # so training must match one process with rank 0's seed and no checkpointing.
        ref = reference(rate, data, seed=100, skip_dropped=skip_dropped)
        result["max_diff_to_single_process"] = (ref - params).abs().max().item()
    return result


def scenario_compiled_sync(rank: int) -> dict:
    """A patched model under torch.compile(fullgraph=True) with synced masks: the broadcast traces."""
    import torch._dynamo
    from torch._dynamo.testing import CompileCounterWithBackend

    from droppath_surgery import apply_drop_path
    from droppath_surgery.training import sync_drop_path_masks

    torch._dynamo.reset()
    model = tiny_vit()
    apply_drop_path(model, 0.5, schedule="uniform")
    sync_drop_path_masks(model)
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(model, backend=counter, fullgraph=True).train()
    x, y = batches(rank, same_data=True)[0]
    torch.manual_seed(100 + rank)
    outputs = []
    for _ in range(2):
        out = compiled(x)
        nn.functional.cross_entropy(out, y).backward()
        outputs.append(out.detach())
    logits = torch.stack(outputs)
    eager = model(x).detach()  # eager, rank 0's next masks: must also agree across ranks
    return {
        "frames": counter.frame_count,
        "graph_breaks": sum(torch._dynamo.utils.counters["graph_break"].values()),
        "outputs_same_on_all_ranks": same_on_all_ranks(logits) and same_on_all_ranks(eager),
        "steps_differ": not torch.equal(logits[0], logits[1]),
    }


def fsdp2_reason_unsupported() -> str | None:
    try:
        from torch.distributed.fsdp import fully_shard  # noqa: F401
    except ImportError as exc:
        return f"torch {torch.__version__} has no torch.distributed.fsdp.fully_shard (FSDP2): {exc}"
    return None


def scenario_fsdp2(rank: int, sync: bool, skip_dropped: bool = False) -> dict:
    from torch.distributed.fsdp import fully_shard

    from droppath_surgery import apply_drop_path, set_drop_path_rate
    from droppath_surgery.training import sync_drop_path_masks

    result: dict = {}
    rate = 0.5
    model = tiny_vit()
    # before sharding: no collectives needed
    report = apply_drop_path(model, rate, schedule="uniform", skip_dropped=skip_dropped)
    result["skipping_sites"] = sum(s.compute == "skip" for s in report.sites)
    masks = record_masks(model)
    for block in model.blocks:
        fully_shard(block)
    fully_shard(model)
    result["sharded"] = type(model).__name__
    if sync:
        sync_drop_path_masks(model)
    data = batches(rank, same_data=sync)
    torch.manual_seed(100 + rank)
    result["losses"] = train(model, data)
    set_drop_path_rate(model, 0.25)  # re-scheduling a sharded model: buffers only, no collective
    params = flat_params(model)
    result["params_same_on_all_ranks"] = same_on_all_ranks(params)
    stacked = torch.stack(masks).to(torch.uint8)
    result["masks_same_on_all_ranks"] = same_on_all_ranks(stacked)
    result["drop_fraction"] = stacked.float().mean().item()
    if sync and rank == 0:
        ref = reference(rate, data, seed=100, skip_dropped=skip_dropped)
        result["max_diff_to_single_process"] = (ref - params).abs().max().item()
    return result


SCENARIOS = {
    "ddp_default": lambda rank: scenario_ddp(rank, sync=False, checkpointing=False, patch_after_wrap=False),
    "ddp_sync": lambda rank: scenario_ddp(rank, sync=True, checkpointing=False, patch_after_wrap=True),
    "ddp_sync_checkpointing": lambda rank: scenario_ddp(rank, sync=True, checkpointing=True, patch_after_wrap=False),
    "ddp_skip_sync": lambda rank: scenario_ddp(rank, sync=True, checkpointing=False, patch_after_wrap=False, skip_dropped=True),
    "compiled_sync": scenario_compiled_sync,
    "fsdp2_default": lambda rank: scenario_fsdp2(rank, sync=False),
    "fsdp2_sync": lambda rank: scenario_fsdp2(rank, sync=True),
    "fsdp2_skip_sync": lambda rank: scenario_fsdp2(rank, sync=True, skip_dropped=True),
}


def worker(rank: int, world: int, init_file: str, out_file: str, names: list[str]) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=120)
    )
    results = {}
    try:
        for name in names:
            if name.startswith("fsdp2") and fsdp2_reason_unsupported():
                results[name] = {"skip": fsdp2_reason_unsupported()}
                continue
            try:
                results[name] = SCENARIOS[name](rank)
            except Exception:  # report it to the test instead of hanging the other rank
                results[name] = {"error": traceback.format_exc()}
                raise
        if rank == 0:
            torch.save(results, out_file)
    finally:
        dist.destroy_process_group()


def launch(names: list[str], world: int = 2, timeout: float = 300.0) -> dict:
    tmp = tempfile.mkdtemp(prefix="droppath-dist-")
    init_file, out_file = os.path.join(tmp, "init"), os.path.join(tmp, "results.pt")
    context = mp.start_processes(worker, args=(world, init_file, out_file, names), nprocs=world, join=False, start_method="spawn")
    deadline = time.monotonic() + timeout
    while not context.join(timeout=1.0):
        if time.monotonic() > deadline:
            for process in context.processes:
                if process.is_alive():
                    process.kill()
            raise TimeoutError(f"distributed workers did not finish within {timeout:.0f} s")
    return torch.load(out_file, weights_only=False)
