"""Peak resident memory of a stretch of work, sampled from a background thread."""

from __future__ import annotations

import contextlib
import threading

import psutil


def rss_mb(pids=()) -> float:
    """Resident MiB of this process plus the processes ``pids`` (gone ones count 0)."""
    total = psutil.Process().memory_info().rss
    for pid in pids:
        try:
            total += psutil.Process(pid).memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total / 2**20


class PeakRss:
    """Context manager: ``peak_mb`` is the highest RSS seen inside the block, of this
    process alone or, with ``pids``, of it and those processes together (sampled at
    the same instant, so the figure is what the machine held at once). ``pids`` may
    be appended to inside the block."""

    def __init__(self, interval: float = 0.02, pids=()):
        self.interval = interval
        self.pids = list(pids)  # more may be added while it samples (a worker started later)
        self.peak_mb = 0.0
        self.start_mb = 0.0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._paused = 0

    @contextlib.contextmanager
    def paused(self):
        """Work inside the block is not counted: the measurement's own (the matmul ceiling's
        GEMMs between timed runs), which neither side of a benchmark holds."""
        with self._lock:
            self._paused += 1
        try:
            yield
        finally:
            with self._lock:
                self._paused -= 1

    def __enter__(self):
        self.start_mb = self.peak_mb = rss_mb(self.pids)
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.wait(self.interval):
            with self._lock:
                if not self._paused:
                    self.peak_mb = max(self.peak_mb, rss_mb(self.pids))

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak_mb = max(self.peak_mb, rss_mb(self.pids))
        return False


class PeakDeviceMemory:
    """GPU memory peak of a block: the torch allocator's peak and, with pynvml, the
    device's used memory sampled (which also sees TensorRT's own allocations)."""

    def __init__(self, interval: float = 0.02):
        import torch

        self.torch = torch
        self.enabled = torch.cuda.is_available()
        self.interval = interval
        self.allocator_mb = 0.0
        self.nvml_mb: float | None = None
        self._stop = threading.Event()

    def __enter__(self):
        if not self.enabled:
            return self
        self.torch.cuda.synchronize()
        self.torch.cuda.reset_peak_memory_stats()
        try:
            import pynvml

            pynvml.nvmlInit()
            self._handle = pynvml.nvmlDeviceGetHandleByIndex(self.torch.cuda.current_device())
            self._nvml = pynvml
            self.nvml_mb = 0.0
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        except Exception:  # pynvml missing or no NVML: allocator figures only
            self._nvml = None
        return self

    def _sample(self):
        while not self._stop.wait(self.interval):
            used = self._nvml.nvmlDeviceGetMemoryInfo(self._handle).used / 2**20
            self.nvml_mb = max(self.nvml_mb, used)

    def __exit__(self, *exc):
        if not self.enabled:
            return False
        self.torch.cuda.synchronize()
        self.allocator_mb = self.torch.cuda.max_memory_allocated() / 2**20
        if self._nvml is not None:
            self._stop.set()
            self._thread.join()
        return False

    def as_dict(self) -> dict | None:
        if not self.enabled:
            return None
        return {"torch_allocator_mb": self.allocator_mb, "nvml_used_mb": self.nvml_mb}
