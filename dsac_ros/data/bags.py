"""Bag files (rosbag2 sqlite3 / mcap, ROS 1 .bag) <-> scenes in the 7-Scenes layout.

:func:`extract_bag` reads a recording with ``rosbags`` (no ROS install needed) and writes the
layout that :class:`dsac_ros.data.seven_scenes.SceneDataset` reads:

* colour from an ``sensor_msgs/Image`` or ``sensor_msgs/CompressedImage`` topic (detected from
  the connection's message type), decoded by :mod:`dsac_ros.data.image_codec`;
* intrinsics from the first ``sensor_msgs/CameraInfo`` (``K``), written to ``intrinsics.json``
  (distortion is ignored: give rectified images);
* the camera pose ``T_wc`` (camera-to-world) at each image's header stamp, either from a pose
  topic (``geometry_msgs/PoseStamped``, ``PoseWithCovarianceStamped``,
  ``geometry_msgs/TransformStamped`` or ``nav_msgs/Odometry``, the pose of the camera in the
  world), or from a TF chain ``world_frame -> ... -> camera_frame`` composed through /tf and
  /tf_static. ``camera_frame`` must be the *optical* frame (OpenCV axes: x right, y down,
  z forward), e.g. ``camera_color_optical_frame``;
* optional depth (16UC1 millimetres or 32FC1 metres), assumed registered to the colour camera
  (same K and image size; another size is an error), matched to each image by nearest stamp.

Time matching (``stamp_tolerance_s``): a pose stream is interpolated (slerp for rotation,
linear for translation) between the two samples that bracket the image stamp when both lie
within the tolerance, otherwise the nearest sample within the tolerance is used; a frame with
no such sample is skipped and counted as ``'no_pose'``. Static transforms apply at all times.
Depth: nearest depth image within the tolerance, else the frame is skipped (``'no_depth'``).

Split (``test_fraction``): 0 (default) writes every frame to ``seq-01`` and lists it in both
``TrainSplit.txt`` and ``TestSplit.txt`` (one recording to train on and to evaluate
re-localisation on the same path). A fraction f in (0, 1) puts the *last* f of the frames
(contiguous, so test frames are not neighbours of training frames) into ``seq-02``, listed
in ``TestSplit.txt``; the rest stay in ``seq-01`` (``TrainSplit.txt``).

Output is written into a temporary folder next to ``out_dir`` and renamed when complete:
an error leaves nothing half-written.

:func:`write_scene_bag` does the reverse (a 7-Scenes-layout scene -> a bag with images,
camera info, depth, a pose topic and /tf + /tf_static), for tests and smoke tests.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter
from dataclasses import dataclass, field
import enum
import logging
import math
from pathlib import Path
from typing import Any, Callable, Iterable

import cv2
import numpy as np

from dsac_ros.data import image_codec
from dsac_ros.data.atomic import atomic_directory
from dsac_ros.data.seven_scenes import SceneDataset, write_frame, write_intrinsics_json
from dsac_ros.geometry.camera import as_intrinsics_np, scale_intrinsics_np
from dsac_ros.geometry.transforms import (
    matrix_to_quaternion_np,
    pose_to_matrix_np,
    quaternion_slerp_np,
)

LOGGER = logging.getLogger(__name__)

IMAGE_TYPES = ('sensor_msgs/msg/Image', 'sensor_msgs/msg/CompressedImage')
CAMERA_INFO_TYPE = 'sensor_msgs/msg/CameraInfo'
POSE_TYPES = ('geometry_msgs/msg/PoseStamped', 'geometry_msgs/msg/PoseWithCovarianceStamped',
              'geometry_msgs/msg/TransformStamped', 'nav_msgs/msg/Odometry')
TF_TYPE = 'tf2_msgs/msg/TFMessage'
TF_TYPES = (TF_TYPE, 'tf/msg/tfMessage')  # the second: old ROS 1 tf, same layout
_DEPTH_CACHE_NS = 10 * 10**9  # depth images kept for matching, behind the newest one


class BagError(ValueError):
    """A bag that cannot be read or does not hold what the extraction needs."""


# ----------------------------------------------------------------------------- pose streams


class PoseTrack:
    """Time series of 4x4 transforms; :meth:`at` interpolates (slerp + linear) within a
    tolerance. Stamps in nanoseconds."""

    def __init__(self) -> None:
        self._stamps: list[int] = []
        self._t: list[np.ndarray] = []
        self._q: list[np.ndarray] = []
        self._sorted = True

    def add(self, stamp_ns: int, translation: np.ndarray, q_xyzw: np.ndarray) -> None:
        if self._stamps and stamp_ns < self._stamps[-1]:
            self._sorted = False
        self._stamps.append(int(stamp_ns))
        self._t.append(np.asarray(translation, np.float64))
        self._q.append(np.asarray(q_xyzw, np.float64))

    def __len__(self) -> int:
        return len(self._stamps)

    def _sort(self) -> None:
        if not self._sorted:
            order = np.argsort(self._stamps, kind='stable')
            self._stamps = [self._stamps[i] for i in order]
            self._t = [self._t[i] for i in order]
            self._q = [self._q[i] for i in order]
            self._sorted = True

    def at(self, stamp_ns: int, tolerance_ns: int) -> np.ndarray | None:
        """(4, 4) transform at ``stamp_ns`` or None when no sample lies within tolerance."""
        self._sort()
        stamps = self._stamps
        if not stamps:
            return None
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
        return None if nearest is None else pose_to_matrix_np(self._t[nearest], self._q[nearest])


class TfTree:
    """Transforms from /tf (dynamic, interpolated) and /tf_static (fixed), composed along the
    frame tree. Edge (parent, child) stores T_parent_child (child coordinates -> parent)."""

    def __init__(self) -> None:
        self._parent: dict[str, str] = {}
        self._static: dict[str, np.ndarray] = {}
        self._dynamic: dict[str, PoseTrack] = {}

    @staticmethod
    def _name(frame: str) -> str:
        return str(frame).lstrip('/')

    def add(self, transform: Any, static: bool) -> None:
        """Add a geometry_msgs/TransformStamped (any message with the same attributes)."""
        parent = self._name(transform.header.frame_id)
        child = self._name(transform.child_frame_id)
        tr, rot = transform.transform.translation, transform.transform.rotation
        t = np.array([tr.x, tr.y, tr.z])
        q = np.array([rot.x, rot.y, rot.z, rot.w])
        self._parent[child] = parent
        if static:
            self._static[child] = pose_to_matrix_np(t, q)
            self._dynamic.pop(child, None)
        elif child not in self._static:
            self._dynamic.setdefault(child, PoseTrack()).add(_stamp_ns(transform.header), t, q)

    @property
    def frames(self) -> set[str]:
        return set(self._parent) | set(self._parent.values())

    def _chain_to_root(self, frame: str) -> list[str]:
        chain = [frame]
        while chain[-1] in self._parent:
            chain.append(self._parent[chain[-1]])
            if len(chain) > 1000:
                raise BagError(f'TF tree has a cycle through {frame!r}')
        return chain

    def check_connected(self, target: str, source: str) -> None:
        """Raise BagError unless ``source`` and ``target`` are in one tree."""
        target, source = self._name(target), self._name(source)
        for frame in (target, source):
            if frame not in self.frames:
                raise BagError(f'frame {frame!r} is not in /tf or /tf_static; frames: '
                               f'{", ".join(sorted(self.frames)) or "none"}')
        if self._chain_to_root(target)[-1] != self._chain_to_root(source)[-1]:
            raise BagError(f'frames {target!r} and {source!r} are not connected in the TF tree')

    def lookup(self, target: str, source: str, stamp_ns: int, tolerance_ns: int
               ) -> np.ndarray | None:
        """(4, 4) T_target_source at ``stamp_ns`` (source coordinates -> target), or None when
        a dynamic edge on the path has no sample within tolerance."""
        target, source = self._name(target), self._name(source)
        up_t, up_s = self._chain_to_root(target), self._chain_to_root(source)
        common = next(f for f in up_s if f in set(up_t))

        def to_ancestor(chain: list[str]) -> np.ndarray | None:
            T = np.eye(4)
            for child in chain[:chain.index(common)]:
                edge = self._static.get(child)
                if edge is None:
                    edge = self._dynamic[child].at(stamp_ns, tolerance_ns)
                    if edge is None:
                        return None
                T = edge @ T
            return T

        T_common_source, T_common_target = to_ancestor(up_s), to_ancestor(up_t)
        if T_common_source is None or T_common_target is None:
            return None
        return np.linalg.inv(T_common_target) @ T_common_source


# ----------------------------------------------------------------------------- extraction


class PoseSource(str, enum.Enum):
    """Where the camera pose comes from."""

    TOPIC = 'topic'
    TF = 'tf'


@dataclass(frozen=True)
class BagExtractionConfig:
    """What to read from a bag.

    image_topic: Image or CompressedImage (colour or mono).
    camera_info_topic: CameraInfo of that camera (K of the images as recorded).
    pose_topic: camera pose in the world (T_wc) as PoseStamped / PoseWithCovarianceStamped /
        TransformStamped / Odometry; or None to use the TF chain world_frame -> camera_frame.
    world_frame, camera_frame: TF frames (camera_frame = the optical frame) when pose_topic is
        None.
    depth_topic: optional 16UC1 (mm) or 32FC1 (m) depth registered to the colour image.
    stamp_tolerance_s: largest time gap accepted between an image and a pose / depth sample.
    every_nth: keep every n-th image (before pose matching); max_frames: stop after this many
        frames written (None = all).
    test_fraction: 0 = all frames in seq-01, listed in both splits; in (0, 1): the last
        fraction goes to seq-02 = TestSplit.
    """

    image_topic: str
    camera_info_topic: str
    pose_topic: str | None = None
    world_frame: str = 'map'
    camera_frame: str | None = None
    depth_topic: str | None = None
    stamp_tolerance_s: float = 0.02
    every_nth: int = 1
    max_frames: int | None = None
    test_fraction: float = 0.0

    def __post_init__(self) -> None:
        if self.pose_topic is None and not self.camera_frame:
            raise ValueError('give either pose_topic or camera_frame (TF chain world_frame -> '
                             'camera_frame)')
        if self.pose_topic is not None and self.camera_frame:
            raise ValueError('give either pose_topic or camera_frame, not both')
        if self.every_nth < 1:
            raise ValueError(f'every_nth must be >= 1, got {self.every_nth}')
        if self.max_frames is not None and self.max_frames < 1:
            raise ValueError(f'max_frames must be >= 1 or None, got {self.max_frames}')
        if not 0.0 <= self.test_fraction < 1.0:
            raise ValueError(f'test_fraction must be in [0, 1), got {self.test_fraction}')
        if not self.stamp_tolerance_s >= 0:
            raise ValueError(f'stamp_tolerance_s must be >= 0, got {self.stamp_tolerance_s}')

    @property
    def pose_source(self) -> PoseSource:
        return PoseSource.TOPIC if self.pose_topic is not None else PoseSource.TF


@dataclass(frozen=True)
class ExtractionSummary:
    """Result of :func:`extract_bag`. ``skipped``: reason -> count ('no_pose', 'no_depth');
    ``subsampled``: images dropped by every_nth; images after max_frames are not read.
    ``train_frames`` / ``test_frames``: frames listed in each split (with test_fraction 0 both
    equal ``frames_written``: the same sequence). ``K``: row-major colour intrinsics written."""

    out_dir: Path
    images_seen: int
    frames_written: int
    train_frames: int
    test_frames: int
    subsampled: int
    skipped: dict[str, int] = field(default_factory=dict)
    image_size: tuple[int, int] = (0, 0)  # (width, height)
    K: tuple[float, ...] = ()             # row-major 3x3

    def __str__(self) -> str:
        skipped = ', '.join(f'{k}: {v}' for k, v in sorted(self.skipped.items())) or 'none'
        return (f'{self.frames_written} frames written to {self.out_dir} ({self.train_frames} '
                f'train, {self.test_frames} test) from {self.images_seen} images; image size '
                f'{self.image_size[0]}x{self.image_size[1]}; subsampled {self.subsampled}; '
                f'skipped {skipped}')


def _stamp_ns(header: Any) -> int:
    return int(header.stamp.sec) * 1_000_000_000 + int(header.stamp.nanosec)


def _pose_of(msg: Any, msgtype: str) -> tuple[np.ndarray, np.ndarray]:
    """(translation, quaternion xyzw) of a pose-like message."""
    if msgtype == 'geometry_msgs/msg/TransformStamped':
        tr, rot = msg.transform.translation, msg.transform.rotation
        return np.array([tr.x, tr.y, tr.z]), np.array([rot.x, rot.y, rot.z, rot.w])
    pose = msg.pose if msgtype == 'geometry_msgs/msg/PoseStamped' else msg.pose.pose
    return (np.array([pose.position.x, pose.position.y, pose.position.z]),
            np.array([pose.orientation.x, pose.orientation.y, pose.orientation.z,
                      pose.orientation.w]))


def _camera_matrix(info: Any) -> np.ndarray:
    k = getattr(info, 'k', None)
    if k is None:
        k = info.K  # ROS 1 field name
    try:
        return as_intrinsics_np(np.asarray(k, np.float64).reshape(3, 3))
    except ValueError as error:
        raise BagError(f'CameraInfo K is not a valid camera matrix: {error}') from error


class _Reader:
    """AnyReader with errors wrapped into BagError naming the bag."""

    def __init__(self, bag_path: Path) -> None:
        from rosbags.highlevel import AnyReader
        from rosbags.typesys import Stores, get_typestore

        self.path = bag_path
        if not bag_path.exists():
            raise BagError(f'bag {bag_path} does not exist')
        try:
            self.reader = AnyReader([bag_path],
                                    default_typestore=get_typestore(Stores.ROS2_KILTED))
            self.reader.open()
        except Exception as error:  # rosbags raises several unrelated types
            raise BagError(f'bag {bag_path} cannot be opened (corrupted or truncated?): '
                           f'{error}') from error
        self.topics = {c.topic: c.msgtype for c in self.reader.connections}

    def close(self) -> None:
        try:
            self.reader.close()
        except Exception:  # noqa: BLE001 - closing a broken bag must not mask the real error
            LOGGER.debug('closing %s failed', self.path, exc_info=True)

    def available(self) -> str:
        return ', '.join(f'{t} [{m}]' for t, m in sorted(self.topics.items())) or 'none'

    def require(self, topic: str, types: tuple[str, ...], what: str) -> str:
        msgtype = self.topics.get(topic)
        if msgtype is None:
            raise BagError(f'bag {self.path} has no {what} topic {topic!r}; available topics: '
                           f'{self.available()}')
        if msgtype not in types:
            raise BagError(f'bag {self.path}: {what} topic {topic!r} has type {msgtype}, '
                           f'expected one of {", ".join(types)}')
        return msgtype

    def messages(self, topics: Iterable[str]) -> Iterable[tuple[str, str, Any]]:
        """(topic, msgtype, deserialised message) in log-time order."""
        topics = set(topics)
        connections = [c for c in self.reader.connections if c.topic in topics]
        try:
            for connection, _, raw in self.reader.messages(connections=connections):
                yield (connection.topic, connection.msgtype,
                       self.reader.deserialize(raw, connection.msgtype))
        except BagError:
            raise
        except Exception as error:
            raise BagError(f'bag {self.path}: reading {", ".join(sorted(topics))} failed '
                           f'(corrupted or truncated?): {error}') from error


def extract_bag(bag_path: str | Path, out_dir: str | Path, config: BagExtractionConfig,
                progress: Callable[[int], None] | None = None) -> ExtractionSummary:
    """Extract a bag into a 7-Scenes-layout scene at ``out_dir`` (see the module docstring).

    Args:
        bag_path: rosbag2 folder (or its .db3 / .mcap file) or a ROS 1 .bag file.
        out_dir: scene root to create; must not exist or be empty.
        config: topics, pose source and selection.
        progress: called with 1 after each image message handled.
    Returns:
        ExtractionSummary with counts.
    Raises:
        BagError (a ValueError) naming the bag / topic / frame for an unreadable bag, a missing
        topic (with the list of available ones), missing camera info, no frame with a pose.
    """
    bag_path, out = Path(bag_path), Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f'output folder {out} exists and is not empty')
    tolerance_ns = int(round(config.stamp_tolerance_s * 1e9))
    reader = _Reader(bag_path)
    try:
        reader.require(config.image_topic, IMAGE_TYPES, 'image')
        reader.require(config.camera_info_topic, (CAMERA_INFO_TYPE,), 'camera info')
        if config.depth_topic is not None:
            reader.require(config.depth_topic, IMAGE_TYPES, 'depth')
        meta_topics = [config.camera_info_topic]
        if config.pose_source is PoseSource.TOPIC:
            reader.require(config.pose_topic, POSE_TYPES, 'pose')
            meta_topics.append(config.pose_topic)
        else:
            tf_topics = [t for t in ('/tf', '/tf_static', 'tf', 'tf_static')
                         if reader.topics.get(t) in TF_TYPES]
            if not tf_topics:
                raise BagError(f'bag {bag_path} has no /tf or /tf_static topic for the TF chain '
                               f'{config.world_frame} -> {config.camera_frame}; available '
                               f'topics: {reader.available()}')
            meta_topics += tf_topics

        # Pass 1: camera info, poses / transforms, depth stamps (small or needed up front).
        K = None
        camera_size = (0, 0)
        track, tree = PoseTrack(), TfTree()
        depth_stamps: list[int] = []
        for topic, msgtype, msg in reader.messages(meta_topics):
            if topic == config.camera_info_topic:
                if K is None:
                    K = _camera_matrix(msg)
                    camera_size = (int(msg.width), int(msg.height))
            elif msgtype in TF_TYPES:
                for transform in msg.transforms:
                    tree.add(transform, static=topic.lstrip('/') == 'tf_static')
            else:
                track.add(_stamp_ns(msg.header), *_pose_of(msg, msgtype))
        if K is None:
            raise BagError(f'bag {bag_path}: camera info topic {config.camera_info_topic!r} has '
                           'no messages; the intrinsics are needed')
        if config.pose_source is PoseSource.TOPIC:
            if not len(track):
                raise BagError(f'bag {bag_path}: pose topic {config.pose_topic!r} has no '
                               'messages')
        else:
            tree.check_connected(config.world_frame, config.camera_frame)
        if config.depth_topic is not None:
            depth_stamps = sorted(_stamp_ns(m.header) for _, _, m in
                                  reader.messages([config.depth_topic]))

        def pose_at(stamp: int) -> np.ndarray | None:
            if config.pose_source is PoseSource.TOPIC:
                return track.at(stamp, tolerance_ns)
            return tree.lookup(config.world_frame, config.camera_frame, stamp, tolerance_ns)

        def nearest_depth(stamp: int) -> int | None:
            i = bisect_left(depth_stamps, stamp)
            best = [depth_stamps[j] for j in (i - 1, i) if 0 <= j < len(depth_stamps)]
            best = [s for s in best if abs(s - stamp) <= tolerance_ns]
            return min(best, key=lambda s: abs(s - stamp)) if best else None

        with atomic_directory(out) as tmp:
            summary = _write_frames(reader, tmp, out, config, K, camera_size, pose_at,
                                    nearest_depth, progress)
    finally:
        reader.close()
    LOGGER.info('%s', summary)
    return summary


def _write_frames(reader: _Reader, tmp: Path, out: Path, config: BagExtractionConfig,
                  K: np.ndarray, camera_size: tuple[int, int],
                  pose_at: Callable[[int], np.ndarray | None],
                  nearest_depth: Callable[[int], int | None],
                  progress: Callable[[int], None] | None) -> ExtractionSummary:
    """Pass 2: images (+ depth) in log order -> frames in ``tmp/seq-01``; then the split."""
    staging = tmp / 'seq-01'
    staging.mkdir()
    skipped: Counter[str] = Counter()
    images_seen = subsampled = written = 0
    image_size = None
    pending: dict[int, list[tuple[np.ndarray, np.ndarray]]] = {}  # depth stamp -> frames
    depth_cache: dict[int, np.ndarray] = {}
    topics = [config.image_topic] + ([config.depth_topic] if config.depth_topic else [])
    tolerance_ns = int(round(config.stamp_tolerance_s * 1e9))

    def emit(rgb: np.ndarray, depth_m: np.ndarray | None, T_wc: np.ndarray) -> None:
        nonlocal written
        if config.max_frames is not None and written >= config.max_frames:
            return  # a frame that waited for its depth after the limit was reached
        if depth_m is not None and depth_m.shape != rgb.shape[:2]:
            raise BagError(f'bag {reader.path}: depth {depth_m.shape[1]}x{depth_m.shape[0]} on '
                           f'{config.depth_topic!r} differs from the colour size '
                           f'{rgb.shape[1]}x{rgb.shape[0]}; registered depth is required')
        write_frame(staging, written, rgb, depth_m, T_wc)
        written += 1

    for topic, msgtype, msg in reader.messages(topics):
        if config.max_frames is not None and written >= config.max_frames:
            break
        stamp = _stamp_ns(msg.header)
        if topic == config.depth_topic and topic != config.image_topic:
            try:
                depth = image_codec.image_to_depth_m(msg)
            except ValueError as error:
                raise BagError(f'bag {reader.path}, topic {topic!r}: {error}') from error
            for rgb, T_wc in pending.pop(stamp, []):
                emit(rgb, depth, T_wc)
            depth_cache[stamp] = depth
            # Bound memory: images are logged close to their depth, older depth is not needed.
            for old in [s for s in depth_cache if s < stamp - _DEPTH_CACHE_NS - tolerance_ns]:
                depth_cache.pop(old)
            continue
        images_seen += 1
        if progress is not None:
            progress(1)
        if (images_seen - 1) % config.every_nth:
            subsampled += 1
            continue
        T_wc = pose_at(stamp)
        if T_wc is None:
            skipped['no_pose'] += 1
            continue
        depth_stamp = None
        if config.depth_topic is not None:
            depth_stamp = nearest_depth(stamp)
            if depth_stamp is None:
                skipped['no_depth'] += 1
                continue
        try:
            rgb = image_codec.image_to_rgb(msg)
        except ValueError as error:
            raise BagError(f'bag {reader.path}, topic {topic!r} ({msgtype}): {error}') from error
        if image_size is None:
            image_size = (rgb.shape[1], rgb.shape[0])
        elif image_size != (rgb.shape[1], rgb.shape[0]):
            raise BagError(f'bag {reader.path}, topic {topic!r}: image size changed from '
                           f'{image_size} to {(rgb.shape[1], rgb.shape[0])}')
        if depth_stamp is None:
            emit(rgb, None, T_wc)
        elif depth_stamp in depth_cache:
            emit(rgb, depth_cache[depth_stamp], T_wc)
        else:
            pending.setdefault(depth_stamp, []).append((rgb, T_wc))
    skipped['no_depth'] += sum(len(v) for v in pending.values())  # depth never arrived
    skipped = Counter({k: v for k, v in skipped.items() if v})
    if written == 0:
        raise BagError(f'bag {reader.path}: no frame of {config.image_topic!r} could be paired '
                       f'with a pose (and depth) within {config.stamp_tolerance_s} s; skipped: '
                       f'{dict(skipped)}')

    # Size of the recorded camera; K scaled when the images differ from CameraInfo's size.
    width, height = image_size
    K = K.copy()
    cw, ch = camera_size
    if cw > 0 and ch > 0 and (cw, ch) != (width, height):
        LOGGER.warning('CameraInfo is %dx%d but images are %dx%d: scaling K', cw, ch, width,
                       height)
        K = scale_intrinsics_np(K, width / cw, height / ch)
    n_test = int(math.floor(written * config.test_fraction))
    if config.test_fraction > 0 and (n_test == 0 or n_test == written):
        raise BagError(f'test_fraction {config.test_fraction} of {written} frames leaves an '
                       'empty split')
    if n_test:
        test_dir = tmp / 'seq-02'
        test_dir.mkdir()
        first_test = written - n_test
        for i in range(first_test, written):
            for suffix in ('color.png', 'depth.png', 'pose.txt'):
                src = staging / f'frame-{i:06d}.{suffix}'
                if src.exists():
                    src.rename(test_dir / f'frame-{i - first_test:06d}.{suffix}')
        (tmp / 'TrainSplit.txt').write_text('sequence1\n')
        (tmp / 'TestSplit.txt').write_text('sequence2\n')
    else:
        (tmp / 'TrainSplit.txt').write_text('sequence1\n')
        (tmp / 'TestSplit.txt').write_text('sequence1\n')
    write_intrinsics_json(tmp / 'intrinsics.json', K, width, height, depth_registered=True)
    return ExtractionSummary(out_dir=out, images_seen=images_seen, frames_written=written,
                             train_frames=written - n_test, test_frames=n_test or written,
                             subsampled=subsampled, skipped=dict(skipped),
                             image_size=(width, height), K=tuple(K.ravel().tolist()))


# ----------------------------------------------------------------------------- writing bags


class BagFormat(str, enum.Enum):
    """Bag container written by :func:`write_scene_bag`."""

    MCAP = 'mcap'
    SQLITE3 = 'sqlite3'
    ROS1 = 'ros1'


@dataclass(frozen=True)
class SceneBagTopics:
    """Topic and frame names written by :func:`write_scene_bag`."""

    image: str = '/camera/color/image_raw'
    camera_info: str = '/camera/color/camera_info'
    depth: str = '/camera/depth/image_raw'
    pose: str = '/camera/pose'
    world_frame: str = 'map'
    odom_frame: str = 'odom'
    body_frame: str = 'camera_link'
    camera_frame: str = 'camera_color_optical_frame'


# camera_link (x forward, y left, z up) -> optical frame (x right, y down, z forward).
T_LINK_OPTICAL = np.array([[0.0, 0.0, 1.0, 0.0], [-1.0, 0.0, 0.0, 0.0], [0.0, -1.0, 0.0, 0.0],
                           [0.0, 0.0, 0.0, 1.0]])
T_LINK_OPTICAL[:3, 3] = [0.02, -0.015, 0.0]  # a small lever arm so the static part matters


def map_to_odom(t_s: float) -> np.ndarray:
    """A slowly drifting map -> odom transform (T_map_odom) written by write_scene_bag, so the
    chain map -> odom -> camera_link -> optical is not trivially the pose."""
    yaw = 0.05 * math.sin(0.7 * t_s) + 0.02
    T = np.eye(4)
    T[:3, :3] = [[math.cos(yaw), -math.sin(yaw), 0], [math.sin(yaw), math.cos(yaw), 0],
                 [0, 0, 1]]
    T[:3, 3] = [0.1 + 0.05 * t_s, -0.2 + 0.03 * math.sin(t_s), 0.01]
    return T


def write_scene_bag(scene_root: str | Path, bag_path: str | Path,
                    fmt: BagFormat | str = BagFormat.MCAP, split: str = 'train',
                    topics: SceneBagTopics = SceneBagTopics(), rate_hz: float = 10.0,
                    start_time_s: float = 1_700_000_000.0, compressed: str | None = None,
                    write_depth: bool = True, depth_encoding: str = '16UC1',
                    max_frames: int | None = None) -> int:
    """Write a 7-Scenes-layout scene (one split) as a bag; returns the number of frames.

    Per frame i at stamp ``start_time_s + i / rate_hz`` (header and log time): Image rgb8 (or
    CompressedImage when ``compressed`` is 'jpeg' / 'png'), CameraInfo (K, no distortion),
    depth (when the scene has depth and ``write_depth``) as ``depth_encoding`` '16UC1'
    (millimetres, 0 invalid) or '32FC1' (metres, NaN invalid), PoseStamped T_wc in
    ``world_frame``, and /tf with map -> odom (:func:`map_to_odom`) and odom -> camera_link
    such that map -> camera_link -> optical equals T_wc; /tf_static holds camera_link ->
    optical (:data:`T_LINK_OPTICAL`) once, first.

    Args:
        fmt: 'mcap' or 'sqlite3' (rosbag2, a folder) or 'ros1' (a .bag file).
    """
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore

    fmt = BagFormat(fmt)
    if depth_encoding not in ('16UC1', '32FC1'):
        raise ValueError(f"depth_encoding must be '16UC1' or '32FC1', not {depth_encoding!r}")
    dataset = SceneDataset(scene_root, split, load_depth=write_depth)
    n = len(dataset) if max_frames is None else min(max_frames, len(dataset))
    ros1 = fmt is BagFormat.ROS1
    store = get_typestore(Stores.ROS1_NOETIC if ros1 else Stores.ROS2_KILTED)
    if TF_TYPE not in store.types:
        store.register(get_types_from_msg('geometry_msgs/TransformStamped[] transforms',
                                          TF_TYPE))
    types = store.types
    bag_path = Path(bag_path)
    if bag_path.exists():
        raise ValueError(f'{bag_path} exists already')

    def stamp(t_s: float) -> Any:
        ns = int(round(t_s * 1e9))
        return types['builtin_interfaces/msg/Time'](sec=ns // 1_000_000_000,
                                                    nanosec=ns % 1_000_000_000)

    def header(t_s: float, frame_id: str) -> Any:
        extra = {'seq': 0} if ros1 else {}
        return types['std_msgs/msg/Header'](stamp=stamp(t_s), frame_id=frame_id, **extra)

    def transform_stamped(t_s: float, parent: str, child: str, T: np.ndarray) -> Any:
        q = matrix_to_quaternion_np(T[:3, :3])
        return types['geometry_msgs/msg/TransformStamped'](
            header=header(t_s, parent), child_frame_id=child,
            transform=types['geometry_msgs/msg/Transform'](
                translation=types['geometry_msgs/msg/Vector3'](*T[:3, 3].tolist()),
                rotation=types['geometry_msgs/msg/Quaternion'](*q.tolist())))

    serialize = store.serialize_ros1 if ros1 else store.serialize_cdr
    if ros1:
        from rosbags.rosbag1 import Writer as Ros1Writer
        writer = Ros1Writer(bag_path)
    else:
        from rosbags.rosbag2 import StoragePlugin, Writer
        plugin = StoragePlugin.MCAP if fmt is BagFormat.MCAP else StoragePlugin.SQLITE3
        writer = Writer(bag_path, version=9, storage_plugin=plugin)
    image_type = 'sensor_msgs/msg/CompressedImage' if compressed else 'sensor_msgs/msg/Image'
    with writer:
        conns = {
            'image': writer.add_connection(topics.image, image_type, typestore=store),
            'info': writer.add_connection(topics.camera_info, CAMERA_INFO_TYPE, typestore=store),
            'depth': writer.add_connection(topics.depth, 'sensor_msgs/msg/Image',
                                           typestore=store),
            'pose': writer.add_connection(topics.pose, 'geometry_msgs/msg/PoseStamped',
                                          typestore=store),
            'tf': writer.add_connection('/tf', TF_TYPE, typestore=store),
            'tf_static': writer.add_connection('/tf_static', TF_TYPE, typestore=store),
        }

        def write(key: str, t_s: float, msg: Any, msgtype: str) -> None:
            writer.write(conns[key], int(round(t_s * 1e9)), serialize(msg, msgtype))

        t0 = start_time_s
        static = types[TF_TYPE](transforms=[transform_stamped(
            t0, topics.body_frame, topics.camera_frame, T_LINK_OPTICAL)])
        write('tf_static', t0, static, TF_TYPE)
        for i in range(n):
            frame = dataset[i]
            t_s = t0 + i / rate_hz
            height, width = frame.image_rgb.shape[:2]
            cam = topics.camera_frame
            if compressed:
                fields = image_codec.numpy_to_compressed_fields(frame.image_rgb, 'rgb8',
                                                                compressed)
                msg = types['sensor_msgs/msg/CompressedImage'](
                    header=header(t_s, cam), format=fields['format'],
                    data=np.frombuffer(fields['data'], np.uint8))
            else:
                msg = _image_msg(types, header(t_s, cam), frame.image_rgb, 'rgb8')
            write('image', t_s, msg, image_type)
            K = frame.K
            k_name, d_name, r_name, p_name = ('K', 'D', 'R', 'P') if ros1 else 'kdrp'
            P = np.hstack([K, np.zeros((3, 1))])
            info = types[CAMERA_INFO_TYPE](**{
                'header': header(t_s, cam), 'height': height, 'width': width,
                'distortion_model': 'plumb_bob', d_name: np.zeros(5),
                k_name: K.ravel().astype(np.float64), r_name: np.eye(3).ravel(),
                p_name: P.ravel(), 'binning_x': 0, 'binning_y': 0,
                'roi': types['sensor_msgs/msg/RegionOfInterest'](0, 0, 0, 0, False)})
            write('info', t_s, info, CAMERA_INFO_TYPE)
            if frame.depth_m is not None:
                if depth_encoding == '32FC1':
                    depth = frame.depth_m.astype(np.float32)
                else:
                    depth = np.nan_to_num(frame.depth_m.astype(np.float64) * 1000.0, nan=0.0)
                    depth = np.round(np.clip(depth, 0, 65534)).astype(np.uint16)
                write('depth', t_s, _image_msg(types, header(t_s, cam), depth, depth_encoding),
                      'sensor_msgs/msg/Image')
            q = matrix_to_quaternion_np(frame.T_wc[:3, :3])
            pose = types['geometry_msgs/msg/PoseStamped'](
                header=header(t_s, topics.world_frame),
                pose=types['geometry_msgs/msg/Pose'](
                    position=types['geometry_msgs/msg/Point'](*frame.T_wc[:3, 3].tolist()),
                    orientation=types['geometry_msgs/msg/Quaternion'](*q.tolist())))
            write('pose', t_s, pose, 'geometry_msgs/msg/PoseStamped')
            T_map_odom = map_to_odom(t_s - t0)
            T_odom_link = (np.linalg.inv(T_map_odom) @ frame.T_wc
                           @ np.linalg.inv(T_LINK_OPTICAL))
            tf = types[TF_TYPE](transforms=[
                transform_stamped(t_s, topics.world_frame, topics.odom_frame, T_map_odom),
                transform_stamped(t_s, topics.odom_frame, topics.body_frame, T_odom_link)])
            write('tf', t_s, tf, TF_TYPE)
    LOGGER.info('wrote %d frames of %s to %s (%s)', n, scene_root, bag_path, fmt.value)
    return n


def _image_msg(types: Any, header: Any, pixels: np.ndarray, encoding: str) -> Any:
    fields = image_codec.numpy_to_image_fields(pixels, encoding)
    fields['data'] = np.frombuffer(fields['data'], np.uint8)
    fields['is_bigendian'] = int(fields['is_bigendian'])
    return types['sensor_msgs/msg/Image'](header=header, **fields)


def read_color_png(path: Path) -> np.ndarray:
    """(H, W, 3) uint8 RGB from a colour PNG (helper for tests and tools)."""
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError(f'{path}: unreadable image')
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


__all__ = ['BagError', 'BagExtractionConfig', 'BagFormat', 'ExtractionSummary', 'PoseSource',
           'PoseTrack', 'SceneBagTopics', 'TfTree', 'extract_bag', 'map_to_odom',
           'write_scene_bag']
