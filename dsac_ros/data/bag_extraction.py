"""Bag files (rosbag2 sqlite3 / mcap, ROS 1 .bag) -> scenes in the 7-Scenes layout.

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
  /tf_static (`dsac_ros.geometry.tf_buffer.TfBuffer`). ``camera_frame`` must be the *optical*
  frame (OpenCV axes: x right, y down, z forward), e.g. ``camera_color_optical_frame``;
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

import numpy as np

from dsac_ros.data import image_codec
from dsac_ros.data.atomic import atomic_directory
from dsac_ros.data.seven_scenes import write_frame, write_intrinsics_json
from dsac_ros.geometry.camera import as_intrinsics_np, scale_intrinsics_np
from dsac_ros.geometry.tf_buffer import (
    ConnectivityError,
    ExtrapolationError,
    TfBuffer,
    TransformHistory,
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
        track = TransformHistory(name=f'pose topic {config.pose_topic}')
        tree = TfBuffer()  # the whole recording: no history bound
        depth_stamps: list[int] = []
        for topic, msgtype, msg in reader.messages(meta_topics):
            if topic == config.camera_info_topic:
                if K is None:
                    K = _camera_matrix(msg)
                    camera_size = (int(msg.width), int(msg.height))
            elif msgtype in TF_TYPES:
                static = topic.lstrip('/') == 'tf_static'
                for transform in msg.transforms:
                    tree.set_transform(transform.header.frame_id, transform.child_frame_id,
                                       _stamp_ns(transform.header),
                                       *_pose_of(transform, 'geometry_msgs/msg/TransformStamped'),
                                       static=static)
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
            try:
                tree.check_connected(config.world_frame, config.camera_frame)
            except ConnectivityError as error:
                raise BagError(f'bag {bag_path}, /tf and /tf_static: {error}') from error
        if config.depth_topic is not None:
            depth_stamps = sorted(_stamp_ns(m.header) for _, _, m in
                                  reader.messages([config.depth_topic]))

        def pose_at(stamp: int) -> np.ndarray | None:
            try:
                if config.pose_source is PoseSource.TOPIC:
                    return track.at(stamp, tolerance_ns)
                return tree.lookup(config.world_frame, config.camera_frame, stamp, tolerance_ns)
            except ExtrapolationError:
                return None  # counted as 'no_pose'

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


__all__ = ['BagError', 'BagExtractionConfig', 'ExtractionSummary', 'PoseSource', 'extract_bag']
