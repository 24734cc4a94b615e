"""What relocalize_node does, as a helper that takes the node (a plain Node or a LifecycleNode):
input pairing, the worker thread, robot pose and TF, the jump gate, on-demand requests and
diagnostics. The node classes (`dsac_ros.ros.node`, `dsac_ros.ros.lifecycle_node`) only declare
parameters, load the model and call `activate` / `deactivate` / `close`.

Threading: subscription callbacks pair each image with its CameraInfo (and, with a depth_topic,
its depth image: RGB-D) by stamp (`StampSynchronizer`) and store the set in a one-element slot
(`LatestSlot`); a worker thread localizes the newest set, looks up TF, publishes. When inference
is slower than the camera, older frames are dropped (counted), never queued. A frame whose depth
image does not come within depth_wait_s is localized with RGB (counted by reason).
"""

from __future__ import annotations

from dataclasses import dataclass, field
import threading
import time

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
import numpy as np
from rclpy.clock import Clock, ClockType, JumpThreshold
from rclpy.duration import Duration
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import CameraInfo, CompressedImage, Image

from dsac_ros.geometry.tf_buffer import TransformLookupError
from dsac_ros.geometry.transforms import inflate_pose_covariance_np
from dsac_ros.ros.messages import covariance_to_ros, diagnostic_array, stamp_to_ns
from dsac_ros.ros.outputs import PoseOutputs
from dsac_ros.ros.parameters import ESTIMATOR_PARAMETERS, NodeSettings, Reliability, TfMode
from dsac_ros.ros.pipeline import (
    DepthFallback,
    FramePipeline,
    FrameResult,
    LatestSlot,
    ReceivedFrame,
)
from dsac_ros.ros.relocalize_service import FrameOutcome, RelocalizeService
from dsac_ros.ros.robot_pose import GateLimits, JumpGate, RobotPose, robot_pose
from dsac_ros.ros.sync import Matched, StampSynchronizer
from dsac_ros.ros.tf_listener import create_transform_source

DIAGNOSTIC_NAME = 'dsac_ros: relocalization'
WARN_PERIOD_S = 5.0
_OPTIONAL_INFO_WAIT_S = 0.1  # an image waits this long for a first CameraInfo
_RELEASE_PERIOD_S = 0.02  # how often waiting frames are checked against those waits


@dataclass
class _Stats:
    """Counters and the last frame's numbers, shared by the worker and the diagnostics timer."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    images: int = 0
    last_image_monotonic: float | None = None
    not_requested: int = 0
    processed: int = 0
    rejected: int = 0
    errors: int = 0
    published: int = 0
    without_pose: int = 0
    gated: int = 0
    tf_failures: int = 0
    last_tf_error: str = ''
    latency_sum_ms: float = 0.0
    poses_by_mode: dict[str, int] = field(default_factory=lambda: {'rgb': 0, 'rgbd': 0})
    depth_fallbacks: dict[str, int] = field(
        default_factory=lambda: dict.fromkeys((f.value for f in DepthFallback), 0))
    last: dict[str, float | str] = field(default_factory=dict)
    level: int = DiagnosticStatus.STALE
    message: str = 'no frame yet'


class Relocalization:
    """The relocalization node's behaviour on a node it is given.

    Args:
        node: the node (parameters already declared) to create publishers, timers, the TF
            listener and the ``~/relocalize`` service on; subscriptions come with `activate`.
        relocalizer: object with ``localize(image_rgb_hw3, K_33 or None[, depth_m])``,
            ``estimator_config`` and ``set_estimator_config(config)``.
        settings: the node's current parameter values.
    """

    def __init__(self, node: Node, relocalizer, settings: NodeSettings) -> None:
        self._node = node
        self.settings = settings
        self._relocalizer = relocalizer
        self._apply_estimator_settings()
        if hasattr(relocalizer, 'warm_up'):
            times_ms = relocalizer.warm_up()
            node.get_logger().info('warm-up: ' + ', '.join(f'{t:.0f}' for t in times_ms)
                                   + ' ms per frame')
        s = settings
        self._rgbd = bool(s.depth_topic)
        self._pipeline = FramePipeline(relocalizer, expects_depth=self._rgbd)
        self._slot: LatestSlot[ReceivedFrame] = LatestSlot()
        self._stats = _Stats()
        # Each image with the CameraInfo and (RGB-D) the depth image of its stamp.
        tolerance = {'camera_info': int(round(s.sync_tolerance_s * 1e9))}
        if self._rgbd:
            tolerance['depth'] = int(round(s.depth_stamp_tolerance_s * 1e9))
        self._sync = StampSynchronizer('image', list(tolerance), tolerance_ns=tolerance,
                                       queue_size=s.sync_queue_size, optional=['camera_info'],
                                       fallback=['depth'] if self._rgbd else ())
        self._gate = JumpGate()
        self._last_warning: dict[str, float] = {}
        self._unmatched_reported = 0
        self._subscriptions: list = []
        self._image_topic = (f'{s.image_topic.rstrip("/")}/compressed' if s.compressed_input
                             else s.image_topic)
        steady = Clock(clock_type=ClockType.STEADY_TIME)
        self._tf_in = create_transform_source(node, s.tf_cache_time_s)
        self._outputs = PoseOutputs(node, lambda: self.settings)
        self._service = RelocalizeService(node, lambda: self.settings, self._on_requested_pose,
                                          self._describe_input)
        self._diag_pub = node.create_publisher(DiagnosticArray, '/diagnostics', 10)
        self._timers = [
            node.create_timer(s.diagnostics_period_s, self._publish_diagnostics, clock=steady),
            node.create_timer(_RELEASE_PERIOD_S, self._release_waiting, clock=steady),
        ]
        self._time_jumped = threading.Event()
        self._jump_handle = node.get_clock().create_jump_callback(
            JumpThreshold(min_forward=None, min_backward=Duration(seconds=-1.0),
                          on_clock_change=False), post_callback=self._on_time_jump)
        self._stop = threading.Event()
        self._worker = threading.Thread(target=self._work, name='relocalize_worker', daemon=True)
        self._worker.start()

    # -- life cycle ----------------------------------------------------------------------------

    def activate(self) -> None:
        """Subscribes to the camera (sensor data QoS, or the same depth reliable)."""
        if self._subscriptions:
            return
        s, node = self.settings, self._node
        qos = qos_profile_sensor_data
        if s.input_reliability == Reliability.RELIABLE.value:
            qos = QoSProfile(depth=qos_profile_sensor_data.depth,
                             reliability=ReliabilityPolicy.RELIABLE)
        image_type = CompressedImage if s.compressed_input else Image
        self._subscriptions = [
            node.create_subscription(image_type, self._image_topic, self._on_image, qos),
            node.create_subscription(CameraInfo, s.camera_info_topic, self._on_camera_info, qos),
        ]
        if self._rgbd:
            self._subscriptions.append(
                node.create_subscription(Image, s.depth_topic, self._on_depth, qos))
        depth = f' + depth {s.depth_topic} (RGB-D)' if self._rgbd else ' (RGB)'
        node.get_logger().info(
            f'listening on {self._image_topic} + {s.camera_info_topic}{depth} '
            f'({s.input_reliability}); '
            f'publishing {s.pose_topic}, {s.base_pose_topic} in {s.map_frame!r}, tf_mode '
            f'{s.tf_mode} (TF input: {self._tf_in.backend}), continuous={s.continuous}')

    def deactivate(self) -> None:
        """Unsubscribes from the camera; waiting requests fail."""
        for subscription in self._subscriptions:
            self._node.destroy_subscription(subscription)
        self._subscriptions = []
        self._service.cancel_all('the node was deactivated')

    def update_settings(self, settings: NodeSettings, names: set[str]) -> None:
        """New parameter values (validated); ``names``: the parameters that were set."""
        old, self.settings = self.settings, settings
        if names & set(ESTIMATOR_PARAMETERS):
            self._apply_estimator_settings()
        if settings.tf_publish_rate_hz != old.tf_publish_rate_hz:
            self._outputs.update_rate()
        if (settings.tf_mode, settings.map_frame, settings.odom_frame) != (
                old.tf_mode, old.map_frame, old.odom_frame):
            self._outputs.forget()

    def _on_time_jump(self, jump) -> None:
        """The clock went back (a bag played again): forget pairing queues, the last
        map -> odom and the gate's history (the worker resets the gate)."""
        self._sync.reset()
        self._outputs.forget()
        self._time_jumped.set()
        self._node.get_logger().warning('time jumped back: relocalization state reset')

    def _apply_estimator_settings(self) -> None:
        """The estimator parameters -> the relocalizer, on top of the checkpoint's settings
        (`Relocalizer.model_estimator_config`; a relocalizer without it: its current ones)."""
        relocalizer = self._relocalizer
        base = getattr(relocalizer, 'model_estimator_config', relocalizer.estimator_config)
        relocalizer.set_estimator_config(self.settings.estimator_config(base))

    def close(self) -> None:
        """Stops the worker, fails waiting requests, destroys what it created."""
        self._stop.set()
        self._slot.close()
        if self._worker.is_alive():
            self._worker.join(timeout=10.0)
        self.deactivate()
        node = self._node
        self._service.close()
        self._outputs.close()
        self._tf_in.close()
        self._jump_handle.unregister()
        for timer in self._timers:
            node.destroy_timer(timer)
        node.destroy_publisher(self._diag_pub)

    # -- subscriptions (executor thread): pair and store only ----------------------------------

    def _on_image(self, msg: Image | CompressedImage) -> None:
        now = time.monotonic()
        with self._stats.lock:
            self._stats.images += 1
            self._stats.last_image_monotonic = now
        clock_ns = self._node.get_clock().now().nanoseconds
        self._store(self._sync.add('image', stamp_to_ns(msg.header.stamp),
                                   (msg, now, clock_ns)))

    def _on_camera_info(self, msg: CameraInfo) -> None:
        self._store(self._sync.add('camera_info', stamp_to_ns(msg.header.stamp), msg))

    def _on_depth(self, msg: Image) -> None:
        self._store(self._sync.add('depth', stamp_to_ns(msg.header.stamp), msg))

    def _release_waiting(self) -> None:
        """Frames that wait only for their depth image go on without it after depth_wait_s (RGB
        fallback); a camera without camera_info holds images _OPTIONAL_INFO_WAIT_S at most."""
        now = time.monotonic()
        wait = self.settings.depth_wait_s if self._rgbd else _OPTIONAL_INFO_WAIT_S
        self._store(self._sync.release(lambda item: now - item[1] >= wait))

    def _store(self, matches: list[Matched]) -> None:
        for match in matches:
            msg, received, clock_ns = match.items['image']
            self._slot.put(ReceivedFrame(msg, match.items['camera_info'], received, clock_ns,
                                         match.items.get('depth')))

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
            self._service.expire()
            if self._time_jumped.is_set():
                self._time_jumped.clear()
                self._gate.reset()
            if frame is None:
                continue
            if not (self.settings.continuous or self._service.pending):
                with self._stats.lock:
                    self._stats.not_requested += 1
                continue
            next_allowed = time.monotonic() + (1.0 / rate if rate > 0.0 else 0.0)
            try:
                self._process(frame)
            except Exception as exc:  # keep the node alive on an unexpected failure
                with self._stats.lock:
                    self._stats.errors += 1
                    self._stats.level = DiagnosticStatus.ERROR
                    self._stats.message = f'localization failed: {exc}'
                self._node.get_logger().error(f'localization failed: {type(exc).__name__}: '
                                              f'{exc}', throttle_duration_sec=WARN_PERIOD_S)
                self._service.offer(FrameOutcome(stamp_to_ns(frame.msg.header.stamp),
                                                 frame.received_monotonic,
                                                 problem=f'localization failed: {exc}'))

    def _process(self, frame: ReceivedFrame) -> None:
        s = self.settings
        log = self._node.get_logger()
        if frame.camera_info is None:
            log.warning(f'no camera_info received on {s.camera_info_topic}: using the '
                        "model's training intrinsics", once=True)
        stamp_ns = stamp_to_ns(frame.msg.header.stamp)
        queue_ms = 1e3 * (time.monotonic() - frame.received_monotonic)
        result = self._pipeline.process(frame.msg, frame.camera_info, frame.depth)
        if result.depth_fallback is not None:
            self._warn_depth_fallback(result)
        outcome = FrameOutcome(stamp_ns, frame.received_monotonic)
        if result.error is not None:
            with self._stats.lock:
                self._stats.rejected += 1
                self._stats.level = DiagnosticStatus.ERROR
                self._stats.message = f'frame skipped: {result.error}'
            self._warn_throttled(result.error, f'frame skipped: {result.error}')
            outcome.problem = f'frame rejected: {result.error}'
            self._service.offer(outcome)
            return
        loc = result.localization
        outcome.inliers = int(loc.inlier_count)
        timings = {'tf': 0.0, 'publish': 0.0}
        gated = None
        with self._stats.lock:
            if result.depth_fallback is not None:
                self._stats.depth_fallbacks[result.depth_fallback.value] += 1
        if not loc.valid:  # the estimator applies min_inliers
            outcome.problem = f'fewer than min_inliers={s.min_inliers} inliers'
            log.warning(f'no pose: fewer than min_inliers={s.min_inliers} inliers',
                        throttle_duration_sec=WARN_PERIOD_S)
        else:
            gated = self._accept(frame, stamp_ns, loc, outcome, timings)
        self._record(frame, stamp_ns, result, queue_ms, timings, gated)
        self._service.offer(outcome)

    def _accept(self, frame: ReceivedFrame, stamp_ns: int, loc, outcome: FrameOutcome,
                timings: dict[str, float]) -> str | None:
        """Robot pose, gate, publishing of a valid localization; returns the gate's reason."""
        s = self.settings
        T_map_camera = np.asarray(loc.T_wc, np.float64)
        covariance = inflate_pose_covariance_np(covariance_to_ros(loc.covariance, T_map_camera),
                                                s.covariance_scale, s.covariance_floor_m,
                                                s.covariance_floor_rad)
        camera_frame = s.camera_frame or frame.msg.header.frame_id or 'camera'
        start = time.perf_counter()
        robot, tf_problem = self._robot_pose(stamp_ns, T_map_camera, covariance, camera_frame)
        timings['tf'] = 1e3 * (time.perf_counter() - start)
        outcome.T_map_camera, outcome.robot = T_map_camera, robot
        requested = self._service.pending
        if s.base_frame and robot is None:
            outcome.problem = f'no {s.base_frame} pose: {tf_problem}'
        limits = GateLimits(s.max_jump_m, s.max_jump_deg, s.jump_min_inliers,
                            int(s.lost_timeout_s * 1e9))
        references = {'camera': T_map_camera}
        if robot is not None and robot.T_map_odom is not None:
            references = {'map_to_odom': robot.T_map_odom}
        kind, reference = next(iter(references.items()))
        reason = None if requested else self._gate.check(stamp_ns, kind, reference,
                                                          outcome.inliers, limits)
        if reason is not None:
            self._warn_throttled('gated', f'pose gated: {reason}')
            outcome.problem = f'gated: {reason}'
            return reason
        relocalized = self._gate.lost(stamp_ns, limits)
        start = time.perf_counter()
        self._outputs.publish_camera(stamp_ns, T_map_camera, covariance)
        if robot is not None:
            self._outputs.publish_base(stamp_ns, robot)
        self._outputs.send_tf(stamp_ns, T_map_camera, camera_frame, robot)
        if s.publish_initialpose and relocalized and robot is not None and not requested:
            self._outputs.publish_initialpose(stamp_ns, robot)
            self._node.get_logger().info('relocalized: /initialpose sent')
        timings['publish'] = 1e3 * (time.perf_counter() - start)
        self._gate.accept(stamp_ns, references)
        return None

    def _robot_pose(self, stamp_ns: int, T_map_camera: np.ndarray, covariance: np.ndarray,
                    camera_frame: str) -> tuple[RobotPose | None, str | None]:
        """Base pose (and map -> odom in tf_mode map_to_odom) from TF at the image stamp, and
        what failed."""
        s = self.settings
        if not s.base_frame:
            return None, None
        try:
            T_camera_base = (np.eye(4) if camera_frame == s.base_frame else self._tf_in.lookup(
                camera_frame, s.base_frame, stamp_ns, s.tf_timeout_s))
        except TransformLookupError as exc:
            return None, self._tf_failed(exc)
        if s.tf_mode != TfMode.MAP_TO_ODOM.value:
            return robot_pose(T_map_camera, covariance, T_camera_base), None
        try:
            T_odom_base = self._tf_in.lookup(s.odom_frame, s.base_frame, stamp_ns,
                                             s.tf_timeout_s)
        except TransformLookupError as exc:
            return robot_pose(T_map_camera, covariance, T_camera_base), self._tf_failed(exc)
        return robot_pose(T_map_camera, covariance, T_camera_base, T_odom_base), None

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

    def _tf_failed(self, exc: TransformLookupError) -> str:
        text = str(exc)
        with self._stats.lock:
            self._stats.tf_failures += 1
            self._stats.last_tf_error = text
        self._warn_throttled('tf', f'TF lookup failed (camera pose still published): {text}')
        return text

    def _on_requested_pose(self, best: FrameOutcome) -> None:
        """A request's chosen frame: /initialpose (AMCL reset; needs the base pose), the gate
        starts from it."""
        if best.robot is not None:
            self._outputs.publish_initialpose(best.stamp_ns, best.robot)
        self._gate.reset()
        references = {'camera': best.T_map_camera}
        if best.robot is not None and best.robot.T_map_odom is not None:
            references = {'map_to_odom': best.robot.T_map_odom}
        self._gate.accept(best.stamp_ns, references)

    def _record(self, frame: ReceivedFrame, stamp_ns: int, result: FrameResult, queue_ms: float,
                timings: dict[str, float], gated: str | None) -> None:
        loc, pipeline_ms = result.localization, result.timings_ms
        mode = result.mode.value
        now_mono = time.monotonic()
        now_clock = self._node.get_clock().now().nanoseconds
        latency_ms = 1e3 * (now_mono - frame.received_monotonic)
        nan = float('nan')
        # Stamp-based figures on the node's clock (/clock under use_sim_time), never wall time
        # against sim stamps; NaN while that clock has not started.
        last = {
            'last_inliers': float(loc.inlier_count),
            'last_inlier_ratio': float(loc.inlier_ratio),
            'last_score_entropy': float(loc.score_entropy),
            'latency_ms': latency_ms,
            'stamp_to_publish_ms': (now_clock - stamp_ns) / 1e6 if now_clock else nan,
            'transport_ms': ((frame.received_clock_ns - stamp_ns) / 1e6
                             if frame.received_clock_ns else nan),
            'queue_ms': queue_ms,
            **{f'{k}_ms': pipeline_ms.get(k, nan)
               for k in ('decode', 'preprocess', 'network', 'estimator')},
            'tf_ms': timings['tf'],
            'publish_ms': timings['publish'],
        }
        if self._rgbd:
            last['last_mode'] = mode
        s = self.settings
        with self._stats.lock:
            st = self._stats
            st.processed += 1
            st.latency_sum_ms += latency_ms
            st.last = last
            if gated is not None:
                st.gated += 1
                st.level, st.message = DiagnosticStatus.WARN, f'pose gated: {gated}'
            elif loc.valid:
                st.published += 1
                st.poses_by_mode[mode] += 1
                st.level = DiagnosticStatus.OK
                st.message = f'localized ({mode})' if self._rgbd else 'localized'
                if result.depth_fallback is not None:
                    st.message += f', {result.depth_fallback.value}'
                if s.tf_mode == TfMode.MAP_TO_ODOM.value and st.last_tf_error and \
                        self._outputs.counts['map_to_odom_sent'] == 0:
                    st.level = DiagnosticStatus.WARN
                    st.message = f'localized, no map -> odom yet: {st.last_tf_error}'
            else:
                st.without_pose += 1
                st.level = DiagnosticStatus.WARN
                st.message = f'no pose (fewer than {s.min_inliers} inliers)'

    def _warn_throttled(self, reason: str, text: str) -> None:
        """At most one warning per kind of problem (its text up to the first digit) per
        WARN_PERIOD_S, so a stream of bad frames does not flood the log but each kind shows."""
        key = reason[:next((i for i, c in enumerate(reason) if c.isdigit()), len(reason))]
        now = time.monotonic()
        if now - self._last_warning.get(key, -WARN_PERIOD_S) >= WARN_PERIOD_S:
            self._last_warning[key] = now
            self._node.get_logger().warning(text)

    # -- diagnostics (executor thread) ---------------------------------------------------------

    def _describe_input(self) -> str:
        counts = self._sync.counts()
        return (f'{self._image_topic}: {counts.received["image"]} images so far, '
                f'{counts.unmatched["image"]} without a camera_info match')

    def counters(self) -> dict[str, float | str]:
        """Counters and the last frame's numbers (what /diagnostics reports)."""
        sync = self._sync.counts()
        outputs = dict(self._outputs.counts)
        with self._stats.lock:
            st = self._stats
            values: dict[str, float] = {
                'frames_received': st.images,
                'frames_unmatched': sync.unmatched['image'],
                'camera_info_unmatched': sync.unmatched['camera_info'],
                'frames_dropped': self._slot.dropped,
                'frames_not_requested': st.not_requested,
                'frames_processed': st.processed,
                'frames_rejected': st.rejected,
                'frames_failed': st.errors,
                'poses_published': st.published,
                'frames_without_pose': st.without_pose,
                'poses_gated': st.gated,
                'tf_lookup_failures': st.tf_failures,
                **outputs,
                'relocalize_requests': self._service.requests,
                'relocalize_succeeded': self._service.succeeded,
                'mean_latency_ms': st.latency_sum_ms / st.processed if st.processed else 0.0,
            }
            if self._rgbd:
                values['depth_received'] = sync.received['depth']
                values.update({f'poses_{mode}': n for mode, n in st.poses_by_mode.items()})
                values.update({f'depth_fallback_{reason}': n
                               for reason, n in st.depth_fallbacks.items()})
            values.update(st.last)
            return values

    def _publish_diagnostics(self) -> None:
        values: dict[str, object] = dict(self.counters())
        s = self.settings
        with self._stats.lock:
            level, message = self._stats.level, self._stats.message
            last_image = self._stats.last_image_monotonic
            values['last_tf_error'] = self._stats.last_tf_error
        unmatched = int(values['frames_unmatched'])
        if unmatched > self._unmatched_reported:
            level = max(level, DiagnosticStatus.WARN, key=lambda b: b[0])
            message = (f'{unmatched - self._unmatched_reported} images without a camera_info of '
                       f'their stamp (sync_tolerance_s={s.sync_tolerance_s:g}); {message}')
            self._unmatched_reported = unmatched
        if last_image is None:
            level, message = DiagnosticStatus.STALE, f'no image yet on {self._image_topic}'
        elif time.monotonic() - last_image > s.stale_timeout_s:
            level = DiagnosticStatus.STALE
            message = (f'no image on {self._image_topic} for '
                       f'{time.monotonic() - last_image:.1f} s')
        values['tf_backend'] = self._tf_in.backend
        values['tf_mode'] = s.tf_mode
        values['continuous'] = s.continuous
        self._diag_pub.publish(diagnostic_array(
            self._node.get_clock().now().to_msg(), DIAGNOSTIC_NAME, self._node.get_name(),
            level, message, values))
