"""Plays a recording's camera and TF topics on ROS 2 with /clock, so relocalize_node runs on a bag.

    dsac_replay BAG [--rate 1.0] [--topics T ...] [--no-clock] [--clock-rate 50]
        [--tf-exclude-child odom] [--wait TOPIC:N ...] [--wait-timeout 30]

BAG: a rosbag2 folder or file (sqlite3, mcap) or a ROS 1 .bag, read with rosbags (no ROS 2
install needed). Played by default: every sensor_msgs/Image, CompressedImage and CameraInfo topic,
/tf and /tf_static, in log-time order at ``--rate`` times real time. ``/clock`` (rosgraph_msgs)
carries the bag's log time, so run the node with ``use_sim_time:=true``: its stamps, TF lookups
and diagnostics then follow the bag. /tf_static is published first, latched (transient local),
with every static transform of the bag, as tf2's static broadcaster holds them (static
transforms hold at all times, so the first frames find the camera's extrinsic).
``--tf-exclude-child`` drops transforms of a child frame (e.g. a recorded AMCL's map -> odom,
which would fight the node's). Publishers for every played topic exist before playing starts,
which waits until each image topic has a subscriber (``--wait TOPIC:N`` instead: N subscribers
on TOPIC), so that the first frames and transforms are not lost to discovery. rosbag2 messages
are passed on as recorded (CDR); ROS 1 messages are converted field by field (``K`` -> ``k``,
no ``seq``).
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
import importlib
import itertools
from pathlib import Path
import sys
import time
from typing import Any

import numpy as np
import rclpy
from rclpy.qos import QoSProfile, ReliabilityPolicy
from rclpy.serialization import deserialize_message
from rosgraph_msgs.msg import Clock
from tf2_msgs.msg import TFMessage

from dsac_ros.demo.program import run_program
from dsac_ros.ros.stamps import ns_to_stamp
from dsac_ros.ros.tf_broadcaster import TF_QOS, TF_STATIC_QOS

CAMERA_TYPES = ('sensor_msgs/msg/Image', 'sensor_msgs/msg/CompressedImage',
                'sensor_msgs/msg/CameraInfo')
TF_TYPE = 'tf2_msgs/msg/TFMessage'


@dataclass(frozen=True)
class ReplayConfig:
    """What to play and how (see the module doc)."""

    bag_path: Path
    rate: float = 1.0
    topics: tuple[str, ...] = ()
    clock: bool = True
    clock_rate_hz: float = 50.0
    tf_exclude_children: tuple[str, ...] = ()
    wait: tuple[tuple[str, int], ...] | None = None  # None: each image topic, 1 subscriber
    wait_timeout_s: float = 30.0


def message_class(msgtype: str) -> type:
    """'sensor_msgs/msg/Image' -> the rclpy message class."""
    package, _, name = msgtype.split('/')
    return getattr(importlib.import_module(f'{package}.msg'), name)


def to_rclpy(source: Any, cls: type) -> Any:
    """A deserialized rosbags message (ROS 1 or 2) -> an rclpy message of ``cls``, field by
    field (ROS 1's upper-case ``D K R P`` and ``Header.seq`` handled)."""
    msg = cls()
    for name, type_name in cls.get_fields_and_field_types().items():
        value = getattr(source, name, None)
        if value is None:
            value = getattr(source, name.upper(), None)
        if value is None:
            continue
        current = getattr(msg, name)
        if hasattr(current, 'get_fields_and_field_types'):
            setattr(msg, name, to_rclpy(value, type(current)))
        elif '/' in type_name:  # a sequence of messages, e.g. sequence<geometry_msgs/X>
            element = message_class(type_name[type_name.index('<') + 1:].rstrip('>')
                                    .replace('/', '/msg/', 1))
            setattr(msg, name, [to_rclpy(v, element) for v in value])
        elif isinstance(value, np.ndarray):
            setattr(msg, name, value.tobytes() if value.dtype == np.uint8 else value.tolist())
        else:
            setattr(msg, name, value)
    return msg


def _open(bag_path: Path):
    from rosbags.highlevel import AnyReader
    from rosbags.typesys import Stores, get_typestore

    return AnyReader([Path(bag_path)], default_typestore=get_typestore(Stores.ROS2_KILTED))


def _played(reader, bag_path: Path, topics: Iterable[str]) -> list:
    wanted = set(topics)
    connections = [c for c in reader.connections
                   if (c.topic in wanted if wanted else
                       c.msgtype in CAMERA_TYPES or c.msgtype == TF_TYPE)]
    if not connections:
        available = ', '.join(sorted({f'{c.topic} [{c.msgtype}]' for c in reader.connections}))
        raise ValueError(f'{bag_path}: nothing to play; topics: {available or "none"}')
    return connections


def played_topics(bag_path: Path, topics: Iterable[str] = ()) -> dict[str, str]:
    """Topic -> message type of what `read_messages` plays."""
    with _open(bag_path) as reader:
        return {c.topic: c.msgtype for c in _played(reader, bag_path, topics)}


def read_messages(bag_path: Path, topics: Iterable[str] = ()
                  ) -> Iterator[tuple[str, str, int, Any]]:
    """(topic, msgtype, log time ns, rclpy message) of the camera and TF topics (or
    ``topics``), in log-time order."""
    with _open(bag_path) as reader:
        connections = _played(reader, bag_path, topics)
        ros1 = bool(reader.is2) is False
        for connection, log_ns, raw in reader.messages(connections=connections):
            cls = message_class(connection.msgtype)
            if ros1:
                msg = to_rclpy(reader.deserialize(raw, connection.msgtype), cls)
            else:
                msg = deserialize_message(bytes(raw), cls)
            yield connection.topic, connection.msgtype, int(log_ns), msg


def replay(config: ReplayConfig) -> int:
    """Plays the bag (rclpy initialised); returns the number of messages published."""
    node = rclpy.create_node('dsac_replay')
    try:
        return _replay(node, config)
    finally:
        node.destroy_node()


def _replay(node, config: ReplayConfig) -> int:
    excluded = set(config.tf_exclude_children)
    publishers: dict[str, Any] = {}
    clock_pub = node.create_publisher(Clock, '/clock', 10) if config.clock else None
    static: dict[str, Any] = {}
    camera_qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)

    def publisher(topic: str, msgtype: str):
        if topic not in publishers:
            qos = (TF_STATIC_QOS if topic == '/tf_static' else TF_QOS if msgtype == TF_TYPE
                   else camera_qos)
            publishers[topic] = node.create_publisher(message_class(msgtype), topic, qos)
        return publishers[topic]

    def tick_clock(ns: int) -> None:
        if clock_pub is not None:
            msg = Clock()
            ns_to_stamp(ns, msg.clock)
            clock_pub.publish(msg)

    topics = played_topics(config.bag_path, config.topics)
    for topic, msgtype in topics.items():
        publisher(topic, msgtype)
    if '/tf_static' in topics:
        for _, _, _, msg in read_messages(config.bag_path, ['/tf_static']):
            static.update({t.child_frame_id: t for t in msg.transforms
                           if t.child_frame_id not in excluded})
    wait = config.wait
    if wait is None:
        wait = tuple((t, 1) for t, m in topics.items() if m != CAMERA_TYPES[2] and m != TF_TYPE)
    deadline = time.monotonic() + config.wait_timeout_s
    while rclpy.ok() and time.monotonic() < deadline and not all(
            publisher(t, topics.get(t, CAMERA_TYPES[0])).get_subscription_count() >= n
            for t, n in wait):
        time.sleep(0.05)
    messages = read_messages(config.bag_path, config.topics)
    first = next(messages, None)
    if first is None:
        return 0
    bag_start = first[2]
    tick_clock(bag_start)
    if static:
        publisher('/tf_static', TF_TYPE).publish(TFMessage(transforms=list(static.values())))
    wall_start = time.monotonic()
    clock_period = 1.0 / config.clock_rate_hz
    last_clock = time.monotonic()
    sent = 0

    def bag_now() -> int:
        return bag_start + int((time.monotonic() - wall_start) * config.rate * 1e9)

    for topic, msgtype, log_ns, msg in itertools.chain([first], messages):
        due = wall_start + (log_ns - bag_start) / 1e9 / config.rate
        while rclpy.ok() and time.monotonic() < due:  # the clock ticks while waiting
            time.sleep(min(clock_period, max(0.0, due - time.monotonic())))
            if time.monotonic() - last_clock >= clock_period:
                tick_clock(min(bag_now(), log_ns))
                last_clock = time.monotonic()
        if not rclpy.ok():
            break
        tick_clock(log_ns)
        last_clock = time.monotonic()
        if msgtype == TF_TYPE:
            transforms = [t for t in msg.transforms if t.child_frame_id not in excluded]
            if topic == '/tf_static':
                continue  # all of them went out first
            if not transforms:
                continue
            msg = TFMessage(transforms=transforms)
        try:
            publisher(topic, msgtype).publish(msg)
        except Exception:
            if rclpy.ok():
                raise
            break  # SIGINT between the check and the publish
        sent += 1
    return sent


def parse_args(argv: list[str] | None = None) -> ReplayConfig:
    p = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.split('\n')[0])
    p.add_argument('bag', type=Path, help='rosbag2 folder / file (sqlite3, mcap) or ROS 1 .bag')
    p.add_argument('--rate', type=float, default=1.0, help='playback speed (1: real time)')
    p.add_argument('--topics', nargs='+', default=(),
                   help='topics to play (default: image, camera_info, /tf, /tf_static)')
    p.add_argument('--no-clock', action='store_true', help='do not publish /clock')
    p.add_argument('--clock-rate', type=float, default=50.0, help='/clock rate, Hz')
    p.add_argument('--tf-exclude-child', nargs='+', default=(), metavar='FRAME',
                   help="drop recorded transforms of these child frames (e.g. 'odom')")
    p.add_argument('--wait', nargs='+', default=None, metavar='TOPIC:N',
                   help='before playing, wait for N subscribers on TOPIC (default: one on each '
                        'image topic; "none": do not wait)')
    p.add_argument('--wait-timeout', type=float, default=30.0)
    a = p.parse_args(argv)
    if a.rate <= 0 or a.clock_rate <= 0:
        p.error('--rate and --clock-rate must be > 0')
    wait = None
    if a.wait == ['none']:
        wait = ()
    elif a.wait:
        try:
            wait = tuple((t, int(n)) for t, n in (w.rsplit(':', 1) for w in a.wait))
        except ValueError:
            p.error('--wait takes TOPIC:N')
    return ReplayConfig(bag_path=a.bag, rate=a.rate, topics=tuple(a.topics),
                        clock=not a.no_clock, clock_rate_hz=a.clock_rate,
                        tf_exclude_children=tuple(a.tf_exclude_child), wait=wait,
                        wait_timeout_s=a.wait_timeout)


def main(argv: list[str] | None = None) -> int:
    config = parse_args(argv)
    return run_program('dsac_replay',
                       lambda: f'{replay(config)} messages from {config.bag_path}')


if __name__ == '__main__':
    sys.exit(main())
