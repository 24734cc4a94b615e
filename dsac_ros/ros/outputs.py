"""What the relocalization node publishes, as a helper that takes the node (not a Node
subclass): the camera pose, the base pose, /initialpose, /tf, and the steady republishing of
the last map -> odom so that TF never goes stale between relocalizations.

Stamps: every message of a frame carries the image stamp (also under sim time), except
map -> odom, which is future-dated by ``transform_tolerance_s`` as AMCL does; its republished
copies are stamped ``max(node clock now, last image stamp) + transform_tolerance_s`` (the node
clock is /clock under ``use_sim_time``). map -> odom stamps strictly increase (a late frame's
correction is stamped just after the last copy sent), so that TF listeners never see a new
correction slotted in before an older one, nor two samples with one stamp (tf2 drops those).
"""

from __future__ import annotations

from collections.abc import Callable
import threading

from geometry_msgs.msg import PoseStamped, PoseWithCovarianceStamped
import numpy as np
from rclpy.clock import Clock, ClockType
from rclpy.node import Node

from dsac_ros.ros.messages import (
    ns_to_stamp,
    pose_stamped,
    pose_with_covariance_stamped,
    transform_stamped,
)
from dsac_ros.ros.parameters import NodeSettings, TfMode
from dsac_ros.ros.robot_pose import RobotPose
from dsac_ros.ros.tf_broadcaster import TransformBroadcaster


def _stamp(stamp_ns: int):
    msg = PoseStamped().header.stamp
    ns_to_stamp(stamp_ns, msg)
    return msg


class PoseOutputs:
    """Publishers of the node's poses and transforms.

    Args:
        node: the node to create publishers and the republish timer on.
        settings: callable returning the current `NodeSettings` (parameters change at run
            time).
    """

    def __init__(self, node: Node, settings: Callable[[], NodeSettings]) -> None:
        self._node = node
        self._settings = settings
        s = settings()
        self._camera_pub = node.create_publisher(PoseStamped, s.pose_topic, 10)
        self._camera_cov_pub = node.create_publisher(PoseWithCovarianceStamped,
                                                     s.pose_with_covariance_topic, 10)
        self._base_pub = node.create_publisher(PoseWithCovarianceStamped, s.base_pose_topic, 10)
        self._initialpose_pub = node.create_publisher(PoseWithCovarianceStamped,
                                                      s.initialpose_topic, 10)
        self._tf = TransformBroadcaster(node)
        self._lock = threading.Lock()
        self._map_odom: np.ndarray | None = None
        self._last_image_ns = 0
        self._last_sent_ns = 0
        self._timer = None
        self._steady = Clock(clock_type=ClockType.STEADY_TIME)
        self.counts = {'map_to_odom_sent': 0, 'base_poses_published': 0,
                       'initialposes_published': 0}
        self.update_rate()

    # -- per frame (worker thread) -----------------------------------------------------------

    def publish_camera(self, stamp_ns: int, T_map_camera: np.ndarray,
                       covariance_ros: np.ndarray) -> None:
        """/camera_pose and /camera_pose_with_covariance (the optical frame in the map)."""
        s, stamp = self._settings(), _stamp(stamp_ns)
        self._camera_pub.publish(pose_stamped(T_map_camera, stamp, s.map_frame))
        self._camera_cov_pub.publish(pose_with_covariance_stamped(
            T_map_camera, covariance_ros, stamp, s.map_frame))

    def publish_base(self, stamp_ns: int, robot: RobotPose) -> None:
        """The base pose with its covariance on base_pose_topic."""
        self._base_pub.publish(pose_with_covariance_stamped(
            robot.T_map_base, robot.covariance, _stamp(stamp_ns), self._settings().map_frame))
        self.counts['base_poses_published'] += 1

    def publish_initialpose(self, stamp_ns: int, robot: RobotPose) -> None:
        """The base pose for AMCL (x, y, yaw and their variances are what it reads)."""
        self._initialpose_pub.publish(pose_with_covariance_stamped(
            robot.T_map_base, robot.covariance, _stamp(stamp_ns), self._settings().map_frame))
        self.counts['initialposes_published'] += 1

    def send_tf(self, stamp_ns: int, T_map_camera: np.ndarray, camera_frame: str,
                robot: RobotPose | None) -> None:
        """/tf per tf_mode: map -> odom (future-dated) or map -> <camera>_dsac; nothing else."""
        s = self._settings()
        if s.tf_mode == TfMode.MAP_TO_CAMERA.value:
            child = s.tf_camera_frame or f'{camera_frame}_dsac'
            self._tf.send_transform(transform_stamped(T_map_camera, _stamp(stamp_ns),
                                                      s.map_frame, child))
        elif s.tf_mode == TfMode.MAP_TO_ODOM.value and robot is not None \
                and robot.T_map_odom is not None:
            with self._lock:
                self._map_odom = robot.T_map_odom
                self._last_image_ns = max(self._last_image_ns, stamp_ns)
            self._send_map_odom(robot.T_map_odom, stamp_ns)

    def _send_map_odom(self, T_map_odom: np.ndarray, stamp_ns: int) -> None:
        s = self._settings()
        with self._lock:
            stamp_ns = max(stamp_ns + int(round(s.transform_tolerance_s * 1e9)),
                           self._last_sent_ns + 1000)
            self._last_sent_ns = stamp_ns
            self._tf.send_transform(transform_stamped(T_map_odom, _stamp(stamp_ns), s.map_frame,
                                                      s.odom_frame))
            self.counts['map_to_odom_sent'] += 1

    # -- steady republishing (executor thread) -----------------------------------------------

    def update_rate(self) -> None:
        """(Re)creates the republish timer for tf_publish_rate_hz (wall-clock steady, so it
        also runs under sim time before /clock arrives)."""
        if self._timer is not None:
            self._node.destroy_timer(self._timer)
            self._timer = None
        rate = self._settings().tf_publish_rate_hz
        if rate > 0.0:
            self._timer = self._node.create_timer(1.0 / rate, self._republish,
                                                  clock=self._steady)

    def _republish(self) -> None:
        if self._settings().tf_mode != TfMode.MAP_TO_ODOM.value:
            return
        with self._lock:
            T, last = self._map_odom, self._last_image_ns
        if T is not None:
            now = self._node.get_clock().now().nanoseconds
            self._send_map_odom(T, max(now, last))

    def forget(self) -> None:
        """Drops the last map -> odom (no more republishing until a new pose)."""
        with self._lock:
            self._map_odom = None
            self._last_image_ns = 0
            self._last_sent_ns = 0

    def close(self) -> None:
        if self._timer is not None:
            self._node.destroy_timer(self._timer)
            self._timer = None
        for publisher in (self._camera_pub, self._camera_cov_pub, self._base_pub,
                          self._initialpose_pub, self._tf.publisher):
            self._node.destroy_publisher(publisher)
