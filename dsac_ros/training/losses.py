"""Training losses and score-regression samples (paper Sec. 4.1).

Frames: scene coordinates are world points in metres; poses are T_cw (world-to-camera);
pixels follow OpenCV (cell centres from ``geometry.camera.cell_centers``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from dsac_ros.geometry.camera import backproject, cell_centers, project
from dsac_ros.geometry.transforms import invert_se3, pose_loss, transform_points
from dsac_ros.training.config import ReprojectionPhase


def coordinate_loss(pred_b3hw: Tensor, target_b3hw: Tensor) -> Tensor:
    """Mean Euclidean distance ||y - y*|| (metres) over the cells with a finite target.

    pred_b3hw, target_b3hw: (B, 3, h, w), target NaN where unknown. Computed in float32 (the
    prediction may come from an autocast forward). Returns a scalar (0 with a gradient when
    no cell is valid).
    """
    if pred_b3hw.shape != target_b3hw.shape:
        raise ValueError(f'prediction {tuple(pred_b3hw.shape)} and target '
                         f'{tuple(target_b3hw.shape)} differ in shape')
    valid = torch.isfinite(target_b3hw).all(dim=1)  # (B, h, w)
    diff = pred_b3hw.float() - torch.nan_to_num(target_b3hw.float())
    dist = diff.square().sum(dim=1).clamp_min(1e-12).sqrt()
    n = valid.sum()
    return torch.where(valid, dist, torch.zeros_like(dist)).sum() / n.clamp_min(1)


def reprojection_init_loss(pred_b3hw: Tensor, T_cw_b44: Tensor, K_b33: Tensor,
                           stride: int = 8, clamp_px: float = 100.0, min_depth_m: float = 0.1,
                           depth_prior_m: float = 3.0) -> tuple[Tensor, Tensor]:
    """Initialisation loss for scenes without depth: scene coordinates from poses only.

    For each cell the prediction y is moved to the camera with the ground-truth pose and
    projected. Where it lies at least ``min_depth_m`` in front of the camera and reprojects
    within ``clamp_px`` of its cell centre, the loss is the reprojection error in pixels.
    Elsewhere (behind the camera, or a gross outlier) the loss pulls y towards the point
    ``depth_prior_m`` along the cell's viewing ray, as a distance in metres scaled by
    ``clamp_px / depth_prior_m`` so that both terms have comparable gradients.

    Args:
        pred_b3hw: (B, 3, h, w) predicted world coordinates, metres.
        T_cw_b44: (B, 4, 4) ground-truth world-to-camera poses.
        K_b33: (B, 3, 3) or (3, 3) intrinsics of the full-resolution image, pixels.

    Returns:
        (loss scalar, per-cell reprojection error (B, h, w) in pixels, detached; clamped
        cells hold ``clamp_px``).
    """
    B, _, h, w = pred_b3hw.shape
    y = pred_b3hw.float().permute(0, 2, 3, 1).reshape(B, h * w, 3)
    pix = cell_centers(h, w, stride, device=y.device, dtype=torch.float32)
    pix = pix.permute(1, 2, 0).reshape(1, h * w, 2).expand(B, h * w, 2)
    per_cell, err = reprojection_init_terms(y, pix, T_cw_b44, K_b33, clamp_px, min_depth_m,
                                            depth_prior_m)
    return per_cell.mean(), err.reshape(B, h, w)


def reprojection_init_terms(y_bm3: Tensor, pix_bm2: Tensor, T_cw_b44: Tensor, K_b33: Tensor,
                            clamp_px: float = 100.0, min_depth_m: float = 0.1,
                            depth_prior_m: float = 3.0) -> tuple[Tensor, Tensor]:
    """The terms of `reprojection_init_loss` for M points per camera: y_bm3 world points
    (metres) seen at pixels pix_bm2 by cameras T_cw_b44 / K_b33 ((B, 3, 3) or (3, 3)).
    Returns (per-point loss (B, M), reprojection error (B, M) px, detached; clamped points
    hold ``clamp_px``)."""
    B, M, _ = y_bm3.shape
    device = y_bm3.device
    y = y_bm3.float()
    T = T_cw_b44.to(device=device, dtype=torch.float32)
    K = K_b33.to(device=device, dtype=torch.float32).expand(B, 3, 3)
    pix = pix_bm2.to(device=device, dtype=torch.float32)
    cam = transform_points(T, y)  # (B, M, 3)
    z = cam[..., 2]
    front = z > min_depth_m
    safe = torch.where(front[..., None], cam, torch.ones_like(cam))
    err = (project(safe, K[:, None]) - pix).norm(dim=-1)
    good = front & (err < clamp_px)
    # Depth-prior target on the viewing ray of each point, in the world frame.
    prior_cam = backproject(pix, torch.full_like(z, depth_prior_m), K[:, None])
    prior_world = transform_points(invert_se3(T), prior_cam)
    prior_dist = (y - prior_world.detach()).norm(dim=-1) * (clamp_px / depth_prior_m)
    per_point = torch.where(good, err, prior_dist)
    return per_point, torch.where(good, err, torch.full_like(err, clamp_px)).detach()


def guarded_reprojection_loss(pred_m3: Tensor, target_m3: Tensor, pix_m2: Tensor,
                              T_cw_m44: Tensor, K_m33: Tensor, phase: ReprojectionPhase
                              ) -> tuple[Tensor, Tensor]:
    """Reprojection loss for cells that also have a depth target (`ReprojectionPhase`: the
    last part of stage 1 and of the head stage).

    A cell whose prediction lies within ``phase.guard_m`` of its depth target contributes its
    reprojection error (pixels, from `reprojection_init_terms` with ``phase.clamp_px``) times
    ``phase.metres_per_px``; any other cell its distance to the target in metres, which pulls
    it back into the guard. Errors along the viewing ray then cost nothing, as they cost PnP
    nothing.

    Args:
        pred_m3: (M, 3) predicted world coordinates, metres. target_m3: (M, 3) finite depth
            targets. pix_m2: (M, 2) cell centres (pixels). T_cw_m44 (M, 4, 4) / K_m33 (M, 3, 3):
            each cell's camera.
    Returns:
        (scalar loss, (M,) distance to the target in metres, detached).
    """
    dist = (pred_m3.float() - target_m3.float()).norm(dim=1)
    per_cell, _ = reprojection_init_terms(pred_m3[:, None], pix_m2[:, None], T_cw_m44, K_m33,
                                          clamp_px=phase.clamp_px)
    loss = torch.where(dist < phase.guard_m, per_cell[:, 0] * phase.metres_per_px, dist)
    return loss.mean(), dist.detach()


def score_targets(T_cw_est_b44: Tensor, T_cw_gt_b44: Tensor, beta: float = 10.0) -> Tensor:
    """s* = -beta * pose_loss (max of degrees and centimetres), paper Sec. 4.1. (B,)."""
    return -beta * pose_loss(T_cw_est_b44, T_cw_gt_b44)
