"""droppath-surgery: add stochastic depth (drop path) to a model that already exists.

    from droppath_surgery import apply_drop_path, set_drop_path_rate, remove_drop_path

    report = apply_drop_path(model, 0.1)   # every residual branch, linear per-block schedule
    print(report)                          # what was patched, with rates
    set_drop_path_rate(model, 0.2)         # re-schedule, no forward pass
    remove_drop_path(model)                # the original modules, the same objects, are back

The data path, one module each: ``record`` (one observed forward pass) -> ``trace`` (residual
branches, blocks, batch dims) -> ``schedules``
(per-block rates, per-branch mappings, and ``timm_schedule``: timm's own per-branch rates) -> ``patch`` (attach / detach) -> ``verify`` (bitwise eval proof), with
``ops`` (the DropPath op), ``inputs`` (example inputs for timm / HF / torchvision models),
``report`` (site records and table) and ``surgery`` (the public functions). Training integration:
``training`` (time schedules, ``DropPathScheduler``, ``sync_drop_path_masks``) and ``callbacks``
(Hugging Face ``Trainer`` and PyTorch Lightning callbacks, imported on first use).
"""

from .errors import (
    BatchDimError,
    DistributedError,
    DropPathError,
    ExampleInputsError,
    InvalidRateError,
    NoResidualBranchError,
    NotPatchedError,
    ScheduleError,
    UnsupportedModelError,
    VerificationError,
)
from .inputs import build as build_example_inputs
from .ops import DropPath, drop_path
from .report import DropPathReport, Site, Skipped
from .schedules import SCHEDULES, block_rates
from .surgery import (
    apply_drop_path,
    drop_path_report,
    find_residual_branches,
    is_patched,
    remove_drop_path,
    set_drop_path_rate,
    unwrap_model,
)
from .training import DropPathScheduler, sync_drop_path_masks

__version__ = "0.1.0"

__all__ = [
    "apply_drop_path",
    "set_drop_path_rate",
    "remove_drop_path",
    "find_residual_branches",
    "drop_path_report",
    "is_patched",
    "unwrap_model",
    "build_example_inputs",
    "DropPath",
    "drop_path",
    "DropPathReport",
    "Site",
    "Skipped",
    "SCHEDULES",
    "block_rates",
    "DropPathScheduler",
    "sync_drop_path_masks",
    "DropPathError",
    "InvalidRateError",
    "ScheduleError",
    "NoResidualBranchError",
    "ExampleInputsError",
    "BatchDimError",
    "VerificationError",
    "NotPatchedError",
    "UnsupportedModelError",
    "DistributedError",
]
