"""A set of non-negative integers kept as sorted disjoint intervals: which files a run has folded
(accumulators.py), which files the producer has sent (its checkpoint, ingest/feed.py). No Kafka."""

from __future__ import annotations

import bisect

import numpy as np


class IndexSet:
    """A set of non-negative integers stored as sorted disjoint half-open intervals [start, stop).

    Reading and writing the intervals (``IndexSet(bounds)``, ``bounds()``) and ``len`` cost C loops,
    not Python ones: a run folded out of order during a backlog holds tens of thousands of
    intervals, read and written with every file (docs/performance.md, "A week of files")."""

    def __init__(self, bounds: np.ndarray | list[int] | None = None):
        flat = np.zeros(0, np.int64) if bounds is None else np.asarray(bounds, dtype=np.int64).ravel()
        self._starts: list[int] = flat[0::2].tolist()
        self._stops: list[int] = flat[1::2].tolist()
        self._count = int((flat[1::2] - flat[0::2]).sum())

    def __contains__(self, value: int) -> bool:
        k = bisect.bisect_right(self._starts, value) - 1
        return k >= 0 and value < self._stops[k]

    def __len__(self) -> int:
        return self._count

    def __iter__(self):
        for a, b in zip(self._starts, self._stops):
            yield from range(a, b)

    def add(self, value: int) -> bool:
        """Add value; return False if it was already present."""
        if value in self:
            return False
        k = bisect.bisect_right(self._starts, value)
        joins_left = k > 0 and self._stops[k - 1] == value
        joins_right = k < len(self._starts) and self._starts[k] == value + 1
        if joins_left and joins_right:
            self._stops[k - 1] = self._stops[k]
            del self._starts[k], self._stops[k]
        elif joins_left:
            self._stops[k - 1] = value + 1
        elif joins_right:
            self._starts[k] = value
        else:
            self._starts.insert(k, value)
            self._stops.insert(k, value + 1)
        self._count += 1
        return True

    def last(self) -> int | None:
        return self._stops[-1] - 1 if self._stops else None

    def bounds(self) -> np.ndarray:
        """(n_intervals, 2) uint32 array of [start, stop)."""
        return np.array((self._starts, self._stops), dtype=np.uint32).T.reshape(-1, 2)
