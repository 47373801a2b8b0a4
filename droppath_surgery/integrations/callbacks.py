"""Trainer callbacks that drive a time schedule: Hugging Face ``Trainer`` and PyTorch Lightning.

    from droppath_surgery.callbacks import DropPathTrainerCallback      # needs transformers
    from droppath_surgery.callbacks import DropPathLightningCallback    # needs lightning

    apply_drop_path(model, 0.1)
    trainer = Trainer(model=model, ..., callbacks=[DropPathTrainerCallback(LinearWarmup(0.1, warmup=500))])

Both take the arguments of ``DropPathScheduler`` (``schedule``, ``per_layer``, ``unit``). The rate
is computed from the trainer's own counters (the global optimizer step, or the epoch) before each
step, so a run resumed from a trainer checkpoint continues the schedule without extra state. The
scheduler in use is ``callback.scheduler`` once training has started.

Each class is built on first access, so importing this module needs neither library; accessing a
class whose library is missing raises ``ImportError`` with the install command.
"""

from __future__ import annotations

import math
from typing import Any

from ..training import DropPathScheduler, check_arguments

__all__ = ["DropPathTrainerCallback", "DropPathLightningCallback"]

_built: dict[str, type] = {}


class _Driver:
    """What both callbacks share: a scheduler created at train start, moved to the trainer's time."""

    def __init__(self, schedule: Any, *, per_layer: Any = None, unit: str = "step") -> None:
        self.schedule = schedule
        self.per_layer = per_layer
        self.unit = unit
        self.scheduler: DropPathScheduler | None = None
        check_arguments(schedule, per_layer, unit)  # fail at construction, not at train start

    def _start(self, model: Any, t: int) -> None:
        self.scheduler = DropPathScheduler(model, self.schedule, per_layer=self.per_layer, unit=self.unit)
        self.scheduler.set_time(t)

    def _move(self, t: int) -> None:
        if self.scheduler is not None:
            self.scheduler.set_time(t)


def _hf_callback() -> type:
    try:
        from transformers import TrainerCallback
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "DropPathTrainerCallback needs Hugging Face transformers and accelerate: "
            "pip install 'droppath-surgery[trainer]'"
        ) from exc

    class DropPathTrainerCallback(_Driver, TrainerCallback):
        """Hugging Face ``Trainer`` callback: sets the drop rate from a time schedule before each step.

        With ``unit="step"`` the time is ``state.global_step`` (optimizer steps done); with
        ``unit="epoch"`` it is the number of epochs done.
        """

        def _epoch(self, state: Any) -> int:
            return int(math.floor((state.epoch or 0.0) + 1e-6))

        def _t(self, state: Any) -> int:
            return int(state.global_step) if self.unit == "step" else self._epoch(state)

        def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
            self._start(model, self._t(state))

        def on_epoch_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if self.unit == "epoch":
                self._move(self._t(state))

        def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if self.unit == "step":
                self._move(self._t(state))

    DropPathTrainerCallback.__module__ = __name__
    DropPathTrainerCallback.__qualname__ = "DropPathTrainerCallback"
    return DropPathTrainerCallback


def _lightning_base() -> type:
    try:
        from lightning.pytorch import Callback as base
    except ImportError:
        try:
            from pytorch_lightning import Callback as base  # type: ignore[assignment]
        except ImportError as exc:
            raise ImportError(
                "DropPathLightningCallback needs PyTorch Lightning: pip install 'droppath-surgery[lightning]'"
            ) from exc
    return base


def _lightning_callback() -> type:
    base: Any = _lightning_base()

    class DropPathLightningCallback(_Driver, base):
        """PyTorch Lightning callback: sets the drop rate from a time schedule before each batch.

        The patched model is found inside the ``LightningModule``. With ``unit="step"`` the time is
        ``trainer.global_step`` (optimizer steps done); with ``unit="epoch"``, ``trainer.current_epoch``.
        """

        def on_train_start(self, trainer: Any, pl_module: Any) -> None:
            t = trainer.global_step if self.unit == "step" else trainer.current_epoch
            self._start(pl_module, t)

        def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
            if self.unit == "epoch":
                self._move(trainer.current_epoch)

        def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
            if self.unit == "step":
                self._move(trainer.global_step)

    DropPathLightningCallback.__module__ = __name__
    DropPathLightningCallback.__qualname__ = "DropPathLightningCallback"
    return DropPathLightningCallback


_FACTORIES = {"DropPathTrainerCallback": _hf_callback, "DropPathLightningCallback": _lightning_callback}


def __getattr__(name: str) -> type:
    if name in _FACTORIES:
        if name not in _built:
            _built[name] = _FACTORIES[name]()
        return _built[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
