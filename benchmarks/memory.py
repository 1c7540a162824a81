"""Peak resident memory of a stretch of work, sampled from a background thread."""

from __future__ import annotations

import threading

import psutil


def rss_mb() -> float:
    return psutil.Process().memory_info().rss / 2**20


class PeakRss:
    """Context manager: ``peak_mb`` is the highest RSS seen inside the block."""

    def __init__(self, interval: float = 0.02):
        self.interval = interval
        self.peak_mb = 0.0
        self.start_mb = 0.0
        self._stop = threading.Event()

    def __enter__(self):
        self.start_mb = self.peak_mb = rss_mb()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.wait(self.interval):
            self.peak_mb = max(self.peak_mb, rss_mb())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak_mb = max(self.peak_mb, rss_mb())
        return False
