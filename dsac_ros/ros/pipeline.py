"""The per-frame path of the relocalization node, kept out of the Node class.

`LatestSlot` holds the newest camera frame only (older, unprocessed ones are dropped, never
queued), and `FramePipeline` turns one Image/CompressedImage (+ optional CameraInfo) into a
`FrameResult`: decode -> calibration check -> undistort -> `Relocalizer.localize`. The node and
`benchmarks/bench_node_latency.py` both run this code.
"""

from __future__ import annotations

from dataclasses import dataclass, field
import threading
import time
from typing import Any, Generic, TypeVar

import numpy as np

from dsac_ros.geometry.distortion import CameraIntrinsics, Undistorter
from dsac_ros.ros.messages import camera_info_to_intrinsics, image_msg_to_rgb

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


@dataclass
class ReceivedFrame:
    """An image message with its CameraInfo, paired by stamp (`dsac_ros.ros.sync`).

    Attributes:
        msg: sensor_msgs Image or CompressedImage.
        camera_info: the CameraInfo of the image's stamp (or the nearest within the sync
            tolerance), or None when the camera never sent one.
        received_monotonic: time.monotonic() in the image callback, seconds.
        received_clock_ns: the node's clock in the image callback, nanoseconds: ROS time, i.e.
            /clock under use_sim_time (0 before the first /clock), so that it compares with
            header stamps.
    """

    msg: Any
    camera_info: Any | None
    received_monotonic: float
    received_clock_ns: int


@dataclass
class FrameResult:
    """What `FramePipeline.process` made of one frame.

    Attributes:
        localization: the Relocalizer's result (T_wc camera-to-world, T_cw, inliers, ...) or
            None when the frame was rejected.
        error: why the frame was rejected (bad message), else None.
        K: (3, 3) intrinsics the image was localized with (pixels of the undistorted input).
        used_camera_info: False when the model's own intrinsics were used (no camera_info).
        timings_ms: 'decode' (decode + undistort), 'network', 'estimator' (from the
            Relocalizer), 'localize' (the whole call), in milliseconds.
    """

    localization: Any | None
    error: str | None = None
    K: np.ndarray | None = None
    used_camera_info: bool = False
    timings_ms: dict[str, float] = field(default_factory=dict)


class FramePipeline:
    """Decodes, checks and localizes one frame with a `dsac_ros.relocalizer.Relocalizer`.

    Args:
        relocalizer: object with ``localize(image_rgb_hw3 uint8, K_33 or None) -> Localization``.
    """

    def __init__(self, relocalizer) -> None:
        self.relocalizer = relocalizer
        self._undistort = Undistorter()
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

    def process(self, image_msg, camera_info=None) -> FrameResult:
        """Localizes one image message; a bad message yields a result with ``error`` set.

        Args:
            image_msg: sensor_msgs Image (rgb8/bgr8/rgba8/bgra8/mono8) or CompressedImage.
            camera_info: sensor_msgs CameraInfo of the same camera, or None to use the model's
                training intrinsics.
        """
        start = time.perf_counter()
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
        decoded = time.perf_counter()
        localization = self.relocalizer.localize(image, K)
        done = time.perf_counter()
        timings = {
            'decode': 1e3 * (decoded - start),
            'localize': 1e3 * (done - decoded),
        }
        for key, value in dict(getattr(localization, 'timings', {}) or {}).items():
            timings[key] = float(value)
        return FrameResult(localization=localization, K=K, used_camera_info=K is not None,
                           timings_ms=timings)
