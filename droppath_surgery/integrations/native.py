"""A model's own layer drop or drop path, so nobody regularises twice by accident.

Hugging Face configs switch on layer drop (``layerdrop``, ``encoder_layerdrop``, ``decoder_layerdrop``:
one coin per layer for the whole batch, wav2vec2's default is 0.1) and drop path (``drop_path_rate``:
Swin, BEiT, ConvNeXt); other libraries build DropPath modules with a rate. ``native_regularizers``
reads both after patching and says what stays on beside the DropPaths attached and what they replaced.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from ..analysis.slots import is_drop_path_like
from ..nn import DropPath

__all__ = ["native_regularizers"]


def _configs(model: nn.Module) -> list[tuple[str, Any]]:
    """``(prefix, config)`` for the model's config and the sub-configs it holds (text, vision, ...)."""
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "to_dict"):
        return []
    found = [("config", config)]
    for name, value in vars(config).items():
        if hasattr(value, "to_dict") and hasattr(value, "model_type"):
            found.append((f"config.{name}", value))
    return found


def _rate_of(module: nn.Module) -> float:
    for attr in ("drop_prob", "p", "drop_rate", "rate"):
        value = getattr(module, attr, None)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    return 0.0


def native_regularizers(model: nn.Module, replaced: list[nn.Module]) -> list[str]:
    """What the model regularises by itself besides the attached DropPaths: layer drop switched on in
    its config, drop path modules with a rate that stay active, and (``replaced``: the modules the
    DropPaths took the place of) the native drop path they replaced."""
    notes = []
    for prefix, config in _configs(model):
        for name, value in sorted(vars(config).items()):
            if name.endswith("layerdrop") and isinstance(value, (int, float)) and value > 0:
                notes.append(
                    f"the model's own layer drop is on ({prefix}.{name}={value:g}: one coin per layer for the whole batch "
                    f"in training), beside drop path: set model.{prefix}.{name} = 0.0 to regularise once"
                )
    own = [
        (path, _rate_of(m)) for path, m in model.named_modules() if is_drop_path_like(m) and not isinstance(m, DropPath)
    ]
    active = [(path, rate) for path, rate in own if rate > 0]
    if active:
        paths = ", ".join(f"{p} ({r:g})" for p, r in active[:3]) + (" ..." if len(active) > 3 else "")
        notes.append(
            f"{len(active)} drop path modules of the model's own stay active beside the attached ones: {paths}; build "
            f"the model with its drop_path_rate at 0 (or leave those branches out with filter_fn) to regularise once"
        )
    swapped = [m for m in replaced if is_drop_path_like(m) and _rate_of(m) > 0]
    if swapped:
        fields = [
            f"{prefix}.drop_path_rate={config.drop_path_rate:g}" for prefix, config in _configs(model)
            if isinstance(getattr(config, "drop_path_rate", None), (int, float)) and config.drop_path_rate > 0
        ]
        notes.append(
            f"the model's own drop path ({', '.join(fields) or 'built with a rate'}) was replaced at {len(swapped)} sites: "
            f"the attached DropPaths and their schedule set those rates now"
        )
    return notes
