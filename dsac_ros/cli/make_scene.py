"""Render a synthetic textured room in the 7-Scenes layout (optionally also as a bag).

    dsac_make_scene OUT_DIR [--seed 0] [--width 320] [--height 240] [--fx 260] [--fy 260]
                    [--train-frames 600] [--test-frames 200] [--bag FILE] [--bag-format mcap]
    dsac_make_scene --benchmark NAME OUT_DIR [--train-frames N] [--test-frames N] [--seed S]
    dsac_make_scene --list-benchmarks

argparse -> SyntheticSceneConfig -> dsac_ros.data.synthetic.generate_scene (the demo room), or
with ``--benchmark`` the suite's BenchmarkSceneConfig -> dsac_ros.data.benchmark_scenes.
generate_benchmark_scene (tqdm progress; docs/BENCHMARKS.md); ``--bag`` then writes the
training split (``--bag-split``) with dsac_ros.data.bag_writer.write_scene_bag (Image rgb8,
CameraInfo, depth 16UC1, PoseStamped, /tf, /tf_static).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
import sys

from tqdm import tqdm

from dsac_ros.data.bag_writer import BagFormat, write_scene_bag
from dsac_ros.data.benchmark_scenes import (
    BENCHMARK_SUITE,
    benchmark_config,
    generate_benchmark_scene,
)
from dsac_ros.data.synthetic import SyntheticSceneConfig, generate_scene

_OVERRIDES = ('seed', 'width', 'height', 'fx', 'fy', 'train_frames', 'test_frames')


def build_parser() -> argparse.ArgumentParser:
    defaults = SyntheticSceneConfig()
    parser = argparse.ArgumentParser(
        allow_abbrev=False, prog='dsac_make_scene', description=__doc__.split('\n')[0])
    parser.add_argument('out_dir', type=Path, nargs='?',
                        help='scene root to create (must not exist)')
    parser.add_argument('--benchmark', metavar='NAME', choices=sorted(BENCHMARK_SUITE),
                        help='render this benchmark scene instead of the demo room: '
                        + ', '.join(BENCHMARK_SUITE))
    parser.add_argument('--list-benchmarks', action='store_true',
                        help='list the benchmark scenes and exit')
    # None: the demo room's or the benchmark scene's own value.
    parser.add_argument('--seed', type=int,
                        help=f'room seed (default {defaults.seed}; with --benchmark: another '
                        'room and paths of that kind)')
    parser.add_argument('--width', type=int, help=f'pixels (default {defaults.width})')
    parser.add_argument('--height', type=int, help=f'pixels (default {defaults.height})')
    parser.add_argument('--fx', type=float, help=f'focal length, pixels (default {defaults.fx:g})')
    parser.add_argument('--fy', type=float, help=f'focal length, pixels (default {defaults.fy:g})')
    parser.add_argument('--train-frames', type=int,
                        help=f'default {defaults.train_frames}')
    parser.add_argument('--test-frames', type=int, help=f'default {defaults.test_frames}')
    parser.add_argument('--bag', type=Path, default=None,
                        help='also write this split as a bag (folder for rosbag2, .bag for ROS 1)')
    parser.add_argument('--bag-format', choices=[f.value for f in BagFormat], default='mcap')
    parser.add_argument('--bag-split', choices=['train', 'test'], default='train')
    parser.add_argument('--bag-rate', type=float, default=10.0, help='frames per second')
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.list_benchmarks:
        for name, config in BENCHMARK_SUITE.items():
            print(f'{name:12s} seed {config.seed:3d}  {config.kind.value:8s} {config.description}')
        return 0
    if args.out_dir is None:
        parser.error('OUT_DIR is required')
    logging.basicConfig(level=logging.INFO, format='%(levelname)s %(name)s: %(message)s')
    overrides = {k: getattr(args, k) for k in _OVERRIDES if getattr(args, k) is not None}
    try:
        if args.benchmark is not None:
            config = benchmark_config(args.benchmark, **overrides)
            make = generate_benchmark_scene
        else:
            config = SyntheticSceneConfig(**overrides)
            make = generate_scene
        total = config.train_frames + config.test_frames
        with tqdm(total=total, unit='frame', desc='rendering') as bar:
            root = make(args.out_dir, config, progress=bar.update)
        print(f'scene written to {root} ({config.train_frames} train, {config.test_frames} '
              f'test frames, {config.width}x{config.height})')
        if args.bag is not None:
            n = write_scene_bag(root, args.bag, args.bag_format, split=args.bag_split,
                                rate_hz=args.bag_rate)
            print(f'bag written to {args.bag} ({args.bag_format}, {n} frames of the '
                  f'{args.bag_split} split)')
    except (ValueError, OSError) as error:
        print(f'dsac_make_scene: error: {error}', file=sys.stderr)
        return 2
    return 0


if __name__ == '__main__':
    sys.exit(main())
