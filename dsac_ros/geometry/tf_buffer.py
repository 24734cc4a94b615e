"""A TF frame tree over time, without ROS: stamped and static transforms, lookups with
interpolation, bounded history. Numpy, float64.

Shared by the bag extractor (``/tf`` and ``/tf_static`` of a recording, all kept) and the node
(a live TF buffer, with a bounded history). Like tf2:

* an edge ``parent -> child`` stores ``T_parent_child`` (child coordinates -> parent); every
  child has one parent (the last one given wins), and frame names lose a leading '/';
* a static transform holds at all times and replaces a dynamic edge of the same child (later
  dynamic samples of that child are ignored);
* ``lookup(target, source, stamp)`` returns ``T_target_source`` (source coordinates -> target),
  composed through the common ancestor of the two frames.

Time: stamps are integer nanoseconds. A dynamic edge at a stamp is interpolated (slerp for the
rotation, linear for the translation) between the two samples that bracket the stamp when both
lie within ``tolerance_ns`` of it; otherwise the nearest sample within the tolerance is used
(with ``extrapolate=False``, as tf2 does, only inside the samples' time span); otherwise the
lookup raises `ExtrapolationError`, naming the edge and the samples it has.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right

import numpy as np

from dsac_ros.geometry.transforms import pose_to_matrix_np, quaternion_slerp_np

__all__ = ['ConnectivityError', 'ExtrapolationError', 'TfBuffer', 'TransformHistory',
           'TransformLookupError']


class TransformLookupError(LookupError):
    """A transform that cannot be looked up."""


class ConnectivityError(TransformLookupError):
    """An unknown frame, two frames in different trees, or a cycle."""


class ExtrapolationError(TransformLookupError):
    """A dynamic edge on the path has no sample near enough the requested stamp."""


def _seconds(ns: int) -> str:
    return f'{ns / 1e9:.9f} s'


class TransformHistory:
    """Stamped samples of one transform (translation (3,), quaternion (4,) x, y, z, w), kept in
    stamp order; `at` interpolates within a tolerance (see the module doc).

    Args:
        max_age_ns: samples older than the newest one by more than this are dropped when a
            sample is added (bounded memory for a live buffer); None keeps every sample.
        name: how errors name this transform (e.g. 'map -> odom').
    """

    def __init__(self, max_age_ns: int | None = None, name: str = 'transform') -> None:
        if max_age_ns is not None and max_age_ns < 0:
            raise ValueError(f'max_age_ns must be >= 0 or None, got {max_age_ns}')
        self.max_age_ns = max_age_ns
        self.name = name
        self._stamps: list[int] = []
        self._t: list[np.ndarray] = []
        self._q: list[np.ndarray] = []

    def __len__(self) -> int:
        return len(self._stamps)

    @property
    def span_ns(self) -> tuple[int, int] | None:
        """(oldest, newest) stamp, or None without samples."""
        return (self._stamps[0], self._stamps[-1]) if self._stamps else None

    def add(self, stamp_ns: int, translation, q_xyzw) -> None:
        """Insert a sample (any order; the same stamp twice keeps both, the later one after)."""
        stamp_ns = int(stamp_ns)
        i = bisect_right(self._stamps, stamp_ns)
        self._stamps.insert(i, stamp_ns)
        self._t.insert(i, np.asarray(translation, np.float64))
        self._q.insert(i, np.asarray(q_xyzw, np.float64))
        if self.max_age_ns is not None:
            drop = bisect_left(self._stamps, self._stamps[-1] - self.max_age_ns)
            if drop:
                del self._stamps[:drop], self._t[:drop], self._q[:drop]

    def at(self, stamp_ns: int, tolerance_ns: int = 0, extrapolate: bool = True) -> np.ndarray:
        """(4, 4) transform at ``stamp_ns``.

        Raises:
            ExtrapolationError: no sample within ``tolerance_ns`` of the stamp, or (with
                ``extrapolate`` False) a stamp outside the samples' span.
        """
        stamps = self._stamps
        if not extrapolate and (not stamps or not stamps[0] <= stamp_ns <= stamps[-1]):
            raise ExtrapolationError(self._gap_message(stamp_ns, tolerance_ns))
        i = bisect_left(stamps, stamp_ns)
        if i < len(stamps) and stamps[i] == stamp_ns:
            return pose_to_matrix_np(self._t[i], self._q[i])
        before = i - 1 if i > 0 and stamp_ns - stamps[i - 1] <= tolerance_ns else None
        after = i if i < len(stamps) and stamps[i] - stamp_ns <= tolerance_ns else None
        if before is not None and after is not None:
            alpha = (stamp_ns - stamps[before]) / (stamps[after] - stamps[before])
            t = (1 - alpha) * self._t[before] + alpha * self._t[after]
            q = quaternion_slerp_np(self._q[before], self._q[after], alpha)
            return pose_to_matrix_np(t, q)
        nearest = before if before is not None else after
        if nearest is None:
            raise ExtrapolationError(self._gap_message(stamp_ns, tolerance_ns))
        return pose_to_matrix_np(self._t[nearest], self._q[nearest])

    def _gap_message(self, stamp_ns: int, tolerance_ns: int) -> str:
        if not self._stamps:
            return f'{self.name} has no samples'
        i = bisect_left(self._stamps, stamp_ns)
        gaps = [abs(self._stamps[j] - stamp_ns) for j in (i - 1, i)
                if 0 <= j < len(self._stamps)]
        where = ('before the first sample' if stamp_ns < self._stamps[0] else
                 'after the last sample' if stamp_ns > self._stamps[-1] else 'between samples')
        return (f'{self.name} at {_seconds(stamp_ns)}: {where}, nearest {min(gaps) / 1e9:.3f} s '
                f'away, tolerance {tolerance_ns / 1e9:.3f} s (samples {_seconds(self._stamps[0])}'
                f' to {_seconds(self._stamps[-1])})')


class TfBuffer:
    """Frame tree of static and stamped transforms (see the module doc).

    Args:
        cache_time_s: history kept per dynamic edge, behind its newest sample (tf2's buffers
            keep 10 s); None keeps everything (bag extraction reads a whole recording).
    """

    def __init__(self, cache_time_s: float | None = None) -> None:
        if cache_time_s is not None and not cache_time_s >= 0:
            raise ValueError(f'cache_time_s must be >= 0 or None, got {cache_time_s}')
        self._max_age_ns = None if cache_time_s is None else int(round(cache_time_s * 1e9))
        self._parent: dict[str, str] = {}
        self._static: dict[str, np.ndarray] = {}
        self._dynamic: dict[str, TransformHistory] = {}

    @staticmethod
    def _name(frame: str) -> str:
        return str(frame).lstrip('/')

    def set_transform(self, parent: str, child: str, stamp_ns: int, translation, q_xyzw,
                      static: bool = False) -> None:
        """Add ``T_parent_child`` given as a translation (m) and a quaternion (x, y, z, w), e.g.
        the fields of a geometry_msgs/TransformStamped; ``static`` for /tf_static."""
        parent, child = self._name(parent), self._name(child)
        if not parent or not child or parent == child:
            raise ValueError(f'a transform needs two different frame names, got {parent!r} -> '
                             f'{child!r}')
        self._parent[child] = parent
        if static:
            self._static[child] = pose_to_matrix_np(translation, q_xyzw)
            self._dynamic.pop(child, None)
        elif child not in self._static:
            history = self._dynamic.get(child)
            if history is None:
                history = self._dynamic[child] = TransformHistory(self._max_age_ns,
                                                                  f'{parent} -> {child}')
            history.name = f'{parent} -> {child}'
            history.add(stamp_ns, translation, q_xyzw)

    @property
    def frames(self) -> set[str]:
        """Every frame named by a transform."""
        return set(self._parent) | set(self._parent.values())

    def _chain_to_root(self, frame: str) -> list[str]:
        chain = [frame]
        while chain[-1] in self._parent:
            chain.append(self._parent[chain[-1]])
            if len(chain) > len(self._parent) + 1:
                raise ConnectivityError(f'the TF tree has a cycle through {frame!r}')
        return chain

    def _chains(self, target: str, source: str) -> tuple[list[str], list[str]]:
        for frame in (target, source):
            if frame not in self.frames:
                known = ', '.join(sorted(self.frames)) or 'none'
                raise ConnectivityError(f'frame {frame!r} is not in the TF tree; frames: {known}')
        up_t, up_s = self._chain_to_root(target), self._chain_to_root(source)
        if up_t[-1] != up_s[-1]:
            raise ConnectivityError(f'frames {target!r} and {source!r} are not connected in the '
                                    f'TF tree (roots {up_t[-1]!r} and {up_s[-1]!r})')
        return up_t, up_s

    def check_connected(self, target: str, source: str) -> None:
        """Raise ConnectivityError unless both frames are known and in one tree."""
        self._chains(self._name(target), self._name(source))

    def lookup(self, target: str, source: str, stamp_ns: int, tolerance_ns: int = 0,
               extrapolate: bool = True) -> np.ndarray:
        """(4, 4) float64 ``T_target_source`` (source coordinates -> target) at ``stamp_ns``;
        ``extrapolate`` False refuses stamps outside a dynamic edge's samples (tf2's rule).

        Raises:
            ConnectivityError: an unknown frame, or the frames are not connected.
            ExtrapolationError: a dynamic edge on the path has no sample within
                ``tolerance_ns`` of the stamp (the message names the edge).
        """
        target, source = self._name(target), self._name(source)
        up_t, up_s = self._chains(target, source)
        common = next(f for f in up_s if f in set(up_t))

        def to_ancestor(chain: list[str]) -> np.ndarray:
            T = np.eye(4)
            for child in chain[:chain.index(common)]:
                edge = self._static.get(child)
                if edge is None:
                    edge = self._dynamic[child].at(stamp_ns, tolerance_ns, extrapolate)
                T = edge @ T
            return T

        T_common_source, T_common_target = to_ancestor(up_s), to_ancestor(up_t)
        return np.linalg.inv(T_common_target) @ T_common_source

    def can_transform(self, target: str, source: str, stamp_ns: int,
                      tolerance_ns: int = 0, extrapolate: bool = True) -> bool:
        """Whether `lookup` would succeed."""
        try:
            self.lookup(target, source, stamp_ns, tolerance_ns, extrapolate)
        except TransformLookupError:
            return False
        return True

