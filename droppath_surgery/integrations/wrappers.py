"""Wrappers around a model: ``torch.compile``'s ``OptimizedModule``, DDP, DataParallel and FSDP.

Recognised by ``isinstance`` against the wrapper classes, imported lazily: a class whose module was
never imported cannot have wrapped anything, so nothing is imported just to check.
"""

from __future__ import annotations

import sys
from typing import Any

from torch import nn

from ..errors import UnsupportedModelError

__all__ = ["unwrap_model", "check_model", "check_not_compiled"]


def _loaded(module: str, name: str) -> type | None:
    found = sys.modules.get(module)
    cls = getattr(found, name, None) if found is not None else None
    return cls if isinstance(cls, type) else None


def _compiled_class() -> type | None:
    return _loaded("torch._dynamo.eval_frame", "OptimizedModule")


def _data_parallel_classes() -> tuple[type, ...]:
    """DDP and DataParallel: they run ``.module``, so rates can be changed on it."""
    found = [
        _loaded("torch.nn.parallel.distributed", "DistributedDataParallel"),
        _loaded("torch.nn.parallel.data_parallel", "DataParallel"),
    ]
    return tuple(cls for cls in found if cls is not None)


def _wrapper_classes() -> tuple[type, ...]:
    """Every wrapper that must not be patched itself (FSDP's flat parameters included)."""
    fsdp = _loaded("torch.distributed.fsdp.fully_sharded_data_parallel", "FullyShardedDataParallel")
    return _data_parallel_classes() + ((fsdp,) if fsdp is not None else ())


def unwrap_model(model: Any) -> nn.Module:
    """The module inside ``torch.compile`` (``OptimizedModule``), DDP and DataParallel wrappers.

    Changing rates on the inner module is what a wrapped model runs with: no structure changes, only
    buffers written in place. (Attaching drop path itself must happen before wrapping.)
    """
    compiled = _compiled_class()
    parallel = _data_parallel_classes()
    for _ in range(16):
        if compiled is not None and isinstance(model, compiled):
            model = model._orig_mod  # type: ignore[attr-defined]
        elif parallel and isinstance(model, parallel):
            model = model.module  # type: ignore[attr-defined]
        else:
            break
    return model


def check_model(model: Any) -> nn.Module:
    """``model`` if it is a plain ``nn.Module``; ``UnsupportedModelError`` for anything else or a wrapper."""
    if not isinstance(model, nn.Module):
        raise UnsupportedModelError(
            f"model must be a torch.nn.Module, got {type(model).__module__}.{type(model).__name__}; "
            f"pass the model object itself (e.g. the result of timm.create_model or from_pretrained)."
        )
    compiled = _compiled_class()
    if compiled is not None and isinstance(model, compiled):
        raise UnsupportedModelError(
            "model is wrapped by torch.compile; patch the original model first, then compile it: "
            "apply_drop_path(model, ...); model = torch.compile(model)."
        )
    parallel = _wrapper_classes()
    if parallel and isinstance(model, parallel):
        name = type(model).__name__
        raise UnsupportedModelError(
            f"model is wrapped by {name}; patch the inner model before wrapping it (apply_drop_path"
            f"(model, ...) and then {name}(model, ...)), or pass wrapped.module."
        )
    return model


def check_not_compiled(model: nn.Module) -> None:
    """Attaching under compiled code would be silently ignored: torch.compile does not guard on hooks."""
    compiled = _compiled_class()
    for path, module in model.named_modules():
        wrapped = compiled is not None and isinstance(module, compiled)
        if wrapped or getattr(module, "_compiled_call_impl", None) is not None:
            where = f"its submodule {path!r}" if path else "the model"
            how = "torch.compile(...)" if wrapped else ".compile()"
            raise UnsupportedModelError(
                f"{where} is already compiled ({how}); code compiled before patching would keep running "
                f"without the drop path hooks (torch.compile does not guard on module hooks). Apply drop "
                f"path to the model before compiling it (or any part of it), then compile."
            )
