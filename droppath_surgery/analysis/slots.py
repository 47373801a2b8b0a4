"""The one rule for a drop path slot: where an architecture says "drop path goes here".

A *placeholder* is a module that is the identity in eval mode and holds no state: ``nn.Identity``, a
dropout with ``p == 0``, or a parameterless DropPath-like module (timm's ``DropPath``, torchvision's
``StochasticDepth``, Hugging Face's ``*DropPath``). A *drop path slot* is a placeholder that is
named as one (the attribute name holds ``drop_path``, ``droppath`` or ``stochastic``) or is a
DropPath-like module. ``attn_drop = Dropout(0.0)`` is a placeholder but no slot.
"""

from __future__ import annotations

from torch import nn

__all__ = ["is_drop_path_like", "is_placeholder", "names_drop_path", "is_drop_path_slot", "holds_drop_path_slot"]

_SLOT_WORDS = ("drop_path", "droppath", "stochastic")


def is_drop_path_like(module: object) -> bool:
    """A module whose class is a drop path op (``DropPath``, ``StochasticDepth``, ``BeitDropPath``)."""
    name = type(module).__name__.lower()
    return "droppath" in name or "stochasticdepth" in name


def is_placeholder(module: nn.Module) -> bool:
    """Identity in eval mode, with no parameters, buffers or children."""
    from ..nn import DropPath

    if isinstance(module, (DropPath, nn.Identity)):
        return True
    if isinstance(module, (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout)):
        return module.p == 0
    if is_drop_path_like(module):
        has_state = any(True for _ in module.parameters()) or any(True for _ in module.buffers())
        return not has_state and not any(True for _ in module.children())
    return False


def names_drop_path(path: str) -> bool:
    """The last component of a module path names a drop path slot (``blocks.3.drop_path1``)."""
    last = path.rsplit(".", 1)[-1].lower()
    return any(word in last for word in _SLOT_WORDS)


def is_drop_path_slot(module: nn.Module, path: str) -> bool:
    """A placeholder the architecture named, or built, as a drop path."""
    return is_placeholder(module) and (names_drop_path(path) or is_drop_path_like(module))


def holds_drop_path_slot(module: nn.Module) -> bool:
    """``module`` has a drop path slot among its descendants (not itself)."""
    return any(name and is_drop_path_slot(m, name) for name, m in module.named_modules())
