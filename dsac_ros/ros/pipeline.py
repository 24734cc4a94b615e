"""The per-frame path of the relocalization node, kept out of the Node class.

`LatestSlot` holds the newest camera frame only (older, unprocessed ones are dropped, never
queued), and `FramePipeline` turns one Image/CompressedImage (+ optional CameraInfo, + the depth
image paired with it in RGB-D) into a `FrameResult`: decode -> calibration check -> undistort
-> `Relocalizer.localize`. The node and `benchmarks/bench_node_latency.py` both run this code.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
import threading
import time
from typing import Any, Generic, TypeVar

import cv2
import numpy as np

from dsac_ros.dsac import PoseMode
from dsac_ros.geometry.camera import scale_intrinsics_np
from dsac_ros.geometry.distortion import CameraIntrinsics, Undistorter
from dsac_ros.relocalizer import check_depth_image
from dsac_ros.ros.messages import camera_info_to_intrinsics, depth_msg_to_m, image_msg_to_rgb

T = TypeVar('T')


class LatestSlot(Generic[T]):
    """A one-element mailbox: `put` replaces what is there, `take` waits for an item.

    Thread-safe. Counts items put and items replaced before anyone took them (dropped).
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._item: T | None = None
        self._closed = False
        self.received = 0
        self.dropped = 0

    def put(self, item: T) -> None:
        with self._cond:
            self.received += 1
            if self._item is not None:
                self.dropped += 1
            self._item = item
            self._cond.notify()

    def take(self, timeout: float | None = None) -> T | None:
        """The newest item (removing it), or None on timeout or once closed."""
        with self._cond:
            if self._item is None and not self._closed:
                self._cond.wait(timeout)
            if self._closed:
                return None
            item, self._item = self._item, None
            return item

    def close(self) -> None:
        """Wakes and ends every `take`; later puts are ignored by takers."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()


class DepthFallback(str, Enum):
    """Why a frame of an RGB-D node was localized with RGB (the node counts each).

    NO_DEPTH: no depth image with a matching stamp (within the tolerance, after the wait).
    BAD_DEPTH: the depth image could not be used (encoding, size, not registered); logged.
    INVALID_DEPTH: too few cells with valid depth (0 / NaN) for an RGB-D pose.
    """

    NO_DEPTH = 'no_depth'
    BAD_DEPTH = 'bad_depth'
    INVALID_DEPTH = 'invalid_depth'


@dataclass
class ReceivedFrame:
    """An image message with its CameraInfo (and depth image), paired by stamp
    (`dsac_ros.ros.sync`).

    Attributes:
        msg: sensor_msgs Image or CompressedImage.
        camera_info: the CameraInfo of the image's stamp (or the nearest within the sync
            tolerance), or None when the camera never sent one.
        received_monotonic: time.monotonic() in the image callback, seconds.
        received_clock_ns: the node's clock in the image callback, nanoseconds: ROS time, i.e.
            /clock under use_sim_time (0 before the first /clock), so that it compares with
            header stamps.
        depth: RGB-D: the depth Image of the image's stamp (nearest within
            depth_stamp_tolerance_s), None when none came within depth_wait_s.
    """

    msg: Any
    camera_info: Any | None
    received_monotonic: float
    received_clock_ns: int
    depth: Any | None = None


@dataclass
class FrameResult:
    """What `FramePipeline.process` made of one frame.

    Attributes:
        localization: the Relocalizer's result (T_wc camera-to-world, T_cw, inliers, ...) or
            None when the frame was rejected.
        error: why the frame was rejected (bad message), else None.
        K: (3, 3) intrinsics the image was localized with (pixels of the undistorted input).
        used_camera_info: False when the model's own intrinsics were used (no camera_info).
        timings_ms: 'decode' (decode + undistort, depth included), 'network', 'estimator'
            (from the Relocalizer), 'localize' (the whole call), in milliseconds.
        mode: which correspondences gave the pose (PoseMode.RGB or RGBD).
        depth_fallback: why an RGB-D pipeline localized this frame with RGB, else None.
        depth_error: what was wrong with the depth image (BAD_DEPTH, INVALID_DEPTH), else ''.
    """

    localization: Any | None
    error: str | None = None
    K: np.ndarray | None = None
    used_camera_info: bool = False
    timings_ms: dict[str, float] = field(default_factory=dict)
    mode: PoseMode = PoseMode.RGB
    depth_fallback: DepthFallback | None = None
    depth_error: str = ''


class FramePipeline:
    """Decodes, checks and localizes one frame with a `dsac_ros.relocalizer.Relocalizer`.

    Args:
        relocalizer: object with ``localize(image_rgb_hw3 uint8, K_33 or None) -> Localization``
            (with ``expects_depth`` also ``localize(image, K, depth_m)``).
        expects_depth: RGB-D: every frame should come with its depth image; one without (or
            with an unusable one) is localized with RGB and its `DepthFallback` reported.
    """

    def __init__(self, relocalizer, expects_depth: bool = False) -> None:
        self.relocalizer = relocalizer
        self.expects_depth = expects_depth
        self._undistort = Undistorter()
        self._undistort_depth = Undistorter()  # own remap tables (another resolution)
        self._info_key: tuple | None = None
        self._intrinsics: CameraIntrinsics | None = None

    def intrinsics(self, camera_info) -> CameraIntrinsics:
        """CameraInfo -> CameraIntrinsics, parsed once per distinct calibration."""
        key = (tuple(camera_info.k), tuple(camera_info.d), camera_info.distortion_model,
               camera_info.width, camera_info.height)
        if key != self._info_key:
            self._intrinsics = camera_info_to_intrinsics(camera_info)
            self._info_key = key
        return self._intrinsics

    def process(self, image_msg, camera_info=None, depth_msg=None) -> FrameResult:
        """Localizes one image message; a bad message yields a result with ``error`` set.

        Args:
            image_msg: sensor_msgs Image (rgb8/bgr8/rgba8/bgra8/mono8) or CompressedImage.
            camera_info: sensor_msgs CameraInfo of the same camera, or None to use the model's
                training intrinsics.
            depth_msg: with ``expects_depth``: the depth Image paired with ``image_msg``
                (16UC1 mm / 32FC1 m, registered to it, any resolution of its aspect), or None
                when none was found. A bad depth image does not reject the frame: it is
                localized with RGB (``depth_fallback`` BAD_DEPTH, ``depth_error`` says why).
        """
        start = time.perf_counter()
        intrinsics = None
        try:
            image = image_msg_to_rgb(image_msg)
            K = None
            if camera_info is not None:
                intrinsics = self.intrinsics(camera_info)
                height, width = image.shape[:2]
                if (width, height) != (intrinsics.width, intrinsics.height):
                    raise ValueError(
                        f'image is {width}x{height} but camera_info is '
                        f'{intrinsics.width}x{intrinsics.height}')
                image = self._undistort(image, intrinsics)
                K = intrinsics.K
        except ValueError as exc:
            return FrameResult(localization=None, error=str(exc))
        depth, fallback, depth_error = None, None, ''
        if self.expects_depth:
            if depth_msg is None:
                fallback = DepthFallback.NO_DEPTH
            else:
                try:
                    depth = self._depth(depth_msg, image.shape, intrinsics)
                except ValueError as exc:
                    fallback, depth_error = DepthFallback.BAD_DEPTH, str(exc)
        decoded = time.perf_counter()
        if depth is None:
            localization = self.relocalizer.localize(image, K)
        else:
            localization = self.relocalizer.localize(image, K, depth)
            if getattr(localization, 'depth_fallback', ''):
                fallback = DepthFallback.INVALID_DEPTH
                depth_error = localization.depth_fallback
        done = time.perf_counter()
        timings = {
            'decode': 1e3 * (decoded - start),
            'localize': 1e3 * (done - decoded),
        }
        for key, value in dict(getattr(localization, 'timings', {}) or {}).items():
            timings[key] = float(value)
        return FrameResult(localization=localization, K=K, used_camera_info=K is not None,
                           timings_ms=timings,
                           mode=PoseMode(getattr(localization, 'mode', PoseMode.RGB)),
                           depth_fallback=fallback, depth_error=depth_error)

    def _depth(self, depth_msg, image_shape: tuple[int, ...],
               intrinsics: CameraIntrinsics | None) -> np.ndarray:
        """Decoded, checked and (with the image's distortion) undistorted depth, metres."""
        depth = depth_msg_to_m(depth_msg)
        check_depth_image(depth, image_shape, 'depth image')
        if intrinsics is not None and intrinsics.distorted:
            # Registered to the raw colour image: undo the same distortion at its resolution.
            h, w = depth.shape
            at_depth = CameraIntrinsics(
                scale_intrinsics_np(intrinsics.K, w / intrinsics.width, h / intrinsics.height),
                intrinsics.D, intrinsics.model, w, h)
            depth = self._undistort_depth(depth, at_depth, interpolation=cv2.INTER_NEAREST)
        return depth
