"""The node's TF input: one small interface over tf2_ros (a real ROS 2 install) or the project's
own buffer (`dsac_ros.geometry.tf_buffer.TfBuffer`, the one the bag extractor uses).

`create_transform_source(node, cache_time_s)` returns a `TransformSource`: it subscribes to
``/tf`` and ``/tf_static`` (tf2's QoS: /tf reliable + volatile, /tf_static reliable + transient
local, so static transforms sent before the node started arrive) and answers
``lookup(target, source, stamp_ns, timeout_s) -> T_target_source`` (4x4 float64, source
coordinates -> target), interpolated at the stamp (slerp + linear between the samples around
it), waiting up to ``timeout_s`` for data that has not reached the stamp yet. Failures raise
`dsac_ros.geometry.tf_buffer.TransformLookupError` on both paths: `ConnectivityError` (unknown
or unconnected frames; not waited for) or `ExtrapolationError` (the stamp outside the samples).

tf2_ros is used when importable (``prefer_tf2_ros``); the pip environment has no tf2_ros, so
there the own buffer serves: bounded to ``cache_time_s`` behind each edge's newest sample,
cleared when the node's clock jumps back (a bag replayed again, a simulator reset; a jump
callback on the ROS clock, as tf2_ros registers one).
"""

from __future__ import annotations

import threading
import time
from typing import Protocol

import numpy as np
from rclpy.clock import JumpThreshold
from rclpy.duration import Duration
from rclpy.node import Node
from tf2_msgs.msg import TFMessage

from dsac_ros.geometry.tf_buffer import (
    ConnectivityError,
    ExtrapolationError,
    TfBuffer,
    TransformLookupError,
)
from dsac_ros.ros.messages import stamp_to_ns, transform_msg_to_matrix
from dsac_ros.ros.tf_broadcaster import TF_QOS, TF_STATIC_QOS

__all__ = ['BuiltinTransformSource', 'Tf2RosTransformSource', 'TransformSource',
           'create_transform_source', 'tf2_ros_available']

_JUMP_BACK_S = 1.0  # the node's clock going back by more than this clears the own buffer


class TransformSource(Protocol):
    """What the node needs from TF (see the module doc)."""

    backend: str  # 'tf2_ros' or 'builtin'

    def lookup(self, target: str, source: str, stamp_ns: int, timeout_s: float = 0.0
               ) -> np.ndarray:
        """T_target_source (4, 4) at ``stamp_ns``; raises TransformLookupError."""

    def close(self) -> None:
        """Destroys the subscriptions."""


def tf2_ros_available() -> bool:
    try:
        import tf2_ros  # noqa: F401
    except ImportError:
        return False
    return True


def create_transform_source(node: Node, cache_time_s: float = 10.0,
                            prefer_tf2_ros: bool = True) -> TransformSource:
    """tf2_ros's Buffer + TransformListener when importable and preferred, else the own one."""
    if prefer_tf2_ros and tf2_ros_available():
        return Tf2RosTransformSource(node, cache_time_s)
    return BuiltinTransformSource(node, cache_time_s)


class BuiltinTransformSource:
    """/tf and /tf_static into a `TfBuffer` (thread-safe: the executor writes, the node's worker
    thread looks up).

    Args:
        node: node to create the two subscriptions on.
        cache_time_s: history kept per dynamic edge behind its newest sample.
    """

    backend = 'builtin'

    def __init__(self, node: Node, cache_time_s: float = 10.0) -> None:
        self._node = node
        self._cache_time_s = cache_time_s
        self._cond = threading.Condition()
        self._buffer = TfBuffer(cache_time_s)
        self._static: dict[str, tuple] = {}  # child -> set_transform args, kept over a clear
        self.time_jumps = 0
        self._jump_handle = node.get_clock().create_jump_callback(
            JumpThreshold(min_forward=None, min_backward=Duration(seconds=-_JUMP_BACK_S),
                          on_clock_change=True),
            post_callback=self._on_time_jump)
        self._subscriptions = [
            node.create_subscription(TFMessage, '/tf', self._on_tf, TF_QOS),
            node.create_subscription(TFMessage, '/tf_static', self._on_tf_static,
                                     TF_STATIC_QOS),
        ]

    def _on_tf(self, msg: TFMessage) -> None:
        self._add(msg, static=False)

    def _on_tf_static(self, msg: TFMessage) -> None:
        self._add(msg, static=True)

    def _add(self, msg: TFMessage, static: bool) -> None:
        with self._cond:
            for transform in msg.transforms:
                stamp = stamp_to_ns(transform.header.stamp)
                t, q = transform.transform.translation, transform.transform.rotation
                args = (transform.header.frame_id, transform.child_frame_id, stamp,
                        (t.x, t.y, t.z), (q.x, q.y, q.z, q.w))
                if static:
                    self._static[args[1]] = args
                try:
                    self._buffer.set_transform(*args, static=static)
                except ValueError as exc:
                    self._node.get_logger().warning(f'TF ignored: {exc}',
                                                    throttle_duration_sec=5.0)
                    continue
            self._cond.notify_all()

    def _on_time_jump(self, jump) -> None:
        """The clock went back (or switched source): start over with the static transforms,
        as tf2_ros does."""
        with self._cond:
            self.time_jumps += 1
            self._buffer = TfBuffer(self._cache_time_s)
            for args in self._static.values():
                self._buffer.set_transform(*args, static=True)
        self._node.get_logger().warning('time jumped back: TF buffer cleared')

    def lookup(self, target: str, source: str, stamp_ns: int, timeout_s: float = 0.0
               ) -> np.ndarray:
        deadline = time.monotonic() + timeout_s
        tolerance_ns = int(self._cache_time_s * 1e9)
        with self._cond:
            while True:
                try:
                    return self._buffer.lookup(target, source, stamp_ns, tolerance_ns,
                                               extrapolate=False)
                except ConnectivityError:
                    raise
                except ExtrapolationError:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0.0:
                        raise
                    self._cond.wait(remaining)

    def close(self) -> None:
        for subscription in self._subscriptions:
            self._node.destroy_subscription(subscription)
        self._subscriptions = []
        self._jump_handle.unregister()


class Tf2RosTransformSource:
    """tf2_ros.Buffer + TransformListener behind the same interface (errors mapped to ours)."""

    backend = 'tf2_ros'

    def __init__(self, node: Node, cache_time_s: float = 10.0) -> None:
        from rclpy.duration import Duration
        import tf2_ros

        self._tf2 = tf2_ros
        self._buffer = tf2_ros.Buffer(cache_time=Duration(seconds=cache_time_s), node=node)
        self._listener = tf2_ros.TransformListener(self._buffer, node, spin_thread=False)

    def lookup(self, target: str, source: str, stamp_ns: int, timeout_s: float = 0.0
               ) -> np.ndarray:
        from rclpy.duration import Duration
        from rclpy.time import Time

        tf2 = self._tf2
        exists = getattr(self._buffer, '_frameExists', None)  # tf2_py's BufferCore
        if exists is not None and not (exists(target) and exists(source)):
            raise ConnectivityError(f'frame {target!r} or {source!r} is not in the TF tree')
        try:
            msg = self._buffer.lookup_transform(target, source, Time(nanoseconds=stamp_ns),
                                                timeout=Duration(seconds=timeout_s))
        except tf2.ExtrapolationException as exc:
            raise ExtrapolationError(str(exc)) from None
        except (tf2.LookupException, tf2.ConnectivityException) as exc:
            raise ConnectivityError(str(exc)) from None
        except tf2.TransformException as exc:
            raise TransformLookupError(str(exc)) from None
        return transform_msg_to_matrix(msg.transform)

    def close(self) -> None:
        self._listener.unregister()
