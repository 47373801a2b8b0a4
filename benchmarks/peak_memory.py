"""Peak memory of one training step over the memory before it, for the benchmarks.

On CUDA from ``torch.cuda.max_memory_allocated``. On CPU from the peak resident set (``VmHWM``, reset
through ``/proc/self/clear_refs`` before the step), with glibc serving blocks over 64 KiB from mmap and
returning them at once, so that the resident set follows the live tensors (that slows allocation:
measure time in another process).
"""

from __future__ import annotations

import ctypes

import torch


class PeakMemory:
    """``start()`` before a step, ``peak()`` after it; the rise is ``peak() - start()``, in bytes."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        if device.type == "cpu":
            libc = ctypes.CDLL("libc.so.6")
            libc.mallopt(-3, 1 << 16)  # M_MMAP_THRESHOLD: blocks over 64 KiB come from (and go back to) mmap
            libc.mallopt(-1, 1 << 16)  # M_TRIM_THRESHOLD

    @staticmethod
    def _status(key: str) -> int:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1]) * 1024
        return 0

    def start(self) -> int:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            return torch.cuda.memory_allocated(self.device)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM to the current resident set
        return self._status("VmRSS")

    def peak(self) -> int:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            return torch.cuda.max_memory_allocated(self.device)
        return self._status("VmHWM")
