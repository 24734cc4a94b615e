"""Perspective-n-point: a batched minimal solver and Levenberg-Marquardt refinement.

Frames: poses are ``T_cw`` (world-to-camera, ``x_cam = R x_world + t``), OpenCV camera frame,
pixels (u, v) with the centre of the top-left pixel at (0, 0), intrinsics K (..., 3, 3).

Everything is pure torch, batched (no Python loop over sets), differentiable by autograd, and
keeps NaN/inf out of outputs and gradients: degenerate sets are swapped for a fixed, well-posed
dummy problem before any arithmetic, divisions use guarded denominators, and invalid results are
replaced by the identity with ``valid = False``.

Twist convention for refinement and :func:`pnp_information`: a pose is updated by a LEFT
perturbation ``T_cw <- se3_exp(xi) @ T_cw`` with ``xi = [rho (m), phi (rad)]`` expressed in the
CAMERA frame (rho moves the camera-frame points, phi rotates them about the camera centre).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from dsac_ros.geometry.camera import check_intrinsics, normalize_pixels
from dsac_ros.geometry.transforms import make_se3, se3_exp

__all__ = ['pnp_information', 'refine_pnp', 'solve_p4p']

# Points closer to the camera plane than this (metres) are ignored by refinement.
MIN_DEPTH_M = 1e-3


# ----------------------------------------------------------------------------------------------
# small batched helpers


def _cross(a: Tensor, b: Tensor) -> Tensor:
    a0, a1, a2 = a.unbind(-1)
    b0, b1, b2 = b.unbind(-1)
    return torch.stack([a1 * b2 - a2 * b1, a2 * b0 - a0 * b2, a0 * b1 - a1 * b0], -1)


def _dot(a: Tensor, b: Tensor) -> Tensor:
    return (a * b).sum(-1)


def _safe_div(num: Tensor, den: Tensor, eps: float) -> Tensor:
    den = torch.where(den.abs() < eps, torch.where(den < 0, -eps, eps).to(den.dtype), den)
    return num / den


def _normalize(v: Tensor, eps: float = 1e-30) -> Tensor:
    n_sq = _dot(v, v)[..., None]
    return v / torch.sqrt(torch.clamp(n_sq, min=eps))


def _det3(M: Tensor) -> Tensor:
    return _dot(M[..., 0, :], _cross(M[..., 1, :], M[..., 2, :]))


def _adj3(M: Tensor) -> Tensor:
    """Adjugate (transposed cofactor matrix) of (..., 3, 3)."""
    r0, r1, r2 = M[..., 0, :], M[..., 1, :], M[..., 2, :]
    # Columns of adj(M) are the cross products of rows.
    return torch.stack([_cross(r1, r2), _cross(r2, r0), _cross(r0, r1)], -1)


def _minors3(M: Tensor) -> Tensor:
    """Sum of the principal 2x2 minors of symmetric (..., 3, 3) (= s1 s2 if rank 2)."""
    m00, m11, m22 = M[..., 0, 0], M[..., 1, 1], M[..., 2, 2]
    return (m00 * m11 - M[..., 0, 1] ** 2 + m00 * m22 - M[..., 0, 2] ** 2 + m11 * m22
            - M[..., 1, 2] ** 2)


def _largest_cross_null(M: Tensor) -> Tensor:
    """Unit null vector (..., 3) of a rank-2 (..., 3, 3) matrix: best of its row crosses."""
    c = torch.stack([_cross(M[..., 1, :], M[..., 2, :]), _cross(M[..., 2, :], M[..., 0, :]),
                     _cross(M[..., 0, :], M[..., 1, :])], -2)
    k = _dot(c, c).argmax(-1)
    best = torch.gather(c, -2, k[..., None, None].expand(k.shape + (1, 3))).squeeze(-2)
    return _normalize(best)


def _eps(dtype: torch.dtype) -> float:
    return float(torch.finfo(dtype).eps)


def _check_tail(x: Tensor, tail: tuple[int, ...], name: str) -> None:
    if not isinstance(x, Tensor):
        raise ValueError(f'{name} must be a torch.Tensor, got {type(x).__name__}')
    if x.dim() < len(tail) or tuple(x.shape[-len(tail):]) != tail:
        shape = ', '.join(str(t) for t in tail)
        raise ValueError(f'{name} must have shape (..., {shape}), got {tuple(x.shape)}')
    if not x.is_floating_point():
        raise ValueError(f'{name} must be a floating tensor, got {x.dtype}')


# ----------------------------------------------------------------------------------------------
# cubic root (closed form without grad, Newton polish with grad = implicit-function gradient)


@torch.no_grad()
def _cubic_real_roots(c3: Tensor, c2: Tensor, c1: Tensor, c0: Tensor) -> Tensor:
    """Real roots (..., 3) of c3 x^3 + c2 x^2 + c1 x + c0 (c3 != 0); where only one root is
    real it is repeated three times."""
    a, b, c = c2 / c3, c1 / c3, c0 / c3
    p = b - a * a / 3
    q = 2 * a ** 3 / 27 - a * b / 3 + c
    disc = (q / 2) ** 2 + (p / 3) ** 3
    # One real root (Cardano, cancellation-free form).
    sq = torch.sqrt(torch.clamp(disc, min=0))
    w = -q / 2 - torch.where(q >= 0, sq, -sq)
    u = torch.sign(w) * w.abs() ** (1 / 3)
    u_safe = torch.where(u.abs() < 1e-300, torch.ones_like(u), u)
    t_one = torch.where(u.abs() < 1e-300, torch.zeros_like(u), u - p / (3 * u_safe))
    # Three real roots (trigonometric form).
    p_neg = torch.clamp(-p, min=1e-300)
    r = 2 * torch.sqrt(p_neg / 3)
    cos_arg = torch.clamp((3 * q / (2 * -p_neg)) * torch.sqrt(3 / p_neg), -1.0, 1.0)
    phi = torch.acos(cos_arg) / 3
    k = torch.arange(3, dtype=c3.dtype, device=c3.device)
    t_three = r[..., None] * torch.cos(phi[..., None] - 2 * math.pi * k / 3)
    roots = torch.where((disc > 0)[..., None], t_one[..., None].expand_as(t_three), t_three)
    return roots - a[..., None] / 3


def _newton_cubic(x: Tensor, c3: Tensor, c2: Tensor, c1: Tensor, c0: Tensor,
                  steps: int) -> Tensor:
    eps = _eps(x.dtype)
    for _ in range(steps):
        f = ((c3 * x + c2) * x + c1) * x + c0
        df = (3 * c3 * x + 2 * c2) * x + c1
        x = x - _safe_div(f, df, eps)
    return x


# ----------------------------------------------------------------------------------------------
# P3P (Lambda Twist style: degenerate conic of the pencil -> two planes -> four candidates)


def _p3p_candidates(y: Tensor, X: Tensor) -> tuple[Tensor, Tensor]:
    """Depths of the 3 points for up to 4 solutions.

    y: (B, 3, 3) unit bearing vectors, X: (B, 3, 3) world points (rows are points).
    Returns lambdas (B, 4, 3) in world units and valid (B, 4).
    """
    dtype = y.dtype
    eps = _eps(dtype)
    d12, d13, d23 = X[:, 0] - X[:, 1], X[:, 0] - X[:, 2], X[:, 1] - X[:, 2]
    a12, a13, a23 = _dot(d12, d12), _dot(d13, d13), _dot(d23, d23)
    scale_sq = (a12 + a13 + a23) / 3  # > 0: degenerate sets were replaced by the caller
    a12, a13, a23 = a12 / scale_sq, a13 / scale_sq, a23 / scale_sq
    c12, c13, c23 = _dot(y[:, 0], y[:, 1]), _dot(y[:, 0], y[:, 2]), _dot(y[:, 1], y[:, 2])
    zero, one = torch.zeros_like(a12), torch.ones_like(a12)

    def sym(m00, m01, m02, m11, m12, m22):
        return torch.stack([m00, m01, m02, m01, m11, m12, m02, m12, m22], -1).reshape(-1, 3, 3)

    # lambda^T M_ij lambda = a_ij, i.e. |l_i y_i - l_j y_j|^2 = |X_i - X_j|^2.
    M12 = sym(one, -c12, zero, one, zero, zero)
    M13 = sym(one, zero, -c13, zero, zero, one)
    M23 = sym(zero, zero, zero, one, -c23, one)
    D1 = M12 * a23[:, None, None] - M23 * a12[:, None, None]
    D2 = M13 * a23[:, None, None] - M23 * a13[:, None, None]
    # det(D1 + g D2) = c3 g^3 + c2 g^2 + c1 g + c0; solve in g or 1/g, whichever leads.
    det1, det2 = _det3(D1), _det3(D2)
    flip = det1.abs() > det2.abs()
    A = torch.where(flip[:, None, None], D2, D1)
    Bm = torch.where(flip[:, None, None], D1, D2)
    k3 = torch.where(flip, det1, det2)
    k0 = torch.where(flip, det2, det1)
    k1 = (_adj3(A) * Bm.transpose(-1, -2)).sum((-2, -1))
    k2 = (_adj3(Bm) * A.transpose(-1, -2)).sum((-2, -1))
    lead_ok = k3 != 0
    k3s = torch.where(lead_ok, k3, torch.ones_like(k3))
    with torch.no_grad():
        # Of several real roots take the one whose degenerate conic splits into the most
        # clearly separated pair of planes (most negative normalised principal minors).
        g3 = _cubic_real_roots(k3s, k2, k1, k0)
        g3 = _newton_cubic(g3, k3s[:, None], k2[:, None], k1[:, None], k0[:, None], steps=2)
        D3 = A[:, None] + g3[..., None, None] * Bm[:, None]
        g = torch.gather(g3, 1, (_minors3(D3) / torch.clamp(
            (D3 * D3).sum((-2, -1)) ** 2, min=1e-300)).argmin(1, keepdim=True)).squeeze(1)
    g = _newton_cubic(g, k3s, k2, k1, k0, steps=2)
    D0 = A + g[:, None, None] * Bm
    D0 = D0 / torch.sqrt(torch.clamp((D0 * D0).sum((-2, -1)), min=1e-300))[:, None, None]

    # D0 has rank 2; indefinite (sigma1 sigma2 < 0) iff its zero set is two real planes.
    tr = D0[:, 0, 0] + D0[:, 1, 1] + D0[:, 2, 2]
    minors = _minors3(D0)
    indefinite = minors < -1e2 * eps
    root = torch.sqrt(torch.clamp(tr * tr - 4 * minors, min=0))
    sig1 = 0.5 * (tr + torch.where(tr >= 0, root, -root))  # largest magnitude
    sig1 = torch.where(sig1.abs() < 1e-30, torch.ones_like(sig1), sig1)
    sig2 = minors / sig1
    eye = torch.eye(3, dtype=dtype, device=y.device)
    shifts = torch.stack([sig1, sig2, torch.zeros_like(sig1)], 1)[..., None, None] * eye
    e1, e2, p = _largest_cross_null(D0[:, None] - shifts).unbind(1)  # eigenvectors, null vector
    s1 = torch.sqrt(sig1.abs())[:, None]
    s2 = torch.sqrt(sig2.abs())[:, None]
    # Both planes contain the null direction p; the second axis spans the rest of each plane.
    normals = torch.stack([s1 * e1 + s2 * e2, s1 * e1 - s2 * e2], 1)  # (B, 2, 3)
    p2 = p[:, None, :].expand_as(normals)
    v = _normalize(_cross(normals, p2))

    # On each plane: intersect with the conic D1 (or D2: they agree up to -g there).
    Q = torch.where((g.abs() > 1)[:, None, None], A, Bm)[:, None]
    Qp = (Q @ p2[..., None]).squeeze(-1)
    Qv = (Q @ v[..., None]).squeeze(-1)
    qa, qb, qc = _dot(p2, Qp), _dot(p2, Qv), _dot(v, Qv)
    dq = qb * qb - qa * qc
    # Clearly complex pairs are dropped here; near-tangent ones are judged by the residual below.
    dq_ok = dq > -1e-2 * (qb * qb + (qa * qc).abs())
    sq = torch.sqrt(torch.clamp(dq, min=0))
    qq = -(qb + torch.where(qb >= 0, sq, -sq))
    # Two directions (alpha, beta) of each plane: (qq, qa) and (qc, qq).
    alpha = torch.stack([qq, qc], -1)  # (B, 2, 2)
    beta = torch.stack([qa, qq], -1)
    lam = alpha[..., None] * p2[:, :, None, :] + beta[..., None] * v[:, :, None, :]
    lam = lam.reshape(-1, 4, 3)
    # Scale from the sum of the three distance constraints (positive definite form).
    Msum = (M12 + M13 + M23)[:, None]
    quad = _dot(lam, (Msum @ lam[..., None]).squeeze(-1))
    quad_ok = quad > 1e-12
    k = torch.sqrt(torch.clamp((a12 + a13 + a23)[:, None], min=0)
                   / torch.clamp(quad, min=1e-30))
    lam = lam * k[..., None]
    lam = torch.where(lam.sum(-1, keepdim=True) < 0, -lam, lam)

    # Polish with Gauss-Newton on the three distance equations (gradients stay exact).
    a_vec = torch.stack([a12, a13, a23], -1)[:, None]
    for it in range(3):
        l1, l2, l3 = lam.unbind(-1)
        c12_, c13_, c23_ = c12[:, None], c13[:, None], c23[:, None]
        res = torch.stack([l1 * l1 + l2 * l2 - 2 * c12_ * l1 * l2,
                           l1 * l1 + l3 * l3 - 2 * c13_ * l1 * l3,
                           l2 * l2 + l3 * l3 - 2 * c23_ * l2 * l3], -1) - a_vec
        z = torch.zeros_like(l1)
        J = torch.stack([
            torch.stack([2 * l1 - 2 * c12_ * l2, 2 * l2 - 2 * c12_ * l1, z], -1),
            torch.stack([2 * l1 - 2 * c13_ * l3, z, 2 * l3 - 2 * c13_ * l1], -1),
            torch.stack([z, 2 * l2 - 2 * c23_ * l3, 2 * l3 - 2 * c23_ * l2], -1)], -2)
        if it == 2:
            break  # last pass only measures the residual
        det = _det3(J)
        step = (_adj3(J) @ res[..., None]).squeeze(-1)
        lam = lam - _safe_div(step, det[..., None], 1e-12)
    valid = (indefinite & lead_ok)[:, None] & dq_ok.repeat_interleave(2, -1) & quad_ok
    # Distances are normalised to mean 1: a real solution satisfies all three equations.
    valid = valid & (lam > 1e-6).all(-1) & (res.abs().amax(-1) < 10 * math.sqrt(eps))
    return lam * torch.sqrt(scale_sq)[:, None, None], valid


def _pose_from_depths(lam: Tensor, y: Tensor, X: Tensor) -> Tensor:
    """Rigid T_cw (B, S, 4, 4) mapping X (B, 3, 3) onto lam_i y_i, lam (B, S, 3)."""
    P = lam[..., None] * y[:, None]  # (B, S, 3, 3) camera points
    Xs = X[:, None].expand_as(P)

    def frame(Q):
        e1 = _normalize(Q[..., 1, :] - Q[..., 0, :])
        d = Q[..., 2, :] - Q[..., 0, :]
        e2 = _normalize(d - _dot(d, e1)[..., None] * e1)
        return torch.stack([e1, e2, _cross(e1, e2)], -1)

    R = frame(P) @ frame(Xs).transpose(-1, -2)
    t = P.mean(-2) - (R @ Xs.mean(-2)[..., None]).squeeze(-1)
    return make_se3(R, t)


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
    fx, sk, cx = K[:, 0, 0, None], K[:, 0, 1, None], K[:, 0, 2, None]
    fy, cy = K[:, 1, 1, None], K[:, 1, 2, None]
    ru = fx * xn + sk * yn + cx - pix[..., 0]
    rv = fy * yn + cy - pix[..., 1]
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


def _lm(T: Tensor, X: Tensor, pix: Tensor, K: Tensor, w: Tensor, iterations: int,
        damping: float) -> Tensor:
    """Batched LM on (B, 4, 4) with per-set damping; steps that raise the cost are rejected."""
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
        T_new = se3_exp(delta) @ T
        if it == iterations - 1:
            res_new, w_new, _ = _project_residuals(T_new, X, pix, K, w, False)
            cost_new = _cost(res_new, w_new)
        else:
            H_new, g_new, cost_new = _normal_equations(
                *_project_residuals(T_new, X, pix, K, w, True))
        accept = cost_new <= cost * (1 + 1e-9) + 1e-30
        T = torch.where(accept[:, None, None], T_new, T)
        lam = torch.where(accept, torch.clamp(lam * 0.1, min=1e-9), lam * 10)
        if it < iterations - 1:
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
    T = T.to(dtype).expand(batch + (4, 4)).reshape(-1, 4, 4)
    X = X.to(dtype).expand(batch + (N, 3)).reshape(-1, N, 3)
    pix = pix.to(dtype).expand(batch + (N, 2)).reshape(-1, N, 2)
    K = K.to(dtype).expand(batch + (3, 3)).reshape(-1, 3, 3)
    if weights is None:
        w = torch.ones(X.shape[:-1], dtype=dtype, device=X.device)
    else:
        if weights.shape[-1:] != (N,):
            raise ValueError(f'weights must have shape (..., {N}), got {tuple(weights.shape)}')
        w = weights.to(dtype).expand(batch + (N,)).reshape(-1, N)
    return batch, T, X, pix, K, w


def _sanitize(T, X, pix, K, w):
    """Zero weight (and harmless values) for non-finite correspondences; identity for bad T."""
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


def _dummy_problem(dtype, device):
    """A fixed, well-conditioned P4P problem (identity pose, K = I) swapped in for bad sets."""
    X = torch.tensor([[0.0, 0.0, 4.0], [1.0, 0.0, 4.5], [0.0, 1.0, 5.0], [1.0, 1.0, 4.0]],
                     dtype=dtype, device=device)
    return X, X[:, :2] / X[:, 2:]


def solve_p4p(points_world_b43: Tensor, pixels_b42: Tensor, K_b33: Tensor,
              gauss_newton_steps: int = 1,
              max_error_px: float | None = None) -> tuple[Tensor, Tensor]:
    """Minimal pose solver from 4 2D-3D correspondences, batched over any leading dims.

    P3P on correspondences 0, 1, 2 (pencil of the two distance-difference conics, one real root
    of its cubic, split into two planes -> up to 4 depth triplets, polished by 2 Newton steps);
    correspondence 3 selects the candidate with the smallest reprojection error (it must lie in
    front of the camera). Then ``gauss_newton_steps`` LM steps on all 4 points.

    Args:
        points_world_b43: (..., 4, 3) scene coordinates (world frame, metres).
        pixels_b42: (..., 4, 2) pixels (u, v).
        K_b33: (..., 3, 3) intrinsics (broadcast against the leading dims).
        gauss_newton_steps: LM steps on the 4 correspondences after P3P (0 = pure P3P).
        max_error_px: if given, a set whose largest reprojection error (pixels, over all four
            correspondences, after the LM steps) exceeds it is invalid: the four points are not
            consistent with one pose (an outlier among them, or a mirrored configuration).

    Returns:
        T_cw_b44: (..., 4, 4) world-to-camera pose; identity where invalid.
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
    dtype = torch.promote_types(torch.promote_types(points_world_b43.dtype, pixels_b42.dtype),
                                K_b33.dtype)
    device = points_world_b43.device
    # The closed form runs in float64: it is overhead-bound (float64 costs about the same) and
    # ill-conditioned sets lose too many digits in float32. LM then works in the input dtype.
    wd = torch.float64
    X = points_world_b43.to(wd).expand(batch + (4, 3)).reshape(-1, 4, 3)
    pix = pixels_b42.to(wd).expand(batch + (4, 2)).reshape(-1, 4, 2)
    K = K_b33.to(wd).expand(batch + (3, 3)).reshape(-1, 3, 3)
    B = X.shape[0]

    # 1. Validity of the raw input; bad sets get the dummy problem before any arithmetic.
    finite = (torch.isfinite(X).all((-2, -1)) & torch.isfinite(pix).all((-2, -1))
              & torch.isfinite(K).all((-2, -1)) & (K[:, 0, 0] > 0) & (K[:, 1, 1] > 0))
    Xd, xnd = _dummy_problem(wd, device)
    eye3 = torch.eye(3, dtype=wd, device=device)
    X = torch.where(finite[:, None, None], X, Xd)
    K = torch.where(finite[:, None, None], K, eye3)
    pix = torch.where(finite[:, None, None], pix, xnd)
    xn = normalize_pixels(pix, K)  # (B, 4, 2)
    f = torch.cat([xn, torch.ones_like(xn[..., :1])], -1)
    y = _normalize(f)
    Xc = X[:, :3] - X[:, :3].mean(1, keepdim=True)
    span_sq = (Xc * Xc).sum((-2, -1))
    d12, d13 = X[:, 1] - X[:, 0], X[:, 2] - X[:, 0]
    area_sq = _dot(_cross(d12, d13), _cross(d12, d13))
    # Collinear / repeated world points: triangle area tiny against its size.
    geom_ok = (span_sq > 1e-12) & (area_sq > 1e-8 * span_sq * span_sq)
    d4 = X[:, 3] - X[:, :3].mean(1)
    geom_ok = geom_ok & (_dot(d4, d4) > 1e-10 * span_sq)
    # Bearings of the three P3P points must not lie on one plane through the centre.
    bear_ok = _det3(y[:, :3]).abs() > 1e-9
    ok = finite & geom_ok & bear_ok
    X = torch.where(ok[:, None, None], X, Xd)
    K = torch.where(ok[:, None, None], K, eye3)
    xn = torch.where(ok[:, None, None], xn, xnd)
    pix = torch.where(ok[:, None, None], pix, xnd)
    y = torch.where(ok[:, None, None], y, _normalize(torch.cat(
        [xnd, torch.ones_like(xnd[:, :1])], -1)))

    # 2. P3P candidates and selection by the 4th correspondence.
    lam, cand_ok = _p3p_candidates(y[:, :3], X[:, :3])
    T_c = _pose_from_depths(lam, y[:, :3], X[:, :3])  # (B, 4, 4, 4)
    X4 = (T_c[..., :3, :3] @ X[:, None, 3, :, None]).squeeze(-1) + T_c[..., :3, 3]
    z4 = X4[..., 2]
    in_front = z4 > 1e-6 * torch.sqrt(span_sq)[:, None]
    z4s = torch.where(in_front, z4, torch.ones_like(z4))
    err4 = ((X4[..., :2] / z4s[..., None] - xn[:, None, 3]) ** 2).sum(-1)
    usable = cand_ok & in_front & torch.isfinite(err4)
    err4 = torch.where(usable, err4, torch.full_like(err4, 1e30))
    best = err4.argmin(-1)
    T = torch.gather(T_c, 1, best[:, None, None, None].expand(B, 1, 4, 4)).squeeze(1).to(dtype)
    valid = ok & usable.any(-1)
    eye4 = torch.eye(4, dtype=dtype, device=device)
    T = torch.where(valid[:, None, None], T, eye4)

    # 3. Optional LM on all four correspondences.
    if gauss_newton_steps > 0:
        w = valid[:, None].to(dtype).expand(B, 4)
        T = _lm(T, X.to(dtype), pix.to(dtype), K.to(dtype), w, gauss_newton_steps, 1e-6)
    valid = valid & torch.isfinite(T).all((-2, -1))
    if max_error_px is not None:
        with torch.no_grad():
            ones = torch.ones(B, 4, dtype=dtype, device=device)
            res, w_eff, _ = _project_residuals(T, X.to(dtype), pix.to(dtype), K.to(dtype), ones,
                                               False)
            err = torch.where(w_eff > 0, res.norm(dim=1), torch.full_like(w_eff, math.inf))
            valid = valid & (err.amax(-1) <= max_error_px)
    T = torch.where(valid[:, None, None], T, eye4)
    return T.reshape(batch + (4, 4)), valid.reshape(batch)
