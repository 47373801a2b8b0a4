"""Proof that surgery did no harm, and the isolation that keeps probing invisible.

* ``observation``: a context in which the model runs in eval mode without gradients, the global
  RNGs (CPU and every CUDA device in use) are saved and restored, and every module's train/eval
  flag is put back exactly as it was on exit.
* ``compare_outputs``: bitwise comparison of two nested outputs (tensors, tuples, lists, dicts, HF
  ``ModelOutput``), describing each difference.
* ``state_fingerprint`` / ``compare_state``: ``state_dict`` keys and, for each entry, the identity,
  storage, shape, dtype and version counter of the tensor. Surgery never writes to a tensor, so an
  unchanged fingerprint proves unchanged keys and values without copying the weights.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch
from torch import Tensor, nn

__all__ = ["observation", "compare_outputs", "has_meta_tensors", "state_fingerprint", "compare_state", "train_flags"]


def train_flags(model: nn.Module) -> list[tuple[nn.Module, bool]]:
    return [(m, m.training) for m in model.modules()]


def _cuda_devices(model: nn.Module, inputs: Any) -> list[int]:
    devices = {t.device.index or 0 for t in model.parameters() if t.is_cuda}
    devices |= {t.device.index or 0 for t in model.buffers() if t.is_cuda}
    devices |= {t.device.index or 0 for t in _flatten(inputs) if t.is_cuda}
    return sorted(devices)


def rng_restored(model: nn.Module, inputs: Any = None) -> contextlib.AbstractContextManager:
    """The global random state (CPU and the CUDA devices of ``model`` and ``inputs``) saved and
    restored on exit: passes run one after another inside it each draw the same random numbers."""
    return torch.random.fork_rng(devices=_cuda_devices(model, inputs))


@contextlib.contextmanager
def observation(model: nn.Module, inputs: Any = None) -> Iterator[None]:
    """Eval mode, no grad, RNG state saved and restored, train flags restored exactly."""
    flags = train_flags(model)
    try:
        with rng_restored(model, inputs), torch.no_grad():
            model.eval()
            yield
    finally:
        for module, flag in flags:
            module.training = flag


def _flatten(obj: Any, prefix: str = "output") -> Iterator[Tensor]:
    for _, t in _named_leaves(obj, prefix):
        if isinstance(t, Tensor):
            yield t


def _named_leaves(obj: Any, prefix: str) -> Iterator[tuple[str, Any]]:
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _named_leaves(v, f"{prefix}[{k!r}]")
    elif isinstance(obj, (tuple, list)):
        for i, v in enumerate(obj):
            yield from _named_leaves(v, f"{prefix}[{i}]")
    else:
        yield prefix, obj


def _bitwise_equal(a: Tensor, b: Tensor) -> bool:
    if a.shape != b.shape or a.dtype != b.dtype or a.device != b.device:
        return False
    if a.device.type == "meta":  # no values to compare: shape and dtype are all there is
        return True
    if a.is_floating_point() or a.is_complex():
        a8 = a.detach().contiguous().view(torch.uint8)
        b8 = b.detach().contiguous().view(torch.uint8)
        return torch.equal(a8, b8)
    return torch.equal(a, b)


def compare_outputs(before: Any, after: Any) -> list[str]:
    """Descriptions of every difference between two outputs; empty when bitwise identical."""
    left = list(_named_leaves(before, "output"))
    right = list(_named_leaves(after, "output"))
    if [n for n, _ in left] != [n for n, _ in right]:
        return [f"output structure changed: {[n for n, _ in left]} vs {[n for n, _ in right]}"]
    diffs = []
    for (name, a), (_, b) in zip(left, right):
        if isinstance(a, Tensor) and isinstance(b, Tensor):
            if not _bitwise_equal(a, b):
                if a.shape != b.shape or a.dtype != b.dtype:
                    diffs.append(f"{name}: {tuple(a.shape)} {a.dtype} became {tuple(b.shape)} {b.dtype}")
                else:
                    differ = (a != b) & ~(a.isnan() & b.isnan()) if a.is_floating_point() else a != b
                    delta = (a.double() - b.double()).abs().nan_to_num(0).max().item()
                    diffs.append(f"{name}: {int(differ.sum())} of {a.numel()} elements differ (max |diff| {delta:.3g})")
        elif isinstance(a, Tensor) or isinstance(b, Tensor):
            diffs.append(f"{name}: {type(a).__name__} became {type(b).__name__}")
        else:
            try:
                same = bool(a == b)
            except Exception:  # noqa: BLE001 - objects without a usable ==
                same = True
            if not same:
                diffs.append(f"{name}: {a!r} became {b!r}")
    return diffs


def has_meta_tensors(obj: Any) -> bool:
    return any(t.device.type == "meta" for t in _flatten(obj))


def state_fingerprint(model: nn.Module) -> dict[str, tuple]:
    out = {}
    for key, t in model.state_dict(keep_vars=True).items():
        if isinstance(t, Tensor):
            try:
                version = t._version
            except RuntimeError:
                version = None
            out[key] = (id(t), t.data_ptr() if t.device.type != "meta" else 0, tuple(t.shape), t.dtype, version)
        else:
            out[key] = (id(t),)
    return out


def compare_state(before: dict[str, tuple], after: dict[str, tuple]) -> list[str]:
    diffs = []
    added = [k for k in after if k not in before]
    missing = [k for k in before if k not in after]
    if added:
        diffs.append(f"state_dict gained keys {added[:5]}{' ...' if len(added) > 5 else ''}")
    if missing:
        diffs.append(f"state_dict lost keys {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    changed = [k for k in before if k in after and before[k] != after[k]]
    if changed:
        diffs.append(f"state_dict tensors replaced or written: {changed[:5]}{' ...' if len(changed) > 5 else ''}")
    return diffs
