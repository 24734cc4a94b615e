"""ROS 2 node: camera relocalization with DSAC (a thin adapter over `Relocalizer`).

Run: ``ros2 run dsac_ros relocalize_node --ros-args --params-file config/relocalize.yaml``
(or ``.venv/bin/relocalize_node ...`` / ``python -m dsac_ros.ros.node ...`` without ros2cli).

Topics (names are parameters; defaults shown):
  in  ``/camera/image_raw`` sensor_msgs/Image (or ``<image_topic>/compressed``
      sensor_msgs/CompressedImage with compressed_input), QoS sensor data (best effort, keep
      last 5) unless input_reliability is 'reliable'.
  in  ``/camera/camera_info`` sensor_msgs/CameraInfo: K (fx, fy, cx, cy) of the raw image; a
      non-zero D (plumb_bob, rational_polynomial, equidistant) is undone before localizing.
      Without camera_info the model's training intrinsics are used (warned once).
  in  ``depth_topic`` (empty: none, RGB only) sensor_msgs/Image: depth registered to the colour
      image (``aligned_depth_to_color``), 16UC1 mm or 32FC1 m, 0 / NaN invalid, any resolution
      of the image's aspect, same QoS as the image. Each image is paired with the depth image
      of its stamp (nearest within depth_stamp_tolerance_s, waiting up to depth_wait_s for a
      late one) and localized in RGB-D mode (Kabsch hypotheses, 3D inliers); a frame without
      usable depth is localized with RGB and the reason counted.
  out ``/camera_pose`` geometry_msgs/PoseStamped: the camera (OpenCV optical frame: x right,
      y down, z forward) in ``map_frame``, i.e. camera-to-world T_wc; stamp = image stamp.
  out ``/camera_pose_with_covariance`` geometry_msgs/PoseWithCovarianceStamped: same pose, the
      estimator's 6x6 covariance mapped to ROS order (x, y, z, rot x, rot y, rot z) in
      ``map_frame`` (see `dsac_ros.ros.messages.covariance_to_ros`).
  out ``/tf`` tf2_msgs/TFMessage: ``map_frame -> camera_frame`` (tf2_ros broadcaster QoS).
  out ``/diagnostics`` diagnostic_msgs/DiagnosticArray every diagnostics_period_s, one status
      named 'dsac_ros: relocalization' with keys: frames_received, frames_dropped (replaced
      by a newer frame before processing), frames_processed, frames_rejected (bad messages),
      poses_published, frames_without_pose, last_inliers, last_inlier_ratio,
      last_score_entropy (nats), latency_ms (receive -> publish of the last frame),
      stamp_to_publish_ms (image stamp -> publish, same clock assumed), transport_ms (image
      stamp -> receive), queue_ms (receive -> start of processing), decode_ms (decode +
      undistort), preprocess_ms (resize to the model's input), network_ms, estimator_ms,
      publish_ms, mean_latency_ms (all milliseconds); with a depth_topic also last_mode ('rgb'
      or 'rgbd': which mode produced the last pose), poses_rgbd, poses_rgb, depth_received,
      and the RGB fallbacks by reason: depth_fallback_no_depth (no depth of that stamp),
      depth_fallback_bad_depth (encoding, size; logged), depth_fallback_invalid_depth (too few
      valid depth cells). The status message names the mode ('localized (rgbd)').
      Level WARN when the last frame gave no pose, ERROR when it was rejected, STALE before
      the first frame.

A map -> odom correction (as AMCL publishes) needs tf2_ros to look up odom -> camera; tf2_ros is
not part of the pip environment, so this node publishes map -> camera only.

Threading: subscription callbacks only store the newest frame (`LatestSlot`); a worker thread
localizes it and publishes. When inference is slower than the camera, older frames are dropped
(counted), never queued, and the subscriptions keep flowing while a frame is processed.
"""

from __future__ import annotations

import importlib.resources
from pathlib import Path
import sys
import threading
import time

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from geometry_msgs.msg import PoseStamped, PoseWithCovarianceStamped
from rcl_interfaces.msg import SetParametersResult
import rclpy
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import CameraInfo, CompressedImage, Image

from dsac_ros.ros.messages import (
    covariance_to_ros,
    diagnostic_array,
    pose_stamped,
    pose_with_covariance_stamped,
    stamp_to_ns,
    transform_stamped,
)
from dsac_ros.ros.parameters import (
    ESTIMATOR_PARAMETERS,
    NodeSettings,
    Reliability,
    current_settings,
    declare_parameters,
)
from dsac_ros.ros.pipeline import (
    DepthFallback,
    FramePipeline,
    FrameResult,
    LatestSlot,
    ReceivedFrame,
)
from dsac_ros.ros.stamp_match import StampMatcher
from dsac_ros.ros.tf_broadcaster import TransformBroadcaster

NODE_NAME = 'relocalize_node'
DIAGNOSTIC_NAME = 'dsac_ros: relocalization'
_WARN_PERIOD_S = 5.0


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


class _Stats:
    """Counters and the last frame's numbers, shared by the worker and the diagnostics timer."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.processed = 0
        self.rejected = 0
        self.errors = 0
        self.published = 0
        self.without_pose = 0
        self.latency_sum_ms = 0.0
        self.poses_by_mode = {'rgb': 0, 'rgbd': 0}
        self.depth_fallbacks = dict.fromkeys((f.value for f in DepthFallback), 0)
        self.last: dict[str, float | str] = {}
        self.level = DiagnosticStatus.STALE
        self.message = 'no frame yet'


class RelocalizeNode(Node):
    """Subscribes camera images, publishes the camera pose in the map (see module doc).

    Args:
        relocalizer: a `dsac_ros.relocalizer.Relocalizer`, or an object with its
            ``localize(image_rgb_hw3, K_33 or None[, depth_m])``, ``estimator_config`` and
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
        try:
            self._setup(relocalizer)
        except BaseException:
            self.destroy_node()
            raise

    def _setup(self, relocalizer) -> None:
        self.settings = declare_parameters(self)
        s = self.settings
        self._relocalizer = (relocalizer if relocalizer is not None
                             else load_relocalizer(s, self.get_logger()))
        self._apply_estimator_settings()
        self._pipeline = FramePipeline(self._relocalizer, expects_depth=bool(s.depth_topic))
        self._slot: LatestSlot[ReceivedFrame] = LatestSlot()
        # RGB-D: depth images by stamp, paired with each image in the worker.
        self._depth: StampMatcher | None = StampMatcher() if s.depth_topic else None
        self._depth_received = 0
        self._stats = _Stats()
        self._camera_info: CameraInfo | None = None
        self._stop = threading.Event()
        self._last_warning: dict[str, float] = {}

        # Sensor data QoS (best effort, keep last 5), or the same depth reliable. The callbacks
        # only store the newest frame, so the depth just rides out short executor stalls.
        qos = qos_profile_sensor_data
        if s.input_reliability == Reliability.RELIABLE.value:
            qos = QoSProfile(depth=qos_profile_sensor_data.depth,
                             reliability=ReliabilityPolicy.RELIABLE)
        if s.compressed_input:
            self._image_topic = f'{s.image_topic.rstrip("/")}/compressed'
            self.create_subscription(CompressedImage, self._image_topic, self._on_image, qos)
        else:
            self._image_topic = s.image_topic
            self.create_subscription(Image, self._image_topic, self._on_image, qos)
        self.create_subscription(CameraInfo, s.camera_info_topic, self._on_camera_info, qos)
        if s.depth_topic:
            self.create_subscription(Image, s.depth_topic, self._on_depth, qos)

        self._pose_pub = self.create_publisher(PoseStamped, s.pose_topic, 10)
        self._pose_cov_pub = self.create_publisher(
            PoseWithCovarianceStamped, s.pose_with_covariance_topic, 10)
        self._tf = TransformBroadcaster(self)
        self._diag_pub = self.create_publisher(DiagnosticArray, '/diagnostics', 10)
        self.create_timer(s.diagnostics_period_s, self._publish_diagnostics)
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self.add_post_set_parameters_callback(self._after_set_parameters)

        self._worker = threading.Thread(target=self._work, name='relocalize_worker', daemon=True)
        self._worker.start()
        depth = f' + depth {s.depth_topic} (RGB-D)' if s.depth_topic else ' (RGB)'
        self.get_logger().info(
            f'listening on {self._image_topic} + {s.camera_info_topic}{depth} '
            f'({s.input_reliability}); publishing {s.pose_topic} in frame {s.map_frame!r}')

    # -- parameters ----------------------------------------------------------------------------

    def _on_set_parameters(self, params: list[Parameter]) -> SetParametersResult:
        """Refuses invalid values with a reason (read-only ones rclpy refuses itself)."""
        try:
            current_settings(self, {p.name: p.value for p in params})
        except ValueError as exc:
            return SetParametersResult(successful=False, reason=str(exc))
        return SetParametersResult(successful=True)

    def _after_set_parameters(self, params: list[Parameter]) -> None:
        self.settings = current_settings(self)
        if any(p.name in ESTIMATOR_PARAMETERS for p in params):
            self._apply_estimator_settings()
        self.get_logger().info(
            'parameters set: ' + ', '.join(f'{p.name}={p.value!r}' for p in params))

    def _apply_estimator_settings(self) -> None:
        """The estimator parameters -> the relocalizer, on top of the checkpoint's settings
        (`Relocalizer.model_estimator_config`; a relocalizer without it: its current ones)."""
        relocalizer = self._relocalizer
        base = getattr(relocalizer, 'model_estimator_config', relocalizer.estimator_config)
        relocalizer.set_estimator_config(self.settings.estimator_config(base))

    # -- subscriptions (executor thread): store only -------------------------------------------

    def _on_camera_info(self, msg: CameraInfo) -> None:
        self._camera_info = msg

    def _on_depth(self, msg: Image) -> None:
        self._depth_received += 1
        self._depth.add(stamp_to_ns(msg.header.stamp), msg)

    def _on_image(self, msg: Image | CompressedImage) -> None:
        self._slot.put(ReceivedFrame(msg=msg, camera_info=self._camera_info,
                                     received_monotonic=time.monotonic(),
                                     received_wall_ns=time.time_ns()))

    # -- worker thread -------------------------------------------------------------------------

    def _work(self) -> None:
        next_allowed = 0.0
        while not self._stop.is_set():
            rate = self.settings.max_rate_hz
            if rate > 0.0:
                wait = next_allowed - time.monotonic()
                if wait > 0.0 and self._stop.wait(wait):
                    break
            frame = self._slot.take(timeout=0.2)
            if frame is None:
                continue
            next_allowed = time.monotonic() + (1.0 / rate if rate > 0.0 else 0.0)
            try:
                self._process(frame)
            except Exception as exc:  # keep the node alive on an unexpected estimator failure
                with self._stats.lock:
                    self._stats.errors += 1
                    self._stats.level = DiagnosticStatus.ERROR
                    self._stats.message = f'localization failed: {exc}'
                self.get_logger().error(f'localization failed: {type(exc).__name__}: {exc}',
                                        throttle_duration_sec=_WARN_PERIOD_S)

    def _process(self, frame: ReceivedFrame) -> None:
        if frame.camera_info is None:
            self.get_logger().warning(
                f'no camera_info received on {self.settings.camera_info_topic}: using the '
                "model's training intrinsics", once=True)
        queue_ms = 1e3 * (time.monotonic() - frame.received_monotonic)
        depth_msg = None
        if self._depth is not None:
            s = self.settings
            depth_msg = self._depth.match(stamp_to_ns(frame.msg.header.stamp),
                                          int(round(s.depth_stamp_tolerance_s * 1e9)),
                                          s.depth_wait_s)
        result = self._pipeline.process(frame.msg, frame.camera_info, depth_msg)
        result.timings_ms['queue'] = queue_ms
        if result.depth_fallback is not None:
            self._warn_depth_fallback(result)
        if result.error is not None:
            with self._stats.lock:
                self._stats.rejected += 1
                self._stats.level = DiagnosticStatus.ERROR
                self._stats.message = f'frame skipped: {result.error}'
            self._warn_throttled(result.error, f'frame skipped: {result.error}')
            return
        loc = result.localization
        inliers = int(loc.inlier_count)
        has_pose = bool(loc.valid)  # the estimator applies min_inliers
        publish_ms = 0.0
        if has_pose:
            publish_ms = self._publish_pose(frame, result)
        else:
            self.get_logger().warning(
                f'no pose: fewer than min_inliers={self.settings.min_inliers} inliers',
                throttle_duration_sec=_WARN_PERIOD_S)
        now_mono, now_ns = time.monotonic(), time.time_ns()
        stamp_ns = stamp_to_ns(frame.msg.header.stamp)
        latency_ms = 1e3 * (now_mono - frame.received_monotonic)
        last = {
            'last_inliers': float(inliers),
            'last_inlier_ratio': float(loc.inlier_ratio),
            'last_score_entropy': float(loc.score_entropy),
            'latency_ms': latency_ms,
            'stamp_to_publish_ms': (now_ns - stamp_ns) / 1e6,
            'transport_ms': (frame.received_wall_ns - stamp_ns) / 1e6,
            'queue_ms': result.timings_ms.get('queue', float('nan')),
            'decode_ms': result.timings_ms.get('decode', float('nan')),
            'preprocess_ms': result.timings_ms.get('preprocess', float('nan')),
            'network_ms': result.timings_ms.get('network', float('nan')),
            'estimator_ms': result.timings_ms.get('estimator', float('nan')),
            'publish_ms': publish_ms,
        }
        mode = result.mode.value
        if self._depth is not None:
            last['last_mode'] = mode
        with self._stats.lock:
            st = self._stats
            st.processed += 1
            st.latency_sum_ms += latency_ms
            st.last = last
            if result.depth_fallback is not None:
                st.depth_fallbacks[result.depth_fallback.value] += 1
            if has_pose:
                st.published += 1
                st.poses_by_mode[mode] += 1
                st.level = DiagnosticStatus.OK
                st.message = 'localized' if self._depth is None else f'localized ({mode})'
                if result.depth_fallback is not None:
                    st.message += f', {result.depth_fallback.value}'
            else:
                st.without_pose += 1
                st.level = DiagnosticStatus.WARN
                st.message = f'no pose (fewer than {self.settings.min_inliers} inliers)'

    def _warn_depth_fallback(self, result: FrameResult) -> None:
        reason = result.depth_fallback
        if reason is DepthFallback.NO_DEPTH:
            s = self.settings
            text = (f'no depth on {s.depth_topic} within {1e3 * s.depth_stamp_tolerance_s:g} ms '
                    'of the image stamp')
        else:
            text = f'depth not usable: {result.depth_error}'
        # throttled per kind of problem: each bad encoding / size / ... shows
        self._warn_throttled(f'{reason.value}: {result.depth_error}',
                             f'{text}; localizing with RGB')

    def _warn_throttled(self, reason: str, text: str) -> None:
        """At most one warning per kind of problem (its text up to the first digit) per
        _WARN_PERIOD_S, so a stream of bad frames does not flood the log but each kind shows."""
        key = reason[:next((i for i, c in enumerate(reason) if c.isdigit()), len(reason))]
        now = time.monotonic()
        if now - self._last_warning.get(key, -_WARN_PERIOD_S) >= _WARN_PERIOD_S:
            self._last_warning[key] = now
            self.get_logger().warning(text)

    def _publish_pose(self, frame: ReceivedFrame, result: FrameResult) -> float:
        start = time.perf_counter()
        s = self.settings
        loc = result.localization
        stamp = frame.msg.header.stamp
        T_wc = loc.T_wc
        self._pose_pub.publish(pose_stamped(T_wc, stamp, s.map_frame))
        cov = covariance_to_ros(loc.covariance, T_wc)
        self._pose_cov_pub.publish(pose_with_covariance_stamped(T_wc, cov, stamp, s.map_frame))
        if s.publish_tf:
            child = s.camera_frame or frame.msg.header.frame_id or 'camera'
            self._tf.send_transform(transform_stamped(T_wc, stamp, s.map_frame, child))
        return 1e3 * (time.perf_counter() - start)

    # -- diagnostics (executor thread) ---------------------------------------------------------

    def counters(self) -> dict[str, float | str]:
        """Counters and the last frame's numbers (what /diagnostics reports)."""
        with self._stats.lock:
            st = self._stats
            values: dict[str, float | str] = {
                'frames_received': self._slot.received,
                'frames_dropped': self._slot.dropped,
                'frames_processed': st.processed,
                'frames_rejected': st.rejected,
                'frames_failed': st.errors,
                'poses_published': st.published,
                'frames_without_pose': st.without_pose,
                'mean_latency_ms': st.latency_sum_ms / st.processed if st.processed else 0.0,
            }
            if self._depth is not None:
                values['depth_received'] = self._depth_received
                values.update({f'poses_{mode}': n for mode, n in st.poses_by_mode.items()})
                values.update({f'depth_fallback_{reason}': n
                               for reason, n in st.depth_fallbacks.items()})
            values.update(st.last)
            return values

    def _publish_diagnostics(self) -> None:
        values = self.counters()
        with self._stats.lock:
            level, message = self._stats.level, self._stats.message
        self._diag_pub.publish(diagnostic_array(
            self.get_clock().now().to_msg(), DIAGNOSTIC_NAME, self.get_name(), level, message,
            values))

    # -- shutdown ------------------------------------------------------------------------------

    def close(self) -> None:
        """Stops the worker thread (call before destroy_node); safe after a failed start."""
        stop = getattr(self, '_stop', None)
        if stop is not None:
            stop.set()
        slot = getattr(self, '_slot', None)
        if slot is not None:
            slot.close()
        depth = getattr(self, '_depth', None)
        if depth is not None:
            depth.close()
        worker = getattr(self, '_worker', None)
        if worker is not None and worker.is_alive():
            worker.join(timeout=10.0)

    def destroy_node(self) -> None:
        self.close()
        super().destroy_node()


def main(args: list[str] | None = None) -> int:
    """Entry point of ``relocalize_node``; returns 0 on a normal shutdown, 2 on a start error."""
    rclpy.init(args=args)
    try:
        node = RelocalizeNode()
    except (ValueError, FileNotFoundError) as exc:
        rclpy.logging.get_logger(NODE_NAME).fatal(f'cannot start: {exc}')
        rclpy.try_shutdown()
        return 2
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    try:
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.close()
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == '__main__':
    sys.exit(main())
