"""``DropPath``: the op as a module, with its rate in a float32 buffer that compiled code reads."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..checks import check_batch_dim, check_bool, check_mode, validate_rate
from ..errors import BatchDimError, CallCountError, InvalidArgumentError
from .functional import batch_dim_of, check_floating, group_rows, scaled_mask

__all__ = ["DropPath"]


class DropPath(nn.Module):
    """Drop path (stochastic depth) per sample, for the output of a residual branch.

    The rate lives in a float (``rate``) and, for the forward pass, in a 0-dim float32 tensor that
    is a non-persistent buffer: it follows ``model.to(device)``, stays out of ``state_dict``, keeps
    float32 under ``model.half()`` / ``.to(torch.bfloat16)``, and changing the rate writes into it
    in place, so a compiled model sees the new rate without recompiling (only switching between
    ``rate == 0`` and ``rate > 0`` changes the traced code).

    With ``rows_per_sample=k`` each sample has ``k`` rows of the batch dimension (its attention windows,
    or the patches a tower runs as a batch) that share one decision: consecutive rows, or with
    ``interleaved=True`` rows ``B`` apart (row ``j * B + s`` is row ``j`` of sample ``s``: patch-major).

    With ``packed=True`` the batch dimension holds the rows of several samples one after another (a
    vision tower that runs the patches of all images as one sequence): before each call, ``segments``
    must hold their boundaries, the cumulative lengths ``[0, n1, n1 + n2, ..., L]`` (``cu_seqlens``),
    and each segment gets one decision for all its rows (no host sync). ``apply_drop_path`` sets them
    with a pre-hook on the block, from the argument its attention reads them from.

    ``patch`` is None for a DropPath you create; on one that ``apply_drop_path`` attached it is the
    undo record (``droppath_surgery.execute.PatchRecord``): where it sits, what it replaced or hooks,
    the branches it drops.
    """

    keep_prob: Tensor
    batch_dim: int
    rows_per_sample: int
    interleaved: bool
    packed: bool
    segments: Tensor | None
    mode: str
    scale_by_keep: bool
    sync_group: str | None
    patch: Any
    call_rates: tuple[float, ...] | None
    decisions: tuple[Any, ...] | None
    _rate: float
    _active: bool
    _call: int

    def __init__(
        self,
        rate: float = 0.0,
        *,
        batch_dim: int = 0,
        mode: str = "row",
        scale_by_keep: bool = True,
        rows_per_sample: int = 1,
        interleaved: bool = False,
        packed: bool = False,
    ) -> None:
        super().__init__()
        self.batch_dim = check_batch_dim(batch_dim)
        if isinstance(rows_per_sample, bool) or not isinstance(rows_per_sample, int) or rows_per_sample < 1:
            raise InvalidArgumentError(
                f"rows_per_sample must be an int >= 1 (entries of the batch dim that belong to one sample, e.g. its "
                f"attention windows), got {rows_per_sample!r}."
            )
        self.rows_per_sample = rows_per_sample
        self.interleaved = check_bool(interleaved, "interleaved", "a sample's rows are B apart (row j * B + sample), not consecutive")
        self.packed = check_bool(packed, "packed", "the batch dim packs the rows of several samples, split by segments")
        self.segments = None  # packed: the samples' boundaries for the next call
        self.mode = check_mode(mode)
        self.scale_by_keep = check_bool(scale_by_keep, "scale_by_keep", "scale kept samples by 1 / (1 - rate)")
        rate = validate_rate(rate)
        self.register_buffer("keep_prob", torch.tensor(1.0 - rate, dtype=torch.float32), persistent=False)
        self._rate = rate
        self._active = rate > 0.0
        self.sync_group: str | None = None
        self.patch: Any = None
        self.call_rates = None  # one rate per call in a forward pass, for a module shared across depths
        self.decisions = None  # granularity="block": the BlockDecision of each call's block
        self._call = 0

    @property
    def rate(self) -> float:
        """The probability of dropping a sample's branch."""
        return self._rate

    @rate.setter
    def rate(self, value: float) -> None:
        value = validate_rate(value)
        if self.call_rates is not None:
            object.__setattr__(self, "call_rates", None)
            self.keep_prob = torch.tensor(1.0 - value, dtype=torch.float32, device=self.keep_prob.device)
        with torch.no_grad():
            self.keep_prob.fill_(1.0 - value)
        # plain attributes: skip nn.Module.__setattr__'s bookkeeping (this runs every step)
        object.__setattr__(self, "_rate", value)
        object.__setattr__(self, "_active", value > 0.0)

    def set_call_rates(self, rates: Sequence[float]) -> None:
        """A rate for each call of this module in one forward pass (the first call gets ``rates[0]``):
        for a module shared across depths, such as ALBERT's one layer. Equal rates make it a plain
        ``rate``. The calls are counted from the start of each forward of the model (``reset_calls``)."""
        values = tuple(validate_rate(r, f"rate of call {i}") for i, r in enumerate(rates))
        if len(set(values)) <= 1:
            self.rate = values[0] if values else 0.0
            return
        self.keep_prob = torch.tensor([1.0 - r for r in values], dtype=torch.float32, device=self.keep_prob.device)
        object.__setattr__(self, "call_rates", values)
        object.__setattr__(self, "_rate", max(values))
        object.__setattr__(self, "_active", True)

    def rate_of(self, call: int) -> float:
        """The rate this module drops at its ``call``-th call in a forward pass."""
        return self.call_rates[call] if self.call_rates is not None else self._rate

    def reset_calls(self) -> None:
        """A new forward pass of the model: count calls from 0 and draw new block decisions."""
        object.__setattr__(self, "_call", 0)
        for decision in self.decisions or ():
            decision.reset()

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or not self._active:
            return x
        check_floating(x)
        dim = batch_dim_of(self.batch_dim, x)
        if self.packed:
            return x * self._packed_mask(x, dim)
        if self.rows_per_sample > 1:  # several rows a sample (its windows or patches): one decision for them all
            grouped, samples = group_rows(x, dim, self.rows_per_sample, self.interleaved)
            return self._drop(grouped, samples).flatten(dim, dim + 1)
        return self._drop(x, dim)

    def _packed_mask(self, x: Tensor, dim: int) -> Tensor:
        """The multiplier of packed rows: one decision per segment of ``segments``, spread over its rows."""
        cu = self.segments
        if cu is None or cu.ndim != 1 or cu.numel() < 2:
            raise BatchDimError(
                f"this DropPath drops packed rows per sample and needs their boundaries (a 1-D tensor of cumulative "
                f"lengths, as cu_seqlens) in .segments before each call, got {None if cu is None else tuple(cu.shape)}; "
                f"apply_drop_path sets them from the block's own argument: call the patched block, not its branch."
            )
        # Checked in eager CPU runs only: on an accelerator reading the last boundary would sync (its gather fails
        # instead), and compiled code cannot branch on a value.
        if cu.device.type == "cpu" and not torch.compiler.is_compiling() and int(cu[-1]) != x.shape[dim]:
            raise BatchDimError(
                f"the sample boundaries end at row {int(cu[-1])}, but the branch output has {x.shape[dim]} rows "
                f"along dim {dim}: they are not the boundaries of this stream"
            )
        ends = cu[1:].to(device=x.device, dtype=torch.int64)
        per_segment = self._multiplier(x.new_empty(ends.shape), 0)
        shape = [1] * x.ndim
        if self.mode != "row":  # one decision for the whole batch
            return per_segment.view(shape)
        shape[dim] = x.shape[dim]
        rows = torch.arange(x.shape[dim], device=x.device)
        return per_segment[torch.searchsorted(ends, rows, right=True)].view(shape)

    def _drop(self, x: Tensor, dim: int) -> Tensor:
        return x * self._multiplier(x, dim)

    def _multiplier(self, x: Tensor, dim: int) -> Tensor:
        keep = self.keep_prob
        call = 0
        if self.call_rates is not None:
            call = self._call
            if call >= len(self.call_rates):
                raise CallCountError(
                    f"this DropPath drops a different rate at each of the {len(self.call_rates)} calls its module made in "
                    f"the traced forward pass, and was called again ({call + 1} calls): gradient checkpointing "
                    f"recomputes it, or the model runs the shared module more often now. Use a schedule that gives "
                    f"every call the same rate (schedule='uniform') there."
                )
            object.__setattr__(self, "_call", call + 1)
            keep = self.keep_prob[call]
        if self.decisions is not None:
            return self.decisions[min(call, len(self.decisions) - 1)].mask(self, x, dim, keep)
        return scaled_mask(x, keep, dim, self.mode, self.scale_by_keep, self.sync_group)

    def __setstate__(self, state: dict) -> None:
        # Modules pickled by older versions load with masks drawn per rank and no undo record.
        state.setdefault("sync_group", None)
        state.setdefault("patch", None)
        state.setdefault("call_rates", None)
        state.setdefault("decisions", None)
        state.setdefault("rows_per_sample", 1)
        state.setdefault("interleaved", False)
        state.setdefault("packed", False)
        state.setdefault("segments", None)
        state.setdefault("_call", 0)
        super().__setstate__(state)

    def _apply(self, fn: Any, recurse: bool = True) -> "DropPath":
        # model.half() / .to(dtype) would cast the keep probability; keep it exact in float32.
        super()._apply(fn, recurse)
        if self.keep_prob.dtype != torch.float32:
            rates = self.call_rates if self.call_rates is not None else self._rate
            self.keep_prob = 1.0 - torch.tensor(rates, dtype=torch.float32, device=self.keep_prob.device)
        return self

    def extra_repr(self) -> str:
        parts = [f"rate={self._rate:.3f}" if self.call_rates is None else f"call_rates={[round(r, 4) for r in self.call_rates]}"]
        if self.batch_dim != 0:
            parts.append(f"batch_dim={self.batch_dim}")
        if self.rows_per_sample != 1:
            parts.append(f"rows_per_sample={self.rows_per_sample}")
        if self.interleaved:
            parts.append("interleaved=True")
        if self.packed:
            parts.append("packed=True")
        if self.mode != "row":
            parts.append(f"mode={self.mode!r}")
        if not self.scale_by_keep:
            parts.append("scale_by_keep=False")
        if self.sync_group is not None:
            parts.append(f"sync_group={self.sync_group!r}")
        return ", ".join(parts)
