"""Extract a bag (rosbag2 sqlite3 / mcap folder or file, ROS 1 .bag) into the 7-Scenes layout.

    dsac_extract_bag BAG OUT_DIR --image-topic T --camera-info-topic T
                     (--pose-topic T | --camera-frame F [--world-frame map])
                     [--depth-topic T] [--tolerance 0.02] [--every-nth 1] [--max-frames N]
                     [--test-fraction 0]

argparse -> BagExtractionConfig -> dsac_ros.data.bag_extraction.extract_bag (tqdm progress); the
summary (frames written, skipped by reason) is printed. See dsac_ros.data.bag_extraction for the
conventions.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
import sys

from tqdm import tqdm

from dsac_ros.data.bag_extraction import BagExtractionConfig, extract_bag


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog='dsac_extract_bag', description=__doc__.split('\n')[0])
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
    parser.add_argument('--test-fraction', type=float, default=0.0,
                        help='0: all frames in both splits; f: last f of frames -> TestSplit')
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
            max_frames=args.max_frames, test_fraction=args.test_fraction)
        with tqdm(unit='image', desc='extracting') as bar:
            summary = extract_bag(args.bag, args.out_dir, config, progress=bar.update)
    except (ValueError, OSError) as error:
        print(f'dsac_extract_bag: error: {error}', file=sys.stderr)
        return 2
    print(summary)
    return 0


if __name__ == '__main__':
    sys.exit(main())
