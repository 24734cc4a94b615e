"""Extract a bag (rosbag2 sqlite3 / mcap folder or file, ROS 1 .bag) into the 7-Scenes layout.

    dsac_extract_bag BAG OUT_DIR --image-topic T --camera-info-topic T
                     (--pose-topic T | --camera-frame F [--world-frame map])
                     [--depth-topic T] [--tolerance 0.02] [--every-nth 1] [--max-frames N]
                     [--test-fraction 0.2 | --test-bag BAG2]

Held-out test frames by default: the last 20 % of the recording (contiguous) become the test
sequence, so that an evaluation does not measure the training frames. ``--test-bag BAG2``
trains on all of BAG and tests on all of BAG2 (a second recording of the same scene, same
topics); ``--test-fraction 0`` lists every frame in both splits (train and test on the same
frames, as before).

argparse -> BagExtractionConfig -> dsac_ros.data.bag_extraction.extract_bag (or, with --test-bag,
dsac_ros.data.held_out.extract_bag_pair) (tqdm progress); the summary (frames written,
skipped by reason) is printed. See dsac_ros.data.bag_extraction for the conventions.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
import sys

from tqdm import tqdm

from dsac_ros.data.bag_extraction import BagExtractionConfig, extract_bag
from dsac_ros.data.held_out import extract_bag_pair

#: Default share of a recording held out as the test sequence (its last frames).
DEFAULT_TEST_FRACTION = 0.2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        allow_abbrev=False, prog='dsac_extract_bag', description=__doc__.split('\n')[0])
    parser.add_argument('bag', type=Path)
    parser.add_argument('out_dir', type=Path, help='scene root to create (must not exist)')
    parser.add_argument('--image-topic', required=True, help='Image or CompressedImage')
    parser.add_argument('--camera-info-topic', required=True)
    pose = parser.add_mutually_exclusive_group(required=True)
    pose.add_argument('--pose-topic', help='PoseStamped / PoseWithCovarianceStamped / '
                      'TransformStamped / Odometry: camera pose in the world (T_wc)')
    pose.add_argument('--camera-frame', help='TF optical frame of the camera (pose from TF)')
    parser.add_argument('--world-frame', default='map', help='TF world frame (default map)')
    parser.add_argument('--depth-topic', default=None, help='16UC1 (mm) or 32FC1 (m) depth')
    parser.add_argument('--tolerance', type=float, default=0.02,
                        help='largest image-to-pose/depth time gap, seconds')
    parser.add_argument('--every-nth', type=int, default=1)
    parser.add_argument('--max-frames', type=int, default=None)
    split = parser.add_mutually_exclusive_group()
    split.add_argument('--test-fraction', type=float, default=DEFAULT_TEST_FRACTION,
                       help='the last f of the frames -> TestSplit (held out); 0: every frame '
                       'in both splits (evaluation then measures training frames)')
    split.add_argument('--test-bag', type=Path, default=None,
                       help='a second recording of the scene: all of BAG trains, all of '
                       'TEST_BAG tests')
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(levelname)s %(name)s: %(message)s')
    try:
        config = BagExtractionConfig(
            image_topic=args.image_topic, camera_info_topic=args.camera_info_topic,
            pose_topic=args.pose_topic, world_frame=args.world_frame,
            camera_frame=args.camera_frame, depth_topic=args.depth_topic,
            stamp_tolerance_s=args.tolerance, every_nth=args.every_nth,
            max_frames=args.max_frames,
            test_fraction=0.0 if args.test_bag is not None else args.test_fraction)
        with tqdm(unit='image', desc='extracting') as bar:
            if args.test_bag is None:
                summaries = [extract_bag(args.bag, args.out_dir, config, progress=bar.update)]
            else:
                summaries = extract_bag_pair(args.bag, args.test_bag, args.out_dir, config,
                                             progress=bar.update)
    except (ValueError, OSError) as error:
        hint = (' (a short recording: use --test-fraction 0 to keep every frame in both '
                'splits, or --test-bag)' if 'empty split' in str(error) else '')
        print(f'dsac_extract_bag: error: {error}{hint}', file=sys.stderr)
        return 2
    if args.test_bag is None:
        print(summaries[0])
        if config.test_fraction == 0.0:
            print('note: --test-fraction 0: the test split is the training frames')
    else:
        print(f'training: {summaries[0].frames_written} frames of {args.bag}; test: '
              f'{summaries[1].frames_written} frames of {args.test_bag}; written to '
              f'{args.out_dir}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
