"""Every error droppath-surgery raises for something a user can fix.

Each is a ``DropPathError`` and also the built-in type callers may already catch (``ValueError``,
``TypeError`` or ``RuntimeError``). Messages state the rule that was broken, the value that broke it
and what to pass instead; a call that raises leaves the model exactly as it was.
"""

from __future__ import annotations

__all__ = [
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


class DropPathError(Exception):
    """Base class of every error raised by droppath-surgery."""


class InvalidRateError(DropPathError, ValueError):
    """A drop rate is not a finite number in [0, 1]."""


class InvalidArgumentError(DropPathError, ValueError, TypeError):
    """An option has the wrong type or value (``mode``, ``kept_count``, ``filter_fn``, a flag that
    must be a bool), or the op got a tensor it cannot drop (not floating point)."""


class ScheduleError(DropPathError, ValueError):
    """A schedule is unknown, has the wrong length, or gives an invalid rate."""


class NoResidualBranchError(DropPathError, ValueError):
    """The traced forward pass contains no residual branch that drop path can be attached to."""


class ExampleInputsError(DropPathError, ValueError):
    """Example inputs are needed and could not be built, or the model failed to run on them."""


class BatchDimError(DropPathError, ValueError):
    """The batch dimension is not a valid dimension, or could not be determined."""


class VerificationError(DropPathError, RuntimeError):
    """After patching, the model's eval output or state_dict differed; the patch was undone."""


class NotPatchedError(DropPathError, ValueError):
    """An operation needs a model patched by ``apply_drop_path`` and got one that is not."""


class UnsupportedModelError(DropPathError, TypeError):
    """The object is not an ``nn.Module``, or is a wrapper that must be unwrapped first."""


class DistributedError(DropPathError, RuntimeError):
    """A distributed option (such as identical masks on all ranks) needs a set-up that is missing."""


class SkipError(DropPathError, RuntimeError):
    """A branch running on the kept samples only (``skip_dropped=True``) returned another number of
    samples than it was given: its code does not follow the traced pass."""


class CallCountError(DropPathError, RuntimeError):
    """A module that drops a different rate at each of its calls (one layer shared across depths, as in
    ALBERT) ran more often in one forward pass than in the traced one."""
