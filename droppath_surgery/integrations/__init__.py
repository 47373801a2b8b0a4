"""What the engine knows of other libraries: example inputs for timm / Hugging Face / torchvision
models (``inputs``), model wrappers (``wrappers``) and trainer callbacks (``callbacks``, imported on
first use). Per-site schedules that read a library's own rates live in ``schedules``."""

from torch import nn

__all__ = ["model_name"]


def model_name(model: nn.Module) -> str:
    """The class name, with timm's architecture name where the model has one."""
    cfg = getattr(model, "pretrained_cfg", None)
    arch = cfg.get("architecture") if isinstance(cfg, dict) else None
    return f"{type(model).__name__} ({arch})" if arch else type(model).__name__
