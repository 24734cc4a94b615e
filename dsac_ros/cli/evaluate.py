"""Evaluate trained checkpoints on scenes with RANSAC / SoftAM / DSAC selection.

    dsac_evaluate --checkpoint model.pt --scene data/chess [--split test]
                  [--selection ransac|softam|dsac|all] [--hypotheses 256] [--device auto]
                  [--out DIR] [--max-frames N] [--scoring auto|score_net|soft_inliers]
                  [--inlier-threshold PX] [--seed 0] [--threads N]
                  [--depth [--depth-noise 0.01] [--inlier-threshold-cm 10]]

The inlier thresholds, soft-inlier beta, selection temperatures and the scoring default to the
values stored in each checkpoint (what it was trained with; older files: 10 px at 640 px
width, soft inliers); --inlier-threshold, --inlier-threshold-cm and --scoring override them.

Several scenes: ``--scene a b c`` with one checkpoint per scene (``--checkpoint a.pt b.pt
c.pt``) or one checkpoint for all. Prints tables shaped like the paper's Tables 1 and 2 (rows
scenes, columns selection modes) and, with ``--out``, writes results.json and PNG plots.
``--depth``: every mode also in RGB-D (depth registered to colour) on the same frames, side by
side.
Exit status: 0 on success, 2 on bad arguments, a missing scene or a bad checkpoint.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
import logging
from pathlib import Path
import sys

from dsac_ros.dsac import Scoring, Selection
from dsac_ros.evaluation.report import format_table, write_report
from dsac_ros.evaluation.run import EvaluationConfig, evaluate
from dsac_ros.relocalizer import NetworkPrecision

_LOG = logging.getLogger('dsac_ros.evaluate')


@dataclass(frozen=True)
class EvaluateCommand:
    """Parsed command line: (checkpoint, scene) pairs, evaluation settings, output folder."""

    jobs: tuple[tuple[Path, Path], ...]
    config: EvaluationConfig
    out_dir: Path | None
    threads: int | None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        allow_abbrev=False, prog='dsac_evaluate', description=__doc__.split('\n\n')[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument('--checkpoint', nargs='+', required=True, type=Path,
                        help='checkpoint file(s): one for all scenes or one per scene')
    parser.add_argument('--scene', nargs='+', required=True, type=Path,
                        help='scene folder(s) in the 7-Scenes layout')
    parser.add_argument('--split', default='test', choices=['test', 'train'])
    parser.add_argument('--selection', default='all',
                        choices=[s.value for s in Selection] + ['all'],
                        help='hypothesis selection mode(s) to evaluate')
    parser.add_argument('--hypotheses', type=int, default=256,
                        help='pose hypotheses per frame')
    parser.add_argument('--inlier-threshold', type=float, default=None,
                        help="inlier threshold tau in pixels (default: the checkpoint's)")
    parser.add_argument('--depth', action='store_true',
                        help="also localize in RGB-D mode from the scene's depth (registered to "
                             'colour), beside RGB on the same frames')
    parser.add_argument('--depth-noise', type=float, default=0.0,
                        help='with --depth: relative std of Gaussian depth noise per pixel '
                             '(0.01 = 1 %% of the range)')
    parser.add_argument('--inlier-threshold-cm', type=float, default=None,
                        help="RGB-D inlier threshold in cm (default: the checkpoint's, else 10)")
    parser.add_argument('--device', default='auto', help="'auto', 'cpu' or 'cuda'")
    parser.add_argument('--precision', default='auto', choices=[p.value for p in NetworkPrecision],
                        help='network arithmetic')
    parser.add_argument('--scoring', default=Scoring.AUTO.value,
                        choices=[x.value for x in Scoring],
                        help="hypothesis scores: the checkpoint's Score CNN, soft inlier counts, "
                             'or auto (what the checkpoint records)')
    parser.add_argument('--max-frames', type=int, default=None,
                        help='at most this many frames per scene, evenly spaced')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--threads', type=int, default=None, help='torch CPU threads')
    parser.add_argument('--out', type=Path, default=None,
                        help='folder for results.json and the PNG plots')
    parser.add_argument('--no-progress', action='store_true', help='no progress bar')
    return parser


def parse_args(argv: list[str] | None = None) -> EvaluateCommand:
    """argv -> EvaluateCommand; exits with status 2 (argparse) on bad arguments."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if len(args.checkpoint) not in (1, len(args.scene)):
        parser.error(f'give one checkpoint or one per scene: {len(args.checkpoint)} '
                     f'checkpoints for {len(args.scene)} scenes')
    checkpoints = args.checkpoint * len(args.scene) if len(args.checkpoint) == 1 \
        else args.checkpoint
    selections = tuple(Selection) if args.selection == 'all' else (Selection(args.selection),)
    try:
        overrides = {'num_hypotheses': args.hypotheses, 'seed': args.seed}
        if args.inlier_threshold is not None:
            overrides['inlier_threshold_px'] = args.inlier_threshold
        if args.inlier_threshold_cm is not None:
            overrides['inlier_threshold_cm'] = args.inlier_threshold_cm
        config = EvaluationConfig(split=args.split, selections=selections,
                                  estimator_overrides=overrides, device=args.device,
                                  max_frames=args.max_frames, scoring=args.scoring,
                                  precision=args.precision, progress=not args.no_progress,
                                  depth=args.depth, depth_noise=args.depth_noise)
    except ValueError as exc:
        parser.error(str(exc))
    if args.threads is not None and args.threads < 1:
        parser.error('--threads must be >= 1')
    return EvaluateCommand(jobs=tuple(zip(checkpoints, args.scene)), config=config,
                           out_dir=args.out, threads=args.threads)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``dsac_evaluate``."""
    logging.basicConfig(level=logging.INFO, format='%(levelname)s %(name)s: %(message)s')
    command = parse_args(argv)
    if command.threads is not None:
        import torch
        torch.set_num_threads(command.threads)
    results = []
    for checkpoint, scene in command.jobs:
        try:
            results.append(evaluate(checkpoint, scene, command.config))
        except (FileNotFoundError, ValueError) as exc:  # CheckpointError is a ValueError
            _LOG.error('%s with %s: %s', scene, checkpoint, exc)
            return 2
    print(format_table(results))
    if command.out_dir is not None:
        files = write_report(results, command.out_dir)
        print('\nwrote ' + ', '.join(str(p) for p in files.values()))
    return 0


if __name__ == '__main__':
    sys.exit(main())
