"""Synthetic renderer and bag round-trip throughput on one CPU core.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_data_synthetic.py [--frames 40]

Prints frames/s of SyntheticRoom.render_frame at 320x240 (default camera), of rendering plus
writing the 7-Scenes files, and of write_scene_bag / extract_bag (mcap) on those frames.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
import tempfile
import time

os.environ.setdefault('OMP_NUM_THREADS', '1')

import cv2  # noqa: E402

from dsac_ros.data.bag_extraction import BagExtractionConfig, extract_bag  # noqa: E402
from dsac_ros.data.bag_writer import SceneBagTopics, write_scene_bag  # noqa: E402
from dsac_ros.data.synthetic import (  # noqa: E402
    SyntheticRoom,
    SyntheticSceneConfig,
    generate_scene,
    trajectories,
)


def main() -> None:
    parser = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.split('\n')[0])
    parser.add_argument('--frames', type=int, default=40)
    args = parser.parse_args()
    cv2.setNumThreads(1)
    config = SyntheticSceneConfig(train_frames=args.frames, test_frames=1)
    t = time.perf_counter()
    room = SyntheticRoom(config.seed, config.room_size_m)
    build_s = time.perf_counter() - t
    poses = [T for loop in trajectories(config)[0] for T in loop]
    room.render_frame(poses[0], config.K, config.width, config.height)  # warm the ray cache
    t = time.perf_counter()
    for T_wc in poses:
        room.render_frame(T_wc, config.K, config.width, config.height)
    render_s = time.perf_counter() - t
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        root = generate_scene(Path(tmp) / 'scene', config)
        generate_s = time.perf_counter() - t
        n = len(poses)
        t = time.perf_counter()
        write_scene_bag(root, Path(tmp) / 'bag', 'mcap')
        write_s = time.perf_counter() - t
        topics = SceneBagTopics()
        t = time.perf_counter()
        extract_bag(Path(tmp) / 'bag', Path(tmp) / 'out', BagExtractionConfig(
            image_topic=topics.image, camera_info_topic=topics.camera_info,
            camera_frame=topics.camera_frame, depth_topic=topics.depth))
        extract_s = time.perf_counter() - t
    print(f'{config.width}x{config.height}, {n} frames, 1 thread')
    print(f'room build (textures): {build_s:.2f} s')
    print(f'render only:           {n / render_s:6.1f} frames/s ({1000 * render_s / n:.1f} ms)')
    print(f'generate_scene:        {(n + 1) / generate_s:6.1f} frames/s (incl. build + PNGs)')
    print(f'write_scene_bag mcap:  {n / write_s:6.1f} frames/s')
    print(f'extract_bag (TF+depth):{n / extract_s:6.1f} frames/s')


if __name__ == '__main__':
    main()
