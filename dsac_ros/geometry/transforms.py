"""Rotations and rigid transforms, batched over leading dims and differentiable.

Conventions (used by the whole package):
- Camera frame: OpenCV (x right, y down, z forward).
- ``T_cw`` (4x4) maps world to camera, ``x_cam = R x_world + t``; ``T_wc = invert_se3(T_cw)``
  maps camera to world and its translation is the camera centre in world coordinates.
- Axis-angle vectors are ``angle * unit_axis`` in radians; quaternions are (x, y, z, w) with
  w >= 0 on output; twists are ``[rho (m), phi (rad)]``.
- Errors are reported in degrees and metres; the pose loss in max(degrees, centimetres).

All torch functions have finite gradients at the identity rotation and at 180 degrees. The
``*_np`` functions are the numpy entry points of the same code (float64 in, float64 out) for
bag extraction, ROS messages and metrics, so every quaternion and pose error of the package
comes from one implementation.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
from torch import Tensor

__all__ = [
    'axis_angle_to_matrix',
    'compose_se3',
    'hat',
    'invert_se3',
    'invert_se3_np',
    'make_se3',
    'matrix_to_axis_angle',
    'matrix_to_pose_np',
    'matrix_to_quaternion',
    'matrix_to_quaternion_np',
    'perturb_poses',
    'pose_errors',
    'pose_errors_np',
    'pose_loss',
    'pose_to_matrix_np',
    'quaternion_slerp',
    'quaternion_slerp_np',
    'quaternion_to_matrix',
    'quaternion_to_matrix_np',
    'rotate_twist_covariance_np',
    'rotation_angle',
    'rotation_error_deg',
    'se3_exp',
    'transform_points',
    'translation_error_m',
]

# Below this squared angle (rad^2) Taylor series replace sin(x)/x-type ratios.
_SMALL_SQ = 1e-4


def _check(x: Tensor, tail: tuple[int, ...], name: str) -> None:
    if not isinstance(x, Tensor):
        raise ValueError(f'{name} must be a torch.Tensor, got {type(x).__name__}')
    if x.dim() < len(tail) or tuple(x.shape[-len(tail):]) != tail:
        shape = ', '.join(str(t) for t in tail)
        raise ValueError(f'{name} must have shape (..., {shape}), got {tuple(x.shape)}')
    if not x.is_floating_point():
        raise ValueError(f'{name} must be a floating tensor, got {x.dtype}')


def hat(v: Tensor) -> Tensor:
    """Skew-symmetric matrices (..., 3, 3) with hat(v) @ x = v x x, from v (..., 3)."""
    _check(v, (3,), 'v')
    x, y, z = v.unbind(-1)
    o = torch.zeros_like(x)
    return torch.stack([o, -z, y, z, o, -x, -y, x, o], -1).reshape(v.shape + (3,))


def _safe_sqrt(x: Tensor, tiny: float = 1e-30) -> Tensor:
    # Gradient 0 (not inf) at x = 0.
    return torch.sqrt(torch.clamp(x, min=tiny)) * (x > tiny)


def _so3_coeffs(theta_sq: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """A = sin t / t, B = (1 - cos t) / t^2, C = (t - sin t) / t^3 with Taylor near 0."""
    small = theta_sq < _SMALL_SQ
    ts = torch.where(small, torch.ones_like(theta_sq), theta_sq)
    t = torch.sqrt(ts)
    s = torch.sin(t)
    half = torch.sin(0.5 * t)
    A = torch.where(small, 1 - theta_sq / 6 + theta_sq ** 2 / 120, s / t)
    B = torch.where(small, 0.5 - theta_sq / 24 + theta_sq ** 2 / 720, 2 * half * half / ts)
    C = torch.where(small, 1 / 6 - theta_sq / 120 + theta_sq ** 2 / 5040, (t - s) / (ts * t))
    return A, B, C


def axis_angle_to_matrix(axis_angle: Tensor) -> Tensor:
    """Rodrigues: axis-angle (..., 3) in radians -> rotation matrices (..., 3, 3)."""
    _check(axis_angle, (3,), 'axis_angle')
    theta_sq = (axis_angle * axis_angle).sum(-1)
    A, B, _ = _so3_coeffs(theta_sq)
    W = hat(axis_angle)
    eye = torch.eye(3, dtype=axis_angle.dtype, device=axis_angle.device)
    return eye + A[..., None, None] * W + B[..., None, None] * (W @ W)


def _vee_skew(R: Tensor) -> Tensor:
    """(R - R^T) / 2 as a vector (..., 3): sin(angle) * axis."""
    return 0.5 * torch.stack([R[..., 2, 1] - R[..., 1, 2], R[..., 0, 2] - R[..., 2, 0],
                              R[..., 1, 0] - R[..., 0, 1]], -1)


def rotation_angle(R: Tensor) -> Tensor:
    """Rotation angle in radians, in [0, pi], of rotation matrices (..., 3, 3).

    atan2(|sin|, cos) is accurate at all angles; the gradient at angle 0 is 0 (not NaN).
    """
    _check(R, (3, 3), 'R')
    s = _safe_sqrt((_vee_skew(R) ** 2).sum(-1))
    c = 0.5 * (R[..., 0, 0] + R[..., 1, 1] + R[..., 2, 2] - 1)
    return torch.atan2(s, c)


def matrix_to_axis_angle(R: Tensor) -> Tensor:
    """Rotation matrices (..., 3, 3) -> axis-angle (..., 3), angle in [0, pi] radians.

    Uses sin-part of R for angles below 120 degrees and the symmetric part near 180 degrees.
    """
    _check(R, (3, 3), 'R')
    v = _vee_skew(R)
    s_sq = (v * v).sum(-1)
    s = _safe_sqrt(s_sq)
    c = 0.5 * (R[..., 0, 0] + R[..., 1, 1] + R[..., 2, 2] - 1)
    theta = torch.atan2(s, c)
    # Small/medium angles: axis_angle = v * theta / sin(theta).
    small = s_sq < _SMALL_SQ
    s_safe = torch.where(small, torch.ones_like(s), s)
    factor = torch.where(small, 1 + s_sq / 6 + 3 * s_sq ** 2 / 40, theta / s_safe)
    aa_sin = v * factor[..., None]
    # Large angles: (R + R^T)/2 - c I = (1 - c) n n^T; take the column with largest diagonal.
    sym = 0.5 * (R + R.transpose(-1, -2))
    eye = torch.eye(3, dtype=R.dtype, device=R.device)
    one_minus_c = torch.clamp(1 - c, min=0.5)  # only used where c < -0.5
    nn = (sym - c[..., None, None] * eye) / one_minus_c[..., None, None]
    diag = torch.diagonal(nn, dim1=-2, dim2=-1)
    k = diag.argmax(-1)
    col = torch.gather(nn, -1, k[..., None, None].expand(nn.shape[:-1] + (1,))).squeeze(-1)
    dk = torch.gather(diag, -1, k[..., None]).squeeze(-1)
    n = col / torch.sqrt(torch.clamp(dk, min=1e-12))[..., None]
    sign = torch.where((n * v).sum(-1) < 0, -1.0, 1.0).to(R.dtype)
    aa_pi = n * (sign * theta)[..., None]
    return torch.where((c < -0.5)[..., None], aa_pi, aa_sin)


def matrix_to_quaternion(R: Tensor) -> Tensor:
    """Rotation matrices (..., 3, 3) -> unit quaternions (..., 4) as (x, y, z, w), w >= 0.

    Shepperd's method: all four candidate formulas, pick the best conditioned per matrix.
    """
    _check(R, (3, 3), 'R')
    m00, m01, m02 = R[..., 0, 0], R[..., 0, 1], R[..., 0, 2]
    m10, m11, m12 = R[..., 1, 0], R[..., 1, 1], R[..., 1, 2]
    m20, m21, m22 = R[..., 2, 0], R[..., 2, 1], R[..., 2, 2]
    # 4 q_k^2 for k = x, y, z, w.
    q_sq = torch.stack([1 + m00 - m11 - m22, 1 - m00 + m11 - m22, 1 - m00 - m11 + m22,
                        1 + m00 + m11 + m22], -1)
    # Each row is 4 q_k * (x, y, z, w).
    cands = torch.stack([
        torch.stack([q_sq[..., 0], m01 + m10, m02 + m20, m21 - m12], -1),
        torch.stack([m01 + m10, q_sq[..., 1], m12 + m21, m02 - m20], -1),
        torch.stack([m02 + m20, m12 + m21, q_sq[..., 2], m10 - m01], -1),
        torch.stack([m21 - m12, m02 - m20, m10 - m01, q_sq[..., 3]], -1),
    ], -2)
    k = q_sq.argmax(-1)
    best = torch.gather(cands, -2, k[..., None, None].expand(k.shape + (1, 4))).squeeze(-2)
    qk = torch.gather(q_sq, -1, k[..., None])
    q = best / (2 * torch.sqrt(torch.clamp(qk, min=1e-12)))
    q = q / torch.linalg.vector_norm(q, dim=-1, keepdim=True)
    return torch.where(q[..., 3:] < 0, -q, q)


def quaternion_to_matrix(quaternion: Tensor) -> Tensor:
    """Quaternions (..., 4) as (x, y, z, w), normalised here -> rotation matrices (..., 3, 3)."""
    _check(quaternion, (4,), 'quaternion')
    norm_sq = (quaternion * quaternion).sum(-1, keepdim=True)
    q = quaternion / torch.sqrt(torch.clamp(norm_sq, min=1e-24))
    x, y, z, w = q.unbind(-1)
    rows = [
        1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w),
        2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w),
        2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y),
    ]
    return torch.stack(rows, -1).reshape(q.shape[:-1] + (3, 3))


def make_se3(R: Tensor, t: Tensor) -> Tensor:
    """Stack R (..., 3, 3) and t (..., 3) into homogeneous 4x4 matrices (..., 4, 4)."""
    _check(R, (3, 3), 'R')
    _check(t, (3,), 't')
    R, t = torch.broadcast_tensors(R, t[..., None].expand(t.shape + (3,)))
    top = torch.cat([R, t[..., :1]], -1)
    bottom = torch.zeros(top.shape[:-2] + (1, 4), dtype=R.dtype, device=R.device)
    bottom[..., 0, 3] = 1
    return torch.cat([top, bottom], -2)


def se3_exp(xi: Tensor) -> Tensor:
    """Exponential map of twists xi (..., 6) = [rho (m), phi (rad)] -> 4x4 transforms.

    R = exp(hat(phi)), t = V(phi) rho (exact SE(3) exponential).
    """
    _check(xi, (6,), 'xi')
    rho, phi = xi[..., :3], xi[..., 3:]
    theta_sq = (phi * phi).sum(-1)
    A, B, C = _so3_coeffs(theta_sq)
    W = hat(phi)
    W2 = W @ W
    eye = torch.eye(3, dtype=xi.dtype, device=xi.device)
    R = eye + A[..., None, None] * W + B[..., None, None] * W2
    V = eye + B[..., None, None] * W + C[..., None, None] * W2
    return make_se3(R, (V @ rho[..., None]).squeeze(-1))


def invert_se3(T: Tensor) -> Tensor:
    """Inverse of rigid transforms (..., 4, 4): [R^T, -R^T t]. T_cw <-> T_wc."""
    _check(T, (4, 4), 'T')
    Rt = T[..., :3, :3].transpose(-1, -2)
    t = -(Rt @ T[..., :3, 3:]).squeeze(-1)
    return make_se3(Rt, t)


def compose_se3(T_ab: Tensor, T_bc: Tensor) -> Tensor:
    """T_ac = T_ab @ T_bc for rigid transforms (..., 4, 4) (broadcasting)."""
    _check(T_ab, (4, 4), 'T_ab')
    _check(T_bc, (4, 4), 'T_bc')
    return T_ab @ T_bc


def transform_points(T: Tensor, points: Tensor) -> Tensor:
    """Apply T (..., 4, 4) to points (..., N, 3): R p + t. T's batch dims align with the
    leading dims of points (T (B, 4, 4) with points (B, N, 3) or (B, H, W, 3))."""
    _check(T, (4, 4), 'T')
    _check(points, (3,), 'points')
    missing = (points.dim() - 1) - (T.dim() - 2)
    if missing > 0:
        T = T.reshape(T.shape[:-2] + (1,) * missing + (4, 4))
    R = T[..., :3, :3]
    t = T[..., :3, 3]
    return (R @ points[..., None]).squeeze(-1) + t


def rotation_error_deg(R_a: Tensor, R_b: Tensor) -> Tensor:
    """Angle (degrees) of the relative rotation R_a^T R_b for (..., 3, 3); finite gradients."""
    _check(R_a, (3, 3), 'R_a')
    _check(R_b, (3, 3), 'R_b')
    return torch.rad2deg(rotation_angle(R_a.transpose(-1, -2) @ R_b))


def translation_error_m(t_a: Tensor, t_b: Tensor) -> Tensor:
    """Euclidean distance (same unit as input, metres) between (..., 3); gradient 0 at 0."""
    _check(t_a, (3,), 't_a')
    _check(t_b, (3,), 't_b')
    d = t_a - t_b
    return _safe_sqrt((d * d).sum(-1))


def _camera_centre(T_cw: Tensor) -> Tensor:
    return -(T_cw[..., :3, :3].transpose(-1, -2) @ T_cw[..., :3, 3:]).squeeze(-1)


def pose_errors(T_cw_est: Tensor, T_cw_gt: Tensor) -> tuple[Tensor, Tensor]:
    """Rotation error (degrees) and camera-centre error (metres) of world-to-camera poses.

    Both inputs are T_cw (..., 4, 4). The rotation error is the same for T_wc; the
    translation error is measured between camera centres (the translations of T_wc).
    """
    _check(T_cw_est, (4, 4), 'T_cw_est')
    _check(T_cw_gt, (4, 4), 'T_cw_gt')
    deg = rotation_error_deg(T_cw_est[..., :3, :3], T_cw_gt[..., :3, :3])
    m = translation_error_m(_camera_centre(T_cw_est), _camera_centre(T_cw_gt))
    return deg, m


def pose_loss(T_cw_est: Tensor, T_cw_gt: Tensor) -> Tensor:
    """DSAC pose loss (paper Eq. 9): max(angle in degrees, camera-centre error in cm), (...)."""
    deg, m = pose_errors(T_cw_est, T_cw_gt)
    return torch.maximum(deg, 100.0 * m)


def perturb_poses(T_cw_b44: Tensor, generator: torch.Generator | None,
                  min_magnitude: float = 1.0, max_magnitude: float = 30.0) -> Tensor:
    """Poses around the ground truth for score regression, some within 5 deg / 5 cm, some
    beyond (paper Sec. 4.1).

    A magnitude m is drawn log-uniformly in [min, max]; the rotation error is m * U(0.3, 1)
    degrees about a random axis and the camera centre moves m * U(0.3, 1) centimetres in a
    random direction. With the defaults about half of the poses fall within 5 deg / 5 cm.

    T_cw_b44: (B, 4, 4) world-to-camera. Returns (B, 4, 4) world-to-camera, same dtype.
    """
    B = T_cw_b44.shape[0]
    device, dtype = T_cw_b44.device, T_cw_b44.dtype

    def rand(*shape: int) -> Tensor:
        return torch.rand(*shape, generator=generator, dtype=torch.float64).to(device, dtype)

    def direction() -> Tensor:
        v = torch.randn(B, 3, generator=generator, dtype=torch.float64).to(device, dtype)
        return v / v.norm(dim=-1, keepdim=True).clamp_min(1e-9)

    log_lo, log_hi = math.log(min_magnitude), math.log(max_magnitude)
    m = torch.exp(log_lo + (log_hi - log_lo) * rand(B))
    angle_rad = torch.deg2rad(m * (0.3 + 0.7 * rand(B)))
    shift_m = 0.01 * m * (0.3 + 0.7 * rand(B))
    R_delta = axis_angle_to_matrix(direction() * angle_rad[:, None])
    T_wc = invert_se3(T_cw_b44)
    # Rotate the camera about its own centre, then move the centre.
    R_wc = T_wc[:, :3, :3] @ R_delta
    c = T_wc[:, :3, 3] + direction() * shift_m[:, None]
    return invert_se3(make_se3(R_wc, c))


def quaternion_slerp(q0: Tensor, q1: Tensor, alpha: Tensor | float) -> Tensor:
    """Spherical interpolation of unit quaternions (..., 4) (x, y, z, w) along the shorter arc.

    Both inputs are normalised here; ``alpha`` in [0, 1] (0 -> q0, 1 -> q1) broadcasts. Nearly
    parallel pairs (cos > 0.9995) use normalised linear interpolation, exact to float precision.
    """
    _check(q0, (4,), 'q0')
    _check(q1, (4,), 'q1')
    q0 = q0 / torch.linalg.vector_norm(q0, dim=-1, keepdim=True)
    q1 = q1 / torch.linalg.vector_norm(q1, dim=-1, keepdim=True)
    alpha = torch.as_tensor(alpha, dtype=q0.dtype, device=q0.device)[..., None]
    dot = (q0 * q1).sum(-1, keepdim=True)
    q1 = torch.where(dot < 0, -q1, q1)
    dot = dot.abs()
    near = dot > 0.9995
    lerp = q0 + alpha * (q1 - q0)
    lerp = lerp / torch.linalg.vector_norm(lerp, dim=-1, keepdim=True)
    theta = torch.acos(torch.where(near, torch.zeros_like(dot), dot.clamp(max=1.0)))
    s = torch.where(near, torch.ones_like(theta), torch.sin(theta))
    arc = (torch.sin((1 - alpha) * theta) * q0 + torch.sin(alpha * theta) * q1) / s
    return torch.where(near, lerp, arc)


# ---------------------------------------------------------------------------------------------
# numpy entry points: the functions above on float64 arrays.


def _float64_tensor(array) -> Tensor:
    # A copy: inputs may be read-only arrays (torch warns about those) or nested lists.
    return torch.from_numpy(np.array(array, dtype=np.float64))


def _on_numpy(fn: Callable[..., Tensor], *arrays) -> np.ndarray:
    return fn(*(_float64_tensor(a) for a in arrays)).numpy()


def quaternion_to_matrix_np(q_xyzw) -> np.ndarray:
    """Quaternions (..., 4) (x, y, z, w), normalised here -> rotations (..., 3, 3), float64."""
    return _on_numpy(quaternion_to_matrix, q_xyzw)


def matrix_to_quaternion_np(R) -> np.ndarray:
    """Rotations (..., 3, 3) -> unit quaternions (..., 4) (x, y, z, w) with w >= 0, float64."""
    return _on_numpy(matrix_to_quaternion, R)


def quaternion_slerp_np(q0_xyzw, q1_xyzw, alpha: float) -> np.ndarray:
    """`quaternion_slerp` on numpy (x, y, z, w) quaternions (..., 4)."""
    return _on_numpy(quaternion_slerp, q0_xyzw, q1_xyzw, alpha)


def pose_to_matrix_np(translation, q_xyzw) -> np.ndarray:
    """Rigid transform (..., 4, 4) float64 from translations (..., 3) (metres) and quaternions
    (..., 4) (x, y, z, w; normalised here), e.g. a ROS Pose or Transform."""
    return _on_numpy(lambda t, q: make_se3(quaternion_to_matrix(q), t), translation, q_xyzw)


def matrix_to_pose_np(T_44) -> tuple[np.ndarray, np.ndarray]:
    """A finite 4x4 rigid transform -> (translation (3,), quaternion (4,) x, y, z, w, w >= 0).

    Raises:
        ValueError: not a finite 4x4 array.
    """
    T = np.asarray(T_44, dtype=np.float64)
    if T.shape != (4, 4) or not np.isfinite(T).all():
        raise ValueError(f'expected a finite 4x4 transform, got shape {T.shape}')
    return T[:3, 3].copy(), matrix_to_quaternion_np(T[:3, :3])


def invert_se3_np(T) -> np.ndarray:
    """`invert_se3` of rigid transforms (..., 4, 4) as float64 numpy."""
    return _on_numpy(invert_se3, T)


def pose_errors_np(T_est_n44, T_gt_n44, convention: str = 'T_cw'
                   ) -> tuple[np.ndarray, np.ndarray]:
    """`pose_errors` on numpy poses (..., 4, 4): rotation error (degrees) and camera-centre
    error (metres), float64.

    Args:
        convention: 'T_cw' when the poses are world-to-camera, 'T_wc' when camera-to-world
            (as ROS publishes them); the camera centre is taken accordingly.
    """
    if convention not in ('T_cw', 'T_wc'):
        raise ValueError(f"convention must be 'T_cw' or 'T_wc', got {convention!r}")
    est, gt = _float64_tensor(T_est_n44), _float64_tensor(T_gt_n44)
    if convention == 'T_wc':
        est, gt = invert_se3(est), invert_se3(gt)
    deg, m = pose_errors(est, gt)
    return deg.numpy(), m.numpy()


def rotate_twist_covariance_np(covariance_66, R_33) -> np.ndarray:
    """Covariance (6, 6) of a twist xi = (rho, phi) (translation first) expressed in frame A ->
    the same in frame B, for the rotation ``R_33`` = R_BA (A axes -> B axes).

    To first order a perturbation ``T_BA exp(xi^)`` moves the origin of A by ``R_BA rho`` and
    rotates it by ``R_BA phi`` in B axes, so ``cov_B = J cov_A J^T`` with
    ``J = blockdiag(R_BA, R_BA)`` (symmetrised). With R_wc this maps the estimator's camera-frame
    pose covariance to the world frame (what ROS PoseWithCovariance wants, same order).
    """
    R = np.asarray(R_33, dtype=np.float64)
    J = np.zeros((6, 6))
    J[:3, :3] = R
    J[3:, 3:] = R
    out = J @ np.asarray(covariance_66, dtype=np.float64) @ J.T
    return 0.5 * (out + out.T)


def move_pose_covariance_np(covariance_66, lever_arm_3) -> np.ndarray:
    """Covariance (6, 6) of the pose of frame A -> that of a frame B rigidly attached to A.

    Both in ROS ``PoseWithCovariance`` form: (position x, y, z; rotation about the parent's
    x, y, z axes), all in the parent frame (e.g. map), translation first. ``lever_arm_3`` is
    the vector from A's origin to B's origin in the parent frame, ``p_B - p_A = R_pA t_AB``.
    To first order a perturbation (dp, dtheta) of A moves B's origin by
    ``dp + dtheta x r = dp - [r]x dtheta`` and rotates B by the same dtheta, so
    ``cov_B = J cov_A J^T`` with ``J = [[I, -[r]x], [0, I]]`` (symmetrised). E.g. the camera's
    covariance in the map -> the robot base's (`rotate_twist_covariance_np` first brings the
    estimator's camera-frame covariance into this form).
    """
    r = np.asarray(lever_arm_3, dtype=np.float64).reshape(3)
    J = np.eye(6)
    J[:3, 3:] = -np.array([[0.0, -r[2], r[1]], [r[2], 0.0, -r[0]], [-r[1], r[0], 0.0]])
    out = J @ np.asarray(covariance_66, dtype=np.float64) @ J.T
    return 0.5 * (out + out.T)


def inflate_pose_covariance_np(covariance_66, scale: float = 1.0, floor_std_m: float = 0.0,
                               floor_std_rad: float = 0.0) -> np.ndarray:
    """``scale * covariance + diag(floor_std_m^2 (x3), floor_std_rad^2 (x3))`` for a (6, 6)
    pose covariance, translation first (either form above: an isotropic floor is the same in
    every frame). Calibrates an estimator's covariance (``scale`` from the normalised
    estimation error squared on a test split) and keeps it from claiming more certainty than
    the map allows (the floors, standard deviations in metres and radians)."""
    if not (scale > 0 and floor_std_m >= 0 and floor_std_rad >= 0):
        raise ValueError(f'need scale > 0 and floors >= 0, got {scale}, {floor_std_m}, '
                         f'{floor_std_rad}')
    floor = np.array([floor_std_m] * 3 + [floor_std_rad] * 3) ** 2
    return scale * np.asarray(covariance_66, dtype=np.float64) + np.diag(floor)
