"""``DropPath``: the op as a module, with its rate in a float32 buffer that compiled code reads."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ..checks import check_batch_dim, check_bool, check_mode, validate_rate
from .functional import batch_dim_of, check_floating, scaled_mask

__all__ = ["DropPath"]


class DropPath(nn.Module):
    """Drop path (stochastic depth) per sample, for the output of a residual branch.

    The rate lives in a float (``rate``) and, for the forward pass, in a 0-dim float32 tensor that
    is a non-persistent buffer: it follows ``model.to(device)``, stays out of ``state_dict``, keeps
    float32 under ``model.half()`` / ``.to(torch.bfloat16)``, and changing the rate writes into it
    in place, so a compiled model sees the new rate without recompiling (only switching between
    ``rate == 0`` and ``rate > 0`` changes the traced code).

    ``patch`` is None for a DropPath you create; on one that ``apply_drop_path`` attached it is the
    undo record (``droppath_surgery.execute.PatchRecord``): where it sits, what it replaced or hooks,
    the branches it drops.
    """

    keep_prob: Tensor
    batch_dim: int
    mode: str
    scale_by_keep: bool
    sync_group: str | None
    patch: Any
    _rate: float
    _active: bool

    def __init__(self, rate: float = 0.0, *, batch_dim: int = 0, mode: str = "row", scale_by_keep: bool = True) -> None:
        super().__init__()
        self.batch_dim = check_batch_dim(batch_dim)
        self.mode = check_mode(mode)
        self.scale_by_keep = check_bool(scale_by_keep, "scale_by_keep", "scale kept samples by 1 / (1 - rate)")
        rate = validate_rate(rate)
        self.register_buffer("keep_prob", torch.tensor(1.0 - rate, dtype=torch.float32), persistent=False)
        self._rate = rate
        self._active = rate > 0.0
        self.sync_group: str | None = None
        self.patch: Any = None

    @property
    def rate(self) -> float:
        """The probability of dropping a sample's branch."""
        return self._rate

    @rate.setter
    def rate(self, value: float) -> None:
        value = validate_rate(value)
        with torch.no_grad():
            self.keep_prob.fill_(1.0 - value)
        # plain attributes: skip nn.Module.__setattr__'s bookkeeping (this runs every step)
        object.__setattr__(self, "_rate", value)
        object.__setattr__(self, "_active", value > 0.0)

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or not self._active:
            return x
        check_floating(x)
        dim = batch_dim_of(self.batch_dim, x)
        return x * scaled_mask(x, self.keep_prob, dim, self.mode, self.scale_by_keep, self.sync_group)

    def __setstate__(self, state: dict) -> None:
        # Modules pickled by older versions load with masks drawn per rank and no undo record.
        state.setdefault("sync_group", None)
        state.setdefault("patch", None)
        super().__setstate__(state)

    def _apply(self, fn: Any, recurse: bool = True) -> "DropPath":
        # model.half() / .to(dtype) would cast the keep probability; keep it exact in float32.
        super()._apply(fn, recurse)
        if self.keep_prob.dtype != torch.float32:
            self.keep_prob = torch.tensor(1.0 - self._rate, dtype=torch.float32, device=self.keep_prob.device)
        return self

    def extra_repr(self) -> str:
        parts = [f"rate={self._rate:.3f}"]
        if self.batch_dim != 0:
            parts.append(f"batch_dim={self.batch_dim}")
        if self.mode != "row":
            parts.append(f"mode={self.mode!r}")
        if not self.scale_by_keep:
            parts.append("scale_by_keep=False")
        if self.sync_group is not None:
            parts.append(f"sync_group={self.sync_group!r}")
        return ", ".join(parts)
