"""Diagnosis: is a model's pose error the estimator's search or the coordinates' bias?

For every test frame of a scene, the estimator's pose (RANSAC, the model's own settings) is
compared with poses that OpenCV's Levenberg-Marquardt (`cv2.solvePnP`, iterative, started at
the estimator's pose) fits to cell sets chosen with knowledge of the truth:

* the estimator's own inliers (cells within tau px under its pose): OpenCV's check of the
  estimator's refinement;
* cells within 2 / tau px under the TRUE pose (the consensus the true pose has);
* cells whose predicted coordinate lies within 2 / 4 cm of the true one.

It also counts the inliers each pose has. When the estimate has more inliers than the true pose
on most frames, the maximum-consensus pose itself is wrong: biased cells that agree with a
shifted pose outnumber the correct ones, and no sampling, scoring or refinement of those
coordinates recovers the truth. Only better coordinates do.

    .venv/bin/python benchmarks/inlier_oracle.py --checkpoint runs/room/model.pt \
        --scene /tmp/bench_cache/revisit_a [--split test] [--frames 200]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np
import torch

from dsac_ros.evaluation.metrics import frame_errors, percent_within
from dsac_ros.geometry.camera import cell_centers
from dsac_ros.geometry.scoring import reprojection_errors
from dsac_ros.relocalizer import Relocalizer
from dsac_ros.training.data import load_training_set

MIN_CELLS = 6  # cv2.solvePnP's iterative solver needs at least this many points


def reprojection_px(T_cw_44: np.ndarray, points_n3: np.ndarray, pixels_n2: np.ndarray,
                    K_33: np.ndarray) -> np.ndarray:
    """(N,) reprojection error (pixels) of world points under T_cw (the estimator's own
    function: points behind the camera get its maximum)."""
    return reprojection_errors(*(torch.from_numpy(a) for a in (T_cw_44, points_n3, pixels_n2,
                                                               K_33))).numpy()


def opencv_pose(points_n3: np.ndarray, pixels_n2: np.ndarray, K_33: np.ndarray,
                T_cw_start_44: np.ndarray) -> np.ndarray:
    """T_cw (4, 4) from cv2.solvePnP (iterative LM from a start pose); NaN with too few cells."""
    if len(points_n3) < MIN_CELLS:
        return np.full((4, 4), np.nan)
    rvec, _ = cv2.Rodrigues(T_cw_start_44[:3, :3])
    tvec = T_cw_start_44[:3, 3].reshape(3, 1).copy()
    ok, rvec, tvec = cv2.solvePnP(points_n3, pixels_n2, K_33, None, rvec, tvec,
                                  useExtrinsicGuess=True, flags=cv2.SOLVEPNP_ITERATIVE)
    if not ok:
        return np.full((4, 4), np.nan)
    T = np.eye(4)
    T[:3, :3] = cv2.Rodrigues(rvec)[0]
    T[:3, 3] = tvec.ravel()
    return T


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--checkpoint', required=True)
    parser.add_argument('--scene', required=True, type=Path)
    parser.add_argument('--split', default='test', choices=('test', 'train'))
    parser.add_argument('--frames', type=int, default=200)
    parser.add_argument('--batch', type=int, default=20)
    args = parser.parse_args()

    relocalizer = Relocalizer.from_checkpoint(args.checkpoint)
    tau = relocalizer.estimator_config.inlier_threshold_px
    data = load_training_set(args.scene, args.split, max_frames=args.frames)
    if data.coords_b3hw is None:
        raise SystemExit(f'{args.scene} has no depth: the oracle needs true coordinates')
    K = data.K_33.double().numpy()
    images = [image.permute(1, 2, 0).numpy() for image in data.images_b3hw]
    h, w = data.coords_b3hw.shape[-2:]
    pixels = cell_centers(h, w).double().numpy().reshape(2, -1).T

    names = ('estimator', f'its inliers (< {tau:g} px), OpenCV LM',
             '< 2 px under the true pose', f'< {tau:g} px under the true pose',
             'true coordinate error < 2 cm', 'true coordinate error < 4 cm')
    poses = {name: [] for name in names}
    inliers = []  # (estimate at tau, truth at tau, estimate at 2 px, truth at 2 px)
    for start in range(0, len(images), args.batch):
        chunk = images[start:start + args.batch]
        prediction = relocalizer.predict(chunk, [K] * len(chunk))
        for offset, loc in enumerate(relocalizer.estimate(prediction, 'ransac')):
            frame = start + offset
            T_cw_gt = data.T_cw_b44[frame].double().numpy()
            predicted = prediction.scene_coords_b3hw[offset].float().cpu().numpy()
            predicted = predicted.reshape(3, -1).T.astype(np.float64)
            truth = data.coords_b3hw[frame].numpy().reshape(3, -1).T.astype(np.float64)
            known = np.isfinite(truth).all(axis=1)
            coord_err = np.where(known, np.linalg.norm(predicted - truth, axis=1), np.inf)
            T_cw_est = loc.T_cw if loc.valid else T_cw_gt  # a start for LM; errors say the rest
            at_est = reprojection_px(T_cw_est, predicted, pixels, K)
            at_gt = reprojection_px(T_cw_gt, predicted, pixels, K)
            inliers.append(((at_est < tau).sum(), (at_gt < tau).sum(),
                            (at_est < 2).sum(), (at_gt < 2).sum()))
            poses['estimator'].append(loc.T_cw if loc.valid else np.full((4, 4), np.nan))
            # Without an estimate there are no inliers of its own (too few cells: no pose).
            its_inliers = (at_est < tau) & loc.valid
            cell_sets = (its_inliers, at_gt < 2, at_gt < tau, coord_err < 0.02,
                         coord_err < 0.04)
            for name, cells in zip(names[1:], cell_sets):
                poses[name].append(opencv_pose(predicted[cells], pixels[cells], K, T_cw_est))

    T_cw_gt_all = data.T_cw_b44.double().numpy()
    print(f'{args.checkpoint} on {args.scene.name} ({args.split}, {len(images)} frames), '
          f'tau {tau:g} px')
    print('| cells the pose is fitted to | 5 cm / 5 deg | 2 cm / 2 deg | median |')
    print('|---|---|---|---|')
    for name in names:
        deg, m = frame_errors(np.stack(poses[name]), T_cw_gt_all)
        print(f'| {name} | {percent_within(deg, m, 0.05, 5):.1f} % | '
              f'{percent_within(deg, m, 0.02, 2):.1f} % | '
              f'{100 * np.median(m):.2f} cm, {np.median(deg):.2f} deg |')
    counts = np.array(inliers, dtype=np.float64)
    for col, label in ((0, f'{tau:g} px'), (2, '2 px')):
        more = 100 * (counts[:, col] > counts[:, col + 1]).mean()
        print(f'inliers within {label}: estimate {np.median(counts[:, col]):.0f}, truth '
              f'{np.median(counts[:, col + 1]):.0f} (medians); the estimate has more on '
              f'{more:.0f} % of frames')


if __name__ == '__main__':
    main()
