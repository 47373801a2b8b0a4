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
"""

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
from .nn import DropPath, drop_path
from .report import DropPathReport, Site, Skipped
from .schedules import SCHEDULES, block_rates
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
    "InvalidArgumentError",
    "ScheduleError",
    "NoResidualBranchError",
    "ExampleInputsError",
    "BatchDimError",
    "VerificationError",
    "NotPatchedError",
    "UnsupportedModelError",
    "DistributedError",
    "SkipError",
    "CallCountError",
]
