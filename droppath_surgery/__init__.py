"""droppath-surgery: add stochastic depth (drop path) to a model that already exists.

    from droppath_surgery import apply_drop_path, set_drop_path_rate, remove_drop_path

    report = apply_drop_path(model, 0.1)   # every residual branch, linear per-block schedule
    print(report)                          # what was patched, with rates
    set_drop_path_rate(model, 0.2)         # re-schedule, no forward pass
    remove_drop_path(model)                # the original modules, the same objects, are back

The pipeline, one package or module per step: ``analysis`` (record one forward pass, then find merges,
blocks, batch dims, stacks) -> ``plan`` (where and how each DropPath goes, what is left out) ->
``schedules`` (rate the plan) -> ``execute`` (attach / detach, undo records) -> ``verify`` (eval output
bitwise unchanged; skipping exact) -> ``report``; ``api`` runs it. ``nn`` holds the ops,
``integrations`` what is specific to timm / Hugging Face / torchvision and trainers, ``training`` time
schedules and mask sync.

The public names are imported lazily (PEP 562): ``import droppath_surgery`` does not import torch
until one of them is used, so ``droppath-surgery --help`` starts in a fraction of a second.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# public name -> the submodule that defines it
_EXPORTS: dict[str, str] = {
    "apply_drop_path": "api",
    "set_drop_path_rate": "api",
    "remove_drop_path": "api",
    "find_residual_branches": "api",
    "drop_path_report": "api",
    "is_patched": "api",
    "unwrap_model": "api",
    "build_example_inputs": "integrations.inputs",
    "DropPath": "nn.drop_path",
    "drop_path": "nn.functional",
    "DropPathReport": "report",
    "Site": "report",
    "Skipped": "report",
    "SCHEDULES": "schedules",
    "block_rates": "schedules",
    "DropPathScheduler": "training",
    "sync_drop_path_masks": "training",
    "DropPathError": "errors",
    "InvalidRateError": "errors",
    "InvalidArgumentError": "errors",
    "ScheduleError": "errors",
    "NoResidualBranchError": "errors",
    "ExampleInputsError": "errors",
    "BatchDimError": "errors",
    "VerificationError": "errors",
    "NotPatchedError": "errors",
    "UnsupportedModelError": "errors",
    "DistributedError": "errors",
    "SkipError": "errors",
    "CallCountError": "errors",
}

# subpackages and modules reachable as attributes (``droppath_surgery.training.Late``), also imported lazily
_SUBMODULES = frozenset(
    {"analysis", "api", "callbacks", "checks", "errors", "execute", "integrations", "isolation", "nested", "nn",
     "plan", "report", "schedules", "training", "verify"}
)

__all__ = list(_EXPORTS)


def _version() -> str:
    """The installed distribution's version: pyproject.toml is its one source."""
    from importlib import metadata

    try:
        return metadata.version("droppath-surgery")
    except metadata.PackageNotFoundError:  # imported from a source tree that was never installed
        return "0+unknown"


def __getattr__(name: str) -> Any:
    if name == "__version__":
        globals()[name] = value = _version()
        return value
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value  # the next access is a plain attribute lookup
        return value
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS, *_SUBMODULES, "__version__"})


if TYPE_CHECKING:  # what type checkers and documentation tools see; never run
    __version__: str
    from .api import (
        apply_drop_path,
        drop_path_report,
        find_residual_branches,
        is_patched,
        remove_drop_path,
        set_drop_path_rate,
        unwrap_model,
    )
    from .errors import (
        BatchDimError,
        CallCountError,
        DistributedError,
        DropPathError,
        ExampleInputsError,
        InvalidArgumentError,
        InvalidRateError,
        NoResidualBranchError,
        NotPatchedError,
        ScheduleError,
        SkipError,
        UnsupportedModelError,
        VerificationError,
    )
    from .integrations.inputs import build_example_inputs
    from .nn.drop_path import DropPath
    from .nn.functional import drop_path
    from .report import DropPathReport, Site, Skipped
    from .schedules import SCHEDULES, block_rates
    from .training import DropPathScheduler, sync_drop_path_masks
