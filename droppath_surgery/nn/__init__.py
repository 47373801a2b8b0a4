"""The ops: ``drop_path`` (a function), ``DropPath`` (a module) and ``SkipDropPath`` (a DropPath
whose branches may run on the kept samples only)."""

from .drop_path import DropPath
from .functional import drop_path
from .skip import SkipDropPath

__all__ = ["DropPath", "SkipDropPath", "drop_path"]
