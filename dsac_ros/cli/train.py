"""dsac_train: train the coordinate and score CNNs (componentwise, then end-to-end).

Examples::

    dsac_train --scene /data/7scenes/chess --out runs/chess --minutes 30
    dsac_train --scene S --out runs/base --stage coords --minutes 25
    dsac_train --scene S --out runs/dsac --init runs/base/checkpoint.pt --stage e2e \\
        --selection dsac --minutes 3
    dsac_train --scene S --out runs/rgbd --init runs/base/checkpoint.pt --stage e2e \\
        --e2e-depth --inlier-threshold-cm 10 --minutes 3     # through the RGB-D estimator
    python -m torch.distributed.run --nproc_per_node 2 -m dsac_ros.cli.train --scene S --out R

Rerunning with the same --out resumes from its checkpoint. Exit codes: 0 done, 2 bad input,
130 / 143 interrupted by SIGINT / SIGTERM (state saved).
"""

from __future__ import annotations

import argparse
from dataclasses import replace
import logging
import os
from pathlib import Path
import signal
import sys
import time

from dsac_ros.dsac import Selection
from dsac_ros.models.checkpoint import CheckpointError
from dsac_ros.models.scene_coordinate_net import SceneCoordinateNetConfig
from dsac_ros.training.augmentation import AugmentationConfig
from dsac_ros.training.config import (
    Precision,
    Preset,
    Stage,
    all_stages,
    preset_config,
    with_budget,
)

_LOG = logging.getLogger('dsac_train')


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        allow_abbrev=False, prog='dsac_train', description=__doc__.split('\n\n')[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument('--scene', type=Path, help='scene root in the 7-Scenes layout')
    src.add_argument('--bag', type=Path, help='rosbag2 / ROS 1 bag to extract and train on')
    p.add_argument('--image-topic', help='bag: colour image topic')
    p.add_argument('--depth-topic', help='bag: depth image topic (optional)')
    p.add_argument('--camera-info-topic', help='bag: camera_info topic')
    p.add_argument('--pose-topic', help='bag: camera pose topic (T_wc)')
    p.add_argument('--camera-frame', help='bag: TF optical frame (pose from TF instead)')
    p.add_argument('--world-frame', default='map', help='bag: TF world frame')
    p.add_argument('--out', type=Path, required=True, help='output folder (resumes if present)')
    p.add_argument('--stage', choices=[x.value for x in Stage] + ['all'], default='all')
    p.add_argument('--selection', choices=['dsac', 'softam'], default='dsac',
                   help='end-to-end selection (paper Sec. 2.2)')
    p.add_argument('--preset', choices=[x.value for x in Preset], default='default')
    p.add_argument('--minutes', type=float, help='time budget for the selected stages '
                   '(with --stage all: 65%% coords, 15%% head, 5%% score, 15%% e2e)')
    p.add_argument('--iterations', type=int, help='steps per selected stage')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--device', default='auto', help="'auto', 'cpu', 'cuda' or 'cuda:N'")
    p.add_argument('--precision', choices=[x.value for x in Precision], default='auto')
    p.add_argument('--coord-net', choices=['default', 'small'], default='default',
                   help='architecture of a new coordinate net (small: tests, quick looks)')
    p.add_argument('--init', type=Path, help='start the networks from this checkpoint')
    p.add_argument('--encoder', default='shipped',
                   help="pretrained encoder file (dsac_pretrain) a new coordinate net starts "
                        "from; 'shipped': the package's (default preset and net), 'none': "
                        "random initialisation")
    p.add_argument('--no-depth', action='store_true',
                   help='ignore depth: reprojection initialisation from poses only')
    p.add_argument('--max-frames', type=int, help='use at most this many training frames')
    p.add_argument('--validation-fraction', type=float, default=0.1,
                   help='hold the last this share of every training sequence out of training, '
                        'for the held-out checks and the scoring choice (0: none)')
    p.add_argument('--batch-size', type=int, help='stage 1 batch size')
    p.add_argument('--crop-fraction', type=float,
                   help="stage 1: train on a random window of every image, this share of its "
                        "height and width (1: whole frames; default: the preset's)")
    p.add_argument('--freeze-stem', action=argparse.BooleanOptionalAction, default=None,
                   help="stage 1: keep the encoder's strided stem as the pretrained encoder "
                        "left it and train the rest (default: the preset's)")
    p.add_argument('--head-copies', type=int,
                   help='head stage: augmented copies of every training frame (camera roll, '
                        "zoom, exposure) buffered besides the frame itself (default: the "
                        "preset's)")
    p.add_argument('--novel-views', type=int,
                   help='views of every training frame from a camera moved 1.5-25 cm and '
                        'turned 1.5-25 deg (--novel-view-magnitude), rendered from its depth, '
                        "trained on besides the frames (default: the preset's)")
    p.add_argument('--novel-view-magnitude', type=float,
                   help='novel views: the largest move, in cm and in deg (default: the '
                        "preset's, 25; measured not to pay at 40, docs/BENCHMARKS.md)")
    p.add_argument('--e2e-frames', type=int, help='images per end-to-end step')
    p.add_argument('--hypotheses', type=int, help='hypotheses per image in end-to-end training')
    p.add_argument('--e2e-lr', type=float,
                   help='end-to-end coordinate learning rate lr0 of lr0 / (1 + 0.1 t), on '
                        "per-millimetre gradients (default: the preset's)")
    p.add_argument('--augment', action='store_true',
                   help='stage 1: camera roll +-30 deg, zoom 2/3..3/2 and photometric '
                        'augmentation with exact targets (default: exposure jitter only; '
                        'slower to converge, for long budgets)')
    p.add_argument('--e2e-augment', action=argparse.BooleanOptionalAction, default=None,
                   help='end-to-end: in-plane rotation / zoom / photometric augmentation '
                        "(default: the preset's)")
    p.add_argument('--inlier-threshold', type=float,
                   help='inlier threshold tau (px of the training images) that end-to-end '
                        'training uses and the model is deployed with (default: 10 px at 640 '
                        'px width, scaled to the image width)')
    p.add_argument('--e2e-depth', action='store_true',
                   help='end-to-end training through the RGB-D estimator (Kabsch hypotheses, 3D '
                        "inliers) with the training frames' depth")
    p.add_argument('--inlier-threshold-cm', type=float,
                   help='RGB-D inlier threshold (cm) of --e2e-depth training, stored in the '
                        "checkpoint as the model's default (default 10)")
    p.add_argument('--checkpoint-every', type=int, default=500, help='steps between saves')
    p.add_argument('--checkpoint-seconds', type=float, default=120.0,
                   help='seconds between saves')
    p.add_argument('--log-every', type=int, default=20, help='steps per log.csv row')
    p.add_argument('--threads', type=int, help='torch CPU threads')
    p.add_argument('--no-progress', action='store_true', help='no tqdm progress bar')
    p.add_argument('-v', '--verbose', action='store_true')
    return p


def _scene_from_bag(args: argparse.Namespace) -> Path:
    """Extract the bag to <out>/scene (7-Scenes layout) once; reuse it on resume."""
    # lazy: rosbags import
    from dsac_ros.data.bag_extraction import BagExtractionConfig, extract_bag
    if not args.image_topic or not args.camera_info_topic:
        raise ValueError('--bag needs --image-topic and --camera-info-topic')
    scene = args.out / 'scene'
    if int(os.environ.get('RANK', '0')) > 0:  # torchrun: rank 0 extracts, the others wait
        deadline = time.monotonic() + 3600.0
        while not (scene / 'TrainSplit.txt').exists():
            if time.monotonic() > deadline:
                raise ValueError(f'rank 0 did not extract {args.bag} to {scene} within 1 h')
            time.sleep(1.0)
    if (scene / 'TrainSplit.txt').exists():
        return scene
    bag_config = BagExtractionConfig(image_topic=args.image_topic,
                                     camera_info_topic=args.camera_info_topic,
                                     pose_topic=args.pose_topic, camera_frame=args.camera_frame,
                                     world_frame=args.world_frame, depth_topic=args.depth_topic)
    summary = extract_bag(args.bag, scene, bag_config)
    _LOG.info('extracted %s to %s: %s', args.bag, scene, summary)
    return scene


def config_from_args(args: argparse.Namespace, scene: Path):
    """argparse namespace -> TrainConfig (no training)."""
    stages = all_stages(args.preset) if args.stage == 'all' else (Stage(args.stage),)
    config = preset_config(args.preset, scene, args.out, stages=stages, seed=args.seed,
                           device=args.device, precision=Precision(args.precision),
                           use_depth=not args.no_depth, max_frames=args.max_frames,
                           validation_fraction=args.validation_fraction,
                           init_checkpoint=args.init, checkpoint_every=args.checkpoint_every,
                           checkpoint_seconds=args.checkpoint_seconds,
                           log_every=args.log_every, threads=args.threads,
                           progress_bar=not args.no_progress,
                           coord_net=(SceneCoordinateNetConfig.small() if args.coord_net == 'small'
                                      else SceneCoordinateNetConfig()))
    e2e = replace(config.e2e, selection=Selection(args.selection))
    if args.e2e_frames:
        e2e = replace(e2e, frames_per_step=args.e2e_frames)
    if args.hypotheses:
        e2e = replace(e2e, num_hypotheses=args.hypotheses)
    if args.e2e_lr is not None:
        e2e = replace(e2e, coord_lr=replace(e2e.coord_lr, lr=args.e2e_lr))
    if args.e2e_augment is not None:
        e2e = replace(e2e, augment=args.e2e_augment)
    if args.inlier_threshold is not None:
        config = replace(config, inlier_threshold_px=args.inlier_threshold)
    if args.e2e_depth:
        e2e = replace(e2e, depth=True)
    if args.inlier_threshold_cm is not None:
        e2e = replace(e2e, inlier_threshold_cm=args.inlier_threshold_cm)
    coords = config.coords
    if args.augment:
        coords = replace(coords, augmentation=AugmentationConfig())
    if args.batch_size:
        coords = replace(coords, batch_size=args.batch_size)
    if args.crop_fraction is not None:
        coords = replace(coords, crop_fraction=args.crop_fraction)
    if args.freeze_stem is not None:
        coords = replace(coords, freeze_stem=args.freeze_stem)
    head = config.head
    if args.head_copies is not None:
        head = replace(head, augmented_copies=args.head_copies)
    views = config.novel_views
    if args.novel_views is not None:
        views = replace(views, copies=args.novel_views)
    if args.novel_view_magnitude is not None:
        views = replace(views, max_magnitude=args.novel_view_magnitude)
    config = replace(config, e2e=e2e, coords=coords, head=head, novel_views=views)
    if args.encoder == 'none':
        config = replace(config, encoder=None)
    elif args.encoder != 'shipped':
        config = replace(config, encoder=Path(args.encoder))
    return with_budget(config, minutes=args.minutes, iterations=args.iterations)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format='%(asctime)s %(levelname)s %(name)s: %(message)s')
    from dsac_ros.training.trainer import TrainingInterruptedError, train
    try:
        scene = args.scene if args.scene is not None else _scene_from_bag(args)
        config = config_from_args(args, scene)
        result = train(config)
    except TrainingInterruptedError as exc:
        _LOG.warning('%s', exc)
        return 128 + int(exc.signum) if exc.signum in (signal.SIGINT, signal.SIGTERM) else 1
    except (ValueError, FileNotFoundError, CheckpointError) as exc:
        _LOG.error('%s', exc)
        return 2
    _LOG.info('done: stages %s, steps %s, model %s', result.stages_done, result.steps,
              result.model)
    return 0


if __name__ == '__main__':
    sys.exit(main())
