"""Kabsch alignment (vs SciPy) and reprojection scoring (vs cv2.projectPoints)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from scipy.spatial.transform import Rotation
import torch

from dsac_ros.geometry.camera import cell_centers
from dsac_ros.geometry.kabsch import kabsch
from dsac_ros.geometry.scoring import (
    ScratchBuffers,
    hard_inliers,
    reprojection_error_maps,
    reprojection_errors,
    soft_inlier_count,
)
from dsac_ros.geometry.transforms import pose_errors, se3_exp, transform_points

F64 = torch.float64
K_NP = np.array([[585.0, 0.0, 316.5], [0.0, 540.0, 247.25], [0.0, 0.0, 1.0]])


# ---------------------------------------------------------------------------------- kabsch


def test_kabsch_recovers_pose_from_three_points():
    g = torch.Generator().manual_seed(0)
    T = se3_exp(torch.randn(50, 6, generator=g, dtype=F64))
    X = torch.randn(50, 3, 3, generator=g, dtype=F64) * 2
    P = transform_points(T, X)
    T_est = kabsch(P, X)
    deg, m = pose_errors(T_est, T)
    assert deg.max() < 1e-8 and m.max() < 1e-10
    torch.testing.assert_close(torch.linalg.det(T_est[:, :3, :3]), torch.ones(50, dtype=F64))


def test_kabsch_weighted_noisy_matches_scipy():
    rng = np.random.default_rng(1)
    g = torch.Generator().manual_seed(1)
    T = se3_exp(torch.randn(6, 6, generator=g, dtype=F64))
    X = torch.randn(6, 40, 3, generator=g, dtype=F64)
    P = transform_points(T, X) + 0.05 * torch.randn(6, 40, 3, generator=g, dtype=F64)
    w = torch.from_numpy(rng.uniform(0.1, 2.0, (6, 40)))
    T_est = kabsch(P, X, w)
    for b in range(6):
        wb = w[b].numpy()
        mp = (wb[:, None] * P[b].numpy()).sum(0) / wb.sum()
        mx = (wb[:, None] * X[b].numpy()).sum(0) / wb.sum()
        rot, _ = Rotation.align_vectors(P[b].numpy() - mp, X[b].numpy() - mx, weights=wb)
        np.testing.assert_allclose(T_est[b, :3, :3].numpy(), rot.as_matrix(), atol=1e-9)
        np.testing.assert_allclose(T_est[b, :3, 3].numpy(), mp - rot.as_matrix() @ mx, atol=1e-9)
    # Zero weight removes gross outliers; NaN pairs are ignored.
    X2 = torch.cat([X, X[:, :5]], 1)
    P2 = torch.cat([P, P[:, :5] + 10.0], 1)
    w2 = torch.cat([w, torch.zeros(6, 5, dtype=F64)], 1)
    torch.testing.assert_close(kabsch(P2, X2, w2), T_est)
    P3 = torch.cat([P, torch.full((6, 2, 3), float('nan'), dtype=F64)], 1)
    X3 = torch.cat([X, X[:, :2]], 1)
    w3 = torch.cat([w, torch.ones(6, 2, dtype=F64)], 1)
    torch.testing.assert_close(kabsch(P3, X3, w3), T_est)


def test_kabsch_reflection_case_returns_a_rotation():
    g = torch.Generator().manual_seed(2)
    X = torch.randn(5, 8, 3, generator=g, dtype=F64)
    P = X * torch.tensor([1.0, 1.0, -1.0], dtype=F64)  # mirror image: best fit is improper
    T_est = kabsch(P, X)
    det = torch.linalg.det(T_est[:, :3, :3])
    torch.testing.assert_close(det, torch.ones(5, dtype=F64))
    RtR = T_est[:, :3, :3].transpose(1, 2) @ T_est[:, :3, :3]
    torch.testing.assert_close(RtR, torch.eye(3, dtype=F64).expand(5, 3, 3))


def test_kabsch_gradcheck_and_shapes():
    g = torch.Generator().manual_seed(3)
    T = se3_exp(torch.randn(2, 6, generator=g, dtype=F64))
    X = torch.randn(2, 5, 3, generator=g, dtype=F64)
    P = transform_points(T, X) + 0.01 * torch.randn(2, 5, 3, generator=g, dtype=F64)
    w = torch.rand(2, 5, generator=g, dtype=F64) + 0.5
    assert torch.autograd.gradcheck(kabsch, (P.requires_grad_(), X.requires_grad_(),
                                             w.requires_grad_()))
    X3 = torch.randn(2, 3, 3, generator=g, dtype=F64)
    P3 = transform_points(T, X3).requires_grad_()
    assert torch.autograd.gradcheck(kabsch, (P3, X3.requires_grad_()))
    with pytest.raises(ValueError, match='at least 3'):
        kabsch(torch.zeros(2, 2, 3), torch.zeros(2, 2, 3))
    with pytest.raises(ValueError, match='same N'):
        kabsch(torch.zeros(2, 4, 3), torch.zeros(2, 5, 3))
    with pytest.raises(ValueError, match='points_cam'):
        kabsch(torch.zeros(2, 4, 2), torch.zeros(2, 4, 3))


# ---------------------------------------------------------------------------------- scoring


def _scoring_scene(seed: int, n: int = 50):
    rng = np.random.default_rng(seed)
    rvec, tvec = rng.normal(size=3) * 0.5, rng.normal(size=3)
    R, _ = cv2.Rodrigues(rvec)
    Xc = np.concatenate([rng.uniform(-2, 2, (n, 2)), rng.uniform(1, 5, (n, 1))], 1)
    Xw = (Xc - tvec) @ R
    proj, _ = cv2.projectPoints(Xw, rvec, tvec, K_NP, None)
    T = torch.eye(4, dtype=F64)
    T[:3, :3] = torch.from_numpy(R)
    T[:3, 3] = torch.from_numpy(tvec)
    return T, torch.from_numpy(Xw), torch.from_numpy(proj[:, 0]), rng


def test_reprojection_errors_match_cv2():
    T, X, proj, rng = _scoring_scene(0)
    observed = proj + torch.from_numpy(rng.normal(size=proj.shape) * 3)
    err = reprojection_errors(T, X, observed, torch.from_numpy(K_NP))
    np.testing.assert_allclose(err.numpy(), (proj - observed).norm(dim=-1).numpy(), atol=1e-9)
    # Large errors are capped; NaN points and points behind the camera get the cap.
    X_bad = X.clone()
    X_bad[0] = float('nan')
    Xc1 = transform_points(T, X[1:2])
    X_bad[1] = transform_points(torch.linalg.inv(T), Xc1 * torch.tensor([1, 1, -1.0]))[0]
    far = observed.clone()
    far[2] += 5000.0
    err = reprojection_errors(T, X_bad, far, torch.from_numpy(K_NP), max_error_px=1000.0)
    assert err[:3].tolist() == [1000.0, 1000.0, 1000.0]
    assert torch.isfinite(err).all()


def test_reprojection_error_image_layout_matches_point_layout():
    g = torch.Generator().manual_seed(4)
    B, M, H, W = 2, 3, 6, 8
    K = torch.from_numpy(K_NP).expand(B, 3, 3)
    T = se3_exp(0.1 * torch.randn(B, M, 6, generator=g, dtype=F64))
    depth = 1 + 3 * torch.rand(B, 1, H, W, generator=g, dtype=F64)
    pix = cell_centers(H, W, 8, dtype=F64)  # (2, H, W)
    xn = (pix - torch.tensor([316.5, 247.25], dtype=F64)[:, None, None]) \
        / torch.tensor([585.0, 540.0], dtype=F64)[:, None, None]
    coords = torch.cat([xn * depth, depth], 1)  # (B, 3, H, W) world = camera of identity
    coords[0, :, 1, 2] = float('nan')
    err_img = reprojection_errors(T, coords, pix, K)
    assert err_img.shape == (B, M, H, W)
    pts = coords.flatten(2).transpose(1, 2)  # (B, HW, 3)
    pix_pts = pix.flatten(1).T.expand(B, H * W, 2)
    err_pts = reprojection_errors(T, pts[:, None], pix_pts[:, None], K[:, None])
    torch.testing.assert_close(err_img.flatten(2), err_pts)
    assert err_img[0, :, 1, 2].eq(1000.0).all()
    # One hypothesis per image: (B, 4, 4) -> (B, H, W); identity reprojects exactly.
    err_id = reprojection_errors(torch.eye(4, dtype=F64).expand(B, 4, 4), coords, pix, K)
    assert err_id.shape == (B, H, W)
    assert err_id[1].max() < 1e-9


def test_soft_and_hard_inliers():
    err = torch.tensor([[0.0, 5.0, 9.9, 10.1, 50.0, 1000.0]], dtype=F64)
    mask = hard_inliers(err, 10.0)
    assert mask.tolist() == [[True, True, True, False, False, False]]
    soft = soft_inlier_count(err, threshold_px=10.0, beta=0.5)
    torch.testing.assert_close(soft, torch.sigmoid(0.5 * (10.0 - err)).sum(-1))
    assert abs(soft.item() - mask.sum().item()) < 1.5
    img = err.reshape(1, 1, 2, 3)
    torch.testing.assert_close(soft_inlier_count(img, 10.0, 0.5, dims=(-2, -1)), soft[:, None])
    e = (20 * torch.rand(2, 7, dtype=F64)).requires_grad_()
    assert torch.autograd.gradcheck(lambda x: soft_inlier_count(x, 10.0, 0.5), (e,))


def test_scoring_gradients_are_finite_for_exact_and_invalid_points():
    T, X, proj, _ = _scoring_scene(5, 6)
    X = X.clone()
    X[0] = float('nan')
    Xg = X.requires_grad_()
    Tg = T.clone().requires_grad_()
    err = reprojection_errors(Tg, Xg, proj, torch.from_numpy(K_NP))  # exact: errors 0
    soft_inlier_count(err, 10.0, 0.5).backward()
    assert torch.isfinite(Xg.grad).all() and torch.isfinite(Tg.grad).all()
    # gradcheck on a noisy, valid configuration.
    T2, X2, proj2, rng = _scoring_scene(6, 5)
    obs = proj2 + torch.from_numpy(rng.normal(size=proj2.shape) * 2)
    assert torch.autograd.gradcheck(
        lambda t, x: reprojection_errors(t, x, obs, torch.from_numpy(K_NP)),
        (T2.requires_grad_(), X2.requires_grad_()))


def test_scoring_shape_errors():
    K = torch.from_numpy(K_NP)
    with pytest.raises(ValueError, match='T_cw'):
        reprojection_errors(torch.eye(3, dtype=F64), torch.zeros(4, 3, dtype=F64),
                            torch.zeros(4, 2, dtype=F64), K)
    with pytest.raises(ValueError, match='pixels'):
        reprojection_errors(torch.eye(4, dtype=F64), torch.zeros(4, 3, dtype=F64),
                            torch.zeros(5, 2, dtype=F64), K)
    with pytest.raises(ValueError, match='points_world'):
        reprojection_errors(torch.eye(4, dtype=F64), torch.zeros(4, 2, dtype=F64),
                            torch.zeros(4, 2, dtype=F64), K)


def test_error_maps_with_buffers_equal_the_general_function():
    """The estimator's hot path (scratch buffers, in place) and `reprojection_errors` are one
    computation."""
    g = torch.Generator().manual_seed(7)
    B, M, H, W = 2, 5, 4, 6
    K = torch.from_numpy(K_NP).expand(B, 3, 3).contiguous()
    T = se3_exp(0.05 * torch.randn(B, M, 6, generator=g, dtype=F64))
    coords = torch.cat([torch.randn(B, 2, H, W, generator=g, dtype=F64),
                        2 + torch.rand(B, 1, H, W, generator=g, dtype=F64)], 1)
    coords[1, :, 0, 0] = float('nan')
    pix = cell_centers(H, W, 8, dtype=F64)
    expected = reprojection_errors(T, coords, pix, K, max_error_px=100.0)
    points = coords.flatten(2)
    valid = torch.isfinite(points).all(1)
    points_b4m = torch.cat([torch.nan_to_num(points), valid[:, None].to(F64)], 1)
    buffers = ScratchBuffers()
    for _ in range(2):  # the second call reuses the buffers
        got = reprojection_error_maps(T, K, points_b4m, pix.flatten(1), 100.0, valid,
                                      buffers=buffers)
        torch.testing.assert_close(got.reshape(B, M, H, W), expected, rtol=0, atol=1e-12)
    soft = soft_inlier_count(expected.flatten(2), 10.0, 0.5)
    torch.testing.assert_close(soft_inlier_count(got, 10.0, 0.5, inplace=True), soft)
