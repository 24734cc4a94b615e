"""End-to-end demo: synthetic camera -> relocalize_node -> recorded poses -> accuracy report.

    dsac_demo [--out demo_out] [--model PATH] [--frames N] [--rate 15] [--device auto]
        [--depth [--depth-noise 0.01]]

argparse -> DemoConfig -> `dsac_ros.demo.run.run_demo` (see there for what runs), then the
report is printed. All children are stopped (SIGINT first) on success, error or Ctrl-C.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
import sys

from dsac_ros.demo.processes import honour_sigint
from dsac_ros.demo.run import DemoConfig, format_report, run_demo
from dsac_ros.device import Device
from dsac_ros.dsac import Scoring


def parse_args(argv: list[str] | None = None) -> DemoConfig:
    p = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.split('\n')[0])
    p.add_argument('--out', type=Path, default=Path('demo_out'), help='output folder')
    p.add_argument('--model', type=Path, default=None, help='checkpoint (default: shipped)')
    p.add_argument('--frames', type=int, default=0, help='test frames to play (0: all)')
    p.add_argument('--rate', type=float, default=15.0, help='camera rate, Hz')
    p.add_argument('--device', default=Device.AUTO.value, choices=[d.value for d in Device])
    p.add_argument('--num-threads', type=int, default=0, help='torch threads of the node')
    p.add_argument('--keep-scene', action='store_true', help='keep the rendered images')
    p.add_argument('--inlier-threshold', type=float, default=0.0,
                   help="the node's inlier threshold in px (0: the checkpoint's)")
    p.add_argument('--scoring', default='auto', choices=[x.value for x in Scoring],
                   help='hypothesis scores (auto: what the checkpoint records)')
    p.add_argument('--depth', action='store_true',
                   help='also an RGB-D node on the same frames (the player publishes depth): '
                        'RGB and RGB-D side by side')
    p.add_argument('--depth-noise', type=float, default=0.01,
                   help='relative depth noise per pixel (0.01 = 1 %% of the range)')
    a = p.parse_args(argv)
    if a.rate <= 0 or a.frames < 0:
        p.error('--rate must be > 0 and --frames >= 0')
    if not 0.0 <= a.depth_noise < 1.0:
        p.error('--depth-noise must be in [0, 1)')
    return DemoConfig(out_dir=a.out, model_path=a.model, frames=a.frames, rate_hz=a.rate,
                      device=a.device, num_threads=a.num_threads, keep_scene=a.keep_scene,
                      inlier_threshold_px=a.inlier_threshold, scoring=a.scoring,
                      depth=a.depth, depth_noise=a.depth_noise)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format='[demo] %(message)s')
    config = parse_args(argv)
    honour_sigint()
    try:
        result = run_demo(config)
    except KeyboardInterrupt:
        print('interrupted; all processes stopped', file=sys.stderr)
        return 130
    except (RuntimeError, FileNotFoundError, ValueError) as exc:
        print(f'demo failed: {exc}', file=sys.stderr)
        return 1
    print(format_report(result))
    if result.accuracy.poses_matched == 0:
        print('note: the node published no pose (untrained model, wrong scene, or '
              'min_inliers too high)', file=sys.stderr)
    return 0


if __name__ == '__main__':
    sys.exit(main())
