"""RGB-D mode of the estimator: Kabsch hypotheses, 3D scoring and refinement, against ground
truth, an SVD reference (numpy) and OpenCV's estimateAffine3D; gradients by central
differences; cell depths from depth images."""

import cv2
import numpy as np
import pytest
import torch

from dsac_ros.dsac import DsacEstimator, EstimatorConfig, Selection, expected_pose_loss
from dsac_ros.dsac.config import (
    DEFAULT_INLIER_THRESHOLD_CM,
    INLIER_THRESHOLD_CM_KEY,
    apply_estimator_metadata,
    estimator_metadata,
)
from dsac_ros.dsac.rgbd import DepthCells, cell_depths
from dsac_ros.dsac.testing import CorrespondenceCaseConfig, make_correspondence_case
from dsac_ros.geometry.camera import cell_centers
from dsac_ros.geometry.transforms import invert_se3, pose_errors

F64 = torch.float64


def _svd_reference(cam_n3: np.ndarray, world_n3: np.ndarray) -> np.ndarray:
    """Least-squares rigid T_cw (4, 4) with cam = R world + t (Arun / Umeyama, numpy SVD)."""
    mc, mw = cam_n3.mean(0), world_n3.mean(0)
    U, _, Vt = np.linalg.svd((cam_n3 - mc).T @ (world_n3 - mw))
    D = np.diag([1.0, 1.0, np.sign(np.linalg.det(U @ Vt))])
    R = U @ D @ Vt
    T = np.eye(4)
    T[:3, :3], T[:3, 3] = R, mc - R @ mw
    return T


def _camera_points(case) -> torch.Tensor:
    """(B, M, 3) camera points of the cells from the case's depth (what the estimator sees)."""
    B, H, W = case.depth_bhw.shape
    cells = DepthCells.from_depth(case.depth_bhw, case.K_b33, 8, EstimatorConfig())
    return cells.points_cam_bm3


@pytest.fixture(scope='module')
def outlier_case():
    """Two maps, 40 % outliers, 1 px noise on the scene coordinates (~1 cm), exact depth."""
    cfg = CorrespondenceCaseConfig(height=24, width=32, outlier_fraction=0.4, noise_px=1.0)
    return make_correspondence_case(cfg, batch=2, seed=5)


def test_minimal_kabsch_hypotheses_equal_ground_truth():
    cfg = CorrespondenceCaseConfig(height=12, width=16, outlier_fraction=0.0, noise_px=0.0)
    case = make_correspondence_case(cfg, batch=3, seed=1)
    config = EstimatorConfig(num_hypotheses=32)
    cells = DepthCells.from_depth(case.depth_bhw, case.K_b33, 8, config)
    world = case.scene_coords_b3hw.flatten(2).transpose(1, 2)
    valid = torch.ones(world.shape[:2], dtype=torch.bool)
    T, ok = cells.hypotheses(world, valid, config, torch.Generator().manual_seed(0))
    assert T.shape == (3, 32, 4, 4) and ok.shape == (3, 32)
    assert bool(ok.all())  # exact data: every non-degenerate set is rigid
    deg, m = pose_errors(T.reshape(-1, 4, 4), case.T_cw_b44.repeat_interleave(32, dim=0))
    assert float(deg.max()) < 1e-7 and float(m.max()) < 1e-9


@pytest.mark.parametrize('selection', list(Selection))
def test_estimate_with_outliers_matches_svd_reference_and_opencv(outlier_case, selection):
    case = outlier_case
    config = EstimatorConfig(num_hypotheses=128, selection=selection, inlier_threshold_cm=5.0)
    est = DsacEstimator(config).estimate(case.scene_coords_b3hw, case.K_b33,
                                         depth_bhw=case.depth_bhw)
    assert bool(est.valid_b.all())
    deg, m = pose_errors(est.T_cw_b44, case.T_cw_b44)
    assert float(deg.max()) < 0.3 and float(m.max()) < 0.01, (deg, m)
    cam = _camera_points(case).numpy()
    world = case.scene_coords_b3hw.flatten(2).transpose(1, 2).numpy()
    true_inliers = case.inlier_bhw.flatten(1).numpy()
    for b in range(2):
        # The refined pose is the least-squares fit on its own inliers (3D distance < 5 cm).
        T = est.T_cw_b44[b].numpy()
        dist = np.linalg.norm(world[b] @ T[:3, :3].T + T[:3, 3] - cam[b], axis=1)
        inliers = dist < 0.05
        assert int(inliers.sum()) == int(est.inlier_count_b[b])
        assert (inliers == true_inliers[b]).mean() > 0.97
        T_ref = _svd_reference(cam[b][inliers], world[b][inliers])
        np.testing.assert_allclose(T, T_ref, atol=1e-6)
        # OpenCV's robust affine fit on the same correspondences: as accurate, same inliers.
        ok, affine, cv_inliers = cv2.estimateAffine3D(world[b], cam[b], ransacThreshold=0.05,
                                                      confidence=0.999)
        assert ok
        T_cv = np.eye(4)
        T_cv[:3] = affine
        u, _, vt = np.linalg.svd(T_cv[:3, :3])  # nearest rotation of the affine part
        T_cv[:3, :3] = u @ vt
        deg_cv, m_cv = pose_errors(torch.from_numpy(T_cv), case.T_cw_b44[b])
        assert float(deg[b]) <= float(deg_cv) + 0.05
        assert float(m[b]) <= float(m_cv) + 0.002
        cv_inliers = cv_inliers[:, 0].astype(bool)
        assert int(inliers.sum()) >= int(cv_inliers.sum())
        assert (inliers & cv_inliers).sum() >= 0.97 * cv_inliers.sum()


def test_degenerate_and_invalid_depth_give_no_pose_and_stay_finite():
    cfg = CorrespondenceCaseConfig(height=12, width=16, outlier_fraction=0.0, noise_px=0.0)
    case = make_correspondence_case(cfg, batch=3, seed=2)
    coords = case.scene_coords_b3hw.clone()
    depth = case.depth_bhw.clone()
    # image 0: every valid cell on one line in both frames (a collinear scene) -> degenerate
    depth[0] = float('nan')
    depth[0, 5, :] = case.depth_bhw[0, 5, 0]
    line = torch.linspace(0.0, 1.0, 16, dtype=F64)
    coords[0, :, 5, :] = torch.stack([line, 0 * line, 0 * line + 2.0])
    # image 1: all depth invalid (0 and NaN); image 2: half of it invalid, still localizes
    depth[1] = 0.0
    depth[2, :, :8] = float('nan')
    config = EstimatorConfig(num_hypotheses=64, min_inliers_for_pose=10)
    est = DsacEstimator(config).estimate(coords, case.K_b33, depth_bhw=depth)
    assert est.valid_b.tolist() == [False, False, True]
    assert not bool(torch.isfinite(est.scores_bn[:2]).any())
    assert bool(torch.isfinite(est.T_cw_b44).all() and torch.isfinite(est.covariance_b66).all())
    assert int(est.inlier_count_b[2]) == 12 * 8  # only cells with depth count
    assert abs(float(est.inlier_ratio_b[2]) - 1.0) < 1e-9
    deg, m = pose_errors(est.T_cw_b44[2], case.T_cw_b44[2])
    assert float(deg) < 1e-6 and float(m) < 1e-8


def test_covariance_matches_the_spread_of_the_estimates():
    """Predicted vs observed scatter of the pose over 24 noisy maps (one batched call)."""
    cfg = CorrespondenceCaseConfig(height=15, width=20, outlier_fraction=0.2, noise_px=0.5,
                                   max_rotation_deg=30.0)
    case = make_correspondence_case(cfg, batch=24, seed=9)
    # depth noise of 1 % of the range (the lateral noise comes from the 0.5 px)
    g = torch.Generator().manual_seed(0)
    depth = case.depth_bhw * (1.0 + 0.01 * torch.randn(case.depth_bhw.shape, generator=g,
                                                        dtype=F64))
    config = EstimatorConfig(num_hypotheses=64, min_inliers_for_pose=10)
    est = DsacEstimator(config).estimate(case.scene_coords_b3hw, case.K_b33, depth_bhw=depth)
    assert bool(est.valid_b.all())
    # xi with T_wc_true = T_wc_est exp(xi): exp(xi) = T_cw_est T_cw_true^-1 (to first order
    # I + xi^), the camera-frame error, translation first
    delta = est.T_cw_b44 @ invert_se3(case.T_cw_b44)
    rho = delta[:, :3, 3]
    phi = 0.5 * torch.stack([delta[:, 2, 1] - delta[:, 1, 2], delta[:, 0, 2] - delta[:, 2, 0],
                              delta[:, 1, 0] - delta[:, 0, 1]], dim=1)
    xi = torch.cat([rho, phi], dim=1)
    # Mahalanobis distances of 24 draws: mean 6 (measured 6.0) for a calibrated covariance
    d2 = torch.einsum('bi,bij,bj->b', xi, torch.linalg.inv(est.covariance_b66), xi)
    assert 3.0 < float(d2.mean()) < 12.0, d2


def _grad_case():
    cfg = CorrespondenceCaseConfig(height=6, width=8, outlier_fraction=0.25, noise_px=1.0,
                                   focal_px=60.0)
    return make_correspondence_case(cfg, batch=2, seed=4)


def _rgbd_loss(coords, case, selection):
    config = EstimatorConfig(num_hypotheses=6, selection=selection, refinement_steps=2,
                             min_refinement_inliers=8, score_alpha=0.5,
                             inlier_threshold_cm=20.0)
    return expected_pose_loss(coords, case.K_b33, case.T_cw_b44, config, None,
                              torch.Generator().manual_seed(7), depth_bhw=case.depth_bhw)


def test_kabsch_hypotheses_gradcheck():
    case = _grad_case()
    config = EstimatorConfig(num_hypotheses=4, inlier_threshold_cm=20.0)
    cells = DepthCells.from_depth(case.depth_bhw, case.K_b33, 8, config)
    world = case.scene_coords_b3hw.flatten(2).transpose(1, 2).contiguous()
    valid = case.inlier_bhw.flatten(1)

    def hypotheses(world_bm3):
        T, _ = cells.hypotheses(world_bm3, valid, config, torch.Generator().manual_seed(3))
        return T
    assert torch.autograd.gradcheck(hypotheses, (world.clone().requires_grad_(True),),
                                    fast_mode=True)


@pytest.mark.parametrize('selection', [Selection.DSAC, Selection.SOFTAM])
def test_rgbd_expected_loss_gradient_matches_central_differences(selection):
    case = _grad_case()
    coords = case.scene_coords_b3hw.clone().requires_grad_(True)
    loss = _rgbd_loss(coords, case, selection)
    assert torch.isfinite(loss) and float(loss.detach()) > 0
    (grad,) = torch.autograd.grad(loss, coords)
    assert bool(torch.isfinite(grad).all()) and float(grad.abs().max()) > 0
    flat = grad.abs().flatten()
    perm = torch.randperm(flat.numel(), generator=torch.Generator().manual_seed(0))
    h = 1e-6
    for idx in torch.cat([flat.topk(4).indices, perm[:4]]).tolist():
        plus, minus = case.scene_coords_b3hw.clone(), case.scene_coords_b3hw.clone()
        plus.view(-1)[idx] += h
        minus.view(-1)[idx] -= h
        with torch.no_grad():
            numeric = (_rgbd_loss(plus, case, selection)
                       - _rgbd_loss(minus, case, selection)) / (2 * h)
        analytic = grad.reshape(-1)[idx]
        assert abs(float(numeric - analytic)) <= 1e-4 * max(1.0, abs(float(numeric))), (
            idx, float(numeric), float(analytic))


def test_rgb_path_is_unchanged_without_depth(outlier_case):
    """depth None is the RGB estimator, bit for bit (same pool, same pose)."""
    config = EstimatorConfig(num_hypotheses=32)
    a = DsacEstimator(config).estimate(outlier_case.scene_coords_b3hw, outlier_case.K_b33)
    b = DsacEstimator(config).estimate(outlier_case.scene_coords_b3hw, outlier_case.K_b33,
                                       depth_bhw=None)
    assert torch.equal(a.T_cw_b44, b.T_cw_b44) and torch.equal(a.scores_bn, b.scores_bn)


def test_bad_depth_shape_is_a_value_error(outlier_case):
    with pytest.raises(ValueError, match='depth_bhw'):
        DsacEstimator(EstimatorConfig(num_hypotheses=8)).estimate(
            outlier_case.scene_coords_b3hw, outlier_case.K_b33,
            depth_bhw=outlier_case.depth_bhw[:, :-1])


def test_cell_depths_resample_any_resolution_and_fill_holes():
    # A slanted plane z = 2 + 0.001 u seen at 2x the network input (64 x 48 for 4 x 3 cells).
    H, W = 48, 64
    u = (torch.arange(W, dtype=F64) + 0.5) / 2.0 - 0.5  # pixel centre in input pixels
    depth = (2.0 + 0.001 * u).expand(H, W).clone()[None]
    cells = cell_depths(depth, (3, 4), stride=8)
    centres = cell_centers(3, 4, 8, dtype=F64)[0]
    torch.testing.assert_close(cells[0], 2.0 + 0.001 * centres, atol=1e-3, rtol=0)
    # the same depth at the input size and at half of it give the same cells
    half = torch.nn.functional.interpolate(depth[:, None], size=(12, 16), mode='area')[:, 0]
    torch.testing.assert_close(cell_depths(half, (3, 4)), cells, atol=3e-3, rtol=0)
    same = (2.0 + 0.001 * (torch.arange(32, dtype=F64))).expand(24, 32)[None]
    torch.testing.assert_close(cell_depths(same, (3, 4)), 2.0 + 0.001 * centres[None])
    holes = same.clone()
    holes[0, :8, :8] = 0.0  # cell (0, 0) entirely
    holes[0, 8:16, 8:13] = float('nan')  # cell (1, 1): centre and 5 of 8 columns
    holes[0, 20, 20] = float('inf')  # cell (2, 2): only its centre -> its footprint's median
    out = cell_depths(holes, (3, 4))
    assert torch.isnan(out[0, 0, 0]) and torch.isnan(out[0, 1, 1])
    assert int(torch.isnan(out).sum()) == 2
    assert 2.019 - 1e-12 <= float(out[0, 2, 2]) <= 2.020 + 1e-12  # columns 16..23: 2.0195
    torch.testing.assert_close(out[0, 0, 1:], same[0, 4, [12, 20, 28]])


def test_threshold_travels_in_metadata():
    meta = estimator_metadata(EstimatorConfig(inlier_threshold_cm=7.5))
    assert meta == {INLIER_THRESHOLD_CM_KEY: 7.5}
    assert estimator_metadata(EstimatorConfig()) == {
        INLIER_THRESHOLD_CM_KEY: DEFAULT_INLIER_THRESHOLD_CM}
    unset = EstimatorConfig()
    assert apply_estimator_metadata(unset, meta).inlier_threshold_cm == 7.5
    assert apply_estimator_metadata(unset, {}).inlier_threshold_cm is None
    assert apply_estimator_metadata(unset, {INLIER_THRESHOLD_CM_KEY: 'x'}) is unset
    explicit = EstimatorConfig(inlier_threshold_cm=3.0)
    assert apply_estimator_metadata(explicit, meta) is explicit
    with pytest.raises(ValueError, match='inlier_threshold_cm'):
        EstimatorConfig(inlier_threshold_cm=0.0)

