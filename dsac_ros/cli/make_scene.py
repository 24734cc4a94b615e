"""Render a synthetic textured room in the 7-Scenes layout (optionally also as a bag).

    dsac_make_scene OUT_DIR [--seed 0] [--width 320] [--height 240] [--fx 260] [--fy 260]
                    [--train-frames 600] [--test-frames 200] [--bag FILE] [--bag-format mcap]

argparse -> SyntheticSceneConfig -> dsac_ros.data.synthetic.generate_scene (tqdm progress);
``--bag`` then writes the training split (``--bag-split``) with
dsac_ros.data.bag_writer.write_scene_bag (Image rgb8, CameraInfo, depth 16UC1, PoseStamped, /tf,
/tf_static).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
import sys

from tqdm import tqdm

from dsac_ros.data.bag_writer import BagFormat, write_scene_bag
from dsac_ros.data.synthetic import SyntheticSceneConfig, generate_scene


def build_parser() -> argparse.ArgumentParser:
    defaults = SyntheticSceneConfig()
    parser = argparse.ArgumentParser(prog='dsac_make_scene', description=__doc__.split('\n')[0])
    parser.add_argument('out_dir', type=Path, help='scene root to create (must not exist)')
    parser.add_argument('--seed', type=int, default=defaults.seed)
    parser.add_argument('--width', type=int, default=defaults.width, help='pixels')
    parser.add_argument('--height', type=int, default=defaults.height, help='pixels')
    parser.add_argument('--fx', type=float, default=defaults.fx, help='focal length, pixels')
    parser.add_argument('--fy', type=float, default=defaults.fy, help='focal length, pixels')
    parser.add_argument('--train-frames', type=int, default=defaults.train_frames)
    parser.add_argument('--test-frames', type=int, default=defaults.test_frames)
    parser.add_argument('--bag', type=Path, default=None,
                        help='also write this split as a bag (folder for rosbag2, .bag for ROS 1)')
    parser.add_argument('--bag-format', choices=[f.value for f in BagFormat], default='mcap')
    parser.add_argument('--bag-split', choices=['train', 'test'], default='train')
    parser.add_argument('--bag-rate', type=float, default=10.0, help='frames per second')
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(levelname)s %(name)s: %(message)s')
    try:
        config = SyntheticSceneConfig(seed=args.seed, width=args.width, height=args.height,
                                      fx=args.fx, fy=args.fy, train_frames=args.train_frames,
                                      test_frames=args.test_frames)
        total = config.train_frames + config.test_frames
        with tqdm(total=total, unit='frame', desc='rendering') as bar:
            root = generate_scene(args.out_dir, config, progress=bar.update)
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
