"""Publishes a 7-Scenes-layout sequence as a camera: sensor_msgs/Image rgb8 + CameraInfo
(+ registered depth, as an RGB-D camera's aligned_depth_to_color).

    python -m dsac_ros.demo.player SCENE_ROOT [--split test] [--rate 15] [--frame-id camera]
        [--image-topic /camera/image_raw] [--camera-info-topic /camera/camera_info]
        [--depth-topic /camera/aligned_depth_to_color/image_raw [--depth-encoding 16UC1]
         [--depth-noise 0.01]]
        [--max-frames N] [--duration S] [--loop] [--wait-subscribers 1] [--gt-out gt.json]

Each image, its CameraInfo (and depth) carry the same stamp (wall clock at publish) and
``frame_id``. Depth: the scene's depth images (registered to colour), 16UC1 mm or 32FC1 m,
optionally with Gaussian noise of ``depth_noise`` times the range per pixel (seeded).
``--gt-out`` writes, per published frame, its stamp, name and ground-truth camera-to-world pose
T_wc (from pose.txt), so a recorder's output can be matched to ground truth by stamp.
Exits after the frames (or duration) are done, or cleanly on SIGINT/SIGTERM.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
import sys
import time

import cv2
import numpy as np
import rclpy
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, Image

from dsac_ros.data.atomic import write_json_atomic
from dsac_ros.data.seven_scenes import SceneDataset
from dsac_ros.demo.program import run_program
from dsac_ros.geometry.camera import scale_intrinsics_np
from dsac_ros.ros.messages import (
    depth_to_image_msg,
    intrinsics_to_camera_info,
    ns_to_stamp,
    rgb_to_image_msg,
)


@dataclass(frozen=True)
class PlayerConfig:
    """What to play and how.

    Attributes:
        scene_root: 7-Scenes layout root (TrainSplit.txt / TestSplit.txt, seq-XX folders,
            optional intrinsics.json).
        split: 'train' or 'test'.
        rate_hz: frames per second.
        frame_id: header frame_id of images and camera info (the camera's optical frame).
        resize: (width, height) to scale images (and K) to, or None.
        max_frames: stop after this many published frames (0: all frames once, or until
            ``duration_s`` with ``loop``).
        duration_s: stop after this many seconds (0: no limit).
        loop: start over at the end of the sequence.
        wait_subscribers: wait (up to wait_timeout_s) until the image topic has this many
            subscriptions before publishing.
        reliable: publish with reliable QoS (else best effort).
        gt_out: JSON file for the stamps and ground-truth poses of the published frames.
        depth_topic: publish the depth images on this topic (None: no depth).
        depth_encoding: '16UC1' (millimetres) or '32FC1' (metres).
        depth_noise: relative standard deviation of Gaussian depth noise per pixel.
    """

    scene_root: Path
    split: str = 'test'
    rate_hz: float = 15.0
    frame_id: str = 'camera'
    image_topic: str = '/camera/image_raw'
    camera_info_topic: str = '/camera/camera_info'
    resize: tuple[int, int] | None = None
    max_frames: int = 0
    duration_s: float = 0.0
    loop: bool = False
    wait_subscribers: int = 1
    wait_timeout_s: float = 20.0
    reliable: bool = True
    gt_out: Path | None = None
    depth_topic: str | None = None
    depth_encoding: str = '16UC1'
    depth_noise: float = 0.0


@dataclass(frozen=True)
class SequenceFrame:
    """One frame to play: RGB uint8 (H, W, 3), K (3, 3) in pixels, T_wc (4, 4) camera-to-world,
    depth (H', W') metres registered to the image (NaN invalid) when loaded."""

    name: str
    image_rgb: np.ndarray
    K: np.ndarray
    T_wc: np.ndarray
    depth_m: np.ndarray | None = None


def load_frames(root: Path, split: str, resize: tuple[int, int] | None = None,
                load_depth: bool = False) -> list[SequenceFrame]:
    """Frames of ``split`` under a 7-Scenes layout root (dsac_ros.data.seven_scenes), optionally
    resized to (width, height) with K scaled to match (depth keeps its resolution)."""
    dataset = SceneDataset(root, split=split, load_depth=load_depth)
    frames = []
    for i in range(len(dataset)):
        f = dataset[i]
        frames.append(SequenceFrame(str(f.name), f.image_rgb, np.asarray(f.K, np.float64),
                                    np.asarray(f.T_wc, np.float64), f.depth_m))
    if resize is not None:
        frames = [_resized(f, resize) for f in frames]
    return frames


def _resized(frame: SequenceFrame, size: tuple[int, int]) -> SequenceFrame:
    height, width = frame.image_rgb.shape[:2]
    image = cv2.resize(frame.image_rgb, size, interpolation=cv2.INTER_AREA)
    K = scale_intrinsics_np(frame.K, size[0] / width, size[1] / height)
    return SequenceFrame(frame.name, image, K, frame.T_wc, frame.depth_m)


def play(config: PlayerConfig) -> int:
    """Publishes the frames (rclpy must be initialised); returns the number published."""
    frames = load_frames(config.scene_root, config.split, config.resize,
                         load_depth=config.depth_topic is not None)
    node = rclpy.create_node('dsac_player')
    try:
        return _play(node, frames, config)
    finally:
        node.destroy_node()


def _play(node, frames: list[SequenceFrame], config: PlayerConfig) -> int:
    qos = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE if config.reliable
                     else ReliabilityPolicy.BEST_EFFORT)
    image_pub = node.create_publisher(Image, config.image_topic, qos)
    info_pub = node.create_publisher(CameraInfo, config.camera_info_topic, qos)
    images = [rgb_to_image_msg(f.image_rgb, config.frame_id) for f in frames]
    infos = [intrinsics_to_camera_info(f.K, f.image_rgb.shape[1], f.image_rgb.shape[0],
                                       config.frame_id) for f in frames]
    depth_pub, depths = None, [None] * len(frames)
    if config.depth_topic:
        depth_pub = node.create_publisher(Image, config.depth_topic, qos)
        rng = np.random.default_rng(0)
        for k, f in enumerate(frames):
            if f.depth_m is None:
                continue
            depth = f.depth_m
            if config.depth_noise:
                depth = depth * (1.0 + config.depth_noise * rng.standard_normal(depth.shape))
            depths[k] = depth_to_image_msg(depth, config.depth_encoding, config.frame_id)
    deadline = time.monotonic() + config.wait_timeout_s
    while (rclpy.ok() and image_pub.get_subscription_count() < config.wait_subscribers
           and time.monotonic() < deadline):
        time.sleep(0.05)
    if image_pub.get_subscription_count() < config.wait_subscribers:
        node.get_logger().warning(
            f'{config.image_topic} has {image_pub.get_subscription_count()} subscriptions '
            f'after {config.wait_timeout_s} s; publishing anyway')
    period = 1.0 / config.rate_hz
    start = time.monotonic()
    records = []
    sent = 0
    while rclpy.ok():
        index = sent % len(frames)
        if sent >= len(frames) and not config.loop:
            break
        if config.max_frames and sent >= config.max_frames:
            break
        if config.duration_s and time.monotonic() - start >= config.duration_s:
            break
        due = start + sent * period
        delay = due - time.monotonic()
        if delay > 0.0:
            time.sleep(delay)
        stamp_ns = time.time_ns()
        image, info = images[index], infos[index]
        ns_to_stamp(stamp_ns, image.header.stamp)
        info.header.stamp = image.header.stamp
        depth = depths[index]
        try:
            info_pub.publish(info)
            if depth is not None:
                depth.header.stamp = image.header.stamp
                depth_pub.publish(depth)
            image_pub.publish(image)
        except Exception:
            if rclpy.ok():
                raise
            break  # SIGINT/SIGTERM shut the context down between the check and the publish
        records.append({'stamp_ns': stamp_ns, 'name': frames[index].name,
                        'T_wc': frames[index].T_wc.tolist()})
        sent += 1
    elapsed = time.monotonic() - start
    if config.gt_out is not None:
        write_json_atomic(config.gt_out, {'frame_id': config.frame_id, 'frames': records})
    if rclpy.ok():
        node.get_logger().info(f'published {sent} frames in {elapsed:.1f} s')
    return sent


def _size(text: str) -> tuple[int, int]:
    width, height = text.lower().split('x')
    return int(width), int(height)


def parse_args(argv: list[str] | None = None) -> PlayerConfig:
    p = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.split('\n')[0])
    p.add_argument('scene_root', type=Path)
    p.add_argument('--split', default='test', choices=('train', 'test'))
    p.add_argument('--rate', type=float, default=15.0, help='frames per second')
    p.add_argument('--frame-id', default='camera')
    p.add_argument('--image-topic', default='/camera/image_raw')
    p.add_argument('--camera-info-topic', default='/camera/camera_info')
    p.add_argument('--resize', type=_size, default=None, help='WIDTHxHEIGHT')
    p.add_argument('--max-frames', type=int, default=0)
    p.add_argument('--duration', type=float, default=0.0, help='seconds (0: no limit)')
    p.add_argument('--loop', action='store_true')
    p.add_argument('--wait-subscribers', type=int, default=1)
    p.add_argument('--wait-timeout', type=float, default=20.0)
    p.add_argument('--best-effort', action='store_true')
    p.add_argument('--gt-out', type=Path, default=None)
    p.add_argument('--depth-topic', default=None,
                   help='also publish the depth images (registered to colour) on this topic')
    p.add_argument('--depth-encoding', default='16UC1', choices=('16UC1', '32FC1'))
    p.add_argument('--depth-noise', type=float, default=0.0,
                   help='relative Gaussian depth noise per pixel (0.01 = 1 %% of the range)')
    a = p.parse_args(argv)
    if a.rate <= 0:
        p.error('--rate must be > 0')
    if not 0.0 <= a.depth_noise < 1.0:
        p.error('--depth-noise must be in [0, 1)')
    return PlayerConfig(scene_root=a.scene_root, split=a.split, rate_hz=a.rate,
                        frame_id=a.frame_id, image_topic=a.image_topic,
                        camera_info_topic=a.camera_info_topic, resize=a.resize,
                        max_frames=a.max_frames, duration_s=a.duration, loop=a.loop,
                        wait_subscribers=a.wait_subscribers, wait_timeout_s=a.wait_timeout,
                        reliable=not a.best_effort, gt_out=a.gt_out,
                        depth_topic=a.depth_topic, depth_encoding=a.depth_encoding,
                        depth_noise=a.depth_noise)


def main(argv: list[str] | None = None) -> int:
    config = parse_args(argv)

    def body() -> None:
        play(config)  # logs its own summary

    return run_program('dsac_player', body)


if __name__ == '__main__':
    sys.exit(main())
