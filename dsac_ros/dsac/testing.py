"""Test helper: synthetic scene-coordinate maps with a known pose, for the tests and benchmarks
of the estimator (not used by inference or training).

A map is built by back-projecting a random depth at the cell centres (with pixel noise), moving
the points to the world frame with the known T_wc, and replacing a fraction of cells by outliers
(random world points in the scene's bounding box, which almost never reproject near their cell).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from dsac_ros.geometry.camera import backproject, cell_centers
from dsac_ros.geometry.transforms import axis_angle_to_matrix, invert_se3, make_se3


@dataclass(frozen=True)
class CorrespondenceCaseConfig:
    """One synthetic map: (height, width) cells of stride `stride`, image (stride*W, stride*H).

    Attributes:
        height, width: map size in cells.
        stride: output stride (pixels per cell).
        focal_px: focal length (pixels) of the full-resolution camera.
        depth_range_m: per-cell depth drawn uniformly in this range (metres).
        noise_px: std of the Gaussian pixel noise of the inliers.
        outlier_fraction: fraction of cells replaced by outliers.
        invalid_fraction: fraction of cells set to NaN (invalid).
        max_rotation_deg: the camera rotation angle is uniform in [0, this].
    """

    height: int = 30
    width: int = 40
    stride: int = 8
    focal_px: float | None = None
    depth_range_m: tuple[float, float] = (1.5, 4.0)
    noise_px: float = 1.0
    outlier_fraction: float = 0.5
    invalid_fraction: float = 0.0
    max_rotation_deg: float = 60.0


@dataclass(frozen=True)
class CorrespondenceCase:
    """Generated maps (float64 tensors on CPU): scene_coords_b3hw, K_b33, T_cw_b44 (ground
    truth world-to-camera), inlier_bhw (bool, True for cells that are true correspondences),
    pixels_2hw (cell centres), depth_bhw (the true depth of every cell centre in metres, as a
    depth camera registered to the image would measure it, outlier and invalid cells
    included: the RGB-D input)."""

    scene_coords_b3hw: torch.Tensor
    K_b33: torch.Tensor
    T_cw_b44: torch.Tensor
    inlier_bhw: torch.Tensor
    pixels_2hw: torch.Tensor
    depth_bhw: torch.Tensor


def make_correspondence_case(config: CorrespondenceCaseConfig, batch: int = 1,
                             seed: int = 0) -> CorrespondenceCase:
    """Generate `batch` maps with independent random poses, depths, noise and outliers."""
    rng = np.random.default_rng(seed)
    H, W, s = config.height, config.width, config.stride
    img_w, img_h = W * s, H * s
    f = config.focal_px if config.focal_px is not None else 0.8 * img_w
    K = torch.tensor([[f, 0.0, img_w / 2 - 0.5], [0.0, f, img_h / 2 - 0.5], [0.0, 0.0, 1.0]],
                     dtype=torch.float64)
    pixels_2hw = cell_centers(H, W, s, dtype=torch.float64)
    pix_hw2 = pixels_2hw.permute(1, 2, 0)
    maps, poses, inliers, depths = [], [], [], []
    for _ in range(batch):  # data generation, not a hot path
        axis = rng.normal(size=3)
        axis /= np.linalg.norm(axis)
        angle = np.deg2rad(rng.uniform(0.0, config.max_rotation_deg))
        R_wc = axis_angle_to_matrix(torch.tensor(axis * angle))
        c_wc = torch.tensor(rng.uniform(-2.0, 2.0, size=3))
        T_wc = make_se3(R_wc, c_wc)
        depth = torch.tensor(rng.uniform(*config.depth_range_m, size=(H, W)))
        noisy = pix_hw2 + torch.tensor(rng.normal(scale=config.noise_px, size=(H, W, 2)))
        cam = backproject(noisy, depth, K)
        world = cam @ R_wc.T + c_wc
        lo, hi = world.reshape(-1, 3).min(0).values, world.reshape(-1, 3).max(0).values
        outlier = torch.tensor(rng.random((H, W)) < config.outlier_fraction)
        random_pts = lo + (hi - lo) * torch.tensor(rng.random((H, W, 3)))
        world = torch.where(outlier[..., None], random_pts, world)
        invalid = torch.tensor(rng.random((H, W)) < config.invalid_fraction)
        world = torch.where(invalid[..., None], torch.full_like(world, float('nan')), world)
        maps.append(world.permute(2, 0, 1))
        poses.append(invert_se3(T_wc))
        inliers.append(~outlier & ~invalid)
        depths.append(depth)
    return CorrespondenceCase(
        scene_coords_b3hw=torch.stack(maps).contiguous(),
        K_b33=K.expand(batch, 3, 3).clone(),
        T_cw_b44=torch.stack(poses),
        inlier_bhw=torch.stack(inliers),
        pixels_2hw=pixels_2hw,
        depth_bhw=torch.stack(depths),
    )
