"""Hypothesis scoring: reprojection errors, soft and hard inlier counts (paper Eq. 1).

Frames: hypotheses are ``T_cw`` (world-to-camera); scene coordinates are world points in metres;
pixels (u, v) follow OpenCV (top-left pixel centre at (0, 0)); errors are in pixels.

`reprojection_error_maps` is the one implementation of the error: the estimator calls it on its
hot path (scratch buffers, in place), the trainer makes the Score CNN's training inputs with it
through `reprojection_errors`, so training and inference see the same numbers.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from dsac_ros.geometry.camera import check_intrinsics

__all__ = ['ScratchBuffers', 'hard_inliers', 'reprojection_error_maps', 'reprojection_errors',
           'soft_inlier_count', 'transform_columns']

# Points with camera z below this (metres) are divided by it: behind the camera -> the cap.
DEFAULT_MIN_DEPTH = 1.0e-6


class ScratchBuffers:
    """Scratch buffers for inference error maps, reused from call to call.

    The (N, M) temporaries of one frame are megabytes; freshly allocated each call, the C
    allocator hands them back to the OS and every call page-faults them in again, which cost
    about a third of the CPU time per frame at 60x80 cells. Buffers only grow; they are views
    valid until the next call (use one instance per thread).
    """

    def __init__(self) -> None:
        self._buffers: dict[str, Tensor] = {}

    def take(self, name: str, shape: tuple[int, ...], like: Tensor) -> Tensor:
        numel = math.prod(shape)
        buf = self._buffers.get(name)
        if (buf is None or buf.numel() < numel or buf.dtype != like.dtype
                or buf.device != like.device):
            buf = torch.empty(numel, dtype=like.dtype, device=like.device)
            self._buffers[name] = buf
        return buf[:numel].view(shape)


def transform_columns(P_bk34: Tensor, points_b4m: Tensor, out: Tensor | None = None) -> Tensor:
    """P_k [X; 1] for K 3x4 matrices per image and M homogeneous points as columns: (B, K, 3,
    M), one matmul (into ``out``, (B, K*3, M) or (K*3, M) for B = 1, when given)."""
    B, Kh = P_bk34.shape[:2]
    M = points_b4m.shape[2]
    if B == 1:  # a plain mm is about twice as fast as a one-batch bmm on CPU
        result = torch.mm(P_bk34.reshape(Kh * 3, 4), points_b4m[0], out=out)
    else:
        result = torch.bmm(P_bk34.reshape(B, Kh * 3, 4), points_b4m, out=out)
    return result.reshape(B, Kh, 3, M)


def reprojection_error_maps(T_cw_bk44: Tensor, K_b33: Tensor, points_b4m: Tensor,
                            pixels_2m: Tensor, max_error_px: float,
                            valid_bm: Tensor | None = None,
                            min_depth: float = DEFAULT_MIN_DEPTH,
                            buffers: ScratchBuffers | None = None) -> Tensor:
    """Reprojection errors (px) of M points under K poses per image: (B, K, M).

    Args:
        T_cw_bk44: (B, K, 4, 4) world-to-camera hypotheses.
        K_b33: (B, 3, 3) intrinsics.
        points_b4m: (B, 4, M) homogeneous world points [X; 1] in metres as columns (a zero
            column for an invalid point; give ``valid_bm`` then).
        pixels_2m: (2, M) observed pixels shared by all images, or (B, 2, M).
        max_error_px: every error is clamped to this; invalid points get it.
        valid_bm: (B, M) bool, False marks invalid points; None = all valid.
        min_depth: camera z (metres) below which a point is divided by ``min_depth``, which
            pushes a point behind the camera to ``max_error_px`` unless it lies within
            ``min_depth * max_error_px / f`` of the camera centre's ray.
        buffers: scratch buffers (inference only, no autograd): the result then lives in them
            and is valid until they are used again.

    One batched matmul (K [R|t])_k @ [X; 1] for all K poses, then per point
    e = |(p_x - u p_z, p_y - v p_z)| / p_z, which needs no per-hypothesis division of x and y.
    With autograd the square root has a finite gradient at zero error.
    """
    B, Kh = T_cw_bk44.shape[:2]
    M = points_b4m.shape[2]
    P_bk34 = K_b33[:, None] @ T_cw_bk44[:, :, :3, :]
    grad = torch.is_grad_enabled() and (T_cw_bk44.requires_grad or points_b4m.requires_grad)
    if grad:
        buffers = None
    ref = points_b4m

    def buffer(name: str, shape: tuple[int, ...]) -> Tensor | None:
        return buffers.take(name, shape, ref) if buffers is not None else None

    proj_bk3m = transform_columns(P_bk34, points_b4m, buffer(
        'proj', (Kh * 3, M) if B == 1 else (B, Kh * 3, M)))
    x, y, z = proj_bk3m.unbind(2)
    u, v = pixels_2m.unbind(-2)
    if pixels_2m.dim() == 3:  # one row of pixels per image
        u, v = u[:, None], v[:, None]
    qu = torch.addcmul(x, z, u, value=-1.0, out=buffer('qu', (B, Kh, M)))
    qv = torch.addcmul(y, z, v, value=-1.0, out=buffer('qv', (B, Kh, M)))
    if grad:
        # tiny offset: finite sqrt gradient at zero error
        err = torch.sqrt(qu * qu + qv * qv + 1e-12) / z.clamp(min=min_depth)
        err = err.clamp(max=max_error_px)
    else:  # inference: in place, no autograd bookkeeping
        z = torch.clamp(z, min=min_depth, out=buffer('z', (B, Kh, M)))
        err = qu.mul_(qu).addcmul_(qv, qv).sqrt_().div_(z).clamp_(max=max_error_px)
    if valid_bm is not None:
        invalid = ~valid_bm[:, None]
        err = err.masked_fill_(invalid, max_error_px) if not grad else err.masked_fill(
            invalid, max_error_px)
    return err


def reprojection_errors(T_cw: Tensor, points_world: Tensor, pixels: Tensor, K: Tensor,
                        max_error_px: float = 1000.0,
                        min_depth: float = DEFAULT_MIN_DEPTH) -> Tensor:
    """Pixel reprojection errors |p_i - pi(K T_cw y_i)| of scene coordinates.

    Two layouts:
      * points: ``T_cw (..., 4, 4)``, ``points_world (..., N, 3)``, ``pixels (..., N, 2)``,
        ``K (..., 3, 3)`` (leading dims broadcast) -> ``(..., N)``.
      * image: ``T_cw (B, M, 4, 4)`` (M hypotheses) or ``(B, 4, 4)``, scene coordinates
        ``(B, 3, H, W)``, pixels ``(2, H, W)`` or ``(B, 2, H, W)`` (e.g. from
        :func:`dsac_ros.geometry.camera.cell_centers`), ``K (B, 3, 3)`` or ``(3, 3)``
        -> ``(B, M, H, W)`` or ``(B, H, W)``.

    Points or pixels with NaN / inf get ``max_error_px``, points behind the camera too (see
    `reprojection_error_maps` for ``min_depth``); all errors are clamped to ``max_error_px``.
    Finite values and gradients.
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
        pix = pixels.reshape(pixels.shape[:-2] + (H * W,))
        err = _errors(T.expand(B, -1, 4, 4), K.expand(B, 3, 3),
                      points_world.reshape(B, 3, H * W), pix, max_error_px, min_depth)
        err = err.reshape(err.shape[:2] + (H, W))
        return err[:, 0] if single else err
    if points_world.dim() < 2 or points_world.shape[-1] != 3:
        raise ValueError('points_world must be (..., N, 3) or (B, 3, H, W), got '
                         f'{tuple(points_world.shape)}')
    if pixels.shape[-1] != 2 or pixels.shape[:-1] != points_world.shape[:-1]:
        raise ValueError(f'pixels must be (..., N, 2) matching points_world '
                         f'{tuple(points_world.shape)}, got {tuple(pixels.shape)}')
    N = points_world.shape[-2]
    lead = torch.broadcast_shapes(T_cw.shape[:-2], points_world.shape[:-2], K.shape[:-2])
    B = math.prod(lead)
    err = _errors(T_cw.expand(lead + (4, 4)).reshape(B, 1, 4, 4),
                  K.expand(lead + (3, 3)).reshape(B, 3, 3),
                  points_world.expand(lead + (N, 3)).reshape(B, N, 3).transpose(1, 2),
                  pixels.expand(lead + (N, 2)).reshape(B, N, 2).transpose(1, 2),
                  max_error_px, min_depth)
    return err.reshape(lead + (N,))


def _errors(T_bk44: Tensor, K_b33: Tensor, points_b3m: Tensor, pixels_b2m: Tensor,
            max_error_px: float, min_depth: float) -> Tensor:
    """`reprojection_error_maps` with non-finite points / pixels marked invalid."""
    # Replace non-finite inputs before any product: NaN * 0 would still poison the gradients.
    valid = torch.isfinite(points_b3m).all(-2) & torch.isfinite(pixels_b2m).all(-2)
    valid = valid.expand(points_b3m.shape[0], -1)
    points = torch.where(valid[:, None], points_b3m, torch.zeros_like(points_b3m))
    pixels = torch.where(torch.isfinite(pixels_b2m), pixels_b2m, torch.zeros_like(pixels_b2m))
    points_b4m = torch.cat([points, valid[:, None].to(points.dtype)], dim=1)
    if pixels.dim() == 2 or pixels.shape[0] == 1:
        pixels = pixels.reshape(2, -1)
    return reprojection_error_maps(T_bk44, K_b33.to(points.dtype), points_b4m, pixels,
                                   max_error_px, valid, min_depth)


def soft_inlier_count(errors: Tensor, threshold_px: float = 10.0, beta: float = 0.5,
                      dims: int | tuple[int, ...] = -1, inplace: bool = False) -> Tensor:
    """Differentiable inlier count: sum over ``dims`` of sigmoid(beta * (threshold_px - e)).

    ``errors`` in pixels, e.g. (B, M, N) with dims=-1 or error images (B, M, H, W) with
    dims=(-2, -1). ``beta`` (1/px) sets the sharpness (DSAC uses 0.5 with a 10 px threshold).
    Without autograd the logits are built in place, in ``errors`` itself with ``inplace``
    (scratch buffers of the estimator).
    """
    if torch.is_grad_enabled() and errors.requires_grad:
        return torch.sigmoid(beta * (threshold_px - errors)).sum(dims)
    logits = errors.mul_(-beta) if inplace else torch.mul(errors, -beta)
    return logits.add_(beta * threshold_px).sigmoid_().sum(dims)


def hard_inliers(errors: Tensor, threshold_px: float = 10.0) -> Tensor:
    """Boolean inlier mask ``errors < threshold_px`` (same shape as errors, pixels)."""
    return errors < threshold_px
