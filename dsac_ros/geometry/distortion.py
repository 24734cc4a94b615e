"""Lens distortion: a camera calibration (pinhole K + distortion) and an undistorter.

The ROS node parses sensor_msgs/CameraInfo into `CameraIntrinsics`
(`dsac_ros.ros.messages.camera_info_to_intrinsics`) and undoes the distortion with `Undistorter`
before localizing, so the relocalizer sees pinhole images with K. OpenCV models and coefficient
order.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import cv2
import numpy as np

__all__ = ['CameraIntrinsics', 'DistortionModel', 'Undistorter']


class DistortionModel(str, Enum):
    """Distortion models (the names of sensor_msgs/CameraInfo) the undistorter can undo."""

    PLUMB_BOB = 'plumb_bob'
    RATIONAL_POLYNOMIAL = 'rational_polynomial'
    EQUIDISTANT = 'equidistant'


@dataclass(frozen=True)
class CameraIntrinsics:
    """Calibration of a camera (e.g. from a CameraInfo message).

    Attributes:
        K: (3, 3) float64 pinhole matrix of the raw image, pixels.
        D: (n,) distortion coefficients (OpenCV order), empty or all zero when undistorted.
        model: the distortion model.
        width, height: image size in pixels the calibration is for.
    """

    K: np.ndarray
    D: np.ndarray
    model: DistortionModel
    width: int
    height: int

    @property
    def distorted(self) -> bool:
        return bool(self.D.size) and bool(np.any(self.D != 0.0))


class Undistorter:
    """Removes lens distortion, keeping the same K (so the undistorted image uses ``K``).

    Remap tables are computed once per calibration and reused (cheaper than cv2.undistort per
    frame). Images of a calibration without distortion pass through untouched.
    """

    def __init__(self) -> None:
        self._key: tuple | None = None
        self._maps: tuple[np.ndarray, np.ndarray] | None = None

    def __call__(self, image_hw3: np.ndarray, intrinsics: CameraIntrinsics,
                 interpolation: int = cv2.INTER_LINEAR) -> np.ndarray:
        """Image (H, W, 3) of the raw camera -> undistorted image (H, W, 3) with pinhole K.

        Also (H, W) images, e.g. registered depth with ``interpolation=cv2.INTER_NEAREST`` (no
        depth invented between surfaces); pixels from outside the raw image are 0.
        """
        if not intrinsics.distorted:
            return image_hw3
        key = (intrinsics.K.tobytes(), intrinsics.D.tobytes(), intrinsics.model,
               intrinsics.width, intrinsics.height)
        if key != self._key:
            size = (intrinsics.width, intrinsics.height)
            if intrinsics.model is DistortionModel.EQUIDISTANT:
                self._maps = cv2.fisheye.initUndistortRectifyMap(
                    intrinsics.K, intrinsics.D[:4], np.eye(3), intrinsics.K, size, cv2.CV_16SC2)
            else:
                self._maps = cv2.initUndistortRectifyMap(
                    intrinsics.K, intrinsics.D, np.eye(3), intrinsics.K, size, cv2.CV_16SC2)
            self._key = key
        map1, map2 = self._maps
        return cv2.remap(image_hw3, map1, map2, interpolation=interpolation,
                         borderMode=cv2.BORDER_CONSTANT)
