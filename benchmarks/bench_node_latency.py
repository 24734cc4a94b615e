"""Receive -> publish latency of relocalize_node per frame, and its parts.

Runs the node in this process (the same RelocalizeNode, FramePipeline and Relocalizer the
``relocalize_node`` executable runs) with a publisher node on loopback DDS, one frame at a time
(the next frame is sent once the previous pose is out, so nothing is dropped or queued), at
640x480 and 320x240 input, on the CPU and on CUDA when present. Parts, from the node's own
per-frame accounting (milliseconds):

  transport  image stamp -> subscription callback (DDS, shared memory on loopback)
  queue      callback -> worker picks the frame up
  decode     Image -> RGB numpy (+ undistortion; none here)
  preprocess checks, resize to the model's input size, tensor upload
  network    scene-coordinate CNN
  estimator  DSAC hypotheses, scoring, selection, refinement
  tf         TF lookups at the image stamp (base -> camera, odom -> base), including the wait
             for odometry (50 Hz here) to reach the image stamp
  publish    building and publishing the poses, the base pose and /tf
  total      callback -> poses published (the node's latency_ms)

Each size runs twice: tf_mode map_to_camera (a camera alone: no TF lookups) and map_to_odom
(a robot: a static base_link -> camera extrinsic and odom -> base_link at 50 Hz from another
node, map -> odom out), so the table shows what the REP-105 chain costs.

    .venv/bin/python benchmarks/bench_node_latency.py [--model PATH] [--frames 30]

Without the shipped demo model (dsac_ros/assets/demo_model.pt) and no --model, a small
untrained network is used: timings are then those of that network, and the estimator runs on
poses it cannot find (usually shorter refinement), which the table says.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
import os
from pathlib import Path
import sys
import tempfile
import threading
import time

import numpy as np
import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, Image

from dsac_ros.demo.dds_env import loopback_dds_env
from dsac_ros.ros import messages
from dsac_ros.ros.node import GIL_SWITCH_INTERVAL_S, RelocalizeNode, default_model_path

PARTS = ('transport', 'queue', 'decode', 'preprocess', 'network', 'estimator', 'tf', 'publish',
         'total')
ODOM_RATE_HZ = 50.0


@dataclass(frozen=True)
class BenchConfig:
    model_path: Path
    frames: int = 30
    warmup: int = 3
    sizes: tuple[tuple[int, int], ...] = ((640, 480), (320, 240))
    devices: tuple[str, ...] = ('cpu',)
    tf_modes: tuple[str, ...] = ('map_to_camera', 'map_to_odom')
    threads: int = 0


def _frames(model: Path, size: tuple[int, int], count: int):
    """Test frames of the model's synthetic scene rendered at ``size`` (width, height), with K."""
    from dsac_ros.data.synthetic import SyntheticRoom, trajectories
    from dsac_ros.demo.run import scene_config_for_model
    from dsac_ros.geometry.camera import scale_intrinsics_np

    scene = scene_config_for_model(model)
    _, poses = trajectories(scene)
    room = SyntheticRoom(scene.seed, scene.room_size_m)
    K = scale_intrinsics_np(scene.K, size[0] / scene.width, size[1] / scene.height)
    out = []
    for T_wc in poses[: min(count, 12)]:
        rgb, _ = room.render_frame(T_wc, K, size[0], size[1])
        out.append((rgb, K))
    return out


def _odometry(client, stop: threading.Event) -> None:
    """A robot: static base_link -> camera, odom -> base_link at ODOM_RATE_HZ (wall stamps)."""
    from builtin_interfaces.msg import Time
    from tf2_msgs.msg import TFMessage

    from dsac_ros.ros.tf_broadcaster import TF_QOS, TF_STATIC_QOS

    tf_pub = client.create_publisher(TFMessage, '/tf', TF_QOS)
    static_pub = client.create_publisher(TFMessage, '/tf_static', TF_STATIC_QOS)
    T_base_camera = np.eye(4)
    T_base_camera[:3, :3] = [[0, 0, 1], [-1, 0, 0], [0, -1, 0]]
    T_base_camera[:3, 3] = [0.25, 0.0, 0.3]

    def stamped(T, ns, parent, child):
        stamp = Time()
        messages.ns_to_stamp(ns, stamp)
        return messages.transform_stamped(T, stamp, parent, child)

    static_pub.publish(TFMessage(transforms=[stamped(T_base_camera, 0, 'base_link', 'camera')]))
    while not stop.wait(1.0 / ODOM_RATE_HZ):
        T = np.eye(4)
        T[0, 3] = (0.1 * time.monotonic()) % 1.0
        tf_pub.publish(TFMessage(transforms=[stamped(T, time.time_ns(), 'odom', 'base_link')]))


def run(config: BenchConfig, device: str, size: tuple[int, int], tf_mode: str = 'map_to_camera'
        ) -> dict[str, np.ndarray]:
    """Per-frame part timings (ms) for one device, input size and tf_mode."""
    frames = _frames(config.model_path, size, config.frames)
    context = rclpy.Context()
    rclpy.init(context=context)
    overrides = [rclpy.parameter.Parameter(k, value=v) for k, v in {
        'model_path': str(config.model_path), 'device': device, 'num_threads': config.threads,
        'input_reliability': 'reliable', 'image_topic': '/bench/image',
        'camera_info_topic': '/bench/camera_info', 'min_inliers': 0, 'tf_mode': tf_mode,
        'base_frame': 'base_link' if tf_mode == 'map_to_odom' else '',
        'tf_timeout_s': 0.2}.items()]
    node = RelocalizeNode(context=context, parameter_overrides=overrides)
    client = rclpy.create_node('bench_camera', context=context)
    qos = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE)
    image_pub = client.create_publisher(Image, '/bench/image', qos)
    info_pub = client.create_publisher(CameraInfo, '/bench/camera_info', qos)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    executor.add_node(client)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    stop = threading.Event()
    robot = None
    if tf_mode == 'map_to_odom':
        robot = threading.Thread(target=_odometry, args=(client, stop), daemon=True)
        robot.start()
        time.sleep(0.5)  # the static extrinsic and the first odometry arrive
    rows = []
    try:
        deadline = time.monotonic() + 10.0
        while image_pub.get_subscription_count() == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        for i in range(config.warmup + config.frames):
            rgb, K = frames[i % len(frames)]
            image = messages.rgb_to_image_msg(rgb, 'camera')
            info = messages.intrinsics_to_camera_info(K, size[0], size[1], 'camera')
            before = node.counters()['frames_processed']
            messages.ns_to_stamp(time.time_ns(), image.header.stamp)
            info.header.stamp = image.header.stamp
            info_pub.publish(info)  # camera_info first, as camera drivers do
            image_pub.publish(image)
            deadline = time.monotonic() + 30.0
            while node.counters()['frames_processed'] == before:
                if time.monotonic() > deadline:
                    raise RuntimeError('the node did not process a frame within 30 s')
                time.sleep(0.001)
            c = node.counters()
            if i >= config.warmup:
                rows.append([c[f'{part}_ms'] for part in PARTS[:-1]] + [c['latency_ms']])
        counters = node.counters()
        poses = counters['poses_published']
        if tf_mode == 'map_to_odom' and counters['map_to_odom_sent'] == 0:
            raise RuntimeError(f'no map -> odom: {counters}')
    finally:
        stop.set()
        if robot is not None:
            robot.join(5.0)
        executor.shutdown()
        spinner.join(5.0)
        node.destroy_node()
        client.destroy_node()
        rclpy.shutdown(context=context)
    table = np.asarray(rows, np.float64)
    result = {part: table[:, j] for j, part in enumerate(PARTS)}
    result['poses'] = np.array([poses])
    return result


def _tiny_model(path: Path) -> Path:
    import torch

    from dsac_ros.data.synthetic import SyntheticSceneConfig
    from dsac_ros.models.checkpoint import save_checkpoint
    from dsac_ros.models.scene_coordinate_net import SceneCoordinateNet

    net = SceneCoordinateNet()
    net.set_scene_mean(torch.tensor([3.0, 2.5, 1.5]))
    scene = SyntheticSceneConfig()
    return save_checkpoint(path, net, None, torch.tensor(scene.K), (scene.height, scene.width))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.split('\n')[0])
    p.add_argument('--model', type=Path, default=None)
    p.add_argument('--frames', type=int, default=30)
    p.add_argument('--threads', type=int, default=0, help='torch CPU threads (0: default)')
    a = p.parse_args(argv)
    # DDS reads these when the participants are created (rclpy.init), not at import.
    os.environ.update(loopback_dds_env(base=os.environ))
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)  # as the relocalize_node executable runs
    import torch

    model = a.model or default_model_path()
    note = ''
    tmp = None
    if not model.is_file():
        tmp = tempfile.TemporaryDirectory()
        model = _tiny_model(Path(tmp.name) / 'untrained.pt')
        note = ' (UNTRAINED network of the default architecture: no demo model found)'
    devices = ('cpu', 'cuda') if torch.cuda.is_available() else ('cpu',)
    config = BenchConfig(model_path=model, frames=a.frames, devices=devices, threads=a.threads)
    print(f'model: {model}{note}')
    print(f'torch threads: {torch.get_num_threads() if not a.threads else a.threads}, '
          f'frames per row: {config.frames} (+{config.warmup} warm-up), median [p90] ms')
    header = (f'{"device":6} {"input":>8} {"tf_mode":>13} ' + ' '.join(f'{p:>14}' for p in PARTS)
              + '  poses')
    print(header)
    print('-' * len(header))
    totals = {}
    for device in config.devices:
        for size in config.sizes:
            for tf_mode in config.tf_modes:
                r = run(config, device, size, tf_mode)
                cells = ' '.join(f'{np.median(r[p]):7.1f} [{np.percentile(r[p], 90):5.1f}]'
                                 for p in PARTS)
                print(f'{device:6} {size[0]:>4}x{size[1]:<3} {tf_mode:>13} {cells}  '
                      f'{int(r["poses"][0])}', flush=True)
                totals[(device, size, tf_mode)] = float(np.median(r['total']))
    for device in config.devices:
        big = totals[(device, (640, 480), config.tf_modes[0])]
        small = totals[(device, (320, 240), config.tf_modes[0])]
        print(f'{device}: total at 640x480 / 320x240 = {big / small:.2f}x')
        for size in config.sizes:
            robot = totals[(device, size, 'map_to_odom')]
            camera = totals[(device, size, 'map_to_camera')]
            print(f'{device} {size[0]}x{size[1]}: total with TF lookups (map_to_odom) / camera '
                  f'alone = {robot / camera:.2f}x')
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == '__main__':
    sys.exit(main())
