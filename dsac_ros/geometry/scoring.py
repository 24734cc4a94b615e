"""Hypothesis scoring: reprojection errors, soft and hard inlier counts (paper Eq. 1).

Frames: hypotheses are ``T_cw`` (world-to-camera); scene coordinates are world points in metres;
pixels (u, v) follow OpenCV (top-left pixel centre at (0, 0)); errors are in pixels.
"""

from __future__ import annotations

import torch
from torch import Tensor

from dsac_ros.geometry.camera import check_intrinsics

__all__ = ['hard_inliers', 'reprojection_errors', 'soft_inlier_count']


def _errors(T: Tensor, P: Tensor, pix: Tensor, K: Tensor, max_error_px: float,
            min_depth: float) -> Tensor:
    """T (..., 4, 4), P (..., 3, N) world, pix (..., 2, N), K (..., 3, 3) -> (..., N) px."""
    # Replace non-finite inputs before any product: NaN * 0 would still poison the gradients.
    finite = torch.isfinite(P).all(-2, keepdim=True)
    P = torch.where(finite, P, torch.zeros_like(P))
    pix_ok = torch.isfinite(pix).all(-2, keepdim=True)
    pix = torch.where(pix_ok, pix, torch.zeros_like(pix))
    # One projection matrix K [R | t] per pose; e = |(p_x - u p_z, p_y - v p_z)| / p_z.
    KRt = K @ T[..., :3, :]
    proj = KRt[..., :3] @ P + KRt[..., 3:]
    px, py, pz = proj[..., 0, :], proj[..., 1, :], proj[..., 2, :]
    ok = (pz > min_depth) & finite[..., 0, :] & pix_ok[..., 0, :] & torch.isfinite(proj).all(-2)
    zs = torch.where(ok, pz, torch.ones_like(pz))
    du = torch.where(ok, px - pix[..., 0, :] * zs, torch.zeros_like(px))
    dv = torch.where(ok, py - pix[..., 1, :] * zs, torch.zeros_like(py))
    sq = du * du + dv * dv
    # sqrt with zero (not inf) gradient at 0; clamp keeps far-off values finite and flat.
    err = torch.sqrt(torch.clamp(sq, min=1e-30)) * (sq > 1e-30) / zs
    err = torch.clamp(err, max=max_error_px)
    return torch.where(ok, err, torch.full_like(err, max_error_px))


def reprojection_errors(T_cw: Tensor, points_world: Tensor, pixels: Tensor, K: Tensor,
                        max_error_px: float = 1000.0, min_depth: float = 0.01) -> Tensor:
    """Pixel reprojection errors |p_i - pi(K T_cw y_i)| of scene coordinates.

    Two layouts:
      * points: ``T_cw (..., 4, 4)``, ``points_world (..., N, 3)``, ``pixels (..., N, 2)``,
        ``K (..., 3, 3)`` (leading dims broadcast) -> ``(..., N)``.
      * image: ``T_cw (B, M, 4, 4)`` (M hypotheses) or ``(B, 4, 4)``, scene coordinates
        ``(B, 3, H, W)``, pixels ``(2, H, W)`` or ``(B, 2, H, W)`` (e.g. from
        :func:`dsac_ros.geometry.camera.cell_centers`), ``K (B, 3, 3)`` or ``(3, 3)``
        -> ``(B, M, H, W)`` or ``(B, H, W)``.

    Points with NaN, or closer than ``min_depth`` metres to / behind the camera, get
    ``max_error_px``; all errors are clamped to ``max_error_px``. Finite values and gradients.
    """
    check_intrinsics(K)
    if T_cw.dim() < 2 or T_cw.shape[-2:] != (4, 4):
        raise ValueError(f'T_cw must have shape (..., 4, 4), got {tuple(T_cw.shape)}')
    image = (points_world.dim() == 4 and points_world.shape[1] == 3 and pixels.dim() in (3, 4)
             and pixels.shape[-3] == 2 and pixels.shape[-2:] == points_world.shape[-2:])
    if image:
        B, _, H, W = points_world.shape
        single = T_cw.dim() == 3
        T = T_cw[:, None] if single else T_cw
        if T.dim() != 4 or T.shape[0] not in (1, B):
            raise ValueError(f'T_cw must be (B, M, 4, 4) or (B, 4, 4) for scene coordinates '
                             f'{tuple(points_world.shape)}, got {tuple(T_cw.shape)}')
        P = points_world.reshape(B, 1, 3, H * W)
        pix = pixels.reshape(-1, 1, 2, H * W)
        Kb = K.reshape(-1, 1, 3, 3)
        err = _errors(T, P, pix, Kb, max_error_px, min_depth)
        err = err.reshape(err.shape[:2] + (H, W))
        return err[:, 0] if single else err
    if points_world.dim() < 2 or points_world.shape[-1] != 3:
        raise ValueError('points_world must be (..., N, 3) or (B, 3, H, W), got '
                         f'{tuple(points_world.shape)}')
    if pixels.shape[-1] != 2 or pixels.shape[:-1] != points_world.shape[:-1]:
        raise ValueError(f'pixels must be (..., N, 2) matching points_world '
                         f'{tuple(points_world.shape)}, got {tuple(pixels.shape)}')
    err = _errors(T_cw, points_world.transpose(-1, -2), pixels.transpose(-1, -2), K,
                  max_error_px, min_depth)
    return err


def soft_inlier_count(errors: Tensor, threshold_px: float = 10.0, beta: float = 0.5,
                      dims: int | tuple[int, ...] = -1) -> Tensor:
    """Differentiable inlier count: sum over ``dims`` of sigmoid(beta * (threshold_px - e)).

    ``errors`` in pixels, e.g. (B, M, N) with dims=-1 or error images (B, M, H, W) with
    dims=(-2, -1). ``beta`` (1/px) sets the sharpness (DSAC uses 0.5 with a 10 px threshold).
    """
    return torch.sigmoid(beta * (threshold_px - errors)).sum(dims)


def hard_inliers(errors: Tensor, threshold_px: float = 10.0) -> Tensor:
    """Boolean inlier mask ``errors < threshold_px`` (same shape as errors, pixels)."""
    return errors < threshold_px
