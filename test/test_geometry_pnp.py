"""PnP minimal solver and refinement against OpenCV (projectPoints / solvePnP / Rodrigues)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from dsac_ros.geometry.pnp import pnp_information, refine_pnp, resolve_pnp, solve_p4p
from dsac_ros.geometry.transforms import make_se3, pose_errors, se3_exp, transform_points

F64 = torch.float64
K_SQUARE = np.array([[525.0, 0.0, 320.0], [0.0, 525.0, 240.0], [0.0, 0.0, 1.0]])
K_NONSQUARE = np.array([[585.0, 0.0, 316.5], [0.0, 540.0, 247.25], [0.0, 0.0, 1.0]])


def _random_pose_cv(rng) -> tuple[np.ndarray, np.ndarray]:
    rvec = rng.normal(size=3)
    rvec *= rng.uniform(0, np.pi) / np.linalg.norm(rvec)
    return rvec, rng.uniform(-3, 3, 3)


def _scene(rng, n: int, K: np.ndarray, noise_px: float = 0.0):
    """Random pose and n world points visible in a 640x480 image at 0.5..6 m depth.

    Pixels come from cv2.projectPoints (the independent reference). Returns
    rvec, tvec (OpenCV, world-to-camera), world points (n, 3), pixels (n, 2).
    """
    rvec, tvec = _random_pose_cv(rng)
    R, _ = cv2.Rodrigues(rvec)
    uv = rng.uniform([20, 20], [620, 460], (n, 2))
    depth = rng.uniform(0.5, 6.0, n)
    xn = (uv - K[:2, 2]) / np.diag(K)[:2]
    Xc = np.concatenate([xn * depth[:, None], depth[:, None]], 1)
    Xw = (Xc - tvec) @ R  # R^T (Xc - t)
    pix, _ = cv2.projectPoints(Xw, rvec, tvec, K, None)
    pix = pix[:, 0] + noise_px * rng.normal(size=(n, 2))
    return rvec, tvec, Xw, pix


def _T_from_cv(rvec, tvec) -> torch.Tensor:
    R, _ = cv2.Rodrigues(np.asarray(rvec, np.float64))
    return make_se3(torch.from_numpy(R), torch.from_numpy(np.asarray(tvec, np.float64).ravel()))


def _batch(rng, count: int, n: int, K: np.ndarray, noise_px: float = 0.0):
    scenes = [_scene(rng, n, K, noise_px) for _ in range(count)]
    T_gt = torch.stack([_T_from_cv(r, t) for r, t, _, _ in scenes])
    X = torch.from_numpy(np.stack([s[2] for s in scenes]))
    pix = torch.from_numpy(np.stack([s[3] for s in scenes]))
    return T_gt, X, pix, scenes


# ---------------------------------------------------------------------------------- solve_p4p


@pytest.mark.parametrize('K', [K_SQUARE, K_NONSQUARE])
def test_solve_p4p_recovers_pose_noise_free_float64(K):
    rng = np.random.default_rng(10)
    T_gt, X, pix, scenes = _batch(rng, 64, 4, K)
    for steps in (0, 1):
        T, valid = solve_p4p(X, pix, torch.from_numpy(K), gauss_newton_steps=steps)
        assert valid.all()
        deg, m = pose_errors(T, T_gt)
        assert deg.max() < 1e-3 and m.max() < 1e-4, (deg.max(), m.max())
    # OpenCV's own P3P (3 points + 4th for disambiguation) agrees on the same sets.
    for (_, _, Xw, p), T_i in zip(scenes[:10], T):
        ok, rvec, tvec = cv2.solvePnP(Xw, p, K, None, flags=cv2.SOLVEPNP_P3P)
        assert ok
        deg, m = pose_errors(T_i, _T_from_cv(rvec, tvec))
        assert deg < 1e-3 and m < 1e-4


def test_solve_p4p_float32_and_leading_dims():
    rng = np.random.default_rng(11)
    T_gt, X, pix, _ = _batch(rng, 24, 4, K_SQUARE)
    K = torch.from_numpy(K_SQUARE).float()
    T, valid = solve_p4p(X.float().reshape(2, 3, 4, 4, 3), pix.float().reshape(2, 3, 4, 4, 2), K)
    assert T.shape == (2, 3, 4, 4, 4) and valid.shape == (2, 3, 4)
    assert T.dtype == torch.float32 and valid.all()
    deg, m = pose_errors(T.reshape(-1, 4, 4).double(), T_gt)
    assert deg.max() < 0.01 and m.max() < 1e-3, (deg.max(), m.max())


def test_solve_p4p_gradcheck_points_and_pixels():
    rng = np.random.default_rng(12)
    _, X, pix, _ = _batch(rng, 2, 4, K_SQUARE, noise_px=0.5)
    K = torch.from_numpy(K_SQUARE)
    for steps in (0, 1):
        def f(Xw, p, steps=steps):
            return solve_p4p(Xw, p, K, gauss_newton_steps=steps)[0]

        assert torch.autograd.gradcheck(f, (X.clone().requires_grad_(),
                                            pix.clone().requires_grad_()),
                                        eps=1e-6, atol=1e-5, rtol=1e-4)


def _central_difference_check(fn, X: torch.Tensor, eps: float = 1e-6):
    """Autograd gradient of scalar fn(X) vs central differences over every entry of X."""
    Xg = X.clone().requires_grad_()
    fn(Xg).backward()
    numeric = torch.zeros_like(X)
    flat = numeric.view(-1)
    for k in range(X.numel()):
        Xp, Xm = X.clone(), X.clone()
        Xp.view(-1)[k] += eps
        Xm.view(-1)[k] -= eps
        flat[k] = (fn(Xp) - fn(Xm)) / (2 * eps)
    torch.testing.assert_close(Xg.grad, numeric, atol=1e-5, rtol=1e-4)
    assert Xg.grad.abs().max() > 1e-3  # the check is not vacuous


def test_solve_p4p_scene_coordinate_gradient_matches_central_differences():
    rng = np.random.default_rng(13)
    T_gt, X, pix, _ = _batch(rng, 3, 4, K_NONSQUARE, noise_px=1.0)
    K = torch.from_numpy(K_NONSQUARE)
    probe = torch.from_numpy(rng.normal(size=(3, 4, 4)))

    def scalar(Xw):
        T, _ = solve_p4p(Xw, pix, K)
        return (T * probe).sum()

    _central_difference_check(scalar, X)


def test_solve_p4p_degenerate_inputs_are_invalid_and_finite():
    rng = np.random.default_rng(14)
    _, X, pix, _ = _batch(rng, 6, 4, K_SQUARE)
    X = X.clone()
    pix = pix.clone()
    X[0, 1] = X[0, 0]  # repeated world point
    X[1, 2] = X[1, 0] + 0.37 * (X[1, 1] - X[1, 0])  # collinear world points
    X[2, 3, 1] = float('nan')  # NaN scene coordinate
    pix[3, 0, 0] = float('inf')  # inf pixel
    pix[4, :3] = torch.tensor([[100.0, 100.0], [200.0, 200.0], [300.0, 300.0]], dtype=F64)
    # set 5 stays a good reference
    Xg = X.clone().requires_grad_()
    pg = pix.clone().requires_grad_()
    T, valid = solve_p4p(Xg, pg, torch.from_numpy(K_SQUARE))
    assert valid.tolist() == [False, False, False, False, False, True]
    assert torch.isfinite(T).all()
    torch.testing.assert_close(T[:5], torch.eye(4, dtype=F64).expand(5, 4, 4))
    T.sum().backward()
    assert torch.isfinite(Xg.grad).all() and torch.isfinite(pg.grad).all()
    assert Xg.grad[:5].abs().max() == 0 and Xg.grad[5].abs().max() > 0
    # Bad intrinsics.
    T, valid = solve_p4p(X[5], pix[5], torch.zeros(3, 3, dtype=F64))
    assert not valid and torch.isfinite(T).all()


def test_solve_p4p_never_returns_points_behind_the_camera():
    rng = np.random.default_rng(15)
    T_gt, X, pix, _ = _batch(rng, 32, 4, K_SQUARE)
    # Mirror the scene through the camera centre: same pixels, all points behind the camera.
    R, t = T_gt[:, :3, :3], T_gt[:, :3, 3]
    Xc = transform_points(T_gt, X)
    X_behind = ((-Xc - t[:, None]) @ R)  # R^T (-Xc - t)
    assert (transform_points(T_gt, X_behind)[..., 2] < 0).all()
    K = torch.from_numpy(K_SQUARE)
    Xg = X_behind.clone().requires_grad_()
    T, valid = solve_p4p(Xg, pix, K)
    assert torch.isfinite(T).all()
    z = transform_points(T, X_behind)[..., 2]
    assert (z[valid] > 0).all()
    T.sum().backward()
    assert torch.isfinite(Xg.grad).all()
    # Four mirrored points are no rigid image of the scene (P3P on three of them still has
    # solutions): the consistency check on all four rejects nearly every set, while the
    # original scene passes it.
    _, valid_checked = solve_p4p(X_behind, pix, K, max_error_px=10.0)
    assert valid_checked.float().mean() < 0.2
    _, valid_true = solve_p4p(X, pix, K, max_error_px=1e-6)
    assert valid_true.all()
    pix_outlier = pix.clone()
    pix_outlier[:, 3] += 40.0
    _, valid_outlier = solve_p4p(X, pix_outlier, K, max_error_px=10.0)
    assert valid_outlier.float().mean() < 0.2


def test_solve_p4p_untaped_and_taped_paths_agree_and_sets_do_not_mix():
    """Without gradients the solver skips the tape (inference mode, no input sanitising before
    the closed form); results must match the taped path bit for bit on good sets, bad sets in
    the batch must not disturb good ones, and outputs must be ordinary tensors."""
    rng = np.random.default_rng(16)
    T_gt, X, pix, _ = _batch(rng, 12, 4, K_NONSQUARE, noise_px=0.3)
    X, pix = X.clone(), pix.clone()
    X[1, 2] = float('nan')
    pix[4, 3, 1] = float('inf')
    X[7, 2] = X[7, 0] + 0.5 * (X[7, 1] - X[7, 0])  # collinear
    K = torch.from_numpy(K_NONSQUARE)
    good = [i for i in range(12) if i not in (1, 4, 7)]
    for steps in (0, 2):
        T_plain, v_plain = solve_p4p(X, pix, K, gauss_newton_steps=steps, max_error_px=50.0)
        T_tape, v_tape = solve_p4p(X.clone().requires_grad_(), pix, K, gauss_newton_steps=steps,
                                   max_error_px=50.0)
        T_good, v_good = solve_p4p(X[good], pix[good], K, gauss_newton_steps=steps,
                                   max_error_px=50.0)
        assert v_plain.tolist() == v_tape.tolist()
        assert not v_plain[[1, 4, 7]].any() and v_good.all() and v_plain[good].all()
        torch.testing.assert_close(T_tape.detach(), T_plain, rtol=0, atol=1e-12)
        torch.testing.assert_close(T_plain[good], T_good, rtol=0, atol=1e-12)
        assert torch.isfinite(T_plain).all()
    assert not T_plain.is_inference() and not v_plain.is_inference()
    # The untaped result can take part in a later graph (e.g. a score network on its errors).
    Xg = X[good].clone().requires_grad_()
    (transform_points(T_plain[good], Xg) ** 2).sum().backward()
    assert torch.isfinite(Xg.grad).all()


def test_solve_p4p_first_call_in_inference_mode_does_not_break_gradients():
    from dsac_ros.geometry import pnp

    rng = np.random.default_rng(17)
    _, X, pix, _ = _batch(rng, 3, 4, K_SQUARE, noise_px=0.5)
    K = torch.from_numpy(K_SQUARE)
    pnp._consts.cache_clear()  # cached constants get built inside inference mode below
    with torch.inference_mode():
        T_inf, _ = solve_p4p(X, pix, K)
    Xg = X.clone().requires_grad_()
    T, valid = solve_p4p(Xg, pix, K)
    assert valid.all()
    T.sum().backward()
    assert torch.isfinite(Xg.grad).all() and Xg.grad.abs().max() > 0
    torch.testing.assert_close(T.detach(), T_inf, rtol=0, atol=1e-12)


def test_solve_p4p_many_sets_agree_with_opencv_p3p():
    """Noise-free random sets (float32 input, as the estimator passes them): every set valid
    and equal to OpenCV's P3P (first three points + the fourth to disambiguate)."""
    rng = np.random.default_rng(18)
    T_gt, X, pix, scenes = _batch(rng, 200, 4, K_SQUARE)
    T, valid = solve_p4p(X.float(), pix.float(), torch.from_numpy(K_SQUARE).float(),
                         gauss_newton_steps=0)
    assert valid.all()
    deg, m = pose_errors(T.double(), T_gt)
    assert deg.max() < 0.05 and m.max() < 1e-3, (deg.max(), m.max())
    for (_, _, Xw, p), T_i in zip(scenes[::10], T[::10]):
        ok, rvec, tvec = cv2.solvePnP(Xw, p, K_SQUARE, None, flags=cv2.SOLVEPNP_P3P)
        assert ok
        deg, m = pose_errors(T_i.double(), _T_from_cv(rvec, tvec))
        assert deg < 0.05 and m < 1e-3


def test_solve_p4p_empty_batch():
    K = torch.from_numpy(K_SQUARE)
    X, pix = torch.zeros(2, 0, 4, 3, dtype=F64), torch.zeros(2, 0, 4, 2, dtype=F64)
    for steps in (0, 1):
        T, valid = solve_p4p(X, pix, K, gauss_newton_steps=steps, max_error_px=5.0)
        assert T.shape == (2, 0, 4, 4) and valid.shape == (2, 0) and T.dtype == F64


def test_solve_p4p_shape_errors():
    K = torch.from_numpy(K_SQUARE)
    with pytest.raises(ValueError, match='points_world_b43'):
        solve_p4p(torch.zeros(5, 3, 3, dtype=F64), torch.zeros(5, 4, 2, dtype=F64), K)
    with pytest.raises(ValueError, match='pixels_b42'):
        solve_p4p(torch.zeros(5, 4, 3, dtype=F64), torch.zeros(5, 4, 3, dtype=F64), K)
    with pytest.raises(ValueError, match='K_b33'):
        solve_p4p(torch.zeros(5, 4, 3), torch.zeros(5, 4, 2), torch.eye(4))


# ---------------------------------------------------------------------------------- refine_pnp


@pytest.mark.parametrize('K', [K_SQUARE, K_NONSQUARE])
def test_refine_pnp_matches_cv2_iterative_with_noise(K):
    rng = np.random.default_rng(20)
    T_gt, X, pix, scenes = _batch(rng, 8, 200, K, noise_px=1.0)
    dirs = torch.from_numpy(rng.normal(size=(8, 2, 3)))
    dirs = dirs / dirs.norm(dim=-1, keepdim=True)
    xi0 = torch.cat([0.1 * dirs[:, 0], 0.08 * dirs[:, 1]], -1)  # 10 cm, 4.6 degrees
    T0 = se3_exp(xi0) @ T_gt
    deg0, _ = pose_errors(T0, T_gt)
    assert deg0.min() > 1.0  # starts far off (several degrees)
    T = refine_pnp(T0, X, pix, torch.from_numpy(K), iterations=10)
    for (_, _, Xw, p), T_i in zip(scenes, T):
        ok, rvec, tvec = cv2.solvePnP(Xw, p, K, None, flags=cv2.SOLVEPNP_ITERATIVE)
        assert ok
        deg, m = pose_errors(T_i, _T_from_cv(rvec, tvec))
        assert deg < 0.05 and m < 1e-3, (deg, m)


def test_refine_pnp_weights_behind_camera_and_nan_are_ignored():
    rng = np.random.default_rng(21)
    T_gt, X, pix, _ = _batch(rng, 4, 60, K_SQUARE, noise_px=0.5)
    K = torch.from_numpy(K_SQUARE)
    T0 = se3_exp(torch.from_numpy(0.02 * rng.normal(size=(4, 6)))) @ T_gt
    ref = refine_pnp(T0, X, pix, K, iterations=8)
    # Gross outliers with weight 0, points behind the camera, NaN points: no effect.
    X_out = torch.cat([X, X[:, :10] + 5.0], 1)
    pix_out = torch.cat([pix, pix[:, :10]], 1)
    w = torch.cat([torch.ones(4, 60, dtype=F64), torch.zeros(4, 10, dtype=F64)], 1)
    torch.testing.assert_close(refine_pnp(T0, X_out, pix_out, K, w, iterations=8), ref)
    Xc = transform_points(T_gt, X[:, :10])
    X_behind = transform_points(torch.linalg.inv(T_gt), Xc * torch.tensor([1, 1, -1.0]))
    X_nan = X[:, :5].clone()
    X_nan[:, :, 0] = float('nan')
    X_all = torch.cat([X, X_behind, X_nan], 1)
    pix_all = torch.cat([pix, pix[:, :10], pix[:, :5]], 1)
    out = refine_pnp(T0, X_all, pix_all, K, iterations=8)
    torch.testing.assert_close(out, ref)
    # Weighting by 2 everywhere changes nothing either.
    torch.testing.assert_close(refine_pnp(T0, X, pix, K, 2 * torch.ones(4, 60, dtype=F64), 8),
                               ref)


def test_refine_pnp_gradcheck_and_central_differences():
    rng = np.random.default_rng(22)
    T_gt, X, pix, _ = _batch(rng, 2, 8, K_NONSQUARE, noise_px=1.0)
    K = torch.from_numpy(K_NONSQUARE)
    T0 = se3_exp(torch.from_numpy(0.01 * rng.normal(size=(2, 6)))) @ T_gt
    w = torch.from_numpy(rng.uniform(0.5, 1.5, (2, 8)))

    def f(Xw, p, ww):
        return refine_pnp(T0, Xw, p, K, ww, iterations=3)

    assert torch.autograd.gradcheck(f, (X.clone().requires_grad_(), pix.clone().requires_grad_(),
                                        w.clone().requires_grad_()),
                                    eps=1e-6, atol=1e-5, rtol=1e-4)
    probe = torch.from_numpy(rng.normal(size=(2, 4, 4)))
    _central_difference_check(lambda Xw: (refine_pnp(T0, Xw, pix, K, iterations=5)
                                          * probe).sum(), X)


def test_resolve_pnp_is_the_optimum_and_its_implicit_gradient():
    """resolve_pnp lands on the LM optimum whatever the start, matches cv2.solvePnP (iterative,
    from the truth) and differentiates like central differences of the converged solve."""
    rng = np.random.default_rng(24)
    T_gt, X, pix, scenes = _batch(rng, 2, 40, K_SQUARE, noise_px=1.0)
    K = torch.from_numpy(K_SQUARE)
    starts = [se3_exp(torch.from_numpy(scale * rng.normal(size=(2, 6)))) @ T_gt
              for scale in (0.002, 0.02)]
    near, far = (resolve_pnp(T0, X, pix, K, max_iterations=30, tolerance=1e-12)
                 for T0 in starts)
    torch.testing.assert_close(near, far, atol=1e-9, rtol=0)
    for b, (rvec, tvec, Xw, p) in enumerate(scenes):
        ok, r_cv, t_cv = cv2.solvePnP(Xw, p, K_SQUARE, None, rvec.copy(), tvec.copy(),
                                      useExtrinsicGuess=True, flags=cv2.SOLVEPNP_ITERATIVE)
        deg, m = pose_errors(near[b], _T_from_cv(r_cv, t_cv))
        assert ok and float(deg) < 1e-5 and float(m) < 1e-7
    probe = torch.from_numpy(rng.normal(size=(2, 4, 4)))
    Xg = X.clone().requires_grad_()
    (grad,) = torch.autograd.grad((resolve_pnp(starts[1], Xg, pix, K) * probe).sum(), Xg)
    h = 1e-6
    for idx in [(0, 3, 2), (1, 10, 0), (1, 25, 1)]:
        plus, minus = X.clone(), X.clone()
        plus[idx] += h
        minus[idx] -= h
        value = [(resolve_pnp(starts[1], x, pix, K, max_iterations=30, tolerance=1e-12)
                  * probe).sum() for x in (plus, minus)]
        numeric = float((value[0] - value[1]) / (2 * h))
        assert abs(numeric - float(grad[idx])) <= 2e-3 * float(grad.abs().max()), idx


def test_pnp_information_matches_numeric_jacobian():
    rng = np.random.default_rng(23)
    T_gt, X, pix, _ = _batch(rng, 2, 30, K_NONSQUARE, noise_px=1.0)
    K = torch.from_numpy(K_NONSQUARE)
    w = torch.from_numpy(rng.uniform(0, 2, (2, 30)))
    info = pnp_information(T_gt, X, pix, K, w)
    assert info.shape == (2, 6, 6)

    def residuals(xi):  # left twist [rho, phi] in the camera frame
        Xc = transform_points(se3_exp(xi) @ T_gt, X)
        uv = Xc[..., :2] / Xc[..., 2:]
        uv = uv @ K[:2, :2].T + K[:2, 2]
        return (uv - pix) * w[..., None].sqrt()

    J = torch.autograd.functional.jacobian(residuals, torch.zeros(2, 6, dtype=F64))
    J = torch.stack([J[b, :, :, b].reshape(-1, 6) for b in range(2)])  # (2, 60, 6)
    torch.testing.assert_close(info, J.transpose(1, 2) @ J)
    # Its inverse is the covariance the estimator reports: positive definite here.
    assert (torch.linalg.eigvalsh(info) > 0).all()


def test_refine_pnp_shape_errors_and_all_invalid_input():
    K = torch.from_numpy(K_SQUARE)
    T = torch.eye(4, dtype=F64).expand(2, 4, 4)
    with pytest.raises(ValueError, match='match'):
        refine_pnp(T, torch.zeros(2, 5, 3, dtype=F64), torch.zeros(2, 6, 2, dtype=F64), K)
    with pytest.raises(ValueError, match='weights'):
        refine_pnp(T, torch.zeros(2, 5, 3, dtype=F64), torch.zeros(2, 5, 2, dtype=F64), K,
                   torch.ones(2, 4, dtype=F64))
    # Everything NaN / behind: the pose comes back unchanged and finite, gradients finite.
    X = torch.full((2, 5, 3), float('nan'), dtype=F64, requires_grad=True)
    out = refine_pnp(T, X, torch.zeros(2, 5, 2, dtype=F64), K)
    torch.testing.assert_close(out, T)
    out.sum().backward()
    assert torch.isfinite(X.grad).all()
