"""ROS 2 node: camera relocalization with DSAC, for a robot (REP-105) or a camera alone.

Run: ``ros2 run dsac_ros relocalize_node --ros-args --params-file config/relocalize.yaml``
(or ``.venv/bin/relocalize_node ...`` / ``python -m dsac_ros.ros.node ...`` without ros2cli);
``relocalize_node --help`` lists every parameter. A managed (lifecycle) variant:
``relocalize_lifecycle_node`` (`dsac_ros.ros.lifecycle_node`).

Topics (names are parameters; defaults shown):
  in  ``/camera/image_raw`` sensor_msgs/Image (or ``<image_topic>/compressed``
      sensor_msgs/CompressedImage with compressed_input), QoS sensor data (best effort, keep
      last 5) unless input_reliability is 'reliable'.
  in  ``/camera/camera_info`` sensor_msgs/CameraInfo, paired with each image by stamp (exact,
      else nearest within sync_tolerance_s; `dsac_ros.ros.sync`): K of the raw image; a
      non-zero D (plumb_bob, rational_polynomial, equidistant) is undone before localizing.
      A camera that never sends camera_info: the model's training intrinsics (warned once).
  in  ``depth_topic`` (empty: none, RGB only) sensor_msgs/Image: depth registered to the colour
      image (``aligned_depth_to_color``), 16UC1 mm or 32FC1 m, 0 / NaN invalid, any resolution
      of the image's aspect, same QoS as the image. Each image is paired with the depth image
      of its stamp (nearest within depth_stamp_tolerance_s, waiting up to depth_wait_s for a
      late one; the same synchronizer) and localized in RGB-D mode (Kabsch hypotheses, 3D
      inliers); a frame without usable depth is localized with RGB and the reason counted.
  in  ``/tf``, ``/tf_static``: odom -> base_frame and base_frame -> ... -> camera optical frame,
      looked up at the image stamp (`dsac_ros.ros.tf_listener`: tf2_ros when installed, else
      the project's TfBuffer).
  out ``/camera_pose`` geometry_msgs/PoseStamped: the camera (OpenCV optical frame: x right,
      y down, z forward) in ``map_frame``, i.e. camera-to-world T_wc; stamp = image stamp.
  out ``/camera_pose_with_covariance`` PoseWithCovarianceStamped: same pose, the estimator's
      covariance (times covariance_scale, plus the floors) in ROS order and map frame.
  out ``/dsac_pose`` PoseWithCovarianceStamped: the base_frame pose in the map, covariance
      carried from the camera along the lever arm (`dsac_ros.ros.robot_pose`).
  out ``/initialpose`` PoseWithCovarianceStamped (base pose, for AMCL): after a ~/relocalize
      request, and with publish_initialpose once per relocalization; never every frame.
  out ``/tf``: per tf_mode, ``map -> odom`` (T_map_camera . T_camera_base . T_odom_base^-1 at
      the image stamp, future-dated by transform_tolerance_s, republished at
      tf_publish_rate_hz), or ``map -> <camera>_dsac``, or nothing.
  out ``/diagnostics`` every diagnostics_period_s, one status 'dsac_ros: relocalization':
      counters (frames_received, frames_unmatched (no camera_info match), frames_dropped
      (replaced by a newer frame), frames_not_requested, frames_processed, frames_rejected,
      poses_published, frames_without_pose, poses_gated, tf_lookup_failures, map_to_odom_sent,
      base_poses_published, initialposes_published, relocalize_requests, ...), the last
      frame's numbers (last_inliers, latency_ms (receive -> publish), stamp_to_publish_ms and
      transport_ms (on the node's clock: /clock under use_sim_time), queue_ms, decode_ms,
      preprocess_ms, network_ms, estimator_ms, tf_ms, publish_ms), tf_backend, last_tf_error;
      with a depth_topic also last_mode ('rgb' / 'rgbd'), poses_rgbd, poses_rgb,
      depth_received, depth_fallback_no_depth / _bad_depth / _invalid_depth.
      OK / WARN (no pose, gated, no map -> odom) / ERROR (bad frame); STALE before the first
      image and after stale_timeout_s without one.
Service: ``~/relocalize`` std_srvs/Trigger (`dsac_ros.ros.relocalize_service`): localize the
next relocalize_frames frames, answer with the best pose and its inliers, send /initialpose.
With continuous:=false the node localizes only on request.
"""

from __future__ import annotations

import importlib.resources
from pathlib import Path
import sys

import rclpy
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.node import Node

from dsac_ros.ros.parameters import (
    NodeSettings,
    add_parameter_callbacks,
    declare_parameters,
    describe_parameters,
)
from dsac_ros.ros.relocalization import DIAGNOSTIC_NAME, Relocalization

__all__ = ['DIAGNOSTIC_NAME', 'NODE_NAME', 'RelocalizeNode', 'default_model_path',
           'load_relocalizer', 'main']

NODE_NAME = 'relocalize_node'
# The executor's threads and the inference worker share the GIL. At Python's default 5 ms
# switch interval the worker's torch ops each waited for the executor, which rebuilds its wait
# set at every wake-up (~3 per message): under a 30 Hz flood of 640x480 frames on a 2-core CPU
# network and estimator grew from 60 / 32 ms to 0.5-1.4 / 0.4-2.0 s per frame, stamp ->
# publish max 2756 ms, 10 of 121 received frames processed. At 0.5 ms: max 185-342 ms, ~100 of
# 301 processed (test_ros_node_flood, py-spy --gil).
GIL_SWITCH_INTERVAL_S = 0.0005


def default_model_path() -> Path:
    """The shipped demo model (dsac_ros/assets/demo_model.pt)."""
    return Path(str(importlib.resources.files('dsac_ros') / 'assets' / 'demo_model.pt'))


def load_relocalizer(settings: NodeSettings, logger=None):
    """Relocalizer for the node's settings.

    Raises:
        FileNotFoundError: the model file does not exist.
        CheckpointError (ValueError): the checkpoint is corrupted or not a dsac_ros model.
    """
    import torch

    from dsac_ros.device import resolve_device
    from dsac_ros.relocalizer import Relocalizer, RelocalizerConfig

    if settings.num_threads > 0:
        torch.set_num_threads(settings.num_threads)
    path = Path(settings.model_path) if settings.model_path else default_model_path()
    if not path.is_file():
        hint = '' if settings.model_path else ' (shipped demo model missing: set model_path)'
        raise FileNotFoundError(f'model file {path} does not exist{hint}')
    device = str(resolve_device(settings.device,
                                warn=None if logger is None else logger.warning))
    # Estimator settings: the checkpoint's; the node's parameters go on top
    # (`RelocalizeNode._apply_estimator_settings`).
    config = RelocalizerConfig(device=device, scoring=settings.scoring)
    relocalizer = Relocalizer.from_checkpoint(path, config)
    if logger is not None:
        logger.info(f'loaded model {path} on {device}')
    return relocalizer


class OwnsRelocalization:
    """What both node classes do with their `Relocalization` helper (``self._core``)."""

    _core: Relocalization | None = None

    def counters(self) -> dict[str, float]:
        """Counters and the last frame's numbers (what /diagnostics reports); empty before
        the helper exists (an unconfigured lifecycle node)."""
        return {} if self._core is None else self._core.counters()

    def close(self) -> None:
        """Stops the worker thread and releases what the helper made (call before
        destroy_node); safe after a failed start and twice."""
        core, self._core = self._core, None
        if core is not None:
            core.close()

    def destroy_node(self) -> None:
        self.close()
        super().destroy_node()


class RelocalizeNode(OwnsRelocalization, Node):
    """The relocalization node (see the module doc): parameters, model, and a `Relocalization`
    helper that does the work.

    Args:
        relocalizer: a `dsac_ros.relocalizer.Relocalizer`, or an object with its
            ``localize(image_rgb_hw3, K_33 or None)``, ``estimator_config`` and
            ``set_estimator_config(config)``; loaded from the model_path parameter when None
            (tests and benchmarks can pass their own). The node's estimator parameters are
            applied to it at start and whenever they change.
        **node_kwargs: forwarded to rclpy's Node (context, parameter_overrides, ...).

    Raises:
        ValueError: an invalid parameter value, or a bad checkpoint (CheckpointError).
        FileNotFoundError: the model file does not exist.
    """

    def __init__(self, relocalizer=None, **node_kwargs) -> None:
        super().__init__(NODE_NAME, **node_kwargs)
        self._core: Relocalization | None = None
        try:
            settings = declare_parameters(self)
            relocalizer = (relocalizer if relocalizer is not None
                           else load_relocalizer(settings, self.get_logger()))
            self._core = Relocalization(self, relocalizer, settings)
            add_parameter_callbacks(self, self._core.update_settings)
            self._core.activate()
        except BaseException:
            self.destroy_node()
            raise

    @property
    def settings(self) -> NodeSettings:
        return self._core.settings


def help_text() -> str:
    """What ``relocalize_node --help`` prints: usage, topics, frames, service, parameters."""
    doc = (__doc__ or '').split('\n', 2)[2]
    return (f'usage: relocalize_node [--help] [--ros-args --params-file FILE -p NAME:=VALUE '
            f'...]\n\n{doc}\nParameters (set with -p NAME:=VALUE or a params file; '
            f'use_sim_time as every node):\n{describe_parameters()}\n')


def wants_help(args: list[str]) -> bool:
    """-h / --help before any --ros-args."""
    before_ros = args[:args.index('--ros-args')] if '--ros-args' in args else args
    return any(a in ('-h', '--help') for a in before_ros)


def main(args: list[str] | None = None) -> int:
    """Entry point of ``relocalize_node``; returns 0 on a normal shutdown (or after --help), 2
    on a start error."""
    if wants_help(list(sys.argv[1:] if args is None else args)):
        sys.stdout.write(help_text())
        return 0
    return run_node(RelocalizeNode, args)


def run_node(node_class, args: list[str] | None = None) -> int:
    """Creates ``node_class()`` and spins it until Ctrl-C / shutdown; 0 on a normal end, 2 when
    the node cannot start (the reason logged)."""
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    rclpy.init(args=args)
    try:
        node = node_class()
    except (ValueError, FileNotFoundError) as exc:
        rclpy.logging.get_logger(NODE_NAME).fatal(f'cannot start: {exc}')
        rclpy.try_shutdown()
        return 2
    # Two threads: ~/relocalize waits for frames in its own callback group while the camera
    # callbacks run.
    executor = MultiThreadedExecutor(num_threads=2)
    executor.add_node(node)
    try:
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except RuntimeError:
        # Started with SIGINT ignored (a shell's background job), rclpy's own handler shuts
        # the context down without a KeyboardInterrupt, and the executor's wait set can then
        # fail on the invalid context (rclpy's RCLError, a RuntimeError): a requested stop,
        # not a crash.
        if rclpy.ok():
            raise
    finally:
        node.close()
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == '__main__':
    sys.exit(main())
