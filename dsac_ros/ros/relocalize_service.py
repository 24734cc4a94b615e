"""On-demand relocalization: the ``~/relocalize`` service (std_srvs/Trigger), a helper that
takes the node.

A request localizes the next ``relocalize_frames`` frames that arrive after it and answers with
the one with most inliers: success with the base pose and the inlier count in the message (and
/initialpose sent, which resets AMCL), or failure with the reason (no image within
``relocalize_timeout_s``, no pose, no base pose from TF). The callback waits for the node's
worker thread in a callback group of its own, so the node must spin in a MultiThreadedExecutor
(``relocalize_node`` does): the camera callbacks keep running while a request waits. (A
coroutine callback awaiting the worker would not block, but rclpy's executors re-run pending
coroutines in a loop that starves the worker of the GIL.)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
import math
import threading
import time

import numpy as np
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.node import Node
from std_srvs.srv import Trigger

from dsac_ros.ros.parameters import NodeSettings
from dsac_ros.ros.robot_pose import RobotPose, yaw_of

SERVICE_NAME = '~/relocalize'


@dataclass
class FrameOutcome:
    """What one localized frame gave, for the requests waiting on it.

    Attributes:
        stamp_ns: the image stamp.
        received_monotonic: when the image arrived (time.monotonic()).
        inliers: inlier count (0 for a rejected frame).
        T_map_camera: camera-to-map, None without a pose.
        robot: base pose (and map -> odom), None when there is no pose or no TF for the base.
        problem: why there is no usable pose, else None.
    """

    stamp_ns: int
    received_monotonic: float
    inliers: int = 0
    T_map_camera: np.ndarray | None = None
    robot: RobotPose | None = None
    problem: str | None = None

    @property
    def usable(self) -> bool:
        return self.problem is None and self.T_map_camera is not None


@dataclass
class _Request:
    start: float
    deadline: float
    wanted: int
    outcomes: list[FrameOutcome] = field(default_factory=list)
    done: threading.Event = field(default_factory=threading.Event)
    answer: tuple[bool, str] = (False, 'no answer')


class RelocalizeService:
    """The ``~/relocalize`` Trigger service of a node.

    Args:
        node: node to create the service on.
        settings: callable returning the current settings (relocalize_frames,
            relocalize_timeout_s, base_frame).
        on_success: called in the worker thread with the chosen outcome before the answer
            goes out (the node publishes /initialpose and the poses there).
        describe_input: callable returning a few words on the input so far (for the reason
            of a request that saw no image).
    """

    def __init__(self, node: Node, settings: Callable[[], NodeSettings],
                 on_success: Callable[[FrameOutcome], None],
                 describe_input: Callable[[], str]) -> None:
        self._node = node
        self._settings = settings
        self._on_success = on_success
        self._describe_input = describe_input
        self._lock = threading.Lock()
        self._requests: list[_Request] = []
        self.requests = 0
        self.succeeded = 0
        self._service = node.create_service(Trigger, SERVICE_NAME, self._on_request,
                                            callback_group=MutuallyExclusiveCallbackGroup())

    @property
    def pending(self) -> bool:
        with self._lock:
            return bool(self._requests)

    def _on_request(self, request: Trigger.Request, response: Trigger.Response
                    ) -> Trigger.Response:
        s = self._settings()
        now = time.monotonic()
        pending = _Request(now, now + s.relocalize_timeout_s, s.relocalize_frames)
        with self._lock:
            self.requests += 1
            self._requests.append(pending)
        self._node.get_logger().info(
            f'relocalization requested: best of {s.relocalize_frames} frames within '
            f'{s.relocalize_timeout_s:g} s')
        # The worker answers by the deadline (it polls every 0.2 s); the margin covers a frame
        # in flight. Without an answer (a stalled worker) the request fails here.
        if not pending.done.wait(s.relocalize_timeout_s + 30.0):
            self.cancel_all('the localization worker did not answer')
        response.success, response.message = pending.answer
        return response

    # -- worker thread -------------------------------------------------------------------------

    def offer(self, outcome: FrameOutcome) -> None:
        """One processed frame (any outcome) for every request made before it arrived."""
        with self._lock:
            done = []
            for request in self._requests:
                if outcome.received_monotonic >= request.start:
                    request.outcomes.append(outcome)
                    if len(request.outcomes) >= request.wanted:
                        done.append(request)
            for request in done:
                self._requests.remove(request)
        for request in done:
            self._answer(request)

    def expire(self) -> None:
        """Answers the requests whose time is up with what they have."""
        now = time.monotonic()
        with self._lock:
            late = [r for r in self._requests if now >= r.deadline]
            for request in late:
                self._requests.remove(request)
        for request in late:
            self._answer(request, timed_out=True)

    def cancel_all(self, reason: str) -> None:
        with self._lock:
            requests, self._requests = self._requests, []
        for request in requests:
            _complete(request, False, reason)

    def _answer(self, request: _Request, timed_out: bool = False) -> None:
        usable = [o for o in request.outcomes if o.usable]
        if not usable:
            _complete(request, False, self._failure(request, timed_out))
            return
        best = max(usable, key=lambda o: o.inliers)
        try:
            self._on_success(best)
        except Exception as exc:  # noqa: BLE001 - the caller must get an answer
            _complete(request, False, f'publishing the pose failed: {exc}')
            return
        self.succeeded += 1
        s = self._settings()
        # A camera without a robot (base_frame empty): the camera's pose, no /initialpose.
        T, what = ((best.robot.T_map_base, s.base_frame) if best.robot is not None
                   else (best.T_map_camera, 'the camera (no base_frame)'))
        message = (f'localized {what} in {s.map_frame}: x={T[0, 3]:.3f} y={T[1, 3]:.3f} '
                   f'z={T[2, 3]:.3f} m, yaw={math.degrees(yaw_of(T)):.1f} deg; '
                   f'{best.inliers} inliers (best of {len(request.outcomes)} frames, stamp '
                   f'{best.stamp_ns / 1e9:.3f} s)')
        self._node.get_logger().info(message)
        _complete(request, True, message)

    def _failure(self, request: _Request, timed_out: bool) -> str:
        s = self._settings()
        if not request.outcomes:
            return (f'no image arrived within relocalize_timeout_s={s.relocalize_timeout_s:g} s '
                    f'({self._describe_input()})')
        problems = sorted({o.problem or 'no pose' for o in request.outcomes})
        best = max(o.inliers for o in request.outcomes)
        when = ' before the timeout' if timed_out else ''
        return (f'no usable pose in {len(request.outcomes)} frames{when} (most inliers: {best}): '
                + '; '.join(problems))

    def close(self) -> None:
        self.cancel_all('the node is shutting down')
        self._node.destroy_service(self._service)


def _complete(request: _Request, success: bool, message: str) -> None:
    if not request.done.is_set():
        request.answer = (success, message)
        request.done.set()
