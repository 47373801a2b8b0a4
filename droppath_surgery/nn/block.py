"""One keep decision per sample for a whole block (``granularity="block"``): LayerDrop / LayerSkip.

Every branch end of a block asks the block's ``BlockDecision``; the first one that runs in a forward
pass draws (uniform numbers on the device, no host sync) and the others reuse the draw, so a dropped
sample loses all of the block's branches: in a pre-norm block its output is its input. A pre-hook on
the model (``reset``) starts each forward pass afresh; recomputation under gradient checkpointing
reuses the draw of its pass. With ``skip_dropped=True`` the draw is the kept-sample draw of skip mode,
and branches that cannot skip mask with exactly those samples.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .functional import draw_uniform, mask_shape, scaled_mask

__all__ = ["BlockDecision"]


class BlockDecision:
    """The shared decision of one block for the current forward pass."""

    def __init__(self, block: int) -> None:
        self.block = block
        self.uniform: Tensor | None = None  # per-sample (or per-batch) numbers, masked blocks
        self.drawn: tuple | None = None  # (idx, v, kept), skipping blocks

    def reset(self) -> None:
        self.uniform = None
        self.drawn = None

    def kept(self, drop: Any, batch: int, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
        """The samples this block computes (skip mode), drawn once per pass."""
        from .skip import draw_kept

        if self.drawn is None or self.drawn[0].device != device:
            self.drawn = draw_kept(drop, batch, device)
        return self.drawn

    def mask(self, drop: Any, x: Tensor, dim: int, keep: Tensor) -> Tensor:
        """The multiplier of a masked branch of this block: the same samples for every branch."""
        from .skip import SkipDropPath, kept_mask

        if isinstance(drop, SkipDropPath) and drop.mode == "row":  # the skip draw: masked branches agree with skipping ones
            idx, v, kept = self.kept(drop, x.shape[dim], x.device)
            return kept_mask(x, dim, idx, drop.branch_weights(v, kept, x.dtype))
        shape = mask_shape(x, dim, drop.mode)
        work = torch.float64 if x.dtype == torch.float64 else torch.float32
        n = shape[dim] if drop.mode == "row" else 1
        if self.uniform is None or self.uniform.numel() != n or self.uniform.device != x.device:
            self.uniform = draw_uniform([n], work, x.device, drop.sync_group)
        return scaled_mask(x, keep, dim, drop.mode, drop.scale_by_keep, u=self.uniform)
