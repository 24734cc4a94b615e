"""From the camera's pose to the robot's (REP-105), and the jump gate; numpy only, no rclpy.

Frames (REP-105): ``map -> odom -> base_link -> ... -> camera optical frame``. The relocalizer
gives ``T_map_camera`` at the image stamp t; TF gives ``T_camera_base(t)`` (the robot's
extrinsic, usually static) and ``T_odom_base(t)`` (odometry). Then

    T_map_base(t) = T_map_camera(t) . T_camera_base(t)
    T_map_odom    = T_map_base(t) . T_odom_base(t)^-1

which is what AMCL and robot_localization publish: the correction that makes odometry agree
with the map, leaving every other edge of the robot's TF tree alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dsac_ros.geometry.transforms import invert_se3_np, move_pose_covariance_np, pose_errors_np

__all__ = ['GateLimits', 'JumpGate', 'RobotPose', 'robot_pose', 'yaw_of']


@dataclass(frozen=True)
class RobotPose:
    """The robot base in the map at an image stamp.

    Attributes:
        T_map_base: (4, 4) base-to-map.
        covariance: (6, 6) of the base pose in ROS PoseWithCovariance form (x, y, z, rotation
            about map x, y, z), map frame.
        T_map_odom: (4, 4) map -> odom correction, None without odometry.
    """

    T_map_base: np.ndarray
    covariance: np.ndarray
    T_map_odom: np.ndarray | None = None


def robot_pose(T_map_camera: np.ndarray, covariance_camera: np.ndarray,
               T_camera_base: np.ndarray, T_odom_base: np.ndarray | None = None) -> RobotPose:
    """The base pose and the map -> odom correction from the camera pose (module doc).

    Args:
        T_map_camera: (4, 4) camera-to-map (the relocalizer's T_wc).
        covariance_camera: (6, 6) camera pose covariance, ROS form, map frame
            (`dsac_ros.ros.messages.covariance_to_ros`).
        T_camera_base: (4, 4) base -> camera coordinates (TF lookup target camera, source
            base) at the image stamp.
        T_odom_base: (4, 4) base-to-odom at the image stamp, or None.
    """
    T_map_base = np.asarray(T_map_camera, np.float64) @ np.asarray(T_camera_base, np.float64)
    lever_arm = T_map_base[:3, 3] - np.asarray(T_map_camera, np.float64)[:3, 3]
    covariance = move_pose_covariance_np(covariance_camera, lever_arm)
    T_map_odom = None if T_odom_base is None else T_map_base @ invert_se3_np(T_odom_base)
    return RobotPose(T_map_base, covariance, T_map_odom)


def yaw_of(T_44: np.ndarray) -> float:
    """Heading (rotation about z of the parent, radians) of a pose's x axis, as tf2's getYaw."""
    R = np.asarray(T_44, np.float64)[:3, :3]
    return float(np.arctan2(R[1, 0], R[0, 0]))


@dataclass(frozen=True)
class GateLimits:
    """When a pose jump is gated (see `JumpGate`); ``max_jump_m`` 0 disables the gate."""

    max_jump_m: float = 1.0
    max_jump_deg: float = 30.0
    min_inliers: int = 300
    lost_timeout_ns: int = 5_000_000_000


class JumpGate:
    """Refuses a pose that jumps far from the last accepted one while it has few inliers.

    The comparison uses one reference per kind: 'map_to_odom' (the correction, which hardly
    moves while the robot drives, so a jump there is a real disagreement) when odometry is
    there, else 'camera' (the camera pose itself). After ``lost_timeout_ns`` (image stamps)
    without an accepted pose the gate opens: the robot is lost and any pose is a
    relocalization. Not thread-safe (the node's worker thread owns it).
    """

    def __init__(self) -> None:
        self._last: dict[str, np.ndarray] = {}
        self._last_stamp_ns: int | None = None

    def lost(self, stamp_ns: int, limits: GateLimits) -> bool:
        """Whether no pose was accepted within the lost timeout before ``stamp_ns`` (also
        before the first pose, and after time jumped back)."""
        last = self._last_stamp_ns
        return last is None or not 0 <= stamp_ns - last <= limits.lost_timeout_ns

    def check(self, stamp_ns: int, kind: str, T_44: np.ndarray, inliers: int,
              limits: GateLimits) -> str | None:
        """Why the pose is gated, or None when it passes."""
        previous = self._last.get(kind)
        if (limits.max_jump_m <= 0.0 or previous is None or inliers >= limits.min_inliers
                or self.lost(stamp_ns, limits)):
            return None
        (deg,), (m,) = pose_errors_np(np.asarray(T_44)[None], previous[None], 'T_wc')
        if m > limits.max_jump_m or deg > limits.max_jump_deg:
            return (f'{kind} jumped {m:.2f} m / {deg:.1f} deg from the last accepted pose with '
                    f'{inliers} < jump_min_inliers={limits.min_inliers} inliers')
        return None

    def accept(self, stamp_ns: int, references: dict[str, np.ndarray]) -> None:
        """Records an accepted pose (its references by kind)."""
        if self._last_stamp_ns is not None and stamp_ns < self._last_stamp_ns:
            self._last.clear()  # time went back (bag replayed again)
        self._last.update({k: np.asarray(v, np.float64) for k, v in references.items()})
        self._last_stamp_ns = stamp_ns

    def reset(self) -> None:
        self._last.clear()
        self._last_stamp_ns = None
