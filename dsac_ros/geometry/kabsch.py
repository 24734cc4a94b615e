"""Weighted rigid alignment (Kabsch / Umeyama without scale) for RGB-D pose hypotheses.

Frames: the result is ``T_cw`` (world-to-camera) with ``x_cam = R x_world + t``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from dsac_ros.geometry.transforms import make_se3

__all__ = ['kabsch']


def kabsch(points_cam_bn3: Tensor, points_world_bn3: Tensor,
           weights_bn: Tensor | None = None) -> Tensor:
    """Least-squares rigid transform mapping world points onto camera points.

    Args:
        points_cam_bn3: (..., N, 3) points in the camera frame (metres), N >= 3.
        points_world_bn3: (..., N, 3) the same points in the world frame.
        weights_bn: (..., N) non-negative weights (default 1); at least three points should
            carry weight. Non-finite pairs get weight 0.

    Returns:
        T_cw_b44 (..., 4, 4) minimising sum_i w_i |R X_i + t - P_i|^2 with det(R) = +1 (the
        reflection case is fixed by flipping the weakest singular direction). Differentiable
        (SVD backward) where the singular values are distinct, which holds for non-degenerate
        triangles; degenerate input (fewer than 3 non-collinear points) returns a finite but
        meaningless transform.
    """
    for x, name in ((points_cam_bn3, 'points_cam_bn3'), (points_world_bn3, 'points_world_bn3')):
        if not isinstance(x, Tensor) or x.dim() < 2 or x.shape[-1] != 3:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f'{name} must have shape (..., N, 3), got {shape}')
    if points_cam_bn3.shape[-2] != points_world_bn3.shape[-2]:
        raise ValueError('points_cam_bn3 and points_world_bn3 need the same N, got '
                         f'{points_cam_bn3.shape[-2]} and {points_world_bn3.shape[-2]}')
    if points_cam_bn3.shape[-2] < 3:
        raise ValueError(f'kabsch needs at least 3 points, got {points_cam_bn3.shape[-2]}')
    P, X = torch.broadcast_tensors(points_cam_bn3, points_world_bn3)
    if weights_bn is None:
        w = torch.ones(P.shape[:-1], dtype=P.dtype, device=P.device)
    else:
        if weights_bn.shape[-1] != P.shape[-2]:
            raise ValueError(f'weights_bn must have shape (..., {P.shape[-2]}), got '
                             f'{tuple(weights_bn.shape)}')
        w = torch.clamp(weights_bn.to(P.dtype), min=0).expand(P.shape[:-1])
    ok = torch.isfinite(P).all(-1) & torch.isfinite(X).all(-1) & torch.isfinite(w)
    w = torch.where(ok, w, torch.zeros_like(w))
    P = torch.where(ok[..., None], P, torch.zeros_like(P))
    X = torch.where(ok[..., None], X, torch.zeros_like(X))
    w_sum = torch.clamp(w.sum(-1, keepdim=True), min=1e-12)
    wn = (w / w_sum)[..., None]
    mu_p = (wn * P).sum(-2)
    mu_x = (wn * X).sum(-2)
    Pc = P - mu_p[..., None, :]
    Xc = X - mu_x[..., None, :]
    # Cross-covariance H = sum w (P - mu_p)(X - mu_x)^T; R = U diag(1, 1, d) V^T.
    H = (wn * Pc).transpose(-1, -2) @ Xc
    U, _, Vh = torch.linalg.svd(H)
    UVh = U @ Vh  # det of a 3x3 as a triple product: a batched LU is slower on small batches
    d = torch.sign((torch.linalg.cross(UVh[..., 0, :], UVh[..., 1, :]) * UVh[..., 2, :]).sum(-1))
    d = torch.where(d == 0, torch.ones_like(d), d)
    D = torch.ones(H.shape[:-1], dtype=H.dtype, device=H.device)
    D = torch.cat([D[..., :2], d[..., None]], -1)
    R = (U * D[..., None, :]) @ Vh
    t = mu_p - (R @ mu_x[..., None]).squeeze(-1)
    return make_se3(R, t)
