"""Per-shape caches: engine output buffers, loop step buffers, CUDA graphs.

All are keyed by request shape and bounded, so a server seeing many shapes keeps
only the most recent few.
"""

from __future__ import annotations

import collections
from typing import Callable

from .errors import VidrtError

MAX_CACHED_SHAPES = 4


class BoundedCache:
    """Bounded LRU keyed by request shape; evicted values are handed to ``release``."""

    def __init__(self, capacity: int = MAX_CACHED_SHAPES, release: Callable[[object], None] | None = None):
        if capacity < 1:
            raise VidrtError("a shape cache needs room for at least one entry")
        self.capacity = capacity
        self.release = release or (lambda graph: None)
        self._graphs: collections.OrderedDict = collections.OrderedDict()

    def get(self, key):
        graph = self._graphs.get(key)
        if graph is not None:
            self._graphs.move_to_end(key)
        return graph

    def put(self, key, graph) -> None:
        self._graphs[key] = graph
        self._graphs.move_to_end(key)
        while len(self._graphs) > self.capacity:
            _, old = self._graphs.popitem(last=False)
            self.release(old)

    def get_or_make(self, key, make: Callable[[], object]):
        """The value for ``key``, made (and cached) on first use."""
        value = self.get(key)
        if value is None:
            value = make()
            self.put(key, value)
        return value

    def clear(self) -> None:
        while self._graphs:
            self.release(self._graphs.popitem(last=False)[1])

    def __len__(self) -> int:
        return len(self._graphs)

    def __contains__(self, key) -> bool:
        return key in self._graphs
