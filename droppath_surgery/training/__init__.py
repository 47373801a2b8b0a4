"""Drop rates over training time, a resumable scheduler, and mask sync across ranks.

The per-layer schedule (``"linear"``: 0 at the first block up to the top rate at the last) says how
the rate is spread over depth; a *time schedule* says what the top rate is at step (or epoch) ``t``:

    from droppath_surgery import apply_drop_path
    from droppath_surgery.training import DropPathScheduler, LinearWarmup

    apply_drop_path(model, 0.1)
    scheduler = DropPathScheduler(model, LinearWarmup(0.1, warmup=1000))
    for batch in loader:
        loss = ...; loss.backward(); optimizer.step(); optimizer.zero_grad()
        scheduler.step()                      # rate for the next step, written in place

``time_schedules`` holds the time schedules, ``scheduler`` the ``DropPathScheduler``,
``distributed`` ``sync_drop_path_masks``; trainer callbacks are in ``droppath_surgery.callbacks``.
"""

from ..integrations.wrappers import unwrap_model
from .distributed import sync_drop_path_masks
from .scheduler import DropPathScheduler, PerLayer, check_arguments
from .time_schedules import Constant, Cosine, Early, Late, LinearWarmup, ProgressiveLayerDrop, TimeSchedule

__all__ = [
    "TimeSchedule",
    "Constant",
    "LinearWarmup",
    "Early",
    "Late",
    "Cosine",
    "ProgressiveLayerDrop",
    "DropPathScheduler",
    "PerLayer",
    "check_arguments",
    "unwrap_model",
    "sync_drop_path_masks",
]
