"""Records geometry_msgs/PoseStamped (default /camera_pose) and /diagnostics to a JSON file.

    python -m dsac_ros.demo.pose_recorder OUT.json [--topic /camera_pose] [--count N]
        [--timeout S] [--idle-timeout S] [--node relocalize_node]

Output: {"topic", "poses": [{"stamp_ns", "receive_ns", "frame_id", "T_wc" (4x4 nested list,
camera-to-world, metres)}], "diagnostics": {key: value of the newest /diagnostics status},
"diagnostics_history": [...]}. ``receive_ns`` is the wall clock at reception, so
``receive_ns - stamp_ns`` is the image-stamp -> pose-receive latency on one machine.
Stops after ``count`` poses, ``timeout`` seconds, ``idle_timeout`` seconds without a pose once
one arrived, or on SIGINT/SIGTERM, and always writes the file before exiting. ``--node``
keeps only the diagnostics of that node (its hardware_id), where several nodes publish them.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
import sys
import time

from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PoseStamped
import rclpy
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor

from dsac_ros.data.atomic import write_json_atomic
from dsac_ros.ros.messages import diagnostic_values, pose_msg_to_matrix, stamp_to_ns


@dataclass(frozen=True)
class RecorderConfig:
    """Where to write and when to stop (0 disables a limit)."""

    out_path: Path
    topic: str = '/camera_pose'
    count: int = 0
    timeout_s: float = 0.0
    idle_timeout_s: float = 0.0
    ready_file: Path | None = None
    node: str | None = None


class PoseRecorder:
    """Collects poses and diagnostics from a node (rclpy objects owned by the node)."""

    def __init__(self, node, topic: str, hardware_id: str | None = None) -> None:
        self.topic = topic
        self.hardware_id = hardware_id
        self.poses: list[dict] = []
        self.diagnostics: dict[str, str] = {}
        self.diagnostics_history: list[dict[str, str]] = []
        self.last_receive = 0.0
        node.create_subscription(PoseStamped, topic, self._on_pose, 100)
        node.create_subscription(DiagnosticArray, '/diagnostics', self._on_diagnostics, 10)

    def _on_pose(self, msg: PoseStamped) -> None:
        self.last_receive = time.monotonic()
        self.poses.append({'stamp_ns': stamp_to_ns(msg.header.stamp),
                           'receive_ns': time.time_ns(),
                           'frame_id': msg.header.frame_id,
                           'T_wc': pose_msg_to_matrix(msg.pose).tolist()})

    def _on_diagnostics(self, msg: DiagnosticArray) -> None:
        if self.hardware_id is not None and all(
                s.hardware_id != self.hardware_id for s in msg.status):
            return
        values = diagnostic_values(msg)
        if values:
            self.diagnostics = values
            self.diagnostics_history.append(values)

    def payload(self) -> dict:
        return {'topic': self.topic, 'poses': self.poses, 'diagnostics': self.diagnostics,
                'diagnostics_history': self.diagnostics_history}


def record(config: RecorderConfig) -> int:
    """Records until a stop condition (rclpy initialised); writes the file; returns pose count."""
    node = rclpy.create_node('dsac_pose_recorder')
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    recorder = PoseRecorder(node, config.topic, config.node)
    if config.ready_file is not None:
        Path(config.ready_file).write_text('ready\n')
    start = time.monotonic()
    try:
        while rclpy.ok():
            executor.spin_once(timeout_sec=0.1)
            now = time.monotonic()
            if config.count and len(recorder.poses) >= config.count:
                break
            if config.timeout_s and now - start >= config.timeout_s:
                break
            if (config.idle_timeout_s and recorder.poses
                    and now - recorder.last_receive >= config.idle_timeout_s):
                break
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        write_json_atomic(config.out_path, recorder.payload())
        executor.shutdown()
        node.destroy_node()
    return len(recorder.poses)


def parse_args(argv: list[str] | None = None) -> RecorderConfig:
    p = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.split('\n')[0])
    p.add_argument('out', type=Path, help='output JSON file')
    p.add_argument('--topic', default='/camera_pose')
    p.add_argument('--count', type=int, default=0, help='stop after N poses (0: no limit)')
    p.add_argument('--timeout', type=float, default=0.0, help='stop after S seconds')
    p.add_argument('--idle-timeout', type=float, default=0.0,
                   help='stop S seconds after the last pose (once one arrived)')
    p.add_argument('--ready-file', type=Path, default=None,
                   help='file written once the subscriptions exist')
    p.add_argument('--node', default=None,
                   help='keep the diagnostics of this node only (its name = hardware_id)')
    a = p.parse_args(argv)
    return RecorderConfig(out_path=a.out, topic=a.topic, count=a.count, timeout_s=a.timeout,
                          idle_timeout_s=a.idle_timeout, ready_file=a.ready_file, node=a.node)


def main(argv: list[str] | None = None) -> int:
    config = parse_args(argv)
    rclpy.init()
    try:
        n = record(config)
    finally:
        rclpy.try_shutdown()
    print(f'dsac_pose_recorder: {n} poses -> {config.out_path}', file=sys.stderr)
    return 0


if __name__ == '__main__':
    sys.exit(main())
