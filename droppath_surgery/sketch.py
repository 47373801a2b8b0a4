"""Sketches and fingerprints: compare two passes of a model in a few numbers instead of tensors.

The sketch of a tensor along its sample dimension holds, per sample, ``SKETCH_SIZE`` fixed random
projections of the sample's elements and their norm. Two samples with equal values have equal
sketches up to float rounding; any change spread over a sample moves its projections by about the
change's norm. ``agree`` judges two sketches within float tolerance relative to the samples' norms,
so passes that differ only by the summation order of another batch size agree. The analysis keeps
sketches of the additions' operands (sample independence) and the exactness check of skip mode
those of the branch ends. A ``Fingerprint`` is exact instead: shape, dtype, device and two sums of
the elements' bit patterns (plain and position-weighted, wrapping in int64), equal for bitwise equal
tensors; the recording keeps its outputs that way, which verification compares with bitwise.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .nn.functional import group_rows

__all__ = ["SKETCH_SIZE", "Projections", "sketch", "agree", "tolerance", "changed_only_first", "Fingerprint", "fingerprint"]

SKETCH_SIZE = 8

Projections = dict  # (size, role, dtype, device) -> random weights, shared by the sketches of one comparison


def _random(cache: Projections, n: int, role: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    key = (n, role, dtype, device)
    if key not in cache:
        gen = torch.Generator().manual_seed(2 * n + role)
        cache[key] = torch.randn(n, SKETCH_SIZE, generator=gen, dtype=dtype).to(device)
    return cache[key]


def sketch(t: Tensor, dim: int, cache: Projections, rows_per_sample: int = 1, interleaved: bool = False) -> Tensor | None:
    """``(samples, SKETCH_SIZE + 1)`` float64 for ``t``'s samples along ``dim`` (``rows_per_sample``
    entries of ``dim`` per sample, consecutive or ``interleaved``: ``nn.functional.group_rows``); None on
    the meta device or for a 0-dim tensor."""
    if t.device.type == "meta" or t.ndim == 0:
        return None
    work = torch.float64 if t.dtype == torch.float64 else torch.float32
    grouped, samples = group_rows(t.detach().movedim(dim % t.ndim, 0), 0, rows_per_sample, interleaved)
    width = grouped.shape[-1] if grouped.ndim > 2 else 1
    rows = grouped.movedim(samples, 0).reshape(grouped.shape[samples], -1, width).to(work)  # (samples, rest, width)
    # Weights a[i, j] * b[k, j] (i across the width, k along the rest): one small matrix product
    # instead of a weight matrix as large as a sample.
    projected = (rows @ _random(cache, width, 0, work, rows.device)) * _random(cache, rows.shape[1], 1, work, rows.device)
    return torch.cat([projected.sum(1), rows.flatten(1).norm(dim=1, keepdim=True)], dim=1).double()


def tolerance(dtype: torch.dtype) -> float:
    """Relative tolerance of values computed in ``dtype`` in another batch or order."""
    return 1e-4 if dtype in (torch.float32, torch.float64) else 3e-2


def agree(want: Tensor | None, got: Tensor | None, dtype: torch.dtype) -> tuple[bool, float]:
    """Two sketches (of the same samples) within float tolerance, and the largest difference."""
    if want is None or got is None:
        return (True, 0.0) if want is None and got is None else (False, float("inf"))
    if want.shape != got.shape:
        return False, float("inf")
    if not want.numel():
        return True, 0.0
    diff = (want[:, :SKETCH_SIZE] - got[:, :SKETCH_SIZE]).abs().nan_to_num(float("inf")).max().item()
    scale = max(1.0, want[:, SKETCH_SIZE].nan_to_num(0.0).max().item())
    return diff <= tolerance(dtype) * scale, diff


def changed_only_first(before: Tensor, after: Tensor, dim: int, rows: int, interleaved: bool = False) -> bool:
    """Of two passes' values of one tensor, the ``rows`` rows of sample 0 along ``dim`` (``[0, rows)``, or with
    ``interleaved`` every ``B``-th row from 0) changed, by far more than any other row, and no other row did,
    within float tolerance: the check passes that confirm which rows hold a sample."""
    n = before.shape[dim] if before.ndim else 0
    if before.shape != after.shape or not before.is_floating_point() or not 0 < rows < n or (interleaved and n % rows):
        return False
    diff = (before.double() - after.double()).abs().movedim(dim, 0).flatten(1).amax(1)
    first = (torch.arange(n) % (n // rows) if interleaved else torch.arange(n) // rows) == 0
    inside, outside = diff[first].max().item(), diff[~first].max().item()
    scale = max(1.0, before.double().abs().max().item())
    return inside > 100 * outside and outside <= tolerance(before.dtype) * scale


@dataclass(frozen=True)
class Fingerprint:
    """What verification needs of a recorded output tensor (``fingerprint``); ``sums`` is None on the
    meta device, where shape and dtype are all there is."""

    shape: tuple
    dtype: torch.dtype
    device: torch.device
    sums: tuple[int, int] | None

    def matches(self, t: Tensor) -> bool:
        return fingerprint(t) == self


_INT_OF_SIZE = {1: torch.uint8, 2: torch.int16, 4: torch.int32}
_CHUNK = 1 << 16  # elements per step: the int64 temporaries stay near 1.5 MiB


def fingerprint(t: Tensor) -> Fingerprint:
    """``t``'s shape, dtype, device and, off the meta device, the sum of its elements' bit patterns and
    their sum weighted by position (int64, wrapping; in chunks of 65,536 elements): a change of any
    bit, or two elements swapped, changes it (up to a chance collision of the sums)."""
    if t.device.type == "meta":
        return Fingerprint(tuple(t.shape), t.dtype, t.device, None)
    flat = t.detach().contiguous().view(-1)
    bits = flat.view(_INT_OF_SIZE.get(flat.element_size(), torch.int64))
    total = weighted = 0
    for start in range(0, bits.numel(), _CHUNK):
        part = bits[start : start + _CHUNK].to(torch.int64)
        total += int(part.sum())
        weighted += int((part * torch.arange(start + 1, start + 1 + part.numel(), device=part.device)).sum())
    return Fingerprint(tuple(t.shape), t.dtype, t.device, (total, weighted))
