"""Benchmark: RGB vs RGB-D relocalization with the same model on the same frames.

For each (checkpoint, scene) pair and each depth-noise level, `dsac_ros.evaluation.evaluate`
with ``depth=True`` runs the network once per frame and the estimator twice on its output:
RGB (P4P, reprojection inliers) and RGB-D (Kabsch, 3D inliers, the scene's depth registered
to colour with Gaussian noise of ``noise`` times the range per pixel). Prints accuracy (% within
5 cm / 5 deg and 2 cm / 2 deg, median errors), estimator ms per frame of each mode and the
time ratio RGB-D / RGB (both estimators alternate on every frame of one evaluation).

    .venv/bin/python benchmarks/bench_rgbd.py --checkpoint dsac_ros/assets/demo_model.pt \\
        --scene /tmp/room [--noise 0 0.01 0.02] [--max-frames 100] [--selection ransac] \\
        [--inlier-threshold 5] [--inlier-threshold-cm 10] [--threads 2]
    (several scenes: --checkpoint a.pt b.pt --scene A B)
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import torch

from dsac_ros.dsac import EstimatorConfig, PoseMode, Selection
from dsac_ros.evaluation.run import EvaluationConfig, evaluate, result_key
from dsac_ros.relocalizer import Relocalizer, RelocalizerConfig


def _row(name: str, sel, ms: float, ref_ms: float | None) -> str:
    s = sel.summary
    ratio = '' if ref_ms is None else f'   x{ms / ref_ms:.2f} time'
    return (f'    {name:26s} {s.within_pct["5cm_5deg"]:6.1f} % {s.within_pct["2cm_2deg"]:6.1f} %'
            f'  {100 * s.median_translation_m:7.2f} cm {s.median_rotation_deg:6.2f} deg'
            f'  {ms:8.1f} ms{ratio}')


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.split('\n\n')[0])
    p.add_argument('--checkpoint', nargs='+', type=Path, required=True)
    p.add_argument('--scene', nargs='+', type=Path, required=True)
    p.add_argument('--noise', nargs='+', type=float, default=[0.0, 0.01, 0.02],
                   help='relative depth noise levels (0.01 = 1 %% of the range)')
    p.add_argument('--max-frames', type=int, default=100)
    p.add_argument('--selection', default='ransac', choices=[s.value for s in Selection])
    p.add_argument('--hypotheses', type=int, default=256)
    p.add_argument('--inlier-threshold', type=float, default=5.0, help='pixels (RGB)')
    p.add_argument('--inlier-threshold-cm', type=float, default=None,
                   help="RGB-D threshold (default: the checkpoint's, else 10 cm)")
    p.add_argument('--device', default='cpu')
    p.add_argument('--threads', type=int, default=None)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    if len(args.checkpoint) not in (1, len(args.scene)):
        p.error('one checkpoint, or one per scene')
    checkpoints = args.checkpoint * len(args.scene) if len(args.checkpoint) == 1 \
        else args.checkpoint
    selection = Selection(args.selection)
    estimator = EstimatorConfig(num_hypotheses=args.hypotheses,
                                inlier_threshold_px=args.inlier_threshold,
                                inlier_threshold_cm=args.inlier_threshold_cm)
    print(f'RGB vs RGB-D, {selection.value}, {args.hypotheses} hypotheses, tau '
          f'{args.inlier_threshold:g} px; threads {torch.get_num_threads()}, device '
          f'{args.device}')
    print(f'    {"":26s} {"5cm/5d":>8s} {"2cm/2d":>8s}  {"median":>20s}  {"estimator":>11s}')
    for checkpoint, scene in zip(checkpoints, args.scene):
        relocalizer = Relocalizer.from_checkpoint(
            checkpoint, RelocalizerConfig(device=args.device, estimator=estimator))
        tau_cm = relocalizer.estimator_config.inlier_threshold_cm
        print(f'{scene.name} ({checkpoint}), RGB-D tau '
              f'{10.0 if tau_cm is None else tau_cm:g} cm:')
        for k, noise in enumerate(args.noise):
            config = EvaluationConfig(selections=(selection,), max_frames=args.max_frames,
                                      depth=True, depth_noise=noise, device=args.device)
            result = evaluate(relocalizer, scene, config)
            rgb = result.selections[result_key(selection)]
            rgbd = result.selections[result_key(selection, PoseMode.RGBD)]
            ms_rgb = float(np.median(rgb.estimator_ms_n))
            ms_rgbd = float(np.median(rgbd.estimator_ms_n))
            if k == 0:
                print(f'    network {np.median(result.network_ms_n):.1f} ms/frame (median), '
                      f'{len(result.frame_names)} frames')
                print(_row('RGB', rgb, ms_rgb, None))
            # time ratio against the RGB estimator of the same run (same frames, interleaved)
            print(_row(f'RGB-D, noise {100 * noise:g} % of range', rgbd, ms_rgbd, ms_rgb)
                  + (f'  ({rgbd.depth_fallbacks} fell back to RGB)'
                     if rgbd.depth_fallbacks else ''))
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
