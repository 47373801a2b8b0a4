"""Identical drop path masks on every rank of a process group (those of its first rank)."""

from __future__ import annotations

from typing import Any

from torch import nn

from ..errors import DistributedError, NotPatchedError
from ..execute import patched_modules
from ..integrations.wrappers import unwrap_model

__all__ = ["sync_drop_path_masks"]


def sync_drop_path_masks(model: Any, group: Any = None, *, enabled: bool = True) -> int:
    """Make every rank of a process group use the same drop path masks (those of its first rank).

    By default each rank draws its own masks from its own global RNG (independent masks when ranks
    are seeded differently). With sync on, each DropPath call draws as usual and then broadcasts
    its ``N`` uniform numbers from the group's first rank: one small collective per call, traceable
    by ``torch.compile``, no host synchronization on NCCL. Gradient checkpointing recomputes the same
    masks (the draw is repeated from the restored RNG and broadcast again).

    Every rank must run the same DropPath calls in the same order with the same batch size (DDP
    and FSDP training does; a packed vision tower draws one number per image, so every rank must
    then hold the same number of images). A dedicated group (``torch.distributed.new_group()``) keeps these
    broadcasts apart from DDP's gradient all-reduces. Returns the number of DropPath modules set.

    Args:
        model: a patched model, or a DDP / ``torch.compile`` wrapper of one.
        group: a ``torch.distributed`` process group; the default group when None.
        enabled: False turns sync off again (each rank draws its own masks).
    """
    inner = unwrap_model(model)
    drops = patched_modules(inner) if isinstance(inner, nn.Module) else []
    if not drops:
        raise NotPatchedError(
            f"{type(inner).__name__} has no drop path whose masks could be synced; call apply_drop_path first."
        )
    name = None
    if enabled:
        import torch.distributed as dist

        if not dist.is_available() or not dist.is_initialized():
            raise DistributedError(
                "sync_drop_path_masks needs an initialized torch.distributed process group (masks are "
                "broadcast from the first rank); call torch.distributed.init_process_group(...) first, "
                "or leave masks per rank."
            )
        pg = group if group is not None else dist.group.WORLD
        name = getattr(pg, "group_name", None)
        if not isinstance(name, str):
            raise DistributedError(
                f"group must be a torch.distributed ProcessGroup (or None for the default group), got "
                f"{type(group).__name__}."
            )
    for drop in drops:
        drop.sync_group = name
    return len(drops)
