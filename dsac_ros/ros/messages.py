"""ROS message <-> numpy conversions of the relocalization node (and the demo's player and
recorder). The math lives in `dsac_ros.geometry`; this module only reads and fills messages.

Poses: the node publishes the camera-to-world transform ``T_wc`` (4x4, metres) of the OpenCV
camera frame (x right, y down, z forward) as ``map -> camera``: a PoseStamped whose position is the
camera centre in the map frame and whose orientation rotates camera axes into map axes.
Quaternions are (x, y, z, w) as in ROS messages.

Covariance: ROS ``PoseWithCovariance.covariance`` is a row-major 6x6 over
(x, y, z, rotation about X, rotation about Y, rotation about Z), all expressed in the message's
``frame_id`` (here the map frame); the rotation parameters are a small fixed-axis (left)
perturbation, ``R_wc' = exp([dtheta]x) R_wc`` with dtheta in the map frame. See
`covariance_to_ros` for the mapping from the estimator's parameterisation.
"""

from __future__ import annotations

import functools
import math

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import PoseStamped, PoseWithCovarianceStamped, TransformStamped
import numpy as np
from sensor_msgs.msg import CameraInfo, CompressedImage, Image

from dsac_ros.data import image_codec
from dsac_ros.geometry.camera import as_intrinsics_np
from dsac_ros.geometry.distortion import CameraIntrinsics, DistortionModel
from dsac_ros.geometry.transforms import (
    matrix_to_pose_np,
    pose_to_matrix_np,
    rotate_twist_covariance_np,
)
from dsac_ros.ros.stamps import ns_to_stamp, stamp_to_ns

__all__ = ['camera_info_to_intrinsics', 'covariance_to_ros', 'diagnostic_array',
           'diagnostic_values', 'image_msg_to_rgb', 'intrinsics_to_camera_info', 'ns_to_stamp',
           'pose_msg_to_matrix', 'pose_stamped', 'pose_with_covariance_stamped',
           'rgb_to_image_msg', 'stamp_to_ns', 'transform_msg_to_matrix', 'transform_stamped']

# ---------------------------------------------------------------------------------------------
# Images


def image_msg_to_rgb(msg: Image | CompressedImage) -> np.ndarray:
    """Decodes a sensor_msgs Image or CompressedImage into an RGB uint8 array (H, W, 3).

    `dsac_ros.data.image_codec.image_to_rgb` does the decoding (padded rows, byte order):
    colour encodings (rgb8, bgr8, rgba8, bgra8) become RGB, mono8/mono16 are replicated into
    three channels; depth / float encodings (16UC1, 32FC1) are not colour images.

    Raises:
        ValueError: empty data, inconsistent step/size, an encoding that is not a colour image,
            or a compressed image OpenCV cannot decode; the message says which.
    """
    if len(msg.data) == 0:
        raise ValueError('image message has empty data')
    rgb = image_codec.image_to_rgb(msg)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise ValueError(f'decoded image has shape {rgb.shape}, expected (H, W, 3)')
    return rgb


def depth_msg_to_m(msg: Image) -> np.ndarray:
    """Decodes a depth sensor_msgs Image into float32 metres (H, W), NaN where invalid.

    16UC1 / mono16: millimetres, 0 (and 65535) invalid; 32FC1: metres, NaN / inf / <= 0
    invalid (`dsac_ros.data.image_codec.image_to_depth_m`).

    Raises:
        ValueError: empty data, inconsistent step/size, or another encoding (the message
            says which).
    """
    if len(msg.data) == 0:
        raise ValueError('depth message has empty data')
    return image_codec.image_to_depth_m(msg)


def depth_to_image_msg(depth_m: np.ndarray, encoding: str = '16UC1', frame_id: str = ''
                       ) -> Image:
    """Depth (H, W) metres (NaN / <= 0 invalid) -> sensor_msgs/Image, the inverse of
    `depth_msg_to_m`: 16UC1 millimetres (invalid and out of range -> 0) or 32FC1 metres
    (invalid -> NaN). Header stamp left for the caller."""
    depth = np.asarray(depth_m, np.float64)
    if depth.ndim != 2:
        raise ValueError(f'expected depth (H, W), got shape {depth.shape}')
    valid = np.isfinite(depth) & (depth > 0)
    if encoding == '16UC1':
        mm = np.where(valid, np.round(depth * 1000.0), 0.0)
        array = np.where(mm < 65535, mm, 0).astype(np.uint16)
    elif encoding == '32FC1':
        array = np.where(valid, depth, np.nan).astype(np.float32)
    else:
        raise ValueError(f"depth encoding must be '16UC1' or '32FC1', got {encoding!r}")
    msg = image_codec.numpy_to_image(array, encoding, Image())
    msg.header.frame_id = frame_id
    return msg


def rgb_to_image_msg(image_rgb_hw3: np.ndarray, frame_id: str = '') -> Image:
    """RGB uint8 (H, W, 3) -> sensor_msgs/Image rgb8 (header stamp left for the caller)."""
    if image_rgb_hw3.dtype != np.uint8 or image_rgb_hw3.ndim != 3 or image_rgb_hw3.shape[2] != 3:
        raise ValueError(f'expected uint8 (H, W, 3), got {image_rgb_hw3.dtype} '
                         f'{image_rgb_hw3.shape}')
    msg = image_codec.numpy_to_image(image_rgb_hw3, 'rgb8', Image())
    msg.header.frame_id = frame_id
    return msg


# ---------------------------------------------------------------------------------------------
# Camera calibration


def camera_info_to_intrinsics(msg: CameraInfo) -> CameraIntrinsics:
    """CameraInfo -> CameraIntrinsics.

    Raises:
        ValueError: K not a usable pinhole matrix (fx, fy <= 0 or non-finite), size zero, or
            a non-zero distortion of an unsupported model.
    """
    K = np.asarray(msg.k, dtype=np.float64).reshape(3, 3)
    D = np.asarray(msg.d, dtype=np.float64).reshape(-1)
    width, height = int(msg.width), int(msg.height)
    try:
        if K[2, 2] == 0.0:
            raise ValueError(f'K[2, 2] is 0: {K.reshape(-1).tolist()}')
        K = as_intrinsics_np(K / K[2, 2], 'K')
    except ValueError as exc:
        raise ValueError(f'camera_info K is not a pinhole matrix: {exc}') from None
    if width <= 0 or height <= 0:
        raise ValueError(f'camera_info size is {width}x{height}')
    if not np.isfinite(D).all():
        raise ValueError('camera_info D holds non-finite values')
    name = str(msg.distortion_model).strip().lower() or DistortionModel.PLUMB_BOB.value
    try:
        model = DistortionModel(name)
    except ValueError:
        if np.any(D != 0.0):
            raise ValueError(
                f'distortion model {msg.distortion_model!r} is not supported; use one of '
                f'{[m.value for m in DistortionModel]}') from None
        model = DistortionModel.PLUMB_BOB
    if model is DistortionModel.EQUIDISTANT and D.size not in (0, 4):
        raise ValueError(f'equidistant distortion takes 4 coefficients, got {D.size}')
    return CameraIntrinsics(K=K, D=D, model=model, width=width, height=height)


def intrinsics_to_camera_info(K_33: np.ndarray, width: int, height: int,
                              frame_id: str = '') -> CameraInfo:
    """Pinhole CameraInfo without distortion (plumb_bob, D = 0) for an image of this size."""
    K = np.asarray(K_33, dtype=np.float64).reshape(3, 3)
    msg = CameraInfo()
    msg.header.frame_id = frame_id
    msg.width, msg.height = int(width), int(height)
    msg.distortion_model = DistortionModel.PLUMB_BOB.value
    msg.d = [0.0] * 5
    msg.k = K.reshape(-1).tolist()
    msg.r = np.eye(3).reshape(-1).tolist()
    P = np.zeros((3, 4))
    P[:, :3] = K
    msg.p = P.reshape(-1).tolist()
    return msg


# ---------------------------------------------------------------------------------------------
# Poses


def _pose_fields(T_44) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(translation, quaternion xyzw) of a finite 4x4 transform (`matrix_to_pose_np`). The node
    fills three messages from one pose per frame: the few most recent are kept."""
    T = np.asarray(T_44, dtype=np.float64)
    if T.shape != (4, 4):
        raise ValueError(f'expected a finite 4x4 transform, got shape {T.shape}')
    return _pose_fields_of_bytes(np.ascontiguousarray(T).tobytes())


@functools.lru_cache(maxsize=8)
def _pose_fields_of_bytes(T_bytes: bytes) -> tuple[tuple[float, ...], tuple[float, ...]]:
    translation, quat = matrix_to_pose_np(np.frombuffer(T_bytes, np.float64).reshape(4, 4))
    return tuple(translation.tolist()), tuple(quat.tolist())


def _fill_pose(pose, T_44: np.ndarray) -> None:
    translation, quat = _pose_fields(T_44)
    pose.position.x, pose.position.y, pose.position.z = (float(v) for v in translation)
    (pose.orientation.x, pose.orientation.y, pose.orientation.z,
     pose.orientation.w) = (float(v) for v in quat)


def pose_stamped(T_wc_44: np.ndarray, stamp, frame_id: str) -> PoseStamped:
    """Camera-to-world T_wc -> PoseStamped (pose of the camera in ``frame_id``)."""
    msg = PoseStamped()
    msg.header.stamp = stamp
    msg.header.frame_id = frame_id
    _fill_pose(msg.pose, T_wc_44)
    return msg


def pose_msg_to_matrix(pose) -> np.ndarray:
    """geometry_msgs/Pose -> 4x4 (for a camera pose: camera-to-world T_wc)."""
    p, q = pose.position, pose.orientation
    return pose_to_matrix_np((p.x, p.y, p.z), (q.x, q.y, q.z, q.w))


def transform_msg_to_matrix(transform) -> np.ndarray:
    """geometry_msgs/Transform -> 4x4 (parent <- child)."""
    t, q = transform.translation, transform.rotation
    return pose_to_matrix_np((t.x, t.y, t.z), (q.x, q.y, q.z, q.w))


def pose_with_covariance_stamped(T_wc_44: np.ndarray, covariance_ros_66: np.ndarray, stamp,
                                 frame_id: str) -> PoseWithCovarianceStamped:
    """T_wc and a covariance already in ROS order (see `covariance_to_ros`) -> message."""
    cov = np.asarray(covariance_ros_66, dtype=np.float64)
    if cov.shape != (6, 6):
        raise ValueError(f'covariance must be 6x6, got {cov.shape}')
    msg = PoseWithCovarianceStamped()
    msg.header.stamp = stamp
    msg.header.frame_id = frame_id
    _fill_pose(msg.pose.pose, T_wc_44)
    msg.pose.covariance = cov.reshape(-1).tolist()
    return msg


def transform_stamped(T_parent_child_44: np.ndarray, stamp, parent_frame: str,
                      child_frame: str) -> TransformStamped:
    """T (parent <- child, e.g. T_wc for map -> camera) -> TransformStamped."""
    msg = TransformStamped()
    msg.header.stamp = stamp
    msg.header.frame_id = parent_frame
    msg.child_frame_id = child_frame
    translation, quat = _pose_fields(T_parent_child_44)
    msg.transform.translation.x, msg.transform.translation.y, msg.transform.translation.z = (
        float(v) for v in translation)
    (msg.transform.rotation.x, msg.transform.rotation.y, msg.transform.rotation.z,
     msg.transform.rotation.w) = (float(v) for v in quat)
    return msg


def covariance_to_ros(covariance_66: np.ndarray, T_wc_44: np.ndarray) -> np.ndarray:
    """Estimator covariance -> ROS PoseWithCovariance order and frame.

    The estimator's covariance (``dsac_ros.dsac.estimator.PoseEstimate``) is over the twist
    xi = (rho, phi), translation first (m) then rotation (rad), of a perturbation in the CAMERA
    frame; ROS wants (x, y, z, rot x, rot y, rot z) of the camera pose in the map frame: the
    same order, both 3-blocks rotated into the map frame
    (`dsac_ros.geometry.transforms.rotate_twist_covariance_np` with R_wc).

    Args:
        covariance_66: (6, 6) covariance of (rho m, phi rad) in the camera frame.
        T_wc_44: camera-to-world pose the covariance belongs to.

    Returns:
        (6, 6) covariance over (x, y, z in m, rot x, rot y, rot z in rad), map frame. Non-finite
        input gives -1 in the first diagonal entry (ROS convention for unknown).
    """
    cov = np.asarray(covariance_66, dtype=np.float64)
    if cov.shape != (6, 6):
        raise ValueError(f'covariance must be 6x6, got {cov.shape}')
    if not np.isfinite(cov).all():
        unknown = np.zeros((6, 6))
        unknown[0, 0] = -1.0
        return unknown
    return rotate_twist_covariance_np(cov, np.asarray(T_wc_44, dtype=np.float64)[:3, :3])


# ---------------------------------------------------------------------------------------------
# Diagnostics


def diagnostic_array(stamp, name: str, hardware_id: str, level: int | bytes, message: str,
                     values: dict[str, object]) -> DiagnosticArray:
    """One DiagnosticStatus (level DiagnosticStatus.OK/WARN/ERROR/STALE) with key/values."""
    status = DiagnosticStatus()
    status.level = level if isinstance(level, bytes) else bytes([int(level)])
    status.name = name
    status.hardware_id = hardware_id
    status.message = message
    status.values = [KeyValue(key=str(k), value=_format_value(v)) for k, v in values.items()]
    msg = DiagnosticArray()
    msg.header.stamp = stamp
    msg.status = [status]
    return msg


def _format_value(value: object) -> str:
    if isinstance(value, float):
        return 'nan' if math.isnan(value) else f'{value:.4g}'
    return str(value)


def diagnostic_values(msg: DiagnosticArray) -> dict[str, str]:
    """All key/value pairs of a DiagnosticArray (first status wins on duplicate keys)."""
    out: dict[str, str] = {}
    for status in msg.status:
        for kv in status.values:
            out.setdefault(kv.key, kv.value)
    return out
