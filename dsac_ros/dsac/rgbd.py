"""RGB-D mode of the DSAC estimator: 3D-3D correspondences from measured depth (as in DSAC*).

With a depth image registered to the colour image, every cell i gives a camera point
p_i = backproject(cell centre, depth_i, K) (camera frame, metres) beside its predicted scene
coordinate y_i (world frame). `DsacEstimator` (`dsac_ros.dsac.estimator`) runs its pipeline
unchanged (sampling seed, scoring, RANSAC / SoftAM / DSAC selection, min_inliers, the expected
loss) with three steps delegated to `DepthCells`:

1. hypotheses (`DepthCells.hypotheses`): minimal sets of 3 distinct valid cells, drawn
   `rgbd_draws_per_hypothesis` times per hypothesis. A set is rejected when it is not rigid
   (a pairwise distance differs by 2 tau or more between the camera and the world triangle:
   no pose puts all three within tau) or degenerate (a triangle whose smallest altitude is
   below tau, in either frame: its rotation about the long side is not determined at the
   noise level). The first `num_hypotheses` surviving sets of each image give T_cw by Kabsch
   (`geometry.kabsch`, differentiable); a hypothesis is valid when all three of its cells
   then lie within tau. Images with too few surviving sets get invalid hypotheses (identity).
2. errors (`DepthCells.error_maps`): e_i = |R y_i + t - p_i|, the 3D distance in the camera
   frame, multiplied by `error_scale = inlier_threshold_px / tau`, so that tau reads as the
   pixel threshold: inliers (e < inlier_threshold_px), the soft inlier count (its sharpness
   relative to the threshold is the RGB one), the clamp at max_reprojection_error_px (10 tau
   with the defaults) and score functions apply as they are.
3. refinement (`DepthCells.refine`): Kabsch on ALL inliers of the current pose (closed form,
   O(cells)), up to `refinement_steps` rounds, stopping like the RGB refinement (fewer than
   `min_refinement_inliers` inliers, or the inlier set unchanged); no polish step is needed.
   The covariance (`DepthCells.information`) is sigma^2 (J^T J)^-1 of the 3D residuals of
   the final inliers, sigma^2 = sum |r|^2 / (3 n - 6) in m^2.

Cells without valid depth (NaN, inf, <= 0) are invalid, like cells without a scene coordinate.
tau is `inlier_threshold_cm` (`dsac_ros.dsac.config.rgbd_threshold_cm`).

Depth images of any resolution registered to the colour image become cell depths with
`cell_depths` (the depth at each cell centre; holes filled from the cell's footprint).

Frames: T_cw world-to-camera (x_cam = R x_world + t), OpenCV camera axes; metres.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor
import torch.nn.functional as F

from dsac_ros.dsac.config import EstimatorConfig, rgbd_threshold_cm
from dsac_ros.dsac.refinement import still_active
from dsac_ros.dsac.sampling import sample_minimal_sets
from dsac_ros.geometry.camera import backproject, cell_centers
from dsac_ros.geometry.kabsch import kabsch
from dsac_ros.geometry.scoring import ScratchBuffers, transform_columns
from dsac_ros.geometry.transforms import hat, transform_points

__all__ = ['DepthCells', 'cell_depths']

# A cell whose centre is a hole takes the median of its footprint when at least this share of
# the footprint is valid, else it has no depth.
MIN_VALID_FOOTPRINT = 0.5
# A fixed, well-conditioned triangle stands in for rejected sets inside Kabsch, so that no
# degenerate SVD enters the graph (its gradient could be NaN even where it is masked out).
_STAND_IN = ((0.0, 0.0, 1.0), (1.0, 0.0, 1.0), (0.0, 2.0, 1.0))
# Vertex pairs of a triangle's sides.
_SIDE_I, _SIDE_J = (0, 1, 2), (1, 2, 0)


def cell_depths(depth_bhw: Tensor, grid_hw: tuple[int, int], stride: int = 8,
                min_valid_fraction: float = MIN_VALID_FOOTPRINT) -> Tensor:
    """Depth images registered to the colour image, at any resolution -> depth per cell.

    The depth is resampled (nearest pixel, pixel centres aligned) to the network input size
    (h * stride, w * stride); each cell takes the depth of its centre pixel (stride j +
    stride // 2, stride i + stride // 2), the pixel its scene coordinate is predicted for
    (and its training target is made from, `data.seven_scenes.scene_coordinates_from_depth`).
    Where that pixel is a hole, the cell takes the median of the valid depths in its
    stride x stride footprint if at least `min_valid_fraction` of it is valid (a median
    keeps an edge's depth on one side of it instead of inventing a point between), else it
    is invalid.

    Args:
        depth_bhw: (B, H', W') depth in metres along the optical axis (z); NaN, inf or <= 0
            marks an invalid pixel. Same field of view as the colour image.
        grid_hw: (h, w) cells of the scene-coordinate map.
        stride: pixels per cell at the network input.

    Returns:
        (B, h, w) depth of each cell centre in metres, NaN where invalid; dtype of the input.
    """
    if not isinstance(depth_bhw, Tensor) or depth_bhw.dim() != 3:
        shape = tuple(depth_bhw.shape) if isinstance(depth_bhw, Tensor) else type(depth_bhw)
        raise ValueError(f'depth_bhw must be a (B, H, W) tensor, got {shape}')
    B = depth_bhw.shape[0]
    h, w = grid_hw
    depth = depth_bhw if depth_bhw.is_floating_point() else depth_bhw.float()
    depth = torch.where(torch.isfinite(depth) & (depth > 0), depth,
                        torch.full_like(depth, torch.nan))
    if depth.shape[-2:] != (h * stride, w * stride):
        depth = F.interpolate(depth[:, None], size=(h * stride, w * stride),
                              mode='nearest-exact')[:, 0]
    blocks = depth.reshape(B, h, stride, w, stride).permute(0, 1, 3, 2, 4)
    centre = blocks[..., stride // 2, stride // 2]
    blocks = blocks.reshape(B, h, w, stride * stride)
    count = torch.isfinite(blocks).sum(dim=-1)
    median = torch.nanmedian(blocks, dim=-1).values
    enough = count >= max(1, int(round(min_valid_fraction * stride * stride)))
    filled = torch.where(enough, median, torch.full_like(median, torch.nan))
    return torch.where(torch.isfinite(centre), centre, filled)


def _gather_sets(points_bm3: Tensor, cells_bnk: Tensor) -> Tensor:
    """Points (B, N, k, 3) of the cells (B, N, k) of each set."""
    B, N, k = cells_bnk.shape
    index = cells_bnk.reshape(B, N * k, 1).expand(-1, -1, 3)
    return torch.gather(points_bm3, 1, index).reshape(B, N, k, 3)


def _sides(tri_bn33: Tensor) -> Tensor:
    """Side lengths (B, N, 3) of triangles (B, N, 3 vertices, 3)."""
    return (tri_bn33[..., _SIDE_I, :] - tri_bn33[..., _SIDE_J, :]).norm(dim=-1)


def _smallest_altitude(tri_bn33: Tensor, sides_bn3: Tensor) -> Tensor:
    """Smallest altitude (B, N) of triangles: twice the area over the longest side."""
    a = tri_bn33[..., 1, :] - tri_bn33[..., 0, :]
    b = tri_bn33[..., 2, :] - tri_bn33[..., 0, :]
    twice_area = torch.linalg.cross(a, b).norm(dim=-1)
    return twice_area / sides_bn3.amax(dim=-1).clamp(min=1e-12)


@dataclass(frozen=True)
class DepthCells:
    """Camera points of the cells from measured depth: the estimator's RGB-D mode.

    Attributes:
        points_cam_bm3: (B, M, 3) camera-frame points (metres, OpenCV axes) of the M cells in
            row-major cell order; zeros where invalid.
        points_cam_b3m: the same, (B, 3, M) contiguous (error maps).
        valid_bm: (B, M) bool, True where the cell has a valid depth.
        threshold_m: inlier threshold tau (metres).
        error_scale: threshold-equivalent pixels per metre of 3D distance
            (inlier_threshold_px / tau): errors are reported in these units.
    """

    points_cam_bm3: Tensor
    points_cam_b3m: Tensor
    valid_bm: Tensor
    threshold_m: float
    error_scale: float

    @classmethod
    def from_depth(cls, depth_bhw: Tensor, K_b33: Tensor, stride: int,
                   config: EstimatorConfig) -> DepthCells:
        """Camera points of the cells of a (B, H, W) cell-depth map (metres, NaN / <= 0 =
        invalid; `cell_depths` makes one from a depth image) with the (B, 3, 3) intrinsics of
        the full-resolution image; same dtype / device as K."""
        B, H, W = depth_bhw.shape
        depth = depth_bhw.to(K_b33).reshape(B, H * W)
        valid = torch.isfinite(depth) & (depth > 0)
        depth = torch.where(valid, depth, torch.ones_like(depth))
        pixels = cell_centers(H, W, stride, device=K_b33.device, dtype=K_b33.dtype)
        pixels = pixels.reshape(2, H * W).T.expand(B, H * W, 2)
        points = backproject(pixels, depth, K_b33)
        points = torch.where(valid[..., None], points, torch.zeros_like(points))
        threshold_m = rgbd_threshold_cm(config) / 100.0
        return cls(points_cam_bm3=points, points_cam_b3m=points.transpose(1, 2).contiguous(),
                   valid_bm=valid, threshold_m=threshold_m,
                   error_scale=float(config.inlier_threshold_px) / threshold_m)

    def images(self, start: int, stop: int) -> DepthCells:
        """The same cells for images start..stop-1."""
        return replace(self, points_cam_bm3=self.points_cam_bm3[start:stop],
                       points_cam_b3m=self.points_cam_b3m[start:stop],
                       valid_bm=self.valid_bm[start:stop])

    # -- 1. hypotheses --------------------------------------------------------------------------

    def hypotheses(self, points_world_bm3: Tensor, valid_bm: Tensor, config: EstimatorConfig,
                   generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
        """Kabsch hypotheses from minimal sets of 3 cells (module doc, step 1).

        Args:
            points_world_bm3: (B, M, 3) scene coordinates (world, metres), zeros where invalid;
                gradients flow from the hypotheses to them.
            valid_bm: (B, M) bool, cells with a scene coordinate AND a depth.
            config: num_hypotheses N, rgbd_draws_per_hypothesis.
            generator: seeded torch.Generator of the sampling.

        Returns:
            T_cw_bn44 (B, N, 4, 4) world-to-camera (identity where invalid) and valid_bn (B, N).
        """
        B, M = valid_bm.shape
        N = config.num_hypotheses
        tau = self.threshold_m
        with torch.no_grad():
            cells_bd3, enough_b = sample_minimal_sets(
                valid_bm, N * config.rgbd_draws_per_hypothesis, generator, set_size=3)
            world = _gather_sets(points_world_bm3.detach(), cells_bd3)
            cam = _gather_sets(self.points_cam_bm3, cells_bd3)
            sides_w, sides_c = _sides(world), _sides(cam)
            passed = (((sides_w - sides_c).abs() < 2.0 * tau).all(dim=-1)
                      & (_smallest_altitude(world, sides_w) >= tau)
                      & (_smallest_altitude(cam, sides_c) >= tau))
            # The first N sets that passed (stable: in draw order), failed ones after them.
            order = torch.sort((~passed).to(torch.uint8), dim=1, stable=True).indices[:, :N]
            cells_bn3 = torch.gather(cells_bd3, 1, order[..., None].expand(-1, -1, 3))
            ok_bn = torch.gather(passed, 1, order) & enough_b[:, None]
        world = _gather_sets(points_world_bm3, cells_bn3)
        cam = _gather_sets(self.points_cam_bm3, cells_bn3)
        stand_in = torch.tensor(_STAND_IN, dtype=world.dtype, device=world.device)
        ok_set = ok_bn[..., None, None]
        T_bn44 = kabsch(torch.where(ok_set, cam, stand_in), torch.where(ok_set, world, stand_in))
        with torch.no_grad():
            residual = (transform_points(T_bn44, world) - cam).norm(dim=-1)
            finite = torch.isfinite(T_bn44).flatten(2).all(dim=-1)
            ok_bn = ok_bn & (residual < tau).all(dim=-1) & finite
        eye = torch.eye(4, dtype=T_bn44.dtype, device=T_bn44.device)
        return torch.where(ok_bn[..., None, None], T_bn44, eye), ok_bn

    # -- 2. errors ------------------------------------------------------------------------------

    def error_maps(self, T_cw_bk44: Tensor, points_b4m: Tensor, max_error: float,
                   valid_bm: Tensor | None = None,
                   buffers: ScratchBuffers | None = None) -> Tensor:
        """3D alignment errors of all cells under K poses per image: (B, K, M), in
        threshold-equivalent pixels (distance in metres times `error_scale`), clamped to
        `max_error`; cells with `valid_bm` False get `max_error`.

        Args:
            T_cw_bk44: (B, K, 4, 4) world-to-camera hypotheses.
            points_b4m: (B, 4, M) homogeneous scene coordinates [y; 1] as columns (zero
                columns for invalid cells).
            max_error: the clamp (threshold-equivalent pixels).
            valid_bm: (B, M) bool or None (all valid).
            buffers: scratch buffers (inference only: the result lives in them until they are
                used again).

        One batched matmul [R|t]_k [y; 1] for all K poses, minus the camera points, norm.
        """
        B, Kh = T_cw_bk44.shape[:2]
        M = points_b4m.shape[2]
        grad = torch.is_grad_enabled() and (T_cw_bk44.requires_grad or points_b4m.requires_grad)
        if grad:
            buffers = None

        def buffer(name: str, shape: tuple[int, ...]) -> Tensor | None:
            return buffers.take(name, shape, points_b4m) if buffers is not None else None

        moved = transform_columns(T_cw_bk44[:, :, :3, :], points_b4m, buffer(
            'rgbd_moved', (Kh * 3, M) if B == 1 else (B, Kh * 3, M)))
        if grad:
            # tiny offset: finite sqrt gradient at zero error
            diff = moved - self.points_cam_b3m[:, None]
            err = torch.sqrt(diff.square().sum(dim=2) + 1e-12) * self.error_scale
            err = err.clamp(max=max_error)
        else:  # inference: in place, no autograd bookkeeping
            dx, dy, dz = moved.sub_(self.points_cam_b3m[:, None]).unbind(2)
            err = torch.mul(dx, dx, out=buffer('rgbd_err', (B, Kh, M)))
            err = err.addcmul_(dy, dy).addcmul_(dz, dz).sqrt_()
            err = err.mul_(self.error_scale).clamp_(max=max_error)
        if valid_bm is not None:
            invalid = ~valid_bm[:, None]
            err = err.masked_fill_(invalid, max_error) if not grad else err.masked_fill(
                invalid, max_error)
        return err

    # -- 3. refinement and covariance -----------------------------------------------------------

    def refine(self, T_cw_bk44: Tensor, points_world_bm3: Tensor, points_b4m: Tensor,
               valid_bm: Tensor, config: EstimatorConfig) -> Tensor:
        """Kabsch on all inliers, repeated (module doc, step 3): (B, K, 4, 4) -> same.

        A pose whose inlier count (error < inlier_threshold_px in threshold-equivalent
        pixels, i.e. distance < tau) falls below max(min_refinement_inliers, 3), or, with
        `stop_when_inliers_unchanged`, whose inlier set equals the previous round's, keeps its
        current value from then on; only active poses are re-fitted. Differentiable w.r.t.
        the scene coordinates and the input poses (the inlier choice itself is discrete).
        """
        B, K = T_cw_bk44.shape[:2]
        M = valid_bm.shape[1]
        active_bk = torch.ones(B, K, dtype=torch.bool, device=T_cw_bk44.device)
        previous_bkm: Tensor | None = None
        T = T_cw_bk44
        for _ in range(config.refinement_steps):  # over refinement rounds, not hypotheses
            with torch.no_grad():
                err = self.error_maps(T.detach(), points_b4m, config.max_reprojection_error_px,
                                      valid_bm)
                inlier_bkm = err < config.inlier_threshold_px
                active_bk, previous_bkm = still_active(
                    active_bk, inlier_bkm, previous_bkm, max(config.min_refinement_inliers, 3),
                    config.stop_when_inliers_unchanged)
                idx = torch.nonzero(active_bk.reshape(-1)).squeeze(1)
            if idx.numel() == 0:
                break
            image = torch.div(idx, K, rounding_mode='floor')
            weights = inlier_bkm.reshape(B * K, M)[idx].to(T.dtype)
            T_new = kabsch(self.points_cam_bm3[image], points_world_bm3[image], weights)
            T = T.reshape(B * K, 4, 4).index_copy(0, idx, T_new).reshape(B, K, 4, 4)
        return T

    def information(self, T_cw_b44: Tensor, points_world_bm3: Tensor, errors_bm: Tensor,
                    weights_bm: Tensor) -> tuple[Tensor, Tensor]:
        """Information J^T W J (B, 6, 6) of the 3D residuals r_i = R y_i + t - p_i (metres)
        of the cells with weight 1, for the left twist xi = [rho (m), phi (rad)] in the
        camera frame (T_cw <- se3_exp(xi) T_cw: J_i = [I, -hat(R y_i + t)]), and the residual
        variance sum |r|^2 / (3 n - 6) in m^2 (B,), from `errors_bm` (B, M) in
        threshold-equivalent pixels."""
        w = weights_bm.to(T_cw_b44.dtype)
        moved = transform_points(T_cw_b44, points_world_bm3)  # (B, M, 3) camera frame
        eye = torch.eye(3, dtype=moved.dtype, device=moved.device).expand(moved.shape + (3,))
        J = torch.cat([eye, -hat(moved)], dim=-1)  # (B, M, 3, 6)
        info = torch.einsum('bm,bmki,bmkj->bij', w, J, J)
        distance_m = errors_bm / self.error_scale
        variance = ((distance_m.pow(2) * w).sum(dim=1)
                    / (3.0 * w.sum(dim=1) - 6.0).clamp(min=1.0))
        return info, variance
