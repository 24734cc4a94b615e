"""DSAC estimator round trips on synthetic maps, against cv2.solvePnPRansac as the reference."""

import math

import cv2
import numpy as np
import pytest
import torch

from dsac_ros.dsac import DsacEstimator, EstimatorConfig, PoseEstimate, Selection
from dsac_ros.dsac.testing import CorrespondenceCaseConfig, make_correspondence_case
from dsac_ros.geometry.pnp import resolve_pnp
from dsac_ros.geometry.transforms import pose_errors, se3_exp


def _opencv_pose(case, b, iterations, threshold_px=10.0):
    """cv2.solvePnPRansac (+ iterative refinement on its inliers): T_cw (4, 4) float64."""
    coords = case.scene_coords_b3hw[b].reshape(3, -1).T.numpy()
    pix = case.pixels_2hw.reshape(2, -1).T.numpy()
    ok_cells = np.isfinite(coords).all(axis=1)
    obj = np.ascontiguousarray(coords[ok_cells])
    img = np.ascontiguousarray(pix[ok_cells])
    K = case.K_b33[b].numpy()
    cv2.setRNGSeed(0)
    ok, rvec, tvec, inliers = cv2.solvePnPRansac(
        obj, img, K, None, iterationsCount=iterations, reprojectionError=threshold_px,
        confidence=0.999999, flags=cv2.SOLVEPNP_P3P)
    if not ok or inliers is None:
        return None
    idx = inliers[:, 0]
    ok, rvec, tvec = cv2.solvePnP(obj[idx], img[idx], K, None, rvec, tvec,
                                  useExtrinsicGuess=True, flags=cv2.SOLVEPNP_ITERATIVE)
    T = np.eye(4)
    T[:3, :3] = cv2.Rodrigues(rvec)[0]
    T[:3, 3] = tvec[:, 0]
    return torch.from_numpy(T)


CASES = [  # (outlier fraction, map size, hypotheses): 80 % needs a larger pool to see 4 inliers
    (0.0, (30, 40), 256),
    (0.3, (30, 40), 256),
    (0.5, (60, 80), 256),
    (0.8, (30, 40), 4096),
]


@pytest.fixture(scope='module', params=CASES, ids=lambda c: f'outliers{int(c[0] * 100)}')
def case(request):
    fraction, (h, w), hyps = request.param
    cfg = CorrespondenceCaseConfig(height=h, width=w, outlier_fraction=fraction, noise_px=1.0)
    return make_correspondence_case(cfg, batch=2, seed=int(fraction * 10) + 1), hyps


@pytest.mark.parametrize('selection', list(Selection))
def test_round_trip_matches_opencv(case, selection):
    case, hyps = case
    config = EstimatorConfig(num_hypotheses=hyps, selection=selection)
    estimator = DsacEstimator(config)
    coords = case.scene_coords_b3hw.float()
    est = estimator.estimate(coords, case.K_b33.float())
    assert isinstance(est, PoseEstimate)
    assert est.valid_b.all()
    deg, m = pose_errors(est.T_cw_b44.double(), case.T_cw_b44)
    assert float(deg.max()) < 0.5, deg
    assert float(m.max()) < 0.01, m
    assert torch.allclose(est.T_wc_b44.double() @ est.T_cw_b44.double(),
                          torch.eye(4, dtype=torch.float64).expand(2, 4, 4), atol=1e-5)
    true_inliers = case.inlier_bhw.flatten(1).sum(1)
    # ~all true inliers lie within 10 px (1 px noise); a few random outliers may as well
    assert bool((est.inlier_count_b >= 0.97 * true_inliers).all())
    assert bool((est.inlier_count_b <= true_inliers + 0.05 * case.inlier_bhw[0].numel()).all())
    assert torch.allclose(est.inlier_ratio_b, est.inlier_count_b.float() / coords[0, 0].numel())
    assert bool((est.hypothesis_index_b >= 0).all())
    assert bool(torch.isfinite(est.score_entropy_b).all())
    assert bool((est.score_entropy_b >= 0).all())
    assert bool((est.score_entropy_b <= math.log(hyps) + 1e-4).all())
    for b in range(2):  # OpenCV on the same correspondences as the independent reference
        T_cv = _opencv_pose(case, b, iterations=hyps)
        assert T_cv is not None
        deg_cv, m_cv = pose_errors(T_cv, case.T_cw_b44[b])
        assert float(deg[b]) <= float(deg_cv) + 0.1
        assert float(m[b]) <= float(m_cv) + 0.003


def test_covariance_matches_monte_carlo():
    """The covariance (camera frame, translation first) predicts the spread over noise draws."""
    cfg = CorrespondenceCaseConfig(height=30, width=40, outlier_fraction=0.3, noise_px=2.0)
    base = make_correspondence_case(cfg, batch=1, seed=11)
    B = 24
    cases = [make_correspondence_case(cfg, batch=1, seed=100 + i) for i in range(B)]
    # same pose for all: re-express each map in the pose of `base` by moving its world frame
    coords = []
    for c in cases:
        T = base.T_cw_b44[0].inverse() @ c.T_cw_b44[0]  # world_c -> world_base
        pts = c.scene_coords_b3hw[0].reshape(3, -1)
        coords.append((T[:3, :3] @ pts + T[:3, 3:]).reshape(3, 30, 40))
    coords = torch.stack(coords).float()
    est = DsacEstimator(EstimatorConfig()).estimate(coords, base.K_b33.expand(B, 3, 3).float())
    assert est.valid_b.all()
    cov = est.covariance_b66.double()
    assert torch.allclose(cov, cov.mT, atol=1e-9)
    assert bool((torch.linalg.eigvalsh(cov) > 0).all())
    # xi with T_wc_gt = T_wc_est exp(xi): first order, rho = R_cw_est (c_gt - c_est),
    # phi = log(R_wc_est^T R_wc_gt)
    T_wc_est = est.T_wc_b44.double()
    T_wc_gt = base.T_cw_b44[0].inverse()
    delta = T_wc_est.inverse() @ T_wc_gt
    rho = delta[:, :3, 3]
    skew = 0.5 * (delta[:, :3, :3] - delta[:, :3, :3].mT)
    phi = torch.stack([skew[:, 2, 1], skew[:, 0, 2], skew[:, 1, 0]], -1)
    xi = torch.cat([rho, phi], -1)
    empirical = xi.pow(2).mean(0)
    predicted = cov.diagonal(dim1=1, dim2=2).mean(0)
    ratio = empirical / predicted
    # 24 samples: the variance estimate is within a factor ~2 with high probability; the
    # refinement uses a different random subset each round, so allow a factor 4
    assert bool((ratio > 0.25).all()) and bool((ratio < 4.0).all()), ratio
    # frame / order check: lateral translation and the rotation about the other image axis
    # are strongly coupled (rho_x with phi_y, rho_y with phi_x); signs must match the samples
    emp_cov = xi.T @ xi / B
    mean_cov = cov.mean(0)
    for i, j in ((0, 4), (1, 3)):
        corr_pred = mean_cov[i, j] / (mean_cov[i, i] * mean_cov[j, j]).sqrt()
        corr_emp = emp_cov[i, j] / (emp_cov[i, i] * emp_cov[j, j]).sqrt()
        assert abs(float(corr_pred)) > 0.5
        assert float(corr_pred) * float(corr_emp) > 0.2


def test_same_seed_same_result_and_different_seed_differs():
    cfg = CorrespondenceCaseConfig(outlier_fraction=0.5)
    case = make_correspondence_case(cfg, batch=2, seed=3)
    est_cfg = EstimatorConfig(selection=Selection.DSAC, num_hypotheses=64, score_alpha=0.02)
    estimator = DsacEstimator(est_cfg)
    coords, K = case.scene_coords_b3hw.float(), case.K_b33.float()

    def run(seed):
        g = torch.Generator()
        g.manual_seed(seed)
        return estimator.estimate(coords, K, generator=g)

    a, b, c = run(1), run(1), run(2)
    assert torch.equal(a.T_cw_b44, b.T_cw_b44)
    assert torch.equal(a.hypothesis_index_b, b.hypothesis_index_b)
    assert torch.equal(a.scores_bn, b.scores_bn)
    assert not torch.equal(a.scores_bn, c.scores_bn)
    # no generator: seeded from config.seed, repeatable
    assert torch.equal(estimator.estimate(coords, K).T_cw_b44,
                       estimator.estimate(coords, K).T_cw_b44)


@pytest.mark.parametrize('device', [
    'cpu',
    pytest.param('cuda', marks=pytest.mark.skipif(not torch.cuda.is_available(),
                                                   reason='no CUDA device')),
])
def test_device(device):
    case = make_correspondence_case(CorrespondenceCaseConfig(outlier_fraction=0.3), seed=4)
    config = EstimatorConfig(num_hypotheses=128)
    # inputs on the device
    est = DsacEstimator(config).estimate(case.scene_coords_b3hw.float().to(device),
                                         case.K_b33.float().to(device))
    assert est.T_cw_b44.device.type == device
    deg, m = pose_errors(est.T_cw_b44.double().cpu(), case.T_cw_b44)
    assert float(deg.max()) < 0.5 and float(m.max()) < 0.01
    # CPU inputs, estimator told the device; a CPU generator works with any device
    g = torch.Generator().manual_seed(1)
    est = DsacEstimator(config, device=device).estimate(case.scene_coords_b3hw.float(),
                                                        case.K_b33.float(), generator=g)
    assert est.T_cw_b44.device.type == device
    deg, m = pose_errors(est.T_cw_b44.double().cpu(), case.T_cw_b44)
    assert float(deg.max()) < 0.5 and float(m.max()) < 0.01


def test_auto_device():
    estimator = DsacEstimator(device='auto')
    assert estimator.device.type == ('cuda' if torch.cuda.is_available() else 'cpu')


def test_invalid_cells_are_ignored():
    cfg = CorrespondenceCaseConfig(outlier_fraction=0.3, invalid_fraction=0.4)
    case = make_correspondence_case(cfg, batch=1, seed=5)
    coords = case.scene_coords_b3hw.float()
    coords[0, :, :3] = float('inf')  # inf counts as invalid as well
    est = DsacEstimator(EstimatorConfig()).estimate(coords, case.K_b33.float())
    assert est.valid_b.all()
    deg, m = pose_errors(est.T_cw_b44.double(), case.T_cw_b44)
    assert float(deg.max()) < 0.5 and float(m.max()) < 0.01
    n_valid = torch.isfinite(coords).all(1).sum()
    assert torch.allclose(est.inlier_ratio_b, est.inlier_count_b.float() / n_valid)


def test_no_pose_when_too_few_cells_or_only_outliers():
    cfg = CorrespondenceCaseConfig(outlier_fraction=0.0)
    case = make_correspondence_case(cfg, batch=3, seed=6)
    coords = case.scene_coords_b3hw.float().clone()
    coords[0] = float('nan')  # no valid cell at all
    coords[1] = float('nan')
    coords[1, :, 0, :3] = case.scene_coords_b3hw[1, :, 0, :3].float()  # 3 valid cells
    est = DsacEstimator(EstimatorConfig()).estimate(coords, case.K_b33.float())
    assert est.valid_b.tolist() == [False, False, True]
    assert bool(torch.isfinite(est.T_cw_b44).all())
    assert torch.equal(est.T_cw_b44[0], torch.eye(4))
    assert est.hypothesis_index_b[:2].tolist() == [-1, -1]
    assert est.inlier_count_b[:2].tolist() == [0, 0]
    assert bool(torch.isfinite(est.covariance_b66).all())
    # pure noise: whatever is found has too few inliers for a pose
    noise = torch.rand(1, 3, 30, 40, generator=torch.Generator().manual_seed(0)) * 4 - 2
    cfg_strict = EstimatorConfig(num_hypotheses=64, min_inliers_for_pose=100)
    est = DsacEstimator(cfg_strict).estimate(noise, case.K_b33[:1].float())
    assert est.valid_b.tolist() == [False]
    assert bool(torch.isfinite(est.T_cw_b44).all())


def test_tiny_map_gives_no_pose():
    K = torch.tensor([[100.0, 0, 8], [0, 100.0, 4], [0, 0, 1]])
    est = DsacEstimator(EstimatorConfig()).estimate(torch.rand(1, 3, 1, 2) + 1, K)
    assert est.valid_b.tolist() == [False]


def test_bad_inputs():
    estimator = DsacEstimator(EstimatorConfig(num_hypotheses=16))
    coords = torch.rand(1, 3, 6, 8) + 1
    K = torch.tensor([[50.0, 0, 32], [0, 50.0, 24], [0, 0, 1]])
    with pytest.raises(ValueError, match='scene_coords_b3hw'):
        estimator.estimate(coords[0], K)
    with pytest.raises(ValueError, match='scene_coords_b3hw'):
        estimator.estimate(torch.rand(1, 2, 6, 8), K)
    with pytest.raises(ValueError, match='floating'):
        estimator.estimate(coords.long(), K)
    with pytest.raises(ValueError, match='K_b33'):
        estimator.estimate(coords, K[:2])
    with pytest.raises(ValueError, match='K_b33'):
        estimator.estimate(coords, K.expand(2, 3, 3))
    K_zero = K.clone()
    K_zero[0, 0] = 0.0
    with pytest.raises(ValueError, match='focal'):
        estimator.estimate(coords, K_zero)
    K_nan = K.clone()
    K_nan[1, 2] = float('nan')
    with pytest.raises(ValueError, match='NaN'):
        estimator.estimate(coords, K_nan)
    with pytest.raises(ValueError, match='stride'):
        estimator.estimate(coords, K, stride=0)
    with pytest.raises(ValueError, match='score_fn'):
        DsacEstimator(EstimatorConfig(num_hypotheses=16),
                      score_fn=lambda e: e.mean(dim=(2, 3))[:, :3]).estimate(coords, K)


def test_score_fn_is_used():
    """A score function that prefers bad hypotheses makes RANSAC pick a bad pose."""
    case = make_correspondence_case(CorrespondenceCaseConfig(outlier_fraction=0.5), seed=8)
    coords, K = case.scene_coords_b3hw.float(), case.K_b33.float()
    cfg = EstimatorConfig(num_hypotheses=128, refinement_steps=0, min_inliers_for_pose=0)
    good = DsacEstimator(cfg).estimate(coords, K)
    bad = DsacEstimator(cfg, score_fn=lambda e: e.clamp(max=10).mean(dim=(2, 3))).estimate(
        coords, K)
    assert float(pose_errors(good.T_cw_b44.double(), case.T_cw_b44)[0]) < 5.0
    assert int(bad.inlier_count_b) < int(good.inlier_count_b)
    assert int(good.hypothesis_index_b) != int(bad.hypothesis_index_b)


def test_softam_averages_nearby_poses():
    """soft_average_pose of poses spread around a centre returns (about) the centre."""
    from dsac_ros.dsac.estimator import soft_average_pose

    gen = torch.Generator().manual_seed(0)
    T0 = se3_exp(torch.tensor([0.3, -0.2, 1.0, 0.4, -0.3, 0.2], dtype=torch.float64))
    xi = torch.randn(1, 9, 6, generator=gen, dtype=torch.float64) * 0.01
    xi = torch.cat([xi, -xi], dim=1)  # symmetric spread: average is T0 to second order
    T = se3_exp(xi) @ T0
    w = torch.full((1, 18), 1.0 / 18, dtype=torch.float64)
    T_avg, _ = soft_average_pose(T, w)
    deg, m = pose_errors(T_avg, T0[None])
    assert float(deg) < 0.01 and float(m) < 1e-3
    # a zero weight hides an arbitrarily bad pose; a one-hot weight returns that pose
    T_bad = T.clone()
    T_bad[0, 3] = se3_exp(torch.tensor([5.0, 0, 0, 2.0, 0, 0], dtype=torch.float64))
    w2 = w.clone()
    w2[0, 3] = 0.0
    w2 = w2 / w2.sum()
    deg2, _ = pose_errors(soft_average_pose(T_bad, w2)[0], T0[None])
    assert float(deg2) < 0.05
    one_hot = torch.zeros(1, 18, dtype=torch.float64)
    one_hot[0, 5] = 1.0
    assert torch.allclose(soft_average_pose(T, one_hot)[0][0], T[0, 5], atol=1e-9)


def test_dsac_selection_follows_softmax_of_scores():
    """DSAC draws hypothesis j with probability softmax(alpha * s)_j (one draw per image)."""
    cfg = CorrespondenceCaseConfig(outlier_fraction=0.0, height=12, width=16)
    case = make_correspondence_case(cfg, batch=1, seed=9)
    B = 600
    coords = case.scene_coords_b3hw.float().expand(B, -1, -1, -1)
    fixed = torch.tensor([0.0, 1.0, 2.0, 3.0])

    def score_fn(errors_bnhw):
        return fixed.expand(errors_bnhw.shape[0], 4)

    est_cfg = EstimatorConfig(num_hypotheses=4, selection=Selection.DSAC, score_alpha=0.7,
                              refinement_steps=0)
    est = DsacEstimator(est_cfg, score_fn=score_fn).estimate(coords, case.K_b33[0].float())
    all_valid = (est.scores_bn > -math.inf).all(dim=1)
    assert int(all_valid.sum()) > 0.8 * B  # a few minimal sets have no P4P solution
    index = est.hypothesis_index_b[all_valid]
    freq = torch.bincount(index, minlength=4).double() / index.numel()
    expected = torch.softmax(0.7 * fixed.double(), 0)
    assert float((freq - expected).abs().max()) < 0.06, (freq, expected)
    entropy = float(-(expected * expected.log()).sum())
    assert torch.allclose(est.score_entropy_b[all_valid],
                          torch.full((index.numel(),), entropy), atol=1e-5)
    # an invalid hypothesis is never drawn
    masked = est.scores_bn[~all_valid]
    picked = est.hypothesis_index_b[~all_valid]
    assert bool((masked.gather(1, picked[:, None]) > -math.inf).all())


def test_refinement_masks_poses_with_too_few_inliers():
    from dsac_ros.dsac.estimator import _prepare, refine_hypotheses

    cfg = CorrespondenceCaseConfig(outlier_fraction=0.3)
    case = make_correspondence_case(cfg, batch=1, seed=10)
    config = EstimatorConfig()
    frame = _prepare(case.scene_coords_b3hw, case.K_b33, 8, config)
    T_gt = case.T_cw_b44[0]
    perturbed = se3_exp(torch.tensor([0.02, -0.02, 0.03, 0.012, 0.008, -0.008],
                                     dtype=torch.float64)) @ T_gt
    garbage = se3_exp(torch.tensor([0.5, 0.3, -0.2, 0.8, -0.5, 0.3],
                                   dtype=torch.float64)) @ T_gt
    T_in = torch.stack([perturbed, garbage])[None]
    refinement = refine_hypotheses(T_in, frame, config, torch.Generator().manual_seed(0))
    T_out = refinement.T_cw_bk44
    deg_in, m_in = pose_errors(perturbed, T_gt)
    deg_out, m_out = pose_errors(T_out[0, 0], T_gt)
    assert float(deg_in) > 0.8 and float(m_in) > 0.03
    # PnP on all inliers (about 840 cells, 1 px noise): a few hundredths of a degree / mm
    assert float(deg_out) < 0.1 and float(m_out) < 0.005, (float(deg_out), float(m_out))
    assert torch.equal(T_out[0, 1], garbage)  # < 50 inliers: left as it was
    assert refinement.refined_bk.tolist() == [[True, False]]
    # the fit is the PnP optimum of the last round's inliers: one more re-solve does not move it
    w = refinement.weights_bkn[0, 0]
    again = resolve_pnp(T_out[0, 0], frame.points_bm3[0][w], frame.pixels_m2[w],
                        case.K_b33[0], max_iterations=20, tolerance=1e-12)
    assert float((again - T_out[0, 0]).abs().max()) < 1e-7


def _degenerate_maps():
    g = torch.Generator().manual_seed(0)
    nan_mask = torch.rand(1, 1, 30, 40, generator=g) < 0.99
    return {
        'constant': torch.ones(1, 3, 30, 40),
        'huge': torch.randn(1, 3, 30, 40, generator=g) * 1e6,
        'tiny': torch.randn(1, 3, 30, 40, generator=g) * 1e-6,
        'behind_camera': torch.cat([torch.randn(1, 2, 30, 40, generator=g),
                                    -torch.rand(1, 1, 30, 40, generator=g) - 1], 1),
        'collinear': torch.linspace(0, 1, 1200).reshape(1, 1, 30, 40).expand(1, 3, 30, 40),
        'one_percent_valid': torch.where(nan_mask, float('nan'),
                                         torch.randn(1, 3, 30, 40, generator=g)),
    }


@pytest.mark.parametrize('name', list(_degenerate_maps()))
@pytest.mark.parametrize('selection', list(Selection))
def test_degenerate_maps_give_no_pose_and_no_nan(name, selection):
    coords = _degenerate_maps()[name]
    K = torch.tensor([[256.0, 0, 159.5], [0, 256.0, 119.5], [0, 0, 1]])
    est = DsacEstimator(EstimatorConfig(selection=selection, num_hypotheses=64)).estimate(
        coords, K)
    assert est.valid_b.tolist() == [False]
    for field in (est.T_cw_b44, est.T_wc_b44, est.inlier_ratio_b, est.score_entropy_b,
                  est.covariance_b66):
        assert bool(torch.isfinite(field).all())


def test_planar_scene_round_trip():
    """All points on one plane (a wall): P3P and refinement still work, like OpenCV."""
    cfg = CorrespondenceCaseConfig(depth_range_m=(2.5, 2.5), outlier_fraction=0.5)
    case = make_correspondence_case(cfg, batch=2, seed=5)
    est = DsacEstimator(EstimatorConfig()).estimate(case.scene_coords_b3hw.float(),
                                                    case.K_b33.float())
    assert est.valid_b.all()
    deg, m = pose_errors(est.T_cw_b44.double(), case.T_cw_b44)
    for b in range(2):
        deg_cv, m_cv = pose_errors(_opencv_pose(case, b, iterations=256), case.T_cw_b44[b])
        assert float(deg[b]) < 0.5 and float(m[b]) < 0.01
        assert float(deg[b]) <= float(deg_cv) + 0.1 and float(m[b]) <= float(m_cv) + 0.003


def test_scratch_buffers_do_not_leak_between_calls_or_threads():
    from concurrent.futures import ThreadPoolExecutor

    small = make_correspondence_case(CorrespondenceCaseConfig(outlier_fraction=0.5), seed=12)
    big = make_correspondence_case(CorrespondenceCaseConfig(height=60, width=80), seed=13)
    inputs = [(c.scene_coords_b3hw.float(), c.K_b33.float()) for c in (small, big)]
    config = EstimatorConfig(num_hypotheses=128)

    def fresh(i):
        return DsacEstimator(config).estimate(*inputs[i]).T_cw_b44

    expected = [fresh(0), fresh(1)]
    shared = DsacEstimator(config)
    for i in (0, 1, 0, 1):  # sizes alternate: buffers grow, then are reused as views
        assert torch.equal(shared.estimate(*inputs[i]).T_cw_b44, expected[i])
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(lambda i: shared.estimate(*inputs[i]).T_cw_b44, [0, 1] * 4))
    for k, T in enumerate(results):
        assert torch.equal(T, expected[k % 2])
