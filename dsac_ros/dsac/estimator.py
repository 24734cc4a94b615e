"""DSAC pose estimation from a scene-coordinate map (paper Sec. 2-3), batched over images and
hypotheses.

Pipeline per image (all B images and N hypotheses at once, no Python loop over either):
  1. sample N minimal sets of 4 distinct valid cells (seeded torch.Generator) and solve P4P
     (`dsac_ros.geometry.pnp.solve_p4p`) -> hypotheses T_cw;
  2. reprojection errors of every cell under every hypothesis (one batched matmul) ->
     scores by a `ScoreFn` or the soft inlier count;
  3. selection: RANSAC argmax, SoftAM weighted average, or DSAC sampling from softmax(alpha s);
  4. refinement (paper Sec. 3): take the inliers (error < tau), at most 100 of them (a random
     subset), re-solve with `refine_pnp` from the current pose, repeat `refinement_steps` times;
     a hypothesis stops (by masking) once it has fewer than `min_refinement_inliers` inliers or
     its inlier set no longer changes. At inference only the selected pose is refined (for
     SoftAM the average), then polished once on all its inliers; for training
     (`expected_pose_loss`, DSAC) every hypothesis is refined, batched.

Speed (benchmarks/bench_estimator.py): the error maps of all hypotheses are one matmul plus a
few in-place passes into scratch buffers kept per estimator and thread
(`geometry.scoring.ScratchBuffers`; fresh multi-megabyte temporaries page-fault on every call);
the rest is small batched ops, of which the P4P solver is the largest share.

RGB-D mode: given a depth per cell (`depth_bhw`), steps 1, 2 and 4 work on 3D-3D
correspondences instead (Kabsch hypotheses from 3 cells, 3D distances, Kabsch refinement on the
inliers; `dsac_ros.dsac.rgbd.DepthCells`, held by the prepared frame), with the 3D errors
rescaled so that tau_cm reads as tau_px; step 3 and everything else is shared.

Poses are T_cw (world-to-camera, x_cam = R x_world + t, OpenCV camera axes); T_wc is its
inverse (camera-to-world, what ROS publishes as map -> camera).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
import logging
import math
import threading

import torch
from torch import Tensor

from dsac_ros.device import resolve_device
from dsac_ros.dsac.config import EstimatorConfig, ScoreFn, Selection
from dsac_ros.dsac.refinement import still_active
from dsac_ros.dsac.rgbd import DepthCells
from dsac_ros.dsac.sampling import sample_minimal_sets, uniform
from dsac_ros.geometry.camera import cell_centers, check_intrinsics
from dsac_ros.geometry.pnp import pnp_information, refine_pnp, solve_p4p
from dsac_ros.geometry.scoring import ScratchBuffers, reprojection_error_maps, soft_inlier_count
from dsac_ros.geometry.transforms import (
    invert_se3,
    matrix_to_quaternion,
    pose_loss,
    quaternion_to_matrix,
)

__all__ = ['DsacEstimator', 'PoseEstimate', 'expected_pose_loss']

logger = logging.getLogger(__name__)

# Variance (m^2, rad^2) on the covariance diagonal of an estimate without a pose.
_NO_POSE_VARIANCE = 1.0e6
# Error-map elements per group of images in `_score_pool`.
_ERRORS_PER_GROUP = 1 << 22


@dataclass
class PoseEstimate:
    """Result of `DsacEstimator.estimate` for B images (all tensors on the input device).

    Attributes:
        T_cw_b44: (B, 4, 4) world-to-camera pose; identity where `valid_b` is False.
        T_wc_b44: (B, 4, 4) camera-to-world pose (inverse of T_cw).
        valid_b: (B,) bool; False = no pose (too few valid cells, no valid hypothesis, or fewer
            than `min_inliers_for_pose` inliers at the final pose).
        inlier_count_b: (B,) long, cells with reprojection error < tau at the final pose
            (RGB-D: 3D distance < tau_cm).
        inlier_ratio_b: (B,) inlier_count / number of valid (finite) cells, 0 when none.
        score_entropy_b: (B,) entropy (nats) of softmax(alpha * scores) over the valid
            hypotheses; 0 means one hypothesis takes all the mass, log(N) is uniform (also
            reported when no hypothesis is valid).
        covariance_b66: (B, 6, 6) covariance of the 6-vector xi = (rho, phi), translation first
            (metres) then rotation (radians), of a perturbation in the CAMERA frame:
            T_wc_true = T_wc_est @ exp(xi^) (equivalently T_cw_true = exp(-xi^) @ T_cw_est).
            To express it in the world frame, rotate both 3-blocks by R_wc. It is
            sigma^2 (J^T J)^-1 from the Gauss-Newton information of the correspondences the
            final pose was fitted to (all inliers with `polish_with_all_inliers`, else the last
            refinement subset), sigma^2 = sum r^2 / (2 n - 6) their residual variance (px^2);
            RGB-D: of the 3D residuals of all inliers, sigma^2 = sum |r|^2 / (3 n - 6) (m^2).
            diag(1e6) where `valid_b` is False.
        hypothesis_index_b: (B,) long, the selected hypothesis (for SoftAM: the one with the
            largest weight, the reference of the average); -1 where there is none.
        scores_bn: (B, N) hypothesis scores (-inf for invalid hypotheses).
    """

    T_cw_b44: Tensor
    T_wc_b44: Tensor
    valid_b: Tensor
    inlier_count_b: Tensor
    inlier_ratio_b: Tensor
    score_entropy_b: Tensor
    covariance_b66: Tensor
    hypothesis_index_b: Tensor
    scores_bn: Tensor


@dataclass(frozen=True)
class _Frame:
    """Validated inputs. points_bm3 has invalid cells replaced by 0 (valid_bm says which)."""

    points_bm3: Tensor
    points_b4m: Tensor  # homogeneous, transposed for the error matmul; zero columns if invalid
    valid_bm: Tensor
    has_invalid: bool
    pixels_m2: Tensor
    pixels_2m: Tensor
    K_b33: Tensor
    height: int
    width: int
    usable_b: Tensor  # enough valid cells to try a pose
    depth: DepthCells | None = None  # RGB-D mode: camera points of the cells (None: RGB)

    @property
    def batch(self) -> int:
        return self.points_bm3.shape[0]

    def images(self, start: int, stop: int) -> _Frame:
        """The same inputs for images start..stop-1."""
        return replace(self, points_bm3=self.points_bm3[start:stop],
                       points_b4m=self.points_b4m[start:stop],
                       valid_bm=self.valid_bm[start:stop], K_b33=self.K_b33[start:stop],
                       usable_b=self.usable_b[start:stop],
                       depth=None if self.depth is None else self.depth.images(start, stop))


def _prepare(scene_coords_b3hw: Tensor, K_b33: Tensor, stride: int,
             config: EstimatorConfig, depth_bhw: Tensor | None = None) -> _Frame:
    """Check shapes / intrinsics and flatten the map; raises ValueError naming the problem.
    With `depth_bhw` (RGB-D mode) cells without a valid depth are invalid."""
    if not isinstance(scene_coords_b3hw, Tensor):
        raise ValueError('scene_coords_b3hw must be a torch.Tensor, got '
                         f'{type(scene_coords_b3hw).__name__}')
    if scene_coords_b3hw.dim() != 4 or scene_coords_b3hw.shape[1] != 3:
        raise ValueError('scene_coords_b3hw must have shape (B, 3, H, W), got '
                         f'{tuple(scene_coords_b3hw.shape)}')
    if not scene_coords_b3hw.is_floating_point():
        raise ValueError('scene_coords_b3hw must be floating point, got '
                         f'{scene_coords_b3hw.dtype}')
    B, _, H, W = scene_coords_b3hw.shape
    if B == 0 or H == 0 or W == 0:
        raise ValueError(f'scene_coords_b3hw is empty: shape {tuple(scene_coords_b3hw.shape)}')
    if not isinstance(K_b33, Tensor):
        raise ValueError(f'K_b33 must be a torch.Tensor, got {type(K_b33).__name__}')
    if K_b33.shape == (3, 3):
        K_b33 = K_b33.expand(B, 3, 3)
    if K_b33.shape != (B, 3, 3):
        raise ValueError(f'K_b33 must have shape ({B}, 3, 3) or (3, 3), got {tuple(K_b33.shape)}')
    if not isinstance(stride, int) or isinstance(stride, bool) or stride <= 0:
        raise ValueError(f'stride must be a positive int, got {stride!r}')
    if scene_coords_b3hw.dtype not in (torch.float32, torch.float64):
        scene_coords_b3hw = scene_coords_b3hw.float()  # half precision is too coarse for PnP
    dtype, device = scene_coords_b3hw.dtype, scene_coords_b3hw.device
    K_b33 = K_b33.to(device=device, dtype=dtype)
    check_intrinsics(K_b33, 'K_b33', values=True)

    points_bm3 = scene_coords_b3hw.reshape(B, 3, H * W).transpose(1, 2)
    valid_bm = torch.isfinite(points_bm3).all(dim=-1)
    depth = None
    if depth_bhw is not None:
        if not isinstance(depth_bhw, Tensor) or depth_bhw.shape != (B, H, W):
            shape = tuple(depth_bhw.shape) if isinstance(depth_bhw, Tensor) else depth_bhw
            raise ValueError(f'depth_bhw must be a tensor of shape ({B}, {H}, {W}), got {shape}')
        depth = DepthCells.from_depth(depth_bhw.to(device), K_b33, stride, config)
        valid_bm = valid_bm & depth.valid_bm
    points_bm3 = torch.where(valid_bm[..., None], points_bm3, torch.zeros_like(points_bm3))
    pixels_m2 = cell_centers(H, W, stride, device=device, dtype=dtype).reshape(2, -1).T
    needed = max(4 if depth is None else 3, config.min_inliers_for_pose)
    usable_b = valid_bm.sum(dim=1) >= needed
    points_b4m = torch.cat([points_bm3, valid_bm[..., None].to(dtype)], dim=2)
    points_b4m = points_b4m.transpose(1, 2).contiguous()
    return _Frame(points_bm3=points_bm3, points_b4m=points_b4m, valid_bm=valid_bm,
                  has_invalid=not bool(valid_bm.all()), pixels_m2=pixels_m2.contiguous(),
                  pixels_2m=pixels_m2.T.contiguous(), K_b33=K_b33.contiguous(), height=H,
                  width=W, usable_b=usable_b, depth=depth)


def _error_maps(T_cw_bk44: Tensor, frame: _Frame, max_error_px: float,
                buffers: ScratchBuffers | None = None) -> Tensor:
    """Reprojection errors (px) of all cells under K poses per image: (B, K, M)
    (`geometry.scoring.reprojection_error_maps`; invalid cells get `max_error_px`); in RGB-D
    mode 3D errors in threshold-equivalent px (`DepthCells.error_maps`)."""
    if frame.depth is not None:
        return frame.depth.error_maps(T_cw_bk44, frame.points_b4m, max_error_px,
                                      frame.valid_bm if frame.has_invalid else None, buffers)
    return reprojection_error_maps(T_cw_bk44, frame.K_b33, frame.points_b4m, frame.pixels_2m,
                                   max_error_px, frame.valid_bm if frame.has_invalid else None,
                                   buffers=buffers)


def _score(errors_bnm: Tensor, frame: _Frame, config: EstimatorConfig,
           score_fn: ScoreFn | None) -> Tensor:
    if score_fn is None:
        return soft_inlier_count(errors_bnm, config.inlier_threshold_px, config.soft_inlier_beta)
    B, N = errors_bnm.shape[:2]
    scores = score_fn(errors_bnm.reshape(B, N, frame.height, frame.width))
    if not isinstance(scores, Tensor) or scores.shape != (B, N):
        shape = tuple(scores.shape) if isinstance(scores, Tensor) else type(scores).__name__
        raise ValueError(f'score_fn must return a ({B}, {N}) tensor, got {shape}')
    return scores


def _score_pool(T_cw_bn44: Tensor, frame: _Frame, config: EstimatorConfig,
                score_fn: ScoreFn | None, buffers: ScratchBuffers | None = None) -> Tensor:
    """Scores (B, N) of all hypotheses: error maps + score function, in groups of images small
    enough (about 4M errors) that one huge (B, N, M) block per op does not spill memory."""
    B, N = T_cw_bn44.shape[:2]
    group = max(1, _ERRORS_PER_GROUP // (N * frame.points_bm3.shape[1]))
    parts = []
    for start in range(0, B, group):  # groups of images bounded by memory, usually one
        sub = frame.images(start, start + group) if group < B else frame
        errors = _error_maps(T_cw_bn44[start:start + group], sub,
                             config.max_reprojection_error_px, buffers)
        if score_fn is None and buffers is not None and not errors.requires_grad:
            parts.append(soft_inlier_count(errors, config.inlier_threshold_px,
                                           config.soft_inlier_beta, inplace=True))
        else:
            parts.append(_score(errors, sub, config, score_fn))
    return parts[0] if len(parts) == 1 else torch.cat(parts)


def _generate_hypotheses(frame: _Frame, config: EstimatorConfig,
                         generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
    """Sample minimal sets and solve P4P: T_cw (B, N, 4, 4), valid (B, N) bool.

    Invalid hypotheses (degenerate set, no solution, too few valid cells in the image) hold the
    identity; `solve_p4p` keeps outputs and gradients finite for them. RGB-D mode: Kabsch
    hypotheses from 3 cells (`DepthCells.hypotheses`).
    """
    if frame.depth is not None:
        T_bn44, ok_bn = frame.depth.hypotheses(frame.points_bm3, frame.valid_bm, config,
                                               generator)
        return T_bn44, ok_bn & frame.usable_b[:, None]
    B, N = frame.batch, config.num_hypotheses
    cells_bn4, _ = sample_minimal_sets(frame.valid_bm, N, generator)
    pts, pix = _gather_cells(frame, cells_bn4)
    T, ok = solve_p4p(pts.reshape(B * N, 4, 3), pix.reshape(B * N, 4, 2),
                      frame.K_b33.repeat_interleave(N, dim=0),
                      gauss_newton_steps=config.p4p_gauss_newton_steps)
    T_bn44 = T.reshape(B, N, 4, 4)
    ok_bn = ok.reshape(B, N) & frame.usable_b[:, None]
    eye = torch.eye(4, dtype=T_bn44.dtype, device=T_bn44.device)
    return torch.where(ok_bn[..., None, None], T_bn44, eye), ok_bn


def _selection_logits(scores_bn: Tensor, valid_bn: Tensor, config: EstimatorConfig) -> Tensor:
    """alpha * scores with -inf for invalid hypotheses (all-zero rows where none is valid)."""
    any_b = valid_bn.any(dim=1, keepdim=True)
    logits = torch.where(valid_bn, config.score_alpha * scores_bn,
                         torch.full_like(scores_bn, -math.inf))
    return torch.where(any_b, logits, torch.zeros_like(logits))


def _entropy(probs_bn: Tensor) -> Tensor:
    return -torch.special.xlogy(probs_bn, probs_bn).sum(dim=1)


def soft_average_pose(T_cw_bn44: Tensor, weights_bn: Tensor) -> tuple[Tensor, Tensor]:
    """SoftAM pose: weighted average of N poses per image -> (T_cw (B, 4, 4), reference (B,)).

    Rotations: unit quaternions, sign-aligned with the highest-weight hypothesis (the reference),
    averaged with the weights and renormalised (a first-order weighted rotation mean that is
    smooth, unlike an SVD projection whose gradient is unstable when the hypotheses agree).
    Translations: the camera centres c = -R^T t are averaged linearly (a translation average that
    does not depend on the rotations), then t = -R_avg c_avg. Zero-weight entries do not matter.
    """
    ref_b = torch.argmax(weights_bn, dim=1)
    R = T_cw_bn44[..., :3, :3]
    t = T_cw_bn44[..., :3, 3]
    q_bn4 = matrix_to_quaternion(R)
    q_ref = q_bn4[torch.arange(q_bn4.shape[0], device=q_bn4.device), ref_b]
    sign = torch.where((q_bn4 * q_ref[:, None]).sum(-1) < 0, -1.0, 1.0).to(q_bn4.dtype)
    q_avg = (weights_bn[..., None] * sign[..., None] * q_bn4).sum(dim=1)
    q_avg = q_avg / q_avg.norm(dim=-1, keepdim=True).clamp(min=1e-12)
    R_avg = quaternion_to_matrix(q_avg)
    centers = -(R.transpose(-1, -2) @ t[..., None])[..., 0]
    c_avg = (weights_bn[..., None] * centers).sum(dim=1)
    T = torch.zeros_like(T_cw_bn44[:, 0])
    T[:, :3, :3] = R_avg
    T[:, :3, 3] = -(R_avg @ c_avg[..., None])[..., 0]
    T[:, 3, 3] = 1.0
    return T, ref_b


def _select_refinement_set(errors_bkm: Tensor, priority_bm: Tensor,
                           config: EstimatorConfig) -> tuple[Tensor, Tensor, Tensor]:
    """Inliers (err < tau) and a random subset of at most `max_refinement_inliers` of them.

    Returns (cells_bkn long, weights_bkn bool (False = padding, not an inlier), count_bk).
    The subset is the inliers with the smallest `priority_bm` (uniform random per cell).
    """
    inlier_bkm = errors_bkm < config.inlier_threshold_px
    count_bk = inlier_bkm.sum(dim=-1)
    k = min(config.max_refinement_inliers, errors_bkm.shape[-1])
    key = torch.where(inlier_bkm, priority_bm[:, None], torch.full_like(errors_bkm, 2.0))
    cells = torch.topk(key, k, dim=-1, largest=False, sorted=False).indices
    return cells, torch.gather(inlier_bkm, -1, cells), count_bk


def _gather_cells(frame: _Frame, cells_bkn: Tensor) -> tuple[Tensor, Tensor]:
    """Scene points (B, K, n, 3) and pixels (B, K, n, 2) of the given cells."""
    B, K, n = cells_bkn.shape
    pts = torch.gather(frame.points_bm3, 1, cells_bkn.reshape(B, -1, 1).expand(-1, -1, 3))
    return pts.reshape(B, K, n, 3), frame.pixels_m2[cells_bkn]


def refine_hypotheses(T_cw_bk44: Tensor, frame: _Frame, config: EstimatorConfig,
                      priority_bm: Tensor) -> Tensor:
    """Iterative inlier refinement (paper Sec. 3) of K poses per image: (B, K, 4, 4) -> same.

    Each of `refinement_steps` rounds: errors at the current pose, inliers (err < tau), a random
    subset of at most `max_refinement_inliers`, `refine_pnp` (Gauss-Newton) from the current
    pose on that subset. A pose whose inlier count falls below `min_refinement_inliers` (or,
    with `stop_when_inliers_unchanged`, whose inlier set equals the previous round's) keeps
    its current value from then on (masking; only still-active poses are passed to the solver,
    so a degenerate solve never touches the result or its gradient). Differentiable w.r.t. the
    scene coordinates and the input poses; the inlier choice itself is discrete.
    RGB-D mode: Kabsch on all inliers (`DepthCells.refine`).
    """
    if frame.depth is not None:
        return frame.depth.refine(T_cw_bk44, frame.points_bm3, frame.points_b4m,
                                  frame.valid_bm, config)
    B, K = T_cw_bk44.shape[:2]
    active_bk = torch.ones(B, K, dtype=torch.bool, device=T_cw_bk44.device)
    previous_bkm: Tensor | None = None
    T = T_cw_bk44
    for _ in range(config.refinement_steps):  # over refinement rounds, not hypotheses
        with torch.no_grad():
            err = _error_maps(T.detach(), frame, config.max_reprojection_error_px)
            cells, weights, _ = _select_refinement_set(err, priority_bm, config)
            active_bk, previous_bkm = still_active(
                active_bk, err < config.inlier_threshold_px, previous_bkm,
                config.min_refinement_inliers, config.stop_when_inliers_unchanged)
            idx = torch.nonzero(active_bk.reshape(-1)).squeeze(1)
        if idx.numel() == 0:
            break
        pts, pix = _gather_cells(frame, cells)
        n = cells.shape[-1]
        T_flat = T.reshape(B * K, 4, 4)
        K_sel = frame.K_b33.repeat_interleave(K, dim=0)[idx]
        T_new = refine_pnp(T_flat[idx], pts.reshape(B * K, n, 3)[idx],
                           pix.reshape(B * K, n, 2)[idx], K_sel,
                           weights_bn=weights.reshape(B * K, n)[idx].to(T.dtype),
                           iterations=config.refinement_pnp_iterations)
        T = T_flat.index_copy(0, idx, T_new).reshape(B, K, 4, 4)
    return T


class DsacEstimator:
    """Camera pose from a scene-coordinate map by RANSAC / SoftAM / DSAC (see module doc).

    Args:
        config: EstimatorConfig (selection mode, hypotheses, thresholds, refinement).
        score_fn: `ScoreFn` mapping (B, N, H, W) reprojection errors (px) to (B, N) scores;
            None uses the soft inlier count.
        device: where to compute: None = wherever the inputs are; 'auto' = CUDA when
            available, else CPU; or a torch device (`dsac_ros.device.resolve_device`; CUDA
            without CUDA is a ValueError). Results are on this device.
    """

    def __init__(self, config: EstimatorConfig | None = None,
                 score_fn: ScoreFn | None = None,
                 device: str | torch.device | None = None) -> None:
        self.config = config if config is not None else EstimatorConfig()
        self.score_fn = score_fn
        self.device = None if device is None else resolve_device(device, strict=True)
        self._local = threading.local()  # per-thread ScratchBuffers

    def _buffers(self) -> ScratchBuffers:
        buffers = getattr(self._local, 'buffers', None)
        if buffers is None:
            buffers = self._local.buffers = ScratchBuffers()
        return buffers

    @torch.no_grad()
    def estimate(self, scene_coords_b3hw: Tensor, K_b33: Tensor, stride: int = 8,
                 generator: torch.Generator | None = None,
                 depth_bhw: Tensor | None = None) -> PoseEstimate:
        """Estimate T_cw for each of B scene-coordinate maps (inference, no gradients).

        Args:
            scene_coords_b3hw: (B, 3, H, W) world coordinates (metres) of the cells; NaN / inf
                marks an invalid cell. Cell (i, j) is seen at pixel (stride j + stride // 2,
                stride i + stride // 2) (`geometry.camera.cell_centers`).
            K_b33: (B, 3, 3) or (3, 3) intrinsics of the full-resolution image (pixels).
            stride: output stride of the map.
            generator: seeded torch.Generator (any device); None -> a new one seeded with
                `config.seed`, so the same input gives the same result.
            depth_bhw: RGB-D mode: (B, H, W) depth (metres, along z) of every cell centre, NaN
                or <= 0 where invalid (`dsac_ros.dsac.rgbd.cell_depths` makes it from a depth
                image registered to the colour image); None: RGB.

        Returns:
            PoseEstimate; images without a pose have valid_b False and an identity pose.

        Raises:
            ValueError: on wrong shapes / dtypes, non-finite K or non-positive focal lengths.
        """
        config = self.config
        if self.device is not None:
            if isinstance(scene_coords_b3hw, Tensor):
                scene_coords_b3hw = scene_coords_b3hw.to(self.device)
            if isinstance(K_b33, Tensor):
                K_b33 = K_b33.to(self.device)
        frame = _prepare(scene_coords_b3hw, K_b33, stride, config, depth_bhw)
        if generator is None:
            generator = torch.Generator(device=frame.points_bm3.device)
            generator.manual_seed(config.seed)
        B = frame.batch
        device, dtype = frame.points_bm3.device, frame.points_bm3.dtype
        ar = torch.arange(B, device=device)

        T_bn44, ok_bn = _generate_hypotheses(frame, config, generator)
        scores = _score_pool(T_bn44, frame, config, self.score_fn, self._buffers())
        logits = _selection_logits(scores, ok_bn, config)
        probs = torch.softmax(logits, dim=1)
        has_hyp_b = ok_bn.any(dim=1)
        priority_bm = uniform((B, frame.valid_bm.shape[1]), generator, device, dtype)

        if config.selection == Selection.SOFTAM:
            T_sel, index_b = soft_average_pose(T_bn44, probs)
        else:
            if config.selection == Selection.DSAC:
                u_b = uniform((B, 1), generator, device, probs.dtype)
                cdf = torch.cumsum(probs, dim=1)
                index_b = (cdf <= u_b * cdf[:, -1:]).sum(dim=1).clamp(max=probs.shape[1] - 1)
            else:
                index_b = torch.argmax(logits, dim=1)
            T_sel = T_bn44[ar, index_b]
        T_ref = refine_hypotheses(T_sel[:, None], frame, config, priority_bm)[:, 0]
        err_final = _error_maps(T_ref[:, None], frame, config.max_reprojection_error_px)[:, 0]
        if config.polish_with_all_inliers and frame.depth is None:
            T_ref, err_final = _polish(T_ref, err_final, frame, config)
        if config.polish_with_all_inliers or frame.depth is not None:
            weights_bm = err_final < config.inlier_threshold_px
        else:
            cells, weights, _ = _select_refinement_set(err_final[:, None], priority_bm, config)
            weights_bm = torch.zeros_like(frame.valid_bm).scatter(1, cells[:, 0], weights[:, 0])
        inlier_count = (err_final < config.inlier_threshold_px).sum(dim=1)
        n_valid = frame.valid_bm.sum(dim=1)
        ratio = inlier_count.to(dtype) / n_valid.clamp(min=1).to(dtype)
        finite_b = torch.isfinite(T_ref).flatten(1).all(dim=1)
        valid_b = (has_hyp_b & frame.usable_b & finite_b
                   & (inlier_count >= max(config.min_inliers_for_pose, 1)))

        info, variance = _information(T_ref, frame, err_final, weights_bm)
        cov = _covariance(info, variance, valid_b)
        valid_b = valid_b & torch.isfinite(cov).flatten(1).all(dim=1)
        eye4 = torch.eye(4, dtype=dtype, device=device)
        T_cw = torch.where(valid_b[:, None, None], T_ref, eye4)
        cov = torch.where(valid_b[:, None, None], cov,
                          _NO_POSE_VARIANCE * torch.eye(6, dtype=dtype, device=device))
        if not bool(valid_b.all()):
            logger.debug('no pose for %d of %d images', int((~valid_b).sum()), B)
        return PoseEstimate(
            T_cw_b44=T_cw,
            T_wc_b44=invert_se3(T_cw),
            valid_b=valid_b,
            inlier_count_b=torch.where(valid_b, inlier_count, torch.zeros_like(inlier_count)),
            inlier_ratio_b=torch.where(valid_b, ratio, torch.zeros_like(ratio)),
            score_entropy_b=_entropy(probs),
            covariance_b66=cov,
            hypothesis_index_b=torch.where(has_hyp_b, index_b, torch.full_like(index_b, -1)),
            scores_bn=torch.where(ok_bn, scores, torch.full_like(scores, -math.inf)),
        )


def _polish(T_cw_b44: Tensor, errors_bm: Tensor, frame: _Frame,
            config: EstimatorConfig) -> tuple[Tensor, Tensor]:
    """One `refine_pnp` on all inliers (err < tau) of the refined pose; kept only where there
    are at least `min_refinement_inliers` of them. Returns (T_cw (B, 4, 4), errors (B, M))."""
    B, M = errors_bm.shape
    inlier_bm = errors_bm < config.inlier_threshold_px
    enough = inlier_bm.sum(dim=1) >= max(config.min_refinement_inliers, 6)
    T_new = refine_pnp(T_cw_b44, frame.points_bm3, frame.pixels_m2.expand(B, M, 2),
                       frame.K_b33, weights_bn=inlier_bm.to(T_cw_b44.dtype),
                       iterations=config.refinement_pnp_iterations)
    T_out = torch.where(enough[:, None, None], T_new, T_cw_b44)
    err = _error_maps(T_out[:, None], frame, config.max_reprojection_error_px)
    return T_out, err[:, 0]


def _information(T_cw_b44: Tensor, frame: _Frame, errors_bm: Tensor,
                 weights_bm: Tensor) -> tuple[Tensor, Tensor]:
    """Information J^T W J (B, 6, 6) of the cells with weight 1 (the correspondences the final
    pose was fitted to) at the final pose (left twist in the camera frame, translation first;
    `geometry.pnp.pnp_information`) and the residual variance sum e^2 / (2 n - 6), px^2 (B,).
    RGB-D mode: of the 3D residuals, m^2 (`DepthCells.information`)."""
    if frame.depth is not None:
        return frame.depth.information(T_cw_b44, frame.points_bm3, errors_bm, weights_bm)
    B, M = errors_bm.shape
    w = weights_bm.to(T_cw_b44.dtype)
    info = pnp_information(T_cw_b44, frame.points_bm3, frame.pixels_m2.expand(B, M, 2),
                           frame.K_b33, weights_bn=w)
    variance = (errors_bm.pow(2) * w).sum(dim=1) / (2.0 * w.sum(dim=1) - 6.0).clamp(min=1.0)
    return info, variance


def _covariance(info_b66: Tensor, variance_b: Tensor, valid_b: Tensor) -> Tensor:
    """sigma^2 * info^-1, NaN for singular / invalid information (caller masks those)."""
    eye = torch.eye(6, dtype=info_b66.dtype, device=info_b66.device)
    safe = torch.where(valid_b[:, None, None], info_b66, eye)
    inv, status = torch.linalg.inv_ex(safe)
    cov = variance_b[:, None, None] * inv
    bad = (status != 0) | ~valid_b
    return torch.where(bad[:, None, None], torch.full_like(cov, math.nan), 0.5 * (cov + cov.mT))


def expected_pose_loss(scene_coords_b3hw: Tensor, K_b33: Tensor, T_cw_gt_b44: Tensor,
                       config: EstimatorConfig, score_fn: ScoreFn | None = None,
                       generator: torch.Generator | None = None, stride: int = 8,
                       depth_bhw: Tensor | None = None) -> Tensor:
    """Differentiable training loss of the estimator (paper Eq. 7 for DSAC, Eq. 4 for SoftAM).

    DSAC: sum_j P(j) * pose_loss(refine(h_j), h*) with P = softmax(alpha * scores) over the valid
    hypotheses, every hypothesis refined (batched). Its gradient is the analytic form of Eq. 8
    (loss * d log P + d loss, in expectation over the whole pool).
    SOFTAM: pose_loss(refine(h_SoftAM), h*), the weighted average of `soft_average_pose`.
    pose_loss is max(rotation error in degrees, camera-centre error in cm) (paper Eq. 9).
    The mean is over images that have at least one valid hypothesis (0 when none has).

    Gradients reach the scene coordinates through hypothesis generation (P4P), scoring and
    refinement, and reach the parameters of `score_fn` through the selection probabilities.

    Args:
        scene_coords_b3hw: (B, 3, H, W) predicted world coordinates (metres), NaN = invalid.
        K_b33: (B, 3, 3) or (3, 3) full-resolution intrinsics.
        T_cw_gt_b44: (B, 4, 4) ground-truth world-to-camera poses.
        config: config.selection must be DSAC or SOFTAM (RANSAC's argmax is not differentiable).
        score_fn: as in `DsacEstimator`; None = soft inlier count.
        generator: seeded torch.Generator for sampling (same seed -> same pool).
        stride: output stride of the map.
        depth_bhw: RGB-D mode (Kabsch hypotheses and refinement, 3D scoring): (B, H, W) cell
            depths in metres, NaN = invalid, as in `DsacEstimator.estimate`; None: RGB.

    Returns:
        Scalar loss tensor.
    """
    if config.selection == Selection.RANSAC:
        raise ValueError('expected_pose_loss needs selection DSAC or SOFTAM; RANSAC (argmax) '
                         'has no useful gradient w.r.t. the scores')
    frame = _prepare(scene_coords_b3hw, K_b33, stride, config, depth_bhw)
    B = frame.batch
    if not isinstance(T_cw_gt_b44, Tensor) or T_cw_gt_b44.shape != (B, 4, 4):
        shape = tuple(T_cw_gt_b44.shape) if isinstance(T_cw_gt_b44, Tensor) else T_cw_gt_b44
        raise ValueError(f'T_cw_gt_b44 must have shape ({B}, 4, 4), got {shape}')
    T_gt = T_cw_gt_b44.to(frame.points_bm3)
    if not bool(torch.isfinite(T_gt).all()):
        raise ValueError('T_cw_gt_b44 contains NaN or inf')
    device, dtype = frame.points_bm3.device, frame.points_bm3.dtype

    T_bn44, ok_bn = _generate_hypotheses(frame, config, generator)
    N = T_bn44.shape[1]
    scores = _score_pool(T_bn44, frame, config, score_fn)
    probs = torch.softmax(_selection_logits(scores, ok_bn, config), dim=1)
    priority_bm = uniform((B, frame.valid_bm.shape[1]), generator, device, dtype)
    has_hyp_b = ok_bn.any(dim=1)

    if config.selection == Selection.DSAC:
        T_ref = refine_hypotheses(T_bn44, frame, config, priority_bm)
        loss_bn = pose_loss(T_ref.reshape(B * N, 4, 4),
                            T_gt.repeat_interleave(N, dim=0)).reshape(B, N)
        loss_bn = torch.where(ok_bn, loss_bn, torch.zeros_like(loss_bn))
        loss_b = (probs * loss_bn).sum(dim=1)
    else:
        T_avg, _ = soft_average_pose(T_bn44, probs)
        T_ref = refine_hypotheses(T_avg[:, None], frame, config, priority_bm)[:, 0]
        loss_b = pose_loss(T_ref, T_gt)
    if not bool(has_hyp_b.any()):
        logger.warning('expected_pose_loss: no valid hypothesis in any image; loss is 0')
        return (scene_coords_b3hw.nan_to_num() * 0.0).sum()
    loss_b = torch.where(has_hyp_b, loss_b, torch.zeros_like(loss_b))
    return loss_b.sum() / has_hyp_b.sum().to(dtype)
