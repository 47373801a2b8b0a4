"""The drop path operation: a function and a thin module.

Stochastic depth (Huang et al. 2016) zeroes a residual branch's output for a random subset of
samples while training and scales the kept samples by ``1 / (1 - p)`` so that the expectation is
unchanged. In eval mode, and at ``p = 0``, the input itself is returned.

How the mask is made, and why:

* It is drawn on ``x.device`` with one ``torch.rand`` of the mask's shape (one number per sample,
  or one for the whole batch): no host-device copy, no ``.item()``, no synchronization, so it runs
  under ``torch.compile(fullgraph=True)``, inside CUDA graphs and on the meta device.
* The keep decision is made in float32 (float64 for float64 inputs), never in the activation's
  dtype: comparing a bf16 uniform number with ``keep`` would quantize the drop rate (at
  ``p = 0.004`` in bf16 the effective rate would be far off).
* The scale ``1 / keep`` is usually not representable in bf16 or fp16; rounding it once would bias
  ``E[drop_path(x)]`` by up to 0.4 %. Instead each kept sample is scaled by one of the two
  neighbouring representable numbers ``lo`` and ``lo + ulp`` around ``1 / keep``, chosen at random
  so that the mean scale is exactly ``1 / keep``: an unbiased (stochastically rounded) scale. The
  same uniform number decides both things, so there is still one draw per sample.
* The scale is folded into the small mask, so the activation is read and written once forward
  (``x * mask``) and once backward (``grad * mask``).
* ``p = 1`` gives zeros (with zero gradients), never NaN; ``1 / keep`` is never formed from 0.
* Under data parallelism each rank draws its own masks from its own global RNG. With
  ``DropPath.sync_group`` set to a process group's name, the uniform numbers drawn on the group's
  first rank are broadcast (one functional collective of ``N`` floats per call, traceable by
  ``torch.compile``) and every rank uses them: identical masks on all ranks. The numbers are still
  drawn from the global RNG first, so gradient checkpointing recomputes the same masks.
"""

from __future__ import annotations

import math
import numbers

import torch
from torch import Tensor, nn

from .errors import InvalidRateError

__all__ = ["drop_path", "DropPath", "validate_rate", "is_placeholder", "is_drop_path_slot", "unbiased_scale"]

_MODES = ("row", "batch")


def validate_rate(rate: object, what: str = "rate") -> float:
    """Return ``rate`` as a float, or raise ``InvalidRateError`` if it is not finite and in [0, 1]."""
    if isinstance(rate, bool) or not isinstance(rate, numbers.Real):
        raise InvalidRateError(
            f"{what} must be a number in [0, 1] (the probability of dropping a sample's branch), "
            f"got {rate!r} of type {type(rate).__name__}; pass a float such as 0.1."
        )
    value = float(rate)
    if not math.isfinite(value) or not 0.0 <= value <= 1.0:
        raise InvalidRateError(
            f"{what} must be a finite number in [0, 1] (the probability of dropping a sample's "
            f"branch), got {value!r}; typical fine-tuning rates are 0.1 to 0.5."
        )
    return value


def _check_mode(mode: str) -> None:
    if mode not in _MODES:
        raise ValueError(
            f"mode must be 'row' (drop per sample) or 'batch' (drop the whole batch), got {mode!r}."
        )


def _broadcast_from_first_rank(u: Tensor, group_name: str) -> Tensor:
    """``u`` as drawn on rank 0 of the process group called ``group_name``, on every rank."""
    from torch.distributed import _functional_collectives as funcol

    return funcol.wait_tensor(funcol.broadcast(u, 0, group_name))


def _scaled_mask(
    x: Tensor, keep: Tensor, batch_dim: int, mode: str, scale_by_keep: bool, sync_group: str | None = None
) -> Tensor:
    """The per-sample multiplier: 0 for dropped samples, an unbiased ``1/keep`` for kept ones."""
    shape = [1] * x.ndim
    if mode == "row":
        shape[batch_dim] = x.shape[batch_dim]
    work = torch.float64 if x.dtype == torch.float64 else torch.float32
    keep = keep.to(device=x.device, dtype=work)
    u = torch.rand(shape, dtype=work, device=x.device)
    if sync_group is not None:
        u = _broadcast_from_first_rank(u, sync_group)
    kept = u < keep
    if not scale_by_keep:
        return kept.to(x.dtype)
    zero = torch.zeros((), dtype=work, device=x.device)
    keep_safe = keep.clamp_min(torch.finfo(work).tiny)
    # u / keep is uniform in [0, 1) given kept: it picks the rounding without another draw.
    scale = unbiased_scale(keep, u / keep_safe, x.dtype)
    return torch.where(kept, scale, zero).to(x.dtype)


def unbiased_scale(keep: Tensor, v: Tensor, dtype: torch.dtype) -> Tensor:
    """``1 / keep`` as a number representable in ``dtype`` whose expectation is exactly ``1 / keep``.

    ``keep`` and ``v`` are in the working precision (float32, or float64); ``v`` holds uniform
    numbers in [0, 1), one per kept sample. In float32/float64 the result is ``1 / keep`` itself. In
    bf16 / fp16 ``1 / keep`` is split into ``lo + frac * ulp`` on the grid of ``dtype``, and ``lo`` or
    ``lo + ulp`` is picked with probability ``(1 - frac, frac)``: a stochastically rounded scale.
    The result stays in the working precision (its values are exact in ``dtype``).
    """
    work = keep.dtype
    scale = 1.0 / keep.clamp_min(torch.finfo(work).tiny)
    out_info = torch.finfo(dtype)
    if out_info.eps > torch.finfo(work).eps:
        scale = scale.clamp_max(out_info.max)
        _, exponent = torch.frexp(scale)
        ulp = torch.ldexp(torch.full((), out_info.eps, dtype=work, device=keep.device), exponent - 1)
        lo = torch.floor(scale / ulp) * ulp
        frac = (scale - lo) / ulp
        scale = lo + ulp * (v < frac).to(work)
    return scale.expand(v.shape) if scale.shape != v.shape else scale


def drop_path(
    x: Tensor,
    p: float | Tensor = 0.0,
    training: bool = False,
    *,
    batch_dim: int = 0,
    mode: str = "row",
    scale_by_keep: bool = True,
) -> Tensor:
    """Stochastic depth on a residual branch's output ``x``.

    Args:
        x: the branch output. Its dimension ``batch_dim`` indexes the samples.
        p: the probability of dropping a sample's branch, in [0, 1]. A float, or a 0-dim tensor
            (which avoids recompiles under ``torch.compile`` when the rate changes).
        training: drop only when True; otherwise ``x`` itself is returned.
        batch_dim: the dimension of ``x`` that indexes samples (1 for sequence-first layouts).
        mode: ``"row"`` draws one decision per sample, ``"batch"`` one for the whole batch.
        scale_by_keep: scale kept samples by ``1 / (1 - p)`` so the expectation is unchanged.

    Returns ``x`` itself when not training or when ``p == 0`` (a float). ``p = 1`` gives zeros.
    """
    _check_mode(mode)
    if isinstance(p, Tensor):
        if not training:
            return x
        keep = 1.0 - p.detach()
    else:
        p = validate_rate(p, "p")
        if not training or p == 0.0:
            return x
        keep = torch.full((), 1.0 - p, dtype=torch.float32, device=x.device)
    if not x.is_floating_point():
        raise TypeError(f"drop_path needs a floating-point tensor, got dtype {x.dtype}.")
    dim = _normalize_dim(batch_dim, x.ndim)
    return x * _scaled_mask(x, keep, dim, mode, scale_by_keep)


def _normalize_dim(batch_dim: int, ndim: int) -> int:
    if not -ndim <= batch_dim < ndim:
        raise ValueError(
            f"batch_dim={batch_dim} is out of range for a tensor with {ndim} dimensions; pass the "
            f"dimension that indexes samples (0 for (N, ...) layouts, 1 for (L, N, D))."
        )
    return batch_dim % ndim


class DropPath(nn.Module):
    """Drop path (stochastic depth) per sample, for the output of a residual branch.

    The rate lives in a float (``rate``) and, for the forward pass, in a 0-dim float32 tensor that
    is a non-persistent buffer: it follows ``model.to(device)``, stays out of ``state_dict``, keeps
    float32 under ``model.half()`` / ``.to(torch.bfloat16)``, and changing the rate writes into it
    in place, so a compiled model sees the new rate without recompiling (only switching between
    ``rate == 0`` and ``rate > 0`` changes the traced code).
    """

    keep_prob: Tensor

    def __init__(
        self,
        rate: float = 0.0,
        *,
        batch_dim: int = 0,
        mode: str = "row",
        scale_by_keep: bool = True,
    ) -> None:
        super().__init__()
        _check_mode(mode)
        if isinstance(batch_dim, bool) or not isinstance(batch_dim, int):
            raise TypeError(f"batch_dim must be an int, got {batch_dim!r}.")
        self.batch_dim = batch_dim
        self.mode = mode
        self.scale_by_keep = bool(scale_by_keep)
        rate = validate_rate(rate)
        self.register_buffer("keep_prob", torch.tensor(1.0 - rate, dtype=torch.float32), persistent=False)
        self._rate = rate
        self._active = rate > 0.0
        self.sync_group: str | None = None

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
        dim = self.batch_dim if self.batch_dim >= 0 else self.batch_dim + x.ndim
        return x * _scaled_mask(x, self.keep_prob, dim, self.mode, self.scale_by_keep, self.sync_group)

    def __setstate__(self, state: dict) -> None:
        # Modules pickled before ``sync_group`` existed load with masks drawn per rank.
        state.setdefault("sync_group", None)
        super().__setstate__(state)

    def _apply(self, fn, recurse=True):  # type: ignore[override]
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


def is_placeholder(module: nn.Module) -> bool:
    """True for a drop path slot: a module that is the identity in eval mode and holds no state
    (``nn.Identity``, a dropout with ``p == 0``, or a parameterless DropPath-like module such as
    timm's ``DropPath`` or torchvision's ``StochasticDepth``)."""
    if isinstance(module, (DropPath, nn.Identity)):
        return True
    if isinstance(module, nn.modules.dropout._DropoutNd):
        return module.p == 0
    name = type(module).__name__.lower()
    if "droppath" in name or "stochasticdepth" in name:
        has_state = any(True for _ in module.parameters()) or any(True for _ in module.buffers())
        return not has_state and not any(True for _ in module.children())
    return False


def is_drop_path_slot(module: nn.Module, path: str) -> bool:
    """A placeholder the architecture named as a drop path / stochastic depth slot (``drop_path1``,
    ``stochastic_depth``, or a DropPath-like class)."""
    name = path.rsplit(".", 1)[-1].lower()
    return is_placeholder(module) and (
        "drop" in name or "stochastic" in name or "droppath" in type(module).__name__.lower()
    )
