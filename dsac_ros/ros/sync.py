"""Pairs messages of several streams by their header stamps, without ROS (any item type).

The relocalization node pairs each image with the CameraInfo of its stamp (a calibration change
then lands on its own frame, not on the next one) and, in RGB-D, with the depth image of its
stamp. Like message_filters' synchronizers, pairing is by stamp, never by arrival order:

* one **primary** stream drives the output (the colour image); every primary message is matched
  with one message of each **secondary** stream (camera_info, depth, ...);
* a secondary message with the primary's exact stamp matches at once; otherwise the nearest one
  within that stream's tolerance matches, decided as soon as the stream has delivered a message
  stamped after the primary (streams are in stamp order, so no nearer one can come) or when the
  primary has waited behind ``queue_size`` newer primaries;
* a primary with no match in a **required** secondary is dropped and counted as unmatched;
  for a **fallback** secondary (depth: localize with RGB instead) it goes out with ``None``
  for that stream, counted as missing;
* an **optional** secondary that has delivered nothing yet (a camera without camera_info) holds
  a primary only until the next primary arrives; once it has delivered, it is required;
* primaries held only by fallback streams or unseen optional streams leave with ``None`` for
  them when `release` lets them (the caller keeps the clock: e.g. "waited depth_wait_s");
* a secondary message may match several primaries (a camera_info published at a lower rate);
  one that leaves its queue without ever being used is counted as unmatched;
* output is in stamp order: a matched primary drops the older primaries still waiting (counted
  as unmatched), as message_filters' synchronizers do.

Queues are bounded (``queue_size`` per stream), so a stream that stops cannot grow memory.
Thread-safe: `add` may be called from several subscription callbacks at once.

Example (the node)::

    sync = StampSynchronizer('image', ['camera_info', 'depth'],
                             tolerance_ns={'camera_info': 10_000_000, 'depth': 20_000_000},
                             optional=['camera_info'], fallback=['depth'])
    for match in sync.add('depth', stamp_ns, depth_msg):        # from any callback
        use(match.items['image'], match.items['camera_info'], match.items['depth'])
    for match in sync.release(lambda item: waited_long_enough(item)):   # from a timer
        ...
    sync.counts()  # SyncCounts(received, matched, unmatched, missing, pending)
"""

from __future__ import annotations

from bisect import insort
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
import threading
from typing import Any

__all__ = ['Matched', 'StampSynchronizer', 'SyncCounts']


@dataclass(frozen=True)
class Matched:
    """One primary message with its secondaries.

    Attributes:
        stamp_ns: the primary's stamp (integer nanoseconds).
        items: stream name -> item, the primary's under its own name; None for a fallback
            stream without a match or an optional stream that had delivered nothing yet.
        offsets_ns: secondary stream name -> its matched stamp minus ``stamp_ns`` (0 for an
            exact match; absent for a None item).
    """

    stamp_ns: int
    items: dict[str, Any]
    offsets_ns: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class SyncCounts:
    """Counters of a `StampSynchronizer` (a snapshot).

    Attributes:
        received: stream -> messages added.
        matched: primaries sent out.
        unmatched: stream -> messages dropped without a match (primaries with no message of a
            required stream, or behind a newer match; secondaries never used).
        missing: secondary -> primaries sent out with None for it (fallback or unseen optional).
        pending: stream -> messages waiting in the queue now.
    """

    received: dict[str, int]
    matched: int
    unmatched: dict[str, int]
    missing: dict[str, int]
    pending: dict[str, int]


@dataclass(order=True)
class _Entry:
    stamp_ns: int
    seq: int
    item: Any = field(compare=False)
    used: bool = field(default=False, compare=False)


class StampSynchronizer:
    """Matches a primary stream with secondary streams by stamp (see the module doc).

    Args:
        primary: name of the stream that drives the output.
        secondaries: names of the streams matched to each primary message (at least one).
        tolerance_ns: largest |secondary stamp - primary stamp| accepted, nanoseconds, for all
            secondaries or per secondary (a mapping; missing ones 0); 0 asks for exact stamps.
        queue_size: messages kept per stream (>= 1): pending primaries and candidate
            secondaries; the oldest pending primary is decided when a newer one overflows it.
        optional: secondaries that do not hold primaries back until they first deliver.
        fallback: secondaries whose missing match gives None instead of dropping the primary.

    Raises:
        ValueError: no secondary, a repeated or unknown name, a negative tolerance or a
            queue_size below 1.
    """

    def __init__(self, primary: str, secondaries: Sequence[str],
                 tolerance_ns: int | Mapping[str, int] = 0, queue_size: int = 10,
                 optional: Collection[str] = (), fallback: Collection[str] = ()) -> None:
        names = [primary, *secondaries]
        if not secondaries:
            raise ValueError('a synchronizer needs at least one secondary stream')
        if len(set(names)) != len(names):
            raise ValueError(f'stream names must differ, got {names}')
        for kind, given in (('optional', optional), ('fallback', fallback)):
            if not set(given) <= set(secondaries):
                raise ValueError(f'{kind} streams {sorted(set(given) - set(secondaries))} are '
                                 f'not secondaries')
        tolerances = (dict(tolerance_ns) if isinstance(tolerance_ns, Mapping)
                      else dict.fromkeys(secondaries, tolerance_ns))
        if not set(tolerances) <= set(secondaries):
            raise ValueError(f'tolerances for {sorted(set(tolerances) - set(secondaries))}, '
                             'which are not secondaries')
        if any(t < 0 for t in tolerances.values()):
            raise ValueError(f'tolerance_ns must be >= 0, got {tolerance_ns}')
        if queue_size < 1:
            raise ValueError(f'queue_size must be >= 1, got {queue_size}')
        self.primary = primary
        self.secondaries = tuple(secondaries)
        self.tolerance_ns = {s: int(tolerances.get(s, 0)) for s in secondaries}
        self.queue_size = int(queue_size)
        self.optional = frozenset(optional)
        self.fallback = frozenset(fallback)
        self._lock = threading.Lock()
        self._queues: dict[str, list[_Entry]] = {name: [] for name in names}
        self._seen: set[str] = set()
        self._received = dict.fromkeys(names, 0)
        self._unmatched = dict.fromkeys(names, 0)
        self._missing = dict.fromkeys(secondaries, 0)
        self._matched = 0
        self._seq = 0
        self._last_primary_stamp: int | None = None

    # -- public ------------------------------------------------------------------------------

    def add(self, stream: str, stamp_ns: int, item: Any) -> list[Matched]:
        """Adds one message; returns the primaries this completes, oldest first (often none or
        one).

        Raises:
            KeyError: an unknown stream name.
        """
        with self._lock:
            queue = self._queues[stream]
            self._received[stream] += 1
            self._seq += 1
            insort(queue, _Entry(int(stamp_ns), self._seq, item))
            if stream == self.primary:
                last = self._last_primary_stamp
                self._last_primary_stamp = (int(stamp_ns) if last is None
                                            else max(last, int(stamp_ns)))
                # A newer primary releases the ones waiting only for an unseen optional stream.
                out = self._decide(force_count=max(0, len(queue) - self.queue_size))
            else:
                self._seen.add(stream)
                out = self._decide()
                if len(queue) > self.queue_size:
                    self._discard(stream, queue.pop(0))
            self._prune()
            return out

    def release(self, ready: Callable[[Any], bool] = lambda item: True) -> list[Matched]:
        """Sends out the waiting primaries held only by fallback streams or by optional streams
        that have delivered nothing yet, for which ``ready(primary item)`` is true (e.g. waited
        long enough by a clock the caller keeps), with None for those streams."""
        with self._lock:
            out = self._decide(release=ready)
            self._prune()
            return out

    def counts(self) -> SyncCounts:
        with self._lock:
            return SyncCounts(received=dict(self._received), matched=self._matched,
                              unmatched=dict(self._unmatched), missing=dict(self._missing),
                              pending={k: len(q) for k, q in self._queues.items()})

    def reset(self) -> None:
        """Forgets every queued message (e.g. after time jumped back); counters are kept."""
        with self._lock:
            for name, queue in self._queues.items():
                for entry in queue:
                    self._discard(name, entry)
                queue.clear()
            self._seen.clear()
            self._last_primary_stamp = None

    # -- matching ----------------------------------------------------------------------------

    def _discard(self, stream: str, entry: _Entry) -> None:
        if stream == self.primary or not entry.used:
            self._unmatched[stream] += 1

    def _unseen_optional(self, stream: str) -> bool:
        return stream in self.optional and stream not in self._seen

    def _choose(self, stream: str, stamp_ns: int, force: bool, newest_primary: bool,
                released: bool) -> tuple[bool, _Entry | None]:
        """(decided, entry) for one secondary; decided with None = no match (dropping the
        primary unless the stream is a fallback or an unseen optional one)."""
        queue = self._queues[stream]
        if self._unseen_optional(stream):
            return (not newest_primary or force or released), None
        tolerance = self.tolerance_ns[stream]
        near = [e for e in queue if abs(e.stamp_ns - stamp_ns) <= tolerance]
        exact = next((e for e in near if e.stamp_ns == stamp_ns), None)
        if exact is not None:
            return True, exact
        passed = bool(queue) and queue[-1].stamp_ns > stamp_ns
        if not (passed or force or (released and stream in self.fallback)):
            return False, None
        if not near:
            return True, None
        return True, min(near, key=lambda e: (abs(e.stamp_ns - stamp_ns), -e.stamp_ns))

    def _decide(self, force_count: int = 0, release: Callable[[Any], bool] | None = None
                ) -> list[Matched]:
        """Decides every pending primary that can be decided (the oldest ``force_count`` ones
        with what is queued now; those ``release`` accepts without their fallback and unseen
        optional streams). A matched primary drops the older ones still waiting, as
        message_filters does, so the output stays in stamp order."""
        primaries = self._queues[self.primary]
        decisions: list[tuple[_Entry, str, dict[str, _Entry | None]]] = []
        for index, entry in enumerate(primaries):
            force = index < force_count
            newest = index == len(primaries) - 1
            released = release is not None and release(entry.item)
            chosen: dict[str, _Entry | None] = {}
            status = 'matched'
            for stream in self.secondaries:
                done, match = self._choose(stream, entry.stamp_ns, force, newest, released)
                if not done:
                    status = 'waiting'
                    break
                if match is None and not (stream in self.fallback
                                          or self._unseen_optional(stream)):
                    status = 'failed'
                chosen[stream] = match
            decisions.append((entry, status, chosen))
        last_match = max((i for i, d in enumerate(decisions) if d[1] == 'matched'), default=-1)
        out: list[Matched] = []
        keep: list[_Entry] = []
        for index, (entry, status, chosen) in enumerate(decisions):
            if status == 'waiting' and index > last_match:
                keep.append(entry)
            elif status != 'matched':
                self._unmatched[self.primary] += 1
            else:
                out.append(self._emit(entry, chosen))
        self._queues[self.primary] = keep
        return out

    def _emit(self, entry: _Entry, chosen: dict[str, _Entry | None]) -> Matched:
        items: dict[str, Any] = {self.primary: entry.item}
        offsets: dict[str, int] = {}
        for stream, match in chosen.items():
            items[stream] = None if match is None else match.item
            if match is None:
                self._missing[stream] += 1
            else:
                match.used = True
                offsets[stream] = match.stamp_ns - entry.stamp_ns
        self._matched += 1
        return Matched(entry.stamp_ns, items, offsets)

    def _prune(self) -> None:
        """Drops secondaries no pending or future primary can match (older than the oldest
        pending primary, or than the newest primary when none waits, minus the stream's
        tolerance), keeping each stream's newest message."""
        primaries = self._queues[self.primary]
        if primaries:
            reference = primaries[0].stamp_ns
        elif self._last_primary_stamp is not None:
            reference = self._last_primary_stamp
        else:
            return
        for stream in self.secondaries:
            queue = self._queues[stream]
            horizon = reference - self.tolerance_ns[stream]
            while len(queue) > 1 and queue[0].stamp_ns < horizon:
                self._discard(stream, queue.pop(0))
