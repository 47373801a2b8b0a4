"""The drop path operation as a function: the mask, its unbiased scale, and ``drop_path``.

The mask is one ``torch.rand`` on ``x.device`` (no host sync: it compiles with ``fullgraph=True`` and
runs in CUDA graphs and on the meta device), decided in float32, with the scale ``1 / keep``
stochastically rounded in bf16/fp16 so that ``E[drop_path(x)] = x`` exactly, folded into the small
mask (one pass over the activation); ``p = 1`` gives zeros, never NaN. With ``sync_group`` every
rank uses the first rank's uniform numbers.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from ..checks import check_batch_dim, check_mode, validate_rate
from ..errors import BatchDimError, InvalidArgumentError

__all__ = [
    "drop_path", "scaled_mask", "mask_shape", "draw_uniform", "unbiased_scale", "broadcast_from_first_rank", "batch_dim_of",
    "check_floating", "group_rows",
]


def broadcast_from_first_rank(u: Tensor, group_name: str) -> Tensor:
    """``u`` as drawn on rank 0 of the process group called ``group_name``, on every rank."""
    from torch.distributed import _functional_collectives as funcol

    return funcol.wait_tensor(funcol.broadcast(u, 0, group_name))  # type: ignore[arg-type]  # a group name is accepted


def batch_dim_of(batch_dim: int, x: Tensor) -> int:
    """``batch_dim`` as a non-negative dimension of ``x``, or ``BatchDimError``."""
    if not -x.ndim <= batch_dim < x.ndim:
        check_batch_dim(batch_dim, x.ndim, f"the branch output of shape {tuple(x.shape)}")
    return batch_dim % x.ndim


def group_rows(x: Tensor, dim: int, rows: int, interleaved: bool = False) -> tuple[Tensor, int]:
    """``x`` with ``dim`` (``rows`` entries per sample) split in two, and which of the two indexes samples:
    ``(samples, rows)`` when each sample's rows are consecutive (its attention windows), ``(rows, samples)``
    when they ``interleave`` (a tower that runs all samples' patches patch-major: row ``j * B + s``).
    ``.flatten(dim, dim + 1)`` undoes it. ``BatchDimError`` when ``dim`` is no multiple of ``rows``."""
    if x.shape[dim] % rows:
        raise BatchDimError(
            f"the branch output has {x.shape[dim]} entries along dim {dim}, not a multiple of the "
            f"{rows} rows per sample it was traced with: train at the size it was patched at"
        )
    split = (rows, x.shape[dim] // rows) if interleaved else (x.shape[dim] // rows, rows)
    return x.unflatten(dim, split), dim + 1 if interleaved else dim


def check_floating(x: Tensor) -> None:
    if not x.is_floating_point():
        raise InvalidArgumentError(
            f"drop path scales a branch's output and needs a floating-point tensor, got dtype {x.dtype}; "
            f"attach it where the branch output is a float tensor."
        )


def mask_shape(x: Tensor, batch_dim: int, mode: str) -> list[int]:
    """``(1, .., N, .., 1)`` for one decision per sample, all ones for one per batch."""
    shape = [1] * x.ndim
    if mode == "row":
        shape[batch_dim] = x.shape[batch_dim]
    return shape


def draw_uniform(shape: list[int], dtype: torch.dtype, device: torch.device, sync_group: str | None) -> Tensor:
    """Uniform numbers on the device (the first rank's, with ``sync_group``)."""
    u = torch.rand(shape, dtype=dtype, device=device)
    return broadcast_from_first_rank(u, sync_group) if sync_group is not None else u


def scaled_mask(
    x: Tensor,
    keep: Tensor,
    batch_dim: int,
    mode: str,
    scale_by_keep: bool,
    sync_group: str | None = None,
    u: Tensor | None = None,
) -> Tensor:
    """The per-sample multiplier: 0 for dropped samples, an unbiased ``1/keep`` for kept ones; from the
    uniform numbers ``u`` when given (a block's shared decision), else drawn here. A handful of small
    kernels (5 in float32, 14 in bf16): in eager mode on a GPU each costs a launch."""
    shape = mask_shape(x, batch_dim, mode)
    work = torch.float64 if x.dtype == torch.float64 else torch.float32
    keep = keep.to(device=x.device, dtype=work)
    u = draw_uniform(shape, work, x.device, sync_group) if u is None else u.to(work).view(shape)
    kept = u < keep
    if not scale_by_keep:
        return kept.to(x.dtype)
    keep_safe = keep.clamp_min(torch.finfo(work).tiny)
    # u / keep is uniform in [0, 1) given kept: it picks the rounding without another draw (only computed
    # where the scale is rounded).
    scale = _unbiased(keep_safe, lambda: u / keep_safe, x.dtype)
    return torch.where(kept, scale, 0.0).to(x.dtype)


def unbiased_scale(keep: Tensor, v: Tensor, dtype: torch.dtype) -> Tensor:
    """``1 / keep`` as a number representable in ``dtype`` whose expectation is exactly ``1 / keep``.

    ``keep`` and ``v`` are in the working precision (float32, or float64); ``v`` holds uniform
    numbers in [0, 1), one per kept sample. In float32/float64 the result is ``1 / keep`` itself. In
    bf16 / fp16 ``1 / keep`` is split into ``lo + frac * ulp`` on the grid of ``dtype``, and ``lo`` or
    ``lo + ulp`` is picked with probability ``(1 - frac, frac)``: a stochastically rounded scale.
    The result stays in the working precision (its values are exact in ``dtype``).
    """
    scale = _unbiased(keep.clamp_min(torch.finfo(keep.dtype).tiny), lambda: v, dtype)
    return scale.expand(v.shape) if scale.shape != v.shape else scale


def _unbiased(keep: Tensor, v: Callable[[], Tensor], dtype: torch.dtype) -> Tensor:
    """``unbiased_scale`` of a ``keep`` already clamped above 0, with ``v`` computed only where needed."""
    work = keep.dtype
    scale = keep.reciprocal()
    out_info = torch.finfo(dtype)
    if out_info.eps <= torch.finfo(work).eps:
        return scale
    if dtype == torch.bfloat16 and work == torch.float32:
        # bf16 is float32 with the low 16 bits cut: for 1 <= scale < 2^128 (keep in (0, 1]) lo is scale
        # with them cleared, lo + ulp the next bf16, and frac those bits over 2^16, all exact: the values
        # of the general path below, in 7 kernels instead of 14.
        bits = scale.view(torch.int32)
        lo = bits.bitwise_and(-65536)
        frac = bits.bitwise_and(65535).to(work) * (1.0 / 65536)
        return torch.where(v() < frac, (lo + 65536).view(work), lo.view(work))
    scale = scale.clamp_max(out_info.max)
    _, exponent = torch.frexp(scale)
    ulp = torch.ldexp(torch.full_like(scale, out_info.eps), exponent - 1)
    lo = torch.floor(scale / ulp) * ulp
    frac = (scale - lo) / ulp
    return lo + ulp * (v() < frac).to(work)


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
    check_mode(mode)
    check_batch_dim(batch_dim)
    if isinstance(p, Tensor):
        if not training:
            return x
        keep = 1.0 - p.detach()
    else:
        p = validate_rate(p, "p")
        if not training or p == 0.0:
            return x
        keep = torch.full((), 1.0 - p, dtype=torch.float32, device=x.device)
    check_floating(x)
    return x * scaled_mask(x, keep, batch_dim_of(batch_dim, x), mode, scale_by_keep)
