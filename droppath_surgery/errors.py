"""Error types raised by droppath-surgery.

Every error a user can cause is one of these, so callers can catch them by kind. Each is also a
``ValueError`` or ``TypeError``, so code that catches the built-in types keeps working. Messages
state the rule that was broken, the value that broke it, and what to pass instead.
"""

from __future__ import annotations


class DropPathError(Exception):
    """Base class of every error raised by droppath-surgery."""


class InvalidRateError(DropPathError, ValueError):
    """A drop rate is not a finite number in [0, 1]."""


class ScheduleError(DropPathError, ValueError):
    """A schedule is unknown, has the wrong length, or gives an invalid rate."""


class NoResidualBranchError(DropPathError, ValueError):
    """The traced forward pass contains no residual branch that drop path can be attached to."""


class ExampleInputsError(DropPathError, ValueError):
    """Example inputs are needed and could not be built, or the model failed to run on them."""


class BatchDimError(DropPathError, ValueError):
    """The batch dimension of a residual branch could not be determined."""


class VerificationError(DropPathError, RuntimeError):
    """After patching, the model's eval output or state_dict differed; the patch was undone."""


class NotPatchedError(DropPathError, ValueError):
    """An operation needs a model patched by ``apply_drop_path`` and got one that is not."""


class UnsupportedModelError(DropPathError, TypeError):
    """The object is not an ``nn.Module``, or is a wrapper that must be unwrapped first."""


class DistributedError(DropPathError, RuntimeError):
    """A distributed option (such as identical masks on all ranks) needs a set-up that is missing."""
