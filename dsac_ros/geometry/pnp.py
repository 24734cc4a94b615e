"""Perspective-n-point: a batched minimal solver and Levenberg-Marquardt refinement.

Frames: poses are ``T_cw`` (world-to-camera, ``x_cam = R x_world + t``), OpenCV camera frame,
pixels (u, v) with the centre of the top-left pixel at (0, 0), intrinsics K (..., 3, 3).

Everything is pure torch, batched (no Python loop over sets), differentiable by autograd, and
keeps NaN/inf out of outputs and gradients: degenerate sets are swapped for a fixed, well-posed
dummy problem before any taped arithmetic, divisions use guarded denominators, and invalid
results are replaced by the identity with ``valid = False``.

Twist convention for refinement and :func:`pnp_information`: a pose is updated by a LEFT
perturbation ``T_cw <- se3_exp(xi) @ T_cw`` with ``xi = [rho (m), phi (rad)]`` expressed in the
CAMERA frame (rho moves the camera-frame points, phi rotates them about the camera centre).
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import torch
from torch import Tensor

from dsac_ros.geometry.camera import check_intrinsics
from dsac_ros.geometry.transforms import _check as _check_tail
from dsac_ros.geometry.transforms import se3_exp

__all__ = ['pnp_information', 'refine_pnp', 'resolve_pnp', 'solve_p4p']

# Points closer to the camera plane than this (metres) are ignored by refinement.
MIN_DEPTH_M = 1e-3
# P3P candidates get this many untaped Newton steps on the distance equations; afterwards a
# candidate whose largest residual (distances normalised to mean 1) exceeds the tolerance is
# no solution (a complex pair seen as real, or a lost root).
_P3P_NEWTON_STEPS = 2
_P3P_RESIDUAL_TOL = 10 * math.sqrt(float(torch.finfo(torch.float64).eps))
# Taped Gauss-Newton steps of `resolve_pnp` at the solution. The first one's derivative is the
# implicit gradient with the Gauss-Newton Hessian J^T J; each further one multiplies the error
# of that approximation by |I - (J^T J)^-1 H| (residual curvature terms, about 1e-2 at pixel
# noise). On test_dsac_gradients' small case the expected loss's gradient was off central
# differences by 4 % of its largest entry with one step, 0.3 % with two, 0.03 % with three.
_TAPED_STEPS = 2
# Largest |R^T R - I| entry of a P3P pose still accepted as a rotation.
_MAX_ROTATION_ERROR = 1e-6


# ----------------------------------------------------------------------------------------------
# small helpers


def _eps(dtype: torch.dtype) -> float:
    return float(torch.finfo(dtype).eps)


# ----------------------------------------------------------------------------------------------
# Gauss-Newton / Levenberg-Marquardt core


def _project_residuals(T: Tensor, X: Tensor, pix: Tensor, K: Tensor, w: Tensor,
                       want_jacobian: bool):
    """Residuals (B, 2, N) in pixels (rows u, v), effective weights (B, N), and the Jacobian
    (B, 6, 2, N) w.r.t. the left twist [rho, phi] (camera frame, dXc = rho + phi x Xc) or None.

    Point-last layouts keep every elementwise op and the stacking contiguous (fast on CPU).
    """
    R, t = T[:, :3, :3], T[:, :3, 3]
    Xc = torch.baddbmm(t[:, :, None], R, X.transpose(1, 2))  # (B, 3, N)
    x, y, z = Xc.unbind(1)
    front = z > MIN_DEPTH_M
    w = w * front
    iz = 1 / torch.where(front, z, torch.ones_like(z))
    xn, yn = x * iz, y * iz
    fx, sk, cx, _, fy, cy = K.reshape(-1, 9, 1)[:, :6].unbind(1)  # (B, 1) each
    u, v = pix.unbind(-1)
    ru = fx * xn + sk * yn + cx - u
    rv = fy * yn + cy - v
    res = torch.stack([ru, rv], 1)
    if not want_jacobian:
        return res, w, None
    # d(u, v)/dXc = [[fx, s, -(fx xn + s yn)], [0, fy, -fy yn]] / z; the phi columns are
    # Xc x (row). Order (twist index, residual row) so the reshape below is free.
    a = fx * iz
    b = sk * iz
    c = -(fx * xn + sk * yn) * iz
    d = fy * iz
    e = -fy * yn * iz
    zero = torch.zeros_like(a)
    J = torch.stack([
        a, zero, b, d, c, e,
        y * c - z * b, y * e - z * d, z * a - x * c, -x * e, x * b - y * a, x * d,
    ], 1)
    return res, w, J.reshape(J.shape[0], 6, 2, -1)


def _normal_equations(res: Tensor, w: Tensor, J: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """H = J^T W J (B, 6, 6), g = J^T W r (B, 6), cost = r^T W r (B,)."""
    B = J.shape[0]
    Jf = J.reshape(B, 6, -1)
    Jw = (J * w[:, None, None, :]).reshape(B, 6, -1)
    H = Jw @ Jf.transpose(1, 2)
    g = (Jw @ res.reshape(B, -1, 1)).squeeze(-1)
    cost = _cost(res, w)
    return H, g, cost


def _cost(res: Tensor, w: Tensor) -> Tensor:
    return (w * (res * res).sum(1)).sum(-1)


def _retract(delta: Tensor, T: Tensor) -> Tensor:
    """exp-like update of T (B, 4, 4) by the left twist delta (B, 6) = [rho, phi]: rotation by
    the unit quaternion (phi / 2, 1) / norm, then translation by rho. It agrees with
    ``se3_exp(delta) @ T`` to first order (so minima and their derivatives are the same) at a
    third of its operations; LM only needs a proper rotation per step."""
    rho, phi = delta[:, :3], delta[:, 3:]
    v = 0.5 * phi
    n2 = (v * v).sum(-1, keepdim=True)
    s = torch.rsqrt(1.0 + n2)  # quaternion (v s, s)
    vs = v * s
    x, y, z = vs.unbind(-1)
    zero = torch.zeros_like(x)
    W = torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], -1).reshape(-1, 3, 3)
    # R = (1 - 2 |v s|^2) I + 2 s hat(v s) + 2 (v s)(v s)^T
    R = (2.0 * s[..., None]) * W + 2.0 * vs[:, :, None] * vs[:, None, :]
    R = R + torch.diag_embed((1.0 - 2.0 * n2 * s * s).expand(-1, 3))
    top = torch.cat([R @ T[:, :3, :3], torch.baddbmm(rho[..., None], R, T[:, :3, 3:])], -1)
    return torch.cat([top, T[:, 3:]], 1)


def _lm(T: Tensor, X: Tensor, pix: Tensor, K: Tensor, w: Tensor, iterations: int,
        damping: float, tolerance: float | None = None) -> Tensor:
    """Batched LM on (B, 4, 4) with per-set damping; steps that raise the cost are rejected.
    With ``tolerance`` it stops after the first iteration in which every set's step is below it
    (m / rad): that step is still taken, which leaves an error of about its square."""
    B = T.shape[0]
    lam = torch.full((B,), damping, dtype=T.dtype, device=T.device)
    H, g, cost = _normal_equations(*_project_residuals(T, X, pix, K, w, True))
    for it in range(iterations):
        diag = torch.diagonal(H, dim1=-2, dim2=-1)
        # Marquardt scaling plus an absolute floor keeps the system regular for any input.
        floor = 1e-9 * diag.mean(-1, keepdim=True) + 1e-12
        Hd = H + torch.diag_embed(lam[:, None] * diag + floor)
        delta = -torch.linalg.solve_ex(Hd, g[..., None])[0].squeeze(-1)
        delta = torch.where(torch.isfinite(delta), delta, torch.zeros_like(delta))
        last = it == iterations - 1 or (
            tolerance is not None and B > 0 and float(delta.abs().amax()) < tolerance)
        T_new = _retract(delta, T)
        if last:
            res_new, w_new, _ = _project_residuals(T_new, X, pix, K, w, False)
            cost_new = _cost(res_new, w_new)
        else:
            H_new, g_new, cost_new = _normal_equations(
                *_project_residuals(T_new, X, pix, K, w, True))
        accept = cost_new <= cost * (1 + 1e-9) + 1e-30
        T = torch.where(accept[:, None, None], T_new, T)
        if last:
            break
        lam = torch.where(accept, torch.clamp(lam * 0.1, min=1e-9), lam * 10)
        H = torch.where(accept[:, None, None], H_new, H)
        g = torch.where(accept[:, None], g_new, g)
        cost = torch.where(accept, cost_new, cost)
    return T


def _flatten_inputs(T, X, pix, K, weights, n_min):
    _check_tail(T, (4, 4), 'T_cw')
    _check_tail(X, (3,), 'points_world')
    _check_tail(pix, (2,), 'pixels')
    check_intrinsics(K)
    if X.dim() < 2 or pix.shape[:-1] != X.shape[:-1]:
        raise ValueError(f'points_world (..., N, 3) and pixels (..., N, 2) must match, got '
                         f'{tuple(X.shape)} and {tuple(pix.shape)}')
    if X.shape[-2] < n_min:
        raise ValueError(f'need at least {n_min} correspondences, got {X.shape[-2]}')
    batch = torch.broadcast_shapes(T.shape[:-2], X.shape[:-2], K.shape[:-2])
    N = X.shape[-2]
    dtype = torch.promote_types(torch.promote_types(T.dtype, X.dtype),
                                torch.promote_types(pix.dtype, K.dtype))
    def flat(x: Tensor, tail: tuple[int, ...]) -> Tensor:
        # (B, *tail) in dtype; no ops when it already is (the estimator's hot path)
        if x.dtype != dtype:
            x = x.to(dtype)
        if x.shape != batch + tail:
            x = x.expand(batch + tail)
        return x if x.dim() == len(tail) + 1 else x.reshape((-1,) + tail)

    T, X, pix, K = flat(T, (4, 4)), flat(X, (N, 3)), flat(pix, (N, 2)), flat(K, (3, 3))
    if weights is None:
        w = torch.ones(X.shape[:-1], dtype=dtype, device=X.device)
    else:
        if weights.shape[-1:] != (N,):
            raise ValueError(f'weights must have shape (..., {N}), got {tuple(weights.shape)}')
        w = flat(weights, (N,))
    return batch, T, X, pix, K, w


def _sanitize(T, X, pix, K, w):
    """Zero weight (and harmless values) for non-finite correspondences; identity for bad T.
    Clean input (all finite, weights >= 0, focal lengths > 0; the estimator's) is returned as
    it is after one combined check: the masking costs about 40 small ops per call."""
    if T.shape[0] == 0:
        return T, X, pix, K, w
    with torch.no_grad():
        total = T.sum() + X.sum() + pix.sum() + K.sum() + w.sum()
        clean = torch.isfinite(total) & (K[:, 0, 0].amin() > 0) & (K[:, 1, 1].amin() > 0)
        if w.numel():
            clean = clean & (w.amin() >= 0)
    if bool(clean):
        return T, X, pix, K, w
    ok = torch.isfinite(X).all(-1) & torch.isfinite(pix).all(-1) & torch.isfinite(w)
    K_ok = (torch.isfinite(K).all((-2, -1)) & (K[:, 0, 0] > 0) & (K[:, 1, 1] > 0))
    T_ok = torch.isfinite(T).all((-2, -1))
    ok = ok & K_ok[:, None]
    X = torch.where(ok[..., None], X, torch.zeros_like(X))
    pix = torch.where(ok[..., None], pix, torch.zeros_like(pix))
    w = torch.where(ok, torch.clamp(w, min=0), torch.zeros_like(w))
    eye4 = torch.eye(4, dtype=T.dtype, device=T.device)
    eye3 = torch.eye(3, dtype=K.dtype, device=K.device)
    T = torch.where(T_ok[:, None, None], T, eye4)
    K = torch.where(K_ok[:, None, None], K, eye3)
    return T, X, pix, K, w


def refine_pnp(T_cw_b44: Tensor, points_world_bn3: Tensor, pixels_bn2: Tensor, K_b33: Tensor,
               weights_bn: Tensor | None = None, iterations: int = 8,
               damping: float = 1e-4) -> Tensor:
    """Weighted Levenberg-Marquardt refinement of world-to-camera poses on pixel error.

    Args:
        T_cw_b44: (..., 4, 4) initial world-to-camera poses.
        points_world_bn3: (..., N, 3) scene coordinates in metres (world frame).
        pixels_bn2: (..., N, 2) observed pixels (u, v).
        K_b33: (..., 3, 3) intrinsics of the image the pixels live in.
        weights_bn: (..., N) non-negative weights (default 1). Non-finite correspondences and
            points within 1 mm of / behind the camera plane get weight 0.
        iterations: LM iterations (each builds J^T W J, solves a 6x6 system, and accepts the
            step only if the weighted squared error does not increase).
        damping: initial Marquardt factor (multiplies diag(J^T W J)).

    Returns:
        (..., 4, 4) refined T_cw; differentiable w.r.t. all inputs through the unrolled steps.
    """
    batch, T, X, pix, K, w = _flatten_inputs(T_cw_b44, points_world_bn3, pixels_bn2, K_b33,
                                             weights_bn, 1)
    if iterations < 0:
        raise ValueError(f'iterations must be >= 0, got {iterations}')
    T, X, pix, K, w = _sanitize(T, X, pix, K, w)
    if iterations > 0:
        T = _lm(T, X, pix, K, w, iterations, damping)
    return T.reshape(batch + (4, 4))


def resolve_pnp(T_cw_b44: Tensor, points_world_bn3: Tensor, pixels_bn2: Tensor, K_b33: Tensor,
                weights_bn: Tensor | None = None, max_iterations: int = 10,
                tolerance: float = 1e-3, damping: float = 1e-4) -> Tensor:
    """Solve PnP on the given correspondences, starting from ``T_cw_b44``: the pose that
    minimises the weighted squared pixel error, not a fixed number of steps towards it.

    Without autograd: LM (as in :func:`refine_pnp`) until every set's step is below
    ``tolerance`` (m / rad; at least ``32 eps`` of the dtype; that last step is taken, so the
    remaining error is about its square) or ``max_iterations``. With autograd
    (any input requiring a gradient): that solution, detached, plus two Gauss-Newton steps
    taped at it. At a minimum the steps are zero, and their derivative is the implicit-function
    gradient of the solution w.r.t. points, pixels and K (to the Gauss-Newton Hessian's error
    squared, see `_TAPED_STEPS`), the derivative the paper takes of its refinement by central
    differences; it does not depend on the start pose. This costs two taped steps instead of
    unrolling the iterations. Shapes and weights as in :func:`refine_pnp`. Returns (..., 4, 4)
    T_cw.
    """
    batch, T, X, pix, K, w = _flatten_inputs(T_cw_b44, points_world_bn3, pixels_bn2, K_b33,
                                             weights_bn, 1)
    if max_iterations < 0:
        raise ValueError(f'max_iterations must be >= 0, got {max_iterations}')
    T, X, pix, K, w = _sanitize(T, X, pix, K, w)
    taped = torch.is_grad_enabled() and any(
        t.requires_grad for t in (X, pix, K, w))
    tol = max(float(tolerance), 32 * _eps(T.dtype))
    with torch.no_grad():
        T_star = T.detach()
        if max_iterations > 0:
            T_star = _lm(T_star, X.detach(), pix.detach(), K.detach(), w.detach(),
                         max_iterations, damping, tol)
    for _ in range(_TAPED_STEPS if taped else 0):
        H, g, _ = _normal_equations(*_project_residuals(T_star, X, pix, K, w, True))
        floor = 1e-9 * torch.diagonal(H, dim1=-2, dim2=-1).mean(-1) + 1e-12
        H = H + floor[:, None, None] * torch.eye(6, dtype=H.dtype, device=H.device)
        delta = -torch.linalg.solve_ex(H, g[..., None])[0].squeeze(-1)
        T_star = se3_exp(delta) @ T_star
    return T_star.reshape(batch + (4, 4))


def pnp_information(T_cw_b44: Tensor, points_world_bn3: Tensor, pixels_bn2: Tensor,
                    K_b33: Tensor, weights_bn: Tensor | None = None) -> Tensor:
    """Gauss-Newton information matrix J^T W J (..., 6, 6) at T_cw (pixel sigma = 1).

    J is the Jacobian of the pixel reprojection residuals w.r.t. the left twist
    ``xi = [rho (m), phi (rad)]`` in the camera frame (``T_cw <- se3_exp(xi) @ T_cw``). The
    pose covariance for isotropic pixel noise sigma is ``sigma^2 * inverse(information)``.
    Weights and invalid points are handled as in :func:`refine_pnp`.
    """
    batch, T, X, pix, K, w = _flatten_inputs(T_cw_b44, points_world_bn3, pixels_bn2, K_b33,
                                             weights_bn, 1)
    T, X, pix, K, w = _sanitize(T, X, pix, K, w)
    H, _, _ = _normal_equations(*_project_residuals(T, X, pix, K, w, True))
    return H.reshape(batch + (6, 6))


# ----------------------------------------------------------------------------------------------
# minimal solver
#
# The solver is overhead-bound on CPU (a few hundred sets; every op touches a few KB), so it is a
# fixed, short sequence of batched ops in a batch-LAST layout: every per-set quantity is a
# (..., B) tensor, small dims (points, coordinates, candidates) lead. Elementwise ops then run
# one long contiguous inner loop even when they broadcast over the small dims, and reductions
# over small dims are row adds (batch-first (B, 3) layouts are several times slower per op).
# The closed form runs without autograd; the chosen candidate then takes one Newton step on
# the three distance equations WITH autograd. At a root that step is (numerically) zero and its
# derivative is the implicit-function gradient of the exact solution, so gradients are exact
# without taping the closed form.

# Pairs (i, j) of the three P3P distance equations |l_i y_i - l_j y_j|^2 = |X_i - X_j|^2.
_PAIR_I = (0, 0, 1)
_PAIR_J = (1, 2, 2)
# Newton step on the distance equations: with u_k = dF_k/dl_i / 2 and w_k = dF_k/dl_j / 2
# (rows 0-2 and 3-5 of the table (u, w, F), F in rows 6-8) the Jacobian is
# 2 [[u0, w0, 0], [u1, 0, w1], [0, u2, w2]]. Rows of adj(J / 2) F and 2 det(J / 2) are sums of
# three signed triple products of table rows (a, b, c, sign); the last term is padding.
_ADJ_TERMS = (
    (4, 2, 6, -1.0), (3, 5, 7, -1.0), (3, 4, 8, 1.0),
    (1, 5, 6, -1.0), (0, 5, 7, 1.0), (0, 4, 8, -1.0),
    (1, 2, 6, 1.0), (0, 2, 7, -1.0), (3, 1, 8, -1.0),
    (0, 2, 4, -2.0), (3, 1, 5, -2.0), (0, 0, 0, 0.0))


def _cross_index(pairs) -> tuple[list[int], list[int]]:
    """Tables (P, Q) for _cross_rows: a x b for each (a, b) in pairs, a and b given as the row
    indices (3,) of the two vectors; component j is a[j+1] b[j+2] - a[j+2] b[j+1]."""
    p1, p2, q1, q2 = [], [], [], []
    for a, b in pairs:
        for j in range(3):
            p1.append(a[(j + 1) % 3])
            q1.append(b[(j + 2) % 3])
            p2.append(a[(j + 2) % 3])
            q2.append(b[(j + 1) % 3])
    return p1 + p2, q1 + q2


def _vec(k: int) -> tuple[int, int, int]:
    """Row indices of the k-th 3-vector in a flat stack."""
    return (3 * k, 3 * k + 1, 3 * k + 2)


_CROSS_TABLES = {
    # bearings y1..y4 then offsets X2-X1, X3-X1, X4-X1: y1 x y2, y3 x y1, y2 x y3, n
    'geometry': _cross_index([(_vec(0), _vec(1)), (_vec(2), _vec(0)), (_vec(1), _vec(2)),
                              (_vec(4), _vec(5))]),
    # X2-X1, X3-X1, n: (X3-X1) x n, n x (X2-X1)
    'inverse': _cross_index([(_vec(1), _vec(2)), (_vec(2), _vec(0))]),
    # a flattened 3x3 matrix: row_{i+1} x row_{i+2} = row i of its cofactor matrix
    'cofactor': _cross_index([(_vec(1), _vec(2)), (_vec(2), _vec(0)), (_vec(0), _vec(1))]),
    # two plane normals then p: normal x p for each
    'planes': _cross_index([(_vec(0), _vec(2)), (_vec(1), _vec(2))]),
    # P2-P1, P3-P1: their cross product
    'pose': _cross_index([(_vec(0), _vec(1))]),
}


class _Consts(NamedTuple):
    pair_i: Tensor  # (3,) long
    pair_j: Tensor
    pair_ij: Tensor  # (6,) long: pair_i then pair_j
    pair_ji: Tensor  # (6,) long: pair_j then pair_i
    cross: dict[str, tuple[Tensor, Tensor]]  # index tables of _cross_rows, by use
    adj_a: Tensor  # (12,) long
    adj_b: Tensor
    adj_c: Tensor
    adj_sign: Tensor  # (12, 1) float64
    thirds: Tensor  # (3, 1) float64, 2 pi k / 3
    eye3: Tensor  # (3, 3, 1) float64 (batch-last)
    eye4: Tensor  # (4, 4) float64
    bottom: Tensor  # (1, 1, 4) float64, homogeneous row [0, 0, 0, 1]
    X: Tensor  # (4, 3) float64 world points of the dummy problem
    pix: Tensor  # (4, 2) its pixels (K = I, identity pose)
    K: Tensor  # (3, 3) identity


@functools.lru_cache(maxsize=8)
def _consts(device: torch.device) -> _Consts:
    with torch.inference_mode(False):  # normal tensors even if first called in inference mode
        return _make_consts(device)


def _make_consts(device: torch.device) -> _Consts:
    f64 = torch.float64

    def idx(v):
        return torch.tensor(v, dtype=torch.long, device=device)

    # A fixed, well-conditioned P4P problem (identity pose, K = I) swapped in for bad sets, so
    # that no taped arithmetic (and no gradient) ever sees their values.
    X = torch.tensor([[0.0, 0.0, 4.0], [1.0, 0.0, 4.5], [0.0, 1.0, 5.0], [1.0, 1.0, 4.0]],
                     dtype=f64, device=device)
    eye3 = torch.eye(3, dtype=f64, device=device)
    eye4 = torch.eye(4, dtype=f64, device=device)
    return _Consts(
        idx(_PAIR_I), idx(_PAIR_J), idx(_PAIR_I + _PAIR_J), idx(_PAIR_J + _PAIR_I),
        {name: (idx(p), idx(q)) for name, (p, q) in _CROSS_TABLES.items()},
        *(idx(col) for col in list(zip(*_ADJ_TERMS))[:3]),
        torch.tensor([term[3] for term in _ADJ_TERMS], dtype=f64, device=device)[:, None],
        (torch.arange(3, dtype=f64, device=device) * (2 * math.pi / 3))[:, None],
        eye3[..., None], eye4, eye4[3:].reshape(1, 1, 4), X, X[:, :2] / X[:, 2:], eye3)


def _cross_rows(x: Tensor, table: tuple[Tensor, Tensor], dim: int) -> Tensor:
    """Cross products of 3-vectors stored as rows of x along dim (index tables from
    _cross_index): two gathers, a product and a difference, for several crosses at once."""
    P, Q = table
    pq = x.index_select(dim, P) * x.index_select(dim, Q)
    half = P.shape[0] // 2
    return pq.narrow(dim, 0, half) - pq.narrow(dim, half, half)


class _SetGeometry(NamedTuple):
    """Per-set quantities of a P4P problem, float64, batch-last (B sets)."""

    f4: Tensor  # (2, B) normalised image point (x/z, y/z) of correspondence 4
    y: Tensor  # (4, 3, B) unit bearings (point, coordinate)
    cos: Tensor  # (3, B) bearing cosines of the pairs 12, 13, 23
    crosses: Tensor  # (3, 3, B) y1 x y2, y3 x y1, y2 x y3
    a: Tensor  # (3, B) squared world distances of the pairs 12, 13, 23 (m^2)
    d: Tensor  # (3, 3, B) world offsets X2 - X1, X3 - X1, X4 - X1
    n: Tensor  # (3, B) (X2 - X1) x (X3 - X1)
    nn: Tensor  # (B,) |n|^2
    X1: Tensor  # (3, B) world point 1


def _set_geometry(X: Tensor, pix: Tensor, K: Tensor, c: _Consts) -> _SetGeometry:
    """X (B, 4, 3) world points, pix (B, 4, 2), K (B, 3, 3), all float64 (batch-first)."""
    B = X.shape[0]
    Xt = X.reshape(B, 12).t().contiguous().reshape(4, 3, B)
    pt = pix.reshape(B, 8).t().contiguous().reshape(4, 2, B)
    k = K.reshape(B, 9).t().contiguous()  # rows fx, s, cx, 0, fy, cy, 0, 0, 1
    u, v = pt.unbind(1)  # (4, B)
    yn = (v - k[5]) / k[4]
    xn = (u - k[2] - k[1] * yn) / k[0]
    r = torch.rsqrt(xn * xn + yn * yn + 1)
    y = torch.stack([xn * r, yn * r, r], 1)  # (4, 3, B)
    cos = (y.index_select(0, c.pair_i) * y.index_select(0, c.pair_j)).sum(1)
    d = Xt[1:] - Xt[:1]
    dd = torch.cat([d[:2], (d[1] - d[0])[None]])  # X2 - X1, X3 - X1, X3 - X2
    crs = _cross_rows(torch.cat([y.reshape(12, B), d.reshape(9, B)]), c.cross['geometry'], 0)
    crosses, n = crs[:9].reshape(3, 3, B), crs[9:]
    return _SetGeometry(torch.stack([xn[3], yn[3]]), y, cos, crosses, (dd * dd).sum(1), d, n,
                        (n * n).sum(0), Xt[0])


def _admissible(X: Tensor, pix: Tensor, K: Tensor, geo: _SetGeometry) -> Tensor:
    """(B,) bool: finite input, usable K, a proper world triangle (not collinear / repeated),
    a 4th point away from the triangle's centroid, and P3P bearings not on one plane through the
    centre. NaN compares False, so this is safe on any input."""
    finite = torch.isfinite(X.sum((-2, -1)) + pix.sum((-2, -1)) + K.sum((-2, -1)))
    span_sq = geo.a.sum(0) / 3  # mean squared distance of the triangle's points to its centroid
    d4 = geo.d[2] - (geo.d[0] + geo.d[1]) / 3  # 4th point - centroid
    bearing_det = (geo.y[0] * geo.crosses[2]).sum(0)
    return (finite & (K[:, 0, 0] > 0) & (K[:, 1, 1] > 0) & (span_sq > 1e-12)
            & (geo.nn > 1e-8 * span_sq * span_sq) & ((d4 * d4).sum(0) > 1e-10 * span_sq)
            & (bearing_det.abs() > 1e-9))


def _cubic_real_roots(coef: Tensor, c: _Consts) -> Tensor:
    """Real roots (3, B) of x^3 + a x^2 + b x + e with coef = (a, b, e) (3, B); where only one
    root is real it is repeated. Closed form (Cardano / trigonometric); the Newton steps on
    the depths later absorb its rounding."""
    a, b, e = coef.unbind(0)
    a3 = a / 3
    a3sq = a3 * a3
    p3 = b / 3 - a3sq  # p / 3 of the depressed cubic t^3 + p t + q
    hq = a3 * (a3sq - b / 2) + e / 2  # q / 2
    disc = hq * hq + p3 * p3 * p3
    # One real root, cancellation-free Cardano.
    w = -hq - torch.copysign(torch.sqrt(torch.clamp(disc, min=0)), hq)
    u = torch.copysign(w.abs() ** (1 / 3), w)
    t_one = u - p3 / (u + (u == 0))  # u == 0 only for the triple root t = 0
    # Three real roots (disc <= 0 implies p3 <= 0).
    m = torch.clamp(-p3, min=1e-300)
    sm = torch.sqrt(m)
    phi = torch.acos(torch.clamp(-hq / (m * sm), -1.0, 1.0)) / 3
    t_three = (2 * sm) * torch.cos(phi - c.thirds)
    return torch.where(disc > 0, t_one, t_three) - a3


def _p3p_closed_form(cos: Tensor, a_n: Tensor, c: _Consts) -> tuple[Tensor, Tensor]:
    """Depths (4, 3, B) of points 1..3 for four candidate solutions and whether each is real
    (4, B); the caller polishes them and checks the residuals. No autograd.

    cos: (3, B) bearing cosines, a_n: (3, B) squared distances scaled to mean 1 (pairs 12, 13,
    23); depths come in the same scale. Lambda Twist style: a degenerate member D0 of the pencil
    of the two distance-difference conics (one root of its cubic) splits into two planes through
    the origin; each plane cuts one conic in two rays; the distances fix the scale.
    """
    B = a_n.shape[-1]
    nc = -cos
    a12, a13, a23 = a_n.unbind(0)
    n12, n13, n23 = nc.unbind(0)
    zero = torch.zeros_like(a12)
    # D1 = a23 M12 - a12 M23, D2 = a23 M13 - a13 M23 with l^T M_ij l = |l_i y_i - l_j y_j|^2:
    # every solution l satisfies l^T D1 l = l^T D2 l = 0.
    t1, t2 = a23 * n12, a23 * n13
    t3, t4 = -a12 * n23, -a13 * n23
    h1, h2 = a23 - a12, a23 - a13  # half traces of D1, D2
    DD = torch.stack([a23, t1, zero, t1, h1, t3, zero, t3, -a12,
                      a23, zero, t2, zero, -a13, t4, t2, t4, h2]).reshape(2, 3, 3, B)
    tr_dd = torch.stack([h1 + h1, h2 + h2])
    # det(D1 + g D2) = k3 g^3 + k2 g^2 + k1 g + k0: rows of the cofactor matrices are cross
    # products of rows, k1 = <cof(D1), D2>, k2 = <cof(D2), D1>.
    cof = _cross_rows(DD.reshape(2, 9, B), c.cross['cofactor'], 1).reshape(2, 3, 3, B)
    dets = (DD[:, 0] * cof[:, 0]).sum(1)  # (det D1, det D2)
    mixed = (cof * DD.flip(0)).sum((1, 2))  # (k1, k2)
    coef = torch.stack([dets[1], mixed[1], mixed[0], dets[0]])  # k3, k2, k1, k0
    # Solve in g or in 1/g (pencil D2 + h D1), whichever keeps the leading coefficient largest.
    flip = dets[0].abs() > dets[1].abs()
    coef = torch.where(flip, coef.flip(0), coef)
    A, Bm = torch.where(flip, DD.flip(0), DD).unbind(0)
    tr_a, tr_b = torch.where(flip, tr_dd.flip(0), tr_dd).unbind(0)
    lead = coef[0]
    lead_ok = lead != 0
    g3 = _cubic_real_roots(coef[1:] / torch.where(lead_ok, lead, 1.0), c)  # (3, B)
    # Of the real roots take the one whose (unit-norm) degenerate conic splits into the most
    # clearly separated pair of planes: most negative sum of principal minors (tr^2 - 1) / 2.
    D3 = A + g3[:, None, None] * Bm  # (3 roots, 3, 3, B)
    fro = torch.clamp((D3 * D3).sum((1, 2)), min=1e-300)
    tr3 = tr_a + g3 * tr_b
    pick = (tr3 * tr3 / fro).min(0, keepdim=True)[1]  # (1, B); min(dim) beats argmin on CPU
    g = torch.gather(g3, 0, pick)[0]
    inv_norm = torch.rsqrt(torch.gather(fro, 0, pick))[0]
    D0 = torch.gather(D3, 0, pick[:, None, None].expand(1, 3, 3, B))[0] * inv_norm
    # Eigen-decomposition of the rank-2, unit-norm D0: eigenvalues sig1, sig2 (|sig1| >= |sig2|)
    # from trace and minors, eigenvectors (and the null vector p) as the longest cross product
    # of two rows of D0 - sig I.
    tr = torch.gather(tr3, 0, pick)[0] * inv_norm
    minors = (tr * tr - 1) / 2
    indefinite = minors < -1e2 * _eps(torch.float64)  # two real planes
    root = torch.sqrt(torch.clamp(tr * tr - 4 * minors, min=0))
    sig1 = (tr + torch.copysign(root, tr)) / 2  # |sig1| >= 1/sqrt(2) as sig1^2 + sig2^2 = 1
    sig = torch.stack([sig1, minors / sig1, zero])  # (3, B)
    M = D0 - sig[:, None, None] * c.eye3  # (3 shifts, 3 rows, 3 cols, B)
    crs = _cross_rows(M.reshape(3, 9, B), c.cross['cofactor'], 1).reshape(3, 3, 3, B)
    crs_sq, best = (crs * crs).sum(2).max(1)  # (3, B): longest of the three row crosses
    E = torch.gather(crs, 1, best[:, None, None].expand(3, 1, 3, B))[:, 0]
    E = E * torch.rsqrt(torch.clamp(crs_sq, min=1e-300))[:, None]  # e1, e2, p: (3, 3, B)
    # The planes sqrt|sig1| e1.l = +-sqrt|sig2| e2.l contain p; v spans the rest of each.
    s0, s1 = (E[:2] * torch.sqrt(sig[:2].abs())[:, None]).unbind(0)
    p = E[2]
    v = _cross_rows(torch.cat([s0 + s1, s0 - s1, p]), c.cross['planes'], 0).reshape(2, 3, B)
    # |v| = |plane normal| in [1, 2^(1/4)]
    V = torch.cat([p[None], v])  # (3, 3, B): p, v (plane 1), v (plane 2)
    # Intersect each plane with D1 (or D2: on the plane they agree up to -g); use the conic
    # that does not dominate D0. G = V Q V^T gives the quadratic form on each plane.
    Q = torch.where(g.abs() > 1, A, Bm)
    QV = (Q * V[:, None]).sum(2)  # (3, 3, B): Q p, Q v1, Q v2
    G = (V[:, None] * QV).sum(2)
    qa, qb = G[0, 0], G[0, 1:]  # (B,), (2, B)
    qc = torch.stack([G[1, 1], G[2, 2]])
    # qa al^2 + 2 qb al be + qc be^2 = 0; clearly complex pairs are dropped here, near-tangent
    # ones are judged by the residual after polishing.
    qb2 = qb * qb
    qaqc = qa * qc
    dq = qb2 - qaqc
    dq_ok = dq > -1e-2 * (qb2 + qaqc.abs())
    qq = -(qb + torch.copysign(torch.sqrt(torch.clamp(dq, min=0)), qb))
    # The two rays (al, be) of each plane: (qq, qa) and (qc, qq).
    alpha = torch.stack([qq, qc], 1)  # (2 planes, 2 rays, B)
    beta = torch.stack([qa.expand(2, B), qq], 1)
    lam = (alpha[:, :, None] * p + beta[:, :, None] * v[:, None]).reshape(4, 3, B)
    # Scale from the sum of the three distance equations (positive definite form).
    li, lj = lam.index_select(1, c.pair_i), lam.index_select(1, c.pair_j)
    dl = li - lj
    quad = (dl * dl + (2 + 2 * nc) * (li * lj)).sum(1)  # (4, B)
    # a_n sums to 3; the sign makes the depths positive.
    lam = lam * (torch.sqrt(3 / torch.clamp(quad, min=1e-30)) * torch.sign(lam.sum(1)))[:, None]
    plane_ok = (dq_ok & indefinite & lead_ok)[:, None].expand(2, 2, B).reshape(4, B)
    valid = (quad > 1e-12) & plane_ok
    return lam, valid


def _distance_equations(lam: Tensor, cos2: Tensor, a_n: Tensor,
                        c: _Consts) -> tuple[Tensor, Tensor, Tensor]:
    """Residuals F (..., 3, B) of l_i^2 + l_j^2 - 2 cos_ij l_i l_j = a_ij (pairs 12, 13, 23)
    for depths lam (..., 3, B); the half derivatives (u, w) = (dF/dl_i, dF/dl_j) / 2 stacked
    (..., 6, B); the products l_i l_j (..., 3, B). cos2 = (cos, cos) (6, B), a_n (3, B)."""
    lij = lam.index_select(-2, c.pair_ij)  # l_i then l_j: (..., 6, B)
    lji = lam.index_select(-2, c.pair_ji)
    uw = lij - cos2 * lji
    F = (lij * uw).unflatten(-2, (2, 3)).sum(-3) - a_n
    return F, uw, lij[..., :3, :] * lji[..., :3, :]


def _newton_distances(lam: Tensor, cos2: Tensor, a_n: Tensor, c: _Consts) -> Tensor:
    """One Newton step on the distance equations for depths lam (..., 3, B)."""
    F, uw, _ = _distance_equations(lam, cos2, a_n, c)
    # Adjugate times F and twice the determinant of the half Jacobian, as sums of signed triple
    # products of the rows of (u, w, F).
    t = torch.cat([uw, F], -2)
    S = (t.index_select(-2, c.adj_a) * t.index_select(-2, c.adj_b)
         * t.index_select(-2, c.adj_c) * c.adj_sign).unflatten(-2, (4, 3)).sum(-2)
    det2 = S[..., 3:, :]
    return lam - S[..., :3, :] / torch.copysign(torch.clamp(det2.abs(), min=1e-12), det2)


def _world_inverse(geo: _SetGeometry, c: _Consts) -> Tensor:
    """Rows (3, 3, B) of the inverse of the matrix with columns X2 - X1, X3 - X1, n:
    (X3 - X1) x n, n x (X2 - X1), n, over |n|^2."""
    x = torch.cat([geo.d[:2].reshape(6, -1), geo.n])
    rows = _cross_rows(x, c.cross['inverse'], 0)
    return torch.cat([rows, geo.n]).reshape(3, 3, -1) / geo.nn


def _select_by_fourth_point(lam: Tensor, lilj: Tensor, cand_ok: Tensor, geo: _SetGeometry,
                            X_inv: Tensor, scale: Tensor) -> tuple[Tensor, Tensor]:
    """Index (B,) of the candidate that best reprojects point 4 (in front of the camera) and
    whether any candidate is usable (B,). lam (4, 3, B) in units of scale (B,) metres, lilj its
    pairwise products l1 l2, l1 l3, l2 l3. No autograd."""
    # With P_i = l_i y_i, the pose maps X2 - X1, X3 - X1, n onto P2 - P1, P3 - P1 and
    # scale (P2 - P1) x (P3 - P1), so point 4 lands at their combination with weights
    # w = X_inv (X4 - X1); the cross product is a combination of y_i x y_j with weights l_i l_j.
    w0, w1, w2 = (X_inv * geo.d[2]).sum(1).unbind(0)
    coef = torch.stack([1 - w0 - w1, w0, w1])
    M = torch.cat([geo.y[:3] * coef[:, None], geo.crosses * (w2 * scale)])  # (6, 3, B)
    X4 = (torch.cat([lam, lilj], 1)[:, :, None] * M).sum(1)  # (4, 3, B), units of lam
    z4 = X4[:, 2]
    usable = cand_ok & (z4 > 1e-6)
    err = X4[:, :2] / torch.where(usable, z4, 1.0)[:, None] - geo.f4
    err = torch.where(usable, (err * err).sum(1), math.inf)
    best_err, best = err.min(0)
    return best, best_err < math.inf


def _pose_from_depths(lam: Tensor, geo: _SetGeometry, X_inv: Tensor,
                      c: _Consts) -> tuple[Tensor, Tensor]:
    """T_cw (B, 4, 4) mapping X1..X3 onto l_i y_i (depths lam (3, B) in metres), and the
    largest entry of |R^T R - I| (B,) (no autograd).

    R maps the world triangle frame (X2 - X1, X3 - X1, n) onto the camera one: a rotation when
    the distance equations hold, up to their residual times the triangle's condition."""
    P = lam[:, None] * geo.y[:3]  # (3, 3, B)
    e = P[1:] - P[:1]
    e = e.reshape(6, -1)
    cols = torch.cat([e, _cross_rows(e, c.cross['pose'], 0)]).reshape(3, 3, -1)
    R = (cols[:, :, None] * X_inv[:, None]).sum(0)  # (3, 3, B)
    t = P[0] - (R * geo.X1).sum(1)
    with torch.no_grad():
        Rd = R.detach()
        orth = ((Rd[:, :, None] * Rd[:, None]).sum(0) - c.eye3).abs().amax((0, 1))
    top = torch.cat([R, t[:, None]], 1).permute(2, 0, 1)  # (B, 3, 4)
    return torch.cat([top, c.bottom.expand(top.shape[0], 1, 4)], 1), orth


def solve_p4p(points_world_b43: Tensor, pixels_b42: Tensor, K_b33: Tensor,
              gauss_newton_steps: int = 1,
              max_error_px: float | None = None) -> tuple[Tensor, Tensor]:
    """Minimal pose solver from 4 2D-3D correspondences, batched over any leading dims.

    P3P on correspondences 0, 1, 2 (pencil of the two distance-difference conics, one real root
    of its cubic, split into two planes -> up to 4 depth triplets, computed in float64 and
    polished by Newton steps); correspondence 3 selects the candidate with the smallest
    reprojection error (it must lie in front of the camera); one more Newton step on the
    selected one carries the gradient. Then ``gauss_newton_steps`` LM steps on all 4 points.

    Args:
        points_world_b43: (..., 4, 3) scene coordinates (world frame, metres).
        pixels_b42: (..., 4, 2) pixels (u, v).
        K_b33: (..., 3, 3) intrinsics (broadcast against the leading dims).
        gauss_newton_steps: LM steps on the 4 correspondences after P3P (0 = pure P3P).
        max_error_px: if given, a set whose largest reprojection error (pixels, over all four
            correspondences, after the LM steps) exceeds it is invalid: the four points are not
            consistent with one pose (an outlier among them, or a mirrored configuration).

    Returns:
        T_cw_b44: (..., 4, 4) world-to-camera pose (input dtype); identity where invalid.
        valid_b: (...) bool; False for non-finite input, repeated / collinear points, image
            points on one line, no real solution, the 4th point behind the camera, or (with
            ``max_error_px``) an inconsistent set.
    Outputs and gradients are finite for all inputs.
    """
    _check_tail(points_world_b43, (4, 3), 'points_world_b43')
    _check_tail(pixels_b42, (4, 2), 'pixels_b42')
    check_intrinsics(K_b33, 'K_b33')
    if gauss_newton_steps < 0:
        raise ValueError(f'gauss_newton_steps must be >= 0, got {gauss_newton_steps}')
    batch = torch.broadcast_shapes(points_world_b43.shape[:-2], pixels_b42.shape[:-2],
                                   K_b33.shape[:-2])
    if math.prod(batch) == 0:  # nothing to solve (LM cannot shape an empty batch)
        dtype = torch.promote_types(torch.promote_types(points_world_b43.dtype,
                                                        pixels_b42.dtype), K_b33.dtype)
        device = points_world_b43.device
        return (torch.zeros(batch + (4, 4), dtype=dtype, device=device),
                torch.zeros(batch, dtype=torch.bool, device=device))
    taped = torch.is_grad_enabled() and (points_world_b43.requires_grad
                                         or pixels_b42.requires_grad or K_b33.requires_grad)
    if taped:
        return _solve_p4p(points_world_b43, pixels_b42, K_b33, gauss_newton_steps,
                          max_error_px, True)
    # Nothing to differentiate: inference mode trims the per-op overhead; the clones hand back
    # ordinary tensors (inference tensors cannot be saved for a later backward).
    with torch.inference_mode():
        T, valid = _solve_p4p(points_world_b43, pixels_b42, K_b33, gauss_newton_steps,
                              max_error_px, False)
    return T.clone(), valid.clone()


def _solve_p4p(points_world_b43: Tensor, pixels_b42: Tensor, K_b33: Tensor,
               gauss_newton_steps: int, max_error_px: float | None,
               taped: bool) -> tuple[Tensor, Tensor]:
    """Body of :func:`solve_p4p` (validated input; taped: inputs need gradients)."""
    batch = torch.broadcast_shapes(points_world_b43.shape[:-2], pixels_b42.shape[:-2],
                                   K_b33.shape[:-2])
    dtype = torch.promote_types(torch.promote_types(points_world_b43.dtype, pixels_b42.dtype),
                                K_b33.dtype)
    c = _consts(points_world_b43.device)
    # The closed form runs in float64: it is overhead-bound (float64 costs about the same) and
    # ill-conditioned sets lose too many digits in float32. LM then works in the input dtype.
    wd = torch.float64
    X = points_world_b43.to(wd).expand(batch + (4, 3)).reshape(-1, 4, 3)
    pix = pixels_b42.to(wd).expand(batch + (4, 2)).reshape(-1, 4, 2)
    K = K_b33.to(wd).expand(batch + (3, 3)).reshape(-1, 3, 3)

    # 1. Admissible sets; the others get the dummy problem before any taped arithmetic. Without
    # a tape the untouched geometry is used: bad sets may carry NaN there, but every result of
    # theirs is masked below and sets do not mix.
    with torch.no_grad():
        geo = _set_geometry(X, pix, K, c)
        ok = _admissible(X, pix, K, geo)
    if taped or gauss_newton_steps > 0 or max_error_px is not None:
        X = torch.where(ok[:, None, None], X, c.X)
        pix = torch.where(ok[:, None, None], pix, c.pix)
        K = torch.where(ok[:, None, None], K, c.K)
    if taped:
        geo = _set_geometry(X, pix, K, c)
    scale_sq = geo.a.mean(0)
    a_n = geo.a / scale_sq
    X_inv = _world_inverse(geo, c)

    # 2. P3P candidates, polished (no autograd); selection by the 4th correspondence.
    # inference_mode trims per-op overhead further; its results are cloned before any taping.
    with torch.inference_mode():
        geo_d = _SetGeometry(*(g.detach() for g in geo)) if taped else geo
        a_d = a_n.detach()
        lam4, cand_ok = _p3p_closed_form(geo_d.cos, a_d, c)
        cos2_d = torch.cat([geo_d.cos, geo_d.cos])
        for _ in range(_P3P_NEWTON_STEPS):
            lam4 = _newton_distances(lam4, cos2_d, a_d, c)
        res, _, lilj = _distance_equations(lam4, cos2_d, a_d, c)
        cand_ok = cand_ok & (lam4.amin(1) > 1e-6) & (res.abs().amax(1) < _P3P_RESIDUAL_TOL)
        best, valid = _select_by_fourth_point(lam4, lilj, cand_ok, geo_d, X_inv.detach(),
                                              torch.sqrt(scale_sq.detach()))
        valid = valid & ok
        B = valid.shape[0]
        lam = torch.gather(lam4, 0, best[None, None].expand(1, 3, B))[0]
        lam = torch.where(valid, lam, 1.0)
    if taped:
        lam, valid = lam.clone(), valid.clone()

    # 3. Newton step with autograd (implicit gradient), pose, optional LM on all four points.
    lam = _newton_distances(lam, torch.cat([geo.cos, geo.cos]), a_n, c) * torch.sqrt(scale_sq)
    T, orth_err = _pose_from_depths(lam, geo, X_inv, c)
    # Near-collinear world triangles amplify the depths' rounding into a non-rigid R.
    valid = valid & (orth_err < _MAX_ROTATION_ERROR)
    T = T.to(dtype)
    eye4 = c.eye4.to(dtype)
    T = torch.where(valid[:, None, None], T, eye4)
    if gauss_newton_steps > 0:
        w = valid[:, None].to(dtype).expand(B, 4)
        T = _lm(T, X.to(dtype), pix.to(dtype), K.to(dtype), w, gauss_newton_steps, 1e-6)
        valid = valid & torch.isfinite(T.sum((-2, -1)))
    if max_error_px is not None:
        with torch.no_grad():
            ones = torch.ones(B, 4, dtype=dtype, device=T.device)
            res, w_eff, _ = _project_residuals(T, X.to(dtype), pix.to(dtype), K.to(dtype), ones,
                                               False)
            err = torch.where(w_eff > 0, res.norm(dim=1), torch.full_like(w_eff, math.inf))
            valid = valid & (err.amax(-1) <= max_error_px)
    T = torch.where(valid[:, None, None], T, eye4)
    return T.reshape(batch + (4, 4)), valid.reshape(batch)
