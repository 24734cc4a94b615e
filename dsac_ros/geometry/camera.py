"""Pinhole camera model (OpenCV convention), batched and differentiable.

Conventions: camera frame x right, y down, z forward. Pixel (u, v): u = column, v = row, the
centre of the top-left pixel is (0, 0). Intrinsics are 3x3 matrices
``K = [[fx, s, cx], [0, fy, cy], [0, 0, 1]]`` (skew ``s`` usually 0) with any leading batch dims.

The intrinsics checks and the resize scaling have numpy entry points (``*_np``) for the
relocalizer, the data readers and the ROS edge: one rule for what a usable K is and one formula
for scaling it.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

__all__ = [
    'as_intrinsics_np',
    'backproject',
    'cell_centers',
    'check_intrinsics',
    'check_intrinsics_values_np',
    'make_intrinsics',
    'normalize_pixels',
    'project',
    'scale_intrinsics',
    'scale_intrinsics_np',
]

# Points closer than this to the z = 0 plane are divided by +-_MIN_Z instead (no inf / NaN).
_MIN_Z = 1e-8


def check_intrinsics(K: Tensor, name: str = 'K', values: bool = False) -> None:
    """Raise ValueError unless ``K`` is a floating tensor of shape (..., 3, 3).

    With ``values`` also the numbers (`check_intrinsics_values_np`; copies K to the host).
    """
    if not isinstance(K, Tensor):
        raise ValueError(f'{name} must be a torch.Tensor, got {type(K).__name__}')
    if K.dim() < 2 or K.shape[-2:] != (3, 3):
        raise ValueError(f'{name} must have shape (..., 3, 3), got {tuple(K.shape)}')
    if not K.is_floating_point():
        raise ValueError(f'{name} must be a floating tensor, got {K.dtype}')
    if values:
        check_intrinsics_values_np(K.detach().cpu().double().numpy(), name)


def check_intrinsics_values_np(K: np.ndarray, name: str = 'K') -> None:
    """Raise ValueError unless every K (..., 3, 3) is a usable pinhole matrix: finite, focal
    lengths > 0, upper triangular with last row (0, 0, 1) (skew allowed)."""
    K = np.asarray(K, dtype=np.float64)
    if not np.isfinite(K).all():
        raise ValueError(f'{name} contains NaN or inf: {K.tolist()}')
    fx, fy = K[..., 0, 0], K[..., 1, 1]
    if not ((fx > 0).all() and (fy > 0).all()):
        raise ValueError(f'{name} focal lengths must be > 0, got fx={fx.tolist()}, '
                         f'fy={fy.tolist()}')
    if (K[..., 1, 0] != 0).any() or (K[..., 2, :] != (0.0, 0.0, 1.0)).any():
        raise ValueError(f'{name} must be upper triangular with last row (0, 0, 1), got '
                         f'{K.tolist()}')


def as_intrinsics_np(K_33, name: str = 'K') -> np.ndarray:
    """A checked (3, 3) float64 copy of a pinhole matrix given as any array-like.

    Raises:
        ValueError: not (3, 3) numbers, or not a usable pinhole matrix
            (`check_intrinsics_values_np`); the message starts with ``name``.
    """
    try:
        K = np.array(K_33, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f'{name} must be a (3, 3) array of numbers: {exc}') from exc
    if K.shape != (3, 3):
        raise ValueError(f'{name} must have shape (3, 3), got {K.shape}')
    check_intrinsics_values_np(K, name)
    return K


def _check_last(x: Tensor, size: int, name: str) -> None:
    if not isinstance(x, Tensor):
        raise ValueError(f'{name} must be a torch.Tensor, got {type(x).__name__}')
    if x.dim() < 1 or x.shape[-1] != size:
        raise ValueError(f'{name} must have shape (..., {size}), got {tuple(x.shape)}')
    if not x.is_floating_point():
        raise ValueError(f'{name} must be a floating tensor, got {x.dtype}')


def make_intrinsics(fx, fy, cx, cy, skew=0.0, device=None, dtype=None) -> Tensor:
    """Build K (..., 3, 3) from focal lengths and principal point (pixels); broadcasts."""
    fx, fy, cx, cy, skew = torch.broadcast_tensors(
        *(torch.as_tensor(v, device=device, dtype=dtype or torch.get_default_dtype())
          for v in (fx, fy, cx, cy, skew)))
    zero = torch.zeros_like(fx)
    one = torch.ones_like(fx)
    rows = [torch.stack([fx, skew, cx], -1), torch.stack([zero, fy, cy], -1),
            torch.stack([zero, zero, one], -1)]
    return torch.stack(rows, -2)


def cell_centers(height: int, width: int, stride: int = 8, device=None, dtype=None) -> Tensor:
    """Pixel centres of the cells of a (height, width) map with output ``stride``.

    Returns (2, height, width): channel 0 is u = stride * j + stride // 2 (column), channel 1 is
    v = stride * i + stride // 2 (row), in full-resolution image pixels.
    """
    if height <= 0 or width <= 0 or stride <= 0:
        raise ValueError(f'height, width, stride must be positive, got {height}, {width}, '
                         f'{stride}')
    dtype = dtype or torch.get_default_dtype()
    offset = stride // 2
    u = torch.arange(width, device=device, dtype=dtype) * stride + offset
    v = torch.arange(height, device=device, dtype=dtype) * stride + offset
    return torch.stack([u.expand(height, width), v[:, None].expand(height, width)], 0)


def _safe_z(z: Tensor) -> Tensor:
    # Keep the sign so points behind the camera still project (mirrored) and stay finite.
    tiny = z.abs() < _MIN_Z
    return torch.where(tiny, torch.where(z < 0, -_MIN_Z, _MIN_Z).to(z.dtype), z)


def project(points_cam: Tensor, K: Tensor) -> Tensor:
    """Project camera-frame points (..., 3) in metres to pixels (..., 2) with K (..., 3, 3).

    K's batch dims align with the LEADING dims of the points: K (3, 3), (B, 3, 3) with points
    (B, N, 3) or (B, H, W, 3), or one K per point. Points with |z| < 1e-8 are divided by
    +-1e-8 (finite, no NaN).
    """
    _check_last(points_cam, 3, 'points_cam')
    check_intrinsics(K)
    K = _align_K(K, points_cam)
    x, y, z = points_cam.unbind(-1)
    z = _safe_z(z)
    xn, yn = x / z, y / z
    u = K[..., 0, 0] * xn + K[..., 0, 1] * yn + K[..., 0, 2]
    v = K[..., 1, 1] * yn + K[..., 1, 2]
    return torch.stack([u, v], -1)


def _align_K(K: Tensor, points: Tensor) -> Tensor:
    """View K (..., 3, 3) so its batch dims align with the LEADING dims of points (..., d)."""
    missing = (points.dim() - 1) - (K.dim() - 2)
    if missing > 0:
        K = K.reshape(K.shape[:-2] + (1,) * missing + (3, 3))
    return K


def normalize_pixels(pixels: Tensor, K: Tensor) -> Tensor:
    """Pixels (..., 2) -> normalised image coordinates (x/z, y/z) (..., 2); inverse of K.

    K broadcasting as in :func:`project`.
    """
    _check_last(pixels, 2, 'pixels')
    check_intrinsics(K)
    K = _align_K(K, pixels)
    u, v = pixels.unbind(-1)
    yn = (v - K[..., 1, 2]) / K[..., 1, 1]
    xn = (u - K[..., 0, 2] - K[..., 0, 1] * yn) / K[..., 0, 0]
    return torch.stack([xn, yn], -1)


def backproject(pixels: Tensor, depth: Tensor, K: Tensor) -> Tensor:
    """Pixels (..., 2) with depth (...) in metres (z, not ray length) -> camera points (..., 3).

    K broadcasting as in :func:`project`.
    """
    xy = normalize_pixels(pixels, K)
    if depth.shape != xy.shape[:-1]:
        depth = depth.expand(xy.shape[:-1])
    return torch.cat([xy * depth[..., None], depth[..., None]], -1)


def scale_intrinsics(K: Tensor, sx: float | Tensor, sy: float | Tensor) -> Tensor:
    """Intrinsics of an image resized by factors (sx, sy) (new size = old size * s).

    Follows the pixel-centre convention: a pixel centre u maps to sx (u + 0.5) - 0.5, so
    fx' = sx fx, skew' = sx skew, cx' = sx (cx + 0.5) - 0.5, and likewise for y.
    Scene-coordinate maps with an output stride do not need this: pair them with
    :func:`cell_centers` and the full-resolution K.
    """
    check_intrinsics(K)
    sx = torch.as_tensor(sx, dtype=K.dtype, device=K.device)
    sy = torch.as_tensor(sy, dtype=K.dtype, device=K.device)
    if (sx <= 0).any() or (sy <= 0).any():
        raise ValueError('scale factors must be positive')
    row0 = torch.stack([K[..., 0, 0] * sx, K[..., 0, 1] * sx, (K[..., 0, 2] + 0.5) * sx - 0.5], -1)
    row1 = torch.stack([K[..., 1, 0] * sy, K[..., 1, 1] * sy, (K[..., 1, 2] + 0.5) * sy - 0.5], -1)
    return torch.stack([row0, row1, K[..., 2, :]], -2)


def scale_intrinsics_np(K_33, sx: float, sy: float) -> np.ndarray:
    """`scale_intrinsics` of a numpy K (..., 3, 3) (float64 result, pixel-centre convention)."""
    K = torch.from_numpy(np.array(K_33, dtype=np.float64))
    return scale_intrinsics(K, sx, sy).numpy()
