"""Pairing messages of two topics by header stamp (ROS-free): the node pairs each image with
the depth image of the same stamp, exactly or the nearest within a tolerance, as
message_filters' synchronizers do.

`StampMatcher` keeps the newest messages of one topic by stamp (bounded); the consumer of the
other topic asks for the one nearest its stamp, optionally waiting a little for one that has not
arrived yet (a message of a second topic often arrives a few milliseconds after the first).
"""

from __future__ import annotations

import bisect
import threading
from typing import Generic, TypeVar

T = TypeVar('T')

__all__ = ['StampMatcher']


class StampMatcher(Generic[T]):
    """The newest `capacity` messages of one topic, by stamp; thread-safe.

    Args:
        capacity: messages kept (the oldest stamps go first); a few camera frames suffice.
    """

    def __init__(self, capacity: int = 30) -> None:
        if capacity < 1:
            raise ValueError(f'capacity must be >= 1, got {capacity}')
        self._capacity = capacity
        self._cond = threading.Condition()
        self._stamps: list[int] = []  # sorted
        self._items: list[T] = []
        self._newest_ns: int | None = None
        self._closed = False

    def add(self, stamp_ns: int, item: T) -> None:
        """Stores `item` under its stamp (ns); a message with a stamp already held replaces
        it."""
        with self._cond:
            i = bisect.bisect_left(self._stamps, stamp_ns)
            if i < len(self._stamps) and self._stamps[i] == stamp_ns:
                self._items[i] = item
            else:
                self._stamps.insert(i, stamp_ns)
                self._items.insert(i, item)
                if len(self._stamps) > self._capacity:
                    del self._stamps[0], self._items[0]
            self._newest_ns = stamp_ns if self._newest_ns is None else max(self._newest_ns,
                                                                           stamp_ns)
            self._cond.notify_all()

    def _nearest(self, stamp_ns: int, tolerance_ns: int) -> T | None:
        i = bisect.bisect_left(self._stamps, stamp_ns)
        best, best_gap = None, tolerance_ns + 1
        for j in (i - 1, i):
            if 0 <= j < len(self._stamps):
                gap = abs(self._stamps[j] - stamp_ns)
                if gap < best_gap:
                    best, best_gap = self._items[j], gap
        return best

    def match(self, stamp_ns: int, tolerance_ns: int = 0, timeout_s: float = 0.0) -> T | None:
        """The message whose stamp is nearest `stamp_ns` and within `tolerance_ns` (0: the
        same stamp), or None.

        When none matches yet and no message later than ``stamp_ns + tolerance_ns`` has
        arrived (so a match may still come), waits up to `timeout_s` for one.
        """
        with self._cond:
            found = self._nearest(stamp_ns, tolerance_ns)
            if found is not None or timeout_s <= 0.0:
                return found

            def settled() -> bool:
                return self._closed or (self._newest_ns is not None
                                        and self._newest_ns > stamp_ns + tolerance_ns) or (
                    self._nearest(stamp_ns, tolerance_ns) is not None)

            self._cond.wait_for(settled, timeout=timeout_s)
            return self._nearest(stamp_ns, tolerance_ns)

    def close(self) -> None:
        """Wakes every waiting `match` (it then returns what it has)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def __len__(self) -> int:
        with self._cond:
            return len(self._stamps)
